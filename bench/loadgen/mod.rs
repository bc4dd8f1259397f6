//! The open-loop load generator: constant-rate transaction submission to validators' client
//! endpoints, latency from intended submit time to commit notice.
//!
//! Open loop: each connection's schedule says transaction k is due at `k / rate`; a sender that
//! falls behind sends late but keeps the scheduled time as the latency origin, so a stalled system
//! shows its stall in the latency (coordinated-omission corrected). Latencies go into an
//! hdrhistogram (microseconds, 3 significant digits).

pub mod plot;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
}

struct Conn {
    pending: Mutex<IdMap<u64>>,
    batches: Mutex<VecDeque<Vec<TxId>>>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    busy: AtomicU64,
    committed: AtomicU64,
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
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut conns = Vec::new();
    let per_conn_rate = cfg.rate_tps as f64 / cfg.targets.len() as f64;
    let warmup_us = cfg.warmup.min(cfg.duration).as_micros() as u64;
    for (ci, (sender, mut rx)) in links.into_iter().enumerate() {
        let conn = Arc::new(Conn {
            pending: Mutex::new(IdMap::default()),
            batches: Mutex::new(VecDeque::new()),
        });
        conns.push(Arc::clone(&conn));
        // Receiver: acks and notices.
        let (c2, counters2, total2, interval2) = (
            Arc::clone(&conn),
            Arc::clone(&counters),
            Arc::clone(&total),
            Arc::clone(&interval),
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
                }
            }
        }));
        let (c3, counters3, done3) = (Arc::clone(&conn), Arc::clone(&counters), Arc::clone(&done));
        let tx_bytes = cfg.tx_bytes;
        let duration = cfg.duration;
        threads.push(std::thread::spawn(move || {
            send_loop(
                ci as u32,
                &sender,
                &c3,
                &counters3,
                per_conn_rate,
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
    })
}

#[allow(clippy::too_many_arguments)]
fn send_loop(
    conn_id: u32,
    sender: &ClientSender,
    conn: &Conn,
    counters: &Counters,
    rate: f64,
    tx_bytes: usize,
    duration: Duration,
    start: Instant,
    done: &AtomicBool,
) {
    let mut k: u64 = 0;
    while !done.load(Ordering::Acquire) {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate * elapsed.as_secs_f64()) as u64;
        while k < due && !done.load(Ordering::Acquire) {
            if conn.pending.lock().map(|p| p.len()).unwrap_or(0) >= PENDING_MAX {
                std::thread::sleep(Duration::from_millis(1));
                break;
            }
            let n = ((due - k) as usize).min(SUBMIT_BATCH_MAX);
            let mut raw = Vec::with_capacity(n);
            let mut scheduled = Vec::with_capacity(n);
            for j in 0..n as u64 {
                let seq = k + j;
                let mut tx = vec![0u8; tx_bytes];
                tx[..4].copy_from_slice(&conn_id.to_le_bytes());
                tx[4..12].copy_from_slice(&seq.to_le_bytes());
                tx[12..16].copy_from_slice(&(start.elapsed().subsec_nanos()).to_le_bytes());
                scheduled.push((seq as f64 / rate * 1e6) as u64);
                raw.push(tx);
            }
            // Ids of the whole batch at once (the validator computes the same ones).
            let ids = tx_ids(&raw);
            let txs: Vec<serde_bytes::ByteBuf> =
                raw.into_iter().map(serde_bytes::ByteBuf::from).collect();
            if let Ok(mut p) = conn.pending.lock() {
                for (id, t) in ids.iter().zip(&scheduled) {
                    p.insert(*id, *t);
                }
            }
            if let Ok(mut b) = conn.batches.lock() {
                b.push_back(ids);
            }
            let frame = Bytes::from(encode_infallible(&ClientRequest::Submit(txs)));
            loop {
                match sender.send(frame.clone()) {
                    Ok(()) => break,
                    Err(_) if sender.is_closed() => return,
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
                if done.load(Ordering::Acquire) {
                    return;
                }
            }
            counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            k += n as u64;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
