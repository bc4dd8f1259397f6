//! The node's pipeline stages (DESIGN §4):
//! ingress decode → batch signature verification → consensus core → execution → persistence
//! (group commit), with egress fed by the core. Each stage is a [`crate::pipeline`] thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpci_transport::{Class, TransportHandle};
use bytes::Bytes;

use crate::api::view::RoundLog;
use crate::codec::encode_infallible;
use crate::consensus::{
    Action, Block, CommittedBatch, Core, CoreStats, EpochContext, Message, Prepared, TxBatch,
    Verified,
};
use crate::consensus::{Storage, StorageError};
use crate::crypto::{leaf_hashes, BatchVerifier};
use crate::exec::{BlockTxs, Ledger, StateMachine, StateRoot};
use crate::mempool::{Payload, TxId};
use crate::pipeline::{LatencyHistogram, StageInput};
use crate::store::{ChainWriter, GroupItem, RedbStore};
use crate::types::{BlockId, Height, Round, TimeMs, ValidatorIndex};

use super::app::{ExecRoots, NodeApp, Progress, TxIdCache, RECENT_ROOTS_MAX};

/// Executed state roots by height (written by the store with each group commit, and again
/// when it re-indexes the log's tail on open).
pub use crate::store::EXEC_ROOTS;

/// Wall-clock milliseconds (the core's notion of now).
pub fn now_ms() -> TimeMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as TimeMs)
        .unwrap_or(0)
}

/// Messages that carry blocks travel on the bulk stream; everything else on the consensus stream.
pub fn class_of(msg: &Message) -> Class {
    match msg {
        Message::Proposal(_)
        | Message::BlockResponse(_)
        | Message::SyncResponse(_)
        | Message::Txs(_) => Class::Bulk,
        _ => Class::Consensus,
    }
}

/// Counters of messages refused at the border.
#[derive(Debug, Default)]
pub struct BorderStats {
    /// Frames that did not decode.
    pub undecodable: AtomicU64,
    /// Messages that failed structural checks.
    pub malformed: AtomicU64,
    /// Messages with a bad signature.
    pub bad_signature: AtomicU64,
}

/// What the ingress stage makes of one frame.
// Returned by value once per frame and consumed at once: boxing the large variant would add an
// allocation to every consensus message.
#[allow(clippy::large_enum_variant)]
pub enum Ingress {
    /// A consensus message, structurally checked, for signature verification.
    Consensus(ValidatorIndex, Prepared),
    /// Client transactions forwarded by another validator, for the mempool.
    Txs(TxBatch),
    /// Refused (counted in [`BorderStats`]).
    Dropped,
}

/// Ingress: decode and structurally check one frame (runs on the ingress thread).
pub fn ingress(
    ctx: &EpochContext,
    from: u16,
    frame: &bytes::Bytes,
    border: &BorderStats,
) -> Ingress {
    let msg: Message = match crate::codec::decode_shared(frame) {
        Ok(m) => m,
        Err(e) => {
            border.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "pipeline.ingress", from, error = %e, "undecodable frame");
            return Ingress::Dropped;
        }
    };
    if let Message::Txs(batch) = msg {
        return Ingress::Txs(batch);
    }
    match ctx.prepare(msg) {
        Ok(p) => Ingress::Consensus(ValidatorIndex(from), p),
        Err(e) => {
            border.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "pipeline.ingress", from, error = %e, "refused message");
            Ingress::Dropped
        }
    }
}

/// Verify: one ZIP-215 batch over the signatures of every message in `batch`; on failure the
/// batch verifier names the bad items and only their messages are dropped.
pub fn verify(
    batch: Vec<(ValidatorIndex, Prepared)>,
    border: &BorderStats,
) -> Vec<(ValidatorIndex, Verified)> {
    let total: usize = batch.iter().map(|(_, p)| p.items().len()).sum();
    let mut verifier = BatchVerifier::with_capacity(total);
    let mut owner = Vec::with_capacity(total);
    for (m, (_, p)) in batch.iter().enumerate() {
        for it in p.items() {
            verifier.queue(&it.key, &it.digest, &it.signature);
            owner.push(m);
        }
    }
    let result = if total >= crate::crypto::batch::PARALLEL_BATCH_LEN_MIN {
        verifier.verify_parallel()
    } else {
        verifier.verify(&mut rand::thread_rng())
    };
    let mut bad = vec![false; batch.len()];
    if let Err(failure) = result {
        for i in failure.invalid {
            if let Some(m) = owner.get(i) {
                bad[*m] = true;
            }
        }
    }
    batch
        .into_iter()
        .zip(bad)
        .filter_map(|((from, p), bad)| {
            if bad {
                let n = border.bad_signature.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the 1st, 2nd, 4th, 8th, ... (a peer sending junk cannot flood the
                // log); `border.bad_signature` in stats.json counts every one.
                if n.is_power_of_two() {
                    tracing::warn!(target: "pipeline.verify", %from, total = n, "bad signature: message dropped");
                }
                None
            } else {
                Some((from, p.into_verified_after_check()))
            }
        })
        .collect()
}

/// What the egress stage sends.
#[derive(Debug)]
pub enum Outbound {
    /// To one peer.
    To(ValidatorIndex, Message),
    /// To every other validator.
    All(Message),
}

/// [`verify`], then the verified messages to the consensus stage, in order (stops if it ended).
pub fn verify_into(
    batch: Vec<(ValidatorIndex, Prepared)>,
    border: &BorderStats,
    core: &StageInput<(ValidatorIndex, Verified)>,
) {
    for v in verify(batch, border) {
        if core.send(v).is_err() {
            break;
        }
    }
}

/// Egress: encode once, hand to the transport (which queues per peer and coalesces writes).
pub fn egress(batch: Vec<Outbound>, transport: &TransportHandle, dropped: &AtomicU64) {
    for out in batch {
        match out {
            Outbound::To(to, msg) => {
                let frame = Bytes::from(encode_infallible(&msg));
                if transport.send(to.0, class_of(&msg), frame).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outbound::All(msg) => {
                let frame = Bytes::from(encode_infallible(&msg));
                transport.broadcast(class_of(&msg), frame);
            }
        }
    }
}

/// A snapshot of the core for stats.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CoreSnapshot {
    /// Current round.
    pub round: u64,
    /// Committed height.
    pub committed_height: u64,
    /// Counters.
    pub votes_sent: u64,
    /// Timeouts signed.
    pub timeouts_signed: u64,
    /// Proposals made.
    pub proposals: u64,
    /// Rounds entered through a TC.
    pub view_changes: u64,
    /// Blocks committed.
    pub blocks_committed: u64,
    /// Sync responses applied.
    pub syncs: u64,
    /// Storage failures.
    pub storage_failures: u64,
    /// Proposals extending a block this node did not hold yet.
    pub proposed_without_parent: u64,
}

impl CoreSnapshot {
    fn from_core(round: Round, height: u64, s: &CoreStats) -> Self {
        Self {
            round: round.0,
            committed_height: height,
            votes_sent: s.votes_sent,
            timeouts_signed: s.timeouts_signed,
            proposals: s.proposals,
            view_changes: s.view_changes,
            blocks_committed: s.blocks_committed,
            syncs: s.syncs,
            storage_failures: s.storage_failures,
            proposed_without_parent: s.proposed_without_parent,
        }
    }
}

/// Most of our own proposals waiting for their commit in [`ConsensusTiming`].
pub const TIMED_PROPOSALS_MAX: usize = 256;
/// Round entries kept for [`ConsensusTiming`] (rounds not yet decided).
pub const TIMED_ROUNDS_MAX: usize = 1024;

/// How long rounds take and how long this validator's own proposals take to commit, seen from
/// its consensus stage (in `stats.json` under `consensus_timing`). Only rounds whose committed
/// block carried transactions count, and only own proposals that did: a validator with no load
/// proposes empty blocks back to back, and those would say nothing of a loaded round. Both are
/// local intervals (one clock), so they mean the same on a testnet and across machines. The
/// figures are kept since the node started.
#[derive(Debug)]
pub struct ConsensusTiming {
    /// When the core entered each round not yet decided.
    entered: std::collections::BTreeMap<u64, std::time::Instant>,
    proposed: VecDeque<(Round, std::time::Instant)>,
    rounds_us: LatencyHistogram,
    to_commit_us: LatencyHistogram,
}

/// Percentiles of [`ConsensusTiming`] (µs), since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimingSnapshot {
    /// Rounds timed (committed, with transactions).
    pub rounds: u64,
    /// Time from entering such a round to entering the next, median.
    pub round_us_p50: u64,
    /// 99th percentile.
    pub round_us_p99: u64,
    /// Own proposals with transactions seen committed.
    pub own_commits: u64,
    /// Time from sending one of them to its commit here, median.
    pub proposal_to_commit_us_p50: u64,
    /// 99th percentile.
    pub proposal_to_commit_us_p99: u64,
}

impl Default for ConsensusTiming {
    fn default() -> Self {
        Self {
            entered: std::collections::BTreeMap::new(),
            proposed: VecDeque::new(),
            rounds_us: LatencyHistogram::new("consensus.round"),
            to_commit_us: LatencyHistogram::new("consensus.proposal_to_commit"),
        }
    }
}

fn quantiles(h: &LatencyHistogram) -> (u64, u64, u64) {
    (h.len(), h.quantile_us(0.5), h.quantile_us(0.99))
}

impl ConsensusTiming {
    /// The core is in `round` at `now` (the first report of a round is its entry).
    pub fn round(&mut self, round: u64, now: std::time::Instant) {
        self.entered.entry(round).or_insert(now);
        while self.entered.len() > TIMED_ROUNDS_MAX {
            self.entered.pop_first();
        }
    }

    /// We sent our proposal of `round`, with transactions, at `now`.
    pub fn proposed(&mut self, round: Round, now: std::time::Instant) {
        self.proposed.push_back((round, now));
        while self.proposed.len() > TIMED_PROPOSALS_MAX {
            self.proposed.pop_front();
        }
    }

    /// Blocks up to round `up_to` are decided. `loaded` are the rounds of the committed blocks
    /// that carried transactions, `ours` those of them we proposed.
    pub fn committed(
        &mut self,
        loaded: &[Round],
        ours: &[Round],
        up_to: Round,
        now: std::time::Instant,
    ) {
        for r in loaded {
            let start = self.entered.get(&r.0).copied();
            let next = self.entered.range(r.0 + 1..).next().map(|(_, t)| *t);
            if let (Some(start), Some(next)) = (start, next) {
                self.rounds_us
                    .record_n(next.saturating_duration_since(start), 1);
            }
        }
        self.entered = self.entered.split_off(&(up_to.0 + 1));
        while let Some((r, at)) = self.proposed.front().copied() {
            if r > up_to {
                break;
            }
            self.proposed.pop_front();
            if ours.contains(&r) {
                self.to_commit_us
                    .record_n(now.saturating_duration_since(at), 1);
            }
        }
    }

    /// The figures so far.
    pub fn snapshot(&self) -> TimingSnapshot {
        let (rounds, round_us_p50, round_us_p99) = quantiles(&self.rounds_us);
        let (own_commits, proposal_to_commit_us_p50, proposal_to_commit_us_p99) =
            quantiles(&self.to_commit_us);
        TimingSnapshot {
            rounds,
            round_us_p50,
            round_us_p99,
            own_commits,
            proposal_to_commit_us_p50,
            proposal_to_commit_us_p99,
        }
    }
}

/// One of this node's proposals, just sent.
#[derive(Clone, Debug)]
pub struct OwnProposal {
    /// Its round.
    pub round: Round,
    /// The block's id.
    pub block: BlockId,
    /// The root of its transactions (none for an empty block): where the client gateway
    /// finds them and their owners ([`super::clients::Awaiting`]).
    pub tx_root: Option<crate::crypto::Digest32>,
}

/// Called by the consensus stage right after it sends a proposal of its own (leader hints and
/// inclusion receipts for clients, [`crate::client_proto::ClientResponse::Leaders`] and
/// [`crate::client_proto::ClientResponse::Included`]). Must not block.
pub type OnOwnProposal = Box<dyn Fn(OwnProposal) + Send>;

/// The consensus stage: the one thread that owns the core.
pub struct CoreStage {
    /// The core.
    pub core: Core<RedbStore, NodeApp>,
    /// The epoch context (for loopback messages).
    pub ctx: Arc<EpochContext>,
    /// Egress input.
    pub egress: StageInput<Outbound>,
    /// Execution input.
    pub exec: StageInput<ExecInput>,
    /// Shared progress.
    pub progress: Arc<Progress>,
    /// Published snapshot.
    pub snapshot: Arc<Mutex<CoreSnapshot>>,
    /// Round and commit timing.
    pub timing: Arc<Mutex<ConsensusTiming>>,
    /// Told of each own proposal once it is on its way.
    pub on_own_proposal: Option<OnOwnProposal>,
    /// Sends votes and timeouts itself while the egress stage has nothing queued (see
    /// [`CoreStage::send_to`]): the transport and the counter of refused sends.
    pub direct_egress: Option<(TransportHandle, Arc<AtomicU64>)>,
    /// Each height's steps, for the API.
    pub rounds: Arc<RoundLog>,
    /// `logging.consensus_logging.include_validator_votes`: audit events for votes too (the
    /// audit trail itself is on when the log filter lets `consensus.audit` through).
    pub audit_votes: bool,
    loopback: VecDeque<Message>,
}

impl CoreStage {
    /// A stage around `core`.
    pub fn new(
        core: Core<RedbStore, NodeApp>,
        ctx: Arc<EpochContext>,
        egress: StageInput<Outbound>,
        exec: StageInput<ExecInput>,
        progress: Arc<Progress>,
        snapshot: Arc<Mutex<CoreSnapshot>>,
    ) -> Self {
        Self {
            core,
            ctx,
            egress,
            exec,
            progress,
            snapshot,
            timing: Arc::new(Mutex::new(ConsensusTiming::default())),
            on_own_proposal: None,
            direct_egress: None,
            rounds: Arc::default(),
            audit_votes: false,
            loopback: VecDeque::new(),
        }
    }

    fn timing(&self) -> std::sync::MutexGuard<'_, ConsensusTiming> {
        self.timing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the core (the first leader proposes).
    pub fn start(&mut self) {
        self.core.defer_proposals(true);
        let acts = self.core.start(now_ms());
        self.apply(acts);
        self.drain_loopback();
        self.publish_round();
    }

    /// Handles a batch of verified messages (or a tick when empty).
    pub fn on_batch(&mut self, batch: Vec<(ValidatorIndex, Verified)>) {
        let now = now_ms();
        self.rounds.consensus_turned();
        let audit = tracing::enabled!(target: "consensus.audit", tracing::Level::INFO);
        for (from, v) in batch {
            if audit {
                self.audit_in(from, &v);
            }
            if let (Message::Proposal(p), Some(id)) = (&v.msg, v.ids.first()) {
                // A clone shares the payload's bytes (reference-counted).
                self.rounds.proposed(
                    *id,
                    &Arc::new(p.block.clone()),
                    Payload::count_of(&p.block.payload),
                );
            }
            let acts = self.core.handle_message(from, v, now);
            self.apply(acts);
            self.propose_due();
            self.drain_loopback();
        }
        let acts = self.core.handle_tick(now);
        self.apply(acts);
        self.drain_loopback();
        self.publish_round();
        if let Ok(mut s) = self.snapshot.lock() {
            *s = CoreSnapshot::from_core(
                self.core.round(),
                self.core.committed().height.0,
                self.core.stats(),
            );
        }
    }

    /// Publishes the core's round (the mempool forwarder reads it) and times rounds.
    fn publish_round(&self) {
        let round = self.core.round().0;
        self.progress.round.store(round, Ordering::Release);
        self.timing().round(round, std::time::Instant::now());
    }

    fn drain_loopback(&mut self) {
        let me = self.core.me();
        while let Some(msg) = self.loopback.pop_front() {
            // Our own message: structure is checked, our own signatures need no check.
            let Ok(prepared) = self.ctx.prepare(msg) else {
                continue;
            };
            let acts = self
                .core
                .handle_message(me, prepared.into_verified_after_check(), now_ms());
            self.apply(acts);
            self.propose_due();
        }
    }

    /// Builds and sends a proposal the last message made due (proposals are deferred, see
    /// [`Core::defer_proposals`]: a commit goes to execution and persistence first).
    fn propose_due(&mut self) {
        let acts = self.core.propose_due();
        if !acts.is_empty() {
            self.apply(acts);
        }
    }

    /// Sends `msg` to one validator. A vote or a timeout (one signature, a few hundred bytes)
    /// goes to the transport from this thread when the egress stage has nothing queued: there it
    /// would be a batch of one, and the hand-off would sit on the round's path. Everything else,
    /// and everything while egress has a queue, goes through egress in order.
    fn send_to(&mut self, to: ValidatorIndex, msg: Message) {
        if let Some((transport, dropped)) = &self.direct_egress {
            if matches!(msg, Message::Vote(_) | Message::Timeout(_)) && self.egress.depth() == 0 {
                egress(vec![Outbound::To(to, msg)], transport, dropped);
                return;
            }
        }
        let _ = self.egress.send(Outbound::To(to, msg));
    }

    /// The audit trail of a verified message in (`consensus.audit`, see [`crate::logs`]).
    fn audit_in(&self, from: ValidatorIndex, v: &Verified) {
        match &v.msg {
            Message::Proposal(p) => {
                let id = v.ids.first().copied().unwrap_or_default();
                tracing::info!(target: "consensus.audit", event = "proposal", from = from.0,
                    author = p.block.author.0, round = p.block.round.0, height = p.block.height.0,
                    block_id = %id, parent_qc_round = p.block.parent_qc.round.0,
                    transactions = Payload::count_of(&p.block.payload));
                if let Some(tc) = &p.tc_for_prev_round {
                    tracing::info!(target: "consensus.audit", event = "tc", round = tc.round.0,
                        signers = ?tc.timeouts.iter().map(|(i, _, _)| i.0).collect::<Vec<_>>());
                }
            }
            Message::Vote(vote) if self.audit_votes => {
                tracing::info!(target: "consensus.audit", event = "vote_received",
                    voter = vote.voter.0, round = vote.data.round.0, height = vote.data.height.0,
                    block_id = %vote.data.block_id, signature = %vote.signature);
            }
            _ => {}
        }
    }

    /// The audit trail of an action.
    fn audit_out(&self, a: &Action) {
        let me = self.core.me();
        match a {
            Action::Send {
                to,
                msg: Message::Vote(v),
            } if self.audit_votes => {
                tracing::info!(target: "consensus.audit", event = "vote_sent", to = to.0,
                    round = v.data.round.0, height = v.data.height.0,
                    block_id = %v.data.block_id, signature = %v.signature);
            }
            Action::Broadcast {
                msg: Message::Proposal(p),
            } if p.block.author == me => {
                tracing::info!(target: "consensus.audit", event = "proposal", from = me.0,
                    author = me.0, round = p.block.round.0, height = p.block.height.0,
                    block_id = %p.block.id(&self.ctx.chain_id),
                    parent_qc_round = p.block.parent_qc.round.0,
                    transactions = Payload::count_of(&p.block.payload));
            }
            Action::Broadcast {
                msg: Message::Timeout(t),
            } if t.voter == me => {
                tracing::info!(target: "consensus.audit", event = "timeout_signed",
                    round = t.round.0, high_qc_round = t.high_qc.round.0);
            }
            Action::Certified(path) => {
                if let Some((id, b)) = path.last() {
                    tracing::info!(target: "consensus.audit", event = "qc", round = b.round.0,
                        height = b.height.0, block_id = %id);
                }
            }
            Action::Committed(batch) => {
                for (id, b) in &batch.blocks {
                    tracing::info!(target: "consensus.audit", event = "commit",
                        round = b.round.0, height = b.height.0, block_id = %id,
                        author = b.author.0);
                }
            }
            Action::Evidence(e) => {
                tracing::info!(target: "consensus.audit", event = "evidence",
                    offender = e.offender().0, round = e.round().0);
            }
            _ => {}
        }
    }

    /// Carries out the core's actions, then handles this node's own proposal if they sent one.
    fn apply(&mut self, actions: Vec<Action>) {
        let me = self.core.me();
        let audit = tracing::enabled!(target: "consensus.audit", tracing::Level::INFO);
        for a in actions {
            if audit {
                self.audit_out(&a);
            }
            match a {
                Action::Send { to, msg } if to == me => self.loopback.push_back(msg),
                Action::Send { to, msg } => self.send_to(to, msg),
                Action::Broadcast { msg } => {
                    let own = match &msg {
                        Message::Proposal(p) if p.block.author == me => {
                            let loaded = Payload::carries_txs(&p.block.payload);
                            if loaded {
                                self.timing()
                                    .proposed(p.block.round, std::time::Instant::now());
                            }
                            let id = p.block.id(&self.ctx.chain_id);
                            self.rounds.proposed(
                                id,
                                &Arc::new(p.block.clone()),
                                Payload::count_of(&p.block.payload),
                            );
                            self.on_own_proposal.is_some().then(|| OwnProposal {
                                round: p.block.round,
                                block: id,
                                tx_root: loaded
                                    .then(|| Payload::root_of(&p.block.payload))
                                    .flatten(),
                            })
                        }
                        _ => None,
                    };
                    let _ = self.egress.send(Outbound::All(msg));
                    if let (Some(own), Some(hook)) = (own, &self.on_own_proposal) {
                        hook(own);
                    }
                }
                Action::Committed(batch) => {
                    let Some((_, last)) = batch.blocks.last() else {
                        continue;
                    };
                    // Published before the proposal this message made due is built:
                    // back-pressure counts the blocks just committed (DESIGN §2).
                    self.progress
                        .committed
                        .store(last.height.0, Ordering::Release);
                    let mine: Vec<Round> = batch
                        .blocks
                        .iter()
                        .filter(|(_, b)| b.author == me)
                        .map(|(_, b)| b.round)
                        .collect();
                    let up_to = last.round;
                    let loaded: Vec<Round> = batch
                        .blocks
                        .iter()
                        .filter(|(_, b)| Payload::carries_txs(&b.payload))
                        .map(|(_, b)| b.round)
                        .collect();
                    let blocks = batch.blocks.clone();
                    self.rounds.committed(blocks.iter().map(|(id, b)| (*id, b)));
                    let _ = self.exec.send(ExecInput::Committed(Box::new(batch)));
                    self.timing()
                        .committed(&loaded, &mine, up_to, std::time::Instant::now());
                    let app = self.core.app_mut();
                    app.on_committed(&mine, up_to);
                    // Before the proposal this message made due is built: it leaves out what
                    // just committed.
                    app.record_committed(&blocks);
                }
                Action::Certified(path) => {
                    self.rounds.prepared(path.iter().map(|(id, b)| (*id, b)));
                    // Optional work: never block the core for it.
                    let _ = self.exec.try_send(ExecInput::Certified(path));
                }
                Action::Evidence(e) => {
                    self.rounds.evidence();
                    tracing::warn!(target: "consensus.evidence", offender = %e.offender(), round = e.round().0, "equivocation evidence");
                }
            }
        }
        // Our own proposal, now on its way: stored and voted for here (Core::own_proposal_due).
        let own = self.core.own_proposal_due();
        if !own.is_empty() {
            self.apply(own);
        }
    }
}

/// One executed committed block, on its way to durable storage.
#[derive(Debug)]
pub struct Executed {
    /// Height.
    pub height: u64,
    /// The block's id.
    pub id: BlockId,
    /// State root after it.
    pub root: StateRoot,
    /// Its transactions' ids.
    pub tx_ids: Arc<[TxId]>,
    /// The block itself (written by the persistence stage).
    pub block: Arc<Block>,
    /// For the last block of a committed batch: the proof that commits it.
    pub proof: Option<crate::consensus::CommitProof>,
    /// Every [`EXEC_STATE_EVERY_BLOCKS`] heights: a snapshot of the execution state after the
    /// block, stored once the block is durable so that a restart need not execute the whole
    /// chain again.
    pub exec_state: Option<Vec<u8>>,
}

/// How often (in committed blocks) the execution state is stored: a restart executes at most
/// this many blocks (plus those since the last durable index commit) instead of the whole chain.
pub const EXEC_STATE_EVERY_BLOCKS: u64 = 1024;

/// What the core hands to the execution stage.
#[derive(Debug)]
pub enum ExecInput {
    /// Certified, not yet committed blocks (oldest first): execute them optimistically.
    Certified(Vec<(BlockId, Arc<Block>)>),
    /// Final blocks: take their optimistic results (or execute them now) and persist.
    Committed(Box<CommittedBatch>),
}

/// Why execution stopped, set once (see [`ExecStage::halt`]); the node's owner reads it
/// ([`crate::node::NodeHandle::halted`]) and stops the node.
pub type Halted = Arc<std::sync::OnceLock<String>>;

/// Most blocks executed optimistically and not yet committed.
pub const MAX_SPECULATIVE_BLOCKS: usize = 64;

/// Counters of the execution stage.
#[derive(Debug, Default)]
pub struct ExecCounters {
    /// Transactions of committed blocks executed.
    pub txs: AtomicU64,
    /// Blocks executed optimistically (when certified).
    pub speculative: AtomicU64,
    /// Committed blocks whose optimistic result was used.
    pub speculative_hits: AtomicU64,
    /// Committed blocks executed only at commit.
    pub executed_at_commit: AtomicU64,
}

/// A block executed ahead of its commit.
#[derive(Debug)]
struct Speculative {
    height: u64,
    root: StateRoot,
    ids: Arc<[TxId]>,
}

/// The execution stage: executes certified blocks optimistically on their parent's state
/// (speculative states live in the ledger until their branch commits or dies) and hands
/// committed blocks, in height order, to persistence.
pub struct ExecStage {
    ledger: Ledger,
    /// Last committed block: id, state root after it, height.
    committed: (BlockId, StateRoot, u64),
    speculative: HashMap<BlockId, Speculative>,
    persist: StageInput<Vec<Executed>>,
    tx_ids: Arc<Mutex<TxIdCache>>,
    /// Counters.
    pub counters: Arc<ExecCounters>,
    /// Whether certified blocks are executed before they commit
    /// (`triple_consensus.hotstuff.optimistic_execution`); if not, each block executes when it
    /// commits.
    pub optimistic: bool,
    /// The committed window, recorded here as blocks are executed, and how far it reaches.
    pub window: Option<(Arc<Mutex<super::committed::CommittedTxs>>, Arc<Progress>)>,
    /// Each height's steps, for the API.
    pub rounds: Arc<RoundLog>,
    /// Set when execution stops ([`ExecStage::halt`]).
    pub halted: Halted,
}

impl ExecStage {
    /// A stage whose ledger holds the state `root` after the committed block `committed_id`
    /// at `height`.
    pub fn new(
        ledger: Ledger,
        committed: (BlockId, StateRoot, u64),
        persist: StageInput<Vec<Executed>>,
        tx_ids: Arc<Mutex<TxIdCache>>,
        counters: Arc<ExecCounters>,
    ) -> Self {
        Self {
            ledger,
            committed,
            speculative: HashMap::new(),
            persist,
            tx_ids,
            counters,
            optimistic: true,
            window: None,
            rounds: Arc::default(),
            halted: Halted::default(),
        }
    }

    /// Stops executing when a committed block cannot be executed: going on would skip a block
    /// or build on a wrong state, and this validator would then vote against the others' state
    /// roots. Nothing after it is executed or persisted; the reason goes to [`ExecStage::halted`]
    /// for the node's owner, which stops the node (`bpci node` exits with status 70). A
    /// restart rebuilds the state by replaying the committed chain from the store.
    fn halt(&mut self, height: u64, why: &str) {
        let reason = format!("execution of committed block {height} failed: {why}");
        tracing::error!(target: "pipeline.exec", height, why, "execution of a committed block failed; execution stops");
        let _ = self.halted.set(reason);
    }

    /// Handles a batch of inputs in order.
    pub fn on_batch(&mut self, batch: Vec<ExecInput>) {
        if self.halted.get().is_some() {
            return;
        }
        let mut out = Vec::new();
        for input in batch {
            match input {
                ExecInput::Certified(path) if self.optimistic => self.speculate(&path),
                ExecInput::Certified(_) => {}
                ExecInput::Committed(c) => self.commit(*c, &mut out),
            }
        }
        if !out.is_empty() {
            let _ = self.persist.send(out);
        }
    }

    fn speculate(&mut self, path: &[(BlockId, Arc<Block>)]) {
        for (id, block) in path {
            if block.height.0 <= self.committed.2 || self.speculative.contains_key(id) {
                continue;
            }
            if self.speculative.len() >= MAX_SPECULATIVE_BLOCKS {
                return;
            }
            let parent = if block.parent_id == self.committed.0 {
                self.committed.1
            } else if let Some(s) = self.speculative.get(&block.parent_id) {
                s.root
            } else {
                return; // parent not executed here: the commit path will do it
            };
            let Ok((root, ids)) = self.execute(&parent, block) else {
                return; // optional work: the commit path executes it (or halts on the error)
            };
            self.counters.speculative.fetch_add(1, Ordering::Relaxed);
            self.rounds.executed(block.height.0, *id, root, true);
            self.speculative.insert(
                *id,
                Speculative {
                    height: block.height.0,
                    root,
                    ids,
                },
            );
        }
    }

    fn commit(&mut self, committed: CommittedBatch, out: &mut Vec<Executed>) {
        let from = out.len();
        self.execute_committed(committed, out);
        if let Some((window, progress)) = &self.window {
            let mut w = window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in &out[from..] {
                let root = Payload::root_of(&e.block.payload).unwrap_or_default();
                w.record(e.height, e.id, root, Arc::clone(&e.tx_ids));
            }
            if let Some(e) = out.last() {
                progress.window_height.fetch_max(e.height, Ordering::AcqRel);
            }
        }
    }

    fn execute_committed(&mut self, committed: CommittedBatch, out: &mut Vec<Executed>) {
        let last = committed.blocks.len().saturating_sub(1);
        let mut proof = Some(committed.proof);
        for (i, (id, block)) in committed.blocks.into_iter().enumerate() {
            if block.parent_id != self.committed.0 {
                // The core commits a continuous chain; anything else is a bug here or there.
                return self.halt(
                    block.height.0,
                    "committed block does not extend the last one",
                );
            }
            // An optimistic result is for exactly this block on exactly its parent's state (the
            // id binds the parent), so it is the committed result.
            let (root, ids) = match self.speculative.remove(&id) {
                Some(s) => {
                    self.counters
                        .speculative_hits
                        .fetch_add(1, Ordering::Relaxed);
                    (s.root, s.ids)
                }
                None => {
                    self.counters
                        .executed_at_commit
                        .fetch_add(1, Ordering::Relaxed);
                    let parent = self.committed.1;
                    match self.execute(&parent, &block) {
                        Ok(done) => done,
                        Err(e) => return self.halt(block.height.0, &e),
                    }
                }
            };
            self.committed = (id, root, block.height.0);
            self.rounds.executed(block.height.0, id, root, false);
            // Prune per block: the ledger then holds at most the committed state, the live
            // speculative ones and the one being built, whatever the batch length.
            let h = self.committed.2;
            self.speculative.retain(|_, s| s.height > h);
            let mut keep: Vec<StateRoot> = self.speculative.values().map(|s| s.root).collect();
            keep.push(root);
            self.ledger.prune(&keep);
            self.counters
                .txs
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            out.push(Executed {
                height: block.height.0,
                id,
                root,
                tx_ids: ids,
                block,
                proof: if i == last { proof.take() } else { None },
                exec_state: (h % EXEC_STATE_EVERY_BLOCKS == 0)
                    .then(|| self.ledger.snapshot(&root))
                    .flatten(),
            });
        }
    }

    /// Executes `block` on the state `parent`: its new root and transaction ids.
    fn execute(
        &mut self,
        parent: &StateRoot,
        block: &Block,
    ) -> Result<(StateRoot, Arc<[TxId]>), String> {
        let tx_ids = &self.tx_ids;
        execute_block(&mut self.ledger, parent, block, |root| {
            tx_ids.lock().ok().and_then(|c| c.get(root).cloned())
        })
    }
}

/// The execution state rebuilt at start-up ([`replay_committed`]).
#[derive(Debug)]
pub struct Replayed {
    /// The ledger, holding only the state after the tip.
    pub ledger: Ledger,
    /// That state's root.
    pub root: StateRoot,
    /// The durable roots of the heights executed (and of the restored one).
    pub roots: ExecRoots,
    /// The height of the stored state it started from (0: genesis).
    pub restored_at: u64,
}

/// The execution state after the committed block at `tip`: restored from the latest stored
/// state ([`ChainWriter::save_exec_state`]) when it is no higher than `tip` and its root is the
/// one recorded for its height, else from genesis; then every committed block after it executed
/// again.
///
/// # Errors
/// A committed block missing from the store, or one that does not execute.
pub fn replay_committed(store: &RedbStore, tip: u64) -> Result<Replayed, String> {
    let (mut ledger, mut root, from) = restore_exec_state(store, tip);
    let mut roots = ExecRoots::default();
    // Restored from a snapshot, the roots before it are not executed again: take them from the
    // store, so that blocks claiming them are still checked.
    if from > 1 {
        let lo = from.saturating_sub(RECENT_ROOTS_MAX as u64).max(1);
        match store.exec_roots(lo..=from - 1) {
            Ok(stored) => {
                for (h, r) in stored {
                    roots.record_durable(h, r);
                }
            }
            Err(e) => {
                tracing::warn!(target: "pipeline.exec", error = %e, "reading the stored execution roots before the restored state");
            }
        }
    }
    roots.record_durable(from, root);
    for h in from + 1..=tip {
        let b = store
            .committed_block(Height(h))
            .ok_or_else(|| format!("replaying committed block {h}: missing from the store"))?;
        let (next, _) = execute_block(&mut ledger, &root, &b, |_| None)
            .map_err(|e| format!("replaying committed block {h}: {e}"))?;
        ledger.prune(&[next]);
        root = next;
        roots.record_durable(h, root);
    }
    tracing::info!(target: "pipeline.exec", restored_at = from, replayed = tip.saturating_sub(from), "execution state rebuilt");
    Ok(Replayed {
        ledger,
        root,
        roots,
        restored_at: from,
    })
}

/// The stored execution state if it can be trusted (see [`replay_committed`]), else genesis: the
/// ledger, its root and its height.
fn restore_exec_state(store: &RedbStore, tip: u64) -> (Ledger, StateRoot, u64) {
    let genesis = || {
        let l = Ledger::default();
        let g = l.genesis();
        (l, g, 0)
    };
    let (height, bytes) = match store.exec_state() {
        Ok(Some(stored)) => stored,
        Ok(None) => return genesis(),
        Err(e) => {
            tracing::warn!(target: "pipeline.exec", error = %e, "reading the stored execution state; executing from genesis");
            return genesis();
        }
    };
    if height > tip {
        tracing::warn!(target: "pipeline.exec", height, tip, "stored execution state is past the chain's tip; executing from genesis");
        return genesis();
    }
    match (Ledger::restore(&bytes), store.exec_root(height)) {
        (Ok((ledger, root)), Ok(Some(recorded))) if root == recorded => (ledger, root, height),
        (restored, recorded) => {
            tracing::warn!(
                target: "pipeline.exec",
                height,
                restored = ?restored.map(|(_, r)| r).map_err(|e| e.to_string()),
                recorded = ?recorded.map_err(|e| e.to_string()),
                "stored execution state does not match the root recorded for its height; executing from genesis"
            );
            genesis()
        }
    }
}

/// Executes a committed or certified `block` on the ledger state `parent`: its new root and its
/// transaction ids (taken from `known_ids` by payload root when they match, hashed otherwise).
/// Used by the exec stage and by the replay at start-up.
pub fn execute_block(
    ledger: &mut Ledger,
    parent: &StateRoot,
    block: &Block,
    known_ids: impl FnOnce(&crate::crypto::Digest32) -> Option<Arc<[TxId]>>,
) -> Result<(StateRoot, Arc<[TxId]>), String> {
    // A certified block's payload was checked by a quorum; an undecodable one executes as
    // empty, as on every other validator.
    let payload = Payload::decode(&block.payload).unwrap_or_else(|e| {
        tracing::error!(target: "pipeline.exec", height = block.height.0, error = %e, "undecodable payload executed as empty");
        Payload::new(&[] as &[&[u8]])
    });
    let txs: Vec<&[u8]> = payload.txs().collect();
    let ids = known_ids(&payload.tx_root)
        .filter(|ids| ids.len() == txs.len())
        .unwrap_or_else(|| leaf_hashes(&txs).into());
    ledger
        .execute(parent, BlockTxs::new(&txs, &ids))
        .map(|(root, _receipts)| (root, ids))
        .map_err(|e| e.to_string())
}

/// Receives each durable batch of executed blocks (commit notices to clients).
pub type Notify = Box<dyn FnMut(&[Executed]) + Send>;

/// The persistence stage: one durable group commit (one log fdatasync; the index commit syncs
/// only every [`crate::store::INDEX_SYNC_INTERVAL`]) per batch of executed blocks.
pub struct PersistStage {
    /// Group commits into the node's store.
    pub writer: ChainWriter,
    /// Shared progress.
    pub progress: Arc<Progress>,
    /// Called with the ids of transactions now durable (commit notices).
    pub notify: Notify,
    /// Each height's steps, for the API.
    pub rounds: Arc<RoundLog>,
}

impl PersistStage {
    /// Writes a batch with one durable group commit. A failed write is retried with backoff until
    /// it succeeds (each failure logged and counted in `Progress::persist_failures`): nothing
    /// after it may become durable first. Meanwhile the node stops committing: the execution and
    /// consensus stages block behind this one once the queues between them are full.
    pub fn on_batch(&mut self, batch: Vec<Vec<Executed>>) {
        let executed: Vec<Executed> = batch.into_iter().flatten().collect();
        let Some(last) = executed.last() else { return };
        let mut backoff = Duration::from_millis(10);
        while let Err(e) = self.write(&executed) {
            self.progress
                .persist_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "pipeline.persist", error = %e, retry_in_ms = backoff.as_millis() as u64, "group commit failed");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        if let Ok(mut roots) = self.progress.roots.lock() {
            for e in &executed {
                roots.record_durable(e.height, e.root);
            }
        }
        self.progress.set_durable(last.height);
        self.rounds.durable(executed.iter().map(|e| e.height));
        (self.notify)(&executed);
        self.writer.release_cache();
        if let Some((h, state)) = executed
            .iter()
            .rev()
            .find_map(|e| e.exec_state.as_ref().map(|s| (e.height, s)))
        {
            if let Err(e) = self.writer.save_exec_state(h, state) {
                // Only a restart's replay grows: it starts from the previous stored state.
                tracing::warn!(target: "pipeline.persist", height = h, error = %e, "storing the execution state failed");
            }
        }
    }

    /// One group commit: blocks, the proof of each committed batch (a header and a QC) and the
    /// exec roots.
    fn write(&self, executed: &[Executed]) -> Result<(), StorageError> {
        let items: Vec<GroupItem<'_>> = executed
            .iter()
            .map(|e| GroupItem {
                block: e.block.as_ref(),
                id: Some(e.id),
                proof: e.proof.as_ref(),
                exec_root: Some(e.root),
            })
            .collect();
        self.writer.commit_group(&items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A restart starts from the stored execution state when its root is the one recorded for
    /// its height, and from genesis when it is not or lies past the tip; either way it ends on
    /// the same state as executing the whole chain.
    #[test]
    fn replay_starts_from_a_stored_state_it_can_trust() {
        use crate::consensus::{CommitProof, QuorumCert};
        use crate::types::Epoch;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("node.redb")).unwrap();
        let writer = store.writer();
        let mut ledger = Ledger::default();
        let mut root = ledger.genesis();
        let mut states = vec![(root, None)];
        for h in 1..=6u64 {
            let mut b = Block::genesis(Epoch(1));
            b.height = Height(h);
            b.round = Round(h);
            let txs = [format!("tx {h}").into_bytes(), vec![h as u8; 300]];
            b.payload = Payload::new(&txs).encode().into();
            let (next, _) = execute_block(&mut ledger, &root, &b, |_| None).unwrap();
            root = next;
            states.push((root, ledger.snapshot(&root)));
            let proof = CommitProof {
                child: b.header(),
                child_qc: QuorumCert::genesis("test", Epoch(1)),
            };
            writer
                .commit_group(&[GroupItem {
                    block: &b,
                    id: None,
                    proof: Some(&proof),
                    exec_root: Some(root),
                }])
                .unwrap();
        }
        // Nothing stored: from genesis.
        let r = replay_committed(&store, 6).unwrap();
        assert_eq!((r.restored_at, r.root), (0, root));
        // Stored at 4: from there.
        writer
            .save_exec_state(4, states[4].1.as_ref().unwrap())
            .unwrap();
        let mut r = replay_committed(&store, 6).unwrap();
        assert_eq!((r.restored_at, r.root), (4, root));
        assert_eq!(r.roots.latest(), (6, root));
        // The roots before the snapshot come from the store: a claim about height 2 is checked.
        let v = ValidatorIndex(1);
        assert!(r.roots.check_claim(2, states[2].0, v).is_ok());
        assert!(r.roots.check_claim(2, states[1].0, v).is_err());
        assert_eq!((r.roots.checked, r.roots.divergences), (1, 1));
        // A state that is not the one recorded for its height (here, height 3's state stored as
        // height 4's), or a height past the tip: from genesis, same end.
        writer
            .save_exec_state(4, states[3].1.as_ref().unwrap())
            .unwrap();
        assert_eq!(replay_committed(&store, 6).unwrap().restored_at, 0);
        writer
            .save_exec_state(4, states[4].1.as_ref().unwrap())
            .unwrap();
        let r = replay_committed(&store, 3).unwrap();
        assert_eq!((r.restored_at, r.root), (0, states[3].0));
        // Bytes that do not decode: from genesis.
        writer.save_exec_state(5, b"junk").unwrap();
        assert_eq!(replay_committed(&store, 6).unwrap().restored_at, 0);
    }

    /// With optimistic execution a certified block executes before it commits and its result is
    /// taken at commit; with it off (`optimistic_execution: false`) it executes only at commit.
    /// Both reach the same root.
    #[test]
    fn optimistic_execution_can_be_turned_off() {
        use crate::consensus::{CommitProof, QuorumCert};
        use crate::types::Epoch;
        let genesis = Block::genesis(Epoch(1));
        let mut b1 = Block::genesis(Epoch(1));
        b1.height = Height(1);
        b1.round = Round(1);
        b1.parent_id = genesis.id("test");
        b1.payload = Payload::new(&[b"one".as_slice()]).encode().into();
        let b1 = Arc::new(b1);
        let id1 = b1.id("test");
        let mut roots = Vec::new();
        for optimistic in [true, false] {
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            let (persist, stage) = crate::pipeline::spawn(
                crate::pipeline::StageConfig {
                    name: "pipeline.test_persist",
                    queue_capacity: 8,
                    batch_max: 8,
                    core: None,
                    tick: None,
                },
                move |b: Vec<Vec<Executed>>| {
                    for e in b.into_iter().flatten() {
                        let _ = done_tx.send((e.height, e.root));
                    }
                },
            )
            .unwrap();
            let ledger = Ledger::default();
            let root = ledger.genesis();
            let counters = Arc::new(ExecCounters::default());
            let mut exec = ExecStage::new(
                ledger,
                (genesis.id("test"), root, 0),
                persist,
                Arc::default(),
                Arc::clone(&counters),
            );
            exec.optimistic = optimistic;
            exec.on_batch(vec![ExecInput::Certified(vec![(id1, Arc::clone(&b1))])]);
            assert_eq!(
                counters.speculative.load(Ordering::Relaxed),
                u64::from(optimistic)
            );
            exec.on_batch(vec![ExecInput::Committed(Box::new(CommittedBatch {
                blocks: vec![(id1, Arc::clone(&b1))],
                proof: CommitProof {
                    child: b1.header(),
                    child_qc: QuorumCert::genesis("test", Epoch(1)),
                },
            }))]);
            assert_eq!(
                counters.speculative_hits.load(Ordering::Relaxed),
                u64::from(optimistic)
            );
            assert_eq!(
                counters.executed_at_commit.load(Ordering::Relaxed),
                u64::from(!optimistic)
            );
            let (h, r) = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(h, 1);
            roots.push(r);
            drop(exec);
            stage.join();
        }
        assert_eq!(roots[0], roots[1]);
    }

    #[test]
    fn rounds_and_own_proposals_are_timed_on_one_clock() {
        let mut t = ConsensusTiming::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        t.round(1, at(0));
        t.round(1, at(3)); // reported again: still entered at 0
        t.proposed(Round(2), at(6));
        t.round(2, at(5));
        t.round(3, at(8));
        t.round(5, at(20)); // round 4 was skipped (a TC): round 3 lasted until 20
        t.round(6, at(24));
        // Rounds 1 and 3 committed with transactions, round 2 was ours but abandoned (round 3
        // extends round 1 through a TC), so round 2 is not timed for commit.
        t.committed(&[Round(1), Round(3)], &[], Round(3), at(25));
        let s = t.snapshot();
        assert_eq!(s.rounds, 2);
        // 5 and 12 ms; hdrhistogram keeps 3 significant digits (0.1 %).
        assert!((4_950..=5_050).contains(&s.round_us_p50), "{s:?}");
        assert!((11_950..=12_050).contains(&s.round_us_p99), "{s:?}");
        assert_eq!(s.own_commits, 0);
        assert!(t.proposed.is_empty(), "decided rounds are forgotten");
        assert_eq!(t.entered.keys().copied().collect::<Vec<_>>(), vec![5, 6]);
        // Our proposal of round 5 commits with round 6's entry already known.
        t.proposed(Round(5), at(21));
        t.committed(&[Round(5)], &[Round(5)], Round(5), at(45));
        let s = t.snapshot();
        assert_eq!((s.rounds, s.own_commits), (3, 1));
        assert!(
            (23_950..=24_050).contains(&s.proposal_to_commit_us_p50),
            "{s:?}"
        );
        // Bounded while nothing commits.
        for r in 10..(10 + TIMED_PROPOSALS_MAX.max(TIMED_ROUNDS_MAX) as u64 + 5) {
            t.proposed(Round(r), at(50));
            t.round(r, at(50));
        }
        assert_eq!(t.proposed.len(), TIMED_PROPOSALS_MAX);
        assert_eq!(t.entered.len(), TIMED_ROUNDS_MAX);
    }
}
