//! The client endpoint: clients and load generators submit transactions to one validator and
//! receive its answers and commit notices.
//!
//! ```text
//! TLS 1.3, ALPN "bpci-client/1" (never "bpci/1": neither endpoint speaks the other's protocol).
//! The validator presents its own Ed25519 key (the validator identity) as an RFC 7250 raw
//! public key; the client pins it. Clients present no key and are not authenticated.
//!
//! client                                          validator (ClientServer)
//!   open the one bidi stream ── hello "BPCC" 0x01 ──▶ registers the connection (id)
//!                            ◀── hello "BPCC" 0x01 ── (connect() returns only now)
//!   then both directions: [len: u32 BE][frame] [len: u32 BE][frame] ...
//! ```
//!
//! The 5-byte hello exists because a QUIC stream becomes visible to the peer only once data
//! is sent on it: with it, [`ClientRuntime::connect`] returns only once the server has
//! accepted the connection and its stream.
//!
//! Frames are at most `max_frame_bytes` (each side its own limit); an oversized length prefix
//! closes the connection before anything is allocated for it, and garbage or a truncated frame
//! costs only that connection. Writers drain their bounded queue and coalesce it into
//! ≈256 KiB stream writes, like the validator links.
//!
//! Server side, all connections feed one bounded channel of [`ClientFrame`]s; when it is
//! full the readers wait and QUIC flow control stops the clients. Client side, each
//! connection has its own bounded inbound channel; a client that does not read stops the
//! server's writer for that connection, whose queue then refuses frames
//! ([`SendError::QueueFull`]).
//!
//! Client side, many connections share one [`ClientRuntime`] (one tokio runtime, one UDP
//! socket per address family), so a load generator can open hundreds of them cheaply.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::error::{SendError, TransportError};
use crate::frame::{BatchEncoder, FrameDecoder};
use crate::tls;
use crate::transport::tune_socket;
use crate::wire::{CloseCode, SERVER_NAME};

/// Default hard limit on one client frame: 4 MiB.
pub const CLIENT_MAX_FRAME_BYTES_DEFAULT: usize = 4 * 1024 * 1024;
/// Default limit of open client connections (handshakes included); more are refused.
pub const CLIENT_MAX_CONNECTIONS_DEFAULT: usize = 1024;
/// Default bound of the server's inbound channel (all client connections together).
pub const CLIENT_INBOUND_QUEUE_FRAMES_DEFAULT: usize = 8192;
/// Default bound of the server's send queue per client connection.
pub const CLIENT_OUTBOUND_QUEUE_FRAMES_DEFAULT: usize = 1024;
/// Default number of tokio worker threads of a [`ClientServer`].
pub const CLIENT_WORKER_THREADS_DEFAULT: usize = 1;
/// Bound on [`ClientRuntime::connect`] (QUIC + TLS handshake and hello exchange), and on the
/// server's handshake with one client.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The hello each side sends first on the client stream: magic `BPCC`, protocol version 1.
pub const CLIENT_HELLO: [u8; 5] = *b"BPCC\x01";

/// Idle timeout of client connections (milliseconds); clients send keep-alives.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// Keep-alive interval of the client side.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Receive window of the client stream (and of the whole connection: it has one stream).
/// Small on purpose: the server may hold many client connections.
const RECEIVE_WINDOW_BYTES: u32 = 1024 * 1024;
/// Unacknowledged bytes we keep in flight per client connection.
const SEND_WINDOW_BYTES: u64 = 2 * 1024 * 1024;
/// Incoming connection attempts quinn buffers before we accept or refuse them.
const INCOMING_MAX: usize = 256;
/// Client connections that may be in their handshake at once; more are refused.
const PENDING_HANDSHAKES_MAX: usize = 64;
/// Frames a writer takes from its queue per wake-up.
const BATCH_FRAMES_MAX: usize = 1024;
/// Largest chunk a reader asks its stream for.
const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// How long shutdown waits for close frames to reach the peers.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);
/// How long shutdown waits for the runtime's threads.
const SHUTDOWN_JOIN: Duration = Duration::from_secs(2);

/// Configuration of a [`ClientServer`]. Build it with [`ClientServerConfig::new`] and adjust.
#[derive(Clone)]
pub struct ClientServerConfig {
    /// UDP address to listen on (port 0 picks a free port; see [`ClientServer::local_addr`]).
    pub listen: SocketAddr,
    /// The validator's Ed25519 seed: its public key is the server identity clients pin.
    pub secret_seed: [u8; 32],
    /// Hard limit on one frame a client sends (1..=u32::MAX); also refused by
    /// [`ClientServerHandle::send`] above it.
    pub max_frame_bytes: usize,
    /// Open client connections (handshakes included) at most; more are refused.
    pub max_connections: usize,
    /// Bound of the one inbound channel all client connections feed (readers wait when full).
    pub inbound_queue_frames: usize,
    /// Bound of the send queue of each client connection.
    pub outbound_queue_frames: usize,
    /// tokio worker threads of the runtime the server owns (1 or more).
    pub worker_threads: usize,
    /// Largest UDP payload of a QUIC packet, as [`crate::TransportConfig::max_udp_payload`].
    pub max_udp_payload: Option<u16>,
}

impl std::fmt::Debug for ClientServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientServerConfig")
            .field("listen", &self.listen)
            .field("secret_seed", &"<redacted>")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_connections", &self.max_connections)
            .field("inbound_queue_frames", &self.inbound_queue_frames)
            .field("outbound_queue_frames", &self.outbound_queue_frames)
            .field("worker_threads", &self.worker_threads)
            .field("max_udp_payload", &self.max_udp_payload)
            .finish()
    }
}

impl ClientServerConfig {
    /// A config with the `CLIENT_*_DEFAULT` values for every tunable.
    pub fn new(listen: SocketAddr, secret_seed: [u8; 32]) -> Self {
        Self {
            listen,
            secret_seed,
            max_frame_bytes: CLIENT_MAX_FRAME_BYTES_DEFAULT,
            max_connections: CLIENT_MAX_CONNECTIONS_DEFAULT,
            inbound_queue_frames: CLIENT_INBOUND_QUEUE_FRAMES_DEFAULT,
            outbound_queue_frames: CLIENT_OUTBOUND_QUEUE_FRAMES_DEFAULT,
            worker_threads: CLIENT_WORKER_THREADS_DEFAULT,
            max_udp_payload: None,
        }
    }

    fn validate(&self) -> Result<(), TransportError> {
        check_frame_limit(self.max_frame_bytes)?;
        crate::mtu::check(self.max_udp_payload)?;
        let invalid = |field, reason| Err(TransportError::InvalidConfig { field, reason });
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.inbound_queue_frames == 0 {
            return invalid("inbound_queue_frames", "must be at least 1");
        }
        if self.outbound_queue_frames == 0 {
            return invalid("outbound_queue_frames", "must be at least 1");
        }
        if self.worker_threads == 0 {
            return invalid("worker_threads", "must be at least 1");
        }
        Ok(())
    }
}

fn check_frame_limit(max_frame_bytes: usize) -> Result<(), TransportError> {
    if max_frame_bytes == 0 || max_frame_bytes as u64 > u64::from(u32::MAX) {
        return Err(TransportError::InvalidConfig {
            field: "max_frame_bytes",
            reason: "must be in 1..=u32::MAX",
        });
    }
    Ok(())
}

/// A frame a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    /// The connection it came on: unique per accepted connection for the life of the server
    /// (never reused). Answer with [`ClientServerHandle::send`] to this id.
    pub conn: u64,
    /// The frame's bytes (without the length prefix).
    pub frame: Bytes,
}

/// One registered client connection.
#[derive(Debug)]
struct ServerConn {
    tx: mpsc::Sender<Bytes>,
    conn: quinn::Connection,
}

/// What the server handle and its tasks share.
#[derive(Debug)]
struct ServerShared {
    local_addr: SocketAddr,
    max_frame_bytes: usize,
    outbound_queue_frames: usize,
    conns: RwLock<HashMap<u64, ServerConn>>,
    closed: AtomicBool,
    next_id: AtomicU64,
}

impl ServerShared {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers an accepted connection; `None` if the server is shutting down.
    fn register(&self, conn: &quinn::Connection) -> Option<(u64, mpsc::Receiver<Bytes>)> {
        let (tx, rx) = mpsc::channel(self.outbound_queue_frames);
        let mut conns = self.conns.write().unwrap_or_else(PoisonError::into_inner);
        if self.is_closed() {
            CloseCode::Shutdown.close(conn);
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        conns.insert(
            id,
            ServerConn {
                tx,
                conn: conn.clone(),
            },
        );
        Some((id, rx))
    }

    fn unregister(&self, id: u64) {
        self.conns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Marks the server closed and closes every connection.
    fn close_all(&self) {
        let mut conns = self.conns.write().unwrap_or_else(PoisonError::into_inner);
        self.closed.store(true, Ordering::Release);
        for (_, c) in conns.drain() {
            CloseCode::Shutdown.close(&c.conn);
        }
    }
}

#[derive(Debug, Clone)]
struct ServerCtx {
    shared: Arc<ServerShared>,
    inbound: mpsc::Sender<ClientFrame>,
}

/// A validator's client endpoint. It owns a small tokio runtime (`worker_threads` threads,
/// named `bpci-client-server`). Dropping it shuts it down like [`ClientServer::shutdown`].
pub struct ClientServer {
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: quinn::Endpoint,
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for ClientServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientServer")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

/// The sending side of a [`ClientServer`]: `Send + Sync`, cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct ClientServerHandle {
    shared: Arc<ServerShared>,
}

impl ClientServer {
    /// Binds `cfg.listen` and starts accepting clients. Returns the server, a handle for
    /// answering and the bounded channel of client frames (read it from any thread with
    /// `blocking_recv` or `try_recv`; it yields `None` once the server has shut down).
    pub fn start(
        cfg: ClientServerConfig,
    ) -> Result<
        (
            ClientServer,
            ClientServerHandle,
            mpsc::Receiver<ClientFrame>,
        ),
        TransportError,
    > {
        cfg.validate()?;
        let socket = UdpSocket::bind(cfg.listen).map_err(|source| TransportError::Bind {
            addr: cfg.listen,
            source,
        })?;
        Self::start_with_socket(cfg, socket)
    }

    /// Like [`ClientServer::start`] on a socket the caller bound (`cfg.listen` is ignored).
    pub fn start_with_socket(
        cfg: ClientServerConfig,
        socket: UdpSocket,
    ) -> Result<
        (
            ClientServer,
            ClientServerHandle,
            mpsc::Receiver<ClientFrame>,
        ),
        TransportError,
    > {
        cfg.validate()?;
        let local_addr = socket.local_addr().map_err(TransportError::Endpoint)?;
        tune_socket(&socket);

        let mut transport = quinn_transport_config();
        transport.max_concurrent_bidi_streams(1u32.into());
        crate::mtu::apply(&mut transport, cfg.max_udp_payload, local_addr.ip());
        let mut server =
            quinn::ServerConfig::with_crypto(tls::client_endpoint_server_crypto(&cfg.secret_seed)?);
        server.transport_config(Arc::new(transport));
        server.max_incoming(INCOMING_MAX);
        let (reset_key, cid_key) = tls::client_endpoint_keys(&cfg.secret_seed);
        let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
        crate::mtu::accept_large(&mut endpoint_cfg);
        endpoint_cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads)
            .thread_name("bpci-client-server")
            .enable_all()
            .build()
            .map_err(TransportError::Runtime)?;
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::new(
                endpoint_cfg,
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(TransportError::Endpoint)?
        };
        let shared = Arc::new(ServerShared {
            local_addr,
            max_frame_bytes: cfg.max_frame_bytes,
            outbound_queue_frames: cfg.outbound_queue_frames,
            conns: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let (inbound, inbound_rx) = mpsc::channel(cfg.inbound_queue_frames);
        let ctx = ServerCtx {
            shared: shared.clone(),
            inbound,
        };
        runtime.spawn(server_accept_loop(
            ctx,
            endpoint.clone(),
            cfg.max_connections,
        ));
        tracing::info!(%local_addr, "client endpoint: started");
        let handle = ClientServerHandle {
            shared: shared.clone(),
        };
        Ok((
            ClientServer {
                runtime: Some(runtime),
                endpoint,
                shared,
            },
            handle,
            inbound_rx,
        ))
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Closes every client connection, waits briefly for the close to go out, stops all tasks
    /// and joins the runtime's threads. The frame channel then yields `None` and every
    /// handle's `send` returns [`SendError::Closed`]. From inside another tokio runtime it
    /// cannot block and stops in the background instead.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        self.shared.close_all();
        stop_runtime(runtime, std::slice::from_ref(&self.endpoint));
        tracing::info!(local_addr = %self.shared.local_addr, "client endpoint: stopped");
    }
}

impl Drop for ClientServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Closes the endpoints, lets the close frames go out (unless called from async code) and
/// stops the runtime.
fn stop_runtime(runtime: tokio::runtime::Runtime, endpoints: &[quinn::Endpoint]) {
    for e in endpoints {
        e.close(CloseCode::Shutdown.code(), CloseCode::Shutdown.reason());
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        runtime.shutdown_background();
        return;
    }
    let endpoints = endpoints.to_vec();
    runtime.block_on(async move {
        let idle = async {
            for e in &endpoints {
                e.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_DRAIN, idle).await;
    });
    runtime.shutdown_timeout(SHUTDOWN_JOIN);
}

impl ClientServerHandle {
    /// Queues `frame` for client connection `conn`. Never blocks.
    ///
    /// Errors: [`SendError::QueueFull`] when that connection's queue holds
    /// `outbound_queue_frames` frames (the client is not reading fast enough);
    /// [`SendError::UnknownConnection`] when no such connection is open (any more);
    /// [`SendError::TooLarge`] above `max_frame_bytes`; [`SendError::Closed`] after shutdown.
    pub fn send(&self, conn: u64, frame: Bytes) -> Result<(), SendError> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(SendError::Closed);
        }
        if frame.len() > shared.max_frame_bytes {
            return Err(SendError::TooLarge {
                len: frame.len(),
                max: shared.max_frame_bytes,
            });
        }
        let conns = shared.conns.read().unwrap_or_else(PoisonError::into_inner);
        let entry = conns.get(&conn).ok_or(SendError::UnknownConnection(conn))?;
        match entry.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SendError::QueueFull),
            Err(TrySendError::Closed(_)) => Err(SendError::UnknownConnection(conn)),
        }
    }

    /// Closes client connection `conn` (e.g. a misbehaving client); false if it is not open.
    pub fn disconnect(&self, conn: u64) -> bool {
        let conns = self
            .shared
            .conns
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match conns.get(&conn) {
            Some(c) => {
                CloseCode::Protocol.close(&c.conn);
                true
            }
            None => false,
        }
    }

    /// Client connections currently open (handshake and hello done).
    pub fn connections(&self) -> usize {
        self.shared
            .conns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }
}

/// QUIC settings shared by both sides of a client connection: one bidi stream, no uni
/// streams, no datagrams, small windows.
fn quinn_transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        IDLE_TIMEOUT_MS,
    ))))
    .stream_receive_window(RECEIVE_WINDOW_BYTES.into())
    .receive_window(RECEIVE_WINDOW_BYTES.into())
    .send_window(SEND_WINDOW_BYTES)
    .max_concurrent_bidi_streams(0u32.into())
    .max_concurrent_uni_streams(0u32.into())
    .datagram_receive_buffer_size(None);
    t
}

async fn server_accept_loop(ctx: ServerCtx, endpoint: quinn::Endpoint, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let pending = Arc::new(Semaphore::new(PENDING_HANDSHAKES_MAX));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "client endpoint: too many connections; refusing");
            incoming.refuse();
            continue;
        };
        let Ok(handshake) = pending.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "client endpoint: too many pending handshakes; refusing");
            incoming.refuse();
            continue;
        };
        let remote = incoming.remote_address();
        tokio::spawn(
            serve_connection(ctx.clone(), incoming, slot, handshake)
                .instrument(tracing::debug_span!("client.conn", %remote)),
        );
    }
}

/// Handshake, hello, then runs the connection until it closes. `_slot` counts against
/// `max_connections` for the whole life of the connection.
async fn serve_connection(
    ctx: ServerCtx,
    incoming: quinn::Incoming,
    _slot: OwnedSemaphorePermit,
    handshake: OwnedSemaphorePermit,
) {
    let connecting = async { incoming.accept()?.await };
    let conn = match tokio::time::timeout(CLIENT_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("client handshake timed out");
            return;
        }
    };
    let hello = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut hello = [0u8; CLIENT_HELLO.len()];
        recv.read_exact(&mut hello)
            .await
            .map_err(|e| e.to_string())?;
        if hello != CLIENT_HELLO {
            return Err("bad hello".to_string());
        }
        Ok((send, recv))
    };
    let (mut send, recv) = match tokio::time::timeout(CLIENT_CONNECT_TIMEOUT, hello).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client hello failed");
            CloseCode::Protocol.close(&conn);
            return;
        }
        Err(_) => {
            tracing::debug!("client hello timed out");
            CloseCode::Protocol.close(&conn);
            return;
        }
    };
    drop(handshake);
    let Some((id, rx)) = ctx.shared.register(&conn) else {
        return;
    };
    if send.write_all(&CLIENT_HELLO).await.is_ok() {
        tracing::debug!(conn = id, "client connection: up");
        tokio::spawn(write_frames(conn.clone(), send, rx).in_current_span());
        tokio::spawn(server_read(ctx.clone(), id, conn.clone(), recv).in_current_span());
    } else {
        CloseCode::Protocol.close(&conn);
    }
    let reason = conn.closed().await;
    ctx.shared.unregister(id);
    tracing::debug!(conn = id, %reason, "client connection: down");
}

/// Reads one client's frames into the server's inbound channel, in order.
async fn server_read(
    ctx: ServerCtx,
    id: u64,
    conn: quinn::Connection,
    mut stream: quinn::RecvStream,
) {
    let mut decoder = FrameDecoder::new(ctx.shared.max_frame_bytes);
    loop {
        let chunk = match stream.read_chunk(READ_CHUNK_BYTES_MAX, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                // The client finished its side; it may still read answers.
                if decoder.is_mid_frame() {
                    tracing::warn!(conn = id, "client stream ended inside a frame; closing");
                    CloseCode::Protocol.close(&conn);
                }
                return;
            }
            Err(_) => return,
        };
        decoder.push(&chunk.bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if ctx
                        .inbound
                        .send(ClientFrame { conn: id, frame })
                        .await
                        .is_err()
                    {
                        return; // the node dropped its receiver
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(conn = id, error = %e, "client frame too large; closing");
                    CloseCode::FrameTooLarge.close(&conn);
                    return;
                }
            }
        }
    }
}

/// Drains a connection's send queue into its stream, coalescing everything queued into
/// ≈256 KiB writes. Finishes the stream when every sender is gone; returns when the
/// connection or the stream fails.
async fn write_frames(
    conn: quinn::Connection,
    mut stream: quinn::SendStream,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let mut encoder = BatchEncoder::default();
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH_FRAMES_MAX);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_FRAMES_MAX) => n,
            _ = conn.closed() => return,
        };
        if received == 0 {
            let _ = stream.finish();
            return;
        }
        for frame in batch.drain(..) {
            encoder.push(frame);
            if encoder.is_full() && write_chunks(&mut stream, encoder.take()).await.is_err() {
                return;
            }
        }
        if write_chunks(&mut stream, encoder.take()).await.is_err() {
            return;
        }
    }
}

async fn write_chunks(
    stream: &mut quinn::SendStream,
    mut chunks: Vec<Bytes>,
) -> Result<(), quinn::WriteError> {
    if chunks.is_empty() {
        return Ok(());
    }
    stream.write_all_chunks(&mut chunks).await.inspect_err(|e| {
        tracing::debug!(error = %e, "client stream write failed");
    })
}

/// Owns the tokio runtime (`worker_threads` threads, named `bpci-client`) and one client UDP
/// endpoint per address family, created on first use, that any number of
/// [`ClientRuntime::connect`] calls share. Dropping it shuts it down like
/// [`ClientRuntime::shutdown`].
pub struct ClientRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    /// Client endpoints for IPv4 and IPv6 servers.
    endpoints: Mutex<[Option<quinn::Endpoint>; 2]>,
}

impl std::fmt::Debug for ClientRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRuntime").finish_non_exhaustive()
    }
}

/// The sending side of one client connection: cheap to clone, `Send + Sync`, never blocks.
#[derive(Clone, Debug)]
pub struct ClientSender {
    tx: mpsc::Sender<Bytes>,
    conn: quinn::Connection,
    max_frame_bytes: usize,
}

impl ClientRuntime {
    /// Starts the runtime with `worker_threads` (at least 1) threads.
    pub fn new(worker_threads: usize) -> Result<Self, TransportError> {
        if worker_threads == 0 {
            return Err(TransportError::InvalidConfig {
                field: "worker_threads",
                reason: "must be at least 1",
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .thread_name("bpci-client")
            .enable_all()
            .build()
            .map_err(TransportError::Runtime)?;
        Ok(Self {
            runtime: Some(runtime),
            endpoints: Mutex::new([None, None]),
        })
    }

    /// Connects to the client endpoint at `server`, accepting only a server that proves it
    /// holds `server_key` (the validator's Ed25519 public key). Blocks the calling thread
    /// until the connection and its stream are open, at most [`CLIENT_CONNECT_TIMEOUT`];
    /// call it from a plain thread, not from async code.
    ///
    /// `max_frame_bytes` (1..=u32::MAX) limits frames both ways on this side: larger frames
    /// are refused by [`ClientSender::send`], and a larger frame from the server closes the
    /// connection. `queue_frames` (at least 1) bounds the send queue and the receive channel.
    ///
    /// The receiver yields the server's frames in order, and `None` once the connection has
    /// closed. The connection stays open while a [`ClientSender`] or the receiver is alive
    /// (a dropped receiver's frames are read and discarded); it closes when both are gone.
    pub fn connect(
        &self,
        server: SocketAddr,
        server_key: [u8; 32],
        max_frame_bytes: usize,
        queue_frames: usize,
    ) -> Result<(ClientSender, mpsc::Receiver<Bytes>), TransportError> {
        self.connect_within(
            server,
            server_key,
            max_frame_bytes,
            queue_frames,
            CLIENT_CONNECT_TIMEOUT,
        )
    }

    /// [`ClientRuntime::connect`], giving up after `timeout` (a client that tries again soon
    /// waits less for a server that is not up yet).
    pub fn connect_within(
        &self,
        server: SocketAddr,
        server_key: [u8; 32],
        max_frame_bytes: usize,
        queue_frames: usize,
        timeout: Duration,
    ) -> Result<(ClientSender, mpsc::Receiver<Bytes>), TransportError> {
        check_frame_limit(max_frame_bytes)?;
        if queue_frames == 0 {
            return Err(TransportError::InvalidConfig {
                field: "queue_frames",
                reason: "must be at least 1",
            });
        }
        let connect_error = |reason: String| TransportError::Connect {
            addr: server,
            reason,
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| connect_error("client runtime is shut down".into()))?;
        let endpoint = self.endpoint_for(runtime, server)?;
        let mut client = quinn::ClientConfig::new(tls::client_endpoint_client_crypto(&server_key)?);
        let mut transport = quinn_transport_config();
        transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
        crate::mtu::apply(&mut transport, None, server.ip());
        client.transport_config(Arc::new(transport));

        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let opened = tokio::time::timeout(
                timeout,
                open_client(endpoint, client, server, max_frame_bytes, queue_frames),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            let _ = done_tx.send(opened);
        });
        match done_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(reason)) => Err(connect_error(reason)),
            Err(_) => Err(connect_error("timed out".into())),
        }
    }

    /// The shared client endpoint for `server`'s address family.
    fn endpoint_for(
        &self,
        runtime: &tokio::runtime::Runtime,
        server: SocketAddr,
    ) -> Result<quinn::Endpoint, TransportError> {
        let (slot, bind): (usize, SocketAddr) = match server {
            SocketAddr::V4(_) => (0, (Ipv4Addr::UNSPECIFIED, 0).into()),
            SocketAddr::V6(_) => (1, (Ipv6Addr::UNSPECIFIED, 0).into()),
        };
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = &endpoints[slot] {
            return Ok(e.clone());
        }
        let socket =
            UdpSocket::bind(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
        tune_socket(&socket);
        let endpoint = {
            let _guard = runtime.enter();
            let mut endpoint_cfg = quinn::EndpointConfig::default();
            crate::mtu::accept_large(&mut endpoint_cfg);
            quinn::Endpoint::new(endpoint_cfg, None, socket, Arc::new(quinn::TokioRuntime))
                .map_err(TransportError::Endpoint)?
        };
        endpoints[slot] = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Closes every connection of this runtime, waits briefly for the close to go out and
    /// stops the runtime. Receivers then yield `None`; senders return [`SendError::Closed`].
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let endpoints: Vec<quinn::Endpoint> = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        stop_runtime(runtime, &endpoints);
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// QUIC + TLS, open the stream, hello exchange; then starts the connection's tasks.
async fn open_client(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    server: SocketAddr,
    max_frame_bytes: usize,
    queue_frames: usize,
) -> Result<(ClientSender, mpsc::Receiver<Bytes>), String> {
    let conn = endpoint
        .connect_with(client, server, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let hello = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&CLIENT_HELLO)
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; CLIENT_HELLO.len()];
        recv.read_exact(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        if reply != CLIENT_HELLO {
            return Err("bad hello from server".to_string());
        }
        Ok((send, recv))
    };
    let (send, recv) = match hello.await {
        Ok(streams) => streams,
        Err(e) => {
            CloseCode::Protocol.close(&conn);
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(queue_frames);
    let (out_tx, out_rx) = mpsc::channel(queue_frames);
    let (senders_gone_tx, senders_gone_rx) = oneshot::channel();
    let writer_conn = conn.clone();
    tokio::spawn(async move {
        write_frames(writer_conn, send, rx).await;
        let _ = senders_gone_tx.send(());
    });
    tokio::spawn(client_read(
        conn.clone(),
        recv,
        out_tx,
        senders_gone_rx,
        max_frame_bytes,
    ));
    Ok((
        ClientSender {
            tx,
            conn,
            max_frame_bytes,
        },
        out_rx,
    ))
}

/// Reads the server's frames into the client's channel, in order. After the receiver is
/// dropped it keeps reading (and discards), so the server is not blocked; once the senders
/// are gone too it closes the connection.
async fn client_read(
    conn: quinn::Connection,
    mut stream: quinn::RecvStream,
    out: mpsc::Sender<Bytes>,
    mut senders_gone: oneshot::Receiver<()>,
    max_frame_bytes: usize,
) {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    let mut receiver_gone = false;
    let mut writer_gone = false;
    loop {
        if receiver_gone && writer_gone {
            CloseCode::Shutdown.close(&conn);
            return;
        }
        tokio::select! {
            read = stream.read_chunk(READ_CHUNK_BYTES_MAX, true) => {
                let chunk = match read {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        // The server finished its side: nothing more can arrive.
                        let code = if decoder.is_mid_frame() {
                            CloseCode::Protocol
                        } else {
                            CloseCode::Shutdown
                        };
                        code.close(&conn);
                        return;
                    }
                    Err(_) => return,
                };
                decoder.push(&chunk.bytes);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            if !receiver_gone && out.send(frame).await.is_err() {
                                receiver_gone = true;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "frame from the server too large; closing");
                            CloseCode::FrameTooLarge.close(&conn);
                            return;
                        }
                    }
                }
            }
            _ = out.closed(), if !receiver_gone => receiver_gone = true,
            _ = &mut senders_gone, if !writer_gone => writer_gone = true,
        }
    }
}

impl ClientSender {
    /// Queues `frame` for the server. Never blocks: [`SendError::QueueFull`] when the bounded
    /// queue is full, [`SendError::TooLarge`] above `max_frame_bytes`, [`SendError::Closed`]
    /// once the connection has closed.
    pub fn send(&self, frame: Bytes) -> Result<(), SendError> {
        if frame.len() > self.max_frame_bytes {
            return Err(SendError::TooLarge {
                len: frame.len(),
                max: self.max_frame_bytes,
            });
        }
        if self.conn.close_reason().is_some() {
            return Err(SendError::Closed);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SendError::QueueFull),
            Err(TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// True once the connection has closed (by either side, or the runtime shut down).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.conn.close_reason().is_some()
    }

    /// Closes the connection now (frames still queued are dropped). The receiver then
    /// yields `None` after the frames already received.
    pub fn close(&self) {
        CloseCode::Shutdown.close(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<ClientServerHandle>();
        check::<ClientSender>();
        check::<ClientRuntime>();
        fn check_send<T: Send + 'static>() {}
        check_send::<ClientServer>();
        check_send::<mpsc::Receiver<ClientFrame>>();
    }

    #[test]
    fn config_validation() {
        let base = ClientServerConfig::new("127.0.0.1:0".parse().expect("addr"), [1; 32]);
        assert!(base.validate().is_ok());
        for bad in [
            ClientServerConfig {
                max_frame_bytes: 0,
                ..base.clone()
            },
            ClientServerConfig {
                max_connections: 0,
                ..base.clone()
            },
            ClientServerConfig {
                inbound_queue_frames: 0,
                ..base.clone()
            },
            ClientServerConfig {
                outbound_queue_frames: 0,
                ..base.clone()
            },
            ClientServerConfig {
                worker_threads: 0,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(!format!("{base:?}").contains("[1, 1"), "seed is redacted");
    }
}
