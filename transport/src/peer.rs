//! State shared between the [`crate::TransportHandle`] and the transport's tasks: the peers,
//! their send queues and their current connection ("link"), and the counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::PeerConfig;
use crate::stats::{bump, Counters};
use crate::wire::{Class, CloseCode};

/// One class's bounded send queue to one peer. `send` pushes with `try_send` from any thread;
/// the writer task of the peer's current connection holds the receiver while it runs.
#[derive(Debug)]
pub(crate) struct SendQueue {
    pub tx: mpsc::Sender<Bytes>,
    pub rx: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
}

/// The current connection to a peer.
#[derive(Debug)]
struct Link {
    id: u64,
    conn: quinn::Connection,
}

/// A validator we talk to.
#[derive(Debug)]
pub(crate) struct Peer {
    pub index: u16,
    pub addr: SocketAddr,
    queues: [SendQueue; 2],
    link: Mutex<Option<Link>>,
    ever_connected: AtomicBool,
}

impl Peer {
    fn new(cfg: &PeerConfig, send_queue_frames: usize) -> Self {
        let queue = || {
            let (tx, rx) = mpsc::channel(send_queue_frames);
            SendQueue {
                tx,
                rx: tokio::sync::Mutex::new(rx),
            }
        };
        Self {
            index: cfg.index,
            addr: cfg.addr,
            queues: [queue(), queue()],
            link: Mutex::new(None),
            ever_connected: AtomicBool::new(false),
        }
    }

    pub(crate) fn queue(&self, class: Class) -> &SendQueue {
        &self.queues[class.slot()]
    }

    fn link(&self) -> MutexGuard<'_, Option<Link>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.link().is_some()
    }
}

/// Everything the handle and the tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub me: u16,
    pub local_addr: SocketAddr,
    pub max_frame_bytes: usize,
    pub counters: Counters,
    /// Indexed by validator index; `None` for ourselves and for indices not in the set.
    peers: Vec<Option<Arc<Peer>>>,
    by_key: HashMap<[u8; 32], u16>,
    closed: AtomicBool,
    next_link_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        me: u16,
        local_addr: SocketAddr,
        max_frame_bytes: usize,
        send_queue_frames: usize,
        peers: &[PeerConfig],
    ) -> Self {
        let slots = peers
            .iter()
            .map(|p| usize::from(p.index) + 1)
            .max()
            .unwrap_or(0);
        let mut table: Vec<Option<Arc<Peer>>> = vec![None; slots];
        let mut by_key = HashMap::with_capacity(peers.len());
        for p in peers {
            debug_assert_ne!(p.index, me, "validated config skips ourselves");
            table[usize::from(p.index)] = Some(Arc::new(Peer::new(p, send_queue_frames)));
            by_key.insert(p.public_key, p.index);
        }
        Self {
            me,
            local_addr,
            max_frame_bytes,
            counters: Counters::default(),
            peers: table,
            by_key,
            closed: AtomicBool::new(false),
            next_link_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn peer(&self, index: u16) -> Option<&Arc<Peer>> {
        self.peers.get(usize::from(index))?.as_ref()
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.iter().flatten()
    }

    pub(crate) fn peer_by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.peer(*self.by_key.get(key)?)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn connected_peers(&self) -> Vec<u16> {
        self.peers()
            .filter(|p| p.is_connected())
            .map(|p| p.index)
            .collect()
    }

    /// Makes `conn` the peer's current connection, closing the one it replaces.
    /// Returns the link id to pass to [`Shared::uninstall`], or `None` if we are shutting down.
    pub(crate) fn install(&self, peer: &Peer, conn: &quinn::Connection) -> Option<u64> {
        let id = self.next_link_id.fetch_add(1, Ordering::Relaxed);
        let mut link = peer.link();
        if self.is_closed() {
            CloseCode::Shutdown.close(conn);
            return None;
        }
        if let Some(old) = link.replace(Link {
            id,
            conn: conn.clone(),
        }) {
            tracing::info!(
                peer = peer.index,
                "transport.link: replacing previous connection"
            );
            CloseCode::Replaced.close(&old.conn);
        }
        bump(&self.counters.connections_established, 1);
        if peer.ever_connected.swap(true, Ordering::Relaxed) {
            bump(&self.counters.reconnects, 1);
        }
        Some(id)
    }

    /// Forgets the peer's connection if it is still link `id`.
    pub(crate) fn uninstall(&self, peer: &Peer, id: u64) {
        let mut link = peer.link();
        if link.as_ref().is_some_and(|l| l.id == id) {
            *link = None;
        }
    }

    /// Marks the transport closed and closes (and drops) every connection.
    pub(crate) fn close(&self, code: CloseCode) {
        self.closed.store(true, Ordering::Release);
        for peer in self.peers() {
            if let Some(old) = peer.link().take() {
                code.close(&old.conn);
            }
        }
    }

    /// Marks the transport closed and drops every connection without closing it (crash test).
    pub(crate) fn forget_links(&self) {
        self.closed.store(true, Ordering::Release);
        for peer in self.peers() {
            drop(peer.link().take());
        }
    }
}
