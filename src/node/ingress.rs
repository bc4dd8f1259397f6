//! The ingress stage: frames from peers decoded and structurally checked at the border, then
//! handed on: consensus messages to signature verification, forwarded transactions to the
//! mempool.
//!
//! It runs as two threads, one per transport class ([`bpci_transport::Inbox`]):
//! `pipeline.ingress` reads the consensus streams (votes, timeouts and other small messages),
//! `pipeline.ingress_bulk` the bulk streams (proposals, whose payloads it also checks ahead of
//! the core, block and sync responses, forwarded transactions). A vote therefore never waits
//! behind a proposal's decoding and payload hashing on the receiving side, as it never waits
//! behind one on the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bpci_transport::InboundQueue;

use crate::consensus::{Block, EpochContext, Message, Verified};
use crate::mempool::Mempool;
use crate::pipeline::{StageInput, StageStats};
use crate::types::ValidatorIndex;
use crate::types::{BlockId, Round};

use super::app::{self, PayloadChecks};
use super::forward::{self, ForwardCounters};
use super::stages::{self, BorderStats};
use crate::consensus::Prepared;

/// What an ingress thread hands frames on to; one per thread (cheap clones).
#[derive(Clone)]
pub struct Ingress {
    /// Decoding context (chain id, epoch, validator set).
    pub ctx: Arc<EpochContext>,
    /// Counters of refused frames.
    pub border: Arc<BorderStats>,
    /// The signature verification stage.
    pub verify: StageInput<(ValidatorIndex, Prepared)>,
    /// The consensus stage, for messages verified here.
    pub core: StageInput<(ValidatorIndex, Verified)>,
    /// Payload checks done ahead of the core, by payload digest.
    pub payload_checks: Arc<Mutex<PayloadChecks>>,
    /// Where forwarded transactions go.
    pub mempool: Arc<Mutex<Mempool>>,
    /// The forwarder's counters.
    pub forward: Arc<ForwardCounters>,
    /// Frames received, both threads together.
    pub frames: Arc<AtomicU64>,
    /// Where a proposal's block goes to be written ahead of the vote on it (bounded; a full
    /// queue skips it, and the vote's write carries it), and the core's round, which bounds
    /// the rounds of the proposals written ahead.
    pub prewrite: Option<(PrewriteQueue, Arc<AtomicU64>)>,
}

/// The queue of blocks to write ahead (with their ids).
pub type PrewriteQueue = crossbeam_channel::Sender<(BlockId, Arc<Block>)>;

/// Proposals written ahead are at most this many rounds ahead of the core's round (a leader
/// can push blocks to disk only for rounds it leads, and near the present).
pub const PREWRITE_ROUNDS_AHEAD: u64 = 64;

/// Records one item's time in a stage into its figures when dropped (so every path out of the
/// loop's body counts it).
struct TimedItem<'a>(&'a StageStats, Instant);

impl Drop for TimedItem<'_> {
    fn drop(&mut self) {
        self.0.record(1, self.1.elapsed());
    }
}

impl Ingress {
    /// Hands a proposal's block to the writer ahead, if it comes from its round's leader for a
    /// round near the present (signatures are checked later: a block written ahead is only
    /// kept until the chain passes its height).
    fn write_ahead(&self, block: &Block, id: Option<&BlockId>) {
        let (Some((to, round)), Some(id)) = (&self.prewrite, id) else {
            return;
        };
        let now = round.load(Ordering::Acquire);
        let r = block.round.0;
        if r + 2 < now || r > now + PREWRITE_ROUNDS_AHEAD {
            return;
        }
        if self.ctx.validators.leader(Round(r)) != block.author {
            return;
        }
        let _ = to.try_send((*id, Arc::new(block.clone())));
    }

    /// Reads `queue` until the transport shuts down or the verify stage ends, recording into
    /// `stats`.
    pub fn run(&self, queue: &mut InboundQueue, stats: &StageStats) {
        while let Some(inb) = queue.blocking_recv() {
            self.frames.fetch_add(1, Ordering::Relaxed);
            stats.set_queue_depth(queue.len());
            // Time in stage covers decoding, the payload checks started here, and a vote or
            // timeout verified here (not counted by the verify stage).
            let _timed = TimedItem(stats, Instant::now());
            if !self.handle(inb.from, &inb.frame) {
                break;
            }
        }
    }

    /// One frame; `false` once the verify stage has ended (the node is stopping).
    fn handle(&self, from: u16, frame: &bytes::Bytes) -> bool {
        match stages::ingress(&self.ctx, from, frame, &self.border) {
            stages::Ingress::Consensus(from, p) => {
                if let Message::Proposal(prop) = p.message() {
                    self.write_ahead(&prop.block, p.ids().first());
                    app::precheck(&self.payload_checks, &prop.block.payload);
                }
                // A message with one signature (a vote, a timeout) while the verify stage has
                // nothing queued would be a batch of one there: verified here, it skips a thread
                // hand-off on the round's path.
                if p.items().len() <= 1 && self.verify.depth() == 0 {
                    stages::verify_into(vec![(from, p)], &self.border, &self.core);
                    true
                } else {
                    self.verify.send((from, p)).is_ok()
                }
            }
            stages::Ingress::Txs(batch) => {
                forward::accept_forwarded(batch, &self.mempool, &self.forward);
                true
            }
            stages::Ingress::Dropped => true,
        }
    }
}
