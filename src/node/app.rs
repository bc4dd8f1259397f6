//! The node's consensus hooks: payloads from the mempool, payload validation (including the
//! check of the proposer's executed state root), and the `pipeline_depth` back-pressure on
//! proposing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::consensus::{App, Block, PayloadBytes};
use crate::crypto::Digest32;
use crate::exec::StateRoot;
use crate::mempool::{IdMap, Mempool, Payload, TxId, MAX_TXS_PER_BLOCK};
use crate::types::{Height, Round, ValidatorIndex};

use super::clients::{Awaiting, ProposedTxs};
use super::committed::CommittedTxs;

/// Recent durable state roots kept for checking proposers' claims.
pub const RECENT_ROOTS_MAX: usize = 4096;
/// Most pending claims about heights not yet executed here.
pub const PENDING_CLAIMS_MAX: usize = 1024;
/// Most payloads whose transaction ids are kept between validation and execution.
pub const TX_ID_CACHE_MAX: usize = 128;

/// Heights shared between the core and the execution/persistence stages.
#[derive(Default)]
pub struct Progress {
    /// Highest committed height (set by the core stage).
    pub committed: AtomicU64,
    /// The core's current round (set by the core stage; read by the mempool forwarder).
    pub round: Arc<AtomicU64>,
    /// The round of this node's latest proposal, set under the mempool lock as its payload is
    /// taken (read by the client gateway: a transaction inserted after it waits for this
    /// node's next turn).
    pub proposing: Arc<AtomicU64>,
    /// Whether that proposal's payload left transactions behind (a full block: a backlog, so
    /// a newcomer waits for later blocks wherever it goes).
    pub backlog: Arc<std::sync::atomic::AtomicBool>,
    /// Highest height executed and durable (set by the persistence stage).
    pub durable: AtomicU64,
    /// Group commits that failed (and were retried).
    pub persist_failures: AtomicU64,
    /// Highest height the committed window holds (set by the execution stage).
    pub window_height: AtomicU64,
    /// Durable executed roots, and the checks of the roots that blocks claim.
    pub roots: Mutex<ExecRoots>,
    /// Set when a proposal waits for `durable` to catch up with `committed` (pipeline-depth
    /// back-pressure); the persistence stage, finding it set, wakes the core stage through
    /// `wake_core`.
    pub proposal_held: AtomicBool,
    /// Runs the core stage's tick now (set once the core stage runs).
    pub wake_core: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The pipeline depth in force: `hotstuff.pipeline_depth` at start, changed at run time
    /// through the API (`POST /api/v1/consensus/hotstuff/depth`).
    pub pipeline_depth: AtomicU64,
}

impl Progress {
    /// Records that blocks up to `height` are executed and durable, and wakes the core stage
    /// if a proposal waits for that.
    pub fn set_durable(&self, height: u64) {
        // SeqCst here and in `can_propose` (a store, then a load of the other variable, on
        // each side): one of the two always sees the other's store, so no wake-up is lost.
        self.durable.store(height, Ordering::SeqCst);
        if self.proposal_held.swap(false, Ordering::SeqCst) {
            if let Some(wake) = self.wake_core.get() {
                wake();
            }
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("committed", &self.committed)
            .field("durable", &self.durable)
            .field("round", &self.round)
            .finish_non_exhaustive()
    }
}

/// Executed state roots of recent committed heights (durable here), and the roots blocks
/// claim for heights this node has not executed yet. A block carries its proposer's latest
/// durable `(exec_height, exec_root)`; a validator whose own root at that height differs refuses
/// to vote for the block and counts a divergence.
#[derive(Debug, Default)]
pub struct ExecRoots {
    recent: BTreeMap<u64, StateRoot>,
    claims: BTreeMap<u64, (StateRoot, ValidatorIndex)>,
    /// Claims compared with this node's own root and found equal.
    pub checked: u64,
    /// Claims that differ from this node's own root.
    pub divergences: u64,
}

impl ExecRoots {
    /// Starts from the state root `root` at `height` (genesis or the last replayed block).
    pub fn starting_at(height: u64, root: StateRoot) -> Self {
        let mut r = Self::default();
        r.recent.insert(height, root);
        r
    }

    /// The latest durable height and its root.
    pub fn latest(&self) -> (u64, StateRoot) {
        self.recent
            .last_key_value()
            .map(|(h, r)| (*h, *r))
            .unwrap_or_default()
    }

    /// Records the durable root of `height` and settles the claims up to it.
    pub fn record_durable(&mut self, height: u64, root: StateRoot) {
        self.recent.insert(height, root);
        while self.recent.len() > RECENT_ROOTS_MAX {
            self.recent.pop_first();
        }
        let later = self.claims.split_off(&(height + 1));
        let due = std::mem::replace(&mut self.claims, later);
        for (h, (claimed, author)) in due {
            if let Some(ours) = self.recent.get(&h).copied() {
                // A divergence is logged and counted by `compare`; nothing to refuse here.
                let _ = self.compare(h, claimed, ours, author);
            }
        }
    }

    /// Checks a block's claim that the state root at `height` is `claimed`.
    ///
    /// # Errors
    /// A message naming the height and both roots when this node's durable root at `height`
    /// differs. A claim about a height not executed here yet is kept and settled later.
    pub fn check_claim(
        &mut self,
        height: u64,
        claimed: StateRoot,
        author: ValidatorIndex,
    ) -> Result<(), String> {
        if let Some(ours) = self.recent.get(&height).copied() {
            return self.compare(height, claimed, ours, author);
        }
        let (latest, _) = self.latest();
        // Claims far ahead of this node cannot be settled soon; they are not kept (so a
        // proposer cannot fill the table with unreachable heights).
        if height > latest
            && height - latest <= PENDING_CLAIMS_MAX as u64
            && self.claims.len() < PENDING_CLAIMS_MAX
        {
            self.claims.entry(height).or_insert((claimed, author));
        }
        Ok(())
    }

    fn compare(
        &mut self,
        height: u64,
        claimed: StateRoot,
        ours: StateRoot,
        author: ValidatorIndex,
    ) -> Result<(), String> {
        if claimed == ours {
            self.checked += 1;
            return Ok(());
        }
        self.divergences += 1;
        let why = format!(
            "exec_root divergence at height {height}: validator {author} claims {}, this node has {}",
            hex::encode(&claimed[..8]),
            hex::encode(&ours[..8])
        );
        tracing::error!(target: "pipeline.exec", "{why}");
        Err(why)
    }
}

/// A map keyed by digests holding at most `MAX` entries: inserting past it drops the oldest.
#[derive(Debug)]
pub struct FifoMap<V, const MAX: usize> {
    map: IdMap<V>,
    order: VecDeque<Digest32>,
}

impl<V, const MAX: usize> Default for FifoMap<V, MAX> {
    fn default() -> Self {
        Self {
            map: IdMap::default(),
            order: VecDeque::new(),
        }
    }
}

impl<V, const MAX: usize> FifoMap<V, MAX> {
    /// Keeps `value` under `key` (replacing an earlier one in place).
    pub fn insert(&mut self, key: Digest32, value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// The value under `key`, if kept.
    pub fn get(&self, key: &Digest32) -> Option<&V> {
        self.map.get(key)
    }

    /// Every kept value (in no particular order).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    /// Removes and returns the value under `key`, if kept.
    pub fn take(&mut self, key: &Digest32) -> Option<V> {
        let v = self.map.remove(key)?;
        self.order.retain(|k| k != key);
        Some(v)
    }
}

/// Transaction ids (Merkle leaf hashes) of recently checked or built payloads, by `tx_root`, so
/// execution does not hash the transactions again. The root binds the leaf hashes, so a root
/// names one id list.
pub type TxIdCache = FifoMap<Arc<[TxId]>, TX_ID_CACHE_MAX>;

/// Most payload check results kept for the core (FIFO).
pub const PAYLOAD_CHECKS_MAX: usize = 64;

/// Payload checks done ahead of the core, on the ingress thread (see [`precheck`]), by payload
/// digest. A miss means the core checks the payload itself.
pub type PayloadChecks = FifoMap<Result<Arc<[TxId]>, String>, PAYLOAD_CHECKS_MAX>;

/// Checks `payload` (a block's payload bytes) ahead of the core and keeps the result: hashing
/// every transaction of a proposal (leaf hashes and Merkle root) then overlaps with the
/// consensus thread's work instead of adding to it. Keyed by the payload digest, which binds the
/// exact payload bytes, so a result is used only for the payload it was computed on.
/// Undecodable payloads are left to the core, which refuses them with the decoding error.
pub fn precheck(checks: &Mutex<PayloadChecks>, payload: &PayloadBytes) {
    let Ok(decoded) = Payload::decode(payload) else {
        return;
    };
    let result = decoded.check().map(Arc::from);
    // Kept from the block id's computation on this thread: no second pass over the bytes.
    checks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(payload.digest(), result);
}

/// Block-building limits.
#[derive(Clone, Copy, Debug)]
pub struct BlockLimits {
    /// Most transactions per block.
    pub max_txs: usize,
    /// Most transaction bytes per block.
    pub max_bytes: usize,
}

/// Transaction bytes per proposal unless `tuning.max_block_bytes` says otherwise. At light load
/// blocks stay far below it; under a backlog, larger blocks spread each round's fixed cost
/// (signatures, syncs, hand-offs: about 5 ms of CPU across a 4-validator testnet) over more
/// transactions. At 130,000 tx/s offered on the 2-core reference VM, 1 MiB blocks committed
/// about 100,000 tx/s at 64-71 blocks/s and 4 MiB blocks about 115,000 at 19-20 blocks/s; at
/// 100,000 tx/s the two gave the same latency.
pub const DEFAULT_MAX_BLOCK_BYTES: usize = 4 << 20;

impl Default for BlockLimits {
    fn default() -> Self {
        Self {
            max_txs: MAX_TXS_PER_BLOCK,
            max_bytes: DEFAULT_MAX_BLOCK_BYTES,
        }
    }
}

/// One of this node's own proposals, until it commits or is abandoned.
struct InFlight {
    tx_root: Digest32,
    txs: Vec<(TxId, Vec<u8>)>,
    owners: Arc<[u64]>,
}

/// [`App`] for a validator node.
pub struct NodeApp {
    /// Pending client transactions.
    pub mempool: Arc<Mutex<Mempool>>,
    /// Pipeline progress.
    pub progress: Arc<Progress>,
    /// Block-building limits.
    pub limits: BlockLimits,
    /// Ids of checked payloads (shared with the execution stage).
    pub tx_ids: Arc<Mutex<TxIdCache>>,
    /// Payload checks done ahead by the ingress stage.
    pub payload_checks: Arc<Mutex<PayloadChecks>>,
    /// Own proposals awaiting commit, with their transactions' owners (shared with the client
    /// gateway, which sends receipts and commit notices from them).
    pub awaiting: Arc<Mutex<Awaiting>>,
    /// The committed window (shared with the client gateway, which answers resubmissions and
    /// status queries from it).
    pub committed: Arc<Mutex<CommittedTxs>>,
    /// Transactions left out of own proposals because they were committed already, or carried
    /// by a block the proposal extends (resubmissions that reached two validators).
    pub left_out: Arc<std::sync::atomic::AtomicU64>,
    /// Blocks committed and not yet in the committed window (the execution stage records them):
    /// a proposal leaves their transactions out too.
    unrecorded: VecDeque<Arc<Block>>,
    me: ValidatorIndex,
    in_flight: BTreeMap<Round, InFlight>,
}

impl NodeApp {
    /// Hooks over these shared parts.
    pub fn new(
        me: ValidatorIndex,
        mempool: Arc<Mutex<Mempool>>,
        progress: Arc<Progress>,
        pipeline_depth: u64,
        limits: BlockLimits,
    ) -> Self {
        progress
            .pipeline_depth
            .store(pipeline_depth.max(1), Ordering::Relaxed);
        Self {
            mempool,
            progress,
            limits,
            tx_ids: Arc::new(Mutex::new(TxIdCache::default())),
            payload_checks: Arc::new(Mutex::new(PayloadChecks::default())),
            awaiting: Arc::new(Mutex::new(Awaiting::default())),
            committed: Arc::new(Mutex::new(CommittedTxs::default())),
            left_out: Arc::default(),
            unrecorded: VecDeque::new(),
            me,
            in_flight: BTreeMap::new(),
        }
    }

    /// The transaction ids of a block's payload: kept ones by its root, else hashed now.
    fn ids_of(&self, payload: &PayloadBytes) -> Option<(Digest32, Arc<[TxId]>)> {
        let root = Payload::root_of(payload)?;
        if let Some(ids) = self.tx_ids.lock().ok().and_then(|c| c.get(&root).cloned()) {
            return Some((root, ids));
        }
        let decoded = Payload::decode(payload).ok()?;
        let txs: Vec<&[u8]> = decoded.txs().collect();
        Some((root, crate::crypto::leaf_hashes(&txs).into()))
    }

    /// Notes committed blocks (called by the consensus stage as it commits, before the next
    /// proposal is built): until the execution stage has put them in the committed window, a
    /// proposal leaves their transactions out itself.
    pub fn record_committed(&mut self, blocks: &[(crate::types::BlockId, Arc<Block>)]) {
        self.unrecorded
            .extend(blocks.iter().map(|(_, b)| Arc::clone(b)));
        let recorded = self.progress.window_height.load(Ordering::Acquire);
        while self
            .unrecorded
            .front()
            .is_some_and(|b| b.height.0 <= recorded)
        {
            self.unrecorded.pop_front();
        }
    }

    /// Leaves out of `taken` what is committed (in the window, or in a committed block not yet
    /// recorded there: dropped) or carried by one of `parents` (put back at the front of the
    /// mempool: should that block be abandoned, the transaction is proposed again). Every
    /// transaction is checked: a client may send one to two validators, and each then holds a
    /// copy. Without `parents` (this node extends a block it has yet to receive) the marked
    /// ones (`marked[i]` for `taken[i]`: they may be elsewhere too, see [`Mempool::take_marked`])
    /// go back as well. Returns the transactions kept and their owners.
    fn leave_out_committed(
        &self,
        taken: Vec<(TxId, Vec<u8>)>,
        owners: Vec<u64>,
        marked: &[bool],
        parents: Option<&[Arc<Block>]>,
    ) -> (Vec<(TxId, Vec<u8>)>, Vec<u64>) {
        if taken.is_empty() {
            return (taken, owners);
        }
        // In a parent (false: may yet be abandoned) or committed and not yet in the window.
        let mut carried: IdMap<bool> = IdMap::default();
        let recorded = self.progress.window_height.load(Ordering::Acquire);
        let committed = self.unrecorded.iter().filter(|b| b.height.0 > recorded);
        for (p, is_committed) in parents
            .unwrap_or_default()
            .iter()
            .map(|p| (p, false))
            .chain(committed.map(|b| (b, true)))
            .filter(|(p, _)| Payload::carries_txs(&p.payload))
        {
            if let Some((_, ids)) = self.ids_of(&p.payload) {
                carried.extend(ids.iter().map(|id| (*id, is_committed)));
            }
        }
        let window = match self.committed.lock() {
            Ok(w) => w,
            Err(_) => return (taken, owners),
        };
        // 0: keep, 1: committed (drop), 2: in a parent, or marked and maybe in the parent this
        // node does not hold (back to the pool).
        let fate: Vec<u8> = taken
            .iter()
            .zip(marked)
            .map(|((id, _), marked)| match carried.get(id) {
                Some(true) => 1,
                Some(false) => 2,
                None if window.height_of(id).is_some() => 1,
                None if parents.is_none() && *marked => 2,
                None => 0,
            })
            .collect();
        drop(window);
        if fate.iter().all(|f| *f == 0) {
            return (taken, owners);
        }
        let (mut kept, mut kept_owners) = (Vec::new(), Vec::new());
        let (mut back, mut back_owners) = (Vec::new(), Vec::new());
        let mut dropped = 0u64;
        for ((tx, owner), f) in taken.into_iter().zip(owners).zip(fate) {
            match f {
                0 => {
                    kept.push(tx);
                    kept_owners.push(owner);
                }
                1 => dropped += 1,
                _ => {
                    back.push(tx);
                    back_owners.push(owner);
                }
            }
        }
        self.left_out.fetch_add(
            dropped + back.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !back.is_empty() {
            if let Ok(mut pool) = self.mempool.lock() {
                pool.requeue_owned(back, &back_owners);
            }
        }
        (kept, kept_owners)
    }

    /// Blocks up to `round` are decided: own proposals of those rounds either committed (drop
    /// their transactions) or were abandoned (return them to the mempool).
    pub fn on_committed(&mut self, committed_rounds: &[Round], up_to: Round) {
        for r in committed_rounds {
            self.in_flight.remove(r);
        }
        let keep = self.in_flight.split_off(&up_to.next());
        let abandoned = std::mem::replace(&mut self.in_flight, keep);
        if abandoned.is_empty() {
            return;
        }
        if let Ok(mut awaiting) = self.awaiting.lock() {
            for f in abandoned.values() {
                awaiting.take(&f.tx_root);
            }
        }
        if let Ok(mut pool) = self.mempool.lock() {
            for (_, f) in abandoned.into_iter().rev() {
                pool.requeue_owned(f.txs, &f.owners);
            }
        }
    }

    fn remember_ids(&self, tx_root: Digest32, ids: Arc<[TxId]>) {
        if let Ok(mut cache) = self.tx_ids.lock() {
            cache.insert(tx_root, ids);
        }
    }
}

impl App for NodeApp {
    fn make_payload(
        &mut self,
        _height: Height,
        round: Round,
        parents: Option<&[Arc<Block>]>,
    ) -> Vec<u8> {
        let (taken, owners, marked) = match self.mempool.lock() {
            Ok(mut pool) => {
                self.progress.proposing.store(round.0, Ordering::Release);
                let t = pool.take_marked(self.limits.max_txs, self.limits.max_bytes);
                pool.note_proposal(t.txs.len(), std::time::Instant::now());
                self.progress
                    .backlog
                    .store(!pool.is_empty(), Ordering::Release);
                (t.txs, t.owners, t.marks)
            }
            Err(_) => (Vec::new(), Vec::new(), Vec::new()),
        };
        let (taken, owners) = self.leave_out_committed(taken, owners, &marked, parents);
        // The mempool's ids are the leaf hashes: the root needs no hashing of transactions.
        let ids: Arc<[TxId]> = taken.iter().map(|(id, _)| *id).collect();
        let payload = Payload::with_ids(taken.iter().map(|(_, tx)| tx.as_slice()), &ids);
        let (bytes, tx_root) = (payload.encode(), payload.tx_root);
        if !taken.is_empty() {
            let owners: Arc<[u64]> = owners.into();
            if let Ok(mut awaiting) = self.awaiting.lock() {
                awaiting.insert(
                    tx_root,
                    ProposedTxs {
                        ids: Arc::clone(&ids),
                        owners: Arc::clone(&owners),
                    },
                );
            }
            self.in_flight.insert(
                round,
                InFlight {
                    tx_root,
                    txs: taken,
                    owners,
                },
            );
        }
        self.remember_ids(tx_root, ids);
        bytes
    }

    fn validate_payload(&self, block: &Block) -> Result<(), String> {
        // The root alone (no decoding of the transactions on this thread): a payload checked
        // ahead was decoded and checked in full on the ingress thread, and any other is decoded
        // and checked below.
        let tx_root = Payload::root_of(&block.payload)
            .ok_or("payload: too short to hold its transaction root")?;
        // A proposer can only have executed committed ancestors of this block.
        if block.exec_height >= block.height {
            return Err(format!(
                "exec_height {} is not below the block's height {}",
                block.exec_height.0, block.height.0
            ));
        }
        // Our own proposal (only we can sign one): built here from checked transactions.
        let own = block.author == self.me
            && self
                .in_flight
                .get(&block.round)
                .is_some_and(|f| f.tx_root == tx_root);
        if !own {
            let ahead = self
                .payload_checks
                .lock()
                .ok()
                .and_then(|mut c| c.take(&block.payload.digest()));
            let ids: Arc<[TxId]> = match ahead {
                Some(result) => result?,
                None => Payload::decode(&block.payload)
                    .map_err(|e| format!("payload: {e}"))?
                    .check()?
                    .into(),
            };
            if !ids.is_empty() {
                self.remember_ids(tx_root, ids);
            }
        }
        // Last: a claim is recorded (for later settling) only for an otherwise valid block.
        match self.progress.roots.lock() {
            Ok(mut roots) => roots.check_claim(block.exec_height.0, block.exec_root, block.author),
            Err(_) => Ok(()),
        }
    }

    /// Pipeline-depth back-pressure (DESIGN §2): a leader proposes only while fewer than
    /// `pipeline_depth` committed blocks wait for execution and persistence, counting the
    /// blocks the message being handled just committed (the core stage publishes them before
    /// the proposal is built). Depth 1 is the sequential baseline: every committed ancestor is
    /// durable before the next proposal. A refusal leaves a flag the persistence stage answers
    /// by waking the core once more blocks are durable.
    fn can_propose(&self) -> bool {
        let depth = self.progress.pipeline_depth.load(Ordering::Relaxed).max(1);
        let committed = self.progress.committed.load(Ordering::Acquire);
        let durable = self.progress.durable.load(Ordering::Acquire);
        if committed.saturating_sub(durable) < depth {
            return true;
        }
        self.progress.proposal_held.store(true, Ordering::SeqCst);
        // Durable may have moved between the read and the flag: look again, so no wake-up
        // is lost (see `Progress::set_durable`).
        let durable = self.progress.durable.load(Ordering::SeqCst);
        committed.saturating_sub(durable) < depth
    }

    fn exec_root(&self) -> (Height, Digest32) {
        self.progress
            .roots
            .lock()
            .map(|r| {
                let (h, root) = r.latest();
                (Height(h), root)
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(i: u16) -> ValidatorIndex {
        ValidatorIndex(i)
    }

    #[test]
    fn claims_are_checked_now_or_when_the_height_is_executed() {
        let mut roots = ExecRoots::starting_at(0, [0; 32]);
        roots.record_durable(1, [1; 32]);
        // Known height: equal passes, different is refused and counted.
        assert_eq!(roots.check_claim(1, [1; 32], v(2)), Ok(()));
        let err = roots.check_claim(1, [9; 32], v(3)).unwrap_err();
        assert!(
            err.contains("height 1") && err.contains("validator 3"),
            "{err}"
        );
        assert_eq!((roots.checked, roots.divergences), (1, 1));
        // Heights far ahead are not kept.
        assert_eq!(
            roots.check_claim(1 + PENDING_CLAIMS_MAX as u64 + 5, [0; 32], v(1)),
            Ok(())
        );
        assert!(roots.claims.is_empty());
        // Future heights are settled when executed here.
        assert_eq!(roots.check_claim(2, [2; 32], v(1)), Ok(()));
        assert_eq!(roots.check_claim(3, [7; 32], v(1)), Ok(()));
        roots.record_durable(2, [2; 32]);
        assert_eq!((roots.checked, roots.divergences), (2, 1));
        roots.record_durable(3, [3; 32]);
        assert_eq!((roots.checked, roots.divergences), (2, 2));
        assert_eq!(roots.latest(), (3, [3; 32]));
        // Bounded memory of old roots.
        for h in 4..(RECENT_ROOTS_MAX as u64 + 10) {
            roots.record_durable(h, [4; 32]);
        }
        assert_eq!(roots.recent.len(), RECENT_ROOTS_MAX);
    }

    /// Depth `d`: a proposal while fewer than `d` committed blocks are not yet durable; a
    /// refused one is woken exactly when persistence catches up (not on the next tick).
    #[test]
    fn pipeline_depth_holds_proposals_and_durable_blocks_wake_them() {
        use crate::consensus::App;
        let woken = Arc::new(AtomicU64::new(0));
        for depth in [1u64, 3] {
            let progress = Arc::new(Progress::default());
            let w = Arc::clone(&woken);
            let _ = progress.wake_core.set(Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }));
            let mempool = Arc::new(Mutex::new(Mempool::new(
                crate::mempool::MempoolLimits::default(),
            )));
            let app = NodeApp::new(
                v(0),
                mempool,
                Arc::clone(&progress),
                depth,
                BlockLimits::default(),
            );
            woken.store(0, Ordering::SeqCst);
            // Blocks 1..=10 committed, 10 - depth + 1 ..= 10 not durable: held.
            progress.committed.store(10, Ordering::SeqCst);
            progress.set_durable(10 - depth);
            assert!(!app.can_propose(), "depth {depth}");
            assert_eq!(woken.load(Ordering::SeqCst), 0);
            // One more durable block: the core is woken once, and may propose.
            progress.set_durable(10 - depth + 1);
            assert_eq!(woken.load(Ordering::SeqCst), 1);
            assert!(app.can_propose());
            // No proposal waits: no wake-up.
            progress.set_durable(10);
            assert_eq!(woken.load(Ordering::SeqCst), 1);
        }
    }

    fn app(me: u16) -> NodeApp {
        let mempool = Arc::new(Mutex::new(Mempool::new(
            crate::mempool::MempoolLimits::default(),
        )));
        let progress = Arc::new(Progress {
            roots: Mutex::new(ExecRoots::starting_at(0, [0; 32])),
            ..Progress::default()
        });
        NodeApp::new(v(me), mempool, progress, 3, BlockLimits::default())
    }

    fn block_with(author: u16, round: u64, payload: Vec<u8>, exec: (u64, StateRoot)) -> Block {
        let mut b = Block::genesis(crate::types::Epoch(1));
        b.author = v(author);
        b.round = Round(round);
        b.height = Height(10);
        b.payload = payload.into();
        b.exec_height = Height(exec.0);
        b.exec_root = exec.1;
        b
    }

    /// The vote-time checks: payload shape and Merkle root, and the proposer's executed root;
    /// ids of a checked payload are kept for execution; our own proposal is not re-hashed.
    #[test]
    fn payloads_and_exec_roots_are_checked_before_voting() {
        let a = app(0);
        a.progress.roots.lock().unwrap().record_durable(5, [5; 32]);
        let txs = vec![b"t1".to_vec(), b"t2".to_vec()];
        let good = Payload::new(&txs);
        let b = block_with(1, 7, good.encode(), (5, [5; 32]));
        assert_eq!(a.validate_payload(&b), Ok(()));
        let ids = a
            .tx_ids
            .lock()
            .unwrap()
            .get(&good.tx_root)
            .cloned()
            .expect("ids kept");
        assert_eq!(ids.len(), 2);
        // A different executed root at a height we executed: refused, counted.
        let diverged = block_with(1, 7, good.encode(), (5, [6; 32]));
        let err = a.validate_payload(&diverged).unwrap_err();
        assert!(err.contains("divergence at height 5"), "{err}");
        assert_eq!(a.progress.roots.lock().unwrap().divergences, 1);
        // A root that is not the transactions' root, and bytes that are no payload.
        let mut forged = Payload::new(&txs);
        forged.tx_root = [9; 32];
        let err = a
            .validate_payload(&block_with(1, 7, forged.encode(), (5, [5; 32])))
            .unwrap_err();
        assert!(err.contains("tx_root"), "{err}");
        let err = a
            .validate_payload(&block_with(1, 7, vec![1, 2, 3], (5, [5; 32])))
            .unwrap_err();
        assert!(err.starts_with("payload:"), "{err}");
        // A claim about a height the proposer cannot have executed yet.
        let err = a
            .validate_payload(&block_with(1, 7, good.encode(), (10, [5; 32])))
            .unwrap_err();
        assert!(err.contains("exec_height 10"), "{err}");
        // Our own proposal: built from the mempool, accepted and its ids known.
        let mut me = app(2);
        me.mempool.lock().unwrap().insert(b"mine".to_vec()).unwrap();
        let bytes = me.make_payload(Height(1), Round(9), Some(&[]));
        let own = block_with(2, 9, bytes.clone(), (0, [0; 32]));
        assert_eq!(me.validate_payload(&own), Ok(()));
        let root = Payload::decode(&bytes).unwrap().tx_root;
        assert!(me.tx_ids.lock().unwrap().get(&root).is_some());
        // Abandoned (not committed up to a later round): its transactions go back to the pool.
        me.on_committed(&[], Round(10));
        assert_eq!(me.mempool.lock().unwrap().len(), 1);
    }

    /// Exactly once at proposal time: a transaction that a parent block carries goes back to
    /// the pool, one already committed is dropped (also a first submission: a client sent it
    /// to two validators), and a marked one (a resubmission) waits while this node does not
    /// hold the parent; an unmarked one is proposed then.
    #[test]
    fn resubmissions_are_kept_out_of_blocks_that_extend_their_other_copy() {
        let mut a = app(0);
        let fresh = b"fresh".to_vec();
        let again = b"again".to_vec();
        let done = b"committed already".to_vec();
        let twice = b"sent to two validators".to_vec();
        let hashed = crate::mempool::HashedTxs::new(vec![fresh.clone(), twice.clone()]);
        a.mempool.lock().unwrap().insert_batch(hashed, 1);
        let hashed = crate::mempool::HashedTxs::new(vec![again.clone(), done.clone()]);
        a.mempool
            .lock()
            .unwrap()
            .insert_resubmitted_batch(hashed, 1);
        let id = |t: &[u8]| crate::mempool::tx_id(t);
        // `done` is committed at height 3; `again` is in the parent block.
        let done_ids: Arc<[TxId]> = Arc::from(vec![id(&done), id(&twice)]);
        a.committed
            .lock()
            .unwrap()
            .record(3, crate::types::BlockId([3; 32]), [0; 32], done_ids);
        let parent_payload = Payload::new(std::slice::from_ref(&again)).encode();
        let parent = Arc::new(block_with(1, 5, parent_payload, (0, [0; 32])));
        a.validate_payload(&parent).unwrap();
        let bytes = a.make_payload(Height(11), Round(6), Some(&[Arc::clone(&parent)]));
        let p = Payload::decode(&bytes).unwrap();
        assert_eq!(p.txs().collect::<Vec<_>>(), vec![fresh.as_slice()]);
        // `again` is back in the pool; `done` is gone.
        let pool = a.mempool.lock().unwrap();
        assert!(pool.contains(&id(&again)) && !pool.contains(&id(&done)));
        drop(pool);
        // Without the parent, the one taken back (marked) still waits and a new first
        // submission goes; given a parent that does not carry it, it goes.
        let later = b"later".to_vec();
        let hashed = crate::mempool::HashedTxs::new(vec![later.clone()]);
        a.mempool.lock().unwrap().insert_batch(hashed, 1);
        let bytes = a.make_payload(Height(11), Round(7), None);
        let p = Payload::decode(&bytes).unwrap();
        assert_eq!(p.txs().collect::<Vec<_>>(), vec![later.as_slice()]);
        let bytes = a.make_payload(Height(11), Round(8), Some(&[]));
        let p = Payload::decode(&bytes).unwrap();
        assert_eq!(p.txs().collect::<Vec<_>>(), vec![again.as_slice()]);
        assert_eq!(a.left_out.load(Ordering::Relaxed), 4);
    }

    /// A payload checked ahead (on the ingress thread) is not checked again by the core, and a
    /// result is used only for the exact bytes it was computed on.
    #[test]
    fn payload_checks_ahead_are_used_once_and_only_for_their_bytes() {
        let a = app(0);
        let txs = vec![b"t1".to_vec(), b"t2".to_vec()];
        let good = Payload::new(&txs);
        let bytes = good.encode();
        precheck(&a.payload_checks, &bytes.clone().into());
        let digest = crate::consensus::payload_digest(&bytes);
        assert!(a.payload_checks.lock().unwrap().map.contains_key(&digest));
        assert_eq!(
            a.validate_payload(&block_with(1, 7, bytes.clone(), (0, [0; 32]))),
            Ok(())
        );
        assert!(
            a.payload_checks.lock().unwrap().map.is_empty(),
            "the core took the result"
        );
        assert_eq!(
            a.tx_ids.lock().unwrap().get(&good.tx_root).unwrap().len(),
            2
        );

        // A forged root is refused whether the check ran ahead or not, and the precheck of the
        // good payload (same claimed root) is not taken for the forged bytes.
        let mut forged = Payload::new(&txs[..1]);
        forged.tx_root = good.tx_root;
        let forged_bytes = forged.encode();
        precheck(&a.payload_checks, &bytes.clone().into());
        precheck(&a.payload_checks, &forged_bytes.clone().into());
        let err = a
            .validate_payload(&block_with(1, 8, forged_bytes, (0, [0; 32])))
            .unwrap_err();
        assert!(err.contains("tx_root"), "{err}");
        assert_eq!(
            a.payload_checks.lock().unwrap().map.len(),
            1,
            "good result untouched"
        );

        // Undecodable bytes are left to the core; the cache is bounded.
        precheck(&a.payload_checks, &vec![1, 2, 3].into());
        assert_eq!(a.payload_checks.lock().unwrap().map.len(), 1);
        for i in 0..(PAYLOAD_CHECKS_MAX as u32 + 3) {
            let tx = i.to_le_bytes().to_vec();
            precheck(&a.payload_checks, &Payload::new(&[tx]).encode().into());
        }
        let c = a.payload_checks.lock().unwrap();
        assert_eq!(
            (c.map.len(), c.order.len()),
            (PAYLOAD_CHECKS_MAX, PAYLOAD_CHECKS_MAX)
        );
        assert!(!c.map.contains_key(&digest), "oldest evicted");
    }

    #[test]
    fn tx_id_cache_is_bounded_fifo() {
        let mut c = TxIdCache::default();
        for i in 0..(TX_ID_CACHE_MAX as u32 + 5) {
            let mut root = [0u8; 32];
            root[..4].copy_from_slice(&i.to_le_bytes());
            c.insert(root, Arc::from(vec![root]));
        }
        assert_eq!(c.map.len(), TX_ID_CACHE_MAX);
        assert!(c.get(&[0; 32]).is_none(), "oldest evicted");
    }
}
