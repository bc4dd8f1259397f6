//! The node's consensus hooks: payloads from the mempool, payload validation, and the
//! `pipeline_depth` back-pressure on proposing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::codec::{decode, encode_infallible};
use crate::consensus::{App, Block};
use crate::crypto::Digest32;
use crate::mempool::{Mempool, Payload, TxId, MAX_TXS_PER_BLOCK};
use crate::types::{Height, Round};

/// Heights shared between the core and the execution/persistence stages.
#[derive(Debug, Default)]
pub struct Progress {
    /// Highest committed height (set by the core stage).
    pub committed: AtomicU64,
    /// Highest height executed and durable (set by the persistence stage).
    pub durable: AtomicU64,
    /// Executed state root of `durable` (carried as the block's `exec_root`).
    pub exec_root: Mutex<Digest32>,
}

/// Block-building limits.
#[derive(Clone, Copy, Debug)]
pub struct BlockLimits {
    /// Most transactions per block.
    pub max_txs: usize,
    /// Most transaction bytes per block.
    pub max_bytes: usize,
}

impl Default for BlockLimits {
    fn default() -> Self {
        Self {
            max_txs: MAX_TXS_PER_BLOCK,
            max_bytes: 4 << 20,
        }
    }
}

/// [`App`] for a validator node.
pub struct NodeApp {
    /// Pending client transactions.
    pub mempool: Arc<Mutex<Mempool>>,
    /// Pipeline progress.
    pub progress: Arc<Progress>,
    /// `hotstuff.pipeline_depth`.
    pub pipeline_depth: u64,
    /// Block-building limits.
    pub limits: BlockLimits,
    /// Transactions of this node's own proposals, by round, until they commit or are abandoned.
    in_flight: BTreeMap<Round, Vec<(TxId, Vec<u8>)>>,
}

impl NodeApp {
    /// Hooks over these shared parts.
    pub fn new(
        mempool: Arc<Mutex<Mempool>>,
        progress: Arc<Progress>,
        pipeline_depth: u64,
        limits: BlockLimits,
    ) -> Self {
        Self {
            mempool,
            progress,
            pipeline_depth: pipeline_depth.max(1),
            limits,
            in_flight: BTreeMap::new(),
        }
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
        if let Ok(mut pool) = self.mempool.lock() {
            for (_, txs) in abandoned.into_iter().rev() {
                pool.requeue(txs);
            }
        }
    }
}

impl App for NodeApp {
    fn make_payload(&mut self, _height: Height, round: Round) -> Vec<u8> {
        let taken = match self.mempool.lock() {
            Ok(mut pool) => pool.take(self.limits.max_txs, self.limits.max_bytes),
            Err(_) => Vec::new(),
        };
        let payload = Payload::new(taken.iter().map(|(_, tx)| tx.clone()).collect());
        if !taken.is_empty() {
            self.in_flight.insert(round, taken);
        }
        encode_infallible(&payload)
    }

    fn validate_payload(&self, block: &Block) -> Result<(), String> {
        let payload: Payload = decode(&block.payload).map_err(|e| format!("payload: {e}"))?;
        payload.check()
    }

    fn can_propose(&self) -> bool {
        let committed = self.progress.committed.load(Ordering::Acquire);
        let durable = self.progress.durable.load(Ordering::Acquire);
        committed.saturating_sub(durable) < self.pipeline_depth
    }

    fn exec_root(&self) -> Digest32 {
        self.progress
            .exec_root
            .lock()
            .map(|r| *r)
            .unwrap_or_default()
    }
}
