//! `bpci chain`: a validator's committed chain, read from its data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bpci::store::RedbStore;

/// Arguments of `bpci chain`.
#[derive(clap::Args)]
pub struct ChainArgs {
    /// The validator's config (its `node.data_dir` and `node.chain_id` are read). The
    /// validator must be stopped: its store is open in one process at a time.
    #[arg(long)]
    config: PathBuf,
    /// First height to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Last height to print (default: the committed tip).
    #[arg(long)]
    to: Option<u64>,
    /// One JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// Prints `height block-id transactions`, one committed block per line, from the store's
/// durable chain (every id computed from the block's bytes, every parent link checked).
pub fn run(args: ChainArgs) -> anyhow::Result<ExitCode> {
    let config = bpci::config::Config::load(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let node = &config.file.node;
    let store = RedbStore::open_split(
        &node.data_dir.join("node.redb"),
        &node.data_dir.join("safety"),
    )
    .with_context(|| {
        format!(
            "opening the store in {} (is the validator still running?)",
            node.data_dir.display()
        )
    })?;
    let tip = store.durable_height();
    let to = args.to.unwrap_or(tip).min(tip);
    if args.from > to && tip > 0 {
        bail!(
            "--from {} is above --to {to} (the committed tip is {tip})",
            args.from
        );
    }
    let ids = store
        .committed_ids(&node.chain_id, args.from, to)
        .context("reading the committed chain")?;
    if args.json {
        let blocks: Vec<serde_json::Value> = ids
            .iter()
            .map(
                |(h, id, txs)| serde_json::json!({ "height": h, "id": id.to_string(), "txs": txs }),
            )
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "chain_id": node.chain_id,
                "tip": tip,
                "blocks": blocks,
            }))?
        );
    } else {
        for (h, id, txs) in &ids {
            println!("{h} {id} {txs}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
