//! Runs one [`RunSpec`]: n cores in virtual time, a lossy network, crashes, Byzantine actors, and
//! the invariant checker watching every commit and every honest vote.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::codec::{decode, encode_infallible};
use crate::consensus::{
    Action, App, Block, BlockResponse, Core, CoreConfig, EpochContext, MemStorage, Message,
    Proposal, ProposalData, QuorumCert, Timeout, TimeoutData, Validator, ValidatorSet, Vote,
    VoteData,
};
use crate::crypto::{Keypair, Signature};
use crate::types::{BlockId, Epoch, Height, Round, Stake, TimeMs, ValidatorIndex};

use super::checker::Checker;
use super::sigcache::SigCache;
use super::spec::{
    liveness_ms_max, liveness_rounds_max, Byzantine, FaultClass, RunSpec, LIVENESS_BLOCKS,
};

/// The outcome of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The seed (replays the run with `--seed`).
    pub seed: u64,
    /// The fault class.
    pub class: FaultClass,
    /// Validators.
    pub n: usize,
    /// Byzantine validators.
    pub byzantine: usize,
    /// Agreement violations.
    pub safety_violations: usize,
    /// Honest double-signs.
    pub double_signs: usize,
    /// Commits without a valid 2-chain proof, or that break the node's own chain.
    pub unbacked_commits: usize,
    /// Some honest node did not commit new blocks after GST within the window.
    pub liveness_failure: bool,
    /// Lowest committed height among honest nodes at the end.
    pub commits_min: u64,
    /// Highest round reached by an honest node.
    pub rounds: u64,
    /// Rounds from GST until every honest node had committed new blocks.
    pub rounds_to_liveness: Option<u64>,
    /// Consensus messages (proposal, vote, timeout) sent by honest validators, per recipient.
    pub honest_messages: u64,
    /// `honest_messages / honest validators / rounds`.
    pub messages_per_validator_per_round: f64,
    /// Equivocation evidence items raised by honest nodes.
    pub evidence: u64,
    /// Block requests (missing ancestors) sent by honest nodes.
    pub block_requests: u64,
    /// Sync requests (far behind) sent by honest nodes.
    pub sync_requests: u64,
    /// Frames refused by the decoder.
    pub rejected_frames: u64,
    /// Messages refused by structural or signature checks.
    pub rejected_messages: u64,
    /// Virtual time simulated (ms).
    pub virtual_ms: TimeMs,
    /// Global stabilisation time of the run (ms).
    pub gst_ms: TimeMs,
    /// Crashes: (validator, crash ms, restart ms).
    pub crashes: Vec<(u16, TimeMs, TimeMs)>,
    /// Byzantine validators and their behaviour.
    pub byzantine_nodes: Vec<(u16, Byzantine)>,
    /// The first violation, if any.
    pub first_violation: Option<String>,
}

impl RunReport {
    fn empty(spec: &RunSpec) -> Self {
        RunReport {
            seed: spec.seed,
            class: spec.class,
            n: spec.n,
            byzantine: spec.byzantine.len(),
            safety_violations: 0,
            double_signs: 0,
            unbacked_commits: 0,
            liveness_failure: false,
            commits_min: 0,
            rounds: 0,
            rounds_to_liveness: None,
            honest_messages: 0,
            messages_per_validator_per_round: 0.0,
            evidence: 0,
            block_requests: 0,
            sync_requests: 0,
            rejected_frames: 0,
            rejected_messages: 0,
            virtual_ms: 0,
            gst_ms: spec.gst_ms,
            crashes: spec
                .crashes
                .iter()
                .map(|c| (c.node.0, c.at_ms, c.restart_ms))
                .collect(),
            byzantine_nodes: spec.byzantine.iter().map(|(v, k)| (v.0, *k)).collect(),
            first_violation: None,
        }
    }

    /// True when every invariant held.
    pub fn ok(&self) -> bool {
        self.safety_violations == 0
            && self.double_signs == 0
            && self.unbacked_commits == 0
            && !self.liveness_failure
    }
}

struct SimApp {
    tag: [u8; 3],
}

impl App for SimApp {
    fn make_payload(&mut self, height: Height, round: Round, _: Option<&[Arc<Block>]>) -> Vec<u8> {
        let mut p = self.tag.to_vec();
        p.extend_from_slice(&height.0.to_le_bytes());
        p.extend_from_slice(&round.0.to_le_bytes());
        p
    }

    fn validate_payload(&self, block: &Block) -> Result<(), String> {
        if block.payload.starts_with(b"bad") {
            return Err("payload marked invalid".into());
        }
        Ok(())
    }
}

struct Instance {
    core: Option<Core<MemStorage, SimApp>>,
    parked: Option<MemStorage>,
    next_tick: Option<TimeMs>,
    /// When the simulated persistence stage next makes committed blocks durable.
    persist_at: Option<TimeMs>,
    tag: u8,
}

struct Slot {
    byz: Option<Byzantine>,
    key: Keypair,
    instances: Vec<Instance>,
    forged: HashMap<BlockId, Vec<Block>>,
}

enum EventKind {
    Deliver {
        to: ValidatorIndex,
        from: ValidatorIndex,
        bytes: Arc<Vec<u8>>,
    },
    Tick {
        node: ValidatorIndex,
        inst: usize,
    },
    /// The persistence stage's group commit: committed blocks become durable.
    Persist {
        node: ValidatorIndex,
        inst: usize,
    },
    Crash(ValidatorIndex),
    Restart(ValidatorIndex),
    Forge(ValidatorIndex),
    Gst,
}

struct Event {
    at: TimeMs,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Bound on events processed in one run (a runaway run is a bug, reported as a liveness failure).
const MAX_EVENTS: u64 = 20_000_000;

struct Sim {
    spec: RunSpec,
    ctx: Arc<EpochContext>,
    slots: Vec<Slot>,
    queue: BinaryHeap<Event>,
    seq: u64,
    rng: ChaCha8Rng,
    cache: SigCache,
    checker: Checker,
    honest: Vec<ValidatorIndex>,
    gst_height: Option<Height>,
    gst_round: Round,
    live_at_round: Option<Round>,
    /// Virtual time at which liveness was reached.
    live_at_ms: Option<TimeMs>,
    report: RunReport,
}

/// Runs one spec to completion.
pub fn run(spec: RunSpec) -> RunReport {
    match Sim::new(spec.clone()) {
        Ok(mut sim) => {
            sim.run();
            sim.finish()
        }
        Err(why) => RunReport {
            liveness_failure: true,
            first_violation: Some(why),
            ..RunReport::empty(&spec)
        },
    }
}

fn node_seed(seed: u64, i: usize) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("bpci sim validator key v1");
    h.update(&seed.to_le_bytes());
    h.update(&(i as u64).to_le_bytes());
    *h.finalize().as_bytes()
}

impl Sim {
    fn new(spec: RunSpec) -> Result<Self, String> {
        let n = spec.n;
        let keys: Vec<Keypair> = (0..n)
            .map(|i| Keypair::from_seed(&node_seed(spec.seed, i)))
            .collect();
        let validators = keys
            .iter()
            .zip(&spec.stakes)
            .map(|(k, s)| Validator {
                key: k.public(),
                stake: Stake(*s),
            })
            .collect();
        let set = ValidatorSet::new(Epoch(1), validators).map_err(|e| e.to_string())?;
        #[allow(unused_mut)]
        let mut ctx = EpochContext::new(format!("bpci-sim-{}", spec.seed), set);
        #[cfg(feature = "break-rules")]
        {
            ctx.broken_rule = spec.broken_rule;
        }
        let ctx = Arc::new(ctx);
        let slots = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let byz = spec.byzantine_kind(ValidatorIndex(i as u16));
                let count = match byz {
                    Some(Byzantine::Silent) => 0,
                    Some(Byzantine::Twins) => 2,
                    _ => 1,
                };
                let instances = (0..count)
                    .map(|t| Instance {
                        core: None,
                        // Committed blocks become durable only at the persistence stage's
                        // group commit, as on a node.
                        parked: Some(MemStorage::deferred()),
                        next_tick: None,
                        persist_at: None,
                        tag: t as u8,
                    })
                    .collect();
                Slot {
                    byz,
                    key,
                    instances,
                    forged: HashMap::new(),
                }
            })
            .collect();
        let honest = (0..n as u16)
            .map(ValidatorIndex)
            .filter(|i| spec.byzantine_kind(*i).is_none())
            .collect();
        let report = RunReport::empty(&spec);
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            cache: SigCache::new(spec.seed),
            spec,
            ctx,
            slots,
            queue: BinaryHeap::new(),
            seq: 0,
            checker: Checker::default(),
            honest,
            gst_height: None,
            gst_round: Round(0),
            live_at_round: None,
            live_at_ms: None,
            report,
        })
    }

    fn push(&mut self, at: TimeMs, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn run(&mut self) {
        for i in 0..self.spec.n {
            self.restart(ValidatorIndex(i as u16), 0);
        }
        for c in self.spec.crashes.clone() {
            self.push(c.at_ms, EventKind::Crash(c.node));
            self.push(c.restart_ms, EventKind::Restart(c.node));
        }
        for (v, kind) in self.spec.byzantine.clone() {
            if kind == Byzantine::Forger {
                for _ in 0..3 {
                    let at = self.rng.gen_range(200..self.spec.gst_ms.max(400));
                    self.push(at, EventKind::Forge(v));
                }
            }
        }
        self.push(self.spec.gst_ms, EventKind::Gst);
        let end = self.spec.gst_ms + self.spec.liveness_window_ms;
        let mut events = 0u64;
        while let Some(ev) = self.queue.pop() {
            events += 1;
            if ev.at > end || events > MAX_EVENTS {
                break;
            }
            self.report.virtual_ms = ev.at;
            let now = ev.at;
            match ev.kind {
                EventKind::Deliver { to, from, bytes } => self.deliver(to, from, &bytes, now),
                EventKind::Tick { node, inst } => self.tick(node, inst, now),
                EventKind::Persist { node, inst } => self.persist(node, inst, now),
                EventKind::Crash(node) => self.crash(node),
                EventKind::Restart(node) => self.restart(node, now),
                EventKind::Forge(node) => self.forge(node, now),
                EventKind::Gst => {
                    let h = self.honest_heights().max().unwrap_or_default();
                    self.gst_height = Some(h);
                    self.gst_round = self.max_round();
                }
            }
            if self.live_at_round.is_some() {
                break;
            }
        }
    }

    fn honest_heights(&self) -> impl Iterator<Item = Height> + '_ {
        self.honest.iter().map(|i| self.checker.height(*i))
    }

    fn max_round(&self) -> Round {
        self.honest
            .iter()
            .filter_map(|i| self.slots[i.as_usize()].instances.first())
            .filter_map(|inst| inst.core.as_ref().map(|c| c.round()))
            .max()
            .unwrap_or_default()
    }

    fn check_liveness(&mut self) {
        let Some(gst_h) = self.gst_height else { return };
        if self.live_at_round.is_none()
            && self
                .honest_heights()
                .all(|h| h.0 >= gst_h.0 + LIVENESS_BLOCKS)
        {
            self.live_at_round = Some(self.max_round());
            self.live_at_ms = Some(self.report.virtual_ms);
        }
    }

    /// A crash keeps what the node's store made durable, nothing else.
    fn crash(&mut self, node: ValidatorIndex) {
        for inst in &mut self.slots[node.as_usize()].instances {
            if let Some(core) = inst.core.take() {
                inst.parked = Some(core.into_storage().crash());
                inst.next_tick = None;
                inst.persist_at = None;
            }
        }
    }

    fn persist(&mut self, node: ValidatorIndex, inst: usize, now: TimeMs) {
        let Some(instance) = self.slots[node.as_usize()].instances.get_mut(inst) else {
            return;
        };
        if instance.persist_at != Some(now) {
            return;
        }
        instance.persist_at = None;
        if let Some(core) = instance.core.as_mut() {
            core.storage_mut().flush_commits();
        }
    }

    /// Schedules the group commit of what `node` just committed, a moment later (execution and
    /// the write take time; a crash in between loses the commit from its chain).
    fn schedule_persist(&mut self, node: ValidatorIndex, inst: usize, now: TimeMs) {
        let delay = self.rng.gen_range(0..=2 * self.spec.latency_ms.1);
        let Some(instance) = self.slots[node.as_usize()].instances.get_mut(inst) else {
            return;
        };
        if instance.persist_at.is_some() {
            return;
        }
        instance.persist_at = Some(now + delay);
        self.push(now + delay, EventKind::Persist { node, inst });
    }

    fn restart(&mut self, node: ValidatorIndex, now: TimeMs) {
        let i = node.as_usize();
        for k in 0..self.slots[i].instances.len() {
            let Some(store) = self.slots[i].instances[k].parked.take() else {
                continue;
            };
            let cfg = CoreConfig {
                me: node,
                round_timeout_ms_base: self.spec.round_timeout_ms_base,
                round_timeout_ms_max: self.spec.round_timeout_ms_max,
            };
            let app = SimApp {
                tag: [b'p', node.0 as u8, self.slots[i].instances[k].tag],
            };
            let key = self.slots[i].key.clone();
            match Core::new(Arc::clone(&self.ctx), cfg, key, store, app, now) {
                Ok(mut core) => {
                    if k == 0 && self.slots[i].byz.is_none() {
                        // The node is back at its durable committed tip: commits from there are
                        // checked against its earlier ones.
                        let root = core.committed();
                        self.checker.on_restart(node, root.id, root.height);
                    }
                    let actions = core.start(now);
                    self.slots[i].instances[k].core = Some(core);
                    self.apply(node, k, actions, now);
                }
                Err(e) => {
                    self.report
                        .first_violation
                        .get_or_insert(format!("restart failed: {e}"));
                }
            }
        }
    }

    fn tick(&mut self, node: ValidatorIndex, inst: usize, now: TimeMs) {
        let Some(instance) = self.slots[node.as_usize()].instances.get_mut(inst) else {
            return;
        };
        if instance.next_tick != Some(now) {
            return;
        }
        instance.next_tick = None;
        let Some(core) = instance.core.as_mut() else {
            return;
        };
        let actions = core.handle_tick(now);
        self.apply(node, inst, actions, now);
    }

    fn schedule_tick(&mut self, node: ValidatorIndex, inst: usize, now: TimeMs) {
        let Some(instance) = self.slots[node.as_usize()].instances.get_mut(inst) else {
            return;
        };
        let Some(core) = instance.core.as_ref() else {
            return;
        };
        let at = core.next_deadline_ms().max(now + 1);
        if instance.next_tick.is_none_or(|t| at < t) {
            instance.next_tick = Some(at);
            self.push(at, EventKind::Tick { node, inst });
        }
    }

    fn deliver(&mut self, to: ValidatorIndex, from: ValidatorIndex, bytes: &[u8], now: TimeMs) {
        let slot = to.as_usize();
        if self.slots[slot].instances.iter().all(|i| i.core.is_none()) {
            return;
        }
        let msg: Message = match decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.report.rejected_frames += 1;
                return;
            }
        };
        if let (Some(Byzantine::Forger), Message::BlockRequest(req)) = (self.slots[slot].byz, &msg)
        {
            if let Some(blocks) = self.slots[slot].forged.get(&req.id).cloned() {
                let reply = Message::BlockResponse(BlockResponse { blocks });
                self.send_bytes(to, from, Arc::new(encode_infallible(&reply)), now);
                return;
            }
        }
        let prepared = match self.ctx.prepare(msg) {
            Ok(p) => p,
            Err(_) => {
                self.report.rejected_messages += 1;
                return;
            }
        };
        if !self.cache.check(prepared.items()) {
            self.report.rejected_messages += 1;
            return;
        }
        let verified = prepared.into_verified_after_check();
        for k in 0..self.slots[slot].instances.len() {
            let Some(core) = self.slots[slot].instances[k].core.as_mut() else {
                continue;
            };
            let actions = core.handle_message(from, verified.clone(), now);
            self.apply(to, k, actions, now);
        }
    }

    fn apply(&mut self, node: ValidatorIndex, inst: usize, actions: Vec<Action>, now: TimeMs) {
        let byz = self.slots[node.as_usize()].byz;
        for a in actions {
            match a {
                Action::Send { to, msg } => {
                    if let Message::Vote(v) = &msg {
                        if byz.is_none() {
                            self.checker.on_vote(v);
                        }
                    }
                    self.emit(node, vec![to], msg, now);
                }
                Action::Broadcast { msg } => {
                    if let (None, Message::Proposal(p)) = (byz, &msg) {
                        let id = p.block.id(&self.ctx.chain_id);
                        self.checker.on_proposal(node, p.block.round, id);
                    }
                    let to: Vec<ValidatorIndex> = (0..self.spec.n as u16)
                        .map(ValidatorIndex)
                        .filter(|j| *j != node)
                        .collect();
                    self.emit(node, to, msg, now);
                }
                Action::Committed(batch) => {
                    if byz.is_none() {
                        self.checker.on_commit(node, &batch, &self.ctx);
                        self.check_liveness();
                    }
                    self.schedule_persist(node, inst, now);
                }
                Action::Evidence(_) => {
                    if byz.is_none() {
                        self.report.evidence += 1;
                    }
                }
                // Optimistic execution is the node's business; the simulator's app has none.
                Action::Certified(_) => {}
            }
        }
        self.schedule_tick(node, inst, now);
    }

    /// Sends `msg` from `node` to `to`, as its behaviour dictates.
    fn emit(&mut self, node: ValidatorIndex, to: Vec<ValidatorIndex>, msg: Message, now: TimeMs) {
        let byz = self.slots[node.as_usize()].byz;
        let consensus_kind = matches!(
            msg,
            Message::Proposal(_) | Message::Vote(_) | Message::Timeout(_)
        );
        if byz.is_none() {
            let remote = to.iter().filter(|t| **t != node).count() as u64;
            match &msg {
                _ if consensus_kind => self.report.honest_messages += remote,
                Message::BlockRequest(_) => self.report.block_requests += remote,
                Message::SyncRequest(_) => self.report.sync_requests += remote,
                _ => {}
            }
        }
        match (byz, msg) {
            (Some(Byzantine::BadSignature), mut msg) => {
                corrupt_signature(&mut msg);
                self.send_all(node, &to, &msg, now);
            }
            (Some(Byzantine::DoubleVoter), Message::Vote(v)) => {
                let mut other = [0u8; 32];
                self.rng.fill_bytes(&mut other);
                let data = VoteData {
                    block_id: BlockId(other),
                    ..v.data
                };
                let second = Vote {
                    data,
                    signature: self.slots[node.as_usize()]
                        .key
                        .sign(&data.digest(&self.ctx.chain_id, v.epoch)),
                    ..v.clone()
                };
                self.send_all(node, &to, &Message::Vote(v), now);
                self.send_all(node, &to, &Message::Vote(second), now);
            }
            (Some(Byzantine::Equivocator), Message::Proposal(p)) => {
                let mut block = p.block.clone();
                block.payload = b"equivocation".to_vec().into();
                let id = block.id(&self.ctx.chain_id);
                let data = ProposalData {
                    block_id: id,
                    round: block.round,
                };
                let second = Proposal {
                    signature: self.slots[node.as_usize()]
                        .key
                        .sign(&data.digest(&self.ctx.chain_id, block.epoch)),
                    block,
                    tc_for_prev_round: p.tc_for_prev_round.clone(),
                };
                let a = Arc::new(encode_infallible(&Message::Proposal(p)));
                let b = Arc::new(encode_infallible(&Message::Proposal(second)));
                for t in to {
                    let (x, y) = if self.rng.gen_bool(0.5) {
                        (&a, &b)
                    } else {
                        (&b, &a)
                    };
                    self.send_bytes(node, t, Arc::clone(x), now);
                    self.send_bytes(node, t, Arc::clone(y), now);
                }
            }
            (Some(Byzantine::Garbage), msg) => {
                self.send_all(node, &to, &msg, now);
                let bytes = encode_infallible(&msg);
                for t in to {
                    if self.rng.gen_bool(0.3) {
                        let g = self.garbage(&bytes);
                        self.send_bytes(node, t, Arc::new(g), now);
                    }
                }
            }
            (_, msg) => self.send_all(node, &to, &msg, now),
        }
    }

    fn garbage(&mut self, valid: &[u8]) -> Vec<u8> {
        match self.rng.gen_range(0..4) {
            0 => {
                let len = self.rng.gen_range(0..256);
                (0..len).map(|_| self.rng.gen()).collect()
            }
            1 => valid[..self.rng.gen_range(0..valid.len().max(1))].to_vec(),
            2 => {
                let mut v = valid.to_vec();
                for _ in 0..self.rng.gen_range(1..8) {
                    if v.is_empty() {
                        break;
                    }
                    let i = self.rng.gen_range(0..v.len());
                    v[i] ^= 1 << self.rng.gen_range(0..8);
                }
                v
            }
            _ => {
                let mut v = valid.to_vec();
                v.extend((0..self.rng.gen_range(1..16)).map(|_| self.rng.gen::<u8>()));
                v
            }
        }
    }

    fn send_all(
        &mut self,
        from: ValidatorIndex,
        to: &[ValidatorIndex],
        msg: &Message,
        now: TimeMs,
    ) {
        let bytes = Arc::new(encode_infallible(msg));
        for t in to {
            self.send_bytes(from, *t, Arc::clone(&bytes), now);
        }
    }

    fn send_bytes(
        &mut self,
        from: ValidatorIndex,
        to: ValidatorIndex,
        bytes: Arc<Vec<u8>>,
        now: TimeMs,
    ) {
        if from == to {
            self.push(now, EventKind::Deliver { to, from, bytes });
            return;
        }
        if self.spec.partitioned(now, from, to) {
            return;
        }
        let pre_gst = now < self.spec.gst_ms;
        if pre_gst && self.rng.gen_bool(self.spec.loss) {
            return;
        }
        let (lo, hi) = self.spec.latency_ms;
        let mut delay = self.rng.gen_range(lo..=hi);
        if pre_gst && self.rng.gen_bool(self.spec.reorder) {
            delay += self.rng.gen_range(0..=3 * hi);
        }
        if pre_gst && self.rng.gen_bool(self.spec.duplicate) {
            let again = self.rng.gen_range(lo..=4 * hi);
            self.push(
                now + again,
                EventKind::Deliver {
                    to,
                    from,
                    bytes: Arc::clone(&bytes),
                },
            );
        }
        self.push(now + delay, EventKind::Deliver { to, from, bytes });
    }

    /// A forger builds two conflicting 2-chains on its highest QC, each "certified" by forged QCs,
    /// and offers one to each half of the honest validators inside a timeout.
    fn forge(&mut self, node: ValidatorIndex, now: TimeMs) {
        let slot = node.as_usize();
        let Some(core) = self.slots[slot]
            .instances
            .first()
            .and_then(|i| i.core.as_ref())
        else {
            return;
        };
        let qc0 = core.safety().high_qc.clone();
        let r = core.round().0 + 2;
        let mut honest = self.honest.clone();
        honest.shuffle(&mut self.rng);
        let half = honest.len() / 2;
        let groups = [honest[..half].to_vec(), honest[half..].to_vec()];
        let modes = [
            ForgeMode::DuplicateSigner,
            ForgeMode::NonMember,
            ForgeMode::TooLittleStake,
        ];
        for (g, group) in groups.iter().enumerate() {
            for mode in modes {
                let tag = [b'f', g as u8, mode as u8];
                let p1 = self.forged_block(node, &qc0, Round(r), tag.to_vec());
                let id1 = p1.id(&self.ctx.chain_id);
                let qc1 = self.forged_qc(node, id1, Round(r), p1.height, mode);
                let p2 = self.forged_block(node, &qc1, Round(r + 1), tag.to_vec());
                let id2 = p2.id(&self.ctx.chain_id);
                let qc2 = self.forged_qc(node, id2, Round(r + 1), p2.height, mode);
                let data = TimeoutData {
                    round: Round(r + 2),
                    high_qc_round: Round(r + 1),
                };
                let t = Timeout {
                    round: Round(r + 2),
                    epoch: self.ctx.epoch(),
                    high_qc: qc2,
                    last_tc: None,
                    voter: node,
                    signature: self.slots[slot]
                        .key
                        .sign(&data.digest(&self.ctx.chain_id, self.ctx.epoch())),
                };
                self.slots[slot].forged.insert(id2, vec![p2, p1.clone()]);
                self.slots[slot].forged.insert(id1, vec![p1]);
                self.send_all(node, group, &Message::Timeout(t), now);
            }
        }
    }

    fn forged_block(
        &self,
        node: ValidatorIndex,
        qc: &QuorumCert,
        round: Round,
        payload: Vec<u8>,
    ) -> Block {
        Block {
            parent_id: qc.block_id,
            round,
            height: qc.height.next(),
            epoch: self.ctx.epoch(),
            author: node,
            payload: payload.into(),
            parent_qc: qc.clone(),
            timestamp_ms: 0,
            exec_height: Height(0),
            exec_root: [0; 32],
            evidence: Vec::new(),
        }
    }

    fn forged_qc(
        &self,
        node: ValidatorIndex,
        id: BlockId,
        round: Round,
        height: Height,
        mode: ForgeMode,
    ) -> QuorumCert {
        let data = VoteData {
            block_id: id,
            round,
            height,
        };
        let sig = self.slots[node.as_usize()]
            .key
            .sign(&data.digest(&self.ctx.chain_id, self.ctx.epoch()));
        let n = self.spec.n;
        let votes = match mode {
            ForgeMode::DuplicateSigner => vec![(node, sig); 2 * n / 3 + 1],
            ForgeMode::NonMember => {
                let mut v = vec![(node, sig)];
                v.extend((0..2 * n / 3 + 1).map(|k| (ValidatorIndex((n + k) as u16), sig)));
                v
            }
            ForgeMode::TooLittleStake => vec![(node, sig)],
        };
        QuorumCert {
            block_id: id,
            round,
            height,
            epoch: self.ctx.epoch(),
            votes,
        }
    }

    fn finish(mut self) -> RunReport {
        let c = &self.checker;
        self.report.safety_violations = c.safety.len();
        self.report.double_signs = c.double_signs.len();
        self.report.unbacked_commits = c.unbacked.len();
        if self.report.first_violation.is_none() {
            self.report.first_violation = c
                .safety
                .iter()
                .chain(&c.double_signs)
                .chain(&c.unbacked)
                .next()
                .map(|v| format!("{}: {}", v.kind, v.detail));
        }
        self.report.commits_min = self.honest_heights().min().unwrap_or_default().0;
        let rounds = self.max_round();
        self.report.rounds = rounds.0;
        self.report.rounds_to_liveness = self
            .live_at_round
            .map(|r| r.0.saturating_sub(self.gst_round.0));
        let byzantine: Vec<ValidatorIndex> = self.spec.byzantine.iter().map(|(v, _)| *v).collect();
        let bound = liveness_rounds_max(&self.ctx.validators, &byzantine);
        let ms_bound = liveness_ms_max(bound, self.spec.round_timeout_ms_base);
        let ms_to_liveness = self.live_at_ms.map(|t| t.saturating_sub(self.spec.gst_ms));
        self.report.liveness_failure = match (self.report.rounds_to_liveness, ms_to_liveness) {
            (Some(r), Some(ms)) => r > bound && ms > ms_bound,
            _ => true,
        };
        if self.report.liveness_failure && self.report.first_violation.is_none() {
            self.report.first_violation = Some(format!(
                "liveness: honest heights {:?} after GST height {:?}; rounds since GST {:?} (bound {bound}), ms since GST {:?} (bound {ms_bound})",
                self.honest_heights().map(|h| h.0).collect::<Vec<_>>(),
                self.gst_height.map(|h| h.0),
                self.report.rounds_to_liveness,
                ms_to_liveness
            ));
        }
        let honest = self.honest.len().max(1) as f64;
        self.report.messages_per_validator_per_round =
            self.report.honest_messages as f64 / honest / rounds.0.max(1) as f64;
        self.report
    }
}

#[derive(Clone, Copy)]
enum ForgeMode {
    DuplicateSigner = 0,
    NonMember = 1,
    TooLittleStake = 2,
}

fn corrupt_signature(msg: &mut Message) {
    let flip = |s: &mut Signature| {
        let mut b = s.to_bytes();
        b[7] ^= 0x40;
        *s = Signature::from_bytes(b);
    };
    match msg {
        Message::Proposal(p) => flip(&mut p.signature),
        Message::Vote(v) => flip(&mut v.signature),
        Message::Timeout(t) => flip(&mut t.signature),
        _ => {}
    }
}
