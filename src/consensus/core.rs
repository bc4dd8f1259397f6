//! The sans-IO consensus core: `handle_*(input, now) -> Vec<Action>`. See the module docs of
//! [`crate::consensus`] for the rules; each rule's code below is marked `Rule "<name>"`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::broken;
use super::certs::{EpochContext, Verified};
use super::messages::{
    Block, BlockRequest, BlockResponse, CommitProof, Evidence, Message, Proposal, ProposalData,
    QuorumCert, SyncRequest, SyncResponse, Timeout, TimeoutCert, TimeoutData, Vote, VoteData,
    MAX_BLOCKS_PER_RESPONSE, MAX_EVIDENCE_PER_BLOCK, RESPONSE_BLOCK_BYTES_MAX,
};
use super::safety::{SafetyState, Storage, StorageError};
use super::tree::{BlockTree, Insert, Root};
use crate::crypto::{Digest32, Keypair};
use crate::types::{BlockId, Height, Round, Stake, TimeMs, ValidatorIndex};

/// Rounds ahead of the current one for which votes and timeouts are kept.
pub const MAX_FUTURE_ROUNDS: u64 = 64;
/// Rounds behind the current one for which signed votes are remembered to detect equivocation.
pub const EQUIVOCATION_WINDOW_ROUNDS: u64 = 16;
/// A gap (in heights) above which a node syncs committed history instead of fetching ancestors.
pub const SYNC_GAP_BLOCKS: u64 = 32;
/// How long a block or sync request waits before it is re-sent (to another peer).
pub const FETCH_RETRY_MS: TimeMs = 400;
/// Most block ids being fetched at once.
pub const MAX_WANTED_BLOCKS: usize = 256;
/// Most QCs held while the block they certify is fetched.
pub const MAX_PENDING_QCS: usize = 64;
/// Most evidence items held for inclusion in blocks.
pub const MAX_EVIDENCE_POOL: usize = 256;
/// Cap of the backoff exponent of the round timer.
const MAX_BACKOFF_EXPONENT: u32 = 16;

/// The application's hooks: payload building and validation (the auction plugs in here), and the
/// pipeline's back-pressure.
pub trait App {
    /// The payload of a new block at `height` in `round`, extending `parents`: the uncommitted
    /// blocks from just above the committed root up to the new block's parent, oldest first
    /// (empty when the parent is the committed root), or `None` when this node does not hold
    /// the parent (it extends a QC whose block it has not received, as after a restart).
    fn make_payload(
        &mut self,
        height: Height,
        round: Round,
        parents: Option<&[Arc<Block>]>,
    ) -> Vec<u8>;
    /// Checks a proposed block's payload before this node votes for it.
    fn validate_payload(&self, block: &Block) -> Result<(), String>;
    /// `false` holds proposals back (pipeline depth reached); the core retries on tick.
    fn can_propose(&self) -> bool {
        true
    }
    /// The committed height and its executed state root that this node's next block carries.
    fn exec_root(&self) -> (Height, Digest32) {
        (Height(0), [0; 32])
    }
}

/// Core configuration.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node's index.
    pub me: ValidatorIndex,
    /// Round timer after a commit.
    pub round_timeout_ms_base: TimeMs,
    /// Round timer cap (`hotstuff.view_timeout_seconds`).
    pub round_timeout_ms_max: TimeMs,
}

/// Blocks newly committed, in height order, with the proof that commits the last one.
#[derive(Clone, Debug)]
pub struct CommittedBatch {
    /// (id, block), oldest first.
    pub blocks: Vec<(BlockId, Arc<Block>)>,
    /// The 2-chain proof.
    pub proof: CommitProof,
}

/// What the core asks its driver to do, in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send to one validator (possibly this node itself: loop it back).
    Send {
        /// Recipient.
        to: ValidatorIndex,
        /// Message.
        msg: Message,
    },
    /// Send to every other validator.
    Broadcast {
        /// Message.
        msg: Message,
    },
    /// Blocks are final (already handed to storage).
    Committed(CommittedBatch),
    /// A block is certified (a QC for it is this node's new highest QC): the uncommitted blocks
    /// from just above the committed root up to it, oldest first, with their ids. Not final: the
    /// application may execute them optimistically and must be ready to drop that work if another
    /// branch commits.
    Certified(Vec<(BlockId, Arc<Block>)>),
    /// New equivocation evidence.
    Evidence(Evidence),
}

/// Counters for metrics and the simulator.
#[derive(Clone, Debug, Default)]
pub struct CoreStats {
    /// Votes signed.
    pub votes_sent: u64,
    /// Timeouts signed.
    pub timeouts_signed: u64,
    /// Proposals made.
    pub proposals: u64,
    /// Rounds entered through a TC (view changes).
    pub view_changes: u64,
    /// Blocks committed.
    pub blocks_committed: u64,
    /// Messages dropped by a rule.
    pub dropped: u64,
    /// Storage writes that failed (and so sent nothing).
    pub storage_failures: u64,
    /// Sync responses applied.
    pub syncs: u64,
    /// Proposals extending a block this node did not hold yet (its resubmitted transactions
    /// then wait for its next turn).
    pub proposed_without_parent: u64,
}

#[derive(Default)]
struct VoteRound {
    voted: HashSet<ValidatorIndex>,
    by_block: HashMap<
        BlockId,
        (
            VoteData,
            BTreeMap<ValidatorIndex, crate::crypto::Signature>,
            Stake,
        ),
    >,
    formed: bool,
}

#[derive(Default)]
struct TimeoutRound {
    entries: BTreeMap<ValidatorIndex, (Round, crate::crypto::Signature)>,
    stake: Stake,
    formed: bool,
}

struct Wanted {
    since_ms: TimeMs,
    peer: ValidatorIndex,
    attempts: u16,
    height: Height,
}

/// The consensus state machine of one validator.
pub struct Core<S: Storage, A: App> {
    ctx: Arc<EpochContext>,
    cfg: CoreConfig,
    key: Keypair,
    store: S,
    app: A,
    safety: SafetyState,
    round: Round,
    deadline_ms: TimeMs,
    /// When this node's timeout for the current round goes out again (while the round's timer,
    /// backed off, runs longer): a validator that was down when it went out, and is back in an
    /// earlier round, joins the round from it (its certificates) and adds its own timeout.
    timeout_resend_ms: TimeMs,
    rounds_without_commit: u32,
    last_tc: Option<TimeoutCert>,
    tree: BlockTree,
    votes: BTreeMap<Round, VoteRound>,
    timeouts: BTreeMap<Round, TimeoutRound>,
    seen_votes: BTreeMap<(Round, ValidatorIndex), Vote>,
    seen_proposals: BTreeMap<Round, (ProposalData, crate::crypto::Signature)>,
    evidence_seen: BTreeSet<(Round, ValidatorIndex, bool)>,
    evidence_pool: Vec<Evidence>,
    waiting_proposal: Option<(BlockId, Arc<Block>, Option<TimeoutCert>)>,
    pending_qcs: HashMap<BlockId, QuorumCert>,
    wanted: BTreeMap<BlockId, Wanted>,
    sync_requested_ms: Option<TimeMs>,
    hint_peer: ValidatorIndex,
    now_ms: TimeMs,
    out: Vec<Action>,
    stats: CoreStats,
    /// See [`Core::defer_proposals`].
    defer_proposals: bool,
    /// A round this node leads was entered while proposals were deferred.
    proposal_due: bool,
    /// This node's own proposal, sent and not yet handled here (voted for): see
    /// [`Core::own_proposal_due`].
    own_proposal: Option<(Proposal, BlockId)>,
    /// The latest round each validator that was behind was sent this node's timeout for
    /// ([`Core::help_behind`]): at most one entry per validator.
    helped: HashMap<ValidatorIndex, Round>,
}

impl<S: Storage, A: App> Core<S, A> {
    /// Starts (or restarts) a validator from what `store` holds: the safety state and the committed
    /// tip. A restarted node never signs a vote or proposal it could not have signed before.
    pub fn new(
        ctx: Arc<EpochContext>,
        cfg: CoreConfig,
        key: Keypair,
        store: S,
        app: A,
        now_ms: TimeMs,
    ) -> Result<Self, StorageError> {
        let mut safety = store
            .load_safety()?
            .unwrap_or_else(|| SafetyState::initial(ctx.epoch(), ctx.genesis_qc()));
        let root = match store.committed_tip() {
            Some((block, proof)) => {
                if proof.child_qc.round > safety.high_qc.round {
                    safety.high_qc = proof.child_qc.clone();
                    safety.one_chain_round = proof.child_qc.round;
                }
                Root {
                    id: block.id(&ctx.chain_id),
                    height: block.height,
                    round: block.round,
                }
            }
            None => Root {
                id: ctx.genesis_id,
                height: Height(0),
                round: Round(0),
            },
        };
        // Rebuild the block tree from the blocks kept before a restart (DESIGN §3: after a
        // simultaneous restart of every validator the chain resumes from the highest certified
        // block any of them holds).
        let mut tree = BlockTree::new(root);
        for (id, block) in store.kept_blocks() {
            let _ = tree.insert(id, block);
        }
        // The TC that ended the highest round, unless a QC as high has superseded it.
        let last_tc = safety
            .high_tc
            .clone()
            .filter(|tc| tc.round >= safety.high_qc.round);
        let mut round = safety.high_qc.round.next();
        if let Some(tc) = &last_tc {
            round = round.max(tc.round.next());
        }
        if let Some(t) = &safety.last_timeout {
            round = round.max(t.round);
        }
        let n = ctx.validators.len().max(1) as u16;
        let me = cfg.me;
        let mut core = Self {
            ctx,
            cfg,
            key,
            store,
            app,
            safety,
            round,
            deadline_ms: 0,
            timeout_resend_ms: TimeMs::MAX,
            rounds_without_commit: 0,
            last_tc,
            tree,
            votes: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            seen_votes: BTreeMap::new(),
            seen_proposals: BTreeMap::new(),
            evidence_seen: BTreeSet::new(),
            evidence_pool: Vec::new(),
            waiting_proposal: None,
            pending_qcs: HashMap::new(),
            wanted: BTreeMap::new(),
            sync_requested_ms: None,
            hint_peer: ValidatorIndex((me.0 + 1) % n),
            now_ms,
            out: Vec::new(),
            stats: CoreStats::default(),
            defer_proposals: false,
            proposal_due: false,
            own_proposal: None,
            helped: HashMap::new(),
        };
        core.deadline_ms = now_ms + core.round_timeout_ms();
        Ok(core)
    }

    /// Call once after `new`. A restarted node first commits what its highest QC commits among
    /// the blocks it kept (and announces the certified branch for execution); then the leader of
    /// the first round proposes.
    pub fn start(&mut self, now_ms: TimeMs) -> Vec<Action> {
        self.now_ms = now_ms;
        let qc = self.safety.high_qc.clone();
        if qc.round > Round(0) {
            self.try_commit(&qc);
            self.announce_certified(qc.block_id);
        }
        self.try_propose();
        std::mem::take(&mut self.out)
    }

    /// With `on`, entering a round this node leads while handling a message does not build the
    /// proposal there: [`Core::handle_message`] returns the message's other actions, and the
    /// caller asks for the proposal with [`Core::propose_due`] once it has dispatched them. A
    /// commit's execution and durable write (and so the commit notices) then start before,
    /// not after, the next payload is packed and signed. The proposal is the one the message
    /// would have built (the caller keeps what the app's `can_propose` reads as it was), except
    /// that a message moving the round twice proposes only for the last round entered.
    pub fn defer_proposals(&mut self, on: bool) {
        self.defer_proposals = on;
    }

    /// The proposal deferred by [`Core::defer_proposals`], if one is due.
    pub fn propose_due(&mut self) -> Vec<Action> {
        if std::mem::take(&mut self.proposal_due) {
            self.try_propose();
        }
        std::mem::take(&mut self.out)
    }

    /// With proposals deferred ([`Core::defer_proposals`]), this node handles its own proposal
    /// (stores the block and votes for it) only here, after the caller has sent the proposal
    /// the returned actions carried: the vote's durable write (the whole block, DESIGN §3) then
    /// runs while the proposal travels, instead of holding it back. The caller calls this after
    /// dispatching any actions that may hold a proposal of its own.
    pub fn own_proposal_due(&mut self) -> Vec<Action> {
        if let Some((proposal, id)) = self.own_proposal.take() {
            let me = self.cfg.me;
            self.on_proposal(me, proposal, id);
        }
        std::mem::take(&mut self.out)
    }

    /// The current round.
    pub fn round(&self) -> Round {
        self.round
    }

    /// The highest committed block.
    pub fn committed(&self) -> Root {
        self.tree.root()
    }

    /// The persisted-or-about-to-be safety state.
    pub fn safety(&self) -> &SafetyState {
        &self.safety
    }

    /// Counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// The storage (for drivers that share it, and for the simulator's crash model).
    pub fn storage(&self) -> &S {
        &self.store
    }

    /// The storage, mutably (the simulator's persistence stage flushes deferred commits).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Hands the storage back (a simulated crash keeps only this).
    pub fn into_storage(self) -> S {
        self.store
    }

    /// The application hooks.
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// When the current round's timer fires (backed off after rounds without a commit).
    pub fn round_deadline_ms(&self) -> TimeMs {
        self.deadline_ms
    }

    /// The next time `handle_tick` has work to do.
    pub fn next_deadline_ms(&self) -> TimeMs {
        let fetch = self
            .wanted
            .values()
            .map(|w| w.since_ms + FETCH_RETRY_MS)
            .min()
            .unwrap_or(TimeMs::MAX);
        self.deadline_ms.min(fetch).min(self.timeout_resend_ms)
    }

    /// This node's index.
    pub fn me(&self) -> ValidatorIndex {
        self.cfg.me
    }

    fn leader(&self, round: Round) -> ValidatorIndex {
        self.ctx.validators.leader(round)
    }

    /// Pacemaker: `base * 2^k` after `k` rounds without a commit (the first two are the normal
    /// pipeline lag), capped.
    fn round_timeout_ms(&self) -> TimeMs {
        let k = self
            .rounds_without_commit
            .saturating_sub(2)
            .min(MAX_BACKOFF_EXPONENT);
        self.cfg
            .round_timeout_ms_base
            .saturating_mul(1u64 << k)
            .min(self.cfg.round_timeout_ms_max)
    }

    /// Time passes: fires the round timer and retries fetches.
    pub fn handle_tick(&mut self, now_ms: TimeMs) -> Vec<Action> {
        self.now_ms = now_ms;
        if now_ms >= self.deadline_ms {
            self.local_timeout();
        } else if now_ms >= self.timeout_resend_ms {
            self.resend_timeout();
        }
        self.try_propose();
        let due: Vec<BlockId> = self
            .wanted
            .iter()
            .filter(|(_, w)| now_ms >= w.since_ms + FETCH_RETRY_MS)
            .map(|(id, _)| *id)
            .collect();
        let n = self.ctx.validators.len() as u16;
        for id in due {
            if let Some(w) = self.wanted.get_mut(&id) {
                w.attempts += 1;
                w.since_ms = now_ms;
                // Ask a different peer each time, never this node.
                let n = n.max(1);
                w.peer = ValidatorIndex((w.peer.0 + 1) % n);
                if w.peer == self.cfg.me {
                    w.peer = ValidatorIndex((w.peer.0 + 1) % n);
                }
                let (peer, height) = (w.peer, w.height);
                if w.attempts > 8 {
                    self.wanted.remove(&id);
                    continue;
                }
                let gap = height.0.saturating_sub(self.tree.root().height.0);
                self.out.push(Action::Send {
                    to: peer,
                    msg: Message::BlockRequest(BlockRequest {
                        id,
                        count: gap.clamp(1, MAX_BLOCKS_PER_RESPONSE as u64) as u16,
                    }),
                });
            }
        }
        std::mem::take(&mut self.out)
    }

    /// A message from `from` that passed [`EpochContext::prepare`] and its signature check.
    pub fn handle_message(
        &mut self,
        from: ValidatorIndex,
        verified: Verified,
        now_ms: TimeMs,
    ) -> Vec<Action> {
        self.now_ms = now_ms;
        if from != self.cfg.me {
            self.hint_peer = from;
        }
        let Verified { msg, ids } = verified;
        match msg {
            Message::Proposal(p) => {
                if let Some(id) = ids.first() {
                    self.on_proposal(from, p, *id);
                }
            }
            Message::Vote(v) => self.on_vote(v),
            Message::Timeout(t) => self.on_timeout(t),
            Message::BlockRequest(r) => self.serve_blocks(from, r),
            Message::BlockResponse(r) => self.on_blocks(from, r, &ids),
            Message::SyncRequest(r) => self.serve_sync(from, r),
            Message::SyncResponse(r) => self.on_sync(from, r, &ids),
            Message::Evidence(e) => self.add_evidence(e),
            // Refused by `EpochContext::prepare`: never verified, never here.
            Message::Txs(_) => {}
        }
        std::mem::take(&mut self.out)
    }

    fn drop_msg(&mut self, why: &'static str) {
        self.stats.dropped += 1;
        tracing::trace!(target: "consensus.drop", why, round = self.round.0);
    }

    fn persist(&mut self) -> bool {
        match self.store.persist_safety(&self.safety) {
            Ok(()) => true,
            Err(e) => {
                self.stats.storage_failures += 1;
                tracing::error!(target: "consensus.storage", error = %e, "safety state not durable; not sending");
                false
            }
        }
    }

    // ---- proposals (IBFT pre-prepare) ----

    fn on_proposal(&mut self, from: ValidatorIndex, p: Proposal, id: BlockId) {
        let Proposal {
            block,
            tc_for_prev_round: tc,
            signature,
        } = p;
        let r = block.round;
        tracing::trace!(target: "consensus.round", round = r.0, "proposal in");
        // Rule "leader": only the round's leader proposes.
        if block.author != self.leader(r) {
            return self.drop_msg("proposal not from the round's leader");
        }
        // Rule "equivocation": two proposals by one leader for one round.
        let data = ProposalData {
            block_id: id,
            round: r,
        };
        match self.seen_proposals.get(&r) {
            Some((first, sig)) if first.block_id != id => {
                let e = Evidence::DoubleProposal {
                    author: block.author,
                    epoch: block.epoch,
                    a: (*first, *sig),
                    b: (data, signature),
                };
                self.add_evidence(e);
            }
            Some(_) => {}
            None => {
                if r.0 + EQUIVOCATION_WINDOW_ROUNDS >= self.round.0 {
                    self.seen_proposals.insert(r, (data, signature));
                }
            }
        }
        self.process_qc(&block.parent_qc);
        if let Some(tc) = &tc {
            self.process_tc(tc);
        }
        let block = Arc::new(block);
        if block.author == self.cfg.me {
            // Our own proposal leaves only once it is durable here (with the safety state).
            self.keep_block(id, &block);
        }
        match self.tree.insert(id, Arc::clone(&block)) {
            Insert::Added(added) => {
                self.waiting_proposal = Some((id, block, tc));
                self.on_blocks_added(&added);
            }
            Insert::Orphan => {
                let parent_height = Height(block.height.0.saturating_sub(1));
                let parent_id = block.parent_id;
                self.waiting_proposal = Some((id, block, tc));
                self.fetch(parent_id, from, parent_height);
            }
            Insert::Known => {
                // A re-sent proposal: re-send our vote if it was for this block.
                self.resend_vote(id, r);
            }
            Insert::Stale => self.drop_msg("proposal at or below the committed height"),
            Insert::Full => self.drop_msg("block tree full"),
        }
    }

    fn resend_vote(&mut self, id: BlockId, round: Round) {
        if let Some(v) = &self.safety.last_vote {
            if v.data.block_id == id && v.data.round == round {
                let to = self.leader(round.next());
                self.out.push(Action::Send {
                    to,
                    msg: Message::Vote(v.clone()),
                });
            }
        }
    }

    /// Rule "vote" (2-chain): vote for block B of round r only if r is the current round, the author
    /// leads r (checked on receipt), B extends its QC (checked at the border),
    /// `r > max(last_voted_round, qc.round)`, and either `r == qc.round + 1` or the proposal carries a
    /// TC for r-1 with `qc.round >= max(tc.high_qc_rounds)`. Then `last_voted_round = r`, persisted
    /// before the vote leaves.
    fn try_vote(&mut self, id: BlockId, b: &Arc<Block>, tc: Option<&TimeoutCert>) {
        let r = b.round;
        let qc = &b.parent_qc;
        if r != self.round {
            return;
        }
        if !broken!(self.ctx, SkipLastVotedRoundCheck) {
            if let Some(v) = &self.safety.last_vote {
                if v.data.round == r {
                    // Already voted in r: re-send the same vote, never another.
                    return self.resend_vote(id, r);
                }
            }
            if r <= self.safety.last_voted_round {
                return self.drop_msg("vote rule: round not above last voted round");
            }
        }
        if r <= qc.round {
            return self.drop_msg("vote rule: round not above the QC round");
        }
        let direct = r == qc.round.next();
        let via_tc =
            tc.is_some_and(|tc| tc.round.next() == r && qc.round >= tc.max_high_qc_round());
        if !(direct || via_tc) {
            return self.drop_msg("vote rule: neither a direct QC nor a justifying TC");
        }
        if let Err(why) = self.app.validate_payload(b) {
            tracing::debug!(target: "consensus.vote", %why, "payload refused");
            return self.drop_msg("payload refused by the application");
        }
        let data = VoteData {
            block_id: id,
            round: r,
            height: b.height,
        };
        let vote = Vote {
            data,
            epoch: self.ctx.epoch(),
            voter: self.cfg.me,
            signature: self
                .key
                .sign(&data.digest(&self.ctx.chain_id, self.ctx.epoch())),
        };
        // The block voted for is durable with the vote (DESIGN §3): a QC names only blocks
        // that a quorum stored, so after any crash some honest voter still holds it.
        self.keep_block(id, b);
        self.safety.last_voted_round = self.safety.last_voted_round.max(r);
        self.safety.last_vote = Some(vote.clone());
        if !self.persist() {
            return;
        }
        self.stats.votes_sent += 1;
        tracing::trace!(target: "consensus.round", round = r.0, "voted");
        self.out.push(Action::Send {
            to: self.leader(r.next()),
            msg: Message::Vote(vote),
        });
    }

    // ---- votes (IBFT prepare; pipelined, the commit vote of the parent) ----

    fn on_vote(&mut self, v: Vote) {
        let r = v.data.round;
        // Rule "equivocation": two votes by one validator in one round for different blocks.
        if r.0 + EQUIVOCATION_WINDOW_ROUNDS >= self.round.0
            && r.0 <= self.round.0 + MAX_FUTURE_ROUNDS
        {
            match self.seen_votes.get(&(r, v.voter)) {
                Some(first) if first.data.block_id != v.data.block_id => {
                    let e = Evidence::DoubleVote {
                        a: first.clone(),
                        b: v.clone(),
                    };
                    self.add_evidence(e);
                    return;
                }
                Some(_) => {}
                None => {
                    self.seen_votes.insert((r, v.voter), v.clone());
                }
            }
        }
        if self.leader(r.next()) != self.cfg.me {
            return self.drop_msg("vote sent to a non-leader");
        }
        if r.next() < self.round || r.0 > self.round.0 + MAX_FUTURE_ROUNDS {
            return self.drop_msg("vote outside the round window");
        }
        let stake = self.ctx.validators.stake(v.voter);
        let agg = self.votes.entry(r).or_default();
        if agg.formed || !agg.voted.insert(v.voter) {
            return;
        }
        let entry = agg
            .by_block
            .entry(v.data.block_id)
            .or_insert_with(|| (v.data, BTreeMap::new(), Stake(0)));
        entry.1.insert(v.voter, v.signature);
        entry.2 = Stake(entry.2 .0.saturating_add(stake.0));
        if self.ctx.validators.is_quorum(entry.2) {
            let qc = QuorumCert {
                block_id: entry.0.block_id,
                round: entry.0.round,
                height: entry.0.height,
                epoch: self.ctx.epoch(),
                votes: entry.1.iter().map(|(k, s)| (*k, *s)).collect(),
            };
            agg.formed = true;
            tracing::trace!(target: "consensus.round", round = qc.round.0, "certified");
            self.process_qc(&qc);
        }
    }

    // ---- certificates ----

    fn process_qc(&mut self, qc: &QuorumCert) {
        self.keep_certified(&qc.block_id);
        let higher = qc.round > self.safety.high_qc.round;
        if higher {
            self.safety.high_qc = qc.clone();
            self.safety.one_chain_round = qc.round;
        }
        self.try_commit(qc);
        if higher {
            // After the commit, so the announced path starts above the new committed root.
            self.announce_certified(qc.block_id);
        }
        if qc.round >= self.round {
            self.last_tc = None;
            self.advance_round(qc.round.next());
        }
    }

    /// Keeps a certified block of the tree (durable with the next safety write).
    fn keep_certified(&mut self, id: &BlockId) {
        if let Some(b) = self.tree.block(id) {
            let b = Arc::clone(b);
            self.keep_block(*id, &b);
        }
    }

    /// Hands `block` to storage to keep for a restart (DESIGN §3).
    fn keep_block(&mut self, id: BlockId, block: &Arc<Block>) {
        if !broken!(self.ctx, ForgetUncommittedBlocks) {
            self.store.keep_block(id, block);
        }
    }

    fn process_tc(&mut self, tc: &TimeoutCert) {
        if self
            .safety
            .high_tc
            .as_ref()
            .is_none_or(|high| tc.round > high.round)
        {
            self.safety.high_tc = Some(tc.clone());
        }
        if tc.round >= self.round {
            self.last_tc = Some(tc.clone());
            self.stats.view_changes += 1;
            self.advance_round(tc.round.next());
        }
    }

    /// Emits [`Action::Certified`] for `id` with its uncommitted ancestors, when the tree holds them.
    fn announce_certified(&mut self, id: BlockId) {
        let Some(path) = self.tree.path_from_root(&id) else {
            return;
        };
        if path.is_empty() {
            return;
        }
        let mut ids: Vec<BlockId> = path.iter().skip(1).map(|b| b.parent_id).collect();
        ids.push(id);
        self.out
            .push(Action::Certified(ids.into_iter().zip(path).collect()));
    }

    /// Rule "advance": enter round r+1 on a QC or TC for round r.
    fn advance_round(&mut self, round: Round) {
        if round <= self.round {
            return;
        }
        self.round = round;
        self.rounds_without_commit = self.rounds_without_commit.saturating_add(1);
        self.deadline_ms = self.now_ms + self.round_timeout_ms();
        self.timeout_resend_ms = TimeMs::MAX;
        let keep_from = Round(round.0.saturating_sub(1));
        self.votes = self.votes.split_off(&keep_from);
        self.timeouts = self.timeouts.split_off(&round);
        let window = Round(round.0.saturating_sub(EQUIVOCATION_WINDOW_ROUNDS));
        self.seen_proposals = self.seen_proposals.split_off(&window);
        self.seen_votes = self.seen_votes.split_off(&(window, ValidatorIndex(0)));
        if self
            .waiting_proposal
            .as_ref()
            .is_some_and(|(_, b, _)| b.round < round)
        {
            self.waiting_proposal = None;
        }
        if self.defer_proposals {
            self.proposal_due = true;
        } else {
            self.try_propose();
        }
    }

    /// Rule "commit" (2-chain): on a QC for B' whose parent B has `B'.round == B.round + 1`, commit B
    /// and all its uncommitted ancestors, in height order.
    fn try_commit(&mut self, qc: &QuorumCert) {
        if qc.round == Round(0) {
            return;
        }
        let root = self.tree.root();
        let Some(b1) = self.tree.block(&qc.block_id).cloned() else {
            if qc.height > root.height && qc.block_id != root.id {
                if self.pending_qcs.len() < MAX_PENDING_QCS {
                    self.pending_qcs.insert(qc.block_id, qc.clone());
                }
                self.fetch(qc.block_id, self.hint_peer, qc.height);
            }
            return;
        };
        let proof = || CommitProof {
            child: b1.header(),
            child_qc: qc.clone(),
        };
        if broken!(self.ctx, OneChainCommit) {
            return self.commit_up_to(qc.block_id, proof());
        }
        if b1.parent_id == root.id {
            return; // the parent is committed already
        }
        let Some(b0) = self.tree.block(&b1.parent_id) else {
            return;
        };
        if b1.round == b0.round.next() {
            self.commit_up_to(b1.parent_id, proof());
        }
    }

    fn commit_up_to(&mut self, target: BlockId, proof: CommitProof) {
        let Some(path) = self.tree.path_from_root(&target) else {
            return;
        };
        let Some(last) = path.last().cloned() else {
            return;
        };
        if let Err(e) = self.store.persist_commit(&path, &proof) {
            self.stats.storage_failures += 1;
            tracing::error!(target: "consensus.commit", error = %e, "commit not persisted");
            return;
        }
        let mut ids: Vec<BlockId> = path.iter().skip(1).map(|b| b.parent_id).collect();
        ids.push(target);
        self.finish_commit(ids.into_iter().zip(path).collect(), proof, &last, target);
    }

    fn finish_commit(
        &mut self,
        blocks: Vec<(BlockId, Arc<Block>)>,
        proof: CommitProof,
        last: &Block,
        last_id: BlockId,
    ) {
        self.tree.prune(Root {
            id: last_id,
            height: last.height,
            round: last.round,
        });
        let committed_evidence: HashSet<(ValidatorIndex, Round)> = blocks
            .iter()
            .flat_map(|(_, b)| b.evidence.iter().map(|e| (e.offender(), e.round())))
            .collect();
        self.evidence_pool
            .retain(|e| !committed_evidence.contains(&(e.offender(), e.round())));
        let h = last.height;
        self.pending_qcs.retain(|_, qc| qc.height > h);
        self.wanted.retain(|_, w| w.height > h);
        self.rounds_without_commit = 0;
        self.stats.blocks_committed += blocks.len() as u64;
        tracing::debug!(
            target: "consensus.commit",
            height = h.0,
            round = last.round.0,
            blocks = blocks.len(),
            "committed"
        );
        self.out
            .push(Action::Committed(CommittedBatch { blocks, proof }));
    }

    fn on_blocks_added(&mut self, added: &[BlockId]) {
        for id in added {
            let Some(block) = self.tree.block(id).cloned() else {
                continue;
            };
            // The QC inside a block reachable from a verified certificate is valid (see certs).
            self.process_qc(&block.parent_qc);
            if let Some(qc) = self.pending_qcs.remove(id) {
                self.keep_certified(id);
                self.try_commit(&qc);
            }
            if let Some((wid, b, tc)) = self.waiting_proposal.take() {
                if wid == *id {
                    self.try_vote(wid, &b, tc.as_ref());
                } else {
                    self.waiting_proposal = Some((wid, b, tc));
                }
            }
        }
    }

    // ---- proposing ----

    fn try_propose(&mut self) {
        let round = self.round;
        if self.leader(round) != self.cfg.me || self.safety.last_proposed_round >= round {
            return;
        }
        let qc = self.safety.high_qc.clone();
        let tc = if qc.round.next() == round {
            None
        } else {
            match &self.last_tc {
                Some(tc) if tc.round.next() == round => Some(tc.clone()),
                _ => return,
            }
        };
        if !self.app.can_propose() {
            return;
        }
        let height = qc.height.next();
        tracing::trace!(target: "consensus.round", round = round.0, "building");
        let evidence: Vec<Evidence> = self
            .evidence_pool
            .iter()
            .take(MAX_EVIDENCE_PER_BLOCK)
            .cloned()
            .collect();
        let parents = self.tree.path_from_root(&qc.block_id);
        if parents.is_none() {
            // The votes outran the proposal: this node extends a block it has yet to receive.
            self.stats.proposed_without_parent += 1;
        }
        let (exec_height, exec_root) = self.app.exec_root();
        let block = Block {
            parent_id: qc.block_id,
            round,
            height,
            epoch: self.ctx.epoch(),
            author: self.cfg.me,
            payload: self
                .app
                .make_payload(height, round, parents.as_deref())
                .into(),
            parent_qc: qc,
            timestamp_ms: self.now_ms,
            exec_height,
            exec_root,
            evidence,
        };
        let id = block.id(&self.ctx.chain_id);
        let payload_len = block.payload.len();
        let data = ProposalData {
            block_id: id,
            round,
        };
        let signature = self
            .key
            .sign(&data.digest(&self.ctx.chain_id, self.ctx.epoch()));
        // The proposal leaves only after `last_proposed_round` is durable (a small write). The
        // block itself needs no durability here: voters store it before they vote, and so does
        // our own vote on it, which (with proposals deferred) is handled only once the proposal
        // has been sent (`own_proposal_due`), so that its write overlaps the proposal's way to
        // the others.
        self.safety.last_proposed_round = round;
        if !self.persist() {
            return;
        }
        let proposal = Proposal {
            block,
            tc_for_prev_round: tc,
            signature,
        };
        self.stats.proposals += 1;
        tracing::debug!(
            target: "consensus.propose",
            round = round.0,
            height = height.0,
            payload_bytes = payload_len,
            "proposed"
        );
        self.out.push(Action::Broadcast {
            msg: Message::Proposal(proposal.clone()),
        });
        if self.defer_proposals {
            self.own_proposal = Some((proposal, id));
        } else {
            let me = self.cfg.me;
            self.on_proposal(me, proposal, id);
        }
    }

    // ---- timeouts (view change) ----

    /// Rule "timeout": for round r (carrying high_qc) only if `r == high_qc.round + 1` or
    /// `r == last_tc.round + 1`, and `high_qc.round >= one_chain_round`; then
    /// `last_voted_round = max(last_voted_round, r)`, persisted before the timeout leaves.
    /// Sends this node's timeout for the current round again, every base round timeout while
    /// the round lasts ([`Core::timeout_resend_ms`]).
    fn resend_timeout(&mut self) {
        self.timeout_resend_ms = TimeMs::MAX;
        if let Some(t) = &self.safety.last_timeout {
            if t.round == self.round {
                let msg = Message::Timeout(t.clone());
                self.out.push(Action::Broadcast { msg });
                self.schedule_timeout_resend();
            }
        }
    }

    fn schedule_timeout_resend(&mut self) {
        self.timeout_resend_ms = self.now_ms + self.cfg.round_timeout_ms_base.max(1);
    }

    fn local_timeout(&mut self) {
        let r = self.round;
        self.rounds_without_commit = self.rounds_without_commit.saturating_add(1);
        self.deadline_ms = self.now_ms + self.round_timeout_ms();
        if self
            .safety
            .last_timeout
            .as_ref()
            .is_some_and(|t| t.round == r)
        {
            // Re-send the same timeout (lost messages), never a different one.
            return self.resend_timeout();
        }
        let qc = self.safety.high_qc.clone();
        let justified =
            r == qc.round.next() || self.last_tc.as_ref().is_some_and(|tc| tc.round.next() == r);
        if !justified || qc.round < self.safety.one_chain_round {
            return self.drop_msg("timeout rule not met");
        }
        let data = TimeoutData {
            round: r,
            high_qc_round: qc.round,
        };
        let t = Timeout {
            round: r,
            epoch: self.ctx.epoch(),
            high_qc: qc,
            last_tc: self.last_tc.clone(),
            voter: self.cfg.me,
            signature: self
                .key
                .sign(&data.digest(&self.ctx.chain_id, self.ctx.epoch())),
        };
        self.safety.last_voted_round = self.safety.last_voted_round.max(r);
        self.safety.highest_timeout_round = self.safety.highest_timeout_round.max(r);
        self.safety.last_timeout = Some(t.clone());
        if !self.persist() {
            return;
        }
        self.stats.timeouts_signed += 1;
        self.out.push(Action::Broadcast {
            msg: Message::Timeout(t.clone()),
        });
        self.schedule_timeout_resend();
        self.add_timeout(t);
    }

    fn on_timeout(&mut self, t: Timeout) {
        self.process_qc(&t.high_qc);
        if let Some(tc) = &t.last_tc {
            self.process_tc(tc);
        }
        if t.round < self.round {
            return self.help_behind(&t);
        }
        if t.round.0 > self.round.0 + MAX_FUTURE_ROUNDS {
            return;
        }
        self.add_timeout(t);
    }

    /// Liveness, not safety: a timeout for a round this node has left comes from a validator
    /// that is behind (restarted, or cut off while the round moved on). The timeouts that moved
    /// the others on went out while it could not hear them and are resent only while their
    /// round lasts, so it would wait for the next round to fail before it learns of them, and
    /// its own turn to lead passes unused. Send it this node's own latest timeout, if it is for
    /// that round or a later one: its signature counts toward the TC the laggard forms for its
    /// round, and its certificates carry the laggard forward. Once per validator and round.
    fn help_behind(&mut self, t: &Timeout) {
        let Some(mine) = &self.safety.last_timeout else {
            return;
        };
        if t.voter == self.cfg.me
            || mine.round < t.round
            || self.helped.get(&t.voter).is_some_and(|r| *r >= t.round)
        {
            return;
        }
        self.helped.insert(t.voter, t.round);
        self.out.push(Action::Send {
            to: t.voter,
            msg: Message::Timeout(mine.clone()),
        });
    }

    fn add_timeout(&mut self, t: Timeout) {
        let stake = self.ctx.validators.stake(t.voter);
        let agg = self.timeouts.entry(t.round).or_default();
        if agg.formed || agg.entries.contains_key(&t.voter) {
            return;
        }
        agg.entries.insert(t.voter, (t.high_qc.round, t.signature));
        agg.stake = Stake(agg.stake.0.saturating_add(stake.0));
        let agg_stake = agg.stake;
        if self.ctx.validators.is_quorum(agg_stake) {
            agg.formed = true;
            let tc = TimeoutCert {
                round: t.round,
                epoch: self.ctx.epoch(),
                timeouts: agg.entries.iter().map(|(v, (r, s))| (*v, *r, *s)).collect(),
            };
            self.process_tc(&tc);
            return;
        }
        // More than 1/3 gave up on our round: at least one honest node did, so join it.
        if t.round == self.round
            && self.ctx.validators.is_weak_quorum(agg_stake)
            && self.safety.highest_timeout_round < self.round
        {
            self.local_timeout();
        }
    }

    // ---- fetching and sync ----

    fn fetch(&mut self, id: BlockId, peer: ValidatorIndex, height: Height) {
        if self.tree.contains(&id) || self.wanted.contains_key(&id) {
            return;
        }
        let peer = if peer == self.cfg.me {
            self.hint_peer
        } else {
            peer
        };
        let root = self.tree.root();
        let gap = height.0.saturating_sub(root.height.0);
        if gap > SYNC_GAP_BLOCKS {
            return self.request_sync(peer);
        }
        if self.wanted.len() >= MAX_WANTED_BLOCKS {
            return;
        }
        self.wanted.insert(
            id,
            Wanted {
                since_ms: self.now_ms,
                peer,
                attempts: 0,
                height,
            },
        );
        self.out.push(Action::Send {
            to: peer,
            msg: Message::BlockRequest(BlockRequest {
                id,
                count: gap.clamp(1, MAX_BLOCKS_PER_RESPONSE as u64) as u16,
            }),
        });
    }

    fn request_sync(&mut self, peer: ValidatorIndex) {
        if self
            .sync_requested_ms
            .is_some_and(|t| self.now_ms < t + FETCH_RETRY_MS)
        {
            return;
        }
        self.sync_requested_ms = Some(self.now_ms);
        self.out.push(Action::Send {
            to: peer,
            msg: Message::SyncRequest(SyncRequest {
                from_height: self.tree.root().height.next(),
            }),
        });
    }

    /// Serves a block and its ancestors: from the block tree, then the blocks kept in storage
    /// (which include blocks committed here but not yet durable in the chain, and after a
    /// restart every kept block), then the durable committed chain, by height, once the walk
    /// has passed the committed tip.
    fn serve_blocks(&mut self, from: ValidatorIndex, req: BlockRequest) {
        let count = usize::from(req.count).clamp(1, MAX_BLOCKS_PER_RESPONSE);
        let mut blocks = Vec::new();
        let mut bytes = 0;
        let mut cur = req.id;
        let root = self.tree.root();
        // The height of `cur` once the walk is on the committed chain.
        let mut committed_height: Option<Height> = None;
        while blocks.len() < count {
            if cur == root.id {
                committed_height = Some(root.height);
            }
            let found = match self.tree.block(&cur) {
                Some(b) => Some(Arc::clone(b)),
                None => self.store.kept_block(&cur).or_else(|| {
                    committed_height
                        .filter(|h| h.0 > 0)
                        .and_then(|h| self.store.committed_block(h))
                }),
            };
            let Some(b) = found else { break };
            if b.height.0 == 0 || !fits_response(blocks.len(), &mut bytes, &b) {
                break;
            }
            if committed_height.is_some() {
                committed_height = Some(Height(b.height.0 - 1));
            }
            cur = b.parent_id;
            blocks.push((*b).clone());
        }
        if !blocks.is_empty() {
            self.out.push(Action::Send {
                to: from,
                msg: Message::BlockResponse(BlockResponse { blocks }),
            });
        }
    }

    fn on_blocks(&mut self, from: ValidatorIndex, resp: BlockResponse, ids: &[BlockId]) {
        let Some(first) = ids.first() else { return };
        // Only blocks named by a verified certificate (or their ancestors, by hash) get in.
        if self.wanted.remove(first).is_none() {
            return self.drop_msg("unsolicited block response");
        }
        for id in ids.iter().skip(1) {
            self.wanted.remove(id);
        }
        let mut added = Vec::new();
        for (id, block) in ids.iter().zip(resp.blocks).rev() {
            if let Insert::Added(a) = self.tree.insert(*id, Arc::new(block)) {
                added.extend(a);
            }
        }
        self.on_blocks_added(&added);
        // Still not connected: fetch further back.
        if let Some(last) = ids.last() {
            if let Some((parent, h)) = self.tree.orphan_parent_of(last) {
                self.fetch(parent, from, Height(h.0.saturating_sub(1)));
            }
        }
    }

    fn serve_sync(&mut self, from: ValidatorIndex, req: SyncRequest) {
        let root = self.tree.root();
        let start = req.from_height.max(Height(1));
        if start > root.height {
            return;
        }
        // As many committed blocks as the count and byte budget allow (at least one)...
        let mut blocks: Vec<Block> = Vec::new();
        let mut bytes = 0;
        for h in start.0..start.0 + MAX_BLOCKS_PER_RESPONSE as u64 {
            let Some(b) = self.store.committed_block(Height(h)) else {
                break;
            };
            if !fits_response(blocks.len(), &mut bytes, &b) {
                break;
            }
            blocks.push((*b).clone());
        }
        if blocks.is_empty() {
            return;
        }
        // ...ending at a stored commit proof: the last one among them, or else the batch that
        // the first one belongs to, which must then fit whole.
        let limit = Height(start.0 + blocks.len() as u64 - 1);
        let Some((end, proof)) = self
            .store
            .commit_proof_in(start, limit)
            .or_else(|| self.store.next_commit_proof(start))
        else {
            return;
        };
        if end.0 - start.0 + 1 > MAX_BLOCKS_PER_RESPONSE as u64 {
            return self.drop_msg("commit batch too long to serve in one sync response");
        }
        blocks.truncate((end.0 - start.0 + 1) as usize);
        for h in start.0 + blocks.len() as u64..=end.0 {
            match self.store.committed_block(Height(h)) {
                Some(b) => {
                    bytes = bytes.saturating_add(encoded_len(&b));
                    blocks.push((*b).clone());
                }
                None => return,
            }
        }
        // The proof and framing need well under 1 MiB.
        if blocks.len() > 1 && bytes > crate::codec::MAX_MESSAGE_BYTES - (1 << 20) {
            return self.drop_msg("commit batch too large to serve in one sync response");
        }
        self.out.push(Action::Send {
            to: from,
            msg: Message::SyncResponse(SyncResponse { blocks, proof }),
        });
    }

    fn on_sync(&mut self, from: ValidatorIndex, resp: SyncResponse, ids: &[BlockId]) {
        let root = self.tree.root();
        let Some(first) = resp.blocks.first() else {
            return;
        };
        if first.height != root.height.next() || first.parent_id != root.id {
            return self.drop_msg("sync response does not start at our committed tip");
        }
        let n = resp.blocks.len();
        let Some(last_id) = ids.get(n - 1).copied() else {
            return;
        };
        // The peer may have more: it stopped at the count or near its byte budget (an extra
        // request once we are level goes unanswered).
        let full = n == MAX_BLOCKS_PER_RESPONSE
            || resp.blocks.iter().map(encoded_len).sum::<usize>() >= RESPONSE_BLOCK_BYTES_MAX / 3;
        let path: Vec<Arc<Block>> = resp.blocks.into_iter().map(Arc::new).collect();
        if let Err(e) = self.store.persist_commit(&path, &resp.proof) {
            self.stats.storage_failures += 1;
            tracing::error!(target: "consensus.sync", error = %e, "synced blocks not persisted");
            return;
        }
        self.stats.syncs += 1;
        self.sync_requested_ms = None;
        let last = Arc::clone(&path[n - 1]);
        let blocks: Vec<(BlockId, Arc<Block>)> = ids.iter().copied().zip(path).collect();
        let child_qc = resp.proof.child_qc.clone();
        self.finish_commit(blocks, resp.proof, &last, last_id);
        // The proof carries only the child's header: the QC makes us fetch the child itself
        // from the peer that synced us (and later blocks arrive with proposals).
        self.hint_peer = from;
        self.process_qc(&child_qc);
        if full {
            self.request_sync(from);
        }
    }

    // ---- evidence ----

    fn add_evidence(&mut self, e: Evidence) {
        let key = (
            e.round(),
            e.offender(),
            matches!(e, Evidence::DoubleVote { .. }),
        );
        if !self.evidence_seen.insert(key) {
            return;
        }
        if self.evidence_seen.len() > 4 * MAX_EVIDENCE_POOL {
            // Bounded: forget the oldest rounds first.
            self.evidence_seen.pop_first();
        }
        if self.evidence_pool.len() < MAX_EVIDENCE_POOL {
            self.evidence_pool.push(e.clone());
        }
        tracing::warn!(target: "consensus.evidence", offender = %e.offender(), round = e.round().0, "equivocation");
        self.out.push(Action::Evidence(e.clone()));
        self.out.push(Action::Broadcast {
            msg: Message::Evidence(e),
        });
    }
}

/// A block's encoded size (what it adds to a response).
fn encoded_len(b: &Block) -> usize {
    bcs::serialized_size(b).unwrap_or(usize::MAX)
}

/// Whether block `b` joins a response already holding `taken` blocks of `bytes` encoded bytes
/// (counted in when it does): the first always, later ones within
/// [`RESPONSE_BLOCK_BYTES_MAX`].
fn fits_response(taken: usize, bytes: &mut usize, b: &Block) -> bool {
    let n = encoded_len(b);
    if taken > 0 && bytes.saturating_add(n) > RESPONSE_BLOCK_BYTES_MAX {
        return false;
    }
    *bytes = bytes.saturating_add(n);
    true
}
