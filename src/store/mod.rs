//! The durable store: the committed chain and the commit proofs in an append-only [`ValueLog`]
//! indexed by redb; the safety state and the uncommitted blocks a restart needs in the consensus
//! [`Journal`].
//!
//! When a `persist_*` call returns `Ok`, the data is on disk (the value log's group is synced, and
//! the journal's record is synced), so a node killed at any instant restarts with everything it
//! acknowledged. The safety state, and the block a vote is for, are therefore durable before the
//! core lets a vote, timeout or proposal out (the core's contract, see [`crate::consensus`]). Block and proof bytes are appended to the
//! value log as one self-describing group and made durable before the redb transaction that
//! indexes them commits; that transaction is durable only every [`INDEX_SYNC_INTERVAL`], and
//! opening the store re-indexes the groups past the durable index's end (see [`log`]).

mod direct;
pub mod journal;
pub mod log;
pub mod safety_file;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use redb::Durability;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{decode, encode_infallible, Bounded, DecodeError};
use crate::consensus::{Block, CommitProof, SafetyState, SafetyStateV1, Storage, StorageError};
use crate::types::{BlockId, Height};

pub use journal::Journal;
pub use log::{Extent, Group, GroupEntry, GroupMeta, Record, ValueLog};
pub use safety_file::SafetyFile;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Height → [`Extent`] of the committed block's encoding in the value log.
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("committed_block_extents");
/// Height → [`Extent`] of the encoding of the proof that commits the block at that height.
const PROOFS: TableDefinition<u64, &[u8]> = TableDefinition::new("commit_proof_extents");
/// META key under which earlier versions kept the safety state in redb (read once, to migrate).
const SAFETY_KEY: &str = "safety_state";
/// META key: the end of the value log as of the last indexed group (u64 LE); on disk it may lag
/// the log by the groups indexed since the last durable commit, which opening re-indexes.
const LOG_END_KEY: &str = "value_log_end";
/// META key: the secret key of the value log's group digests (32 bytes, made when the store is
/// created or first opened by a version with groups).
const LOG_KEY_KEY: &str = "value_log_group_key";
/// Height → the execution state root after the committed block at that height.
pub const EXEC_ROOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("exec_roots");
/// The latest stored execution state: [`EXEC_STATE_KEY`] → height (u64 LE) ‖ the state machine's
/// snapshot of its state after that block.
const EXEC_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("exec_state");
/// The one key of [`EXEC_STATE`].
const EXEC_STATE_KEY: &str = "latest";
/// The index commits durably at most this long after the previous durable commit (the others
/// commit without a sync); on open, the groups the log holds past the durable index are
/// re-indexed, so this bounds that scan (about this long of writes).
pub const INDEX_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// redb page cache of the chain file (redb's default, 1 GiB, would dominate a node's memory).
const CHAIN_CACHE_BYTES: usize = 16 << 20;

impl Bounded for SafetyState {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

impl Bounded for SafetyStateV1 {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

impl Bounded for CommitProof {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        self.child.check_bounds()
    }
}

/// A redb-backed [`Storage`].
pub struct RedbStore {
    db: Arc<Database>,
    /// The safety state and the kept blocks, apart from the chain so that their per-vote sync
    /// never waits on committed blocks' writes (shared with the [`BlockPrewriter`]).
    journal: Arc<std::sync::Mutex<Journal>>,
    /// The durable committed height (moved by every group commit).
    durable: Arc<AtomicU64>,
    /// How long each journal write took (the safety state and the blocks kept with it, made
    /// durable before a vote leaves), and how many bytes each wrote.
    pub journal_timing: Arc<std::sync::Mutex<JournalTiming>>,
    log: Arc<ValueLog>,
    tip: Option<(Arc<Block>, CommitProof)>,
    defer_commits: bool,
    /// When the index last committed durably (shared by every writer).
    index_synced: Arc<std::sync::Mutex<Syncs>>,
    index_sync_interval: std::time::Duration,
}

/// Writes blocks into a store's consensus journal ahead of the vote that needs them durable
/// ([`Journal::prewrite`]), from a thread of its own: a node hands it each proposal as it
/// arrives, so the block's bytes go to the device while the proposal is verified and checked,
/// and the vote's write adds only the safety state, one `fdatasync` for both.
#[derive(Clone, Debug)]
pub struct BlockPrewriter {
    journal: Arc<std::sync::Mutex<Journal>>,
}

impl BlockPrewriter {
    /// Writes `block` (with its id) ahead; a failure only means the vote's write carries it.
    pub fn write(&self, id: BlockId, block: Arc<Block>) {
        let result = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prewrite(id, block);
        if let Err(e) = result {
            tracing::warn!(target: "store.journal", error = %e, "writing a block ahead failed; the vote's write carries it");
        }
    }
}

/// Times and sizes of the consensus journal's writes (see [`RedbStore::journal_timing`]).
#[derive(Debug)]
pub struct JournalTiming {
    /// Time of each write, until it is durable.
    pub latency: crate::pipeline::LatencyHistogram,
    /// Writes, and bytes of the blocks they kept.
    pub writes: u64,
    /// See `writes`.
    pub block_bytes: u64,
}

impl Default for JournalTiming {
    fn default() -> Self {
        Self {
            latency: crate::pipeline::LatencyHistogram::new("store.journal_write"),
            writes: 0,
            block_bytes: 0,
        }
    }
}

/// An I/O error on one of the store's files, naming the file and what failed.
fn io_err(kind: &str, path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Backend(format!("{kind} {}: {what}: {e}", path.display()))
}

/// Syncs the directory holding `path`, so the file's entry survives a power loss as its
/// contents will. Done on every open (cheap, once): a crash right after a file was created must
/// not leave an entry that a later open takes as already durable.
fn sync_parent_dir(kind: &str, path: &Path) -> Result<(), StorageError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(kind, path, "syncing its directory", e))
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// Writes committed blocks and commit proofs in group commits: the node's persistence stage
/// holds one (see [`RedbStore::writer`]).
#[derive(Clone, Debug)]
pub struct ChainWriter {
    db: Arc<Database>,
    log: Arc<ValueLog>,
    /// The durable committed height, read by the journal to drop kept blocks the chain holds.
    durable: Arc<AtomicU64>,
    /// When the log last synced and the index last committed durably (and one group commit
    /// at a time).
    index_synced: Arc<std::sync::Mutex<Syncs>>,
    /// [`INDEX_SYNC_INTERVAL`], shorter or longer in tests.
    index_sync_interval: std::time::Duration,
    /// The blocks durable in the consensus journal (see [`ChainWriter::commit_group`]).
    journal_durable: Arc<std::sync::Mutex<journal::DurableIds>>,
}

/// When the value log last synced, and the index last committed durably.
#[derive(Debug)]
pub struct Syncs {
    log: std::time::Instant,
    index: std::time::Instant,
    /// The highest height written to the log since its last sync.
    written: u64,
}

impl Syncs {
    fn now() -> Self {
        let now = std::time::Instant::now();
        Self {
            log: now,
            index: now,
            written: 0,
        }
    }
}

/// One committed block for [`ChainWriter::commit_group`].
#[derive(Clone, Copy, Debug)]
pub struct GroupItem<'a> {
    /// The block.
    pub block: &'a Block,
    /// Its id, when known (a block durable in the consensus journal under it needs no sync of
    /// its own here).
    pub id: Option<BlockId>,
    /// The proof that commits it (give the proof of every committed batch's last block).
    pub proof: Option<&'a CommitProof>,
    /// The execution state root after it.
    pub exec_root: Option<[u8; 32]>,
}

impl ChainWriter {
    /// One group commit: every block of `items` (in height order) with its proof and execution
    /// root where given, appended to the value log and indexed, the log's new end recorded in
    /// the same transaction (so a reopened log appends exactly where the index ends, after
    /// re-indexing whole groups past it). When the consensus journal already holds every one
    /// of the blocks durably (the node kept them before voting), the group needs no sync of its
    /// own: the log syncs at most every [`INDEX_SYNC_INTERVAL`], and a crash before that loses
    /// only groups whose blocks the journal gives back on restart (committed again from there).
    /// Otherwise (blocks that came by sync) the group is synced before it is indexed. The index
    /// commits durably only right after a log sync, at most every [`INDEX_SYNC_INTERVAL`], so a
    /// durable index never names bytes the log has not synced; the durable height, below which
    /// the journal forgets its blocks, moves with the log's syncs.
    /// Sync serves ranges ending at a stored proof: give the proof of every committed batch.
    pub fn commit_group(&self, items: &[GroupItem<'_>]) -> Result<(), StorageError> {
        // One group commit at a time, from append to index: the log's end and the index's
        // record of it move together.
        let mut syncs = self
            .index_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = self.log.end();
        let result = self.write(items, &mut syncs);
        if result.is_err() {
            self.log.rewind(start);
        }
        result
    }

    /// Stores `state`, the execution state after the committed block at `height` (a snapshot
    /// of the state machine), in place of the previous one. Call it only once that block's group
    /// commit has returned: the state never runs ahead of the durable chain. Like the index, it
    /// becomes durable with the next durable index commit; a restart restores the latest one
    /// that did and executes the blocks after it.
    ///
    /// # Errors
    /// A failed redb transaction (the previous state stays).
    pub fn save_exec_state(&self, height: u64, state: &[u8]) -> Result<(), StorageError> {
        let _one = self
            .index_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::None).map_err(backend)?;
        {
            let mut t = txn.open_table(EXEC_STATE).map_err(backend)?;
            let mut value = Vec::with_capacity(8 + state.len());
            value.extend_from_slice(&height.to_le_bytes());
            value.extend_from_slice(state);
            t.insert(EXEC_STATE_KEY, value.as_slice())
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    /// Drops the page cache of what the group commits so far wrote (see
    /// [`ValueLog::drop_synced_pages`]); called after the notices that wait for the commit.
    pub fn release_cache(&self) {
        self.log.drop_synced_pages();
    }

    fn write(&self, items: &[GroupItem<'_>], syncs: &mut Syncs) -> Result<(), StorageError> {
        // A block is written as its encoding split around the payload, the payload straight
        // from the block (no copy into one encoding) and entering the group digest by the
        // digest the block keeps.
        let mut parts = Vec::with_capacity(items.len());
        for it in items {
            let (head, tail) = it.block.encode_around_payload().ok_or_else(|| {
                StorageError::Backend(format!(
                    "block {}: its encoding does not split around its payload",
                    it.block.height.0
                ))
            })?;
            parts.push((
                head,
                it.block.payload.digest(),
                tail,
                it.proof.map(encode_infallible),
            ));
        }
        let mut records = Vec::with_capacity(items.len() * 2);
        let mut entries = Vec::with_capacity(items.len());
        for ((head, digest, tail, proof), it) in parts.iter().zip(items) {
            let block = Record {
                head,
                payload: Some((&it.block.payload[..], digest)),
                tail,
            };
            let proof = proof.as_deref().map(Record::plain);
            entries.push(GroupEntry::describe(
                it.block.height.0,
                it.exec_root,
                &block,
                proof.as_ref(),
            )?);
            records.push(block);
            records.extend(proof);
        }
        let group = self.log.append_group(GroupMeta { entries }, &records)?;
        let top = items.iter().map(|it| it.block.height.0).max().unwrap_or(0);
        syncs.written = syncs.written.max(top);
        let now = std::time::Instant::now();
        let in_journal = {
            let durable = self
                .journal_durable
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            items
                .iter()
                .all(|it| it.id.is_some_and(|id| durable.contains_key(&id)))
        };
        let sync_due = now.saturating_duration_since(syncs.log) >= self.index_sync_interval;
        let synced = !in_journal || sync_due;
        if synced {
            self.log.sync()?;
            if self.log.synced_to() < group.end {
                return Err(StorageError::Backend(
                    "value log group not synced after its sync".into(),
                ));
            }
            syncs.log = now;
        }
        // A durable index commit only right after a log sync: it may name only synced bytes.
        let durable =
            synced && now.saturating_duration_since(syncs.index) >= self.index_sync_interval;
        index(&self.db, std::slice::from_ref(&group), durable)?;
        if durable {
            syncs.index = now;
        }
        if synced {
            self.durable.fetch_max(syncs.written, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// Indexes the groups' blocks, proofs and execution roots, with the log's end after the last
/// group, in one transaction.
fn index(db: &Database, groups: &[Group], durable: bool) -> Result<(), StorageError> {
    let Some(last) = groups.last() else {
        return Ok(());
    };
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(backend)?;
    {
        let mut blocks = txn.open_table(BLOCKS).map_err(backend)?;
        let mut proofs = txn.open_table(PROOFS).map_err(backend)?;
        let mut roots = txn.open_table(EXEC_ROOTS).map_err(backend)?;
        for g in groups {
            for (e, (b, p)) in g.meta.entries.iter().zip(&g.extents) {
                blocks
                    .insert(e.height, b.encode().as_slice())
                    .map_err(backend)?;
                if let Some(p) = p {
                    proofs
                        .insert(e.height, p.encode().as_slice())
                        .map_err(backend)?;
                }
                if let Some(r) = &e.exec_root {
                    roots.insert(e.height, r.as_slice()).map_err(backend)?;
                }
            }
        }
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(LOG_END_KEY, last.end.to_le_bytes().as_slice())
            .map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// The record that `table` indexes at `height`, read from `log`.
fn record<T: serde::de::DeserializeOwned + Bounded>(
    db: &Database,
    log: &ValueLog,
    table: TableDefinition<u64, &[u8]>,
    height: u64,
) -> Result<Option<T>, StorageError> {
    let txn = db.begin_read().map_err(backend)?;
    let t = txn.open_table(table).map_err(backend)?;
    let Some(v) = t.get(height).map_err(backend)? else {
        return Ok(None);
    };
    let bytes = log.read(Extent::decode(v.value())?)?;
    Ok(Some(decode(&bytes).map_err(backend)?))
}

/// The highest committed block with a stored proof (blocks stored above it without one, if a
/// write failed between, are committed again through consensus or sync).
fn read_tip(
    db: &Database,
    log: &ValueLog,
) -> Result<Option<(Arc<Block>, CommitProof)>, StorageError> {
    let h = {
        let txn = db.begin_read().map_err(backend)?;
        let proofs = txn.open_table(PROOFS).map_err(backend)?;
        let Some((h, _)) = proofs.last().map_err(backend)? else {
            return Ok(None);
        };
        h.value()
    };
    let block: Block = record(db, log, BLOCKS, h)?
        .ok_or_else(|| StorageError::Backend(format!("commit proof at height {h} has no block")))?;
    let Some(proof) = record::<CommitProof>(db, log, PROOFS, h)? else {
        return Err(StorageError::Backend(format!(
            "commit proof at height {h} vanished"
        )));
    };
    Ok(Some((Arc::new(block), proof)))
}

/// Reads the durable committed chain from other threads while the node runs (the HTTP API):
/// blocks, commit proofs and execution roots, each read in a redb read transaction of its own,
/// never waiting on the consensus thread.
#[derive(Clone, Debug)]
pub struct ChainReader {
    db: Arc<Database>,
    log: Arc<ValueLog>,
    durable: Arc<AtomicU64>,
}

impl ChainReader {
    /// The durable committed height (0: only genesis).
    pub fn durable_height(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The committed block at `height`, if durable.
    ///
    /// # Errors
    /// A failed read, or a stored record that does not decode.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StorageError> {
        record(&self.db, &self.log, BLOCKS, height)
    }

    /// The commit proof stored at the lowest height at or above `height` (the proof that
    /// committed the block at `height`, with the blocks of its batch).
    ///
    /// # Errors
    /// A failed read, or a stored record that does not decode.
    pub fn proof_covering(&self, height: u64) -> Result<Option<(u64, CommitProof)>, StorageError> {
        let h = {
            let txn = self.db.begin_read().map_err(backend)?;
            let proofs = txn.open_table(PROOFS).map_err(backend)?;
            let mut iter = proofs.range(height..).map_err(backend)?;
            match iter.next() {
                Some(entry) => entry.map_err(backend)?.0.value(),
                None => return Ok(None),
            }
        };
        Ok(record(&self.db, &self.log, PROOFS, h)?.map(|p| (h, p)))
    }

    /// The execution state root recorded with the committed block at `height`, if any.
    ///
    /// # Errors
    /// A failed read, or a stored root that is not 32 bytes.
    pub fn exec_root(&self, height: u64) -> Result<Option<[u8; 32]>, StorageError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(EXEC_ROOTS).map_err(backend)?;
        let Some(v) = t.get(height).map_err(backend)? else {
            return Ok(None);
        };
        <[u8; 32]>::try_from(v.value()).map(Some).map_err(|_| {
            StorageError::Backend(format!("execution root at height {height} is not 32 bytes"))
        })
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`: value log beside it (extension `blocks`),
    /// consensus journal in the directory `<path stem>.safety.journal`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_split(path, &path.with_extension("safety"))
    }

    /// Opens the chain at `chain_path` and the consensus journal in the directory
    /// `<safety_base>.journal`. A safety state kept by an earlier version (in the file pair
    /// `<safety_base>.0` and `.1`, or before those in redb: `<safety_base>.redb` or the chain
    /// database) becomes the journal's first record when the journal is created, and the file
    /// pair is then removed, so that an upgraded node never forgets what it voted and never reads
    /// a stale copy again.
    pub fn open_split(chain_path: &Path, safety_base: &Path) -> Result<Self, StorageError> {
        let db = Arc::new(Self::create(chain_path, CHAIN_CACHE_BYTES)?);
        let (log, tip) = Self::open_chain(&db, chain_path)?;
        let durable = Arc::new(AtomicU64::new(tip.as_ref().map_or(0, |(b, _)| b.height.0)));
        let mut migrated = false;
        let journal = Journal::open(
            &Self::journal_dir(safety_base),
            Arc::clone(&durable),
            || {
                let state = Self::legacy_safety_state(&db, chain_path, safety_base)?;
                migrated = state.is_some();
                Ok(state)
            },
        )?;
        if migrated {
            for i in 0..2 {
                let mut p = safety_base.as_os_str().to_owned();
                p.push(format!(".{i}"));
                let p = PathBuf::from(p);
                if p.exists() {
                    std::fs::remove_file(&p).map_err(|e| {
                        io_err(
                            "safety file",
                            &p,
                            "removing after moving it into the journal",
                            e,
                        )
                    })?;
                }
            }
            tracing::info!(target: "store", path = %safety_base.display(), "safety state moved into the consensus journal");
        }
        Ok(Self {
            db,
            journal: Arc::new(std::sync::Mutex::new(journal)),
            durable,
            journal_timing: Arc::default(),
            log: Arc::new(log),
            tip,
            defer_commits: false,
            index_synced: Arc::new(std::sync::Mutex::new(Syncs::now())),
            index_sync_interval: INDEX_SYNC_INTERVAL,
        })
    }

    /// A handle that writes proposals' blocks into this store's journal ahead of the votes
    /// that need them durable (see [`BlockPrewriter`]).
    pub fn block_prewriter(&self) -> BlockPrewriter {
        BlockPrewriter {
            journal: Arc::clone(&self.journal),
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the journal of the safety state at `safety_base` lives.
    pub fn journal_dir(safety_base: &Path) -> PathBuf {
        safety_base.with_extension("journal")
    }

    /// The safety state an earlier version kept: in the safety file pair, or before that in
    /// redb.
    fn legacy_safety_state(
        db: &Database,
        chain_path: &Path,
        safety_base: &Path,
    ) -> Result<Option<SafetyState>, StorageError> {
        let bytes = match SafetyFile::read_existing(safety_base)? {
            Some(b) => Some(b),
            None => {
                let legacy_path = safety_base.with_extension("redb");
                if legacy_path.exists() && legacy_path != chain_path {
                    let old = redb::Database::open(&legacy_path).map_err(|e| {
                        StorageError::Backend(format!("opening {}: {e}", legacy_path.display()))
                    })?;
                    Self::legacy_safety(&old)?
                } else {
                    Self::legacy_safety(db)?
                }
            }
        };
        bytes
            .map(|b| {
                decode::<SafetyStateV1>(&b)
                    .map(SafetyState::from)
                    .map_err(|e| {
                        StorageError::Backend(format!(
                            "the safety state kept by an earlier version: {e}"
                        ))
                    })
            })
            .transpose()
    }

    /// The safety state's encoding as an earlier version kept it in `db`, if there.
    fn legacy_safety(db: &Database) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = db.begin_read().map_err(backend)?;
        let meta = match txn.open_table(META) {
            Ok(m) => m,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        Ok(meta
            .get(SAFETY_KEY)
            .map_err(backend)?
            .map(|v| v.value().to_vec()))
    }

    fn create(path: &Path, cache_bytes: usize) -> Result<Database, StorageError> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| StorageError::Backend(format!("opening {}: {e}", path.display())))?;
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            txn.open_table(META).map_err(backend)?;
            txn.open_table(BLOCKS).map_err(backend)?;
            txn.open_table(PROOFS).map_err(backend)?;
            txn.open_table(EXEC_ROOTS).map_err(backend)?;
            txn.open_table(EXEC_STATE).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(db)
    }

    /// The value log's group key, made (and committed durably) on first use.
    fn log_key(db: &Database) -> Result<[u8; 32], StorageError> {
        {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            if let Some(v) = meta.get(LOG_KEY_KEY).map_err(backend)? {
                return v.value().try_into().map_err(|_| {
                    StorageError::Backend(format!(
                        "{LOG_KEY_KEY} holds {} bytes, expected 32",
                        v.value().len()
                    ))
                });
            }
        }
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        txn.open_table(META)
            .map_err(backend)?
            .insert(LOG_KEY_KEY, key.as_slice())
            .map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(key)
    }

    /// The highest block height the index names.
    fn indexed_tip_height(db: &Database) -> Result<Option<u64>, StorageError> {
        let txn = db.begin_read().map_err(backend)?;
        let blocks = txn.open_table(BLOCKS).map_err(backend)?;
        let last = blocks.last().map_err(backend)?.map(|(k, _)| k.value());
        Ok(last)
    }

    /// The end of the value log as of the last committed group commit.
    fn indexed_end(db: &Database) -> Result<u64, StorageError> {
        let txn = db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let Some(v) = meta.get(LOG_END_KEY).map_err(backend)? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| {
            StorageError::Backend(format!(
                "{LOG_END_KEY} holds {} bytes, expected 8",
                v.value().len()
            ))
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Opens the value log beside `chain_path`, re-indexes the groups past the durable index,
    /// and reads the committed tip.
    #[allow(clippy::type_complexity)]
    fn open_chain(
        db: &Database,
        chain_path: &Path,
    ) -> Result<(ValueLog, Option<(Arc<Block>, CommitProof)>), StorageError> {
        let log_path = chain_path.with_extension("blocks");
        let log = ValueLog::open(&log_path, Self::indexed_end(db)?, Self::log_key(db)?)?;
        // Groups synced to the log after the last durable index commit.
        let recovered = log.recover_groups(log.end())?;
        let mut expect = Self::indexed_tip_height(db)?.map(|h| h + 1);
        for e in recovered.iter().flat_map(|g| g.meta.entries.iter()) {
            if expect.is_some_and(|x| x != e.height) {
                return Err(StorageError::Backend(format!(
                    "value log {}: a group past the index holds height {} where {} was due",
                    log_path.display(),
                    e.height,
                    expect.unwrap_or_default()
                )));
            }
            expect = Some(e.height + 1);
        }
        if !recovered.is_empty() {
            index(db, &recovered, true)?;
            let blocks: usize = recovered.iter().map(|g| g.meta.entries.len()).sum();
            tracing::info!(target: "store", path = %log_path.display(), groups = recovered.len(), blocks, "re-indexed the value log's tail");
        }
        let tip = read_tip(db, &log)?;
        Ok((log, tip))
    }

    /// Leaves writing committed blocks to the node's persistence stage (which writes them with
    /// [`RedbStore::writer`] in its own group commits): `persist_commit` then only moves the
    /// in-memory tip, and the consensus thread never waits on block writes or their fsync. Reads
    /// (`committed_block`, sync serving) see blocks once that stage has made them durable.
    pub fn set_defer_commits(&mut self, defer: bool) {
        self.defer_commits = defer;
    }

    /// A reader of the durable chain for other threads.
    pub fn reader(&self) -> ChainReader {
        ChainReader {
            db: Arc::clone(&self.db),
            log: Arc::clone(&self.log),
            durable: Arc::clone(&self.durable),
        }
    }

    /// A writer of group commits into this store.
    pub fn writer(&self) -> ChainWriter {
        ChainWriter {
            db: Arc::clone(&self.db),
            log: Arc::clone(&self.log),
            durable: Arc::clone(&self.durable),
            index_synced: Arc::clone(&self.index_synced),
            index_sync_interval: self.index_sync_interval,
            journal_durable: self.journal().durable_ids(),
        }
    }

    /// The committed block at `height` as stored (`None` above the durable tip). Unlike
    /// [`Storage::committed_block`], a failed read is an error, not an absence.
    ///
    /// # Errors
    /// A failed read, or a stored record that does not decode.
    pub fn read_block(&self, height: u64) -> Result<Option<Block>, StorageError> {
        self.record(BLOCKS, height)
    }

    /// The durable committed height (0: only genesis).
    pub fn durable_height(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The ids of the committed blocks at heights `from..=to` (clamped to the durable tip),
    /// with each block's transaction count, read from the stored chain. Every id is computed
    /// from the block's bytes (`chain_id` is part of it), and each block's `parent_id` must be
    /// the id of the block below it: a read that fails, a missing block below the tip or a
    /// broken link is an error (the chain is damaged), never a silent difference.
    ///
    /// # Errors
    /// A failed read, a missing block below the tip, or a broken parent link.
    pub fn committed_ids(
        &self,
        chain_id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, BlockId, usize)>, StorageError> {
        let to = to.min(self.durable_height());
        let from = from.max(1);
        let mut out: Vec<(u64, BlockId, usize)> = Vec::new();
        let mut below: Option<BlockId> = None;
        for h in from..=to {
            let b = self.read_block(h)?.ok_or_else(|| {
                StorageError::Backend(format!("committed block {h} is missing below the tip {to}"))
            })?;
            if b.height.0 != h {
                return Err(StorageError::Backend(format!(
                    "the block stored at height {h} says it is at height {}",
                    b.height.0
                )));
            }
            if below.is_some_and(|p| p != b.parent_id) {
                return Err(StorageError::Backend(format!(
                    "the block at height {h} does not extend the one stored at height {}",
                    h - 1
                )));
            }
            let id = b.id(chain_id);
            let txs = crate::mempool::Payload::decode(&b.payload).map_or(0, |p| p.len());
            out.push((h, id, txs));
            below = Some(id);
        }
        Ok(out)
    }

    /// The latest stored execution state ([`ChainWriter::save_exec_state`]): its height and
    /// snapshot bytes.
    ///
    /// # Errors
    /// A failed read, or a stored value too short to hold a height.
    pub fn exec_state(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(EXEC_STATE).map_err(backend)?;
        let Some(v) = t.get(EXEC_STATE_KEY).map_err(backend)? else {
            return Ok(None);
        };
        let (height, state) = v.value().split_first_chunk::<8>().ok_or_else(|| {
            StorageError::Backend(format!(
                "stored execution state of {} bytes has no height",
                v.value().len()
            ))
        })?;
        Ok(Some((u64::from_le_bytes(*height), state.to_vec())))
    }

    /// The execution state root recorded with the committed block at `height`, if any.
    ///
    /// # Errors
    /// A failed read, or a stored root that is not 32 bytes.
    pub fn exec_root(&self, height: u64) -> Result<Option<[u8; 32]>, StorageError> {
        Ok(self
            .exec_roots(height..=height)?
            .first()
            .map(|(_, root)| *root))
    }

    /// The execution state roots recorded for the committed heights in `range`, in order of
    /// height (heights without one are left out), read in one transaction.
    ///
    /// # Errors
    /// A failed read, or a stored root that is not 32 bytes.
    pub fn exec_roots(
        &self,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, [u8; 32])>, StorageError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(EXEC_ROOTS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in t.range(range).map_err(backend)? {
            let (h, v) = entry.map_err(backend)?;
            let height = h.value();
            let root = <[u8; 32]>::try_from(v.value()).map_err(|_| {
                StorageError::Backend(format!("execution root at height {height} is not 32 bytes"))
            })?;
            out.push((height, root));
        }
        Ok(out)
    }

    /// The chain database (redb serialises writers).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// The record that `table` indexes at `height`.
    fn record<T: serde::de::DeserializeOwned + Bounded>(
        &self,
        table: TableDefinition<u64, &[u8]>,
        height: u64,
    ) -> Result<Option<T>, StorageError> {
        record(&self.db, &self.log, table, height)
    }

    fn proof_at(
        &self,
        range: impl std::ops::RangeBounds<u64>,
        last: bool,
    ) -> Option<(Height, CommitProof)> {
        let read = || -> Result<Option<(Height, CommitProof)>, StorageError> {
            let h = {
                let txn = self.db.begin_read().map_err(backend)?;
                let proofs = txn.open_table(PROOFS).map_err(backend)?;
                let mut iter = proofs.range(range).map_err(backend)?;
                let item = if last { iter.next_back() } else { iter.next() };
                match item {
                    Some(entry) => entry.map_err(backend)?.0.value(),
                    None => return Ok(None),
                }
            };
            Ok(self.record(PROOFS, h)?.map(|p| (Height(h), p)))
        };
        read().unwrap_or_else(|e| {
            tracing::error!(target: "store", error = %e, "reading commit proofs");
            None
        })
    }
}

impl Storage for RedbStore {
    fn load_safety(&self) -> Result<Option<SafetyState>, StorageError> {
        Ok(self.journal().safety().cloned())
    }

    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let bytes = self.journal().write(state)?;
        if let Ok(mut t) = self.journal_timing.lock() {
            t.latency.record_n(started.elapsed(), 1);
            t.writes += 1;
            t.block_bytes += bytes;
        }
        Ok(())
    }

    fn keep_block(&mut self, id: BlockId, block: &Arc<Block>) {
        self.journal().keep(id, block);
    }

    fn kept_blocks(&self) -> Vec<(BlockId, Arc<Block>)> {
        self.journal()
            .kept_blocks_above(Height(self.durable.load(Ordering::Acquire)))
    }

    fn kept_block(&self, id: &BlockId) -> Option<Arc<Block>> {
        self.journal().kept_block(id)
    }

    fn persist_commit(
        &mut self,
        blocks: &[Arc<Block>],
        proof: &CommitProof,
    ) -> Result<(), StorageError> {
        let Some(last) = blocks.last() else {
            return Ok(());
        };
        if !self.defer_commits {
            let n = blocks.len();
            let items: Vec<GroupItem<'_>> = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| GroupItem {
                    block: b.as_ref(),
                    id: None,
                    proof: (i + 1 == n).then_some(proof),
                    exec_root: None,
                })
                .collect();
            let writer = self.writer();
            writer.commit_group(&items)?;
            writer.release_cache();
        }
        self.tip = Some((Arc::clone(last), proof.clone()));
        Ok(())
    }

    fn committed_tip(&self) -> Option<(Arc<Block>, CommitProof)> {
        self.tip.clone()
    }

    fn committed_block(&self, height: Height) -> Option<Arc<Block>> {
        self.record::<Block>(BLOCKS, height.0)
            .unwrap_or_else(|e| {
                tracing::error!(target: "store", error = %e, height = height.0, "reading a committed block");
                None
            })
            .map(Arc::new)
    }

    fn commit_proof_in(&self, from: Height, to: Height) -> Option<(Height, CommitProof)> {
        self.proof_at(from.0..=to.0, true)
    }

    fn next_commit_proof(&self, from: Height) -> Option<(Height, CommitProof)> {
        self.proof_at(from.0.., false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::QuorumCert;
    use crate::types::{BlockId, Epoch, Round};

    fn block(h: u64) -> Arc<Block> {
        let mut b = Block::genesis(Epoch(1));
        b.height = Height(h);
        b.round = Round(h);
        b.payload = vec![h as u8; 10].into();
        Arc::new(b)
    }

    fn proof(h: u64) -> CommitProof {
        CommitProof {
            child: block(h + 1).header(),
            child_qc: QuorumCert {
                block_id: BlockId([h as u8; 32]),
                round: Round(h + 1),
                height: Height(h + 1),
                epoch: Epoch(1),
                votes: vec![],
            },
        }
    }

    #[test]
    fn everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let mut s = RedbStore::open(&path).unwrap();
        assert!(s.load_safety().unwrap().is_none());
        assert!(s.committed_tip().is_none());
        let mut safety = SafetyState::initial(Epoch(1), QuorumCert::genesis("c", Epoch(1)));
        safety.last_voted_round = Round(7);
        s.persist_safety(&safety).unwrap();
        s.persist_commit(&[block(1), block(2)], &proof(2)).unwrap();
        s.persist_commit(&[block(3)], &proof(3)).unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety));
        let (tip, p) = s.committed_tip().unwrap();
        assert_eq!(tip.height, Height(3));
        assert_eq!(p, proof(3));
        assert_eq!(*s.committed_block(Height(2)).unwrap().payload, [2; 10]);
        assert!(s.committed_block(Height(4)).is_none());
        assert_eq!(
            s.commit_proof_in(Height(1), Height(2)).unwrap().0,
            Height(2)
        );
        assert_eq!(s.next_commit_proof(Height(3)).unwrap().0, Height(3));
        assert!(s.commit_proof_in(Height(4), Height(9)).is_none());
        // The blocks live in the value log beside the database.
        assert!(path.with_extension("blocks").exists());
    }

    /// A safety state an earlier version kept in redb is carried over, not forgotten.
    #[test]
    fn safety_state_kept_in_redb_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let mut safety = SafetyState::initial(Epoch(1), QuorumCert::genesis("c", Epoch(1)));
        safety.last_voted_round = Round(42);
        let v1 = |s: &SafetyState| SafetyStateV1 {
            epoch: s.epoch,
            last_voted_round: s.last_voted_round,
            one_chain_round: s.one_chain_round,
            high_qc: s.high_qc.clone(),
            highest_timeout_round: s.highest_timeout_round,
            last_vote: s.last_vote.clone(),
            last_timeout: s.last_timeout.clone(),
            last_proposed_round: s.last_proposed_round,
        };
        let legacy = dir.path().join("safety.redb");
        {
            let db = redb::Database::create(&legacy).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SAFETY_KEY, encode_infallible(&v1(&safety)).as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let chain = dir.path().join("node.redb");
        let base = dir.path().join("safety");
        let s = RedbStore::open_split(&chain, &base).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety.clone()));
        drop(s);
        // Now in the journal: it survives the old file going away.
        std::fs::remove_file(&legacy).unwrap();
        let mut s = RedbStore::open_split(&chain, &base).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety.clone()));
        // A newer state written since wins over nothing being migrated again.
        safety.last_voted_round = Round(43);
        s.persist_safety(&safety).unwrap();
        drop(s);
        let s = RedbStore::open_split(&chain, &base).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety));
    }

    /// The safety file pair of the previous version moves into the journal, and the pair is
    /// removed (a stale copy is never read again).
    #[test]
    fn safety_file_pair_is_moved_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("safety");
        let mut safety = SafetyState::initial(Epoch(1), QuorumCert::genesis("c", Epoch(1)));
        safety.last_voted_round = Round(77);
        safety.last_proposed_round = Round(76);
        let v1 = SafetyStateV1 {
            epoch: safety.epoch,
            last_voted_round: safety.last_voted_round,
            one_chain_round: safety.one_chain_round,
            high_qc: safety.high_qc.clone(),
            highest_timeout_round: safety.highest_timeout_round,
            last_vote: None,
            last_timeout: None,
            last_proposed_round: safety.last_proposed_round,
        };
        {
            let (mut f, _) = SafetyFile::open(&base).unwrap();
            f.write(&encode_infallible(&v1)).unwrap();
        }
        let chain = dir.path().join("node.redb");
        let s = RedbStore::open_split(&chain, &base).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety.clone()));
        assert!(!dir.path().join("safety.0").exists() && !dir.path().join("safety.1").exists());
        assert!(RedbStore::journal_dir(&base).is_dir());
        drop(s);
        let s = RedbStore::open_split(&chain, &base).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety));
    }

    /// Kept blocks survive a restart until the durable chain reaches them; a group commit's
    /// blocks are durable and no longer kept.
    #[test]
    fn kept_blocks_survive_until_the_chain_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let mut s = RedbStore::open(&path).unwrap();
        s.set_defer_commits(true);
        let safety = SafetyState::initial(Epoch(1), QuorumCert::genesis("c", Epoch(1)));
        for h in 1..=3 {
            let b = block(h);
            s.keep_block(BlockId([h as u8; 32]), &b);
        }
        s.persist_safety(&safety).unwrap();
        // Committed in memory only: the chain does not hold it yet.
        s.persist_commit(&[block(1)], &proof(1)).unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert!(s.committed_tip().is_none());
        let kept: Vec<u64> = s.kept_blocks().iter().map(|(_, b)| b.height.0).collect();
        assert_eq!(kept, vec![1, 2, 3]);
        assert_eq!(s.kept_block(&BlockId([2; 32])).unwrap().height, Height(2));
        // The persistence stage writes block 1: it is no longer among the kept.
        s.writer()
            .commit_group(&[GroupItem {
                block: &block(1),
                id: None,
                proof: Some(&proof(1)),
                exec_root: None,
            }])
            .unwrap();
        let kept: Vec<u64> = s.kept_blocks().iter().map(|(_, b)| b.height.0).collect();
        assert_eq!(kept, vec![2, 3]);
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        let kept: Vec<u64> = s.kept_blocks().iter().map(|(_, b)| b.height.0).collect();
        assert_eq!(kept, vec![2, 3]);
    }

    /// A group commit interrupted after its log append (the index never committed) leaves
    /// nothing visible, and the reopened log appends where the index ends.
    #[test]
    fn unindexed_log_tail_is_dropped_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let mut s = RedbStore::open(&path).unwrap();
        s.persist_commit(&[block(1)], &proof(1)).unwrap();
        let end = s.log.end();
        // What a crash between the log append and the index commit leaves behind.
        s.log.append(&[b"half a group commit"]).unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.committed_tip().unwrap().0.height, Height(1));
        assert_eq!(s.log.end(), end);
        let mut s = s;
        s.persist_commit(&[block(2)], &proof(2)).unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(*s.committed_block(Height(2)).unwrap().payload, [2; 10]);
    }

    /// A group whose blocks the journal holds durably is written without a sync of its own:
    /// the durable height, below which the journal forgets its blocks, waits for the log's next
    /// sync; a group of blocks the journal does not hold is synced at once.
    #[test]
    fn groups_of_journaled_blocks_wait_for_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let mut s = RedbStore::open(&path).unwrap();
        s.set_defer_commits(true);
        s.index_sync_interval = std::time::Duration::MAX;
        let b1 = block(1);
        let id1 = BlockId([1; 32]);
        s.keep_block(id1, &b1);
        s.persist_safety(&SafetyState::initial(
            Epoch(1),
            QuorumCert::genesis("c", Epoch(1)),
        ))
        .unwrap();
        let w = s.writer();
        w.commit_group(&[GroupItem {
            block: &b1,
            id: Some(id1),
            proof: Some(&proof(1)),
            exec_root: None,
        }])
        .unwrap();
        assert!(s.log.synced_to() < s.log.end(), "no sync of its own");
        assert_eq!(s.durable_height(), 0);
        assert_eq!(s.kept_blocks().len(), 1, "the journal still holds it");
        // Block 2 came by sync (no id the journal knows): synced at once, with block 1's group.
        w.commit_group(&[GroupItem {
            block: &block(2),
            id: None,
            proof: Some(&proof(2)),
            exec_root: None,
        }])
        .unwrap();
        assert_eq!(s.log.synced_to(), s.log.end());
        assert_eq!(s.durable_height(), 2);
        assert!(s.kept_blocks().is_empty());
    }

    /// Copies the store's chain files as they are on disk now (what a crash would leave:
    /// redb writes nothing for a commit without durability).
    fn crash_copy(from: &Path, to: &Path) {
        std::fs::copy(from, to).unwrap();
        std::fs::copy(from.with_extension("blocks"), to.with_extension("blocks")).unwrap();
    }

    fn indexed_heights(path: &Path) -> Vec<u64> {
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(BLOCKS).unwrap();
        t.iter().unwrap().map(|r| r.unwrap().0.value()).collect()
    }

    /// Group commits whose index never became durable are re-indexed from the log on open,
    /// execution roots included; a damaged group ends the recovery there, and the log appends
    /// after the last whole group.
    #[test]
    fn index_tail_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let mut s = RedbStore::open(&path).unwrap();
        s.persist_commit(&[block(1)], &proof(1)).unwrap();
        // Index durably now, then never again.
        s.index_sync_interval = std::time::Duration::ZERO;
        s.persist_commit(&[block(2)], &proof(2)).unwrap();
        s.index_sync_interval = std::time::Duration::MAX;
        s.persist_commit(&[block(3), block(4)], &proof(4)).unwrap();
        let start5 = s.log.end();
        let b5 = block(5);
        let p5 = proof(5);
        s.writer()
            .commit_group(&[GroupItem {
                block: &b5,
                id: None,
                proof: Some(&p5),
                exec_root: Some([5; 32]),
            }])
            .unwrap();
        // The running store sees everything.
        assert_eq!(*s.committed_block(Height(4)).unwrap().payload, [4; 10]);

        let crashed = dir.path().join("crashed.redb");
        crash_copy(&path, &crashed);
        let torn = dir.path().join("torn.redb");
        crash_copy(&path, &torn);
        let middle = dir.path().join("middle.redb");
        crash_copy(&path, &middle);
        let log_len = std::fs::metadata(path.with_extension("blocks"))
            .unwrap()
            .len();
        drop(s);
        // On disk the index reaches height 2 only.
        assert_eq!(indexed_heights(&crashed), vec![1, 2]);

        let r = RedbStore::open(&crashed).unwrap();
        let (tip, p) = r.committed_tip().unwrap();
        assert_eq!((tip.height, p), (Height(5), proof(5)));
        assert_eq!(*r.committed_block(Height(3)).unwrap().payload, [3; 10]);
        assert_eq!(
            r.commit_proof_in(Height(3), Height(4)).unwrap().0,
            Height(4)
        );
        {
            let txn = r.db.begin_read().unwrap();
            let roots = txn.open_table(EXEC_ROOTS).unwrap();
            assert_eq!(roots.get(5).unwrap().unwrap().value(), [5u8; 32].as_slice());
        }
        let end = r.log.end();
        // Re-indexed durably: on disk before the store closes.
        let after = dir.path().join("after.redb");
        crash_copy(&crashed, &after);
        assert_eq!(indexed_heights(&after), vec![1, 2, 3, 4, 5]);
        drop(r);
        let r = RedbStore::open(&crashed).unwrap();
        assert_eq!(r.log.end(), end);
        assert_eq!(r.committed_tip().unwrap().0.height, Height(5));
        drop(r);

        // One flipped byte in the middle of the last group: that group is not taken; the one
        // before it is.
        let log = torn.with_extension("blocks");
        let mut bytes = std::fs::read(&log).unwrap();
        let at = usize::try_from((start5 + end) / 2).unwrap();
        assert!((at as u64) < log_len);
        bytes[at] ^= 0xff;
        std::fs::write(&log, &bytes).unwrap();
        let mut r = RedbStore::open(&torn).unwrap();
        assert_eq!(r.committed_tip().unwrap().0.height, Height(4));
        assert!(r.committed_block(Height(5)).is_none());
        // The next group overwrites the damaged one.
        r.persist_commit(&[block(5)], &proof(5)).unwrap();
        drop(r);
        let r = RedbStore::open(&torn).unwrap();
        assert_eq!(r.committed_tip().unwrap().0.height, Height(5));
        // The same group without an execution root: 32 bytes shorter.
        assert_eq!(r.log.end(), end - 32);

        // Damage in a group past the durable index with a whole one after it (blocks 3 and 4,
        // then 5: what a power loss can leave of unsynced groups written out of order): the
        // groups before the damage are kept, the rest dropped (their blocks are in the journal).
        let log = middle.with_extension("blocks");
        let mut bytes = std::fs::read(&log).unwrap();
        let at = usize::try_from(start5).unwrap() - 20;
        bytes[at] ^= 0xff;
        std::fs::write(&log, &bytes).unwrap();
        let r = RedbStore::open(&middle).unwrap();
        assert_eq!(r.committed_tip().unwrap().0.height, Height(2));
        assert!(r.committed_block(Height(5)).is_none());
    }
}
