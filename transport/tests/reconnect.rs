//! Reconnect: a validator stops (cleanly or as if killed) and restarts on the same address;
//! frames flow again in both directions within a bounded time, whichever side restarted.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bpci_transport::{Class, PeerConfig};
use bytes::Bytes;
use common::*;

/// Binds `addr` again, retrying briefly while the old socket is being released.
fn rebind(addr: SocketAddr) -> UdpSocket {
    let mut last = None;
    for _ in 0..100 {
        match UdpSocket::bind(addr) {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot rebind {addr}: {last:?}");
}

/// Waits until `node` has re-established its link to `peer` (frames sent before that may
/// still go to the dead connection and be lost: delivery is at most once).
fn wait_relinked(node: &Node, peer: u16, limit: Duration) {
    let t0 = std::time::Instant::now();
    assert!(
        wait_until(limit, || node.handle.stats().reconnects >= 1
            && node.handle.connected_peers() == vec![peer]),
        "validator {} did not relink to {peer} within {limit:?}",
        node.handle.me()
    );
    eprintln!(
        "validator {} relinked to {peer} after {:?}",
        node.handle.me(),
        t0.elapsed()
    );
}

/// Sends one frame each way and checks both arrive within `limit`.
fn exchange(a: &mut Node, b: &mut Node, tag: &'static [u8], limit: Duration) {
    let (ia, ib) = (a.handle.me(), b.handle.me());
    a.handle
        .send(ib, Class::Consensus, Bytes::from_static(tag))
        .expect("queued");
    b.handle
        .send(ia, Class::Bulk, Bytes::from_static(tag))
        .expect("queued");
    let m = recv_within(&mut b.rx, limit).expect("frame a -> b");
    assert_eq!((m.from, m.class, &m.frame[..]), (ia, Class::Consensus, tag));
    let m = recv_within(&mut a.rx, limit).expect("frame b -> a");
    assert_eq!((m.from, m.class, &m.frame[..]), (ib, Class::Bulk, tag));
}

fn pair() -> (Vec<PeerConfig>, Node, Node) {
    let (peers, mut sockets) = validator_set(2);
    let s1 = sockets.pop().expect("socket");
    let s0 = sockets.pop().expect("socket");
    let n0 = start(config(0, peers[0].addr, &peers), s0);
    let n1 = start(config(1, peers[1].addr, &peers), s1);
    (peers, n0, n1)
}

/// Restarts node `i` of the pair on its address, stopping it cleanly or by abort.
fn restart(peers: &[PeerConfig], node: &mut Node, graceful: bool) -> Node {
    let i = node.handle.me();
    let t = node.transport.take().expect("running");
    if graceful {
        t.shutdown();
    } else {
        t.abort();
    }
    let socket = rebind(peers[usize::from(i)].addr);
    start(config(i, peers[usize::from(i)].addr, peers), socket)
}

#[test]
fn acceptor_restarts_cleanly() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        let (peers, mut n0, mut n1) = pair();
        exchange(&mut n0, &mut n1, b"before", Duration::from_secs(10));
        let mut n1 = restart(&peers, &mut n1, true);
        wait_relinked(&n0, 1, Duration::from_secs(8));
        exchange(&mut n0, &mut n1, b"after", Duration::from_secs(10));
        assert!(n0.handle.stats().reconnects >= 1);
        assert_eq!(n0.handle.connected_peers(), vec![1]);
        n0.shutdown();
        n1.shutdown();
    });
}

#[test]
fn acceptor_restarts_after_crash() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        let (peers, mut n0, mut n1) = pair();
        exchange(&mut n0, &mut n1, b"before", Duration::from_secs(10));
        // No close frame reaches validator 0: it learns of the restart from the new
        // incarnation's stateless reset (same seed, same reset key), well before the 10 s
        // idle timeout.
        let mut n1 = restart(&peers, &mut n1, false);
        wait_relinked(&n0, 1, Duration::from_secs(8));
        exchange(&mut n0, &mut n1, b"after", Duration::from_secs(5));
        assert!(n0.handle.stats().reconnects >= 1);
        n0.shutdown();
        n1.shutdown();
    });
}

#[test]
fn dialer_restarts_after_crash_and_replaces_its_old_connection() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        let (peers, mut n0, mut n1) = pair();
        exchange(&mut n0, &mut n1, b"before", Duration::from_secs(10));
        let mut n0 = restart(&peers, &mut n0, false);
        wait_relinked(&n1, 0, Duration::from_secs(8));
        exchange(&mut n0, &mut n1, b"after", Duration::from_secs(10));
        let s = n1.handle.stats();
        assert_eq!(s.reconnects, 1, "{s:?}");
        assert_eq!(n1.handle.connected_peers(), vec![0]);
        n0.shutdown();
        n1.shutdown();
    });
}

#[test]
fn frames_queued_while_the_peer_is_down_are_delivered_when_it_comes_up() {
    init_tracing();
    bounded(Duration::from_secs(20), || {
        let (peers, mut sockets) = validator_set(2);
        let s1 = sockets.pop().expect("socket");
        let s0 = sockets.pop().expect("socket");
        let n0 = start(config(0, peers[0].addr, &peers), s0);
        for k in 0..10u8 {
            n0.handle
                .send(1, Class::Consensus, Bytes::from(vec![k]))
                .expect("queued");
        }
        std::thread::sleep(Duration::from_millis(300)); // a few failed dials
        let mut n1 = start(config(1, peers[1].addr, &peers), s1);
        for k in 0..10u8 {
            let m = recv_within(&mut n1.rx, Duration::from_secs(10)).expect("queued frame");
            assert_eq!(&m.frame[..], &[k]);
        }
        drop(n0);
        n1.shutdown();
    });
}
