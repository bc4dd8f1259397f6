//! Health: `/health/consensus`, `/health/ibft`, `/health/hotstuff` answer 200 or 503 from real
//! freshness (never a constant OK); `/livez` and `/readyz` are for orchestrators.
//!
//! - consensus: a commit within `node.health_stall_seconds` (since start, before the first).
//! - ibft: that, and connected validators holding a quorum of stake with this one ("connected":
//!   a live QUIC connection; a validator that died without closing it counts until the
//!   transport's idle timeout, 10 s, ends it).
//! - hotstuff: that, and execution and persistence keeping up: no committed block waiting for
//!   durability longer than the stall threshold.
//! - livez: the consensus stage's loop (it ticks every 2 ms) turned within [`LIVE_WITHIN_MS`],
//!   the node's sampler too, and execution has not halted (a committed block that could not be
//!   executed). A node that answers 503 here needs a restart.
//! - readyz: connected to a quorum and following the chain (the consensus check holds): a node
//!   that is starting, cut off or far behind is not ready.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::ibft::quorum_stake;
use super::view::{unix_ms, NodeView, SAMPLE_INTERVAL_MS};
use crate::types::{Stake, ValidatorIndex};

/// A loop that has not turned for this long is stuck.
pub const LIVE_WITHIN_MS: u64 = 5_000;

/// `ok` or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The check holds.
    Ok,
    /// The check fails; `problems` says why.
    Failing,
}

/// A health check's answer (200 when `status` is `ok`, 503 otherwise).
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct HealthReport {
    /// Which check.
    pub check: String,
    /// Its outcome.
    pub status: Health,
    /// The highest committed height.
    pub committed_height: u64,
    /// The highest durable height.
    pub durable_height: u64,
    /// Milliseconds since the last commit (since start when none yet).
    pub last_commit_age_ms: u64,
    /// The threshold past which no commit is a stall (ms).
    pub stall_after_ms: u64,
    /// The consensus round (view) this node is in.
    pub current_view: u64,
    /// Validators connected to this one.
    pub connected_peers: usize,
    /// Stake of those and this node together.
    pub connected_stake: u64,
    /// Stake needed for a quorum.
    pub quorum_stake: u64,
    /// What fails, one sentence each (empty when ok).
    pub problems: Vec<String>,
}

fn report(view: &NodeView, check: &str, problems: Vec<String>) -> (StatusCode, Json<HealthReport>) {
    let s = view.sample();
    let connected_stake = connected_stake(view, &s.transport.connected);
    let ok = problems.is_empty();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(HealthReport {
            check: check.to_string(),
            status: if ok { Health::Ok } else { Health::Failing },
            committed_height: view.committed_height().0,
            durable_height: view.durable_height().0,
            last_commit_age_ms: view.commit_age_ms(),
            stall_after_ms: view.stall_after_ms,
            current_view: view.progress.round.load(Ordering::Acquire),
            connected_peers: s.transport.connected_peers,
            connected_stake,
            quorum_stake: quorum_stake(&view.ctx.validators),
            problems,
        }),
    )
}

fn connected_stake(view: &NodeView, connected: &[u16]) -> u64 {
    let peers: u64 = connected
        .iter()
        .filter(|i| **i != view.me.0)
        .map(|i| view.ctx.validators.stake(ValidatorIndex(*i)).0)
        .sum();
    peers + view.ctx.validators.stake(view.me).0
}

fn stall(view: &NodeView) -> Option<String> {
    let age = view.commit_age_ms();
    (age > view.stall_after_ms).then(|| {
        let s = view.sample();
        format!(
            "no commit for {:.1} s (threshold {:.1} s): committed height {}, in view {}, {} of {} peers connected",
            age as f64 / 1000.0,
            view.stall_after_ms as f64 / 1000.0,
            view.committed_height().0,
            view.progress.round.load(Ordering::Acquire),
            s.transport.connected_peers,
            view.ctx.validators.len().saturating_sub(1),
        )
    })
}

fn quorum_problem(view: &NodeView) -> Option<String> {
    let s = view.sample();
    let have = connected_stake(view, &s.transport.connected);
    (!view.ctx.validators.is_quorum(Stake(have))).then(|| {
        format!(
            "connected validators hold {have} stake with this one; a quorum needs {}",
            quorum_stake(&view.ctx.validators)
        )
    })
}

fn persist_problem(view: &NodeView) -> Option<String> {
    let committed = view.committed_height().0;
    let durable = view.durable_height().0;
    let age = unix_ms().saturating_sub(view.rounds.last_durable_ms().max(view.started_ms));
    (committed > durable && age > view.stall_after_ms).then(|| {
        format!(
            "{} committed blocks wait for execution and persistence; nothing became durable for {:.1} s",
            committed - durable,
            age as f64 / 1000.0
        )
    })
}

/// The chain commits.
#[utoipa::path(get, path = "/health/consensus", operation_id = "health_consensus", tag = "health",
    responses(
        (status = 200, body = HealthReport, description = "committing"),
        (status = 503, body = HealthReport, description = "stalled: `problems` says how long and where"),
    ))]
pub async fn consensus(State(view): State<Arc<NodeView>>) -> (StatusCode, Json<HealthReport>) {
    let problems = stall(&view).into_iter().collect();
    report(&view, "consensus", problems)
}

/// The chain commits and a quorum is connected.
#[utoipa::path(get, path = "/health/ibft", operation_id = "health_ibft", tag = "health",
    responses(
        (status = 200, body = HealthReport, description = "committing with a quorum connected"),
        (status = 503, body = HealthReport, description = "stalled or no quorum connected"),
    ))]
pub async fn ibft(State(view): State<Arc<NodeView>>) -> (StatusCode, Json<HealthReport>) {
    let problems = [stall(&view), quorum_problem(&view)]
        .into_iter()
        .flatten()
        .collect();
    report(&view, "ibft", problems)
}

/// The chain commits and execution and persistence keep up.
#[utoipa::path(get, path = "/health/hotstuff", operation_id = "health_hotstuff", tag = "health",
    responses(
        (status = 200, body = HealthReport, description = "committing; the pipeline drains"),
        (status = 503, body = HealthReport, description = "stalled, or committed blocks not becoming durable"),
    ))]
pub async fn hotstuff(State(view): State<Arc<NodeView>>) -> (StatusCode, Json<HealthReport>) {
    let problems = [stall(&view), persist_problem(&view)]
        .into_iter()
        .flatten()
        .collect();
    report(&view, "hotstuff", problems)
}

/// A probe's answer.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Probe {
    /// `ok` or not.
    pub status: Health,
    /// What fails (empty when ok).
    pub problems: Vec<String>,
}

fn probe(problems: Vec<String>) -> (StatusCode, Json<Probe>) {
    let ok = problems.is_empty();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Probe {
            status: if ok { Health::Ok } else { Health::Failing },
            problems,
        }),
    )
}

/// The node's own loops turn (for a liveness probe: failing means restart it).
#[utoipa::path(get, path = "/livez", operation_id = "livez", tag = "health",
    responses(
        (status = 200, body = Probe, description = "the probe"),
        (status = 503, body = Probe, description = "a loop has stopped turning"),
    ))]
pub async fn livez(State(view): State<Arc<NodeView>>) -> (StatusCode, Json<Probe>) {
    let now = unix_ms();
    let mut problems = Vec::new();
    let turn = view.rounds.consensus_turn_ms().max(view.started_ms);
    if now.saturating_sub(turn) > LIVE_WITHIN_MS {
        problems.push(format!(
            "the consensus stage has not turned for {:.1} s",
            now.saturating_sub(turn) as f64 / 1000.0
        ));
    }
    if let Some(why) = view.halted.get() {
        problems.push(format!("execution halted: {why}"));
    }
    let sampled = view.sample().at_ms.max(view.started_ms);
    if now.saturating_sub(sampled) > LIVE_WITHIN_MS.max(4 * SAMPLE_INTERVAL_MS) {
        problems.push(format!(
            "the node's sampler has not run for {:.1} s",
            now.saturating_sub(sampled) as f64 / 1000.0
        ));
    }
    probe(problems)
}

/// The node can serve: store open, a quorum connected, following the chain.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses(
        (status = 200, body = Probe, description = "the probe"),
        (status = 503, body = Probe, description = "not connected to a quorum, or not following the chain"),
    ))]
pub async fn readyz(State(view): State<Arc<NodeView>>) -> (StatusCode, Json<Probe>) {
    probe(
        [quorum_problem(&view), stall(&view)]
            .into_iter()
            .flatten()
            .collect(),
    )
}
