//! Mempool forwarding: transactions a validator takes from its own clients go to the leader of
//! the round after next, so they ride in a proposal one round away instead of waiting for this
//! validator's own turn as leader (up to n rounds with round-robin leaders). Not the next
//! round's leader: in round r it is already collecting the votes for r and proposes as soon as
//! they form a QC, before a forwarded batch arrives; the leader of r + 2 proposes a round later.
//!
//! A forwarded transaction is *given away*: it leaves this validator's mempool for the leader's,
//! so at any time it waits in one mempool only, and no path of the engine's own can commit it
//! twice. (An earlier version took a transaction back into its own mempool when no committed
//! block had carried it after a timeout: a leader that was only slow, or whose block was still
//! on its way to commit, then proposed it as well, and it committed twice.) A leader that fails
//! before proposing it loses it: the client sees no commit notice and submits it again. The
//! forwarder remembers what it handed off until a committed block carries it or
//! [`HANDOFF_TIMEOUT`] passes (counted as expired), to bound what is in other leaders' hands:
//! at most [`MAX_HANDED_BYTES`] and [`MAX_HANDED_TXS`]; beyond it transactions stay local. The
//! receiving leader keeps forwarded transactions apart from its own clients' (in a queue with
//! bounds of its own, [`Mempool::insert_forwarded_batch`]) and never forwards them again, so a
//! transaction crosses at most one extra hop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::consensus::{Message, TxBatch};
use crate::mempool::{HashedTxs, IdMap, Mempool, TxId, NO_OWNER};
use crate::types::ValidatorIndex;

/// The forwarder sends to the leader of (current round + this).
pub const LOOKAHEAD_ROUNDS: u64 = 2;
/// How often the forwarder looks for new client transactions.
pub const FORWARD_INTERVAL: Duration = Duration::from_millis(1);
/// How often it looks while forwarding is off for load (above [`FORWARD_BELOW_TPS`]): the
/// intake is measured over [`INTAKE_WINDOW`], and a 1 ms loop with nothing to forward cost
/// about 850 wake-ups per second per validator, each taking the mempool lock.
pub const BUSY_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes of transactions in one forwarded batch, at most.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Transactions in one forwarded batch, at most.
pub const MAX_BATCH_TXS: usize = 4096;
/// Forwarding stops while our clients submit more than this many transactions per second. The
/// extra hop (one more transfer, the leader hashing each transaction again) cost 4.2-4.8 instead
/// of 3.7-4.1 CPU-seconds per 100,000 transactions at 50,000 tx/s on the reference VM (all
/// processes of a 4-validator testnet together); at light load it cuts
/// latency by a quarter (2,000 tx/s: p50 24 → 17 ms, p99 41 → 30 ms), at heavy load the CPU
/// matters more and every leader's own proposals are full anyway.
pub const FORWARD_BELOW_TPS: f64 = 5_000.0;
/// Window over which the intake rate is measured.
pub const INTAKE_WINDOW: Duration = Duration::from_millis(200);
/// A handed-off transaction not seen committed by then is forgotten (counted as expired).
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of handed-off transactions not yet seen committed, at most (beyond it, transactions
/// stay local).
pub const MAX_HANDED_BYTES: usize = 64 << 20;
/// Handed-off transactions not yet seen committed, at most (small transactions would otherwise
/// fill the table long before [`MAX_HANDED_BYTES`]).
pub const MAX_HANDED_TXS: usize = 65_536;

/// Transactions handed to another leader and not yet seen committed: their sizes, to bound what
/// is in other leaders' hands.
#[derive(Debug, Default)]
pub struct HandOff {
    txs: IdMap<usize>,
    /// Hand-off batches in time order: when they expire, and their ids.
    deadlines: VecDeque<(Instant, Vec<TxId>)>,
    bytes: usize,
}

impl HandOff {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Transactions held.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Records `txs` (ids and sizes), handed off at `now`.
    pub fn hold(&mut self, txs: impl IntoIterator<Item = (TxId, usize)>, now: Instant) {
        let mut ids = Vec::new();
        for (id, len) in txs {
            self.bytes += len;
            if let Some(old) = self.txs.insert(id, len) {
                self.bytes -= old;
            }
            ids.push(id);
        }
        self.deadlines.push_back((now + HANDOFF_TIMEOUT, ids));
    }

    /// Forgets transactions a committed block carried.
    pub fn committed<'a>(&mut self, ids: impl IntoIterator<Item = &'a TxId>) {
        if self.txs.is_empty() {
            return;
        }
        for id in ids {
            if let Some(len) = self.txs.remove(id) {
                self.bytes -= len;
            }
        }
    }

    /// Forgets the transactions whose hand-off expired by `now`; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<TxId> {
        let mut forgotten = Vec::new();
        while let Some((deadline, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, ids)) = self.deadlines.pop_front() else {
                break;
            };
            for id in ids {
                if let Some(len) = self.txs.remove(&id) {
                    self.bytes -= len;
                    forgotten.push(id);
                }
            }
        }
        forgotten
    }
}

/// Counters of the forwarder (in `stats.json` under `forward`).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Transactions sent to another leader.
    pub sent: AtomicU64,
    /// Handed-off transactions not seen committed within [`HANDOFF_TIMEOUT`] (the leader
    /// failed or dropped them; their clients resubmit).
    pub expired: AtomicU64,
    /// Transactions other validators forwarded to us, accepted into the mempool.
    pub received: AtomicU64,
    /// Forwarded to us but not accepted (duplicate, full, invalid).
    pub refused: AtomicU64,
}

/// Our clients' intake rate, measured over [`INTAKE_WINDOW`]s.
#[derive(Debug, Default)]
pub struct Intake {
    window: Option<(Instant, u64)>,
    tps: f64,
}

impl Intake {
    /// Records the counter `inserted` at `now`; returns the latest complete window's rate.
    pub fn observe(&mut self, now: Instant, inserted: u64) -> f64 {
        match self.window {
            None => self.window = Some((now, inserted)),
            Some((start, at_start)) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= INTAKE_WINDOW {
                    self.tps = inserted.saturating_sub(at_start) as f64 / elapsed.as_secs_f64();
                    self.window = Some((now, inserted));
                }
            }
        }
        self.tps
    }
}

/// The forwarding loop's state (runs on its own thread, see [`Forwarder::run`]).
pub struct Forwarder {
    /// This validator.
    pub me: ValidatorIndex,
    /// Leader of a round.
    pub leader_of: Box<dyn Fn(u64) -> ValidatorIndex + Send>,
    /// The core's current round (set by the consensus stage).
    pub round: Arc<AtomicU64>,
    /// The node's mempool.
    pub mempool: Arc<Mutex<Mempool>>,
    /// What is in other leaders' hands (shared with the commit notice path).
    pub handoff: Arc<Mutex<HandOff>>,
    /// The client connection of each forwarded transaction, until its commit notice (shared
    /// with the client gateway; at most [`super::clients::MAX_TRACKED_TXS`]).
    pub owners: Arc<Mutex<IdMap<u64>>>,
    /// Whether a validator is connected now (a batch queued for a peer that is down would come
    /// back only after the hand-off timeout, so none is taken for it).
    pub reachable: Box<dyn Fn(ValidatorIndex) -> bool + Send>,
    /// Sends a message to one validator; false when it could not be queued.
    pub send: Box<dyn FnMut(ValidatorIndex, Message) -> bool + Send>,
    /// Counters.
    pub counters: Arc<ForwardCounters>,
    /// Our clients' intake rate.
    pub intake: Intake,
}

impl Forwarder {
    /// One step at `now`: forgets expired hand-offs, then forwards our clients' pending
    /// transactions to the leader [`LOOKAHEAD_ROUNDS`] ahead, unless we lead a round before or
    /// our clients submit more than [`FORWARD_BELOW_TPS`]. Returns the pause before the next
    /// step.
    pub fn step(&mut self, now: Instant) -> Duration {
        let expired = self.held().expire(now);
        if !expired.is_empty() {
            self.counters
                .expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            // No commit notice will come for them: their clients are not waited on any more.
            let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
            for id in &expired {
                owners.remove(id);
            }
        }
        let inserted = self.pool().local_inserted();
        if self.intake.observe(now, inserted) > FORWARD_BELOW_TPS {
            return BUSY_INTERVAL;
        }
        let round = self.round.load(Ordering::Acquire);
        if (1..LOOKAHEAD_ROUNDS).any(|k| (self.leader_of)(round + k) == self.me) {
            return FORWARD_INTERVAL;
        }
        let next = (self.leader_of)(round + LOOKAHEAD_ROUNDS);
        if next == self.me || !(self.reachable)(next) {
            return FORWARD_INTERVAL;
        }
        let room = {
            let held = self.held();
            held.bytes() < MAX_HANDED_BYTES && held.len() < MAX_HANDED_TXS
        };
        if !room {
            return FORWARD_INTERVAL;
        }
        let (taken, owners) = self.pool().take_local(MAX_BATCH_TXS, MAX_BATCH_BYTES);
        if taken.is_empty() {
            return FORWARD_INTERVAL;
        }
        {
            let mut known = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
            for ((id, _), owner) in taken.iter().zip(owners) {
                if owner != NO_OWNER && known.len() < super::clients::MAX_TRACKED_TXS {
                    known.insert(*id, owner);
                }
            }
        }
        let handed: Vec<(TxId, usize)> = taken.iter().map(|(id, tx)| (*id, tx.len())).collect();
        let msg = Message::Txs(TxBatch {
            txs: taken
                .iter()
                .map(|(_, tx)| serde_bytes::ByteBuf::from(tx.clone()))
                .collect(),
        });
        if (self.send)(next, msg) {
            self.counters
                .sent
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
            self.held().hold(handed, now);
        } else {
            // Never sent: still only ours.
            self.pool().requeue_unsent(taken);
        }
        FORWARD_INTERVAL
    }

    fn pool(&self) -> MutexGuard<'_, Mempool> {
        self.mempool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> MutexGuard<'_, HandOff> {
        self.handoff.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Steps every [`FORWARD_INTERVAL`] ([`BUSY_INTERVAL`] under load) until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            let pause = self.step(Instant::now());
            std::thread::sleep(pause);
        }
    }
}

/// Puts transactions another validator forwarded into the mempool (apart from our clients',
/// so they are not forwarded again).
pub fn accept_forwarded(batch: TxBatch, mempool: &Mutex<Mempool>, counters: &ForwardCounters) {
    let hashed = HashedTxs::new(batch.txs.into_iter().map(|t| t.into_vec()).collect());
    let mut pool = mempool.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut ok, mut refused) = (0u64, 0u64);
    for r in pool.insert_forwarded_batch(hashed) {
        match r {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    counters.received.fetch_add(ok, Ordering::Relaxed);
    counters.refused.fetch_add(refused, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mempool::MempoolLimits;

    fn forwarder(
        me: u16,
        round: u64,
        sent: Arc<Mutex<Vec<(ValidatorIndex, Message)>>>,
        accept: bool,
    ) -> Forwarder {
        Forwarder {
            me: ValidatorIndex(me),
            leader_of: Box::new(|r| ValidatorIndex((r % 4) as u16)),
            round: Arc::new(AtomicU64::new(round)),
            mempool: Arc::new(Mutex::new(Mempool::new(MempoolLimits::default()))),
            handoff: Arc::new(Mutex::new(HandOff::default())),
            owners: Arc::default(),
            reachable: Box::new(|_| true),
            send: Box::new(move |to, m| {
                sent.lock().unwrap().push((to, m));
                accept
            }),
            counters: Arc::new(ForwardCounters::default()),
            intake: Intake::default(),
        }
    }

    fn pending(f: &Forwarder) -> usize {
        f.mempool.lock().unwrap().len()
    }

    #[test]
    fn client_transactions_go_to_the_next_leader_and_are_never_taken_back() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        // We are validator 0 in round 4: round 5 is led by 1, round 6 by 6 % 4 = 2.
        let mut f = forwarder(0, 4, Arc::clone(&sent), true);
        let ids: Vec<TxId> = (0..3u8)
            .map(|i| f.mempool.lock().unwrap().insert(vec![i; 100]).unwrap())
            .collect();
        // One more from client connection 7, whose owner the commit notice will need.
        let owned = f
            .mempool
            .lock()
            .unwrap()
            .insert_batch(HashedTxs::new(vec![vec![9; 100]]), 7)
            .remove(0)
            .unwrap();
        let t0 = Instant::now();
        f.step(t0);
        assert_eq!(pending(&f), 0, "handed off, not pending here");
        {
            let owners = f.owners.lock().unwrap();
            assert_eq!(owners.get(&owned), Some(&7));
            assert_eq!(
                owners.len(),
                1,
                "transactions without an owner are not tracked"
            );
        }
        {
            let sent = sent.lock().unwrap();
            assert_eq!(sent.len(), 1);
            assert_eq!(sent[0].0, ValidatorIndex(2));
            let Message::Txs(b) = &sent[0].1 else {
                panic!("not a transaction batch: {:?}", sent[0].1.kind())
            };
            assert_eq!(b.txs.len(), 4);
        }
        assert_eq!(f.handoff.lock().unwrap().len(), 4);
        // One of them is committed; the other three (the owned one among them) are forgotten
        // after the timeout (expired), never put back here to be proposed a second time, and
        // no client waits on them any more.
        f.handoff.lock().unwrap().committed([&ids[1]]);
        f.step(t0 + HANDOFF_TIMEOUT / 2);
        assert_eq!(f.counters.expired.load(Ordering::Relaxed), 0);
        f.round.store(5, Ordering::Release);
        f.step(t0 + HANDOFF_TIMEOUT);
        assert_eq!(f.counters.expired.load(Ordering::Relaxed), 3);
        assert!(
            f.owners.lock().unwrap().is_empty(),
            "expired owners forgotten"
        );
        assert!(f.handoff.lock().unwrap().is_empty());
        assert_eq!(f.handoff.lock().unwrap().bytes(), 0);
        assert_eq!(pending(&f), 0);
        assert_eq!(sent.lock().unwrap().len(), 1, "nothing forwarded again");
    }

    #[test]
    fn the_next_leader_keeps_its_transactions_and_a_refused_send_keeps_them_pending() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        // Validator 2 leads round 2: in rounds 0 and 1 it keeps its transactions.
        for round in [0, 1] {
            let mut f = forwarder(2, round, Arc::clone(&sent), true);
            f.mempool.lock().unwrap().insert(vec![7; 10]).unwrap();
            f.step(Instant::now());
            assert!(sent.lock().unwrap().is_empty());
            assert_eq!(pending(&f), 1);
        }

        // A full send queue: the transaction stays pending, nothing is held.
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut f = forwarder(0, 1, Arc::clone(&sent), false);
        f.mempool.lock().unwrap().insert(vec![7; 10]).unwrap();
        f.step(Instant::now());
        assert_eq!(sent.lock().unwrap().len(), 1);
        assert_eq!(pending(&f), 1);
        assert!(f.handoff.lock().unwrap().is_empty());
    }

    #[test]
    fn forwarded_transactions_are_proposed_but_never_forwarded_again() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut f = forwarder(0, 1, Arc::clone(&sent), true);
        let counters = ForwardCounters::default();
        let batch = TxBatch {
            txs: vec![
                serde_bytes::ByteBuf::from(vec![1; 10]),
                serde_bytes::ByteBuf::from(vec![1; 10]),
                serde_bytes::ByteBuf::from(Vec::new()),
            ],
        };
        accept_forwarded(batch, &f.mempool, &counters);
        assert_eq!(counters.received.load(Ordering::Relaxed), 1);
        assert_eq!(
            counters.refused.load(Ordering::Relaxed),
            2,
            "duplicate and empty"
        );
        f.step(Instant::now());
        assert!(sent.lock().unwrap().is_empty(), "not forwarded again");
        let taken = f.mempool.lock().unwrap().take(10, 1 << 20);
        assert_eq!(taken.len(), 1, "but proposed by this leader");
    }

    #[test]
    fn busy_intake_stops_forwarding_and_a_quiet_one_resumes_it() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut f = forwarder(0, 1, Arc::clone(&sent), true);
        let t0 = Instant::now();
        f.step(t0);
        // 2,000 transactions in one window: 10,000 tx/s, above the limit.
        for i in 0..2000u32 {
            f.pool().insert(i.to_le_bytes().to_vec()).unwrap();
        }
        assert_eq!(
            f.step(t0 + INTAKE_WINDOW),
            BUSY_INTERVAL,
            "busy: slower steps"
        );
        assert!(sent.lock().unwrap().is_empty(), "busy: kept local");
        assert_eq!(pending(&f), 2000);
        // A quiet window: forwarding resumes.
        assert_eq!(f.step(t0 + INTAKE_WINDOW * 2), FORWARD_INTERVAL);
        assert_eq!(sent.lock().unwrap().len(), 1);
        assert_eq!(pending(&f), 0);
    }

    #[test]
    fn hand_off_is_bounded() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut f = forwarder(0, 1, Arc::clone(&sent), true);
        f.handoff.lock().unwrap().hold(
            vec![(crate::mempool::tx_id(b"x"), MAX_HANDED_BYTES)],
            Instant::now(),
        );
        f.mempool.lock().unwrap().insert(vec![1; 10]).unwrap();
        f.step(Instant::now());
        assert!(sent.lock().unwrap().is_empty());
        assert_eq!(pending(&f), 1, "stays local while the hand-off is full");
    }
}
