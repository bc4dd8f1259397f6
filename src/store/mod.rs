//! The durable store: the committed chain and the commit proofs in an append-only [`ValueLog`]
//! indexed by redb, the safety state in its own pair of files ([`SafetyFile`]).
//!
//! When a `persist_*` call returns `Ok`, the data is on disk (every redb transaction commits with
//! [`Durability::Immediate`], and the safety file is synced), so a node killed at any instant
//! restarts with everything it acknowledged. The safety state is therefore durable before the core
//! lets a vote or timeout out (the core's contract, see [`crate::consensus`]). Block and proof
//! bytes are appended to the value log and made durable before the redb transaction that indexes
//! them commits (see [`log`]).

pub mod log;
pub mod safety_file;

use std::path::Path;
use std::sync::Arc;

pub use redb::Durability;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::codec::{decode, encode_infallible, Bounded, DecodeError};
use crate::consensus::{Block, CommitProof, SafetyState, Storage, StorageError};
use crate::types::Height;

pub use log::{Extent, ValueLog};
pub use safety_file::SafetyFile;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Height → [`Extent`] of the committed block's encoding in the value log.
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("committed_block_extents");
/// Height → [`Extent`] of the encoding of the proof that commits the block at that height.
const PROOFS: TableDefinition<u64, &[u8]> = TableDefinition::new("commit_proof_extents");
/// META key under which earlier versions kept the safety state in redb (read once, to migrate).
const SAFETY_KEY: &str = "safety_state";
/// META key: the end of the value log as of the last committed group (u64 LE).
const LOG_END_KEY: &str = "value_log_end";
/// redb page cache of the chain file (redb's default, 1 GiB, would dominate a node's memory).
const CHAIN_CACHE_BYTES: usize = 16 << 20;

impl Bounded for SafetyState {
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
    /// The safety state, apart from the chain so that its per-vote sync never flushes block data.
    safety: SafetyFile,
    log: Arc<ValueLog>,
    tip: Option<(Arc<Block>, CommitProof)>,
    defer_commits: bool,
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
}

impl ChainWriter {
    /// One durable group commit: every block of `items` (in height order) with the proof that
    /// commits it where one is given, plus `extra` writes in the same redb transaction. The
    /// records reach the value log and are synced before the index commits, and the log's new
    /// end is recorded in the same transaction (so a reopened log appends exactly where the
    /// index ends, over any unindexed tail).
    /// Sync serves ranges ending at a stored proof: give the proof of every committed batch.
    pub fn commit_group(
        &self,
        items: &[(&Block, Option<&CommitProof>)],
        extra: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let start = self.log.end();
        let result = self.write(items, extra);
        if result.is_err() {
            self.log.rewind(start);
        }
        result
    }

    /// Drops the page cache of what the group commits so far wrote (see
    /// [`ValueLog::drop_synced_pages`]); called after the notices that wait for the commit.
    pub fn release_cache(&self) {
        self.log.drop_synced_pages();
    }

    fn write(
        &self,
        items: &[(&Block, Option<&CommitProof>)],
        extra: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut records = Vec::with_capacity(items.len() * 2);
        for (block, proof) in items {
            records.push(encode_infallible(*block));
            if let Some(p) = proof {
                records.push(encode_infallible(*p));
            }
        }
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let extents = self.log.append(&refs)?;
        self.log.sync()?;
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut blocks = txn.open_table(BLOCKS).map_err(backend)?;
            let mut proofs = txn.open_table(PROOFS).map_err(backend)?;
            let mut ex = extents.iter();
            for (block, proof) in items {
                let Some(b) = ex.next() else { break };
                blocks
                    .insert(block.height.0, b.encode().as_slice())
                    .map_err(backend)?;
                if proof.is_some() {
                    let Some(p) = ex.next() else { break };
                    proofs
                        .insert(block.height.0, p.encode().as_slice())
                        .map_err(backend)?;
                }
            }
        }
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let end = extents.last().map_or(self.log.end(), Extent::end);
            meta.insert(LOG_END_KEY, end.to_le_bytes().as_slice())
                .map_err(backend)?;
        }
        extra(&txn)?;
        txn.commit().map_err(backend)
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`: value log beside it (extension `blocks`), safety
    /// state in `<path stem>.safety.0` and `.1`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_split(path, &path.with_extension("safety"))
    }

    /// Opens the chain at `chain_path` and the safety state in the file pair at `safety_base`
    /// (`<safety_base>.0`, `.1`). A safety state kept by an earlier version in redb (in
    /// `<safety_base>.redb`, or in the chain database) is carried over on first open, so that an
    /// upgraded node never forgets what it voted.
    pub fn open_split(chain_path: &Path, safety_base: &Path) -> Result<Self, StorageError> {
        let db = Arc::new(Self::create(chain_path, CHAIN_CACHE_BYTES)?);
        let (mut safety, newest) = SafetyFile::open(safety_base)?;
        if newest.is_none() {
            let legacy_path = safety_base.with_extension("redb");
            let legacy = if legacy_path.exists() && legacy_path != chain_path {
                let old = redb::Database::open(&legacy_path).map_err(|e| {
                    StorageError::Backend(format!("opening {}: {e}", legacy_path.display()))
                })?;
                Self::legacy_safety(&old)?
            } else {
                Self::legacy_safety(&db)?
            };
            if let Some(bytes) = legacy {
                decode::<SafetyState>(&bytes).map_err(|e| {
                    StorageError::Backend(format!("the safety state kept in redb: {e}"))
                })?;
                safety.write(&bytes)?;
                tracing::info!(target: "store", path = %safety_base.display(), "safety state moved out of redb");
            }
        }
        Self::from_parts(db, safety, chain_path)
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
        }
        txn.commit().map_err(backend)?;
        Ok(db)
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

    fn from_parts(
        db: Arc<Database>,
        safety: SafetyFile,
        chain_path: &Path,
    ) -> Result<Self, StorageError> {
        let log = ValueLog::open(
            &chain_path.with_extension("blocks"),
            Self::indexed_end(&db)?,
        )?;
        let mut store = Self {
            db,
            safety,
            log: Arc::new(log),
            tip: None,
            defer_commits: false,
        };
        store.tip = store.read_tip()?;
        Ok(store)
    }

    /// Leaves writing committed blocks to the node's persistence stage (which writes them with
    /// [`RedbStore::writer`] in its own group commits): `persist_commit` then only moves the
    /// in-memory tip, and the consensus thread never waits on block writes or their fsync. Reads
    /// (`committed_block`, sync serving) see blocks once that stage has made them durable.
    pub fn set_defer_commits(&mut self, defer: bool) {
        self.defer_commits = defer;
    }

    /// A writer of group commits into this store.
    pub fn writer(&self) -> ChainWriter {
        ChainWriter {
            db: Arc::clone(&self.db),
            log: Arc::clone(&self.log),
        }
    }

    /// The chain database, shared with the persistence stage (redb serialises writers).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// The record that `table` indexes at `height`.
    fn record<T: serde::de::DeserializeOwned + Bounded>(
        &self,
        table: TableDefinition<u64, &[u8]>,
        height: u64,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(table).map_err(backend)?;
        let Some(v) = t.get(height).map_err(backend)? else {
            return Ok(None);
        };
        let bytes = self.log.read(Extent::decode(v.value())?)?;
        Ok(Some(decode(&bytes).map_err(backend)?))
    }

    /// The highest committed block with a stored proof (blocks stored above it without one, if
    /// a write failed between, are committed again through consensus or sync).
    fn read_tip(&self) -> Result<Option<(Arc<Block>, CommitProof)>, StorageError> {
        let h = {
            let txn = self.db.begin_read().map_err(backend)?;
            let proofs = txn.open_table(PROOFS).map_err(backend)?;
            let Some((h, _)) = proofs.last().map_err(backend)? else {
                return Ok(None);
            };
            h.value()
        };
        let block: Block = self.record(BLOCKS, h)?.ok_or_else(|| {
            StorageError::Backend(format!("commit proof at height {h} has no block"))
        })?;
        let Some(proof) = self.record::<CommitProof>(PROOFS, h)? else {
            return Err(StorageError::Backend(format!(
                "commit proof at height {h} vanished"
            )));
        };
        Ok(Some((Arc::new(block), proof)))
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
        match self.safety.newest()? {
            Some(bytes) => {
                Ok(Some(decode(&bytes).map_err(|e| {
                    StorageError::Backend(format!("safety state: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), StorageError> {
        self.safety.write(&encode_infallible(state))
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
            let items: Vec<(&Block, Option<&CommitProof>)> = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| (b.as_ref(), (i + 1 == n).then_some(proof)))
                .collect();
            let writer = self.writer();
            writer.commit_group(&items, |_| Ok(()))?;
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
        let legacy = dir.path().join("safety.redb");
        {
            let db = redb::Database::create(&legacy).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SAFETY_KEY, encode_infallible(&safety).as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let chain = dir.path().join("node.redb");
        let base = dir.path().join("safety");
        let s = RedbStore::open_split(&chain, &base).unwrap();
        assert_eq!(s.load_safety().unwrap(), Some(safety.clone()));
        drop(s);
        // Now in the safety files: it survives the old file going away.
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
}
