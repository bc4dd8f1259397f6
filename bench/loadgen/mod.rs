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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bpci_transport::{ClientRuntime, ClientSender};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client_proto::{ClientRequest, ClientResponse, TxStatus};
use crate::codec::{decode, encode_infallible};
use crate::mempool::{tx_ids, IdMap, TxId};

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
/// trip to the client and the batch's trip into that leader's mempool take much of the rest, and
/// a batch that arrives too late waits for that leader's next turn (n rounds). At 75,000 tx/s,
/// 0.2, 0.4 and 0.6 gave p99 29-40, 39-45 and 41-47 ms in alternating runs.
pub const EARLY_FRACTION: f64 = 0.25;
/// A hint older than this many rounds is stale: batches spread again.
pub const STALE_ROUNDS: f64 = 3.0;
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
    /// The hint that follows `prev` (if any) when `round` arrives at `at`; `None` for a round
    /// not newer than `prev`'s (a late or repeated hint).
    pub fn next_after(
        prev: Option<&Hint>,
        round: u64,
        next: Vec<Option<usize>>,
        at: Instant,
    ) -> Option<Hint> {
        let round_us = match prev {
            Some(p) if round <= p.round => return None,
            Some(p) => {
                let sample = at.saturating_duration_since(p.at).as_micros() as f64
                    / (round - p.round) as f64;
                (0.8 * p.round_us + 0.2 * sample).clamp(200.0, 1_000_000.0)
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

    /// The target for a batch sent at `now`: the leader that proposes next and that the batch
    /// can still reach in time; `None` when the hint is stale or that leader is not a target.
    pub fn pick(&self, now: Instant) -> Option<usize> {
        let rounds = now.saturating_duration_since(self.at).as_micros() as f64 / self.round_us;
        if rounds > STALE_ROUNDS {
            return None;
        }
        let k = ((rounds + 1.0 - EARLY_FRACTION).floor() as usize).min(self.next.len().max(1) - 1);
        self.next.get(k).copied().flatten()
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
}

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
    /// Leader hints received (`route: leader`).
    pub leader_hints: u64,
    /// Batches sent where a leader hint pointed (`route: leader`).
    pub routed_batches: u64,
}

struct Conn {
    sender: ClientSender,
    pending: Mutex<IdMap<u64>>,
    /// The ids of each submit awaiting its ack, in send order (held while sending, so that
    /// several senders keep the order the acks come back in).
    batches: Mutex<VecDeque<Vec<TxId>>>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    busy: AtomicU64,
    committed: AtomicU64,
    hints: AtomicU64,
    routed: AtomicU64,
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
    if cfg.route == Route::Leader {
        let watch = Bytes::from(encode_infallible(&ClientRequest::WatchLeaders));
        for (sender, _) in &links {
            sender
                .send(watch.clone())
                .map_err(|e| LoadError::Runtime(format!("asking for leader hints: {e}")))?;
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
    let warmup_us = cfg.warmup.min(cfg.duration).as_micros() as u64;
    for (ci, mut rx) in receivers.into_iter().enumerate() {
        let conn = Arc::clone(&conns[ci]);
        // Receiver: acks, notices and leader hints.
        let (c2, counters2, total2, interval2, hint2, keys2) = (
            Arc::clone(&conn),
            Arc::clone(&counters),
            Arc::clone(&total),
            Arc::clone(&interval),
            Arc::clone(&hint),
            Arc::clone(&keys),
        );
        threads.push(std::thread::spawn(move || {
            while let Some(frame) = rx.blocking_recv() {
                let Ok(resp) = decode::<ClientResponse>(&frame) else {
                    continue;
                };
                match resp {
                    ClientResponse::Ack(statuses) => {
                        let ids = c2
                            .batches
                            .lock()
                            .ok()
                            .and_then(|mut b| b.pop_front())
                            .unwrap_or_default();
                        let mut pending = match c2.pending.lock() {
                            Ok(p) => p,
                            Err(_) => continue,
                        };
                        for (id, s) in ids.iter().zip(statuses) {
                            if s != TxStatus::Accepted {
                                pending.remove(id);
                                counters2.busy.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    ClientResponse::Committed { tx_ids, .. } => {
                        let now_us = start.elapsed().as_micros() as u64;
                        let mut lat = Vec::with_capacity(tx_ids.len());
                        let mut committed = 0u64;
                        if let Ok(mut pending) = c2.pending.lock() {
                            for id in &tx_ids {
                                if let Some(t0) = pending.remove(id) {
                                    committed += 1;
                                    let l = now_us.saturating_sub(t0).clamp(1, LATENCY_US_MAX);
                                    lat.push((l, t0 >= warmup_us));
                                }
                            }
                        }
                        counters2.committed.fetch_add(committed, Ordering::Relaxed);
                        // Per-second figures see every latency; the totals only those scheduled
                        // after the warm-up.
                        for (h, all) in [(&total2, false), (&interval2, true)] {
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
                    }
                    ClientResponse::Error(e) => {
                        tracing::warn!(target: "loadgen", error = %e, "validator refused a request")
                    }
                    ClientResponse::Leaders { round, next } => {
                        counters2.hints.fetch_add(1, Ordering::Relaxed);
                        let next = next
                            .iter()
                            .map(|k| keys2.iter().position(|t| t == k))
                            .collect();
                        let mut h = hint2.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some(new) = Hint::next_after(h.as_ref(), round, next, Instant::now())
                        {
                            *h = Some(new);
                        }
                    }
                }
            }
        }));
    }
    // Senders: one per connection when spreading; one for all of them when following the
    // leader (a batch a millisecond to whichever validator proposes next: a quarter of the
    // submit frames, acks and wake-ups of four senders each sending its share).
    let owns: Vec<Option<usize>> = match cfg.route {
        Route::Spread => (0..conns.len()).map(Some).collect(),
        Route::Leader => vec![None],
    };
    let sender_rate = cfg.rate_tps as f64 / owns.len() as f64;
    for (si, own) in owns.into_iter().enumerate() {
        let (conns3, counters3, done3) =
            (Arc::clone(&conns), Arc::clone(&counters), Arc::clone(&done));
        let hint3 = (cfg.route == Route::Leader).then(|| Arc::clone(&hint));
        let tx_bytes = cfg.tx_bytes;
        let duration = cfg.duration;
        threads.push(std::thread::spawn(move || {
            send_loop(
                si as u32,
                own,
                &conns3,
                hint3.as_deref(),
                &counters3,
                sender_rate,
                tx_bytes,
                duration,
                start,
                &done3,
            )
        }));
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
        let outstanding: usize = conns
            .iter()
            .map(|c| c.pending.lock().map(|p| p.len()).unwrap_or(0))
            .sum();
        if stop.load(Ordering::Acquire) || now >= drain_end || (now >= end && outstanding == 0) {
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
    })
}

/// Sends `rate` transactions a second on its own schedule (`sender_id` makes them unique): to
/// connection `own` when it has one, else to the hinted leader, else round-robin.
#[allow(clippy::too_many_arguments)]
fn send_loop(
    sender_id: u32,
    own: Option<usize>,
    conns: &[Arc<Conn>],
    hint: Option<&Mutex<Option<Hint>>>,
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
            let ids = tx_ids(&raw);
            let txs: Vec<serde_bytes::ByteBuf> =
                raw.into_iter().map(serde_bytes::ByteBuf::from).collect();
            let frame = Bytes::from(encode_infallible(&ClientRequest::Submit(txs)));
            // Chosen as late as possible: the hint is fresher.
            let open = |t: &usize| *t < conns.len() && !conns[*t].sender.is_closed();
            let hinted = hint
                .and_then(|h| {
                    let h = h.lock().unwrap_or_else(PoisonError::into_inner);
                    h.as_ref().and_then(|h| h.pick(Instant::now()))
                })
                .filter(open);
            let fallback = match own {
                Some(o) => Some(o),
                None => (0..conns.len())
                    .map(|j| (batch_no + j) % conns.len())
                    .find(open),
            };
            let Some(target) = hinted.or(fallback) else {
                return;
            };
            batch_no += 1;
            let conn = &conns[target];
            if conn.pending.lock().map(|p| p.len()).unwrap_or(0) >= PENDING_MAX {
                std::thread::sleep(Duration::from_millis(1));
                break;
            }
            if let Ok(mut p) = conn.pending.lock() {
                for (id, t) in ids.iter().zip(&scheduled) {
                    p.insert(*id, *t);
                }
            }
            let sent = {
                let mut batches = conn.batches.lock().unwrap_or_else(PoisonError::into_inner);
                batches.push_back(ids);
                loop {
                    match conn.sender.send(frame.clone()) {
                        Ok(()) => break true,
                        Err(_) if conn.sender.is_closed() => {
                            // Not sent: forget it here, and send it elsewhere (or stop, when
                            // our own validator is gone).
                            if let Some(ids) = batches.pop_back() {
                                if let Ok(mut p) = conn.pending.lock() {
                                    for id in &ids {
                                        p.remove(id);
                                    }
                                }
                            }
                            break false;
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(200)),
                    }
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                }
            };
            if !sent {
                if own == Some(target) {
                    return;
                }
                continue;
            }
            if hinted.is_some() {
                counters.routed.fetch_add(1, Ordering::Relaxed);
            }
            counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            k += n as u64;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
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
    /// then the one after that; a stale hint or a leader that is not a target names none (the
    /// sender then falls back to its own connection, or round-robin).
    #[test]
    fn a_batch_goes_to_the_leader_that_can_still_include_it() {
        let t0 = Instant::now();
        let h = Hint {
            round: 10,
            at: t0,
            next: vec![Some(1), Some(2), None],
            round_us: 5_000.0,
        };
        assert_eq!(h.pick(at(t0, 0)), Some(1));
        assert_eq!(h.pick(at(t0, 1_100)), Some(1));
        assert_eq!(h.pick(at(t0, 1_400)), Some(2));
        assert_eq!(h.pick(at(t0, 6_100)), Some(2));
        // The third leader is not among the targets.
        assert_eq!(h.pick(at(t0, 6_400)), None);
        assert_eq!(h.pick(at(t0, 14_000)), None);
        // Stale: more than three rounds without a newer hint.
        let fresh_third = Hint {
            next: vec![Some(1), Some(2), Some(3)],
            ..h.clone()
        };
        assert_eq!(fresh_third.pick(at(t0, 12_000)), Some(3));
        assert_eq!(fresh_third.pick(at(t0, 15_100)), None);
        // Long past the hint the index stays within the named leaders.
        let one = Hint {
            next: vec![Some(2)],
            ..h.clone()
        };
        assert_eq!(one.pick(at(t0, 9_000)), Some(2));
        let none = Hint { next: vec![], ..h };
        assert_eq!(none.pick(at(t0, 100)), None);
    }

    /// Hints measure the round length from their spacing; an older or repeated round is
    /// ignored.
    #[test]
    fn hints_measure_the_round_and_ignore_old_rounds() {
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
        // A huge gap is clamped to a second.
        let late = Hint::next_after(Some(&second), 8, vec![], at(t0, 60_000_000)).unwrap();
        assert_eq!(late.round_us, 1_000_000.0);
    }
}
