//! bpci: a BFT validator engine.
//!
//! - [`crypto`]: Ed25519 keys and ZIP-215 verification (single and batch), domain-separated BLAKE3
//!   digests, BLAKE3 Merkle trees.
//! - [`types`]: protocol newtypes (`Round`, `Height`, `Epoch`, `ValidatorIndex`, `Stake`).
//! - [`codec`]: the one canonical byte encoding of every message, with bounded decoding.
//! - [`consensus`]: the sans-IO 2-chain HotStuff core (IBFT phase names).
//! - [`sim`]: the deterministic simulator that attacks the core in virtual time.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::panic))]

pub mod api;
pub mod client_proto;
pub mod codec;
pub mod config;
pub mod consensus;
pub mod coordinator;
pub mod crypto;
pub mod exec;
#[path = "../bench/loadgen/mod.rs"]
pub mod loadgen;
pub mod logs;
pub mod mempool;
pub mod node;
pub mod pipeline;
pub mod sim;
pub mod store;
pub mod testnet;
pub mod types;
