//! Beyond the spec: `/api/v1/blocks/{height}` (a committed block, its certificates and its
//! transaction ids, a page at a time) and `/api/v1/transactions/{id}` (pending, or committed
//! with the Merkle inclusion proof against the block's transaction root).
//!
//! How far back: blocks as far as the store keeps them (all of the chain today); transactions as
//! far as the committed window reaches (see [`crate::node::committed`]: at least 1,835,008 of the
//! latest committed transactions), which is what exactly-once admission keeps.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult};
use super::ibft::{certificates, proposal_view, ProposalView, QcView};
use super::view::NodeView;
use crate::client_proto::TxState;
use crate::mempool::{Payload, TxId};

/// Most transaction ids one page of `blocks/{height}` lists.
pub const TX_PAGE_MAX: usize = 1000;

/// `blocks/{height}` query.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TxPage {
    /// First transaction listed (default 0).
    pub offset: Option<usize>,
    /// How many (0 to 1000; default 100).
    pub limit: Option<usize>,
}

/// A committed block.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct BlockView {
    /// The block as proposed.
    pub block: ProposalView,
    /// The QC that certified it.
    pub prepare: Option<QcView>,
    /// The child's QC that committed it.
    pub commit: Option<QcView>,
    /// The state root after it, if recorded.
    pub state_root: Option<String>,
    /// The first transaction listed.
    pub offset: usize,
    /// Transaction ids (`0x` and 64 hex digits: each the BLAKE3 leaf hash of the transaction),
    /// from `offset`, in execution order.
    pub transaction_ids: Vec<String>,
}

fn height_param(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|h| *h >= 1)
        .ok_or_else(|| ApiError::bad_request(format!("height {s:?} is not a number of at least 1")))
}

/// A committed, durable block with its certificates and a page of its transaction ids.
#[utoipa::path(get, path = "/api/v1/blocks/{height}", operation_id = "block", tag = "blocks",
    params(("height" = u64, Path, description = "at least 1"), TxPage),
    responses(
        (status = 200, body = BlockView, description = "the block view"),
        (status = 400, body = ApiError, description = "malformed height or page"),
        (status = 404, body = ApiError, description = "no durable block at that height here"),
    ))]
pub async fn block(
    State(view): State<Arc<NodeView>>,
    Path(height): Path<String>,
    Query(page): Query<TxPage>,
) -> ApiResult<BlockView> {
    let height = height_param(&height)?;
    let offset = page.offset.unwrap_or(0);
    let limit = page.limit.unwrap_or(100);
    if limit > TX_PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be at most {TX_PAGE_MAX}, got {limit}"
        )));
    }
    let b = view
        .chain
        .block(height)
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no durable block at height {height} here (durable height {})",
                view.durable_height().0
            ))
        })?;
    let payload = Payload::decode(&b.payload).map_err(ApiError::store)?;
    let transaction_ids = payload
        .txs()
        .skip(offset)
        .take(limit)
        .map(|tx| format!("0x{}", hex::encode(crate::crypto::merkle::leaf_hash(tx))))
        .collect();
    let (prepare, commit) = certificates(&view, height)?;
    Ok(Json(BlockView {
        block: proposal_view(&view, height, &b),
        prepare: prepare.as_ref().map(|q| QcView::of(&view, q)),
        commit: commit.as_ref().map(|q| QcView::of(&view, q)),
        state_root: view
            .chain
            .exec_root(height)
            .map_err(ApiError::store)?
            .map(|r| format!("0x{}", hex::encode(r))),
        offset,
        transaction_ids,
    }))
}

/// Where a committed transaction is and the proof that it is there.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Inclusion {
    /// The block's height.
    pub height: u64,
    /// `round-<height>`.
    pub round_id: String,
    /// The block's id.
    pub block_id: String,
    /// Its position in the block (0-based).
    pub position: u64,
    /// The block's transaction root.
    pub tx_root: String,
    /// Leaves in the block's tree.
    pub leaf_count: u64,
    /// Sibling hashes from the leaf up (BLAKE3 Merkle tree of `crate::crypto::merkle`).
    pub siblings: Vec<String>,
}

/// What this node knows of a transaction.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TxView {
    /// In the mempool or a proposal of this node not yet committed.
    Pending {
        /// The id asked about.
        id: String,
    },
    /// Committed.
    Committed {
        /// The id asked about.
        id: String,
        /// Where, with the proof.
        inclusion: Inclusion,
    },
}

fn tx_id_param(s: &str) -> Result<TxId, ApiError> {
    let hex_part = s.strip_prefix("0x").unwrap_or(s);
    let bytes = hex::decode(hex_part).ok().filter(|b| b.len() == 32);
    bytes
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request(format!("transaction id {s:?} is not 64 hex digits")))
}

/// A transaction by id: pending, or committed with its Merkle inclusion proof.
#[utoipa::path(get, path = "/api/v1/transactions/{id}", operation_id = "transaction", tag = "blocks",
    params(("id" = String, Path, description = "64 hex digits, `0x` optional")),
    responses(
        (status = 200, body = TxView, description = "the tx view"),
        (status = 400, body = ApiError, description = "malformed id"),
        (status = 404, body = ApiError, description = "unknown here"),
    ))]
pub async fn transaction(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<TxView> {
    let tx = tx_id_param(&id)?;
    let shown = format!("0x{}", hex::encode(tx));
    let state = match &view.gateway {
        Some(g) => g.status(&[tx]).pop().unwrap_or(TxState::Unknown),
        None => view
            .committed_window
            .lock()
            .ok()
            .and_then(|w| w.status(&tx))
            .map_or(TxState::Unknown, |c| TxState::Committed(Box::new(c))),
    };
    match state {
        TxState::Unknown => Err(ApiError::not_found(format!(
            "transaction {shown} is unknown here (not pending, not in the committed window)"
        ))),
        TxState::Pending => Ok(Json(TxView::Pending { id: shown })),
        TxState::Committed(c) => Ok(Json(TxView::Committed {
            id: shown,
            inclusion: Inclusion {
                height: c.height,
                round_id: super::rounds::round_id(c.height),
                block_id: c.block.to_string(),
                position: c.proof.index,
                tx_root: format!("0x{}", hex::encode(c.tx_root)),
                leaf_count: c.proof.leaf_count,
                siblings: c
                    .proof
                    .siblings
                    .iter()
                    .map(|s| format!("0x{}", hex::encode(s)))
                    .collect(),
            },
        })),
    }
}
