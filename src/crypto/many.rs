//! Keyed BLAKE3 of many short tagged messages at once: `H_K(tag ‖ m)` for each `m`, bit for bit
//! what `blake3::Hasher::new_keyed(K)` fed `tag` then `m` gives, computed with BLAKE3's SIMD
//! kernel over up to 16 messages side by side.
//!
//! # Why
//! BLAKE3 hashes one short message (a 512-byte transaction, one 1,024-byte chunk or less) a
//! 64-byte block at a time: nine dependent compressions, with no parallelism for the SIMD lanes
//! to use. Its `hash_many` kernel compresses the same block of many chunks in parallel (16 lanes
//! with AVX-512, 8 with AVX2), which is how `blake3::hash` reaches gigabytes per second on long
//! inputs. A block of transactions is exactly "many chunks": every message whose `tag ‖ m` fits
//! one chunk is hashed that way, all but its last block in the kernel and the last block by one
//! compression. Longer messages, and messages of under one block, take `blake3::Hasher`.
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
/// BLAKE3's chunk length: messages (with their tag) up to this long are batched.
const CHUNK_LEN: usize = 1024;
/// Domain flags from the BLAKE3 specification (§2.1).
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const ROOT: u8 = 1 << 3;
const KEYED_HASH: u8 = 1 << 4;
/// Messages copied and hashed per kernel call: bounds the scratch buffer (at most 60 KiB).
const SLAB: usize = 64;

/// The SIMD implementation this CPU supports (detected once).
static PLATFORM: LazyLock<Platform> = LazyLock::new(Platform::detect);

/// A BLAKE3 key prepared for [`hash_tagged_many`].
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

    /// A plain hasher keyed with this key and fed `tag`: for messages to hash one at a time,
    /// or built from parts.
    pub fn hasher(&self, tag: u8) -> blake3::Hasher {
        let mut hasher = blake3::Hasher::new_keyed(&self.bytes);
        hasher.update(&[tag]);
        hasher
    }
}

/// `out[i] = BLAKE3-keyed(key, tag ‖ msgs[i])` for every `i`.
///
/// # Panics
/// Never on input; `out` must be as long as `msgs` (the only caller-side contract, checked with
/// a debug assertion, and extra entries on either side are left alone).
pub fn hash_tagged_many(key: &ManyKey, tag: u8, msgs: &[&[u8]], out: &mut [Digest32]) {
    debug_assert_eq!(msgs.len(), out.len());
    // Group by the number of whole blocks before the last one (1..=15); 0 and over-long go to
    // the plain hasher.
    let mut groups: [Vec<usize>; CHUNK_LEN / BLOCK_LEN] = Default::default();
    for (i, (m, o)) in msgs.iter().zip(out.iter_mut()).enumerate() {
        let blocks_before_last = m.len() / BLOCK_LEN; // (1 + len - 1) / 64
        if m.len() < BLOCK_LEN || 1 + m.len() > CHUNK_LEN {
            *o = hash_tagged(key, tag, m);
        } else {
            groups[blocks_before_last].push(i);
        }
    }
    for (k, idx) in groups.iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        // One monomorphized kernel call per prefix length: 64 * k bytes.
        macro_rules! dispatch {
            ($($k:literal)*) => {
                match k {
                    $($k => group::<{ $k * BLOCK_LEN }>(key, tag, msgs, idx, out),)*
                    _ => unreachable!("lengths are grouped by 1..=15 blocks"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }
}

/// The plain hasher: `BLAKE3-keyed(key, tag ‖ m)`.
pub fn hash_tagged(key: &ManyKey, tag: u8, m: &[u8]) -> Digest32 {
    let mut hasher = key.hasher(tag);
    hasher.update(m);
    *hasher.finalize().as_bytes()
}

/// Messages `msgs[i]` for `i` in `idx`, each with `tag ‖ m` of `N + 1..=N + 64` bytes: the
/// first `N` bytes (whole blocks) go through the kernel, the rest is the chunk's last block.
fn group<const N: usize>(
    key: &ManyKey,
    tag: u8,
    msgs: &[&[u8]],
    idx: &[usize],
    out: &mut [Digest32],
) {
    let platform = *PLATFORM;
    let mut prefixes: Vec<[u8; N]> = vec![[0u8; N]; idx.len().min(SLAB)];
    let mut cvs = vec![0u8; 32 * prefixes.len()];
    for slab in idx.chunks(SLAB) {
        for (p, &i) in prefixes.iter_mut().zip(slab) {
            p[0] = tag;
            p[1..].copy_from_slice(&msgs[i][..N - 1]);
        }
        let inputs: Vec<&[u8; N]> = prefixes[..slab.len()].iter().collect();
        let cvs = &mut cvs[..32 * slab.len()];
        platform.hash_many(
            &inputs,
            &key.words,
            0,
            IncrementCounter::No,
            KEYED_HASH,
            CHUNK_START,
            0,
            cvs,
        );
        for (j, &i) in slab.iter().enumerate() {
            let tail = &msgs[i][N - 1..]; // 1..=64 bytes
            let mut block = [0u8; BLOCK_LEN];
            block[..tail.len()].copy_from_slice(tail);
            let mut cv_bytes = [0u8; 32];
            cv_bytes.copy_from_slice(&cvs[32 * j..32 * j + 32]);
            let mut cv = words_from_le_bytes_32(&cv_bytes);
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
        for tag in [0x00, 0x01, 0xff] {
            let mut out = vec![[0u8; 32]; refs.len()];
            hash_tagged_many(&key, tag, &refs, &mut out);
            for (m, h) in refs.iter().zip(&out) {
                let mut hasher = blake3::Hasher::new_keyed(&key.bytes);
                hasher.update(&[tag]);
                hasher.update(m);
                assert_eq!(
                    h,
                    hasher.finalize().as_bytes(),
                    "tag {tag}, len {}",
                    m.len()
                );
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
        hash_tagged_many(&key, 0, &refs, &mut out);
        for (m, h) in refs.iter().zip(&out) {
            assert_eq!(*h, hash_tagged(&key, 0, m));
        }
        // Distinct messages, distinct hashes (the slabs did not reuse stale prefixes).
        let set: std::collections::HashSet<_> = out.iter().collect();
        assert_eq!(set.len(), out.len());
    }

    #[test]
    fn empty_input() {
        let key = ManyKey::new(&[0u8; 32]);
        hash_tagged_many(&key, 0, &[], &mut []);
    }
}
