//! Leader hints: where the load generator sends a batch when it follows the validators' hints
//! ([`crate::client_proto::ClientResponse::Leaders`]), and the cap on what any one validator
//! draws through them.

use std::collections::VecDeque;
use std::time::Instant;

/// A batch sent less than this share of a round after the hint goes to the next round's
/// leader; later ones go to the leader after it. The next leader proposes as soon as it holds
/// the votes for the hinted round, about 0.7-0.8 of a round after the proposal left; the hint's
/// trip to the client and the batch's trip into that leader's mempool take much of the rest. A
/// batch that arrives after that leader took its payload is answered [`TxStatus::Late`]
/// ([`ClientRequest::SubmitToLeader`]) and goes on to the leader after it, a round trip later.
/// At 75,000 tx/s, with that answer: 0.5 against 1.0 gave p99 18 / 20 against 19 / 19 ms (a
/// quarter of the reroutes); 0.7 against 0.5, 24 / 28 against 29 / 23 (noisier minutes). Before
/// it (a late batch waited a whole rotation): 0.2, 0.4 and 0.6 gave p99 29-40, 39-45 and 41-47.
pub const EARLY_FRACTION: f64 = 0.5;
/// A hint is stale this many rounds after it arrived: past the last leader it names
/// (`LEADER_HINTS` - 1 + [`EARLY_FRACTION`]). Without a fresh hint batches go round-robin.
pub const STALE_ROUNDS: f64 = (crate::client_proto::LEADER_HINTS - 1) as f64 + EARLY_FRACTION;
/// A hint more than this many rounds ahead of the current one is refused while the current one
/// is fresh (a false round from a faulty validator cannot freeze the routing).
pub const MAX_ROUND_JUMP: u64 = 1_000;
/// The share of batches any one validator may get through hints, over the last
/// [`SHARE_WINDOW`] batches, is at most this many times an even share: a faulty validator that
/// names itself as the next leader draws at most twice what spreading would send it.
pub const MAX_SHARE: usize = 2;
/// Batches over which [`MAX_SHARE`] is counted.
pub const SHARE_WINDOW: usize = 256;
/// Round length assumed until two hints have measured it (µs).
const DEFAULT_ROUND_US: f64 = 5_000.0;

/// The latest leader hint.
#[derive(Clone, Debug)]
pub struct Hint {
    /// The round just proposed.
    pub round: u64,
    /// When the hint arrived.
    pub at: Instant,
    /// Target indices of the next leaders (rounds `round + 1 ..`), if they are targets.
    pub next: Vec<Option<usize>>,
    /// Estimated round length (µs), smoothed over hints.
    pub round_us: f64,
}

impl Hint {
    /// The hint that follows `prev` (if any) when `round` arrives at `at`. `None` while `prev`
    /// is fresh for a round not newer than its own (a late or repeated hint) or more than
    /// [`MAX_ROUND_JUMP`] ahead. A slow stretch (a view change) moves the round estimate by at
    /// most a factor of 1.2 per hint.
    pub fn next_after(
        prev: Option<&Hint>,
        round: u64,
        next: Vec<Option<usize>>,
        at: Instant,
    ) -> Option<Hint> {
        let round_us = match prev {
            Some(p) if p.rounds_since(at) >= STALE_ROUNDS => p.round_us,
            Some(p) if round <= p.round || round - p.round > MAX_ROUND_JUMP => return None,
            Some(p) => {
                let sample = at.saturating_duration_since(p.at).as_micros() as f64
                    / (round - p.round) as f64;
                (0.8 * p.round_us + 0.2 * sample.min(2.0 * p.round_us)).clamp(200.0, 1_000_000.0)
            }
            None => DEFAULT_ROUND_US,
        };
        Some(Hint {
            round,
            at,
            next,
            round_us,
        })
    }

    fn rounds_since(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.at).as_micros() as f64 / self.round_us
    }

    /// The target for a batch sent at `now`: the first leader, from the one that proposes next
    /// and that the batch can still reach in time, that is a target; `None` once the hint is
    /// stale.
    pub fn pick(&self, now: Instant) -> Option<usize> {
        let rounds = self.rounds_since(now);
        if rounds >= STALE_ROUNDS {
            return None;
        }
        let k = (rounds + 1.0 - EARLY_FRACTION).floor() as usize;
        self.next.iter().skip(k).find_map(|t| *t)
    }
}

/// How many of the recent batches each target got (for [`MAX_SHARE`]).
#[derive(Debug)]
pub(crate) struct Shares {
    recent: VecDeque<usize>,
    counts: Vec<usize>,
}

impl Shares {
    pub(crate) fn new(targets: usize) -> Self {
        Self {
            recent: VecDeque::with_capacity(SHARE_WINDOW),
            counts: vec![0; targets],
        }
    }

    /// Whether `target` may take one more batch.
    pub(crate) fn allows(&self, target: usize) -> bool {
        let n = self.counts.len().max(1);
        self.counts
            .get(target)
            .is_some_and(|c| c * n < MAX_SHARE * SHARE_WINDOW)
    }

    pub(crate) fn record(&mut self, target: usize) {
        if self.recent.len() == SHARE_WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.counts[old] -= 1;
            }
        }
        if let Some(c) = self.counts.get_mut(target) {
            *c += 1;
            self.recent.push_back(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    /// Early in a round a batch goes to the next round's leader, later to the one after it,
    /// then the one after that; a leader that is not a target is passed over for the next one
    /// that is; past the last named leader the hint is stale and names none (the sender then
    /// goes round-robin).
    #[test]
    fn a_batch_goes_to_the_leader_that_can_still_include_it() {
        let t0 = Instant::now();
        let h = Hint {
            round: 10,
            at: t0,
            next: vec![Some(1), None, Some(3)],
            round_us: 5_000.0,
        };
        // EARLY_FRACTION of a 5 ms round.
        let early = (EARLY_FRACTION * 5_000.0) as u64;
        let stale = (STALE_ROUNDS * 5_000.0) as u64;
        assert_eq!(h.pick(at(t0, 0)), Some(1));
        assert_eq!(h.pick(at(t0, early - 100)), Some(1));
        // The second leader is not among the targets: the third one is.
        assert_eq!(h.pick(at(t0, early + 100)), Some(3));
        assert_eq!(h.pick(at(t0, stale - 100)), Some(3));
        // Stale from STALE_ROUNDS on.
        assert_eq!(h.pick(at(t0, stale)), None);
        assert_eq!(h.pick(at(t0, 60_000)), None);
        let two = Hint {
            next: vec![Some(1), Some(2)],
            ..h.clone()
        };
        assert_eq!(two.pick(at(t0, early + 100)), Some(2));
        // Past the named leaders: none.
        assert_eq!(two.pick(at(t0, 5_000 + early + 100)), None);
        let none = Hint { next: vec![], ..h };
        assert_eq!(none.pick(at(t0, 100)), None);
    }

    /// Hints measure the round length from their spacing; an older, repeated or far-ahead round
    /// is refused while the current hint is fresh, and anything is taken once it is stale.
    #[test]
    fn hints_measure_the_round_and_refuse_old_or_far_rounds() {
        let t0 = Instant::now();
        let first = Hint::next_after(None, 5, vec![Some(0)], t0).unwrap();
        assert_eq!(first.round_us, DEFAULT_ROUND_US);
        // Two rounds in 4 ms: 2 ms a round, smoothed 0.8 / 0.2.
        let second = Hint::next_after(Some(&first), 7, vec![Some(1)], at(t0, 4_000)).unwrap();
        assert!((second.round_us - (0.8 * 5_000.0 + 0.2 * 2_000.0)).abs() < 1e-6);
        assert_eq!(second.round, 7);
        assert_eq!(second.next, vec![Some(1)]);
        assert!(Hint::next_after(Some(&second), 7, vec![], at(t0, 5_000)).is_none());
        assert!(Hint::next_after(Some(&second), 6, vec![], at(t0, 5_000)).is_none());
        assert!(
            Hint::next_after(Some(&second), 7 + MAX_ROUND_JUMP + 1, vec![], at(t0, 5_000))
                .is_none()
        );
        assert!(Hint::next_after(Some(&second), u64::MAX, vec![], at(t0, 5_000)).is_none());
        let jump = Hint::next_after(Some(&second), 7 + MAX_ROUND_JUMP, vec![], at(t0, 5_000));
        assert!(jump.is_some());
        // A slow round moves the estimate by at most a factor of 1.2 (9 ms against 4.4, before
        // the hint goes stale at 2.2 rounds).
        let slow = Hint::next_after(Some(&second), 8, vec![], at(t0, 13_000)).unwrap();
        assert!(
            (slow.round_us - 1.2 * second.round_us).abs() < 1e-6,
            "{slow:?}"
        );
        // Stale (10 rounds of 4.6 ms later): an older round is taken, the estimate kept.
        let reset = Hint::next_after(Some(&second), 3, vec![], at(t0, 50_000)).unwrap();
        assert_eq!(reset.round, 3);
        assert_eq!(reset.round_us, second.round_us);
    }

    /// No target gets more than twice an even share of the recent batches through hints.
    #[test]
    fn hinted_batches_are_capped_at_twice_an_even_share() {
        let mut s = Shares::new(4);
        let mut taken = 0;
        for _ in 0..1_000 {
            if s.allows(2) {
                s.record(2);
                taken += 1;
            } else {
                s.record(taken % 4);
            }
        }
        // Over the last window target 2 holds at most half of 256 (2 x an even quarter).
        let recent_2 = s.recent.iter().filter(|t| **t == 2).count();
        assert!(recent_2 <= MAX_SHARE * SHARE_WINDOW / 4, "{recent_2}");
        assert!(recent_2 >= MAX_SHARE * SHARE_WINDOW / 4 - 1, "{recent_2}");
        assert_eq!(s.counts.iter().sum::<usize>(), SHARE_WINDOW);
        assert!(!s.allows(7), "no such target");
        // A single target may take every batch.
        let mut one = Shares::new(1);
        for _ in 0..600 {
            assert!(one.allows(0));
            one.record(0);
        }
    }
}
