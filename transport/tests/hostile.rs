//! A hostile but authenticated peer (validator 0's key, driven through raw quinn) sends an
//! oversized length prefix, garbage, truncated frames, and disconnects mid-frame. The receiver
//! (validator 2) neither crashes, nor allocates the announced length, nor stalls: frames from
//! the honest validator 1 keep arriving, in order, and validator 0 is heard again once it
//! reconnects and behaves.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bpci_transport::raw::{self, CloseCode, HELLO_BYTES, SERVER_NAME};
use bpci_transport::{Class, Inbound, Inbox, PeerConfig};
use bytes::Bytes;
use common::*;

/// Records the largest single allocation of the process.
struct PeakAlloc;

static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Validator 1 sends numbered consensus frames to validator 2 until stopped.
struct HonestSender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HonestSender {
    fn start(node: &Node) -> Self {
        let handle = node.handle.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut k = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if handle
                    .send(
                        2,
                        Class::Consensus,
                        Bytes::copy_from_slice(&k.to_be_bytes()),
                    )
                    .is_ok()
                {
                    k += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HonestSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checks the receiver's stream from validator 1: contiguous numbers, and that a few more
/// arrive within `limit` (the receiver is not stalled). Frames from others are returned.
struct HonestCheck {
    next: u64,
}

impl HonestCheck {
    fn expect_progress(&mut self, rx: &mut Inbox, limit: Duration) -> Vec<Inbound> {
        let mut others = Vec::new();
        let target = self.next + 5;
        while self.next < target {
            let m = recv_within(rx, limit).expect("honest frames keep arriving");
            if m.from != 1 {
                others.push(m);
                continue;
            }
            let k = u64::from_be_bytes(m.frame[..].try_into().expect("8 bytes"));
            assert_eq!(k, self.next, "frames from validator 1 in order, none lost");
            self.next += 1;
        }
        others
    }

    /// Consumes validator 1's frames (checking their order) until a frame from someone else
    /// shows up or `limit` passes; returns the other frames seen.
    fn drain_until_other(&mut self, rx: &mut Inbox, limit: Duration) -> Vec<Inbound> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let others = self.expect_progress(rx, Duration::from_secs(5));
            if !others.is_empty() {
                return others;
            }
        }
        Vec::new()
    }
}

async fn authenticated(endpoint: &quinn::Endpoint, target: &PeerConfig) -> quinn::Connection {
    let cfg = raw::client_config(&seed(0), &target.public_key).expect("cfg");
    let conn = endpoint
        .connect_with(cfg, target.addr, SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&raw::encode_hello(0)).await.expect("hello");
    let mut reply = [0u8; HELLO_BYTES];
    recv.read_exact(&mut reply).await.expect("hello reply");
    assert_eq!(raw::decode_hello(&reply), Ok(target.index));
    conn
}

async fn closed_with(conn: &quinn::Connection) -> Option<quinn::VarInt> {
    match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code),
        _ => None,
    }
}

struct Setup {
    peers: Vec<PeerConfig>,
    receiver: Node,
    honest: Node,
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
}

fn setup(max_frame_bytes: usize) -> Setup {
    let (peers, mut sockets) = validator_set(3);
    let s2 = sockets.pop().expect("socket");
    let s1 = sockets.pop().expect("socket");
    let mut cfg2 = config(2, peers[2].addr, &peers);
    cfg2.max_frame_bytes = max_frame_bytes;
    let receiver = start(cfg2, s2);
    let honest = start(config(1, peers[1].addr, &peers), s1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let endpoint = {
        let _g = rt.enter();
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint")
    };
    Setup {
        peers,
        receiver,
        honest,
        rt,
        endpoint,
    }
}

#[test]
fn oversized_length_prefix_closes_only_that_connection_without_allocating() {
    init_tracing();
    bounded(Duration::from_secs(25), || {
        let mut s = setup(bpci_transport::MAX_FRAME_BYTES_DEFAULT);
        let _sender = HonestSender::start(&s.honest);
        let mut check = HonestCheck { next: 0 };
        check.expect_progress(&mut s.receiver.rx, Duration::from_secs(10));
        let target = s.peers[2].clone();

        let baseline = LARGEST_ALLOCATION.load(Ordering::Relaxed);
        let code = s.rt.block_on(async {
            let conn = authenticated(&s.endpoint, &target).await;
            let mut uni = conn.open_uni().await.expect("uni");
            let mut bytes = vec![Class::Consensus.tag()];
            bytes.extend_from_slice(&u32::MAX.to_be_bytes()); // announces 4 GiB - 1
            bytes.extend_from_slice(&[0xAB; 1000]);
            uni.write_all(&bytes).await.expect("write");
            closed_with(&conn).await
        });
        assert_eq!(code, Some(CloseCode::FrameTooLarge.code()));
        assert_eq!(s.receiver.handle.stats().frame_errors, 1);
        let peak = LARGEST_ALLOCATION.load(Ordering::Relaxed);
        assert!(
            peak < 64 * 1024 * 1024,
            "largest allocation {peak} bytes (before the attack: {baseline})"
        );

        // Validator 1 was never disturbed.
        let others = check.expect_progress(&mut s.receiver.rx, Duration::from_secs(5));
        assert!(others.is_empty(), "nothing from the attacker: {others:?}");

        // Validator 0 reconnects and behaves: its frames are delivered again.
        s.rt.block_on(async {
            let conn = authenticated(&s.endpoint, &target).await;
            let mut uni = conn.open_uni().await.expect("uni");
            let mut bytes = vec![Class::Bulk.tag()];
            bytes.extend_from_slice(&5u32.to_be_bytes());
            bytes.extend_from_slice(b"hello");
            uni.write_all(&bytes).await.expect("write");
            uni.finish().expect("finish");
            uni.stopped().await.ok();
            // Leave the connection open until the frame was read.
            tokio::time::sleep(Duration::from_millis(200)).await;
            conn.close(0u32.into(), b"done");
        });
        let others = check.drain_until_other(&mut s.receiver.rx, Duration::from_secs(10));
        let m = others
            .first()
            .expect("frame from the reconnected validator 0 delivered");
        assert_eq!(
            (m.from, m.class, &m.frame[..]),
            (0, Class::Bulk, &b"hello"[..])
        );
        assert_eq!(s.receiver.handle.stats().frame_errors, 1);

        s.endpoint.close(0u32.into(), b"");
        drop(_sender);
        s.honest.shutdown();
        s.receiver.shutdown();
    });
}

#[test]
fn garbage_truncated_frames_and_mid_frame_disconnects_do_not_stall_others() {
    init_tracing();
    bounded(Duration::from_secs(25), || {
        let mut s = setup(64 * 1024);
        let _sender = HonestSender::start(&s.honest);
        let mut check = HonestCheck { next: 0 };
        check.expect_progress(&mut s.receiver.rx, Duration::from_secs(10));
        let target = s.peers[2].clone();

        // Unauthenticated UDP garbage at the listening port.
        let junk = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut x = 0x1234_5678u32;
        for i in 0..2000 {
            let mut datagram = vec![0u8; 1 + (i * 37) % 1400];
            for b in datagram.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let _ = junk.send_to(&datagram, target.addr);
        }
        check.expect_progress(&mut s.receiver.rx, Duration::from_secs(5));

        // Authenticated streams with garbage.
        let codes = s.rt.block_on(async {
            let mut codes = Vec::new();
            // Unknown class tag.
            let conn = authenticated(&s.endpoint, &target).await;
            let mut uni = conn.open_uni().await.expect("uni");
            uni.write_all(b"\x7fgarbage garbage garbage")
                .await
                .expect("write");
            codes.push(closed_with(&conn).await);

            // Random bytes after a valid tag: a length prefix above the 64 KiB limit.
            let conn = authenticated(&s.endpoint, &target).await;
            let mut uni = conn.open_uni().await.expect("uni");
            uni.write_all(b"\x01\x66\x66\x66\x66garbage")
                .await
                .expect("write");
            codes.push(closed_with(&conn).await);

            // Two streams of one class.
            let conn = authenticated(&s.endpoint, &target).await;
            for _ in 0..2 {
                let mut uni = conn.open_uni().await.expect("uni");
                uni.write_all(&[Class::Bulk.tag()]).await.expect("write");
            }
            codes.push(closed_with(&conn).await);
            codes
        });
        assert_eq!(
            codes,
            vec![
                Some(CloseCode::Protocol.code()),
                Some(CloseCode::FrameTooLarge.code()),
                Some(CloseCode::Protocol.code()),
            ]
        );
        check.expect_progress(&mut s.receiver.rx, Duration::from_secs(5));

        s.rt.block_on(async {
            // A truncated frame: the stream finishes inside it.
            let conn = authenticated(&s.endpoint, &target).await;
            let mut uni = conn.open_uni().await.expect("uni");
            uni.write_all(&[Class::Consensus.tag(), 0, 0, 3, 232, 1, 2, 3])
                .await
                .expect("write");
            uni.finish().expect("finish");
            uni.stopped().await.ok();

            // A disconnect in the middle of a frame.
            let conn2 = authenticated(&s.endpoint, &target).await;
            let mut uni = conn2.open_uni().await.expect("uni");
            uni.write_all(&[Class::Bulk.tag(), 0, 0, 16, 0, 9, 9, 9])
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn2.close(7u32.into(), b"vanish");
            drop(conn);

            // TLS done but no hello ever: must not block other handshakes.
            let cfg = raw::client_config(&seed(0), &target.public_key).expect("cfg");
            let silent = s
                .endpoint
                .connect_with(cfg, target.addr, SERVER_NAME)
                .expect("connect")
                .await
                .expect("handshake");
            tokio::time::sleep(Duration::from_millis(50)).await;
            // ...while another connection from validator 0 completes and is served.
            let conn3 = authenticated(&s.endpoint, &target).await;
            let mut uni = conn3.open_uni().await.expect("uni");
            uni.write_all(&[Class::Consensus.tag(), 0, 0, 0, 2, b'o', b'k'])
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(silent);
            conn3.close(0u32.into(), b"done");
        });
        let others = check.drain_until_other(&mut s.receiver.rx, Duration::from_secs(10));
        assert!(
            others.iter().any(|m| m.from == 0 && &m.frame[..] == b"ok"),
            "validator 0's good frame after the garbage is delivered: {others:?}"
        );
        let stats = s.receiver.handle.stats();
        assert!(stats.frame_errors >= 5, "{stats:?}");

        s.endpoint.close(0u32.into(), b"");
        drop(_sender);
        s.honest.shutdown();
        s.receiver.shutdown();
        let _: SocketAddr = target.addr;
    });
}
