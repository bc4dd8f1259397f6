//! Domain-separated BLAKE3 digests: what every signature in bpci signs.
//!
//! ```text
//! signing_digest(domain, chain_id, epoch, bytes) =
//!     BLAKE3-derive_key(context = domain.context(),
//!                       key material = u32_le(len(chain_id)) ‖ chain_id ‖ u64_le(epoch) ‖ bytes)
//! ```
//!
//! Each [`Domain`] has its own fixed BLAKE3 context string, so a digest of one kind never equals
//! a digest of another kind. The chain id is length-prefixed and the epoch fixed-width, so the
//! encoding is injective and a signature from one chain or epoch is never valid on another. A
//! chain id longer than `u32::MAX` bytes (never accepted by config) would saturate its prefix.

/// A 32-byte digest (BLAKE3 output).
pub type Digest32 = [u8; 32];

/// The kinds of signed message. Each is a separate BLAKE3 derive_key context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A block (its id is this digest).
    Block,
    /// A leader's proposal.
    Proposal,
    /// A vote.
    Vote,
    /// A timeout message.
    Timeout,
    /// A sealed auction bid.
    SealedBid,
    /// The reveal of a sealed bid.
    Reveal,
    /// A client transaction.
    Transaction,
    /// Evidence of misbehaviour.
    Evidence,
}

impl Domain {
    /// Every domain, for tests and tables.
    pub const ALL: [Domain; 8] = [
        Domain::Block,
        Domain::Proposal,
        Domain::Vote,
        Domain::Timeout,
        Domain::SealedBid,
        Domain::Reveal,
        Domain::Transaction,
        Domain::Evidence,
    ];

    /// The BLAKE3 derive_key context string of this domain. Fixed forever: changing one
    /// changes every signature of that kind.
    pub const fn context(self) -> &'static str {
        match self {
            Domain::Block => "bpci 2026-11 block v1",
            Domain::Proposal => "bpci 2026-11 proposal v1",
            Domain::Vote => "bpci 2026-11 vote v1",
            Domain::Timeout => "bpci 2026-11 timeout v1",
            Domain::SealedBid => "bpci 2026-11 sealed bid v1",
            Domain::Reveal => "bpci 2026-11 reveal v1",
            Domain::Transaction => "bpci 2026-11 transaction v1",
            Domain::Evidence => "bpci 2026-11 evidence v1",
        }
    }
}

/// The digest signed for a message of kind `domain` on `chain_id` in `epoch`, whose canonical
/// (bcs) encoding is `canonical_bytes`. See the module docs for the exact layout.
pub fn signing_digest(
    domain: Domain,
    chain_id: &str,
    epoch: u64,
    canonical_bytes: &[u8],
) -> Digest32 {
    let mut hasher = signing_hasher(domain, chain_id, epoch);
    hasher.update(canonical_bytes);
    *hasher.finalize().as_bytes()
}

/// A hasher already fed the domain, `chain_id` and `epoch` of [`signing_digest`]: feeding it the
/// canonical bytes (for instance by serializing straight into it, without an intermediate
/// buffer) and finalizing gives the same digest.
pub fn signing_hasher(domain: Domain, chain_id: &str, epoch: u64) -> blake3::Hasher {
    let chain_id_len = u32::try_from(chain_id.len()).unwrap_or(u32::MAX);
    let mut hasher = blake3::Hasher::new_derive_key(domain.context());
    hasher.update(&chain_id_len.to_le_bytes());
    hasher.update(chain_id.as_bytes());
    hasher.update(&epoch.to_le_bytes());
    hasher
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn contexts_are_distinct() {
        let contexts: HashSet<&str> = Domain::ALL.iter().map(|d| d.context()).collect();
        assert_eq!(contexts.len(), Domain::ALL.len());
    }

    /// `signing_digest` arguments.
    type Input<'a> = (Domain, &'a str, u64, &'a [u8]);

    #[test]
    fn every_input_separates() {
        let base = (Domain::Vote, "bpci-test", 7u64, b"payload".as_slice());
        let cases: Vec<(&str, Input)> = vec![
            ("domain", (Domain::Timeout, base.1, base.2, base.3)),
            ("chain", (base.0, "bpci-main", base.2, base.3)),
            ("epoch", (base.0, base.1, 8, base.3)),
            ("bytes", (base.0, base.1, base.2, b"payloae".as_slice())),
            // Moving bytes between the chain id and the payload must not collide.
            (
                "chain/bytes boundary",
                (base.0, "bpci-tes", base.2, b"payload"),
            ),
            ("empty chain", (base.0, "", base.2, base.3)),
        ];
        let reference = signing_digest(base.0, base.1, base.2, base.3);
        let mut seen = HashSet::from([reference]);
        for (what, (d, c, e, b)) in cases {
            assert!(
                seen.insert(signing_digest(d, c, e, b)),
                "{what} did not separate"
            );
        }
    }

    #[test]
    fn all_domains_differ_on_same_input() {
        let digests: HashSet<Digest32> = Domain::ALL
            .iter()
            .map(|&d| signing_digest(d, "c", 1, b"x"))
            .collect();
        assert_eq!(digests.len(), Domain::ALL.len());
    }

    #[test]
    fn layout_is_as_documented() {
        let mut material = Vec::new();
        material.extend_from_slice(&3u32.to_le_bytes());
        material.extend_from_slice(b"abc");
        material.extend_from_slice(&9u64.to_le_bytes());
        material.extend_from_slice(b"body");
        assert_eq!(
            signing_digest(Domain::Evidence, "abc", 9, b"body"),
            blake3::derive_key("bpci 2026-11 evidence v1", &material)
        );
    }
}
