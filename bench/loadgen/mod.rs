//! The open-loop load generator: constant-rate transaction submission to validators' client
//! endpoints, latency from intended submit time to commit notice.
//!
//! Open loop: each connection's schedule says transaction k is due at `k / rate`; a sender that
//! falls behind sends late but keeps the scheduled time as the latency origin, so a stalled system
//! shows its stall in the latency (coordinated-omission corrected). Latencies go into an
//! hdrhistogram (microseconds, 3 significant digits).
//!
//! Routing ([`Route`]): with `spread` each connection's sender submits to its own validator, so
//! a transaction waits in that validator's mempool until the validator leads (up to n rounds
//! with round-robin leaders). With `leader` the generator watches the validators' leader hints
//! ([`ClientResponse::Leaders`]) and one sender sends each batch to the validator that will
//! propose next and can still include it, which cuts that wait to about a round. Without a fresh
//! hint (no progress, old validators) it sends round-robin.

pub mod plot;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bpci_transport::{ClientRuntime, ClientSender};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client_proto::{ClientRequest, ClientResponse, TxStatus};
use crate::codec::{decode, encode_infallible};
use crate::mempool::{tx_ids, IdMap, TxId};
use crate::types::BlockId;

/// Transactions per submit frame, at most.
pub const SUBMIT_BATCH_MAX: usize = 512;
/// Most transactions awaiting a notice per connection; past it the sender waits.
pub const PENDING_MAX: usize = 2_000_000;
/// Highest latency recorded (µs); larger values are clamped.
const LATENCY_US_MAX: u64 = 600_000_000;

/// Where the load generator sends each batch of transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Each connection's share to its own validator.
    Spread,
    /// Every batch to the upcoming leader, from the validators' leader hints.
    #[default]
    Leader,
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Route::Spread),
            "leader" => Ok(Route::Leader),
            _ => Err(format!("{s:?}: route must be leader or spread")),
        }
    }
}

/// A batch sent less than this share of a round after the hint goes to the next round's
/// leader; later ones go to the leader after it. The next leader proposes as soon as it holds
/// the votes for the hinted round, about 0.7-0.8 of a round after the proposal left; the hint's
/// trip to the client and the batch's trip into that leader's mempool take much of the rest. A
/// batch that arrives after that leader took its payload is answered [`TxStatus::Late`]
/// ([`ClientRequest::SubmitToLeader`]) and goes on to the leader after it, a round trip later.
/// At 75,000 tx/s, with that answer: 0.5 against 1.0 gave p99 18 / 20 against 19 / 19 ms (a
/// quarter of the reroutes); 0.7 against 0.5, 24 / 28 against 29 / 23 (noisier minutes). Before
/// it (a late batch waited a whole rotation): 0.2, 0.4 and 0.6 gave p99 29-40, 39-45 and 41-47.
pub const EARLY_FRACTION: f64 = 0.5;
/// A hint is stale this many rounds after it arrived: past the last leader it names
/// (`LEADER_HINTS` - 1 + [`EARLY_FRACTION`]). Without a fresh hint batches go round-robin.
pub const STALE_ROUNDS: f64 = (crate::client_proto::LEADER_HINTS - 1) as f64 + EARLY_FRACTION;
/// A hint more than this many rounds ahead of the current one is refused while the current one
/// is fresh (a false round from a faulty validator cannot freeze the routing).
pub const MAX_ROUND_JUMP: u64 = 1_000;
/// The share of batches any one validator may get through hints, over the last
/// [`SHARE_WINDOW`] batches, is at most this many times an even share: a faulty validator that
/// names itself as the next leader draws at most twice what spreading would send it.
pub const MAX_SHARE: usize = 2;
/// Batches over which [`MAX_SHARE`] is counted.
pub const SHARE_WINDOW: usize = 256;
/// Round length assumed until two hints have measured it (µs).
const DEFAULT_ROUND_US: f64 = 5_000.0;

/// The latest leader hint.
#[derive(Clone, Debug)]
pub struct Hint {
    /// The round just proposed.
    pub round: u64,
    /// When the hint arrived.
    pub at: Instant,
    /// Target indices of the next leaders (rounds `round + 1 ..`), if they are targets.
    pub next: Vec<Option<usize>>,
    /// Estimated round length (µs), smoothed over hints.
    pub round_us: f64,
}

impl Hint {
    /// The hint that follows `prev` (if any) when `round` arrives at `at`. `None` while `prev`
    /// is fresh for a round not newer than its own (a late or repeated hint) or more than
    /// [`MAX_ROUND_JUMP`] ahead. A slow stretch (a view change) moves the round estimate by at
    /// most a factor of 1.2 per hint.
    pub fn next_after(
        prev: Option<&Hint>,
        round: u64,
        next: Vec<Option<usize>>,
        at: Instant,
    ) -> Option<Hint> {
        let round_us = match prev {
            Some(p) if p.rounds_since(at) >= STALE_ROUNDS => p.round_us,
            Some(p) if round <= p.round || round - p.round > MAX_ROUND_JUMP => return None,
            Some(p) => {
                let sample = at.saturating_duration_since(p.at).as_micros() as f64
                    / (round - p.round) as f64;
                (0.8 * p.round_us + 0.2 * sample.min(2.0 * p.round_us)).clamp(200.0, 1_000_000.0)
            }
            None => DEFAULT_ROUND_US,
        };
        Some(Hint {
            round,
            at,
            next,
            round_us,
        })
    }

    fn rounds_since(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.at).as_micros() as f64 / self.round_us
    }

    /// The target for a batch sent at `now`: the first leader, from the one that proposes next
    /// and that the batch can still reach in time, that is a target; `None` once the hint is
    /// stale.
    pub fn pick(&self, now: Instant) -> Option<usize> {
        let rounds = self.rounds_since(now);
        if rounds >= STALE_ROUNDS {
            return None;
        }
        let k = (rounds + 1.0 - EARLY_FRACTION).floor() as usize;
        self.next.iter().skip(k).find_map(|t| *t)
    }
}

/// How many of the recent batches each target got (for [`MAX_SHARE`]).
#[derive(Debug)]
struct Shares {
    recent: VecDeque<usize>,
    counts: Vec<usize>,
}

impl Shares {
    fn new(targets: usize) -> Self {
        Self {
            recent: VecDeque::with_capacity(SHARE_WINDOW),
            counts: vec![0; targets],
        }
    }

    /// Whether `target` may take one more batch.
    fn allows(&self, target: usize) -> bool {
        let n = self.counts.len().max(1);
        self.counts
            .get(target)
            .is_some_and(|c| c * n < MAX_SHARE * SHARE_WINDOW)
    }

    fn record(&mut self, target: usize) {
        if self.recent.len() == SHARE_WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.counts[old] -= 1;
            }
        }
        if let Some(c) = self.counts.get_mut(target) {
            *c += 1;
            self.recent.push_back(target);
        }
    }
}

/// A validator's client endpoint.
#[derive(Clone, Debug)]
pub struct Target {
    /// Address of its client endpoint.
    pub addr: SocketAddr,
    /// Its Ed25519 public key (pinned).
    pub key: [u8; 32],
}

/// What to offer.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Endpoints; the rate is split evenly across them.
    pub targets: Vec<Target>,
    /// Offered transactions per second, in total.
    pub rate_tps: u64,
    /// Bytes per transaction (at least 16).
    pub tx_bytes: usize,
    /// How long to offer load.
    pub duration: Duration,
    /// The first part of `duration` whose transactions are committed and counted but whose
    /// latencies are not recorded (the start-up transient); per-second figures include it.
    pub warmup: Duration,
    /// How long to wait for outstanding commit notices afterwards.
    pub drain: Duration,
    /// Where batches go.
    pub route: Route,
    /// The nice value of the thread that builds and sends the batches (0 leaves it as it is;
    /// see [`DEFAULT_SENDER_NICE`]). The threads that take commit notices keep the caller's
    /// priority: a late wake-up there would be measured as latency.
    pub sender_nice: i32,
}

/// The sending thread's default nice value. Sharing a machine with the validators it loads (a
/// local testnet), the generator competes for the same cores; at a nice value above theirs the
/// kernel runs a validator thread first when both are ready, as it would if the generator had
/// its own machine. A batch that leaves late is still timed from its scheduled instant
/// (coordinated omission), so the delay shows in the latency, never hides. See
/// `perf/README.md` (tenth session) for the runs that chose it.
pub const DEFAULT_SENDER_NICE: i32 = 10;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// One second of progress.
#[derive(Clone, Debug, Serialize)]
pub struct Tick {
    /// Seconds since start.
    pub second: u64,
    /// Transactions committed in that second.
    pub committed_tps: u64,
    /// p99 latency of that second (ms).
    pub p99_ms: f64,
}

/// The outcome of a load run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Offered rate.
    pub offered_tps: f64,
    /// Transactions sent.
    pub sent: u64,
    /// Refused as busy (mempool full).
    pub busy: u64,
    /// Committed (notice received).
    pub committed: u64,
    /// Committed per second of offered load.
    pub committed_tps: f64,
    /// Sent but never noticed by the end of the drain.
    pub lost: u64,
    /// Latency from scheduled submit to commit notice.
    pub latency_ms: Percentiles,
    /// (percentile, ms) points for the plot.
    pub latency_curve: Vec<(f64, f64)>,
    /// Per-second progress.
    pub ticks: Vec<Tick>,
    /// How batches were routed.
    pub route: Route,
    /// Leader hints taken (newer than the one before; `route: leader`).
    pub leader_hints: u64,
    /// Batches sent where a leader hint pointed (`route: leader`).
    pub routed_batches: u64,
    /// Inclusion receipts taken ([`ClientResponse::Included`]).
    pub receipts: u64,
    /// Batches a hinted leader answered "late" (its proposal had left) and that went on to
    /// the next leader.
    pub rerouted_batches: u64,
    /// Transactions first learned committed from a commit announcement
    /// ([`ClientResponse::BlockCommitted`], sent by the validator that formed the committing QC)
    /// rather than from the notice of the validator they were submitted to.
    pub announced_commits: u64,
}

struct Conn {
    sender: ClientSender,
    pending: Mutex<IdMap<u64>>,
    /// Each submit awaiting its ack, in send order (pushed and sent under this lock, so that
    /// the order matches the acks').
    batches: Mutex<VecDeque<Sent>>,
}

/// A submit awaiting its ack.
struct Sent {
    ids: Vec<TxId>,
    /// For a [`ClientRequest::SubmitToLeader`]: its frame, sent on to the upcoming leader if
    /// this validator answers [`TxStatus::Late`].
    resend: Option<Bytes>,
    /// Times the batch was answered late already.
    bounces: u8,
}

/// Where the hint points now, unless that is `exclude` or past its share ([`MAX_SHARE`]).
fn hinted_target(
    hint: &Mutex<Option<Hint>>,
    shares: &Mutex<Shares>,
    exclude: Option<usize>,
) -> Option<usize> {
    let target = hint
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|h| h.pick(Instant::now()))?;
    let allowed = shares
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allows(target);
    (Some(target) != exclude && allowed).then_some(target)
}

/// A `SubmitToLeader` frame as the plain `Submit` of the same transactions.
fn as_plain(frame: &Bytes) -> Bytes {
    // Our own encoding: the re-tag cannot fail; were it to, the frame goes as it is.
    crate::client_proto::retag_submit(frame, false).map_or_else(|| frame.clone(), Bytes::from)
}

/// A batch answered [`TxStatus::Late`] this many times goes on as a plain submit, taken
/// wherever it lands.
pub const MAX_BOUNCES: u8 = 2;
/// A connection with this many submits awaiting their acks gets plain submits (whose frames
/// are not kept for a resend), so an unresponsive validator pins at most this many batches.
pub const MAX_RESENDABLE: usize = 256;

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    busy: AtomicU64,
    committed: AtomicU64,
    hints: AtomicU64,
    routed: AtomicU64,
    receipts: AtomicU64,
    announced: AtomicU64,
    rerouted: AtomicU64,
    /// Batches whose move to another connection began, and ended (pending on none between).
    moves_started: AtomicU64,
    moves_done: AtomicU64,
}

/// Most inclusion receipts kept, and most transaction ids in them; the oldest go first.
pub const RECEIPTS_MAX: usize = 1 << 14;
/// See [`RECEIPTS_MAX`] (32 MiB of ids).
pub const RECEIPT_IDS_MAX: usize = 1 << 20;

/// Inclusion receipts by block and the connection they came on (a validator may name only its
/// own connection's transactions): the block's round and the ids.
#[derive(Default)]
struct Receipts {
    by_block: HashMap<(BlockId, usize), (u64, Vec<TxId>)>,
    order: VecDeque<(BlockId, usize)>,
    ids: usize,
}

impl Receipts {
    fn insert(&mut self, block: BlockId, conn: usize, round: u64, ids: Vec<TxId>) {
        if self.by_block.contains_key(&(block, conn)) {
            // A second receipt for one block on one connection (never from an honest
            // validator): the first stands.
            return;
        }
        while self.order.len() >= RECEIPTS_MAX || self.ids + ids.len() > RECEIPT_IDS_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, gone)) = self.by_block.remove(&old) {
                self.ids -= gone.len();
            }
        }
        self.ids += ids.len();
        self.order.push_back((block, conn));
        self.by_block.insert((block, conn), (round, ids));
    }

    /// The receipts for `block` of `round` on any of `conns` connections, once each (their
    /// places in the order age out).
    fn take(&mut self, block: &BlockId, round: u64, conns: usize) -> Vec<(usize, Vec<TxId>)> {
        let mut out = Vec::new();
        for c in 0..conns {
            let key = (*block, c);
            if self.by_block.get(&key).is_some_and(|(r, _)| *r == round) {
                if let Some((_, ids)) = self.by_block.remove(&key) {
                    self.ids -= ids.len();
                    out.push((c, ids));
                }
            }
        }
        out
    }
}

/// What the receiver threads share.
struct Shared {
    conns: Arc<Vec<Arc<Conn>>>,
    counters: Arc<Counters>,
    total: Arc<Mutex<Option<Histogram<u64>>>>,
    interval: Arc<Mutex<Option<Histogram<u64>>>>,
    hint: Arc<Mutex<Option<Hint>>>,
    keys: Arc<Vec<[u8; 32]>>,
    receipts: Mutex<Receipts>,
    /// Batches per target through hints (the sender's and the reroutes').
    shares: Arc<Mutex<Shares>>,
    start: Instant,
    warmup_us: u64,
}

impl Shared {
    /// Reads connection `ci`'s acks, notices, hints, receipts and announcements.
    fn receive(&self, ci: usize, mut rx: bpci_transport::Receiver<Bytes>) {
        let conn = &self.conns[ci];
        while let Some(frame) = rx.blocking_recv() {
            let Ok(resp) = decode::<ClientResponse>(&frame) else {
                continue;
            };
            match resp {
                ClientResponse::Ack(statuses) => {
                    let Some(sent) = conn
                        .batches
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front()
                    else {
                        continue;
                    };
                    let all_late = !statuses.is_empty()
                        && statuses.len() == sent.ids.len()
                        && statuses.iter().all(|s| *s == TxStatus::Late);
                    if let (true, Some(frame)) = (all_late, sent.resend) {
                        self.reroute(ci, sent.ids, frame, sent.bounces + 1);
                        continue;
                    }
                    let mut pending = conn.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    for (id, s) in sent.ids.iter().zip(statuses) {
                        if s != TxStatus::Accepted {
                            pending.remove(id);
                            self.counters.busy.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                ClientResponse::Committed { tx_ids, .. } => {
                    self.resolve(conn, &tx_ids);
                }
                ClientResponse::Error(e) => {
                    tracing::warn!(target: "loadgen", error = %e, "validator refused a request")
                }
                ClientResponse::Leaders { round, next } => {
                    let next = next
                        .iter()
                        .map(|k| self.keys.iter().position(|t| t == k))
                        .collect();
                    let mut h = self.hint.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(new) = Hint::next_after(h.as_ref(), round, next, Instant::now()) {
                        *h = Some(new);
                        self.counters.hints.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ClientResponse::Included {
                    round,
                    block,
                    tx_ids,
                } => {
                    self.counters.receipts.fetch_add(1, Ordering::Relaxed);
                    self.receipts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(block, ci, round, tx_ids);
                }
                ClientResponse::BlockCommitted { round, block, .. } => {
                    let receipts = self
                        .receipts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take(&block, round, self.conns.len());
                    for (owner, ids) in receipts {
                        let n = self.resolve(&self.conns[owner], &ids);
                        self.counters.announced.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Sends a batch that validator `from` answered [`TxStatus::Late`] to the hinted leader
    /// (else to the other validators in turn); after [`MAX_BOUNCES`] as a plain submit, which is
    /// taken wherever it lands. Its scheduled times stay its latency origins.
    fn reroute(&self, from: usize, ids: Vec<TxId>, frame: Bytes, bounces: u8) {
        // Counted as moving until the new connection holds the batch (or it is given up), so
        // a run is not drained while it is pending nowhere.
        self.counters.moves_started.fetch_add(1, Ordering::AcqRel);
        self.move_batch(from, ids, frame, bounces);
        self.counters.moves_done.fetch_add(1, Ordering::AcqRel);
    }

    fn move_batch(&self, from: usize, ids: Vec<TxId>, frame: Bytes, bounces: u8) {
        let old = &self.conns[from];
        // Taken off `from` before it goes anywhere else: a batch is pending on one connection
        // at a time. (Read there and removed only after the resend, a batch that bounced on
        // quickly, `from` -> B -> `from`, was removed by this late removal from the connection
        // that had just accepted it, and its commit was never counted: 200-700 transactions
        // "lost" in about one run in three at 100,000 tx/s.)
        let scheduled: Option<Vec<u64>> = {
            let mut pending = old.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let taken: Vec<Option<u64>> = ids.iter().map(|id| pending.remove(id)).collect();
            if taken.iter().all(Option::is_some) {
                Some(taken.into_iter().flatten().collect())
            } else {
                // Some already noticed (a validator that answered late and committed them
                // too): not resent, or they would count twice; the rest count as refused.
                let gone = taken.iter().filter(|t| t.is_some()).count();
                self.counters.busy.fetch_add(gone as u64, Ordering::Relaxed);
                None
            }
        };
        let Some(scheduled) = scheduled else {
            return;
        };
        let give_up = |ids: &[TxId]| {
            self.counters
                .busy
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
        };
        let n = self.conns.len();
        let hinted = hinted_target(&self.hint, &self.shares, Some(from));
        let mut ids = ids;
        for t in hinted.into_iter().chain((1..n).map(|k| (from + k) % n)) {
            let Some(conn) = self.conns.get(t).filter(|c| !c.sender.is_closed()) else {
                continue;
            };
            let sent = if bounces < MAX_BOUNCES {
                submit(conn, ids, &scheduled, &frame, Some(frame.clone()), bounces)
            } else {
                submit(conn, ids, &scheduled, &as_plain(&frame), None, bounces)
            };
            match sent {
                Ok(()) => {
                    self.shares
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(t);
                    self.counters.rerouted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(back) => ids = back,
            }
        }
        // Every queue full or closed: as refused.
        give_up(&ids);
    }

    /// Records the latency of those of `ids` still pending on `conn` (a transaction counts
    /// once, at the first notice or announcement); returns how many were.
    fn resolve(&self, conn: &Conn, ids: &[TxId]) -> u64 {
        let now_us = self.start.elapsed().as_micros() as u64;
        let mut lat = Vec::with_capacity(ids.len());
        if let Ok(mut pending) = conn.pending.lock() {
            for id in ids {
                if let Some(t0) = pending.remove(id) {
                    let l = now_us.saturating_sub(t0).clamp(1, LATENCY_US_MAX);
                    lat.push((l, t0 >= self.warmup_us));
                }
            }
        }
        let n = lat.len() as u64;
        self.counters.committed.fetch_add(n, Ordering::Relaxed);
        // Per-second figures see every latency; the totals only those scheduled after the
        // warm-up.
        for (h, all) in [(&self.total, false), (&self.interval, true)] {
            if let Ok(mut g) = h.lock() {
                if let Some(h) = g.as_mut() {
                    for (l, measured) in &lat {
                        if all || *measured {
                            let _ = h.record(*l);
                        }
                    }
                }
            }
        }
        n
    }
}

fn new_hist() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).ok()
}

/// Why load could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No endpoint, zero rate or tiny transactions.
    #[error("{0}")]
    Config(String),
    /// Connecting failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: bpci_transport::TransportError,
    },
    /// Runtime or thread failure.
    #[error("{0}")]
    Runtime(String),
}

/// Runs the load; `on_tick` sees each second's progress; `stop` ends it early (Ctrl-C).
pub fn run(
    cfg: &LoadConfig,
    stop: &AtomicBool,
    mut on_tick: impl FnMut(&Tick),
) -> Result<LoadReport, LoadError> {
    if !(0..=19).contains(&cfg.sender_nice) {
        return Err(LoadError::Config(format!(
            "sender nice value must be between 0 and 19, got {}",
            cfg.sender_nice
        )));
    }
    if cfg.targets.is_empty() || cfg.rate_tps == 0 || cfg.tx_bytes < 16 {
        return Err(LoadError::Config(
            "load needs at least one target, a positive rate and transactions of at least 16 bytes"
                .into(),
        ));
    }
    let rt = ClientRuntime::new(2).map_err(|e| LoadError::Runtime(e.to_string()))?;
    let counters = Arc::new(Counters::default());
    let total = Arc::new(Mutex::new(new_hist()));
    let interval = Arc::new(Mutex::new(new_hist()));
    // Connect first: the schedule (and so every latency) starts when load starts, not while
    // the handshakes run.
    let mut links = Vec::with_capacity(cfg.targets.len());
    for t in &cfg.targets {
        links.push(rt.connect(t.addr, t.key, 8 << 20, 4096).map_err(|source| {
            LoadError::Connect {
                addr: t.addr,
                source,
            }
        })?);
    }
    let mut watch = vec![ClientRequest::WatchCommits];
    if cfg.route == Route::Leader {
        watch.push(ClientRequest::WatchLeaders);
    }
    for w in &watch {
        let frame = Bytes::from(encode_infallible(w));
        for (sender, _) in &links {
            sender
                .send(frame.clone())
                .map_err(|e| LoadError::Runtime(format!("asking for {w:?}: {e}")))?;
        }
    }
    let keys: Arc<Vec<[u8; 32]>> = Arc::new(cfg.targets.iter().map(|t| t.key).collect());
    let hint: Arc<Mutex<Option<Hint>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut receivers = Vec::with_capacity(links.len());
    let mut conns = Vec::with_capacity(links.len());
    for (sender, rx) in links {
        conns.push(Arc::new(Conn {
            sender,
            pending: Mutex::new(IdMap::default()),
            batches: Mutex::new(VecDeque::new()),
        }));
        receivers.push(rx);
    }
    let conns = Arc::new(conns);
    let shares = Arc::new(Mutex::new(Shares::new(conns.len())));
    let shared = Arc::new(Shared {
        conns: Arc::clone(&conns),
        counters: Arc::clone(&counters),
        total: Arc::clone(&total),
        interval: Arc::clone(&interval),
        hint: Arc::clone(&hint),
        keys: Arc::clone(&keys),
        receipts: Mutex::new(Receipts::default()),
        shares: Arc::clone(&shares),
        start,
        warmup_us: cfg.warmup.min(cfg.duration).as_micros() as u64,
    });
    for (ci, rx) in receivers.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name(format!("loadgen.recv-{ci}"))
                .spawn(move || shared.receive(ci, rx))
                .map_err(|e| LoadError::Runtime(format!("starting a receiver thread: {e}")))?,
        );
    }
    // Senders: one per connection when spreading; one for all of them when following the
    // leader (a batch a millisecond to whichever validator proposes next: a quarter of the
    // submit frames, acks and wake-ups of four senders each sending its share).
    let owns: Vec<Option<usize>> = match cfg.route {
        Route::Spread => (0..conns.len()).map(Some).collect(),
        Route::Leader => vec![None],
    };
    let sender_rate = cfg.rate_tps as f64 / owns.len() as f64;
    // Senders still running: the run is drained only once none can add a batch. (A sender
    // that the kernel ran late, its last batch not yet queued, once let a run end with that
    // batch counted as sent and never awaited: 50-120 transactions "lost" at 50,000 tx/s.)
    let live_senders = Arc::new(AtomicUsize::new(owns.len()));
    for (si, own) in owns.into_iter().enumerate() {
        let (conns3, counters3, done3) =
            (Arc::clone(&conns), Arc::clone(&counters), Arc::clone(&done));
        let hint3 = (cfg.route == Route::Leader).then(|| Arc::clone(&hint));
        let shares3 = Arc::clone(&shares);
        let tx_bytes = cfg.tx_bytes;
        let duration = cfg.duration;
        let nice = cfg.sender_nice;
        let live = SenderLive(Arc::clone(&live_senders));
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen.send-{si}"))
            .spawn(move || {
                let _live = live;
                if nice > 0 {
                    if let Err(e) = crate::pipeline::lower_thread_priority(nice) {
                        tracing::warn!(target: "loadgen", nice, error = %e, "sender priority unchanged");
                    }
                }
                send_loop(
                si as u32,
                own,
                &conns3,
                hint3.as_deref(),
                &shares3,
                &counters3,
                sender_rate,
                tx_bytes,
                duration,
                start,
                &done3,
            )
            });
        threads.push(
            spawned.map_err(|e| LoadError::Runtime(format!("starting a sender thread: {e}")))?,
        );
    }
    // Progress, once a second, until the offered period ends; then drain.
    let mut ticks = Vec::new();
    let mut last_committed = 0;
    let mut second = 0;
    let end = start + cfg.duration;
    let drain_end = end + cfg.drain;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        // A batch being moved is pending on no connection: none may start or end while the
        // count is taken (every move that overlaps it leaves `started` above `done`).
        let done_before = counters.moves_done.load(Ordering::Acquire);
        let outstanding: usize = conns
            .iter()
            .map(|c| c.pending.lock().map(|p| p.len()).unwrap_or(0))
            .sum();
        let no_moves = counters.moves_started.load(Ordering::Acquire) == done_before;
        if stop.load(Ordering::Acquire)
            || now >= drain_end
            || (now >= end
                && outstanding == 0
                && no_moves
                && live_senders.load(Ordering::Acquire) == 0)
        {
            break;
        }
        if now.duration_since(start).as_secs() > second {
            second += 1;
            let committed = counters.committed.load(Ordering::Relaxed);
            let p99 = interval
                .lock()
                .ok()
                .and_then(|mut g| {
                    g.as_mut().map(|h| {
                        let v = h.value_at_quantile(0.99) as f64 / 1000.0;
                        h.reset();
                        v
                    })
                })
                .unwrap_or(0.0);
            let tick = Tick {
                second,
                committed_tps: committed - last_committed,
                p99_ms: p99,
            };
            last_committed = committed;
            on_tick(&tick);
            ticks.push(tick);
        }
    }
    done.store(true, Ordering::Release);
    let offered_s = start.elapsed().min(cfg.duration).as_secs_f64().max(1e-3);
    let sent = counters.sent.load(Ordering::Relaxed);
    let committed = counters.committed.load(Ordering::Relaxed);
    let busy = counters.busy.load(Ordering::Relaxed);
    rt.shutdown();
    for t in threads {
        let _ = t.join();
    }
    let (latency_ms, latency_curve) = match total.lock().ok().and_then(|g| g.clone()) {
        Some(h) if !h.is_empty() => {
            let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
            let curve = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999]
                .iter()
                .map(|p| (p * 100.0, q(*p)))
                .chain(std::iter::once((100.0, h.max() as f64 / 1000.0)))
                .collect();
            (
                Percentiles {
                    p50: q(0.5),
                    p90: q(0.9),
                    p99: q(0.99),
                    p999: q(0.999),
                    max: h.max() as f64 / 1000.0,
                },
                curve,
            )
        }
        _ => (Percentiles::default(), Vec::new()),
    };
    Ok(LoadReport {
        offered_tps: cfg.rate_tps as f64,
        sent,
        busy,
        committed,
        committed_tps: committed as f64 / offered_s,
        lost: sent.saturating_sub(committed + busy),
        latency_ms,
        latency_curve,
        ticks,
        route: cfg.route,
        leader_hints: counters.hints.load(Ordering::Relaxed),
        routed_batches: counters.routed.load(Ordering::Relaxed),
        receipts: counters.receipts.load(Ordering::Relaxed),
        rerouted_batches: counters.rerouted.load(Ordering::Relaxed),
        announced_commits: counters.announced.load(Ordering::Relaxed),
    })
}

/// Counts a sender out when its thread ends, however it ends.
struct SenderLive(Arc<AtomicUsize>);

impl Drop for SenderLive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends `rate` transactions a second on its own schedule (`sender_id` makes them unique): to
/// connection `own` when it has one; else to the hinted leader (within [`MAX_SHARE`]), and
/// when that is not possible (no fresh hint, its queue full, its connection closed) to the
/// next connection that takes the batch, round-robin.
#[allow(clippy::too_many_arguments)]
fn send_loop(
    sender_id: u32,
    own: Option<usize>,
    conns: &[Arc<Conn>],
    hint: Option<&Mutex<Option<Hint>>>,
    shares: &Mutex<Shares>,
    counters: &Counters,
    rate: f64,
    tx_bytes: usize,
    duration: Duration,
    start: Instant,
    done: &AtomicBool,
) {
    let mut k: u64 = 0;
    let mut batch_no: usize = 0;
    while !done.load(Ordering::Acquire) {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()) as u64;
        while k < due && !done.load(Ordering::Acquire) {
            let n = ((due - k) as usize).min(SUBMIT_BATCH_MAX);
            let mut raw = Vec::with_capacity(n);
            let mut scheduled = Vec::with_capacity(n);
            for j in 0..n as u64 {
                let seq = k + j;
                let mut tx = vec![0u8; tx_bytes];
                tx[..4].copy_from_slice(&sender_id.to_le_bytes());
                tx[4..12].copy_from_slice(&seq.to_le_bytes());
                tx[12..16].copy_from_slice(&(start.elapsed().subsec_nanos()).to_le_bytes());
                scheduled.push((seq as f64 / rate * 1e6) as u64);
                raw.push(tx);
            }
            // Ids of the whole batch at once (the validator computes the same ones).
            let mut ids = tx_ids(&raw);
            let txs: Vec<serde_bytes::ByteBuf> =
                raw.into_iter().map(serde_bytes::ByteBuf::from).collect();
            // Following hints, a batch goes as SubmitToLeader (answered "late" rather than
            // kept for a full rotation if that leader's payload is already taken); a plain
            // Submit, re-tagged from it, only where it goes elsewhere.
            let led = hint.is_some();
            let frame = Bytes::from(encode_infallible(&if led {
                ClientRequest::SubmitToLeader(txs)
            } else {
                ClientRequest::Submit(txs)
            }));
            let mut plain: Option<Bytes> = (!led).then(|| frame.clone());
            let sent_to = loop {
                if done.load(Ordering::Acquire) {
                    return;
                }
                // Chosen as late as possible: the hint is fresher.
                let hinted = hint.and_then(|h| hinted_target(h, shares, None));
                let candidates: Vec<usize> = match own {
                    Some(o) => vec![o],
                    None => hinted
                        .into_iter()
                        .chain((0..conns.len()).map(|j| (batch_no + j) % conns.len()))
                        .collect(),
                };
                let mut open = false;
                let mut taken = None;
                for t in candidates {
                    let Some(conn) = conns.get(t).filter(|c| !c.sender.is_closed()) else {
                        continue;
                    };
                    open = true;
                    // Kept for a resend only while few batches await their acks here.
                    let resendable = hinted == Some(t)
                        && conn
                            .batches
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .len()
                            < MAX_RESENDABLE;
                    let sent = if led && resendable {
                        submit(conn, ids, &scheduled, &frame, Some(frame.clone()), 0)
                    } else {
                        let p = plain.get_or_insert_with(|| as_plain(&frame));
                        submit(conn, ids, &scheduled, p, None, 0)
                    };
                    match sent {
                        Ok(()) => {
                            taken = Some((t, hinted == Some(t)));
                            ids = Vec::new();
                            break;
                        }
                        Err(back) => ids = back,
                    }
                }
                if let Some(t) = taken {
                    break t;
                }
                if !open {
                    // Every connection this sender may use has closed.
                    return;
                }
                // Every open connection's queue is full: wait (no lock held) and choose again.
                std::thread::sleep(Duration::from_micros(200));
            };
            let (target, routed) = sent_to;
            shares
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(target);
            batch_no += 1;
            if routed {
                counters.routed.fetch_add(1, Ordering::Relaxed);
            }
            counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            k += n as u64;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Queues one submit frame on `conn`, its ids awaiting their ack and their notices there.
/// Gives the ids back, with nothing left behind, when the connection's queue (or its map of
/// transactions awaiting notices) is full or it has closed.
fn submit(
    conn: &Conn,
    ids: Vec<TxId>,
    scheduled: &[u64],
    frame: &Bytes,
    resend: Option<Bytes>,
    bounces: u8,
) -> Result<(), Vec<TxId>> {
    {
        let mut pending = conn.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= PENDING_MAX {
            return Err(ids);
        }
        for (id, t) in ids.iter().zip(scheduled) {
            pending.insert(*id, *t);
        }
    }
    // Pushed and sent under one lock: acks come back in the order the frames were queued.
    let mut batches = conn.batches.lock().unwrap_or_else(PoisonError::into_inner);
    batches.push_back(Sent {
        ids,
        resend,
        bounces,
    });
    if conn.sender.send(frame.clone()).is_ok() {
        return Ok(());
    }
    let ids = batches.pop_back().map(|s| s.ids).unwrap_or_default();
    drop(batches);
    let mut pending = conn.pending.lock().unwrap_or_else(PoisonError::into_inner);
    for id in &ids {
        pending.remove(id);
    }
    Err(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn route_parses_and_refuses_other_words() {
        assert_eq!("leader".parse::<Route>(), Ok(Route::Leader));
        assert_eq!("spread".parse::<Route>(), Ok(Route::Spread));
        let e = "nearest".parse::<Route>().unwrap_err();
        assert!(
            e.contains("nearest") && e.contains("leader or spread"),
            "{e}"
        );
    }

    /// Early in a round a batch goes to the next round's leader, later to the one after it,
    /// then the one after that; a leader that is not a target is passed over for the next one
    /// that is; past the last named leader the hint is stale and names none (the sender then
    /// goes round-robin).
    #[test]
    fn a_batch_goes_to_the_leader_that_can_still_include_it() {
        let t0 = Instant::now();
        let h = Hint {
            round: 10,
            at: t0,
            next: vec![Some(1), None, Some(3)],
            round_us: 5_000.0,
        };
        // EARLY_FRACTION of a 5 ms round.
        let early = (EARLY_FRACTION * 5_000.0) as u64;
        let stale = (STALE_ROUNDS * 5_000.0) as u64;
        assert_eq!(h.pick(at(t0, 0)), Some(1));
        assert_eq!(h.pick(at(t0, early - 100)), Some(1));
        // The second leader is not among the targets: the third one is.
        assert_eq!(h.pick(at(t0, early + 100)), Some(3));
        assert_eq!(h.pick(at(t0, stale - 100)), Some(3));
        // Stale from STALE_ROUNDS on.
        assert_eq!(h.pick(at(t0, stale)), None);
        assert_eq!(h.pick(at(t0, 60_000)), None);
        let two = Hint {
            next: vec![Some(1), Some(2)],
            ..h.clone()
        };
        assert_eq!(two.pick(at(t0, early + 100)), Some(2));
        // Past the named leaders: none.
        assert_eq!(two.pick(at(t0, 5_000 + early + 100)), None);
        let none = Hint { next: vec![], ..h };
        assert_eq!(none.pick(at(t0, 100)), None);
    }

    /// Hints measure the round length from their spacing; an older, repeated or far-ahead round
    /// is refused while the current hint is fresh, and anything is taken once it is stale.
    #[test]
    fn hints_measure_the_round_and_refuse_old_or_far_rounds() {
        let t0 = Instant::now();
        let first = Hint::next_after(None, 5, vec![Some(0)], t0).unwrap();
        assert_eq!(first.round_us, DEFAULT_ROUND_US);
        // Two rounds in 4 ms: 2 ms a round, smoothed 0.8 / 0.2.
        let second = Hint::next_after(Some(&first), 7, vec![Some(1)], at(t0, 4_000)).unwrap();
        assert!((second.round_us - (0.8 * 5_000.0 + 0.2 * 2_000.0)).abs() < 1e-6);
        assert_eq!(second.round, 7);
        assert_eq!(second.next, vec![Some(1)]);
        assert!(Hint::next_after(Some(&second), 7, vec![], at(t0, 5_000)).is_none());
        assert!(Hint::next_after(Some(&second), 6, vec![], at(t0, 5_000)).is_none());
        assert!(
            Hint::next_after(Some(&second), 7 + MAX_ROUND_JUMP + 1, vec![], at(t0, 5_000))
                .is_none()
        );
        assert!(Hint::next_after(Some(&second), u64::MAX, vec![], at(t0, 5_000)).is_none());
        let jump = Hint::next_after(Some(&second), 7 + MAX_ROUND_JUMP, vec![], at(t0, 5_000));
        assert!(jump.is_some());
        // A slow round moves the estimate by at most a factor of 1.2 (9 ms against 4.4, before
        // the hint goes stale at 2.2 rounds).
        let slow = Hint::next_after(Some(&second), 8, vec![], at(t0, 13_000)).unwrap();
        assert!(
            (slow.round_us - 1.2 * second.round_us).abs() < 1e-6,
            "{slow:?}"
        );
        // Stale (10 rounds of 4.6 ms later): an older round is taken, the estimate kept.
        let reset = Hint::next_after(Some(&second), 3, vec![], at(t0, 50_000)).unwrap();
        assert_eq!(reset.round, 3);
        assert_eq!(reset.round_us, second.round_us);
    }

    /// No target gets more than twice an even share of the recent batches through hints.
    #[test]
    fn hinted_batches_are_capped_at_twice_an_even_share() {
        let mut s = Shares::new(4);
        let mut taken = 0;
        for _ in 0..1_000 {
            if s.allows(2) {
                s.record(2);
                taken += 1;
            } else {
                s.record(taken % 4);
            }
        }
        // Over the last window target 2 holds at most half of 256 (2 x an even quarter).
        let recent_2 = s.recent.iter().filter(|t| **t == 2).count();
        assert!(recent_2 <= MAX_SHARE * SHARE_WINDOW / 4, "{recent_2}");
        assert!(recent_2 >= MAX_SHARE * SHARE_WINDOW / 4 - 1, "{recent_2}");
        assert_eq!(s.counts.iter().sum::<usize>(), SHARE_WINDOW);
        assert!(!s.allows(7), "no such target");
        // A single target may take every batch.
        let mut one = Shares::new(1);
        for _ in 0..600 {
            assert!(one.allows(0));
            one.record(0);
        }
    }

    #[test]
    fn receipts_resolve_once_by_block_and_round_and_stay_bounded() {
        let mut r = Receipts::default();
        let (a, b) = (BlockId([1; 32]), BlockId([2; 32]));
        r.insert(a, 0, 5, vec![[10; 32], [11; 32]]);
        r.insert(b, 3, 6, vec![[12; 32]]);
        // A second receipt for a block on the same connection does not replace the first; one
        // on another connection (another validator's claim) stands beside it.
        r.insert(a, 0, 5, vec![[99; 32]]);
        r.insert(a, 2, 5, vec![[13; 32]]);
        // The round must match the receipt's.
        assert!(r.take(&a, 4, 4).is_empty());
        assert_eq!(
            r.take(&a, 5, 4),
            vec![(0, vec![[10; 32], [11; 32]]), (2, vec![[13; 32]])]
        );
        assert!(r.take(&a, 5, 4).is_empty(), "once");
        assert_eq!(r.ids, 1);
        assert_eq!(r.take(&b, 6, 4), vec![(3, vec![[12; 32]])]);
        assert_eq!(r.ids, 0);
        // Bounded by ids: the oldest receipts go first.
        let mut r = Receipts::default();
        let half = vec![[0; 32]; RECEIPT_IDS_MAX / 2];
        for k in 0..3u8 {
            r.insert(BlockId([k; 32]), 0, u64::from(k), half.clone());
        }
        assert!(r.ids <= RECEIPT_IDS_MAX);
        assert!(r.take(&BlockId([0; 32]), 0, 1).is_empty());
        assert_eq!(r.take(&BlockId([2; 32]), 2, 1).len(), 1);
        // And by count.
        let mut r = Receipts::default();
        for k in 0..(RECEIPTS_MAX as u64 + 10) {
            let mut id = [0; 32];
            id[..8].copy_from_slice(&k.to_le_bytes());
            r.insert(BlockId(id), 0, k, vec![]);
        }
        assert_eq!(r.by_block.len(), RECEIPTS_MAX);
        assert_eq!(r.order.len(), RECEIPTS_MAX);
    }
}
