//! `bpci consensus ...`: the spec's CLI commands, each a call to a node's HTTP API (`--api URL`
//! or `BPCI_API`), printed as a table for people or, with `--output json`, as the API's JSON
//! for scripts. Any failure (node down, an error answer) exits non-zero with one line saying
//! what went wrong.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The node's HTTP API.
    #[arg(
        long,
        global = true,
        env = "BPCI_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// `table` for people, `json` for scripts (the API's answer as it is).
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON, one document.
    Json,
}

/// `bpci consensus`.
#[derive(Args, Debug)]
pub struct ConsensusArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: ConsensusCommand,
}

#[derive(Subcommand, Debug)]
enum ConsensusCommand {
    /// A round's status (a round is a height: `round-<height>`).
    RoundStatus {
        /// `round-<height>`.
        #[arg(long)]
        round_id: String,
    },
    /// Consensus figures since the node started.
    Metrics,
    /// Rounds in flight (`--status active`) or committed (`--status committed`).
    ListRounds {
        /// Which rounds.
        #[arg(long, value_enum, default_value = "active")]
        status: RoundFilter,
        /// How many committed rounds (with `--status committed`).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Committed rounds, newest first.
    History {
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// A health check or probe: exits 0 when it answers 200, non-zero with what fails otherwise
    /// (for container health checks and scripts).
    Health {
        /// Which check.
        #[arg(long, value_enum, default_value = "consensus")]
        check: HealthCheck,
    },
    /// IBFT views of a round.
    #[command(subcommand)]
    Ibft(IbftCommand),
    /// The HotStuff pipeline.
    #[command(subcommand)]
    Hotstuff(HotStuffCommand),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HealthCheck {
    /// `/health/consensus`: the chain commits.
    Consensus,
    /// `/health/ibft`: and a quorum is connected.
    Ibft,
    /// `/health/hotstuff`: and the pipeline drains.
    Hotstuff,
    /// `/livez`: the node's loops turn.
    Livez,
    /// `/readyz`: ready to serve.
    Readyz,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoundFilter {
    /// Proposed, not yet durable.
    Active,
    /// Committed (the live log's, newest first).
    Committed,
}

#[derive(Subcommand, Debug)]
enum IbftCommand {
    /// A round's IBFT phase and vote counts.
    State {
        /// `round-<height>`.
        #[arg(long)]
        round_id: String,
    },
    /// The signers and signatures of the QCs that prepared and committed a round.
    Votes {
        /// `round-<height>`.
        #[arg(long)]
        round_id: String,
    },
    /// A round's block proposal.
    Proposal {
        /// `round-<height>`.
        #[arg(long)]
        round_id: String,
    },
    /// Submit a validator's signed vote (checked by the node as one from QUIC; needs the
    /// operator token). Signs with `--key-file`, or sends `--signature` as given.
    Vote(VoteArgs),
}

#[derive(Args, Debug)]
struct VoteArgs {
    /// The voter's `validator_id`.
    #[arg(long)]
    validator_id: String,
    /// `Prepare` or `Commit` (one HotStuff vote is both: the block's prepare, its parent's commit).
    #[arg(long, default_value = "Prepare")]
    vote_type: String,
    /// The block voted for (`0x` and 64 hex digits).
    #[arg(long)]
    block_hash: String,
    /// The block's consensus round (view).
    #[arg(long)]
    round_number: u64,
    /// The block's height.
    #[arg(long)]
    height: u64,
    /// `ed25519:` and 128 hex digits, made elsewhere.
    #[arg(long, conflicts_with = "key_file")]
    signature: Option<String>,
    /// The voter's key file (`bpci keys generate`): the vote is signed here.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The operator token file of the node.
    #[arg(long, env = "BPCI_OPERATOR_TOKEN_FILE")]
    token_file: PathBuf,
}

#[derive(Subcommand, Debug)]
enum HotStuffCommand {
    /// Per stage: queue depth, items/s, latency; the depth in force.
    Pipeline {
        /// Refresh every `--interval` until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with `--watch`.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Optimistic execution and view-change figures.
    Metrics,
    /// A round's state root (speculative or final).
    Execution {
        /// `round-<height>`.
        #[arg(long)]
        round_id: String,
    },
    /// Change the pipeline depth until the node restarts (needs the operator token).
    SetDepth {
        /// The new depth (1 to 64).
        #[arg(long)]
        depth: u64,
        /// The operator token file (`node.operator_token_file` of the node).
        #[arg(long, env = "BPCI_OPERATOR_TOKEN_FILE")]
        token_file: PathBuf,
    },
}

struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(api: &str) -> anyhow::Result<Self> {
        let base = api.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!("--api {api:?} is not an http:// URL"));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(CALL_TIMEOUT))
            .build();
        Ok(Self {
            base,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    fn answer(
        &self,
        path: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut r = r.map_err(|e| anyhow!("cannot reach the node at {}{path}: {e}", self.base))?;
        let status = r.status();
        let body: Value = r
            .body_mut()
            .read_json()
            .with_context(|| format!("{}{path} answered {status} without JSON", self.base))?;
        if status.is_success() {
            return Ok(body);
        }
        if let Some(problems) = body["problems"].as_array() {
            let said: Vec<&str> = problems.iter().filter_map(Value::as_str).collect();
            return Err(anyhow!(
                "failing (HTTP {}): {}",
                status.as_u16(),
                said.join("; ")
            ));
        }
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"].as_str().unwrap_or("(no message)");
        Err(anyhow!("{code}: {message} (HTTP {})", status.as_u16()))
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.agent.get(format!("{}{path}", self.base)).call();
        self.answer(path, r)
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Value> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let r = req.send_json(body);
        self.answer(path, r)
    }
}

/// Runs one command.
pub fn run(args: ConsensusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target.api)?;
    let out = args.target.output;
    let value = match args.command {
        ConsensusCommand::RoundStatus { round_id } => client.get(&format!(
            "/api/v1/consensus/rounds/{}/status",
            segment(&round_id)?
        ))?,
        ConsensusCommand::Metrics => client.get("/api/v1/consensus/metrics")?,
        ConsensusCommand::Health { check } => client.get(match check {
            HealthCheck::Consensus => "/health/consensus",
            HealthCheck::Ibft => "/health/ibft",
            HealthCheck::Hotstuff => "/health/hotstuff",
            HealthCheck::Livez => "/livez",
            HealthCheck::Readyz => "/readyz",
        })?,
        ConsensusCommand::ListRounds { status, limit } => match status {
            RoundFilter::Active => client.get("/api/v1/consensus/rounds/active")?,
            RoundFilter::Committed => {
                client.get(&format!("/api/v1/consensus/rounds/history?limit={limit}"))?
            }
        },
        ConsensusCommand::History { limit } => {
            client.get(&format!("/api/v1/consensus/rounds/history?limit={limit}"))?
        }
        ConsensusCommand::Ibft(c) => match c {
            IbftCommand::State { round_id } => client.get(&format!(
                "/api/v1/consensus/ibft/state/{}",
                segment(&round_id)?
            ))?,
            IbftCommand::Votes { round_id } => client.get(&format!(
                "/api/v1/consensus/ibft/votes/{}",
                segment(&round_id)?
            ))?,
            IbftCommand::Proposal { round_id } => client.get(&format!(
                "/api/v1/consensus/ibft/proposal/{}",
                segment(&round_id)?
            ))?,
            IbftCommand::Vote(v) => vote(&client, v)?,
        },
        ConsensusCommand::Hotstuff(c) => match c {
            HotStuffCommand::Pipeline { watch, interval } => {
                if watch {
                    return watch_pipeline(&client, out, interval);
                }
                client.get("/api/v1/consensus/hotstuff/pipeline")?
            }
            HotStuffCommand::Metrics => client.get("/api/v1/consensus/hotstuff/metrics")?,
            HotStuffCommand::Execution { round_id } => client.get(&format!(
                "/api/v1/consensus/hotstuff/execution/{}",
                segment(&round_id)?
            ))?,
            HotStuffCommand::SetDepth { depth, token_file } => {
                let token = bpci::node::keys::read_token(&token_file)?;
                client.post(
                    "/api/v1/consensus/hotstuff/depth",
                    Some(&token),
                    &serde_json::json!({ "depth": depth }),
                )?
            }
        },
    };
    print(&value, out)?;
    Ok(ExitCode::SUCCESS)
}

fn vote(client: &Client, v: VoteArgs) -> anyhow::Result<Value> {
    let token = bpci::node::keys::read_token(&v.token_file)?;
    let signature = match (&v.signature, &v.key_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => {
            let key = bpci::node::keys::read(path)?;
            let info = client.get("/api/v1/node")?;
            let chain_id = info["chain_id"]
                .as_str()
                .ok_or_else(|| anyhow!("the node's /api/v1/node names no chain_id"))?;
            let epoch = info["epoch"]
                .as_u64()
                .ok_or_else(|| anyhow!("the node's /api/v1/node names no epoch"))?;
            let block: [u8; 32] = hex::decode(v.block_hash.trim_start_matches("0x"))
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow!("--block-hash must be 0x and 64 hex digits"))?;
            let data = bpci::consensus::VoteData {
                block_id: bpci::types::BlockId(block),
                round: bpci::types::Round(v.round_number),
                height: bpci::types::Height(v.height),
            };
            let sig = key.sign(&data.digest(chain_id, bpci::types::Epoch(epoch)));
            format!("ed25519:{sig}")
        }
        (None, None) => return Err(anyhow!("give --key-file to sign the vote, or --signature")),
    };
    client.post(
        "/api/v1/consensus/ibft/vote",
        Some(&token),
        &serde_json::json!({
            "validator_id": v.validator_id,
            "vote_type": v.vote_type,
            "block_hash": v.block_hash,
            "round_number": v.round_number,
            "height": v.height,
            "signature": signature,
        }),
    )
}

/// A path segment: refused when it would change the path (the node answers malformed ids).
fn segment(s: &str) -> anyhow::Result<&str> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(anyhow!(
            "{s:?} is not a round id (round-<height>, letters, digits and dashes)"
        ));
    }
    Ok(s)
}

fn watch_pipeline(client: &Client, out: Output, interval: f64) -> anyhow::Result<ExitCode> {
    if !(interval.is_finite() && (0.1..=3600.0).contains(&interval)) {
        return Err(anyhow!("--interval must be between 0.1 and 3600 seconds"));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, std::sync::Arc::clone(&stop))
        .context("installing the Ctrl-C handler")?;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let v = client.get("/api/v1/consensus/hotstuff/pipeline")?;
        if out == Output::Table {
            // Clear the screen and home the cursor, then the fresh table.
            print!("\x1b[2J\x1b[H");
        }
        print(&v, out)?;
        std::io::stdout().flush().ok();
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
    Ok(ExitCode::SUCCESS)
}

fn print(v: &Value, out: Output) -> anyhow::Result<()> {
    let text = match out {
        Output::Json => serde_json::to_string_pretty(v)?,
        Output::Table => table(v),
    };
    println!("{text}");
    Ok(())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        }),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Scalars of `v` (objects flattened with dotted keys), arrays left out.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Array(_) => {}
        other => {
            if let Some(s) = scalar(other) {
                out.push((prefix.to_string(), s));
            }
        }
    }
}

/// Key/value lines for the scalars, then one aligned table per array of objects.
fn table(v: &Value) -> String {
    let mut lines = Vec::new();
    let mut pairs = Vec::new();
    flatten("", v, &mut pairs);
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, x) in &pairs {
        lines.push(format!("{k:<width$}  {x}"));
    }
    let mut arrays = Vec::new();
    collect_arrays("", v, &mut arrays);
    for (name, items) in arrays {
        lines.push(String::new());
        lines.push(format!("{name} ({})", items.len()));
        let rows: Vec<Vec<(String, String)>> = items
            .iter()
            .map(|i| {
                let mut r = Vec::new();
                flatten("", i, &mut r);
                r
            })
            .collect();
        let mut cols: Vec<String> = Vec::new();
        for r in &rows {
            for (k, _) in r {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        if cols.is_empty() {
            for i in items {
                lines.push(format!("  {}", scalar(i).unwrap_or_else(|| i.to_string())));
            }
            continue;
        }
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                cols.iter()
                    .map(|c| {
                        r.iter()
                            .find(|(k, _)| k == c)
                            .map_or_else(|| "-".to_string(), |(_, x)| x.clone())
                    })
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(j, c)| {
                cells
                    .iter()
                    .map(|r| r[j].len())
                    .max()
                    .unwrap_or(0)
                    .max(c.len())
            })
            .collect();
        let fmt_row = |r: &[String]| {
            r.iter()
                .zip(&widths)
                .map(|(x, w)| format!("{x:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        lines.push(format!("  {}", fmt_row(&cols)));
        for r in &cells {
            lines.push(format!("  {}", fmt_row(r)));
        }
    }
    lines.join("\n")
}

fn collect_arrays<'a>(prefix: &str, v: &'a Value, out: &mut Vec<(String, &'a Vec<Value>)>) {
    if let Value::Object(m) = v {
        for (k, x) in m {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match x {
                Value::Array(items) => out.push((key, items)),
                Value::Object(_) => collect_arrays(&key, x, out),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lists_scalars_then_arrays_as_columns() {
        let v = serde_json::json!({
            "depth": 3,
            "stages": [{"name": "a", "items": 1}, {"name": "bb", "items": 22}],
            "times": {"proposed_ms": 5, "durable_ms": null},
        });
        let t = table(&v);
        assert!(t.contains("depth"), "{t}");
        assert!(t.contains("times.proposed_ms  5"), "{t}");
        assert!(t.contains("times.durable_ms   -"), "{t}");
        assert!(t.contains("stages (2)"), "{t}");
        // Columns in key order (serde_json's objects are sorted).
        assert!(t.contains("  items  name"), "{t}");
        assert!(t.contains("  22     bb"), "{t}");
    }

    #[test]
    fn round_ids_that_would_change_the_path_are_refused() {
        assert!(segment("round-5").is_ok());
        for bad in ["", "../metrics", "round-5?x=1", "a/b", "round 5"] {
            assert!(segment(bad).is_err(), "{bad}");
        }
    }
}
