use super::*;
use crate::crypto::Keypair;

fn yaml(extra_node: &str) -> String {
    let keys: Vec<String> = (0..4)
        .map(|i| Keypair::from_seed(&[i + 1; 32]).public().to_string())
        .collect();
    format!(
        r#"
triple_consensus:
  coordinator:
    max_active_rounds: 10
    round_timeout_seconds: 30
    validator_timeout_seconds: 10
  ibft:
    byzantine_tolerance_ratio: 0.33
    required_vote_threshold: 0.67
    phase_timeout_seconds: 5
    signature_verification: true
  hotstuff:
    pipeline_depth: 3
    optimistic_execution: true
    view_timeout_seconds: 10
    leader_rotation_enabled: true
  auction:
    bid_evaluation_timeout_seconds: 5
    mev_protection_enabled: true
    priority_weight: 0.3
    economic_weight: 0.7
validators:
  - validator_id: "validator-001"
    stake: 1000000
    endpoint: "https://validator1.bpci.network"
    public_key: "{}"
    is_active: true
  - validator_id: "validator-002"
    stake: 800000
    endpoint: "127.0.0.1:7002"
    public_key: "{}"
  - validator_id: "validator-003"
    stake: 800000
    endpoint: "quic://127.0.0.1:7003"
    public_key: "{}"
  - validator_id: "validator-004"
    stake: 800000
    endpoint: "127.0.0.1:7004"
    public_key: "{}"
consensus_thresholds:
  minimum_validators: 4
  byzantine_fault_tolerance: 1
  stake_threshold: 500000
logging:
  level: "info"
  format: "json"
  outputs:
    - type: "file"
      path: "/var/log/bpci/consensus.log"
    - type: "elasticsearch"
      endpoint: "http://elasticsearch:9200"
  consensus_logging:
    enabled: true
    level: "detailed"
    include_validator_votes: true
    include_auction_bids: false
node:
  validator_id: "validator-002"
  key_file: "/etc/bpci/validator.key"
  data_dir: "/var/lib/bpci"
{extra_node}"#,
        keys[0], keys[1], keys[2], keys[3]
    )
}

#[test]
fn the_spec_example_parses() {
    let c = Config::from_yaml(&yaml("")).unwrap();
    assert_eq!(c.me, 1);
    assert_eq!(c.validators.len(), 4);
    assert_eq!(c.endpoints[0], "validator1.bpci.network:8081");
    assert_eq!(c.endpoints[2], "127.0.0.1:7003");
    assert_eq!(c.file.triple_consensus.hotstuff.pipeline_depth, 3);
}

/// The shipped tuning profile's `tuning` section is a valid one (every key it documents exists).
#[test]
fn the_shipped_tuning_section_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/validator-tuning.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.find("\ntuning:").expect("a tuning section");
    let c = Config::from_yaml(&format!("{}{}", yaml(""), &text[at + 1..])).unwrap();
    assert!(c.file.tuning.pin_threads);
    assert!(!c.file.tuning.transparent_huge_pages);
}

#[test]
fn bad_values_name_their_key() {
    let table: Vec<(&str, &str, &str)> = vec![
        (
            "pipeline_depth: 3",
            "pipeline_depth: 0",
            "triple_consensus.hotstuff.pipeline_depth",
        ),
        (
            "required_vote_threshold: 0.67",
            "required_vote_threshold: 0.5",
            "triple_consensus.ibft.required_vote_threshold",
        ),
        (
            "signature_verification: true",
            "signature_verification: false",
            "triple_consensus.ibft.signature_verification",
        ),
        (
            "priority_weight: 0.3",
            "priority_weight: 0.5",
            "triple_consensus.auction",
        ),
        (
            "view_timeout_seconds: 10",
            "view_timeout_seconds: 1",
            "triple_consensus.hotstuff.view_timeout_seconds",
        ),
        (
            "stake: 800000\n    endpoint: \"127.0.0.1:7002\"",
            "stake: 0\n    endpoint: \"127.0.0.1:7002\"",
            "validators[1].stake",
        ),
        (
            "endpoint: \"127.0.0.1:7004\"",
            "endpoint: \"127.0.0.1:70000\"",
            "validators[3].endpoint",
        ),
        (
            "validator_id: \"validator-003\"",
            "validator_id: \"validator-002\"",
            "validators[2].validator_id",
        ),
        (
            "byzantine_fault_tolerance: 1",
            "byzantine_fault_tolerance: 2",
            "consensus_thresholds.byzantine_fault_tolerance",
        ),
        // 3f overflows a usize: refused, not wrapped (found by tests/decoder_props.rs).
        (
            "byzantine_fault_tolerance: 1",
            "byzantine_fault_tolerance: 6148914691236517206",
            "consensus_thresholds.byzantine_fault_tolerance",
        ),
        (
            "minimum_validators: 4",
            "minimum_validators: 7",
            "consensus_thresholds.minimum_validators",
        ),
        (
            "  validator_id: \"validator-002\"\n  key_file",
            "  validator_id: \"validator-009\"\n  key_file",
            "node.validator_id",
        ),
        ("level: \"info\"", "level: \"loud\"", "logging.level"),
        ("format: \"json\"", "format: \"xml\"", "logging.format"),
        (
            "- type: \"file\"",
            "- type: \"syslog\"",
            "logging.outputs[0].type",
        ),
        (
            "path: \"/var/log/bpci/consensus.log\"",
            "path: \"\"",
            "logging.outputs[0].path",
        ),
        (
            "level: \"detailed\"",
            "level: \"verbose\"",
            "logging.consensus_logging.level",
        ),
    ];
    for (from, to, key) in table {
        let text = yaml("");
        assert!(text.contains(from), "fixture lacks {from:?}");
        let bad = text.replacen(from, to, 1);
        match Config::from_yaml(&bad) {
            Err(ConfigError::Invalid { key: k, message }) => assert_eq!(k, key, "{message}"),
            other => panic!("{key}: expected an error naming the key, got {other:?}"),
        }
    }
}

#[test]
fn bad_keys_are_refused_with_the_reason() {
    let text = yaml("");
    let first_key = Keypair::from_seed(&[1; 32]).public().to_string();
    let cases = [
        (
            first_key.clone(),
            "ed25519:0100000000000000000000000000000000000000000000000000000000000000".to_string(),
        ),
        (first_key.clone(), first_key.replace("ed25519:", "")),
        (first_key.clone(), format!("{}00", first_key)),
    ];
    for (from, to) in cases {
        let bad = text.replacen(&from, &to, 1);
        match Config::from_yaml(&bad) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "validators[0].public_key"),
            other => panic!("{to}: {other:?}"),
        }
    }
}

#[test]
fn unknown_keys_and_bad_yaml_are_refused() {
    let unknown = yaml("  listen_port: 5\n");
    let err = Config::from_yaml(&unknown).unwrap_err();
    assert!(err.to_string().contains("listen_port"), "{err}");
    let err = Config::from_yaml("triple_consensus: [").unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)));
}

#[test]
fn endpoints() {
    let table = [
        ("127.0.0.1:9000", Ok("127.0.0.1:9000")),
        ("quic://10.0.0.1:1", Ok("10.0.0.1:1")),
        ("https://v.example", Ok("v.example:8081")),
        ("https://v.example/", Ok("v.example:8081")),
        ("https://v.example/path", Err(())),
        ("host:notaport", Err(())),
        ("", Err::<&str, ()>(())),
    ];
    for (input, want) in table {
        let got = endpoint_host_port(input).ok();
        assert_eq!(got.as_deref(), want.ok(), "{input}");
    }
}

#[test]
fn udp_payload_size_is_checked_against_quic_and_gso_limits() {
    let with = |n: u32| format!("{}tuning:\n  max_udp_payload_bytes: {n}\n", yaml(""));
    let ok = Config::from_yaml(&with(6000)).expect("6000 is accepted");
    assert_eq!(ok.file.tuning.max_udp_payload_bytes, Some(6000));
    assert_eq!(
        Config::from_yaml(&yaml(""))
            .expect("fixture parses")
            .file
            .tuning
            .max_udp_payload_bytes,
        None
    );
    for bad in [1000, 9000] {
        match Config::from_yaml(&with(bad)) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "tuning.max_udp_payload_bytes");
                assert!(message.contains(&bad.to_string()), "{message}");
            }
            other => panic!("{bad}: expected an error naming the key, got {other:?}"),
        }
    }
    // Beyond u16 the YAML type check refuses it.
    assert!(Config::from_yaml(&with(70000)).is_err());
}

#[test]
fn block_size_limit_is_checked() {
    let with = |n: u64| format!("{}tuning:\n  max_block_bytes: {n}\n", yaml(""));
    let ok = Config::from_yaml(&with(2 << 20)).expect("2 MiB is accepted");
    assert_eq!(ok.file.tuning.max_block_bytes, Some(2 << 20));
    assert_eq!(
        Config::from_yaml(&yaml(""))
            .expect("fixture parses")
            .file
            .tuning
            .max_block_bytes,
        None
    );
    for bad in [1000, 8 << 20] {
        match Config::from_yaml(&with(bad)) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "tuning.max_block_bytes");
                assert!(message.contains(&bad.to_string()), "{message}");
            }
            other => panic!("{bad}: expected an error naming the key, got {other:?}"),
        }
    }
    assert!(Config::from_yaml(&with(1 << 40)).is_err(), "beyond u32");
}

#[test]
fn mempool_limits_are_checked() {
    let with = |k: &str, n: u64| format!("{}tuning:\n  {k}: {n}\n", yaml(""));
    let ok = Config::from_yaml(&format!(
        "{}tuning:\n  mempool_max_txs: 5000\n  mempool_max_bytes: 1048576\n",
        yaml("")
    ))
    .expect("limits in range are accepted");
    assert_eq!(ok.file.tuning.mempool_max_txs, Some(5000));
    assert_eq!(ok.file.tuning.mempool_max_bytes, Some(1 << 20));
    for (k, bad) in [
        ("mempool_max_txs", 0),
        ("mempool_max_txs", 20_000_000),
        ("mempool_max_bytes", 1000),
        ("mempool_max_bytes", 1 << 40),
    ] {
        match Config::from_yaml(&with(k, bad)) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, format!("tuning.{k}"));
                assert!(message.contains(&bad.to_string()), "{message}");
            }
            other => panic!("{k}: {bad}: expected an error naming the key, got {other:?}"),
        }
    }
}

#[test]
fn the_health_stall_threshold_is_checked() {
    let ok = Config::from_yaml(&yaml("  health_stall_seconds: 15\n")).expect("in range");
    assert_eq!(ok.file.node.health_stall_seconds, Some(15.0));
    for bad in ["0.5", "4000", ".nan"] {
        match Config::from_yaml(&yaml(&format!("  health_stall_seconds: {bad}\n"))) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "node.health_stall_seconds"),
            other => panic!("{bad}: expected an error naming the key, got {other:?}"),
        }
    }
}

/// The spec's example as written asks for auction bids in the logs: refused, naming the key,
/// until there is an auction.
#[test]
fn auction_bids_in_the_logs_are_refused_while_there_is_no_auction() {
    let text = yaml("").replace("include_auction_bids: false", "include_auction_bids: true");
    match Config::from_yaml(&text) {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "logging.consensus_logging.include_auction_bids");
            assert!(message.contains("no auction"), "{message}");
        }
        other => panic!("expected a refusal naming the key, got {other:?}"),
    }
}

#[test]
fn coordinator_keys_are_checked() {
    for (key, bad) in [
        ("max_active_rounds: 10", "max_active_rounds: 0"),
        ("round_timeout_seconds: 30", "round_timeout_seconds: 0"),
        (
            "validator_timeout_seconds: 10",
            "validator_timeout_seconds: 2",
        ),
        (
            "validator_timeout_seconds: 10",
            "validator_timeout_seconds: 601",
        ),
    ] {
        let text = yaml("").replace(key, bad);
        assert_ne!(text, yaml(""), "{key}");
        let field = bad.split(':').next().unwrap();
        match Config::from_yaml(&text) {
            Err(ConfigError::Invalid { key, .. }) => {
                assert_eq!(key, format!("triple_consensus.coordinator.{field}"))
            }
            other => panic!("{bad}: expected an error naming the key, got {other:?}"),
        }
    }
}
