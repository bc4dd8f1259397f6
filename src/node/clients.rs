//! The client gateway: transactions from the client endpoint into the mempool ("busy" when it is
//! full, "committed" when the committed window holds them already), status queries, and commit
//! notices back to the client that submitted them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bpci_transport::{ClientFrame, ClientServerHandle, Receiver};
use bytes::Bytes;

use crate::client_proto::{ClientRequest, ClientResponse, TxState, TxStatus, LATE_ROUNDS};
use crate::codec::{decode, encode_infallible};
use crate::crypto::Digest32;
use crate::mempool::{HashedTxs, IdMap, Mempool, MempoolError, Payload, TxId, NO_OWNER};
use crate::types::BlockId;

use super::app::FifoMap;
use super::committed::CommittedTxs;
use super::stages::Executed;

/// Most forwarded transactions whose submitter is remembered for a commit notice.
pub const MAX_TRACKED_TXS: usize = 1 << 20;
/// Most own proposals whose transactions' owners are kept until they commit.
pub const MAX_AWAITING_BLOCKS: usize = 1024;

/// The transactions of one of this validator's proposals and the client connection that
/// submitted each ([`NO_OWNER`] for none), in payload order.
#[derive(Clone, Debug)]
pub struct ProposedTxs {
    /// Their ids.
    pub ids: Arc<[TxId]>,
    /// Their owners.
    pub owners: Arc<[u64]>,
}

impl ProposedTxs {
    /// The ids of each owner's transactions (owners in order of first appearance).
    fn by_owner(&self) -> Vec<(u64, Vec<TxId>)> {
        let mut out: Vec<(u64, Vec<TxId>)> = Vec::new();
        for (id, owner) in self.ids.iter().zip(self.owners.iter()) {
            if *owner == NO_OWNER {
                continue;
            }
            // Few connections per block (a load generator, a handful of clients): a scan.
            match out.iter_mut().find(|(o, _)| o == owner) {
                Some((_, ids)) => ids.push(*id),
                None => out.push((*owner, vec![*id])),
            }
        }
        out
    }
}

/// This validator's proposals awaiting commit, by payload root (the transactions' Merkle
/// root, which names exactly one transaction list): where receipts and commit notices find each
/// transaction's client, one look-up per block instead of one per transaction.
pub type Awaiting = FifoMap<ProposedTxs, MAX_AWAITING_BLOCKS>;
/// Most client connections watching leader hints, or commits, at once.
pub const MAX_WATCHERS: usize = 1024;
/// A watcher whose queue was full for this many frames in a row (a client that does not read)
/// stops watching.
pub const WATCHER_MAX_MISSES: u32 = 64;

/// Client connections that asked for one kind of frame, with the frames each missed in a row.
#[derive(Default)]
struct WatchList(Vec<(u64, u32)>);

impl WatchList {
    fn add(&mut self, conn: u64, what: &str) -> Result<(), String> {
        if self.contains(conn) {
            return Ok(());
        }
        if self.0.len() >= MAX_WATCHERS {
            return Err(format!("{what}: {MAX_WATCHERS} connections already watch"));
        }
        self.0.push((conn, 0));
        Ok(())
    }

    fn contains(&self, conn: u64) -> bool {
        self.0.iter().any(|(c, _)| *c == conn)
    }

    /// Sends `frame` to the watchers `to` selects. Best effort: a watcher whose queue is full
    /// misses it, and after [`WATCHER_MAX_MISSES`] in a row stops watching; a closed connection
    /// stops watching.
    fn send(&mut self, server: &ClientServerHandle, mut to: impl FnMut(u64) -> Option<Bytes>) {
        self.0.retain_mut(|(conn, misses)| {
            let Some(frame) = to(*conn) else {
                return true;
            };
            match server.send(*conn, frame) {
                Ok(()) => {
                    *misses = 0;
                    true
                }
                Err(bpci_transport::SendError::QueueFull) => {
                    *misses += 1;
                    *misses < WATCHER_MAX_MISSES
                }
                Err(_) => false,
            }
        });
    }
}

/// Shared by the client reader thread, the consensus stage (leader hints, inclusion receipts)
/// and the persistence stage (commit notices).
pub struct Gateway {
    mempool: Arc<Mutex<Mempool>>,
    server: ClientServerHandle,
    /// Own proposals awaiting commit (filled as payloads are built, see
    /// [`super::app::NodeApp::awaiting`]).
    awaiting: Arc<Mutex<Awaiting>>,
    /// Owners of our clients' transactions forwarded to another leader (see
    /// [`super::forward`]).
    forwarded: Arc<Mutex<IdMap<u64>>>,
    /// The committed window.
    committed: Arc<Mutex<CommittedTxs>>,
    /// Submitted transactions answered [`TxStatus::Committed`] (resubmissions of committed
    /// ones).
    pub answered_committed: std::sync::atomic::AtomicU64,
    /// Connections that asked for leader hints ([`ClientRequest::WatchLeaders`]).
    leader_watchers: Mutex<WatchList>,
    /// Connections that asked for inclusion receipts and commit announcements
    /// ([`ClientRequest::WatchCommits`]).
    commit_watchers: Mutex<WatchList>,
    /// Answers and commit notices a client connection's full queue (or its closing) refused:
    /// that client lost them (`client_frames_dropped` in `stats.json`).
    pub dropped: std::sync::atomic::AtomicU64,
    /// Whether this validator leads none of the next [`crate::client_proto::LATE_ROUNDS`]
    /// rounds ([`ClientRequest::SubmitToLeader`]); never, when not given.
    late: Option<Late>,
}

/// See [`Gateway::with_late`].
pub type Late = Box<dyn Fn() -> bool + Send + Sync>;

/// Whether a validator in round `now`, whose latest proposal (payload taken) was for round
/// `proposing`, leads none of the rounds from `now` to [`LATE_ROUNDS`] past it that it has not
/// proposed for yet: a transaction it took now would wait for its next turn.
pub fn is_late(now: u64, proposing: u64, leads: impl Fn(u64) -> bool) -> bool {
    let from = now.max(proposing.saturating_add(1));
    let to = now.saturating_add(LATE_ROUNDS);
    !(from..=to).any(leads)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    /// A gateway over the node's mempool and client endpoint, with the owners of its own
    /// proposals' transactions (`awaiting`) and of forwarded ones (`forwarded`).
    pub fn new(
        mempool: Arc<Mutex<Mempool>>,
        server: ClientServerHandle,
        awaiting: Arc<Mutex<Awaiting>>,
        forwarded: Arc<Mutex<IdMap<u64>>>,
        committed: Arc<Mutex<CommittedTxs>>,
    ) -> Self {
        Self {
            mempool,
            server,
            awaiting,
            forwarded,
            committed,
            answered_committed: std::sync::atomic::AtomicU64::new(0),
            dropped: std::sync::atomic::AtomicU64::new(0),
            leader_watchers: Mutex::new(WatchList::default()),
            commit_watchers: Mutex::new(WatchList::default()),
            late: None,
        }
    }

    /// Answers [`ClientRequest::SubmitToLeader`] with [`TxStatus::Late`] whenever `late` says
    /// this validator leads none of the next rounds.
    pub fn with_late(mut self, late: Late) -> Self {
        self.late = Some(late);
        self
    }

    /// Reads client frames until the endpoint shuts down.
    pub fn serve(&self, mut frames: Receiver<ClientFrame>) {
        while let Some(f) = frames.blocking_recv() {
            let reply = match decode::<ClientRequest>(&f.frame) {
                Ok(ClientRequest::Submit(txs)) => {
                    Some(ClientResponse::Ack(self.submit(f.conn, txs, false, false)))
                }
                Ok(ClientRequest::SubmitToLeader(txs)) => {
                    Some(ClientResponse::Ack(self.submit(f.conn, txs, true, false)))
                }
                Ok(ClientRequest::Resubmit(txs)) => {
                    Some(ClientResponse::Ack(self.submit(f.conn, txs, false, true)))
                }
                // Watching has no reply of its own, only a refusal.
                Ok(ClientRequest::WatchLeaders) => lock(&self.leader_watchers)
                    .add(f.conn, "watch_leaders")
                    .err()
                    .map(ClientResponse::Error),
                Ok(ClientRequest::WatchCommits) => lock(&self.commit_watchers)
                    .add(f.conn, "watch_commits")
                    .err()
                    .map(ClientResponse::Error),
                Ok(ClientRequest::Status(ids)) => Some(ClientResponse::Status(self.status(&ids))),
                Err(e) => Some(ClientResponse::Error(e.to_string())),
            };
            if let Some(reply) = reply {
                let sent = self
                    .server
                    .send(f.conn, Bytes::from(encode_infallible(&reply)));
                self.count_drop(sent);
            }
        }
    }

    /// Tells every watching client that this validator has just proposed for `round` and who
    /// leads the rounds after it (called by the consensus stage; never blocks).
    pub fn announce_leaders(&self, round: u64, next: Vec<[u8; 32]>) {
        let mut w = lock(&self.leader_watchers);
        if w.0.is_empty() {
            return;
        }
        let frame = Bytes::from(encode_infallible(&ClientResponse::Leaders { round, next }));
        w.send(&self.server, |_| Some(frame.clone()));
    }

    /// Tells each commit-watching client which of its transactions this validator's proposal
    /// `block` (just sent, its payload root `tx_root`) carries (called off the consensus
    /// thread; never blocks).
    pub fn included(&self, round: u64, block: BlockId, tx_root: &Digest32) {
        let mut w = lock(&self.commit_watchers);
        if w.0.is_empty() {
            return;
        }
        let Some(proposed) = lock(&self.awaiting).get(tx_root).cloned() else {
            return;
        };
        let mut per_conn: HashMap<u64, Vec<TxId>> = proposed
            .by_owner()
            .into_iter()
            .filter(|(conn, _)| w.contains(*conn))
            .collect();
        if per_conn.is_empty() {
            return;
        }
        w.send(&self.server, |conn| {
            let tx_ids = per_conn.remove(&conn)?;
            let msg = ClientResponse::Included {
                round,
                block,
                tx_ids,
            };
            Some(Bytes::from(encode_infallible(&msg)))
        });
    }

    /// Tells every commit-watching client that `block` is committed, executed and durable here
    /// (called by the persistence stage, on the validator that formed the QC committing it).
    pub fn announce_commit(&self, height: u64, round: u64, block: BlockId) {
        let mut w = lock(&self.commit_watchers);
        if w.0.is_empty() {
            return;
        }
        let msg = ClientResponse::BlockCommitted {
            height,
            round,
            block,
        };
        let frame = Bytes::from(encode_infallible(&msg));
        w.send(&self.server, |_| Some(frame.clone()));
    }

    /// Inserts `txs` into the mempool; with `to_leader`, none when this validator is late (see
    /// [`Gateway::with_late`]), decided under the mempool lock that proposing takes too, so a
    /// batch that arrives after the payload was taken is answered late, never kept for the
    /// next turn.
    fn submit(
        &self,
        conn: u64,
        txs: Vec<serde_bytes::ByteBuf>,
        to_leader: bool,
        resubmitted: bool,
    ) -> Vec<TxStatus> {
        let n = txs.len();
        // No room at all: answered before any hashing (under overload, most batches): late
        // where the submit asked for that and it holds, else busy.
        {
            let pool = lock(&self.mempool);
            if pool.refuses_local() {
                let late = to_leader && self.late.as_ref().is_some_and(|late| late());
                return vec![if late { TxStatus::Late } else { TxStatus::Busy }; n];
            }
        }
        // Hashed before the lock: the consensus thread takes the same lock to propose.
        let batch = HashedTxs::new(
            txs.into_iter()
                .map(serde_bytes::ByteBuf::into_vec)
                .collect(),
        );
        // Exactly once: a resubmitted transaction in the committed window is answered with its
        // height, never admitted again.
        let heights: Vec<Option<u64>> = if resubmitted {
            let window = lock(&self.committed);
            batch.ids().iter().map(|id| window.height_of(id)).collect()
        } else {
            vec![None; n]
        };
        let known = heights.iter().filter(|h| h.is_some()).count();
        let batch = if known == 0 {
            batch
        } else {
            self.answered_committed
                .fetch_add(known as u64, std::sync::atomic::Ordering::Relaxed);
            let drop: Vec<bool> = heights.iter().map(Option::is_some).collect();
            batch.without(&drop)
        };
        let admitted: Vec<TxStatus> = match self.mempool.lock() {
            Ok(_) if to_leader && self.late.as_ref().is_some_and(|late| late()) => {
                vec![TxStatus::Late; batch.len()]
            }
            Ok(mut pool) => if resubmitted {
                pool.insert_resubmitted_batch(batch, conn)
            } else {
                pool.insert_batch(batch, conn)
            }
            .into_iter()
            .map(|r| match r {
                Ok(_) => TxStatus::Accepted,
                Err(MempoolError::Full { .. }) => TxStatus::Busy,
                Err(MempoolError::Duplicate) => TxStatus::Duplicate,
                Err(_) => TxStatus::Invalid,
            })
            .collect(),
            Err(_) => vec![TxStatus::Busy; batch.len()],
        };
        if known == 0 {
            return admitted;
        }
        let mut admitted = admitted.into_iter();
        let out: Vec<TxStatus> = heights
            .into_iter()
            .map(|h| match h {
                Some(height) => TxStatus::Committed { height },
                None => admitted.next().unwrap_or(TxStatus::Busy),
            })
            .collect();
        debug_assert_eq!(out.len(), n);
        out
    }

    /// What this validator knows of each of `ids` ([`ClientRequest::Status`]). Each table is
    /// locked once, briefly: the mempool's lock is the one proposing takes.
    pub fn status(&self, ids: &[TxId]) -> Vec<TxState> {
        let mut states: Vec<Option<TxState>> = lock(&self.committed)
            .statuses(ids)
            .into_iter()
            .map(|c| c.map(|c| TxState::Committed(Box::new(c))))
            .collect();
        let pending = |states: &mut Vec<Option<TxState>>, held: &dyn Fn(&TxId) -> bool| {
            for (s, id) in states.iter_mut().zip(ids) {
                if s.is_none() && held(id) {
                    *s = Some(TxState::Pending);
                }
            }
        };
        {
            let pool = lock(&self.mempool);
            pending(&mut states, &|id| pool.contains(id));
        }
        {
            let forwarded = lock(&self.forwarded);
            pending(&mut states, &|id| forwarded.contains_key(id));
        }
        if states.iter().any(Option::is_none) {
            // Our own proposals not yet committed (a few blocks).
            let in_flight: IdMap<()> = lock(&self.awaiting)
                .values()
                .flat_map(|p| p.ids.iter().map(|id| (*id, ())))
                .collect();
            pending(&mut states, &|id| in_flight.contains_key(id));
        }
        states
            .into_iter()
            .map(|s| s.unwrap_or(TxState::Unknown))
            .collect()
    }

    fn count_drop(&self, sent: Result<(), bpci_transport::SendError>) {
        if sent.is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sends commit notices for durable blocks (called by the persistence stage): for our own
    /// proposals from their owner lists, for any block from the owners of forwarded
    /// transactions.
    pub fn notify(&self, executed: &[Executed]) {
        // One notice per client and height: a notice names the height of its transactions'
        // block (a client that resubmitted checks it against other notices).
        let mut per_conn: HashMap<(u64, u64), Vec<TxId>> = HashMap::new();
        let mut add = |conn: u64, height: u64, ids: &mut dyn Iterator<Item = TxId>| {
            per_conn.entry((conn, height)).or_default().extend(ids);
        };
        {
            let mut awaiting = lock(&self.awaiting);
            for e in executed {
                let Some(root) = Payload::root_of(&e.block.payload) else {
                    continue;
                };
                if let Some(proposed) = awaiting.take(&root) {
                    for (conn, ids) in proposed.by_owner() {
                        add(conn, e.height, &mut ids.into_iter());
                    }
                }
            }
        }
        {
            let mut forwarded = lock(&self.forwarded);
            if !forwarded.is_empty() {
                for e in executed {
                    for id in e.tx_ids.iter() {
                        if let Some(conn) = forwarded.remove(id) {
                            add(conn, e.height, &mut std::iter::once(*id));
                        }
                    }
                }
            }
        }
        for ((conn, height), tx_ids) in per_conn {
            let msg = ClientResponse::Committed { height, tx_ids };
            let sent = self.server.send(conn, Bytes::from(encode_infallible(&msg)));
            self.count_drop(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposals_transactions_are_grouped_by_owner_in_order() {
        let id = |i: u8| [i; 32];
        let proposed = ProposedTxs {
            ids: (1..=5).map(id).collect(),
            owners: vec![3, NO_OWNER, 9, 3, 9].into(),
        };
        assert_eq!(
            proposed.by_owner(),
            vec![(3, vec![id(1), id(4)]), (9, vec![id(3), id(5)])]
        );
    }

    #[test]
    fn late_when_no_unproposed_round_of_ours_is_near() {
        // Four validators round-robin; this one leads rounds 1, 5, 9, ...
        let leads = |r: u64| r % 4 == 1;
        // Round 0, last proposal in round 1 - 4: round 1 is ours and near.
        assert!(!is_late(0, 0, leads));
        // Round 1, payload for round 1 not taken yet: still ours to fill.
        assert!(!is_late(1, 0, leads));
        // Payload for round 1 taken (the core may still be in round 0 or 1): next turn 5.
        assert!(is_late(0, 1, leads));
        assert!(is_late(1, 1, leads));
        assert!(is_late(2, 1, leads));
        // Round 3: round 5 is two rounds ahead.
        assert!(!is_late(3, 1, leads));
        assert!(!is_late(4, 1, leads));
        // Far beyond any round: no overflow, and no round is near.
        assert!(is_late(u64::MAX, u64::MAX, leads));
    }
}
