//! `/api/v1/consensus/hotstuff/...`: the pipeline. A height moves proposed → prepared (QC) →
//! committed (child QC one round later) → executed → durable while later heights are already
//! proposed; `pipeline_depth` bounds the committed blocks that may wait for execution and
//! persistence before a leader stops proposing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::rounds::{parse_round_id, round_id, status_of};
use super::view::{NodeView, Phase};
use crate::config::MAX_PIPELINE_DEPTH;

/// Time between steps of one height (ms); absent where a step was not recorded.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, ToSchema)]
pub struct StepTimes {
    /// Proposed to prepared.
    pub proposed_to_prepared_ms: Option<u64>,
    /// Prepared to committed.
    pub prepared_to_committed_ms: Option<u64>,
    /// Committed to executed.
    pub committed_to_executed_ms: Option<u64>,
    /// Executed to durable.
    pub executed_to_durable_ms: Option<u64>,
}

fn gap(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

/// A height's HotStuff state.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct HotStuffState {
    /// `round-<height>`.
    pub round_id: String,
    /// The height.
    pub height: u64,
    /// The consensus round (view) of its block.
    pub view_number: u64,
    /// The leader of that view (its proposer).
    pub leader_id: Option<String>,
    /// The pipeline step reached.
    pub pipeline_stage: Phase,
    /// Its state root, if executed (speculatively or at commit).
    pub execution: Option<ExecutionResult>,
    /// Time between its steps.
    pub steps: StepTimes,
}

/// A height's HotStuff state.
#[utoipa::path(get, path = "/api/v1/consensus/hotstuff/state/{round_id}", operation_id = "hotstuff_state", tag = "hotstuff",
    params(("round_id" = String, Path, description = "`round-<height>`")),
    responses(
        (status = 200, body = HotStuffState, description = "the hot stuff state"),
        (status = 400, body = ApiError, description = "malformed round id"),
        (status = 404, body = ApiError, description = "no such height here"),
    ))]
pub async fn state(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<HotStuffState> {
    let height = parse_round_id(&id)?;
    let status = status_of(&view, height)?;
    let t = &status.times;
    Ok(Json(HotStuffState {
        round_id: status.round_id.clone(),
        height,
        view_number: status.view,
        leader_id: status.proposer.clone(),
        pipeline_stage: status.phase,
        execution: execution_of(&view, height)?,
        steps: StepTimes {
            proposed_to_prepared_ms: gap(t.proposed_ms, t.prepared_ms),
            prepared_to_committed_ms: gap(t.prepared_ms, t.committed_ms),
            committed_to_executed_ms: gap(t.committed_ms, t.executed_ms),
            executed_to_durable_ms: gap(t.executed_ms, t.durable_ms),
        },
    }))
}

/// One pipeline stage's figures.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct StageView {
    /// `pipeline.<stage>`.
    pub name: String,
    /// Items waiting in its input queue.
    pub queue_depth: usize,
    /// Items processed since start.
    pub items: u64,
    /// Items per second over the last sample interval.
    pub items_per_s: f64,
    /// Per-item time in stage since start, median (µs).
    pub latency_us_p50: u64,
    /// 99th percentile (µs).
    pub latency_us_p99: u64,
    /// Maximum (µs).
    pub latency_us_max: u64,
}

/// The pipeline now.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Pipeline {
    /// The pipeline depth in force (committed blocks that may wait for execution and
    /// persistence).
    pub depth: u64,
    /// Committed blocks not yet durable.
    pub committed_not_durable: u64,
    /// Heights proposed above the committed one (certified or not).
    pub uncommitted_heights: usize,
    /// The highest committed height.
    pub committed_height: u64,
    /// The highest durable height.
    pub durable_height: u64,
    /// Unix ms when the stage figures were sampled.
    pub sampled_at_ms: u64,
    /// Each stage, in pipeline order.
    pub stages: Vec<StageView>,
}

pub(crate) fn pipeline(view: &NodeView) -> Pipeline {
    let s = view.sample();
    let committed = view.committed_height().0;
    let durable = view.durable_height().0;
    Pipeline {
        depth: view.progress.pipeline_depth.load(Ordering::Relaxed),
        committed_not_durable: committed.saturating_sub(durable),
        uncommitted_heights: view.rounds.above(committed).len(),
        committed_height: committed,
        durable_height: durable,
        sampled_at_ms: s.at_ms,
        stages: s
            .stages
            .iter()
            .map(|st| StageView {
                name: st.name.to_string(),
                queue_depth: st.queue_depth,
                items: st.items,
                items_per_s: st.items_per_s,
                latency_us_p50: st.latency_us_p50,
                latency_us_p99: st.latency_us_p99,
                latency_us_max: st.latency_us_max,
            })
            .collect(),
    }
}

/// Per stage: queue depth, items/s, latency; the depth in force and what is in flight.
#[utoipa::path(get, path = "/api/v1/consensus/hotstuff/pipeline", operation_id = "hotstuff_pipeline", tag = "hotstuff",
    responses((status = 200, body = Pipeline, description = "the pipeline")))]
pub async fn pipeline_status(State(view): State<Arc<NodeView>>) -> Json<Pipeline> {
    Json(pipeline(&view))
}

/// Optimistic execution and view-change figures since start.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct HotStuffMetrics {
    /// `hotstuff.optimistic_execution`.
    pub optimistic_execution: bool,
    /// Blocks executed when certified, before their commit.
    pub speculative_executions: u64,
    /// Committed blocks whose speculative result was used.
    pub speculative_hits: u64,
    /// Committed blocks executed only at their commit.
    pub executed_at_commit: u64,
    /// speculative_hits / (speculative_hits + executed_at_commit) (0 when neither).
    pub optimistic_execution_rate: f64,
    /// Proposers' state roots checked against this node's.
    pub roots_checked: u64,
    /// Roots that differed (a divergence halts nothing but is reported).
    pub divergences: u64,
    /// Rounds ended by a timeout certificate.
    pub view_changes: u64,
    /// Timeouts this node signed.
    pub timeouts_signed: u64,
    /// Proposals this node made.
    pub proposals: u64,
    /// Transactions executed.
    pub txs_executed: u64,
}

pub(crate) fn optimistic_rate(hits: u64, at_commit: u64) -> f64 {
    if hits + at_commit == 0 {
        0.0
    } else {
        hits as f64 / (hits + at_commit) as f64
    }
}

/// Optimistic execution and view-change figures since start.
#[utoipa::path(get, path = "/api/v1/consensus/hotstuff/metrics", operation_id = "hotstuff_metrics", tag = "hotstuff",
    responses((status = 200, body = HotStuffMetrics, description = "the hot stuff metrics")))]
pub async fn metrics(State(view): State<Arc<NodeView>>) -> Json<HotStuffMetrics> {
    let s = view.sample();
    Json(HotStuffMetrics {
        optimistic_execution: view.optimistic_execution,
        speculative_executions: s.exec.speculative,
        speculative_hits: s.exec.speculative_hits,
        executed_at_commit: s.exec.executed_at_commit,
        optimistic_execution_rate: optimistic_rate(
            s.exec.speculative_hits,
            s.exec.executed_at_commit,
        ),
        roots_checked: s.exec.roots_checked,
        divergences: s.exec.divergences,
        view_changes: s.core.view_changes,
        timeouts_signed: s.core.timeouts_signed,
        proposals: s.core.proposals,
        txs_executed: s.exec.txs_executed,
    })
}

/// A height's execution result.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ExecutionResult {
    /// `round-<height>`.
    pub round_id: String,
    /// The height.
    pub height: u64,
    /// The state root after the block (`0x` and 64 hex digits).
    pub state_root: String,
    /// True while the result is speculative (the block certified, not yet committed).
    pub speculative: bool,
}

fn execution_of(view: &NodeView, height: u64) -> Result<Option<ExecutionResult>, ApiError> {
    let live = view.rounds.get(height).and_then(|e| {
        e.state_root
            .map(|r| (r, e.speculative && e.committed_ms.is_none()))
    });
    let found = match live {
        Some(x) => Some(x),
        None => view
            .chain
            .exec_root(height)
            .map_err(ApiError::store)?
            .map(|r| (r, false)),
    };
    Ok(found.map(|(root, speculative)| ExecutionResult {
        round_id: round_id(height),
        height,
        state_root: format!("0x{}", hex::encode(root)),
        speculative,
    }))
}

/// A height's state root: speculative while certified, final at commit.
#[utoipa::path(get, path = "/api/v1/consensus/hotstuff/execution/{round_id}", operation_id = "hotstuff_execution", tag = "hotstuff",
    params(("round_id" = String, Path, description = "`round-<height>`")),
    responses(
        (status = 200, body = ExecutionResult, description = "the execution result"),
        (status = 400, body = ApiError, description = "malformed round id"),
        (status = 404, body = ApiError, description = "not executed here (yet)"),
    ))]
pub async fn execution(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<ExecutionResult> {
    let height = parse_round_id(&id)?;
    status_of(&view, height)?;
    execution_of(&view, height)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("{}: not executed here yet", round_id(height))))
}

/// `POST hotstuff/depth`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDepth {
    /// The new pipeline depth (1 to 64).
    pub depth: u64,
}

/// The depth before and after.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct DepthChanged {
    /// Before.
    pub previous: u64,
    /// Now.
    pub depth: u64,
}

/// Changes the pipeline depth at run time (until restart; the config's value comes back then).
/// Needs the operator token.
#[utoipa::path(post, path = "/api/v1/consensus/hotstuff/depth", operation_id = "hotstuff_set_depth", tag = "hotstuff",
    request_body = SetDepth,
    security(("operator_token" = [])),
    responses(
        (status = 200, body = DepthChanged, description = "the depth changed"),
        (status = 400, body = ApiError, description = "depth out of range or malformed body"),
        (status = 401, body = ApiError, description = "no or wrong operator token"),
    ))]
pub async fn set_depth(
    State(view): State<Arc<NodeView>>,
    _auth: super::auth::Operator,
    body: Result<Json<SetDepth>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DepthChanged> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let max = u64::from(MAX_PIPELINE_DEPTH);
    if !(1..=max).contains(&body.depth) {
        return Err(ApiError::bad_request(format!(
            "depth must be between 1 and {max}, got {}",
            body.depth
        )));
    }
    let previous = view
        .progress
        .pipeline_depth
        .swap(body.depth, Ordering::AcqRel);
    tracing::info!(target: "api", previous, depth = body.depth, "pipeline depth changed");
    // A leader holding its proposal for the old depth re-checks now.
    if let Some(wake) = view.progress.wake_core.get() {
        wake();
    }
    Ok(Json(DepthChanged {
        previous,
        depth: body.depth,
    }))
}
