//! The staged pipeline runtime: each stage is a dedicated OS thread (pinned to a core when the
//! tuning profile asks and there are enough cores), joined to the next by a bounded crossbeam
//! channel. A full channel blocks the stage before it, and so on back to the network: back-pressure
//! instead of unbounded memory.
//!
//! A stage drains up to `batch_max` items at once (one wake-up, one batch: signatures from many
//! messages verify in one ZIP-215 batch, many writes share one fsync), and reports its queue depth,
//! items processed and an hdrhistogram of per-item time in stage ([`StageStats`]).
//!
//! # Waiting
//! An idle stage parks on its own [`Parker`]; every send unparks it (one atomic swap when it is
//! awake). crossbeam's blocking `recv` spins and then calls `sched_yield` several times before it
//! sleeps, which suits a stage that owns a core but not one of a dozen stage threads sharing two:
//! there each yield is a context switch, and a 4-validator testnet on 2 cores measured about
//! 30,000 such switches per second. So a stage spins briefly before parking only when it is
//! pinned to its own core.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use crossbeam_utils::sync::{Parker, Unparker};
use hdrhistogram::Histogram;

/// Largest time-in-stage recorded, in microseconds (longer samples are clamped).
const HIST_MAX_US: u64 = 60_000_000;

/// A histogram of durations in microseconds, 1 µs to 60 s at 3 significant digits (longer
/// samples count as 60 s). Used for time in stage and for the consensus stage's round timing.
#[derive(Debug)]
pub struct LatencyHistogram(Option<Histogram<u64>>);

impl LatencyHistogram {
    /// An empty histogram; `what` names it in the error log if one cannot be made (then it
    /// records nothing and reads as zeros).
    pub fn new(what: &'static str) -> Self {
        match Histogram::new_with_bounds(1, HIST_MAX_US, 3) {
            Ok(h) => Self(Some(h)),
            Err(e) => {
                tracing::error!(target: "pipeline", histogram = what, error = %e, "no latency histogram");
                Self(None)
            }
        }
    }

    /// Records `n` samples of `d`.
    pub fn record_n(&mut self, d: Duration, n: u64) {
        if let Some(h) = &mut self.0 {
            let _ = h.record_n((d.as_micros() as u64).clamp(1, HIST_MAX_US), n);
        }
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.0.as_ref().map_or(0, Histogram::len)
    }

    /// No samples recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at quantile `q` (µs; 0 when empty).
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.0.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }

    /// The largest sample (µs; 0 when empty).
    pub fn max_us(&self) -> u64 {
        self.0.as_ref().map_or(0, Histogram::max)
    }

    /// Since the histogram was made: the sample count, the sum of the samples (µs, from the
    /// mean at 3 significant digits), and for each bound (µs, ascending) the samples at or
    /// below it, for a Prometheus histogram.
    pub fn cumulative(&self, bounds_us: &[u64]) -> (u64, f64, Vec<u64>) {
        let Some(h) = &self.0 else {
            return (0, 0.0, vec![0; bounds_us.len()]);
        };
        let counts = bounds_us
            .iter()
            .map(|b| h.count_between(0, (*b).min(h.high())))
            .collect();
        (h.len(), h.mean() * h.len() as f64, counts)
    }
}

/// Empty polls a pinned stage makes (with a spin hint between them) before it parks.
const PINNED_SPIN_POLLS: u32 = 200;

/// One stage's live figures, shared with metrics and the profiler.
#[derive(Debug)]
pub struct StageStats {
    /// Stage name (`pipeline.verify`, ...).
    pub name: &'static str,
    queue_depth: AtomicUsize,
    items: AtomicU64,
    batches: AtomicU64,
    hist_us: Mutex<LatencyHistogram>,
    /// When the previous snapshot was taken, and the item count then (for items/s).
    last_snapshot: Mutex<Option<(Instant, u64)>>,
}

/// A copy of a stage's figures at one instant.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageSnapshot {
    /// Stage name.
    pub name: &'static str,
    /// Items waiting in its input queue.
    pub queue_depth: usize,
    /// Items processed since start.
    pub items: u64,
    /// Items processed per second since the previous snapshot (0 for the first).
    pub items_per_s: f64,
    /// Batches processed since start.
    pub batches: u64,
    /// Per-item time in stage, median (µs).
    pub latency_us_p50: u64,
    /// 99th percentile (µs).
    pub latency_us_p99: u64,
    /// Maximum (µs).
    pub latency_us_max: u64,
}

impl StageStats {
    /// Figures for a stage named `name`: the stages [`spawn`] starts keep their own; a stage
    /// that runs on a thread of its own making (ingress, fed by the transport) records into
    /// one made here.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            queue_depth: AtomicUsize::new(0),
            items: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            hist_us: Mutex::new(LatencyHistogram::new(name)),
            last_snapshot: Mutex::new(None),
        }
    }

    /// The current figures; `items_per_s` covers the time since the previous call.
    pub fn snapshot(&self) -> StageSnapshot {
        let (p50, p99, max) = match self.hist_us.lock() {
            Ok(h) => (h.quantile_us(0.5), h.quantile_us(0.99), h.max_us()),
            Err(_) => (0, 0, 0),
        };
        let items = self.items.load(Ordering::Relaxed);
        let now = Instant::now();
        let items_per_s = match self.last_snapshot.lock() {
            Ok(mut last) => {
                let rate = last
                    .map(|(at, n)| (now.saturating_duration_since(at).as_secs_f64(), n))
                    .filter(|(secs, _)| *secs > 0.0)
                    .map_or(0.0, |(secs, n)| items.saturating_sub(n) as f64 / secs);
                *last = Some((now, items));
                rate
            }
            Err(_) => 0.0,
        };
        StageSnapshot {
            name: self.name,
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            items,
            items_per_s,
            batches: self.batches.load(Ordering::Relaxed),
            latency_us_p50: p50,
            latency_us_p99: p99,
            latency_us_max: max,
        }
    }

    /// [`LatencyHistogram::cumulative`] of the time in stage.
    pub fn latency_cumulative(&self, bounds_us: &[u64]) -> (u64, f64, Vec<u64>) {
        match self.hist_us.lock() {
            Ok(h) => h.cumulative(bounds_us),
            Err(_) => (0, 0.0, vec![0; bounds_us.len()]),
        }
    }

    /// Sets the number of items waiting (for a stage whose queue is not a [`StageInput`]).
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth, Ordering::Relaxed);
    }

    /// Records a batch of `items` that took `per_item` each.
    pub fn record(&self, items: usize, per_item: Duration) {
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.hist_us.lock() {
            h.record_n(per_item, items as u64);
        }
    }
}

/// A stage's input: a bounded sender whose depth is visible in the stage's stats.
#[derive(Debug)]
pub struct StageInput<T> {
    tx: Sender<T>,
    stats: Arc<StageStats>,
    /// Set by [`StageInput::tick_now`], taken by the stage's wait.
    tick_asked: Arc<AtomicBool>,
    /// Last: dropped after `tx` (see [`Wake`]).
    wake: Wake,
}

// By hand: the derive would ask `T: Clone`, which sending never needs.
impl<T> Clone for StageInput<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stats: Arc::clone(&self.stats),
            tick_asked: Arc::clone(&self.tick_asked),
            wake: self.wake.clone(),
        }
    }
}

impl<T> StageInput<T> {
    /// Sends, blocking while the stage's queue is full (back-pressure). `Err` if the stage ended.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.tx.send(item).map_err(|e| e.into_inner())?;
        self.wake.unpark();
        self.stats
            .queue_depth
            .store(self.tx.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Sends without blocking: `Err(item)` when the queue is full or the stage ended.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        self.tx.try_send(item).map_err(|e| e.into_inner())?;
        self.wake.unpark();
        self.stats
            .queue_depth
            .store(self.tx.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Items queued now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// A handle that asks the stage for a tick now ([`Ticker::tick_now`]); unlike an input, it
    /// does not keep the stage running.
    pub fn ticker(&self) -> Ticker {
        Ticker {
            asked: Arc::clone(&self.tick_asked),
            unparker: self.wake.0.clone(),
        }
    }
}

/// Asks a stage for a tick (an empty batch) now, without waiting for its tick interval: for a
/// condition another thread changed that the stage looks at on its ticks.
#[derive(Clone, Debug)]
pub struct Ticker {
    asked: Arc<AtomicBool>,
    unparker: Unparker,
}

impl Ticker {
    /// Asks for the tick.
    pub fn tick_now(&self) {
        self.asked.store(true, Ordering::Release);
        self.unparker.unpark();
    }
}

/// Unparks a stage: `StageInput`'s last field, so that when an input is dropped its sender is
/// gone first and the woken stage, if this was the last input, sees the queue disconnected.
#[derive(Clone, Debug)]
struct Wake(Unparker);

impl Wake {
    fn unpark(&self) {
        self.0.unpark();
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

/// How a stage runs.
#[derive(Clone, Debug)]
pub struct StageConfig {
    /// Stage name (`pipeline.<stage>`).
    pub name: &'static str,
    /// Input queue bound.
    pub queue_capacity: usize,
    /// Most items handled per wake-up.
    pub batch_max: usize,
    /// Core to pin the thread to, if any.
    pub core: Option<usize>,
    /// Wake up at least this often with an empty batch (for timers), if set.
    pub tick: Option<Duration>,
}

/// A running stage.
#[derive(Debug)]
pub struct Stage {
    handle: Option<JoinHandle<()>>,
    /// Its figures.
    pub stats: Arc<StageStats>,
}

impl Stage {
    /// Waits for the stage thread to end (after every sender is dropped).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Starts a stage thread running `handle(batch)` on batches of its input. The stage ends when
/// every [`StageInput`] is dropped and the queue is drained. An empty batch means "tick".
pub fn spawn<T, F>(cfg: StageConfig, mut handle: F) -> std::io::Result<(StageInput<T>, Stage)>
where
    T: Send + 'static,
    F: FnMut(Vec<T>) + Send + 'static,
{
    let (tx, rx): (Sender<T>, Receiver<T>) = bounded(cfg.queue_capacity.max(1));
    let stats = Arc::new(StageStats::new(cfg.name));
    let thread_stats = Arc::clone(&stats);
    let parker = Parker::new();
    let wake = Wake(parker.unparker().clone());
    let tick_asked = Arc::new(AtomicBool::new(false));
    let thread_tick_asked = Arc::clone(&tick_asked);
    let handle = std::thread::Builder::new()
        .name(cfg.name.to_string())
        .spawn(move || {
            if let Some(core) = cfg.core {
                pin_to(core);
            }
            let spin_polls = if cfg.core.is_some() {
                PINNED_SPIN_POLLS
            } else {
                0
            };
            let batch_max = cfg.batch_max.max(1);
            let mut batch = Vec::with_capacity(batch_max);
            loop {
                let Some(first) = wait(&rx, &parker, cfg.tick, &thread_tick_asked, spin_polls)
                else {
                    break;
                };
                batch.extend(first);
                while batch.len() < batch_max {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                thread_stats.queue_depth.store(rx.len(), Ordering::Relaxed);
                let n = batch.len();
                let started = Instant::now();
                handle(std::mem::replace(&mut batch, Vec::with_capacity(batch_max)));
                if n > 0 {
                    thread_stats.record(n, started.elapsed() / n as u32);
                }
            }
        })?;
    Ok((
        StageInput {
            tx,
            stats: Arc::clone(&stats),
            tick_asked,
            wake,
        },
        Stage {
            handle: Some(handle),
            stats,
        },
    ))
}

/// Waits for the next item: `Some(Some(item))`, `Some(None)` when `tick` passes with none or a
/// tick was asked for (`tick_asked`), `None` once every input is dropped and the queue is
/// empty. Polls `spin_polls` times before parking; the senders unpark (a stale wake-up only
/// costs one more poll).
fn wait<T>(
    rx: &Receiver<T>,
    parker: &Parker,
    tick: Option<Duration>,
    tick_asked: &AtomicBool,
    spin_polls: u32,
) -> Option<Option<T>> {
    // A tick too far to represent is no tick.
    let deadline = tick.and_then(|t| Instant::now().checked_add(t));
    let mut polls = 0;
    loop {
        match rx.try_recv() {
            Ok(item) => return Some(Some(item)),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        // A load first: the spinning poll then only reads the flag's cache line.
        if tick_asked.load(Ordering::Relaxed) && tick_asked.swap(false, Ordering::AcqRel) {
            return Some(None);
        }
        if polls < spin_polls {
            polls += 1;
            std::hint::spin_loop();
            continue;
        }
        match deadline {
            Some(d) if Instant::now() >= d => return Some(None),
            Some(d) => parker.park_deadline(d),
            None => parker.park(),
        }
    }
}

/// Pins the calling thread to `core` if it exists; otherwise runs unpinned (still correct with
/// fewer cores than stages).
pub fn pin_to(core: usize) {
    let Some(ids) = core_affinity::get_core_ids() else {
        return;
    };
    if let Some(id) = ids.get(core % ids.len().max(1)) {
        if !core_affinity::set_for_current(*id) {
            tracing::warn!(target: "pipeline", core, "could not pin thread");
        }
    }
}

/// Turns transparent huge pages off for this process and the processes it starts.
///
/// With THP on (`always`, the default of many distributions), the first touch of each new 2 MiB
/// region of the heap zero-fills the whole 2 MiB at once. A validator that goes from idle to
/// full load grows its heap by over a hundred MiB in its first second, and on a VM those
/// zero-fills took 38 % of all CPU in that second (`clear_page_erms` under
/// `do_huge_pmd_anonymous_page`): rounds slowed to a crawl and the first seconds of load saw
/// p99 of about a second. Databases commonly advise THP off for the same reason. Linux only; a
/// failure is returned for the caller to report (it changes speed, not correctness).
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE reads only its integer arguments.
        let zero: libc::c_ulong = 0;
        let one: libc::c_ulong = 1;
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, one, zero, zero, zero) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lowers the calling thread's scheduling priority to nice value `nice` (0..=19; Linux keeps a
/// nice value per thread, and threads this one starts inherit it). Raising a priority needs a
/// privilege, lowering one does not, so this only ever lowers: a value at or below the thread's
/// current one changes nothing. Elsewhere than Linux it does nothing.
pub fn lower_thread_priority(nice: i32) -> std::io::Result<()> {
    if !(0..=19).contains(&nice) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("nice value {nice} is outside 0..=19"),
        ));
    }
    #[cfg(target_os = "linux")]
    {
        if nice <= current_thread_nice()? {
            return Ok(());
        }
        // SAFETY: gettid has no arguments; setpriority reads only integers.
        let rc =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's nice value (0 elsewhere than Linux).
pub fn current_thread_nice() -> std::io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        // getpriority returns -1 both as a value and on error: errno, cleared first, tells.
        // SAFETY: the errno location is this thread's and always valid; gettid has no
        // arguments and getpriority reads only integers.
        unsafe { *libc::__errno_location() = 0 };
        let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let err = std::io::Error::last_os_error();
        if now == -1 && err.raw_os_error() != Some(0) {
            return Err(err);
        }
        Ok(now)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

/// mimalloc's `mi_option_purge_delay` (v2 `mimalloc.h`: the option between
/// `mi_option_eager_commit_delay` = 14 and `mi_option_use_numa_nodes` = 16; the -sys crate names
/// neither it nor its old name `reset_delay`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed heap memory in the process instead of returning it to the OS 10 ms after it
/// falls idle (mimalloc's default): a node's heap use swings with every block, and each purge
/// meant page faults and fresh zeroed pages on the next block (about 16,000 minor faults per
/// second across a 4-validator testnet at 60,000 tx/s). Resident memory then stays at its
/// high-water mark, which every bounded queue caps.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores the value; the allocator reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// The process memory settings of `bpci node` and of the load generator (whose heap grows and
/// swings as fast as a validator's): freed memory kept ([`keep_freed_memory`]) and, unless
/// `keep_huge_pages`, transparent huge pages off ([`disable_transparent_huge_pages`]). Errors
/// are reported, not fatal: they change speed, not correctness.
pub fn apply_memory_settings(keep_huge_pages: bool) -> std::io::Result<()> {
    keep_freed_memory();
    if keep_huge_pages {
        return Ok(());
    }
    disable_transparent_huge_pages()
}

/// Cores available to pin to.
pub fn core_count() -> usize {
    core_affinity::get_core_ids().map(|v| v.len()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowering sets exactly the value asked, a value at or below the current one changes
    /// nothing (raising needs a privilege), out-of-range values are refused; each on a fresh
    /// thread, so the test thread keeps its priority.
    #[cfg(target_os = "linux")]
    #[test]
    fn thread_priority_is_only_lowered_and_only_on_its_thread() {
        let outer = current_thread_nice().unwrap();
        let (at, after_raise) = std::thread::spawn(move || {
            let target = (outer + 3).min(19);
            lower_thread_priority(target).unwrap();
            let at = current_thread_nice().unwrap();
            lower_thread_priority(outer).unwrap();
            (target == at, current_thread_nice().unwrap() == at)
        })
        .join()
        .unwrap();
        assert!(at && after_raise);
        assert_eq!(current_thread_nice().unwrap(), outer);
        for bad in [-1, 20] {
            let e = lower_thread_priority(bad).unwrap_err();
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }

    /// The option number is the purge delay's: its neighbours are where the header puts them,
    /// and setting it reads back.
    #[test]
    fn purge_delay_option_is_the_one_set() {
        assert_eq!(libmimalloc_sys::mi_option_eager_commit_delay, 14);
        assert_eq!(libmimalloc_sys::mi_option_use_numa_nodes, 16);
        // SAFETY: reads and stores an option value.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 10, "mimalloc's documented default purge delay");
        keep_freed_memory();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            -1
        );
        // SAFETY: as above (restores the default for other tests in this process).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, before) };
    }

    fn cfg(name: &'static str, cap: usize) -> StageConfig {
        StageConfig {
            name,
            queue_capacity: cap,
            batch_max: 64,
            core: None,
            tick: None,
        }
    }

    #[test]
    fn stages_pass_items_in_order_and_count_them() {
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let (second, s2) = spawn(cfg("pipeline.second", 8), move |batch: Vec<u64>| {
            for x in batch {
                out_tx.send(x * 10).unwrap();
            }
        })
        .unwrap();
        let (first, s1) = spawn(cfg("pipeline.first", 8), move |batch: Vec<u64>| {
            for x in batch {
                second.send(x + 1).unwrap();
            }
        })
        .unwrap();
        for i in 0..1000 {
            first.send(i).unwrap();
        }
        drop(first);
        let stats1 = Arc::clone(&s1.stats);
        let stats2 = Arc::clone(&s2.stats);
        s1.join();
        s2.join();
        let got: Vec<u64> = out_rx.iter().collect();
        assert_eq!(got, (0..1000).map(|i| (i + 1) * 10).collect::<Vec<_>>());
        assert_eq!(stats1.snapshot().items, 1000);
        assert_eq!(stats2.snapshot().items, 1000);
        assert!(stats1.snapshot().batches <= 1000);
    }

    #[test]
    fn a_full_queue_pushes_back() {
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        let (entered_tx, entered_rx) = crossbeam_channel::unbounded::<()>();
        let (input, stage) = spawn(cfg("pipeline.slow", 2), move |_batch: Vec<u8>| {
            let _ = entered_tx.send(());
            let _ = gate_rx.recv();
        })
        .unwrap();
        // The stage takes one item and blocks on the gate; the queue then holds 2 more.
        input.send(0).unwrap();
        entered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(input.depth(), 0);
        input.try_send(1).unwrap();
        input.try_send(2).unwrap();
        assert_eq!(input.try_send(3), Err(3), "queue bound not enforced");
        drop(gate_tx);
        drop(input);
        stage.join();
    }

    #[test]
    fn a_parked_stage_wakes_for_items_and_for_its_last_input_going() {
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let (input, stage) = spawn(cfg("pipeline.parked", 4), move |batch: Vec<u8>| {
            for x in batch {
                let _ = seen_tx.send(x);
            }
        })
        .unwrap();
        for i in 0..3u8 {
            // Idle long enough to be parked, then one item.
            std::thread::sleep(Duration::from_millis(20));
            input.send(i).unwrap();
            assert_eq!(seen_rx.recv_timeout(Duration::from_secs(5)), Ok(i));
        }
        // Two inputs; the stage ends only after the second one goes, while it is parked.
        let other = input.clone();
        drop(input);
        std::thread::sleep(Duration::from_millis(20));
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            stage.join();
            let _ = done_tx.send(());
        });
        assert!(done_rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(other);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(()));
    }

    #[test]
    fn a_ticker_asks_for_a_tick_at_once_and_keeps_no_stage_running() {
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let (input, stage) = spawn(
            StageConfig {
                name: "pipeline.test",
                queue_capacity: 4,
                batch_max: 4,
                core: None,
                tick: None,
            },
            move |b: Vec<u32>| {
                let _ = seen_tx.send(b.len());
            },
        )
        .unwrap();
        let ticker = input.ticker();
        // No tick interval: nothing arrives until a tick is asked for.
        assert!(seen_rx.recv_timeout(Duration::from_millis(50)).is_err());
        ticker.tick_now();
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(5)), Ok(0));
        // One request, one tick.
        assert!(seen_rx.recv_timeout(Duration::from_millis(50)).is_err());
        // The ticker does not hold the stage open: dropping the input ends it.
        drop(input);
        stage.join();
        ticker.tick_now();
    }

    #[test]
    fn ticks_arrive_as_empty_batches() {
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        let (input, stage) = spawn(
            StageConfig {
                tick: Some(Duration::from_millis(5)),
                ..cfg("pipeline.timer", 4)
            },
            move |batch: Vec<u8>| {
                let _ = seen_tx.send(batch.len());
            },
        )
        .unwrap();
        let first = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, 0);
        drop(input);
        stage.join();
    }
}
