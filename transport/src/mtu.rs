//! How large the UDP datagrams that carry QUIC packets are, and how much a new (or long idle)
//! connection may send before its first acknowledgements.
//!
//! Per-packet work (header protection, AEAD setup, acknowledgements, one GSO segment) costs
//! more than per-byte work, so larger datagrams carry the same bytes for less CPU. Loopback has
//! a 64 KiB MTU: there the transport uses [`LOOPBACK_UDP_PAYLOAD`] from the first packet. On
//! other paths it starts at QUIC's safe 1,200 bytes and lets quinn's path MTU discovery find up
//! to 1,452 (Ethernet), or up to the operator's configured size (jumbo frames), falling back to
//! 1,200 if the path drops the large packets.

use std::net::IpAddr;

use crate::error::TransportError;

/// Largest configurable UDP payload. quinn passes up to 10 datagrams to the kernel in one
/// GSO send, and one send must fit a 64 KiB UDP datagram: above 6,500 bytes the sends fail
/// and the connection crawls on retransmissions (measured: 6,550 works, 7,000 stalls).
pub const MAX_UDP_PAYLOAD_LIMIT: u16 = 6500;
/// UDP payload used on loopback when none is configured.
pub const LOOPBACK_UDP_PAYLOAD: u16 = 6000;
/// QUIC's minimum (RFC 9000 §14): every path must carry it.
pub const MIN_UDP_PAYLOAD: u16 = 1200;
/// Initial congestion window on loopback when none is configured. An idle validator's
/// connections carry only small, empty blocks, so their window never grows; with QUIC's default
/// (14,720 bytes) the first seconds of load crawl through slow start while every round waits on
/// it. Measured on a 4-validator testnet at 25,000 tx/s, p99 of the first second of load:
/// 514/524/519/143/689/72 ms with the default, 81/41/58/310/121/50 ms with 4 MiB.
pub const LOOPBACK_INITIAL_WINDOW: u64 = 4 << 20;
/// Bounds of a configured initial congestion window.
pub const INITIAL_WINDOW_RANGE: std::ops::RangeInclusive<u64> = 14_720..=(64 << 20);

/// Checks a configured size (`None` means automatic).
pub(crate) fn check(setting: Option<u16>) -> Result<(), TransportError> {
    match setting {
        Some(n) if !(MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD_LIMIT).contains(&n) => {
            Err(TransportError::InvalidConfig {
                field: "max_udp_payload",
                reason: "must be in 1200..=6500 (QUIC's minimum; 10 GSO segments must fit 64 KiB)",
            })
        }
        _ => Ok(()),
    }
}

/// Checks a configured initial congestion window (`None` means automatic).
pub(crate) fn check_window(setting: Option<u64>) -> Result<(), TransportError> {
    match setting {
        Some(n) if !INITIAL_WINDOW_RANGE.contains(&n) => Err(TransportError::InvalidConfig {
            field: "initial_window",
            reason: "must be in 14720..=67108864 bytes",
        }),
        _ => Ok(()),
    }
}

/// Sets the initial congestion window of connections over a path whose end is `ip`: the
/// configured one, else [`LOOPBACK_INITIAL_WINDOW`] on loopback, else QUIC's default.
pub(crate) fn apply_window(t: &mut quinn::TransportConfig, setting: Option<u64>, ip: IpAddr) {
    let window = match setting {
        Some(w) => w,
        None if ip.is_loopback() => LOOPBACK_INITIAL_WINDOW,
        None => return,
    };
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(window);
    t.congestion_controller_factory(std::sync::Arc::new(cubic));
}

/// Sets the packet size of connections over a path whose local (or remote) end is `ip`.
pub(crate) fn apply(t: &mut quinn::TransportConfig, setting: Option<u16>, ip: IpAddr) {
    match setting {
        None if ip.is_loopback() => {
            t.initial_mtu(LOOPBACK_UDP_PAYLOAD)
                .min_mtu(LOOPBACK_UDP_PAYLOAD)
                .mtu_discovery_config(None);
        }
        None => {}
        Some(n) => {
            let mut discovery = quinn::MtuDiscoveryConfig::default();
            discovery.upper_bound(n);
            t.initial_mtu(n).mtu_discovery_config(Some(discovery));
        }
    }
}

/// Lets an endpoint receive datagrams up to the largest size any of our configurations sends.
pub(crate) fn accept_large(e: &mut quinn::EndpointConfig) {
    // In range by construction (1200..=65527), so this cannot fail.
    let _ = e.max_udp_payload_size(MAX_UDP_PAYLOAD_LIMIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_sizes_outside_quic_and_gso_limits_are_refused() {
        assert!(check(None).is_ok());
        assert!(check(Some(1200)).is_ok());
        assert!(check(Some(MAX_UDP_PAYLOAD_LIMIT)).is_ok());
        for bad in [0, 1199, MAX_UDP_PAYLOAD_LIMIT + 1, 9000] {
            let e = check(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("max_udp_payload"), "{e}");
        }
        assert!(check_window(None).is_ok());
        assert!(check_window(Some(LOOPBACK_INITIAL_WINDOW)).is_ok());
        for bad in [0, 14_719, (64 << 20) + 1] {
            let e = check_window(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("initial_window"), "{e}");
        }
    }
}
