//! Table-driven tests of every rule of the core and of certificate checks.

use std::sync::Arc;

use super::*;
use crate::crypto::Keypair;
use crate::types::{BlockId, Epoch, Height, Round, Stake, ValidatorIndex};

const CHAIN: &str = "bpci-test";

struct Fx {
    keys: Vec<Keypair>,
    ctx: Arc<EpochContext>,
}

struct TestApp;

impl App for TestApp {
    fn make_payload(&mut self, height: Height, round: Round, _: Option<&[Arc<Block>]>) -> Vec<u8> {
        format!("h{}r{}", height.0, round.0).into_bytes()
    }
    fn validate_payload(&self, block: &Block) -> Result<(), String> {
        if *block.payload == b"invalid"[..] {
            return Err("invalid payload".into());
        }
        Ok(())
    }
}

fn v(i: u16) -> ValidatorIndex {
    ValidatorIndex(i)
}

impl Fx {
    fn new(n: usize) -> Self {
        let keys: Vec<Keypair> = (0..n)
            .map(|i| Keypair::from_seed(&[i as u8 + 7; 32]))
            .collect();
        let set = ValidatorSet::new(
            Epoch(1),
            keys.iter()
                .map(|k| Validator {
                    key: k.public(),
                    stake: Stake(10),
                })
                .collect(),
        )
        .unwrap();
        Self {
            keys,
            ctx: Arc::new(EpochContext::new(CHAIN, set)),
        }
    }

    fn genesis_qc(&self) -> QuorumCert {
        self.ctx.genesis_qc()
    }

    fn block(
        &self,
        author: u16,
        round: u64,
        parent_qc: &QuorumCert,
        payload: &[u8],
    ) -> (Block, BlockId) {
        let b = Block {
            parent_id: parent_qc.block_id,
            round: Round(round),
            height: parent_qc.height.next(),
            epoch: Epoch(1),
            author: v(author),
            payload: payload.to_vec().into(),
            parent_qc: parent_qc.clone(),
            timestamp_ms: 0,
            exec_height: Height(0),
            exec_root: [0; 32],
            evidence: vec![],
        };
        let id = b.id(CHAIN);
        (b, id)
    }

    fn proposal(&self, b: &Block, tc: Option<TimeoutCert>) -> Message {
        let id = b.id(CHAIN);
        let data = ProposalData {
            block_id: id,
            round: b.round,
        };
        Message::Proposal(Proposal {
            block: b.clone(),
            tc_for_prev_round: tc,
            signature: self.keys[b.author.as_usize()].sign(&data.digest(CHAIN, Epoch(1))),
        })
    }

    fn vote(&self, voter: u16, b: &Block, id: BlockId) -> Vote {
        let data = VoteData {
            block_id: id,
            round: b.round,
            height: b.height,
        };
        Vote {
            data,
            epoch: Epoch(1),
            voter: v(voter),
            signature: self.keys[voter as usize].sign(&data.digest(CHAIN, Epoch(1))),
        }
    }

    fn qc(&self, b: &Block, id: BlockId, signers: &[u16]) -> QuorumCert {
        QuorumCert {
            block_id: id,
            round: b.round,
            height: b.height,
            epoch: Epoch(1),
            votes: signers
                .iter()
                .map(|s| (v(*s), self.vote(*s, b, id).signature))
                .collect(),
        }
    }

    fn tc(&self, round: u64, entries: &[(u16, u64)]) -> TimeoutCert {
        TimeoutCert {
            round: Round(round),
            epoch: Epoch(1),
            timeouts: entries
                .iter()
                .map(|(s, hq)| {
                    let d = TimeoutData {
                        round: Round(round),
                        high_qc_round: Round(*hq),
                    };
                    (
                        v(*s),
                        Round(*hq),
                        self.keys[*s as usize].sign(&d.digest(CHAIN, Epoch(1))),
                    )
                })
                .collect(),
        }
    }

    fn verified(&self, msg: Message) -> Verified {
        self.ctx.prepare(msg).unwrap().verify().unwrap()
    }

    fn core(&self, me: u16, store: MemStorage) -> Core<MemStorage, TestApp> {
        let cfg = CoreConfig {
            me: v(me),
            round_timeout_ms_base: 1000,
            round_timeout_ms_max: 8000,
        };
        Core::new(
            Arc::clone(&self.ctx),
            cfg,
            self.keys[me as usize].clone(),
            store,
            TestApp,
            0,
        )
        .unwrap()
    }
}

fn votes_sent(actions: &[Action]) -> Vec<(ValidatorIndex, Vote)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to,
                msg: Message::Vote(v),
            } => Some((*to, v.clone())),
            _ => None,
        })
        .collect()
}

fn commits(actions: &[Action]) -> Vec<Height> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Committed(b) => {
                Some(b.blocks.iter().map(|(_, b)| b.height).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

// ---------------------------------------------------------------- certificates

#[test]
fn certificate_checks() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b, id) = fx.block(1, 1, &g, b"x");
    let good = fx.qc(&b, id, &[0, 1, 2]);
    let mut dup = fx.qc(&b, id, &[0, 1]);
    dup.votes.push(dup.votes[1]);
    let mut non_member = fx.qc(&b, id, &[0, 1, 2]);
    non_member.votes[2].0 = v(9);
    let little = fx.qc(&b, id, &[0, 1]);
    let mut bad_sig = fx.qc(&b, id, &[0, 1, 2]);
    bad_sig.votes[1].1 = bad_sig.votes[0].1;
    let mut wrong_epoch = fx.qc(&b, id, &[0, 1, 2]);
    wrong_epoch.epoch = Epoch(2);
    let other_chain = {
        let data = VoteData {
            block_id: id,
            round: b.round,
            height: b.height,
        };
        QuorumCert {
            votes: (0..3u16)
                .map(|s| {
                    (
                        v(s),
                        fx.keys[s as usize].sign(&data.digest("another-chain", Epoch(1))),
                    )
                })
                .collect(),
            ..good.clone()
        }
    };
    let mut unsorted = fx.qc(&b, id, &[0, 1, 2]);
    unsorted.votes.swap(0, 2);
    let mut fake_genesis = g.clone();
    fake_genesis.block_id = id;

    let table: Vec<(&str, QuorumCert, Result<(), CertError>)> = vec![
        ("valid quorum", good, Ok(())),
        ("genesis", g, Ok(())),
        (
            "duplicate signer",
            dup,
            Err(CertError::DuplicateSigner(v(1))),
        ),
        ("non-member", non_member, Err(CertError::NotMember(v(9)))),
        (
            "too little stake",
            little,
            Err(CertError::InsufficientStake {
                have: Stake(20),
                total: Stake(40),
            }),
        ),
        ("bad signature", bad_sig, Err(CertError::BadSignature(v(1)))),
        (
            "wrong epoch",
            wrong_epoch,
            Err(CertError::WrongEpoch {
                expected: Epoch(1),
                got: Epoch(2),
            }),
        ),
        (
            "signed for another chain",
            other_chain,
            Err(CertError::BadSignature(v(0))),
        ),
        ("unsorted signers", unsorted, Err(CertError::Unsorted)),
        (
            "round-0 that is not genesis",
            fake_genesis,
            Err(CertError::BadGenesis),
        ),
    ];
    for (name, qc, want) in table {
        assert_eq!(fx.ctx.verify_qc(&qc), want, "{name}");
    }
}

#[test]
fn border_checks_of_messages() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b, id) = fx.block(1, 1, &g, b"x");
    let mut vote = fx.vote(0, &b, id);
    vote.voter = v(7);
    let mut wrong_epoch_vote = fx.vote(0, &b, id);
    wrong_epoch_vote.epoch = Epoch(3);
    let mut bad_sig_vote = fx.vote(0, &b, id);
    bad_sig_vote.signature = fx.vote(1, &b, id).signature;
    let mut skip_height = b.clone();
    skip_height.height = Height(5);
    type Case = (&'static str, Message, fn(&MessageError) -> bool);
    let table: Vec<Case> = vec![
        ("vote by non-member", Message::Vote(vote), |e| {
            matches!(e, MessageError::NotMember { .. })
        }),
        (
            "vote of another epoch",
            Message::Vote(wrong_epoch_vote),
            |e| matches!(e, MessageError::WrongEpoch { .. }),
        ),
        (
            "vote with another's signature",
            Message::Vote(bad_sig_vote),
            |e| matches!(e, MessageError::BadSignature { what: "vote" }),
        ),
        (
            "block skipping heights",
            fx.proposal(&skip_height, None),
            |e| matches!(e, MessageError::Malformed { .. }),
        ),
    ];
    for (name, msg, want) in table {
        let got = fx.ctx.prepare(msg).and_then(|p| p.verify());
        match got {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert!(want(&e), "{name}: unexpected {e:?}"),
        }
    }
}

// ---------------------------------------------------------------- vote rule

#[test]
fn vote_rule_table() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    // Round 1 blocks by the leader (v1) and a non-leader (v2).
    let (b1, _) = fx.block(1, 1, &g, b"ok");
    let (b1_other, _) = fx.block(2, 1, &g, b"ok");
    let (b1_invalid, _) = fx.block(1, 1, &g, b"invalid");
    // Round 2 (leader v2) extending genesis without a TC: skips a round, refused.
    let (b2_skip, _) = fx.block(2, 2, &g, b"ok");
    let tc_low = fx.tc(1, &[(0, 0), (1, 0), (3, 0)]);
    let table: Vec<(&str, Message, bool)> = vec![
        (
            "leader's proposal extending the previous round's QC",
            fx.proposal(&b1, None),
            true,
        ),
        (
            "proposal by a non-leader",
            fx.proposal(&b1_other, None),
            false,
        ),
        (
            "payload refused by the application hook",
            fx.proposal(&b1_invalid, None),
            false,
        ),
        (
            "round skipped without a TC",
            fx.proposal(&b2_skip, None),
            false,
        ),
        (
            "round skipped with a TC whose high_qc rounds the QC covers",
            fx.proposal(&b2_skip, Some(tc_low)),
            true,
        ),
    ];
    for (name, msg, expect_vote) in table {
        let mut core = fx.core(0, MemStorage::default());
        core.start(0);
        let acts = core.handle_message(v(3), fx.verified(msg), 1);
        let votes = votes_sent(&acts);
        assert_eq!(!votes.is_empty(), expect_vote, "{name}: {acts:?}");
        if let Some((to, vote)) = votes.first() {
            assert_eq!(
                *to,
                fx.ctx.validators.leader(vote.data.round.next()),
                "{name}: vote goes to the next leader"
            );
            let persisted = core.storage().load_safety().unwrap().unwrap();
            assert_eq!(
                persisted.last_voted_round, vote.data.round,
                "{name}: durable before sent"
            );
            assert_eq!(persisted.last_vote.as_ref(), Some(vote));
        }
    }
}

#[test]
fn tc_justification_must_cover_highest_qc() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b1, id1) = fx.block(1, 1, &g, b"a");
    let qc1 = fx.qc(&b1, id1, &[0, 1, 2]);
    // TC for round 2 says someone holds a QC of round 1; a round-3 proposal on genesis is refused.
    let tc = fx.tc(2, &[(0, 1), (1, 0), (2, 0)]);
    let (b3_low, _) = fx.block(3, 3, &g, b"low");
    let (b3_ok, _) = fx.block(3, 3, &qc1, b"ok");
    for (name, b, want) in [
        ("qc below tc high_qc", &b3_low, false),
        ("qc at tc high_qc", &b3_ok, true),
    ] {
        let mut core = fx.core(0, MemStorage::default());
        core.start(0);
        core.handle_message(v(1), fx.verified(fx.proposal(&b1, None)), 1);
        let acts = core.handle_message(v(3), fx.verified(fx.proposal(b, Some(tc.clone()))), 2);
        assert_eq!(!votes_sent(&acts).is_empty(), want, "{name}");
    }
}

#[test]
fn at_most_one_vote_per_round_and_equivocation_is_evidence() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (a, _) = fx.block(1, 1, &g, b"a");
    let (b, _) = fx.block(1, 1, &g, b"b");
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    let first = core.handle_message(v(1), fx.verified(fx.proposal(&a, None)), 1);
    assert_eq!(votes_sent(&first).len(), 1);
    let second = core.handle_message(v(1), fx.verified(fx.proposal(&b, None)), 2);
    assert!(votes_sent(&second).is_empty(), "voted twice in round 1");
    assert!(
        second
            .iter()
            .any(|a| matches!(a, Action::Evidence(Evidence::DoubleProposal { .. }))),
        "double proposal not reported"
    );
}

#[test]
fn no_vote_leaves_when_storage_fails() {
    let fx = Fx::new(4);
    let (b1, _) = fx.block(1, 1, &fx.genesis_qc(), b"a");
    let mut store = MemStorage::default();
    store.fail_writes = true;
    let mut core = fx.core(0, store);
    core.start(0);
    let acts = core.handle_message(v(1), fx.verified(fx.proposal(&b1, None)), 1);
    assert!(votes_sent(&acts).is_empty());
    assert_eq!(core.stats().storage_failures, 1);
}

#[test]
fn restarted_node_resends_the_same_vote_never_another() {
    let fx = Fx::new(4);
    let (a, _) = fx.block(1, 1, &fx.genesis_qc(), b"a");
    let (b, _) = fx.block(1, 1, &fx.genesis_qc(), b"b");
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    let before = votes_sent(&core.handle_message(v(1), fx.verified(fx.proposal(&a, None)), 1));
    let store = core.into_storage();
    // After the crash, the other block of the same round gets no vote ...
    let mut core = fx.core(0, store.clone());
    core.start(5);
    assert!(
        votes_sent(&core.handle_message(v(1), fx.verified(fx.proposal(&b, None)), 6)).is_empty()
    );
    // ... and the same block gets exactly the same vote again.
    let mut core = fx.core(0, store);
    core.start(5);
    let after = votes_sent(&core.handle_message(v(1), fx.verified(fx.proposal(&a, None)), 6));
    assert_eq!(before, after);
}

/// What survives a crash (DESIGN §3): the block a node voted for is durable with its vote, so
/// after every validator restarts the block tree holds it again, the highest QC commits what it
/// committed before, and peers can fetch it; blocks kept after the last safety write, and
/// committed blocks not yet flushed, are lost as on a real disk.
#[test]
fn a_restarted_node_rebuilds_its_tree_from_the_blocks_it_kept() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b1, id1) = fx.block(1, 1, &g, b"one");
    let qc1 = fx.qc(&b1, id1, &[0, 1, 2]);
    let (b2, id2) = fx.block(2, 2, &qc1, b"two");
    let qc2 = fx.qc(&b2, id2, &[0, 1, 2]);
    let (b3, _) = fx.block(3, 3, &qc2, b"three");
    // Node 0 votes for b1 and b2 (its store defers commits, as a node's does); b3 carries the
    // QC of b2, which commits b1 (2-chain), but node 0 crashes before voting for b3 and before
    // the commit of b1 is flushed.
    let mut core = fx.core(0, MemStorage::deferred());
    core.start(0);
    for b in [&b1, &b2] {
        let acts = core.handle_message(v(b.author.0), fx.verified(fx.proposal(b, None)), 1);
        assert_eq!(votes_sent(&acts).len(), 1);
    }
    let crashed = core.into_storage().crash();
    assert!(crashed.committed_tip().is_none());
    let kept: Vec<BlockId> = crashed.kept_blocks().iter().map(|(id, _)| *id).collect();
    assert_eq!(kept, vec![id1, id2]);
    // Restarted: b1 and b2 are in the tree again; the highest QC it persisted (qc1, carried by
    // b2) commits nothing yet, and b3 (with qc2) commits b1.
    let mut core = fx.core(0, crashed);
    core.start(10);
    assert_eq!(core.round(), Round(2));
    let acts = core.handle_message(v(3), fx.verified(fx.proposal(&b3, None)), 11);
    assert_eq!(commits(&acts), vec![Height(1)]);
    assert_eq!(votes_sent(&acts).len(), 1);
    // A peer that lost b2 fetches it (with b1) from this node.
    let acts = core.handle_message(
        v(2),
        fx.verified(Message::BlockRequest(BlockRequest { id: id2, count: 2 })),
        12,
    );
    let served: Vec<Height> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: Message::BlockResponse(r),
                ..
            } => Some(r.blocks.iter().map(|b| b.height).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(served, vec![Height(2), Height(1)]);
}

/// The canary switch: a node that keeps no uncommitted block restarts with nothing to build on.
#[test]
fn the_forgetful_canary_keeps_nothing() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b1, id1) = fx.block(1, 1, &g, b"one");
    let qc1 = fx.qc(&b1, id1, &[0, 1, 2]);
    let (b2, _) = fx.block(2, 2, &qc1, b"two");
    let mut ctx = EpochContext::new(CHAIN, fx.ctx.validators.clone());
    ctx.broken_rule = Some(BrokenRule::ForgetUncommittedBlocks);
    let forgetful = Fx {
        keys: fx.keys.clone(),
        ctx: Arc::new(ctx),
    };
    let mut core = forgetful.core(0, MemStorage::deferred());
    core.start(0);
    for b in [&b1, &b2] {
        let acts = core.handle_message(
            v(b.author.0),
            forgetful.verified(forgetful.proposal(b, None)),
            1,
        );
        assert_eq!(votes_sent(&acts).len(), 1);
    }
    assert!(core.into_storage().crash().kept_blocks().is_empty());
}

/// A timeout certificate is part of the safety state: a node restarted after a view change
/// enters the round after it, as the others did.
#[test]
fn a_restarted_node_enters_the_round_after_its_highest_tc() {
    let fx = Fx::new(4);
    let tc = fx.tc(1, &[(1, 0), (2, 0), (3, 0)]);
    let (b2, _) = fx.block(2, 2, &fx.genesis_qc(), b"after the tc");
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    let acts = core.handle_message(v(2), fx.verified(fx.proposal(&b2, Some(tc.clone()))), 1);
    assert_eq!(
        votes_sent(&acts).len(),
        1,
        "voted in round 2, through the TC"
    );
    let store = core.into_storage().crash();
    assert_eq!(store.load_safety().unwrap().unwrap().high_tc, Some(tc));
    let core = fx.core(0, store);
    assert_eq!(core.round(), Round(2));
}

// ---------------------------------------------------------------- timeout rule

#[test]
fn timeout_rule_blocks_later_votes_in_the_round() {
    let fx = Fx::new(4);
    let (b1, _) = fx.block(1, 1, &fx.genesis_qc(), b"a");
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    let acts = core.handle_tick(core.next_deadline_ms());
    let t = acts
        .iter()
        .find_map(|a| match a {
            Action::Broadcast {
                msg: Message::Timeout(t),
            } => Some(t.clone()),
            _ => None,
        })
        .expect("timer fired without a timeout");
    assert_eq!(t.round, Round(1));
    assert_eq!(t.high_qc.round, Round(0), "timeout carries high_qc");
    let persisted = core.storage().load_safety().unwrap().unwrap();
    assert_eq!(persisted.last_voted_round, Round(1));
    assert_eq!(persisted.highest_timeout_round, Round(1));
    let late = core.handle_message(v(1), fx.verified(fx.proposal(&b1, None)), 10_000);
    assert!(votes_sent(&late).is_empty(), "voted after timing out");
}

#[test]
fn timeouts_from_a_quorum_form_a_tc_and_advance_the_round() {
    let fx = Fx::new(4);
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    core.handle_tick(core.next_deadline_ms());
    for s in [1u16, 2] {
        let d = TimeoutData {
            round: Round(1),
            high_qc_round: Round(0),
        };
        let t = Timeout {
            round: Round(1),
            epoch: Epoch(1),
            high_qc: fx.genesis_qc(),
            last_tc: None,
            voter: v(s),
            signature: fx.keys[s as usize].sign(&d.digest(CHAIN, Epoch(1))),
        };
        core.handle_message(v(s), fx.verified(Message::Timeout(t)), 2000);
    }
    assert_eq!(core.round(), Round(2));
    assert_eq!(core.stats().view_changes, 1);
}

#[test]
fn pacemaker_backs_off_exponentially_up_to_the_cap() {
    let fx = Fx::new(4);
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    let mut now = 0;
    let mut gaps = vec![];
    for _ in 0..8 {
        let next = core.round_deadline_ms();
        gaps.push(next - now);
        now = next;
        core.handle_tick(now);
    }
    assert_eq!(gaps[0], 1000);
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert_eq!(*gaps.last().unwrap(), 8000, "{gaps:?}");
}

/// While the round timer is backed off, the node's timeout for the round still goes out every
/// base timeout (the same message): a validator back from a restart in an earlier round joins
/// from it without waiting for the long timer.
#[test]
fn a_timed_out_round_resends_its_timeout_every_base_timeout() {
    let fx = Fx::new(4);
    let mut core = fx.core(0, MemStorage::default());
    core.start(0);
    let timeout_of = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::Broadcast {
                msg: Message::Timeout(t),
            } => Some(t.clone()),
            _ => None,
        })
    };
    let mut now = 0;
    let mut first = None;
    while core.round_deadline_ms() - now < 4000 {
        now = core.round_deadline_ms();
        let t = timeout_of(&core.handle_tick(now)).expect("the timer sends a timeout");
        first.get_or_insert(t);
    }
    let first = first.unwrap();
    for _ in 0..3 {
        assert_eq!(core.next_deadline_ms(), now + 1000);
        now += 1000;
        let again = timeout_of(&core.handle_tick(now)).expect("resent");
        assert_eq!(again, first, "the same timeout, never another");
        assert!(now < core.round_deadline_ms());
    }
    assert_eq!(core.stats().timeouts_signed, 1);
}

/// A validator back from a restart times out in a round the others left while it was down:
/// each of them answers with its own timeout for that round (once), and from those the laggard
/// forms the TC it missed and enters the round the others are in.
#[test]
fn a_timeout_from_a_validator_behind_is_answered_with_the_timeout_it_missed() {
    let fx = Fx::new(4);
    let timeout = |s: u16| {
        let d = TimeoutData {
            round: Round(1),
            high_qc_round: Round(0),
        };
        Timeout {
            round: Round(1),
            epoch: Epoch(1),
            high_qc: fx.genesis_qc(),
            last_tc: None,
            voter: v(s),
            signature: fx.keys[s as usize].sign(&d.digest(CHAIN, Epoch(1))),
        }
    };
    // Validator 0 timed out of round 1 with 1 and 2 and is in round 2.
    let mut ahead = fx.core(0, MemStorage::default());
    ahead.start(0);
    ahead.handle_tick(ahead.next_deadline_ms());
    for s in [1u16, 2] {
        ahead.handle_message(v(s), fx.verified(Message::Timeout(timeout(s))), 1000);
    }
    assert_eq!(ahead.round(), Round(2));
    // Validator 3 was down; back in round 1, its timer fires and its timeout reaches 0.
    let sent = ahead.handle_message(v(3), fx.verified(Message::Timeout(timeout(3))), 1500);
    let answers: Vec<Timeout> = sent
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to,
                msg: Message::Timeout(t),
            } if *to == v(3) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "{sent:?}");
    assert_eq!((answers[0].round, answers[0].voter), (Round(1), v(0)));
    let again = ahead.handle_message(v(3), fx.verified(Message::Timeout(timeout(3))), 1600);
    assert!(
        !again
            .iter()
            .any(|a| matches!(a, Action::Send { to, .. } if *to == v(3))),
        "once per validator and round"
    );
    // The laggard, with its own timeout and the answers of 0 and 1, forms TC(1).
    let mut behind = fx.core(3, MemStorage::default());
    behind.start(0);
    behind.handle_tick(behind.next_deadline_ms());
    assert_eq!(behind.round(), Round(1));
    behind.handle_message(
        v(0),
        fx.verified(Message::Timeout(answers[0].clone())),
        1500,
    );
    behind.handle_message(v(1), fx.verified(Message::Timeout(timeout(1))), 1500);
    assert_eq!(behind.round(), Round(2));
}

// ---------------------------------------------------------------- commit rule and leader

#[test]
fn commit_rule_table() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b1, id1) = fx.block(1, 1, &g, b"1");
    let qc1 = fx.qc(&b1, id1, &[0, 1, 2]);
    // Consecutive: b2 in round 2 on qc1; its QC commits b1.
    let (b2, id2) = fx.block(2, 2, &qc1, b"2");
    let qc2 = fx.qc(&b2, id2, &[1, 2, 3]);
    // Non-consecutive: b3 in round 3 on qc1 (round 2 failed); its QC commits nothing.
    let tc2 = fx.tc(2, &[(0, 1), (1, 1), (2, 1)]);
    let (b3, id3) = fx.block(3, 3, &qc1, b"3");
    let qc3 = fx.qc(&b3, id3, &[0, 2, 3]);
    let (b4_on2, _) = fx.block(0, 4, &qc2, b"4");
    let (b4_on3, _) = fx.block(0, 4, &qc3, b"4");
    let table: Vec<(&str, Vec<Message>, Vec<Height>)> = vec![
        (
            "QC on a next-round child commits the parent",
            vec![
                fx.proposal(&b1, None),
                fx.proposal(&b2, None),
                fx.proposal(&b4_on2, Some(fx.tc(3, &[(0, 2), (1, 2), (2, 2)]))),
            ],
            vec![Height(1)],
        ),
        (
            "QC on a child two rounds later commits nothing",
            vec![
                fx.proposal(&b1, None),
                fx.proposal(&b3, Some(tc2)),
                fx.proposal(&b4_on3, None),
            ],
            vec![],
        ),
    ];
    for (name, msgs, want) in table {
        let mut core = fx.core(3, MemStorage::default());
        core.start(0);
        let mut got = vec![];
        for (i, m) in msgs.into_iter().enumerate() {
            got.extend(commits(&core.handle_message(
                v(0),
                fx.verified(m),
                i as u64 + 1,
            )));
        }
        assert_eq!(got, want, "{name}");
    }
}

/// Each new highest QC announces its block with the uncommitted ancestors (oldest first, ids
/// matching), and a commit drops the committed ones from later announcements.
#[test]
fn certified_blocks_are_announced_with_their_uncommitted_path() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b1, id1) = fx.block(1, 1, &g, b"1");
    let qc1 = fx.qc(&b1, id1, &[0, 1, 2]);
    let (b2, id2) = fx.block(2, 2, &qc1, b"2");
    let qc2 = fx.qc(&b2, id2, &[1, 2, 3]);
    let (b3, _) = fx.block(3, 3, &qc2, b"3");
    let certified = |acts: Vec<Action>| -> Vec<Vec<(BlockId, Height)>> {
        acts.into_iter()
            .filter_map(|a| match a {
                Action::Certified(path) => Some(
                    path.iter()
                        .map(|(id, b)| {
                            assert_eq!(*id, b.id(CHAIN), "announced id is the block's id");
                            (*id, b.height)
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    let mut core = fx.core(3, MemStorage::default());
    core.start(0);
    // b1 carries the genesis QC: nothing new is certified.
    let a1 = core.handle_message(v(1), fx.verified(fx.proposal(&b1, None)), 1);
    assert!(certified(a1).is_empty());
    // b2 carries qc1: b1 is certified, nothing is committed yet.
    let a2 = core.handle_message(v(2), fx.verified(fx.proposal(&b2, None)), 2);
    assert_eq!(certified(a2), vec![vec![(id1, Height(1))]]);
    // b3 carries qc2: b2 is certified and b1 commits (2-chain), so only b2 is uncommitted.
    let a3 = core.handle_message(v(3), fx.verified(fx.proposal(&b3, None)), 3);
    assert_eq!(commits(&a3), vec![Height(1)]);
    assert_eq!(certified(a3), vec![vec![(id2, Height(2))]]);
}

#[test]
fn next_leader_aggregates_votes_into_a_qc_and_proposes() {
    let fx = Fx::new(4);
    let (b1, id1) = fx.block(1, 1, &fx.genesis_qc(), b"1");
    // v2 leads round 2.
    let mut core = fx.core(2, MemStorage::default());
    core.start(0);
    core.handle_message(v(1), fx.verified(fx.proposal(&b1, None)), 1);
    let mut proposals = vec![];
    for s in [0u16, 1, 3] {
        let acts = core.handle_message(v(s), fx.verified(Message::Vote(fx.vote(s, &b1, id1))), 2);
        proposals.extend(acts.into_iter().filter_map(|a| match a {
            Action::Broadcast {
                msg: Message::Proposal(p),
            } => Some(p),
            _ => None,
        }));
    }
    assert_eq!(proposals.len(), 1, "exactly one proposal in round 2");
    let p = &proposals[0];
    assert_eq!(p.block.round, Round(2));
    assert_eq!(p.block.parent_id, id1);
    assert_eq!(fx.ctx.verify_qc(&p.block.parent_qc), Ok(()));
}

/// With deferred proposals the QC-forming vote's actions carry the commit and no proposal; the
/// proposal follows from `propose_due`, once, the same as without deferral, and the leader's
/// own vote for it from `own_proposal_due`, after.
#[test]
fn deferred_proposal_follows_the_commit() {
    let fx = Fx::new(4);
    let g = fx.genesis_qc();
    let (b1, id1) = fx.block(1, 1, &g, b"1");
    let qc1 = fx.qc(&b1, id1, &[0, 1, 2]);
    // v2 proposed b2 in round 2; v3 leads round 3 and gathers the votes for b2.
    let (b2, id2) = fx.block(2, 2, &qc1, b"2");
    let proposals = |acts: &[Action]| -> Vec<Block> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Broadcast {
                    msg: Message::Proposal(p),
                } => Some(p.block.clone()),
                _ => None,
            })
            .collect()
    };
    let mut out = vec![];
    for defer in [false, true] {
        let mut core = fx.core(3, MemStorage::default());
        core.defer_proposals(defer);
        core.start(0);
        core.handle_message(v(1), fx.verified(fx.proposal(&b1, None)), 1);
        core.handle_message(v(2), fx.verified(fx.proposal(&b2, None)), 2);
        let mut acts = vec![];
        for s in [0u16, 1, 2] {
            acts.extend(core.handle_message(
                v(s),
                fx.verified(Message::Vote(fx.vote(s, &b2, id2))),
                3,
            ));
        }
        assert_eq!(commits(&acts), vec![Height(1)], "defer {defer}");
        let due = core.propose_due();
        if defer {
            assert!(
                proposals(&acts).is_empty(),
                "no proposal inside the message"
            );
            assert_eq!(proposals(&due).len(), 1);
            assert!(proposals(&core.propose_due()).is_empty(), "once");
            // Our own vote (and the block's durable write before it) waits until the caller
            // has sent the proposal, then comes from `own_proposal_due`, once.
            let own_round = |acts: &[Action]| -> Vec<Round> {
                votes_sent(acts)
                    .iter()
                    .map(|(_, v)| v.data.round)
                    .filter(|r| *r == Round(3))
                    .collect()
            };
            assert!(
                own_round(&due).is_empty(),
                "no own vote before the proposal left"
            );
            assert_eq!(own_round(&core.own_proposal_due()), vec![Round(3)]);
            assert!(core.own_proposal_due().is_empty(), "once");
            out.push(proposals(&due).remove(0));
        } else {
            assert!(due.is_empty());
            assert_eq!(proposals(&acts).len(), 1);
            assert!(
                votes_sent(&acts)
                    .iter()
                    .any(|(_, v)| v.data.round == Round(3)),
                "without deferral the own vote comes with the proposal"
            );
            assert!(core.own_proposal_due().is_empty());
            out.push(proposals(&acts).remove(0));
        }
    }
    assert_eq!(out[0].round, Round(3));
    assert_eq!(out[0].parent_id, id2);
    assert_eq!(out[0].parent_id, out[1].parent_id);
    assert_eq!(out[0].height, out[1].height);
}

#[test]
fn double_vote_is_evidence() {
    let fx = Fx::new(4);
    let (a, ida) = fx.block(1, 1, &fx.genesis_qc(), b"a");
    let (b, idb) = fx.block(1, 1, &fx.genesis_qc(), b"b");
    let mut core = fx.core(2, MemStorage::default());
    core.start(0);
    core.handle_message(v(3), fx.verified(Message::Vote(fx.vote(3, &a, ida))), 1);
    let acts = core.handle_message(v(3), fx.verified(Message::Vote(fx.vote(3, &b, idb))), 2);
    let ev = acts.iter().find_map(|a| match a {
        Action::Evidence(e) => Some(e.clone()),
        _ => None,
    });
    let ev = ev.expect("no evidence");
    assert_eq!(ev.offender(), v(3));
    // The evidence itself passes the border checks anywhere.
    assert!(fx
        .ctx
        .prepare(Message::Evidence(ev))
        .unwrap()
        .verify()
        .is_ok());
}

/// A block's id is its header's id: the payload enters only through its digest, so commit
/// proofs can carry headers.
#[test]
fn block_id_is_header_id_and_binds_the_payload() {
    let fx = Fx::new(4);
    let (b, id) = fx.block(1, 1, &fx.genesis_qc(), b"payload");
    assert_eq!(b.header().id(CHAIN), id);
    assert_eq!(b.header().payload_digest, payload_digest(b"payload"));
    let (other, other_id) = fx.block(1, 1, &fx.genesis_qc(), b"payloaD");
    assert_ne!(other_id, id);
    assert_ne!(other.header(), b.header());
    assert_ne!(b.header().id("another-chain"), id);
}

/// A payload travels as one byte string (the encoding a `Vec<u8>` with `serde_bytes` has), and
/// the digest it keeps is the digest of its own bytes, also after decoding or cloning.
#[test]
fn payload_bytes_encode_as_a_byte_string_and_keep_their_own_digest() {
    use crate::codec::{decode, encode_infallible};
    let p = PayloadBytes::new(b"abc".to_vec());
    assert_eq!(
        encode_infallible(&p),
        encode_infallible(&serde_bytes::ByteBuf::from(b"abc".to_vec()))
    );
    assert_eq!(p.digest(), payload_digest(b"abc"));
    // The prepared context key gives BLAKE3's derive_key hash.
    let derived = *blake3::Hasher::new_derive_key(PAYLOAD_DIGEST_CONTEXT)
        .update(b"abc")
        .finalize()
        .as_bytes();
    assert_eq!(payload_digest(b"abc"), derived);
    let back: PayloadBytes = decode(&encode_infallible(&p)).unwrap();
    assert_eq!((&back, back.digest()), (&p, p.digest()));
    let copy = p.clone();
    assert_eq!(copy.digest(), payload_digest(b"abc"));
    let other: PayloadBytes = b"abd".to_vec().into();
    assert_ne!(other.digest(), p.digest());
    assert_ne!(other, p);
}

/// `head ‖ payload ‖ tail` is the block's encoding, for payload lengths whose ULEB128 prefix
/// takes one to four bytes, and with evidence.
#[test]
fn block_encoding_splits_around_the_payload() {
    use crate::codec::encode_infallible;
    let fx = Fx::new(4);
    for len in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_152] {
        let (mut b, _) = fx.block(1, 3, &fx.genesis_qc(), &vec![5u8; len]);
        b.timestamp_ms = 77;
        let (head, tail) = b.encode_around_payload().unwrap();
        assert_eq!(
            [&head[..], &b.payload[..], &tail[..]].concat(),
            encode_infallible(&b),
            "{len}"
        );
    }
}

/// A payload decoded from a shared frame is a slice of that frame (no copy); decoded from plain
/// bytes, or from a frame decoded earlier, it owns a copy. Either way it equals the original.
#[test]
fn payload_decoded_from_a_shared_frame_is_a_slice_of_it() {
    use crate::codec::{decode, decode_shared, encode_infallible};
    let fx = Fx::new(4);
    let (b, _) = fx.block(1, 1, &fx.genesis_qc(), &[9u8; 4096]);
    let frame = bytes::Bytes::from(encode_infallible(&b));
    let inside = |p: &PayloadBytes| {
        let (f, q) = (frame.as_ptr() as usize, p.as_ptr() as usize);
        q >= f && q + p.len() <= f + frame.len()
    };
    let shared: Block = decode_shared(&frame).unwrap();
    assert_eq!(shared, b);
    assert!(inside(&shared.payload), "decode_shared copied the payload");
    assert_eq!(shared.payload.shared().as_ptr(), shared.payload.as_ptr());
    let copied: Block = decode(&frame).unwrap();
    assert_eq!(copied, b);
    assert!(
        !inside(&copied.payload),
        "plain decode must not borrow a past frame"
    );
    // Truncated: an error, and the thread forgets the frame.
    assert!(decode_shared::<Block>(&frame.slice(..frame.len() - 1)).is_err());
    let again: Block = decode(&frame).unwrap();
    assert!(!inside(&again.payload));
}

/// Catch-up responses stay under the message limit when blocks are large: of 8 committed blocks
/// with 4 MiB payloads, a sync response and a block response each carry two (the third would
/// pass the 12 MiB budget), and the sync response ends at the proof of its last block.
#[test]
fn catch_up_responses_respect_their_byte_budget() {
    let fx = Fx::new(4);
    let payload = vec![7u8; 4 << 20];
    let mut store = MemStorage::default();
    let mut qc = fx.genesis_qc();
    let mut chain = Vec::new();
    for r in 1..=9u64 {
        let (b, id) = fx.block((r % 4) as u16, r, &qc, &payload);
        qc = fx.qc(&b, id, &[0, 1, 2]);
        chain.push((b, id, qc.clone()));
    }
    for k in 0..8 {
        let (child, _, child_qc) = &chain[k + 1];
        let proof = CommitProof {
            child: child.header(),
            child_qc: child_qc.clone(),
        };
        store
            .persist_commit(&[Arc::new(chain[k].0.clone())], &proof)
            .unwrap();
    }
    let mut core = fx.core(3, store);
    core.start(0);
    let sync = Message::SyncRequest(SyncRequest {
        from_height: Height(1),
    });
    let first_sent = |acts: Vec<Action>| {
        let m = acts
            .into_iter()
            .find_map(|a| match a {
                Action::Send { msg, .. } => Some(msg),
                _ => None,
            })
            .expect("a response");
        let n = crate::codec::encode_infallible(&m).len();
        assert!(n <= crate::codec::MAX_MESSAGE_BYTES, "{n} bytes");
        m
    };
    let Message::SyncResponse(resp) = first_sent(core.handle_message(v(1), fx.verified(sync), 1))
    else {
        panic!("not a sync response")
    };
    let heights: Vec<u64> = resp.blocks.iter().map(|b| b.height.0).collect();
    assert_eq!(heights, vec![1, 2]);
    assert_eq!(
        resp.proof.child,
        chain[2].0.header(),
        "the proof of height 2"
    );

    let fetch = Message::BlockRequest(BlockRequest {
        id: chain[7].1,
        count: 64,
    });
    let Message::BlockResponse(resp) = first_sent(core.handle_message(v(2), fx.verified(fetch), 2))
    else {
        panic!("not a block response")
    };
    let heights: Vec<u64> = resp.blocks.iter().map(|b| b.height.0).collect();
    assert_eq!(heights, vec![8, 7]);
}
