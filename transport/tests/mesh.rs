//! Three validators connect mutually and exchange frames on both classes; every frame arrives,
//! in order per (peer, class), for sizes 0, 1, 512 and 1 MiB.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bpci_transport::{Class, Inbound};
use bytes::Bytes;
use common::*;

const SIZES: [usize; 4] = [0, 1, 512, 1024 * 1024];
const FRAMES_PER_STREAM: usize = 12;

/// Frame `k` from `from` on `class`: its size cycles through SIZES, its bytes identify it.
fn frame(from: u16, class: Class, k: usize) -> Bytes {
    let len = SIZES[k % SIZES.len()];
    let fill = (k as u8).wrapping_mul(31) ^ (from as u8) ^ (class == Class::Bulk) as u8;
    Bytes::from(vec![fill; len])
}

#[test]
fn three_validators_exchange_ordered_frames_on_both_classes() {
    init_tracing();
    bounded(Duration::from_secs(25), || {
        let (peers, sockets) = validator_set(3);
        let mut nodes: Vec<Node> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, s)| start(config(i as u16, peers[i].addr, &peers), s))
            .collect();

        // Frames queue while the links come up; send everything at once.
        for node in &nodes {
            let me = node.handle.me();
            for to in (0..3u16).filter(|&t| t != me) {
                for k in 0..FRAMES_PER_STREAM {
                    for class in Class::ALL {
                        node.handle
                            .send(to, class, frame(me, class, k))
                            .expect("queue has room");
                    }
                }
            }
        }

        for node in nodes.iter_mut() {
            let me = node.handle.me();
            let mut next: HashMap<(u16, Class), usize> = HashMap::new();
            let expected_total = 2 * 2 * FRAMES_PER_STREAM;
            for _ in 0..expected_total {
                let Inbound {
                    from,
                    class,
                    frame: got,
                } = recv_within(&mut node.rx, Duration::from_secs(15)).expect("frame arrives");
                assert_ne!(from, me);
                let k = next.entry((from, class)).or_default();
                assert_eq!(
                    got,
                    frame(from, class, *k),
                    "node {me}: frame {k} from {from} {class:?}"
                );
                *k += 1;
            }
            assert!(next.values().all(|&k| k == FRAMES_PER_STREAM), "{next:?}");
            assert!(recv_within(&mut node.rx, Duration::from_millis(50)).is_none());

            let mut connected = node.handle.connected_peers();
            connected.sort_unstable();
            assert_eq!(
                connected,
                (0..3u16).filter(|&t| t != me).collect::<Vec<_>>()
            );
            let stats = node.handle.stats();
            let per_class_bytes: u64 = (0..FRAMES_PER_STREAM)
                .map(|k| SIZES[k % SIZES.len()] as u64)
                .sum::<u64>()
                * 2;
            for class in Class::ALL {
                let c = stats.class(class);
                assert_eq!(c.frames_received, 2 * FRAMES_PER_STREAM as u64);
                assert_eq!(c.bytes_received, per_class_bytes);
                assert_eq!(c.send_queue_full, 0);
            }
            assert_eq!(stats.handshake_failures, 0);
            assert_eq!(stats.frame_errors, 0);
            assert_eq!(stats.connected_peers, 2);
        }
        // Sent counters settle once the writers report.
        for node in &nodes {
            assert!(wait_until(Duration::from_secs(5), || {
                let s = node.handle.stats();
                Class::ALL
                    .iter()
                    .all(|&c| s.class(c).frames_sent == 2 * FRAMES_PER_STREAM as u64)
            }));
        }

        // broadcast reaches every other validator.
        let n = nodes[1]
            .handle
            .broadcast(Class::Consensus, Bytes::from_static(b"vote"));
        assert_eq!(n, 2);
        for i in [0usize, 2] {
            let m = recv_within(&mut nodes[i].rx, Duration::from_secs(5)).expect("broadcast");
            assert_eq!(
                (m.from, m.class, &m.frame[..]),
                (1, Class::Consensus, &b"vote"[..])
            );
        }

        // API edges.
        let h = nodes[0].handle.clone();
        assert_eq!(
            h.send(0, Class::Consensus, Bytes::new()),
            Err(bpci_transport::SendError::UnknownPeer(0))
        );
        assert_eq!(
            h.send(7, Class::Consensus, Bytes::new()),
            Err(bpci_transport::SendError::UnknownPeer(7))
        );
        assert!(matches!(
            h.send(1, Class::Bulk, Bytes::from(vec![0u8; 16 * 1024 * 1024 + 1])),
            Err(bpci_transport::SendError::TooLarge { .. })
        ));

        for node in nodes.iter_mut() {
            node.shutdown();
        }
        assert_eq!(
            h.send(1, Class::Consensus, Bytes::new()),
            Err(bpci_transport::SendError::Closed)
        );
        // The inbound queues end once the transport is gone.
        assert!(nodes[0].rx.consensus.blocking_recv().is_none());
        assert!(nodes[0].rx.bulk.blocking_recv().is_none());
    });
}
