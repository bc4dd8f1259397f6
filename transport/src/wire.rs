//! The wire protocol spoken on a validator-to-validator QUIC connection.
//!
//! ```text
//! TLS 1.3, ALPN "bpci/1", both ends authenticated by RFC 7250 raw Ed25519 public keys.
//!
//! dialer (lower index)                         acceptor (higher index)
//!   open bidi stream 0 ── hello(dialer index) ─────────▶ checks index ↔ authenticated key
//!                      ◀──────── hello(acceptor index) ── (only after the check passed)
//!   each side then opens one unidirectional stream per class:
//!   [class tag: u8] [len: u32 BE][frame] [len: u32 BE][frame] ...
//! ```
//!
//! A hello is 7 bytes: the magic `BPCI`, the protocol version, the sender's validator index
//! (u16, big-endian). A connection counts as established only once the peer's hello arrived:
//! with a wrong pin the TLS client can finish its side of the handshake before the server
//! refuses it, so "connected" is not "accepted" until then.

use quinn::VarInt;

/// ALPN protocol id; both ends insist on it.
pub const ALPN: &[u8] = b"bpci/1";

/// ALPN protocol id of the client endpoint (clients and load generators → a validator).
/// Distinct from [`ALPN`]: neither endpoint completes a handshake offering the other's id.
pub const CLIENT_ALPN: &[u8] = b"bpci-client/1";

/// TLS server name the dialer presents. The verifiers ignore it: the pinned key is the identity.
pub const SERVER_NAME: &str = "bpci-validator";

/// First four bytes of every hello.
pub const HELLO_MAGIC: [u8; 4] = *b"BPCI";

/// Version of this wire protocol, carried in the hello.
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of a hello message in bytes.
pub const HELLO_BYTES: usize = 7;

/// Length of the frame length prefix in bytes (u32, big-endian).
pub const LEN_PREFIX_BYTES: usize = 4;

/// Traffic class of a frame: each class has its own stream and send queue per peer, so a
/// large bulk transfer never queues in front of a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Votes, timeouts and other small, latency-critical messages. Sent at a higher stream
    /// priority, and read from their own inbound queue.
    Consensus,
    /// Payloads, block and state sync: large and throughput-bound.
    Bulk,
}

impl Class {
    /// Both classes, in the order of `Class::slot`.
    pub const ALL: [Class; 2] = [Class::Consensus, Class::Bulk];

    /// Dense index (0 or 1) for per-class arrays.
    pub(crate) fn slot(self) -> usize {
        match self {
            Class::Consensus => 0,
            Class::Bulk => 1,
        }
    }

    /// The byte that opens a unidirectional stream of this class.
    pub fn tag(self) -> u8 {
        match self {
            Class::Consensus => 0x01,
            Class::Bulk => 0x02,
        }
    }

    /// The class a stream tag names, if any.
    pub fn from_tag(tag: u8) -> Option<Class> {
        match tag {
            0x01 => Some(Class::Consensus),
            0x02 => Some(Class::Bulk),
            _ => None,
        }
    }

    /// quinn send priority of this class's stream (higher is sent first).
    pub(crate) fn stream_priority(self) -> i32 {
        match self {
            Class::Consensus => 1,
            Class::Bulk => 0,
        }
    }
}

/// Encodes the hello a validator sends on a new connection.
pub fn encode_hello(index: u16) -> [u8; HELLO_BYTES] {
    let mut out = [0u8; HELLO_BYTES];
    out[..4].copy_from_slice(&HELLO_MAGIC);
    out[4] = PROTOCOL_VERSION;
    out[5..].copy_from_slice(&index.to_be_bytes());
    out
}

/// Why a hello was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first four bytes are not `BPCI`.
    #[error("hello has a bad magic")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("hello carries protocol version {0}, expected {PROTOCOL_VERSION}")]
    Version(u8),
}

/// Decodes a hello into the sender's validator index.
pub fn decode_hello(bytes: &[u8; HELLO_BYTES]) -> Result<u16, HelloError> {
    if bytes[..4] != HELLO_MAGIC {
        return Err(HelloError::BadMagic);
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(HelloError::Version(bytes[4]));
    }
    Ok(u16::from_be_bytes([bytes[5], bytes[6]]))
}

/// Application close codes this transport sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The transport is shutting down.
    Shutdown,
    /// A newer connection from the same validator replaced this one.
    Replaced,
    /// The peer broke the wire protocol (bad hello, unknown stream tag, duplicate stream).
    Protocol,
    /// The peer sent a length prefix above the frame size limit.
    FrameTooLarge,
    /// The authenticated key does not belong to the validator index the peer claims,
    /// or that validator must not dial us.
    NotAuthorized,
}

impl CloseCode {
    /// The QUIC application error code.
    pub fn code(self) -> VarInt {
        VarInt::from_u32(match self {
            CloseCode::Shutdown => 0,
            CloseCode::Replaced => 1,
            CloseCode::Protocol => 2,
            CloseCode::FrameTooLarge => 3,
            CloseCode::NotAuthorized => 4,
        })
    }

    /// Human-readable reason sent along with the code.
    pub fn reason(self) -> &'static [u8] {
        match self {
            CloseCode::Shutdown => b"shutdown",
            CloseCode::Replaced => b"replaced by a newer connection",
            CloseCode::Protocol => b"protocol violation",
            CloseCode::FrameTooLarge => b"frame too large",
            CloseCode::NotAuthorized => b"not authorized",
        }
    }

    /// Closes `conn` with this code.
    pub fn close(self, conn: &quinn::Connection) {
        conn.close(self.code(), self.reason());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        for index in [0u16, 1, 255, 256, u16::MAX] {
            assert_eq!(decode_hello(&encode_hello(index)), Ok(index));
        }
    }

    #[test]
    fn hello_rejects_bad_magic_and_version() {
        let mut h = encode_hello(3);
        h[0] = b'X';
        assert_eq!(decode_hello(&h), Err(HelloError::BadMagic));
        let mut h = encode_hello(3);
        h[4] = 9;
        assert_eq!(decode_hello(&h), Err(HelloError::Version(9)));
    }

    #[test]
    fn class_tags_round_trip_and_unknown_tags_are_refused() {
        for class in Class::ALL {
            assert_eq!(Class::from_tag(class.tag()), Some(class));
        }
        assert_eq!(Class::from_tag(0), None);
        assert_eq!(Class::from_tag(0xff), None);
    }
}
