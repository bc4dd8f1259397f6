//! What the load generator awaits: every transaction from its first submission until a commit
//! of it is seen, and the resubmission of those that wait too long.
//!
//! A transaction is submitted to one validator. Without a commit notice (or announcement)
//! after [`super::LoadConfig::resubmit_after`] it goes again to another validator, up to
//! [`super::LoadConfig::max_submits`] submissions in all; a `Busy` answer sends it again after
//! a backoff ([`BUSY_BACKOFF`], doubling with each `Busy`), and a transaction refused
//! [`MAX_BUSY_ANSWERS`] times is given up (refused): a client of an overloaded validator set
//! adds little to the overload. The validators keep resubmissions from committing twice (a transaction in
//! their committed window is answered `Committed { height }`, see [`crate::client_proto`]).
//! A submission whose connection died before the validator answered (killed, paused) is not
//! counted against the bound: it is made again at once, elsewhere ([`Tracker::refund`]).
//! When its submissions are used up, the transaction waits for a notice until the run ends;
//! then the client asks the validators what became of everything still awaited (a status
//! query; a commit it had not heard of counts as a commit) and gives up what is still unknown: *lost* if a validator ever accepted it (it may yet
//! commit, but the client no longer knows), *refused* if every answer was `Busy` (the client
//! knows it was not taken), *unanswered* if no answer came at all.
//!
//! Transactions are not kept: a transaction is a function of the run's nonce, its sender and
//! its sequence number ([`tx_bytes`]), made again for a resubmission.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::mempool::{IdMap, TxId};

/// A transaction answered `Busy` once is submitted again this long after the answer; each
/// further `Busy` doubles the wait, up to [`BUSY_BACKOFF_MAX`].
pub const BUSY_BACKOFF: Duration = Duration::from_millis(250);
/// See [`BUSY_BACKOFF`].
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(4);
/// A transaction answered `Busy` this many times, and never accepted, is given up as refused:
/// retrying what an overloaded validator set refuses only adds to the overload.
pub const MAX_BUSY_ANSWERS: u8 = 2;
/// Most transactions awaited at once; past it the senders wait.
pub const PENDING_MAX: usize = 4_000_000;
/// Most resubmitted transactions whose first commit height is remembered (to see a second
/// commit of one of them).
pub const RESUBMITTED_SEEN_MAX: usize = 1 << 20;
const SHARDS: usize = 16;

/// The bytes of transaction `seq` of sender `sender` in the run with nonce `run`: the sender
/// (u32 LE), the sequence number (u64 LE), the nonce (u32 LE), then zeros to `len` (at least 16).
pub fn tx_bytes(run: u32, sender: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut tx = vec![0u8; len.max(16)];
    tx[..4].copy_from_slice(&sender.to_le_bytes());
    tx[4..12].copy_from_slice(&seq.to_le_bytes());
    tx[12..16].copy_from_slice(&run.to_le_bytes());
    tx
}

/// One awaited transaction.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// When it was scheduled (µs since the run started): its latency origin.
    pub scheduled_us: u64,
    /// Its sender, and its sequence number there ([`tx_bytes`]).
    pub sender: u32,
    /// See `sender`.
    pub seq: u64,
    /// Submissions so far.
    pub tries: u8,
    /// Some validator accepted it (or held it already).
    pub accepted: bool,
    /// Its latest answer was `Busy`.
    pub busy: bool,
    /// Some answer came.
    pub answered: bool,
    /// `Busy` answers so far.
    pub busy_answers: u8,
    /// Its submissions are used up: no more are made.
    pub exhausted: bool,
}

/// Transactions that fall due together: a submission's, or a `Busy` answer's.
#[derive(Debug)]
pub struct Due {
    /// When.
    pub at: Instant,
    /// Their ids.
    pub ids: Vec<TxId>,
    /// The submission count they had then (a transaction submitted again since is not due).
    pub tries: u8,
    /// The connection they were last submitted on (the next submission goes elsewhere).
    pub conn: u16,
}

/// How transactions ended, besides committing.
#[derive(Debug, Default)]
pub struct Ends {
    /// Given up after a validator had accepted them.
    pub lost: AtomicU64,
    /// Given up after every answer was `Busy`.
    pub refused: AtomicU64,
    /// Given up without any answer.
    pub unanswered: AtomicU64,
    /// Resubmitted transactions seen committed at two heights.
    pub committed_twice: AtomicU64,
}

/// See the module documentation.
pub struct Tracker {
    shards: Vec<Mutex<IdMap<Entry>>>,
    len: AtomicUsize,
    /// Submissions, due [`super::LoadConfig::resubmit_after`] after they left (in order).
    waiting: Mutex<VecDeque<Due>>,
    /// Transactions waiting out a backoff (a `Busy` answer, or no validator to go to), by the
    /// time they fall due.
    backoff: Mutex<std::collections::BTreeMap<(Instant, u64), Due>>,
    /// Orders backoff entries that fall due at one instant.
    backoff_seq: AtomicU64,
    /// The first commit height seen of each resubmitted transaction.
    resubmitted_seen: Mutex<IdMap<u64>>,
    /// How transactions ended.
    pub ends: Ends,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
            waiting: Mutex::default(),
            backoff: Mutex::default(),
            backoff_seq: AtomicU64::new(0),
            resubmitted_seen: Mutex::default(),
            ends: Ends::default(),
        }
    }
}

impl Tracker {
    fn shard(&self, id: &TxId) -> MutexGuard<'_, IdMap<Entry>> {
        lock(&self.shards[usize::from(id[0]) % SHARDS])
    }

    /// Transactions awaited.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Nothing awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Awaits new transactions (`ids[i]` is `entries[i]`'s); `false`, adding none, when
    /// [`PENDING_MAX`] would be passed.
    pub fn add(&self, ids: &[TxId], entries: &[Entry]) -> bool {
        if self.len() + ids.len() > PENDING_MAX {
            return false;
        }
        for (id, e) in ids.iter().zip(entries) {
            if self.shard(id).insert(*id, *e).is_none() {
                self.len.fetch_add(1, Ordering::AcqRel);
            }
        }
        true
    }

    /// The entry of `id`, if awaited.
    pub fn get(&self, id: &TxId) -> Option<Entry> {
        self.shard(id).get(id).copied()
    }

    /// Changes the entry of `id`, if awaited.
    pub fn update(&self, id: &TxId, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.shard(id).get_mut(id) {
            f(e);
        }
    }

    /// `ids`, just added ([`Tracker::add`], one submission counted), were sent on `conn`: they
    /// fall due `after` from `now`.
    pub fn sent(&self, ids: Vec<TxId>, conn: u16, now: Instant, after: Duration) {
        lock(&self.waiting).push_back(Due {
            at: now + after,
            ids,
            tries: 1,
            conn,
        });
    }

    /// Marks `ids` as submitted again on `conn`: their submission count grows, and they fall
    /// due `after` from `now`.
    pub fn submitted(&self, ids: Vec<TxId>, conn: u16, now: Instant, after: Duration) {
        let mut tries = 0;
        for id in &ids {
            self.update(id, |e| {
                e.tries = e.tries.saturating_add(1);
                e.busy = false;
                tries = e.tries;
            });
        }
        lock(&self.waiting).push_back(Due {
            at: now + after,
            ids,
            tries,
            conn,
        });
    }

    /// `Busy` answers for `ids`: each is due again after its backoff, which doubles with every
    /// `Busy` it got.
    pub fn busy(&self, ids: Vec<TxId>, conn: u16, now: Instant) {
        let mut by_wait: std::collections::BTreeMap<(u8, u8), Vec<TxId>> = Default::default();
        for id in ids {
            let mut key = None;
            self.update(&id, |e| {
                e.busy = true;
                e.answered = true;
                e.busy_answers = e.busy_answers.saturating_add(1);
                key = Some((e.busy_answers, e.tries));
            });
            if let Some(k) = key {
                by_wait.entry(k).or_default().push(id);
            }
        }
        for ((answers, tries), ids) in by_wait {
            let wait = BUSY_BACKOFF
                .saturating_mul(1 << u32::from(answers.saturating_sub(1)).min(8))
                .min(BUSY_BACKOFF_MAX);
            self.later(now + wait, ids, tries, conn);
        }
    }

    /// `ids` could go nowhere now (every connection closed or full): due again after
    /// [`BUSY_BACKOFF`], without a submission counted.
    pub fn retry_later(&self, ids: Vec<TxId>, conn: u16, now: Instant) {
        let mut by_tries: std::collections::BTreeMap<u8, Vec<TxId>> = Default::default();
        for id in ids {
            if let Some(e) = self.get(&id) {
                by_tries.entry(e.tries).or_default().push(id);
            }
        }
        for (tries, ids) in by_tries {
            self.later(now + BUSY_BACKOFF, ids, tries, conn);
        }
    }

    fn later(&self, at: Instant, ids: Vec<TxId>, tries: u8, conn: u16) {
        let seq = self.backoff_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.backoff).insert(
            (at, seq),
            Due {
                at,
                ids,
                tries,
                conn,
            },
        );
    }

    /// Submissions of `ids` that died with their connection, unanswered: not counted against
    /// the bound, and due again at once.
    pub fn refund(&self, ids: Vec<TxId>, conn: u16, now: Instant) {
        let mut by_tries: std::collections::BTreeMap<u8, Vec<TxId>> = Default::default();
        for id in ids {
            let mut tries = None;
            self.update(&id, |e| {
                e.tries = e.tries.saturating_sub(1);
                tries = Some(e.tries);
            });
            if let Some(t) = tries {
                by_tries.entry(t).or_default().push(id);
            }
        }
        for (tries, ids) in by_tries {
            self.later(now, ids, tries, conn);
        }
    }

    /// The transactions still awaited, their submissions used up or not.
    pub fn awaited(&self) -> Vec<TxId> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Takes the transactions due at `now` whose submission count has not moved since, with
    /// their entries and the connection of their last submission.
    pub fn due(&self, now: Instant) -> Vec<(TxId, Entry, u16)> {
        let mut ready = Vec::new();
        {
            let mut q = lock(&self.waiting);
            while q.front().is_some_and(|d| d.at <= now) {
                ready.extend(q.pop_front());
            }
        }
        {
            let mut q = lock(&self.backoff);
            while q.first_key_value().is_some_and(|((at, _), _)| *at <= now) {
                ready.extend(q.pop_first().map(|(_, d)| d));
            }
        }
        let mut out = Vec::new();
        for d in ready {
            for id in d.ids {
                if let Some(e) = self.get(&id).filter(|e| e.tries == d.tries) {
                    out.push((id, e, d.conn));
                }
            }
        }
        out
    }

    /// Stops awaiting `id` without a commit: counted lost, refused or unanswered by its entry.
    pub fn give_up(&self, id: &TxId) {
        let Some(e) = self.shard(id).remove(id) else {
            return;
        };
        self.len.fetch_sub(1, Ordering::AcqRel);
        let counter = if e.accepted {
            &self.ends.lost
        } else if e.busy {
            &self.ends.refused
        } else {
            &self.ends.unanswered
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops awaiting whatever is still awaited (the end of a run), counting each as given up.
    pub fn give_up_all(&self) {
        for shard in &self.shards {
            let ids: Vec<TxId> = lock(shard).keys().copied().collect();
            for id in ids {
                self.give_up(&id);
            }
        }
    }

    /// A commit of `ids` at `height` is seen: the latency origins of those awaited (removed).
    /// A resubmitted transaction seen committed at a second height counts as committed twice.
    pub fn committed(&self, ids: &[TxId], height: u64) -> Vec<u64> {
        let mut origins = Vec::with_capacity(ids.len());
        let mut resubmitted = Vec::new();
        let mut unknown = Vec::new();
        for id in ids {
            match self.shard(id).remove(id) {
                Some(e) => {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    origins.push(e.scheduled_us);
                    if e.tries > 1 {
                        resubmitted.push(*id);
                    }
                }
                None => unknown.push(*id),
            }
        }
        if !resubmitted.is_empty() || !unknown.is_empty() {
            let mut seen = lock(&self.resubmitted_seen);
            if seen.is_empty() && resubmitted.is_empty() {
                return origins;
            }
            for id in unknown {
                if seen.get(&id).is_some_and(|h| *h != height) {
                    self.ends.committed_twice.fetch_add(1, Ordering::Relaxed);
                    // Counted once.
                    seen.remove(&id);
                }
            }
            for id in resubmitted {
                if seen.len() < RESUBMITTED_SEEN_MAX {
                    seen.insert(id, height);
                }
            }
        }
        origins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            scheduled_us: seq * 10,
            sender: 0,
            seq,
            tries: 1,
            accepted: false,
            busy: false,
            answered: false,
            busy_answers: 0,
            exhausted: false,
        }
    }

    /// Transactions fall due after their submission's timeout or a `Busy` answer's backoff,
    /// unless submitted again since; given up, each counts by how it was answered; a
    /// resubmitted transaction seen committed at two heights counts as committed twice.
    #[test]
    fn due_give_up_and_commits() {
        let t = Tracker::default();
        let ids: Vec<TxId> = (0..4u8).map(|i| [i; 32]).collect();
        let entries: Vec<Entry> = (0..4).map(entry).collect();
        assert!(t.add(&ids, &entries));
        assert_eq!(t.len(), 4);
        let t0 = Instant::now();
        let after = Duration::from_secs(2);
        t.sent(ids.clone(), 0, t0, after);
        t.update(&ids[0], |e| {
            e.accepted = true;
            e.answered = true;
        });
        t.busy(vec![ids[1]], 0, t0);
        assert!(t.due(t0).is_empty());
        let busy = t.due(t0 + BUSY_BACKOFF);
        assert_eq!(busy.len(), 1);
        assert_eq!(busy[0].0, ids[1]);
        // A second Busy waits twice as long.
        t.busy(vec![ids[1]], 0, t0);
        assert!(t.due(t0 + BUSY_BACKOFF).is_empty());
        assert_eq!(t.due(t0 + 2 * BUSY_BACKOFF).len(), 1);
        // Id 2 is submitted again before its timeout: not due with its first submission.
        t.submitted(vec![ids[2]], 3, t0, after + after);
        let due: Vec<TxId> = t.due(t0 + after).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(due, vec![ids[0], ids[1], ids[3]]);
        assert_eq!(t.get(&ids[2]).unwrap().tries, 2);
        for id in [&ids[0], &ids[1], &ids[3]] {
            t.give_up(id);
        }
        let ends = &t.ends;
        assert_eq!(
            (
                ends.lost.load(Ordering::Relaxed),
                ends.refused.load(Ordering::Relaxed),
                ends.unanswered.load(Ordering::Relaxed)
            ),
            (1, 1, 1)
        );
        // The resubmitted one commits at 7; a notice of it at 7 again is nothing, at 9 a second
        // commit.
        assert_eq!(t.committed(&[ids[2]], 7), vec![20]);
        assert!(t.is_empty());
        t.committed(&[ids[2]], 7);
        assert_eq!(ends.committed_twice.load(Ordering::Relaxed), 0);
        t.committed(&[ids[2]], 9);
        assert_eq!(ends.committed_twice.load(Ordering::Relaxed), 1);
        t.committed(&[ids[2]], 11);
        assert_eq!(
            ends.committed_twice.load(Ordering::Relaxed),
            1,
            "counted once"
        );
    }

    /// A submission that died with its connection is not counted, and is due again at once.
    #[test]
    fn refunds_undo_a_submission() {
        let t = Tracker::default();
        let id = [9u8; 32];
        assert!(t.add(&[id], &[entry(1)]));
        let t0 = Instant::now();
        t.submitted(vec![id], 1, t0, Duration::from_secs(2));
        assert_eq!(t.get(&id).unwrap().tries, 2);
        t.refund(vec![id], 1, t0);
        assert_eq!(t.get(&id).unwrap().tries, 1);
        let due = t.due(t0);
        assert_eq!(due.len(), 1, "due at once");
        // The timeout of the refunded submission no longer applies.
        assert!(t.due(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(t.awaited(), vec![id]);
    }

    #[test]
    fn transactions_are_made_again_byte_for_byte() {
        let a = tx_bytes(7, 2, 99, 512);
        assert_eq!(a.len(), 512);
        assert_eq!(a, tx_bytes(7, 2, 99, 512));
        assert_ne!(a, tx_bytes(8, 2, 99, 512), "another run");
        assert_ne!(a, tx_bytes(7, 3, 99, 512), "another sender");
        assert_ne!(a, tx_bytes(7, 2, 100, 512), "another sequence number");
        assert_eq!(tx_bytes(1, 1, 1, 3).len(), 16);
    }

    #[test]
    fn the_tracker_is_bounded() {
        let t = Tracker::default();
        let ids = vec![[1u8; 32]; 2];
        t.len.store(PENDING_MAX - 1, Ordering::Release);
        assert!(!t.add(&ids, &[entry(1), entry(2)]));
        assert!(t.add(&ids[..1], &[entry(1)]));
    }
}
