//! Inclusion receipts ([`crate::client_proto::ClientResponse::Included`]) awaiting the commit
//! announcement of their block.

use std::collections::{HashMap, VecDeque};

use crate::mempool::TxId;
use crate::types::BlockId;

/// Most inclusion receipts kept, and most transaction ids in them; the oldest go first.
pub const RECEIPTS_MAX: usize = 1 << 14;
/// See [`RECEIPTS_MAX`] (32 MiB of ids).
pub const RECEIPT_IDS_MAX: usize = 1 << 20;

/// Inclusion receipts by block and the connection they came on (a validator may name only its
/// own connection's transactions): the block's round and the ids.
#[derive(Default)]
pub(crate) struct Receipts {
    by_block: HashMap<(BlockId, usize), (u64, Vec<TxId>)>,
    order: VecDeque<(BlockId, usize)>,
    ids: usize,
}

impl Receipts {
    pub(crate) fn insert(&mut self, block: BlockId, conn: usize, round: u64, ids: Vec<TxId>) {
        if self.by_block.contains_key(&(block, conn)) {
            // A second receipt for one block on one connection (never from an honest
            // validator): the first stands.
            return;
        }
        while self.order.len() >= RECEIPTS_MAX || self.ids + ids.len() > RECEIPT_IDS_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, gone)) = self.by_block.remove(&old) {
                self.ids -= gone.len();
            }
        }
        self.ids += ids.len();
        self.order.push_back((block, conn));
        self.by_block.insert((block, conn), (round, ids));
    }

    /// The receipts for `block` of `round` on any of `conns` connections, once each (their
    /// places in the order age out).
    pub(crate) fn take(
        &mut self,
        block: &BlockId,
        round: u64,
        conns: usize,
    ) -> Vec<(usize, Vec<TxId>)> {
        let mut out = Vec::new();
        for c in 0..conns {
            let key = (*block, c);
            if self.by_block.get(&key).is_some_and(|(r, _)| *r == round) {
                if let Some((_, ids)) = self.by_block.remove(&key) {
                    self.ids -= ids.len();
                    out.push((c, ids));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_resolve_once_by_block_and_round_and_stay_bounded() {
        let mut r = Receipts::default();
        let (a, b) = (BlockId([1; 32]), BlockId([2; 32]));
        r.insert(a, 0, 5, vec![[10; 32], [11; 32]]);
        r.insert(b, 3, 6, vec![[12; 32]]);
        // A second receipt for a block on the same connection does not replace the first; one
        // on another connection (another validator's claim) stands beside it.
        r.insert(a, 0, 5, vec![[99; 32]]);
        r.insert(a, 2, 5, vec![[13; 32]]);
        // The round must match the receipt's.
        assert!(r.take(&a, 4, 4).is_empty());
        assert_eq!(
            r.take(&a, 5, 4),
            vec![(0, vec![[10; 32], [11; 32]]), (2, vec![[13; 32]])]
        );
        assert!(r.take(&a, 5, 4).is_empty(), "once");
        assert_eq!(r.ids, 1);
        assert_eq!(r.take(&b, 6, 4), vec![(3, vec![[12; 32]])]);
        assert_eq!(r.ids, 0);
        // Bounded by ids: the oldest receipts go first.
        let mut r = Receipts::default();
        let half = vec![[0; 32]; RECEIPT_IDS_MAX / 2];
        for k in 0..3u8 {
            r.insert(BlockId([k; 32]), 0, u64::from(k), half.clone());
        }
        assert!(r.ids <= RECEIPT_IDS_MAX);
        assert!(r.take(&BlockId([0; 32]), 0, 1).is_empty());
        assert_eq!(r.take(&BlockId([2; 32]), 2, 1).len(), 1);
        // And by count.
        let mut r = Receipts::default();
        for k in 0..(RECEIPTS_MAX as u64 + 10) {
            let mut id = [0; 32];
            id[..8].copy_from_slice(&k.to_le_bytes());
            r.insert(BlockId(id), 0, k, vec![]);
        }
        assert_eq!(r.by_block.len(), RECEIPTS_MAX);
        assert_eq!(r.order.len(), RECEIPTS_MAX);
    }
}
