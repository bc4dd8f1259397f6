//! Execution: a state-machine trait and the default ledger (accounts and balances, plus a log of
//! opaque transactions).
//!
//! `execute(parent_state, block) -> (state_root, receipts)` is deterministic: every validator that
//! executes the same block on the same parent state gets the same root, and a block carries the
//! executed root of an ancestor so validators detect divergence.

use std::collections::HashMap;
use std::sync::LazyLock;

use blake3::hazmat::{hash_derive_key_context, ContextKey, HasherExt};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, Bounded, DecodeError};
use crate::crypto::Digest32;
use crate::mempool::TxId;

/// The digest of an executed state.
pub type StateRoot = Digest32;

/// Transactions starting with these bytes are ledger instructions; all others are logged.
pub const LEDGER_TX_MAGIC: &[u8; 8] = b"bpcixfer";

/// A ledger instruction (after [`LEDGER_TX_MAGIC`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerTx {
    /// Move `amount` from `from` to `to`.
    Transfer {
        /// Payer account.
        from: [u8; 32],
        /// Payee account.
        to: [u8; 32],
        /// Amount.
        amount: u64,
    },
    /// Credit an account (test funding; a production chain gates this behind governance).
    Mint {
        /// Credited account.
        to: [u8; 32],
        /// Amount.
        amount: u64,
    },
}

impl Bounded for LedgerTx {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// What happened to one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptStatus {
    /// A ledger instruction that changed balances.
    Applied,
    /// An opaque transaction appended to the log.
    Logged,
    /// A ledger instruction refused (the reason).
    Rejected(String),
}

/// One transaction's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transaction.
    pub tx_id: TxId,
    /// Its outcome.
    pub status: ReceiptStatus,
}

/// What execution sees of a block: its transactions in order, with their ids.
#[derive(Clone, Copy, Debug)]
pub struct BlockTxs<'a> {
    /// The transactions.
    pub txs: &'a [&'a [u8]],
    /// `ids[i]` is `tx_id(txs[i])` (computed once, when the payload was checked).
    pub ids: &'a [TxId],
}

impl<'a> BlockTxs<'a> {
    /// Transactions with their ids (the same length: checked in debug builds; in release the
    /// longer list's extra items are ignored).
    pub fn new(txs: &'a [&'a [u8]], ids: &'a [TxId]) -> Self {
        debug_assert_eq!(txs.len(), ids.len());
        Self { txs, ids }
    }
}

/// A deterministic state machine over blocks.
pub trait StateMachine: Send {
    /// Executes `block` on the state whose root is `parent_state`; returns the new root and one
    /// receipt per transaction. Fails if `parent_state` is not a state this machine holds.
    fn execute(
        &mut self,
        parent_state: &StateRoot,
        block: BlockTxs<'_>,
    ) -> Result<(StateRoot, Vec<Receipt>), ExecError>;
    /// Forgets every state except those in `keep` (the committed state and the speculative states
    /// still in use).
    fn prune(&mut self, keep: &[StateRoot]);
    /// The genesis root.
    fn genesis(&self) -> StateRoot;
}

/// Why a block could not execute, or a snapshot could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    /// The parent state is unknown here (pruned, or never executed).
    #[error("unknown parent state {0:02x?}")]
    UnknownParent(StateRoot),
    /// Too many speculative states are held.
    #[error("speculative state limit of {0} reached")]
    TooManyStates(usize),
    /// A snapshot's bytes do not decode, or do not describe a valid state.
    #[error("bad ledger snapshot: {0}")]
    BadSnapshot(String),
}

/// Most accounts a ledger snapshot may hold (a bound for decoding stored bytes).
pub const MAX_SNAPSHOT_ACCOUNTS: usize = 1 << 26;

/// A ledger state as stored ([`Ledger::snapshot`]): what the root commits to, accounts in key
/// order. The balances' digest is not stored: restoring recomputes it from the balances.
#[derive(Serialize, Deserialize)]
struct LedgerSnapshot {
    balances: Vec<([u8; 32], u64)>,
    log_head: Digest32,
    log_len: u64,
}

impl Bounded for LedgerSnapshot {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        crate::codec::check_len(
            "snapshot.balances",
            self.balances.len(),
            MAX_SNAPSHOT_ACCOUNTS,
        )
    }
}

/// How many transactions ahead execution prefetches a transaction's first bytes.
const EXEC_PREFETCH_TXS: usize = 16;

/// Most speculative (optimistically executed, uncommitted) states held.
pub const MAX_LEDGER_STATES: usize = 256;

/// BLAKE3 derive_key contexts of the ledger's digests, each hashed once per process (a
/// `new_derive_key` hashes its context string on every call).
static STATE_KEY: LazyLock<ContextKey> =
    LazyLock::new(|| hash_derive_key_context("bpci 2026-11 ledger state v1"));
static BALANCE_KEY: LazyLock<ContextKey> =
    LazyLock::new(|| hash_derive_key_context("bpci 2026-11 ledger balance v1"));
static LOG_KEY: LazyLock<ContextKey> =
    LazyLock::new(|| hash_derive_key_context("bpci 2026-11 ledger log v2"));

/// The log entries of one block, hashed into the log's chain in one pass when the block ends:
/// the ids are gathered first and handed to BLAKE3 as one input, which it hashes 16 chunks at a
/// time in SIMD lanes (fed one 32-byte id at a time, it compressed each 64-byte block in turn).
struct LogAppend {
    head: Digest32,
    ids: Vec<u8>,
}

impl LogAppend {
    fn new(head: &Digest32, capacity: usize) -> Self {
        Self {
            head: *head,
            ids: Vec::with_capacity(capacity * 32),
        }
    }

    fn push(&mut self, id: &TxId) {
        self.ids.extend_from_slice(id);
    }

    /// Entries pushed.
    fn count(&self) -> u64 {
        (self.ids.len() / 32) as u64
    }

    /// `H(head ‖ ids)`.
    fn digest(&self) -> Digest32 {
        let mut hasher = blake3::Hasher::new_from_context_key(&LOG_KEY);
        hasher.update(&self.head);
        hasher.update(&self.ids);
        *hasher.finalize().as_bytes()
    }
}

/// The ledger state: balances, a hash chain over the log, and counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerState {
    balances: HashMap<[u8; 32], u64>,
    /// XOR of H(account, balance) over accounts with a non-zero balance (updated per change).
    balances_digest: [u8; 32],
    /// `H(previous head ‖ ids of the block's logged transactions)` after each block that logged
    /// any (one hash per block, not per transaction). This changed the state roots of
    /// 2026-11-24 builds (one hash per transaction, context `ledger log v1`): validators of the
    /// two kinds disagree on roots, so such an upgrade is a stop-all one, not rolling.
    log_head: Digest32,
    log_len: u64,
}

impl LedgerState {
    /// The root committing to balances and log.
    pub fn root(&self) -> StateRoot {
        let mut h = blake3::Hasher::new_from_context_key(&STATE_KEY);
        h.update(&self.balances_digest);
        h.update(&self.log_head);
        h.update(&self.log_len.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// An account's balance.
    pub fn balance(&self, account: &[u8; 32]) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// Transactions logged so far.
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    fn entry_digest(account: &[u8; 32], balance: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new_from_context_key(&BALANCE_KEY);
        h.update(account);
        h.update(&balance.to_le_bytes());
        *h.finalize().as_bytes()
    }

    fn set_balance(&mut self, account: [u8; 32], balance: u64) {
        let old = self.balance(&account);
        if old != 0 {
            xor(
                &mut self.balances_digest,
                &Self::entry_digest(&account, old),
            );
        }
        if balance == 0 {
            self.balances.remove(&account);
        } else {
            xor(
                &mut self.balances_digest,
                &Self::entry_digest(&account, balance),
            );
            self.balances.insert(account, balance);
        }
    }

    fn apply(&mut self, tx: &[u8], id: &TxId, log: &mut LogAppend) -> ReceiptStatus {
        if let Some(body) = tx.strip_prefix(LEDGER_TX_MAGIC.as_slice()) {
            let Ok(ltx) = decode::<LedgerTx>(body) else {
                return ReceiptStatus::Rejected("malformed ledger instruction".into());
            };
            return match ltx {
                LedgerTx::Mint { to, amount } => {
                    let b = self.balance(&to);
                    match b.checked_add(amount) {
                        Some(v) => {
                            self.set_balance(to, v);
                            ReceiptStatus::Applied
                        }
                        None => ReceiptStatus::Rejected("balance overflow".into()),
                    }
                }
                LedgerTx::Transfer { from, to, amount } => {
                    let have = self.balance(&from);
                    if have < amount {
                        return ReceiptStatus::Rejected(format!(
                            "insufficient balance {have} < {amount}"
                        ));
                    }
                    let Some(new_to) = self.balance(&to).checked_add(amount) else {
                        return ReceiptStatus::Rejected("balance overflow".into());
                    };
                    if from != to {
                        self.set_balance(from, have - amount);
                        self.set_balance(to, new_to);
                    }
                    ReceiptStatus::Applied
                }
            };
        }
        log.push(id);
        ReceiptStatus::Logged
    }
}

fn xor(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// The default state machine: the committed ledger state plus speculative states of blocks
/// executed optimistically (before they commit), by root. A fork's states are dropped on prune.
#[derive(Debug)]
pub struct Ledger {
    states: HashMap<StateRoot, LedgerState>,
    genesis: StateRoot,
}

impl Default for Ledger {
    fn default() -> Self {
        let g = LedgerState::default();
        let root = g.root();
        Self {
            states: HashMap::from([(root, g)]),
            genesis: root,
        }
    }
}

impl Ledger {
    /// The state with this root.
    pub fn state(&self, root: &StateRoot) -> Option<&LedgerState> {
        self.states.get(root)
    }

    /// The state with this root, encoded for storage (a restart restores it with
    /// [`Ledger::restore`] instead of executing the chain from genesis); `None` if no such state
    /// is held, or if it holds more than [`MAX_SNAPSHOT_ACCOUNTS`] accounts (which `restore`
    /// would refuse).
    pub fn snapshot(&self, root: &StateRoot) -> Option<Vec<u8>> {
        let state = self.states.get(root)?;
        if state.balances.len() > MAX_SNAPSHOT_ACCOUNTS {
            // It could not be restored: a restart executes the chain from an older state.
            tracing::warn!(target: "pipeline.exec", accounts = state.balances.len(), max = MAX_SNAPSHOT_ACCOUNTS, "ledger too large to snapshot");
            return None;
        }
        let mut balances: Vec<([u8; 32], u64)> =
            state.balances.iter().map(|(a, b)| (*a, *b)).collect();
        balances.sort_unstable();
        Some(crate::codec::encode_infallible(&LedgerSnapshot {
            balances,
            log_head: state.log_head,
            log_len: state.log_len,
        }))
    }

    /// A ledger holding only the state `bytes` describe ([`Ledger::snapshot`]), and that state's
    /// root.
    ///
    /// # Errors
    /// [`ExecError::BadSnapshot`] for bytes that do not decode, accounts out of order or
    /// repeated, or a zero balance (never held).
    pub fn restore(bytes: &[u8]) -> Result<(Self, StateRoot), ExecError> {
        let snap: LedgerSnapshot =
            decode(bytes).map_err(|e| ExecError::BadSnapshot(e.to_string()))?;
        let mut state = LedgerState {
            log_head: snap.log_head,
            log_len: snap.log_len,
            ..LedgerState::default()
        };
        let mut previous: Option<[u8; 32]> = None;
        for (account, balance) in snap.balances {
            if previous.is_some_and(|p| p >= account) {
                return Err(ExecError::BadSnapshot(
                    "accounts out of order or repeated".into(),
                ));
            }
            if balance == 0 {
                return Err(ExecError::BadSnapshot(
                    "an account with a zero balance".into(),
                ));
            }
            previous = Some(account);
            state.set_balance(account, balance);
        }
        let root = state.root();
        let genesis = LedgerState::default().root();
        Ok((
            Self {
                states: HashMap::from([(root, state)]),
                genesis,
            },
            root,
        ))
    }
}

impl StateMachine for Ledger {
    fn execute(
        &mut self,
        parent_state: &StateRoot,
        block: BlockTxs<'_>,
    ) -> Result<(StateRoot, Vec<Receipt>), ExecError> {
        let parent = self
            .states
            .get(parent_state)
            .ok_or(ExecError::UnknownParent(*parent_state))?;
        if self.states.len() >= MAX_LEDGER_STATES {
            return Err(ExecError::TooManyStates(MAX_LEDGER_STATES));
        }
        let mut state = parent.clone();
        let mut log = LogAppend::new(&state.log_head, block.txs.len());
        let receipts = block
            .txs
            .iter()
            .zip(block.ids)
            .enumerate()
            .map(|(i, (tx, id))| {
                // Each transaction's first bytes are a cache miss (a block's payload is cold
                // here): asked for ahead, the misses overlap instead of coming one by one.
                if let Some(ahead) = block.txs.get(i + EXEC_PREFETCH_TXS) {
                    crate::mempool::prefetch(ahead, 0);
                }
                Receipt {
                    tx_id: *id,
                    status: state.apply(tx, id, &mut log),
                }
            })
            .collect();
        if log.count() > 0 {
            state.log_head = log.digest();
            state.log_len += log.count();
        }
        let root = state.root();
        self.states.insert(root, state);
        Ok((root, receipts))
    }

    fn prune(&mut self, keep: &[StateRoot]) {
        self.states.retain(|root, _| keep.contains(root));
    }

    fn genesis(&self) -> StateRoot {
        self.genesis
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_infallible;
    use crate::mempool::tx_id;

    /// Executes `txs` on `parent`.
    fn run(
        l: &mut Ledger,
        parent: &StateRoot,
        txs: &[Vec<u8>],
    ) -> Result<(StateRoot, Vec<Receipt>), ExecError> {
        let slices: Vec<&[u8]> = txs.iter().map(Vec::as_slice).collect();
        let ids: Vec<TxId> = txs.iter().map(|t| tx_id(t)).collect();
        l.execute(parent, BlockTxs::new(&slices, &ids))
    }

    fn ledger_tx(t: &LedgerTx) -> Vec<u8> {
        [LEDGER_TX_MAGIC.as_slice(), &encode_infallible(t)].concat()
    }

    #[test]
    fn deterministic_and_order_sensitive() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let txs = vec![
            ledger_tx(&LedgerTx::Mint { to: a, amount: 100 }),
            ledger_tx(&LedgerTx::Transfer {
                from: a,
                to: b,
                amount: 30,
            }),
            b"opaque".to_vec(),
            ledger_tx(&LedgerTx::Transfer {
                from: b,
                to: a,
                amount: 31,
            }),
            b"junk-with-magic-prefix? no".to_vec(),
            [LEDGER_TX_MAGIC.as_slice(), b"garbage"].concat(),
        ];
        let mut l1 = Ledger::default();
        let mut l2 = Ledger::default();
        let g = l1.genesis();
        let (r1, receipts) = run(&mut l1, &g, &txs).unwrap();
        let (r2, _) = run(&mut l2, &g, &txs).unwrap();
        assert_eq!(r1, r2, "same block, same root");
        let statuses: Vec<_> = receipts.iter().map(|r| r.status.clone()).collect();
        assert_eq!(statuses[0], ReceiptStatus::Applied);
        assert_eq!(statuses[1], ReceiptStatus::Applied);
        assert_eq!(statuses[2], ReceiptStatus::Logged);
        assert!(matches!(statuses[3], ReceiptStatus::Rejected(_)));
        assert!(matches!(statuses[5], ReceiptStatus::Rejected(_)));
        let s = l1.state(&r1).unwrap();
        assert_eq!((s.balance(&a), s.balance(&b), s.log_len()), (70, 30, 2));
        let mut swapped = txs.clone();
        swapped.swap(2, 4);
        let (r3, _) = run(&mut l2, &g, &swapped).unwrap();
        assert_ne!(r1, r3, "log order is part of the state");
    }

    /// The log's head after a block is one keyed hash over the previous head and the block's
    /// logged ids in order (however the ids were gathered), across BLAKE3 chunk boundaries.
    #[test]
    fn log_head_is_one_hash_over_the_previous_head_and_the_logged_ids() {
        let mut l = Ledger::default();
        let g = l.genesis();
        let txs: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let (r1, _) = run(&mut l, &g, &txs[..1]).unwrap();
        let (r2, _) = run(&mut l, &r1, &txs[1..]).unwrap();
        let head1 = l.state(&r1).unwrap().log_head;
        let mut h = blake3::Hasher::new_derive_key("bpci 2026-11 ledger log v2");
        h.update(&Digest32::default());
        h.update(&tx_id(&txs[0]));
        assert_eq!(head1, *h.finalize().as_bytes());
        let mut h = blake3::Hasher::new_derive_key("bpci 2026-11 ledger log v2");
        h.update(&head1);
        for t in &txs[1..] {
            h.update(&tx_id(t));
        }
        let s2 = l.state(&r2).unwrap();
        assert_eq!(s2.log_head, *h.finalize().as_bytes());
        assert_eq!(s2.log_len(), 100);
    }

    /// A snapshot restores the same state (same root, balances, log), which then executes the
    /// next block to the same root as the original; damaged bytes are refused.
    #[test]
    fn a_snapshot_restores_the_state_it_was_taken_of() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut l = Ledger::default();
        let g = l.genesis();
        let txs = vec![
            ledger_tx(&LedgerTx::Mint { to: a, amount: 100 }),
            ledger_tx(&LedgerTx::Transfer {
                from: a,
                to: b,
                amount: 40,
            }),
            b"opaque".to_vec(),
        ];
        let (r1, _) = run(&mut l, &g, &txs).unwrap();
        let bytes = l.snapshot(&r1).unwrap();
        assert!(l.snapshot(&[9; 32]).is_none());
        let (mut back, root) = Ledger::restore(&bytes).unwrap();
        assert_eq!(root, r1);
        assert_eq!(back.genesis(), g);
        let s = back.state(&root).unwrap();
        assert_eq!((s.balance(&a), s.balance(&b), s.log_len()), (60, 40, 1));
        let next = vec![b"more".to_vec()];
        assert_eq!(
            run(&mut back, &root, &next).unwrap().0,
            run(&mut l, &r1, &next).unwrap().0
        );
        // Damage: cut short, or a balance changed (the root then differs).
        assert!(matches!(
            Ledger::restore(&bytes[..bytes.len() - 1]),
            Err(ExecError::BadSnapshot(_))
        ));
        let mut changed = bytes.clone();
        changed[1 + 32] ^= 1;
        assert_ne!(Ledger::restore(&changed).map(|(_, r)| r), Ok(r1));
    }

    #[test]
    fn forks_execute_from_their_parent_and_prune_keeps_the_committed_state() {
        let mut l = Ledger::default();
        let g = l.genesis();
        let (a, _) = run(&mut l, &g, &[b"a".to_vec()]).unwrap();
        let (b, _) = run(&mut l, &g, &[b"b".to_vec()]).unwrap();
        assert_ne!(a, b);
        let (a2, _) = run(&mut l, &a, &[b"c".to_vec()]).unwrap();
        // A speculative child of a2 survives the prune that commits a2.
        let (a3, _) = run(&mut l, &a2, &[b"d".to_vec()]).unwrap();
        l.prune(&[a2, a3]);
        assert!(l.state(&b).is_none());
        assert!(l.state(&a).is_none());
        assert_eq!(run(&mut l, &b, &[]), Err(ExecError::UnknownParent(b)));
        assert!(run(&mut l, &a2, &[]).is_ok());
        assert!(run(&mut l, &a3, &[b"e".to_vec()]).is_ok());
    }
}
