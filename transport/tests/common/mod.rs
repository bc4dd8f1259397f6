//! Helpers shared by the integration tests: loopback clusters, bounded waits.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bpci_transport::{
    public_key_from_seed, Inbound, Inbox, PeerConfig, Transport, TransportConfig, TransportHandle,
};

/// Deterministic seed of validator `i` (the key the set lists for it).
pub fn seed(i: u16) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = 0xb0;
    s[1..3].copy_from_slice(&i.to_be_bytes());
    s[31] = 7;
    s
}

/// A key nobody in the set has.
pub fn impostor_seed() -> [u8; 32] {
    [0x66; 32]
}

pub fn bind_loopback() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind loopback")
}

/// A validator set of `n` on freshly bound loopback sockets (returned, one per validator).
pub fn validator_set(n: u16) -> (Vec<PeerConfig>, Vec<UdpSocket>) {
    let sockets: Vec<UdpSocket> = (0..n).map(|_| bind_loopback()).collect();
    let peers = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| PeerConfig {
            index: i as u16,
            addr: s.local_addr().expect("addr"),
            public_key: public_key_from_seed(&seed(i as u16)),
        })
        .collect();
    (peers, sockets)
}

/// Test-friendly config: fast reconnects.
pub fn config(me: u16, listen: SocketAddr, peers: &[PeerConfig]) -> TransportConfig {
    let mut cfg = TransportConfig::new(me, listen, seed(me), peers.to_vec());
    cfg.reconnect_min = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(200);
    cfg
}

pub struct Node {
    pub transport: Option<Transport>,
    pub handle: TransportHandle,
    pub rx: Inbox,
}

pub fn start(cfg: TransportConfig, socket: UdpSocket) -> Node {
    let (transport, handle, rx) = Transport::start_with_socket(cfg, socket).expect("start");
    Node {
        transport: Some(transport),
        handle,
        rx,
    }
}

impl Node {
    pub fn shutdown(&mut self) {
        if let Some(t) = self.transport.take() {
            t.shutdown();
        }
    }
}

/// Next inbound frame within `limit`, or None.
pub fn recv_within(rx: &mut Inbox, limit: Duration) -> Option<Inbound> {
    let deadline = Instant::now() + limit;
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`.
pub fn bounded<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std_mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(std_mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("body returned without sending"),
        },
        Err(std_mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded {limit:?}"),
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
