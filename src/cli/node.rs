//! `bpci node --config FILE` (also the `bpci-consensus-server` binary).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bpci::config::Config;

/// Arguments of `bpci node`.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's YAML config.
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let config =
        Config::load(&args.config).with_context(|| format!("config {}", args.config.display()))?;
    bpci::logs::init(config.file.logging.as_ref()).context("setting up logging")?;
    if let Err(e) = bpci::pipeline::apply_memory_settings(config.file.tuning.transparent_huge_pages)
    {
        tracing::warn!(target: "bpci", error = %e, "could not turn transparent huge pages off");
    }
    let key = bpci::node::keys::read(&config.file.node.key_file)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let node = bpci::node::start(&config, key).context("starting the node")?;
    eprintln!(
        "bpci node {} (index {}) running; data in {}",
        config.file.node.validator_id,
        config.me,
        config.file.node.data_dir.display()
    );
    while !stop.load(Ordering::Acquire) {
        if let Some(why) = node.halted() {
            eprintln!("bpci: {why}; stopping (a restart replays the committed chain)");
            node.shutdown();
            return Ok(ExitCode::from(70));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bpci node: stopping");
    node.shutdown();
    Ok(ExitCode::SUCCESS)
}
