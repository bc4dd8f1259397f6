//! The validator set of an epoch: keys, stakes, quorum arithmetic and the leader schedule.

use crate::crypto::PublicKey;
use crate::types::{Epoch, Round, Stake, ValidatorIndex};
use serde::{Deserialize, Serialize};

use super::messages::MAX_VALIDATORS;

/// Weight units the leader schedule spreads over (the schedule's period is about this long).
const SCHEDULE_WEIGHT_UNITS: u64 = 1024;

/// One validator of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    /// Its pinned Ed25519 identity.
    pub key: PublicKey,
    /// Its stake (> 0).
    pub stake: Stake,
}

/// Why a validator set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidatorSetError {
    /// No validators at all.
    #[error("the validator set is empty")]
    Empty,
    /// More validators than indices allow.
    #[error("{count} validators exceed the limit of {max}")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A validator without stake cannot vote.
    #[error("validator {index} has zero stake")]
    ZeroStake {
        /// Its index.
        index: usize,
    },
    /// Two validators share one key (one key must be one vote).
    #[error("validators {first} and {second} share the key {key}")]
    DuplicateKey {
        /// First holder.
        first: usize,
        /// Second holder.
        second: usize,
        /// The key.
        key: PublicKey,
    },
    /// Total stake does not fit in 64 bits.
    #[error("total stake overflows u64")]
    StakeOverflow,
}

/// The validators of one epoch, in config order (index = position).
#[derive(Clone, Debug)]
pub struct ValidatorSet {
    epoch: Epoch,
    validators: Vec<Validator>,
    total_stake: Stake,
    schedule: Vec<ValidatorIndex>,
}

impl ValidatorSet {
    /// Builds the set, refusing empty sets, zero stakes, shared keys and overflow.
    pub fn new(epoch: Epoch, validators: Vec<Validator>) -> Result<Self, ValidatorSetError> {
        if validators.is_empty() {
            return Err(ValidatorSetError::Empty);
        }
        if validators.len() > MAX_VALIDATORS {
            return Err(ValidatorSetError::TooMany {
                count: validators.len(),
                max: MAX_VALIDATORS,
            });
        }
        let mut total: u64 = 0;
        let mut seen = std::collections::HashMap::new();
        for (index, v) in validators.iter().enumerate() {
            if v.stake.0 == 0 {
                return Err(ValidatorSetError::ZeroStake { index });
            }
            if let Some(first) = seen.insert(v.key, index) {
                return Err(ValidatorSetError::DuplicateKey {
                    first,
                    second: index,
                    key: v.key,
                });
            }
            total = total
                .checked_add(v.stake.0)
                .ok_or(ValidatorSetError::StakeOverflow)?;
        }
        let schedule = leader_schedule(&validators, total);
        Ok(Self {
            epoch,
            validators,
            total_stake: Stake(total),
            schedule,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Number of validators.
    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// Never true for a constructed set; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// The validator at `index`, if it is a member.
    pub fn member(&self, index: ValidatorIndex) -> Option<&Validator> {
        self.validators.get(index.as_usize())
    }

    /// All validators, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (ValidatorIndex, &Validator)> {
        self.validators
            .iter()
            .enumerate()
            .map(|(i, v)| (ValidatorIndex(i as u16), v))
    }

    /// The index holding `key`.
    pub fn index_of(&self, key: &PublicKey) -> Option<ValidatorIndex> {
        self.validators
            .iter()
            .position(|v| v.key == *key)
            .map(|i| ValidatorIndex(i as u16))
    }

    /// Sum of all stakes.
    pub fn total_stake(&self) -> Stake {
        self.total_stake
    }

    /// Stake of one member (0 for a non-member).
    pub fn stake(&self, index: ValidatorIndex) -> Stake {
        self.member(index).map(|v| v.stake).unwrap_or_default()
    }

    /// `quorum(S)`: stake(S) * 3 > total * 2 (more than 2/3 of the stake).
    pub fn is_quorum(&self, stake: Stake) -> bool {
        u128::from(stake.0) * 3 > u128::from(self.total_stake.0) * 2
    }

    /// More than 1/3 of the stake: at least one honest validator is among them.
    pub fn is_weak_quorum(&self, stake: Stake) -> bool {
        u128::from(stake.0) * 3 > u128::from(self.total_stake.0)
    }

    /// Leader of round `r`: deterministic stake-weighted round-robin over the set.
    pub fn leader(&self, round: Round) -> ValidatorIndex {
        let len = self.schedule.len().max(1) as u64;
        self.schedule
            .get((round.0 % len) as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Smooth weighted round-robin over stakes scaled to about [`SCHEDULE_WEIGHT_UNITS`] units: each
/// validator leads a share of rounds proportional to its stake (at least one slot each), spread
/// evenly rather than in runs.
fn leader_schedule(validators: &[Validator], total: u64) -> Vec<ValidatorIndex> {
    let weights: Vec<i64> = validators
        .iter()
        .map(|v| {
            let w = u128::from(v.stake.0) * u128::from(SCHEDULE_WEIGHT_UNITS) / u128::from(total);
            i64::try_from(w).unwrap_or(i64::MAX).max(1)
        })
        .collect();
    let g = weights.iter().fold(0i64, |acc, &w| gcd(acc, w)).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
    let period: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= period;
        schedule.push(ValidatorIndex(best as u16));
    }
    schedule
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    fn set(stakes: &[u64]) -> ValidatorSet {
        let vs = stakes
            .iter()
            .enumerate()
            .map(|(i, s)| Validator {
                key: Keypair::from_seed(&[i as u8 + 1; 32]).public(),
                stake: Stake(*s),
            })
            .collect();
        ValidatorSet::new(Epoch(1), vs).unwrap()
    }

    #[test]
    fn quorum_is_strictly_more_than_two_thirds() {
        let s = set(&[1, 1, 1, 1]);
        let table = [
            (2, false, true),
            (3, true, true),
            (1, false, false),
            (4, true, true),
        ];
        for (stake, quorum, weak) in table {
            assert_eq!(s.is_quorum(Stake(stake)), quorum, "quorum({stake})");
            assert_eq!(s.is_weak_quorum(Stake(stake)), weak, "weak({stake})");
        }
    }

    #[test]
    fn equal_stakes_rotate_round_robin() {
        let s = set(&[10, 10, 10, 10]);
        let leaders: Vec<u16> = (0..8).map(|r| s.leader(Round(r)).0).collect();
        assert_eq!(leaders, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn leader_share_follows_stake() {
        let s = set(&[600_000, 200_000, 100_000, 100_000]);
        let mut counts = [0u32; 4];
        for r in 0..1000 {
            counts[s.leader(Round(r)).as_usize()] += 1;
        }
        assert!((580..=620).contains(&counts[0]), "{counts:?}");
        assert!((180..=220).contains(&counts[1]), "{counts:?}");
        assert!(counts[2] > 80 && counts[3] > 80, "{counts:?}");
    }

    #[test]
    fn bad_sets_are_refused() {
        assert_eq!(
            ValidatorSet::new(Epoch(0), vec![]).err(),
            Some(ValidatorSetError::Empty)
        );
        let key = Keypair::from_seed(&[9; 32]).public();
        let dup = vec![
            Validator {
                key,
                stake: Stake(1),
            },
            Validator {
                key,
                stake: Stake(1),
            },
        ];
        assert!(matches!(
            ValidatorSet::new(Epoch(0), dup),
            Err(ValidatorSetError::DuplicateKey {
                first: 0,
                second: 1,
                ..
            })
        ));
        let zero = vec![Validator {
            key,
            stake: Stake(0),
        }];
        assert_eq!(
            ValidatorSet::new(Epoch(0), zero).err(),
            Some(ValidatorSetError::ZeroStake { index: 0 })
        );
    }
}
