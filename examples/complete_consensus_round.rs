//! The spec's "Complete Consensus Round Execution", against a running validator:
//! `cargo run --example complete_consensus_round -- http://127.0.0.1:8080`
//! (`bpci testnet --hold` prints each validator's API URL).
//!
//! Rounds start by themselves (a round is a height); this follows the next one to its commit
//! and prints its status and the node's metrics. There is no starting a round
//! with bundle proposals: this build has no auction.

use std::time::Duration;

use bpci::coordinator::{ConsensusError, TripleConsensusCoordinator};

fn main() -> Result<(), ConsensusError> {
    let api = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BPCI_API").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let coordinator = TripleConsensusCoordinator::connect(&api)?;
    let before = coordinator.get_consensus_metrics()?;
    let round_id = format!("round-{}", before.committed_height + 1);
    println!("following consensus round: {round_id}");

    let status = coordinator.execute_consensus_round(&round_id, Duration::from_secs(30))?;
    println!("consensus round executed: phase {:?}", status.phase);
    println!(
        "final status: block {} by {} in view {}, {} transactions",
        status.block_id.as_deref().unwrap_or("-"),
        status.proposer.as_deref().unwrap_or("-"),
        status.view,
        status.transactions.unwrap_or(0)
    );

    let metrics = coordinator.get_consensus_metrics()?;
    println!("consensus metrics:");
    println!("  - total rounds: {}", metrics.total_rounds);
    println!("  - success rate: {:.2}%", metrics.success_rate * 100.0);
    println!("  - average latency: {:.2}ms", metrics.average_latency_ms);
    Ok(())
}
