//! `GET /api/v1/node`: who this node is and the validator set it runs with (a client signing a
//! vote needs the chain id and epoch bound into the digest).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::view::NodeView;

/// One validator of the set.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ValidatorView {
    /// Its `validator_id`.
    pub validator_id: String,
    /// Its index.
    pub index: u16,
    /// Its stake.
    pub stake: u64,
    /// `ed25519:` and 64 hex digits.
    pub public_key: String,
}

/// This node.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct NodeInfo {
    /// This node's `validator_id`.
    pub validator_id: String,
    /// Its index in the set.
    pub index: u16,
    /// The chain id bound into every signature.
    pub chain_id: String,
    /// The epoch of the validator set.
    pub epoch: u64,
    /// The bpci version.
    pub version: String,
    /// `hotstuff.optimistic_execution`.
    pub optimistic_execution: bool,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// The validator set, by index.
    pub validators: Vec<ValidatorView>,
}

/// Who this node is and the validator set.
#[utoipa::path(get, path = "/api/v1/node", operation_id = "node_info", tag = "node",
    responses((status = 200, body = NodeInfo, description = "this node and its validator set")))]
pub async fn info(State(view): State<Arc<NodeView>>) -> Json<NodeInfo> {
    let set = &view.ctx.validators;
    Json(NodeInfo {
        validator_id: view.validator_id.clone(),
        index: view.me.0,
        chain_id: view.ctx.chain_id.clone(),
        epoch: view.ctx.epoch().0,
        version: env!("CARGO_PKG_VERSION").into(),
        optimistic_execution: view.optimistic_execution,
        uptime_ms: super::view::unix_ms().saturating_sub(view.started_ms),
        validators: set
            .iter()
            .map(|(i, v)| ValidatorView {
                validator_id: view.name_of(i),
                index: i.0,
                stake: v.stake.0,
                public_key: v.key.to_string(),
            })
            .collect(),
    })
}
