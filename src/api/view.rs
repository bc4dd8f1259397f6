//! The read model the node publishes for its API: what every handler reads, and nothing else.
//!
//! - [`RoundLog`]: each recent height's way through the pipeline (proposed, prepared, committed,
//!   executed, durable) with the wall-clock instant of each step, written by the stages as they
//!   go, [`ROUND_LOG_HEIGHTS`] heights deep. Older heights are read from the store.
//! - [`Sample`]: the node's figures (core counters, stages, transport, execution), refreshed by
//!   the node's stats thread every [`SAMPLE_INTERVAL_MS`] ms, the same copy `stats.json` gets.
//! - [`NodeView`]: the above with the durable chain ([`ChainReader`]), the validator set and the
//!   node's progress counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::consensus::{Block, EpochContext};
use crate::node::app::Progress;
use crate::node::clients::Gateway;
use crate::node::committed::CommittedTxs;
use crate::node::stages::CoreSnapshot;
use crate::pipeline::{LatencyHistogram, StageSnapshot, StageStats};
use crate::store::ChainReader;
use crate::types::{BlockId, Height, Round, ValidatorIndex};

/// Heights the [`RoundLog`] keeps (about 7 minutes at 10 blocks/s); older heights' status comes
/// from the store, without the step times.
pub const ROUND_LOG_HEIGHTS: usize = 4096;

/// How often the node refreshes its [`Sample`].
pub const SAMPLE_INTERVAL_MS: u64 = 500;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A step of a height through the node, in order.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A block for this height was proposed (IBFT pre-prepare): seen or made here.
    Proposed,
    /// A quorum certificate for it was seen (IBFT prepare: more than 2/3 of the stake voted).
    Prepared,
    /// Final (IBFT commit: its child was certified one round later).
    Committed,
    /// Executed after its commit.
    Executed,
    /// Written to the store and synced.
    Durable,
}

/// One height in the [`RoundLog`].
#[derive(Clone, Debug, Default)]
pub struct RoundEntry {
    /// The consensus round (view) of the latest block seen for this height.
    pub round: u64,
    /// That block's id.
    pub block_id: Option<BlockId>,
    /// Its proposer.
    pub proposer: Option<ValidatorIndex>,
    /// Its transaction count.
    pub txs: Option<u64>,
    /// The block, held only until it is durable (then the store serves it).
    pub block: Option<Arc<Block>>,
    /// Unix ms of each step reached.
    pub proposed_ms: Option<u64>,
    /// See [`Phase::Prepared`].
    pub prepared_ms: Option<u64>,
    /// See [`Phase::Committed`].
    pub committed_ms: Option<u64>,
    /// See [`Phase::Executed`].
    pub executed_ms: Option<u64>,
    /// See [`Phase::Durable`].
    pub durable_ms: Option<u64>,
    /// The state root after executing it (speculatively before its commit).
    pub state_root: Option<[u8; 32]>,
    /// Whether `state_root` came from optimistic execution before the commit.
    pub speculative: bool,
}

impl RoundEntry {
    /// The furthest step reached.
    pub fn phase(&self) -> Phase {
        if self.durable_ms.is_some() {
            Phase::Durable
        } else if self.executed_ms.is_some() {
            Phase::Executed
        } else if self.committed_ms.is_some() {
            Phase::Committed
        } else if self.prepared_ms.is_some() {
            Phase::Prepared
        } else {
            Phase::Proposed
        }
    }
}

/// Recent heights' steps, written by the node's stages (a short lock per step, a few steps per
/// block), read by the API. Bounded by [`ROUND_LOG_HEIGHTS`].
#[derive(Debug, Default)]
pub struct RoundLog {
    heights: Mutex<BTreeMap<u64, RoundEntry>>,
    /// Unix ms of the latest commit seen (0: none since start).
    last_commit_ms: AtomicU64,
    /// Unix ms when a height last became durable (0: none since start).
    last_durable_ms: AtomicU64,
    /// Unix ms of the latest turn of the consensus stage's loop (it ticks every few ms).
    consensus_turn_ms: AtomicU64,
    /// Equivocation evidence the core reported.
    evidence: AtomicU64,
    /// Proposal-to-commit time of every height committed since start that was seen proposed.
    commit_hist: Mutex<Option<LatencyHistogram>>,
}

impl RoundLog {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<u64, RoundEntry>) -> R) -> R {
        let mut g = self
            .heights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = f(&mut g);
        while g.len() > ROUND_LOG_HEIGHTS {
            g.pop_first();
        }
        r
    }

    /// A block for `height` was proposed (made here or received).
    pub fn proposed(&self, id: BlockId, block: &Arc<Block>, txs: Option<u64>) {
        let now = unix_ms();
        self.with(|m| {
            let e = m.entry(block.height.0).or_default();
            if e.committed_ms.is_some() || e.block_id == Some(id) {
                return;
            }
            *e = RoundEntry {
                round: block.round.0,
                block_id: Some(id),
                proposer: Some(block.author),
                txs,
                block: Some(Arc::clone(block)),
                proposed_ms: Some(now),
                ..RoundEntry::default()
            };
        });
    }

    /// The blocks of a certified path were seen certified (each block's time is set once).
    pub fn prepared<'a>(&self, ids: impl Iterator<Item = (BlockId, &'a Arc<Block>)>) {
        let now = unix_ms();
        self.with(|m| {
            for (id, b) in ids {
                let e = m.entry(b.height.0).or_default();
                if e.block_id.is_none() {
                    e.block_id = Some(id);
                    e.round = b.round.0;
                    e.proposer = Some(b.author);
                    e.block = Some(Arc::clone(b));
                }
                if e.block_id == Some(id) && e.prepared_ms.is_none() {
                    e.prepared_ms = Some(now);
                }
            }
        });
    }

    /// Blocks were committed.
    pub fn committed<'a>(&self, blocks: impl Iterator<Item = (BlockId, &'a Arc<Block>)>) {
        let now = unix_ms();
        self.last_commit_ms.store(now, Ordering::Release);
        let mut took = Vec::new();
        self.with(|m| {
            for (id, b) in blocks {
                let e = m.entry(b.height.0).or_default();
                if e.block_id != Some(id) {
                    // A block committed that this node never saw proposed (caught up by sync).
                    *e = RoundEntry {
                        round: b.round.0,
                        block_id: Some(id),
                        proposer: Some(b.author),
                        block: Some(Arc::clone(b)),
                        ..RoundEntry::default()
                    };
                }
                e.prepared_ms.get_or_insert(now);
                e.committed_ms = Some(now);
                if let Some(p) = e.proposed_ms {
                    took.push(now.saturating_sub(p));
                }
            }
        });
        if !took.is_empty() {
            let mut h = self
                .commit_hist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let h = h.get_or_insert_with(|| LatencyHistogram::new("api.round_duration"));
            for ms in took {
                h.record_n(std::time::Duration::from_millis(ms), 1);
            }
        }
    }

    /// [`LatencyHistogram::cumulative`] of proposal-to-commit times since start.
    pub fn commit_cumulative(&self, bounds_us: &[u64]) -> (u64, f64, Vec<u64>) {
        match self.commit_hist.lock() {
            Ok(h) => h.as_ref().map_or((0, 0.0, vec![0; bounds_us.len()]), |h| {
                h.cumulative(bounds_us)
            }),
            Err(_) => (0, 0.0, vec![0; bounds_us.len()]),
        }
    }

    /// Execution of `height` produced `root` (`speculative`: before its commit).
    pub fn executed(&self, height: u64, id: BlockId, root: [u8; 32], speculative: bool) {
        let now = unix_ms();
        self.with(|m| {
            if let Some(e) = m.get_mut(&height).filter(|e| e.block_id == Some(id)) {
                if speculative && e.committed_ms.is_some() {
                    return;
                }
                e.state_root = Some(root);
                e.speculative = speculative;
                if !speculative {
                    e.executed_ms.get_or_insert(now);
                }
            }
        });
    }

    /// Blocks up to `height` are durable: their bytes are left to the store.
    pub fn durable(&self, heights: impl Iterator<Item = u64>) {
        let now = unix_ms();
        self.last_durable_ms.store(now, Ordering::Release);
        self.with(|m| {
            for h in heights {
                if let Some(e) = m.get_mut(&h) {
                    e.durable_ms.get_or_insert(now);
                    e.executed_ms.get_or_insert(now);
                    e.block = None;
                }
            }
        });
    }

    /// The core reported new equivocation evidence.
    pub fn evidence(&self) {
        self.evidence.fetch_add(1, Ordering::Relaxed);
    }

    /// Equivocation evidence reported since start.
    pub fn evidence_seen(&self) -> u64 {
        self.evidence.load(Ordering::Relaxed)
    }

    /// The consensus stage's loop turned.
    pub fn consensus_turned(&self) {
        self.consensus_turn_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// Unix ms of the latest commit (0: none since start).
    pub fn last_commit_ms(&self) -> u64 {
        self.last_commit_ms.load(Ordering::Acquire)
    }

    /// Unix ms when a height last became durable (0: none since start).
    pub fn last_durable_ms(&self) -> u64 {
        self.last_durable_ms.load(Ordering::Acquire)
    }

    /// Unix ms of the consensus loop's latest turn (0: not yet).
    pub fn consensus_turn_ms(&self) -> u64 {
        self.consensus_turn_ms.load(Ordering::Relaxed)
    }

    /// A copy of one height's entry.
    pub fn get(&self, height: u64) -> Option<RoundEntry> {
        self.with(|m| m.get(&height).cloned())
    }

    /// The entries above `height`, oldest first, without their blocks.
    pub fn above(&self, height: u64) -> Vec<(u64, RoundEntry)> {
        self.with(|m| {
            m.range(height.saturating_add(1)..)
                .map(|(h, e)| {
                    (
                        *h,
                        RoundEntry {
                            block: None,
                            ..e.clone()
                        },
                    )
                })
                .collect()
        })
    }

    /// Up to `limit` committed entries, newest first, without their blocks.
    pub fn history(&self, limit: usize) -> Vec<(u64, RoundEntry)> {
        self.with(|m| {
            m.iter()
                .rev()
                .filter(|(_, e)| e.committed_ms.is_some())
                .take(limit)
                .map(|(h, e)| {
                    (
                        *h,
                        RoundEntry {
                            block: None,
                            ..e.clone()
                        },
                    )
                })
                .collect()
        })
    }

    /// The lowest and highest height held.
    pub fn span(&self) -> Option<(u64, u64)> {
        self.with(|m| Some((*m.first_key_value()?.0, *m.last_key_value()?.0)))
    }

    /// Proposed-to-committed times (ms) of the committed entries held.
    pub fn commit_latencies_ms(&self) -> Vec<u64> {
        self.with(|m| {
            m.values()
                .filter_map(|e| Some(e.committed_ms?.saturating_sub(e.proposed_ms?)))
                .collect()
        })
    }
}

/// Transport figures in a [`Sample`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TransportSample {
    /// Peers with a live QUIC connection.
    pub connected_peers: usize,
    /// Their indices.
    #[serde(skip)]
    pub connected: Vec<u16>,
    /// Handshakes refused or failed.
    pub handshake_failures: u64,
    /// Connections re-established.
    pub reconnects: u64,
    /// Frames that did not decode.
    pub frame_errors: u64,
}

/// Execution figures in a [`Sample`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ExecSample {
    /// Transactions executed.
    pub txs_executed: u64,
    /// Blocks executed speculatively (certified, before their commit).
    pub speculative: u64,
    /// Speculative results used at commit.
    pub speculative_hits: u64,
    /// Blocks executed only at their commit.
    pub executed_at_commit: u64,
    /// Proposers' claimed state roots checked against ours.
    pub roots_checked: u64,
    /// Claimed roots that differed from ours.
    pub divergences: u64,
}

/// The node's figures at one instant.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Unix ms when taken.
    pub at_ms: u64,
    /// Consensus core counters.
    pub core: CoreSnapshot,
    /// Every stage.
    pub stages: Vec<StageSnapshot>,
    /// Transport.
    pub transport: TransportSample,
    /// Execution.
    pub exec: ExecSample,
    /// Transactions waiting in the mempool.
    pub mempool_txs: usize,
    /// Frames refused at the border: undecodable, malformed, bad signature.
    pub border_rejected: [u64; 3],
    /// Messages the egress stage could not queue.
    pub egress_dropped: u64,
    /// Equivocation evidence seen.
    pub evidence: u64,
    /// Group commits that failed.
    pub persist_failures: u64,
}

/// Everything the API reads.
pub struct NodeView {
    /// This node's `validator_id`.
    pub validator_id: String,
    /// This node's index.
    pub me: ValidatorIndex,
    /// The chain's id and validator set.
    pub ctx: Arc<EpochContext>,
    /// The validators' `validator_id`s, by index (their keys and stakes are in `ctx`).
    pub validator_ids: Vec<String>,
    /// `hotstuff.optimistic_execution`.
    pub optimistic_execution: bool,
    /// Pipeline progress (committed, durable, round; the pipeline depth in force).
    pub progress: Arc<Progress>,
    /// The durable chain.
    pub chain: ChainReader,
    /// Recent heights.
    pub rounds: Arc<RoundLog>,
    /// The latest [`Sample`].
    pub sample: RwLock<Arc<Sample>>,
    /// The stages' figures, for their latency histograms.
    pub stage_stats: Vec<Arc<StageStats>>,
    /// Transactions by id: the client gateway when the node serves clients (pending ones too).
    pub gateway: Option<Arc<Gateway>>,
    /// The committed window (transactions by id when the node has no client endpoint).
    pub committed_window: Arc<Mutex<CommittedTxs>>,
    /// Unix ms when the node started.
    pub started_ms: u64,
    /// Milliseconds without a commit after which health checks report a stall.
    pub stall_after_ms: u64,
    /// The operator token (`node.operator_token_file`); `None`: mutating calls are refused.
    pub operator_token: Option<String>,
    /// Why execution stopped, if it did.
    pub halted: crate::node::stages::Halted,
    /// `coordinator.max_active_rounds`: most heights `rounds/active` lists.
    pub max_active_rounds: usize,
    /// `coordinator.round_timeout_seconds` in ms: a height proposed this long ago and not
    /// committed is reported timed out.
    pub round_timeout_ms: u64,
    /// The consensus stage's input (votes submitted over HTTP, checked as from QUIC).
    pub core_in: Option<crate::pipeline::StageInput<(ValidatorIndex, crate::consensus::Verified)>>,
}

impl NodeView {
    /// The latest sample.
    pub fn sample(&self) -> Arc<Sample> {
        self.sample
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    /// Publishes a new sample.
    pub fn publish(&self, s: Sample) {
        if let Ok(mut g) = self.sample.write() {
            *g = Arc::new(s);
        }
    }

    /// `validator_id` of validator `i` (its index as text if unknown).
    pub fn name_of(&self, i: ValidatorIndex) -> String {
        self.validator_ids
            .get(i.as_usize())
            .map_or_else(|| format!("#{}", i.0), Clone::clone)
    }

    /// The leader of `round`.
    pub fn leader_of(&self, round: Round) -> ValidatorIndex {
        self.ctx.validators.leader(round)
    }

    /// Milliseconds since the latest commit (since start when none yet).
    pub fn commit_age_ms(&self) -> u64 {
        let last = self.rounds.last_commit_ms().max(self.started_ms);
        unix_ms().saturating_sub(last)
    }

    /// The highest committed height.
    pub fn committed_height(&self) -> Height {
        Height(self.progress.committed.load(Ordering::Acquire))
    }

    /// The highest durable height.
    pub fn durable_height(&self) -> Height {
        Height(self.progress.durable.load(Ordering::Acquire))
    }
}
