//! Batch Ed25519 verification by the ZIP-215 rule, naming exactly the invalid items.
//!
//! [`BatchVerifier`] queues `(key, message, signature)` items. Queueing hashes the message into
//! the item's `k = SHA-512(R ‖ A ‖ M)` at once (an ed25519-zebra `batch::Item`), so no message
//! is kept. [`BatchVerifier::verify`] checks all items in one ed25519-zebra batch.
//!
//! The answer is the answer of single verification. Because ZIP-215's equation is cofactored, a
//! batch of valid items always passes, whatever else is in it, and a batch holding an invalid
//! item fails except with probability about 2^-128 (random 128-bit coefficients). So when a
//! batch fails it holds at least one invalid item, and the verifier locates them:
//!
//! 1. A failing range of at most [`SINGLE_CHECK_LEN_MAX`] items is checked item by item.
//! 2. A larger failing range is bisected: its left half is verified as a batch; if the left
//!    half passes, the right half is known to fail and is bisected without another check;
//!    otherwise the right half is verified too. One invalid item among `n` costs about `n`
//!    extra batch-items plus a few single checks.
//! 3. Bisection has a budget of one more pass over the batch (in batch-items). A range that
//!    would exceed it is checked item by item instead, so a batch stuffed with invalid items
//!    costs at most one batch pass, one bisection pass and one single check per item.
//!
//! Items in sub-batches that pass are valid (up to the same 2^-128); every item named invalid
//! was confirmed by a single check. [`BatchVerifier::verify_parallel`] splits large batches into
//! chunks, one per rayon thread, and runs the same procedure on each chunk.

use std::fmt;

use ed25519_zebra::batch::{Item, Verifier};
use ed25519_zebra::VerificationKeyBytes;
use rand_core::{CryptoRng, RngCore};
use rayon::prelude::*;

use super::signature::Signature;
use super::verify::zebra_signature;

/// A failing range of at most this many items is checked item by item rather than bisected.
pub const SINGLE_CHECK_LEN_MAX: usize = 8;

/// [`BatchVerifier::verify_parallel`] splits batches of at least this many items into chunks.
pub const PARALLEL_BATCH_LEN_MIN: usize = 128;

/// The smallest chunk [`BatchVerifier::verify_parallel`] makes (batch efficiency drops below).
pub const PARALLEL_CHUNK_LEN_MIN: usize = 64;

/// A failing range at least this long checks its items one by one on rayon threads
/// (in [`BatchVerifier::verify_parallel`] only).
const PARALLEL_SINGLES_LEN_MIN: usize = 32;

/// Invalid indices written out by `Display` before eliding the rest.
const DISPLAY_INDICES_MAX: usize = 16;

/// A batch failed: these are the invalid items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailure {
    /// Indices (queue order) of the items that fail ZIP-215 verification, sorted ascending,
    /// never empty.
    pub invalid: Vec<usize>,
}

impl fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} invalid signature(s) in the batch (ZIP-215), at item",
            self.invalid.len()
        )?;
        for (n, index) in self.invalid.iter().take(DISPLAY_INDICES_MAX).enumerate() {
            let sep = if n == 0 { " " } else { ", " };
            write!(f, "{sep}{index}")?;
        }
        if self.invalid.len() > DISPLAY_INDICES_MAX {
            f.write_str(", …")?;
        }
        Ok(())
    }
}

impl std::error::Error for BatchFailure {}

/// Queues signatures and verifies them together (ZIP-215, ed25519-zebra).
#[derive(Default)]
pub struct BatchVerifier {
    /// Queued items; an item's index is its position here.
    items: Vec<Item>,
}

impl fmt::Debug for BatchVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchVerifier")
            .field("len", &self.items.len())
            .finish()
    }
}

impl BatchVerifier {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` items.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            items: Vec::with_capacity(n),
        }
    }

    /// Queues one item; its index is the number of items queued before it. Any 32 key bytes
    /// are accepted (a key that is not a curve point makes the item invalid).
    pub fn queue(&mut self, key: &[u8; 32], msg: &[u8], sig: &Signature) {
        let item = Item::from((VerificationKeyBytes::from(*key), zebra_signature(sig), msg));
        self.items.push(item);
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Verifies every item on the calling thread.
    ///
    /// # Errors
    /// [`BatchFailure`] naming exactly the invalid items (sorted) when any item is invalid.
    pub fn verify<R: CryptoRng + RngCore>(self, rng: &mut R) -> Result<(), BatchFailure> {
        let invalid = check_range(&self.items, 0, rng, false);
        failure(invalid)
    }

    /// Verifies every item, splitting a batch of at least [`PARALLEL_BATCH_LEN_MIN`] items into
    /// chunks checked on rayon threads (each with its own thread RNG). Same answer as
    /// [`BatchVerifier::verify`].
    ///
    /// # Errors
    /// [`BatchFailure`] naming exactly the invalid items (sorted) when any item is invalid.
    pub fn verify_parallel(self) -> Result<(), BatchFailure> {
        if self.items.len() < PARALLEL_BATCH_LEN_MIN {
            return self.verify(&mut rand::thread_rng());
        }
        let threads = rayon::current_num_threads().max(1);
        let chunk_len = self
            .items
            .len()
            .div_ceil(threads)
            .max(PARALLEL_CHUNK_LEN_MIN);
        let per_chunk: Vec<Vec<usize>> = self
            .items
            .par_chunks(chunk_len)
            .enumerate()
            .map(|(n, chunk)| check_range(chunk, n * chunk_len, &mut rand::thread_rng(), true))
            .collect();
        failure(per_chunk.concat())
    }
}

/// `Ok` for no invalid items, else the failure naming them.
fn failure(invalid: Vec<usize>) -> Result<(), BatchFailure> {
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(BatchFailure { invalid })
    }
}

/// The indices (offset by `base`, ascending) of the invalid items of `items`.
fn check_range<R: CryptoRng + RngCore>(
    items: &[Item],
    base: usize,
    rng: &mut R,
    parallel: bool,
) -> Vec<usize> {
    let mut invalid = Vec::new();
    if items.is_empty() || batch_passes(items, rng) {
        return invalid;
    }
    let mut locator = Locator {
        budget_len: items.len(),
        rng,
        parallel,
        invalid: &mut invalid,
    };
    locator.locate(items, base, true);
    if invalid.is_empty() {
        // The whole batch failed yet no item failed alone: only possible if a sub-batch
        // holding an invalid item passed (probability ~2^-128) or the library broke its
        // contract. Single checks are the ground truth, so take their answer.
        tracing::error!(
            target: "crypto.batch",
            items_len = items.len(),
            "batch failed but bisection found no invalid item; checking every item"
        );
        invalid = check_singles(items, base, parallel);
    }
    invalid
}

/// Bisection state for one failing range (see the module docs).
struct Locator<'a, R> {
    /// Batch-items that sub-batch checks may still spend.
    budget_len: usize,
    rng: &'a mut R,
    parallel: bool,
    /// Invalid indices found so far, ascending.
    invalid: &'a mut Vec<usize>,
}

impl<R: CryptoRng + RngCore> Locator<'_, R> {
    /// Appends the invalid indices of `items` (offset by `base`). `known_failing`: the batch
    /// of exactly these items is known to fail, so it is not checked again.
    fn locate(&mut self, items: &[Item], base: usize, known_failing: bool) {
        if items.is_empty() {
            return;
        }
        if items.len() <= SINGLE_CHECK_LEN_MAX {
            self.invalid
                .extend(check_singles(items, base, self.parallel));
            return;
        }
        if !known_failing {
            if self.budget_len < items.len() {
                self.invalid
                    .extend(check_singles(items, base, self.parallel));
                return;
            }
            self.budget_len -= items.len();
            if batch_passes(items, self.rng) {
                return;
            }
        }
        let (left, right) = items.split_at(items.len() / 2);
        let found_before = self.invalid.len();
        self.locate(left, base, false);
        let left_valid = self.invalid.len() == found_before;
        // The range fails, so if its left half is valid its right half must fail.
        self.locate(right, base + left.len(), left_valid);
    }
}

/// Whether every item passes, checked as one ed25519-zebra batch.
fn batch_passes<R: CryptoRng + RngCore>(items: &[Item], rng: &mut R) -> bool {
    let mut batch = Verifier::new();
    for item in items {
        batch.queue(item.clone());
    }
    batch.verify(rng).is_ok()
}

/// The indices (offset by `base`, ascending) of the items that fail single verification.
fn check_singles(items: &[Item], base: usize, parallel: bool) -> Vec<usize> {
    let fails =
        |(n, item): (usize, &Item)| item.clone().verify_single().is_err().then_some(base + n);
    if parallel && items.len() >= PARALLEL_SINGLES_LEN_MIN {
        items.par_iter().enumerate().filter_map(fails).collect()
    } else {
        items.iter().enumerate().filter_map(fails).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{verify_key_bytes, Keypair};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    struct Case {
        key: [u8; 32],
        msg: Vec<u8>,
        sig: Signature,
    }

    /// `n` valid items from distinct keys.
    fn valid_items(n: usize, rng: &mut ChaCha20Rng) -> Vec<Case> {
        (0..n)
            .map(|i| {
                let pair = Keypair::generate(rng);
                let msg = format!("message {i}").into_bytes();
                Case {
                    key: pair.public().to_bytes(),
                    sig: pair.sign(&msg),
                    msg,
                }
            })
            .collect()
    }

    fn batch_of(cases: &[Case]) -> BatchVerifier {
        let mut batch = BatchVerifier::with_capacity(cases.len());
        for c in cases {
            batch.queue(&c.key, &c.msg, &c.sig);
        }
        batch
    }

    /// Breaks item `i` one of several ways.
    fn corrupt(case: &mut Case, how: usize) {
        match how % 4 {
            0 => case.msg.push(1),
            1 => {
                let mut b = case.sig.to_bytes();
                b[5] ^= 0x40;
                case.sig = Signature::from_bytes(b);
            }
            2 => {
                let mut b = case.sig.to_bytes();
                b[63] |= 0xe0; // S >= L
                case.sig = Signature::from_bytes(b);
            }
            _ => {
                case.key = [0u8; 32];
                case.key[0] = 2; // not a curve point
            }
        }
    }

    #[test]
    fn empty_and_single() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert!(BatchVerifier::new().is_empty());
        assert_eq!(BatchVerifier::new().verify(&mut rng), Ok(()));
        assert_eq!(BatchVerifier::new().verify_parallel(), Ok(()));
        let mut cases = valid_items(1, &mut rng);
        assert_eq!(batch_of(&cases).len(), 1);
        assert_eq!(batch_of(&cases).verify(&mut rng), Ok(()));
        corrupt(&mut cases[0], 0);
        let expected = Err(BatchFailure { invalid: vec![0] });
        assert_eq!(batch_of(&cases).verify(&mut rng), expected);
        assert_eq!(batch_of(&cases).verify_parallel(), expected);
    }

    #[test]
    fn names_exactly_the_invalid_items() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let pool = valid_items(300, &mut rng);
        for (round, len) in [2usize, 7, 8, 9, 33, 64, 100, 300].into_iter().enumerate() {
            for invalid_count in [1usize, 2, 3, len / 3, len] {
                let mut cases: Vec<Case> = pool[..len]
                    .iter()
                    .map(|c| Case {
                        key: c.key,
                        msg: c.msg.clone(),
                        sig: c.sig,
                    })
                    .collect();
                let mut expected: Vec<usize> =
                    rand::seq::index::sample(&mut rng, len, invalid_count.min(len)).into_vec();
                expected.sort_unstable();
                for (n, &i) in expected.iter().enumerate() {
                    corrupt(&mut cases[i], n + round);
                }
                let single: Vec<usize> = (0..len)
                    .filter(|&i| {
                        verify_key_bytes(&cases[i].key, &cases[i].msg, &cases[i].sig).is_err()
                    })
                    .collect();
                assert_eq!(single, expected);
                let want = if expected.is_empty() {
                    Ok(())
                } else {
                    Err(BatchFailure {
                        invalid: expected.clone(),
                    })
                };
                assert_eq!(batch_of(&cases).verify(&mut rng), want, "len {len}");
                assert_eq!(batch_of(&cases).verify_parallel(), want, "len {len}");
            }
        }
    }

    #[test]
    fn parallel_agrees_with_sequential() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let pool = valid_items(300, &mut rng);
        for len in [1usize, 7, 64, 300] {
            let cases = &pool[..len];
            assert_eq!(batch_of(cases).verify(&mut rng), Ok(()));
            assert_eq!(batch_of(cases).verify_parallel(), Ok(()));
        }
    }

    #[test]
    fn same_key_many_messages() {
        // ed25519-zebra coalesces items by key; bisection must still name the right one.
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let pair = Keypair::generate(&mut rng);
        let mut cases: Vec<Case> = (0..40)
            .map(|i| {
                let msg = vec![i as u8; 32];
                Case {
                    key: pair.public().to_bytes(),
                    sig: pair.sign(&msg),
                    msg,
                }
            })
            .collect();
        let bad = rng.gen_range(0..40);
        corrupt(&mut cases[bad], 1);
        assert_eq!(
            batch_of(&cases).verify(&mut rng),
            Err(BatchFailure { invalid: vec![bad] })
        );
    }

    #[test]
    fn display_lists_indices() {
        let failure = BatchFailure {
            invalid: (0..20).collect(),
        };
        let text = failure.to_string();
        assert!(text.starts_with("20 invalid"), "{text}");
        assert!(text.contains(" 0, 1, 2") && text.ends_with('…'), "{text}");
    }
}
