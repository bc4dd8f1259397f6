//! The node's HTTP API (axum), at `node.http_listen`: the spec's REST endpoints under
//! `/api/v1/consensus/`, blocks and transactions, health checks and probes, Prometheus
//! `/metrics`, and the OpenAPI 3.1 document of all of it at `/api/v1/openapi.json`, generated
//! from the handlers' types (utoipa).
//!
//! One file per resource ([`rounds`], [`ibft`], [`hotstuff`], [`blocks`], [`health`],
//! [`metrics`]); every handler is a thin read of the [`view::NodeView`] the node publishes.
//! The server runs on a thread of its own with a single-threaded tokio runtime: it never takes
//! a core from the pipeline for longer than a request.
//!
//! Errors are JSON (`{ "error": { "code", "message" } }`, [`error`]): a malformed id or query is
//! 400, an unknown round 404, a mutating call without the operator token 401
//! ([`auth`]); a 5xx means the node failed (a store read), never bad input.

pub mod auth;
pub mod blocks;
pub mod error;
pub mod health;
pub mod hotstuff;
pub mod ibft;
pub mod metrics;
pub mod node;
pub mod rounds;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ApiError;
use view::NodeView;

/// How long open connections may finish after the server is told to stop.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest request body accepted (a vote or a depth change is a few hundred bytes).
pub const BODY_LIMIT_BYTES: usize = 64 << 10;

/// The routes and the OpenAPI document they make.
pub fn router() -> (axum::Router<Arc<NodeView>>, OpenApi) {
    let (router, mut api) = OpenApiRouter::<Arc<NodeView>>::new()
        .routes(routes!(rounds::round_status))
        .routes(routes!(rounds::active_rounds))
        .routes(routes!(rounds::round_history))
        .routes(routes!(rounds::metrics))
        .routes(routes!(ibft::state))
        .routes(routes!(ibft::votes))
        .routes(routes!(ibft::proposal))
        .routes(routes!(ibft::vote))
        .routes(routes!(node::info))
        .routes(routes!(hotstuff::state))
        .routes(routes!(hotstuff::pipeline_status))
        .routes(routes!(hotstuff::metrics))
        .routes(routes!(hotstuff::execution))
        .routes(routes!(hotstuff::set_depth))
        .routes(routes!(blocks::block))
        .routes(routes!(blocks::transaction))
        .routes(routes!(health::consensus))
        .routes(routes!(health::ibft))
        .routes(routes!(health::hotstuff))
        .routes(routes!(health::livez))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi_json))
        .split_for_parts();
    api.info.title = "bpci validator API".into();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    api.info.description = Some(
        "A bpci validator's REST API: rounds (a round is a height: `round-<height>`), IBFT and \
         HotStuff views of them, blocks, transactions, health and metrics."
            .into(),
    );
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "operator_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The operator token from the node's `node.operator_token_file`.",
                ))
                .build(),
        ),
    );
    let router = router
        .fallback(|| async {
            ApiError::not_found("no such endpoint; the API is described at /api/v1/openapi.json")
        })
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES));
    (router, api)
}

/// Errors that axum's extractors answer in plain text (a query that does not parse, a body that
/// is not the JSON asked for, a method the path does not take, a body over the limit) become
/// the API's JSON error, with the same status and their text as the message.
async fn json_errors(r: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = r.status();
    let is_json = r
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let code = match status {
        axum::http::StatusCode::NOT_FOUND => error::ErrorCode::NotFound,
        axum::http::StatusCode::UNAUTHORIZED => error::ErrorCode::Unauthorized,
        s if s.is_server_error() => error::ErrorCode::Internal,
        _ => error::ErrorCode::BadRequest,
    };
    let text = axum::body::to_bytes(r.into_body(), BODY_LIMIT_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    let mut out = ApiError::new(code, message).into_response();
    *out.status_mut() = status;
    out
}

/// The OpenAPI document, as served.
pub fn openapi() -> OpenApi {
    router().1
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi_document", tag = "meta",
    responses((status = 200, content_type = "application/json", body = Object,
        description = "OpenAPI 3.1 document")))]
pub async fn openapi_json() -> Json<OpenApi> {
    Json(openapi())
}

/// A running API server; stops when dropped or by [`ApiServer::shutdown`].
pub struct ApiServer {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `listen` (before anything else starts, so that a taken port fails the node's
    /// start cleanly).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind(listen: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding node.http_listen {listen}: {e}"))
        })
    }

    /// Serves `view` on `listener` from a thread of its own.
    ///
    /// # Errors
    /// The thread or runtime cannot be made.
    pub fn start(listener: std::net::TcpListener, view: Arc<NodeView>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("node.api")
            .build()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (router, _) = router();
        let app = router.with_state(view);
        let thread = std::thread::Builder::new()
            .name("node.api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(target: "api", error = %e, "HTTP listener");
                            return;
                        }
                    };
                    let mut graceful = stopped.clone();
                    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|s| *s).await;
                    });
                    // Connections still open SHUTDOWN_GRACE after the stop are cut.
                    let mut hard = stopped;
                    tokio::select! {
                        r = served => if let Err(e) = r {
                            tracing::error!(target: "api", error = %e, "HTTP server stopped");
                        },
                        _ = async move {
                            let _ = hard.wait_for(|s| *s).await;
                            tokio::time::sleep(SHUTDOWN_GRACE).await;
                        } => {}
                    }
                });
            })?;
        tracing::info!(target: "api", %local_addr, "HTTP API listening");
        Ok(Self {
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops serving and waits for the server thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    /// Where the committed copy of the OpenAPI document lives.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json");

    /// The committed document is what the code generates (`BPCI_BLESS=1 cargo test --lib
    /// api::tests` rewrites it after a deliberate change).
    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let generated = serde_json::to_string_pretty(&super::openapi()).unwrap() + "\n";
        if std::env::var_os("BPCI_BLESS").is_some() {
            std::fs::write(COMMITTED, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "src/api/openapi.json differs from the generated document: run `BPCI_BLESS=1 cargo test --lib api::tests` and review the diff"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
        for path in [
            "/api/v1/consensus/rounds/{round_id}/status",
            "/api/v1/consensus/rounds/active",
            "/api/v1/consensus/rounds/history",
            "/api/v1/consensus/metrics",
            "/api/v1/consensus/ibft/state/{round_id}",
            "/api/v1/consensus/ibft/votes/{round_id}",
            "/api/v1/consensus/ibft/proposal/{round_id}",
            "/api/v1/consensus/hotstuff/state/{round_id}",
            "/api/v1/consensus/hotstuff/pipeline",
            "/api/v1/consensus/hotstuff/metrics",
            "/api/v1/consensus/hotstuff/execution/{round_id}",
            "/api/v1/consensus/hotstuff/depth",
            "/api/v1/blocks/{height}",
            "/api/v1/transactions/{id}",
            "/health/consensus",
            "/health/ibft",
            "/health/hotstuff",
            "/livez",
            "/readyz",
            "/metrics",
            "/api/v1/openapi.json",
            "/api/v1/consensus/ibft/vote",
            "/api/v1/node",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
    }
}
