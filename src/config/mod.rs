//! The node's YAML configuration: the spec's keys (`triple_consensus`, `validators`,
//! `consensus_thresholds`, `logging`) plus this node's own `node` and `tuning` sections.
//!
//! Unknown keys are refused, and every check names the key it failed on, for example
//! ``config key `triple_consensus.hotstuff.pipeline_depth`: must be between 1 and 64, got 0``.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::consensus::{Validator, ValidatorSet};
use crate::crypto::PublicKey;
use crate::types::{Epoch, Stake};

/// Most pipeline depth accepted.
pub const MAX_PIPELINE_DEPTH: u32 = 64;
/// Default QUIC port when an endpoint names none (the spec's Dockerfile exposes 8081).
pub const DEFAULT_P2P_PORT: u16 = 8081;

/// A configuration error that names the key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The YAML does not parse or does not match the schema (unknown key, wrong type).
    #[error("config does not parse: {0}")]
    Parse(String),
    /// A key holds a bad value.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
}

/// `value` is one of `allowed`, or the error names `key`.
fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// The `logging` section's values.
fn check_logging(l: &Logging) -> Result<(), ConfigError> {
    use crate::logs::{CONSENSUS_LEVELS, FORMATS, LEVELS, OUTPUT_TYPES};
    one_of("logging.level", &l.level, &LEVELS)?;
    one_of("logging.format", &l.format, &FORMATS)?;
    for (i, o) in l.outputs.iter().enumerate() {
        one_of(
            &format!("logging.outputs[{i}].type"),
            &o.kind,
            &OUTPUT_TYPES,
        )?;
        if o.kind == "file" && o.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
            return Err(invalid(
                format!("logging.outputs[{i}].path"),
                "a file output needs a path",
            ));
        }
    }
    if let Some(c) = &l.consensus_logging {
        one_of(
            "logging.consensus_logging.level",
            &c.level,
            &CONSENSUS_LEVELS,
        )?;
        if c.include_auction_bids {
            return Err(invalid(
                "logging.consensus_logging.include_auction_bids",
                "there is no auction in this build, so no bids to log: set it false or leave it out",
            ));
        }
    }
    Ok(())
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// `triple_consensus.coordinator`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Coordinator {
    /// Most heights `GET /api/v1/consensus/rounds/active` lists (the newest in flight),
    /// [`MAX_ACTIVE_ROUNDS_RANGE`].
    pub max_active_rounds: u32,
    /// Seconds a height may stay proposed without committing before the API reports its round
    /// as timed out (`timed_out` in round statuses), [`ROUND_TIMEOUT_SECONDS_RANGE`].
    pub round_timeout_seconds: u64,
    /// Seconds without a packet from a validator before its QUIC connection is closed and it
    /// counts as disconnected (the transport's idle timeout; keep-alives go every 2 s),
    /// [`VALIDATOR_TIMEOUT_SECONDS_RANGE`].
    pub validator_timeout_seconds: u64,
}

/// Accepted `triple_consensus.coordinator.max_active_rounds`.
pub const MAX_ACTIVE_ROUNDS_RANGE: std::ops::RangeInclusive<u32> = 1..=4096;
/// Accepted `triple_consensus.coordinator.round_timeout_seconds`.
pub const ROUND_TIMEOUT_SECONDS_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// Accepted `triple_consensus.coordinator.validator_timeout_seconds`: above the 2 s keep-alive.
pub const VALIDATOR_TIMEOUT_SECONDS_RANGE: std::ops::RangeInclusive<u64> = 3..=600;

/// `triple_consensus.ibft`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ibft {
    /// Fraction of stake that may be Byzantine (must be below 1/3).
    pub byzantine_tolerance_ratio: f64,
    /// Vote threshold; the protocol always requires strictly more than 2/3 of the stake.
    pub required_vote_threshold: f64,
    /// Base round timer in seconds (the pacemaker's `base`).
    pub phase_timeout_seconds: f64,
    /// Must be true: signatures are always verified.
    pub signature_verification: bool,
}

/// `triple_consensus.hotstuff`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HotStuff {
    /// Committed blocks that may wait for execution and persistence while ordering runs ahead.
    pub pipeline_depth: u32,
    /// Execute certified blocks before they commit.
    pub optimistic_execution: bool,
    /// Cap of the round timer, in seconds.
    pub view_timeout_seconds: f64,
    /// Must be true: leaders rotate by the stake-weighted schedule.
    pub leader_rotation_enabled: bool,
}

/// `triple_consensus.auction`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auction {
    /// Seconds allowed for bid evaluation.
    pub bid_evaluation_timeout_seconds: f64,
    /// Sealed bids (commit-reveal) when true; clear bundles when false.
    pub mev_protection_enabled: bool,
    /// Weight of the priority score.
    pub priority_weight: f64,
    /// Weight of the normalised bid.
    pub economic_weight: f64,
}

/// `triple_consensus`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TripleConsensus {
    /// Coordinator settings.
    pub coordinator: Coordinator,
    /// IBFT (ordering) settings.
    pub ibft: Ibft,
    /// HotStuff (pipelining) settings.
    pub hotstuff: HotStuff,
    /// Auction settings.
    pub auction: Auction,
}

/// One entry of `validators`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    /// Unique name.
    pub validator_id: String,
    /// Stake (> 0).
    pub stake: u64,
    /// Where its QUIC endpoint listens: `host:port`, `quic://host:port` or `https://host[:port]`.
    pub endpoint: String,
    /// `ed25519:<64 hex>`.
    pub public_key: String,
    /// Inactive validators are not part of the set.
    #[serde(default = "yes")]
    pub is_active: bool,
}

fn yes() -> bool {
    true
}

/// `consensus_thresholds`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsensusThresholds {
    /// Fewest active validators the node accepts.
    pub minimum_validators: usize,
    /// f: Byzantine validators tolerated; requires n > 3f.
    pub byzantine_fault_tolerance: usize,
    /// Least stake of an active validator.
    pub stake_threshold: u64,
}

/// One `logging.outputs` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogOutput {
    /// `file`, `stdout` or `elasticsearch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// File path for `file`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// URL for `elasticsearch`.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `logging.consensus_logging`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsensusLogging {
    /// Log consensus events.
    pub enabled: bool,
    /// `summary` or `detailed`.
    pub level: String,
    /// With `level: detailed`, an audit event per vote sent or received too.
    #[serde(default)]
    pub include_validator_votes: bool,
    /// Refused when true: no auction in this build.
    #[serde(default)]
    pub include_auction_bids: bool,
}

/// `logging`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `json` or `text`.
    pub format: String,
    /// Where logs go.
    #[serde(default)]
    pub outputs: Vec<LogOutput>,
    /// Consensus event logging.
    #[serde(default)]
    pub consensus_logging: Option<ConsensusLogging>,
}

/// `node`: this validator's own settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Which entry of `validators` this node is.
    pub validator_id: String,
    /// The secret key file written by `bpci keys generate`.
    pub key_file: PathBuf,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The chain's id, bound into every signature.
    #[serde(default = "default_chain_id")]
    pub chain_id: String,
    /// Validator-to-validator QUIC address (defaults to this validator's endpoint).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Client QUIC endpoint (transactions, bundles).
    #[serde(default)]
    pub client_listen: Option<SocketAddr>,
    /// The HTTP API, health checks and Prometheus metrics (absent: [`DEFAULT_HTTP_LISTEN`]).
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// A file (mode 0600) holding the operator token that mutating API calls must carry
    /// (`Authorization: Bearer <token>`). Absent: mutating calls are refused.
    #[serde(default)]
    pub operator_token_file: Option<PathBuf>,
    /// Seconds without a commit after which `/health/*` answer 503 and `/readyz` fails
    /// ([`HEALTH_STALL_SECONDS_RANGE`]; absent: [`DEFAULT_HEALTH_STALL_SECONDS`]).
    #[serde(default)]
    pub health_stall_seconds: Option<f64>,
}

/// Where the HTTP API listens when `node.http_listen` is absent.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// `node.health_stall_seconds` when absent.
pub const DEFAULT_HEALTH_STALL_SECONDS: f64 = 10.0;
/// Accepted `node.health_stall_seconds`.
pub const HEALTH_STALL_SECONDS_RANGE: std::ops::RangeInclusive<f64> = 1.0..=3600.0;

fn default_chain_id() -> String {
    "bpci-local".into()
}

/// `tuning`: how the pipeline uses the machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Pin each stage thread to a core (when there are enough cores).
    #[serde(default)]
    pub pin_threads: bool,
    /// Largest UDP payload of a QUIC packet (1200..=6500). Absent: 6000 on loopback, otherwise
    /// 1200 raised by path MTU discovery up to 1452. Set it on jumbo-frame networks.
    #[serde(default)]
    pub max_udp_payload_bytes: Option<u16>,
    /// Leave transparent huge pages on for the node (default off: see
    /// [`crate::pipeline::disable_transparent_huge_pages`]).
    #[serde(default)]
    pub transparent_huge_pages: bool,
    /// Most transaction bytes in one of this node's proposals
    /// ([`MIN_BLOCK_BYTES`]..=[`MAX_BLOCK_BYTES`]). Absent:
    /// [`crate::node::DEFAULT_MAX_BLOCK_BYTES`].
    #[serde(default)]
    pub max_block_bytes: Option<u32>,
    /// Most transactions waiting in this node's mempool ([`MEMPOOL_MAX_TXS_RANGE`]); past it
    /// clients are answered "busy". Absent: the mempool's default (200,000).
    #[serde(default)]
    pub mempool_max_txs: Option<u32>,
    /// Most transaction bytes waiting in this node's mempool ([`MEMPOOL_MAX_BYTES_RANGE`]);
    /// past it clients are answered "busy". Absent: the mempool's default (256 MiB).
    #[serde(default)]
    pub mempool_max_bytes: Option<u64>,
}

/// Accepted `tuning.mempool_max_txs`.
pub const MEMPOOL_MAX_TXS_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000_000;
/// Accepted `tuning.mempool_max_bytes`: from one largest transaction (64 KiB) to 16 GiB.
pub const MEMPOOL_MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(16 << 30);

/// Smallest `tuning.max_block_bytes`: one largest transaction fits.
pub const MIN_BLOCK_BYTES: u32 = 64 << 10;
/// Largest `tuning.max_block_bytes`: the encoded payload (transactions plus a length prefix
/// each, at most 20,000 of them) stays under the 8 MiB every validator accepts.
pub const MAX_BLOCK_BYTES: u32 = 7 << 20;

/// The whole file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Consensus settings.
    pub triple_consensus: TripleConsensus,
    /// The validator set, in index order.
    pub validators: Vec<ValidatorEntry>,
    /// Set-level thresholds.
    #[serde(default)]
    pub consensus_thresholds: Option<ConsensusThresholds>,
    /// Logging.
    #[serde(default)]
    pub logging: Option<Logging>,
    /// This node.
    pub node: NodeSection,
    /// Tuning profile.
    #[serde(default)]
    pub tuning: Tuning,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file as written.
    pub file: ConfigFile,
    /// The active validator set (epoch 1).
    pub validators: ValidatorSet,
    /// Each active validator's QUIC address, by index.
    pub endpoints: Vec<String>,
    /// This node's index in the set.
    pub me: u16,
}

/// Splits an endpoint into `host:port`.
pub fn endpoint_host_port(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("quic://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("{endpoint:?} is not host:port"));
    }
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
    if has_port {
        Ok(rest.to_string())
    } else if rest.contains(':') && !rest.starts_with('[') {
        Err(format!("{endpoint:?} has a bad port"))
    } else {
        Ok(format!("{rest}:{DEFAULT_P2P_PORT}"))
    }
}

impl Config {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::validate(file)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Parse(format!("reading {}: {e}", path.display())))?;
        Self::from_yaml(&text)
    }

    fn validate(file: ConfigFile) -> Result<Config, ConfigError> {
        let tc = &file.triple_consensus;
        let co = &tc.coordinator;
        if !MAX_ACTIVE_ROUNDS_RANGE.contains(&co.max_active_rounds) {
            return Err(invalid(
                "triple_consensus.coordinator.max_active_rounds",
                format!(
                    "must be in {MAX_ACTIVE_ROUNDS_RANGE:?}, got {}",
                    co.max_active_rounds
                ),
            ));
        }
        if !ROUND_TIMEOUT_SECONDS_RANGE.contains(&co.round_timeout_seconds) {
            return Err(invalid(
                "triple_consensus.coordinator.round_timeout_seconds",
                format!(
                    "must be in {ROUND_TIMEOUT_SECONDS_RANGE:?}, got {}",
                    co.round_timeout_seconds
                ),
            ));
        }
        if !VALIDATOR_TIMEOUT_SECONDS_RANGE.contains(&co.validator_timeout_seconds) {
            return Err(invalid(
                "triple_consensus.coordinator.validator_timeout_seconds",
                format!(
                    "must be in {VALIDATOR_TIMEOUT_SECONDS_RANGE:?} (above the transport's 2 s keep-alive), got {}",
                    co.validator_timeout_seconds
                ),
            ));
        }
        let ibft = &tc.ibft;
        if !(0.0..1.0 / 3.0 + 1e-3).contains(&ibft.byzantine_tolerance_ratio) {
            return Err(invalid(
                "triple_consensus.ibft.byzantine_tolerance_ratio",
                format!(
                    "must be in [0, 1/3), got {}",
                    ibft.byzantine_tolerance_ratio
                ),
            ));
        }
        if !(0.66..=1.0).contains(&ibft.required_vote_threshold) {
            return Err(invalid(
                "triple_consensus.ibft.required_vote_threshold",
                format!(
                    "must be in [0.66, 1] (the protocol always requires more than 2/3 of the stake), got {}",
                    ibft.required_vote_threshold
                ),
            ));
        }
        if !(ibft.phase_timeout_seconds > 0.0 && ibft.phase_timeout_seconds <= 3600.0) {
            return Err(invalid(
                "triple_consensus.ibft.phase_timeout_seconds",
                format!("must be in (0, 3600], got {}", ibft.phase_timeout_seconds),
            ));
        }
        if !ibft.signature_verification {
            return Err(invalid(
                "triple_consensus.ibft.signature_verification",
                "must be true: a validator never accepts unverified signatures",
            ));
        }
        let hs = &tc.hotstuff;
        if !(1..=MAX_PIPELINE_DEPTH).contains(&hs.pipeline_depth) {
            return Err(invalid(
                "triple_consensus.hotstuff.pipeline_depth",
                format!(
                    "must be between 1 and {MAX_PIPELINE_DEPTH}, got {}",
                    hs.pipeline_depth
                ),
            ));
        }
        if !(hs.view_timeout_seconds >= ibft.phase_timeout_seconds
            && hs.view_timeout_seconds <= 3600.0)
        {
            return Err(invalid(
                "triple_consensus.hotstuff.view_timeout_seconds",
                format!(
                    "must be at least ibft.phase_timeout_seconds ({}) and at most 3600, got {}",
                    ibft.phase_timeout_seconds, hs.view_timeout_seconds
                ),
            ));
        }
        if !hs.leader_rotation_enabled {
            return Err(invalid(
                "triple_consensus.hotstuff.leader_rotation_enabled",
                "must be true: a fixed leader cannot be replaced when it fails",
            ));
        }
        let a = &tc.auction;
        for (key, w) in [
            (
                "triple_consensus.auction.priority_weight",
                a.priority_weight,
            ),
            (
                "triple_consensus.auction.economic_weight",
                a.economic_weight,
            ),
        ] {
            if !(0.0..=1.0).contains(&w) {
                return Err(invalid(key, format!("must be in [0, 1], got {w}")));
            }
        }
        if ((a.priority_weight + a.economic_weight) - 1.0).abs() > 1e-6 {
            return Err(invalid(
                "triple_consensus.auction",
                format!(
                    "priority_weight + economic_weight must be 1, got {}",
                    a.priority_weight + a.economic_weight
                ),
            ));
        }
        if a.bid_evaluation_timeout_seconds.is_nan() || a.bid_evaluation_timeout_seconds <= 0.0 {
            return Err(invalid(
                "triple_consensus.auction.bid_evaluation_timeout_seconds",
                "must be positive",
            ));
        }

        if let Some(s) = file.node.health_stall_seconds {
            if !HEALTH_STALL_SECONDS_RANGE.contains(&s) {
                return Err(invalid(
                    "node.health_stall_seconds",
                    format!("must be in {HEALTH_STALL_SECONDS_RANGE:?}, got {s}"),
                ));
            }
        }

        if let Some(n) = file.tuning.max_udp_payload_bytes {
            let (min, max) = (
                bpci_transport::MIN_UDP_PAYLOAD,
                bpci_transport::MAX_UDP_PAYLOAD_LIMIT,
            );
            if !(min..=max).contains(&n) {
                return Err(invalid(
                    "tuning.max_udp_payload_bytes",
                    format!(
                        "must be in {min}..={max} (QUIC's minimum; ten GSO segments must fit one 64 KiB send), got {n}"
                    ),
                ));
            }
        }

        if let Some(n) = file.tuning.max_block_bytes {
            if !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&n) {
                return Err(invalid(
                    "tuning.max_block_bytes",
                    format!(
                        "must be in {MIN_BLOCK_BYTES}..={MAX_BLOCK_BYTES} (one largest transaction; the 8 MiB payload limit), got {n}"
                    ),
                ));
            }
        }

        if let Some(n) = file.tuning.mempool_max_txs {
            if !MEMPOOL_MAX_TXS_RANGE.contains(&n) {
                return Err(invalid(
                    "tuning.mempool_max_txs",
                    format!("must be in {MEMPOOL_MAX_TXS_RANGE:?}, got {n}"),
                ));
            }
        }
        if let Some(n) = file.tuning.mempool_max_bytes {
            if !MEMPOOL_MAX_BYTES_RANGE.contains(&n) {
                return Err(invalid(
                    "tuning.mempool_max_bytes",
                    format!(
                        "must be in {MEMPOOL_MAX_BYTES_RANGE:?} (one largest transaction to 16 GiB), got {n}"
                    ),
                ));
            }
        }

        let mut validators = Vec::new();
        let mut endpoints = Vec::new();
        let mut ids = std::collections::HashSet::new();
        let mut me = None;
        for (i, v) in file.validators.iter().enumerate() {
            let key = |field: &str| format!("validators[{i}].{field}");
            if v.validator_id.is_empty() {
                return Err(invalid(key("validator_id"), "must not be empty"));
            }
            if !ids.insert(v.validator_id.as_str()) {
                return Err(invalid(
                    key("validator_id"),
                    format!("{:?} appears twice", v.validator_id),
                ));
            }
            if !v.is_active {
                continue;
            }
            if v.stake == 0 {
                return Err(invalid(key("stake"), "must be positive"));
            }
            if let Some(t) = &file.consensus_thresholds {
                if v.stake < t.stake_threshold {
                    return Err(invalid(
                        key("stake"),
                        format!(
                            "{} is below consensus_thresholds.stake_threshold {}",
                            v.stake, t.stake_threshold
                        ),
                    ));
                }
            }
            let pk = PublicKey::from_str(&v.public_key)
                .map_err(|e| invalid(key("public_key"), e.to_string()))?;
            let endpoint =
                endpoint_host_port(&v.endpoint).map_err(|e| invalid(key("endpoint"), e))?;
            if v.validator_id == file.node.validator_id {
                me = Some(validators.len() as u16);
            }
            validators.push(Validator {
                key: pk,
                stake: Stake(v.stake),
            });
            endpoints.push(endpoint);
        }
        let n = validators.len();
        if n == 0 {
            return Err(invalid("validators", "no active validators"));
        }
        if let Some(t) = &file.consensus_thresholds {
            if n < t.minimum_validators {
                return Err(invalid(
                    "consensus_thresholds.minimum_validators",
                    format!(
                        "{} required, {n} active validators configured",
                        t.minimum_validators
                    ),
                ));
            }
            // 3f in u128, where it cannot overflow: a huge f is refused, not wrapped to a
            // small bound that passes.
            let three_f = 3 * t.byzantine_fault_tolerance as u128;
            if n as u128 <= three_f {
                return Err(invalid(
                    "consensus_thresholds.byzantine_fault_tolerance",
                    format!(
                        "f = {} needs more than 3f = {three_f} validators, have {n}",
                        t.byzantine_fault_tolerance
                    ),
                ));
            }
        }
        let me = me.ok_or_else(|| {
            invalid(
                "node.validator_id",
                format!(
                    "{:?} is not an active entry of validators",
                    file.node.validator_id
                ),
            )
        })?;
        if file.node.chain_id.is_empty() || file.node.chain_id.len() > 64 {
            return Err(invalid("node.chain_id", "must be 1 to 64 characters"));
        }
        let validators = ValidatorSet::new(Epoch(1), validators)
            .map_err(|e| invalid("validators", e.to_string()))?;
        if let Some(l) = &file.logging {
            check_logging(l)?;
        }
        Ok(Config {
            file,
            validators,
            endpoints,
            me,
        })
    }
}

#[cfg(test)]
mod tests;
