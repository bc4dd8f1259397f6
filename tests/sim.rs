//! The simulator attacks the consensus core: 5,000 seeded runs over n in {4, 7, 10, 31} and every
//! fault class (whole-cluster crashes, rolling restarts and crashes during partitions among them),
//! with zero safety violations, double-signs, unbacked commits or liveness failures; and the
//! checker is shown to catch each deliberately broken rule (the `break-rules` feature, which test
//! builds turn on).

use bpci::consensus::BrokenRule;
use bpci::sim::{run, run_many, run_specs, FaultClass, RunSpec, Summary};

fn assert_clean(s: &Summary) {
    assert!(
        s.failing_seeds.is_empty(),
        "n={} failing seeds {:?}; first: {}; replay with `bpci sim --validators {} --byzantine {} --seed <seed>`",
        s.validators,
        s.failing_seeds,
        s.first_failure.clone().unwrap_or_default(),
        s.validators,
        s.byzantine
    );
    assert_eq!(s.safety_violations, 0);
    assert_eq!(s.double_signs, 0);
    assert_eq!(s.unbacked_commits, 0);
    assert_eq!(s.liveness_failures, 0);
    for class in FaultClass::ALL {
        let c = s.classes.get(class.name());
        assert!(
            c.is_some_and(|c| c.runs > 0),
            "class {} never ran",
            class.name()
        );
    }
}

fn sweep(n: usize, seeds: u64) -> Summary {
    let f = (n - 1) / 3;
    let (summary, _) = run_many(n, f, 0..seeds);
    println!(
        "n={n} f={f}: {} runs, min commits {}, msgs/validator/round {:.2}",
        summary.runs, summary.commits_min, summary.messages_per_validator_per_round
    );
    summary
}

// 2,400 + 1,500 + 800 + 300 = 5,000 runs.
#[test]
fn seeded_runs_n4() {
    assert_clean(&sweep(4, 2_400));
}

#[test]
fn seeded_runs_n7() {
    assert_clean(&sweep(7, 1_500));
}

#[test]
fn seeded_runs_n10() {
    assert_clean(&sweep(10, 800));
}

#[test]
fn seeded_runs_n31() {
    assert_clean(&sweep(31, 300));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3u64, 14, 23] {
        let a = serde_json::to_string(&run(RunSpec::draw(7, 2, seed))).unwrap();
        let b = serde_json::to_string(&run(RunSpec::draw(7, 2, seed))).unwrap();
        assert_eq!(a, b, "seed {seed} did not replay identically");
    }
}

/// Seeds each broken rule gets (a small part of the CI budget above).
const BROKEN_RULE_SEEDS: u64 = 96;

fn caught(rule: BrokenRule) -> Summary {
    let specs = (0..BROKEN_RULE_SEEDS)
        .map(|s| RunSpec::draw(4, 1, s).with_broken_rule(rule))
        .collect();
    let (s, _) = run_specs(4, 1, specs);
    println!(
        "{rule:?}: failing seeds {:?}, first: {:?}",
        s.failing_seeds, s.first_failure
    );
    s
}

#[test]
fn checker_catches_skipped_last_voted_round_check() {
    let s = caught(BrokenRule::SkipLastVotedRoundCheck);
    assert!(
        s.double_signs > 0,
        "a node voting twice in a round went unnoticed"
    );
}

/// A 1-chain commit is caught as what it leads to: two honest nodes committing different blocks
/// at one height (a fork), not only as a commit whose proof is malformed.
#[test]
fn checker_catches_one_chain_commit() {
    let s = caught(BrokenRule::OneChainCommit);
    assert!(
        s.safety_violations > 0,
        "1-chain commits caused no detected fork: {:?}",
        s.first_failure
    );
}

#[test]
fn checker_catches_duplicate_signer_counted_twice() {
    let s = caught(BrokenRule::CountDuplicateSigner);
    assert!(
        s.safety_violations > 0,
        "forged duplicate-signer certificates caused no detected disagreement"
    );
}

/// Restarted nodes that forget the uncommitted blocks they kept cannot resume after every
/// validator went down: the liveness check catches it.
#[test]
fn checker_catches_forgotten_uncommitted_blocks() {
    let s = caught(BrokenRule::ForgetUncommittedBlocks);
    let whole = s
        .classes
        .get(FaultClass::WholeClusterCrash.name())
        .expect("whole-cluster runs");
    assert!(
        whole.liveness_failures > 0,
        "a cluster whose nodes forget their kept blocks recovered from a whole-cluster crash: {:?}",
        s.first_failure
    );
}

#[test]
fn a_node_far_behind_catches_up_through_sync() {
    let mut spec = RunSpec::draw(4, 0, 0);
    assert_eq!(spec.class, FaultClass::Clean);
    spec.crashes = vec![bpci::sim::spec::Crash {
        node: bpci::types::ValidatorIndex(3),
        at_ms: 100,
        restart_ms: 12_000,
    }];
    spec.gst_ms = 12_000;
    let r = run(spec);
    assert!(r.ok(), "{:?}", r.first_violation);
    assert!(
        r.sync_requests > 0,
        "the restarted node never asked for sync: {r:?}"
    );
    assert!(
        r.commits_min > 40,
        "the restarted node did not catch up: {r:?}"
    );
}
