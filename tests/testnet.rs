//! Real processes, real QUIC sockets on loopback, bounded in time: a 4-validator testnet commits
//! under load; a kill -9'd validator is not needed for progress and catches up with an identical
//! chain; an unknown key cannot connect; garbage frames from a peer do not stop a validator.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bpci::loadgen::{self, LoadConfig, Route, Target};
use bpci::testnet::{self, Testnet, TestnetConfig};
use bpci_transport::{Class, PeerConfig, Transport, TransportConfig};
use bytes::Bytes;

/// One testnet at a time in this test binary: the machine's cores are shared, and two
/// testnets at once would measure each other.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start(dir: &std::path::Path, n: usize) -> Testnet {
    start_with(dir, n, |_| {})
}

/// [`start`], with `edit` applied to the testnet's configuration.
fn start_with(dir: &std::path::Path, n: usize, edit: impl FnOnce(&mut TestnetConfig)) -> Testnet {
    let mut cfg = TestnetConfig::new(n, dir.to_path_buf());
    cfg.phase_timeout_seconds = 0.5;
    cfg.view_timeout_seconds = 4.0;
    edit(&mut cfg);
    let nodes = testnet::write(&cfg).expect("writing the testnet");
    let net = Testnet::start(std::path::Path::new(env!("CARGO_BIN_EXE_bpci")), nodes)
        .expect("starting validators");
    net.wait_ready(Duration::from_secs(30))
        .expect("validators ready");
    net
}

fn targets(net: &Testnet, which: &[usize]) -> Vec<Target> {
    which
        .iter()
        .map(|i| Target {
            addr: net.nodes[*i].client_addr,
            key: net.nodes[*i].key,
        })
        .collect()
}

/// `rate` transactions of 512 bytes a second for `secs` seconds, to all four validators of
/// `net`, routed by `route`; waits up to 10 s for the last commit notices.
fn load_all_four(net: &Testnet, rate: u64, secs: u64, route: Route) -> loadgen::LoadReport {
    loadgen::run(
        &LoadConfig {
            drain: Duration::from_secs(10),
            route,
            ..LoadConfig::new(
                targets(net, &[0, 1, 2, 3]),
                rate,
                512,
                Duration::from_secs(secs),
            )
        },
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap()
}

/// The transport counter `name` summed over the validators `which`.
fn transport_total(net: &Testnet, which: std::ops::Range<usize>, name: &str) -> u64 {
    which
        .map(|i| {
            net.stats(i).unwrap()["transport"][name]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn four_validators_commit_client_transactions() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path(), 4);
    // Both routes: each connection's share to its own validator, then every batch to the
    // hinted upcoming leader.
    let mut committed = 0;
    for route in [Route::Spread, Route::Leader] {
        let report = load_all_four(&net, 2_000, 3, route);
        assert!(report.sent >= 5_000, "{report:?}");
        assert_eq!(
            report.committed, report.sent,
            "every transaction committed: {report:?}"
        );
        assert_eq!((report.lost, report.committed_twice), (0, 0), "{report:?}");
        assert!(report.committed > 0);
        if route == Route::Leader {
            // The validators' leader hints reached the generator and steered its batches.
            assert!(report.leader_hints > 100, "{report:?}");
            assert!(report.routed_batches > 100, "{report:?}");
            // Leaders sent inclusion receipts, and the validators that formed committing QCs
            // announced commits before the submitters' own notices arrived.
            assert!(report.receipts > 100, "{report:?}");
            assert!(
                report.announced_commits > report.committed / 4,
                "{report:?}"
            );
        } else {
            assert_eq!(report.routed_batches, 0, "{report:?}");
        }
        committed += report.committed;
    }
    wait_for(
        "every validator to execute them",
        Duration::from_secs(10),
        || {
            (0..4).all(|i| {
                net.stats(i)
                    .and_then(|s| s["txs_executed"].as_u64())
                    .is_some_and(|x| x >= committed)
            })
        },
    );
    // Certified blocks were executed optimistically and those results committed; every
    // validator checked proposers' executed state roots against its own and found no divergence.
    for i in 0..4 {
        let s = net.stats(i).expect("stats");
        let exec = &s["exec"];
        assert!(exec["speculative_hits"].as_u64() > Some(0), "v{i}: {exec}");
        assert!(exec["roots_checked"].as_u64() > Some(0), "v{i}: {exec}");
        assert_eq!(exec["divergences"].as_u64(), Some(0), "v{i}: {exec}");
        // Rounds and this validator's own proposals were timed.
        let timing = &s["consensus_timing"];
        assert!(timing["rounds"].as_u64() > Some(10), "v{i}: {timing}");
        assert!(timing["round_us_p50"].as_u64() > Some(0), "v{i}: {timing}");
        assert!(timing["own_commits"].as_u64() > Some(0), "v{i}: {timing}");
        assert!(
            timing["proposal_to_commit_us_p99"].as_u64() >= timing["round_us_p50"].as_u64(),
            "a proposal commits two rounds on at the earliest: v{i}: {timing}"
        );
        // Each validator forwarded its clients' transactions to upcoming leaders and proposed
        // some that others forwarded to it (their submitters still got commit notices: above).
        let fwd = &s["forward"];
        assert!(fwd["sent"].as_u64() > Some(0), "v{i}: {fwd}");
        assert!(fwd["received"].as_u64() > Some(0), "v{i}: {fwd}");
    }
}

/// A full mempool answers "busy" (`tuning.mempool_max_txs`): with room for 4 transactions and
/// batches of about 20, most are refused, the rest commit, and every one is answered. (Before
/// forwarded transactions had a queue of their own, a leader whose pool its clients had filled
/// refused them, and a few accepted transactions were lost in every run.)
#[test]
fn a_full_mempool_answers_busy_and_loses_nothing() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let net = start_with(dir.path(), 4, |cfg| cfg.mempool_max_txs = Some(4));
    let report = load_all_four(&net, 20_000, 2, Route::Leader);
    // `Busy` answers are retried (after a backoff, elsewhere) up to the submission bound;
    // what stays busy is refused, and the client knows it: nothing accepted is lost.
    assert!(report.busy > report.sent / 2, "{report:?}");
    assert!(report.refused > 0 && report.resubmitted > 0, "{report:?}");
    assert!(report.committed > 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(
        report.committed + report.refused + report.unanswered,
        report.sent,
        "{report:?}"
    );
    // Transactions forwarded between validators have room of their own: none was refused.
    for i in 0..4 {
        let s = net.stats(i).expect("stats");
        assert_eq!(s["forward"]["refused"].as_u64(), Some(0), "v{i}: {s}");
    }
}

/// `bpci bench load`, the generator as a command against validators already running: its
/// JSON report counts what it sent and what committed; bad flags are refused by name.
#[test]
fn bench_load_runs_against_running_validators() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path(), 4);
    let bench = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bpci"));
        cmd.args([
            "bench",
            "load",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--json",
        ]);
        for n in &net.nodes {
            cmd.arg("--target").arg(format!(
                "{}={}",
                n.client_addr,
                bpci::crypto::PublicKey::from_bytes(&n.key).unwrap()
            ));
        }
        cmd.args(extra).output().unwrap()
    };
    let out = bench(&["--rate", "2000"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 3_000, "{report}");
    assert_eq!(report["committed"].as_u64().unwrap(), sent, "{report}");
    assert_eq!(report["lost"].as_u64(), Some(0), "{report}");
    assert!(report["committed_tps"].as_f64() > Some(0.0), "{report}");
    assert!(report["latency_ms"]["p99"].as_f64() > Some(0.0), "{report}");
    for (flags, named) in [
        (&["--rate", "0"][..], "--rate"),
        (&["--tx-size", "8"][..], "--tx-size"),
    ] {
        let out = bench(flags);
        assert!(!out.status.success(), "{flags:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{out:?}"
        );
    }
}

#[test]
fn killed_validator_is_not_needed_and_catches_up_with_the_same_chain() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut net = start(dir.path(), 4);
    let stop = AtomicBool::new(false);
    let load = LoadConfig::new(
        targets(&net, &[0, 1, 2]),
        1_000,
        256,
        Duration::from_secs(8),
    );
    std::thread::scope(|s| {
        let load_thread = s.spawn(|| loadgen::run(&load, &stop, |_| {}).unwrap());
        std::thread::sleep(Duration::from_secs(1));
        net.kill(3);
        let h0 = net.height(0);
        wait_for(
            "the other three to keep committing",
            Duration::from_secs(20),
            || (0..3).all(|i| net.height(i) > h0 + 20),
        );
        net.restart(3).unwrap();
        let target = (0..3).map(|i| net.height(i)).max().unwrap();
        wait_for(
            "the restarted validator to catch up",
            Duration::from_secs(30),
            || net.height(3) >= target,
        );
        let report = load_thread.join().unwrap();
        assert!(report.committed > 0, "{report:?}");
    });
    // The restarted validator rebuilt its state by replay: its roots agree with the proposers'.
    for i in 0..4 {
        let s = net.stats(i).expect("stats");
        assert_eq!(
            s["exec"]["divergences"].as_u64(),
            Some(0),
            "v{i}: {}",
            s["exec"]
        );
    }
    let heights: Vec<u64> = (0..4).map(|i| net.height(i)).collect();
    net.stop();
    // Every stored chain against every other, block by block.
    let chain = testnet::chain::check(&net.nodes, testnet::CHAIN_ID).expect("reading the chains");
    assert!(chain.identical, "{chain:?}");
    assert_eq!(chain.committed_twice, 0, "{chain:?}");
    let common = *heights.iter().min().unwrap();
    assert!(
        chain.heights[3] >= common.saturating_sub(50),
        "restarted tip {:?}, others {heights:?}",
        chain.heights
    );
}

/// Every validator stops at once, by SIGTERM and then by kill -9, under load: started again
/// from their data, they commit again, the client loses nothing (its resubmissions and status
/// queries find every transaction), and the stored chains are identical block by block with no
/// transaction twice.
#[test]
fn the_chain_resumes_after_every_validator_stops_at_once() {
    let _one = one_at_a_time();
    for kill in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut net = start(dir.path(), 4);
        let stop = AtomicBool::new(false);
        let mut load = LoadConfig::new(
            targets(&net, &[0, 1, 2, 3]),
            2_000,
            256,
            Duration::from_secs(10),
        );
        load.drain = load.full_drain(Duration::from_secs(2));
        std::thread::scope(|s| {
            let load_thread = s.spawn(|| loadgen::run(&load, &stop, |_| {}).unwrap());
            wait_for("commits under load", Duration::from_secs(20), || {
                (0..4).all(|i| net.height(i) > 50)
            });
            net.stop_all(kill, Duration::from_secs(5));
            let before = (0..4).map(|i| net.height(i)).max().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            for i in 0..4 {
                net.start_node(i).unwrap();
            }
            wait_for(
                "a commit after the restart",
                Duration::from_secs(30),
                || (0..4).any(|i| net.height(i) > before),
            );
            let report = load_thread.join().unwrap();
            assert_eq!(report.lost, 0, "kill {kill}: {report:?}");
            assert_eq!(report.committed_twice, 0, "kill {kill}: {report:?}");
            assert_eq!(report.committed, report.sent, "kill {kill}: {report:?}");
        });
        net.stop();
        let chain =
            testnet::chain::check(&net.nodes, testnet::CHAIN_ID).expect("reading the chains");
        assert!(chain.identical, "kill {kill}: {chain:?}");
        assert_eq!(chain.committed_twice, 0, "kill {kill}: {chain:?}");
    }
}

#[test]
fn unknown_key_cannot_connect_and_garbage_does_not_stop_a_validator() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut net = start(dir.path(), 4);
    let peers: Vec<PeerConfig> = (0..4)
        .map(|i| {
            let cfg = bpci::config::Config::load(&net.nodes[i].config).unwrap();
            let addr: SocketAddr = cfg.endpoints[i].parse().unwrap();
            PeerConfig {
                index: i as u16,
                addr,
                public_key: net.nodes[i].key,
            }
        })
        .collect();
    // An impostor claims index 0 with a key the set does not list.
    let fake_seed = [7u8; 32];
    let mut fake_peers = peers.clone();
    fake_peers[0].public_key = bpci_transport::public_key_from_seed(&fake_seed);
    fake_peers[0].addr = "127.0.0.1:0".parse().unwrap();
    let (fake, fake_handle, _rx) = Transport::start(TransportConfig::new(
        0,
        "127.0.0.1:0".parse().unwrap(),
        fake_seed,
        fake_peers,
    ))
    .unwrap();
    let failures = |net: &Testnet| transport_total(net, 1..4, "handshake_failures");
    wait_for(
        "the impostor to be refused",
        Duration::from_secs(15),
        || failures(&net) > 0,
    );
    assert!(
        fake_handle.connected_peers().is_empty(),
        "an unknown key got connected"
    );
    fake.shutdown();

    // Validator 3's own key, used to send garbage: a real peer gone bad.
    net.kill(3);
    let seed = {
        let key =
            bpci::node::keys::read(&dir.path().canonicalize().unwrap().join("validator-3.key"))
                .unwrap();
        key.seed()
    };
    // It listens where validator 3 did: the lower indices dial it there.
    let listen = peers[3].addr;
    let (bad, bad_handle, _rx) =
        Transport::start(TransportConfig::new(3, listen, seed, peers.clone())).unwrap();
    wait_for("the bad peer to connect", Duration::from_secs(15), || {
        bad_handle.connected_peers().len() == 3
    });
    let before: Vec<u64> = (0..3).map(|i| net.height(i)).collect();
    for k in 0..2_000u32 {
        let junk: Vec<u8> = (0..(k % 700) as usize)
            .map(|j| (j as u32 * 31 + k) as u8)
            .collect();
        bad_handle.broadcast(
            if k % 2 == 0 {
                Class::Consensus
            } else {
                Class::Bulk
            },
            Bytes::from(junk),
        );
    }
    bad_handle.broadcast(Class::Bulk, Bytes::from(vec![0xff; 8 << 20]));
    wait_for(
        "validators to keep committing under garbage",
        Duration::from_secs(20),
        || (0..3).all(|i| net.height(i) > before[i] + 20),
    );
    bad.shutdown();

    // Oversized: a length prefix past the validators' frame limit (the bad peer's own limit
    // raised so that it sends one). The receiver refuses it from the prefix, before reading
    // the body, drops that stream, and goes on committing.
    let frame_errors = |net: &Testnet| transport_total(net, 0..3, "frame_errors");
    let errors_before = frame_errors(&net);
    let mut cfg = TransportConfig::new(3, listen, seed, peers.clone());
    cfg.max_frame_bytes = 64 << 20;
    let (bad, bad_handle, _rx) = Transport::start(cfg).unwrap();
    wait_for("the bad peer to reconnect", Duration::from_secs(15), || {
        bad_handle.connected_peers().len() == 3
    });
    let before: Vec<u64> = (0..3).map(|i| net.height(i)).collect();
    let over = bpci_transport::MAX_FRAME_BYTES_DEFAULT + 1;
    for class in [Class::Consensus, Class::Bulk] {
        bad_handle.broadcast(class, Bytes::from(vec![0xee; over]));
    }
    wait_for(
        "the oversized frames to be refused",
        Duration::from_secs(20),
        || frame_errors(&net) >= errors_before + 3,
    );
    wait_for(
        "validators to keep committing after oversized frames",
        Duration::from_secs(20),
        || (0..3).all(|i| net.height(i) > before[i] + 20),
    );
    let undecodable: u64 = (0..3)
        .map(|i| {
            net.stats(i).unwrap()["border"]["undecodable"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(undecodable > 0, "garbage never reached the decoder");
    bad.shutdown();
}
