//! A BLAKE3 Merkle tree over transactions, with inclusion proofs.
//!
//! # Hashing
//! Each of the three uses has its own BLAKE3 key, `K_use = BLAKE3-derive_key("bpci 2026-12
//! merkle <use> v2", "")`, so no Merkle hash equals any other BLAKE3 hash in bpci, nor a hash of
//! another use:
//!
//! ```text
//! leaf(data)        = H(K_leaf, data)
//! node(left, right) = H(K_node, left ‖ right)
//! root              = H(K_root, u64_le(leaf_count) ‖ top)     (leaf_count ≥ 1)
//! root of no leaves = H(K_root, u64_le(0))                    (a fixed constant)
//! ```
//!
//! The separate leaf key means a leaf can never pass for an inner node or the reverse (second
//! preimages). The root binds the leaf count, so a proof cannot claim a leaf sits in a tree of
//! another size, and for a given size each index has its own left/right path, so the index is
//! bound as well.
//!
//! Keys rather than tag bytes (version 1 hashed `H(K, tag ‖ x)`): a 512-byte transaction and a
//! 64-byte pair of children are then whole BLAKE3 blocks, hashed entirely in SIMD lanes
//! ([`super::many`]). Transaction ids, block transaction roots and proofs of version 1 differ
//! from version 2's: validators of the two kinds reject each other's proposals, so such an
//! upgrade is a stop-all one.
//!
//! # Shape: an odd node is promoted, never duplicated
//! Each level pairs nodes left to right. When a level has an odd number of nodes the last one
//! moves up to the next level unchanged. (Duplicating it, as Bitcoin does, lets two different
//! leaf lists share a root: CVE-2012-2459.) With 5 leaves:
//!
//! ```text
//! level 0:  L0   L1   L2   L3   L4
//! level 1:  N(L0,L1)  N(L2,L3)  L4          L4 promoted
//! level 2:  N(N01,N23)          L4          L4 promoted again
//! level 3:  N(N0123, L4)                    top
//! root   =  H(0x02 ‖ u64_le(5) ‖ top)
//! ```
//!
//! A proof lists the siblings from the leaf up, skipping the levels where the node is promoted
//! (it has no sibling there). A one-leaf tree's top is its leaf hash and its proofs have no
//! siblings.

use std::sync::LazyLock;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::digest::Digest32;
use super::many::{hash_keyed, hash_keyed_many, ManyKey};

/// The BLAKE3 derive_key context of the leaf key.
pub const MERKLE_LEAF_CONTEXT: &str = "bpci 2026-12 merkle leaf v2";
/// The BLAKE3 derive_key context of the inner node key.
pub const MERKLE_NODE_CONTEXT: &str = "bpci 2026-12 merkle node v2";
/// The BLAKE3 derive_key context of the root key.
pub const MERKLE_ROOT_CONTEXT: &str = "bpci 2026-12 merkle root v2";

/// Lists of at least this many messages (leaves, or the node pairs of a level) are hashed on
/// rayon threads. Hashed in
/// SIMD lanes ([`super::many`]), 4,096 leaves of 512 bytes take under 1 ms on one core, and
/// waking rayon's workers for less cost more than it saved: with the threshold at 512, a
/// 4-validator testnet on 2 cores at 100,000 tx/s (blocks of about 1,300 transactions) spent
/// about 10,000 context switches per second in rayon workers spinning and yielding, and p99
/// latency was 454/589 ms against 150/105 ms at 4,096 (two back-to-back pairs).
pub const PARALLEL_HASH_LEN_MIN: usize = 4096;

/// Leaves or nodes per rayon task when a list is hashed in parallel.
const PARALLEL_CHUNK_LEN: usize = 256;

/// The hashing keys, each derived once (prepared for hashing many messages at once too).
static LEAF_KEY: LazyLock<ManyKey> =
    LazyLock::new(|| ManyKey::new(&blake3::derive_key(MERKLE_LEAF_CONTEXT, b"")));
static NODE_KEY: LazyLock<ManyKey> =
    LazyLock::new(|| ManyKey::new(&blake3::derive_key(MERKLE_NODE_CONTEXT, b"")));
static ROOT_KEY: LazyLock<ManyKey> =
    LazyLock::new(|| ManyKey::new(&blake3::derive_key(MERKLE_ROOT_CONTEXT, b"")));

/// Why a Merkle proof was not produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The index is not that of a leaf (`index >= leaf_count`; every index is out of range in
    /// an empty tree).
    #[error("leaf index {index} out of range for {leaf_count} leaves")]
    IndexOutOfRange {
        /// The index asked for or claimed.
        index: u64,
        /// The number of leaves.
        leaf_count: u64,
    },
    /// The proof does not have one sibling per non-promoted level of its claimed position.
    #[error("proof has {found} siblings, its index and leaf count need {expected}")]
    SiblingCount {
        /// Siblings the position needs.
        expected: usize,
        /// Siblings in the proof.
        found: usize,
    },
    /// The recomputed root differs from the expected root.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// A Merkle tree kept whole, to produce proofs. Use [`merkle_root`] when only the root is needed.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    /// `levels[0]` holds the leaf hashes, each next level the one above; the last level holds
    /// the single top node. Empty for a tree with no leaves.
    levels: Vec<Vec<Digest32>>,
    /// The root (binds the leaf count).
    root: Digest32,
}

impl MerkleTree {
    /// Builds the tree over `leaves` (in order).
    pub fn new<T: AsRef<[u8]>>(leaves: &[T]) -> Self {
        Self::from_leaf_hashes(&leaf_hashes(leaves))
    }

    /// The tree whose leaf hashes ([`leaf_hash`]) are `leaf_hashes` (a block's transaction ids),
    /// without hashing the leaves again.
    pub fn from_leaf_hashes(leaf_hashes: &[Digest32]) -> Self {
        let mut levels = vec![leaf_hashes.to_vec()];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let above = levels
                .last()
                .map(|level| next_level(level))
                .unwrap_or_default();
            levels.push(above);
        }
        let top = levels.last().and_then(|level| level.first());
        let root = root_hash(leaf_hashes.len() as u64, top);
        if leaf_hashes.is_empty() {
            levels.clear();
        }
        Self { levels, root }
    }

    /// The root.
    pub fn root(&self) -> Digest32 {
        self.root
    }

    /// The number of leaves.
    pub fn leaf_count(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// The inclusion proof of leaf `index`.
    ///
    /// # Errors
    /// [`MerkleError::IndexOutOfRange`] when `index >= leaf_count`.
    pub fn proof(&self, index: usize) -> Result<MerkleProof, MerkleError> {
        let leaf_count = self.leaf_count();
        if index >= leaf_count {
            return Err(MerkleError::IndexOutOfRange {
                index: index as u64,
                leaf_count: leaf_count as u64,
            });
        }
        let mut siblings = Vec::new();
        let mut position = index;
        for level in &self.levels {
            let sibling = if position % 2 == 1 {
                level.get(position - 1)
            } else {
                level.get(position + 1) // None: promoted
            };
            siblings.extend(sibling.copied());
            position /= 2;
        }
        Ok(MerkleProof {
            index: index as u64,
            leaf_count: leaf_count as u64,
            siblings,
        })
    }
}

/// The root over `leaves`, without keeping the tree. Leaves are hashed on rayon threads when
/// there are at least [`PARALLEL_HASH_LEN_MIN`] of them.
pub fn merkle_root<T: AsRef<[u8]>>(leaves: &[T]) -> Digest32 {
    merkle_root_of_leaf_hashes(&leaf_hashes(leaves))
}

/// The root of the tree whose leaf hashes are `leaf_hashes` (from [`leaf_hash`]): the same value
/// as [`merkle_root`] over the leaves themselves, without hashing them again.
pub fn merkle_root_of_leaf_hashes(leaf_hashes: &[Digest32]) -> Digest32 {
    if leaf_hashes.len() <= 1 {
        return root_hash(leaf_hashes.len() as u64, leaf_hashes.first());
    }
    let mut level = next_level(leaf_hashes);
    while level.len() > 1 {
        level = next_level(&level);
    }
    root_hash(leaf_hashes.len() as u64, level.first())
}

/// An inclusion proof: leaf `index` of a tree of `leaf_count` leaves, with its siblings from
/// the leaf up (none for the levels where the node is promoted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    /// The leaf's position, from 0.
    pub index: u64,
    /// The number of leaves in the tree.
    pub leaf_count: u64,
    /// Sibling hashes, bottom level first.
    pub siblings: Vec<Digest32>,
}

impl MerkleProof {
    /// Checks that `leaf` is leaf `index` of a tree of `leaf_count` leaves whose root is `root`.
    ///
    /// # Errors
    /// [`MerkleError::IndexOutOfRange`], [`MerkleError::SiblingCount`] or
    /// [`MerkleError::RootMismatch`].
    pub fn verify(&self, root: &Digest32, leaf: &[u8]) -> Result<(), MerkleError> {
        self.verify_leaf_hash(root, &leaf_hash(leaf))
    }

    /// [`MerkleProof::verify`] for a leaf known by its hash ([`leaf_hash`]; a transaction by its
    /// id).
    ///
    /// # Errors
    /// As [`MerkleProof::verify`].
    pub fn verify_leaf_hash(
        &self,
        root: &Digest32,
        leaf_hash: &Digest32,
    ) -> Result<(), MerkleError> {
        if self.index >= self.leaf_count {
            return Err(MerkleError::IndexOutOfRange {
                index: self.index,
                leaf_count: self.leaf_count,
            });
        }
        let expected = path_len(self.index, self.leaf_count);
        if self.siblings.len() != expected {
            return Err(MerkleError::SiblingCount {
                expected,
                found: self.siblings.len(),
            });
        }
        let mut siblings = self.siblings.iter();
        let mut node = *leaf_hash;
        let (mut position, mut width) = (self.index, self.leaf_count);
        while width > 1 {
            let has_sibling = position % 2 == 1 || position + 1 < width;
            if has_sibling {
                let sibling = siblings.next().ok_or(MerkleError::SiblingCount {
                    expected,
                    found: self.siblings.len(),
                })?;
                node = if position % 2 == 1 {
                    node_hash(sibling, &node)
                } else {
                    node_hash(&node, sibling)
                };
            }
            position /= 2;
            width = width.div_ceil(2);
        }
        if root_hash(self.leaf_count, Some(&node)) == *root {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        }
    }
}

/// Siblings on the path of leaf `index` in a tree of `leaf_count` leaves (`index < leaf_count`).
fn path_len(index: u64, leaf_count: u64) -> usize {
    let (mut position, mut width, mut len) = (index, leaf_count, 0);
    while width > 1 {
        if position % 2 == 1 || position + 1 < width {
            len += 1;
        }
        position /= 2;
        width = width.div_ceil(2);
    }
    len
}

/// `H(K_leaf, data)`: the hash of one leaf (a transaction's id is its leaf hash).
pub fn leaf_hash(data: &[u8]) -> Digest32 {
    hash_keyed(&LEAF_KEY, data)
}

/// `H(K_node, left ‖ right)`.
fn node_hash(left: &Digest32, right: &Digest32) -> Digest32 {
    let mut hasher = NODE_KEY.hasher();
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// `H(K_root, u64_le(leaf_count) ‖ top)`, `top` absent for the empty tree.
fn root_hash(leaf_count: u64, top: Option<&Digest32>) -> Digest32 {
    let mut hasher = ROOT_KEY.hasher();
    hasher.update(&leaf_count.to_le_bytes());
    if let Some(top) = top {
        hasher.update(top);
    }
    *hasher.finalize().as_bytes()
}

/// `H(key, m)` for every `m`, many at once (SIMD lanes), and on rayon threads for long lists.
fn hash_all(key: &ManyKey, msgs: &[&[u8]]) -> Vec<Digest32> {
    let mut out = vec![Digest32::default(); msgs.len()];
    if msgs.len() < PARALLEL_HASH_LEN_MIN {
        hash_keyed_many(key, msgs, &mut out);
    } else {
        msgs.par_chunks(PARALLEL_CHUNK_LEN)
            .zip(out.par_chunks_mut(PARALLEL_CHUNK_LEN))
            .for_each(|(m, o)| hash_keyed_many(key, m, o));
    }
    out
}

/// Leaf hashes, many at once.
pub fn leaf_hashes<T: AsRef<[u8]>>(leaves: &[T]) -> Vec<Digest32> {
    // Borrow as slices first: `T` itself need not be `Sync`.
    let slices: Vec<&[u8]> = leaves.iter().map(AsRef::as_ref).collect();
    hash_all(&LEAF_KEY, &slices)
}

/// The level above `level`: pairs hashed (many at once), an odd last node promoted unchanged.
fn next_level(level: &[Digest32]) -> Vec<Digest32> {
    let joined: Vec<[u8; 64]> = level
        .chunks_exact(2)
        .map(|p| {
            let mut j = [0u8; 64];
            j[..32].copy_from_slice(&p[0]);
            j[32..].copy_from_slice(&p[1]);
            j
        })
        .collect();
    let msgs: Vec<&[u8]> = joined.iter().map(|j| j.as_slice()).collect();
    let mut out = hash_all(&NODE_KEY, &msgs);
    out.extend(level.chunks_exact(2).remainder().first().copied());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [usize; 9] = [1, 2, 3, 4, 5, 7, 8, 13, 33];

    fn leaves(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("tx {i}").into_bytes()).collect()
    }

    /// An independent model of the documented shape: pair left to right, promote a lone last
    /// node, repeat.
    fn reference_top(hashes: Vec<Digest32>) -> Digest32 {
        let mut level = hashes;
        while level.len() > 1 {
            let mut above = Vec::new();
            let mut i = 0;
            while i < level.len() {
                if i + 1 < level.len() {
                    above.push(node_hash(&level[i], &level[i + 1]));
                } else {
                    above.push(level[i]);
                }
                i += 2;
            }
            level = above;
        }
        level[0]
    }

    #[test]
    fn empty_tree() {
        let none: [&[u8]; 0] = [];
        let tree = MerkleTree::new(&none);
        assert_eq!(tree.leaf_count(), 0);
        assert_eq!(tree.root(), merkle_root(&none));
        assert_eq!(tree.root(), root_hash(0, None));
        let key = blake3::derive_key(MERKLE_ROOT_CONTEXT, b"");
        assert_eq!(tree.root(), *blake3::keyed_hash(&key, &[0; 8]).as_bytes());
        assert_eq!(
            tree.proof(0),
            Err(MerkleError::IndexOutOfRange {
                index: 0,
                leaf_count: 0
            })
        );
        // The empty root differs from the root of one empty leaf.
        assert_ne!(tree.root(), merkle_root(&[b""]));
    }

    /// Each use is plain keyed BLAKE3 of the documented input under its own key.
    #[test]
    fn hashes_are_keyed_blake3_of_the_documented_inputs() {
        let key = |ctx| blake3::derive_key(ctx, b"");
        let (a, b) = (leaf_hash(&[7; 512]), leaf_hash(b"b"));
        assert_eq!(
            a,
            *blake3::keyed_hash(&key(MERKLE_LEAF_CONTEXT), &[7; 512]).as_bytes()
        );
        assert_eq!(
            node_hash(&a, &b),
            *blake3::keyed_hash(&key(MERKLE_NODE_CONTEXT), &[a, b].concat()).as_bytes()
        );
        let top = [&2u64.to_le_bytes()[..], &node_hash(&a, &b)].concat();
        assert_eq!(
            merkle_root(&[&[7u8; 512][..], b"b"]),
            *blake3::keyed_hash(&key(MERKLE_ROOT_CONTEXT), &top).as_bytes()
        );
        // The same bytes under the three keys: three different hashes.
        let x = [a, b].concat();
        let leaf_of_pair = leaf_hash(&x);
        assert_ne!(leaf_of_pair, node_hash(&a, &b));
    }

    #[test]
    fn one_leaf() {
        let tree = MerkleTree::new(&[b"only"]);
        let proof = tree.proof(0).unwrap();
        assert!(proof.siblings.is_empty());
        assert_eq!(tree.root(), root_hash(1, Some(&leaf_hash(b"only"))));
        assert_eq!(proof.verify(&tree.root(), b"only"), Ok(()));
    }

    #[test]
    fn documented_shapes() {
        let l: Vec<Digest32> = leaves(5).iter().map(|x| leaf_hash(x)).collect();
        // 3 leaves: N(N(L0,L1), L2).
        let three = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
        assert_eq!(merkle_root(&leaves(3)), root_hash(3, Some(&three)));
        // 5 leaves: N(N(N(L0,L1), N(L2,L3)), L4), L4 promoted twice.
        let n0123 = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        let five = node_hash(&n0123, &l[4]);
        assert_eq!(merkle_root(&leaves(5)), root_hash(5, Some(&five)));
    }

    #[test]
    fn long_lists_match_the_plain_hashes() {
        // Past the parallel threshold, odd counts at every level, lengths from 0 to past one
        // BLAKE3 chunk mixed: the batched leaf and node hashing equal the one-at-a-time hashes.
        for n in [
            PARALLEL_HASH_LEN_MIN - 1,
            PARALLEL_HASH_LEN_MIN + 2 * PARALLEL_CHUNK_LEN + 1,
            1501,
        ] {
            let data: Vec<Vec<u8>> = (0..n)
                .map(|i| (0..(i * 37) % 1100).map(|j| (i + j) as u8).collect())
                .collect();
            let plain: Vec<Digest32> = data.iter().map(|x| leaf_hash(x)).collect();
            assert_eq!(leaf_hashes(&data), plain, "n = {n}");
            let top = reference_top(plain);
            assert_eq!(
                merkle_root(&data),
                root_hash(n as u64, Some(&top)),
                "n = {n}"
            );
        }
    }

    #[test]
    fn no_duplication_collision() {
        // With duplication, [a, b, c] and [a, b, c, c] would share a root (CVE-2012-2459).
        let three = leaves(3);
        let mut four = three.clone();
        four.push(three[2].clone());
        assert_ne!(merkle_root(&three), merkle_root(&four));
    }

    #[test]
    fn a_tree_from_leaf_hashes_is_the_tree_of_its_leaves() {
        for n in [0usize, 1, 2, 3, 7, 16, 33] {
            let data: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 3 + i]).collect();
            let tree = MerkleTree::new(&data);
            let ids = leaf_hashes(&data);
            let by_ids = MerkleTree::from_leaf_hashes(&ids);
            assert_eq!(tree.root(), by_ids.root());
            for (i, id) in ids.iter().enumerate() {
                let proof = by_ids.proof(i).unwrap();
                assert_eq!(proof, tree.proof(i).unwrap());
                proof.verify_leaf_hash(&tree.root(), id).unwrap();
                let other = leaf_hash(b"not a leaf");
                assert_eq!(
                    proof.verify_leaf_hash(&tree.root(), &other),
                    Err(MerkleError::RootMismatch)
                );
            }
        }
    }

    #[test]
    fn every_proof_verifies() {
        for n in SIZES {
            let data = leaves(n);
            let tree = MerkleTree::new(&data);
            assert_eq!(tree.leaf_count(), n);
            assert_eq!(tree.root(), merkle_root(&data), "n = {n}");
            let hashes = data.iter().map(|x| leaf_hash(x)).collect();
            assert_eq!(
                tree.root(),
                root_hash(n as u64, Some(&reference_top(hashes)))
            );
            for (i, leaf) in data.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                assert_eq!(proof.siblings.len(), path_len(i as u64, n as u64));
                assert_eq!(proof.verify(&tree.root(), leaf), Ok(()), "n = {n}, i = {i}");
                let decoded: MerkleProof =
                    bcs::from_bytes(&bcs::to_bytes(&proof).unwrap()).unwrap();
                assert_eq!(decoded, proof);
            }
            assert_eq!(
                tree.proof(n),
                Err(MerkleError::IndexOutOfRange {
                    index: n as u64,
                    leaf_count: n as u64
                })
            );
        }
    }

    #[test]
    fn tampered_proofs_fail() {
        for n in SIZES {
            let data = leaves(n);
            let tree = MerkleTree::new(&data);
            let root = tree.root();
            for (i, leaf) in data.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                assert!(proof.verify(&root, b"another leaf").is_err(), "wrong leaf");
                let mut wrong_root = root;
                wrong_root[0] ^= 1;
                assert_eq!(
                    proof.verify(&wrong_root, leaf),
                    Err(MerkleError::RootMismatch)
                );
                for s in 0..proof.siblings.len() {
                    let mut p = proof.clone();
                    p.siblings[s][31] ^= 0x80;
                    assert_eq!(p.verify(&root, leaf), Err(MerkleError::RootMismatch));
                }
                for other in 0..n as u64 + 2 {
                    if other == i as u64 {
                        continue;
                    }
                    let p = MerkleProof {
                        index: other,
                        ..proof.clone()
                    };
                    assert!(
                        p.verify(&root, leaf).is_err(),
                        "n {n} i {i} claimed {other}"
                    );
                }
                for count in [0, 1, 2, 3, n as u64 - 1, n as u64 + 1, 2 * n as u64] {
                    if count == n as u64 {
                        continue;
                    }
                    let p = MerkleProof {
                        leaf_count: count,
                        ..proof.clone()
                    };
                    assert!(p.verify(&root, leaf).is_err(), "n {n} i {i} count {count}");
                }
                let mut longer = proof.clone();
                longer.siblings.push([0; 32]);
                assert!(matches!(
                    longer.verify(&root, leaf),
                    Err(MerkleError::SiblingCount { .. })
                ));
            }
        }
    }

    #[test]
    fn claimed_smaller_tree_fails() {
        // Without the count in the root, leaf 2 of [a, b, c] would also "be" leaf 1 of a
        // two-leaf tree whose left child is N(a, b).
        let data = leaves(3);
        let tree = MerkleTree::new(&data);
        let l = |i: usize| leaf_hash(&data[i]);
        let forged = MerkleProof {
            index: 1,
            leaf_count: 2,
            siblings: vec![node_hash(&l(0), &l(1))],
        };
        assert_eq!(
            forged.verify(&tree.root(), &data[2]),
            Err(MerkleError::RootMismatch)
        );
    }

    #[test]
    fn inner_node_is_not_a_leaf() {
        let data = leaves(4);
        let tree = MerkleTree::new(&data);
        let l: Vec<Digest32> = data.iter().map(|x| leaf_hash(x)).collect();
        let (n01, n23) = (node_hash(&l[0], &l[1]), node_hash(&l[2], &l[3]));
        let root = tree.root();
        let concat = |a: &Digest32, b: &Digest32| [a.as_slice(), b.as_slice()].concat();
        let tagged = |a: &Digest32, b: &Digest32| [&[0x01][..], a, b].concat();
        let attempts = [
            (concat(&n01, &n23), 0u64, 1u64, vec![]),
            (concat(&n01, &n23), 0, 4, vec![]),
            (concat(&l[0], &l[1]), 0, 2, vec![n23]),
            (concat(&l[0], &l[1]), 0, 4, vec![n23]),
            (tagged(&l[0], &l[1]), 0, 2, vec![n23]),
            (concat(&l[2], &l[3]), 1, 2, vec![n01]),
            (concat(&l[2], &l[3]), 1, 4, vec![n01]),
        ];
        for (leaf, index, leaf_count, siblings) in attempts {
            let proof = MerkleProof {
                index,
                leaf_count,
                siblings,
            };
            assert!(proof.verify(&root, &leaf).is_err(), "{proof:?}");
        }
    }

    #[test]
    fn parallel_threshold_gives_same_root() {
        let data: Vec<Vec<u8>> = (0..PARALLEL_HASH_LEN_MIN * 2 + 3)
            .map(|i| vec![(i % 251) as u8; 64])
            .collect();
        let sequential: Vec<Digest32> = data.iter().map(|x| leaf_hash(x)).collect();
        let expected = root_hash(data.len() as u64, Some(&reference_top(sequential)));
        assert_eq!(merkle_root(&data), expected);
        let tree = MerkleTree::new(&data);
        assert_eq!(tree.root(), expected);
        let last = data.len() - 1;
        assert_eq!(
            tree.proof(last).unwrap().verify(&expected, &data[last]),
            Ok(())
        );
    }
}
