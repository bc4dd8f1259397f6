//! The safety state, and the storage it must reach before any vote, timeout or proposal leaves
//! the node, together with the uncommitted blocks a restart needs (DESIGN §3, "what survives a
//! crash").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::messages::{Block, CommitProof, QuorumCert, Timeout, TimeoutCert, Vote};
use crate::types::{BlockId, Epoch, Height, Round};

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
    /// The TC of the highest round that ended in one, as of the last write: a restarted node
    /// enters the round after it, where the others are, instead of waiting for that round's
    /// timeouts to be sent again.
    pub high_tc: Option<TimeoutCert>,
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
            high_tc: None,
        }
    }
}

/// [`SafetyState`] as versions before the consensus journal wrote it (no `high_tc`): read once,
/// when a node's store is first opened by a version with the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyStateV1 {
    /// See [`SafetyState::epoch`].
    pub epoch: Epoch,
    /// See [`SafetyState::last_voted_round`].
    pub last_voted_round: Round,
    /// See [`SafetyState::one_chain_round`].
    pub one_chain_round: Round,
    /// See [`SafetyState::high_qc`].
    pub high_qc: QuorumCert,
    /// See [`SafetyState::highest_timeout_round`].
    pub highest_timeout_round: Round,
    /// See [`SafetyState::last_vote`].
    pub last_vote: Option<Vote>,
    /// See [`SafetyState::last_timeout`].
    pub last_timeout: Option<Timeout>,
    /// See [`SafetyState::last_proposed_round`].
    pub last_proposed_round: Round,
}

impl From<SafetyStateV1> for SafetyState {
    fn from(v: SafetyStateV1) -> Self {
        Self {
            epoch: v.epoch,
            last_voted_round: v.last_voted_round,
            one_chain_round: v.one_chain_round,
            high_qc: v.high_qc,
            highest_timeout_round: v.highest_timeout_round,
            last_vote: v.last_vote,
            last_timeout: v.last_timeout,
            last_proposed_round: v.last_proposed_round,
            high_tc: None,
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
/// would survive a crash (fsync or equivalent), and with it every block handed to
/// [`Storage::keep_block`] before the call.
///
/// Committed blocks may become durable later than `persist_commit` returns (a node's persistence
/// stage writes them after execution): `committed_tip` is the tip as of the last
/// `persist_commit`, `committed_block` and the proofs only what is durable, and after a crash the
/// store reopens at its durable tip. The kept blocks bridge the gap: a kept block stays kept (and
/// durable) until the durable committed chain reaches its height.
pub trait Storage {
    /// The persisted safety state, if any.
    fn load_safety(&self) -> Result<Option<SafetyState>, StorageError>;
    /// Makes `state` durable, and every block kept since the previous call.
    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), StorageError>;
    /// Keeps `block` (with its id), an uncommitted block this node votes for, proposes or saw
    /// certified: durable with the next `persist_safety`, and among [`Storage::kept_blocks`] after
    /// a restart until the durable committed chain reaches its height. Keeping a kept block
    /// again does nothing.
    fn keep_block(&mut self, id: BlockId, block: &Arc<Block>);
    /// The durable kept blocks above the durable committed tip, in height order (read at start).
    fn kept_blocks(&self) -> Vec<(BlockId, Arc<Block>)>;
    /// A kept block by id (to serve a peer's fetch of a block this node no longer holds in its
    /// block tree, such as one committed here but not yet durable in the chain).
    fn kept_block(&self, id: &BlockId) -> Option<Arc<Block>>;
    /// Appends newly committed blocks (consecutive heights, oldest first) with the proof that
    /// commits the last one.
    fn persist_commit(
        &mut self,
        blocks: &[Arc<Block>],
        proof: &CommitProof,
    ) -> Result<(), StorageError>;
    /// The highest committed block and the proof that committed it (`None`: only genesis).
    fn committed_tip(&self) -> Option<(Arc<Block>, CommitProof)>;
    /// The committed block at `height`, if durable.
    fn committed_block(&self, height: Height) -> Option<Arc<Block>>;
    /// The highest height in `from..=to` that a commit proof was stored for, with that proof.
    fn commit_proof_in(&self, from: Height, to: Height) -> Option<(Height, CommitProof)>;
    /// The lowest height at or above `from` that a commit proof was stored for.
    fn next_commit_proof(&self, from: Height) -> Option<(Height, CommitProof)>;
}

/// An in-memory [`Storage`] for the simulator and unit tests, with the durability of the node's
/// real store: a simulated crash ([`MemStorage::crash`]) keeps only what the real store would
/// have on disk. The safety state and the blocks kept before it are durable when
/// `persist_safety` returns; committed blocks are durable at once, or, with
/// [`MemStorage::defer_commits`] (as a node's store runs), only when
/// [`MemStorage::flush_commits`] runs (the persistence stage's group commit).
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    safety: Option<SafetyState>,
    /// Durable committed blocks; index 0 is height 1.
    chain: Vec<Arc<Block>>,
    proofs: BTreeMap<Height, CommitProof>,
    /// Committed, not yet durable (deferred commits only).
    pending: Vec<(Vec<Arc<Block>>, CommitProof)>,
    /// The tip as of the last `persist_commit`.
    tip: Option<(Arc<Block>, CommitProof)>,
    /// Durable kept blocks.
    kept: BTreeMap<BlockId, Arc<Block>>,
    /// Kept since the last `persist_safety`: not durable yet.
    staged: Vec<(BlockId, Arc<Block>)>,
    /// Committed blocks wait for [`MemStorage::flush_commits`] to become durable.
    pub defer_commits: bool,
    /// Test-only: fail every write (a full disk).
    pub fail_writes: bool,
}

impl MemStorage {
    /// A store whose committed blocks become durable only at [`MemStorage::flush_commits`].
    pub fn deferred() -> Self {
        Self {
            defer_commits: true,
            ..Self::default()
        }
    }

    /// The durable committed chain, height 1 first.
    pub fn chain(&self) -> &[Arc<Block>] {
        &self.chain
    }

    /// Whether committed blocks wait to become durable.
    pub fn has_pending_commits(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Makes every committed block durable (a persistence stage's group commit), and forgets
    /// the kept blocks the durable chain has reached.
    pub fn flush_commits(&mut self) {
        for (blocks, proof) in std::mem::take(&mut self.pending) {
            self.append(&blocks, &proof);
        }
        let h = Height(self.chain.len() as u64);
        self.kept.retain(|_, b| b.height > h);
    }

    /// What a crash leaves: the durable safety state, kept blocks and committed chain. Kept
    /// blocks not yet persisted and committed blocks not yet flushed are lost.
    pub fn crash(mut self) -> Self {
        self.staged.clear();
        self.pending.clear();
        self.tip = self.durable_tip();
        self
    }

    fn durable_tip(&self) -> Option<(Arc<Block>, CommitProof)> {
        let last = self.chain.last()?;
        let proof = self.proofs.get(&last.height)?;
        Some((Arc::clone(last), proof.clone()))
    }

    fn append(&mut self, blocks: &[Arc<Block>], proof: &CommitProof) {
        for b in blocks {
            if b.height.0 as usize == self.chain.len() + 1 {
                self.chain.push(Arc::clone(b));
            }
        }
        if let Some(last) = blocks.last() {
            self.proofs.insert(last.height, proof.clone());
        }
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
        let durable = Height(self.chain.len() as u64);
        for (id, b) in self.staged.drain(..) {
            if b.height > durable {
                self.kept.insert(id, b);
            }
        }
        Ok(())
    }

    fn keep_block(&mut self, id: BlockId, block: &Arc<Block>) {
        if !self.kept.contains_key(&id) && !self.staged.iter().any(|(s, _)| *s == id) {
            self.staged.push((id, Arc::clone(block)));
        }
    }

    fn kept_blocks(&self) -> Vec<(BlockId, Arc<Block>)> {
        let durable = Height(self.chain.len() as u64);
        let mut out: Vec<(BlockId, Arc<Block>)> = self
            .kept
            .iter()
            .filter(|(_, b)| b.height > durable)
            .map(|(id, b)| (*id, Arc::clone(b)))
            .collect();
        out.sort_by_key(|(_, b)| b.height);
        out
    }

    fn kept_block(&self, id: &BlockId) -> Option<Arc<Block>> {
        self.kept
            .get(id)
            .or_else(|| self.staged.iter().find(|(s, _)| s == id).map(|(_, b)| b))
            .cloned()
    }

    fn persist_commit(
        &mut self,
        blocks: &[Arc<Block>],
        proof: &CommitProof,
    ) -> Result<(), StorageError> {
        if self.fail_writes {
            return Err(StorageError::Backend("writes disabled".into()));
        }
        let Some(last) = blocks.last() else {
            return Ok(());
        };
        if self.defer_commits {
            self.pending.push((blocks.to_vec(), proof.clone()));
        } else {
            self.append(blocks, proof);
            let h = Height(self.chain.len() as u64);
            self.kept.retain(|_, b| b.height > h);
        }
        self.tip = Some((Arc::clone(last), proof.clone()));
        Ok(())
    }

    fn committed_tip(&self) -> Option<(Arc<Block>, CommitProof)> {
        self.tip.clone().or_else(|| self.durable_tip())
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
