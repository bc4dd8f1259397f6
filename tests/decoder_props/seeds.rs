//! The fuzz seeds (`fuzz/corpus/<target>/seed-*`): a handful of valid encodings per target,
//! made here so that they are reproducible (see `fuzz_seeds_are_committed_and_accepted`).

use bpci::client_proto::{ClientRequest, ClientResponse, TxStatus};
use bpci::codec::encode_infallible;
use bpci::consensus::{
    Block, BlockRequest, BlockResponse, CommitProof, Evidence, Message, Proposal, ProposalData,
    QuorumCert, SyncRequest, SyncResponse, Timeout, TimeoutCert, TimeoutData, TxBatch, Vote,
    VoteData,
};
use bpci::crypto::Keypair;
use bpci::exec::{LedgerTx, LEDGER_TX_MAGIC};
use bpci::mempool::{tx_id, Payload};
use bpci::types::{BlockId, Epoch, Height, Round, ValidatorIndex};
use bpci_transport::raw::CLIENT_HELLO;
use serde_bytes::ByteBuf;

use crate::checks;

/// A seed: its file name under `fuzz/corpus/<target>/` and its bytes.
pub(crate) type Seed = (String, Vec<u8>);

fn seed(name: &str, bytes: Vec<u8>) -> Seed {
    (format!("seed-{name}"), bytes)
}

/// The seeds of fuzz target `target`: a handful of valid encodings, each accepted by its check
/// (and the consensus messages signed for `checks::consensus_context`, so that they pass the
/// border and mutations of them reach its deeper checks).
pub(crate) fn seeds(target: &str) -> Vec<Seed> {
    match target {
        "consensus_message" => consensus_seeds(),
        "client_request" => client_requests()
            .into_iter()
            .map(|(name, r)| seed(name, encode_infallible(&r)))
            .collect(),
        "client_response" => client_response_seeds(),
        "payload" => payload_seeds(),
        "transport_frame" => transport_seeds(),
        "config_yaml" => config_seeds(),
        other => panic!("no seeds for target {other}"),
    }
}

/// Signs consensus data for `checks::consensus_context`.
struct Signer {
    keys: Vec<Keypair>,
}

impl Signer {
    fn new() -> Self {
        Self {
            keys: checks::consensus_keys(),
        }
    }

    fn qc(&self, block: &Block, signers: &[u16]) -> QuorumCert {
        let data = VoteData {
            block_id: block.id(checks::CHAIN_ID),
            round: block.round,
            height: block.height,
        };
        QuorumCert {
            block_id: data.block_id,
            round: data.round,
            height: data.height,
            epoch: Epoch(1),
            votes: signers
                .iter()
                .map(|&s| (ValidatorIndex(s), self.sign_vote(s, &data)))
                .collect(),
        }
    }

    fn sign_vote(&self, voter: u16, data: &VoteData) -> bpci::crypto::Signature {
        self.keys[usize::from(voter)].sign(&data.digest(checks::CHAIN_ID, Epoch(1)))
    }

    fn vote(&self, voter: u16, block_id: BlockId, round: u64, height: u64) -> Vote {
        let data = VoteData {
            block_id,
            round: Round(round),
            height: Height(height),
        };
        Vote {
            data,
            epoch: Epoch(1),
            voter: ValidatorIndex(voter),
            signature: self.sign_vote(voter, &data),
        }
    }

    fn tc(&self, round: u64, high_qc_round: u64, signers: &[u16]) -> TimeoutCert {
        let data = TimeoutData {
            round: Round(round),
            high_qc_round: Round(high_qc_round),
        };
        let digest = data.digest(checks::CHAIN_ID, Epoch(1));
        TimeoutCert {
            round: Round(round),
            epoch: Epoch(1),
            timeouts: signers
                .iter()
                .map(|&s| {
                    (
                        ValidatorIndex(s),
                        Round(high_qc_round),
                        self.keys[usize::from(s)].sign(&digest),
                    )
                })
                .collect(),
        }
    }

    fn proposal(&self, block: Block, tc: Option<TimeoutCert>) -> Message {
        let data = ProposalData {
            block_id: block.id(checks::CHAIN_ID),
            round: block.round,
        };
        let signature =
            self.keys[block.author.as_usize()].sign(&data.digest(checks::CHAIN_ID, Epoch(1)));
        Message::Proposal(Proposal {
            block,
            tc_for_prev_round: tc,
            signature,
        })
    }
}

fn block(parent: (BlockId, QuorumCert), round: u64, author: u16, txs: &[Vec<u8>]) -> Block {
    let (parent_id, parent_qc) = parent;
    Block {
        parent_id,
        round: Round(round),
        height: parent_qc.height.next(),
        epoch: Epoch(1),
        author: ValidatorIndex(author),
        payload: Payload::new(txs).encode().into(),
        parent_qc,
        timestamp_ms: 1_000 * round,
        exec_height: Height(0),
        exec_root: [0; 32],
        evidence: Vec::new(),
    }
}

fn ledger_tx(tx: &LedgerTx) -> Vec<u8> {
    [LEDGER_TX_MAGIC.as_slice(), &encode_infallible(tx)].concat()
}

fn sample_txs() -> Vec<Vec<u8>> {
    vec![
        ledger_tx(&LedgerTx::Mint {
            to: [7; 32],
            amount: 1_000,
        }),
        ledger_tx(&LedgerTx::Transfer {
            from: [7; 32],
            to: [8; 32],
            amount: 250,
        }),
        b"an opaque transaction".to_vec(),
    ]
}

/// A chain of three blocks over genesis, with their certificates: b1 (round 1) certified by
/// qc1, b2 (round 2) extending it and certified by qc2, and b3 (round 3) extending b1 again
/// after a timeout certificate tc2 for round 2.
struct Chain {
    b1: Block,
    qc1: QuorumCert,
    b2: Block,
    qc2: QuorumCert,
    b3: Block,
    tc2: TimeoutCert,
}

fn chain(s: &Signer) -> Chain {
    let ctx = checks::consensus_context();
    let b1 = block(
        (ctx.genesis_id, ctx.genesis_qc()),
        1,
        1,
        &[b"alpha".to_vec(), b"beta".to_vec()],
    );
    let qc1 = s.qc(&b1, &[0, 1, 2]);
    let b2 = block((b1.id(checks::CHAIN_ID), qc1.clone()), 2, 2, &sample_txs());
    let qc2 = s.qc(&b2, &[1, 2, 3]);
    let b3 = block((b1.id(checks::CHAIN_ID), qc1.clone()), 3, 3, &[]);
    let tc2 = s.tc(2, 1, &[0, 1, 3]);
    Chain {
        b1,
        qc1,
        b2,
        qc2,
        b3,
        tc2,
    }
}

pub(crate) fn consensus_messages() -> Vec<(&'static str, Message)> {
    let s = Signer::new();
    let c = chain(&s);
    let b1_id = c.b1.id(checks::CHAIN_ID);
    let timeout_data = TimeoutData {
        round: Round(3),
        high_qc_round: c.qc1.round,
    };
    vec![
        ("proposal", s.proposal(c.b1.clone(), None)),
        ("proposal_after_tc", s.proposal(c.b3, Some(c.tc2.clone()))),
        ("vote", Message::Vote(s.vote(2, b1_id, 1, 1))),
        (
            "timeout",
            Message::Timeout(Timeout {
                round: Round(3),
                epoch: Epoch(1),
                high_qc: c.qc1,
                last_tc: Some(c.tc2),
                voter: ValidatorIndex(0),
                signature: s.keys[0].sign(&timeout_data.digest(checks::CHAIN_ID, Epoch(1))),
            }),
        ),
        (
            "evidence",
            Message::Evidence(Evidence::DoubleVote {
                a: s.vote(3, b1_id, 1, 1),
                b: s.vote(3, BlockId([9; 32]), 1, 1),
            }),
        ),
        (
            "block_request",
            Message::BlockRequest(BlockRequest {
                id: c.b2.id(checks::CHAIN_ID),
                count: 2,
            }),
        ),
        (
            "block_response",
            Message::BlockResponse(BlockResponse {
                blocks: vec![c.b2.clone(), c.b1.clone()],
            }),
        ),
        (
            "sync_request",
            Message::SyncRequest(SyncRequest {
                from_height: Height(1),
            }),
        ),
        (
            "sync_response",
            Message::SyncResponse(SyncResponse {
                blocks: vec![c.b1],
                proof: CommitProof {
                    child: c.b2.header(),
                    child_qc: c.qc2,
                },
            }),
        ),
        (
            "txs",
            Message::Txs(TxBatch {
                txs: sample_txs().into_iter().map(ByteBuf::from).collect(),
            }),
        ),
    ]
}

fn consensus_seeds() -> Vec<Seed> {
    consensus_messages()
        .into_iter()
        .map(|(name, m)| seed(name, encode_infallible(&m)))
        .collect()
}

fn client_requests() -> Vec<(&'static str, ClientRequest)> {
    let txs: Vec<ByteBuf> = sample_txs().into_iter().map(ByteBuf::from).collect();
    vec![
        ("submit", ClientRequest::Submit(txs.clone())),
        ("submit_to_leader", ClientRequest::SubmitToLeader(txs)),
        ("watch_leaders", ClientRequest::WatchLeaders),
        ("watch_commits", ClientRequest::WatchCommits),
    ]
}

fn client_response_seeds() -> Vec<Seed> {
    let ids: Vec<_> = sample_txs().iter().map(|t| tx_id(t)).collect();
    let responses = vec![
        (
            "ack",
            ClientResponse::Ack(vec![TxStatus::Accepted, TxStatus::Busy, TxStatus::Late]),
        ),
        (
            "committed",
            ClientResponse::Committed {
                height: 12,
                tx_ids: ids.clone(),
            },
        ),
        ("error", ClientResponse::Error("too many watchers".into())),
        (
            "leaders",
            ClientResponse::Leaders {
                round: 40,
                next: checks::consensus_keys()
                    .iter()
                    .take(3)
                    .map(|k| k.public().to_bytes())
                    .collect(),
            },
        ),
        (
            "included",
            ClientResponse::Included {
                round: 41,
                block: BlockId([5; 32]),
                tx_ids: ids,
            },
        ),
        (
            "block_committed",
            ClientResponse::BlockCommitted {
                height: 12,
                round: 41,
                block: BlockId([5; 32]),
            },
        ),
    ];
    responses
        .into_iter()
        .map(|(name, r)| seed(name, encode_infallible(&r)))
        .collect()
}

fn payload_seeds() -> Vec<Seed> {
    let long = vec![vec![0xab; 200], vec![1]];
    vec![
        seed("empty", Payload::new(&Vec::<Vec<u8>>::new()).encode()),
        seed("ledger", Payload::new(&sample_txs()).encode()),
        seed("long_tx", Payload::new(&long).encode()),
    ]
}

/// `frames`, each behind its u32 big-endian length prefix.
fn framed(frames: &[&[u8]]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| {
            let len = u32::try_from(f.len()).expect("a small frame");
            [len.to_be_bytes().as_slice(), f].concat()
        })
        .collect()
}

fn transport_seeds() -> Vec<Seed> {
    let messages = consensus_messages();
    let encoded = |name: &str| {
        let (_, m) = messages
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a named seed message");
        encode_infallible(m)
    };
    let requests = client_requests();
    // Control byte: chunk index (bits 0-2), limit index (bits 3-4), client stream (bit 5);
    // see `checks::transport_frame`.
    let consensus_stream = [
        vec![0x00, 0x01],
        framed(&[&encoded("vote"), &[], &encoded("timeout")]),
    ]
    .concat();
    let bulk_stream = [vec![0x07, 0x02], framed(&[&encoded("block_response")])].concat();
    let client_stream = [
        vec![0x20 | 0x08 | 0x03],
        CLIENT_HELLO.to_vec(),
        framed(&[
            &encode_infallible(&requests[0].1),
            &encode_infallible(&requests[2].1),
        ]),
    ]
    .concat();
    let small_limit = [vec![0x10 | 0x02, 0x01], framed(&[&[3; 20], &[4; 64]])].concat();
    vec![
        seed("consensus_stream", consensus_stream),
        seed("bulk_stream", bulk_stream),
        seed("client_stream", client_stream),
        seed("small_limit", small_limit),
    ]
}

/// The numbers of [`config_text`]: each `@name@` marker and its value in the seeds.
pub(crate) const CONFIG_NUMBERS: [(&str, &str); 14] = [
    ("max_active_rounds", "10"),
    ("round_timeout_seconds", "30"),
    ("byzantine_tolerance_ratio", "0.33"),
    ("phase_timeout_seconds", "5"),
    ("pipeline_depth", "3"),
    ("view_timeout_seconds", "10"),
    ("priority_weight", "0.3"),
    ("stake", "800000"),
    ("minimum_validators", "4"),
    ("byzantine_fault_tolerance", "1"),
    ("stake_threshold", "500000"),
    ("max_udp_payload_bytes", "1452"),
    ("max_block_bytes", "1048576"),
    ("mempool_max_bytes", "268435456"),
];

/// A full configuration (every section) for the validators of `checks::consensus_keys`, with
/// `numbers` (name, value) in place of the `@name@` markers.
pub(crate) fn config_text(numbers: &[(&str, String)]) -> String {
    let keys: Vec<String> = checks::consensus_keys()
        .iter()
        .map(|k| k.public().to_string())
        .collect();
    let mut text = format!(
        r#"triple_consensus:
  coordinator:
    max_active_rounds: @max_active_rounds@
    round_timeout_seconds: @round_timeout_seconds@
    validator_timeout_seconds: 10
  ibft:
    byzantine_tolerance_ratio: @byzantine_tolerance_ratio@
    required_vote_threshold: 0.67
    phase_timeout_seconds: @phase_timeout_seconds@
    signature_verification: true
  hotstuff:
    pipeline_depth: @pipeline_depth@
    optimistic_execution: true
    view_timeout_seconds: @view_timeout_seconds@
    leader_rotation_enabled: true
  auction:
    bid_evaluation_timeout_seconds: 5
    mev_protection_enabled: true
    priority_weight: @priority_weight@
    economic_weight: 0.7
validators:
  - validator_id: "validator-001"
    stake: 1000000
    endpoint: "https://validator1.bpci.network"
    public_key: "{}"
  - validator_id: "validator-002"
    stake: @stake@
    endpoint: "127.0.0.1:7002"
    public_key: "{}"
  - validator_id: "validator-003"
    stake: 800000
    endpoint: "quic://127.0.0.1:7003"
    public_key: "{}"
  - validator_id: "validator-004"
    stake: 800000
    endpoint: "[::1]:7004"
    public_key: "{}"
    is_active: true
consensus_thresholds:
  minimum_validators: @minimum_validators@
  byzantine_fault_tolerance: @byzantine_fault_tolerance@
  stake_threshold: @stake_threshold@
logging:
  level: "info"
  format: "json"
  outputs:
    - type: "file"
      path: "/var/log/bpci/consensus.log"
  consensus_logging:
    enabled: true
    level: "detailed"
node:
  validator_id: "validator-002"
  key_file: "/etc/bpci/validator.key"
  data_dir: "/var/lib/bpci"
  chain_id: "bpci-fuzz"
tuning:
  pin_threads: false
  max_udp_payload_bytes: @max_udp_payload_bytes@
  max_block_bytes: @max_block_bytes@
  mempool_max_bytes: @mempool_max_bytes@
"#,
        keys[0], keys[1], keys[2], keys[3]
    );
    for (name, value) in numbers {
        text = text.replace(&format!("@{name}@"), value);
    }
    text
}

pub(crate) fn config_defaults() -> Vec<(&'static str, String)> {
    CONFIG_NUMBERS
        .iter()
        .map(|(name, value)| (*name, value.to_string()))
        .collect()
}

fn config_seeds() -> Vec<Seed> {
    let key = checks::consensus_keys()[0].public().to_string();
    let minimal = format!(
        r#"triple_consensus:
  coordinator: {{max_active_rounds: 1, round_timeout_seconds: 1, validator_timeout_seconds: 3}}
  ibft: {{byzantine_tolerance_ratio: 0, required_vote_threshold: 1, phase_timeout_seconds: 1, signature_verification: true}}
  hotstuff: {{pipeline_depth: 1, optimistic_execution: false, view_timeout_seconds: 1, leader_rotation_enabled: true}}
  auction: {{bid_evaluation_timeout_seconds: 1, mev_protection_enabled: false, priority_weight: 1, economic_weight: 0}}
validators:
  - {{validator_id: solo, stake: 1, endpoint: "localhost", public_key: "{key}"}}
  - {{validator_id: spare, stake: 0, endpoint: "nowhere", public_key: "none", is_active: false}}
node: {{validator_id: solo, key_file: k, data_dir: d}}
"#
    );
    vec![
        seed("full.yaml", config_text(&config_defaults()).into_bytes()),
        seed("minimal.yaml", minimal.into_bytes()),
    ]
}
