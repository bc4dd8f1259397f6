//! Signature verification for the simulator: a ZIP-215 batch per message, with a cache shared by
//! every simulated node. Verification is a pure function of (key, digest, signature), so sharing
//! the answer across nodes changes no outcome; it only saves repeating each check n times.

use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;

use crate::consensus::SigItem;
use crate::crypto::{BatchVerifier, Digest32, Signature};

/// Most cached answers before the cache is cleared (a bound, like every cache here).
const MAX_CACHED_SIGNATURES: usize = 1 << 20;

/// Verified-signature cache.
pub struct SigCache {
    answers: HashMap<([u8; 32], Digest32, [u8; 64]), bool>,
    rng: ChaCha8Rng,
    /// Signatures actually verified (cache misses).
    pub verified: u64,
}

impl SigCache {
    /// An empty cache with a deterministic RNG for batch coefficients.
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            answers: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            verified: 0,
        }
    }

    /// True if every item verifies (ZIP-215).
    pub fn check(&mut self, items: &[SigItem]) -> bool {
        let mut batch = BatchVerifier::with_capacity(items.len());
        let mut pending = Vec::new();
        for it in items {
            let key = (it.key, it.digest, it.signature.to_bytes());
            match self.answers.get(&key) {
                Some(false) => return false,
                Some(true) => {}
                None => {
                    batch.queue(&it.key, &it.digest, &it.signature);
                    pending.push(key);
                }
            }
        }
        if pending.is_empty() {
            return true;
        }
        if self.answers.len() > MAX_CACHED_SIGNATURES {
            self.answers.clear();
        }
        self.verified += pending.len() as u64;
        match batch.verify(&mut self.rng) {
            Ok(()) => {
                for k in pending {
                    self.answers.insert(k, true);
                }
                true
            }
            Err(failure) => {
                for (i, k) in pending.into_iter().enumerate() {
                    self.answers.insert(k, !failure.invalid.contains(&i));
                }
                false
            }
        }
    }

    /// Checks one signature.
    pub fn check_one(&mut self, key: &[u8; 32], digest: &Digest32, sig: &Signature) -> bool {
        self.check(&[SigItem {
            key: *key,
            digest: *digest,
            signature: *sig,
        }])
    }
}
