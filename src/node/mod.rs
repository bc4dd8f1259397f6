//! A validator node: the consensus core inside a staged pipeline, the durable store, the mempool
//! and execution, talking QUIC to its peers.

pub mod keys;
