//! The border where network messages become checked messages.
//!
//! [`EpochContext::prepare`] runs every structural check of a message (epoch, membership, distinct
//! signers, quorum of stake, linkage of certificates to blocks) and lists every signature the message
//! carries as a [`SigItem`]. The caller verifies the items (one ZIP-215 batch, possibly across many
//! messages) and only then turns the [`Prepared`] message into a [`Verified`] one, which is the only
//! kind the core accepts. Code behind this border never re-checks.
//!
//! Blocks inside `BlockResponse`/`SyncResponse` are authenticated by hash: the core accepts a fetched
//! block only if its id is one a verified certificate named, or the parent of one it accepted. A QC
//! from more than 2/3 of the stake includes an honest voter, who checked that block's own parent QC,
//! so certificates inside such blocks need no second signature check. A `SyncResponse` is proven by
//! the one QC of its `CommitProof`.

use crate::crypto::{verify_key_bytes, BatchVerifier, Digest32, Signature};
use crate::types::{BlockId, Epoch, Height, Round, Stake, ValidatorIndex};

use super::messages::{
    Block, BlockHeader, Evidence, Message, ProposalData, QuorumCert, TimeoutCert, TimeoutData,
};
use super::validators::ValidatorSet;

/// One signature to verify.
#[derive(Clone, Debug)]
pub struct SigItem {
    /// The signer's key bytes.
    pub key: [u8; 32],
    /// The signed digest.
    pub digest: Digest32,
    /// The signature.
    pub signature: Signature,
}

/// Why a certificate (QC or TC) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// Signed in another epoch.
    #[error("certificate of epoch {got:?}, expected {expected:?}")]
    WrongEpoch {
        /// Our epoch.
        expected: Epoch,
        /// The certificate's.
        got: Epoch,
    },
    /// A signer that is not in the validator set.
    #[error("signer {0:?} is not a member of the validator set")]
    NotMember(ValidatorIndex),
    /// The same signer twice.
    #[error("signer {0:?} appears more than once")]
    DuplicateSigner(ValidatorIndex),
    /// Signers not in strictly increasing order (the canonical form).
    #[error("signers are not in increasing index order")]
    Unsorted,
    /// The signers hold 2/3 of the stake or less.
    #[error("signers hold {have:?} of {total:?} stake: not more than 2/3")]
    InsufficientStake {
        /// Signers' stake.
        have: Stake,
        /// Total stake.
        total: Stake,
    },
    /// A round-0 certificate that is not the genesis certificate.
    #[error("a round-0 certificate must be the genesis certificate")]
    BadGenesis,
    /// A signature that does not verify.
    #[error("signature of {0:?} does not verify")]
    BadSignature(ValidatorIndex),
}

/// Why a message was refused at the border.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// A certificate inside the message is invalid.
    #[error("{what}: {source}")]
    Cert {
        /// Which certificate.
        what: &'static str,
        /// Why.
        #[source]
        source: CertError,
    },
    /// Signed in another epoch.
    #[error("{what} of epoch {got:?}, expected {expected:?}")]
    WrongEpoch {
        /// Which part.
        what: &'static str,
        /// Our epoch.
        expected: Epoch,
        /// The message's.
        got: Epoch,
    },
    /// Signed by a validator that is not in the set.
    #[error("{what} by non-member {who:?}")]
    NotMember {
        /// Which part.
        what: &'static str,
        /// The claimed signer.
        who: ValidatorIndex,
    },
    /// Fields that contradict each other (a QC not for the parent, a height that skips, ...).
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which part.
        what: &'static str,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A signature that does not verify.
    #[error("bad signature on {what}")]
    BadSignature {
        /// Which signature.
        what: &'static str,
    },
}

/// What every check needs to know about the chain and epoch.
#[derive(Clone, Debug)]
pub struct EpochContext {
    /// The chain's id, bound into every signature.
    pub chain_id: String,
    /// The validators of this epoch.
    pub validators: ValidatorSet,
    /// The genesis block's id.
    pub genesis_id: BlockId,
    /// Test-only: one rule deliberately broken (see [`super::BrokenRule`]).
    #[cfg(feature = "break-rules")]
    #[doc(hidden)]
    pub broken_rule: Option<super::BrokenRule>,
}

/// A message that passed every structural check; its signatures are listed, not yet verified.
#[derive(Debug)]
pub struct Prepared {
    msg: Message,
    ids: Vec<BlockId>,
    items: Vec<SigItem>,
    labels: Vec<&'static str>,
}

/// A message whose every structural check and signature passed. Only [`EpochContext::prepare`]
/// followed by a signature check produces one.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The message.
    pub msg: Message,
    /// Ids of the blocks it carries: proposal `[block]`; responses: each block in order, and for a
    /// `SyncResponse` the proof's child last.
    pub ids: Vec<BlockId>,
}

impl Prepared {
    /// The message (structurally checked, signatures not yet verified).
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// Ids of the blocks it carries (see [`Verified::ids`]).
    pub fn ids(&self) -> &[BlockId] {
        &self.ids
    }

    /// The signatures to verify, in order.
    pub fn items(&self) -> &[SigItem] {
        &self.items
    }

    /// The message, once the caller has verified every item of [`Self::items`] (for example in one
    /// batch with other messages). Calling this without that check breaks the core's contract.
    pub fn into_verified_after_check(self) -> Verified {
        Verified {
            msg: self.msg,
            ids: self.ids,
        }
    }

    /// Verifies this message's signatures in one ZIP-215 batch (single checks find the bad one).
    pub fn verify(self) -> Result<Verified, MessageError> {
        if !self.items.is_empty() {
            let mut batch = BatchVerifier::with_capacity(self.items.len());
            for it in &self.items {
                batch.queue(&it.key, &it.digest, &it.signature);
            }
            if let Err(failure) = batch.verify(&mut rand::thread_rng()) {
                let first = failure.invalid.first().copied().unwrap_or(0);
                return Err(MessageError::BadSignature {
                    what: self.labels.get(first).copied().unwrap_or("signature"),
                });
            }
        }
        Ok(self.into_verified_after_check())
    }

    /// The label of item `i` (which part of the message it signs).
    pub fn label(&self, i: usize) -> &'static str {
        self.labels.get(i).copied().unwrap_or("signature")
    }
}

struct Collector<'a> {
    ctx: &'a EpochContext,
    items: Vec<SigItem>,
    labels: Vec<&'static str>,
}

impl Collector<'_> {
    fn push(&mut self, label: &'static str, who: ValidatorIndex, digest: Digest32, sig: Signature) {
        if let Some(v) = self.ctx.validators.member(who) {
            self.items.push(SigItem {
                key: v.key.to_bytes(),
                digest,
                signature: sig,
            });
            self.labels.push(label);
        }
    }
}

impl EpochContext {
    /// A context without broken rules.
    pub fn new(chain_id: impl Into<String>, validators: ValidatorSet) -> Self {
        let chain_id = chain_id.into();
        let genesis_id = Block::genesis(validators.epoch()).id(&chain_id);
        Self {
            chain_id,
            validators,
            genesis_id,
            #[cfg(feature = "break-rules")]
            broken_rule: None,
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.validators.epoch()
    }

    /// The genesis certificate of this epoch.
    pub fn genesis_qc(&self) -> QuorumCert {
        QuorumCert {
            block_id: self.genesis_id,
            round: Round(0),
            height: crate::types::Height(0),
            epoch: self.epoch(),
            votes: Vec::new(),
        }
    }

    /// Checks signer order, membership, distinctness and stake; returns the stake.
    fn signer_stake(
        &self,
        signers: impl Iterator<Item = ValidatorIndex>,
    ) -> Result<Stake, CertError> {
        let mut stake: u64 = 0;
        let mut prev: Option<ValidatorIndex> = None;
        for who in signers {
            let member = self
                .validators
                .member(who)
                .ok_or(CertError::NotMember(who))?;
            if let Some(p) = prev {
                if who == p {
                    // Rule "signers distinct" (DESIGN §3): one signer counts once.
                    if !super::broken!(self, CountDuplicateSigner) {
                        return Err(CertError::DuplicateSigner(who));
                    }
                } else if who < p {
                    return Err(CertError::Unsorted);
                }
            }
            prev = Some(who);
            stake = stake.saturating_add(member.stake.0);
        }
        let stake = Stake(stake);
        if !self.validators.is_quorum(stake) {
            return Err(CertError::InsufficientStake {
                have: stake,
                total: self.validators.total_stake(),
            });
        }
        Ok(stake)
    }

    /// Structural checks of a QC (rule "every QC is checked"); collects its signatures.
    fn check_qc(&self, qc: &QuorumCert, c: &mut Collector<'_>) -> Result<(), CertError> {
        if qc.epoch != self.epoch() {
            return Err(CertError::WrongEpoch {
                expected: self.epoch(),
                got: qc.epoch,
            });
        }
        if qc.round == Round(0) {
            return if *qc == self.genesis_qc() {
                Ok(())
            } else {
                Err(CertError::BadGenesis)
            };
        }
        self.signer_stake(qc.votes.iter().map(|(v, _)| *v))?;
        let digest = qc.vote_data().digest(&self.chain_id, qc.epoch);
        for (who, sig) in &qc.votes {
            c.push("quorum_cert vote", *who, digest, *sig);
        }
        Ok(())
    }

    /// Structural checks of a TC; collects its signatures.
    fn check_tc(&self, tc: &TimeoutCert, c: &mut Collector<'_>) -> Result<(), CertError> {
        if tc.epoch != self.epoch() {
            return Err(CertError::WrongEpoch {
                expected: self.epoch(),
                got: tc.epoch,
            });
        }
        self.signer_stake(tc.timeouts.iter().map(|(v, _, _)| *v))?;
        for (who, high_qc_round, sig) in &tc.timeouts {
            let data = TimeoutData {
                round: tc.round,
                high_qc_round: *high_qc_round,
            };
            c.push(
                "timeout_cert timeout",
                *who,
                data.digest(&self.chain_id, tc.epoch),
                *sig,
            );
        }
        Ok(())
    }

    /// Fully verifies a QC on its own (structure and signatures, one batch).
    pub fn verify_qc(&self, qc: &QuorumCert) -> Result<(), CertError> {
        let mut c = self.collector();
        self.check_qc(qc, &mut c)?;
        for (i, it) in c.items.iter().enumerate() {
            if verify_key_bytes(&it.key, &it.digest, &it.signature).is_err() {
                return Err(CertError::BadSignature(qc.votes[i].0));
            }
        }
        Ok(())
    }

    fn collector(&self) -> Collector<'_> {
        Collector {
            ctx: self,
            items: Vec::new(),
            labels: Vec::new(),
        }
    }

    fn member(&self, what: &'static str, who: ValidatorIndex) -> Result<(), MessageError> {
        match self.validators.member(who) {
            Some(_) => Ok(()),
            None => Err(MessageError::NotMember { what, who }),
        }
    }

    fn epoch_is(&self, what: &'static str, got: Epoch) -> Result<(), MessageError> {
        if got != self.epoch() {
            return Err(MessageError::WrongEpoch {
                what,
                expected: self.epoch(),
                got,
            });
        }
        Ok(())
    }

    /// Structure of a block on its own: epoch, author, and that its QC certifies its parent.
    fn check_block_shape(&self, b: &Block) -> Result<(), MessageError> {
        self.check_shape(
            b.epoch,
            b.author,
            &b.parent_id,
            &b.parent_qc,
            b.round,
            b.height,
        )
    }

    fn check_header_shape(&self, h: &BlockHeader) -> Result<(), MessageError> {
        self.check_shape(
            h.epoch,
            h.author,
            &h.parent_id,
            &h.parent_qc,
            h.round,
            h.height,
        )
    }

    fn check_shape(
        &self,
        epoch: Epoch,
        author: ValidatorIndex,
        parent_id: &BlockId,
        parent_qc: &QuorumCert,
        round: Round,
        height: Height,
    ) -> Result<(), MessageError> {
        let what = "block";
        self.epoch_is(what, epoch)?;
        self.member(what, author)?;
        let bad = |why| Err(MessageError::Malformed { what, why });
        if parent_qc.block_id != *parent_id {
            return bad("parent_qc does not certify parent_id");
        }
        if parent_qc.round >= round {
            return bad("round not above parent_qc round");
        }
        if parent_qc.height.next() != height {
            return bad("height is not parent height + 1");
        }
        Ok(())
    }

    fn check_evidence(&self, e: &Evidence, c: &mut Collector<'_>) -> Result<(), MessageError> {
        let what = "evidence";
        let bad = |why| Err(MessageError::Malformed { what, why });
        match e {
            Evidence::DoubleVote { a, b } => {
                if a.voter != b.voter || a.data.round != b.data.round {
                    return bad("votes of different voters or rounds");
                }
                if a.data.block_id == b.data.block_id {
                    return bad("votes for the same block");
                }
                self.epoch_is(what, a.epoch)?;
                self.epoch_is(what, b.epoch)?;
                self.member(what, a.voter)?;
                c.push(
                    what,
                    a.voter,
                    a.data.digest(&self.chain_id, a.epoch),
                    a.signature,
                );
                c.push(
                    what,
                    b.voter,
                    b.data.digest(&self.chain_id, b.epoch),
                    b.signature,
                );
            }
            Evidence::DoubleProposal {
                author,
                epoch,
                a,
                b,
            } => {
                if a.0.round != b.0.round || a.0.block_id == b.0.block_id {
                    return bad("proposals of different rounds or the same block");
                }
                self.epoch_is(what, *epoch)?;
                self.member(what, *author)?;
                c.push(what, *author, a.0.digest(&self.chain_id, *epoch), a.1);
                c.push(what, *author, b.0.digest(&self.chain_id, *epoch), b.1);
            }
        }
        Ok(())
    }

    /// Runs every structural check of `msg` and lists its signatures.
    pub fn prepare(&self, msg: Message) -> Result<Prepared, MessageError> {
        let mut c = self.collector();
        let mut ids = Vec::new();
        let cert = |what: &'static str| move |source| MessageError::Cert { what, source };
        match &msg {
            Message::Proposal(p) => {
                let b = &p.block;
                self.check_block_shape(b)?;
                self.check_qc(&b.parent_qc, &mut c)
                    .map_err(cert("proposal parent_qc"))?;
                if let Some(tc) = &p.tc_for_prev_round {
                    if tc.round.next() != b.round {
                        return Err(MessageError::Malformed {
                            what: "proposal",
                            why: "tc is not for the previous round",
                        });
                    }
                    self.check_tc(tc, &mut c).map_err(cert("proposal tc"))?;
                }
                for e in &b.evidence {
                    self.check_evidence(e, &mut c)?;
                }
                let id = b.id(&self.chain_id);
                let data = ProposalData {
                    block_id: id,
                    round: b.round,
                };
                c.push(
                    "proposal",
                    b.author,
                    data.digest(&self.chain_id, b.epoch),
                    p.signature,
                );
                ids.push(id);
            }
            Message::Vote(v) => {
                self.epoch_is("vote", v.epoch)?;
                self.member("vote", v.voter)?;
                if v.data.round == Round(0) {
                    return Err(MessageError::Malformed {
                        what: "vote",
                        why: "round 0 is genesis",
                    });
                }
                c.push(
                    "vote",
                    v.voter,
                    v.data.digest(&self.chain_id, v.epoch),
                    v.signature,
                );
            }
            Message::Timeout(t) => {
                self.epoch_is("timeout", t.epoch)?;
                self.member("timeout", t.voter)?;
                if t.high_qc.round >= t.round {
                    return Err(MessageError::Malformed {
                        what: "timeout",
                        why: "high_qc round not below the timeout round",
                    });
                }
                self.check_qc(&t.high_qc, &mut c)
                    .map_err(cert("timeout high_qc"))?;
                if let Some(tc) = &t.last_tc {
                    if tc.round.next() != t.round {
                        return Err(MessageError::Malformed {
                            what: "timeout",
                            why: "last_tc is not for the previous round",
                        });
                    }
                    self.check_tc(tc, &mut c).map_err(cert("timeout last_tc"))?;
                }
                let data = TimeoutData {
                    round: t.round,
                    high_qc_round: t.high_qc.round,
                };
                c.push(
                    "timeout",
                    t.voter,
                    data.digest(&self.chain_id, t.epoch),
                    t.signature,
                );
            }
            Message::BlockRequest(_) | Message::SyncRequest(_) => {}
            Message::BlockResponse(r) => {
                for (i, b) in r.blocks.iter().enumerate() {
                    self.check_block_shape(b)?;
                    let id = b.id(&self.chain_id);
                    if let Some(newer) = i.checked_sub(1).and_then(|j| r.blocks.get(j)) {
                        if newer.parent_id != id {
                            return Err(MessageError::Malformed {
                                what: "block_response",
                                why: "blocks are not a parent chain",
                            });
                        }
                    }
                    ids.push(id);
                }
            }
            Message::SyncResponse(r) => {
                let mut prev: Option<(&Block, BlockId)> = None;
                for b in &r.blocks {
                    self.check_block_shape(b)?;
                    if let Some((p, pid)) = prev {
                        if b.parent_id != pid || b.height != p.height.next() {
                            return Err(MessageError::Malformed {
                                what: "sync_response",
                                why: "blocks are not consecutive",
                            });
                        }
                    }
                    let id = b.id(&self.chain_id);
                    ids.push(id);
                    prev = Some((b, id));
                }
                let child = &r.proof.child;
                self.check_header_shape(child)?;
                let Some((last, last_id)) = prev else {
                    return Err(MessageError::Malformed {
                        what: "sync_response",
                        why: "no blocks",
                    });
                };
                // Rule "commit" (2-chain): the child is the next round and certified.
                if child.parent_id != last_id || child.round != last.round.next() {
                    return Err(MessageError::Malformed {
                        what: "sync_response",
                        why: "proof child is not the next-round child of the last block",
                    });
                }
                let child_id = child.id(&self.chain_id);
                if r.proof.child_qc.block_id != child_id
                    || r.proof.child_qc.round != child.round
                    || r.proof.child_qc.height != child.height
                {
                    return Err(MessageError::Malformed {
                        what: "sync_response",
                        why: "proof QC does not certify the child",
                    });
                }
                self.check_qc(&r.proof.child_qc, &mut c)
                    .map_err(cert("sync_response proof"))?;
                ids.push(child_id);
            }
            Message::Evidence(e) => self.check_evidence(e, &mut c)?,
            Message::Txs(_) => {
                return Err(MessageError::Malformed {
                    what: "txs",
                    why: "forwarded transactions are mempool traffic, not for the core",
                })
            }
        }
        Ok(Prepared {
            msg,
            ids,
            items: c.items,
            labels: c.labels,
        })
    }
}
