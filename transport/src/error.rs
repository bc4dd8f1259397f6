//! Errors of the transport's public API.

use std::net::SocketAddr;

/// Why [`crate::TransportHandle::send`] (or a client endpoint's `send`) did not queue a frame.
/// Sending never blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send queue to `to` for this class already holds `send_queue_frames` frames. The frame
    /// was NOT queued (the caller still owns the decision to retry or drop it) and the
    /// `send_queue_full` counter of the class was incremented.
    #[error("send queue to validator {to} is full")]
    Full {
        /// The destination validator.
        to: u16,
    },
    /// The index is not a peer of this transport (not in the validator set, or ourselves).
    #[error("validator {0} is not a peer of this transport")]
    UnknownPeer(u16),
    /// The frame is larger than `max_frame_bytes`; the receiver would refuse it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the refused frame.
        len: usize,
        /// The configured `max_frame_bytes`.
        max: usize,
    },
    /// The transport has been shut down.
    #[error("transport is shut down")]
    Closed,
    /// Client endpoint ([`crate::ClientServerHandle::send`]): no open client connection has
    /// this id (it never existed, or it has closed).
    #[error("client connection {0} is not open")]
    UnknownConnection(u64),
    /// Client endpoint ([`crate::ClientServerHandle::send`], [`crate::ClientSender::send`]): the
    /// connection's bounded send queue is full. The frame was NOT queued.
    #[error("send queue of the client connection is full")]
    QueueFull,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address from the config.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The validator set lists `index` with a different public key than our secret seed gives.
    #[error(
        "secret seed does not match the public key the validator set lists for validator {index}"
    )]
    KeyMismatch {
        /// Our own index (`TransportConfig::me`).
        index: u16,
    },
    /// A peer's public key is not a valid Ed25519 point, or has small order.
    #[error("public key of validator {index} is not a usable Ed25519 key")]
    BadPeerKey {
        /// The peer whose key was refused.
        index: u16,
    },
    /// Two peer entries share one validator index.
    #[error("validator index {index} is listed twice")]
    DuplicateIndex {
        /// The repeated index.
        index: u16,
    },
    /// Two validators share one public key, so a key would not identify a validator.
    #[error("validators {first} and {second} have the same public key")]
    DuplicateKey {
        /// The first index with the key.
        first: u16,
        /// The second index with the key.
        second: u16,
    },
    /// A numeric config value is out of range.
    #[error("invalid transport config: {field} {reason}")]
    InvalidConfig {
        /// The offending field of `TransportConfig` (or `ClientServerConfig`).
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// rustls refused our key material or settings.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The tokio runtime could not be created.
    #[error("cannot start the transport runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A client could not connect to a validator's client endpoint (unreachable, wrong pinned
    /// key, refused, or no answer within the connect timeout).
    #[error("cannot connect to the client endpoint at {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// quinn could not create the endpoint on the bound socket.
    #[error("cannot create the QUIC endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
}
