//! Durable-write benchmarks: what a vote and a committed block cost in fsyncs.
//!
//! - `store::persist_safety/impl=<safety_file|redb>`: one safety-state write made durable, as
//!   the core does before every vote. `safety_file` is bpci's two-file record
//!   ([`bpci::store::SafetyFile`], one `pwrite` + `fdatasync` in place); `redb` is one redb
//!   transaction holding the same bytes with `Durability::Immediate` (how the state was kept
//!   before).
//! - `store::commit_group/payload_kib=<4|64|4096>`: one committed block with its commit proof through
//!   the persistence stage's group commit (value-log append + `fdatasync`, then the redb index
//!   commit).
//! - `store::log_append/impl=<direct|buffered>/kib=<64|256|4096>`: one value-log append of that
//!   many bytes made durable, around the page cache (`O_DIRECT`, what a node does where the
//!   file system allows it) or through it (`pwrite`, then the page-cache drop the node does).
//!   `store::log_append_cpu/...` is the same, measured in the process's CPU time (user and
//!   system, `getrusage`) rather than wall time: the page-cache copy costs the node's cores more
//!   than it delays the append.
//!
//! Files live in a temporary directory under `$TMPDIR`. Run: `cargo bench --bench store`.

use std::sync::Arc;
use std::time::Duration;

use bpci::codec::encode_infallible;
use bpci::consensus::{Block, CommitProof, QuorumCert, SafetyState, Storage};
use bpci::store::{Durability, RedbStore, SafetyFile, ValueLog};
use bpci::types::{BlockId, Epoch, Height, Round};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");

/// A safety state with a 4-validator quorum certificate, as a testnet node writes it.
fn safety_bytes() -> Vec<u8> {
    let mut s = SafetyState::initial(Epoch(1), QuorumCert::genesis("bench", Epoch(1)));
    s.last_voted_round = Round(12345);
    let mut bytes = encode_infallible(&s);
    // Room for three 64-byte signatures and their indices in `high_qc`.
    bytes.resize(bytes.len() + 3 * 66, 7);
    bytes
}

fn persist_safety(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bytes = safety_bytes();
    let mut group = c.benchmark_group("store::persist_safety");
    let (mut file, _) = SafetyFile::open(&dir.path().join("safety")).expect("safety file");
    group.bench_function(BenchmarkId::new("impl", "safety_file"), |b| {
        b.iter(|| file.write(&bytes).expect("write"))
    });
    let db = redb::Database::create(dir.path().join("safety.redb")).expect("redb");
    group.bench_function(BenchmarkId::new("impl", "redb"), |b| {
        b.iter(|| {
            let mut txn = db.begin_write().expect("begin");
            txn.set_durability(Durability::Immediate)
                .expect("durability");
            txn.open_table(META)
                .expect("table")
                .insert("safety_state", bytes.as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        })
    });
    group.finish();
}

fn commit_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("store::commit_group");
    for kib in [4usize, 64, 4096] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut store = RedbStore::open(&dir.path().join("node.redb")).expect("store");
        let mut h = 0u64;
        group.bench_function(BenchmarkId::new("payload_kib", kib), |b| {
            b.iter(|| {
                h += 1;
                let mut block = Block::genesis(Epoch(1));
                block.height = Height(h);
                block.round = Round(h);
                block.payload = vec![(h % 251) as u8; kib << 10].into();
                let proof = CommitProof {
                    child: block.header(),
                    child_qc: QuorumCert {
                        block_id: BlockId([1; 32]),
                        round: Round(h + 1),
                        height: Height(h + 1),
                        epoch: Epoch(1),
                        votes: vec![],
                    },
                };
                store
                    .persist_commit(&[Arc::new(block)], &proof)
                    .expect("commit");
            })
        });
    }
    group.finish();
}

fn log_append<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    for kib in [64usize, 256, 4096] {
        let bytes = vec![0x5au8; kib << 10];
        for direct in [true, false] {
            let dir = tempfile::tempdir().expect("temporary directory");
            let log = ValueLog::open_with(&dir.path().join("v.log"), 0, [1; 32], direct)
                .expect("value log");
            if direct && !log.writes_direct() {
                eprintln!("no direct I/O under $TMPDIR: skipping impl=direct");
                continue;
            }
            let name = if direct { "direct" } else { "buffered" };
            group.bench_function(BenchmarkId::new(format!("impl={name}/kib"), kib), |b| {
                b.iter(|| {
                    log.append(&[&bytes]).expect("append");
                    log.sync().expect("sync");
                    log.drop_synced_pages();
                })
            });
        }
    }
    group.finish();
}

fn log_append_wall(c: &mut Criterion) {
    log_append(c, "store::log_append");
}

fn log_append_cpu(c: &mut Criterion<CpuTime>) {
    log_append(c, "store::log_append_cpu");
}

/// The process's CPU time, user and system (`getrusage`): the benchmarks run on one thread, and
/// the kernel's work for a `pwrite` or an `fdatasync` is charged to the thread that calls it.
struct CpuTime;

fn cpu_now() -> Duration {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, shown as criterion shows wall time.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = persist_safety, commit_group, log_append_wall
}
criterion_group! {
    name = cpu_benches;
    // getrusage counts in microseconds: longer samples keep that coarseness out of the median.
    config = config().with_measurement(CpuTime).measurement_time(Duration::from_secs(6));
    targets = log_append_cpu
}
criterion_main!(benches, cpu_benches);
