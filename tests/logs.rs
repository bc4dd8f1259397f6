//! The `logging` section takes effect: events reach a file output, as JSON lines, at the level
//! set (its own test binary: a process has one log subscriber).

use bpci::config::{ConsensusLogging, LogOutput, Logging};

#[test]
fn json_lines_reach_a_file_output_at_the_configured_levels() {
    std::env::remove_var("RUST_LOG");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/node.log");
    let logging = Logging {
        level: "warn".into(),
        format: "json".into(),
        outputs: vec![
            LogOutput {
                kind: "file".into(),
                path: Some(path.clone()),
                endpoint: None,
            },
            LogOutput {
                kind: "elasticsearch".into(),
                path: None,
                endpoint: Some("http://127.0.0.1:9200".into()),
            },
        ],
        consensus_logging: Some(ConsensusLogging {
            enabled: true,
            level: "detailed".into(),
            include_validator_votes: false,
            include_auction_bids: false,
        }),
    };
    bpci::logs::init(Some(&logging)).unwrap();
    tracing::info!(target: "store", "below the level: dropped");
    tracing::warn!(target: "store", answer = 42, "kept");
    tracing::debug!(target: "consensus.commit", height = 7, "committed");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(!messages.contains(&"below the level: dropped"), "{text}");
    let kept = lines
        .iter()
        .find(|l| l["fields"]["message"] == "kept")
        .unwrap();
    assert_eq!(kept["fields"]["answer"], 42);
    assert_eq!(kept["level"], "WARN");
    // `consensus_logging.level: detailed` lets consensus debug events through.
    assert!(messages.contains(&"committed"), "{text}");
    // The unshipped output is named once.
    assert!(
        messages.iter().any(|m| m.contains("elasticsearch")),
        "{text}"
    );
    // A second set-up in the same process is an error, not a panic.
    assert!(bpci::logs::init(None).is_err());
}
