//! Property tests of the canonical encoding: decode(encode(m)) == m for any message, the encoding
//! is canonical (re-encoding gives the same bytes), and arbitrary or damaged bytes never panic.

use bpci::codec::{decode, encode, DecodeError};
use bpci::consensus::*;
use bpci::crypto::Signature;
use bpci::types::{BlockId, Epoch, Height, Round, ValidatorIndex};
use proptest::collection::vec;
use proptest::prelude::*;

fn sig() -> impl Strategy<Value = Signature> {
    vec(any::<u8>(), 64).prop_map(|b| {
        let mut a = [0u8; 64];
        a.copy_from_slice(&b);
        Signature::from_bytes(a)
    })
}

fn id() -> impl Strategy<Value = BlockId> {
    any::<[u8; 32]>().prop_map(BlockId)
}

fn qc() -> impl Strategy<Value = QuorumCert> {
    (
        id(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec((any::<u16>(), sig()), 0..8),
    )
        .prop_map(|(block_id, r, h, e, votes)| QuorumCert {
            block_id,
            round: Round(r),
            height: Height(h),
            epoch: Epoch(e),
            votes: votes
                .into_iter()
                .map(|(v, s)| (ValidatorIndex(v), s))
                .collect(),
        })
}

fn tc() -> impl Strategy<Value = TimeoutCert> {
    (
        any::<u64>(),
        any::<u64>(),
        vec((any::<u16>(), any::<u64>(), sig()), 0..8),
    )
        .prop_map(|(r, e, t)| TimeoutCert {
            round: Round(r),
            epoch: Epoch(e),
            timeouts: t
                .into_iter()
                .map(|(v, hr, s)| (ValidatorIndex(v), Round(hr), s))
                .collect(),
        })
}

fn vote() -> impl Strategy<Value = Vote> {
    (
        id(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u16>(),
        sig(),
    )
        .prop_map(|(block_id, r, h, e, voter, signature)| Vote {
            data: VoteData {
                block_id,
                round: Round(r),
                height: Height(h),
            },
            epoch: Epoch(e),
            voter: ValidatorIndex(voter),
            signature,
        })
}

fn evidence() -> impl Strategy<Value = Evidence> {
    prop_oneof![
        (vote(), vote()).prop_map(|(a, b)| Evidence::DoubleVote { a, b }),
        (
            any::<u16>(),
            any::<u64>(),
            id(),
            id(),
            any::<u64>(),
            sig(),
            sig()
        )
            .prop_map(|(author, e, x, y, r, s1, s2)| Evidence::DoubleProposal {
                author: ValidatorIndex(author),
                epoch: Epoch(e),
                a: (
                    ProposalData {
                        block_id: x,
                        round: Round(r)
                    },
                    s1
                ),
                b: (
                    ProposalData {
                        block_id: y,
                        round: Round(r)
                    },
                    s2
                ),
            }),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (
        id(),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u16>()),
        vec(any::<u8>(), 0..300),
        qc(),
        (any::<u64>(), any::<u64>()),
        any::<[u8; 32]>(),
        vec(evidence(), 0..3),
    )
        .prop_map(
            |(parent_id, (r, h, e, a), payload, parent_qc, (ts, xh), exec_root, evidence)| Block {
                parent_id,
                round: Round(r),
                height: Height(h),
                epoch: Epoch(e),
                author: ValidatorIndex(a),
                payload: payload.into(),
                parent_qc,
                timestamp_ms: ts,
                exec_height: Height(xh),
                exec_root,
                evidence,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (block(), proptest::option::of(tc()), sig()).prop_map(|(block, tc, signature)| {
            Message::Proposal(Proposal {
                block,
                tc_for_prev_round: tc,
                signature,
            })
        }),
        vote().prop_map(Message::Vote),
        (
            any::<u64>(),
            any::<u64>(),
            qc(),
            proptest::option::of(tc()),
            any::<u16>(),
            sig()
        )
            .prop_map(
                |(r, e, high_qc, last_tc, voter, signature)| Message::Timeout(Timeout {
                    round: Round(r),
                    epoch: Epoch(e),
                    high_qc,
                    last_tc,
                    voter: ValidatorIndex(voter),
                    signature,
                })
            ),
        (id(), any::<u16>())
            .prop_map(|(id, count)| Message::BlockRequest(BlockRequest { id, count })),
        vec(block(), 0..3).prop_map(|blocks| Message::BlockResponse(BlockResponse { blocks })),
        any::<u64>().prop_map(|h| Message::SyncRequest(SyncRequest {
            from_height: Height(h)
        })),
        (vec(block(), 0..3), block(), qc()).prop_map(|(blocks, child, child_qc)| {
            Message::SyncResponse(SyncResponse {
                blocks,
                proof: CommitProof {
                    child: child.header(),
                    child_qc,
                },
            })
        }),
        evidence().prop_map(Message::Evidence),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_inverts_encode(m in message()) {
        let bytes = encode(&m).unwrap();
        let back: Message = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(encode(&back).unwrap(), bytes, "canonical: one encoding per message");
    }

    #[test]
    fn truncation_and_trailing_bytes_are_refused(m in message(), cut in any::<prop::sample::Index>(), extra in vec(any::<u8>(), 1..8)) {
        let bytes = encode(&m).unwrap();
        let at = cut.index(bytes.len());
        prop_assert_eq!(decode::<Message>(&bytes[..at]).err(), Some(DecodeError::Truncated));
        let longer = [bytes.clone(), extra].concat();
        prop_assert_eq!(decode::<Message>(&longer).err(), Some(DecodeError::TrailingBytes));
    }

    #[test]
    fn arbitrary_and_damaged_bytes_never_panic(m in message(), noise in vec(any::<u8>(), 0..512), flips in vec((any::<prop::sample::Index>(), 0u8..8), 1..6)) {
        let _ = decode::<Message>(&noise);
        let mut bytes = encode(&m).unwrap();
        for (i, bit) in flips {
            let k = i.index(bytes.len());
            bytes[k] ^= 1 << bit;
        }
        let _ = decode::<Message>(&bytes);
    }
}

#[test]
fn unknown_tag_and_named_limits() {
    // Message has 9 variants: tag 9 is unknown.
    assert!(matches!(
        decode::<Message>(&[9]),
        Err(DecodeError::UnknownTag(_))
    ));
    let big = Message::Proposal(Proposal {
        block: Block {
            payload: vec![0; MAX_PAYLOAD_BYTES + 1].into(),
            ..Block::genesis(Epoch(1))
        },
        tc_for_prev_round: None,
        signature: Signature::from_bytes([0; 64]),
    });
    assert!(matches!(
        decode::<Message>(&encode(&big).unwrap()),
        Err(DecodeError::LimitExceeded {
            field: "block.payload",
            ..
        })
    ));
    let many = Message::BlockResponse(BlockResponse {
        blocks: vec![Block::genesis(Epoch(1)); MAX_BLOCKS_PER_RESPONSE + 1],
    });
    assert!(matches!(
        decode::<Message>(&encode(&many).unwrap()),
        Err(DecodeError::LimitExceeded {
            field: "block_response.blocks",
            ..
        })
    ));
    let oversized_tx = Message::Txs(TxBatch {
        txs: vec![serde_bytes::ByteBuf::from(vec![
            1;
            bpci::mempool::MAX_TX_BYTES
                + 1
        ])],
    });
    assert!(matches!(
        decode::<Message>(&encode(&oversized_tx).unwrap()),
        Err(DecodeError::LimitExceeded {
            field: "txs.tx",
            ..
        })
    ));
}
