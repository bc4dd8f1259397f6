//! Transport configuration and its validation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use crate::error::TransportError;
use crate::public_key_from_seed;

/// Default hard limit on one frame: 16 MiB.
pub const MAX_FRAME_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// Default send queue bound, per peer and per class.
pub const SEND_QUEUE_FRAMES_DEFAULT: usize = 8192;
/// Default bound of each class's inbound queue in frames (all peers together; two classes, so
/// twice this in all).
pub const INBOUND_QUEUE_FRAMES_DEFAULT: usize = 8192;
/// Default bound of each class's inbound queue in bytes (see [`crate::Inbox`]; two classes, so
/// 512 MiB in all).
pub const INBOUND_QUEUE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;
/// Default first reconnect delay (before jitter).
pub const RECONNECT_MIN_DEFAULT: Duration = Duration::from_millis(100);
/// Default cap of the exponential reconnect delay.
pub const RECONNECT_MAX_DEFAULT: Duration = Duration::from_secs(1);
/// Default QUIC keep-alive interval.
pub const KEEP_ALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);
/// Default QUIC idle timeout: a silent peer is declared gone after this long.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default number of tokio worker threads the transport owns.
pub const WORKER_THREADS_DEFAULT: usize = 2;

/// One validator of the set, as the transport needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Validator index (position in the validator set).
    pub index: u16,
    /// UDP address its transport listens on.
    pub addr: SocketAddr,
    /// Its Ed25519 public key: the only key accepted as this validator at the TLS handshake.
    pub public_key: [u8; 32],
}

/// Configuration of a [`crate::Transport`]. Build it with [`TransportConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct TransportConfig {
    /// Our own validator index.
    pub me: u16,
    /// UDP address to listen on (port 0 picks a free port; see `TransportHandle::local_addr`).
    pub listen: SocketAddr,
    /// Ed25519 seed (secret key) of this validator.
    pub secret_seed: [u8; 32],
    /// All validators; an entry for `me` is allowed (its key must match `secret_seed`) and skipped.
    pub peers: Vec<PeerConfig>,
    /// Hard limit on one frame's length, both directions. At most `u32::MAX`.
    pub max_frame_bytes: usize,
    /// Send queue bound per peer and per class, in frames.
    pub send_queue_frames: usize,
    /// Bound of each class's inbound queue, in frames.
    pub inbound_queue_frames: usize,
    /// Bound of each class's inbound queue, in bytes (at most `u32::MAX`).
    pub inbound_queue_bytes: usize,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max` (with jitter).
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// QUIC keep-alive interval (must be below `idle_timeout`).
    pub keep_alive_interval: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// tokio worker threads of the runtime the transport owns (1 or more).
    pub worker_threads: usize,
    /// Largest UDP payload of a QUIC packet, 1200..=[`crate::MAX_UDP_PAYLOAD_LIMIT`]. `None`:
    /// [`crate::LOOPBACK_UDP_PAYLOAD`] when `listen` is a loopback address, otherwise QUIC's
    /// 1,200 bytes raised by path MTU discovery up to 1,452.
    pub max_udp_payload: Option<u16>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("me", &self.me)
            .field("listen", &self.listen)
            .field("secret_seed", &"<redacted>")
            .field("peers", &self.peers)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("send_queue_frames", &self.send_queue_frames)
            .field("inbound_queue_frames", &self.inbound_queue_frames)
            .field("inbound_queue_bytes", &self.inbound_queue_bytes)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("worker_threads", &self.worker_threads)
            .field("max_udp_payload", &self.max_udp_payload)
            .finish()
    }
}

impl TransportConfig {
    /// A config with the defaults of this module for every tunable.
    pub fn new(me: u16, listen: SocketAddr, secret_seed: [u8; 32], peers: Vec<PeerConfig>) -> Self {
        Self {
            me,
            listen,
            secret_seed,
            peers,
            max_frame_bytes: MAX_FRAME_BYTES_DEFAULT,
            send_queue_frames: SEND_QUEUE_FRAMES_DEFAULT,
            inbound_queue_frames: INBOUND_QUEUE_FRAMES_DEFAULT,
            inbound_queue_bytes: INBOUND_QUEUE_BYTES_DEFAULT,
            reconnect_min: RECONNECT_MIN_DEFAULT,
            reconnect_max: RECONNECT_MAX_DEFAULT,
            keep_alive_interval: KEEP_ALIVE_INTERVAL_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            worker_threads: WORKER_THREADS_DEFAULT,
            max_udp_payload: None,
        }
    }

    /// Checks the config and returns the peers other than `me`, sorted by index.
    pub(crate) fn validated_peers(&self) -> Result<Vec<PeerConfig>, TransportError> {
        let invalid = |field, reason| Err(TransportError::InvalidConfig { field, reason });
        if self.max_frame_bytes == 0 || self.max_frame_bytes as u64 > u64::from(u32::MAX) {
            return invalid("max_frame_bytes", "must be in 1..=u32::MAX");
        }
        if self.send_queue_frames == 0 {
            return invalid("send_queue_frames", "must be at least 1");
        }
        if self.inbound_queue_frames == 0 {
            return invalid("inbound_queue_frames", "must be at least 1");
        }
        if self.inbound_queue_bytes == 0 || self.inbound_queue_bytes as u64 > u64::from(u32::MAX) {
            return invalid("inbound_queue_bytes", "must be in 1..=u32::MAX");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return invalid(
                "reconnect_min",
                "must be non-zero and at most reconnect_max",
            );
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return invalid(
                "keep_alive_interval",
                "must be non-zero and below idle_timeout",
            );
        }
        if self.worker_threads == 0 {
            return invalid("worker_threads", "must be at least 1");
        }
        crate::mtu::check(self.max_udp_payload)?;

        let own_key = public_key_from_seed(&self.secret_seed);
        let mut by_index = HashMap::new();
        let mut by_key: HashMap<[u8; 32], u16> = HashMap::new();
        by_key.insert(own_key, self.me);
        let mut peers = Vec::with_capacity(self.peers.len());
        for peer in &self.peers {
            if by_index.insert(peer.index, ()).is_some() {
                return Err(TransportError::DuplicateIndex { index: peer.index });
            }
            if peer.index == self.me {
                if peer.public_key != own_key {
                    return Err(TransportError::KeyMismatch { index: self.me });
                }
                continue;
            }
            let usable = VerifyingKey::from_bytes(&peer.public_key)
                .map(|k| !k.is_weak())
                .unwrap_or(false);
            if !usable {
                return Err(TransportError::BadPeerKey { index: peer.index });
            }
            if let Some(first) = by_key.insert(peer.public_key, peer.index) {
                return Err(TransportError::DuplicateKey {
                    first: first.min(peer.index),
                    second: first.max(peer.index),
                });
            }
            peers.push(peer.clone());
        }
        peers.sort_by_key(|p| p.index);
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(index: u16, seed: u8) -> PeerConfig {
        PeerConfig {
            index,
            addr: "127.0.0.1:1".parse().expect("addr"),
            public_key: public_key_from_seed(&[seed; 32]),
        }
    }

    fn cfg(peers: Vec<PeerConfig>) -> TransportConfig {
        TransportConfig::new(0, "127.0.0.1:0".parse().expect("addr"), [1; 32], peers)
    }

    #[test]
    fn accepts_set_with_self_and_skips_self() {
        let peers = cfg(vec![peer(2, 3), peer(0, 1), peer(1, 2)])
            .validated_peers()
            .expect("valid");
        assert_eq!(
            peers.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn refuses_wrong_own_key_duplicates_and_bad_keys() {
        assert!(matches!(
            cfg(vec![peer(0, 9)]).validated_peers(),
            Err(TransportError::KeyMismatch { index: 0 })
        ));
        assert!(matches!(
            cfg(vec![peer(1, 2), peer(1, 3)]).validated_peers(),
            Err(TransportError::DuplicateIndex { index: 1 })
        ));
        assert!(matches!(
            cfg(vec![peer(1, 2), peer(2, 2)]).validated_peers(),
            Err(TransportError::DuplicateKey {
                first: 1,
                second: 2
            })
        ));
        assert!(matches!(
            cfg(vec![peer(1, 1)]).validated_peers(),
            Err(TransportError::DuplicateKey {
                first: 0,
                second: 1
            })
        ));
        // The identity point has small order.
        let mut weak = peer(1, 2);
        weak.public_key = [0; 32];
        weak.public_key[0] = 1;
        assert!(matches!(
            cfg(vec![weak]).validated_peers(),
            Err(TransportError::BadPeerKey { index: 1 })
        ));
    }

    #[test]
    fn refuses_out_of_range_numbers() {
        let mut c = cfg(vec![]);
        c.max_frame_bytes = 0;
        assert!(c.validated_peers().is_err());
        let mut c = cfg(vec![]);
        c.reconnect_min = Duration::from_secs(10);
        assert!(c.validated_peers().is_err());
        let mut c = cfg(vec![]);
        c.keep_alive_interval = c.idle_timeout;
        assert!(c.validated_peers().is_err());
    }
}
