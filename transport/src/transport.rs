//! [`Transport`] (owns the runtime and the endpoint) and [`TransportHandle`] (the cheap,
//! thread-safe sending side).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tracing::Instrument;

use crate::config::TransportConfig;
use crate::error::{SendError, TransportError};
use crate::handshake::{accept_loop, dial_loop};
use crate::link::Ctx;
use crate::peer::Shared;
use crate::stats::{bump, TransportStats};
use crate::tls;
use crate::wire::{Class, CloseCode};
use crate::Inbox;

/// Stream receive window: how much one class stream may have in flight unread.
const STREAM_RECEIVE_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Connection receive window (both class streams together).
const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Unacknowledged bytes we keep in flight per connection.
const SEND_WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// UDP socket buffers we ask the kernel for (it may cap them at net.core.[rw]mem_max).
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Unidirectional streams a peer may have open at once (one per class, plus slack for the
/// streams of a connection being replaced).
const PEER_UNI_STREAMS_MAX: u32 = 4;
/// Incoming connection attempts quinn buffers before we accept or refuse them.
const INCOMING_MAX: usize = 256;
/// How long shutdown waits for close frames to reach the peers.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);
/// How long shutdown waits for the runtime's threads.
const SHUTDOWN_JOIN: Duration = Duration::from_secs(2);

/// The running transport. It owns a small multi-thread tokio runtime (`worker_threads`
/// threads, named `bpci-transport`), so the node needs no async code of its own. Dropping it
/// shuts it down like [`Transport::shutdown`].
pub struct Transport {
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

/// The sending side of a transport: `Send + Sync`, cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("me", &self.shared.me)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds `cfg.listen`, starts listening and dialing, and returns the transport, a handle
    /// for sending and the inbound queues, one per class (read them from any thread with
    /// `blocking_recv` or `try_recv`; they yield `None` once the transport has shut down).
    pub fn start(
        cfg: TransportConfig,
    ) -> Result<(Transport, TransportHandle, Inbox), TransportError> {
        let socket = UdpSocket::bind(cfg.listen).map_err(|source| TransportError::Bind {
            addr: cfg.listen,
            source,
        })?;
        Self::start_with_socket(cfg, socket)
    }

    /// Like [`Transport::start`] on a socket the caller bound (`cfg.listen` is ignored):
    /// for tests that need every address before any node starts, or socket activation.
    pub fn start_with_socket(
        cfg: TransportConfig,
        socket: UdpSocket,
    ) -> Result<(Transport, TransportHandle, Inbox), TransportError> {
        let peers = cfg.validated_peers()?;
        let local_addr = socket.local_addr().map_err(TransportError::Endpoint)?;
        tune_socket(&socket);

        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(cfg.keep_alive_interval))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|_| {
                    TransportError::InvalidConfig {
                        field: "idle_timeout",
                        reason: "is too large for QUIC",
                    }
                })?,
            ))
            .stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into())
            .receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into())
            .send_window(SEND_WINDOW_BYTES)
            .max_concurrent_uni_streams(PEER_UNI_STREAMS_MAX.into())
            .max_concurrent_bidi_streams(1u32.into())
            .datagram_receive_buffer_size(None);
        crate::mtu::apply(&mut transport, cfg.max_udp_payload, local_addr.ip());
        let transport = Arc::new(transport);

        let client_keys: Vec<[u8; 32]> = peers.iter().map(|p| p.public_key).collect();
        let mut server =
            quinn::ServerConfig::with_crypto(tls::server_crypto(&cfg.secret_seed, &client_keys)?);
        server.transport_config(transport.clone());
        server.max_incoming(INCOMING_MAX);
        let mut endpoint_cfg =
            quinn::EndpointConfig::new(Arc::new(tls::stateless_reset_key(&cfg.secret_seed)));
        crate::mtu::accept_large(&mut endpoint_cfg);
        let cid_key = tls::connection_id_key(&cfg.secret_seed);
        endpoint_cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });

        let mut dialers = Vec::new();
        for p in peers.iter().filter(|p| p.index > cfg.me) {
            let mut client =
                quinn::ClientConfig::new(tls::client_crypto(&cfg.secret_seed, &p.public_key)?);
            client.transport_config(transport.clone());
            dialers.push((p.index, client));
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads)
            .thread_name("bpci-transport")
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

        let shared = Arc::new(Shared::new(
            cfg.me,
            local_addr,
            cfg.max_frame_bytes,
            cfg.send_queue_frames,
            &peers,
        ));
        let (consensus_tx, consensus) =
            crate::inbox::queue(cfg.inbound_queue_frames, cfg.inbound_queue_bytes);
        let (bulk_tx, bulk) =
            crate::inbox::queue(cfg.inbound_queue_frames, cfg.inbound_queue_bytes);
        let ctx = Ctx {
            shared: shared.clone(),
            inbound: [consensus_tx, bulk_tx],
        };
        runtime.spawn(accept_loop(ctx.clone(), endpoint.clone()));
        for (index, client) in dialers {
            let Some(peer) = shared.peer(index).cloned() else {
                continue;
            };
            runtime.spawn(
                dial_loop(
                    ctx.clone(),
                    endpoint.clone(),
                    client,
                    peer,
                    cfg.reconnect_min,
                    cfg.reconnect_max,
                )
                .instrument(tracing::info_span!("transport.dial", peer = index)),
            );
        }
        tracing::info!(me = cfg.me, %local_addr, peers = peers.len(), "transport: started");
        let handle = TransportHandle {
            shared: shared.clone(),
        };
        Ok((
            Transport {
                runtime: Some(runtime),
                endpoint,
                shared,
            },
            handle,
            Inbox { consensus, bulk },
        ))
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Closes every connection (peers see a clean close), waits briefly for the close to go
    /// out, stops all tasks and joins the runtime's threads. The inbound channel then yields
    /// `None` and every handle's `send` returns [`SendError::Closed`].
    ///
    /// Called from inside another tokio runtime it cannot block: it closes and stops the
    /// runtime in the background instead.
    pub fn shutdown(mut self) {
        self.stop(true);
    }

    /// Stops as if the process had crashed: no close frames, peers notice through the QUIC
    /// stateless reset of the restarted node or the idle timeout. For failure tests.
    #[doc(hidden)]
    pub fn abort(mut self) {
        self.stop(false);
    }

    fn stop(&mut self, graceful: bool) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let in_async = tokio::runtime::Handle::try_current().is_ok();
        if graceful {
            self.shared.close(CloseCode::Shutdown);
            self.endpoint
                .close(CloseCode::Shutdown.code(), CloseCode::Shutdown.reason());
            if !in_async {
                let endpoint = self.endpoint.clone();
                runtime.block_on(async move {
                    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, endpoint.wait_idle()).await;
                });
            }
        }
        if in_async {
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(SHUTDOWN_JOIN);
        }
        // Connections dropped only now, with their drivers gone, send nothing.
        self.shared.forget_links();
        tracing::info!(me = self.shared.me, graceful, "transport: stopped");
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop(true);
    }
}

impl TransportHandle {
    /// Queues `frame` for validator `to` on `class`'s stream. Never blocks.
    ///
    /// Frames queued while the peer is disconnected wait (up to the queue bound) for the next
    /// connection. When the queue is full the frame is refused with [`SendError::Full`] and
    /// the class's `send_queue_full` counter is incremented; nothing is dropped silently.
    pub fn send(&self, to: u16, class: Class, frame: Bytes) -> Result<(), SendError> {
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
        let peer = shared.peer(to).ok_or(SendError::UnknownPeer(to))?;
        match peer.queue(class).tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                bump(&shared.counters.class(class).send_queue_full, 1);
                Err(SendError::Full { to })
            }
            Err(TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Queues `frame` for every peer; returns how many queues took it (the others were full,
    /// see [`TransportHandle::send`]). The frame's bytes are shared, not copied.
    pub fn broadcast(&self, class: Class, frame: Bytes) -> usize {
        self.shared
            .peers()
            .filter(|p| self.send(p.index, class, frame.clone()).is_ok())
            .count()
    }

    /// Peers with an established (authenticated, hello exchanged) connection, by index.
    pub fn connected_peers(&self) -> Vec<u16> {
        self.shared.connected_peers()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared
            .counters
            .snapshot(self.shared.connected_peers().len())
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Our validator index.
    pub fn me(&self) -> u16 {
        self.shared.me
    }
}

/// Larger UDP buffers: fewer drops under bursts. Best effort: the kernel caps the sizes at
/// `net.core.rmem_max` / `wmem_max`, and a capped buffer is reported once as a warning naming the
/// sysctl to raise (see `tuning/` in the repository).
pub(crate) fn tune_socket(socket: &UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot enlarge UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot enlarge UDP send buffer");
    }
    // Linux reports twice the size it was set to (bookkeeping overhead included).
    let capped = |got: std::io::Result<usize>| got.is_ok_and(|n| n < SOCKET_BUFFER_BYTES);
    static WARNED: std::sync::Once = std::sync::Once::new();
    if capped(sock.recv_buffer_size()) || capped(sock.send_buffer_size()) {
        WARNED.call_once(|| {
            tracing::warn!(
                wanted = SOCKET_BUFFER_BYTES,
                recv = sock.recv_buffer_size().unwrap_or(0),
                send = sock.send_buffer_size().unwrap_or(0),
                "UDP socket buffers capped by the kernel: raise net.core.rmem_max and net.core.wmem_max"
            );
        });
    }
}
