//! How large the UDP datagrams that carry QUIC packets are.
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
    }
}
