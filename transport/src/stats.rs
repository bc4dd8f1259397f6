//! Transport counters: atomics updated on the hot path, read as a [`TransportStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::Class;

#[derive(Debug, Default)]
pub(crate) struct ClassCounters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub send_queue_full: AtomicU64,
}

/// All counters of one transport.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub classes: [ClassCounters; 2],
    pub handshake_failures: AtomicU64,
    pub connections_established: AtomicU64,
    pub reconnects: AtomicU64,
    pub frame_errors: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn class(&self, class: Class) -> &ClassCounters {
        &self.classes[class.slot()]
    }

    pub(crate) fn snapshot(&self, connected_peers: usize) -> TransportStats {
        let class = |c: &ClassCounters| ClassStats {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            send_queue_full: c.send_queue_full.load(Ordering::Relaxed),
        };
        TransportStats {
            consensus: class(&self.classes[Class::Consensus.slot()]),
            bulk: class(&self.classes[Class::Bulk.slot()]),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            connections_established: self.connections_established.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            frame_errors: self.frame_errors.load(Ordering::Relaxed),
            connected_peers,
        }
    }
}

/// Counters of one traffic class. Byte counts are frame payload bytes (length prefixes excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Frames written to a peer's stream.
    pub frames_sent: u64,
    /// Payload bytes written to a peer's stream.
    pub bytes_sent: u64,
    /// Frames received and handed to the inbound channel.
    pub frames_received: u64,
    /// Payload bytes received and handed to the inbound channel.
    pub bytes_received: u64,
    /// `send` calls refused with [`crate::SendError::Full`].
    pub send_queue_full: u64,
}

/// A snapshot of the transport's counters (monotonic since start, except `connected_peers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Consensus-class traffic.
    pub consensus: ClassStats,
    /// Bulk-class traffic.
    pub bulk: ClassStats,
    /// Connections refused or failed during authentication: TLS key not pinned, missing client
    /// key, bad or mismatching hello; on either side of the handshake.
    pub handshake_failures: u64,
    /// Connections that completed the hello exchange.
    pub connections_established: u64,
    /// Established connections to a peer that had been connected before.
    pub reconnects: u64,
    /// Connections closed for a bad stream: oversized length prefix, unknown class tag,
    /// duplicate class stream, or a stream that ended mid-frame.
    pub frame_errors: u64,
    /// Peers with an established connection right now.
    pub connected_peers: usize,
}

impl TransportStats {
    /// Counters of one class.
    pub fn class(&self, class: Class) -> &ClassStats {
        match class {
            Class::Consensus => &self.consensus,
            Class::Bulk => &self.bulk,
        }
    }

    /// `send` calls refused as full, both classes.
    pub fn send_queue_full(&self) -> u64 {
        self.consensus.send_queue_full + self.bulk.send_queue_full
    }
}
