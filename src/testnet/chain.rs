//! The check of a testnet's stored chains after a run (its validators stopped): every
//! validator's committed chain against every other's, block by block, and each committed
//! transaction counted, so that a transaction committed twice shows.

use serde::Serialize;

use crate::crypto::leaf_hashes;
use crate::mempool::{IdMap, Payload};
use crate::store::RedbStore;
use crate::types::BlockId;

use super::NodeInfo;

/// What the stored chains say.
#[derive(Clone, Debug, Serialize)]
pub struct ChainCheck {
    /// Each validator's durable committed height.
    pub heights: Vec<u64>,
    /// Every validator's chain equals every other's, block by block, up to the lower of the two
    /// heights (a validator behind holds a prefix of the others').
    pub identical: bool,
    /// The first difference found, as "validator a and validator b differ at height h".
    pub first_difference: Option<String>,
    /// Transactions in the highest chain.
    pub txs: u64,
    /// Transactions that chain holds more than once (must be 0).
    pub committed_twice: u64,
    /// The first few of them: the heights (and proposers) of their two blocks.
    pub committed_twice_at: Vec<TwiceAt>,
}

/// Where a transaction committed twice lies.
#[derive(Clone, Debug, Serialize)]
pub struct TwiceAt {
    /// The first block's height and proposer.
    pub first: (u64, u16),
    /// The second block's height and proposer.
    pub again: (u64, u16),
}

/// Examples of transactions committed twice kept in a [`ChainCheck`].
const TWICE_EXAMPLES: usize = 10;

/// The committed block ids of validator `i`'s store in `node`.
fn ids_of(i: usize, node: &NodeInfo, chain_id: &str) -> Result<(RedbStore, Vec<BlockId>), String> {
    let store = RedbStore::open_split(
        &node.data_dir.join("node.redb"),
        &node.data_dir.join("safety"),
    )
    .map_err(|e| format!("validator {i}'s store ({}): {e}", node.data_dir.display()))?;
    let ids = store
        .committed_ids(chain_id, 1, u64::MAX)
        .map_err(|e| format!("validator {i}'s chain ({}): {e}", node.data_dir.display()))?;
    Ok((store, ids.into_iter().map(|(_, id, _)| id).collect()))
}

/// Reads every validator's stored chain (the validators must be stopped: a store is open in
/// one process at a time) and compares them pairwise; then counts the transactions of the
/// highest one. A store or block that cannot be read is an error, never a chain that compares
/// as equal.
///
/// # Errors
/// A store that does not open, or a chain that does not read back whole.
pub fn check(nodes: &[NodeInfo], chain_id: &str) -> Result<ChainCheck, String> {
    let mut stores = Vec::with_capacity(nodes.len());
    let mut chains = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let (store, ids) = ids_of(i, node, chain_id)?;
        stores.push(store);
        chains.push(ids);
    }
    let mut first_difference = None;
    'pairs: for a in 0..chains.len() {
        for b in a + 1..chains.len() {
            if let Some(h) = chains[a].iter().zip(&chains[b]).position(|(x, y)| x != y) {
                first_difference =
                    Some(format!("validators {a} and {b} differ at height {}", h + 1));
                break 'pairs;
            }
        }
    }
    let heights: Vec<u64> = chains.iter().map(|c| c.len() as u64).collect();
    let highest = heights
        .iter()
        .enumerate()
        .max_by_key(|(_, h)| **h)
        .map_or(0, |(i, _)| i);
    let (txs, committed_twice, committed_twice_at) = match stores.get(highest) {
        Some(store) => count_txs(store, heights[highest])?,
        None => (0, 0, Vec::new()),
    };
    Ok(ChainCheck {
        heights,
        identical: first_difference.is_none(),
        first_difference,
        txs,
        committed_twice,
        committed_twice_at,
    })
}

/// The transactions of `store`'s chain up to `tip`, how many of them appear more than once, and
/// where the first few of those lie.
fn count_txs(store: &RedbStore, tip: u64) -> Result<(u64, u64, Vec<TwiceAt>), String> {
    let mut seen: IdMap<(u64, u16)> = IdMap::default();
    let (mut txs, mut twice) = (0u64, 0u64);
    let mut at = Vec::new();
    for h in 1..=tip {
        let block = store
            .read_block(h)
            .map_err(|e| format!("reading block {h}: {e}"))?
            .ok_or_else(|| format!("block {h} is missing below the tip {tip}"))?;
        let Ok(payload) = Payload::decode(&block.payload) else {
            continue;
        };
        let list: Vec<&[u8]> = payload.txs().collect();
        let here = (h, block.author.0);
        for id in leaf_hashes(&list) {
            txs += 1;
            if let Some(first) = seen.insert(id, here) {
                twice += 1;
                if at.len() < TWICE_EXAMPLES {
                    at.push(TwiceAt { first, again: here });
                }
            }
        }
    }
    Ok((txs, twice, at))
}
