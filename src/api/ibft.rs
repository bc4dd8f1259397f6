//! `/api/v1/consensus/ibft/...`: a height in IBFT terms. Pre-prepare is the proposal; prepare
//! is the quorum certificate that certifies the block (carried by its child); commit is the QC
//! of the child one round later that makes it final (the commit proof stored with the batch).
//! Certificates are read from the durable chain: a height not yet durable shows none.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorCode};
use super::rounds::{parse_round_id, round_id, status_of};
use super::view::{NodeView, Phase};
use crate::consensus::{Block, QuorumCert};
use crate::types::Stake;

/// The IBFT phase a height has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IbftPhase {
    /// Proposed, not yet certified.
    PrePrepared,
    /// Certified by a quorum (prepare).
    Prepared,
    /// Final (commit), and possibly executed and durable.
    Committed,
}

impl From<Phase> for IbftPhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Proposed => IbftPhase::PrePrepared,
            Phase::Prepared => IbftPhase::Prepared,
            Phase::Committed | Phase::Executed | Phase::Durable => IbftPhase::Committed,
        }
    }
}

/// One signer of a certificate.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Signer {
    /// Its `validator_id`.
    pub validator_id: String,
    /// Its index in the validator set.
    pub index: u16,
    /// Its stake.
    pub stake: u64,
    /// Its Ed25519 signature over the vote (`ed25519:` and 128 hex digits).
    pub signature: String,
}

/// A quorum certificate as the API shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct QcView {
    /// The certified block's id.
    pub block_id: String,
    /// Its height.
    pub height: u64,
    /// Its consensus round (view).
    pub view: u64,
    /// Who signed.
    pub signers: Vec<Signer>,
    /// Their stake together.
    pub stake: u64,
}

impl QcView {
    pub(crate) fn of(view: &NodeView, qc: &QuorumCert) -> Self {
        let signers: Vec<Signer> = qc
            .votes
            .iter()
            .map(|(i, sig)| Signer {
                validator_id: view.name_of(*i),
                index: i.0,
                stake: view.ctx.validators.stake(*i).0,
                signature: format!("ed25519:{sig}"),
            })
            .collect();
        Self {
            block_id: qc.block_id.to_string(),
            height: qc.height.0,
            view: qc.round.0,
            stake: signers.iter().map(|s| s.stake).sum(),
            signers,
        }
    }
}

/// The certificates of a durable height: (prepare QC, commit QC).
pub(crate) fn certificates(
    view: &NodeView,
    height: u64,
) -> Result<(Option<QuorumCert>, Option<QuorumCert>), ApiError> {
    let Some((at, proof)) = view.chain.proof_covering(height).map_err(ApiError::store)? else {
        return Ok((None, None));
    };
    // The QC certifying `height` is carried by the block above it: the next stored block, or
    // for the top of a batch the proof's child.
    let prepare = if at == height {
        Some(proof.child.parent_qc.clone())
    } else {
        view.chain
            .block(height + 1)
            .map_err(ApiError::store)?
            .map(|b| b.parent_qc)
    };
    Ok((prepare, Some(proof.child_qc)))
}

/// Quorum and fault figures of the validator set.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Thresholds {
    /// Total stake.
    pub total_stake: u64,
    /// The least stake that is a quorum (more than 2/3 of the total).
    pub quorum_stake: u64,
    /// Validators.
    pub validators: usize,
    /// Byzantine validators tolerated by count: (n - 1) / 3.
    pub byzantine_tolerance: usize,
}

pub(crate) fn thresholds(view: &NodeView) -> Thresholds {
    let total = view.ctx.validators.total_stake().0;
    let n = view.ctx.validators.len();
    Thresholds {
        total_stake: total,
        quorum_stake: quorum_stake(&view.ctx.validators),
        validators: n,
        byzantine_tolerance: n.saturating_sub(1) / 3,
    }
}

/// The least stake `s` with `is_quorum(s)`.
pub(crate) fn quorum_stake(set: &crate::consensus::ValidatorSet) -> u64 {
    let total = set.total_stake().0;
    let mut s = (total as u128 * 2 / 3) as u64;
    while !set.is_quorum(Stake(s)) && s < total {
        s += 1;
    }
    s
}

/// A height's IBFT state.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct IbftState {
    /// `round-<height>`.
    pub round_id: String,
    /// The height.
    pub height: u64,
    /// The consensus round (view) of its block.
    pub view: u64,
    /// The phase reached.
    pub phase: IbftPhase,
    /// The proposer's `validator_id`.
    pub proposer: Option<String>,
    /// The block's id.
    pub block_id: Option<String>,
    /// Signers of the prepare QC (durable heights).
    pub prepare_votes: usize,
    /// Their stake.
    pub prepare_stake: u64,
    /// Signers of the commit QC (durable heights).
    pub commit_votes: usize,
    /// Their stake.
    pub commit_stake: u64,
    /// The set's thresholds.
    pub thresholds: Thresholds,
}

/// A height's IBFT state.
#[utoipa::path(get, path = "/api/v1/consensus/ibft/state/{round_id}", operation_id = "ibft_state", tag = "ibft",
    params(("round_id" = String, Path, description = "`round-<height>`")),
    responses(
        (status = 200, body = IbftState, description = "the ibft state"),
        (status = 400, body = ApiError, description = "malformed round id"),
        (status = 404, body = ApiError, description = "no such height here"),
    ))]
pub async fn state(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<IbftState> {
    let height = parse_round_id(&id)?;
    let status = status_of(&view, height)?;
    let (prepare, commit) = certificates(&view, height)?;
    let stake_of = |qc: &Option<QuorumCert>| -> (usize, u64) {
        qc.as_ref().map_or((0, 0), |q| {
            (
                q.votes.len(),
                q.votes
                    .iter()
                    .map(|(i, _)| view.ctx.validators.stake(*i).0)
                    .sum(),
            )
        })
    };
    let (prepare_votes, prepare_stake) = stake_of(&prepare);
    let (commit_votes, commit_stake) = stake_of(&commit);
    Ok(Json(IbftState {
        round_id: status.round_id,
        height,
        view: status.view,
        phase: status.phase.into(),
        proposer: status.proposer,
        block_id: status.block_id,
        prepare_votes,
        prepare_stake,
        commit_votes,
        commit_stake,
        thresholds: thresholds(&view),
    }))
}

/// The votes that decided a height.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct IbftVotes {
    /// `round-<height>`.
    pub round_id: String,
    /// The height.
    pub height: u64,
    /// The QC that prepared (certified) the block; absent until the height is durable here.
    pub prepare: Option<QcView>,
    /// The child's QC that committed it; absent until the height is durable here.
    pub commit: Option<QcView>,
}

/// The signers and signatures of the QCs that prepared and committed a height.
#[utoipa::path(get, path = "/api/v1/consensus/ibft/votes/{round_id}", operation_id = "ibft_votes", tag = "ibft",
    params(("round_id" = String, Path, description = "`round-<height>`")),
    responses(
        (status = 200, body = IbftVotes, description = "the ibft votes"),
        (status = 400, body = ApiError, description = "malformed round id"),
        (status = 404, body = ApiError, description = "no such height here"),
    ))]
pub async fn votes(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<IbftVotes> {
    let height = parse_round_id(&id)?;
    status_of(&view, height)?;
    let (prepare, commit) = certificates(&view, height)?;
    Ok(Json(IbftVotes {
        round_id: round_id(height),
        height,
        prepare: prepare.as_ref().map(|q| QcView::of(&view, q)),
        commit: commit.as_ref().map(|q| QcView::of(&view, q)),
    }))
}

/// A block proposal.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ProposalView {
    /// `round-<height>`.
    pub round_id: String,
    /// The height (the spec's `block_number`).
    pub height: u64,
    /// The consensus round (view) it was proposed in.
    pub view: u64,
    /// Its id (the spec's `block_hash`).
    pub block_id: String,
    /// The parent's id.
    pub parent_id: String,
    /// The proposer's `validator_id`.
    pub proposer: String,
    /// The proposer's index.
    pub proposer_index: u16,
    /// The proposer's clock when it proposed (Unix ms).
    pub timestamp_ms: u64,
    /// Transactions.
    pub transactions: u64,
    /// Payload bytes.
    pub payload_bytes: u64,
    /// The Merkle root of its transactions.
    pub tx_root: Option<String>,
    /// The committed height whose state root it carries.
    pub exec_height: u64,
    /// That state root.
    pub exec_root: String,
    /// Equivocation evidence it carries.
    pub evidence: usize,
    /// The QC of its parent, which it extends.
    pub parent_qc: QcView,
}

pub(crate) fn proposal_view(view: &NodeView, height: u64, b: &Block) -> ProposalView {
    let payload = crate::mempool::Payload::decode(&b.payload).ok();
    ProposalView {
        round_id: round_id(height),
        height,
        view: b.round.0,
        block_id: b.id(&view.ctx.chain_id).to_string(),
        parent_id: b.parent_id.to_string(),
        proposer: view.name_of(b.author),
        proposer_index: b.author.0,
        timestamp_ms: b.timestamp_ms,
        transactions: payload.as_ref().map_or(0, |p| p.len() as u64),
        payload_bytes: b.payload.len() as u64,
        tx_root: payload.map(|p| format!("0x{}", hex::encode(p.tx_root))),
        exec_height: b.exec_height.0,
        exec_root: format!("0x{}", hex::encode(b.exec_root)),
        evidence: b.evidence.len(),
        parent_qc: QcView::of(view, &b.parent_qc),
    }
}

/// The block of `height`: in flight from the live log, else from the store.
pub(crate) fn block_at(view: &NodeView, height: u64) -> Result<Arc<Block>, ApiError> {
    if let Some(b) = view.rounds.get(height).and_then(|e| e.block) {
        return Ok(b);
    }
    view.chain
        .block(height)
        .map_err(ApiError::store)?
        .map(Arc::new)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{}: no block at height {height} here (committed height {})",
                round_id(height),
                view.committed_height().0
            ))
        })
}

/// A height's block proposal (the latest seen while in flight, the committed one after).
#[utoipa::path(get, path = "/api/v1/consensus/ibft/proposal/{round_id}", operation_id = "ibft_proposal", tag = "ibft",
    params(("round_id" = String, Path, description = "`round-<height>`")),
    responses(
        (status = 200, body = ProposalView, description = "the proposal view"),
        (status = 400, body = ApiError, description = "malformed round id"),
        (status = 404, body = ApiError, description = "no such height here"),
    ))]
pub async fn proposal(
    State(view): State<Arc<NodeView>>,
    Path(id): Path<String>,
) -> ApiResult<ProposalView> {
    let height = parse_round_id(&id)?;
    let b = block_at(&view, height)?;
    Ok(Json(proposal_view(&view, height, &b)))
}

/// `POST ibft/vote`: a validator's signed vote (the spec's fields, plus `height`).
#[derive(Clone, Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// The voter's `validator_id`.
    pub validator_id: String,
    /// `Prepare` or `Commit`. One HotStuff vote for a block is both: the prepare of that block
    /// and the commit of its parent; either name is taken and the vote is the same.
    pub vote_type: String,
    /// The block voted for (`0x` and 64 hex digits).
    pub block_hash: String,
    /// The consensus round (view) of that block.
    pub round_number: u64,
    /// Its height.
    pub height: u64,
    /// `ed25519:` and 128 hex digits: the signature over the vote's digest (chain id and epoch
    /// bound in; `GET /api/v1/node` gives both).
    pub signature: String,
}

/// A vote taken.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct VoteAccepted {
    /// The voter's index.
    pub voter: u16,
    /// The block voted for.
    pub block_id: String,
    /// Its round (view).
    pub round_number: u64,
    /// Its height.
    pub height: u64,
    /// What happens next: the vote went to the consensus core, which counts it if its round
    /// is current and this node leads the next one (as a vote arriving over QUIC).
    pub note: String,
}

fn hex_array<const N: usize>(what: &str, s: &str, prefix: &str) -> Result<[u8; N], ApiError> {
    let digits = s.strip_prefix(prefix).ok_or_else(|| {
        ApiError::bad_request(format!("{what} must start with `{prefix}`, got {s:?}"))
    })?;
    hex::decode(digits)
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what} must be `{prefix}` and {} hex digits",
                2 * N
            ))
        })
}

/// Checks a vote as one arriving over QUIC (structure, membership, epoch, signature) and hands
/// it to the consensus core. Needs the operator token.
#[utoipa::path(post, path = "/api/v1/consensus/ibft/vote", operation_id = "ibft_vote", tag = "ibft",
    request_body = VoteRequest,
    security(("operator_token" = [])),
    responses(
        (status = 202, body = VoteAccepted, description = "checked and handed to the core"),
        (status = 400, body = ApiError, description = "malformed, not a member, or a signature that does not verify (ByzantineFault)"),
        (status = 401, body = ApiError, description = "no or wrong operator token"),
        (status = 503, body = ApiError, description = "the consensus stage's queue is full; retry"),
    ))]
pub async fn vote(
    State(view): State<Arc<NodeView>>,
    _auth: super::auth::Operator,
    body: Result<Json<VoteRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<VoteAccepted>), ApiError> {
    use crate::consensus::{Message, Vote, VoteData};
    use crate::types::{BlockId, Height, Round, ValidatorIndex};
    let Json(v) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !matches!(v.vote_type.as_str(), "Prepare" | "Commit") {
        return Err(ApiError::bad_request(format!(
            "vote_type must be Prepare or Commit, got {:?}",
            v.vote_type
        )));
    }
    let voter = view
        .validator_ids
        .iter()
        .position(|x| *x == v.validator_id)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "validator_id {:?} is not in the validator set",
                v.validator_id
            ))
        })?;
    let block_id = BlockId(hex_array::<32>("block_hash", &v.block_hash, "0x")?);
    let sig = hex_array::<64>("signature", &v.signature, "ed25519:")?;
    let vote = Vote {
        data: VoteData {
            block_id,
            round: Round(v.round_number),
            height: Height(v.height),
        },
        epoch: view.ctx.epoch(),
        voter: ValidatorIndex(voter as u16),
        signature: crate::crypto::Signature::from_bytes(sig),
    };
    let prepared = view.ctx.prepare(Message::Vote(vote)).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBlockProposal,
            format!("vote refused: {e}"),
        )
    })?;
    let verified = prepared.verify().map_err(|e| {
        ApiError::new(
            ErrorCode::ByzantineFault,
            format!("vote refused: {e} (signed over another chain, epoch or vote?)"),
        )
    })?;
    let Some(core) = &view.core_in else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "this node takes no votes over HTTP",
        ));
    };
    if core
        .try_send((ValidatorIndex(voter as u16), verified))
        .is_err()
    {
        return Err(ApiError::new(
            ErrorCode::Busy,
            "the consensus stage's queue is full; retry",
        ));
    }
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(VoteAccepted {
            voter: voter as u16,
            block_id: block_id.to_string(),
            round_number: v.round_number,
            height: v.height,
            note: "handed to the consensus core, which counts it as a vote from QUIC".into(),
        }),
    ))
}
