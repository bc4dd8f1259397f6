//! Faults applied to a running testnet on a schedule (`bpci testnet --faults SCHEDULE`), and
//! what each one cost: how long the cluster took to commit again, and how long the validators
//! it hit took to catch up.
//!
//! A schedule is a comma-separated list of `KIND[:ARG]@START[+FOR]`, times since the load
//! started (`30s`, `500ms`, `2m`):
//! - `pause:V@T+D`: `SIGSTOP` validator V at T, `SIGCONT` D later;
//! - `kill:V@T+D`: `kill -9` validator V at T, start it again from its data D later (D: 2 s
//!   when left out);
//! - `kill-leader@T+D`: as `kill`, for whichever validator leads the current round at T;
//! - `stop-all:term@T+D` or `stop-all:kill@T+D`: stop every validator at once (`SIGTERM`,
//!   or `kill -9`) at T and start them all again D later.
//!
//! For example `pause:1@5s+8s,kill:2@18s,kill:3@26s,kill:3@34s,stop-all:kill@44s+3s`.
//!
//! Recovery is read from the validators' `stats.json` (written every 500 ms, so times are good
//! to about half a second): after a fault that leaves the others running, the time from the
//! fault until the highest committed height of the validators still running passes the one
//! they had at the fault; after `stop-all`, the time from the last validator's start until any
//! validator commits above the highest height held before the stop. A validator paused or
//! restarted has caught up when its committed height reaches what the others had committed
//! when it came back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{parse_duration, parse_duration_or_zero, Testnet, TestnetError};

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `SIGSTOP` one validator, `SIGCONT` after the fault's duration.
    Pause(usize),
    /// `kill -9` one validator and start it again after the fault's duration.
    Kill(usize),
    /// `kill -9` the leader of the current round and start it again after the duration.
    KillLeader,
    /// Stop every validator (`kill -9` when `kill`, else `SIGTERM`) and start them all again
    /// after the duration.
    StopAll {
        /// `kill -9` rather than `SIGTERM`.
        kill: bool,
    },
}

/// One scheduled fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// When, from the start of the load.
    pub at: Duration,
    /// How long until the validators it hits run again.
    pub down: Duration,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            FaultKind::Pause(v) => format!("pause:{v}"),
            FaultKind::Kill(v) => format!("kill:{v}"),
            FaultKind::KillLeader => "kill-leader".to_string(),
            FaultKind::StopAll { kill: true } => "stop-all:kill".to_string(),
            FaultKind::StopAll { kill: false } => "stop-all:term".to_string(),
        };
        write!(f, "{what}@{:?}+{:?}", self.at, self.down)
    }
}

/// Kill faults without a duration restart the validator this long after.
pub const DEFAULT_DOWN: Duration = Duration::from_secs(2);

/// Parses a schedule (see the module documentation) for a testnet of `validators`, its faults
/// in order of time.
///
/// # Errors
/// A message naming the item and what is wrong with it.
pub fn parse_schedule(text: &str, validators: usize) -> Result<Vec<Fault>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |why: String| format!("fault {item:?}: {why}");
        let (what, when) = item
            .split_once('@')
            .ok_or_else(|| bad("expected KIND[:ARG]@START[+FOR]".into()))?;
        let (start, down) = match when.split_once('+') {
            Some((s, d)) => (s, Some(parse_duration(d).map_err(bad)?)),
            None => (when, None),
        };
        let at = parse_duration_or_zero(start).map_err(bad)?;
        let (kind_name, arg) = match what.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (what, None),
        };
        let validator = |arg: Option<&str>| -> Result<usize, String> {
            let a =
                arg.ok_or_else(|| bad(format!("{kind_name} needs a validator: {kind_name}:V")))?;
            let v: usize = a
                .parse()
                .map_err(|_| bad(format!("{a:?} is not a validator index")))?;
            if v >= validators {
                return Err(bad(format!(
                    "validator {v} does not exist (the testnet has {validators}: 0 to {})",
                    validators - 1
                )));
            }
            Ok(v)
        };
        let kind = match kind_name {
            "pause" => FaultKind::Pause(validator(arg)?),
            "kill" => FaultKind::Kill(validator(arg)?),
            "kill-leader" if arg.is_none() => FaultKind::KillLeader,
            "stop-all" => match arg {
                Some("term") => FaultKind::StopAll { kill: false },
                Some("kill") => FaultKind::StopAll { kill: true },
                _ => return Err(bad("stop-all needs :term or :kill".into())),
            },
            other => {
                return Err(bad(format!(
                    "{other:?} is not one of pause:V, kill:V, kill-leader, stop-all:term, stop-all:kill"
                )))
            }
        };
        let down = match (kind, down) {
            (FaultKind::Pause(_), None) => return Err(bad("a pause needs its length: +D".into())),
            (_, d) => d.unwrap_or(DEFAULT_DOWN),
        };
        out.push(Fault { kind, at, down });
    }
    if out.is_empty() {
        return Err("the fault schedule is empty".into());
    }
    out.sort_by_key(|f| f.at);
    Ok(out)
}

/// What one fault did.
#[derive(Clone, Debug, Serialize)]
pub struct FaultOutcome {
    /// The fault, as scheduled.
    pub fault: String,
    /// The validators it hit.
    pub validators: Vec<usize>,
    /// When it was applied (s since the load started).
    pub applied_s: f64,
    /// When the validators it hit ran again (s since the load started).
    pub ended_s: Option<f64>,
    /// From the fault (after `stop-all`: from the last start) to the next commit (ms).
    pub recovery_ms: Option<u64>,
    /// From its end until the validators it hit caught up with the others (ms).
    pub caught_up_ms: Option<u64>,
}

/// The committed height of each running validator, per its latest `stats.json` (`None`:
/// stopped, paused, or no figures yet).
fn heights(net: &mut Testnet, paused: &[usize]) -> Vec<Option<u64>> {
    (0..net.nodes.len())
        .map(|i| {
            if paused.contains(&i) || !net.is_running(i) {
                return None;
            }
            net.stats(i)
                .and_then(|s| s["core"]["committed_height"].as_u64())
        })
        .collect()
}

fn max_of(h: &[Option<u64>], except: &[usize]) -> u64 {
    h.iter()
        .enumerate()
        .filter(|(i, _)| !except.contains(i))
        .filter_map(|(_, h)| *h)
        .max()
        .unwrap_or(0)
}

/// A measurement under way.
struct Watch {
    outcome: usize,
    /// Recovery: commits above this height, counted from this instant.
    recover_above: Option<(u64, Instant)>,
    /// Catching up: these validators reach this height, counted from this instant.
    catch_up: Option<(Vec<usize>, u64, Instant)>,
}

/// Applies `faults` to `net` (times from `start`), measuring each, until the schedule is done
/// and its measurements are settled or `until` passes, or `stop` is set. The validator leading
/// round r is `leader_of(r)`. Returns each fault's outcome, in schedule order.
///
/// # Errors
/// A validator that cannot be signalled or started again.
pub fn run(
    net: &mut Testnet,
    faults: &[Fault],
    start: Instant,
    until: Instant,
    stop: &AtomicBool,
    leader_of: impl Fn(u64) -> usize,
) -> Result<Vec<FaultOutcome>, TestnetError> {
    let n = net.nodes.len();
    let mut outcomes: Vec<FaultOutcome> = Vec::new();
    let mut watches: Vec<Watch> = Vec::new();
    let mut paused: Vec<usize> = Vec::new();
    // (when, fault index, validators): the ends still to apply.
    let mut ends: Vec<(Instant, usize, Vec<usize>)> = Vec::new();
    let mut next = 0;
    let mut last_heights: Vec<Option<u64>> = vec![None; n];
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Acquire) || now >= until {
            break;
        }
        let h = heights(net, &paused);
        for (i, x) in h.iter().enumerate() {
            if x.is_some() {
                last_heights[i] = *x;
            }
        }
        // Settle what can be settled.
        for w in &mut watches {
            if let Some((above, from)) = w.recover_above {
                if max_of(&h, &[]) > above {
                    outcomes[w.outcome].recovery_ms =
                        Some(now.duration_since(from).as_millis() as u64);
                    w.recover_above = None;
                }
            }
            if let Some((who, target, from)) = &w.catch_up {
                if who.iter().all(|v| h[*v].is_some_and(|x| x >= *target)) {
                    outcomes[w.outcome].caught_up_ms =
                        Some(now.duration_since(*from).as_millis() as u64);
                    w.catch_up = None;
                }
            }
        }
        watches.retain(|w| w.recover_above.is_some() || w.catch_up.is_some());
        // Ends due.
        let (due, later): (Vec<_>, Vec<_>) = ends.into_iter().partition(|(at, _, _)| *at <= now);
        ends = later;
        for (_, k, who) in due {
            // One outcome per fault, in schedule order.
            let fault = faults[k];
            let target = max_of(&h, &who);
            for v in &who {
                match fault.kind {
                    FaultKind::Pause(_) => {
                        net.resume(*v)?;
                        paused.retain(|p| p != v);
                    }
                    _ => net.start_node(*v)?,
                }
            }
            let ended = Instant::now();
            outcomes[k].ended_s = Some(ended.duration_since(start).as_secs_f64());
            match fault.kind {
                FaultKind::StopAll { .. } => {
                    let before = max_of(&last_heights, &[]);
                    watches.push(Watch {
                        outcome: k,
                        recover_above: Some((before, ended)),
                        catch_up: None,
                    });
                }
                _ => {
                    watches.push(Watch {
                        outcome: k,
                        recover_above: None,
                        catch_up: Some((who.clone(), target, ended)),
                    });
                }
            }
        }
        // Faults due.
        while next < faults.len() && start + faults[next].at <= now {
            let fault = faults[next];
            next += 1;
            let who: Vec<usize> = match fault.kind {
                FaultKind::Pause(v) | FaultKind::Kill(v) => vec![v],
                FaultKind::KillLeader => {
                    let round = (0..n)
                        .filter_map(|i| net.stats(i))
                        .filter_map(|s| s["core"]["round"].as_u64())
                        .max()
                        .unwrap_or(0);
                    vec![leader_of(round)]
                }
                FaultKind::StopAll { .. } => (0..n).collect(),
            };
            // A validator already down (another fault) is left to that fault.
            let who: Vec<usize> = who
                .into_iter()
                .filter(|v| !paused.contains(v) && net.is_running(*v))
                .collect();
            let applied = Instant::now();
            let before = max_of(&h, &who);
            match fault.kind {
                FaultKind::Pause(_) => {
                    for v in &who {
                        net.pause(*v)?;
                        paused.push(*v);
                    }
                }
                FaultKind::Kill(_) | FaultKind::KillLeader => {
                    for v in &who {
                        net.kill(*v);
                    }
                }
                FaultKind::StopAll { kill } => net.stop_all(kill, Duration::from_secs(5)),
            }
            tracing::info!(target: "testnet.faults", fault = %fault, validators = ?who, "fault applied");
            let k = outcomes.len();
            outcomes.push(FaultOutcome {
                fault: fault.to_string(),
                validators: who.clone(),
                applied_s: applied.duration_since(start).as_secs_f64(),
                ended_s: None,
                recovery_ms: None,
                caught_up_ms: None,
            });
            if !matches!(fault.kind, FaultKind::StopAll { .. }) && !who.is_empty() {
                watches.push(Watch {
                    outcome: k,
                    recover_above: Some((before, applied)),
                    catch_up: None,
                });
            }
            ends.push((applied + fault.down, k, who));
        }
        if next == faults.len() && ends.is_empty() && watches.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever is still down runs again.
    for (_, k, who) in ends {
        for v in who {
            if paused.contains(&v) {
                net.resume(v)?;
            } else {
                net.start_node(v)?;
            }
        }
        outcomes[k].ended_s = Some(start.elapsed().as_secs_f64());
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_bad_items_are_named() {
        let s = parse_schedule(
            "pause:1@5s+8s, kill:2@18s, kill-leader@20s+1s,stop-all:kill@44s+3s,stop-all:term@50s",
            4,
        )
        .unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(
            s[0],
            Fault {
                kind: FaultKind::Pause(1),
                at: Duration::from_secs(5),
                down: Duration::from_secs(8)
            }
        );
        assert_eq!(s[1].down, DEFAULT_DOWN);
        assert_eq!(s[2].kind, FaultKind::KillLeader);
        assert_eq!(s[3].kind, FaultKind::StopAll { kill: true });
        assert_eq!(s[4].kind, FaultKind::StopAll { kill: false });
        // Sorted by time.
        let s = parse_schedule("kill:0@9s,kill:1@3s", 4).unwrap();
        assert_eq!(s[0].kind, FaultKind::Kill(1));
        for (bad, named) in [
            ("pause:1@5s", "needs its length"),
            ("kill:4@5s", "validator 4 does not exist"),
            ("kill:x@5s", "not a validator index"),
            ("kill@5s", "needs a validator"),
            ("stop-all@5s", ":term or :kill"),
            ("explode:1@5s", "is not one of"),
            ("kill:1", "expected KIND"),
            ("kill:1@soon", "\"soon\""),
            ("", "empty"),
        ] {
            let e = parse_schedule(bad, 4).unwrap_err();
            assert!(e.contains(named), "{bad:?}: {e}");
        }
    }
}
