//! Establishing links: the dialer loop (we dial every peer with a higher index) and the
//! acceptor (peers with a lower index dial us). One connection per pair of validators: the
//! lower index dials; an acceptor that gets a new authenticated connection from a peer that
//! already has one replaces the old one (the dialer only redials after losing its connection,
//! e.g. because it restarted).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::link::{self, Ctx};
use crate::peer::Peer;
use crate::stats::bump;
use crate::tls::peer_public_key;
use crate::wire::{decode_hello, encode_hello, CloseCode, HELLO_BYTES, SERVER_NAME};

/// Bound on one dial attempt (QUIC + TLS handshake), when the peer does not answer.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bound on the QUIC + TLS handshake of an incoming connection.
pub(crate) const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the hello exchange once TLS is done.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Incoming connections that may be in their handshake at once; more are refused.
pub(crate) const PENDING_HANDSHAKES_MAX: usize = 64;

/// Why a dial or accept did not produce a link.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("timed out")]
    Timeout,
    #[error("peer refused us: {0}")]
    Refused(quinn::ConnectionError),
    #[error("bad hello: {0}")]
    Hello(String),
    #[error("transport is shutting down")]
    ShuttingDown,
}

impl HandshakeError {
    /// True if the peer was reached and authentication failed (counted as a handshake
    /// failure); false for "nobody there" kinds of failure.
    fn is_auth_failure(&self) -> bool {
        match self {
            HandshakeError::Connection(e) => is_auth_close(e),
            HandshakeError::Refused(_) | HandshakeError::Hello(_) => true,
            HandshakeError::Connect(_) | HandshakeError::Timeout | HandshakeError::ShuttingDown => {
                false
            }
        }
    }
}

/// TLS alerts (QUIC crypto errors 0x100..=0x1ff) and our own refusal codes.
fn is_auth_close(e: &quinn::ConnectionError) -> bool {
    let is_crypto = |code: quinn::TransportErrorCode| (u64::from(code) & !0xff) == 0x100;
    match e {
        quinn::ConnectionError::TransportError(t) => is_crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => is_crypto(c.error_code),
        quinn::ConnectionError::ApplicationClosed(c) => {
            c.error_code == CloseCode::NotAuthorized.code()
                || c.error_code == CloseCode::Protocol.code()
        }
        _ => false,
    }
}

async fn within<T, E>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, HandshakeError>
where
    HandshakeError: From<E>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(HandshakeError::from),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Keeps a link to `peer` (higher index than ours) up for the life of the transport.
pub(crate) async fn dial_loop(
    ctx: Ctx,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    peer: Arc<Peer>,
    reconnect_min: Duration,
    reconnect_max: Duration,
) {
    let mut backoff = Backoff::new(reconnect_min, reconnect_max);
    while !ctx.shared.is_closed() {
        match dial_once(&ctx, &endpoint, &client, &peer).await {
            Ok(conn) => {
                let Some(id) = ctx.shared.install(&peer, &conn) else {
                    return;
                };
                backoff.reset();
                link::run(ctx.clone(), peer.clone(), conn, id).await;
            }
            Err(e) => {
                if e.is_auth_failure() {
                    bump(&ctx.shared.counters.handshake_failures, 1);
                    tracing::warn!(peer = peer.index, error = %e, "transport.dial: authentication failed");
                } else {
                    tracing::debug!(peer = peer.index, error = %e, "transport.dial: failed");
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One dial: QUIC + TLS (the server's key is pinned by `client`), then the hello exchange.
async fn dial_once(
    ctx: &Ctx,
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    peer: &Peer,
) -> Result<quinn::Connection, HandshakeError> {
    let connecting = endpoint.connect_with(client.clone(), peer.addr, SERVER_NAME)?;
    let conn = within(DIAL_TIMEOUT, connecting).await?;
    match hello_as_dialer(ctx.shared.me, peer.index, &conn).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            CloseCode::Protocol.close(&conn);
            Err(e)
        }
    }
}

async fn hello_as_dialer(
    me: u16,
    expected: u16,
    conn: &quinn::Connection,
) -> Result<(), HandshakeError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&encode_hello(me))
            .await
            .map_err(|e| match e {
                quinn::WriteError::ConnectionLost(c) => HandshakeError::Refused(c),
                other => HandshakeError::Hello(other.to_string()),
            })?;
        // The acceptor answers only after it checked our key and index; if it refused our key
        // at the TLS layer, the read fails with its close reason.
        let mut reply = [0u8; HELLO_BYTES];
        recv.read_exact(&mut reply).await.map_err(|e| match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
                HandshakeError::Refused(c)
            }
            other => HandshakeError::Hello(other.to_string()),
        })?;
        let _ = send.finish();
        let index = decode_hello(&reply).map_err(|e| HandshakeError::Hello(e.to_string()))?;
        if index != expected {
            return Err(HandshakeError::Hello(format!(
                "peer says it is validator {index}, we dialed {expected}"
            )));
        }
        Ok(())
    };
    match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Accepts incoming connections for the life of the endpoint.
pub(crate) async fn accept_loop(ctx: Ctx, endpoint: quinn::Endpoint) {
    let pending = Arc::new(Semaphore::new(PENDING_HANDSHAKES_MAX));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "too many pending handshakes; refusing");
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                let accepted = accept_one(&ctx, incoming).await;
                drop(permit);
                match accepted {
                    Ok((peer, conn, id)) => link::run(ctx, peer, conn, id).await,
                    Err(e) if e.is_auth_failure() => {
                        bump(&ctx.shared.counters.handshake_failures, 1);
                        tracing::warn!(error = %e, "transport.accept: authentication failed");
                    }
                    Err(e) => tracing::debug!(error = %e, "transport.accept: failed"),
                }
            }
            .instrument(tracing::info_span!("transport.accept", %remote)),
        );
    }
}

/// TLS (the client key must be one of the set: checked by the server verifier), then the
/// hello: the claimed index must be the one of the authenticated key, and lower than ours.
async fn accept_one(
    ctx: &Ctx,
    incoming: quinn::Incoming,
) -> Result<(Arc<Peer>, quinn::Connection, u64), HandshakeError> {
    let conn = within(ACCEPT_TIMEOUT, incoming.accept()?).await?;
    let Some(peer) = peer_public_key(&conn).and_then(|k| ctx.shared.peer_by_key(&k)) else {
        // The verifier only lets listed keys in, so this would be a bug.
        CloseCode::NotAuthorized.close(&conn);
        return Err(HandshakeError::Hello(
            "authenticated key is not in the set".into(),
        ));
    };
    let peer = peer.clone();
    let exchange = async {
        let (send, mut recv) = conn.accept_bi().await?;
        let mut hello = [0u8; HELLO_BYTES];
        recv.read_exact(&mut hello)
            .await
            .map_err(|e| HandshakeError::Hello(e.to_string()))?;
        let claimed = decode_hello(&hello).map_err(|e| HandshakeError::Hello(e.to_string()))?;
        Ok::<_, HandshakeError>((send, claimed))
    };
    let (mut send, claimed) = match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            CloseCode::Protocol.close(&conn);
            return Err(e);
        }
        Err(_) => {
            CloseCode::Protocol.close(&conn);
            return Err(HandshakeError::Hello("no hello in time".into()));
        }
    };
    if claimed != peer.index || claimed >= ctx.shared.me {
        CloseCode::NotAuthorized.close(&conn);
        return Err(HandshakeError::Hello(format!(
            "key of validator {} claims index {claimed} (we are {})",
            peer.index, ctx.shared.me
        )));
    }
    let Some(id) = ctx.shared.install(&peer, &conn) else {
        return Err(HandshakeError::ShuttingDown);
    };
    if send.write_all(&encode_hello(ctx.shared.me)).await.is_err() || send.finish().is_err() {
        // The link is installed; its run loop notices the closed connection.
        tracing::debug!(peer = peer.index, "hello reply not sent");
    }
    Ok((peer, conn, id))
}
