//! The mempool: client transactions (opaque, size-limited bytes), deduplicated by BLAKE3 id,
//! bounded in count and bytes, handed out in arrival order to fill block payloads.
//!
//! When it is full, [`Mempool::insert`] answers [`MempoolError::Full`] and the client endpoint
//! tells the client "busy": memory never grows without bound. "Full" for our own clients is
//! also a matter of time: a validator takes no more than its own proposals take in about
//! [`ADMIT_WAIT`] (a smoothed rate, see [`Mempool::note_proposal`]), never less than
//! [`ADMIT_FLOOR_TXS`]: under overload it refuses what it cannot commit soon, rather than
//! accept a backlog whose clients give up waiting.
//!
//! Transactions other validators forward to us wait in a queue of their own with its own
//! bounds ([`MempoolLimits::max_forwarded_txs`], [`MempoolLimits::max_forwarded_bytes`]): their
//! clients were already told "accepted" and their forwarders gave them away, so refusing them
//! because our own clients filled the pool would lose them. Forwarders bound what they hand
//! off (`node::forward`), which keeps that queue far below its bounds in normal operation.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::codec::{
    check_len, decode_borrowed, encode_infallible, Bounded, DecodeError, MAX_MESSAGE_BYTES,
};
use crate::crypto::{leaf_hash, leaf_hashes, merkle_root_of_leaf_hashes, Digest32};

/// Largest transaction accepted, in bytes.
pub const MAX_TX_BYTES: usize = 64 * 1024;
/// Most transactions in one block payload.
pub const MAX_TXS_PER_BLOCK: usize = 20_000;

/// A transaction's id: its Merkle leaf hash (keyed, domain-separated BLAKE3; see
/// [`crate::crypto::merkle`]), so a block's leaf hashes are its transactions' ids and one hash
/// per transaction serves both.
pub type TxId = Digest32;

/// A hash map keyed by transaction ids. The keys are BLAKE3 outputs, so SipHash (the std
/// default) spends its time re-hashing 32 random bytes; foldhash with a per-process random seed
/// is several times faster, and the seed keeps clients that pick transactions from steering their
/// ids into one bucket chain.
pub type IdMap<V> = std::collections::HashMap<TxId, V, foldhash::fast::RandomState>;

/// The id of transaction bytes.
pub fn tx_id(tx: &[u8]) -> TxId {
    leaf_hash(tx)
}

/// The ids of many transactions, hashed together (SIMD lanes, rayon for long lists).
pub fn tx_ids<T: AsRef<[u8]>>(txs: &[T]) -> Vec<TxId> {
    leaf_hashes(txs)
}

/// Transactions with their ids. The ids are computed here, many at once
/// ([`crate::crypto::leaf_hashes`]), so a batch is hashed before the pool's lock is taken and
/// no id can disagree with its transaction.
#[derive(Debug)]
pub struct HashedTxs {
    txs: Vec<Vec<u8>>,
    ids: Vec<TxId>,
}

impl HashedTxs {
    /// Hashes `txs`. A transaction the pool refuses by size (empty, or over [`MAX_TX_BYTES`]) is
    /// not hashed: its id is never read.
    pub fn new(txs: Vec<Vec<u8>>) -> Self {
        let admissible: Vec<&[u8]> = txs
            .iter()
            .map(|t| {
                if t.len() > MAX_TX_BYTES {
                    &[][..]
                } else {
                    t.as_slice()
                }
            })
            .collect();
        let ids = tx_ids(&admissible);
        Self { txs, ids }
    }

    /// The number of transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// No transactions.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// The ids, in order (for a transaction refused by size, the empty transaction's id).
    pub fn ids(&self) -> &[TxId] {
        &self.ids
    }

    /// The batch without the transactions `drop` marks (`drop[i]` for the i-th).
    pub fn without(self, drop: &[bool]) -> Self {
        let (ids, txs) = self
            .ids
            .into_iter()
            .zip(self.txs)
            .enumerate()
            .filter(|(i, _)| !drop.get(*i).copied().unwrap_or(false))
            .map(|(_, pair)| pair)
            .unzip();
        Self { txs, ids }
    }

    fn into_iter(self) -> impl Iterator<Item = (TxId, Vec<u8>)> {
        self.ids.into_iter().zip(self.txs)
    }
}

/// Why a transaction was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MempoolError {
    /// The queue the transaction would join (our clients' or the forwarded one) holds its
    /// limit of transactions or bytes: try again later.
    #[error("mempool full ({txs} transactions, {bytes} bytes): busy")]
    Full {
        /// Transactions held.
        txs: usize,
        /// Bytes held.
        bytes: usize,
    },
    /// The same bytes are already pending.
    #[error("duplicate transaction")]
    Duplicate,
    /// Larger than [`MAX_TX_BYTES`].
    #[error("transaction of {len} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Zero bytes.
    #[error("empty transaction")]
    Empty,
}

/// Limits of a mempool.
#[derive(Clone, Copy, Debug)]
pub struct MempoolLimits {
    /// Most pending transactions from our own clients.
    pub max_txs: usize,
    /// Most pending bytes from our own clients.
    pub max_bytes: usize,
    /// Most pending transactions forwarded to us by other validators.
    pub max_forwarded_txs: usize,
    /// Most pending bytes forwarded to us by other validators.
    pub max_forwarded_bytes: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        Self {
            max_txs: 200_000,
            max_bytes: 256 << 20,
            max_forwarded_txs: 200_000,
            max_forwarded_bytes: 256 << 20,
        }
    }
}

/// Our clients' transactions wait here about this long at most (see the module docs). At 1 s,
/// a passing slowdown at 150,000 tx/s offered (a stall of the 2-core VM, rounds a few times
/// longer for a second or two) cut the smoothed rate, so the bound, and turned clients away
/// while the validators had room: 3 of 4 runs of `bpci testnet --duration 20s --rate 150000`
/// then fell into refusals and resubmissions (committed 98,000-117,000 tx/s, p99 17-28 s); at
/// 3 s, 0 of 4 (every one committed 149,900+ tx/s, none refused).
pub const ADMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// Our clients may always have this many transactions pending (within
/// [`MempoolLimits::max_txs`]), whatever the rate of our proposals.
pub const ADMIT_FLOOR_TXS: usize = 32_768;
/// Weight of the newest sample in the smoothed proposal rate.
const DRAIN_SMOOTHING: f64 = 0.3;

/// The owner of a transaction no client connection of ours waits on (forwarded to us, or
/// inserted without one).
pub const NO_OWNER: u64 = u64::MAX;

/// Transactions taken for a proposal ([`Mempool::take_marked`]), with their owners and marks,
/// index for index.
#[derive(Debug, Default)]
pub struct Taken {
    /// Ids and transactions, in proposal order.
    pub txs: Vec<(TxId, Vec<u8>)>,
    /// Each one's owner ([`NO_OWNER`] for none).
    pub owners: Vec<u64>,
    /// Whether each one may be elsewhere too (see [`Mempool::take_marked`]).
    pub marks: Vec<bool>,
}

/// Pending transactions.
#[derive(Debug, Default)]
pub struct Mempool {
    limits: MempoolLimits,
    /// From our own clients (these may be forwarded to the next leader).
    queue: VecDeque<(TxId, Vec<u8>)>,
    /// Forwarded to us by other validators (proposed here, never forwarded again).
    forwarded: VecDeque<(TxId, Vec<u8>)>,
    /// The pending ids, each with the client connection that submitted it ([`NO_OWNER`] for
    /// none): the one table a transaction's admission touches, and what [`Mempool::take`]
    /// hands over with it for receipts and commit notices.
    ids: IdMap<u64>,
    /// Bytes pending, both queues.
    bytes: usize,
    /// Bytes pending in the forwarded queue.
    forwarded_bytes: usize,
    /// Transactions ever accepted from our own clients.
    local_inserted: u64,
    /// Pending transactions that may also wait, or ride in a block, elsewhere: resubmissions
    /// (the client sent them to another validator before), those forwarded to us, and those
    /// taken back from a block (abandoned, or held back from a proposal). A proposal that does
    /// not hold the block it extends holds these back ([`Mempool::take_marked`]). Only pending
    /// ids are marked: a mark leaves with its transaction.
    marked: IdMap<()>,
    /// Transactions a second our own proposals take (smoothed), and when one last did.
    drain_txs_per_s: f64,
    last_proposal: Option<std::time::Instant>,
}

impl Mempool {
    /// An empty pool with these limits.
    pub fn new(limits: MempoolLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Transactions ever accepted from our own clients (a counter for intake rates).
    pub fn local_inserted(&self) -> u64 {
        self.local_inserted
    }

    /// Pending transactions.
    pub fn len(&self) -> usize {
        self.queue.len() + self.forwarded.len()
    }

    /// Nothing pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.forwarded.is_empty()
    }

    /// Pending bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether transaction `id` is pending here.
    pub fn contains(&self, id: &TxId) -> bool {
        self.ids.contains_key(id)
    }

    /// One of our proposals took `taken` transactions at `now`: the rate our proposals drain
    /// the pool at moves towards it.
    pub fn note_proposal(&mut self, taken: usize, now: std::time::Instant) {
        if let Some(last) = self.last_proposal {
            let dt = now.saturating_duration_since(last).as_secs_f64().max(1e-3);
            let sample = taken as f64 / dt;
            self.drain_txs_per_s =
                (1.0 - DRAIN_SMOOTHING) * self.drain_txs_per_s + DRAIN_SMOOTHING * sample;
        }
        self.last_proposal = Some(now);
    }

    /// How many of our own clients' transactions may be pending now: what our proposals take
    /// in [`ADMIT_WAIT`], at least [`ADMIT_FLOOR_TXS`], at most [`MempoolLimits::max_txs`].
    pub fn local_capacity(&self) -> usize {
        let by_rate = (self.drain_txs_per_s * ADMIT_WAIT.as_secs_f64()) as usize;
        by_rate.max(ADMIT_FLOOR_TXS).min(self.limits.max_txs)
    }

    /// Whether our own clients' transactions are refused now (no room left at all).
    pub fn refuses_local(&self) -> bool {
        self.queue.len() >= self.local_capacity()
            || self.bytes - self.forwarded_bytes >= self.limits.max_bytes
    }

    /// Adds a transaction from one of our clients (no owner), returning its id.
    pub fn insert(&mut self, tx: Vec<u8>) -> Result<TxId, MempoolError> {
        let id = tx_id(&tx);
        self.enqueue(id, tx, true, NO_OWNER)
    }

    /// Adds a batch of our clients' transactions (hashed beforehand, outside the pool's lock),
    /// submitted by client connection `owner`: one result per transaction, in order.
    pub fn insert_batch(
        &mut self,
        batch: HashedTxs,
        owner: u64,
    ) -> Vec<Result<TxId, MempoolError>> {
        batch
            .into_iter()
            .map(|(id, tx)| self.enqueue(id, tx, true, owner))
            .collect()
    }

    /// [`Mempool::insert_batch`] for resubmissions: the admitted ones, and those pending
    /// already, are marked (see [`Mempool::take_marked`]).
    pub fn insert_resubmitted_batch(
        &mut self,
        batch: HashedTxs,
        owner: u64,
    ) -> Vec<Result<TxId, MempoolError>> {
        let ids = batch.ids().to_vec();
        let results = self.insert_batch(batch, owner);
        for (id, r) in ids.iter().zip(&results) {
            if matches!(r, Ok(_) | Err(MempoolError::Duplicate)) {
                self.marked.insert(*id, ());
            }
        }
        results
    }

    /// Adds a batch another validator forwarded to us (proposed here, never forwarded again):
    /// one result per transaction, in order.
    pub fn insert_forwarded_batch(&mut self, batch: HashedTxs) -> Vec<Result<TxId, MempoolError>> {
        let results: Vec<_> = batch
            .into_iter()
            .map(|(id, tx)| self.enqueue(id, tx, false, NO_OWNER))
            .collect();
        for id in results.iter().flatten() {
            self.marked.insert(*id, ());
        }
        results
    }

    /// Admits `tx` (whose id is `id`) into our clients' queue (`local`) or the forwarded one.
    fn enqueue(
        &mut self,
        id: TxId,
        tx: Vec<u8>,
        local: bool,
        owner: u64,
    ) -> Result<TxId, MempoolError> {
        self.admit(&tx, id, owner, local)?;
        self.bytes += tx.len();
        if local {
            self.local_inserted += 1;
            self.queue.push_back((id, tx));
        } else {
            self.forwarded_bytes += tx.len();
            self.forwarded.push_back((id, tx));
        }
        Ok(id)
    }

    /// Checks size, room in its queue (`local` or forwarded) and novelty; records the id (`id`
    /// is `tx_id(tx)`) and its owner.
    fn admit(
        &mut self,
        tx: &[u8],
        id: TxId,
        owner: u64,
        local: bool,
    ) -> Result<TxId, MempoolError> {
        if tx.is_empty() {
            return Err(MempoolError::Empty);
        }
        if tx.len() > MAX_TX_BYTES {
            return Err(MempoolError::TooLarge {
                len: tx.len(),
                max: MAX_TX_BYTES,
            });
        }
        // Pending already (a client's resubmission): a client that owns it from now on, where
        // none did (forwarded here), gets its commit notice.
        if let Some(o) = self.ids.get_mut(&id) {
            if *o == NO_OWNER {
                *o = owner;
            }
            return Err(MempoolError::Duplicate);
        }
        let (txs, bytes, max_txs, max_bytes) = if local {
            (
                self.queue.len(),
                self.bytes - self.forwarded_bytes,
                self.local_capacity(),
                self.limits.max_bytes,
            )
        } else {
            (
                self.forwarded.len(),
                self.forwarded_bytes,
                self.limits.max_forwarded_txs,
                self.limits.max_forwarded_bytes,
            )
        };
        if txs >= max_txs || bytes + tx.len() > max_bytes {
            return Err(MempoolError::Full { txs, bytes });
        }
        self.ids.insert(id, owner);
        Ok(id)
    }

    /// Takes up to `max_count` transactions and `max_bytes` bytes for a proposal: those
    /// forwarded to us first (they waited at another validator already), then our clients',
    /// each oldest first.
    pub fn take(&mut self, max_count: usize, max_bytes: usize) -> Vec<(TxId, Vec<u8>)> {
        self.take_owned(max_count, max_bytes).0
    }

    /// [`Mempool::take`], with each transaction's owner (in the same order).
    pub fn take_owned(
        &mut self,
        max_count: usize,
        max_bytes: usize,
    ) -> (Vec<(TxId, Vec<u8>)>, Vec<u64>) {
        let t = self.take_marked(max_count, max_bytes);
        (t.txs, t.owners)
    }

    /// [`Mempool::take_owned`], with each transaction's mark (whether it may be elsewhere too,
    /// see the `marked` field), in the same order.
    pub fn take_marked(&mut self, max_count: usize, max_bytes: usize) -> Taken {
        let mut txs = Vec::new();
        let mut bytes = 0;
        Self::take_from(
            &mut self.forwarded,
            &mut txs,
            &mut bytes,
            max_count,
            max_bytes,
        );
        self.forwarded_bytes -= bytes;
        Self::take_from(&mut self.queue, &mut txs, &mut bytes, max_count, max_bytes);
        let (owners, marks) = self.settle(&txs, bytes);
        Taken { txs, owners, marks }
    }

    /// Takes only our own clients' transactions (to forward them), oldest first, with their
    /// owners.
    pub fn take_local(
        &mut self,
        max_count: usize,
        max_bytes: usize,
    ) -> (Vec<(TxId, Vec<u8>)>, Vec<u64>) {
        let mut out = Vec::new();
        let mut bytes = 0;
        Self::take_from(&mut self.queue, &mut out, &mut bytes, max_count, max_bytes);
        let (owners, _) = self.settle(&out, bytes);
        (out, owners)
    }

    fn take_from(
        queue: &mut VecDeque<(TxId, Vec<u8>)>,
        out: &mut Vec<(TxId, Vec<u8>)>,
        bytes: &mut usize,
        max_count: usize,
        max_bytes: usize,
    ) {
        while out.len() < max_count {
            let Some((_, tx)) = queue.front() else {
                break;
            };
            if *bytes + tx.len() > max_bytes && !out.is_empty() {
                break;
            }
            let Some((id, tx)) = queue.pop_front() else {
                break;
            };
            *bytes += tx.len();
            out.push((id, tx));
        }
    }

    /// Forgets the taken ids: their owners and marks, in order.
    fn settle(&mut self, taken: &[(TxId, Vec<u8>)], bytes: usize) -> (Vec<u64>, Vec<bool>) {
        self.bytes -= bytes;
        let owners = taken
            .iter()
            .map(|(id, _)| self.ids.remove(id).unwrap_or(NO_OWNER))
            .collect();
        let marks = if self.marked.is_empty() {
            vec![false; taken.len()]
        } else {
            taken
                .iter()
                .map(|(id, _)| self.marked.remove(id).is_some())
                .collect()
        };
        (owners, marks)
    }

    /// Puts back transactions whose block was abandoned (front of the queue, original order),
    /// without owners. They are marked: another copy may have been proposed meanwhile.
    pub fn requeue(&mut self, txs: Vec<(TxId, Vec<u8>)>) {
        self.requeue_owned(txs, &[]);
    }

    /// [`Mempool::requeue`] with each transaction's owner (`owners[i]` for `txs[i]`;
    /// [`NO_OWNER`] past its end).
    pub fn requeue_owned(&mut self, txs: Vec<(TxId, Vec<u8>)>, owners: &[u64]) {
        self.put_back(txs, owners, true);
    }

    /// Puts back our clients' transactions that a forward never sent: only here, unmarked.
    pub fn requeue_unsent(&mut self, txs: Vec<(TxId, Vec<u8>)>) {
        self.put_back(txs, &[], false);
    }

    fn put_back(&mut self, txs: Vec<(TxId, Vec<u8>)>, owners: &[u64], mark: bool) {
        for (i, (id, tx)) in txs.into_iter().enumerate().rev() {
            if let std::collections::hash_map::Entry::Vacant(v) = self.ids.entry(id) {
                v.insert(owners.get(i).copied().unwrap_or(NO_OWNER));
                if mark {
                    self.marked.insert(id, ());
                }
                self.bytes += tx.len();
                self.queue.push_front((id, tx));
            }
        }
    }
}

/// A block payload as it travels and is stored: the transactions' Merkle root and the
/// transactions, in execution order. Decoding borrows the transactions from the encoded bytes
/// (one allocation for the list, none per transaction); each is encoded as one byte string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload<'a> {
    /// The Merkle root over the transactions (leaf hashes are the transaction ids).
    pub tx_root: Digest32,
    #[serde(borrow)]
    txs: Vec<&'a serde_bytes::Bytes>,
}

impl<'a> Payload<'a> {
    /// A payload over `txs` whose ids (leaf hashes) are already known: no hashing of the
    /// transactions, only of the tree above them.
    pub fn with_ids(txs: impl IntoIterator<Item = &'a [u8]>, ids: &[TxId]) -> Self {
        Self {
            tx_root: merkle_root_of_leaf_hashes(ids),
            txs: txs.into_iter().map(serde_bytes::Bytes::new).collect(),
        }
    }

    /// A payload over `txs`, hashing each.
    pub fn new(txs: &'a [impl AsRef<[u8]>]) -> Self {
        let ids = leaf_hashes(txs);
        Self::with_ids(txs.iter().map(AsRef::as_ref), &ids)
    }

    /// The `tx_root` of an encoded payload, read without decoding the transactions (the
    /// encoding starts with it: a fixed 32-byte array). `None` if the bytes are shorter.
    pub fn root_of(bytes: &[u8]) -> Option<Digest32> {
        bytes.get(..32)?.try_into().ok()
    }

    /// Whether an encoded payload holds any transaction, read without decoding them: the count
    /// follows the 32-byte root as a canonical ULEB128, whose first byte is 0 only for 0.
    pub fn carries_txs(bytes: &[u8]) -> bool {
        bytes.get(32).is_some_and(|b| *b != 0)
    }

    /// The transaction count of an encoded payload, read without decoding the transactions
    /// (the canonical ULEB128 after the 32-byte root). `None` if it does not read as one.
    pub fn count_of(bytes: &[u8]) -> Option<u64> {
        let mut n: u64 = 0;
        for (i, b) in bytes.get(32..)?.iter().take(10).enumerate() {
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    /// Decodes an encoded payload, borrowing its transactions from `bytes`.
    ///
    /// A well-formed payload is read by [`Payload::decode_fast`]; anything else (and any error)
    /// by bcs, which then gives the answer and its error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match Self::decode_fast(bytes) {
            Some(p) => Ok(p),
            None => decode_borrowed(bytes),
        }
    }

    /// The BCS decoding of a payload whose lengths are canonical ULEB128s of at most three
    /// bytes, within [`MAX_TXS_PER_BLOCK`] transactions of at most [`MAX_TX_BYTES`] each and
    /// [`MAX_MESSAGE_BYTES`] in all; `None` for any other input, valid or not.
    ///
    /// Why not bcs: a payload arrives cold (a 4 MiB payload is out of cache by the time
    /// execution reads it, and at ingress it was written by another core), and each length
    /// prefix names where the next one is, so the reads form one chain of cache misses, one per
    /// transaction: 94 % of bcs's time here was the load of a length's first byte, and the two
    /// decodes per block (ingress, execution) were 6 % of all CPU at 90,000 tx/s. This loop
    /// asks for the memory [`PREFETCH_AHEAD`] bytes on while it reads, so the misses overlap.
    /// `decode_fast_agrees_with_bcs` holds it to bcs on valid, mutated and random inputs.
    fn decode_fast(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return None;
        }
        let tx_root: Digest32 = bytes.get(..32)?.try_into().ok()?;
        let mut pos = 32;
        let count = read_short_uleb128(bytes, &mut pos)?;
        if count > MAX_TXS_PER_BLOCK {
            return None;
        }
        let mut txs = Vec::with_capacity(count);
        for _ in 0..count {
            // Two lines: a transaction's start moves by its length, not by whole lines.
            prefetch(bytes, pos.saturating_add(PREFETCH_AHEAD));
            prefetch(bytes, pos.saturating_add(PREFETCH_AHEAD + 64));
            let len = read_short_uleb128(bytes, &mut pos)?;
            if len > MAX_TX_BYTES {
                return None;
            }
            let tx = bytes.get(pos..pos.checked_add(len)?)?;
            pos += len;
            txs.push(serde_bytes::Bytes::new(tx));
        }
        (pos == bytes.len()).then_some(Self { tx_root, txs })
    }

    /// The encoding carried in a block.
    pub fn encode(&self) -> Vec<u8> {
        encode_infallible(self)
    }

    /// The transactions.
    pub fn txs(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + '_ {
        self.txs.iter().map(|t| &***t)
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// No transactions.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Checks each transaction's size and that `tx_root` is the root of the transactions;
    /// returns their ids (the leaf hashes, computed once for both purposes).
    pub fn check(&self) -> Result<Vec<TxId>, String> {
        if let Some(bad) = self.txs().find(|t| t.len() > MAX_TX_BYTES || t.is_empty()) {
            return Err(format!(
                "transaction of {} bytes out of (0, {MAX_TX_BYTES}]",
                bad.len()
            ));
        }
        let ids = leaf_hashes(&self.txs);
        if merkle_root_of_leaf_hashes(&ids) != self.tx_root {
            return Err("tx_root is not the Merkle root of the transactions".into());
        }
        Ok(ids)
    }
}

/// How far ahead of its reading [`Payload::decode_fast`] prefetches: about 30 transactions of
/// 512 bytes, enough for a miss to complete before the loop gets there.
const PREFETCH_AHEAD: usize = 16 << 10;

/// Asks the CPU to bring the cache line of `bytes[at]` in (nothing if `at` is past the end, or
/// off x86-64). A hint only: it changes no value.
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(b) = bytes.get(at) {
        // SAFETY: `b` is a live byte of `bytes`; a prefetch reads nothing into the program.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                (b as *const u8).cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, at);
}

/// Reads a canonical ULEB128 of one to three bytes (values below 2^21) at `*pos` and moves past
/// it; `None` for anything longer, truncated or not canonical (a last byte of zero after
/// others), which [`Payload::decode`] leaves to bcs.
#[inline(always)]
fn read_short_uleb128(bytes: &[u8], pos: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    for i in 0..3 {
        let b = *bytes.get(pos.checked_add(i)?)?;
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return None;
            }
            *pos += i + 1;
            return Some(value);
        }
    }
    None
}

impl Bounded for Payload<'_> {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        check_len("payload.txs", self.txs.len(), MAX_TXS_PER_BLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// bcs's answer for `bytes` (the reference [`Payload::decode_fast`] is held to).
    fn by_bcs(bytes: &[u8]) -> Result<Payload<'_>, DecodeError> {
        decode_borrowed(bytes)
    }

    fn encoded(txs: &[Vec<u8>]) -> Vec<u8> {
        Payload::new(txs).encode()
    }

    fn tx_sets() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let tx = prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..700),
            // Lengths whose ULEB128 takes three bytes.
            1 => (16_384usize..20_000).prop_map(|n| vec![7u8; n]),
        ];
        prop_oneof![
            4 => proptest::collection::vec(tx.clone(), 0..40),
            // Counts whose ULEB128 takes two bytes.
            1 => proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..8), 128..300),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every payload bcs encodes is read by the fast path, to the same value.
        #[test]
        fn decode_fast_agrees_with_bcs(txs in tx_sets()) {
            let bytes = encoded(&txs);
            let fast = Payload::decode_fast(&bytes);
            prop_assert!(fast.is_some(), "a canonical payload left the fast path");
            prop_assert_eq!(fast, Some(by_bcs(&bytes).unwrap()));
        }

        /// On altered encodings and random bytes the fast path answers only where bcs reads
        /// the same value; elsewhere `decode` gives bcs's own answer.
        #[test]
        fn decode_fast_never_disagrees_on_bad_input(
            txs in tx_sets(),
            edit in 0u8..4,
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            noise in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut bytes = encoded(&txs);
            let i = at.index(bytes.len());
            match edit {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                2 => bytes.insert(i, byte),
                _ => bytes = noise,
            }
            match Payload::decode_fast(&bytes) {
                Some(p) => prop_assert_eq!(Ok(p), by_bcs(&bytes)),
                None => prop_assert_eq!(Payload::decode(&bytes), by_bcs(&bytes)),
            }
        }
    }

    /// Marks (may be elsewhere too) go with resubmissions, forwarded and taken-back
    /// transactions, are read once by a proposal and leave with their transaction.
    #[test]
    fn marks_follow_copies_that_may_be_elsewhere() {
        let mut m = Mempool::new(MempoolLimits::default());
        let first = m.insert(b"first".to_vec()).unwrap();
        let again = HashedTxs::new(vec![b"again".to_vec(), b"first".to_vec()]);
        let results = m.insert_resubmitted_batch(again, 1);
        assert_eq!(results[1], Err(MempoolError::Duplicate));
        let fwd = m.insert_forwarded_batch(HashedTxs::new(vec![b"fwd".to_vec()]));
        let plain = m.insert(b"plain".to_vec()).unwrap();
        let Taken {
            txs: taken, marks, ..
        } = m.take_marked(10, 1 << 20);
        let marked: Vec<(TxId, bool)> = taken.iter().map(|(id, _)| *id).zip(marks).collect();
        // Forwarded first, then our clients' in order; the first submission is marked since a
        // resubmission of it came.
        assert_eq!(
            marked,
            vec![
                (*fwd[0].as_ref().unwrap(), true),
                (first, true),
                (*results[0].as_ref().unwrap(), true),
                (plain, false)
            ]
        );
        assert!(m.marked.is_empty(), "marks leave with their transactions");
        // Taken back from an abandoned block: marked.
        m.requeue(taken);
        assert_eq!(m.take_marked(10, 1 << 20).marks, vec![true; 4]);
        // Forwarding takes and drops marks too.
        m.insert_resubmitted_batch(HashedTxs::new(vec![b"x".to_vec()]), 1);
        let (unsent, _) = m.take_local(10, 1 << 20);
        assert!(m.marked.is_empty());
        // A forward that never went out puts them back unmarked: they were only here.
        m.requeue_unsent(unsent);
        assert_eq!(m.take_marked(10, 1 << 20).marks, vec![false]);
    }

    #[test]
    fn owners_travel_with_their_transactions() {
        let mut m = Mempool::new(MempoolLimits::default());
        let batch = HashedTxs::new(vec![b"a".to_vec(), b"b".to_vec()]);
        let [a, b] = [0, 1].map(|i| batch.ids()[i]);
        assert!(m.insert_batch(batch, 5).iter().all(Result::is_ok));
        // A duplicate from another connection keeps the first owner.
        let again = m.insert_batch(HashedTxs::new(vec![b"a".to_vec()]), 6);
        assert_eq!(again, vec![Err(MempoolError::Duplicate)]);
        let c = m.insert(b"c".to_vec()).unwrap();
        let (taken, owners) = m.take_owned(2, 1 << 20);
        assert_eq!(
            taken.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(owners, vec![5, 5]);
        // Abandoned: back with their owners, ahead of what is still pending.
        m.requeue_owned(taken, &[5, 8]);
        let (taken, owners) = m.take_owned(10, 1 << 20);
        assert_eq!(
            taken.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![a, b, c]
        );
        assert_eq!(owners, vec![5, 8, NO_OWNER]);
        // Requeued without owners: none.
        m.requeue(taken);
        assert_eq!(m.take_owned(10, 1 << 20).1, vec![NO_OWNER; 3]);
    }

    #[test]
    fn unusual_but_valid_or_invalid_lengths_go_to_bcs() {
        // A count written in two bytes where one would do: not canonical, refused by both.
        let mut bytes = encoded(&[b"x".to_vec()]);
        bytes.splice(32..33, [0x81, 0x00]);
        assert!(Payload::decode_fast(&bytes).is_none());
        assert!(Payload::decode(&bytes).is_err());
        // A transaction over the size limit decodes (bcs) and is refused by `check`.
        let big = encoded(&[vec![1u8; MAX_TX_BYTES + 1]]);
        assert!(Payload::decode_fast(&big).is_none());
        let p = Payload::decode(&big).unwrap();
        assert!(p.check().unwrap_err().contains("bytes out of"));
        // Trailing bytes: refused by both.
        let mut tail = encoded(&[b"x".to_vec()]);
        tail.push(0);
        assert!(Payload::decode_fast(&tail).is_none());
        assert!(Payload::decode(&tail).is_err());
    }

    #[test]
    fn dedup_limits_and_order() {
        let mut m = Mempool::new(MempoolLimits {
            max_txs: 3,
            max_bytes: 10,
            ..MempoolLimits::default()
        });
        assert!(m.insert(b"a".to_vec()).is_ok());
        assert_eq!(m.insert(b"a".to_vec()), Err(MempoolError::Duplicate));
        assert_eq!(m.insert(vec![]), Err(MempoolError::Empty));
        assert!(m.insert(b"bbbb".to_vec()).is_ok());
        assert!(matches!(
            m.insert(vec![1; 6]),
            Err(MempoolError::Full { .. })
        ));
        assert!(m.insert(b"c".to_vec()).is_ok());
        assert!(matches!(
            m.insert(b"d".to_vec()),
            Err(MempoolError::Full { .. })
        ));
        assert!(matches!(
            m.insert(vec![0; MAX_TX_BYTES + 1]),
            Err(MempoolError::TooLarge { .. })
        ));
        let got = m.take(2, 100);
        assert_eq!(
            got.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"bbbb".to_vec()]
        );
        assert_eq!(m.len(), 1);
        // After being taken, the same bytes may be submitted again (the id set is only for pending).
        assert!(m.insert(b"a".to_vec()).is_ok());
        m.requeue(got);
        let order: Vec<Vec<u8>> = m.take(10, 100).into_iter().map(|(_, t)| t).collect();
        assert_eq!(order, vec![b"bbbb".to_vec(), b"c".to_vec(), b"a".to_vec()]);
        assert_eq!(m.bytes(), 0);
    }

    /// One forwarded transaction through the batch path.
    fn fwd1(m: &mut Mempool, tx: Vec<u8>) -> Result<TxId, MempoolError> {
        let mut r = m.insert_forwarded_batch(HashedTxs::new(vec![tx]));
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    #[test]
    fn a_batch_gets_one_result_per_transaction_in_order() {
        let mut m = Mempool::new(MempoolLimits {
            max_txs: 3,
            max_bytes: 1 << 20,
            ..MempoolLimits::default()
        });
        let txs = vec![
            vec![1; 600],
            Vec::new(),
            vec![1; 600],
            vec![2; 70],
            vec![3; 5],
            vec![4; 5],
            vec![5; MAX_TX_BYTES + 1],
        ];
        let batch = HashedTxs::new(txs.clone());
        assert_eq!(batch.len(), 7);
        let ids: Vec<TxId> = txs.iter().map(|t| tx_id(t)).collect();
        assert_eq!(batch.ids()[..6], ids[..6]);
        assert_eq!(batch.ids()[6], tx_id(b""), "too large: not hashed");
        let r = m.insert_batch(batch, NO_OWNER);
        assert_eq!(r[0], Ok(ids[0]));
        assert_eq!(r[1], Err(MempoolError::Empty));
        assert_eq!(r[2], Err(MempoolError::Duplicate));
        assert_eq!(r[3], Ok(ids[3]));
        assert_eq!(r[4], Ok(ids[4]));
        assert!(matches!(r[5], Err(MempoolError::Full { txs: 3, .. })));
        assert!(matches!(r[6], Err(MempoolError::TooLarge { .. })));
        assert_eq!(m.local_inserted(), 3);
        assert_eq!(m.bytes(), 675);
    }

    /// Forwarded transactions have a queue and bounds of their own: our clients filling the
    /// pool does not refuse them (their forwarders gave them away), and they do not take our
    /// clients' room.
    #[test]
    fn forwarded_transactions_are_proposed_first_and_never_taken_for_forwarding() {
        let mut m = Mempool::new(MempoolLimits {
            max_txs: 2,
            max_bytes: 1 << 20,
            max_forwarded_txs: 2,
            max_forwarded_bytes: 10,
        });
        let own = m.insert(vec![1; 4]).unwrap();
        let fwd = fwd1(&mut m, vec![2; 4]).unwrap();
        assert_eq!(fwd1(&mut m, vec![1; 4]), Err(MempoolError::Duplicate));
        assert_eq!(m.insert(vec![2; 4]), Err(MempoolError::Duplicate));
        m.insert(vec![3; 4]).unwrap();
        // Our clients' queue is full; the forwarded one is not.
        assert!(matches!(
            m.insert(vec![4; 4]),
            Err(MempoolError::Full { txs: 2, bytes: 8 })
        ));
        let fwd2 = fwd1(&mut m, vec![5; 4]).unwrap();
        // Now the forwarded queue is full too.
        assert!(matches!(
            fwd1(&mut m, vec![6; 1]),
            Err(MempoolError::Full { txs: 2, bytes: 8 })
        ));
        assert_eq!(m.len(), 4);
        let (local, _) = m.take_local(1, 1 << 20);
        assert_eq!(
            local.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![own]
        );
        assert_eq!(m.bytes(), 12);
        // Room for one more of ours, none forwarded until a proposal takes them.
        m.insert(vec![4; 4]).unwrap();
        assert!(fwd1(&mut m, vec![6; 1]).is_err());
        let all = m.take(2, 1 << 20);
        assert_eq!(
            all.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![fwd, fwd2],
            "forwarded first"
        );
        fwd1(&mut m, vec![6; 1]).unwrap();
        let rest = m.take(10, 1 << 20);
        assert_eq!(rest.len(), 3);
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
        // Taken ids may come back (a requeued block) and be inserted again.
        m.insert(vec![1; 4]).unwrap();
    }

    #[test]
    fn take_respects_byte_budget_but_always_makes_progress() {
        let mut m = Mempool::new(MempoolLimits::default());
        for i in 0..10u8 {
            m.insert(vec![i; 100]).unwrap();
        }
        assert_eq!(m.take(100, 250).len(), 2);
        assert_eq!(m.take(100, 10).len(), 1, "one oversize tx still goes");
    }

    #[test]
    fn payload_roundtrip_and_root_check() {
        let txs = vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()];
        let p = Payload::new(&txs);
        assert_eq!(p.tx_root, crate::crypto::merkle_root(&txs));
        let ids: Vec<TxId> = txs.iter().map(|t| tx_id(t)).collect();
        assert_eq!(p.check(), Ok(ids.clone()));
        assert_eq!(Payload::with_ids(txs.iter().map(|t| t.as_slice()), &ids), p);
        let bytes = p.encode();
        assert_eq!(Payload::root_of(&bytes), Some(p.tx_root));
        assert_eq!(Payload::root_of(&bytes[..31]), None);
        assert!(Payload::carries_txs(&bytes));
        assert!(!Payload::carries_txs(
            &Payload::new(&[] as &[&[u8]]).encode()
        ));
        let many: Vec<Vec<u8>> = (0..128u8).map(|i| vec![i]).collect();
        assert!(
            Payload::carries_txs(&Payload::new(&many).encode()),
            "count 128 starts 0x80"
        );
        assert!(!Payload::carries_txs(&bytes[..32]));
        let back = Payload::decode(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.txs().collect::<Vec<_>>(), vec![&b"x"[..], b"y", b"z"]);
        // Each transaction is one length-prefixed byte string: root, count, (len, bytes)*.
        assert_eq!(bytes.len(), 32 + 1 + 3 * 2);
        let mut bad = p.clone();
        bad.txs.swap(0, 1);
        assert!(bad.check().is_err());
        let empty_tx: Vec<Vec<u8>> = vec![vec![]];
        assert!(Payload::new(&empty_tx).check().is_err());
        assert!(Payload::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
