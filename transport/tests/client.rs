//! The client endpoint on loopback: round trips, pinning, hostile frames, closed connections,
//! back-pressure, connection limit and protocol separation from the validator endpoint.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bpci_transport::{
    public_key_from_seed, ClientFrame, ClientRuntime, ClientServer, ClientServerConfig,
    ClientServerHandle, Receiver, SendError, Transport, TransportConfig, TransportError,
};
use bytes::Bytes;
use common::{bounded, init_tracing, seed, wait_until};

const LIMIT: Duration = Duration::from_secs(8);
const MIB: usize = 1024 * 1024;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn server_with(
    edit: impl FnOnce(&mut ClientServerConfig),
) -> (ClientServer, ClientServerHandle, Receiver<ClientFrame>) {
    let mut cfg = ClientServerConfig::new(loopback(), seed(0));
    edit(&mut cfg);
    ClientServer::start(cfg).expect("client server starts")
}

fn server_key() -> [u8; 32] {
    public_key_from_seed(&seed(0))
}

fn recv_within<T>(rx: &mut Receiver<T>, limit: Duration) -> Option<T> {
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

/// True once `rx` reports the channel closed (buffered frames are skipped) within `limit`.
fn closed_within<T>(rx: &mut Receiver<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match rx.try_recv() {
            Ok(_) => {}
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return true,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn frame(client: u8, seq: u32, len: usize) -> Bytes {
    let mut v = vec![client; len.max(5)];
    v[1..5].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

#[test]
fn two_clients_round_trip_in_order_both_ways() {
    init_tracing();
    bounded(LIMIT, || {
        let (server, handle, mut rx) = server_with(|_| {});
        let addr = server.local_addr();
        assert_eq!(handle.local_addr(), addr);
        let clients = ClientRuntime::new(1).expect("runtime");
        let mut conns: Vec<_> = (0..2u8)
            .map(|_| {
                clients
                    .connect(addr, server_key(), 4 * MIB, 4096)
                    .expect("connect")
            })
            .collect();
        assert!(wait_until(Duration::from_secs(2), || handle.connections() == 2));

        // Echo server: every frame goes back to its connection; check per-conn order.
        const N: u32 = 500;
        let sizes = [5usize, 100, 3000, 70_000];
        let echo = std::thread::spawn(move || {
            let mut next: HashMap<u64, (u8, u32)> = HashMap::new();
            for _ in 0..(2 * N) {
                let f = recv_within(&mut rx, Duration::from_secs(5)).expect("client frame");
                let client = f.frame[0];
                let seq = u32::from_be_bytes(f.frame[1..5].try_into().expect("4 bytes"));
                let expected = next.entry(f.conn).or_insert((client, 0));
                assert_eq!((client, seq), *expected, "order on conn {}", f.conn);
                expected.1 += 1;
                assert_eq!(f.frame.len(), sizes[seq as usize % sizes.len()].max(5));
                // The client reads concurrently, so the queue never stays full for long.
                loop {
                    match handle.send(f.conn, f.frame.clone()) {
                        Ok(()) => break,
                        Err(SendError::QueueFull) => std::thread::sleep(Duration::from_millis(1)),
                        Err(e) => panic!("echo: {e}"),
                    }
                }
            }
            assert_eq!(next.len(), 2, "two distinct connection ids");
            (handle, rx)
        });

        let readers: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(c, (tx, _))| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for seq in 0..N {
                        let f = frame(c as u8, seq, sizes[seq as usize % sizes.len()]);
                        loop {
                            match tx.send(f.clone()) {
                                Ok(()) => break,
                                Err(SendError::QueueFull) => {
                                    std::thread::sleep(Duration::from_millis(1))
                                }
                                Err(e) => panic!("client send: {e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for (c, (_, crx)) in conns.iter_mut().enumerate() {
            for seq in 0..N {
                let got = recv_within(crx, Duration::from_secs(5)).expect("echo");
                assert_eq!(got, frame(c as u8, seq, sizes[seq as usize % sizes.len()]));
            }
        }
        for r in readers {
            r.join().expect("sender thread");
        }
        let (handle, _rx) = echo.join().expect("echo thread");
        assert!(conns.iter().all(|(tx, _)| !tx.is_closed()));

        // Shutting the server down closes the clients' receivers.
        server.shutdown();
        assert_eq!(handle.send(1, Bytes::new()), Err(SendError::Closed));
        for (tx, crx) in conns.iter_mut() {
            assert!(closed_within(crx, Duration::from_secs(2)));
            assert!(tx.is_closed());
            assert_eq!(tx.send(Bytes::from_static(b"x")), Err(SendError::Closed));
        }
        clients.shutdown();
    });
}

#[test]
fn wrong_server_key_fails_to_connect_without_hanging() {
    init_tracing();
    bounded(LIMIT, || {
        let (server, handle, _rx) = server_with(|_| {});
        let clients = ClientRuntime::new(1).expect("runtime");
        let start = Instant::now();
        let err = clients
            .connect(server.local_addr(), public_key_from_seed(&seed(1)), MIB, 16)
            .expect_err("wrong pin must fail");
        assert!(matches!(err, TransportError::Connect { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(handle.connections(), 0);
        // The right key still works on the same runtime.
        clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("right pin connects");
        assert!(wait_until(Duration::from_secs(2), || handle.connections() == 1));
    });
}

#[test]
fn oversized_frame_closes_only_that_client() {
    init_tracing();
    bounded(LIMIT, || {
        let (server, handle, mut rx) = server_with(|c| c.max_frame_bytes = 64 * 1024);
        let clients = ClientRuntime::new(1).expect("runtime");
        // The hostile client allows itself larger frames than the server does.
        let (bad, mut bad_rx) = clients
            .connect(server.local_addr(), server_key(), 4 * MIB, 16)
            .expect("connect");
        let (good, mut good_rx) = clients
            .connect(server.local_addr(), server_key(), 64 * 1024, 16)
            .expect("connect");
        bad.send(Bytes::from(vec![1u8; 100 * 1024]))
            .expect("queued");
        assert!(closed_within(&mut bad_rx, Duration::from_secs(3)));
        assert!(wait_until(Duration::from_secs(2), || bad.is_closed()));
        assert!(wait_until(Duration::from_secs(2), || handle.connections() == 1));

        good.send(Bytes::from_static(b"still here"))
            .expect("queued");
        let f = recv_within(&mut rx, Duration::from_secs(2)).expect("good frame");
        assert_eq!(&f.frame[..], b"still here");
        handle
            .send(f.conn, Bytes::from_static(b"ack"))
            .expect("answer");
        assert_eq!(
            recv_within(&mut good_rx, Duration::from_secs(2)),
            Some(Bytes::from_static(b"ack"))
        );
        // The local limit is enforced on the sending side too.
        assert!(matches!(
            good.send(Bytes::from(vec![0u8; 64 * 1024 + 1])),
            Err(SendError::TooLarge { .. })
        ));
        assert!(matches!(
            handle.send(f.conn, Bytes::from(vec![0u8; 64 * 1024 + 1])),
            Err(SendError::TooLarge { .. })
        ));
    });
}

#[test]
fn send_to_closed_or_unknown_connection_errors() {
    init_tracing();
    bounded(LIMIT, || {
        let (server, handle, mut rx) = server_with(|_| {});
        let clients = ClientRuntime::new(1).expect("runtime");
        let (tx, crx) = clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("connect");
        tx.send(Bytes::from_static(b"hi")).expect("queued");
        let conn = recv_within(&mut rx, Duration::from_secs(2))
            .expect("frame")
            .conn;
        handle.send(conn, Bytes::from_static(b"ok")).expect("open");
        assert_eq!(
            handle.send(conn + 1000, Bytes::new()),
            Err(SendError::UnknownConnection(conn + 1000))
        );
        // Dropping both the sender and the receiver closes the connection.
        drop(tx);
        drop(crx);
        assert!(wait_until(Duration::from_secs(3), || {
            handle.send(conn, Bytes::from_static(b"late"))
                == Err(SendError::UnknownConnection(conn))
        }));
        assert_eq!(handle.connections(), 0);

        // An explicit close, and a server-side disconnect, too.
        let (tx, _crx) = clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("connect");
        tx.send(Bytes::from_static(b"hi")).expect("queued");
        let conn = recv_within(&mut rx, Duration::from_secs(2))
            .expect("frame")
            .conn;
        tx.close();
        assert!(tx.is_closed());
        assert!(wait_until(Duration::from_secs(3), || handle
            .send(conn, Bytes::new())
            .is_err()));
        let (tx, mut crx) = clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("connect");
        tx.send(Bytes::from_static(b"hi")).expect("queued");
        let conn = recv_within(&mut rx, Duration::from_secs(2))
            .expect("frame")
            .conn;
        assert!(handle.disconnect(conn));
        assert!(closed_within(&mut crx, Duration::from_secs(3)));
        assert!(wait_until(Duration::from_secs(2), || tx.is_closed()));
    });
}

#[test]
fn client_that_never_reads_fills_its_queue_with_bounded_memory() {
    init_tracing();
    bounded(LIMIT, || {
        let (server, handle, mut rx) = server_with(|c| c.outbound_queue_frames = 16);
        let clients = ClientRuntime::new(1).expect("runtime");
        let (tx, mut crx) = clients
            .connect(server.local_addr(), server_key(), MIB, 4)
            .expect("connect");
        tx.send(Bytes::from_static(b"hi")).expect("queued");
        let conn = recv_within(&mut rx, Duration::from_secs(2))
            .expect("frame")
            .conn;

        const FRAME: usize = 64 * 1024;
        let mut accepted = 0usize;
        let mut full = 0usize;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            match handle.send(conn, frame(7, accepted as u32, FRAME)) {
                Ok(()) => accepted += 1,
                Err(SendError::QueueFull) => {
                    full += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        assert!(full > 0, "queue never filled");
        // Queue (16) + client channel (4) + QUIC windows (≈1-2 MiB) + batches in flight.
        assert!(
            accepted * FRAME < 12 * MIB,
            "{accepted} frames of 64 KiB accepted: memory is not bounded"
        );
        // Once the client reads, everything accepted arrives, in order.
        for seq in 0..accepted {
            let got = recv_within(&mut crx, Duration::from_secs(3)).expect("queued frame");
            assert_eq!(got, frame(7, seq as u32, FRAME));
        }
        assert!(!tx.is_closed());
    });
}

#[test]
fn connections_above_the_limit_are_refused() {
    init_tracing();
    bounded(LIMIT, || {
        let (server, handle, _rx) = server_with(|c| c.max_connections = 1);
        let clients = ClientRuntime::new(1).expect("runtime");
        let (first, _first_rx) = clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("first connects");
        assert!(clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .is_err());
        assert_eq!(handle.connections(), 1);
        // A freed slot can be taken again.
        first.close();
        assert!(wait_until(Duration::from_secs(3), || handle.connections() == 0));
        clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("slot reused");
    });
}

#[test]
fn client_and_validator_protocols_do_not_mix() {
    init_tracing();
    bounded(LIMIT, || {
        // A client cannot reach a validator's transport, even with the right server key.
        let cfg = TransportConfig::new(0, loopback(), seed(0), Vec::new());
        let (validator, _vh, _vrx) = Transport::start(cfg).expect("transport");
        let clients = ClientRuntime::new(1).expect("runtime");
        let err = clients
            .connect(validator.local_addr(), server_key(), MIB, 16)
            .expect_err("client ALPN on the validator endpoint");
        assert!(matches!(err, TransportError::Connect { .. }), "{err}");

        // A validator's dial config cannot reach the client endpoint.
        let (server, handle, _rx) = server_with(|_| {});
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let refused = rt.block_on(async {
            let endpoint = quinn::Endpoint::client(loopback()).expect("endpoint");
            let cfg = bpci_transport::raw::client_config(&seed(1), &server_key()).expect("cfg");
            let connecting = endpoint
                .connect_with(cfg, server.local_addr(), bpci_transport::raw::SERVER_NAME)
                .expect("connect starts");
            let r = tokio::time::timeout(Duration::from_secs(3), connecting).await;
            matches!(r, Ok(Err(_)))
        });
        assert!(
            refused,
            "validator ALPN must be refused by the client endpoint"
        );
        assert_eq!(handle.connections(), 0);
    });
}

#[test]
fn raw_garbage_costs_only_that_connection() {
    init_tracing();
    bounded(LIMIT, || {
        use bpci_transport::raw::{client_endpoint_config, CLIENT_HELLO, SERVER_NAME};
        let (server, handle, mut rx) = server_with(|_| {});
        let clients = ClientRuntime::new(1).expect("runtime");
        let (good, mut good_rx) = clients
            .connect(server.local_addr(), server_key(), MIB, 16)
            .expect("connect");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let addr = server.local_addr();
        // Each case: what the hostile client writes after opening its stream.
        let with_hello = |tail: &[u8]| [&CLIENT_HELLO[..], tail].concat();
        let cases = [
            b"HELLO".to_vec(),                     // bad hello
            with_hello(&[0, 0, 0, 10, 1, 2]),      // truncated frame, then finish
            with_hello(&[0xff, 0xff, 0xff, 0xff]), // u32::MAX length prefix
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let closed = rt.block_on(async {
                let endpoint = quinn::Endpoint::client(loopback()).expect("endpoint");
                let cfg = client_endpoint_config(&server_key()).expect("cfg");
                let conn = endpoint
                    .connect_with(cfg, addr, SERVER_NAME)
                    .expect("connect starts")
                    .await
                    .expect("TLS with the right pin succeeds");
                let (mut send, _recv) = conn.open_bi().await.expect("stream");
                send.write_all(bytes).await.expect("write");
                send.finish().expect("finish");
                tokio::time::timeout(Duration::from_secs(3), conn.closed())
                    .await
                    .is_ok()
            });
            assert!(closed, "case {i}: server must close the connection");
        }
        // The client sees the close before the server's task has dropped the connection.
        assert!(
            wait_until(Duration::from_secs(2), || handle.connections() == 1),
            "only the good client remains: {} connections",
            handle.connections()
        );
        good.send(Bytes::from_static(b"ping")).expect("queued");
        let f = recv_within(&mut rx, Duration::from_secs(2)).expect("good frame");
        assert_eq!(&f.frame[..], b"ping");
        handle
            .send(f.conn, Bytes::from_static(b"pong"))
            .expect("answer");
        assert_eq!(
            recv_within(&mut good_rx, Duration::from_secs(2)),
            Some(Bytes::from_static(b"pong"))
        );
    });
}
