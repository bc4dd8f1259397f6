//! The client protocol spoken on a validator's client endpoint (one bidirectional QUIC stream per
//! client, length-prefixed frames, each frame one BCS message).
//!
//! A client sends [`ClientRequest::Submit`] with a batch of transactions; the validator answers
//! [`ClientResponse::Ack`] with one status per transaction (in order), and later
//! [`ClientResponse::Committed`] with the ids of that client's transactions once the block holding
//! them is committed, executed and durable (the commit notice).
//!
//! A client that sends [`ClientRequest::WatchLeaders`] also gets a [`ClientResponse::Leaders`]
//! each time this validator sends a proposal of its own: the round and the keys of the leaders
//! of the next rounds. A transaction waits in the mempool of the validator it was submitted to
//! until that validator leads; with round-robin leaders that is up to n rounds (below 5,000 tx/s
//! of intake a validator's forwarder hands its clients' transactions to the leader two rounds
//! ahead instead; above it, it does not, for the CPU). A client that submits to the upcoming
//! leader waits about one round (the load generator's `--route leader`). A hint is advice from
//! one validator: a faulty one can send false hints, so a client bounds what it believes (the
//! load generator refuses far-ahead rounds and caps the share of batches any one validator gets
//! through hints at twice an even share).
//!
//! A client that follows the hints submits with [`ClientRequest::SubmitToLeader`]: a validator
//! whose payload for its round is already taken (and that leads none of the next
//! [`LATE_ROUNDS`] rounds) answers [`TxStatus::Late`] instead of keeping the batch for its next
//! turn, a whole rotation away, and the client sends the batch to the next leader. The decision
//! is taken under the mempool lock that proposing takes too, so a batch that arrives after the
//! payload was taken is never kept for the next turn (one that arrives before may still wait:
//! a full block, or a round passed without a proposal; and a validator whose round lags may
//! answer late when it need not).
//!
//! A client that sends [`ClientRequest::WatchCommits`] also learns of commits a hop earlier. When
//! this validator sends a proposal of its own it tells each watching client which of that
//! client's transactions the block carries ([`ClientResponse::Included`], the block's id and
//! round). In 2-chain HotStuff the first validator to know that a block is committed is the one
//! that forms the QC of its next-round child (the leader of the round after the child); the
//! others learn it from that leader's next proposal, a network hop and a verification later. So
//! the QC's former, once the committed block is executed and durable in its own store, tells
//! every watching client ([`ClientResponse::BlockCommitted`]), and a client that holds a receipt
//! for that block knows its transactions are committed without waiting for the notice of the
//! validator it submitted to. The [`ClientResponse::Committed`] notices still follow (they also
//! cover transactions a receipt never named: forwarded ones, ones re-proposed after an abandoned
//! round, blocks committed as ancestors). Like every notice, an announcement is a statement of
//! the validator that sends it: a client trusts the validators it connects to.
//!
//! # Exactly once
//! A validator keeps the ids of the transactions committed in the last
//! [`COMMITTED_WINDOW_HEIGHTS`] heights (at most [`COMMITTED_WINDOW_TXS`] ids, at least half
//! that many; past that the oldest heights leave first): the *committed window*. A client whose
//! commit notice went missing (its validator crashed, or stalled) sends the transaction again,
//! to another validator, with [`ClientRequest::Resubmit`]: one in the window is answered
//! [`TxStatus::Committed`] with its height, never admitted. A leader never proposes a
//! transaction that is committed (in the window or in a committed block not yet recorded there)
//! or carried by a block its proposal extends; when it extends a block it has yet to receive,
//! it holds back what came as a resubmission, was forwarded to it or was taken back from an
//! abandoned block. A resubmission within the window therefore never commits twice. (A
//! transaction sent with plain submits to two validators at once, as no client of the protocol
//! does, can ride in two blocks only when one extends the other and its leader did not hold
//! it yet.) [`ClientRequest::Status`] asks what became of transactions by id:
//! [`TxState::Pending`] (waiting here), [`TxState::Committed`] with the height, the block, the
//! position and the Merkle inclusion proof against the block's transaction root (the client
//! checks it with [`CommittedTx::verify`]), or [`TxState::Unknown`] (never seen here, lost with
//! a crashed validator's mempool, or committed before the window).

use serde::{Deserialize, Serialize};

use crate::codec::{check_len, Bounded, DecodeError};
use crate::crypto::{Digest32, MerkleError, MerkleProof};
use crate::mempool::{TxId, MAX_TXS_PER_BLOCK};
use crate::types::BlockId;

/// Heights whose committed transactions the committed window keeps (see the module docs).
pub const COMMITTED_WINDOW_HEIGHTS: u64 = 65_536;
/// Most transaction ids the committed window keeps (at least half as many once the chain holds
/// them); past it the oldest heights leave first. At 150,000 tx/s that is 12 to 24 s of
/// commits; at 20,000, 90 to 180 s. Each half is what a hash table of 2^21 slots holds at its
/// full load (7/8): 34 MiB a table, two of them.
pub const COMMITTED_WINDOW_TXS: usize = 2 * ((1 << 21) / 8 * 7);
/// Most transaction ids one [`ClientRequest::Status`] asks about.
pub const MAX_STATUS_IDS: usize = 1024;
/// Most siblings in an inclusion proof (a tree of up to 2^64 leaves).
const MAX_PROOF_SIBLINGS: usize = 64;

/// Most transactions in one submit.
pub const MAX_SUBMIT_TXS: usize = 4096;
/// Upcoming leaders named in one [`ClientResponse::Leaders`].
pub const LEADER_HINTS: usize = 3;

/// Client → validator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Transactions to include (each encoded as one byte string).
    Submit(Vec<serde_bytes::ByteBuf>),
    /// Send me [`ClientResponse::Leaders`] from now on (no reply of its own).
    WatchLeaders,
    /// Send me [`ClientResponse::Included`] and [`ClientResponse::BlockCommitted`] from now on
    /// (no reply of its own).
    WatchCommits,
    /// As [`ClientRequest::Submit`], from a client that follows the leader hints: when this
    /// validator leads none of the next [`LATE_ROUNDS`] rounds (its proposal has just left), it
    /// takes none of them and answers [`TxStatus::Late`] for each, so that the client sends them
    /// to the upcoming leader rather than leave them here for a full rotation.
    SubmitToLeader(Vec<serde_bytes::ByteBuf>),
    /// What became of these transactions (at most [`MAX_STATUS_IDS`]): answered
    /// [`ClientResponse::Status`], one state per id, in order.
    Status(#[serde(with = "id_bytes")] Vec<TxId>),
    /// As [`ClientRequest::Submit`], for transactions submitted before (here or to another
    /// validator) whose commit the client has not seen: each is checked against the committed
    /// window first (answered [`TxStatus::Committed`] when there), and, once admitted, never
    /// proposed in a block that extends one carrying it (see "Exactly once" above).
    Resubmit(Vec<serde_bytes::ByteBuf>),
}

/// See [`ClientRequest::SubmitToLeader`]: a validator that leads a round within this many
/// rounds of its current one takes the transactions.
pub const LATE_ROUNDS: u64 = 2;

/// BCS variant indices of the two submit requests (one byte each: below 128).
const SUBMIT_TAG: u8 = 0;
const SUBMIT_TO_LEADER_TAG: u8 = 3;

/// An encoded [`ClientRequest::Submit`] as the same transactions'
/// [`ClientRequest::SubmitToLeader`], or back (`to_leader: false`), without decoding the
/// transactions: the two differ only in the variant index. `None` if `frame` is neither.
pub fn retag_submit(frame: &[u8], to_leader: bool) -> Option<Vec<u8>> {
    let (&tag, rest) = frame.split_first()?;
    if tag != SUBMIT_TAG && tag != SUBMIT_TO_LEADER_TAG {
        return None;
    }
    let mut out = Vec::with_capacity(frame.len());
    out.push(if to_leader {
        SUBMIT_TO_LEADER_TAG
    } else {
        SUBMIT_TAG
    });
    out.extend_from_slice(rest);
    Some(out)
}

/// What happened to one submitted transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxStatus {
    /// In the mempool; a commit notice follows.
    Accepted,
    /// The mempool is full: resubmit later.
    Busy,
    /// Already pending.
    Duplicate,
    /// Empty or too large.
    Invalid,
    /// Not taken: this validator leads no round soon ([`ClientRequest::SubmitToLeader`]).
    Late,
    /// Not taken: already committed at `height` (in the committed window): a resubmission.
    Committed {
        /// The height of the block that holds it.
        height: u64,
    },
}

/// What a validator knows of one transaction ([`ClientRequest::Status`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxState {
    /// Not in this validator's mempool, its own pending proposals or the committed window.
    Unknown,
    /// Waiting in this validator's mempool or in a proposal of its own not yet committed.
    Pending,
    /// Committed, with the proof.
    Committed(Box<CommittedTx>),
}

/// Where a committed transaction is, and the proof that it is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedTx {
    /// The block's height.
    pub height: u64,
    /// The block's id.
    pub block: BlockId,
    /// The root of the block's transactions (the payload's `tx_root`, which the block's id
    /// commits to through its payload digest).
    pub tx_root: Digest32,
    /// The inclusion proof of the transaction's id (its Merkle leaf hash) under `tx_root`; its
    /// `index` is the transaction's position in the block.
    pub proof: MerkleProof,
}

impl CommittedTx {
    /// Checks that the transaction with id `id` is leaf `proof.index` under `tx_root`.
    ///
    /// # Errors
    /// The proof does not lead from `id` to `tx_root`.
    pub fn verify(&self, id: &TxId) -> Result<(), MerkleError> {
        self.proof.verify_leaf_hash(&self.tx_root, id)
    }
}

/// Validator → client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// One status per submitted transaction, in order.
    Ack(Vec<TxStatus>),
    /// These transactions are committed at `height` (executed and durable).
    Committed {
        /// The block height.
        height: u64,
        /// The client's transactions in it.
        #[serde(with = "id_bytes")]
        tx_ids: Vec<TxId>,
    },
    /// The request could not be decoded, or was refused (e.g. too many connections already
    /// watch leaders).
    Error(String),
    /// This validator has just sent its proposal for `round`; `next` are the public keys of the
    /// leaders of rounds `round + 1`, `round + 2`, ... (at most [`LEADER_HINTS`]).
    Leaders {
        /// The round just proposed.
        round: u64,
        /// Ed25519 public keys of the next leaders, in round order.
        next: Vec<[u8; 32]>,
    },
    /// This validator has just sent its proposal `block` for `round`, carrying these of the
    /// client's transactions ([`ClientRequest::WatchCommits`]).
    Included {
        /// The proposal's round.
        round: u64,
        /// The proposed block's id.
        block: BlockId,
        /// The client's transactions in it.
        #[serde(with = "id_bytes")]
        tx_ids: Vec<TxId>,
    },
    /// Block `block` (round `round`, height `height`) is committed, executed and durable at this
    /// validator, which formed the QC that commits it ([`ClientRequest::WatchCommits`]).
    BlockCommitted {
        /// Its height.
        height: u64,
        /// Its round.
        round: u64,
        /// Its id.
        block: BlockId,
    },
    /// The answer to [`ClientRequest::Status`]: one state per asked id, in order.
    Status(Vec<TxState>),
}

/// Transaction id lists travel as one byte string, 32 bytes per id. (BCS would encode a list of
/// `[u8; 32]` with the same bytes after a count instead of a length, but serde hands a `[u8; 32]`
/// to BCS one byte at a time, both ways: at 150,000 tx/s decoding the id lists of commit notices
/// and receipts one byte at a time was about 2 % of a 4-validator testnet's CPU, in the load
/// generator alone.)
mod id_bytes {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;

    use crate::mempool::TxId;

    pub fn serialize<S: Serializer>(ids: &[TxId], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(ids.as_flattened())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TxId>, D::Error> {
        struct Ids;
        impl Visitor<'_> for Ids {
            type Value = Vec<TxId>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string of 32-byte transaction ids")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<TxId>, E> {
                if v.len() % 32 != 0 {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(v.chunks_exact(32)
                    .map(|c| {
                        let mut id = [0u8; 32];
                        id.copy_from_slice(c);
                        id
                    })
                    .collect())
            }
        }
        d.deserialize_bytes(Ids)
    }
}

impl Bounded for ClientRequest {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        match self {
            ClientRequest::Submit(txs)
            | ClientRequest::SubmitToLeader(txs)
            | ClientRequest::Resubmit(txs) => check_len("submit.txs", txs.len(), MAX_SUBMIT_TXS),
            ClientRequest::WatchLeaders | ClientRequest::WatchCommits => Ok(()),
            ClientRequest::Status(ids) => check_len("status.ids", ids.len(), MAX_STATUS_IDS),
        }
    }
}

impl Bounded for ClientResponse {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        match self {
            ClientResponse::Ack(s) => check_len("ack.statuses", s.len(), MAX_SUBMIT_TXS),
            ClientResponse::Committed { tx_ids, .. } => {
                check_len("committed.tx_ids", tx_ids.len(), MAX_TXS_PER_BLOCK * 16)
            }
            ClientResponse::Error(e) => check_len("error", e.len(), 1024),
            ClientResponse::Leaders { next, .. } => {
                check_len("leaders.next", next.len(), LEADER_HINTS)
            }
            ClientResponse::Included { tx_ids, .. } => {
                check_len("included.tx_ids", tx_ids.len(), MAX_TXS_PER_BLOCK)
            }
            ClientResponse::BlockCommitted { .. } => Ok(()),
            ClientResponse::Status(states) => {
                check_len("status.states", states.len(), MAX_STATUS_IDS)?;
                states.iter().try_for_each(|s| match s {
                    TxState::Committed(c) => check_len(
                        "status.proof.siblings",
                        c.proof.siblings.len(),
                        MAX_PROOF_SIBLINGS,
                    ),
                    TxState::Unknown | TxState::Pending => Ok(()),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode_infallible};

    /// An id list is one byte string: a ULEB128 length of 32 bytes per id, then the ids; a
    /// length that is not a multiple of 32 is refused.
    #[test]
    fn id_lists_travel_as_one_byte_string() {
        let ids = vec![[1u8; 32], [2; 32], [3; 32], [4; 32], [5; 32]];
        let msg = ClientResponse::Committed {
            height: 9,
            tx_ids: ids.clone(),
        };
        let bytes = encode_infallible(&msg);
        let mut want = encode_infallible(&1u8); // variant index of Committed
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(&[0xa0, 0x01]); // ULEB128 of 5 * 32 = 160
        want.extend_from_slice(ids.as_flattened());
        assert_eq!(bytes, want);
        assert_eq!(decode::<ClientResponse>(&bytes).unwrap(), msg);
        let receipt = ClientResponse::Included {
            round: 3,
            block: crate::types::BlockId([7; 32]),
            tx_ids: ids,
        };
        assert_eq!(
            decode::<ClientResponse>(&encode_infallible(&receipt)).unwrap(),
            receipt
        );
        // 33 bytes: not a list of ids.
        let mut odd = encode_infallible(&1u8);
        odd.extend_from_slice(&9u64.to_le_bytes());
        odd.push(33);
        odd.extend_from_slice(&[0u8; 33]);
        let e = decode::<ClientResponse>(&odd).unwrap_err().to_string();
        assert!(e.contains("32-byte transaction ids"), "{e}");
    }

    /// Status requests and answers round-trip, are bounded, and a committed answer's proof is
    /// checked against the transaction's id; the new variants leave older encodings unchanged.
    #[test]
    fn status_round_trips_and_its_proof_checks_the_id() {
        let ids: Vec<TxId> = (0..5u8).map(|i| [i; 32]).collect();
        let tree = crate::crypto::MerkleTree::from_leaf_hashes(&ids);
        let committed = CommittedTx {
            height: 12,
            block: BlockId([9; 32]),
            tx_root: tree.root(),
            proof: tree.proof(3).unwrap(),
        };
        committed.verify(&ids[3]).unwrap();
        assert!(committed.verify(&ids[2]).is_err());
        let answer = ClientResponse::Status(vec![
            TxState::Unknown,
            TxState::Pending,
            TxState::Committed(Box::new(committed)),
        ]);
        assert_eq!(
            decode::<ClientResponse>(&encode_infallible(&answer)).unwrap(),
            answer
        );
        let ask = ClientRequest::Status(ids.clone());
        assert_eq!(
            decode::<ClientRequest>(&encode_infallible(&ask)).unwrap(),
            ask
        );
        let too_many = ClientRequest::Status(vec![[0; 32]; MAX_STATUS_IDS + 1]);
        let e = decode::<ClientRequest>(&encode_infallible(&too_many)).unwrap_err();
        assert!(e.to_string().contains("status.ids"), "{e}");
        let ack = ClientResponse::Ack(vec![TxStatus::Accepted, TxStatus::Committed { height: 7 }]);
        assert_eq!(
            decode::<ClientResponse>(&encode_infallible(&ack)).unwrap(),
            ack
        );
        // Appended variants: the older ones keep their indices.
        assert_eq!(encode_infallible(&TxStatus::Late), vec![4]);
        assert_eq!(encode_infallible(&ClientRequest::WatchCommits)[0], 2);
    }

    #[test]
    fn leader_hints_round_trip_and_are_bounded() {
        let hint = ClientResponse::Leaders {
            round: 7,
            next: vec![[1; 32], [2; 32], [3; 32]],
        };
        let back: ClientResponse = decode(&encode_infallible(&hint)).unwrap();
        assert_eq!(back, hint);
        let too_many = ClientResponse::Leaders {
            round: 7,
            next: vec![[1; 32]; LEADER_HINTS + 1],
        };
        let e = decode::<ClientResponse>(&encode_infallible(&too_many)).unwrap_err();
        assert!(e.to_string().contains("leaders.next"), "{e}");
        let watch: ClientRequest =
            decode(&encode_infallible(&ClientRequest::WatchLeaders)).unwrap();
        assert_eq!(watch, ClientRequest::WatchLeaders);
    }

    #[test]
    fn receipts_and_announcements_round_trip_and_are_bounded() {
        let watch: ClientRequest =
            decode(&encode_infallible(&ClientRequest::WatchCommits)).unwrap();
        assert_eq!(watch, ClientRequest::WatchCommits);
        let receipt = ClientResponse::Included {
            round: 9,
            block: BlockId([7; 32]),
            tx_ids: vec![[1; 32], [2; 32]],
        };
        let back: ClientResponse = decode(&encode_infallible(&receipt)).unwrap();
        assert_eq!(back, receipt);
        let too_many = ClientResponse::Included {
            round: 9,
            block: BlockId([7; 32]),
            tx_ids: vec![[1; 32]; MAX_TXS_PER_BLOCK + 1],
        };
        let e = decode::<ClientResponse>(&encode_infallible(&too_many)).unwrap_err();
        assert!(e.to_string().contains("included.tx_ids"), "{e}");
        let commit = ClientResponse::BlockCommitted {
            height: 3,
            round: 9,
            block: BlockId([7; 32]),
        };
        let back: ClientResponse = decode(&encode_infallible(&commit)).unwrap();
        assert_eq!(back, commit);
        // Appended variants: the encodings of the older ones are unchanged.
        assert_eq!(encode_infallible(&ClientResponse::Ack(vec![]))[0], 0);
        assert_eq!(encode_infallible(&ClientRequest::WatchCommits)[0], 2);
        let to_leader = ClientRequest::SubmitToLeader(vec![serde_bytes::ByteBuf::from(vec![1])]);
        assert_eq!(
            decode::<ClientRequest>(&encode_infallible(&to_leader)).unwrap(),
            to_leader
        );
        let too_many = ClientRequest::SubmitToLeader(vec![
            serde_bytes::ByteBuf::from(vec![1]);
            MAX_SUBMIT_TXS + 1
        ]);
        let e = decode::<ClientRequest>(&encode_infallible(&too_many)).unwrap_err();
        assert!(e.to_string().contains("submit.txs"), "{e}");
        // Re-tagging turns one submit into the other, and refuses anything else.
        let txs = vec![
            serde_bytes::ByteBuf::from(vec![1, 2, 3]),
            serde_bytes::ByteBuf::from(vec![4; 300]),
        ];
        let plain = encode_infallible(&ClientRequest::Submit(txs.clone()));
        let led = retag_submit(&plain, true).unwrap();
        assert_eq!(
            decode::<ClientRequest>(&led).unwrap(),
            ClientRequest::SubmitToLeader(txs.clone())
        );
        assert_eq!(retag_submit(&led, false).unwrap(), plain);
        let watch = encode_infallible(&ClientRequest::WatchLeaders);
        assert_eq!(retag_submit(&watch, true), None);
        assert_eq!(retag_submit(&[], true), None);
    }
}
