//! The invariants every run checks (DESIGN §3), written independently of the core's own checks:
//! the checker recomputes every committed block's id from its bytes and verifies every
//! certificate's signatures itself, one by one, sharing no cache, verifier or cached digest with
//! the nodes it judges.

use std::collections::{BTreeMap, HashMap};

use crate::consensus::{
    payload_digest, Block, BlockHeader, CommittedBatch, EpochContext, QuorumCert, Vote,
};
use crate::crypto::{verify_key_bytes, Digest32, Signature};
use crate::types::{BlockId, Height, Round, Stake, ValidatorIndex};

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
    /// The checker's own answers to signature checks (key, digest, signature).
    verified: HashMap<([u8; 32], Digest32, [u8; 64]), bool>,
}

/// Most answers the checker keeps before it forgets them all (a bound, as on every cache).
const MAX_CHECKED_SIGNATURES: usize = 1 << 20;

/// A block's id computed from its bytes alone: the payload digest is recomputed, never taken
/// from the digest the block carries along.
fn independent_block_id(b: &Block, chain_id: &str) -> BlockId {
    BlockHeader {
        parent_id: b.parent_id,
        round: b.round,
        height: b.height,
        epoch: b.epoch,
        author: b.author,
        payload_digest: payload_digest(&b.payload),
        parent_qc: b.parent_qc.clone(),
        timestamp_ms: b.timestamp_ms,
        exec_height: b.exec_height,
        exec_root: b.exec_root,
        evidence: b.evidence.clone(),
    }
    .id(chain_id)
}

impl Checker {
    /// Highest committed height of an honest node.
    pub fn height(&self, node: ValidatorIndex) -> Height {
        self.tips.get(&node).map(|t| t.1).unwrap_or_default()
    }

    /// An honest node restarted at its durable committed tip `id` at `height`: what it commits
    /// next extends that (and where it commits a height again, agreement holds it to the block
    /// committed there before).
    pub fn on_restart(&mut self, node: ValidatorIndex, id: BlockId, height: Height) {
        if let Some((_, before)) = self.tips.get(&node) {
            if height > *before {
                self.unbacked.push(Violation {
                    kind: "restart_ahead",
                    detail: format!(
                        "{node:?} restarted at height {height:?}, above the {before:?} it had committed"
                    ),
                });
            }
        }
        self.tips.insert(node, (id, height));
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
    pub fn on_commit(&mut self, node: ValidatorIndex, batch: &CommittedBatch, ctx: &EpochContext) {
        let (mut prev_id, mut prev_h) = self
            .tips
            .get(&node)
            .copied()
            .unwrap_or((ctx.genesis_id, Height(0)));
        for (given, b) in &batch.blocks {
            let id = &independent_block_id(b, &ctx.chain_id);
            if id != given {
                self.unbacked.push(Violation {
                    kind: "block_id",
                    detail: format!(
                        "{node:?} committed {given:?} at {:?}, but the block's bytes hash to {id:?}",
                        b.height
                    ),
                });
            }
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
        // A header carries its payload's digest, not the payload: its id is computed here.
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
            self.independent_qc_check(qc, ctx).err()
        };
        if let Some(why) = why {
            self.unbacked.push(Violation {
                kind: "unbacked_commit",
                detail: format!("{node:?} committed {prev_id:?} at {prev_h:?}: {why}"),
            });
        }
    }

    /// A QC check that shares no code with the core's: distinct members, quorum, and every
    /// signature verified here, one at a time.
    fn independent_qc_check(&mut self, qc: &QuorumCert, ctx: &EpochContext) -> Result<(), String> {
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
            if !self.signature_holds(&v.key.to_bytes(), &digest, sig) {
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

    /// One signature, verified by the checker itself (ZIP-215, single).
    fn signature_holds(&mut self, key: &[u8; 32], digest: &Digest32, sig: &Signature) -> bool {
        let k = (*key, *digest, sig.to_bytes());
        if let Some(ok) = self.verified.get(&k) {
            return *ok;
        }
        if self.verified.len() >= MAX_CHECKED_SIGNATURES {
            self.verified.clear();
        }
        let ok = verify_key_bytes(key, digest, sig).is_ok();
        self.verified.insert(k, ok);
        ok
    }
}
