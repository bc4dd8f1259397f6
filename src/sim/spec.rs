//! What one simulated run is: cluster size, fault class, seed, and the schedule the seed draws.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[cfg(feature = "break-rules")]
use crate::consensus::BrokenRule;
use crate::consensus::ValidatorSet;
use crate::types::{Round, TimeMs, ValidatorIndex};

/// The fault classes a run can exercise. Network classes keep every validator honest; Byzantine
/// classes give up to f validators one misbehaviour; `Mixed` combines everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// Latency jitter only.
    Clean,
    /// Message loss, duplication and reordering before GST.
    Lossy,
    /// Partitions that start and heal.
    Partition,
    /// Up to f honest validators crash and restart with only what they persisted.
    CrashRestart,
    /// Every validator crashes, each at its own random instant, and restarts later with only
    /// what it persisted (a power cut, a region outage).
    WholeClusterCrash,
    /// Each validator in turn crashes and restarts, the next one after the previous is back
    /// (an upgrade).
    RollingRestart,
    /// A partition, and validators on either side (any number, all of them included) crash
    /// during it and restart later.
    CrashDuringPartition,
    /// Byzantine leaders propose two different blocks in a round, to everyone.
    Equivocator,
    /// Byzantine validators sign a second vote for another block in every round they vote.
    DoubleVoter,
    /// Byzantine validators send messages with corrupted signatures.
    BadSignature,
    /// Byzantine validators send nothing.
    Silent,
    /// Byzantine validators also send random, truncated and bit-flipped frames.
    Garbage,
    /// Two honest instances share one Byzantine key (twins).
    Twins,
    /// Byzantine validators forge certificates (duplicate signers, non-members, too little stake)
    /// for two conflicting chains and offer them to different halves of the network.
    Forger,
    /// Loss, partitions, crashes and a random Byzantine kind per faulty validator.
    Mixed,
}

impl FaultClass {
    /// Every class, in table order.
    pub const ALL: [FaultClass; 15] = [
        FaultClass::Clean,
        FaultClass::Lossy,
        FaultClass::Partition,
        FaultClass::CrashRestart,
        FaultClass::WholeClusterCrash,
        FaultClass::RollingRestart,
        FaultClass::CrashDuringPartition,
        FaultClass::Equivocator,
        FaultClass::DoubleVoter,
        FaultClass::BadSignature,
        FaultClass::Silent,
        FaultClass::Garbage,
        FaultClass::Twins,
        FaultClass::Forger,
        FaultClass::Mixed,
    ];

    /// The class a seed runs (seeds cycle through the classes, so `--seed X` alone replays a run).
    pub fn for_seed(seed: u64) -> FaultClass {
        Self::ALL[(seed % Self::ALL.len() as u64) as usize]
    }

    /// Its table name.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Clean => "clean",
            FaultClass::Lossy => "lossy",
            FaultClass::Partition => "partition",
            FaultClass::CrashRestart => "crash_restart",
            FaultClass::WholeClusterCrash => "whole_cluster",
            FaultClass::RollingRestart => "rolling_restart",
            FaultClass::CrashDuringPartition => "crash_partition",
            FaultClass::Equivocator => "equivocator",
            FaultClass::DoubleVoter => "double_voter",
            FaultClass::BadSignature => "bad_signature",
            FaultClass::Silent => "silent",
            FaultClass::Garbage => "garbage",
            FaultClass::Twins => "twins",
            FaultClass::Forger => "forger",
            FaultClass::Mixed => "mixed",
        }
    }

    fn byzantine_kind(self) -> Option<Byzantine> {
        match self {
            FaultClass::Equivocator => Some(Byzantine::Equivocator),
            FaultClass::DoubleVoter => Some(Byzantine::DoubleVoter),
            FaultClass::BadSignature => Some(Byzantine::BadSignature),
            FaultClass::Silent => Some(Byzantine::Silent),
            FaultClass::Garbage => Some(Byzantine::Garbage),
            FaultClass::Twins => Some(Byzantine::Twins),
            FaultClass::Forger => Some(Byzantine::Forger),
            _ => None,
        }
    }
}

/// One Byzantine behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Byzantine {
    /// Two proposals per led round.
    Equivocator,
    /// A second, conflicting vote per vote.
    DoubleVoter,
    /// Corrupted signatures on everything it sends.
    BadSignature,
    /// Sends nothing.
    Silent,
    /// Honest, plus malformed frames.
    Garbage,
    /// Two instances, one key.
    Twins,
    /// Forged certificates for conflicting chains.
    Forger,
}

impl Byzantine {
    const ALL: [Byzantine; 7] = [
        Byzantine::Equivocator,
        Byzantine::DoubleVoter,
        Byzantine::BadSignature,
        Byzantine::Silent,
        Byzantine::Garbage,
        Byzantine::Twins,
        Byzantine::Forger,
    ];
}

/// A window in which the network is split into two sides.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Start (virtual ms).
    pub start_ms: TimeMs,
    /// Heal time.
    pub end_ms: TimeMs,
    /// `side[i]` is validator i's side.
    pub side: Vec<bool>,
}

/// A crash and its restart.
#[derive(Clone, Debug)]
pub struct Crash {
    /// Who crashes.
    pub node: ValidatorIndex,
    /// When.
    pub at_ms: TimeMs,
    /// When it restarts from its storage.
    pub restart_ms: TimeMs,
}

/// Everything a run does, drawn from its seed.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Validators.
    pub n: usize,
    /// Each validator's stake (equal in half the runs, from 1 to 100 in the others; the
    /// Byzantine validators always hold less than a third of the total).
    pub stakes: Vec<u64>,
    /// Seed (also picks the class).
    pub seed: u64,
    /// The class.
    pub class: FaultClass,
    /// Byzantine validators and their behaviour.
    pub byzantine: Vec<(ValidatorIndex, Byzantine)>,
    /// Message delay range (ms).
    pub latency_ms: (TimeMs, TimeMs),
    /// Loss probability before GST.
    pub loss: f64,
    /// Duplication probability before GST.
    pub duplicate: f64,
    /// Probability of an extra reordering delay before GST.
    pub reorder: f64,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Crashes of honest validators (a validator may crash more than once, never while down).
    pub crashes: Vec<Crash>,
    /// Global stabilisation time: no loss, no partition, everyone up after it.
    pub gst_ms: TimeMs,
    /// How long after GST every honest node must have committed new blocks.
    pub liveness_window_ms: TimeMs,
    /// Round timer base.
    pub round_timeout_ms_base: TimeMs,
    /// Round timer cap.
    pub round_timeout_ms_max: TimeMs,
    /// Test-only: a rule broken in every honest node.
    #[cfg(feature = "break-rules")]
    pub broken_rule: Option<BrokenRule>,
}

/// Rounds are not the only clock: a node that is behind at GST fetches the blocks it misses,
/// one round trip (up to twice the largest link latency) per request, while the others may run
/// a round per smallest latency. A run whose rounds exceed [`liveness_rounds_max`] is still live
/// when every honest node got there within that many rounds at the base round timeout's pace.
pub fn liveness_ms_max(rounds_max: u64, round_timeout_ms_base: TimeMs) -> TimeMs {
    rounds_max.saturating_mul(round_timeout_ms_base)
}

/// Blocks every honest node must commit beyond the highest honest height at GST.
pub const LIVENESS_BLOCKS: u64 = 3;

/// Rounds after GST within which every honest node must have committed those blocks. A block
/// commits once three consecutive rounds have honest leaders (one proposes it, the next
/// certifies it in its proposal, the third forms the QC that commits it); `gap` is the most
/// rounds the leader schedule takes, from any round, to complete such a run. Two such gaps plus
/// slack for catching up is a bound no correct run exceeds (with round-robin leaders and
/// n > 3f, the gap is at most n).
pub fn liveness_rounds_max(set: &ValidatorSet, byzantine: &[ValidatorIndex]) -> u64 {
    // The schedule repeats within its period; a period past the longest one the stakes can
    // make (about 1,024 rounds) covers every start.
    const PERIOD_MAX: u64 = 2048;
    let honest = |r: u64| !byzantine.contains(&set.leader(Round(r)));
    let mut gap = 0u64;
    for start in 0..PERIOD_MAX {
        let mut run = 0;
        let mut r = start;
        while run < 3 && r < start + 2 * PERIOD_MAX {
            run = if honest(r) { run + 1 } else { 0 };
            r += 1;
        }
        gap = gap.max(r - start);
    }
    2 * gap + 10
}

impl RunSpec {
    /// The same run with `rule` broken in every honest node (test builds only).
    #[cfg(feature = "break-rules")]
    pub fn with_broken_rule(mut self, rule: BrokenRule) -> Self {
        self.broken_rule = Some(rule);
        self
    }

    /// Draws a run for `n` validators with up to `f` Byzantine ones from `seed`.
    pub fn draw(n: usize, f: usize, seed: u64) -> RunSpec {
        use rand::SeedableRng;
        let class = FaultClass::for_seed(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6270_6369_5349_4d00);
        let mut order: Vec<u16> = (0..n as u16).collect();
        order.shuffle(&mut rng);
        let stakes: Vec<u64> = if rng.gen_bool(0.5) {
            vec![100; n]
        } else {
            (0..n).map(|_| rng.gen_range(1..=100)).collect()
        };
        // At most f Byzantine validators, and together less than a third of the stake: the
        // first ones of `order` that keep them under it.
        let total: u64 = stakes.iter().sum();
        let f = {
            let f_max = f.min(n.saturating_sub(1) / 3);
            let mut held = 0u64;
            let mut k = 0;
            while k < f_max && (held + stakes[usize::from(order[k])]) * 3 < total {
                held += stakes[usize::from(order[k])];
                k += 1;
            }
            k
        };
        let lat_min = rng.gen_range(2..10);
        let lat_max = lat_min + rng.gen_range(2..30);
        let mut spec = RunSpec {
            n,
            stakes,
            seed,
            class,
            byzantine: Vec::new(),
            latency_ms: (lat_min, lat_max),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            partitions: Vec::new(),
            crashes: Vec::new(),
            gst_ms: 0,
            liveness_window_ms: 60_000,
            round_timeout_ms_base: 4 * lat_max + 40,
            round_timeout_ms_max: 2_000,
            #[cfg(feature = "break-rules")]
            broken_rule: None,
        };
        let fault_phase_ms: TimeMs = rng.gen_range(1_500..4_000);
        let byz_kind = class.byzantine_kind();
        if let Some(kind) = byz_kind {
            spec.byzantine = order[..f]
                .iter()
                .map(|i| (ValidatorIndex(*i), kind))
                .collect();
        }
        let lossy = |spec: &mut RunSpec, rng: &mut ChaCha8Rng| {
            spec.loss = rng.gen_range(0.02..0.2);
            spec.duplicate = rng.gen_range(0.0..0.1);
            spec.reorder = rng.gen_range(0.0..0.3);
        };
        match class {
            FaultClass::Clean => {}
            FaultClass::Lossy => lossy(&mut spec, &mut rng),
            FaultClass::Partition => spec.partitions = partitions(&mut rng, n, fault_phase_ms),
            FaultClass::CrashRestart => {
                spec.crashes = crashes(&mut rng, &order[..f.max(1)], fault_phase_ms);
                // Half the time one node stays down long enough to fall far behind and need sync.
                if rng.gen_bool(0.5) {
                    if let Some(c) = spec.crashes.first_mut() {
                        c.restart_ms = c.at_ms + rng.gen_range(6_000..10_000);
                    }
                }
            }
            FaultClass::WholeClusterCrash => {
                spec.crashes = crashes(&mut rng, &order, fault_phase_ms);
                // Now and then everyone goes down within a few milliseconds of each other.
                if rng.gen_bool(0.3) {
                    let at = rng.gen_range(100..fault_phase_ms);
                    for c in &mut spec.crashes {
                        let down = c.restart_ms - c.at_ms;
                        c.at_ms = at + rng.gen_range(0..5);
                        c.restart_ms = c.at_ms + down;
                    }
                }
            }
            FaultClass::RollingRestart => {
                let mut t = rng.gen_range(100..600);
                for i in &order {
                    let restart_ms = t + rng.gen_range(50..1_500);
                    spec.crashes.push(Crash {
                        node: ValidatorIndex(*i),
                        at_ms: t,
                        restart_ms,
                    });
                    t = restart_ms + rng.gen_range(0..600);
                }
            }
            FaultClass::CrashDuringPartition => {
                let p = partitions(&mut rng, n, fault_phase_ms).remove(0);
                let k = rng.gen_range(1..=n);
                spec.crashes = order[..k]
                    .iter()
                    .map(|i| {
                        let at_ms = rng.gen_range(p.start_ms..p.end_ms);
                        Crash {
                            node: ValidatorIndex(*i),
                            at_ms,
                            restart_ms: at_ms + rng.gen_range(50..(p.end_ms - at_ms) + 2_000),
                        }
                    })
                    .collect();
                spec.partitions = vec![p];
            }
            FaultClass::Mixed => {
                lossy(&mut spec, &mut rng);
                spec.partitions = partitions(&mut rng, n, fault_phase_ms);
                let nbyz = rng.gen_range(0..=f);
                spec.byzantine = order[..nbyz]
                    .iter()
                    .map(|i| {
                        (
                            ValidatorIndex(*i),
                            *Byzantine::ALL
                                .choose(&mut rng)
                                .unwrap_or(&Byzantine::Silent),
                        )
                    })
                    .collect();
                // Crash honest nodes only while the Byzantine ones leave room.
                let ncrash = (f - nbyz).max(1).min(n - nbyz);
                spec.crashes = crashes(&mut rng, &order[nbyz..nbyz + ncrash], fault_phase_ms);
            }
            _ => {
                // Byzantine classes also get mild jitter-only network with some loss now and then.
                if rng.gen_bool(0.3) {
                    lossy(&mut spec, &mut rng);
                }
            }
        }
        let faults_end = spec
            .partitions
            .iter()
            .map(|p| p.end_ms)
            .chain(spec.crashes.iter().map(|c| c.restart_ms))
            .max()
            .unwrap_or(0);
        spec.gst_ms = if spec.loss > 0.0 || faults_end > 0 {
            faults_end.max(fault_phase_ms)
        } else {
            fault_phase_ms / 2
        };
        spec
    }

    /// The Byzantine behaviour of `i`, if any.
    pub fn byzantine_kind(&self, i: ValidatorIndex) -> Option<Byzantine> {
        self.byzantine
            .iter()
            .find(|(v, _)| *v == i)
            .map(|(_, k)| *k)
    }

    /// Is the link from `a` to `b` cut at `now`?
    pub fn partitioned(&self, now: TimeMs, a: ValidatorIndex, b: ValidatorIndex) -> bool {
        self.partitions.iter().any(|p| {
            now >= p.start_ms
                && now < p.end_ms
                && p.side.get(a.as_usize()) != p.side.get(b.as_usize())
        })
    }
}

fn partitions(rng: &mut ChaCha8Rng, n: usize, phase_ms: TimeMs) -> Vec<Partition> {
    let count = rng.gen_range(1..=3);
    (0..count)
        .map(|_| {
            let start_ms = rng.gen_range(100..phase_ms);
            let end_ms = start_ms + rng.gen_range(200..2_000);
            // Either isolate one node (often the next leader) or split at random.
            let side = if rng.gen_bool(0.5) {
                let lone = rng.gen_range(0..n);
                (0..n).map(|i| i == lone).collect()
            } else {
                (0..n).map(|_| rng.gen_bool(0.5)).collect()
            };
            Partition {
                start_ms,
                end_ms,
                side,
            }
        })
        .collect()
}

fn crashes(rng: &mut ChaCha8Rng, who: &[u16], phase_ms: TimeMs) -> Vec<Crash> {
    who.iter()
        .map(|i| {
            let at_ms = rng.gen_range(100..phase_ms);
            Crash {
                node: ValidatorIndex(*i),
                at_ms,
                restart_ms: at_ms + rng.gen_range(50..6_000),
            }
        })
        .collect()
}
