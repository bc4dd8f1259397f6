//! Ed25519 verification benchmarks: bpci's ZIP-215 path against the libraries it could use raw.
//!
//! - `crypto::batch_verify/impl=<bpci|bpci_parallel|zebra_raw|consensus>/b=<64|256>`: queue `b`
//!   pre-generated valid items (32-byte messages, as our digests are) and verify the batch.
//!   `bpci` is `BatchVerifier::verify`, `zebra_raw` is ed25519-zebra's `batch::Verifier` on the
//!   same bytes, `bpci_parallel` is `BatchVerifier::verify_parallel`.
//! - `crypto::single_verify/impl=<bpci|zebra|consensus>`: one verification, key decoding
//!   included (as each library does it from bytes).
//!
//! - `crypto::merkle_root/leaves=10000/leaf_bytes=512`: a block's transaction root.
//! - `crypto::tx_ids/impl=<one_at_a_time|many>/txs=256/tx_bytes=512`: transaction ids on one
//!   thread, each hashed alone (`tx_id`) against all at once in BLAKE3's SIMD lanes
//!   (`crypto::many`, what the mempool, payload checks and load generator use).
//!
//! Throughput is in signatures (leaves for the Merkle root). Run: `cargo bench --bench crypto`.

use std::time::Duration;

use bpci::crypto::{merkle_root, verify_key_bytes, BatchVerifier, Keypair, Signature};
use bpci::mempool::{tx_id, tx_ids};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Batch sizes compared.
const BATCH_LENS: [usize; 2] = [64, 256];

/// Transactions in the Merkle benchmark.
const MERKLE_LEAVES_LEN: usize = 10_000;

/// Bytes per transaction in the Merkle benchmark.
const MERKLE_LEAF_LEN: usize = 512;

/// A valid signed item, in each library's types.
struct Item {
    key: [u8; 32],
    msg: [u8; 32],
    sig: Signature,
    zebra_key: ed25519_zebra::VerificationKeyBytes,
    zebra_sig: ed25519_zebra::Signature,
    consensus_key: ed25519_consensus::VerificationKeyBytes,
    consensus_sig: ed25519_consensus::Signature,
}

fn items(n: usize) -> Vec<Item> {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    (0..n)
        .map(|_| {
            let pair = Keypair::generate(&mut rng);
            let msg: [u8; 32] = rng.gen();
            let sig = pair.sign(&msg);
            let key = pair.public().to_bytes();
            Item {
                key,
                msg,
                sig,
                zebra_key: ed25519_zebra::VerificationKeyBytes::from(key),
                zebra_sig: ed25519_zebra::Signature::from_bytes(sig.as_bytes()),
                consensus_key: ed25519_consensus::VerificationKeyBytes::from(key),
                consensus_sig: ed25519_consensus::Signature::from(sig.to_bytes()),
            }
        })
        .collect()
}

fn batch_verify(c: &mut Criterion) {
    let all = items(BATCH_LENS[BATCH_LENS.len() - 1]);
    let mut group = c.benchmark_group("crypto::batch_verify");
    for b in BATCH_LENS {
        let batch = &all[..b];
        group.throughput(Throughput::Elements(b as u64));
        let param = format!("b={b}");
        group.bench_with_input(
            BenchmarkId::new("impl=bpci", &param),
            batch,
            |bench, batch| {
                let mut rng = rand::thread_rng();
                bench.iter(|| {
                    let mut verifier = BatchVerifier::with_capacity(batch.len());
                    for it in batch {
                        verifier.queue(&it.key, &it.msg, &it.sig);
                    }
                    verifier.verify(&mut rng)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("impl=zebra_raw", &param),
            batch,
            |bench, batch| {
                let mut rng = rand::thread_rng();
                bench.iter(|| {
                    let mut verifier = ed25519_zebra::batch::Verifier::new();
                    for it in batch {
                        verifier.queue((it.zebra_key, it.zebra_sig, &it.msg));
                    }
                    verifier.verify(&mut rng)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("impl=consensus", &param),
            batch,
            |bench, batch| {
                let mut rng = rand::thread_rng();
                bench.iter(|| {
                    let mut verifier = ed25519_consensus::batch::Verifier::new();
                    for it in batch {
                        verifier.queue((it.consensus_key, it.consensus_sig, &it.msg));
                    }
                    verifier.verify(&mut rng)
                })
            },
        );
        if b >= bpci::crypto::batch::PARALLEL_BATCH_LEN_MIN {
            group.bench_with_input(
                BenchmarkId::new("impl=bpci_parallel", &param),
                batch,
                |bench, batch| {
                    bench.iter(|| {
                        let mut verifier = BatchVerifier::with_capacity(batch.len());
                        for it in batch {
                            verifier.queue(&it.key, &it.msg, &it.sig);
                        }
                        verifier.verify_parallel()
                    })
                },
            );
        }
    }
    group.finish();
}

fn single_verify(c: &mut Criterion) {
    let all = items(1);
    let it = &all[0];
    let mut group = c.benchmark_group("crypto::single_verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("impl=bpci", |bench| {
        bench.iter(|| verify_key_bytes(&it.key, &it.msg, &it.sig))
    });
    group.bench_function("impl=zebra", |bench| {
        bench.iter(|| {
            ed25519_zebra::VerificationKey::try_from(it.zebra_key)
                .and_then(|vk| vk.verify(&it.zebra_sig, &it.msg))
        })
    });
    group.bench_function("impl=consensus", |bench| {
        bench.iter(|| {
            ed25519_consensus::VerificationKey::try_from(it.consensus_key)
                .and_then(|vk| vk.verify(&it.consensus_sig, &it.msg))
        })
    });
    group.finish();
}

/// Merkle root over 10 000 transactions of 512 bytes (leaves hashed on rayon threads).
fn merkle(c: &mut Criterion) {
    let leaves: Vec<Vec<u8>> = (0..MERKLE_LEAVES_LEN)
        .map(|i| vec![(i % 251) as u8; MERKLE_LEAF_LEN])
        .collect();
    let mut group = c.benchmark_group("crypto::merkle_root");
    group.throughput(Throughput::Elements(MERKLE_LEAVES_LEN as u64));
    group.bench_function(
        format!("leaves={MERKLE_LEAVES_LEN}/leaf_bytes={MERKLE_LEAF_LEN}"),
        |bench| bench.iter(|| merkle_root(&leaves)),
    );
    group.finish();
}

/// Transaction ids of 512-byte transactions on one thread (under the rayon threshold): 25 is
/// about one client submit at 100,000 tx/s, 256 a block.
fn ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("crypto::tx_ids");
    for n in [25, 256] {
        let txs: Vec<Vec<u8>> = (0..n)
            .map(|i| vec![(i % 251) as u8; MERKLE_LEAF_LEN])
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        let name = |i: &str| format!("impl={i}/txs={n}/tx_bytes={MERKLE_LEAF_LEN}");
        group.bench_function(name("one_at_a_time"), |bench| {
            bench.iter(|| txs.iter().map(|t| tx_id(t)).collect::<Vec<_>>())
        });
        group.bench_function(name("many"), |bench| bench.iter(|| tx_ids(&txs)));
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = batch_verify, single_verify, merkle, ids
}
criterion_main!(benches);
