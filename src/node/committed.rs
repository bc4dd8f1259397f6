//! The committed window: the ids of the transactions committed in the last
//! [`COMMITTED_WINDOW_HEIGHTS`] heights (at most [`COMMITTED_WINDOW_TXS`] of them, at least half
//! that many once the chain holds them: past that the oldest heights leave first), where each
//! one is. It makes admission exactly-once (a resubmitted transaction is answered
//! `Committed { height }`, see [`crate::client_proto`]), keeps leaders from proposing a
//! committed transaction again, and answers status queries with inclusion proofs.
//!
//! The execution stage records each committed block once executed (off the consensus thread:
//! recording millions of ids is memory traffic the round's path need not wait on); until then
//! the consensus stage's own list of blocks committed and not yet recorded covers them (see
//! [`super::app::NodeApp::record_committed`]). A restarted node reads the window back from its
//! stored chain ([`CommittedTxs::rebuild`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::client_proto::{CommittedTx, COMMITTED_WINDOW_HEIGHTS, COMMITTED_WINDOW_TXS};
use crate::consensus::Storage;
use crate::crypto::{leaf_hashes, Digest32, MerkleTree};
use crate::mempool::{Payload, TxId};
use crate::types::{BlockId, Height};

/// One committed block in the window.
#[derive(Debug)]
struct WindowBlock {
    block: BlockId,
    tx_root: Digest32,
    ids: Arc<[TxId]>,
}

type Index = std::collections::HashMap<u128, u64, foldhash::fast::RandomState>;

/// Transactions one generation of the index holds before a new one starts.
const GENERATION_TXS: usize = COMMITTED_WINDOW_TXS / 2;

/// See the module documentation.
///
/// The index is keyed by the first 128 bits of each id (BLAKE3 outputs: no two committed
/// transactions share them in practice), its value the height and position packed in 64 bits:
/// 24 bytes an entry. It comes in two generations: when the newer one holds
/// [`COMMITTED_WINDOW_TXS`]` / 2` ids, the older one is dropped whole (with the blocks only it
/// named) and a new one starts, its room taken at once, so that no id is removed one by one and
/// no table is rehashed as it grows. A fingerprint's hit is confirmed against the full id kept
/// with its block, so an entry whose block has left the window finds nothing.
#[derive(Debug, Default)]
pub struct CommittedTxs {
    /// By height.
    blocks: BTreeMap<u64, WindowBlock>,
    /// Fingerprint → height (high 48 bits) and position (low 16 bits): the newer generation.
    current: Index,
    /// The first height the newer generation holds.
    current_from: u64,
    /// The older generation.
    previous: Index,
}

/// The first 128 bits of a transaction id.
fn fingerprint(id: &TxId) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&id[..16]);
    u128::from_le_bytes(b)
}

/// Positions above this (a block holds at most [`crate::mempool::MAX_TXS_PER_BLOCK`]) are not
/// indexed.
const POSITION_BITS: u32 = 16;

fn pack(height: u64, position: usize) -> u64 {
    (height << POSITION_BITS) | position as u64
}

fn unpack(v: u64) -> (u64, usize) {
    (
        v >> POSITION_BITS,
        (v & ((1 << POSITION_BITS) - 1)) as usize,
    )
}

impl CommittedTxs {
    /// Records the committed block `block` at `height` whose transactions' ids are `ids` (in
    /// payload order) under `tx_root`; a height already recorded is left as it is. Evicts the
    /// heights that fall out of the window.
    pub fn record(&mut self, height: u64, block: BlockId, tx_root: Digest32, ids: Arc<[TxId]>) {
        if self.blocks.contains_key(&height) {
            return;
        }
        if self.current.len() + ids.len() > GENERATION_TXS || self.current.capacity() == 0 {
            // A new generation; the oldest one goes, with the blocks only it named.
            let fresh = Index::with_capacity_and_hasher(
                GENERATION_TXS,
                foldhash::fast::RandomState::default(),
            );
            let older = std::mem::replace(&mut self.current, fresh);
            if !older.is_empty() {
                self.previous = older;
                let previous_from = self.current_from;
                self.blocks = self.blocks.split_off(&previous_from);
            }
            self.current_from = height;
        }
        for (pos, id) in ids.iter().enumerate().take(1 << POSITION_BITS) {
            // A transaction a Byzantine leader put in twice keeps its first place.
            let f = fingerprint(id);
            if !self.previous.contains_key(&f) {
                self.current.entry(f).or_insert(pack(height, pos));
            }
        }
        self.blocks.insert(
            height,
            WindowBlock {
                block,
                tx_root,
                ids,
            },
        );
        let top = self.blocks.last_key_value().map_or(0, |(h, _)| *h);
        let lowest = top.saturating_sub(COMMITTED_WINDOW_HEIGHTS - 1);
        if self
            .blocks
            .first_key_value()
            .is_some_and(|(h, _)| *h < lowest)
        {
            self.blocks = self.blocks.split_off(&lowest);
        }
    }

    /// The height and position `id` committed at, if in the window (the fingerprint's hit
    /// confirmed against the full id).
    fn place_of(&self, id: &TxId) -> Option<(u64, usize, &WindowBlock)> {
        let f = fingerprint(id);
        let v = self.current.get(&f).or_else(|| self.previous.get(&f))?;
        let (height, pos) = unpack(*v);
        let b = self.blocks.get(&height)?;
        (b.ids.get(pos) == Some(id)).then_some((height, pos, b))
    }

    /// The height `id` committed at, if in the window.
    pub fn height_of(&self, id: &TxId) -> Option<u64> {
        self.place_of(id).map(|(h, _, _)| h)
    }

    /// Where `id` committed, with its inclusion proof, if in the window.
    pub fn status(&self, id: &TxId) -> Option<CommittedTx> {
        let (height, pos, b) = self.place_of(id)?;
        let proof = MerkleTree::from_leaf_hashes(&b.ids).proof(pos).ok()?;
        Some(CommittedTx {
            height,
            block: b.block,
            tx_root: b.tx_root,
            proof,
        })
    }

    /// [`CommittedTxs::status`] of each of `ids`, each block's tree built once.
    pub fn statuses(&self, ids: &[TxId]) -> Vec<Option<CommittedTx>> {
        let mut trees: std::collections::HashMap<u64, MerkleTree> = Default::default();
        ids.iter()
            .map(|id| {
                let (height, pos, b) = self.place_of(id)?;
                let tree = trees
                    .entry(height)
                    .or_insert_with(|| MerkleTree::from_leaf_hashes(&b.ids));
                Some(CommittedTx {
                    height,
                    block: b.block,
                    tx_root: b.tx_root,
                    proof: tree.proof(pos).ok()?,
                })
            })
            .collect()
    }

    /// Transactions the window's blocks hold.
    pub fn len(&self) -> usize {
        self.blocks.values().map(|b| b.ids.len()).sum()
    }

    /// Nothing committed in the window.
    pub fn is_empty(&self) -> bool {
        self.blocks.values().all(|b| b.ids.is_empty())
    }

    /// The lowest and highest heights in the window.
    pub fn heights(&self) -> Option<(u64, u64)> {
        Some((
            *self.blocks.first_key_value()?.0,
            *self.blocks.last_key_value()?.0,
        ))
    }

    /// The window of a node restarted with `store`, whose durable committed tip is at `tip`:
    /// the stored blocks from the tip down, until the window is full or the chain begins (each
    /// block's transactions hashed again). Block ids come from the commit chain: a block's id
    /// is its child's `parent_id`, and the tip's is `tip_id`.
    pub fn rebuild(store: &impl Storage, tip: u64, tip_id: BlockId) -> Self {
        let mut me = Self::default();
        let mut child_parent = tip_id;
        let mut got: Vec<(u64, BlockId, Digest32, Arc<[TxId]>)> = Vec::new();
        let mut txs = 0usize;
        let mut h = tip;
        while h > 0 && tip - h < COMMITTED_WINDOW_HEIGHTS && txs < COMMITTED_WINDOW_TXS {
            let Some(b) = store.committed_block(Height(h)) else {
                break;
            };
            let id = child_parent;
            child_parent = b.parent_id;
            let Ok(payload) = Payload::decode(&b.payload) else {
                h -= 1;
                continue;
            };
            let list: Vec<&[u8]> = payload.txs().collect();
            let ids: Arc<[TxId]> = leaf_hashes(&list).into();
            txs += ids.len();
            got.push((h, id, payload.tx_root, ids));
            h -= 1;
        }
        for (h, id, root, ids) in got.into_iter().rev() {
            me.record(h, id, root, ids);
        }
        me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(h: u64, n: usize) -> Arc<[TxId]> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&h.to_le_bytes());
                id[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                id
            })
            .collect()
    }

    /// Recorded transactions are found with their height and a proof the client checks; the
    /// window drops its oldest heights by height and by count; a transaction included twice
    /// keeps its first place.
    #[test]
    fn the_window_answers_and_forgets_its_oldest_heights() {
        let mut w = CommittedTxs::default();
        for h in 1..=3u64 {
            let list = ids(h, 5);
            w.record(
                h,
                BlockId([h as u8; 32]),
                crate::crypto::merkle_root_of_leaf_hashes(&list),
                list,
            );
        }
        let tx = ids(2, 5)[4];
        assert_eq!(w.height_of(&tx), Some(2));
        let st = w.status(&tx).unwrap();
        assert_eq!(
            (st.height, st.block, st.proof.index),
            (2, BlockId([2; 32]), 4)
        );
        st.verify(&tx).unwrap();
        assert!(st.verify(&ids(2, 5)[3]).is_err());
        assert_eq!(w.height_of(&[7; 32]), None);
        assert_eq!(w.heights(), Some((1, 3)));
        // Recorded again (after a restart's replay): unchanged.
        w.record(2, BlockId([0; 32]), [0; 32], ids(2, 1));
        assert_eq!(w.status(&tx).unwrap().block, BlockId([2; 32]));
        // A later block repeating a transaction: its first place stands.
        let mut dup = ids(4, 2).to_vec();
        dup.push(tx);
        w.record(4, BlockId([4; 32]), [0; 32], dup.into());
        assert_eq!(w.height_of(&tx), Some(2));
        // By height: COMMITTED_WINDOW_HEIGHTS above height 1 pushes it out.
        w.record(
            COMMITTED_WINDOW_HEIGHTS + 1,
            BlockId([9; 32]),
            [0; 32],
            ids(99, 1),
        );
        assert_eq!(w.height_of(&ids(1, 5)[0]), None);
        assert_eq!(w.height_of(&ids(2, 5)[0]), Some(2));
        // The blocks of heights 2, 3, 4 (with its repeat) and the new one.
        assert_eq!(w.len(), 5 + 5 + 3 + 1);
    }

    #[test]
    fn the_window_is_bounded_by_count() {
        let mut w = CommittedTxs::default();
        let per = 1 << 16;
        let blocks = COMMITTED_WINDOW_TXS / per + 3;
        for h in 1..=blocks as u64 {
            w.record(h, BlockId::default(), [0; 32], ids(h, per));
        }
        assert!(w.len() <= COMMITTED_WINDOW_TXS, "{}", w.len());
        assert_eq!(w.height_of(&ids(1, per)[0]), None);
        assert_eq!(
            w.height_of(&ids(blocks as u64, per)[0]),
            Some(blocks as u64)
        );
    }

    /// A restarted node reads the window back from its stored chain, with the blocks' ids.
    #[test]
    fn the_window_is_rebuilt_from_the_stored_chain() {
        use crate::consensus::{Block, CommitProof, MemStorage, QuorumCert};
        use crate::types::{Epoch, Round};
        let mut store = MemStorage::default();
        let mut parent = Block::genesis(Epoch(1)).id("c");
        let mut all = Vec::new();
        for h in 1..=4u64 {
            let txs = vec![
                format!("tx {h} a").into_bytes(),
                format!("tx {h} b").into_bytes(),
            ];
            let mut b = Block::genesis(Epoch(1));
            b.height = Height(h);
            b.round = Round(h);
            b.parent_id = parent;
            b.payload = Payload::new(&txs).encode().into();
            parent = b.id("c");
            all.push((b.id("c"), crate::crypto::leaf_hash(&txs[1])));
            let proof = CommitProof {
                child: b.header(),
                child_qc: QuorumCert::genesis("c", Epoch(1)),
            };
            store
                .persist_commit(&[std::sync::Arc::new(b)], &proof)
                .unwrap();
        }
        let w = CommittedTxs::rebuild(&store, 4, parent);
        assert_eq!(w.heights(), Some((1, 4)));
        for (h, (block, tx)) in all.iter().enumerate() {
            let st = w.status(tx).unwrap();
            assert_eq!((st.height, st.block), (h as u64 + 1, *block));
            st.verify(tx).unwrap();
        }
    }
}
