//! The operator surface on real processes: a 4-validator QUIC testnet on loopback, every HTTP
//! endpoint called, the metrics checked by `promtool`, the served OpenAPI document by
//! `openapi-spec-validator`, the health checks through a stall, and every `bpci consensus`
//! command. The outside tools are installed by `.ci/tools.sh` (the README's test command);
//! a missing tool fails the test.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bpci::loadgen::{self, LoadConfig, Route, Target};
use bpci::testnet::{self, Testnet, TestnetConfig};
use serde_json::Value;

/// One testnet at a time in this binary.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start(dir: &std::path::Path) -> Testnet {
    start_with(dir, false)
}

fn start_with(dir: &std::path::Path, audit: bool) -> Testnet {
    let mut cfg = TestnetConfig::new(4, dir.to_path_buf());
    cfg.phase_timeout_seconds = 0.5;
    cfg.view_timeout_seconds = 4.0;
    cfg.audit = audit;
    let nodes = testnet::write(&cfg).expect("writing the testnet");
    let net = Testnet::start(std::path::Path::new(env!("CARGO_BIN_EXE_bpci")), nodes)
        .expect("starting validators");
    net.wait_ready(Duration::from_secs(30))
        .expect("validators ready");
    net
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}

/// (status, body as text) of a GET.
fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut r = agent()
        .get(format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

/// (status, JSON body) of a GET; a body that is not JSON fails the test.
fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, text) = get_text(addr, path);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path} answered {status} with non-JSON {text:?}: {e}"));
    (status, v)
}

fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = agent()
        .post(format!("http://{addr}{path}"))
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut r = req.send(body).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path} answered non-JSON {text:?}: {e}")),
    )
}

fn ok(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = get(addr, path);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an API error: {v}"))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Series in a Prometheus text exposition (lines that are not comments).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by .ci/tools.sh) runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

fn committed_height(addr: SocketAddr) -> u64 {
    ok(addr, "/api/v1/consensus/metrics")["committed_height"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_endpoint_answers_and_the_outside_checkers_accept_what_it_serves() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path());
    let a = net.nodes[0].http_addr;
    let token = std::fs::read_to_string(dir.path().join(testnet::OPERATOR_TOKEN_FILE))
        .unwrap()
        .trim()
        .to_string();

    // Metrics at ten rounds, then after a hundred more: the same series.
    wait_for("height 10", Duration::from_secs(30), || {
        committed_height(a) >= 10
    });
    let (status, early) = get_text(a, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&early);
    for name in [
        "triple_consensus_rounds_total",
        "triple_consensus_round_duration_seconds_bucket",
        "ibft_validator_votes_total",
        "ibft_consensus_success_rate",
        "hotstuff_pipeline_depth",
        "hotstuff_optimistic_execution_rate",
        "consensus_byzantine_faults_detected_total",
        "bpci_stage_latency_seconds_bucket",
        "bpci_last_commit_age_seconds",
    ] {
        assert!(early.contains(name), "{name} missing from /metrics");
    }
    // Load, so that blocks carry transactions.
    let targets: Vec<Target> = net
        .nodes
        .iter()
        .map(|n| Target {
            addr: n.client_addr,
            key: n.key,
        })
        .collect();
    let report = loadgen::run(
        &LoadConfig {
            drain: Duration::from_secs(10),
            route: Route::Leader,
            ..LoadConfig::new(targets, 2_000, 256, Duration::from_secs(2))
        },
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap();
    assert_eq!(report.committed, report.sent, "{report:?}");
    let h10 = committed_height(a);
    wait_for("100 more heights", Duration::from_secs(60), || {
        committed_height(a) >= h10 + 100
    });
    let (_, late) = get_text(a, "/metrics");
    promtool_check(&late);
    assert_eq!(
        series(&late),
        series(&early),
        "series count grew with rounds"
    );

    // Rounds.
    let m = ok(a, "/api/v1/consensus/metrics");
    assert!(m["committed_blocks"].as_u64().unwrap() > 100, "{m}");
    assert!(m["votes_sent"].as_u64().unwrap() > 0, "{m}");
    let active = ok(a, "/api/v1/consensus/rounds/active");
    assert!(active["rounds"].is_array(), "{active}");
    let hist = ok(a, "/api/v1/consensus/rounds/history?limit=1000");
    let rounds = hist["rounds"].as_array().unwrap();
    assert!(rounds.len() > 100, "{}", rounds.len());
    let loaded = rounds
        .iter()
        .find(|r| r["transactions"].as_u64().unwrap_or(0) > 0 && r["phase"] == "durable")
        .unwrap_or_else(|| panic!("no durable round with transactions in {hist}"));
    let h = loaded["height"].as_u64().unwrap();
    let id = format!("round-{h}");
    let status = ok(a, &format!("/api/v1/consensus/rounds/{id}/status"));
    assert_eq!(status["phase"], "durable", "{status}");
    for step in [
        "proposed_ms",
        "prepared_ms",
        "committed_ms",
        "executed_ms",
        "durable_ms",
    ] {
        assert!(status["times"][step].as_u64().is_some(), "{step}: {status}");
    }
    // An old height comes from the store.
    let old = ok(a, "/api/v1/consensus/rounds/round-1/status");
    assert_eq!(old["height"], 1);

    // IBFT: the QCs' signers are a quorum, and their signatures verify.
    let state = ok(a, &format!("/api/v1/consensus/ibft/state/{id}"));
    assert_eq!(state["phase"], "committed", "{state}");
    assert!(
        state["prepare_stake"].as_u64() >= state["thresholds"]["quorum_stake"].as_u64(),
        "{state}"
    );
    let votes = ok(a, &format!("/api/v1/consensus/ibft/votes/{id}"));
    for qc in ["prepare", "commit"] {
        let signers = votes[qc]["signers"].as_array().unwrap();
        assert!(signers.len() >= 3, "{qc}: {votes}");
        assert!(signers[0]["signature"]
            .as_str()
            .unwrap()
            .starts_with("ed25519:"));
    }
    assert_eq!(votes["prepare"]["block_id"], status["block_id"], "{votes}");
    let proposal = ok(a, &format!("/api/v1/consensus/ibft/proposal/{id}"));
    assert_eq!(proposal["block_id"], status["block_id"]);
    assert_eq!(proposal["transactions"], loaded["transactions"]);

    // HotStuff.
    let hs = ok(a, &format!("/api/v1/consensus/hotstuff/state/{id}"));
    assert_eq!(hs["pipeline_stage"], "durable", "{hs}");
    let pipeline = ok(a, "/api/v1/consensus/hotstuff/pipeline");
    assert_eq!(pipeline["depth"], 3, "{pipeline}");
    assert!(
        pipeline["stages"].as_array().unwrap().len() >= 7,
        "{pipeline}"
    );
    let hm = ok(a, "/api/v1/consensus/hotstuff/metrics");
    assert!(hm["speculative_hits"].as_u64().unwrap() > 0, "{hm}");
    let exec = ok(a, &format!("/api/v1/consensus/hotstuff/execution/{id}"));
    assert_eq!(exec["speculative"], false, "{exec}");

    // A block's transactions, and one of them with a proof that verifies.
    let block = ok(a, &format!("/api/v1/blocks/{h}?limit=3"));
    let tx = block["transaction_ids"][0].as_str().unwrap().to_string();
    let found = ok(a, &format!("/api/v1/transactions/{tx}"));
    assert_eq!(found["state"], "committed", "{found}");
    let inc = &found["inclusion"];
    assert_eq!(inc["height"].as_u64(), Some(h));
    let hex32 = |v: &Value| -> [u8; 32] {
        hex::decode(v.as_str().unwrap().trim_start_matches("0x"))
            .unwrap()
            .try_into()
            .unwrap()
    };
    let proof = bpci::crypto::merkle::MerkleProof {
        index: inc["position"].as_u64().unwrap(),
        leaf_count: inc["leaf_count"].as_u64().unwrap(),
        siblings: inc["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(hex32)
            .collect(),
    };
    proof
        .verify_leaf_hash(&hex32(&inc["tx_root"]), &hex32(&Value::String(tx.clone())))
        .expect("the inclusion proof verifies against the block's transaction root");
    assert_eq!(hex32(&inc["tx_root"]), hex32(&proposal["tx_root"]));

    // Health and probes.
    for path in [
        "/health/consensus",
        "/health/ibft",
        "/health/hotstuff",
        "/livez",
        "/readyz",
    ] {
        let v = ok(a, path);
        assert_eq!(v["status"], "ok", "{path}: {v}");
    }

    // Bad input: a JSON error naming what is wrong, never a 5xx.
    for (path, code, named) in [
        ("/api/v1/consensus/rounds/round-x/status", 400, "round-x"),
        ("/api/v1/consensus/rounds/42/status", 400, "round-<height>"),
        ("/api/v1/consensus/rounds/round-99999999999/status", 404, "99999999999"),
        ("/api/v1/consensus/ibft/votes/round-0", 400, "genesis"),
        ("/api/v1/consensus/rounds/history?limit=0", 400, "limit"),
        ("/api/v1/consensus/rounds/history?limit=x", 400, "limit"),
        ("/api/v1/blocks/0", 400, "height"),
        ("/api/v1/blocks/1?limit=5000", 400, "limit"),
        ("/api/v1/transactions/0x1234", 400, "64 hex digits"),
        (
            "/api/v1/transactions/0x0000000000000000000000000000000000000000000000000000000000000000",
            404,
            "unknown",
        ),
        ("/api/v1/nothing", 404, "no such endpoint"),
    ] {
        let (status, v) = get(a, path);
        assert_eq!(status, code, "{path}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{path}: {v}");
        error_code(&v);
    }

    // The mutating call: token required, checked, applied.
    let depth = "/api/v1/consensus/hotstuff/depth";
    let (s, v) = post(a, depth, None, r#"{"depth":5}"#);
    assert_eq!((s, error_code(&v)), (401, "Unauthorized"), "{v}");
    let (s, v) = post(a, depth, Some("not-the-operator-token"), r#"{"depth":5}"#);
    assert_eq!((s, error_code(&v)), (401, "Unauthorized"), "{v}");
    let (s, v) = post(a, depth, Some(&token), r#"{"depth":0}"#);
    assert_eq!((s, error_code(&v)), (400, "BadRequest"), "{v}");
    let (s, v) = post(a, depth, Some(&token), "garbage");
    assert_eq!((s, error_code(&v)), (400, "BadRequest"), "{v}");
    let (s, v) = post(a, depth, Some(&token), r#"{"depth":5}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["previous"].as_u64(), v["depth"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(ok(a, "/api/v1/consensus/hotstuff/pipeline")["depth"], 5);
    let before = committed_height(a);
    wait_for("commits at the new depth", Duration::from_secs(30), || {
        committed_height(a) > before + 10
    });

    // The served OpenAPI document is the committed one and passes the validator.
    let served = ok(a, "/api/v1/openapi.json");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, committed,
        "served and committed OpenAPI documents differ"
    );
    let doc = dir.path().join("openapi.json");
    std::fs::write(&doc, serde_json::to_string(&served).unwrap()).unwrap();
    let out = Command::new("openapi-spec-validator")
        .arg(&doc)
        .output()
        .expect("openapi-spec-validator (installed by .ci/tools.sh) runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every `bpci consensus` command: a table, and valid JSON with --output json.
    let api = format!("http://{a}");
    let commands: Vec<Vec<String>> = [
        vec!["round-status", "--round-id", &id],
        vec!["metrics"],
        vec!["list-rounds", "--status", "active"],
        vec!["list-rounds", "--status", "committed"],
        vec!["history", "--limit", "5"],
        vec!["ibft", "state", "--round-id", &id],
        vec!["ibft", "votes", "--round-id", &id],
        vec!["ibft", "proposal", "--round-id", &id],
        vec!["hotstuff", "pipeline"],
        vec!["hotstuff", "metrics"],
        vec!["hotstuff", "execution", "--round-id", &id],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(String::from).collect())
    .collect();
    let bpci = env!("CARGO_BIN_EXE_bpci");
    for c in &commands {
        let table = Command::new(bpci)
            .arg("consensus")
            .args(c)
            .args(["--api", &api])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            table.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&table.stderr)
        );
        assert!(text.lines().count() >= 2, "{c:?}: {text}");
        let json = Command::new(bpci)
            .arg("consensus")
            .args(c)
            .args(["--api", &api, "--output", "json"])
            .output()
            .unwrap();
        assert!(json.status.success(), "{c:?}");
        let _: Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("{c:?} --output json is not JSON: {e}"));
    }
    let token_file = dir.path().join(testnet::OPERATOR_TOKEN_FILE);
    let set = Command::new(bpci)
        .args([
            "consensus",
            "hotstuff",
            "set-depth",
            "--depth",
            "3",
            "--token-file",
        ])
        .arg(&token_file)
        .args(["--api", &api])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(ok(a, "/api/v1/consensus/hotstuff/pipeline")["depth"], 3);
    // A vote signed with validator 1's key file, checked by the node as one from QUIC.
    let (block_id, view, height) = (
        status["block_id"].as_str().unwrap().to_string(),
        status["view"].as_u64().unwrap().to_string(),
        h.to_string(),
    );
    let vote_args = |who: &str, key: &str| -> Vec<String> {
        [
            "consensus",
            "ibft",
            "vote",
            "--validator-id",
            who,
            "--vote-type",
            "Prepare",
            "--block-hash",
            &block_id,
            "--round-number",
            &view,
            "--height",
            &height,
            "--key-file",
            key,
            "--token-file",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            token_file.display().to_string(),
            "--api".into(),
            api.clone(),
            "--output".into(),
            "json".into(),
        ])
        .collect()
    };
    let key1 = dir.path().join("validator-1.key").display().to_string();
    let voted = Command::new(bpci)
        .args(vote_args("validator-001", &key1))
        .output()
        .unwrap();
    assert!(
        voted.status.success(),
        "{}",
        String::from_utf8_lossy(&voted.stderr)
    );
    let v: Value = serde_json::from_slice(&voted.stdout).unwrap();
    assert_eq!(v["voter"], 1, "{v}");
    // Signed by 1, claimed for 2: refused as a Byzantine fault, naming the signature.
    let forged = Command::new(bpci)
        .args(vote_args("validator-002", &key1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&forged.stderr);
    assert!(
        !forged.status.success() && err.contains("ByzantineFault"),
        "{err}"
    );
    let vote = |who: &str, sig: &str| {
        format!(
            r#"{{"validator_id":"{who}","vote_type":"Prepare","block_hash":"{block_id}","round_number":{view},"height":{height},"signature":"{sig}"}}"#
        )
    };
    let zeros = format!("ed25519:{}", "00".repeat(64));
    for (body, code, named) in [
        (
            vote("validator-999", &zeros),
            "BadRequest",
            "not in the validator set",
        ),
        (
            vote("validator-001", "ed25519:abcd"),
            "BadRequest",
            "128 hex digits",
        ),
        (
            vote("validator-001", &zeros),
            "ByzantineFault",
            "vote refused",
        ),
    ] {
        let (s, v) = post(a, "/api/v1/consensus/ibft/vote", Some(&token), &body);
        assert_eq!((s, error_code(&v)), (400, code), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(named),
            "{v}"
        );
    }

    // The spec's integration examples, built by `cargo test`, run against this testnet.
    let examples = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples");
    if !examples.join("ibft_validator_participation").exists() {
        // `cargo test --test api` alone does not build examples (a plain `cargo test` does).
        let built = Command::new(env!("CARGO"))
            .args([
                "build",
                "--examples",
                "--profile",
                "test",
                "--manifest-path",
            ])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .status()
            .unwrap();
        assert!(built.success(), "building the examples");
    }
    let run = Command::new(examples.join("complete_consensus_round"))
        .arg(&api)
        .output()
        .expect("the example was built by cargo test");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains("success rate"), "{said}");
    let run = Command::new(examples.join("ibft_validator_participation"))
        .args([
            "--api",
            &api,
            "--validator-id",
            "validator-001",
            "--key-file",
            &key1,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .expect("the example was built by cargo test");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains("consensus finalized"), "{said}");

    // Against an answer that is an error, and against nothing listening: non-zero, one line.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (args, api) in [
        (vec!["round-status", "--round-id", "round-x"], api.clone()),
        (vec!["metrics"], format!("http://{closed}")),
    ] {
        let out = Command::new(bpci)
            .arg("consensus")
            .args(&args)
            .args(["--api", &api])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} against {api}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
}

#[test]
fn health_turns_503_when_the_chain_stalls_and_200_when_it_resumes() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut net = start_with(dir.path(), true);
    let a = net.nodes[0].http_addr;
    assert_eq!(ok(a, "/health/consensus")["status"], "ok");
    // The audit trail (consensus_logging.level: detailed, include_validator_votes): one JSON
    // event per proposal, vote, QC, commit.
    let log = std::fs::read_to_string(&net.nodes[0].log).unwrap();
    for event in ["proposal", "vote_sent", "vote_received", "qc", "commit"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} audit event in validator 0's log"));
        let v: Value = serde_json::from_str(line).expect("an audit event is one JSON object");
        assert_eq!(v["target"], "consensus.audit", "{v}");
    }
    // Two of four stopped: no quorum, no commit.
    net.kill(2);
    net.kill(3);
    let stopped = Instant::now();
    let mut stalled = None;
    while stalled.is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "no 503 in 40 s after the stall"
        );
        let (live, v) = get(a, "/livez");
        assert_eq!(live, 200, "livez while stalled: {v}");
        let (status, v) = get(a, "/health/consensus");
        if status == 503 {
            stalled = Some((stopped.elapsed(), v));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (after, v) = stalled.unwrap();
    eprintln!(
        "503 {:.1} s after two of four stopped: {v}",
        after.as_secs_f64()
    );
    assert_eq!(v["status"], "failing");
    assert!(v["last_commit_age_ms"].as_u64().unwrap() > 10_000, "{v}");
    let problem = v["problems"][0].as_str().unwrap();
    assert!(problem.contains("no commit for"), "{problem}");
    let (ready, _) = get(a, "/readyz");
    assert_eq!(ready, 503);
    let (ibft, _) = get(a, "/health/ibft");
    assert_eq!(ibft, 503);
    // A validator killed without a word stays connected until QUIC's idle timeout (10 s) ends
    // its connection; then the ibft check names the missing quorum too.
    wait_for(
        "the ibft check to name the quorum",
        Duration::from_secs(20),
        || {
            get(a, "/health/ibft").1["problems"]
                .to_string()
                .contains("quorum needs")
        },
    );
    // Back: 200 again.
    net.start_node(2).unwrap();
    net.start_node(3).unwrap();
    let back = Instant::now();
    wait_for(
        "health 200 after the restart",
        Duration::from_secs(60),
        || get(a, "/health/consensus").0 == 200,
    );
    eprintln!(
        "200 {:.1} s after the restart",
        back.elapsed().as_secs_f64()
    );
    wait_for("ready after the restart", Duration::from_secs(20), || {
        get(a, "/readyz").0 == 200
    });
}

/// Kills the child process when dropped (a failing test leaves no Prometheus behind).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_prometheus_server_scrapes_the_validators_and_every_dashboard_query_has_data() {
    let _one = one_at_a_time();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    // The alert rules: valid, and their unit tests pass.
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(format!("{deploy}/prometheus"))
            .output()
            .expect("promtool (installed by .ci/tools.sh) runs");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let net = start(dir.path());
    let targets: Vec<String> = net
        .nodes
        .iter()
        .map(|n| format!("'{}'", n.http_addr))
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {deploy}/prometheus/alerts.yml\nscrape_configs:\n  - job_name: bpci\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Reaped(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package, installed by .ci/tools.sh) runs"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let query = |expr: &str| -> Option<Vec<Value>> {
        let mut r = agent()
            .get(format!("{base}/api/v1/query"))
            .query("query", expr)
            .call()
            .ok()?;
        let v: Value = r.body_mut().read_json().ok()?;
        v["data"]["result"].as_array().cloned()
    };
    wait_for(
        "Prometheus to scrape all four validators",
        Duration::from_secs(60),
        || query("up{job=\"bpci\"} == 1").is_some_and(|r| r.len() == 4),
    );
    // Enough samples for rate() over the dashboards' 1-minute windows.
    std::thread::sleep(Duration::from_secs(6));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{deploy}/grafana/bpci-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let r = query(expr).unwrap_or_else(|| panic!("query failed: {expr}"));
        assert!(!r.is_empty(), "no data for the dashboard query {expr}");
    }
    drop(net);
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new("hadolint")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile"))
        .output()
        .expect("hadolint (installed by .ci/tools.sh) runs");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_for_four_validators_pass_kubernetes_validate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k8s");
    let made = Command::new(env!("CARGO_BIN_EXE_bpci"))
        .args(["deploy", "k8s", "--validators", "4", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut manifests: Vec<std::path::PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    manifests.sort();
    assert_eq!(manifests.len(), 1 + 2 * 4, "{manifests:?}");
    for m in &manifests {
        let name = m.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with("-secret.yaml") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(m).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }
    let all = manifests
        .iter()
        .map(|m| std::fs::read_to_string(m).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for needed in [
        "kind: StatefulSet",
        "publishNotReadyAddresses: true",
        "kind: PodDisruptionBudget",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "protocol: UDP",
        "path: /livez",
        "path: /readyz",
        "volumeClaimTemplates",
    ] {
        assert!(all.contains(needed), "{needed} missing");
    }
    let checked = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate (installed by .ci/tools.sh) runs");
    assert!(
        checked.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // A directory that holds something is refused (keys are never written over).
    let again = Command::new(env!("CARGO_BIN_EXE_bpci"))
        .args(["deploy", "k8s", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}
