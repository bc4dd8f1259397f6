//! The safety state and the storage it must reach before any vote or timeout leaves the node.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::messages::{Block, CommitProof, QuorumCert, Timeout, Vote};
use crate::types::{Epoch, Height, Round};

/// What a validator must never forget (DESIGN §3). Persisted, and durable, before any vote or
/// timeout is sent; a restarted node re-sends `last_vote`/`last_timeout`, never a different one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    /// The epoch these rounds belong to.
    pub epoch: Epoch,
    /// Highest round this node voted (or timed out) in: it never votes at or below it again.
    pub last_voted_round: Round,
    /// Highest QC round seen.
    pub one_chain_round: Round,
    /// Highest QC seen.
    pub high_qc: QuorumCert,
    /// Highest round this node signed a timeout for.
    pub highest_timeout_round: Round,
    /// The last vote signed.
    pub last_vote: Option<Vote>,
    /// The last timeout signed.
    pub last_timeout: Option<Timeout>,
    /// Highest round this node proposed in: a restarted leader never proposes twice in a round.
    pub last_proposed_round: Round,
}

impl SafetyState {
    /// The state of a node that has never voted.
    pub fn initial(epoch: Epoch, genesis_qc: QuorumCert) -> Self {
        Self {
            epoch,
            last_voted_round: Round(0),
            one_chain_round: Round(0),
            high_qc: genesis_qc,
            highest_timeout_round: Round(0),
            last_vote: None,
            last_timeout: None,
            last_proposed_round: Round(0),
        }
    }
}

/// Why storage failed. The core treats any failure as "not durable": it does not send.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backing store failed (I/O, corruption, full disk).
    #[error("storage failed: {0}")]
    Backend(String),
}

/// What the core reads and writes durably. `persist_safety` must not return `Ok` until the state
/// would survive a crash (fsync or equivalent).
pub trait Storage {
    /// The persisted safety state, if any.
    fn load_safety(&self) -> Result<Option<SafetyState>, StorageError>;
    /// Makes `state` durable.
    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), StorageError>;
    /// Appends newly committed blocks (consecutive heights, oldest first) with the proof that
    /// commits the last one.
    fn persist_commit(
        &mut self,
        blocks: &[Arc<Block>],
        proof: &CommitProof,
    ) -> Result<(), StorageError>;
    /// The highest committed block and the proof that committed it (`None`: only genesis).
    fn committed_tip(&self) -> Option<(Arc<Block>, CommitProof)>;
    /// The committed block at `height`.
    fn committed_block(&self, height: Height) -> Option<Arc<Block>>;
    /// The highest height in `from..=to` that a commit proof was stored for, with that proof.
    fn commit_proof_in(&self, from: Height, to: Height) -> Option<(Height, CommitProof)>;
    /// The lowest height at or above `from` that a commit proof was stored for.
    fn next_commit_proof(&self, from: Height) -> Option<(Height, CommitProof)>;
}

/// An in-memory [`Storage`] for the simulator and unit tests. "Durable" means: kept across a
/// simulated crash, which drops everything the core held in memory but keeps this.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    safety: Option<SafetyState>,
    /// Committed blocks; index 0 is height 1.
    chain: Vec<Arc<Block>>,
    proofs: std::collections::BTreeMap<Height, CommitProof>,
    /// Test-only: fail every write (a full disk).
    pub fail_writes: bool,
}

impl MemStorage {
    /// The committed chain, height 1 first.
    pub fn chain(&self) -> &[Arc<Block>] {
        &self.chain
    }
}

impl Storage for MemStorage {
    fn load_safety(&self) -> Result<Option<SafetyState>, StorageError> {
        Ok(self.safety.clone())
    }

    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), StorageError> {
        if self.fail_writes {
            return Err(StorageError::Backend("writes disabled".into()));
        }
        self.safety = Some(state.clone());
        Ok(())
    }

    fn persist_commit(
        &mut self,
        blocks: &[Arc<Block>],
        proof: &CommitProof,
    ) -> Result<(), StorageError> {
        if self.fail_writes {
            return Err(StorageError::Backend("writes disabled".into()));
        }
        for b in blocks {
            if b.height.0 as usize == self.chain.len() + 1 {
                self.chain.push(Arc::clone(b));
            }
        }
        if let Some(last) = blocks.last() {
            self.proofs.insert(last.height, proof.clone());
        }
        Ok(())
    }

    fn committed_tip(&self) -> Option<(Arc<Block>, CommitProof)> {
        let last = self.chain.last()?;
        let proof = self.proofs.get(&last.height)?;
        Some((Arc::clone(last), proof.clone()))
    }

    fn committed_block(&self, height: Height) -> Option<Arc<Block>> {
        let i = usize::try_from(height.0).ok()?.checked_sub(1)?;
        self.chain.get(i).cloned()
    }

    fn commit_proof_in(&self, from: Height, to: Height) -> Option<(Height, CommitProof)> {
        self.proofs
            .range(from..=to)
            .next_back()
            .map(|(h, p)| (*h, p.clone()))
    }

    fn next_commit_proof(&self, from: Height) -> Option<(Height, CommitProof)> {
        self.proofs
            .range(from..)
            .next()
            .map(|(h, p)| (*h, p.clone()))
    }
}
