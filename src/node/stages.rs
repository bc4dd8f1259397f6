//! The node's pipeline stages (DESIGN §4):
//! ingress decode → batch signature verification → consensus core → execution → persistence
//! (group commit), with egress fed by the core. Each stage is a [`crate::pipeline`] thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bpci_transport::{Class, TransportHandle};
use bytes::Bytes;
use redb::{Database, Durability, TableDefinition};

use crate::codec::{decode, encode_infallible};
use crate::consensus::{
    Action, CommittedBatch, Core, CoreStats, EpochContext, Message, Prepared, Verified,
};
use crate::crypto::BatchVerifier;
use crate::exec::{Ledger, StateMachine, StateRoot};
use crate::mempool::Payload;
use crate::pipeline::StageInput;
use crate::store::RedbStore;
use crate::types::{Round, TimeMs, ValidatorIndex};

use super::app::{NodeApp, Progress};

/// Executed state roots by height (written by the persistence stage).
pub const EXEC_ROOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("exec_roots");

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
        Message::Proposal(_) | Message::BlockResponse(_) | Message::SyncResponse(_) => Class::Bulk,
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

/// Ingress: decode and structurally check one frame (runs on the ingress thread).
pub fn ingress(
    ctx: &EpochContext,
    from: u16,
    frame: &[u8],
    border: &BorderStats,
) -> Option<(ValidatorIndex, Prepared)> {
    let msg: Message = match decode(frame) {
        Ok(m) => m,
        Err(e) => {
            border.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "pipeline.ingress", from, error = %e, "undecodable frame");
            return None;
        }
    };
    match ctx.prepare(msg) {
        Ok(p) => Some((ValidatorIndex(from), p)),
        Err(e) => {
            border.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "pipeline.ingress", from, error = %e, "refused message");
            None
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
                border.bad_signature.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "pipeline.verify", %from, "bad signature: message dropped");
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
        }
    }
}

/// The consensus stage: the one thread that owns the core.
pub struct CoreStage {
    /// The core.
    pub core: Core<RedbStore, NodeApp>,
    /// The epoch context (for loopback messages).
    pub ctx: Arc<EpochContext>,
    /// Egress input.
    pub egress: StageInput<Outbound>,
    /// Execution input.
    pub exec: StageInput<CommittedBatch>,
    /// Shared progress.
    pub progress: Arc<Progress>,
    /// Published snapshot.
    pub snapshot: Arc<Mutex<CoreSnapshot>>,
    loopback: VecDeque<Message>,
}

impl CoreStage {
    /// A stage around `core`.
    pub fn new(
        core: Core<RedbStore, NodeApp>,
        ctx: Arc<EpochContext>,
        egress: StageInput<Outbound>,
        exec: StageInput<CommittedBatch>,
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
            loopback: VecDeque::new(),
        }
    }

    /// Starts the core (the first leader proposes).
    pub fn start(&mut self) {
        let acts = self.core.start(now_ms());
        self.apply(acts);
        self.drain_loopback();
    }

    /// Handles a batch of verified messages (or a tick when empty).
    pub fn on_batch(&mut self, batch: Vec<(ValidatorIndex, Verified)>) {
        let now = now_ms();
        for (from, v) in batch {
            let acts = self.core.handle_message(from, v, now);
            self.apply(acts);
            self.drain_loopback();
        }
        let acts = self.core.handle_tick(now);
        self.apply(acts);
        self.drain_loopback();
        if let Ok(mut s) = self.snapshot.lock() {
            *s = CoreSnapshot::from_core(
                self.core.round(),
                self.core.committed().height.0,
                self.core.stats(),
            );
        }
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
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let me = self.core.me();
        for a in actions {
            match a {
                Action::Send { to, msg } if to == me => self.loopback.push_back(msg),
                Action::Send { to, msg } => {
                    let _ = self.egress.send(Outbound::To(to, msg));
                }
                Action::Broadcast { msg } => {
                    let _ = self.egress.send(Outbound::All(msg));
                }
                Action::Committed(batch) => {
                    let Some((_, last)) = batch.blocks.last() else {
                        continue;
                    };
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
                    self.core.app_mut().on_committed(&mine, up_to);
                    let _ = self.exec.send(batch);
                }
                Action::Evidence(e) => {
                    tracing::warn!(target: "consensus.evidence", offender = %e.offender(), round = e.round().0, "equivocation evidence");
                }
            }
        }
    }
}

/// One executed committed block, on its way to durable storage.
#[derive(Debug)]
pub struct Executed {
    /// Height.
    pub height: u64,
    /// State root after it.
    pub root: StateRoot,
    /// Its transactions' ids.
    pub tx_ids: Vec<crate::mempool::TxId>,
    /// The block itself (written by the persistence stage).
    pub block: Arc<crate::consensus::Block>,
    /// For the last block of a committed batch: the proof that commits it.
    pub proof: Option<crate::consensus::CommitProof>,
}

/// The execution stage: runs committed blocks on the ledger in height order.
pub struct ExecStage {
    /// The state machine.
    pub ledger: Ledger,
    /// The root of the last executed block.
    pub last_root: StateRoot,
    /// Persistence input.
    pub persist: StageInput<Vec<Executed>>,
    /// Transactions executed.
    pub txs: Arc<AtomicU64>,
}

impl ExecStage {
    /// Executes every block of every batch.
    pub fn on_batch(&mut self, batch: Vec<CommittedBatch>) {
        let mut out = Vec::new();
        for committed in batch {
            let last = committed.blocks.len().saturating_sub(1);
            let mut proof = Some(committed.proof);
            for (i, (_, block)) in committed.blocks.into_iter().enumerate() {
                let payload: Payload = match decode(&block.payload) {
                    Ok(p) => p,
                    Err(_) => Payload::new(Vec::new()),
                };
                let (root, receipts) = match self.ledger.execute(&self.last_root, &payload) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(target: "pipeline.exec", height = block.height.0, error = %e, "execution failed");
                        continue;
                    }
                };
                self.ledger.prune(&root);
                self.last_root = root;
                self.txs.fetch_add(receipts.len() as u64, Ordering::Relaxed);
                out.push(Executed {
                    height: block.height.0,
                    root,
                    tx_ids: receipts.into_iter().map(|r| r.tx_id).collect(),
                    block,
                    proof: if i == last { proof.take() } else { None },
                });
            }
        }
        if !out.is_empty() {
            let _ = self.persist.send(out);
        }
    }
}

/// Receives each durable batch of executed blocks (commit notices to clients).
pub type Notify = Box<dyn FnMut(&[Executed]) + Send>;

/// The persistence stage: one durable write transaction (one fsync) per batch of executed blocks.
pub struct PersistStage {
    /// The node's database.
    pub db: Arc<Database>,
    /// Shared progress.
    pub progress: Arc<Progress>,
    /// Called with the ids of transactions now durable (commit notices).
    pub notify: Notify,
}

impl PersistStage {
    /// Writes a batch with one immediate-durability commit.
    pub fn on_batch(&mut self, batch: Vec<Vec<Executed>>) {
        let executed: Vec<Executed> = batch.into_iter().flatten().collect();
        let Some(last) = executed.last() else { return };
        let write = || -> Result<(), String> {
            let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| e.to_string())?;
            {
                let mut t = txn.open_table(EXEC_ROOTS).map_err(|e| e.to_string())?;
                for e in &executed {
                    t.insert(e.height, e.root.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            // The committed blocks themselves (the core defers them to this group commit).
            let mut blocks = Vec::new();
            for e in &executed {
                blocks.push(Arc::clone(&e.block));
                if let Some(proof) = &e.proof {
                    RedbStore::write_commit(&txn, &blocks, proof).map_err(|e| e.to_string())?;
                    blocks.clear();
                }
            }
            txn.commit().map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            tracing::error!(target: "pipeline.persist", error = %e, "group commit failed");
            return;
        }
        self.progress.durable.store(last.height, Ordering::Release);
        if let Ok(mut r) = self.progress.exec_root.lock() {
            *r = last.root;
        }
        (self.notify)(&executed);
    }
}
