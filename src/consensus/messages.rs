//! Protocol messages (DESIGN §3). Every signed message signs the domain-separated BLAKE3 digest of
//! the canonical (BCS) encoding of its `*Data` struct, bound to `chain_id` and `epoch`, so no signature
//! can be replayed across chains, epochs or message kinds.

use crate::codec::{check_len, encode_infallible, Bounded, DecodeError};
use crate::crypto::{signing_digest, signing_hasher, Digest32, Domain, Signature};
use crate::types::{BlockId, Epoch, Height, Round, TimeMs, ValidatorIndex};
use serde::{Deserialize, Serialize};

/// Most validators an epoch may hold (and so most signatures in a certificate).
pub const MAX_VALIDATORS: usize = 1024;
/// Most payload bytes in one block.
pub const MAX_PAYLOAD_BYTES: usize = 8 << 20;
/// Most evidence items carried by one block.
pub const MAX_EVIDENCE_PER_BLOCK: usize = 16;
/// Most blocks in one `BlockResponse` or `SyncResponse`.
pub const MAX_BLOCKS_PER_RESPONSE: usize = 64;
/// Encoded block bytes a block or sync response carries, beyond its first block (which always
/// goes, and is at most [`MAX_PAYLOAD_BYTES`] plus its header): the response stays under the
/// 16 MiB message and frame limits with its proof and framing.
pub const RESPONSE_BLOCK_BYTES_MAX: usize = 12 << 20;

/// A block of the chain. Its id is its [`BlockHeader`]'s id (the payload enters by its digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The parent block's id (certified by `parent_qc`).
    pub parent_id: BlockId,
    /// The round this block was proposed in.
    pub round: Round,
    /// Parent's height + 1.
    pub height: Height,
    /// The epoch of the validator set that orders it.
    pub epoch: Epoch,
    /// The proposer (leader of `round`).
    pub author: ValidatorIndex,
    /// Opaque to the core; checked by the application's validation hook. Encoded as one byte
    /// string (a length and a single copy), not a sequence of single bytes.
    pub payload: PayloadBytes,
    /// The certificate of the parent: the IBFT "prepare" quorum of the parent.
    pub parent_qc: QuorumCert,
    /// Proposer's wall clock at proposal time.
    pub timestamp_ms: TimeMs,
    /// The height of the committed ancestor whose executed state root is `exec_root`.
    pub exec_height: Height,
    /// The state root after executing the committed block at `exec_height` (the proposer's latest
    /// durable execution), so validators detect divergence.
    pub exec_root: Digest32,
    /// Equivocation evidence, slashed at execution.
    pub evidence: Vec<Evidence>,
}

impl Block {
    /// The block's encoding split around its payload bytes: `encode(self)` is
    /// `head ‖ payload ‖ tail`. The store writes a block this way, the payload straight from
    /// memory (no copy of it into one encoding). `None` if the split does not add up to the
    /// encoding's length (a field added without updating this).
    pub fn encode_around_payload(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut head = encode_infallible(&(
            &self.parent_id,
            &self.round,
            &self.height,
            &self.epoch,
            &self.author,
        ));
        // The payload's length prefix: BCS's ULEB128.
        let mut n = self.payload.len();
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                head.push(low);
                break;
            }
            head.push(low | 0x80);
        }
        let tail = encode_infallible(&(
            &self.parent_qc,
            &self.timestamp_ms,
            &self.exec_height,
            &self.exec_root,
            &self.evidence,
        ));
        let whole = bcs::serialized_size(self).ok()?;
        (head.len() + self.payload.len() + tail.len() == whole).then_some((head, tail))
    }

    /// The genesis block of an epoch: round 0, height 0, certified by [`QuorumCert::genesis`].
    pub fn genesis(epoch: Epoch) -> Block {
        Block {
            parent_id: BlockId::default(),
            round: Round(0),
            height: Height(0),
            epoch,
            author: ValidatorIndex(0),
            payload: PayloadBytes::default(),
            parent_qc: QuorumCert {
                block_id: BlockId::default(),
                round: Round(0),
                height: Height(0),
                epoch,
                votes: Vec::new(),
            },
            timestamp_ms: 0,
            exec_height: Height(0),
            exec_root: [0; 32],
            evidence: Vec::new(),
        }
    }

    /// This block's id under `chain_id`: the id of its [`BlockHeader`] (the payload enters
    /// through its digest).
    pub fn id(&self, chain_id: &str) -> BlockId {
        self.header().id(chain_id)
    }

    /// The block without its payload (which its digest replaces); same id.
    pub fn header(&self) -> BlockHeader {
        BlockHeader {
            parent_id: self.parent_id,
            round: self.round,
            height: self.height,
            epoch: self.epoch,
            author: self.author,
            payload_digest: self.payload.digest(),
            parent_qc: self.parent_qc.clone(),
            timestamp_ms: self.timestamp_ms,
            exec_height: self.exec_height,
            exec_root: self.exec_root,
            evidence: self.evidence.clone(),
        }
    }
}

/// A block's payload bytes, shared (a clone of a block copies no payload) and with their
/// [`payload_digest`] computed at most once: the ingress thread computes it for the block id, and
/// the payload checks, the consensus thread's lookups and commit proofs reuse it. The bytes cannot
/// change after construction (no mutable access), so the kept digest always matches them.
/// Encoded exactly as a byte string.
///
/// A payload decoded by [`crate::codec::decode_shared`] is a slice of the received frame, not a
/// copy: at 150,000 tx/s the copy (and the fresh 4 MiB allocation under it) was about 5 % of
/// a 4-validator testnet's CPU.
#[derive(Clone, Default)]
pub struct PayloadBytes(std::sync::Arc<PayloadInner>);

#[derive(Default)]
struct PayloadInner {
    bytes: bytes::Bytes,
    digest: std::sync::OnceLock<Digest32>,
}

impl PayloadBytes {
    /// The payload `bytes`.
    pub fn new(bytes: impl Into<bytes::Bytes>) -> Self {
        Self(std::sync::Arc::new(PayloadInner {
            bytes: bytes.into(),
            digest: std::sync::OnceLock::new(),
        }))
    }

    /// [`payload_digest`] of the bytes (computed on first use, then kept by every clone).
    pub fn digest(&self) -> Digest32 {
        *self.0.digest.get_or_init(|| payload_digest(&self.0.bytes))
    }

    /// The bytes, shared.
    pub fn shared(&self) -> bytes::Bytes {
        self.0.bytes.clone()
    }
}

impl From<Vec<u8>> for PayloadBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl std::ops::Deref for PayloadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0.bytes
    }
}

impl PartialEq for PayloadBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes == other.0.bytes
    }
}

impl Eq for PayloadBytes {}

impl std::fmt::Debug for PayloadBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.bytes[..].fmt(f)
    }
}

impl Serialize for PayloadBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.bytes)
    }
}

impl<'de> Deserialize<'de> for PayloadBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = bytes::Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(crate::codec::share_or_copy(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(bytes::Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(v.into())
            }
        }
        Ok(Self::new(d.deserialize_bytes(Visitor)?))
    }
}

impl Bounded for PayloadBytes {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        check_len("block.payload", self.len(), MAX_PAYLOAD_BYTES)
    }
}

/// The digest of a block payload, which the block's header (and so its id) commits to.
pub fn payload_digest(payload: &[u8]) -> Digest32 {
    *payload_hasher().update(payload).finalize().as_bytes()
}

/// The hasher of [`payload_digest`], for payloads read in pieces.
pub fn payload_hasher() -> blake3::Hasher {
    use blake3::hazmat::HasherExt;
    blake3::Hasher::new_from_context_key(&PAYLOAD_DIGEST_KEY)
}

/// [`PAYLOAD_DIGEST_CONTEXT`] hashed once per process (`new_derive_key` would hash it for every
/// block).
static PAYLOAD_DIGEST_KEY: std::sync::LazyLock<blake3::hazmat::ContextKey> =
    std::sync::LazyLock::new(|| blake3::hazmat::hash_derive_key_context(PAYLOAD_DIGEST_CONTEXT));

/// BLAKE3 derive_key context of [`payload_digest`].
pub const PAYLOAD_DIGEST_CONTEXT: &str = "bpci 2026-11 block payload v1";

/// A block with its payload replaced by the payload's digest. A block's id is its header's id,
/// `digest(Domain::Block, chain_id, epoch, bcs(header))`, so a header proves a block's place in
/// the chain without carrying the payload: commit proofs carry headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// See [`Block::parent_id`].
    pub parent_id: BlockId,
    /// See [`Block::round`].
    pub round: Round,
    /// See [`Block::height`].
    pub height: Height,
    /// See [`Block::epoch`].
    pub epoch: Epoch,
    /// See [`Block::author`].
    pub author: ValidatorIndex,
    /// [`payload_digest`] of the block's payload.
    pub payload_digest: Digest32,
    /// See [`Block::parent_qc`].
    pub parent_qc: QuorumCert,
    /// See [`Block::timestamp_ms`].
    pub timestamp_ms: TimeMs,
    /// See [`Block::exec_height`].
    pub exec_height: Height,
    /// See [`Block::exec_root`].
    pub exec_root: Digest32,
    /// See [`Block::evidence`].
    pub evidence: Vec<Evidence>,
}

impl BlockHeader {
    /// The id of the block this is the header of: its canonical encoding is serialized
    /// straight into the hasher (no buffer).
    pub fn id(&self, chain_id: &str) -> BlockId {
        let mut hasher = signing_hasher(Domain::Block, chain_id, self.epoch.0);
        if let Err(e) = bcs::serialize_into(&mut hasher, self) {
            // As in `encode_infallible`: our types always encode; a failure is a bug.
            debug_assert!(false, "encoding a block header failed: {e}");
        }
        BlockId(*hasher.finalize().as_bytes())
    }
}

/// What a vote signs (IBFT "prepare" on a block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteData {
    /// The block voted for.
    pub block_id: BlockId,
    /// Its round.
    pub round: Round,
    /// Its height.
    pub height: Height,
}

impl VoteData {
    /// The digest the voter signs.
    pub fn digest(&self, chain_id: &str, epoch: Epoch) -> Digest32 {
        signing_digest(Domain::Vote, chain_id, epoch.0, &encode_infallible(self))
    }
}

/// A validator's signed vote for a block, sent to the leader of the next round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// What is voted for.
    pub data: VoteData,
    /// The signing epoch.
    pub epoch: Epoch,
    /// Who votes.
    pub voter: ValidatorIndex,
    /// Signature over `data.digest(chain_id, epoch)`.
    pub signature: Signature,
}

/// A quorum certificate: more than 2/3 of the stake voted for one block (the block is *prepared*).
/// `votes` is sorted by strictly increasing validator index: each signer once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCert {
    /// Certified block.
    pub block_id: BlockId,
    /// Its round.
    pub round: Round,
    /// Its height.
    pub height: Height,
    /// The epoch of the signers.
    pub epoch: Epoch,
    /// (signer, signature over the `VoteData`) pairs.
    pub votes: Vec<(ValidatorIndex, Signature)>,
}

impl QuorumCert {
    /// The certificate of the genesis block: round 0, no signatures, valid by definition.
    pub fn genesis(chain_id: &str, epoch: Epoch) -> QuorumCert {
        QuorumCert {
            block_id: Block::genesis(epoch).id(chain_id),
            round: Round(0),
            height: Height(0),
            epoch,
            votes: Vec::new(),
        }
    }

    /// The vote data every signature of this certificate signs.
    pub fn vote_data(&self) -> VoteData {
        VoteData {
            block_id: self.block_id,
            round: self.round,
            height: self.height,
        }
    }
}

/// What a timeout signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutData {
    /// The round given up on.
    pub round: Round,
    /// The round of the signer's highest QC.
    pub high_qc_round: Round,
}

impl TimeoutData {
    /// The digest the voter signs.
    pub fn digest(&self, chain_id: &str, epoch: Epoch) -> Digest32 {
        signing_digest(Domain::Timeout, chain_id, epoch.0, &encode_infallible(self))
    }
}

/// A validator gives up on `round` (broadcast). Carries its highest QC and, if it entered `round`
/// through a TC, that TC, so a node that missed either catches up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeout {
    /// The round given up on.
    pub round: Round,
    /// The signing epoch.
    pub epoch: Epoch,
    /// The signer's highest QC.
    pub high_qc: QuorumCert,
    /// The TC for `round - 1`, if the signer entered `round` through it.
    pub last_tc: Option<TimeoutCert>,
    /// Who times out.
    pub voter: ValidatorIndex,
    /// Signature over `TimeoutData { round, high_qc_round: high_qc.round }`.
    pub signature: Signature,
}

/// More than 2/3 of the stake timed out in `round`: everyone moves to `round + 1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutCert {
    /// The round given up on.
    pub round: Round,
    /// The epoch of the signers.
    pub epoch: Epoch,
    /// (signer, its high_qc round, signature over `TimeoutData`), strictly increasing signer index.
    pub timeouts: Vec<(ValidatorIndex, Round, Signature)>,
}

impl TimeoutCert {
    /// `max(high_qc_rounds)`: a proposal after this TC must extend a QC at least this high.
    pub fn max_high_qc_round(&self) -> Round {
        self.timeouts
            .iter()
            .map(|(_, r, _)| *r)
            .max()
            .unwrap_or_default()
    }
}

/// What a proposal signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalData {
    /// The proposed block.
    pub block_id: BlockId,
    /// Its round.
    pub round: Round,
}

impl ProposalData {
    /// The digest the leader signs.
    pub fn digest(&self, chain_id: &str, epoch: Epoch) -> Digest32 {
        signing_digest(
            Domain::Proposal,
            chain_id,
            epoch.0,
            &encode_infallible(self),
        )
    }
}

/// The leader's signed proposal (IBFT "pre-prepare").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The block; `block.parent_qc` is the QC this round extends.
    pub block: Block,
    /// The TC for `block.round - 1` when the previous round failed.
    pub tc_for_prev_round: Option<TimeoutCert>,
    /// The author's signature over `ProposalData`.
    pub signature: Signature,
}

/// Proof that a validator signed two different things for one round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    /// Two valid votes by one validator in one round for different blocks.
    DoubleVote {
        /// First vote.
        a: Vote,
        /// Second, conflicting vote.
        b: Vote,
    },
    /// Two valid proposals by one leader in one round for different blocks.
    DoubleProposal {
        /// The leader.
        author: ValidatorIndex,
        /// The signing epoch.
        epoch: Epoch,
        /// First proposal's data and signature.
        a: (ProposalData, Signature),
        /// Second proposal's data and signature.
        b: (ProposalData, Signature),
    },
}

impl Evidence {
    /// The offender.
    pub fn offender(&self) -> ValidatorIndex {
        match self {
            Evidence::DoubleVote { a, .. } => a.voter,
            Evidence::DoubleProposal { author, .. } => *author,
        }
    }

    /// The round of the offence.
    pub fn round(&self) -> Round {
        match self {
            Evidence::DoubleVote { a, .. } => a.data.round,
            Evidence::DoubleProposal { a, .. } => a.0.round,
        }
    }
}

/// The proof that a block is committed: its direct child's header (one round later) and that
/// child's QC. A header, not the whole child: the id and the chain links are all it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitProof {
    /// The child block's header, `child.round == committed.round + 1`.
    pub child: BlockHeader,
    /// The QC that certifies `child` (the IBFT "commit" quorum of its parent).
    pub child_qc: QuorumCert,
}

/// Ask a peer for a block and up to `count - 1` of its ancestors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The newest block wanted.
    pub id: BlockId,
    /// How many blocks, walking back through parents.
    pub count: u16,
}

/// Blocks answering a `BlockRequest`, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockResponse {
    /// The blocks, each the parent of the one before it.
    pub blocks: Vec<Block>,
}

/// Ask a peer for committed blocks starting at `from_height` (a node far behind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The first height wanted.
    pub from_height: Height,
}

/// Committed blocks at consecutive heights with the proof that the last one is committed
/// (which commits every ancestor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Consecutive committed blocks, oldest first.
    pub blocks: Vec<Block>,
    /// Proof that the last block is committed.
    pub proof: CommitProof,
}

/// Every message validators exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// IBFT pre-prepare.
    Proposal(Proposal),
    /// IBFT prepare (and, pipelined, the commit vote of the parent).
    Vote(Vote),
    /// View change.
    Timeout(Timeout),
    /// Fetch missing ancestors.
    BlockRequest(BlockRequest),
    /// Missing ancestors.
    BlockResponse(BlockResponse),
    /// Fetch committed history.
    SyncRequest(SyncRequest),
    /// Committed history with its proof.
    SyncResponse(SyncResponse),
    /// Gossiped equivocation evidence.
    Evidence(Evidence),
    /// Client transactions forwarded to the next leader (mempool traffic, not for the core:
    /// the node's ingress stage takes them out before consensus sees them).
    Txs(TxBatch),
}

/// Client transactions one validator forwards to another (see `node::forward`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxBatch {
    /// The transactions, each encoded as one byte string.
    pub txs: Vec<serde_bytes::ByteBuf>,
}

impl Message {
    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Proposal(_) => "proposal",
            Message::Vote(_) => "vote",
            Message::Timeout(_) => "timeout",
            Message::BlockRequest(_) => "block_request",
            Message::BlockResponse(_) => "block_response",
            Message::SyncRequest(_) => "sync_request",
            Message::SyncResponse(_) => "sync_response",
            Message::Evidence(_) => "evidence",
            Message::Txs(_) => "txs",
        }
    }
}

fn qc_bounds(qc: &QuorumCert) -> Result<(), DecodeError> {
    check_len("quorum_cert.votes", qc.votes.len(), MAX_VALIDATORS)
}

fn tc_bounds(tc: &TimeoutCert) -> Result<(), DecodeError> {
    check_len("timeout_cert.timeouts", tc.timeouts.len(), MAX_VALIDATORS)
}

/// The bounds a block and its header share: evidence count and the parent QC.
fn header_bounds(evidence: &[Evidence], parent_qc: &QuorumCert) -> Result<(), DecodeError> {
    check_len("block.evidence", evidence.len(), MAX_EVIDENCE_PER_BLOCK)?;
    qc_bounds(parent_qc)
}

impl Bounded for Block {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        self.payload.check_bounds()?;
        header_bounds(&self.evidence, &self.parent_qc)
    }
}

impl Bounded for BlockHeader {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        header_bounds(&self.evidence, &self.parent_qc)
    }
}

impl Bounded for Message {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        match self {
            Message::Proposal(p) => {
                p.block.check_bounds()?;
                p.tc_for_prev_round.as_ref().map_or(Ok(()), tc_bounds)
            }
            Message::Vote(_) | Message::BlockRequest(_) | Message::SyncRequest(_) => Ok(()),
            Message::Evidence(_) => Ok(()),
            Message::Txs(b) => {
                check_len("txs.txs", b.txs.len(), crate::mempool::MAX_TXS_PER_BLOCK)?;
                b.txs
                    .iter()
                    .try_for_each(|t| check_len("txs.tx", t.len(), crate::mempool::MAX_TX_BYTES))
            }
            Message::Timeout(t) => {
                qc_bounds(&t.high_qc)?;
                t.last_tc.as_ref().map_or(Ok(()), tc_bounds)
            }
            Message::BlockResponse(r) => {
                check_len(
                    "block_response.blocks",
                    r.blocks.len(),
                    MAX_BLOCKS_PER_RESPONSE,
                )?;
                r.blocks.iter().try_for_each(Bounded::check_bounds)
            }
            Message::SyncResponse(r) => {
                check_len(
                    "sync_response.blocks",
                    r.blocks.len(),
                    MAX_BLOCKS_PER_RESPONSE,
                )?;
                r.blocks.iter().try_for_each(Bounded::check_bounds)?;
                r.proof.child.check_bounds()?;
                qc_bounds(&r.proof.child_qc)
            }
        }
    }
}
