//! `bpci testnet` and `bpci bench load`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bpci::loadgen::{self, LoadConfig, LoadReport, Route, Target};
use bpci::testnet::{self, parse_duration, parse_duration_or_zero, Testnet, TestnetConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Arguments of `bpci testnet`.
#[derive(clap::Args)]
pub struct TestnetArgs {
    /// Validators (4..=31).
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// How long to offer load.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// The first part of the load whose latencies are left out of the percentiles (start-up
    /// transient); its transactions still count, and the per-second figures include it.
    #[arg(long, default_value = "2s", value_parser = parse_duration_or_zero)]
    warmup: Duration,
    /// Offered transactions per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 512)]
    tx_size: usize,
    /// `hotstuff.pipeline_depth` of every validator.
    #[arg(long, default_value_t = 3)]
    pipeline_depth: u32,
    /// Where the load generator sends each batch: `leader` (the upcoming leader, from the
    /// validators' leader hints) or `spread` (each connection to its own validator).
    #[arg(long, default_value = "leader")]
    route: Route,
    /// The nice value (0-19) of the load generator's sending thread: above the validators'
    /// 0, the kernel runs a validator thread first when both are ready, as if the generator
    /// had its own machine; late batches are still timed from their scheduled instant.
    #[arg(long, default_value_t = loadgen::DEFAULT_SENDER_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    sender_nice: i32,
    /// A transaction without a commit this long after its submission goes again, to another
    /// validator (the validators answer a committed one `Committed` instead of admitting it).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    resubmit_after: Duration,
    /// Submissions of one transaction in all, the first included (1: never resubmitted).
    #[arg(long, default_value_t = loadgen::DEFAULT_MAX_SUBMITS,
          value_parser = clap::value_parser!(u8).range(1..=16))]
    max_submits: u8,
    /// Faults to apply during the load, a comma-separated list of KIND[:ARG]@START[+FOR]:
    /// `pause:V@T+D` (SIGSTOP validator V at T, SIGCONT D later), `kill:V@T+D` (kill -9 V,
    /// start it again D later, 2 s if left out), `kill-leader@T+D` (the current leader),
    /// `stop-all:term@T+D` / `stop-all:kill@T+D` (every validator at once, started again D
    /// later). E.g. `pause:1@5s+8s,kill:2@18s,kill:3@26s,kill:3@34s,stop-all:kill@44s+3s`.
    /// The summary reports each fault's recovery time.
    #[arg(long)]
    faults: Option<String>,
    /// Where keys, configs, data, logs, results.json and the plots go.
    #[arg(long, default_value = "target/testnet")]
    dir: PathBuf,
    /// Print results.json's object instead of the summary.
    #[arg(long)]
    json: bool,
    /// After the load, keep the validators running until Ctrl-C, printing each one's API URL
    /// (try `bpci consensus ... --api URL`); the summary follows once they are stopped.
    #[arg(long)]
    hold: bool,
}

/// The load generator's memory settings, as `bpci node`'s (see
/// `bpci::pipeline::apply_memory_settings`).
fn memory_settings() {
    if let Err(e) = bpci::pipeline::apply_memory_settings(false) {
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
}

/// Space left free besides the blocks (logs, the store's index, the rest of the system).
const HEADROOM_BYTES: u64 = 1 << 30;
const GIB: f64 = (1u64 << 30) as f64;

/// The load flags `bpci testnet` and `bpci bench load` share.
fn check_load(rate: u64, tx_size: usize) -> anyhow::Result<()> {
    if !(16..=64 * 1024).contains(&tx_size) {
        bail!("--tx-size must be between 16 and 65536 bytes, got {tx_size}");
    }
    if rate == 0 {
        bail!("--rate must be positive");
    }
    Ok(())
}

pub fn run(args: TestnetArgs) -> anyhow::Result<ExitCode> {
    memory_settings();
    if !(4..=31).contains(&args.validators) {
        bail!(
            "--validators must be between 4 and 31, got {}",
            args.validators
        );
    }
    check_load(args.rate, args.tx_size)?;
    if !(1..=64).contains(&args.pipeline_depth) {
        bail!("--pipeline-depth must be between 1 and 64");
    }
    let faults = match &args.faults {
        Some(text) => {
            let plan = testnet::faults::parse_schedule(text, args.validators)
                .map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
            if let Some(late) = plan.iter().find(|f| f.at >= args.duration) {
                bail!(
                    "--faults: {late} starts at or after the load ends ({:?}): schedule faults within --duration",
                    args.duration
                );
            }
            plan
        }
        None => Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let mut cfg = TestnetConfig::new(args.validators, args.dir.clone());
    cfg.pipeline_depth = args.pipeline_depth;
    let nodes = testnet::write(&cfg)?;
    // Every validator stores every block: a long run at a high rate fills a disk in minutes,
    // and validators on a full disk stop. Refuse before starting rather than fail midway.
    let need =
        testnet::block_bytes_estimate(args.validators, args.rate, args.duration, args.tx_size);
    let free = testnet::available_bytes(&args.dir)?;
    if need.saturating_add(HEADROOM_BYTES) > free {
        bail!(
            "--dir {} has {:.1} GiB free, and {} validators would store about {:.1} GiB of blocks \
             ({} tx/s of {} bytes for {:?} each) plus {} GiB of headroom: lower --rate or \
             --duration, or choose a --dir with more space",
            args.dir.display(),
            free as f64 / GIB,
            args.validators,
            need as f64 / GIB,
            args.rate,
            args.tx_size,
            args.duration,
            HEADROOM_BYTES >> 30,
        );
    }
    let exe = std::env::current_exe().context("locating the bpci binary")?;
    let mut net = Testnet::start(&exe, nodes)?;
    if !args.json {
        eprintln!(
            "started {} validators in {}",
            args.validators,
            args.dir.display()
        );
    }
    // On Ctrl-C here (or any error) `net` stops every validator as it is dropped.
    net.wait_ready_unless(Duration::from_secs(30), &stop)?;
    let before: Vec<serde_json::Value> =
        (0..args.validators).filter_map(|i| net.stats(i)).collect();
    let targets = net
        .nodes
        .iter()
        .map(|n| Target {
            addr: n.client_addr,
            key: n.key,
        })
        .collect();
    let mut load = LoadConfig {
        warmup: args.warmup,
        route: args.route,
        sender_nice: args.sender_nice,
        resubmit_after: args.resubmit_after,
        max_submits: args.max_submits,
        ..LoadConfig::new(targets, args.rate, args.tx_size, args.duration)
    };
    // Every transaction may use all its submissions before the run ends.
    load.drain = load.full_drain(Duration::from_secs(2));
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.duration.as_secs())
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let validator_set = bpci::config::Config::load(&net.nodes[0].config)
        .context("reading validator 0's config")?
        .validators;
    let started = Instant::now();
    let until = started + args.duration + load.drain;
    let (report, outcomes) = std::thread::scope(|s| {
        let net = &mut net;
        let stop = &*stop;
        let faults = &faults;
        let validator_set = &validator_set;
        let fault_thread = (!faults.is_empty()).then(|| {
            s.spawn(move || {
                testnet::faults::run(net, faults, started, until, stop, |r| {
                    validator_set.leader(bpci::types::Round(r)).as_usize()
                })
            })
        });
        let report = loadgen::run(&load, stop, |t| {
            bar.set_position(t.second.min(args.duration.as_secs()));
            bar.set_message(format!(
                "{} tx/s committed, p99 {:.1} ms",
                t.committed_tps, t.p99_ms
            ));
        });
        let outcomes = fault_thread.map(|t| {
            t.join()
                .unwrap_or(Err(testnet::TestnetError::Panicked("fault runner")))
        });
        (report, outcomes)
    });
    let report = report?;
    let outcomes = outcomes.transpose()?.unwrap_or_default();
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let after: Vec<serde_json::Value> = (0..args.validators).filter_map(|i| net.stats(i)).collect();
    let rss: Vec<f64> = (0..args.validators)
        .map(|i| net.peak_rss_mb(i).unwrap_or(0.0))
        .collect();
    let mut results = summarise(&args, &report, &before, &after, &rss, wall);
    if args.hold && !stop.load(std::sync::atomic::Ordering::Acquire) {
        eprintln!("load done; the validators keep running until Ctrl-C:");
        for (i, n) in net.nodes.iter().enumerate() {
            eprintln!("  validator-{i:03}  http://{}", n.http_addr);
        }
        eprintln!(
            "operator token file (for set-depth): {}",
            args.dir.join(testnet::OPERATOR_TOKEN_FILE).display()
        );
        eprintln!(
            "e.g. bpci consensus metrics --api http://{}",
            net.nodes[0].http_addr
        );
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    net.stop();
    // The stored chains, now that no validator holds its store: identical block by block, and
    // no transaction committed twice.
    let chain = testnet::chain::check(&net.nodes, testnet::CHAIN_ID);
    if let Some(o) = results.as_object_mut() {
        o.insert("faults".into(), json!(outcomes));
        o.insert(
            "chain".into(),
            match &chain {
                Ok(c) => json!(c),
                Err(e) => json!({ "error": e }),
            },
        );
    }
    let path = args.dir.join("results.json");
    let text = serde_json::to_string_pretty(&results)?;
    if let Err(e) = std::fs::write(&path, &text) {
        // The run's figures are not lost with the file: print them, then fail.
        println!("{text}");
        bail!(
            "writing {}: {e} (the results are printed above)",
            path.display()
        );
    }
    let failures = results["persist_failures"].as_u64().unwrap_or(0);
    if failures > 0 {
        eprintln!(
            "warning: validators' group commits failed {failures} times during the run (disk full or failing? see validator-N.log): the figures are not those of a healthy testnet"
        );
    }
    let svg = args.dir.join("latency.svg");
    let title = format!(
        "bpci testnet: {} validators, {} tx/s offered, {} B tx",
        args.validators, args.rate, args.tx_size
    );
    if let Err(e) = loadgen::plot::latency_svg(&svg, &title, &report.latency_curve) {
        eprintln!("latency plot not written: {e}");
    }
    // Committed tx/s and p99 per second, each fault marked.
    let timeline = args.dir.join("timeline.svg");
    let marks: Vec<loadgen::plot::FaultMark> = outcomes
        .iter()
        .map(|o| loadgen::plot::FaultMark {
            label: o.fault.split('@').next().unwrap_or(&o.fault).to_string(),
            start_s: o.applied_s,
            end_s: o.ended_s,
        })
        .collect();
    if let Err(e) = loadgen::plot::timeline_svg(&timeline, &title, &report.ticks, &marks) {
        eprintln!("timeline plot not written: {e}");
    }
    if args.json {
        println!("{text}");
    } else {
        print_summary(&results, &path, &svg, &timeline);
    }
    // A run whose chains differ, or that committed a transaction twice, failed.
    match chain {
        Ok(c) if c.identical && c.committed_twice == 0 && report.committed_twice == 0 => {
            Ok(ExitCode::SUCCESS)
        }
        Ok(c) => {
            eprintln!(
                "error: the run broke agreement: chains identical {}, {} transactions committed twice in the chain, {} seen by the client",
                c.identical, c.committed_twice, report.committed_twice
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => bail!("checking the stored chains: {e}"),
    }
}

fn delta(
    before: &[serde_json::Value],
    after: &[serde_json::Value],
    f: impl Fn(&serde_json::Value) -> u64,
) -> Vec<u64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| f(a).saturating_sub(f(b)))
        .collect()
}

fn summarise(
    args: &TestnetArgs,
    r: &LoadReport,
    before: &[serde_json::Value],
    after: &[serde_json::Value],
    rss: &[f64],
    wall: f64,
) -> serde_json::Value {
    let secs = args.duration.as_secs_f64();
    let blocks = delta(before, after, |s| {
        s["core"]["committed_height"].as_u64().unwrap_or(0)
    });
    let view_changes = delta(before, after, |s| {
        s["core"]["view_changes"].as_u64().unwrap_or(0)
    });
    let persist_failures = delta(before, after, |s| {
        s["persist_failures"].as_u64().unwrap_or(0)
    });
    let mut stage_p99 = serde_json::Map::new();
    for s in after {
        if let Some(stages) = s["stages"].as_array() {
            for st in stages {
                let name = st["name"].as_str().unwrap_or("?").to_string();
                let v = st["latency_us_p99"].as_u64().unwrap_or(0);
                let cur = stage_p99.get(&name).and_then(|x| x.as_u64()).unwrap_or(0);
                stage_p99.insert(name, json!(cur.max(v)));
            }
        }
    }
    // The slowest validator's figure for each (as for the stages).
    let mut timing = serde_json::Map::new();
    for key in [
        "round_us_p50",
        "round_us_p99",
        "proposal_to_commit_us_p50",
        "proposal_to_commit_us_p99",
    ] {
        let worst = after
            .iter()
            .filter_map(|s| s["consensus_timing"][key].as_u64())
            .max()
            .unwrap_or(0);
        timing.insert(key.to_string(), json!(worst));
    }
    json!({
        "validators": args.validators,
        "duration_s": secs,
        "warmup_s": args.warmup.min(args.duration).as_secs_f64(),
        "wall_s": wall,
        "tx_size": args.tx_size,
        "pipeline_depth": args.pipeline_depth,
        "route": r.route,
        "leader_hints": r.leader_hints,
        "routed_batches": r.routed_batches,
        "receipts": r.receipts,
        "rerouted_batches": r.rerouted_batches,
        "announced_commits": r.announced_commits,
        "offered_tps": r.offered_tps,
        "committed_tps": r.committed_tps,
        "sent": r.sent,
        "committed": r.committed,
        "resubmitted": r.resubmitted,
        "busy": r.busy,
        "duplicates": r.duplicates,
        "answered_committed": r.answered_committed,
        "lost": r.lost,
        "refused": r.refused,
        "unanswered": r.unanswered,
        "committed_twice": r.committed_twice,
        "status_committed": r.status_committed,
        "reconnects": r.reconnects,
        "blocks_per_s": blocks.iter().copied().max().unwrap_or(0) as f64 / secs,
        "latency_ms": r.latency_ms,
        "stage_latency_us_p99": stage_p99,
        "consensus_timing_us": timing,
        "view_changes": view_changes.iter().copied().max().unwrap_or(0),
        "persist_failures": persist_failures.iter().sum::<u64>(),
        "peak_rss_mb": rss.iter().copied().fold(0.0, f64::max),
        "peak_rss_mb_per_validator": rss,
        "per_second": r.ticks,
    })
}

fn print_summary(
    v: &serde_json::Value,
    path: &std::path::Path,
    svg: &std::path::Path,
    timeline: &std::path::Path,
) {
    let l = &v["latency_ms"];
    println!(
        "bpci testnet: {} validators, {} s, {} B transactions, pipeline depth {}, route {} ({} leader hints, {} batches answered late and rerouted)",
        v["validators"],
        v["duration_s"],
        v["tx_size"],
        v["pipeline_depth"],
        v["route"].as_str().unwrap_or("?"),
        v["leader_hints"],
        v["rerouted_batches"]
    );
    println!(
        "  offered      {:>10.0} tx/s",
        v["offered_tps"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  committed    {:>10.0} tx/s   ({} committed; lost {}, refused {}, unanswered {}, committed twice {})",
        v["committed_tps"].as_f64().unwrap_or(0.0),
        v["committed"],
        v["lost"],
        v["refused"],
        v["unanswered"],
        v["committed_twice"]
    );
    println!(
        "  answers      {} busy, {} duplicate, {} already committed; {} resubmitted, {} commits learned by status query, {} reconnects",
        v["busy"],
        v["duplicates"],
        v["answered_committed"],
        v["resubmitted"],
        v["status_committed"],
        v["reconnects"]
    );
    println!(
        "  notices      {} first from a commit announcement ({} inclusion receipts)",
        v["announced_commits"], v["receipts"]
    );
    println!(
        "  blocks       {:>10.1} /s",
        v["blocks_per_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (after {} s warm-up)",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p999"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0),
        v["warmup_s"]
    );
    if let Some(stages) = v["stage_latency_us_p99"].as_object() {
        let s: Vec<String> = stages
            .iter()
            .map(|(k, x)| format!("{} {}µs", k.trim_start_matches("pipeline."), x))
            .collect();
        println!("  stage p99    {}", s.join(", "));
    }
    let t = &v["consensus_timing_us"];
    let ms = |k: &str| t[k].as_u64().unwrap_or(0) as f64 / 1000.0;
    println!(
        "  rounds ms    p50 {:.2}  p99 {:.2};  own proposal to commit ms  p50 {:.2}  p99 {:.2}",
        ms("round_us_p50"),
        ms("round_us_p99"),
        ms("proposal_to_commit_us_p50"),
        ms("proposal_to_commit_us_p99")
    );
    println!("  view changes {}", v["view_changes"]);
    if let Some(faults) = v["faults"].as_array().filter(|f| !f.is_empty()) {
        for f in faults {
            let ms = |k: &str| {
                f[k].as_u64().map_or("not seen".to_string(), |x| {
                    format!("{:.1} s", x as f64 / 1000.0)
                })
            };
            println!(
                "  fault        {} on {} at {:.1} s: committing again after {}, caught up {} after its end",
                f["fault"].as_str().unwrap_or("?"),
                f["validators"],
                f["applied_s"].as_f64().unwrap_or(0.0),
                ms("recovery_ms"),
                ms("caught_up_ms")
            );
        }
    }
    let c = &v["chain"];
    match c["error"].as_str() {
        Some(e) => println!("  chains       could not be checked: {e}"),
        None => println!(
            "  chains       {} (heights {}), {} transactions, {} committed twice",
            if c["identical"].as_bool() == Some(true) {
                "identical block by block".to_string()
            } else {
                format!("DIFFER: {}", c["first_difference"].as_str().unwrap_or("?"))
            },
            c["heights"],
            c["txs"],
            c["committed_twice"]
        ),
    }
    println!(
        "  peak RSS     {} MiB per validator",
        v["peak_rss_mb_per_validator"]
            .as_array()
            .map(|a| a
                .iter()
                .map(|m| format!("{:.1}", m.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(" / "))
            .unwrap_or_default()
    );
    println!(
        "  results      {}  plots {}, {}",
        path.display(),
        svg.display(),
        timeline.display()
    );
}

/// Arguments of `bpci bench load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// Client endpoints with their validator keys: `127.0.0.1:9001=ed25519:<hex>` (repeat).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Offered transactions per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 512)]
    tx_size: usize,
    /// How long to offer load.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// The first part of the load whose latencies are left out of the percentiles.
    #[arg(long, default_value = "2s", value_parser = parse_duration_or_zero)]
    warmup: Duration,
    /// `leader` (send to the upcoming leader, from the validators' leader hints) or `spread`.
    #[arg(long, default_value = "leader")]
    route: Route,
    /// The nice value (0-19) of the load generator's sending thread: above the validators'
    /// 0, the kernel runs a validator thread first when both are ready, as if the generator
    /// had its own machine; late batches are still timed from their scheduled instant.
    #[arg(long, default_value_t = loadgen::DEFAULT_SENDER_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    sender_nice: i32,
    /// A transaction without a commit this long after its submission goes again, to another
    /// validator.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    resubmit_after: Duration,
    /// Submissions of one transaction in all, the first included (1: never resubmitted).
    #[arg(long, default_value_t = loadgen::DEFAULT_MAX_SUBMITS,
          value_parser = clap::value_parser!(u8).range(1..=16))]
    max_submits: u8,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    memory_settings();
    check_load(args.rate, args.tx_size)?;
    let mut targets = Vec::new();
    for t in &args.targets {
        let (addr, key) = t
            .split_once('=')
            .with_context(|| format!("--target {t:?} must be ADDR=ed25519:<hex>"))?;
        let addr = addr
            .parse()
            .with_context(|| format!("--target {t:?}: bad address"))?;
        let key: bpci::crypto::PublicKey = key
            .parse()
            .with_context(|| format!("--target {t:?}: bad key"))?;
        targets.push(Target {
            addr,
            key: key.to_bytes(),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    let mut cfg = LoadConfig {
        warmup: args.warmup,
        route: args.route,
        sender_nice: args.sender_nice,
        resubmit_after: args.resubmit_after,
        max_submits: args.max_submits,
        ..LoadConfig::new(targets, args.rate, args.tx_size, args.duration)
    };
    cfg.drain = cfg.full_drain(Duration::from_secs(2));
    let report = loadgen::run(&cfg, &stop, |t| {
        if !args.json {
            eprintln!(
                "{:>4}s {:>8} tx/s committed, p99 {:.1} ms",
                t.second, t.committed_tps, t.p99_ms
            );
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
