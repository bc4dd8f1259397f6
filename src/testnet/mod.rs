//! A local multi-process testnet: keys, configs and `bpci node` processes on 127.0.0.1, the
//! faults a run may apply to them ([`faults`]), and the check of their stored chains after a
//! run ([`chain`]).

pub mod chain;
pub mod faults;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::crypto::Keypair;

/// Parses `30s`, `500ms`, `2m` or a bare number of seconds (more than zero, at most 24 h).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("{:?} must be between 1ms and 24h", s.trim()));
    }
    Ok(d)
}

/// Like [`parse_duration`], zero allowed (`0s` turns a warm-up off).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} must be between 0 and 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The chain id of every testnet's validators.
pub const CHAIN_ID: &str = "bpci-testnet";

/// Settings of a local testnet.
#[derive(Clone, Debug)]
pub struct TestnetConfig {
    /// Validators.
    pub validators: usize,
    /// Where keys, configs, data and logs go.
    pub dir: PathBuf,
    /// `hotstuff.pipeline_depth`.
    pub pipeline_depth: u32,
    /// `ibft.phase_timeout_seconds` (round timer base).
    pub phase_timeout_seconds: f64,
    /// `hotstuff.view_timeout_seconds` (round timer cap).
    pub view_timeout_seconds: f64,
    /// `tuning.mempool_max_txs`, if set.
    pub mempool_max_txs: Option<u32>,
    /// The audit trail in each validator's log (`consensus_logging.level: detailed` with
    /// `include_validator_votes`).
    pub audit: bool,
}

impl TestnetConfig {
    /// Defaults for `n` validators in `dir`.
    pub fn new(validators: usize, dir: PathBuf) -> Self {
        Self {
            validators,
            dir,
            pipeline_depth: 3,
            phase_timeout_seconds: 1.0,
            view_timeout_seconds: 8.0,
            mempool_max_txs: None,
            audit: false,
        }
    }
}

/// One validator of the testnet.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Its config file.
    pub config: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its client endpoint.
    pub client_addr: SocketAddr,
    /// Its HTTP API.
    pub http_addr: SocketAddr,
    /// Its public key.
    pub key: [u8; 32],
    /// Its log file.
    pub log: PathBuf,
}

/// Why the testnet could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// File or process I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds something other than an earlier testnet.
    #[error("{0} is not empty and is not a bpci testnet directory: refusing to clear it")]
    DirNotEmpty(String),
    /// Keys.
    #[error(transparent)]
    Key(#[from] crate::node::keys::KeyFileError),
    /// Nodes did not connect in time.
    #[error("validators not ready after {0:?}: {1}")]
    NotReady(Duration, String),
    /// Stopped (Ctrl-C) while waiting for the validators.
    #[error("interrupted while waiting for the validators to connect")]
    Interrupted,
    /// A thread of the testnet's own (the fault runner) panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestnetError {
    let what = what.into();
    move |source| TestnetError::Io { what, source }
}

/// `n` distinct free UDP ports on 127.0.0.1. Every socket is held until all are picked: a port
/// picked and released at once could be handed out again by the next pick, and two validators
/// given the same port left one unable to start ("Address already in use").
fn free_ports(n: usize) -> Result<Vec<u16>, TestnetError> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").map_err(io("finding a free port")))
        .collect::<Result<Vec<_>, _>>()?;
    sockets
        .iter()
        .map(|s| Ok(s.local_addr().map_err(io("finding a free port"))?.port()))
        .collect()
}

/// `n` TCP ports free on loopback now (for the validators' HTTP APIs).
fn free_tcp_ports(n: usize) -> Result<Vec<u16>, TestnetError> {
    let sockets = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port")))
        .collect::<Result<Vec<_>, _>>()?;
    sockets
        .iter()
        .map(|s| Ok(s.local_addr().map_err(io("finding a free port"))?.port()))
        .collect()
}

/// Bytes of block data `validators` validators store when `rate` transactions of `tx_size`
/// bytes a second commit for `duration`: every validator keeps every block, and a transaction
/// costs its bytes plus its length prefix and a share of its block's header and proofs (16
/// bytes is generous at any block size the testnet makes).
pub fn block_bytes_estimate(
    validators: usize,
    rate: u64,
    duration: Duration,
    tx_size: usize,
) -> u64 {
    let per_validator = (rate as f64 * duration.as_secs_f64() * (tx_size as f64 + 16.0)) as u64;
    per_validator.saturating_mul(validators as u64)
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
///
/// # Errors
/// `statvfs` failing (for example, `dir` missing).
pub fn available_bytes(dir: &Path) -> Result<u64, TestnetError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| TestnetError::Io {
        what: format!("checking the free space of {}", dir.display()),
        source: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The operator token file a testnet writes beside its configs (mode 0600).
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";

/// Writes keys and configs for a fresh testnet. A directory of an earlier testnet is cleared
/// first; any other non-empty directory is refused.
pub fn write(cfg: &TestnetConfig) -> Result<Vec<NodeInfo>, TestnetError> {
    const MARKER: &str = ".bpci-testnet";
    if cfg.dir.exists() {
        let empty = std::fs::read_dir(&cfg.dir)
            .map_err(io(format!("reading {}", cfg.dir.display())))?
            .next()
            .is_none();
        if !empty && !cfg.dir.join(MARKER).exists() {
            return Err(TestnetError::DirNotEmpty(cfg.dir.display().to_string()));
        }
        std::fs::remove_dir_all(&cfg.dir).map_err(io(format!("clearing {}", cfg.dir.display())))?;
    }
    std::fs::create_dir_all(&cfg.dir).map_err(io(format!("creating {}", cfg.dir.display())))?;
    std::fs::write(
        cfg.dir.join(MARKER),
        "written by bpci testnet; the directory is cleared on the next run\n",
    )
    .map_err(io("writing the testnet marker"))?;
    let dir = std::fs::canonicalize(&cfg.dir).map_err(io("resolving the directory"))?;
    let mut keys = Vec::new();
    for i in 0..cfg.validators {
        let key = Keypair::generate(&mut rand::rngs::OsRng);
        crate::node::keys::write(&dir.join(format!("validator-{i}.key")), &key)?;
        keys.push(key);
    }
    // Each validator's peer port and client port.
    let picked = free_ports(2 * cfg.validators)?;
    let ports: Vec<(u16, u16)> = picked.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let http_ports = free_tcp_ports(cfg.validators)?;
    // One operator token for the testnet's validators (mutating API calls).
    let token_file = dir.join(OPERATOR_TOKEN_FILE);
    let token = crate::node::keys::new_token();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .map_err(io(format!("writing {}", token_file.display())))?;
        writeln!(f, "{token}").map_err(io(format!("writing {}", token_file.display())))?;
    }
    let validators: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "  - validator_id: \"validator-{i:03}\"\n    stake: 1000000\n    endpoint: \"127.0.0.1:{}\"\n    public_key: \"{}\"\n    is_active: true\n",
                ports[i].0,
                k.public()
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let data_dir = dir.join(format!("data-{i}"));
        let config = dir.join(format!("validator-{i}.yaml"));
        let f = (cfg.validators - 1) / 3;
        let text = format!(
            r#"triple_consensus:
  coordinator:
    max_active_rounds: 10
    round_timeout_seconds: 30
    validator_timeout_seconds: 10
  ibft:
    byzantine_tolerance_ratio: 0.33
    required_vote_threshold: 0.67
    phase_timeout_seconds: {phase}
    signature_verification: true
  hotstuff:
    pipeline_depth: {depth}
    optimistic_execution: true
    view_timeout_seconds: {view}
    leader_rotation_enabled: true
  auction:
    bid_evaluation_timeout_seconds: 5
    mev_protection_enabled: true
    priority_weight: 0.3
    economic_weight: 0.7
validators:
{validators}consensus_thresholds:
  minimum_validators: {n}
  byzantine_fault_tolerance: {f}
  stake_threshold: 500000
logging:
  level: "info"
  format: "json"
{audit}node:
  validator_id: "validator-{i:03}"
  key_file: "{key}"
  data_dir: "{data}"
  chain_id: "{chain_id}"
  client_listen: "127.0.0.1:{client}"
  http_listen: "127.0.0.1:{http}"
  operator_token_file: "{token}"
{tuning}"#,
            chain_id = CHAIN_ID,
            phase = cfg.phase_timeout_seconds,
            depth = cfg.pipeline_depth,
            view = cfg.view_timeout_seconds,
            n = cfg.validators,
            key = dir.join(format!("validator-{i}.key")).display(),
            data = data_dir.display(),
            client = ports[i].1,
            http = http_ports[i],
            audit = if cfg.audit {
                "  consensus_logging:\n    enabled: true\n    level: \"detailed\"\n    include_validator_votes: true\n"
            } else {
                ""
            },
            token = token_file.display(),
            tuning = cfg
                .mempool_max_txs
                .map(|n| format!("tuning:\n  mempool_max_txs: {n}\n"))
                .unwrap_or_default(),
        );
        std::fs::write(&config, text).map_err(io(format!("writing {}", config.display())))?;
        nodes.push(NodeInfo {
            config,
            data_dir,
            client_addr: SocketAddr::from(([127, 0, 0, 1], ports[i].1)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], http_ports[i])),
            key: k.public().to_bytes(),
            log: dir.join(format!("validator-{i}.log")),
        });
    }
    Ok(nodes)
}

/// Running validator processes; stopped on drop.
pub struct Testnet {
    exe: PathBuf,
    /// The validators.
    pub nodes: Vec<NodeInfo>,
    procs: Vec<Option<Child>>,
}

impl Testnet {
    /// Starts every validator as `exe node --config ...`.
    pub fn start(exe: &Path, nodes: Vec<NodeInfo>) -> Result<Self, TestnetError> {
        let mut t = Self {
            exe: exe.to_path_buf(),
            procs: nodes.iter().map(|_| None).collect(),
            nodes,
        };
        for i in 0..t.nodes.len() {
            t.spawn(i)?;
        }
        Ok(t)
    }

    fn spawn(&mut self, i: usize) -> Result<(), TestnetError> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("opening {}", node.log.display())))?;
        let err = log.try_clone().map_err(io("duplicating the log handle"))?;
        let child = Command::new(&self.exe)
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {}", self.exe.display())))?;
        self.procs[i] = Some(child);
        Ok(())
    }

    /// The process id of validator `i`, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs.get(i).and_then(|p| p.as_ref()).map(|c| c.id())
    }

    /// `kill -9` validator `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs.get_mut(i).and_then(|p| p.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts validator `i` from its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), TestnetError> {
        self.kill(i);
        self.spawn(i)
    }

    /// Starts validator `i` from its data directory if it is not running.
    pub fn start_node(&mut self, i: usize) -> Result<(), TestnetError> {
        if self.is_running(i) {
            return Ok(());
        }
        self.spawn(i)
    }

    /// Whether validator `i`'s process is running (or paused).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.procs.get_mut(i).and_then(|p| p.as_mut()) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` to validator `i`, if running.
    fn signal(&self, i: usize, signal: rustix::process::Signal) -> Result<(), TestnetError> {
        let Some(pid) = self
            .pid(i)
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        else {
            return Ok(());
        };
        rustix::process::kill_process(pid, signal).map_err(|e| TestnetError::Io {
            what: format!("signalling validator {i}"),
            source: e.into(),
        })
    }

    /// Pauses validator `i` (`SIGSTOP`): it keeps its sockets and state and does nothing.
    pub fn pause(&self, i: usize) -> Result<(), TestnetError> {
        self.signal(i, rustix::process::Signal::STOP)
    }

    /// Resumes a paused validator `i` (`SIGCONT`).
    pub fn resume(&self, i: usize) -> Result<(), TestnetError> {
        self.signal(i, rustix::process::Signal::CONT)
    }

    /// Stops every validator at once: with `kill`, `SIGKILL` to each in turn (no validator
    /// learns of the others' end first); else `SIGTERM` to each, then `SIGKILL` to any still
    /// running after `grace`.
    pub fn stop_all(&mut self, kill: bool, grace: Duration) {
        let signal = if kill {
            rustix::process::Signal::KILL
        } else {
            rustix::process::Signal::TERM
        };
        for i in 0..self.procs.len() {
            let _ = self.signal(i, signal);
        }
        let deadline = Instant::now() + grace;
        for p in self.procs.iter_mut() {
            if let Some(c) = p.as_mut() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            *p = None;
        }
    }

    /// The latest `stats.json` of validator `i`.
    pub fn stats(&self, i: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.nodes[i].data_dir.join("stats.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Committed height of validator `i` (0 if unknown).
    pub fn height(&self, i: usize) -> u64 {
        self.stats(i)
            .and_then(|s| s["core"]["committed_height"].as_u64())
            .unwrap_or(0)
    }

    /// Peak resident set of validator `i` in MiB (Linux `VmHWM`).
    pub fn peak_rss_mb(&self, i: usize) -> Option<f64> {
        let pid = self.pid(i)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// Waits until every running validator is connected to all others and committing.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), TestnetError> {
        self.wait_ready_unless(timeout, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Testnet::wait_ready`], giving up with [`TestnetError::Interrupted`] as soon as `stop` is
    /// set (Ctrl-C).
    pub fn wait_ready_unless(
        &self,
        timeout: Duration,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(), TestnetError> {
        let deadline = Instant::now() + timeout;
        let n = self.nodes.len() as u64;
        loop {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                return Err(TestnetError::Interrupted);
            }
            let ready = (0..self.nodes.len()).all(|i| {
                self.stats(i).is_some_and(|s| {
                    s["transport"]["connected_peers"].as_u64() == Some(n - 1)
                        && s["core"]["committed_height"].as_u64().unwrap_or(0) > 0
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(3).collect();
                        format!("{}: {}", n.log.display(), tail.join(" | "))
                    })
                    .collect();
                return Err(TestnetError::NotReady(timeout, logs.join("; ")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every validator: SIGTERM (and SIGCONT, for a paused one), then SIGKILL after a
    /// grace period.
    pub fn stop(&mut self) {
        for i in 0..self.procs.len() {
            let _ = self.resume(i);
        }
        self.stop_all(false, Duration::from_secs(3));
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The space estimate scales with rate and saturates instead of overflowing; the free
    /// space of a missing directory is an error, not zero.
    #[test]
    fn block_bytes_grow_with_every_factor() {
        let one = block_bytes_estimate(4, 1_000, Duration::from_secs(10), 512);
        assert_eq!(one, 4 * 1_000 * 10 * (512 + 16));
        assert_eq!(
            block_bytes_estimate(4, 2_000, Duration::from_secs(10), 512),
            2 * one
        );
        assert!(block_bytes_estimate(31, u64::MAX, Duration::from_secs(1 << 40), 65_536) > 0);
        assert!(available_bytes(Path::new("/nonexistent/bpci")).is_err());
        assert!(available_bytes(Path::new(".")).unwrap() > 0);
    }

    /// Ports picked together are distinct (each socket is held until all are picked).
    #[test]
    fn ports_picked_together_are_distinct() {
        let ports = super::free_ports(256).unwrap();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| *p != 0));
    }

    #[test]
    fn durations_parse_with_units_and_refuse_bad_values_by_name() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("between 1ms and 24h"));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("25h").is_err());
        assert!(parse_duration("5x").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").unwrap_err().contains("\"fast\""));
    }
}
