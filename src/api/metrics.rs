//! Prometheus `/metrics` (text format 0.0.4): the spec's metric names and the node's own, read
//! from the [`NodeView`] at each scrape (nothing on the hot path). Labels take values from fixed
//! sets only (stage names, outcomes, fault kinds): the series count never grows with rounds,
//! heights, hashes or peers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::hotstuff::optimistic_rate;
use super::view::NodeView;

/// Bucket bounds of `triple_consensus_round_duration_seconds` (seconds).
pub const ROUND_BUCKETS_S: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds of `bpci_stage_latency_seconds` (seconds).
pub const STAGE_BUCKETS_S: [f64; 12] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Reads the view at each scrape.
#[derive(Debug)]
struct NodeCollector {
    view: Arc<NodeView>,
}

impl std::fmt::Debug for NodeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeView")
            .field("validator_id", &self.validator_id)
            .finish_non_exhaustive()
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge_f(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn buckets(bounds_s: &[f64], counts: &[u64]) -> Vec<(f64, u64)> {
    // Prometheus text takes per-bucket counts here and writes them cumulatively: give the
    // increments.
    let mut prev = 0;
    bounds_s
        .iter()
        .zip(counts)
        .map(|(b, c)| {
            let inc = c.saturating_sub(prev);
            prev = *c;
            (*b, inc)
        })
        .collect()
}

fn micros(bounds_s: &[f64]) -> Vec<u64> {
    bounds_s.iter().map(|b| (b * 1e6).round() as u64).collect()
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = &self.view;
        let s = v.sample();
        let committed = s.core.blocks_committed;
        let failed = s.core.view_changes;

        // The spec's names.
        {
            let mut m = e.encode_descriptor(
                "triple_consensus_rounds",
                "Rounds this node saw end, by outcome: a committed block or a view change (timeout certificate).",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in [("committed", committed), ("view_change", failed)] {
                let labels = [("outcome", outcome)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let bounds = micros(&ROUND_BUCKETS_S);
            let (count, sum_us, cum) = v.rounds.commit_cumulative(&bounds);
            let mut m = e.encode_descriptor(
                "triple_consensus_round_duration_seconds",
                "Time from a block's proposal (made or first seen here) to its commit here.",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<NoLabelSet>(
                sum_us / 1e6,
                count,
                &buckets(&ROUND_BUCKETS_S, &cum),
                None,
            )?;
        }
        counter(
            &mut e,
            "ibft_validator_votes",
            "Votes (prepare/commit) this validator signed.",
            s.core.votes_sent,
        )?;
        gauge_f(
            &mut e,
            "ibft_consensus_success_rate",
            "Committed rounds over committed rounds plus view changes, since start (1 before any).",
            if committed + failed == 0 {
                1.0
            } else {
                committed as f64 / (committed + failed) as f64
            },
        )?;
        gauge(
            &mut e,
            "hotstuff_pipeline_depth",
            "Committed blocks that may wait for execution and persistence before a leader stops proposing.",
            v.progress.pipeline_depth.load(Ordering::Relaxed) as i64,
        )?;
        gauge_f(
            &mut e,
            "hotstuff_optimistic_execution_rate",
            "Share of committed blocks whose speculative execution (when certified) was used at commit.",
            optimistic_rate(s.exec.speculative_hits, s.exec.executed_at_commit),
        )?;
        {
            let mut m = e.encode_descriptor(
                "consensus_byzantine_faults_detected",
                "Byzantine behaviour detected, by kind: equivocation evidence, frames with a bad signature, malformed or undecodable frames.",
                None,
                MetricType::Counter,
            )?;
            let [undecodable, malformed, bad_signature] = s.border_rejected;
            for (kind, n) in [
                ("equivocation", s.evidence),
                ("bad_signature", bad_signature),
                ("malformed", malformed + undecodable),
            ] {
                let labels = [("kind", kind)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        // The node's own.
        gauge(
            &mut e,
            "bpci_committed_height",
            "The highest committed height.",
            v.committed_height().0 as i64,
        )?;
        gauge(
            &mut e,
            "bpci_durable_height",
            "The highest height executed and durable in the store.",
            v.durable_height().0 as i64,
        )?;
        gauge(
            &mut e,
            "bpci_current_view",
            "The consensus round (view) this node is in.",
            v.progress.round.load(Ordering::Acquire) as i64,
        )?;
        gauge_f(
            &mut e,
            "bpci_last_commit_age_seconds",
            "Seconds since the last commit (since start before the first).",
            v.commit_age_ms() as f64 / 1000.0,
        )?;
        counter(
            &mut e,
            "bpci_proposals",
            "Blocks this validator proposed.",
            s.core.proposals,
        )?;
        counter(
            &mut e,
            "bpci_timeouts_signed",
            "Round timeouts this validator signed.",
            s.core.timeouts_signed,
        )?;
        counter(
            &mut e,
            "bpci_transactions_executed",
            "Transactions of committed blocks executed.",
            s.exec.txs_executed,
        )?;
        counter(
            &mut e,
            "bpci_state_root_divergences",
            "Proposers' state roots that differed from this node's.",
            s.exec.divergences,
        )?;
        gauge(
            &mut e,
            "bpci_mempool_transactions",
            "Transactions waiting in the mempool.",
            s.mempool_txs as i64,
        )?;
        gauge(
            &mut e,
            "bpci_transport_connected_peers",
            "Validators with a live QUIC connection to this one.",
            s.transport.connected_peers as i64,
        )?;
        counter(
            &mut e,
            "bpci_transport_handshake_failures",
            "QUIC handshakes refused or failed.",
            s.transport.handshake_failures,
        )?;
        counter(
            &mut e,
            "bpci_transport_reconnects",
            "QUIC connections re-established.",
            s.transport.reconnects,
        )?;
        counter(
            &mut e,
            "bpci_transport_frame_errors",
            "Frames that did not decode.",
            s.transport.frame_errors,
        )?;
        counter(
            &mut e,
            "bpci_egress_dropped",
            "Messages the egress stage could not queue.",
            s.egress_dropped,
        )?;
        counter(
            &mut e,
            "bpci_persist_failures",
            "Group commits to the store that failed (and were retried).",
            s.persist_failures,
        )?;

        // Per stage.
        {
            let mut m = e.encode_descriptor(
                "bpci_stage_queue_depth",
                "Items waiting in a pipeline stage's input queue.",
                None,
                MetricType::Gauge,
            )?;
            for st in &s.stages {
                let labels = [("stage", st.name)];
                ConstGauge::new(st.queue_depth as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "bpci_stage_items",
                "Items a pipeline stage processed.",
                None,
                MetricType::Counter,
            )?;
            for st in &s.stages {
                let labels = [("stage", st.name)];
                ConstCounter::new(st.items).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let bounds = micros(&STAGE_BUCKETS_S);
            let mut m = e.encode_descriptor(
                "bpci_stage_latency_seconds",
                "Time an item spends in a pipeline stage.",
                None,
                MetricType::Histogram,
            )?;
            for st in &v.stage_stats {
                let (count, sum_us, cum) = st.latency_cumulative(&bounds);
                let labels = [("stage", st.name)];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    sum_us / 1e6,
                    count,
                    &buckets(&STAGE_BUCKETS_S, &cum),
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The registry of one node.
pub fn registry(view: Arc<NodeView>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { view }));
    r
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", operation_id = "prometheus_metrics", tag = "metrics",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text exposition format 0.0.4")))]
pub async fn metrics(State(view): State<Arc<NodeView>>) -> Response {
    let registry = registry(view);
    let mut out = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            out,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}
