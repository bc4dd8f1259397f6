//! The spec's `TripleConsensusCoordinator`, as a client of a validator's HTTP API (nothing the
//! node itself needs). Its methods keep the spec's names and block the calling thread (call
//! them from `tokio::task::spawn_blocking` in async code).
//!
//! ```no_run
//! use bpci::coordinator::TripleConsensusCoordinator;
//! let c = TripleConsensusCoordinator::connect("http://127.0.0.1:8080")?;
//! let m = c.get_consensus_metrics()?;
//! let next = format!("round-{}", m.committed_height + 1);
//! let status = c.wait_for_finalization(&next, std::time::Duration::from_secs(10))?;
//! println!("{} {:?}", status.round_id, status.phase);
//! # Ok::<(), bpci::coordinator::ConsensusError>(())
//! ```
//!
//! There is no `start_consensus_round` with bundle proposals and no `AuctionModeManager`: this
//! build has no auction.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::api::ibft::{ProposalView as RealBlockProposal, VoteAccepted};
pub use crate::api::node::NodeInfo;
pub use crate::api::rounds::{ConsensusMetrics as TripleConsensusMetrics, RoundStatus};
pub use crate::api::view::Phase;
use crate::crypto::Keypair;

/// How long one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The spec's `ConsensusError`, from the API's answers, plus what a client meets on its side.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// A round did not reach the asked phase in time.
    #[error("Consensus round timeout: {0}")]
    RoundTimeout(String),
    /// Too few validators connected for a quorum.
    #[error("Insufficient validator votes: {0}")]
    InsufficientVotes(String),
    /// A vote whose signature does not verify, or that contradicts one seen.
    #[error("Byzantine fault detected: {0}")]
    ByzantineFault(String),
    /// A proposal or vote that breaks a rule.
    #[error("Block proposal invalid: {0}")]
    InvalidBlockProposal(String),
    /// No such round, block or transaction on the node.
    #[error("not found: {0}")]
    NotFound(String),
    /// The node refused the input, or the token.
    #[error("refused: {0}")]
    Refused(String),
    /// The node could not be reached, or answered something that is not the API.
    #[error("node unreachable or not a bpci API: {0}")]
    Unreachable(String),
}

/// `Prepare` or `Commit` (one HotStuff vote is both: its block's prepare, its parent's commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteType {
    /// Prepare.
    Prepare,
    /// Commit.
    Commit,
}

/// The spec's `RealValidatorVote` (plus `height`, which the signed vote binds).
#[derive(Clone, Debug)]
pub struct RealValidatorVote {
    /// The voter.
    pub validator_id: String,
    /// See [`VoteType`].
    pub vote_type: VoteType,
    /// The block voted for (`0x` and 64 hex digits).
    pub block_hash: String,
    /// The block's consensus round (view).
    pub round_number: u64,
    /// The block's height.
    pub height: u64,
    /// `ed25519:` and 128 hex digits ([`TripleConsensusCoordinator::sign_vote`] makes it).
    pub signature: String,
}

/// A client of one validator's API.
pub struct TripleConsensusCoordinator {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl TripleConsensusCoordinator {
    /// A client of the node at `api` (`http://host:port`), checked with one call.
    ///
    /// # Errors
    /// [`ConsensusError::Unreachable`] when the node does not answer as a bpci API.
    pub fn connect(api: &str) -> Result<Self, ConsensusError> {
        let base = api.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(ConsensusError::Unreachable(format!(
                "{api:?} is not an http:// URL"
            )));
        }
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(CALL_TIMEOUT))
                .build(),
        );
        let c = Self {
            base,
            agent,
            token: None,
        };
        c.node_info()?;
        Ok(c)
    }

    /// Uses `token` (the node's operator token) for calls that change something.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ConsensusError> {
        let mut r =
            r.map_err(|e| ConsensusError::Unreachable(format!("{}{path}: {e}", self.base)))?;
        let status = r.status();
        let body: Value = r
            .body_mut()
            .read_json()
            .map_err(|e| ConsensusError::Unreachable(format!("{}{path}: {e}", self.base)))?;
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or_default();
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_string();
            return Err(match code {
                "NotFound" => ConsensusError::NotFound(message),
                "ByzantineFault" => ConsensusError::ByzantineFault(message),
                "InvalidBlockProposal" => ConsensusError::InvalidBlockProposal(message),
                "InsufficientVotes" => ConsensusError::InsufficientVotes(message),
                "RoundTimeout" => ConsensusError::RoundTimeout(message),
                "BadRequest" | "Unauthorized" => ConsensusError::Refused(message),
                _ => ConsensusError::Unreachable(format!("{path}: HTTP {status}: {message}")),
            });
        }
        serde_json::from_value(body).map_err(|e| {
            ConsensusError::Unreachable(format!("{}{path}: unexpected answer: {e}", self.base))
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ConsensusError> {
        let r = self.agent.get(format!("{}{path}", self.base)).call();
        self.decode(path, r)
    }

    /// This node and its validator set.
    ///
    /// # Errors
    /// [`ConsensusError::Unreachable`].
    pub fn node_info(&self) -> Result<NodeInfo, ConsensusError> {
        self.get("/api/v1/node")
    }

    /// A round's status (`round_id` = `round-<height>`).
    ///
    /// # Errors
    /// [`ConsensusError::NotFound`] for a height the node does not know, `Refused` for a
    /// malformed id.
    pub fn get_round_status(&self, round_id: &str) -> Result<RoundStatus, ConsensusError> {
        self.get(&format!(
            "/api/v1/consensus/rounds/{}/status",
            segment(round_id)?
        ))
    }

    /// The node's consensus figures.
    ///
    /// # Errors
    /// [`ConsensusError::Unreachable`].
    pub fn get_consensus_metrics(&self) -> Result<TripleConsensusMetrics, ConsensusError> {
        self.get("/api/v1/consensus/metrics")
    }

    /// A round's block proposal.
    ///
    /// # Errors
    /// As [`Self::get_round_status`].
    pub fn get_block_proposal(&self, round_id: &str) -> Result<RealBlockProposal, ConsensusError> {
        self.get(&format!(
            "/api/v1/consensus/ibft/proposal/{}",
            segment(round_id)?
        ))
    }

    /// Signs a vote for `proposal`'s block with `key` (the chain id and epoch from the node).
    ///
    /// # Errors
    /// [`ConsensusError::Unreachable`] (the node's identity), `Refused` for a malformed id.
    pub fn sign_vote(
        &self,
        key: &Keypair,
        validator_id: &str,
        vote_type: VoteType,
        proposal: &RealBlockProposal,
    ) -> Result<RealValidatorVote, ConsensusError> {
        let info = self.node_info()?;
        let block: [u8; 32] = hex::decode(proposal.block_id.trim_start_matches("0x"))
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ConsensusError::Refused(format!("block id {:?}", proposal.block_id)))?;
        let data = crate::consensus::VoteData {
            block_id: crate::types::BlockId(block),
            round: crate::types::Round(proposal.view),
            height: crate::types::Height(proposal.height),
        };
        let sig = key.sign(&data.digest(&info.chain_id, crate::types::Epoch(info.epoch)));
        Ok(RealValidatorVote {
            validator_id: validator_id.to_string(),
            vote_type,
            block_hash: proposal.block_id.clone(),
            round_number: proposal.view,
            height: proposal.height,
            signature: format!("ed25519:{sig}"),
        })
    }

    /// Submits a signed vote (checked by the node as one from QUIC; needs the operator token).
    ///
    /// # Errors
    /// [`ConsensusError::ByzantineFault`] for a signature that does not verify, `Refused` for
    /// malformed fields or a missing token.
    pub fn submit_validator_vote(
        &self,
        vote: RealValidatorVote,
    ) -> Result<VoteAccepted, ConsensusError> {
        let path = "/api/v1/consensus/ibft/vote";
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let r = req.send_json(serde_json::json!({
            "validator_id": vote.validator_id,
            "vote_type": match vote.vote_type { VoteType::Prepare => "Prepare", VoteType::Commit => "Commit" },
            "block_hash": vote.block_hash,
            "round_number": vote.round_number,
            "height": vote.height,
            "signature": vote.signature,
        }));
        self.decode(path, r)
    }

    /// Waits until `round_id` is committed (or further), polling; its status then.
    ///
    /// # Errors
    /// [`ConsensusError::RoundTimeout`] after `timeout`; `Refused` for a malformed id.
    pub fn wait_for_finalization(
        &self,
        round_id: &str,
        timeout: Duration,
    ) -> Result<RoundStatus, ConsensusError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.get_round_status(round_id) {
                Ok(s) if s.phase >= Phase::Committed => return Ok(s),
                Ok(_) | Err(ConsensusError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(ConsensusError::RoundTimeout(format!(
                    "{round_id} not committed within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The spec's round execution, for a round already under way: waits for its finalization
    /// (rounds start by themselves; there is no auction to start one with bundles).
    ///
    /// # Errors
    /// As [`Self::wait_for_finalization`].
    pub fn execute_consensus_round(
        &self,
        round_id: &str,
        timeout: Duration,
    ) -> Result<RoundStatus, ConsensusError> {
        self.wait_for_finalization(round_id, timeout)
    }
}

fn segment(s: &str) -> Result<&str, ConsensusError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ConsensusError::Refused(format!(
            "{s:?} is not a round id (round-<height>)"
        )));
    }
    Ok(s)
}
