//! External test vectors (`../shared/vectors/`, read at run time) against `bpci::crypto`.
//!
//! Every Ed25519 case is verified singly and inside batches with 7 valid signatures under
//! [`BATCH_SEEDS`] RNG seeds (different companions, positions and batch coefficients). All
//! must give one answer, the expected ZIP-215 answer, and a failing batch must name exactly the
//! case's index. Where ZIP-215 differs from the source's own verdict (strict RFC 8032 or
//! Wycheproof's `result`), the difference is listed in a table below with its reason and the
//! set of differences is asserted, so a change in behaviour cannot slip through.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bpci::crypto::{
    verify, verify_key_bytes, BatchFailure, BatchVerifier, Keypair, PublicKey, Signature,
    VerifyError,
};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use serde_json::Value;

/// The vectors folder, next to the repository.
const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/");

/// Batch compositions tried per Ed25519 case.
const BATCH_SEEDS: u64 = 64;

/// Valid signatures in a batch besides the case under test.
const COMPANIONS_LEN: usize = 7;

/// Every data file in the vectors folder; each is read by a test below.
const VECTOR_FILES: [&str; 6] = [
    "blake3/test_vectors.json",
    "crafted/torsion_r.json",
    "ed25519-speccheck/cases.json",
    "ed25519-speccheck/expected.json",
    "rfc8032/ed25519_rfc8032_7_1.json",
    "wycheproof/ed25519_test.json",
];

/// ed25519-speccheck cases where ZIP-215 accepts but strict RFC 8032 (canonical encodings,
/// cofactorless equation, the `rfc8032_strict_cofactorless` column of expected.json) rejects.
const SPECCHECK_DEVIATIONS: [(usize, &str); 5] = [
    (
        4,
        "mixed-order A and R: only the cofactored equation holds; ZIP-215 is cofactored",
    ),
    (
        5,
        "mixed-order A: the cofactored equation holds (8k not pre-reduced mod L)",
    ),
    (9, "non-canonical R accepted; k hashed over R as given"),
    (
        10,
        "non-canonical A (ecff..ff, order 2) accepted; small-order A makes [8][k]A vanish",
    ),
    (11, "non-canonical A accepted; k hashed over A as given"),
];

/// Wycheproof tests whose ZIP-215 answer differs from their `result`.
const WYCHEPROOF_DEVIATIONS: [(u64, &str); 1] = [(
    151,
    "R = 01 00..00 80: y = 1 with the sign bit of x set, a non-canonical identity; ZIP-215 \
     accepts non-canonical R and [8]R vanishes either way",
)];

/// Crafted cases where ZIP-215 accepts but strict cofactorless RFC 8032 rejects: all of them.
const CRAFTED_DEVIATIONS: [(&str, &str); 6] = [
    (
        "torsion2-0",
        "R = rB + T, ord(T) = 2: the cofactor removes T",
    ),
    (
        "torsion2-1",
        "R = rB + T, ord(T) = 2: the cofactor removes T",
    ),
    (
        "torsion4-0",
        "R = rB + T, ord(T) = 4: the cofactor removes T",
    ),
    (
        "torsion4-1",
        "R = rB + T, ord(T) = 4: the cofactor removes T",
    ),
    (
        "torsion8-0",
        "R = rB + T, ord(T) = 8: the cofactor removes T",
    ),
    (
        "torsion8-1",
        "R = rB + T, ord(T) = 8: the cofactor removes T",
    ),
];

fn vectors_dir() -> PathBuf {
    let dir = PathBuf::from(VECTORS_DIR);
    assert!(
        dir.is_dir(),
        "test vectors folder {} is missing: check out the shared folder next to the repository",
        dir.display()
    );
    dir
}

fn read_json(relative: &str) -> Value {
    let path = vectors_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read vector file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn hex_field(value: &Value, field: &str) -> Vec<u8> {
    let text = value[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field} missing in {value}"));
    hex::decode(text).unwrap_or_else(|e| panic!("field {field} is not hex: {e}"))
}

fn bool_field(value: &Value, field: &str) -> bool {
    value[field]
        .as_bool()
        .unwrap_or_else(|| panic!("field {field} missing in {value}"))
}

/// One Ed25519 vector.
struct EdCase {
    name: String,
    key: [u8; 32],
    msg: Vec<u8>,
    sig: Vec<u8>,
}

impl EdCase {
    fn new(name: String, key: &[u8], msg: Vec<u8>, sig: Vec<u8>) -> Self {
        let key = key
            .try_into()
            .unwrap_or_else(|_| panic!("{name}: key is not 32 bytes"));
        Self {
            name,
            key,
            msg,
            sig,
        }
    }
}

/// A valid signed item to keep a case company in batches.
struct Companion {
    key: [u8; 32],
    msg: [u8; 32],
    sig: Signature,
}

/// Valid items under distinct keys (32-byte messages, as our digests are), plus a few that
/// share a key, which ed25519-zebra coalesces.
fn companions() -> Vec<Companion> {
    let mut rng = ChaCha20Rng::seed_from_u64(0xb9c1);
    let shared = Keypair::generate(&mut rng);
    (0..40)
        .map(|i| {
            let pair = if i % 8 == 0 {
                shared.clone()
            } else {
                Keypair::generate(&mut rng)
            };
            let msg: [u8; 32] = rng.gen();
            Companion {
                key: pair.public().to_bytes(),
                msg,
                sig: pair.sign(&msg),
            }
        })
        .collect()
}

/// The ZIP-215 answer for `case`, after checking that single verification, `verify` with a
/// checked key (when the key passes the validator checks) and batches of every composition
/// all agree, and that failing batches name exactly the case.
fn zip215_answer(case: &EdCase, pool: &[Companion]) -> bool {
    let sig = match Signature::from_slice(&case.sig) {
        Ok(sig) => sig,
        Err(e) => {
            assert_eq!(
                e,
                VerifyError::SignatureLength {
                    len: case.sig.len()
                },
                "{}",
                case.name
            );
            return false;
        }
    };
    let single = verify_key_bytes(&case.key, &case.msg, &sig);
    if let Ok(key) = PublicKey::from_bytes(&case.key) {
        assert_eq!(
            verify(&key, &case.msg, &sig),
            single,
            "{}: checked key",
            case.name
        );
    }
    let valid = single.is_ok();
    for seed in 0..BATCH_SEEDS {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let position = rng.gen_range(0..=COMPANIONS_LEN);
        let chosen = sample(&mut rng, pool.len(), COMPANIONS_LEN).into_vec();
        let build = || {
            let mut batch = BatchVerifier::with_capacity(COMPANIONS_LEN + 1);
            let mut companions = chosen.iter().map(|&i| &pool[i]);
            for slot in 0..=COMPANIONS_LEN {
                if slot == position {
                    batch.queue(&case.key, &case.msg, &sig);
                } else if let Some(c) = companions.next() {
                    batch.queue(&c.key, &c.msg, &c.sig);
                }
            }
            batch
        };
        let expected = if valid {
            Ok(())
        } else {
            Err(BatchFailure {
                invalid: vec![position],
            })
        };
        assert_eq!(
            build().verify(&mut rng),
            expected,
            "{}: batch seed {seed}",
            case.name
        );
        if seed % 4 == 0 {
            assert_eq!(
                build().verify_parallel(),
                expected,
                "{}: parallel seed {seed}",
                case.name
            );
        }
    }
    valid
}

/// Answers for many cases, computed on rayon threads.
fn answers(cases: &[EdCase], pool: &[Companion]) -> Vec<bool> {
    cases.par_iter().map(|c| zip215_answer(c, pool)).collect()
}

#[test]
fn every_vector_file_is_used() {
    let dir = vectors_dir();
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let sub = entry.file_name().into_string().unwrap();
            for file in std::fs::read_dir(entry.path()).unwrap() {
                let name = file.unwrap().file_name().into_string().unwrap();
                if !name.eq_ignore_ascii_case("README.md") {
                    found.insert(format!("{sub}/{name}"));
                }
            }
        }
    }
    let used: BTreeSet<String> = VECTOR_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, used,
        "a vector file was added or removed: use it here"
    );
}

#[test]
fn speccheck() {
    let cases_json = read_json("ed25519-speccheck/cases.json");
    let expected_json = read_json("ed25519-speccheck/expected.json");
    let (cases_json, expected_json) = (
        cases_json.as_array().unwrap(),
        expected_json.as_array().unwrap(),
    );
    assert_eq!(cases_json.len(), 12);
    assert_eq!(expected_json.len(), cases_json.len());
    let cases: Vec<EdCase> = cases_json
        .iter()
        .enumerate()
        .map(|(i, c)| {
            EdCase::new(
                format!("speccheck #{i}"),
                &hex_field(c, "pub_key"),
                hex_field(c, "message"),
                hex_field(c, "signature"),
            )
        })
        .collect();
    let ours = answers(&cases, &companions());
    let mut deviations = BTreeSet::new();
    for (i, (answer, expected)) in ours.iter().zip(expected_json).enumerate() {
        assert_eq!(expected["case"].as_u64(), Some(i as u64));
        assert_eq!(
            *answer,
            bool_field(expected, "zip215"),
            "speccheck #{i} vs expected zip215"
        );
        if *answer != bool_field(expected, "rfc8032_strict_cofactorless") {
            deviations.insert(i);
        }
    }
    let pinned: BTreeSet<usize> = SPECCHECK_DEVIATIONS.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        deviations, pinned,
        "ZIP-215 deviations from strict RFC 8032 changed"
    );
    for (i, reason) in SPECCHECK_DEVIATIONS {
        assert!(ours[i], "speccheck #{i} ({reason}) must be accepted");
    }
}

#[test]
fn wycheproof() {
    let json = read_json("wycheproof/ed25519_test.json");
    let mut cases = Vec::new();
    let mut results = Vec::new();
    for group in json["testGroups"].as_array().unwrap() {
        let key = hex_field(&group["publicKey"], "pk");
        for test in group["tests"].as_array().unwrap() {
            let id = test["tcId"].as_u64().unwrap();
            cases.push(EdCase::new(
                format!("wycheproof tcId {id}"),
                &key,
                hex_field(test, "msg"),
                hex_field(test, "sig"),
            ));
            results.push((id, test["result"].as_str().unwrap() == "valid"));
        }
    }
    assert_eq!(cases.len() as u64, json["numberOfTests"].as_u64().unwrap());
    let wrong_length = cases.iter().filter(|c| c.sig.len() != 64).count();
    assert_eq!(wrong_length, 12, "signatures of the wrong length");
    let ours = answers(&cases, &companions());
    let deviations: BTreeSet<u64> = results
        .iter()
        .zip(&ours)
        .filter(|((_, valid), answer)| valid != *answer)
        .map(|((id, _), _)| *id)
        .collect();
    let pinned: BTreeSet<u64> = WYCHEPROOF_DEVIATIONS.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        deviations, pinned,
        "ZIP-215 deviations from Wycheproof changed"
    );
}

#[test]
fn rfc8032() {
    let json = read_json("rfc8032/ed25519_rfc8032_7_1.json");
    let mut cases = Vec::new();
    for case in json["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap().to_string();
        let seed: [u8; 32] = hex_field(case, "secret_key").try_into().unwrap();
        let public = hex_field(case, "public_key");
        let (msg, sig) = (hex_field(case, "message"), hex_field(case, "signature"));
        let pair = Keypair::from_seed(&seed);
        assert_eq!(
            pair.public().as_bytes().as_slice(),
            public.as_slice(),
            "{name}: public key"
        );
        assert_eq!(
            pair.sign(&msg).as_bytes().as_slice(),
            sig.as_slice(),
            "{name}: signature"
        );
        let parsed: PublicKey = format!("ed25519:{}", hex::encode(&public)).parse().unwrap();
        assert_eq!(parsed, pair.public());
        cases.push(EdCase::new(name, &public, msg, sig));
    }
    assert_eq!(cases.len(), 5);
    let ours = answers(&cases, &companions());
    assert!(
        ours.iter().all(|&valid| valid),
        "every RFC 8032 vector is valid"
    );
}

#[test]
fn crafted_torsion() {
    let json = read_json("crafted/torsion_r.json");
    let entries = json.as_array().unwrap();
    let cases: Vec<EdCase> = entries
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_string();
            EdCase::new(
                id,
                &hex_field(c, "pub_key"),
                hex_field(c, "message"),
                hex_field(c, "signature"),
            )
        })
        .collect();
    let ours = answers(&cases, &companions());
    let mut deviations = BTreeSet::new();
    for ((case, entry), answer) in cases.iter().zip(entries).zip(&ours) {
        assert_eq!(*answer, bool_field(entry, "zip215"), "{}", case.name);
        // Clean keys: the validator checks accept them.
        assert!(PublicKey::from_bytes(&case.key).is_ok(), "{}", case.name);
        if *answer != bool_field(entry, "rfc8032_strict_cofactorless") {
            deviations.insert(case.name.as_str());
        }
    }
    let pinned: BTreeSet<&str> = CRAFTED_DEVIATIONS.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        deviations, pinned,
        "ZIP-215 deviations on crafted cases changed"
    );
}

/// All Ed25519 vectors with a 64-byte signature in one large batch, among valid companions:
/// the batch names exactly the vectors that fail singly, sequentially and in parallel.
#[test]
fn all_vectors_in_one_batch() {
    let mut items: Vec<([u8; 32], Vec<u8>, Signature)> = Vec::new();
    let mut add_cases = |key: &[u8], msg: Vec<u8>, sig: Vec<u8>| {
        if let Ok(sig) = Signature::from_slice(&sig) {
            items.push((key.try_into().unwrap(), msg, sig));
        }
    };
    let speccheck = read_json("ed25519-speccheck/cases.json");
    for c in speccheck.as_array().unwrap() {
        add_cases(
            &hex_field(c, "pub_key"),
            hex_field(c, "message"),
            hex_field(c, "signature"),
        );
    }
    let wycheproof = read_json("wycheproof/ed25519_test.json");
    for group in wycheproof["testGroups"].as_array().unwrap() {
        let key = hex_field(&group["publicKey"], "pk");
        for t in group["tests"].as_array().unwrap() {
            add_cases(&key, hex_field(t, "msg"), hex_field(t, "sig"));
        }
    }
    let crafted = read_json("crafted/torsion_r.json");
    for c in crafted.as_array().unwrap() {
        add_cases(
            &hex_field(c, "pub_key"),
            hex_field(c, "message"),
            hex_field(c, "signature"),
        );
    }
    for c in companions() {
        items.push((c.key, c.msg.to_vec(), c.sig));
    }
    for seed in 0..4u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        // Shuffle positions.
        let order = sample(&mut rng, items.len(), items.len()).into_vec();
        let shuffled: Vec<_> = order.iter().map(|&i| &items[i]).collect();
        let expected: Vec<usize> = shuffled
            .iter()
            .enumerate()
            .filter(|(_, (k, m, s))| verify_key_bytes(k, m, s).is_err())
            .map(|(i, _)| i)
            .collect();
        assert!(!expected.is_empty());
        let build = || {
            let mut batch = BatchVerifier::new();
            for (k, m, s) in &shuffled {
                batch.queue(k, m, s);
            }
            batch
        };
        let want = Err(BatchFailure {
            invalid: expected.clone(),
        });
        assert_eq!(build().verify(&mut rng), want, "seed {seed}");
        assert_eq!(build().verify_parallel(), want, "seed {seed}");
    }
}

#[test]
fn blake3_official() {
    let json = read_json("blake3/test_vectors.json");
    let key: [u8; 32] = json["key"].as_str().unwrap().as_bytes().try_into().unwrap();
    let context = json["context_string"].as_str().unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 35);
    for case in cases {
        let len = case["input_len"].as_u64().unwrap() as usize;
        let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let modes: [(&str, blake3::Hasher); 3] = [
            ("hash", blake3::Hasher::new()),
            ("keyed_hash", blake3::Hasher::new_keyed(&key)),
            ("derive_key", blake3::Hasher::new_derive_key(context)),
        ];
        for (mode, mut hasher) in modes {
            let expected = hex_field(case, mode);
            hasher.update(&input);
            assert_eq!(
                hasher.finalize().as_bytes(),
                &expected[..32],
                "{mode} len {len}: 32 bytes"
            );
            let mut extended = vec![0u8; expected.len()];
            hasher.finalize_xof().fill(&mut extended);
            assert_eq!(extended, expected, "{mode} len {len}: extended output");
        }
        assert_eq!(
            blake3::hash(&input).as_bytes(),
            &hex_field(case, "hash")[..32]
        );
        assert_eq!(
            blake3::keyed_hash(&key, &input).as_bytes(),
            &hex_field(case, "keyed_hash")[..32]
        );
        assert_eq!(
            blake3::derive_key(context, &input),
            hex_field(case, "derive_key")[..32]
        );
    }
}
