//! The deterministic simulator: n consensus cores in virtual time from one seed.
//!
//! Each run ([`RunSpec::draw`]) draws from its seed a fault class, the Byzantine validators (at most
//! f), link latency, loss, duplication, reordering, partitions that heal, and crashes that keep only
//! what was persisted. Messages cross the simulated network as encoded bytes and pass the same
//! border checks (decode, structure, ZIP-215 signatures) as on a real node. After the global
//! stabilisation time (GST) the network is reliable and everyone is up.
//!
//! Every run checks (see [`checker`]): agreement (no two honest nodes commit different blocks at one
//! height), no honest double-sign, every commit backed by a 2-chain QC proof, and liveness (every
//! honest node commits [`spec::LIVENESS_BLOCKS`] new blocks after GST within the window). The same
//! seed replays the same run exactly.

pub mod checker;
pub mod runner;
pub mod sigcache;
pub mod spec;

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

pub use runner::{run, RunReport};
pub use spec::{Byzantine, FaultClass, RunSpec};

/// Per-class (or total) aggregate of runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClassSummary {
    /// Runs.
    pub runs: usize,
    /// Agreement violations.
    pub safety_violations: usize,
    /// Honest double-signs.
    pub double_signs: usize,
    /// Unbacked commits.
    pub unbacked_commits: usize,
    /// Runs where liveness after GST failed.
    pub liveness_failures: usize,
    /// Lowest committed height of any honest node in any run.
    pub commits_min: u64,
    /// Mean committed height (per run minimum).
    pub commits_mean: f64,
    /// Largest number of rounds from GST to liveness.
    pub rounds_to_liveness_max: u64,
    /// Mean messages per validator per round.
    pub messages_per_validator_per_round: f64,
    /// Evidence raised.
    pub evidence: u64,
    /// Frames and messages refused at the border.
    pub rejected: u64,
    /// Block requests for missing ancestors.
    pub block_requests: u64,
    /// Sync requests of nodes far behind.
    pub sync_requests: u64,
}

impl ClassSummary {
    fn add(&mut self, r: &RunReport) {
        if self.runs == 0 || r.commits_min < self.commits_min {
            self.commits_min = r.commits_min;
        }
        let k = self.runs as f64;
        self.commits_mean = (self.commits_mean * k + r.commits_min as f64) / (k + 1.0);
        self.messages_per_validator_per_round = (self.messages_per_validator_per_round * k
            + r.messages_per_validator_per_round)
            / (k + 1.0);
        self.runs += 1;
        self.safety_violations += r.safety_violations;
        self.double_signs += r.double_signs;
        self.unbacked_commits += r.unbacked_commits;
        self.liveness_failures += usize::from(r.liveness_failure);
        self.rounds_to_liveness_max = self
            .rounds_to_liveness_max
            .max(r.rounds_to_liveness.unwrap_or(0));
        self.evidence += r.evidence;
        self.rejected += r.rejected_frames + r.rejected_messages;
        self.block_requests += r.block_requests;
        self.sync_requests += r.sync_requests;
    }
}

/// The outcome of many runs.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Validators per run.
    pub validators: usize,
    /// Byzantine validators allowed per run.
    pub byzantine: usize,
    /// Runs.
    pub runs: usize,
    /// Agreement violations, all runs.
    pub safety_violations: usize,
    /// Honest double-signs, all runs.
    pub double_signs: usize,
    /// Unbacked commits, all runs.
    pub unbacked_commits: usize,
    /// Liveness failures, all runs.
    pub liveness_failures: usize,
    /// Lowest honest committed height in any run.
    pub commits_min: u64,
    /// Mean messages per validator per round, clean runs only (steady state), or all runs if none.
    pub messages_per_validator_per_round: f64,
    /// Per fault class.
    pub classes: BTreeMap<&'static str, ClassSummary>,
    /// Seeds of failing runs (replay each with `--seed`).
    pub failing_seeds: Vec<u64>,
    /// The first failure's description.
    pub first_failure: Option<String>,
}

/// Runs `seeds` (in parallel) for `n` validators with up to `f` Byzantine and summarises them.
pub fn run_many(
    n: usize,
    f: usize,
    seeds: impl IntoIterator<Item = u64>,
) -> (Summary, Vec<RunReport>) {
    let specs: Vec<RunSpec> = seeds.into_iter().map(|s| RunSpec::draw(n, f, s)).collect();
    run_specs(n, f, specs)
}

/// Runs `specs` (in parallel) and summarises them as runs of `n` validators with up to `f`
/// Byzantine.
pub fn run_specs(n: usize, f: usize, specs: Vec<RunSpec>) -> (Summary, Vec<RunReport>) {
    let reports: Vec<RunReport> = specs.into_par_iter().map(run).collect();
    (summarise(n, f, &reports), reports)
}

/// Aggregates reports.
pub fn summarise(n: usize, f: usize, reports: &[RunReport]) -> Summary {
    let mut classes: BTreeMap<&'static str, ClassSummary> = BTreeMap::new();
    let mut total = ClassSummary::default();
    let mut clean = ClassSummary::default();
    let mut failing = Vec::new();
    let mut first_failure = None;
    for r in reports {
        classes.entry(r.class.name()).or_default().add(r);
        total.add(r);
        if r.class == FaultClass::Clean {
            clean.add(r);
        }
        if !r.ok() {
            failing.push(r.seed);
            if first_failure.is_none() {
                first_failure = Some(format!(
                    "seed {} ({}): {}",
                    r.seed,
                    r.class.name(),
                    r.first_violation
                        .clone()
                        .unwrap_or_else(|| "liveness failure".into())
                ));
            }
        }
    }
    Summary {
        validators: n,
        byzantine: f,
        runs: total.runs,
        safety_violations: total.safety_violations,
        double_signs: total.double_signs,
        unbacked_commits: total.unbacked_commits,
        liveness_failures: total.liveness_failures,
        commits_min: total.commits_min,
        messages_per_validator_per_round: if clean.runs > 0 {
            clean.messages_per_validator_per_round
        } else {
            total.messages_per_validator_per_round
        },
        classes,
        failing_seeds: failing,
        first_failure,
    }
}

/// The summary as a fixed-width table, one row per class and a total.
pub fn table(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>5} {:>7} {:>7} {:>8} {:>8} {:>9} {:>11} {:>9} {:>8}",
        "class",
        "runs",
        "safety",
        "dblsign",
        "unbacked",
        "liveness",
        "commits",
        "rounds→live",
        "msg/v/r",
        "evidence"
    );
    let row = |out: &mut String, name: &str, c: &ClassSummary| {
        let _ = writeln!(
            out,
            "{:<14} {:>5} {:>7} {:>7} {:>8} {:>8} {:>9} {:>11} {:>9.2} {:>8}",
            name,
            c.runs,
            c.safety_violations,
            c.double_signs,
            c.unbacked_commits,
            c.liveness_failures,
            c.commits_min,
            c.rounds_to_liveness_max,
            c.messages_per_validator_per_round,
            c.evidence
        );
    };
    let mut total = ClassSummary::default();
    for (name, c) in &s.classes {
        row(&mut out, name, c);
        total.runs += c.runs;
        total.safety_violations += c.safety_violations;
        total.double_signs += c.double_signs;
        total.unbacked_commits += c.unbacked_commits;
        total.liveness_failures += c.liveness_failures;
        total.evidence += c.evidence;
        total.rounds_to_liveness_max = total.rounds_to_liveness_max.max(c.rounds_to_liveness_max);
    }
    total.commits_min = s.commits_min;
    total.messages_per_validator_per_round = s.messages_per_validator_per_round;
    row(&mut out, "TOTAL", &total);
    out
}
