//! The client gateway: transactions from the client endpoint into the mempool ("busy" when it is
//! full), and commit notices back to the client that submitted them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bpci_transport::{ClientFrame, ClientServerHandle, Receiver};
use bytes::Bytes;

use crate::client_proto::{ClientRequest, ClientResponse, TxStatus};
use crate::codec::{decode, encode_infallible};
use crate::mempool::{HashedTxs, IdMap, Mempool, MempoolError, TxId};

use super::stages::Executed;

/// Most transactions whose submitter is remembered for a commit notice.
pub const MAX_TRACKED_TXS: usize = 1 << 20;
/// Most client connections watching leader hints at once.
pub const MAX_LEADER_WATCHERS: usize = 1024;
/// A watcher whose queue was full for this many hints in a row (a client that does not read)
/// stops watching.
pub const WATCHER_MAX_MISSES: u32 = 64;

/// Shared by the client reader thread and the persistence stage.
pub struct Gateway {
    mempool: Arc<Mutex<Mempool>>,
    server: ClientServerHandle,
    owners: Mutex<IdMap<u64>>,
    /// Connections that asked for leader hints ([`ClientRequest::WatchLeaders`]), with the
    /// hints each missed in a row.
    watchers: Mutex<Vec<(u64, u32)>>,
}

impl Gateway {
    /// A gateway over the node's mempool and client endpoint.
    pub fn new(mempool: Arc<Mutex<Mempool>>, server: ClientServerHandle) -> Self {
        Self {
            mempool,
            server,
            owners: Mutex::new(IdMap::default()),
            watchers: Mutex::new(Vec::new()),
        }
    }

    /// Reads client frames until the endpoint shuts down.
    pub fn serve(&self, mut frames: Receiver<ClientFrame>) {
        while let Some(f) = frames.blocking_recv() {
            let reply = match decode::<ClientRequest>(&f.frame) {
                Ok(ClientRequest::Submit(txs)) => ClientResponse::Ack(self.submit(f.conn, txs)),
                Ok(ClientRequest::WatchLeaders) => match self.watch(f.conn) {
                    Ok(()) => continue,
                    Err(e) => ClientResponse::Error(e),
                },
                Err(e) => ClientResponse::Error(e.to_string()),
            };
            let _ = self
                .server
                .send(f.conn, Bytes::from(encode_infallible(&reply)));
        }
    }

    fn watch(&self, conn: u64) -> Result<(), String> {
        let mut w = self
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.iter().any(|(c, _)| *c == conn) {
            return Ok(());
        }
        if w.len() >= MAX_LEADER_WATCHERS {
            return Err(format!(
                "watch_leaders: {MAX_LEADER_WATCHERS} connections already watch"
            ));
        }
        w.push((conn, 0));
        Ok(())
    }

    /// Tells every watching client that this validator has just proposed for `round` and who
    /// leads the rounds after it (called by the consensus stage; never blocks). Best effort: a
    /// client whose queue is full misses this hint, and after [`WATCHER_MAX_MISSES`] in a row
    /// stops watching; a closed connection stops watching.
    pub fn announce_leaders(&self, round: u64, next: Vec<[u8; 32]>) {
        let mut w = self
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.is_empty() {
            return;
        }
        let frame = Bytes::from(encode_infallible(&ClientResponse::Leaders { round, next }));
        w.retain_mut(
            |(conn, misses)| match self.server.send(*conn, frame.clone()) {
                Ok(()) => {
                    *misses = 0;
                    true
                }
                Err(bpci_transport::SendError::QueueFull) => {
                    *misses += 1;
                    *misses < WATCHER_MAX_MISSES
                }
                Err(_) => false,
            },
        );
    }

    fn submit(&self, conn: u64, txs: Vec<serde_bytes::ByteBuf>) -> Vec<TxStatus> {
        let n = txs.len();
        let mut accepted = Vec::with_capacity(n);
        // Hashed before the lock: the consensus thread takes the same lock to propose.
        let batch = HashedTxs::new(
            txs.into_iter()
                .map(serde_bytes::ByteBuf::into_vec)
                .collect(),
        );
        let statuses = match self.mempool.lock() {
            Ok(mut pool) => pool
                .insert_batch(batch)
                .into_iter()
                .map(|r| match r {
                    Ok(id) => {
                        accepted.push(id);
                        TxStatus::Accepted
                    }
                    Err(MempoolError::Full { .. }) => TxStatus::Busy,
                    Err(MempoolError::Duplicate) => TxStatus::Duplicate,
                    Err(_) => TxStatus::Invalid,
                })
                .collect(),
            Err(_) => vec![TxStatus::Busy; n],
        };
        if let Ok(mut owners) = self.owners.lock() {
            for id in accepted {
                if owners.len() < MAX_TRACKED_TXS {
                    owners.insert(id, conn);
                }
            }
        }
        statuses
    }

    /// Sends commit notices for durable blocks (called by the persistence stage).
    pub fn notify(&self, executed: &[Executed]) {
        let mut per_conn: HashMap<u64, (u64, Vec<TxId>)> = HashMap::new();
        if let Ok(mut owners) = self.owners.lock() {
            for e in executed {
                for id in e.tx_ids.iter() {
                    if let Some(conn) = owners.remove(id) {
                        let entry = per_conn.entry(conn).or_insert((e.height, Vec::new()));
                        entry.0 = e.height;
                        entry.1.push(*id);
                    }
                }
            }
        }
        for (conn, (height, tx_ids)) in per_conn {
            let msg = ClientResponse::Committed { height, tx_ids };
            let _ = self.server.send(conn, Bytes::from(encode_infallible(&msg)));
        }
    }
}
