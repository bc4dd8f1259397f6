//! The safety state's durable record as versions before the consensus journal
//! ([`super::journal`]) kept it: two files written in turn, each overwritten in place. A store
//! opened by this version reads it once ([`SafetyFile::read_existing`]), moves the state into the
//! journal and removes the two files.
//!
//! The safety state is written before every vote and timeout, so its write sits on the critical
//! path of every round. A redb transaction for one small value writes several pages and its
//! header; here a write is one `pwrite` at offset 0 of a file that already has its blocks, then
//! one `fdatasync`, which then has no file-size change (and so no journal commit) to flush.
//!
//! Atomicity comes from alternating: record `n` goes to file `n % 2`, so a write torn by a crash
//! can only damage the file being written, and the other still holds the previous record (and
//! that write's vote never left the node, because votes leave only after the write returns).
//! Each record carries a sequence number and a BLAKE3 digest over it; on open the valid record
//! with the highest sequence number wins.
//!
//! Record layout: magic (8 bytes) ‖ seq (u64 LE) ‖ len (u32 LE) ‖ digest (32) ‖ payload (len).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::consensus::StorageError;

const MAGIC: &[u8; 8] = b"BPCISAF1";
const HEADER_LEN: usize = 8 + 8 + 4 + 32;
/// BLAKE3 derive_key context of a record's digest.
const DIGEST_CONTEXT: &str = "bpci 2026-11 safety record v1";
/// Largest record accepted when reading (a safety state with the largest certificates the codec
/// admits is far smaller).
const MAX_RECORD: usize = 64 << 20;

/// The two files holding the safety state.
#[derive(Debug)]
pub struct SafetyFile {
    files: [File; 2],
    paths: [PathBuf; 2],
    /// Sequence number of the newest record (0: none written yet).
    seq: u64,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    super::io_err("safety file", path, what, e)
}

fn digest(seq: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    h.update(&seq.to_le_bytes());
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// The record in `file`, if it holds a complete, intact one: `(seq, payload)`.
fn read_record(file: &File, path: &Path) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
    let size = file
        .metadata()
        .map_err(|e| io_err(path, "metadata", e))?
        .len();
    if size < HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| io_err(path, "read", e))?;
    if &header[..8] != MAGIC {
        return Ok(None);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[8..16]);
    let seq = u64::from_le_bytes(seq);
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[16..20]);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RECORD || (HEADER_LEN + len) as u64 > size {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, HEADER_LEN as u64)
        .map_err(|e| io_err(path, "read", e))?;
    if header[20..] != digest(seq, &payload) {
        return Ok(None);
    }
    Ok(Some((seq, payload)))
}

impl SafetyFile {
    /// Opens (or creates) the pair `<base>.0` and `<base>.1` and returns the newest intact
    /// record's payload, if any.
    pub fn open(base: &Path) -> Result<(Self, Option<Vec<u8>>), StorageError> {
        let paths = [0, 1].map(|i| {
            let mut p = base.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        });
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| io_err(p, "open", e))
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        // The files' directory entries must outlive a power loss as their contents will.
        super::sync_parent_dir("safety file", base)?;
        let mut me = Self {
            files,
            paths,
            seq: 0,
        };
        let newest = me.read_newest()?;
        if newest.is_none() {
            // Record 1 goes to `.1` and `.0` is first written with record 2, after record 1 was
            // durable; a crash can therefore tear at most the record being written, and one
            // intact record stays. Bytes in `.0` with no intact record anywhere are damage (disk,
            // restore), not a crash: starting as a node that never voted could sign twice.
            let len0 = me.files[0]
                .metadata()
                .map_err(|e| io_err(&me.paths[0], "metadata", e))?
                .len();
            if len0 > 0 {
                return Err(StorageError::Backend(format!(
                    "safety files {} and {} hold no intact record: refusing to start without the \
                     safety state (restore it, or remove both files only if this validator \
                     never voted with this key)",
                    me.paths[0].display(),
                    me.paths[1].display()
                )));
            }
        }
        me.seq = newest.as_ref().map_or(0, |(s, _)| *s);
        Ok((me, newest.map(|(_, p)| p)))
    }

    /// The newest intact record's payload of the pair at `base`, or `None` when neither file
    /// exists (nothing is created). Damage is refused as by [`SafetyFile::open`].
    ///
    /// # Errors
    /// I/O errors, and a pair with bytes but no intact record.
    pub fn read_existing(base: &Path) -> Result<Option<Vec<u8>>, StorageError> {
        let exists = |i: u32| {
            let mut p = base.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p).exists()
        };
        if !exists(0) && !exists(1) {
            return Ok(None);
        }
        Ok(Self::open(base)?.1)
    }

    /// The newest intact record's payload, if any (read from disk).
    pub fn newest(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.read_newest()?.map(|(_, p)| p))
    }

    fn read_newest(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let mut newest: Option<(u64, Vec<u8>)> = None;
        for (f, p) in self.files.iter().zip(&self.paths) {
            if let Some((seq, payload)) = read_record(f, p)? {
                if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                    newest = Some((seq, payload));
                }
            }
        }
        Ok(newest)
    }

    /// Writes `payload` as the newest record and makes it durable before returning.
    pub fn write(&mut self, payload: &[u8]) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l as usize <= MAX_RECORD)
            .ok_or_else(|| {
                StorageError::Backend(format!(
                    "safety state of {} bytes is too large",
                    payload.len()
                ))
            })?;
        let mut record = Vec::with_capacity(HEADER_LEN + payload.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&digest(seq, payload));
        record.extend_from_slice(payload);
        let i = (seq % 2) as usize;
        let (file, path) = (&self.files[i], &self.paths[i]);
        file.write_all_at(&record, 0)
            .map_err(|e| io_err(path, "write", e))?;
        file.sync_data().map_err(|e| io_err(path, "fdatasync", e))?;
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_intact_record_wins_and_a_torn_write_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("safety");
        let (mut f, none) = SafetyFile::open(&base).unwrap();
        assert_eq!(none, None);
        f.write(b"first").unwrap();
        f.write(b"second, longer").unwrap();
        f.write(b"third").unwrap();
        drop(f);
        let (mut f, got) = SafetyFile::open(&base).unwrap();
        assert_eq!(got.as_deref(), Some(&b"third"[..]));
        // Numbering continues after a reopen: the next record replaces "second", not "third".
        f.write(b"fourth").unwrap();
        drop(f);
        assert_eq!(
            SafetyFile::open(&base).unwrap().1.as_deref(),
            Some(&b"fourth"[..])
        );
        // A crash tore the newest record (its last payload byte changed; the bytes after it
        // are what is left of the longer "second"): the previous one holds.
        let newest = dir.path().join("safety.0");
        let mut bytes = std::fs::read(&newest).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + b"second, longer".len());
        bytes[HEADER_LEN + b"fourth".len() - 1] ^= 1;
        std::fs::write(&newest, &bytes).unwrap();
        assert_eq!(
            SafetyFile::open(&base).unwrap().1.as_deref(),
            Some(&b"third"[..])
        );
        // A record cut short is not read either.
        std::fs::write(&newest, &bytes[..HEADER_LEN + 2]).unwrap();
        assert_eq!(
            SafetyFile::open(&base).unwrap().1.as_deref(),
            Some(&b"third"[..])
        );
        // Both damaged: refused, naming the files, rather than starting as a node that never
        // voted.
        std::fs::write(dir.path().join("safety.1"), b"garbage").unwrap();
        let err = SafetyFile::open(&base).unwrap_err().to_string();
        assert!(
            err.contains("safety.0") && err.contains("no intact record"),
            "{err}"
        );
    }

    /// A crash during the very first write (record 1, in `.1`) leaves no record and an empty
    /// `.0`: no vote left the node, so it starts as new.
    #[test]
    fn a_torn_first_write_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("safety");
        drop(SafetyFile::open(&base).unwrap());
        std::fs::write(dir.path().join("safety.1"), b"BPCISAF1 torn").unwrap();
        let (mut f, none) = SafetyFile::open(&base).unwrap();
        assert_eq!(none, None);
        f.write(b"first").unwrap();
        assert_eq!(f.newest().unwrap().as_deref(), Some(&b"first"[..]));
    }
}
