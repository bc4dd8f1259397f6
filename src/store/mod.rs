//! The durable store (redb): the safety state, the committed chain and the commit proofs.
//!
//! Every write transaction commits with [`Durability::Immediate`]: when a `persist_*` call returns
//! `Ok`, the data is on disk (redb fsyncs before returning), so a node killed at any instant
//! restarts with everything it acknowledged. The safety state is therefore durable before the core
//! lets a vote or timeout out (the core's contract, see [`crate::consensus`]).

use std::path::Path;
use std::sync::Arc;

pub use redb::Durability;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::{decode, encode_infallible, Bounded, DecodeError};
use crate::consensus::{Block, CommitProof, SafetyState, Storage, StorageError};
use crate::types::Height;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("committed_blocks");
const PROOFS: TableDefinition<u64, &[u8]> = TableDefinition::new("commit_proofs");
const SAFETY_KEY: &str = "safety_state";
/// redb page cache of the chain file (redb's default, 1 GiB, would dominate a node's memory).
const CHAIN_CACHE_BYTES: usize = 64 << 20;
/// redb page cache of the safety-state file (one small record).
const SAFETY_CACHE_BYTES: usize = 1 << 20;

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
    /// The safety state's database: the chain's own, or a small separate file so that its
    /// per-vote fsync never has to flush block data.
    safety_db: Arc<Database>,
    tip: Option<(Arc<Block>, CommitProof)>,
    defer_commits: bool,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, creating its tables.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Arc::new(Self::create(path, CHAIN_CACHE_BYTES)?);
        Self::from_parts(Arc::clone(&db), db)
    }

    /// Opens the chain at `chain_path` and the safety state in its own file at `safety_path`.
    pub fn open_split(chain_path: &Path, safety_path: &Path) -> Result<Self, StorageError> {
        let db = Arc::new(Self::create(chain_path, CHAIN_CACHE_BYTES)?);
        let safety = Arc::new(Self::create(safety_path, SAFETY_CACHE_BYTES)?);
        Self::from_parts(db, safety)
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

    fn from_parts(db: Arc<Database>, safety_db: Arc<Database>) -> Result<Self, StorageError> {
        let mut store = Self {
            db,
            safety_db,
            tip: None,
            defer_commits: false,
        };
        store.tip = store.read_tip()?;
        Ok(store)
    }

    /// Leaves writing committed blocks to the node's persistence stage (which calls
    /// [`RedbStore::write_commit`] inside its own group commit): `persist_commit` then only moves
    /// the in-memory tip, and the consensus thread never waits on block writes or their fsync. Reads
    /// (`committed_block`, sync serving) see blocks once that stage has made them durable.
    pub fn set_defer_commits(&mut self, defer: bool) {
        self.defer_commits = defer;
    }

    /// Writes committed blocks inside `txn`, with the proof of the last one when given. Sync
    /// serves ranges ending at a stored proof, so proofs may be sparse (at most
    /// [`crate::consensus::MAX_BLOCKS_PER_RESPONSE`] blocks apart).
    pub fn write_commit(
        txn: &redb::WriteTransaction,
        blocks: &[Arc<Block>],
        proof: Option<&CommitProof>,
    ) -> Result<(), StorageError> {
        let Some(last) = blocks.last() else {
            return Ok(());
        };
        let mut table = txn.open_table(BLOCKS).map_err(backend)?;
        for b in blocks {
            table
                .insert(b.height.0, encode_infallible(b.as_ref()).as_slice())
                .map_err(backend)?;
        }
        if let Some(proof) = proof {
            let mut proofs = txn.open_table(PROOFS).map_err(backend)?;
            proofs
                .insert(last.height.0, encode_infallible(proof).as_slice())
                .map_err(backend)?;
        }
        Ok(())
    }

    /// The database, shared with the persistence stage (redb serialises writers).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    fn read_tip(&self) -> Result<Option<(Arc<Block>, CommitProof)>, StorageError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let blocks = txn.open_table(BLOCKS).map_err(backend)?;
        let Some((h, bytes)) = blocks.last().map_err(backend)? else {
            return Ok(None);
        };
        let block: Block = decode(bytes.value()).map_err(backend)?;
        let proofs = txn.open_table(PROOFS).map_err(backend)?;
        let proof = match proofs.get(h.value()).map_err(backend)? {
            Some(p) => decode::<CommitProof>(p.value()).map_err(backend)?,
            None => {
                return Err(StorageError::Backend(format!(
                    "committed tip at height {} has no commit proof",
                    h.value()
                )))
            }
        };
        Ok(Some((Arc::new(block), proof)))
    }

    fn proof_at(
        &self,
        range: impl std::ops::RangeBounds<u64>,
        last: bool,
    ) -> Option<(Height, CommitProof)> {
        let read = || -> Result<Option<(Height, CommitProof)>, StorageError> {
            let txn = self.db.begin_read().map_err(backend)?;
            let proofs = txn.open_table(PROOFS).map_err(backend)?;
            let mut iter = proofs.range(range).map_err(backend)?;
            let item = if last { iter.next_back() } else { iter.next() };
            match item {
                Some(entry) => {
                    let (h, p) = entry.map_err(backend)?;
                    Ok(Some((
                        Height(h.value()),
                        decode(p.value()).map_err(backend)?,
                    )))
                }
                None => Ok(None),
            }
        };
        read().unwrap_or_else(|e| {
            tracing::error!(target: "store", error = %e, "reading commit proofs");
            None
        })
    }
}

impl Storage for RedbStore {
    fn load_safety(&self) -> Result<Option<SafetyState>, StorageError> {
        let txn = self.safety_db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        match meta.get(SAFETY_KEY).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(bytes.value()).map_err(backend)?)),
            None => Ok(None),
        }
    }

    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), StorageError> {
        let bytes = encode_infallible(state);
        let mut txn = self.safety_db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(SAFETY_KEY, bytes.as_slice()).map_err(backend)?;
        }
        txn.commit().map_err(backend)
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
            let mut txn = self.db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            Self::write_commit(&txn, blocks, Some(proof))?;
            txn.commit().map_err(backend)?;
        }
        self.tip = Some((Arc::clone(last), proof.clone()));
        Ok(())
    }

    fn committed_tip(&self) -> Option<(Arc<Block>, CommitProof)> {
        self.tip.clone()
    }

    fn committed_block(&self, height: Height) -> Option<Arc<Block>> {
        let read = || -> Result<Option<Arc<Block>>, StorageError> {
            let txn = self.db.begin_read().map_err(backend)?;
            let blocks = txn.open_table(BLOCKS).map_err(backend)?;
            match blocks.get(height.0).map_err(backend)? {
                Some(b) => Ok(Some(Arc::new(decode(b.value()).map_err(backend)?))),
                None => Ok(None),
            }
        };
        read().unwrap_or_else(|e| {
            tracing::error!(target: "store", error = %e, height = height.0, "reading a committed block");
            None
        })
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
        b.payload = vec![h as u8; 10];
        Arc::new(b)
    }

    fn proof(h: u64) -> CommitProof {
        CommitProof {
            child: (*block(h + 1)).clone(),
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
        assert_eq!(s.committed_block(Height(2)).unwrap().payload, vec![2; 10]);
        assert!(s.committed_block(Height(4)).is_none());
        assert_eq!(
            s.commit_proof_in(Height(1), Height(2)).unwrap().0,
            Height(2)
        );
        assert_eq!(s.next_commit_proof(Height(3)).unwrap().0, Height(3));
        assert!(s.commit_proof_in(Height(4), Height(9)).is_none());
    }
}
