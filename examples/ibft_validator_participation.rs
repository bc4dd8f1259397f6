//! The spec's "IBFT Validator Participation", against a running validator:
//! `cargo run --example ibft_validator_participation -- --api URL --validator-id validator-001
//!  --key-file DIR/validator-1.key --token-file DIR/operator-token`
//! (a `bpci testnet --hold` directory has the keys and the operator token).
//!
//! Reads the latest committed round's block proposal, signs a prepare vote for it with the
//! validator's key and submits it (the node checks it as a vote from QUIC; a vote for a round
//! already decided changes nothing), then waits for the next round's finalization.

use std::path::PathBuf;
use std::time::Duration;

use bpci::coordinator::{ConsensusError, TripleConsensusCoordinator, VoteType};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = arg("--api").unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let validator_id = arg("--validator-id").ok_or("--validator-id is needed")?;
    let key = bpci::node::keys::read(&PathBuf::from(
        arg("--key-file").ok_or("--key-file is needed")?,
    ))?;
    let token = bpci::node::keys::read_token(&PathBuf::from(
        arg("--token-file").ok_or("--token-file is needed")?,
    ))?;
    let coordinator = TripleConsensusCoordinator::connect(&api)?.with_token(token);

    // Phase 1: a block proposal.
    let height = coordinator.get_consensus_metrics()?.committed_height;
    let round_id = format!("round-{height}");
    let block_proposal = coordinator.get_block_proposal(&round_id)?;
    println!("received block proposal: {}", block_proposal.block_id);

    // Phase 2: a prepare vote, signed with the validator's key.
    let prepare_vote =
        coordinator.sign_vote(&key, &validator_id, VoteType::Prepare, &block_proposal)?;
    let accepted = coordinator.submit_validator_vote(prepare_vote)?;
    println!(
        "submitted prepare vote for height {} (voter {})",
        accepted.height, accepted.voter
    );

    // Phase 3: finalization of the next round.
    let next = format!("round-{}", height + 1);
    let final_status = coordinator
        .wait_for_finalization(&next, Duration::from_secs(30))
        .map_err(|e: ConsensusError| e.to_string())?;
    println!(
        "consensus finalized: {} {:?}",
        final_status.round_id, final_status.phase
    );
    Ok(())
}
