//! `/api/v1/consensus/rounds/...` and `/api/v1/consensus/metrics`: a round is a height
//! (`round_id` = `round-<height>`, DESIGN §2) and its way from proposal to durable storage.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult};
use super::view::{NodeView, Phase, RoundEntry, ROUND_LOG_HEIGHTS};

/// Most entries `rounds/history` returns.
pub const HISTORY_LIMIT_MAX: usize = 1000;

/// Parses `round-<height>` (decimal, leading zeros allowed, height at least 1).
pub fn parse_round_id(id: &str) -> Result<u64, ApiError> {
    let digits = id.strip_prefix("round-").ok_or_else(|| {
        ApiError::bad_request(format!(
            "round id {id:?} is not of the form round-<height>, e.g. round-42"
        ))
    })?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "round id {id:?}: the height after `round-` must be a decimal number"
        )));
    }
    let height: u64 = digits
        .parse()
        .map_err(|_| ApiError::bad_request(format!("round id {id:?}: height out of range")))?;
    if height == 0 {
        return Err(ApiError::bad_request(
            "round-0 is the genesis block, which no round decides; heights start at 1",
        ));
    }
    Ok(height)
}

/// The round id of `height`.
pub fn round_id(height: u64) -> String {
    format!("round-{height}")
}

/// Unix ms at which a height reached each step (absent: not reached, or not recorded because
/// the height is older than the live log and read from the store).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, ToSchema)]
pub struct PhaseTimes {
    /// Proposed (pre-prepare): made or first seen here. From the store: the proposer's clock.
    pub proposed_ms: Option<u64>,
    /// Prepared: a QC for it seen here.
    pub prepared_ms: Option<u64>,
    /// Committed here.
    pub committed_ms: Option<u64>,
    /// Executed after its commit.
    pub executed_ms: Option<u64>,
    /// Durable in the store.
    pub durable_ms: Option<u64>,
}

/// Where a status came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The node's live log of recent heights, with step times.
    Live,
    /// The durable chain (older than the live log): committed and durable, times unknown.
    Store,
}

/// One round's status.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct RoundStatus {
    /// `round-<height>`.
    pub round_id: String,
    /// The height it decides.
    pub height: u64,
    /// The consensus round (view) of its latest block.
    pub view: u64,
    /// The furthest step reached.
    pub phase: Phase,
    /// The block's id (`0x` and 64 hex digits).
    pub block_id: Option<String>,
    /// The proposer's `validator_id`.
    pub proposer: Option<String>,
    /// Transactions in the block.
    pub transactions: Option<u64>,
    /// When each step was reached.
    pub times: PhaseTimes,
    /// Proposed longer ago than `coordinator.round_timeout_seconds` and not committed.
    pub timed_out: bool,
    /// Where this came from.
    pub source: Source,
}

impl RoundStatus {
    pub(crate) fn from_entry(view: &NodeView, height: u64, e: &RoundEntry) -> Self {
        Self {
            round_id: round_id(height),
            height,
            view: e.round,
            phase: e.phase(),
            block_id: e.block_id.map(|b| b.to_string()),
            proposer: e.proposer.map(|p| view.name_of(p)),
            transactions: e.txs,
            times: PhaseTimes {
                proposed_ms: e.proposed_ms,
                prepared_ms: e.prepared_ms,
                committed_ms: e.committed_ms,
                executed_ms: e.executed_ms,
                durable_ms: e.durable_ms,
            },
            timed_out: e.committed_ms.is_none()
                && e.proposed_ms.is_some_and(|p| {
                    super::view::unix_ms().saturating_sub(p) > view.round_timeout_ms
                }),
            source: Source::Live,
        }
    }
}

/// The status of `height`: from the live log, else from the store, else not found.
pub(crate) fn status_of(view: &NodeView, height: u64) -> Result<RoundStatus, ApiError> {
    if let Some(e) = view.rounds.get(height) {
        return Ok(RoundStatus::from_entry(view, height, &e));
    }
    let Some(b) = view.chain.block(height).map_err(ApiError::store)? else {
        return Err(ApiError::not_found(format!(
            "{}: no block at height {height} here (committed height {})",
            round_id(height),
            view.committed_height().0
        )));
    };
    Ok(RoundStatus {
        round_id: round_id(height),
        height,
        view: b.round.0,
        phase: Phase::Durable,
        block_id: Some(b.id(&view.ctx.chain_id).to_string()),
        proposer: Some(view.name_of(b.author)),
        transactions: crate::mempool::Payload::decode(&b.payload)
            .ok()
            .map(|p| p.len() as u64),
        times: PhaseTimes {
            proposed_ms: Some(b.timestamp_ms),
            ..PhaseTimes::default()
        },
        timed_out: false,
        source: Source::Store,
    })
}

/// A round's status.
#[utoipa::path(get, path = "/api/v1/consensus/rounds/{round_id}/status", operation_id = "round_status", tag = "rounds",
    params(("round_id" = String, Path, description = "`round-<height>`")),
    responses(
        (status = 200, body = RoundStatus, description = "the round's status"),
        (status = 400, body = ApiError, description = "malformed round id"),
        (status = 404, body = ApiError, description = "no such height here"),
    ))]
pub async fn round_status(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<RoundStatus> {
    let height = parse_round_id(&id)?;
    Ok(Json(status_of(&view, height)?))
}

/// Heights in flight.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ActiveRounds {
    /// The highest committed height.
    pub committed_height: u64,
    /// The highest durable height.
    pub durable_height: u64,
    /// The consensus round (view) this node is in.
    pub current_view: u64,
    /// Heights above the durable one that a block was proposed for, oldest first: the newest
    /// `coordinator.max_active_rounds` of them.
    pub rounds: Vec<RoundStatus>,
    /// Heights in flight left out by `coordinator.max_active_rounds`.
    pub omitted: usize,
}

/// Heights in flight: proposed, not yet durable.
#[utoipa::path(get, path = "/api/v1/consensus/rounds/active", operation_id = "rounds_active", tag = "rounds",
    responses((status = 200, body = ActiveRounds, description = "the active rounds")))]
pub async fn active_rounds(State(view): State<Arc<NodeView>>) -> Json<ActiveRounds> {
    let durable = view.durable_height().0;
    let all = view.rounds.above(durable);
    let omitted = all.len().saturating_sub(view.max_active_rounds);
    let rounds = all[omitted..]
        .iter()
        .map(|(h, e)| RoundStatus::from_entry(&view, *h, e))
        .collect();
    Json(ActiveRounds {
        omitted,
        committed_height: view.committed_height().0,
        durable_height: durable,
        current_view: view
            .progress
            .round
            .load(std::sync::atomic::Ordering::Acquire),
        rounds,
    })
}

/// `rounds/history` query.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How many (1 to 1000; default 100).
    pub limit: Option<usize>,
}

/// Committed rounds, newest first.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct RoundHistory {
    /// Newest first.
    pub rounds: Vec<RoundStatus>,
    /// How far back the live log reaches (older heights: `rounds/{round_id}/status` reads them
    /// from the store).
    pub live_from_height: Option<u64>,
}

/// Committed rounds, newest first, from the live log (the last 4096 heights).
#[utoipa::path(get, path = "/api/v1/consensus/rounds/history", operation_id = "rounds_history", tag = "rounds",
    params(HistoryQuery),
    responses(
        (status = 200, body = RoundHistory, description = "the round history"),
        (status = 400, body = ApiError, description = "limit out of range"),
    ))]
pub async fn round_history(
    State(view): State<Arc<NodeView>>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<RoundHistory> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {HISTORY_LIMIT_MAX}, got {limit}"
        )));
    }
    let rounds = view
        .rounds
        .history(limit)
        .iter()
        .map(|(h, e)| RoundStatus::from_entry(&view, *h, e))
        .collect();
    Ok(Json(RoundHistory {
        rounds,
        live_from_height: view.rounds.span().map(|(lo, _)| lo),
    }))
}

/// The spec's `TripleConsensusMetrics`, measured.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ConsensusMetrics {
    /// Rounds entered (views), since start.
    pub total_rounds: u64,
    /// Blocks committed since start.
    pub committed_blocks: u64,
    /// Rounds given up by timeout (view changes), since start.
    pub view_changes: u64,
    /// Committed blocks over committed blocks plus view changes, since start (1 when neither).
    pub success_rate: f64,
    /// Mean proposal-to-commit time over the live log's committed heights (ms).
    pub average_latency_ms: f64,
    /// Median of the same (ms).
    pub latency_ms_p50: u64,
    /// 99th percentile of the same (ms).
    pub latency_ms_p99: u64,
    /// Committed heights the latency figures cover (the live log's: at most 4096).
    pub latency_heights: usize,
    /// The highest committed height.
    pub committed_height: u64,
    /// The highest durable height.
    pub durable_height: u64,
    /// The consensus round (view) this node is in.
    pub current_view: u64,
    /// Votes this node signed, since start.
    pub votes_sent: u64,
    /// Proposals this node made, since start.
    pub proposals: u64,
    /// Milliseconds since the last commit (since start when none).
    pub last_commit_age_ms: u64,
}

pub(crate) fn consensus_metrics(view: &NodeView) -> ConsensusMetrics {
    let s = view.sample();
    let mut lat = view.rounds.commit_latencies_ms();
    lat.sort_unstable();
    let q = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let avg = if lat.is_empty() {
        0.0
    } else {
        lat.iter().sum::<u64>() as f64 / lat.len() as f64
    };
    let committed = s.core.blocks_committed;
    let failed = s.core.view_changes;
    ConsensusMetrics {
        total_rounds: committed + failed,
        committed_blocks: committed,
        view_changes: failed,
        success_rate: if committed + failed == 0 {
            1.0
        } else {
            committed as f64 / (committed + failed) as f64
        },
        average_latency_ms: avg,
        latency_ms_p50: q(0.5),
        latency_ms_p99: q(0.99),
        latency_heights: lat.len().min(ROUND_LOG_HEIGHTS),
        committed_height: view.committed_height().0,
        durable_height: view.durable_height().0,
        current_view: view
            .progress
            .round
            .load(std::sync::atomic::Ordering::Acquire),
        votes_sent: s.core.votes_sent,
        proposals: s.core.proposals,
        last_commit_age_ms: view.commit_age_ms(),
    }
}

/// Consensus figures since start.
#[utoipa::path(get, path = "/api/v1/consensus/metrics", operation_id = "consensus_metrics", tag = "rounds",
    responses((status = 200, body = ConsensusMetrics, description = "the consensus metrics")))]
pub async fn metrics(State(view): State<Arc<NodeView>>) -> Json<ConsensusMetrics> {
    Json(consensus_metrics(&view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ids_parse_or_name_what_is_wrong() {
        assert_eq!(parse_round_id("round-42").unwrap(), 42);
        assert_eq!(parse_round_id("round-001").unwrap(), 1);
        for bad in [
            "42",
            "round-",
            "round-0",
            "round--1",
            "round-1e3",
            "round-99999999999999999999",
            "Round-1",
        ] {
            let e = parse_round_id(bad).unwrap_err();
            assert_eq!(
                e.error.code,
                super::super::error::ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }
}
