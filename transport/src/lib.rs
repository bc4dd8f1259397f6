//! bpci transport: QUIC between validators (DESIGN.md §4).
//!
//! * **Identity.** Each validator authenticates with its own Ed25519 key as an RFC 7250 raw
//!   public key over TLS 1.3 (rustls on ring). Both ends pin: the dialer accepts only the key
//!   the validator set lists for the index it dials; the acceptor requires a client key and
//!   accepts only keys of the set, then checks that the hello's index belongs to that key.
//!   A connection counts only after the hello exchange (see [`raw`] for the wire protocol).
//! * **Connections.** One per pair: the lower index dials the higher one, redialing with
//!   exponential backoff and jitter (`reconnect_min`..`reconnect_max`); a new authenticated
//!   connection from a peer replaces its old one. The stateless-reset key is derived from
//!   the validator's seed, so peers of a restarted validator notice at once.
//! * **Streams and frames.** One long-lived unidirectional stream per peer and [`Class`]
//!   (consensus at a higher priority than bulk), carrying `[u32 BE length][bytes]` frames of
//!   at most `max_frame_bytes`. An oversized prefix closes the connection before anything is
//!   allocated for it; garbage or truncated input costs at most that peer's connection.
//! * **Queues.** [`TransportHandle::send`] never blocks: each peer and class has a bounded
//!   queue and a full queue refuses the frame with [`SendError::Full`] (counted). A writer
//!   task drains its queue in batches and coalesces them into ≈256 KiB stream writes.
//!   Inbound frames go to one queue per class ([`Inbox`]), each bounded in frames and in bytes;
//!   when one is full its readers wait, QUIC flow control stops the senders, and their queues
//!   fill: memory stays bounded, and a consensus frame never queues behind bulk ones.
//! * **Threads.** [`Transport`] owns a small tokio runtime; the node's threads only call the
//!   handle and read the inbound queues with `blocking_recv`.
//!
//! * **Client endpoint.** A separate QUIC endpoint ([`ClientServer`], ALPN `bpci-client/1`)
//!   where clients without a validator key submit transactions over one stream of the same
//!   frames; the validator's key is the pinned server identity. Clients connect through a
//!   shared [`ClientRuntime`]. See the `client` module docs on [`ClientServer`].
//!
//! Delivery is at most once and in order per (peer, class, connection): frames in flight
//! when a connection breaks may be lost; the protocol above recovers by retransmission/sync.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
mod error;
mod frame;
mod handshake;
mod inbox;
mod link;
mod mtu;
mod peer;
pub mod raw;
mod stats;
mod tls;
mod transport;
mod wire;

pub use client::{
    ClientFrame, ClientRuntime, ClientSender, ClientServer, ClientServerConfig, ClientServerHandle,
    CLIENT_CONNECT_TIMEOUT, CLIENT_INBOUND_QUEUE_FRAMES_DEFAULT, CLIENT_MAX_CONNECTIONS_DEFAULT,
    CLIENT_MAX_FRAME_BYTES_DEFAULT, CLIENT_OUTBOUND_QUEUE_FRAMES_DEFAULT,
    CLIENT_WORKER_THREADS_DEFAULT,
};
pub use config::{
    PeerConfig, TransportConfig, IDLE_TIMEOUT_DEFAULT, INBOUND_QUEUE_BYTES_DEFAULT,
    INBOUND_QUEUE_FRAMES_DEFAULT, KEEP_ALIVE_INTERVAL_DEFAULT, MAX_FRAME_BYTES_DEFAULT,
    RECONNECT_MAX_DEFAULT, RECONNECT_MIN_DEFAULT, SEND_QUEUE_FRAMES_DEFAULT,
    WORKER_THREADS_DEFAULT,
};
pub use error::{SendError, TransportError};
pub use inbox::{InboundQueue, Inbox};
pub use mtu::{LOOPBACK_UDP_PAYLOAD, MAX_UDP_PAYLOAD_LIMIT, MIN_UDP_PAYLOAD};
pub use stats::{ClassStats, TransportStats};
pub use tokio::sync::mpsc::Receiver;
pub use transport::{Transport, TransportHandle};
pub use wire::Class;

/// A frame received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The authenticated validator index of the sender.
    pub from: u16,
    /// The stream class it came on.
    pub class: Class,
    /// The frame's bytes (without the length prefix).
    pub frame: bytes::Bytes,
}

/// The Ed25519 public key of a 32-byte seed (secret key).
pub fn public_key_from_seed(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<TransportHandle>();
        fn check_send<T: Send + 'static>() {}
        check_send::<Transport>();
        check_send::<Receiver<Inbound>>();
        check_send::<Inbox>();
    }

    #[test]
    fn public_key_matches_dalek() {
        let seed = [9u8; 32];
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        assert_eq!(public_key_from_seed(&seed), key.verifying_key().to_bytes());
    }
}
