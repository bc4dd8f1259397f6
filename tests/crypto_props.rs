//! Property tests for `bpci::crypto`: key text round trips, digest separation, Merkle proofs
//! and batch verification naming exactly the invalid items.

use bpci::crypto::{
    leaf_hashes, merkle_root, merkle_root_of_leaf_hashes, signing_digest, verify_key_bytes,
    BatchFailure, BatchVerifier, Domain, Keypair, MerkleTree, PublicKey, Signature,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Text and bytes agree: the text form parses exactly when the bytes pass the checks, to
    /// the same key, and displays back to lowercase text.
    #[test]
    fn key_text_matches_bytes(bytes in any::<[u8; 32]>(), upper in any::<bool>()) {
        let digits = if upper { hex::encode_upper(bytes) } else { hex::encode(bytes) };
        let parsed: Result<PublicKey, _> = format!("ed25519:{digits}").parse();
        prop_assert_eq!(&parsed, &PublicKey::from_bytes(&bytes));
        if let Ok(key) = parsed {
            prop_assert_eq!(key.to_string(), format!("ed25519:{}", hex::encode(bytes)));
        }
    }

    /// Generated keys always pass the validator checks.
    #[test]
    fn generated_keys_are_valid(seed in any::<[u8; 32]>()) {
        let key = Keypair::from_seed(&seed).public();
        prop_assert_eq!(PublicKey::from_bytes(key.as_bytes()), Ok(key));
    }

    /// Different (chain id, epoch, bytes) give different digests.
    #[test]
    fn digests_separate(
        a in ("[a-z]{0,6}", 0u64..4, proptest::collection::vec(any::<u8>(), 0..8)),
        b in ("[a-z]{0,6}", 0u64..4, proptest::collection::vec(any::<u8>(), 0..8)),
    ) {
        let da = signing_digest(Domain::Vote, &a.0, a.1, &a.2);
        let db = signing_digest(Domain::Vote, &b.0, b.1, &b.2);
        prop_assert_eq!(da == db, a == b);
    }

    /// Every proof verifies for its own leaf and fails for any other leaf bytes.
    #[test]
    fn merkle_proofs(leaves in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..40)) {
        let tree = MerkleTree::new(&leaves);
        prop_assert_eq!(tree.root(), merkle_root(&leaves));
        prop_assert_eq!(tree.root(), merkle_root_of_leaf_hashes(&leaf_hashes(&leaves)));
        prop_assert_eq!(tree.leaf_count(), leaves.len());
        for (i, leaf) in leaves.iter().enumerate() {
            let proof = tree.proof(i).unwrap();
            prop_assert_eq!(proof.verify(&tree.root(), leaf), Ok(()));
            for other in &leaves {
                if other != leaf {
                    prop_assert!(proof.verify(&tree.root(), other).is_err());
                }
            }
        }
        prop_assert!(tree.proof(leaves.len()).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A batch fails exactly on the items that fail singly, sequential and parallel alike.
    #[test]
    fn batch_names_invalid(broken in proptest::collection::vec(any::<Option<u8>>(), 1..48), seed in any::<u64>()) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut items = Vec::new();
        for (i, fault) in broken.iter().enumerate() {
            let pair = Keypair::generate(&mut rng);
            let msg = [i as u8; 32];
            let mut sig = pair.sign(&msg).to_bytes();
            if let Some(byte) = fault {
                sig[usize::from(*byte) % 64] ^= 1 << (byte % 8);
            }
            items.push((pair.public().to_bytes(), msg, Signature::from_bytes(sig)));
        }
        let invalid: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, (k, m, s))| verify_key_bytes(k, m, s).is_err())
            .map(|(i, _)| i)
            .collect();
        let want = if invalid.is_empty() { Ok(()) } else { Err(BatchFailure { invalid }) };
        let build = || {
            let mut batch = BatchVerifier::new();
            for (k, m, s) in &items {
                batch.queue(k, m, s);
            }
            batch
        };
        prop_assert_eq!(build().verify(&mut rng), want.clone());
        prop_assert_eq!(build().verify_parallel(), want);
    }
}
