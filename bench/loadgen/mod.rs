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
//!
//! A transaction without a commit after [`LoadConfig::resubmit_after`] (or twice the recent p99
//! latency, if longer: a slow validator set gets no extra load from the client) goes again to
//! another validator, up to [`LoadConfig::max_submits`] submissions; one answered `Busy` goes
//! again after a backoff that doubles each time (see [`track`]). The report counts how every transaction ended:
//! committed, lost (accepted, never seen committed), refused (only ever `Busy`), unanswered, and
//! committed twice (a resubmitted transaction seen committed at two heights).

pub mod hints;
pub mod plot;
mod receipts;
pub mod track;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bpci_transport::{ClientRuntime, ClientSender, SendError};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client_proto::{ClientRequest, ClientResponse, TxState, TxStatus, MAX_STATUS_IDS};
use crate::codec::{decode, encode_infallible};
use crate::mempool::{tx_ids, TxId};

use hints::{Hint, Shares};
use receipts::Receipts;
use track::{tx_bytes, Entry, Tracker};

/// Transactions per submit frame, at most.
pub const SUBMIT_BATCH_MAX: usize = 512;
/// Highest latency recorded (µs); larger values are clamped.
const LATENCY_US_MAX: u64 = 600_000_000;
/// How long a transaction waits for a commit before it goes to another validator, unless told
/// otherwise ([`LoadConfig::resubmit_after`]).
pub const DEFAULT_RESUBMIT_AFTER: Duration = Duration::from_secs(5);
/// Submissions of one transaction in all, unless told otherwise ([`LoadConfig::max_submits`]).
pub const DEFAULT_MAX_SUBMITS: u8 = 6;

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
    /// How long to wait for outstanding commits afterwards (resubmissions go on meanwhile).
    pub drain: Duration,
    /// Where batches go.
    pub route: Route,
    /// The nice value of the thread that builds and sends the batches (0 leaves it as it is;
    /// see [`DEFAULT_SENDER_NICE`]). The threads that take commit notices keep the caller's
    /// priority: a late wake-up there would be measured as latency.
    pub sender_nice: i32,
    /// A transaction without a commit this long after its submission goes to another
    /// validator.
    pub resubmit_after: Duration,
    /// Submissions of one transaction in all (1: never resubmitted).
    pub max_submits: u8,
}

impl LoadConfig {
    /// A run of `rate_tps` transactions of `tx_bytes` for `duration` to `targets`, with the
    /// defaults for everything else.
    pub fn new(targets: Vec<Target>, rate_tps: u64, tx_bytes: usize, duration: Duration) -> Self {
        Self {
            targets,
            rate_tps,
            tx_bytes,
            duration,
            warmup: Duration::ZERO,
            drain: Duration::from_secs(5),
            route: Route::Leader,
            sender_nice: DEFAULT_SENDER_NICE,
            resubmit_after: DEFAULT_RESUBMIT_AFTER,
            max_submits: DEFAULT_MAX_SUBMITS,
        }
    }

    /// The drain that lets every transaction use all its submissions: the last one's timeout
    /// after the others', plus `slack`.
    pub fn full_drain(&self, slack: Duration) -> Duration {
        self.resubmit_after * u32::from(self.max_submits.max(1)) + slack
    }
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
    /// Transactions sent (first submissions).
    pub sent: u64,
    /// Submissions of a transaction to another validator after a timeout or a `Busy` answer.
    pub resubmitted: u64,
    /// `Busy` answers (a transaction answered `Busy` twice counts twice).
    pub busy: u64,
    /// `Duplicate` answers (the validator held the transaction already).
    pub duplicates: u64,
    /// Answers `Committed { height }`: a resubmission of a transaction already committed.
    pub answered_committed: u64,
    /// Committed (a commit seen: notice, announcement or answer).
    pub committed: u64,
    /// Committed per second of offered load.
    pub committed_tps: f64,
    /// Accepted by a validator, not seen committed after the last submission (or by the end).
    pub lost: u64,
    /// Answered `Busy` every time until the client gave up: not taken, and the client knows.
    pub refused: u64,
    /// No answer at all before the client gave up (the validator went away first).
    pub unanswered: u64,
    /// Resubmitted transactions seen committed at two heights (must be 0).
    pub committed_twice: u64,
    /// Connections made again after their validator went away (killed, paused, restarted).
    pub reconnects: u64,
    /// Commits the client learned only from a status query (its notices went missing).
    pub status_committed: u64,
    /// Latency from scheduled submit to commit notice.
    pub latency_ms: Percentiles,
    /// (percentile, ms) points for the plot: dense along a scale of nines, up to the last
    /// percentile the sample supports, and the maximum.
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

/// One validator's client connection, made again when the validator went away.
struct Conn {
    target: Target,
    /// The current connection's sender (replaced by [`Shared::reconnect`]).
    sender: std::sync::RwLock<ClientSender>,
    /// Each submit awaiting its ack, in send order (pushed and sent under this lock, so that
    /// the order matches the acks').
    batches: Mutex<VecDeque<Sent>>,
    /// Each status query awaiting its answer: the ids asked, in send order.
    asked: Mutex<VecDeque<Vec<TxId>>>,
}

impl Conn {
    fn sender(&self) -> ClientSender {
        self.sender
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn send(&self, frame: Bytes) -> Result<(), SendError> {
        self.sender().send(frame)
    }

    fn is_closed(&self) -> bool {
        self.sender().is_closed()
    }

    /// Whether the oldest submit has waited longer than [`ACK_TIMEOUT`] for its ack: a
    /// validator killed or paused does not say it went away.
    fn stalled(&self, now: Instant) -> bool {
        self.batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.at) > ACK_TIMEOUT)
    }
}

/// A connection whose oldest submit has waited this long for its ack is closed and made
/// again: the validator went away without saying so (killed, paused), and QUIC would only
/// notice after its 30 s idle timeout. (An overloaded validator answers late, but not this
/// late; its transactions go elsewhere after [`LoadConfig::resubmit_after`] anyway.)
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end of a run waits for the answers to its last status queries.
pub const STATUS_WAIT: Duration = Duration::from_secs(3);
/// How often a closed connection is tried again.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// How long one attempt to make a connection again waits for the validator (on loopback a
/// live one answers in milliseconds; one still starting is tried again soon).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the first connection to each target is tried before the run fails.
pub const FIRST_CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// A submit awaiting its ack.
struct Sent {
    /// When it was queued.
    at: Instant,
    ids: Vec<TxId>,
    /// For a [`ClientRequest::SubmitToLeader`]: its frame, sent on to the upcoming leader if
    /// this validator answers [`TxStatus::Late`].
    resend: Option<Bytes>,
    /// Times the batch was answered late already.
    bounces: u8,
}

/// Where the hint points now, unless that is `exclude` or past its share ([`hints::MAX_SHARE`]).
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
    resubmitted: AtomicU64,
    busy: AtomicU64,
    duplicates: AtomicU64,
    answered_committed: AtomicU64,
    committed: AtomicU64,
    hints: AtomicU64,
    routed: AtomicU64,
    receipts: AtomicU64,
    announced: AtomicU64,
    rerouted: AtomicU64,
    /// Connections made again after their validator went away.
    reconnects: AtomicU64,
    /// Commits learned from status answers.
    status_committed: AtomicU64,
    /// Batches whose move to another connection began, and ended (sent on none between).
    moves_started: AtomicU64,
    moves_done: AtomicU64,
}

/// What the receiver, resubmitter and sender threads share.
struct Shared {
    conns: Arc<Vec<Arc<Conn>>>,
    counters: Arc<Counters>,
    tracker: Arc<Tracker>,
    total: Arc<Mutex<Option<Histogram<u64>>>>,
    interval: Arc<Mutex<Option<Histogram<u64>>>>,
    hint: Arc<Mutex<Option<Hint>>>,
    keys: Arc<Vec<[u8; 32]>>,
    receipts: Mutex<Receipts>,
    /// Batches per target through hints (the sender's and the reroutes').
    shares: Arc<Mutex<Shares>>,
    start: Instant,
    warmup_us: u64,
    /// This run's transactions ([`track::tx_bytes`]).
    run_nonce: u32,
    tx_bytes: usize,
    resubmit_after: Duration,
    max_submits: u8,
    /// The p99 latency of the last second that committed anything (µs).
    recent_p99_us: AtomicU64,
}

/// A resubmission waits at least this many times the recent p99 latency: when every commit is
/// slow (an overloaded validator set), the client waits longer rather than add resubmissions
/// to the overload.
pub const RESUBMIT_P99_FACTOR: u32 = 2;
/// The longest wait before a resubmission, whatever the recent latency.
pub const RESUBMIT_AFTER_MAX: Duration = Duration::from_secs(30);

impl Shared {
    /// How long a submission made now waits for its commit before it goes elsewhere:
    /// [`LoadConfig::resubmit_after`], or [`RESUBMIT_P99_FACTOR`] times the recent p99 latency
    /// if longer (at most [`RESUBMIT_AFTER_MAX`]).
    fn resubmit_wait(&self) -> Duration {
        let p99 = Duration::from_micros(self.recent_p99_us.load(Ordering::Relaxed));
        self.resubmit_after
            .max((p99 * RESUBMIT_P99_FACTOR).min(RESUBMIT_AFTER_MAX))
    }
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
                    self.acked(ci as u16, &sent.ids, &statuses);
                }
                ClientResponse::Committed { height, tx_ids } => {
                    self.resolve(&tx_ids, height);
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
                ClientResponse::BlockCommitted {
                    height,
                    round,
                    block,
                } => {
                    let receipts = self
                        .receipts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take(&block, round, self.conns.len());
                    for (_, ids) in receipts {
                        let n = self.resolve(&ids, height);
                        self.counters.announced.fetch_add(n, Ordering::Relaxed);
                    }
                }
                ClientResponse::Status(states) => {
                    let Some(ids) = conn
                        .asked
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front()
                    else {
                        continue;
                    };
                    for (id, state) in ids.iter().zip(states) {
                        // A commit counts only with its inclusion proof checked.
                        if let TxState::Committed(c) = state {
                            if c.verify(id).is_ok()
                                && self.resolve(std::slice::from_ref(id), c.height) > 0
                            {
                                self.counters
                                    .status_committed
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One submission's answers on connection `conn`, in order.
    fn acked(&self, conn: u16, ids: &[TxId], statuses: &[TxStatus]) {
        let mut busy = Vec::new();
        for (id, s) in ids.iter().zip(statuses) {
            match s {
                TxStatus::Accepted | TxStatus::Duplicate => {
                    if *s == TxStatus::Duplicate {
                        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    self.tracker.update(id, |e| {
                        e.accepted = true;
                        e.answered = true;
                        e.busy = false;
                    });
                }
                TxStatus::Busy => {
                    self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    busy.push(*id);
                }
                TxStatus::Committed { height } => {
                    self.counters
                        .answered_committed
                        .fetch_add(1, Ordering::Relaxed);
                    self.resolve(std::slice::from_ref(id), *height);
                }
                // Never sent by a validator for our transactions (well-formed, and a late
                // answer comes for a whole batch); given up so the run does not wait on them.
                TxStatus::Invalid | TxStatus::Late => self.tracker.give_up(id),
            }
        }
        if !busy.is_empty() {
            self.tracker.busy(busy, conn, Instant::now());
        }
    }

    /// Sends a batch that validator `from` answered [`TxStatus::Late`] to the hinted leader
    /// (else to the other validators in turn); after [`MAX_BOUNCES`] as a plain submit, which is
    /// taken wherever it lands. Its scheduled times stay its latency origins.
    fn reroute(&self, from: usize, ids: Vec<TxId>, frame: Bytes, bounces: u8) {
        // Counted as moving until a connection holds the batch (or it waits for a
        // resubmission), so a run is not drained while the batch is in no queue.
        self.counters.moves_started.fetch_add(1, Ordering::AcqRel);
        let n = self.conns.len();
        let hinted = hinted_target(&self.hint, &self.shares, Some(from));
        let mut left = Some(ids);
        for t in hinted.into_iter().chain((1..n).map(|k| (from + k) % n)) {
            let Some(ids) = left.take() else { break };
            let Some(conn) = self.conns.get(t).filter(|c| !c.is_closed()) else {
                left = Some(ids);
                continue;
            };
            let sent = if bounces < MAX_BOUNCES {
                submit(conn, ids, &frame, Some(frame.clone()), bounces)
            } else {
                submit(conn, ids, &as_plain(&frame), None, bounces)
            };
            match sent {
                Ok(_) => {
                    self.shares
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(t);
                    self.counters.rerouted.fetch_add(1, Ordering::Relaxed);
                }
                Err(back) => left = Some(back),
            }
        }
        if let Some(ids) = left {
            // Every queue full or closed: the batch waits for a resubmission.
            self.tracker.retry_later(ids, from as u16, Instant::now());
        }
        self.counters.moves_done.fetch_add(1, Ordering::AcqRel);
    }

    /// A commit at `height` of those of `ids` still awaited: their latencies are recorded (a
    /// transaction counts once, at the first commit seen); returns how many were awaited.
    fn resolve(&self, ids: &[TxId], height: u64) -> u64 {
        let now_us = self.start.elapsed().as_micros() as u64;
        let lat: Vec<(u64, bool)> = self
            .tracker
            .committed(ids, height)
            .into_iter()
            .map(|t0| {
                (
                    now_us.saturating_sub(t0).clamp(1, LATENCY_US_MAX),
                    t0 >= self.warmup_us,
                )
            })
            .collect();
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

    /// Submits the transactions that fell due again, each to another validator than its last
    /// (the hinted leader when it is one); gives up those whose submissions are used up.
    /// Returns the transactions submitted.
    fn resubmit_due(&self, now: Instant) -> usize {
        let due = self.tracker.due(now);
        if due.is_empty() {
            return 0;
        }
        let n = self.conns.len();
        // Grouped by the connection each goes to.
        let mut by_target: Vec<Vec<(TxId, Entry)>> = vec![Vec::new(); n];
        for (id, e, last) in due {
            if e.exhausted {
                continue;
            }
            if e.busy && !e.accepted && e.busy_answers >= track::MAX_BUSY_ANSWERS {
                // Refused again: the client gives up on it (and knows it was not taken).
                self.tracker.give_up(&id);
                continue;
            }
            if e.tries >= self.max_submits {
                // No more submissions: it waits for a notice, and is asked about at the end.
                self.tracker.update(&id, |e| e.exhausted = true);
                continue;
            }
            let from = usize::from(last);
            let hinted = hinted_target(&self.hint, &self.shares, Some(from));
            let target = hinted
                .into_iter()
                .chain((1..n).map(|k| (from + k) % n))
                .find(|t| self.conns.get(*t).is_some_and(|c| !c.is_closed()));
            match target {
                Some(t) => by_target[t].push((id, e)),
                // No validator to go to: tried again after a backoff.
                None => self.tracker.retry_later(vec![id], last, now),
            }
        }
        let mut submitted = 0;
        for (t, group) in by_target.into_iter().enumerate() {
            for chunk in group.chunks(SUBMIT_BATCH_MAX) {
                let txs: Vec<serde_bytes::ByteBuf> = chunk
                    .iter()
                    .map(|(_, e)| {
                        serde_bytes::ByteBuf::from(tx_bytes(
                            self.run_nonce,
                            e.sender,
                            e.seq,
                            self.tx_bytes,
                        ))
                    })
                    .collect();
                let ids: Vec<TxId> = chunk.iter().map(|(id, _)| *id).collect();
                let frame = Bytes::from(encode_infallible(&ClientRequest::Resubmit(txs)));
                match submit(&self.conns[t], ids, &frame, None, 0) {
                    Ok(ids) => {
                        submitted += ids.len();
                        self.counters
                            .resubmitted
                            .fetch_add(ids.len() as u64, Ordering::Relaxed);
                        self.tracker
                            .submitted(ids, t as u16, now, self.resubmit_wait());
                    }
                    // Its queue is full: tried again after a backoff.
                    Err(ids) => self.tracker.retry_later(ids, t as u16, now),
                }
            }
        }
        submitted
    }
}

impl Shared {
    /// Asks every open connection what became of `ids` ([`ClientRequest::Status`]); a
    /// commit in the answers (its proof checked) resolves them.
    fn ask_status(&self, ids: &[TxId]) {
        for conn in self.conns.iter().filter(|c| !c.is_closed()) {
            for chunk in ids.chunks(MAX_STATUS_IDS) {
                let frame = Bytes::from(encode_infallible(&ClientRequest::Status(chunk.to_vec())));
                // Pushed and sent under one lock: answers come back in this order.
                let mut asked = conn.asked.lock().unwrap_or_else(PoisonError::into_inner);
                asked.push_back(chunk.to_vec());
                if conn.send(frame).is_err() {
                    asked.pop_back();
                }
            }
        }
    }

    /// Whether any status query awaits its answer.
    fn asking(&self) -> bool {
        self.conns.iter().any(|c| {
            !c.is_closed()
                && !c
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
        })
    }
}

fn new_hist() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).ok()
}

/// Latency percentiles along a scale of nines: every twentieth of a decade of `1/(1-p)` from
/// the median up to the last decade the sample supports (no point claims a percentile
/// beyond what `len` samples can show), then the maximum.
fn latency_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len().max(1) as f64;
    // 1/(1-p) up to the sample count: with n samples the top percentile shown is 1 - 1/n.
    let decades = n.log10();
    let mut out = Vec::new();
    // From p = 50 % (1/(1-p) = 2).
    let mut x = 2f64.log10();
    let step = 0.05;
    while x <= decades + 1e-9 {
        let p = 1.0 - 10f64.powf(-x);
        out.push((p * 100.0, h.value_at_quantile(p) as f64 / 1000.0));
        x += step;
    }
    out.push((100.0, h.max() as f64 / 1000.0));
    out
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
    if cfg.max_submits == 0 || cfg.resubmit_after.is_zero() {
        return Err(LoadError::Config(
            "a transaction needs at least one submission and a positive resubmission timeout"
                .into(),
        ));
    }
    let rt = Arc::new(ClientRuntime::new(2).map_err(|e| LoadError::Runtime(e.to_string()))?);
    let counters = Arc::new(Counters::default());
    let tracker = Arc::new(Tracker::default());
    let total = Arc::new(Mutex::new(new_hist()));
    let interval = Arc::new(Mutex::new(new_hist()));
    // Connect first: the schedule (and so every latency) starts when load starts, not while
    // the handshakes run.
    // A validator that has just started (or is restarting) may refuse a handshake or two:
    // each target is tried until FIRST_CONNECT_WITHIN has passed.
    let mut links = Vec::with_capacity(cfg.targets.len());
    for t in &cfg.targets {
        let deadline = Instant::now() + FIRST_CONNECT_WITHIN;
        let link = loop {
            match rt.connect(t.addr, t.key, 8 << 20, 4096) {
                Ok(link) => break link,
                Err(source) if Instant::now() >= deadline || stop.load(Ordering::Acquire) => {
                    return Err(LoadError::Connect {
                        addr: t.addr,
                        source,
                    })
                }
                Err(e) => {
                    tracing::info!(target: "loadgen", addr = %t.addr, error = %e, "connecting again");
                    std::thread::sleep(RECONNECT_EVERY);
                }
            }
        };
        links.push(link);
    }
    let mut watch = vec![ClientRequest::WatchCommits];
    if cfg.route == Route::Leader {
        watch.push(ClientRequest::WatchLeaders);
    }
    let watch: Vec<Bytes> = watch
        .iter()
        .map(|w| Bytes::from(encode_infallible(w)))
        .collect();
    for w in &watch {
        for (sender, _) in &links {
            match sender.send(w.clone()) {
                // A connection that closed already (a validator restarting) is made again,
                // with these requests, by its reconnector.
                Ok(()) | Err(SendError::Closed) => {}
                Err(e) => {
                    return Err(LoadError::Runtime(format!(
                        "asking for commits and hints: {e}"
                    )))
                }
            }
        }
    }
    let keys: Arc<Vec<[u8; 32]>> = Arc::new(cfg.targets.iter().map(|t| t.key).collect());
    let hint: Arc<Mutex<Option<Hint>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut receivers = Vec::with_capacity(links.len());
    let mut conns = Vec::with_capacity(links.len());
    for ((sender, rx), target) in links.into_iter().zip(&cfg.targets) {
        conns.push(Arc::new(Conn {
            target: target.clone(),
            sender: std::sync::RwLock::new(sender),
            batches: Mutex::new(VecDeque::new()),
            asked: Mutex::new(VecDeque::new()),
        }));
        receivers.push(rx);
    }
    let conns = Arc::new(conns);
    let shares = Arc::new(Mutex::new(Shares::new(conns.len())));
    let shared = Arc::new(Shared {
        conns: Arc::clone(&conns),
        counters: Arc::clone(&counters),
        tracker: Arc::clone(&tracker),
        total: Arc::clone(&total),
        interval: Arc::clone(&interval),
        hint: Arc::clone(&hint),
        keys: Arc::clone(&keys),
        receipts: Mutex::new(Receipts::default()),
        shares: Arc::clone(&shares),
        start,
        warmup_us: cfg.warmup.min(cfg.duration).as_micros() as u64,
        // Distinct transactions in every run, also against validators that ran others.
        run_nonce: rand::random(),
        tx_bytes: cfg.tx_bytes,
        resubmit_after: cfg.resubmit_after,
        max_submits: cfg.max_submits,
        recent_p99_us: AtomicU64::new(0),
    });
    let receiving: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
    for (ci, rx) in receivers.into_iter().enumerate() {
        spawn_receiver(&shared, ci, rx, &receiving)?;
    }
    // Reconnectors: a connection whose validator went away is made again when it is back.
    for ci in 0..conns.len() {
        let (shared, rt, watch, done, receiving) = (
            Arc::clone(&shared),
            Arc::clone(&rt),
            watch.clone(),
            Arc::clone(&done),
            Arc::clone(&receiving),
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("loadgen.reconnect-{ci}"))
                .spawn(move || reconnect_loop(&shared, ci, &rt, &watch, &done, &receiving))
                .map_err(|e| LoadError::Runtime(format!("starting a reconnector: {e}")))?,
        );
    }
    // The resubmitter: transactions that fell due go again, until the run ends.
    {
        let shared = Arc::clone(&shared);
        let done = Arc::clone(&done);
        threads.push(
            std::thread::Builder::new()
                .name("loadgen.resubmit".into())
                .spawn(move || {
                    while !done.load(Ordering::Acquire) {
                        shared.resubmit_due(Instant::now());
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
                .map_err(|e| LoadError::Runtime(format!("starting the resubmitter: {e}")))?,
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
        let shared = Arc::clone(&shared);
        let done3 = Arc::clone(&done);
        let follow = cfg.route == Route::Leader;
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
                send_loop(si as u32, own, follow, &shared, sender_rate, duration, &done3)
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
        // A batch being moved is in no connection's queue: none may start or end while the
        // count is taken (every move that overlaps it leaves `started` above `done`).
        let done_before = counters.moves_done.load(Ordering::Acquire);
        let outstanding = tracker.len();
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
            if committed > last_committed {
                shared
                    .recent_p99_us
                    .store((p99 * 1000.0) as u64, Ordering::Relaxed);
            }
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
    // What is still awaited: ask the validators whether it committed (a notice may have been
    // lost with a validator that went away), and give the answers a moment.
    if !tracker.is_empty() && !stop.load(Ordering::Acquire) {
        shared.ask_status(&tracker.awaited());
        let deadline = Instant::now() + STATUS_WAIT;
        while shared.asking() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    done.store(true, Ordering::Release);
    let offered_s = start.elapsed().min(cfg.duration).as_secs_f64().max(1e-3);
    for t in threads {
        let _ = t.join();
    }
    // Every thread that held the runtime has ended: closing it ends the receivers.
    if let Ok(rt) = Arc::try_unwrap(rt) {
        rt.shutdown();
    }
    let receivers: Vec<_> =
        std::mem::take(&mut *receiving.lock().unwrap_or_else(PoisonError::into_inner));
    for t in receivers {
        let _ = t.join();
    }
    // What is still awaited is given up now.
    tracker.give_up_all();
    let committed = counters.committed.load(Ordering::Relaxed);
    let (latency_ms, latency_curve) = match total.lock().ok().and_then(|g| g.clone()) {
        Some(h) if !h.is_empty() => {
            let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
            (
                Percentiles {
                    p50: q(0.5),
                    p90: q(0.9),
                    p99: q(0.99),
                    p999: q(0.999),
                    max: h.max() as f64 / 1000.0,
                },
                latency_curve(&h),
            )
        }
        _ => (Percentiles::default(), Vec::new()),
    };
    let ends = &tracker.ends;
    Ok(LoadReport {
        offered_tps: cfg.rate_tps as f64,
        sent: counters.sent.load(Ordering::Relaxed),
        resubmitted: counters.resubmitted.load(Ordering::Relaxed),
        busy: counters.busy.load(Ordering::Relaxed),
        duplicates: counters.duplicates.load(Ordering::Relaxed),
        answered_committed: counters.answered_committed.load(Ordering::Relaxed),
        committed,
        committed_tps: committed as f64 / offered_s,
        lost: ends.lost.load(Ordering::Relaxed),
        refused: ends.refused.load(Ordering::Relaxed),
        unanswered: ends.unanswered.load(Ordering::Relaxed),
        committed_twice: ends.committed_twice.load(Ordering::Relaxed),
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        status_committed: counters.status_committed.load(Ordering::Relaxed),
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

/// Starts the thread that reads connection `ci`'s frames from `rx` (until it closes).
fn spawn_receiver(
    shared: &Arc<Shared>,
    ci: usize,
    rx: bpci_transport::Receiver<Bytes>,
    receiving: &Mutex<Vec<std::thread::JoinHandle<()>>>,
) -> Result<(), LoadError> {
    let shared = Arc::clone(shared);
    let handle = std::thread::Builder::new()
        .name(format!("loadgen.recv-{ci}"))
        .spawn(move || shared.receive(ci, rx))
        .map_err(|e| LoadError::Runtime(format!("starting a receiver thread: {e}")))?;
    let mut list = receiving.lock().unwrap_or_else(PoisonError::into_inner);
    list.retain(|h| !h.is_finished());
    list.push(handle);
    Ok(())
}

/// Keeps connection `ci` open while the run lasts: a stalled one ([`Conn::stalled`]) is
/// closed, a closed one is made again every [`RECONNECT_EVERY`] until the validator answers
/// (with the watch requests `watch` sent again). The submits the old connection never acked
/// are forgotten there: their transactions fall due and go elsewhere.
fn reconnect_loop(
    shared: &Arc<Shared>,
    ci: usize,
    rt: &ClientRuntime,
    watch: &[Bytes],
    done: &AtomicBool,
    receiving: &Mutex<Vec<std::thread::JoinHandle<()>>>,
) {
    let conn = &shared.conns[ci];
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(RECONNECT_EVERY);
        if conn.stalled(Instant::now()) {
            tracing::info!(target: "loadgen", addr = %conn.target.addr, "no acks: closing the connection to make it again");
            conn.sender().close();
        }
        if !conn.is_closed() {
            continue;
        }
        // The submits the dead connection never answered do not count: made again elsewhere.
        let unanswered: Vec<TxId> = conn
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .flat_map(|b| b.ids)
            .collect();
        if !unanswered.is_empty() {
            shared.tracker.refund(unanswered, ci as u16, Instant::now());
        }
        conn.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let Ok((sender, rx)) = rt.connect_within(
            conn.target.addr,
            conn.target.key,
            8 << 20,
            4096,
            RECONNECT_TIMEOUT,
        ) else {
            continue;
        };
        if watch.iter().any(|w| sender.send(w.clone()).is_err()) {
            continue;
        }
        *conn.sender.write().unwrap_or_else(PoisonError::into_inner) = sender;
        shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        if spawn_receiver(shared, ci, rx, receiving).is_err() {
            return;
        }
    }
}

/// Counts a sender out when its thread ends, however it ends.
struct SenderLive(Arc<AtomicUsize>);

impl Drop for SenderLive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends `rate` transactions a second on its own schedule (`sender_id` makes them unique): to
/// connection `own` when it has one; else, when following the hints (`follow`), to the hinted
/// leader (within [`hints::MAX_SHARE`]), and when that is not possible (no fresh hint, its queue
/// full, its connection closed) to the next connection that takes the batch, round-robin.
fn send_loop(
    sender_id: u32,
    own: Option<usize>,
    follow: bool,
    shared: &Shared,
    rate: f64,
    duration: Duration,
    done: &AtomicBool,
) {
    let conns = &shared.conns;
    let hint = follow.then_some(&*shared.hint);
    let start = shared.start;
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
            let raw: Vec<Vec<u8>> = (k..k + n as u64)
                .map(|seq| tx_bytes(shared.run_nonce, sender_id, seq, shared.tx_bytes))
                .collect();
            // Ids of the whole batch at once (the validator computes the same ones).
            let mut ids = tx_ids(&raw);
            let entries: Vec<Entry> = (k..k + n as u64)
                .map(|seq| Entry {
                    scheduled_us: (seq as f64 / rate * 1e6) as u64,
                    sender: sender_id,
                    seq,
                    tries: 1,
                    accepted: false,
                    busy: false,
                    answered: false,
                    busy_answers: 0,
                    exhausted: false,
                })
                .collect();
            while !shared.tracker.add(&ids, &entries) {
                // Too many awaited: wait for commits.
                if done.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
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
                let hinted = hint.and_then(|h| hinted_target(h, &shared.shares, None));
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
                    let Some(conn) = conns.get(t).filter(|c| !c.is_closed()) else {
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
                        submit(conn, ids, &frame, Some(frame.clone()), 0)
                    } else {
                        let p = plain.get_or_insert_with(|| as_plain(&frame));
                        submit(conn, ids, p, None, 0)
                    };
                    match sent {
                        Ok(back) => {
                            taken = Some((t, hinted == Some(t), back));
                            ids = Vec::new();
                            break;
                        }
                        Err(back) => ids = back,
                    }
                }
                if let Some(t) = taken {
                    break t;
                }
                // Every connection this sender may use is closed (its validators went away:
                // they are made again when the validators are back), or every open one's queue
                // is full: wait (no lock held) and choose again. The batch keeps its schedule.
                std::thread::sleep(if open {
                    Duration::from_micros(200)
                } else {
                    Duration::from_millis(20)
                });
            };
            let (target, routed, sent_ids) = sent_to;
            shared.tracker.sent(
                sent_ids,
                target as u16,
                Instant::now(),
                shared.resubmit_wait(),
            );
            shared
                .shares
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(target);
            batch_no += 1;
            if routed {
                shared.counters.routed.fetch_add(1, Ordering::Relaxed);
            }
            shared.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            k += n as u64;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Queues one submit frame of the transactions `ids` on `conn`, awaiting its ack there; gives
/// the ids back (as `Ok` when queued, `Err` when the connection's queue is full or it has
/// closed).
fn submit(
    conn: &Conn,
    ids: Vec<TxId>,
    frame: &Bytes,
    resend: Option<Bytes>,
    bounces: u8,
) -> Result<Vec<TxId>, Vec<TxId>> {
    // Pushed and sent under one lock: acks come back in the order the frames were queued.
    let mut batches = conn.batches.lock().unwrap_or_else(PoisonError::into_inner);
    batches.push_back(Sent {
        at: Instant::now(),
        ids: ids.clone(),
        resend,
        bounces,
    });
    if conn.send(frame.clone()).is_ok() {
        return Ok(ids);
    }
    batches.pop_back();
    Err(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The curve runs along a scale of nines from the median to the last decade the sample
    /// supports, densely, then the maximum.
    #[test]
    fn the_latency_curve_is_dense_and_stops_where_the_sample_does() {
        let mut h = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let c = latency_curve(&h);
        assert!(c.len() > 60, "{}", c.len());
        assert!((c[0].0 - 50.0).abs() < 1e-9, "{:?}", c[0]);
        let before_max = c[c.len() - 2].0;
        assert!((99.98..=99.9901).contains(&before_max), "{before_max}");
        assert_eq!(c.last().copied(), Some((100.0, 10.007)));
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
