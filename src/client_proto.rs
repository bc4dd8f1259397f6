//! The client protocol spoken on a validator's client endpoint (one bidirectional QUIC stream per
//! client, length-prefixed frames, each frame one BCS message).
//!
//! A client sends [`ClientRequest::Submit`] with a batch of transactions; the validator answers
//! [`ClientResponse::Ack`] with one status per transaction (in order), and later
//! [`ClientResponse::Committed`] with the ids of that client's transactions once the block holding
//! them is committed, executed and durable (the commit notice).

use serde::{Deserialize, Serialize};

use crate::codec::{check_len, Bounded, DecodeError};
use crate::mempool::{TxId, MAX_TXS_PER_BLOCK};

/// Most transactions in one submit.
pub const MAX_SUBMIT_TXS: usize = 4096;

/// Client → validator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Transactions to include (each encoded as one byte string).
    Submit(Vec<serde_bytes::ByteBuf>),
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
        tx_ids: Vec<TxId>,
    },
    /// The request could not be decoded.
    Error(String),
}

impl Bounded for ClientRequest {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        match self {
            ClientRequest::Submit(txs) => check_len("submit.txs", txs.len(), MAX_SUBMIT_TXS),
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
        }
    }
}
