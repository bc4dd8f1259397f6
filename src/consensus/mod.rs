//! The consensus core: pipelined 2-chain HotStuff (Jolteon / DiemBFT v4 rules) whose phases carry
//! the IBFT names. Sans-IO: no threads, clocks or sockets; time is an input.
//!
//! # Phases
//! - **pre-prepare**: the leader of round r signs a [`Proposal`] of block B extending its highest QC.
//! - **prepare**: validators sign a [`Vote`] for B, sent to the leader of r+1 only (linear
//!   communication); more than 2/3 of the stake of votes form a [`QuorumCert`]: B is *prepared*.
//! - **commit**: B is committed when its direct child B' (`B'.round == B.round + 1`) is certified; the
//!   votes on B' are B's commit votes, so the prepare phase of r+1 is the commit phase of r.
//!
//! # Rules (each is marked `Rule "<name>"` where it is implemented)
//! - **leader**: the leader of round r is a deterministic stake-weighted round-robin over the epoch's
//!   validators ([`ValidatorSet::leader`]). Proposals from anyone else are dropped.
//! - **vote**: vote for B in round r only if the signature is valid (checked at the border,
//!   [`certs`]), the author is leader(r), r is the current round, B extends `qc = B.parent_qc`,
//!   `r > max(last_voted_round, qc.round)`, and either `r == qc.round + 1` or the proposal carries a
//!   valid TC for r-1 with `qc.round >= max(tc.high_qc_rounds)`. Then `last_voted_round = r`.
//! - **timeout**: when the round timer fires in round r, sign `Timeout { r, high_qc }` only if
//!   `r == high_qc.round + 1` or `r == last_tc.round + 1`, and `high_qc.round >= one_chain_round`; then
//!   `last_voted_round = max(last_voted_round, r)`, so no vote for r follows. A node that sees timeouts
//!   from more than 1/3 of the stake for its round joins them. A timeout for a round already left
//!   comes from a validator that is behind: it is sent this node's own latest timeout (once per
//!   validator and round), so it forms the TC it missed instead of waiting for the next round to fail.
//! - **advance**: enter r+1 on a valid QC or TC for r, from any message. The round timer is
//!   `base * 2^k` after k rounds without a commit, capped at `hotstuff.view_timeout_seconds`.
//! - **commit**: on a QC for B' whose parent B has `B'.round == B.round + 1`, commit B and all its
//!   uncommitted ancestors, in height order.
//! - **certificates**: every QC/TC is checked: signers distinct, members of the epoch's set, a quorum
//!   of stake (`stake * 3 > total * 2`), every signature valid, epoch and chain bound into each digest.
//! - **equivocation**: two valid votes (or proposals) by one validator for one round and different
//!   blocks are [`Evidence`]: kept, gossiped and put into the next block.
//!
//! # Durability contract
//! The [`SafetyState`] (`epoch`, `last_voted_round`, `one_chain_round`, `high_qc`,
//! `highest_timeout_round`, the last vote and timeout, the last proposed round) is handed to
//! [`Storage::persist_safety`] and only if that returns `Ok` is the vote, timeout or proposal put into
//! the returned actions. A restarted core reads it back and re-sends the same vote, never another.
//!
//! # Calling the core
//! 1. Build an [`EpochContext`] and [`Core::new`] from storage; call [`Core::start`].
//! 2. For each message from the network: `ctx.prepare(msg)` (structure), verify the listed
//!    signatures (one ZIP-215 batch, possibly with other messages), then [`Core::handle_message`].
//! 3. Call [`Core::handle_tick`] at or after [`Core::next_deadline_ms`].
//! 4. Perform the returned [`Action`]s in order. `Send` to this node itself is looped back.
//!
//! [`Proposal`]: messages::Proposal
//! [`Vote`]: messages::Vote
//! [`QuorumCert`]: messages::QuorumCert
//! [`Evidence`]: messages::Evidence
//! [`ValidatorSet::leader`]: validators::ValidatorSet::leader
//! [`SafetyState`]: safety::SafetyState
//! [`Storage::persist_safety`]: safety::Storage::persist_safety
//! [`EpochContext`]: certs::EpochContext

pub mod certs;
pub mod core;
pub mod messages;
pub mod safety;
pub mod tree;
pub mod validators;

#[cfg(test)]
mod tests;

pub use self::core::{Action, App, CommittedBatch, Core, CoreConfig, CoreStats};
pub use certs::{CertError, EpochContext, MessageError, Prepared, SigItem, Verified};
pub use messages::*;
pub use safety::{MemStorage, SafetyState, SafetyStateV1, Storage, StorageError};
pub use validators::{Validator, ValidatorSet, ValidatorSetError};

/// Test-only switches that break one safety rule each, so the simulator's checker can be shown to
/// catch every one. They exist only in builds with the `break-rules` Cargo feature, which test
/// builds turn on and release builds never do: without it [`EpochContext`] has no switch, and
/// every check below compiles to the rule itself. No config key reaches them.
#[cfg(feature = "break-rules")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokenRule {
    /// The vote rule forgets `r > last_voted_round` (a node may vote twice in a round).
    SkipLastVotedRoundCheck,
    /// Commit a block as soon as it is certified (1-chain) instead of on its child's QC.
    OneChainCommit,
    /// Certificates count a duplicated signer's stake again instead of refusing it.
    CountDuplicateSigner,
    /// The node keeps no uncommitted block for a restart (voted for, proposed or seen
    /// certified): a restarted node rebuilds its block tree from the committed chain alone, as
    /// before the consensus journal.
    ForgetUncommittedBlocks,
}

/// Whether `$ctx` (an [`EpochContext`]) breaks rule `$rule` ([`BrokenRule`]): always `false`
/// without the `break-rules` feature.
#[cfg(feature = "break-rules")]
macro_rules! broken {
    ($ctx:expr, $rule:ident) => {
        $ctx.broken_rule == Some($crate::consensus::BrokenRule::$rule)
    };
}
#[cfg(not(feature = "break-rules"))]
macro_rules! broken {
    ($ctx:expr, $rule:ident) => {
        false
    };
}
pub(crate) use broken;
