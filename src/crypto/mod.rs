//! Cryptography for bpci: Ed25519 keys and signatures, ZIP-215 verification (single and batch),
//! domain-separated BLAKE3 signing digests and BLAKE3 Merkle trees.
//!
//! # The verification rule
//! Keys are generated and messages signed with ed25519-dalek. *Every* verification, single or
//! batch, follows [ZIP-215] and is done by ed25519-zebra:
//!
//! - `A` (key) and `R` must decode to curve points; non-canonical encodings are accepted;
//! - `S` must be canonical (`S < L`);
//! - the cofactored equation `[8][S]B = [8]R + [8][k]A` must hold, with
//!   `k = SHA-512(R ‖ A ‖ M)` over the bytes exactly as given.
//!
//! The cofactored rule is what makes batch verification ([`BatchVerifier`]) give exactly the
//! same answer as single verification ([`verify()`]) whatever else is in the batch: a Byzantine
//! validator cannot craft a signature that some honest nodes accept and others reject
//! (DESIGN.md §4). ed25519-dalek's own `verify`, `verify_strict` and `verify_batch` are never
//! used.
//!
//! Validator keys are stricter than the verification rule: [`PublicKey`] refuses non-canonical
//! encodings and small-order points when it is parsed or deserialized. [`verify_key_bytes`]
//! accepts any 32 bytes, for test vectors and for messages not yet bound to a validator.
//!
//! # Modules
//! - [`keys`]: [`Keypair`], [`PublicKey`] (`ed25519:<64 hex>`), [`KeyError`].
//! - [`signature`]: [`Signature`] (64 bytes `R ‖ S`).
//! - [`mod@verify`]: [`verify()`], [`verify_key_bytes`], [`VerifyError`].
//! - [`batch`]: [`BatchVerifier`], which names exactly the invalid items when a batch fails.
//! - [`digest`]: [`signing_digest`] per [`Domain`].
//! - [`merkle`]: [`MerkleTree`], [`MerkleProof`], [`merkle_root`].
//!
//! [ZIP-215]: https://zips.z.cash/zip-0215

pub mod batch;
pub mod digest;
pub mod keys;
pub mod many;
pub mod merkle;
pub mod signature;
pub mod verify;

pub use batch::{BatchFailure, BatchVerifier};
pub use digest::{signing_digest, signing_hasher, Digest32, Domain};
pub use keys::{KeyError, Keypair, PublicKey};
pub use merkle::{
    leaf_hash, leaf_hashes, merkle_root, merkle_root_of_leaf_hashes, MerkleError, MerkleProof,
    MerkleTree,
};
pub use signature::Signature;
pub use verify::{verify, verify_key_bytes, VerifyError};
