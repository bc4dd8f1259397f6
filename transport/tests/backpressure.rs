//! Back-pressure: a full send queue refuses with `SendError::Full` (counted) instead of
//! growing; a receiver that stops reading stops its senders through QUIC flow control,
//! and nothing queued is lost once it reads again.

mod common;

use std::time::{Duration, Instant};

use bpci_transport::{Class, SendError};
use bytes::Bytes;
use common::*;

#[test]
fn full_queue_refuses_per_class() {
    init_tracing();
    bounded(Duration::from_secs(10), || {
        // Validator 1 is in the set but never runs: nothing drains the queues.
        let (peers, mut sockets) = validator_set(2);
        let _s1 = sockets.pop();
        let s0 = sockets.pop().expect("socket");
        let mut cfg = config(0, peers[0].addr, &peers);
        cfg.send_queue_frames = 4;
        let mut n0 = start(cfg, s0);
        for _ in 0..4 {
            n0.handle
                .send(1, Class::Bulk, Bytes::from_static(b"x"))
                .expect("room");
        }
        for _ in 0..3 {
            assert_eq!(
                n0.handle.send(1, Class::Bulk, Bytes::from_static(b"x")),
                Err(SendError::Full { to: 1 })
            );
        }
        // The consensus queue is separate and still has room.
        n0.handle
            .send(1, Class::Consensus, Bytes::from_static(b"v"))
            .expect("room");
        assert_eq!(
            n0.handle.broadcast(Class::Bulk, Bytes::from_static(b"b")),
            0
        );
        let s = n0.handle.stats();
        assert_eq!(s.bulk.send_queue_full, 4);
        assert_eq!(s.consensus.send_queue_full, 0);
        assert_eq!(s.send_queue_full(), 4);
        n0.shutdown();
    });
}

#[test]
fn slow_receiver_pushes_back_to_the_sender_without_loss() {
    // The receiver's queue full by its frame count.
    slow_receiver(|cfg| cfg.inbound_queue_frames = 4);
}

#[test]
fn a_queue_full_of_bytes_pushes_back_like_a_queue_full_of_frames() {
    // Room for thousands of frames, but only four frames' bytes.
    slow_receiver(|cfg| {
        cfg.inbound_queue_frames = 10_000;
        cfg.inbound_queue_bytes = 4 * 64 * 1024;
    });
}

fn slow_receiver(edit: fn(&mut bpci_transport::TransportConfig)) {
    init_tracing();
    bounded(Duration::from_secs(25), move || {
        const FRAME_BYTES: usize = 64 * 1024;
        let (peers, mut sockets) = validator_set(2);
        let s1 = sockets.pop().expect("socket");
        let s0 = sockets.pop().expect("socket");
        let mut cfg0 = config(0, peers[0].addr, &peers);
        cfg0.send_queue_frames = 16;
        let mut cfg1 = config(1, peers[1].addr, &peers);
        edit(&mut cfg1);
        let n0 = start(cfg0, s0);
        let mut n1 = start(cfg1, s1);
        assert!(wait_until(Duration::from_secs(10), || n0
            .handle
            .connected_peers()
            == vec![1]));

        // Validator 1 reads nothing: its bulk queue fills (4 frames, or 4 frames' bytes), then
        // QUIC's windows, then validator 0's 16-frame queue.
        let frame = |k: u32| {
            let mut v = vec![(k % 251) as u8; FRAME_BYTES];
            v[..4].copy_from_slice(&k.to_be_bytes());
            Bytes::from(v)
        };
        let mut queued = 0u32;
        let deadline = Instant::now() + Duration::from_secs(10);
        let full = loop {
            match n0.handle.send(1, Class::Bulk, frame(queued)) {
                Ok(()) => queued += 1,
                Err(SendError::Full { to: 1 }) => break true,
                Err(e) => panic!("unexpected {e}"),
            }
            if Instant::now() > deadline {
                break false;
            }
            if queued % 16 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        assert!(full, "send queue never filled after {queued} frames");
        // Windows (8 MiB stream, 16 MiB connection) + queues bound what is in flight.
        let in_flight_bytes = queued as usize * FRAME_BYTES;
        assert!(
            in_flight_bytes < 48 * 1024 * 1024,
            "{in_flight_bytes} bytes accepted"
        );
        assert!(n0.handle.stats().bulk.send_queue_full >= 1);

        // Reading again releases everything, in order, nothing lost.
        for k in 0..queued {
            let m = recv_within(&mut n1.rx, Duration::from_secs(10)).expect("frame");
            assert_eq!(m.frame, frame(k), "frame {k}");
        }
        // And the sender can queue again.
        assert!(wait_until(Duration::from_secs(5), || n0
            .handle
            .send(1, Class::Bulk, Bytes::from_static(b"again"))
            .is_ok()));
        drop(n0);
        n1.shutdown();
    });
}
