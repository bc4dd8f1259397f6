//! `bpci sim`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use bpci::sim::{run_specs, summarise, table, RunSpec};

/// Arguments of `bpci sim`.
#[derive(clap::Args)]
pub struct SimArgs {
    /// Validators per cluster (4..=1024).
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Byzantine validators per run (default and maximum: f = (n-1)/3).
    #[arg(long)]
    byzantine: Option<usize>,
    /// Number of seeded runs (seeds 0..S; seeds cycle through the fault classes).
    #[arg(long, default_value_t = 48)]
    seeds: u64,
    /// Replay exactly one run with this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Test-only (builds with the `break-rules` feature): break one safety rule in every
    /// honest node (skip-last-voted-round, one-chain-commit, count-duplicate-signer,
    /// forget-uncommitted-blocks) to show the checker catches it.
    #[cfg(feature = "break-rules")]
    #[arg(long, hide = true)]
    break_rule: Option<String>,
}

/// The spec of `seed`, with the rule `--break-rule` names broken.
#[cfg(feature = "break-rules")]
fn spec_of(args: &SimArgs, n: usize, f: usize, seed: u64) -> anyhow::Result<RunSpec> {
    use bpci::consensus::BrokenRule;
    let spec = RunSpec::draw(n, f, seed);
    Ok(match args.break_rule.as_deref() {
        None => spec,
        Some("skip-last-voted-round") => spec.with_broken_rule(BrokenRule::SkipLastVotedRoundCheck),
        Some("one-chain-commit") => spec.with_broken_rule(BrokenRule::OneChainCommit),
        Some("count-duplicate-signer") => spec.with_broken_rule(BrokenRule::CountDuplicateSigner),
        Some("forget-uncommitted-blocks") => spec.with_broken_rule(BrokenRule::ForgetUncommittedBlocks),
        Some(other) => bail!(
            "--break-rule {other:?} is not one of skip-last-voted-round, one-chain-commit, count-duplicate-signer, forget-uncommitted-blocks"
        ),
    })
}

#[cfg(not(feature = "break-rules"))]
fn spec_of(_: &SimArgs, n: usize, f: usize, seed: u64) -> anyhow::Result<RunSpec> {
    Ok(RunSpec::draw(n, f, seed))
}

#[cfg(feature = "break-rules")]
fn replay_flag(args: &SimArgs) -> String {
    args.break_rule
        .as_deref()
        .map(|r| format!(" --break-rule {r}"))
        .unwrap_or_default()
}

#[cfg(not(feature = "break-rules"))]
fn replay_flag(_: &SimArgs) -> String {
    String::new()
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let n = args.validators;
    if !(4..=1024).contains(&n) {
        bail!("--validators must be between 4 and 1024, got {n}");
    }
    let f_max = (n - 1) / 3;
    let f = args.byzantine.unwrap_or(f_max);
    if f > f_max {
        bail!(
            "--byzantine {f} exceeds f = (n-1)/3 = {f_max} for {n} validators: safety needs n > 3f"
        );
    }
    if args.seeds == 0 && args.seed.is_none() {
        bail!("--seeds must be at least 1");
    }
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (0..args.seeds).collect(),
    };
    let specs = seeds
        .into_iter()
        .map(|s| spec_of(&args, n, f, s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let reports = run_specs(n, f, specs).1;
    let summary = summarise(n, f, &reports);
    let elapsed = started.elapsed();
    if args.json {
        let mut v = serde_json::to_value(&summary).context("serialising the summary")?;
        if let Some(o) = v.as_object_mut() {
            o.insert("wall_seconds".into(), elapsed.as_secs_f64().into());
            if args.seed.is_some() {
                o.insert("run".into(), serde_json::to_value(&reports[0])?);
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let (Some(seed), Some(r)) = (args.seed, reports.first()) {
            println!("seed {seed}: class {}, {} byzantine, {} rounds, {} ms virtual, min commits {}, msgs/validator/round {:.2}",
                r.class.name(), r.byzantine, r.rounds, r.virtual_ms, r.commits_min, r.messages_per_validator_per_round);
        }
        println!(
            "bpci sim: {n} validators, up to {f} byzantine, {} runs in {:.1}s",
            summary.runs,
            elapsed.as_secs_f64()
        );
        print!("{}", table(&summary));
        if let Some(first) = &summary.first_failure {
            println!("FAILED seeds: {:?}", summary.failing_seeds);
            println!("first failure: {first}");
            let broken = replay_flag(&args);
            println!(
                "replay: bpci sim --validators {n} --byzantine {f} --seed {}{broken}",
                summary.failing_seeds[0]
            );
        }
    }
    Ok(if summary.failing_seeds.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
