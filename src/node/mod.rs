//! A validator node: the consensus core inside a staged pipeline, the durable store, the mempool
//! and execution, talking QUIC to its peers.
//!
//! ```text
//! QUIC ingress ─> decode ─> verify (one ZIP-215 batch) ─> core ─> exec ─> persist (group fsync)
//!                                                           └─> egress ─> QUIC
//! ```
//! Every arrow is a bounded queue; a full queue blocks the stage before it, back to QUIC flow
//! control. Each stage reports queue depth, items and an hdrhistogram of time in stage; the node
//! writes them with its other figures to `<data_dir>/stats.json` every 500 ms.

pub mod app;
pub mod clients;
pub mod committed;
pub mod forward;
pub mod ingress;
pub mod keys;
pub mod stages;

/// Stage threads pinned to cores of their own when `tuning.pin_threads` is set: ingress,
/// verify, consensus, egress, execution, persistence and bulk ingress (cores 0-6); with fewer
/// cores nothing is pinned.
pub const PINNED_STAGES: usize = 7;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bpci_transport::{ClientServer, ClientServerConfig, PeerConfig, Transport, TransportConfig};

use crate::api::view::{unix_ms, ExecSample, NodeView, RoundLog, Sample, TransportSample};
use crate::api::ApiServer;
use crate::config::Config;
use crate::consensus::{Core, CoreConfig, EpochContext, Storage};
use crate::crypto::Keypair;
use crate::mempool::{Mempool, MempoolLimits};
use crate::pipeline::{self, StageConfig, StageSnapshot, StageStats};
use crate::store::RedbStore;
use crate::types::ValidatorIndex;

pub use app::DEFAULT_MAX_BLOCK_BYTES;
use app::{BlockLimits, NodeApp, Progress};
use stages::{
    BorderStats, CoreSnapshot, CoreStage, ExecCounters, ExecStage, Executed, Notify, Outbound,
    PersistStage,
};

/// Own proposals waiting for their inclusion receipts to be built; past it receipts are
/// dropped (best effort: the commit notices still follow).
pub const RECEIPT_QUEUE: usize = 64;
/// Proposals waiting to be written ahead into the consensus journal; past it one is skipped
/// (its vote's write carries it).
pub const PREWRITE_QUEUE: usize = 16;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The key does not belong to the configured validator.
    #[error(
        "key file's public key {found} is not validator {validator_id}'s configured key {expected}"
    )]
    WrongKey {
        /// Configured id.
        validator_id: String,
        /// Key in the file.
        found: String,
        /// Key in the config.
        expected: String,
    },
    /// This node's index is not in the validator set.
    #[error("validator index {0} is not in the validator set")]
    NotMember(u16),
    /// An endpoint does not resolve.
    #[error("endpoint {0:?} does not resolve to an address")]
    Endpoint(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::consensus::StorageError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] bpci_transport::TransportError),
    /// A thread or directory could not be created, or the HTTP address not bound.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The operator token file is unreadable, readable by others, or malformed.
    #[error("node.operator_token_file: {0}")]
    Token(keys::KeyFileError),
}

/// Resolves `host:port`.
pub fn resolve(endpoint: &str) -> Result<SocketAddr, NodeError> {
    endpoint
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| NodeError::Endpoint(endpoint.to_string()))
}

/// Everything the node exposes while it runs.
pub struct NodeHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    transport: Option<Transport>,
    client_server: Option<ClientServer>,
    api: Option<ApiServer>,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The mempool (the client endpoint feeds it).
    pub mempool: Arc<Mutex<Mempool>>,
    /// Pipeline progress.
    pub progress: Arc<Progress>,
    /// Execution counters.
    pub exec: Arc<ExecCounters>,
    /// Commit notices: called by the persistence stage with each durable batch.
    pub notices: Arc<Mutex<Vec<Notify>>>,
    halted: stages::Halted,
}

impl NodeHandle {
    /// Why execution stopped, if it did (a committed block that cannot be executed): the node
    /// then commits nothing more; its owner should stop it and look at the cause.
    pub fn halted(&self) -> Option<String> {
        self.halted.get().cloned()
    }

    /// Stops every stage and the transport.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.api.take() {
            a.shutdown();
        }
        if let Some(c) = self.client_server.take() {
            c.shutdown();
        }
        if let Some(t) = self.transport.take() {
            t.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn stage(
    name: &'static str,
    capacity: usize,
    batch_max: usize,
    tick: Option<Duration>,
    core: Option<usize>,
) -> StageConfig {
    StageConfig {
        name,
        queue_capacity: capacity,
        batch_max,
        core,
        tick,
    }
}

/// Starts a validator from a validated config and its key.
pub fn start(config: &Config, key: Keypair) -> Result<NodeHandle, NodeError> {
    let me = ValidatorIndex(config.me);
    let expected = config
        .validators
        .member(me)
        .map(|v| v.key)
        .ok_or(NodeError::NotMember(config.me))?;
    if key.public() != expected {
        return Err(NodeError::WrongKey {
            validator_id: config.file.node.validator_id.clone(),
            found: key.public().to_string(),
            expected: expected.to_string(),
        });
    }
    let node = &config.file.node;
    let operator_token = node
        .operator_token_file
        .as_deref()
        .map(keys::read_token)
        .transpose()
        .map_err(NodeError::Token)?;
    let http_listen = match node.http_listen {
        Some(a) => a,
        None => resolve(crate::config::DEFAULT_HTTP_LISTEN)?,
    };
    let http_listener = ApiServer::bind(http_listen)?;
    std::fs::create_dir_all(&node.data_dir)?;
    let ctx = Arc::new(EpochContext::new(
        node.chain_id.clone(),
        config.validators.clone(),
    ));
    let mut store = RedbStore::open_split(
        &node.data_dir.join("node.redb"),
        &node.data_dir.join("safety"),
    )?;
    store.set_defer_commits(true);
    let writer = store.writer();
    let chain_reader = store.reader();
    let rounds = Arc::new(RoundLog::default());
    let prewriter = store.block_prewriter();
    let journal_timing = Arc::clone(&store.journal_timing);

    // Rebuild the executed state: the latest stored one, then the committed blocks after it.
    let tip = store.committed_tip().map(|(b, _)| b.height.0).unwrap_or(0);
    let stages::Replayed {
        ledger,
        root: last_root,
        roots,
        ..
    } = stages::replay_committed(&store, tip)
        .map_err(|why| NodeError::Store(crate::consensus::StorageError::Backend(why)))?;
    let progress = Arc::new(Progress {
        committed: AtomicU64::new(tip),
        round: Arc::new(AtomicU64::new(0)),
        proposing: Arc::new(AtomicU64::new(0)),
        backlog: Arc::new(AtomicBool::new(false)),
        durable: AtomicU64::new(tip),
        persist_failures: AtomicU64::new(0),
        roots: Mutex::new(roots),
        ..Progress::default()
    });

    let hs = &config.file.triple_consensus.hotstuff;
    let ibft = &config.file.triple_consensus.ibft;
    let mempool_limits = {
        let d = MempoolLimits::default();
        let t = &config.file.tuning;
        MempoolLimits {
            max_txs: t.mempool_max_txs.map_or(d.max_txs, |n| n as usize),
            max_bytes: t.mempool_max_bytes.map_or(d.max_bytes, |n| n as usize),
            ..d
        }
    };
    let mempool = Arc::new(Mutex::new(Mempool::new(mempool_limits)));
    let app = NodeApp::new(
        me,
        Arc::clone(&mempool),
        Arc::clone(&progress),
        u64::from(hs.pipeline_depth),
        BlockLimits {
            max_bytes: config
                .file
                .tuning
                .max_block_bytes
                .map_or(DEFAULT_MAX_BLOCK_BYTES, |n| n as usize),
            ..BlockLimits::default()
        },
    );
    let core_cfg = CoreConfig {
        me,
        round_timeout_ms_base: (ibft.phase_timeout_seconds * 1000.0) as u64,
        round_timeout_ms_max: (hs.view_timeout_seconds * 1000.0) as u64,
    };
    // The committed window, read back from the stored chain (exactly-once admission holds
    // across a restart).
    if let Some((tip_block, _)) = store.committed_tip() {
        let window = committed::CommittedTxs::rebuild(&store, tip, tip_block.id(&node.chain_id));
        tracing::info!(target: "node", txs = window.len(), heights = ?window.heights(), "committed window rebuilt");
        if let Ok(mut w) = app.committed.lock() {
            *w = window;
        }
        progress.window_height.store(tip, Ordering::Release);
    }
    let committed_window = Arc::clone(&app.committed);
    let left_out = Arc::clone(&app.left_out);
    let tx_ids = Arc::clone(&app.tx_ids);
    let payload_checks = Arc::clone(&app.payload_checks);
    let awaiting = Arc::clone(&app.awaiting);
    // Owners of our clients' transactions forwarded to another leader (commit notices).
    let forwarded_owners: Arc<Mutex<crate::mempool::IdMap<u64>>> = Arc::default();
    let core = Core::new(
        Arc::clone(&ctx),
        core_cfg,
        key.clone(),
        store,
        app,
        stages::now_ms(),
    )?;
    // A restarted validator has proposed up to its stored round already.
    progress
        .proposing
        .store(core.safety().last_proposed_round.0, Ordering::Release);

    // Transport.
    let mut peers = Vec::new();
    for (i, (_, v)) in config.validators.iter().enumerate() {
        let endpoint = &config.endpoints[i];
        peers.push(PeerConfig {
            index: i as u16,
            addr: resolve(endpoint)?,
            public_key: v.key.to_bytes(),
        });
    }
    let listen = match node.listen {
        Some(a) => a,
        None => resolve(&config.endpoints[me.as_usize()])?,
    };
    let mut tcfg = TransportConfig::new(me.0, listen, key.seed(), peers);
    tcfg.max_udp_payload = config.file.tuning.max_udp_payload_bytes;
    tcfg.idle_timeout = Duration::from_secs(
        config
            .file
            .triple_consensus
            .coordinator
            .validator_timeout_seconds,
    );
    let (transport, handle, inbound) = Transport::start(tcfg)?;

    let stop = Arc::new(AtomicBool::new(false));
    let forward_counters = Arc::new(forward::ForwardCounters::default());
    let handoff = Arc::new(Mutex::new(forward::HandOff::default()));
    // The client endpoint: transactions in, "busy" when the mempool is full, commit notices out.
    let mut client_server = None;
    let mut gateway = None;
    let mut threads = Vec::new();
    if let Some(addr) = node.client_listen {
        let mut ccfg = ClientServerConfig::new(addr, key.seed());
        ccfg.max_udp_payload = config.file.tuning.max_udp_payload_bytes;
        let (server, server_handle, frames) = ClientServer::start(ccfg)?;
        // Late: see `clients::is_late`.
        let late: clients::Late = {
            let (round, last, backlog, validators) = (
                Arc::clone(&progress.round),
                Arc::clone(&progress.proposing),
                Arc::clone(&progress.backlog),
                ctx.validators.clone(),
            );
            Box::new(move || {
                // Under a backlog a batch waits for later blocks wherever it goes: sending it
                // elsewhere would only move load onto the next leader.
                !backlog.load(Ordering::Acquire)
                    && clients::is_late(
                        round.load(Ordering::Acquire),
                        last.load(Ordering::Acquire),
                        |r| validators.leader(crate::types::Round(r)) == me,
                    )
            })
        };
        let g = Arc::new(
            clients::Gateway::new(
                Arc::clone(&mempool),
                server_handle,
                Arc::clone(&awaiting),
                Arc::clone(&forwarded_owners),
                Arc::clone(&committed_window),
            )
            .with_late(late),
        );
        let reader = Arc::clone(&g);
        threads.push(
            std::thread::Builder::new()
                .name("node.clients".into())
                .spawn(move || reader.serve(frames))?,
        );
        gateway = Some(g);
        client_server = Some(server);
        // Our clients' transactions go to an upcoming leader (see `forward`).
        let validators = ctx.validators.clone();
        let forward_handle = handle.clone();
        let forwarder = forward::Forwarder {
            me,
            leader_of: Box::new(move |r| validators.leader(crate::types::Round(r))),
            round: Arc::clone(&progress.round),
            mempool: Arc::clone(&mempool),
            handoff: Arc::clone(&handoff),
            owners: Arc::clone(&forwarded_owners),
            reachable: {
                let h = handle.clone();
                Box::new(move |to| h.connected_peers().contains(&to.0))
            },
            send: Box::new(move |to, msg| {
                let class = stages::class_of(&msg);
                forward_handle
                    .send(
                        to.0,
                        class,
                        bytes::Bytes::from(crate::codec::encode_infallible(&msg)),
                    )
                    .is_ok()
            }),
            counters: Arc::clone(&forward_counters),
            intake: forward::Intake::default(),
        };
        let forward_stop = Arc::clone(&stop);
        threads.push(
            std::thread::Builder::new()
                .name("node.forward".into())
                .spawn(move || forwarder.run(forward_stop))?,
        );
    }

    let pin = config.file.tuning.pin_threads && pipeline::core_count() >= PINNED_STAGES;
    let core_of = move |i: usize| if pin { Some(i) } else { None };
    let border = Arc::new(BorderStats::default());
    let dropped = Arc::new(AtomicU64::new(0));
    let exec_counters = Arc::new(ExecCounters::default());
    let notices: Arc<Mutex<Vec<Notify>>> = Arc::new(Mutex::new(Vec::new()));

    // Leader hints and inclusion receipts for watching clients, sent by the consensus stage with
    // each own proposal.
    // Receipts name each transaction's client (grouped from the proposal's owner list): built
    // on a thread of their own, never on the consensus thread; dropped when that thread is
    // behind (the commit notices still follow).
    let mut receipts_tx = None;
    if let Some(g) = &gateway {
        let (tx, rx) = std::sync::mpsc::sync_channel::<stages::OwnProposal>(RECEIPT_QUEUE);
        let g = Arc::clone(g);
        threads.push(
            std::thread::Builder::new()
                .name("node.receipts".into())
                .spawn(move || {
                    while let Ok(own) = rx.recv() {
                        if let Some(root) = &own.tx_root {
                            g.included(own.round.0, own.block, root);
                        }
                    }
                })?,
        );
        receipts_tx = Some(tx);
    }
    let leader_hints = gateway.as_ref().map(|g| -> stages::OnOwnProposal {
        let g = Arc::clone(g);
        let validators = ctx.validators.clone();
        let receipts = receipts_tx.take();
        Box::new(move |own: stages::OwnProposal| {
            // All or nothing: a missing leader would shift the others onto wrong rounds.
            let next: Option<Vec<[u8; 32]>> = (1..=crate::client_proto::LEADER_HINTS as u64)
                .map(|k| {
                    let r = own.round.0.checked_add(k)?;
                    let leader = validators.leader(crate::types::Round(r));
                    validators.member(leader).map(|v| v.key.to_bytes())
                })
                .collect();
            if let Some(next) = next {
                g.announce_leaders(own.round.0, next);
            }
            if let (Some(receipts), Some(_)) = (&receipts, &own.tx_root) {
                let _ = receipts.try_send(own);
            }
        })
    });
    let stats_gateway_handle = gateway.clone();
    if let Some(g) = gateway {
        if let Ok(mut list) = notices.lock() {
            // First the announcement: this validator formed the QC that commits the batch's
            // last block (it leads the round after that QC's) when the others have yet to learn
            // of it from its next proposal.
            let validators = ctx.validators.clone();
            let announcer = Arc::clone(&g);
            list.push(Box::new(move |executed: &[Executed]| {
                for e in executed {
                    let Some(proof) = &e.proof else {
                        continue;
                    };
                    let formed_here = proof
                        .child_qc
                        .round
                        .0
                        .checked_add(1)
                        .is_some_and(|r| validators.leader(crate::types::Round(r)) == me);
                    if formed_here {
                        announcer.announce_commit(e.height, e.block.round.0, proof.child.parent_id);
                    }
                }
            }));
            list.push(Box::new(move |executed: &[Executed]| g.notify(executed)));
            let handoff = Arc::clone(&handoff);
            list.push(Box::new(move |executed: &[Executed]| {
                let mut h = handoff
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in executed {
                    h.committed(e.tx_ids.iter());
                }
            }));
        }
    }
    let notices_for_persist = Arc::clone(&notices);
    let mut persist = PersistStage {
        rounds: Arc::clone(&rounds),
        writer,
        progress: Arc::clone(&progress),
        notify: Box::new(move |executed: &[Executed]| {
            if let Ok(mut list) = notices_for_persist.lock() {
                for n in list.iter_mut() {
                    n(executed);
                }
            }
        }),
    };
    let (persist_in, persist_stage) = pipeline::spawn(
        stage("pipeline.persist", 1024, 256, None, core_of(5)),
        move |b| persist.on_batch(b),
    )?;
    let committed_root = core.committed();
    let mut exec = ExecStage::new(
        ledger,
        (committed_root.id, last_root, committed_root.height.0),
        persist_in,
        tx_ids,
        Arc::clone(&exec_counters),
    );
    exec.optimistic = config.file.triple_consensus.hotstuff.optimistic_execution;
    exec.window = Some((Arc::clone(&committed_window), Arc::clone(&progress)));
    exec.rounds = Arc::clone(&rounds);
    let halted = Arc::clone(&exec.halted);
    let (exec_in, exec_stage) = pipeline::spawn(
        stage("pipeline.exec", 1024, 64, None, core_of(4)),
        move |b| exec.on_batch(b),
    )?;
    let egress_handle = handle.clone();
    let egress_dropped = Arc::clone(&dropped);
    let (egress_in, egress_stage) = pipeline::spawn(
        stage("pipeline.egress", 8192, 512, None, core_of(3)),
        move |b: Vec<Outbound>| stages::egress(b, &egress_handle, &egress_dropped),
    )?;
    let snapshot = Arc::new(Mutex::new(CoreSnapshot::default()));
    let mut core_stage = CoreStage::new(
        core,
        Arc::clone(&ctx),
        egress_in,
        exec_in,
        Arc::clone(&progress),
        Arc::clone(&snapshot),
    );
    core_stage.on_own_proposal = leader_hints;
    core_stage.rounds = Arc::clone(&rounds);
    core_stage.audit_votes = config
        .file
        .logging
        .as_ref()
        .and_then(|l| l.consensus_logging.as_ref())
        .is_some_and(|c| c.include_validator_votes);
    core_stage.direct_egress = Some((handle.clone(), Arc::clone(&dropped)));
    let timing = Arc::clone(&core_stage.timing);
    core_stage.start();
    let (core_in, core_stage_handle) = pipeline::spawn(
        stage(
            "pipeline.consensus",
            8192,
            1024,
            Some(Duration::from_millis(2)),
            core_of(2),
        ),
        move |b| core_stage.on_batch(b),
    )?;
    let ticker = core_in.ticker();
    // The persistence stage wakes the core when a proposal waits for durable blocks.
    let _ = progress.wake_core.set(Box::new(move || ticker.tick_now()));
    let verify_border = Arc::clone(&border);
    let inline_core_in = core_in.clone();
    let vote_core_in = core_in.clone();
    let (verify_in, verify_stage) = pipeline::spawn(
        stage("pipeline.verify", 8192, 512, None, core_of(1)),
        move |b| stages::verify_into(b, &verify_border, &core_in),
    )?;

    // Proposals' blocks written into the consensus journal as they arrive, ahead of the votes
    // that need them durable.
    let (prewrite_tx, prewrite_rx) = crossbeam_channel::bounded::<(
        crate::types::BlockId,
        Arc<crate::consensus::Block>,
    )>(PREWRITE_QUEUE);
    threads.push(
        std::thread::Builder::new()
            .name("store.prewrite".into())
            .spawn(move || {
                while let Ok((id, block)) = prewrite_rx.recv() {
                    prewriter.write(id, block);
                }
            })?,
    );
    let ingress_frames = Arc::new(AtomicU64::new(0));
    let ingress = ingress::Ingress {
        ctx: Arc::clone(&ctx),
        border: Arc::clone(&border),
        verify: verify_in,
        core: inline_core_in,
        payload_checks,
        mempool: Arc::clone(&mempool),
        forward: Arc::clone(&forward_counters),
        frames: Arc::clone(&ingress_frames),
        prewrite: Some((prewrite_tx, Arc::clone(&progress.round))),
    };
    let bpci_transport::Inbox { consensus, bulk } = inbound;
    let mut ingress_stats = Vec::new();
    for (name, mut queue, core) in [
        ("pipeline.ingress", consensus, core_of(0)),
        ("pipeline.ingress_bulk", bulk, core_of(6)),
    ] {
        let stats = Arc::new(StageStats::new(name));
        ingress_stats.push(Arc::clone(&stats));
        let ingress = ingress.clone();
        threads.push(
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    if let Some(c) = core {
                        pipeline::pin_to(c);
                    }
                    ingress.run(&mut queue, &stats);
                })?,
        );
    }
    drop(ingress);

    // Stats writer.
    let stats_path: PathBuf = node.data_dir.join("stats.json");
    let stage_stats: Vec<Arc<StageStats>> = ingress_stats
        .into_iter()
        .chain(
            [
                &verify_stage,
                &core_stage_handle,
                &egress_stage,
                &exec_stage,
                &persist_stage,
            ]
            .iter()
            .map(|s| Arc::clone(&s.stats)),
        )
        .collect();
    let stats_stop = Arc::clone(&stop);
    let stats_mempool = Arc::clone(&mempool);
    let stats_progress = Arc::clone(&progress);
    let stats_exec = Arc::clone(&exec_counters);
    let stats_transport = handle.clone();
    let stats_gateway = stats_gateway_handle.clone();
    let view = Arc::new(NodeView {
        validator_id: node.validator_id.clone(),
        me,
        ctx: Arc::clone(&ctx),
        validator_ids: config
            .file
            .validators
            .iter()
            .filter(|v| v.is_active)
            .map(|v| v.validator_id.clone())
            .collect(),
        optimistic_execution: hs.optimistic_execution,
        progress: Arc::clone(&progress),
        chain: chain_reader,
        rounds: Arc::clone(&rounds),
        sample: std::sync::RwLock::default(),
        stage_stats: stage_stats.clone(),
        gateway: stats_gateway_handle,
        committed_window: Arc::clone(&committed_window),
        started_ms: unix_ms(),
        stall_after_ms: (node
            .health_stall_seconds
            .unwrap_or(crate::config::DEFAULT_HEALTH_STALL_SECONDS)
            * 1000.0) as u64,
        operator_token,
        core_in: Some(vote_core_in),
        halted: Arc::clone(&halted),
        max_active_rounds: config.file.triple_consensus.coordinator.max_active_rounds as usize,
        round_timeout_ms: config
            .file
            .triple_consensus
            .coordinator
            .round_timeout_seconds
            .saturating_mul(1000),
    });
    let stats_view = Arc::clone(&view);
    threads.push(
        std::thread::Builder::new()
            .name("node.stats".into())
            .spawn(move || {
                while !stats_stop.load(Ordering::Acquire) {
                    let stages: Vec<StageSnapshot> =
                        stage_stats.iter().map(|s| s.snapshot()).collect();
                    let core = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
                    let t = stats_transport.stats();
                    let connected = stats_transport.connected_peers();
                    let (roots_checked, divergences) = stats_progress
                        .roots
                        .lock()
                        .map(|r| (r.checked, r.divergences))
                        .unwrap_or_default();
                    let mempool_txs = stats_mempool.lock().map(|m| m.len()).unwrap_or(0);
                    stats_view.publish(Sample {
                        at_ms: unix_ms(),
                        core: core.clone(),
                        stages: stages.clone(),
                        transport: TransportSample {
                            connected_peers: connected.len(),
                            connected: connected.clone(),
                            handshake_failures: t.handshake_failures,
                            reconnects: t.reconnects,
                            frame_errors: t.frame_errors,
                        },
                        exec: ExecSample {
                            txs_executed: stats_exec.txs.load(Ordering::Relaxed),
                            speculative: stats_exec.speculative.load(Ordering::Relaxed),
                            speculative_hits: stats_exec.speculative_hits.load(Ordering::Relaxed),
                            executed_at_commit: stats_exec
                                .executed_at_commit
                                .load(Ordering::Relaxed),
                            roots_checked,
                            divergences,
                        },
                        mempool_txs,
                        border_rejected: [
                            border.undecodable.load(Ordering::Relaxed),
                            border.malformed.load(Ordering::Relaxed),
                            border.bad_signature.load(Ordering::Relaxed),
                        ],
                        egress_dropped: dropped.load(Ordering::Relaxed),
                        evidence: stats_view.rounds.evidence_seen(),
                        persist_failures: stats_progress.persist_failures.load(Ordering::Relaxed),
                    });
                    let doc = serde_json::json!({
                        "time_ms": stages::now_ms(),
                        "core": core,
                        "consensus_timing": timing.lock().map(|t| t.snapshot()).unwrap_or_default(),
                        "durable_height": stats_progress.durable.load(Ordering::Relaxed),
                        "txs_executed": stats_exec.txs.load(Ordering::Relaxed),
                        "exec": {
                            "speculative": stats_exec.speculative.load(Ordering::Relaxed),
                            "speculative_hits": stats_exec.speculative_hits.load(Ordering::Relaxed),
                            "executed_at_commit": stats_exec.executed_at_commit.load(Ordering::Relaxed),
                            "roots_checked": roots_checked,
                            "divergences": divergences,
                        },
                        "mempool_txs": mempool_txs,
                        "exactly_once": {
                            "window_txs": committed_window.lock().map(|w| w.len()).unwrap_or(0),
                            "window_heights": committed_window.lock().ok().and_then(|w| w.heights()),
                            "answered_committed": stats_gateway
                                .as_ref()
                                .map_or(0, |g| g.answered_committed.load(Ordering::Relaxed)),
                            "left_out_of_proposals": left_out.load(Ordering::Relaxed),
                        },
                        "forward": {
                            "sent": forward_counters.sent.load(Ordering::Relaxed),
                            "expired": forward_counters.expired.load(Ordering::Relaxed),
                            "received": forward_counters.received.load(Ordering::Relaxed),
                            "refused": forward_counters.refused.load(Ordering::Relaxed),
                            "handed_off": handoff.lock().map(|h| h.len()).unwrap_or(0),
                        },
                        "ingress_frames": ingress_frames.load(Ordering::Relaxed),
                        "border": {
                            "undecodable": border.undecodable.load(Ordering::Relaxed),
                            "malformed": border.malformed.load(Ordering::Relaxed),
                            "bad_signature": border.bad_signature.load(Ordering::Relaxed),
                        },
                        "egress_dropped": dropped.load(Ordering::Relaxed),
                        "client_frames_dropped": stats_gateway
                            .as_ref()
                            .map_or(0, |g| g.dropped.load(Ordering::Relaxed)),
                        "persist_failures": stats_progress.persist_failures.load(Ordering::Relaxed),
                        "journal": journal_timing.lock().map(|t| serde_json::json!({
                            "writes": t.writes,
                            "block_bytes": t.block_bytes,
                            "write_us_p50": t.latency.quantile_us(0.5),
                            "write_us_p99": t.latency.quantile_us(0.99),
                        })).unwrap_or_default(),
                        "transport": {
                            "connected_peers": connected.len(),
                            "handshake_failures": t.handshake_failures,
                            "reconnects": t.reconnects,
                            "frame_errors": t.frame_errors,
                        },
                        "stages": stages,
                    });
                    let tmp = stats_path.with_extension("json.tmp");
                    if std::fs::write(&tmp, doc.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, &stats_path);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })?,
    );
    // Keep the stage handles alive in a joiner thread: they end when their inputs close.
    threads.push(std::thread::spawn(move || {
        verify_stage.join();
        core_stage_handle.join();
        egress_stage.join();
        exec_stage.join();
        persist_stage.join();
    }));
    let api = ApiServer::start(http_listener, view)?;
    let http_addr = api.local_addr;
    Ok(NodeHandle {
        stop,
        threads,
        transport: Some(transport),
        client_server,
        api: Some(api),
        http_addr,
        mempool,
        progress,
        exec: exec_counters,
        notices,
        halted,
    })
}
