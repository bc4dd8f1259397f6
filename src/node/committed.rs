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

/// Fingerprint → height (high 48 bits) and position (low 16 bits), in memory faulted in when
/// the table is made ([`Prefaulted`]).
type Index = hashbrown::HashMap<u64, u64, foldhash::fast::RandomState, Prefaulted>;

/// Transactions one generation of the index holds before a new one starts.
const GENERATION_TXS: usize = COMMITTED_WINDOW_TXS / 2;

/// An allocator whose large blocks (1 MiB and up: the index tables) come from `mmap` with
/// `MAP_POPULATE`, every page faulted in at once, and go back to the OS when freed; smaller ones
/// come from the global allocator. A table's slots are written in random order: in fresh memory
/// nearly every insert met a page not yet mapped, and recording a block of 2,000 ids took
/// about four times as long as in memory already mapped (`CommittedTxs::record` was the
/// costliest function of a validator at 150,000 tx/s). Faulting memory in at once took about
/// 20 ms per 68 MiB here, once per table (a table is 34 MiB).
#[derive(Clone, Copy, Debug, Default)]
struct Prefaulted;

/// Blocks at least this large are mapped by [`Prefaulted`].
const PREFAULT_FROM: usize = 1 << 20;

// SAFETY: every block handed out is valid for its layout (mmap returns page-aligned memory, and
// the index asks for alignments of at most 16) until deallocated with that same layout, which
// routes it back to where it came from by the same size test.
unsafe impl allocator_api2::alloc::Allocator for Prefaulted {
    fn allocate(
        &self,
        layout: allocator_api2::alloc::Layout,
    ) -> Result<std::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        use allocator_api2::alloc::{AllocError, Global};
        if layout.size() < PREFAULT_FROM || layout.align() > 4096 {
            return Global.allocate(layout);
        }
        #[cfg(target_os = "linux")]
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        #[cfg(not(target_os = "linux"))]
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: an anonymous private mapping of a fresh range; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let p = std::ptr::NonNull::new(p.cast::<u8>()).ok_or(AllocError)?;
        Ok(std::ptr::NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: std::ptr::NonNull<u8>, layout: allocator_api2::alloc::Layout) {
        if layout.size() < PREFAULT_FROM || layout.align() > 4096 {
            // SAFETY: allocated by Global with this layout (same test as in allocate).
            return unsafe { allocator_api2::alloc::Global.deallocate(ptr, layout) };
        }
        // SAFETY: mapped by allocate with this length, and no longer used (caller's contract).
        unsafe { libc::munmap(ptr.as_ptr().cast(), layout.size()) };
    }
}

/// A table with room for a generation.
fn new_index() -> Index {
    Index::with_capacity_and_hasher_in(
        GENERATION_TXS,
        foldhash::fast::RandomState::default(),
        Prefaulted,
    )
}

/// See the module documentation.
///
/// The index is keyed by a 64-bit fingerprint of each id, its value the height and position
/// packed in 64 bits: 16 bytes an entry. A fingerprint's hit is confirmed against the full id
/// kept with its block, so an entry whose block has left the window finds nothing; an id whose
/// fingerprint an earlier id of the same generation already holds (one pair in about 2^64 / 2^21
/// per insert; a client grinding for one only sends itself down this path) goes to a small
/// table keyed by the whole id. The index comes in two generations: when the newer one holds
/// [`COMMITTED_WINDOW_TXS`]` / 2` ids, the older one is emptied and becomes the newer one, with
/// the blocks only it named dropped, so that no id is removed one by one, no table is rehashed as
/// it grows, and after the first two no table is allocated. A lookup tries the older generation
/// first, so a transaction included twice keeps its first place.
#[derive(Debug, Default)]
pub struct CommittedTxs {
    /// By height.
    blocks: BTreeMap<u64, WindowBlock>,
    /// The newer generation.
    current: Index,
    /// The first height the newer generation holds.
    current_from: u64,
    /// The older generation.
    previous: Index,
    /// Ids whose fingerprint the newer generation already held for another id.
    overflow: std::collections::HashMap<TxId, u64>,
}

/// A 64-bit fingerprint of a transaction id, folded from all of it (BLAKE3 outputs: any 64 bits
/// would do; folding keeps structured ids, as tests use, apart too).
fn fingerprint(id: &TxId) -> u64 {
    let w = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    w(0) ^ w(1).rotate_left(17) ^ w(2).rotate_left(31) ^ w(3).rotate_left(47)
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
            // A new generation: the older one, emptied, becomes it (the first two are made),
            // and the blocks only the older one named go.
            let mut fresh = std::mem::take(&mut self.previous);
            fresh.clear();
            if fresh.capacity() < GENERATION_TXS {
                fresh = new_index();
            }
            let older = std::mem::replace(&mut self.current, fresh);
            if !older.is_empty() {
                self.previous = older;
                let previous_from = self.current_from;
                self.blocks = self.blocks.split_off(&previous_from);
                self.overflow.retain(|_, v| unpack(*v).0 >= previous_from);
            }
            self.current_from = height;
        }
        for (pos, id) in ids.iter().enumerate().take(1 << POSITION_BITS) {
            match self.current.entry(fingerprint(id)) {
                hashbrown::hash_map::Entry::Vacant(e) => {
                    e.insert(pack(height, pos));
                }
                hashbrown::hash_map::Entry::Occupied(e) => {
                    // The same transaction again keeps its first place; another one sharing
                    // the fingerprint goes to the overflow table.
                    let (h, p) = unpack(*e.get());
                    let held = if h == height {
                        ids.get(p)
                    } else {
                        self.blocks.get(&h).and_then(|b| b.ids.get(p))
                    };
                    if held != Some(id) {
                        self.overflow.entry(*id).or_insert(pack(height, pos));
                    }
                }
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
        let confirm = |v: Option<&u64>| {
            let (height, pos) = unpack(*v?);
            let b = self.blocks.get(&height)?;
            (b.ids.get(pos) == Some(id)).then_some((height, pos, b))
        };
        confirm(self.previous.get(&f))
            .or_else(|| confirm(self.current.get(&f)))
            .or_else(|| confirm(self.overflow.get(id)))
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
    /// Both generations' tables are made (and faulted in) here, at the node's start, so that the
    /// execution stage never waits on a new one.
    pub fn rebuild(store: &impl Storage, tip: u64, tip_id: BlockId) -> Self {
        let mut me = Self {
            current: new_index(),
            previous: new_index(),
            ..Self::default()
        };
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

    /// A generation fills its table to the full load the table was made for: no regrowth.
    #[test]
    fn a_generation_fits_its_table_exactly() {
        let t = new_index();
        assert_eq!(t.capacity(), GENERATION_TXS);
        assert_eq!(GENERATION_TXS * 8 / 7, 1 << 21);
    }

    /// Two ids with one fingerprint are both found where they are, in one block and across
    /// blocks, and the overflow table forgets with its generation.
    #[test]
    fn ids_sharing_a_fingerprint_are_each_found() {
        let twin = |x: u64, second: bool| {
            let mut id = [0u8; 32];
            if second {
                id[8..16].copy_from_slice(&x.rotate_right(17).to_le_bytes());
            } else {
                id[..8].copy_from_slice(&x.to_le_bytes());
            }
            id
        };
        let (a, b, c, d) = (twin(5, false), twin(5, true), twin(9, false), twin(9, true));
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(a, b);
        let mut w = CommittedTxs::default();
        w.record(1, BlockId([1; 32]), [0; 32], vec![a, b, c].into());
        w.record(2, BlockId([2; 32]), [0; 32], vec![d, a].into());
        assert_eq!(
            w.status(&a).map(|s| (s.height, s.proof.index)),
            Some((1, 0))
        );
        assert_eq!(
            w.status(&b).map(|s| (s.height, s.proof.index)),
            Some((1, 1))
        );
        assert_eq!(
            w.status(&d).map(|s| (s.height, s.proof.index)),
            Some((2, 0))
        );
        assert_eq!(w.overflow.len(), 2);
        // Two generations on, heights 1 and 2 are gone, and so are their overflow entries.
        let per = GENERATION_TXS;
        w.record(3, BlockId::default(), [0; 32], ids(3, per));
        w.record(4, BlockId::default(), [0; 32], ids(4, per));
        assert_eq!((w.height_of(&a), w.height_of(&b)), (None, None));
        assert!(w.overflow.is_empty());
        assert_eq!(w.height_of(&ids(4, per)[7]), Some(4));
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
