//! The invariants every run checks (DESIGN §3), written independently of the core's own checks.

use std::collections::{BTreeMap, HashMap};

use crate::consensus::{CommittedBatch, EpochContext, QuorumCert, Vote};
use crate::types::{BlockId, Height, Round, Stake, ValidatorIndex};

use super::sigcache::SigCache;

/// One broken invariant, with enough to debug it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub kind: &'static str,
    /// What happened.
    pub detail: String,
}

/// Tracks commits and signed votes across the run.
#[derive(Default)]
pub struct Checker {
    /// The one block each height committed to, by honest nodes.
    by_height: HashMap<Height, (BlockId, ValidatorIndex)>,
    /// Each honest node's committed tip (kept across its crashes: its storage keeps it).
    tips: HashMap<ValidatorIndex, (BlockId, Height)>,
    /// Votes signed by honest nodes: (voter, round) -> block.
    votes: HashMap<(ValidatorIndex, Round), BlockId>,
    /// Proposals signed by honest leaders: (author, round) -> block.
    proposals: HashMap<(ValidatorIndex, Round), BlockId>,
    /// Agreement violations.
    pub safety: Vec<Violation>,
    /// Honest double-signs.
    pub double_signs: Vec<Violation>,
    /// Commits not backed by a QC chain.
    pub unbacked: Vec<Violation>,
}

impl Checker {
    /// Highest committed height of an honest node.
    pub fn height(&self, node: ValidatorIndex) -> Height {
        self.tips.get(&node).map(|t| t.1).unwrap_or_default()
    }

    /// An honest node signed `vote`.
    pub fn on_vote(&mut self, vote: &Vote) {
        let key = (vote.voter, vote.data.round);
        match self.votes.get(&key) {
            Some(first) if *first != vote.data.block_id => self.double_signs.push(Violation {
                kind: "double_sign",
                detail: format!(
                    "{:?} voted {:?} and {:?} in round {:?}",
                    vote.voter, first, vote.data.block_id, vote.data.round
                ),
            }),
            Some(_) => {}
            None => {
                self.votes.insert(key, vote.data.block_id);
            }
        }
    }

    /// An honest leader signed a proposal of block `id` in `round`.
    pub fn on_proposal(&mut self, author: ValidatorIndex, round: Round, id: BlockId) {
        match self.proposals.get(&(author, round)) {
            Some(first) if *first != id => self.double_signs.push(Violation {
                kind: "double_proposal",
                detail: format!("{author:?} proposed {first:?} and {id:?} in round {round:?}"),
            }),
            Some(_) => {}
            None => {
                self.proposals.insert((author, round), id);
            }
        }
    }

    /// An honest node committed `batch`.
    pub fn on_commit(
        &mut self,
        node: ValidatorIndex,
        batch: &CommittedBatch,
        ctx: &EpochContext,
        cache: &mut SigCache,
    ) {
        let (mut prev_id, mut prev_h) = self
            .tips
            .get(&node)
            .copied()
            .unwrap_or((ctx.genesis_id, Height(0)));
        for (id, b) in &batch.blocks {
            if b.parent_id != prev_id || b.height != prev_h.next() {
                self.unbacked.push(Violation {
                    kind: "chain_break",
                    detail: format!(
                        "{node:?} committed {id:?} at {:?} on parent {:?}, its tip was {prev_id:?} at {prev_h:?}",
                        b.height, b.parent_id
                    ),
                });
            }
            match self.by_height.get(&b.height) {
                Some((other, who)) if other != id => self.safety.push(Violation {
                    kind: "agreement",
                    detail: format!(
                        "height {:?}: {node:?} committed {id:?}, {who:?} committed {other:?}",
                        b.height
                    ),
                }),
                Some(_) => {}
                None => {
                    self.by_height.insert(b.height, (*id, node));
                }
            }
            prev_id = *id;
            prev_h = b.height;
        }
        self.tips.insert(node, (prev_id, prev_h));
        // Every commit is backed by a QC chain: the last block's direct child, one round later,
        // certified by a quorum of distinct members with valid signatures.
        let Some((_, last)) = batch.blocks.last() else {
            return;
        };
        let child = &batch.proof.child;
        let child_id = child.id(&ctx.chain_id);
        let qc = &batch.proof.child_qc;
        let why = if child.parent_id != prev_id {
            Some("proof child is not a child of the committed block".to_string())
        } else if child.round != last.round.next() {
            Some(format!(
                "proof child round {:?} is not committed round {:?} + 1",
                child.round, last.round
            ))
        } else if qc.block_id != child_id {
            Some("proof QC does not certify the child".to_string())
        } else {
            independent_qc_check(qc, ctx, cache).err()
        };
        if let Some(why) = why {
            self.unbacked.push(Violation {
                kind: "unbacked_commit",
                detail: format!("{node:?} committed {prev_id:?} at {prev_h:?}: {why}"),
            });
        }
    }
}

/// A QC check that shares no code with the core's: distinct members, quorum, signatures.
fn independent_qc_check(
    qc: &QuorumCert,
    ctx: &EpochContext,
    cache: &mut SigCache,
) -> Result<(), String> {
    let mut signers: BTreeMap<ValidatorIndex, ()> = BTreeMap::new();
    let mut stake = 0u128;
    let digest = qc.vote_data().digest(&ctx.chain_id, qc.epoch);
    for (who, sig) in &qc.votes {
        let Some(v) = ctx.validators.member(*who) else {
            return Err(format!("non-member signer {who:?}"));
        };
        if signers.insert(*who, ()).is_some() {
            continue; // a duplicate adds nothing
        }
        if !cache.check_one(&v.key.to_bytes(), &digest, sig) {
            return Err(format!("bad signature by {who:?}"));
        }
        stake += u128::from(v.stake.0);
    }
    let total = u128::from(ctx.validators.total_stake().0);
    if stake * 3 <= total * 2 {
        return Err(format!(
            "signers hold {:?} of {:?}",
            Stake(stake as u64),
            Stake(total as u64)
        ));
    }
    Ok(())
}
