//! Keyed BLAKE3 of many short messages at once: `H_K(m)` for each `m`, bit for bit what
//! `blake3::Hasher::new_keyed(K)` fed `m` gives, computed with BLAKE3's SIMD kernel over up to 16
//! messages side by side.
//!
//! # Why
//! BLAKE3 hashes one short message (a 512-byte transaction, one 1,024-byte chunk or less) a
//! 64-byte block at a time: dependent compressions, with no parallelism for the SIMD lanes to
//! use. Its `hash_many` kernel compresses the same block of many chunks in parallel (16 lanes
//! with AVX-512, 8 with AVX2), which is how `blake3::hash` reaches gigabytes per second on long
//! inputs. A block of transactions is exactly "many chunks". A message of whole blocks (a
//! 512-byte transaction, a 64-byte pair of Merkle children) is hashed entirely in the kernel,
//! its last block flagged as the chunk's end and the root, and read from the caller's memory
//! without a copy. A message with a partial last block has its whole blocks hashed in the
//! kernel and the last block by one compression; messages of under one block, and longer than
//! one chunk, take `blake3::Hasher`. (The first version hashed `tag ‖ m`: the tag byte pushed
//! every transaction and node into a partial last block, one serial compression each, and made
//! the kernel's input a copy.)
//!
//! # The kernel is blake3's own, pinned
//! `blake3::platform::Platform::hash_many` is public but hidden from the docs and unstable: the
//! crate's version is pinned exactly in `Cargo.toml` (`=1.8.7`), so a change to that interface
//! fails the build instead of changing a hash. The tests compare every length from 0 to past one
//! chunk with `blake3::Hasher`, for every grouping of lengths.

use std::sync::LazyLock;

use blake3::platform::{le_bytes_from_words_32, words_from_le_bytes_32, Platform};
use blake3::IncrementCounter;

use super::digest::Digest32;

/// BLAKE3's block length.
const BLOCK_LEN: usize = 64;
/// BLAKE3's chunk length: messages up to this long are batched.
const CHUNK_LEN: usize = 1024;
/// Blocks in a chunk.
const CHUNK_BLOCKS: usize = CHUNK_LEN / BLOCK_LEN;
/// Domain flags from the BLAKE3 specification (§2.1).
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const ROOT: u8 = 1 << 3;
const KEYED_HASH: u8 = 1 << 4;
/// Messages per kernel call: bounds the buffers (pointers and 2 KiB of outputs).
const SLAB: usize = 64;

/// The SIMD implementation this CPU supports (detected once).
static PLATFORM: LazyLock<Platform> = LazyLock::new(Platform::detect);

/// A BLAKE3 key prepared for [`hash_keyed_many`].
#[derive(Clone, Copy, Debug)]
pub struct ManyKey {
    bytes: [u8; 32],
    words: [u32; 8],
}

impl ManyKey {
    /// Prepares `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            bytes: *key,
            words: words_from_le_bytes_32(key),
        }
    }

    /// A plain hasher keyed with this key: for messages to hash one at a time, or built from
    /// parts.
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.bytes)
    }
}

/// `out[i] = BLAKE3-keyed(key, msgs[i])` for every `i`.
///
/// # Panics
/// Never on input; `out` must be as long as `msgs` (the only caller-side contract, checked with
/// a debug assertion, and extra entries on either side are left alone).
pub fn hash_keyed_many(key: &ManyKey, msgs: &[&[u8]], out: &mut [Digest32]) {
    debug_assert_eq!(msgs.len(), out.len());
    // Messages of k whole blocks (1..=16), and of k whole blocks then a partial one (1..=15);
    // the rest go to the plain hasher.
    let mut whole: [Vec<usize>; CHUNK_BLOCKS + 1] = Default::default();
    let mut partial: [Vec<usize>; CHUNK_BLOCKS] = Default::default();
    for (i, (m, o)) in msgs.iter().zip(out.iter_mut()).enumerate() {
        match (m.len() / BLOCK_LEN, m.len() % BLOCK_LEN) {
            (1..=CHUNK_BLOCKS, 0) => whole[m.len() / BLOCK_LEN].push(i),
            (k @ 1..CHUNK_BLOCKS, _) => partial[k].push(i),
            _ => *o = hash_keyed(key, m),
        }
    }
    // One monomorphized kernel call per length in whole blocks: 64 * k bytes.
    macro_rules! dispatch {
        ($groups:expr, $ends_whole:expr, $($k:literal)*) => {
            for (k, idx) in $groups.iter().enumerate() {
                match k {
                    _ if idx.is_empty() => {}
                    $($k => group::<{ $k * BLOCK_LEN }>(key, msgs, idx, out, $ends_whole),)*
                    _ => unreachable!("lengths are grouped by 1..=16 blocks"),
                }
            }
        };
    }
    dispatch!(whole, true, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    dispatch!(partial, false, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
}

/// The plain hasher: `BLAKE3-keyed(key, m)`.
pub fn hash_keyed(key: &ManyKey, m: &[u8]) -> Digest32 {
    let mut hasher = key.hasher();
    hasher.update(m);
    *hasher.finalize().as_bytes()
}

/// Messages `msgs[i]` for `i` in `idx`, each starting with `N` bytes of whole blocks that go
/// through the kernel: the whole message when `ends_whole` (its last block then flagged as the
/// end of the chunk and the root), else followed by 1..=63 bytes of a last block, compressed
/// after.
fn group<const N: usize>(
    key: &ManyKey,
    msgs: &[&[u8]],
    idx: &[usize],
    out: &mut [Digest32],
    ends_whole: bool,
) {
    let platform = *PLATFORM;
    let flags_end = if ends_whole { CHUNK_END | ROOT } else { 0 };
    let mut inputs: Vec<&[u8; N]> = Vec::with_capacity(idx.len().min(SLAB));
    let mut cvs = [0u8; 32 * SLAB];
    for slab in idx.chunks(SLAB) {
        inputs.clear();
        inputs.extend(slab.iter().filter_map(|&i| msgs[i].first_chunk::<N>()));
        if inputs.len() != slab.len() {
            // Every message was grouped by having at least `N` bytes; were one shorter (a bug
            // here), the kernel's outputs would not line up with the slab: hash it plainly.
            for &i in slab {
                out[i] = hash_keyed(key, msgs[i]);
            }
            continue;
        }
        let cvs = &mut cvs[..32 * inputs.len()];
        platform.hash_many(
            &inputs,
            &key.words,
            0,
            IncrementCounter::No,
            KEYED_HASH,
            CHUNK_START,
            flags_end,
            cvs,
        );
        for (j, &i) in slab.iter().enumerate() {
            let mut cv = [0u8; 32];
            cv.copy_from_slice(&cvs[32 * j..32 * j + 32]);
            if ends_whole {
                out[i] = cv;
                continue;
            }
            let tail = &msgs[i][N..]; // 1..=63 bytes
            let mut block = [0u8; BLOCK_LEN];
            block[..tail.len()].copy_from_slice(tail);
            let mut cv = words_from_le_bytes_32(&cv);
            platform.compress_in_place(
                &mut cv,
                &block,
                tail.len() as u8,
                0,
                KEYED_HASH | CHUNK_END | ROOT,
            );
            out[i] = le_bytes_from_words_32(&cv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed * 7 + 3) as u8).collect()
    }

    #[test]
    fn every_length_matches_the_plain_hasher() {
        let key = ManyKey::new(&blake3::derive_key("bpci test many", b""));
        // Every length from empty to past one chunk, twice each (so groups hold several).
        let msgs: Vec<Vec<u8>> = (0..=1100)
            .flat_map(|len| [message(len, 1), message(len, 2)])
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut out = vec![[0u8; 32]; refs.len()];
        hash_keyed_many(&key, &refs, &mut out);
        for (m, h) in refs.iter().zip(&out) {
            assert_eq!(
                h,
                blake3::keyed_hash(&key.bytes, m).as_bytes(),
                "len {}",
                m.len()
            );
        }
        // One message alone in its group, and more than one slab of one length.
        for len in [64, 512, 513, 1024] {
            let many: Vec<Vec<u8>> = (0..SLAB + 3).map(|s| message(len, s)).collect();
            let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
            for n in [1, refs.len()] {
                let mut out = vec![[0u8; 32]; n];
                hash_keyed_many(&key, &refs[..n], &mut out);
                for (m, h) in refs.iter().zip(&out) {
                    assert_eq!(h, blake3::keyed_hash(&key.bytes, m).as_bytes());
                }
            }
        }
    }

    #[test]
    fn many_of_one_length_cross_slabs() {
        // 512-byte transactions (the benchmark's size), more than one slab, in one group.
        let key = ManyKey::new(&[7u8; 32]);
        let msgs: Vec<Vec<u8>> = (0..3 * SLAB + 5).map(|s| message(512, s)).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut out = vec![[0u8; 32]; refs.len()];
        hash_keyed_many(&key, &refs, &mut out);
        for (m, h) in refs.iter().zip(&out) {
            assert_eq!(*h, hash_keyed(&key, m));
        }
        // Distinct messages, distinct hashes (the slabs did not reuse stale prefixes).
        let set: std::collections::HashSet<_> = out.iter().collect();
        assert_eq!(set.len(), out.len());
    }

    #[test]
    fn empty_input() {
        let key = ManyKey::new(&[0u8; 32]);
        hash_keyed_many(&key, &[], &mut []);
    }
}
