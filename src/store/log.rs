//! The value log: an append-only file holding the encodings of committed blocks and commit
//! proofs, indexed by redb.
//!
//! Large values stay out of the B-tree (whose copy-on-write pages would rewrite, round up and zero
//! them): a record is written once, at the end of the file, and redb keeps only its
//! `(offset, len)`. A group commit appends its records, makes the log durable (`fdatasync`), and
//! only then commits the redb transaction that indexes them, so an index entry never points at
//! bytes that are not on disk. Bytes past the last whole group (a group commit interrupted by a
//! crash, or space allocated ahead) are free space: the next append overwrites them.
//!
//! Each group commit is one self-describing *group*: a header (magic, body length, section length,
//! a BLAKE3 digest keyed with the store's own secret key over the group's offset and body), a
//! small BCS section naming what follows (each block's height and length, where its payload lies
//! in it, its proof's length, its execution state root), then the records. A block's payload
//! enters the digest by its payload digest, which the node already has (the block's id commits to
//! it): a group commit hashes a few hundred bytes per block instead of every payload byte (at
//! 150,000 tx/s that hashing was the largest cost of the persistence stage), and recovery, which
//! is rare, recomputes the payload digests from the bytes read. Groups of the first format
//! (magic `bpcigrp1`, every record byte in the digest) are still recovered. A group whose blocks
//! the consensus journal already holds durably is not synced on its own: the log syncs at most
//! every [`super::INDEX_SYNC_INTERVAL`] (any other group is synced before it is indexed). The
//! index commits without a sync of its own, and durably only right after a log sync, at most
//! every [`super::INDEX_SYNC_INTERVAL`]: a durable index never names unsynced bytes. A node that
//! stops in between finds the index behind the log on restart and re-indexes, from the log,
//! every whole group past the index's end ([`ValueLog::recover_groups`]); the first bytes that
//! are not a whole group with a matching digest (a torn write, zeros allocated ahead, an older
//! format) end it. A whole group after them (unsynced groups a power loss wrote out of order)
//! is dropped with a warning: its blocks are in the journal, and consensus commits them again.
//!
//! Appends bypass the page cache where the file system allows it ([`super::direct`]): the group
//! is copied once into an aligned buffer and written from there, instead of into fresh
//! page-cache pages that the sync then writes back. A direct write covers whole 4 KiB blocks, so
//! it rewrites the start of the block the group begins in (the same bytes) and ends in zeros,
//! which are free space like any other bytes past the last group. At 75,000 tx/s on the
//! 4-validator testnet the page-cache copy was 9 % of all CPU.
//!
//! Small group commits go into space the file already has: the file is grown ahead of its end in
//! zero-filled 1 MiB steps, so that such an append overwrites existing blocks and its `fdatasync`
//! flushes data only, without a file-size change to commit to the journal. On this class of
//! machine that halves the sync's time and cuts its CPU about threefold (a 4 KiB append plus
//! `fdatasync` measured 170 µs against 88 µs in place). Large group commits (64 KiB and more)
//! append past the end instead: for them the zeros would double the bytes written and cost more
//! than the journal commit they save.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::direct::{self, DirectWriter};
use crate::consensus::StorageError;

/// Where a record lives in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Extent {
    /// Bytes of an encoded extent.
    pub const ENCODED_LEN: usize = 12;

    /// `offset` (u64 LE) then `len` (u32 LE).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The inverse of [`Extent::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let (Some(offset), Some(len)) = (bytes.get(..8), bytes.get(8..Self::ENCODED_LEN)) else {
            return Err(StorageError::Backend(format!(
                "value log index entry of {} bytes, expected {}",
                bytes.len(),
                Self::ENCODED_LEN
            )));
        };
        let mut o = [0; 8];
        o.copy_from_slice(offset);
        let mut l = [0; 4];
        l.copy_from_slice(len);
        Ok(Self {
            offset: u64::from_le_bytes(o),
            len: u32::from_le_bytes(l),
        })
    }

    /// The first byte after the record.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// An append-only record file (one writer at a time; reads from any thread).
#[derive(Debug)]
pub struct ValueLog {
    /// Reads, recovery, syncs, and writes where direct I/O is not to be had.
    file: File,
    path: PathBuf,
    /// End of the records (the next append goes here), the file's allocated length, and the
    /// direct writer.
    len: Mutex<Ends>,
    /// Bytes before this offset have been synced and dropped from the page cache.
    uncached_before: AtomicU64,
    /// Bytes before this offset have been synced.
    synced_to: AtomicU64,
    /// The key of the group digests.
    key: [u8; 32],
}

/// Where the records end, how far the file is allocated (zero-filled) beyond that, and how
/// appends reach the file.
#[derive(Debug)]
struct Ends {
    records: u64,
    allocated: u64,
    /// Appends bypass the page cache through this writer ([`super::direct`]); `None` where the
    /// file system refuses direct I/O, or if chosen so: appends are buffered `pwrite`s.
    direct: Option<DirectWriter>,
}

/// First bytes of every group written now (format 2: payloads enter the digest by their digest).
pub const GROUP_MAGIC: [u8; 8] = *b"bpcigrp2";
/// First bytes of a group of format 1 (every record byte in the digest), still recovered.
const GROUP_MAGIC_V1: [u8; 8] = *b"bpcigrp1";
/// What the magics of every format share (searched for when looking past damage).
const MAGIC_STEM: &[u8] = b"bpcigrp";
/// Header: magic, body length (u64 LE), section length (u32 LE), 4 zero bytes, digest.
pub const GROUP_HEADER_LEN: usize = 56;
/// Domain of the group digest.
const GROUP_DIGEST_CONTEXT: &str = "bpci 2026-11 value log group v2";
/// Domain of a format-1 group digest.
const GROUP_DIGEST_CONTEXT_V1: &str = "bpci 2026-11 value log group v1";
/// Most entries one group may name.
pub const MAX_GROUP_ENTRIES: usize = 1 << 16;

/// One committed block as a group names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupEntry {
    /// Block height.
    pub height: u64,
    /// Length of the block's record.
    pub block_len: u32,
    /// Length of its commit proof's record (which follows the block's), if stored.
    pub proof_len: Option<u32>,
    /// The execution state root after the block, if recorded.
    pub exec_root: Option<[u8; 32]>,
    /// Where the block's payload lies in its record (offset, length), if it has one apart: it
    /// enters the group digest by its [`payload_digest`](crate::consensus::payload_digest).
    pub payload: Option<(u32, u32)>,
}

impl GroupEntry {
    /// The entry naming `block` and, if stored, its `proof`: lengths and payload span taken from
    /// the records themselves.
    pub fn describe(
        height: u64,
        exec_root: Option<[u8; 32]>,
        block: &Record<'_>,
        proof: Option<&Record<'_>>,
    ) -> Result<Self, StorageError> {
        let u32_of = |n: u64| {
            u32::try_from(n)
                .map_err(|_| StorageError::Backend(format!("record of {n} bytes is too large")))
        };
        Ok(Self {
            height,
            block_len: u32_of(block.len())?,
            proof_len: proof.map(|p| u32_of(p.len())).transpose()?,
            exec_root,
            payload: block
                .span()
                .map(|(o, l)| Ok::<_, StorageError>((u32_of(o)?, u32_of(l)?)))
                .transpose()?,
        })
    }
}

/// [`GroupEntry`] as format 1 wrote it (no payload span).
#[derive(serde::Deserialize)]
struct GroupEntryV1 {
    height: u64,
    block_len: u32,
    proof_len: Option<u32>,
    exec_root: Option<[u8; 32]>,
}

/// [`GroupMeta`] as format 1 wrote it.
#[derive(serde::Deserialize)]
struct GroupMetaV1 {
    entries: Vec<GroupEntryV1>,
}

impl crate::codec::Bounded for GroupMetaV1 {
    fn check_bounds(&self) -> Result<(), crate::codec::DecodeError> {
        crate::codec::check_len("group.entries", self.entries.len(), MAX_GROUP_ENTRIES)
    }
}

impl From<GroupMetaV1> for GroupMeta {
    fn from(m: GroupMetaV1) -> Self {
        let entries = m
            .entries
            .into_iter()
            .map(|e| GroupEntry {
                height: e.height,
                block_len: e.block_len,
                proof_len: e.proof_len,
                exec_root: e.exec_root,
                payload: None,
            })
            .collect();
        Self { entries }
    }
}

/// One record of a group as the writer hands it over: the bytes `head ‖ payload ‖ tail`. A
/// block's payload comes with its digest (kept by the block), which stands for it in the group
/// digest.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Bytes before the payload (all of a record without one).
    pub head: &'a [u8],
    /// The payload and its [`payload_digest`](crate::consensus::payload_digest).
    pub payload: Option<(&'a [u8], &'a [u8; 32])>,
    /// Bytes after the payload.
    pub tail: &'a [u8],
}

impl<'a> Record<'a> {
    /// A record without a payload apart.
    pub fn plain(bytes: &'a [u8]) -> Self {
        Self {
            head: bytes,
            payload: None,
            tail: &[],
        }
    }

    fn len(&self) -> u64 {
        (self.head.len() + self.payload.map_or(0, |(p, _)| p.len()) + self.tail.len()) as u64
    }

    /// Where the payload lies in the record.
    fn span(&self) -> Option<(u64, u64)> {
        self.payload
            .map(|(p, _)| (self.head.len() as u64, p.len() as u64))
    }
}

/// The section after a group's header.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupMeta {
    /// In record order.
    pub entries: Vec<GroupEntry>,
}

impl crate::codec::Bounded for GroupMeta {
    fn check_bounds(&self) -> Result<(), crate::codec::DecodeError> {
        crate::codec::check_len("group.entries", self.entries.len(), MAX_GROUP_ENTRIES)
    }
}

impl GroupMeta {
    /// Whether `records` are the records the entries name: each block (with its payload where
    /// the entry says), then its proof if it has one, and nothing else.
    fn names(&self, records: &[Record<'_>]) -> bool {
        let mut it = records.iter();
        for e in &self.entries {
            let span = e.payload.map(|(o, l)| (u64::from(o), u64::from(l)));
            match it.next() {
                Some(b) if b.len() == u64::from(e.block_len) && b.span() == span => {}
                _ => return false,
            }
            if let Some(len) = e.proof_len {
                match it.next() {
                    Some(p) if p.len() == u64::from(len) && p.payload.is_none() => {}
                    _ => return false,
                }
            }
        }
        it.next().is_none()
    }

    /// Where the records it names lie when they start at `records_at`: each entry's block and
    /// proof extents, and the first byte after the last record.
    pub fn layout(&self, records_at: u64) -> (Vec<(Extent, Option<Extent>)>, u64) {
        let mut next = records_at;
        let mut extents = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let block = Extent {
                offset: next,
                len: e.block_len,
            };
            next = block.end();
            let proof = e.proof_len.map(|len| Extent { offset: next, len });
            if let Some(p) = proof {
                next = p.end();
            }
            extents.push((block, proof));
        }
        (extents, next)
    }
}

/// A whole group in the log: appended by a group commit, or found past the index's end on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// What it names.
    pub meta: GroupMeta,
    /// Each entry's block extent and proof extent, in order.
    pub extents: Vec<(Extent, Option<Extent>)>,
    /// The first byte after it.
    pub end: u64,
}

/// The digest of a group at `offset`: keyed with the store's own secret key (kept in its index
/// since the store was created), over the offset, the lengths, the section and the records.
/// Transaction bytes inside a block can therefore never pass for a group: their author knows
/// neither the key nor, in general, where the bytes will land.
fn group_hasher(
    key: &[u8; 32],
    context: &str,
    offset: u64,
    body_len: u64,
    section: &[u8],
) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(context.as_bytes());
    h.update(&offset.to_le_bytes());
    h.update(&body_len.to_le_bytes());
    h.update(&(section.len() as u64).to_le_bytes());
    h.update(section);
    h
}

/// Largest section a group may have (it is read whole on recovery).
pub const MAX_GROUP_SECTION: usize = 16 << 20;
/// Bytes hashed per read when a group is checked on recovery.
const RECOVERY_CHUNK: usize = 1 << 20;

/// Step by which the file grows ahead of its records.
const GROW_STEP: u64 = 1 << 20;
/// Group commits of at least this many bytes that do not fit the allocated space append past it
/// rather than zero-fill a step.
const GROW_FOR_LESS_THAN: u64 = 64 << 10;

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    super::io_err("value log", path, what, e)
}

impl ValueLog {
    /// Opens (or creates) the log at `path`, whose index covers the bytes before `indexed_end`.
    /// Whole groups past it are found by [`ValueLog::recover_groups`], which must run before the
    /// first append; the bytes after them (an interrupted group commit, space allocated ahead)
    /// are free space.
    ///
    /// # Errors
    /// I/O errors, and a file shorter than `indexed_end` (the index points past the data).
    pub fn open(path: &Path, indexed_end: u64, key: [u8; 32]) -> Result<Self, StorageError> {
        Self::open_with(path, indexed_end, key, true)
    }

    /// [`ValueLog::open`], with appends bypassing the page cache if `direct` and the file system
    /// allows it, else written through it.
    ///
    /// # Errors
    /// As [`ValueLog::open`].
    pub fn open_with(
        path: &Path,
        indexed_end: u64,
        key: [u8; 32],
        direct: bool,
    ) -> Result<Self, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err(path, "open", e))?;
        let on_disk = file
            .metadata()
            .map_err(|e| io_err(path, "metadata", e))?
            .len();
        // The file's directory entry must survive a power loss as well as the index that will
        // point into it (synced on every open: a crash right after creating the file must not
        // leave an entry a later open takes as durable).
        super::sync_parent_dir("value log", path)?;
        if on_disk < indexed_end {
            return Err(StorageError::Backend(format!(
                "value log {} has {on_disk} bytes but its index reaches byte {indexed_end}: the log is damaged",
                path.display()
            )));
        }
        let direct = if direct {
            let d = DirectWriter::open(path).map_err(|e| io_err(path, "open for direct I/O", e))?;
            if d.is_none() {
                tracing::info!(path = %path.display(), "value log: no direct I/O on this file system, writing through the page cache");
            }
            d
        } else {
            None
        };
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: Mutex::new(Ends {
                records: indexed_end,
                allocated: on_disk,
                direct,
            }),
            uncached_before: AtomicU64::new(0),
            synced_to: AtomicU64::new(0),
            key,
        })
    }

    /// Appends `records` (not yet durable: call [`ValueLog::sync`] before indexing them) and
    /// returns their extents. On error nothing is considered written: the next append
    /// overwrites whatever part of them reached the file.
    pub fn append(&self, records: &[&[u8]]) -> Result<Vec<Extent>, StorageError> {
        let mut len = self.len.lock().unwrap_or_else(PoisonError::into_inner);
        let at = len.records;
        let mut out = Vec::with_capacity(records.len());
        let mut end = at;
        for r in records {
            let n = u32::try_from(r.len()).map_err(|_| {
                StorageError::Backend(format!("record of {} bytes is too large", r.len()))
            })?;
            out.push(Extent {
                offset: end,
                len: n,
            });
            end += u64::from(n);
        }
        let grow_to = (end > len.allocated && end - at < GROW_FOR_LESS_THAN)
            .then(|| end.div_ceil(GROW_STEP) * GROW_STEP);
        let written_to = self.write(&mut len, at, records)?;
        if let Some(target) = grow_to {
            // Past what was just written: zeros only over space no record uses.
            let from = written_to.max(len.allocated);
            self.zero_fill(&mut len, from, target)?;
            len.allocated = target;
        }
        len.records = end;
        len.allocated = len.allocated.max(written_to);
        Ok(out)
    }

    /// Writes `records` one after the other at `at`, directly if the log can; returns the first
    /// byte after what reached the file (past `at` and the records, a direct write ends in zeros
    /// up to the next [`direct::ALIGN`] boundary).
    fn write(&self, len: &mut Ends, at: u64, records: &[&[u8]]) -> Result<u64, StorageError> {
        if let Some(d) = len.direct.as_mut() {
            match d.write_at(&self.file, at, records) {
                Ok(end) => return Ok(end),
                Err(e) if direct::unsupported(&e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "value log: direct write refused, writing through the page cache from now on");
                    len.direct = None;
                }
                Err(e) => return Err(io_err(&self.path, "write", e)),
            }
        }
        let mut pos = at;
        for r in records {
            self.file
                .write_all_at(r, pos)
                .map_err(|e| io_err(&self.path, "write", e))?;
            pos += r.len() as u64;
        }
        Ok(pos)
    }

    /// Zero-fills `from..to` (space past every record); the zeros become durable with the next
    /// [`ValueLog::sync`], which also records the new file size.
    fn zero_fill(&self, len: &mut Ends, from: u64, to: u64) -> Result<(), StorageError> {
        let r = match len.direct.as_mut() {
            // Whole blocks: `from` is a written end or the allocated end, and both are aligned
            // when every write was direct; otherwise the unaligned start goes through the cache.
            Some(d) if from % direct::ALIGN == 0 => d.zero(from, to),
            _ => direct::write_zeros(&self.file, from, to),
        };
        r.map_err(|e| io_err(&self.path, "growing the file", e))
    }

    /// Appends one group (see the module documentation): `meta` names `records`, which must be
    /// each entry's block and then, if it has one, its proof, with the lengths and payload spans
    /// the entries give. Returns the group, with where its records lie. Not durable until
    /// [`ValueLog::sync`].
    pub fn append_group(
        &self,
        meta: GroupMeta,
        records: &[Record<'_>],
    ) -> Result<Group, StorageError> {
        let section = crate::codec::encode_infallible(&meta);
        if section.len() > MAX_GROUP_SECTION || meta.entries.len() > MAX_GROUP_ENTRIES {
            return Err(StorageError::Backend(format!(
                "a group of {} blocks ({} section bytes) is over the limits of {MAX_GROUP_ENTRIES} and {MAX_GROUP_SECTION}",
                meta.entries.len(),
                section.len()
            )));
        }
        if !meta.names(records) {
            return Err(StorageError::Backend(
                "a group's section does not describe its records".into(),
            ));
        }
        let section_len = section.len() as u32;
        let body_len = section.len() as u64 + records.iter().map(Record::len).sum::<u64>();
        let offset = self.end();
        let mut h = group_hasher(&self.key, GROUP_DIGEST_CONTEXT, offset, body_len, &section);
        for r in records {
            h.update(r.head);
            if let Some((_, digest)) = r.payload {
                h.update(digest);
            }
            h.update(r.tail);
        }
        let mut head = Vec::with_capacity(GROUP_HEADER_LEN + section.len());
        head.extend_from_slice(&GROUP_MAGIC);
        head.extend_from_slice(&body_len.to_le_bytes());
        head.extend_from_slice(&section_len.to_le_bytes());
        head.extend_from_slice(&[0; 4]);
        head.extend_from_slice(h.finalize().as_bytes());
        head.extend_from_slice(&section);
        let mut all = Vec::with_capacity(1 + 3 * records.len());
        all.push(head.as_slice());
        for r in records {
            let parts = [r.head, r.payload.map_or(&[][..], |(p, _)| p), r.tail];
            all.extend(parts.into_iter().filter(|p| !p.is_empty()));
        }
        let appended = self.append(&all)?;
        let (extents, end) = meta.layout(offset + head.len() as u64);
        if appended.first().map(|h| h.offset) != Some(offset)
            || appended.last().map(Extent::end) != Some(end)
        {
            return Err(StorageError::Backend(
                "value log group not where its section says (two writers at once?)".into(),
            ));
        }
        Ok(Group { meta, extents, end })
    }

    /// Bytes before this offset are durable.
    pub fn synced_to(&self) -> u64 {
        self.synced_to.load(Ordering::Relaxed)
    }

    /// Reads the whole, intact groups from `from` on (see the module documentation), stopping
    /// at the first bytes that are not one, and makes the next append go after the last. A
    /// whole group further on (unsynced groups written out of order) is dropped with a warning.
    ///
    /// # Errors
    /// I/O errors.
    pub fn recover_groups(&self, from: u64) -> Result<Vec<Group>, StorageError> {
        let file_len = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, "metadata", e))?
            .len();
        let mut at = from;
        let mut out = Vec::new();
        while let Some(g) = self.group_at(at, file_len)? {
            at = g.end;
            out.push(g);
        }
        if let Some(later) = self.next_group_after(at, file_len)? {
            // Groups past the durable index may not have been synced (their blocks were
            // durable in the consensus journal): a power loss can leave a later one whole and
            // an earlier one torn. What follows the damage is dropped; the journal gives those
            // blocks back and consensus commits them again.
            tracing::warn!(
                target: "store",
                path = %self.path.display(),
                damaged_at = at,
                whole_group_at = later,
                "value log: a group past the durable index is torn and a later one whole; keeping the groups before the damage"
            );
        }
        if let Some(last) = out.last() {
            let mut len = self.len.lock().unwrap_or_else(PoisonError::into_inner);
            len.records = len.records.max(last.end);
        }
        Ok(out)
    }

    /// The offset of the first whole group after `from`, looking at every place its magic
    /// occurs.
    fn next_group_after(&self, from: u64, file_len: u64) -> Result<Option<u64>, StorageError> {
        let mut at = from.saturating_add(1);
        let mut buf = vec![0u8; RECOVERY_CHUNK];
        while at < file_len {
            let n = (file_len - at).min(RECOVERY_CHUNK as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| io_err(&self.path, "read", e))?;
            for i in 0..n.saturating_sub(MAGIC_STEM.len() - 1) {
                if buf[i..i + MAGIC_STEM.len()] == *MAGIC_STEM
                    && self.group_at(at + i as u64, file_len)?.is_some()
                {
                    return Ok(Some(at + i as u64));
                }
            }
            // Overlap by the magic's length less one, so no occurrence is split.
            at += (n as u64)
                .saturating_sub(MAGIC_STEM.len() as u64 - 1)
                .max(1);
        }
        Ok(None)
    }

    fn group_at(&self, at: u64, file_len: u64) -> Result<Option<Group>, StorageError> {
        let Some(body_at) = at.checked_add(GROUP_HEADER_LEN as u64) else {
            return Ok(None);
        };
        if body_at > file_len {
            return Ok(None);
        }
        let mut head = [0u8; GROUP_HEADER_LEN];
        self.file
            .read_exact_at(&mut head, at)
            .map_err(|e| io_err(&self.path, "read", e))?;
        let v1 = match &head[..8] {
            m if *m == GROUP_MAGIC => false,
            m if *m == GROUP_MAGIC_V1 => true,
            _ => return Ok(None),
        };
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&head[8..16]);
        let body_len = u64::from_le_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&head[16..20]);
        let section_len = u64::from(u32::from_le_bytes(b4));
        let end = match body_at.checked_add(body_len) {
            Some(e) if e <= file_len && section_len <= body_len => e,
            _ => return Ok(None),
        };
        if section_len > MAX_GROUP_SECTION as u64 {
            return Ok(None);
        }
        let mut section = vec![0u8; section_len as usize];
        self.file
            .read_exact_at(&mut section, body_at)
            .map_err(|e| io_err(&self.path, "read", e))?;
        let records_at = body_at + section_len;
        let mut buf = Vec::new();
        if v1 {
            let mut h = group_hasher(&self.key, GROUP_DIGEST_CONTEXT_V1, at, body_len, &section);
            self.hash_range(&mut h, records_at, end, &mut buf)?;
            if h.finalize().as_bytes()[..] != head[24..56] {
                return Ok(None);
            }
            let Ok(meta) = crate::codec::decode::<GroupMetaV1>(&section) else {
                return Ok(None);
            };
            let meta = GroupMeta::from(meta);
            // The named lengths must add up to the records exactly.
            let (extents, next) = meta.layout(records_at);
            return Ok((next == end).then_some(Group { meta, extents, end }));
        }
        // The section is decoded first (bounded, and it names the payload spans), the digest
        // checked after: nothing it names is used before that.
        let Ok(meta) = crate::codec::decode::<GroupMeta>(&section) else {
            return Ok(None);
        };
        let (extents, next) = meta.layout(records_at);
        if next != end {
            return Ok(None);
        }
        let mut h = group_hasher(&self.key, GROUP_DIGEST_CONTEXT, at, body_len, &section);
        for (e, (block, proof)) in meta.entries.iter().zip(&extents) {
            match e.payload {
                Some((o, l)) if u64::from(o) + u64::from(l) <= u64::from(block.len) => {
                    let p = block.offset + u64::from(o);
                    let q = p + u64::from(l);
                    self.hash_range(&mut h, block.offset, p, &mut buf)?;
                    let mut payload = crate::consensus::payload_hasher();
                    self.hash_range(&mut payload, p, q, &mut buf)?;
                    h.update(payload.finalize().as_bytes());
                    self.hash_range(&mut h, q, block.end(), &mut buf)?;
                }
                Some(_) => return Ok(None),
                None => self.hash_range(&mut h, block.offset, block.end(), &mut buf)?,
            }
            if let Some(p) = proof {
                self.hash_range(&mut h, p.offset, p.end(), &mut buf)?;
            }
        }
        if h.finalize().as_bytes()[..] != head[24..56] {
            return Ok(None);
        }
        Ok(Some(Group { meta, extents, end }))
    }

    /// Feeds the bytes `from..to` of the file to `h`, read in chunks of at most
    /// [`RECOVERY_CHUNK`] (a damaged length cannot make this allocate much).
    fn hash_range(
        &self,
        h: &mut blake3::Hasher,
        from: u64,
        to: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(RECOVERY_CHUNK as u64) as usize;
            buf.resize(n, 0);
            self.file
                .read_exact_at(&mut buf[..n], pos)
                .map_err(|e| io_err(&self.path, "read", e))?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(())
    }

    /// Forgets appends after `end` (a group commit whose index was not committed). A synced
    /// group stays readable until overwritten: a restart before that re-indexes it (it holds
    /// committed blocks, which the retried group commit writes again, byte for byte).
    pub fn rewind(&self, end: u64) {
        let mut len = self.len.lock().unwrap_or_else(PoisonError::into_inner);
        len.records = len.records.min(end);
    }

    /// Whether appends bypass the page cache.
    pub fn writes_direct(&self) -> bool {
        self.len
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .direct
            .is_some()
    }

    /// The current end of the records.
    pub fn end(&self) -> u64 {
        self.len
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        let end = self.end();
        self.file
            .sync_data()
            .map_err(|e| io_err(&self.path, "fdatasync", e))?;
        self.synced_to.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }

    /// Lets the kernel drop the synced pages from its cache: the log is written once and read
    /// rarely (peers catching up), and a page cache that grows by every committed byte costs a
    /// fresh page (zeroing, and on a VM a host fault) for every write, which measured as the
    /// largest single cost of the persistence stage. Separate from [`ValueLog::sync`] so that
    /// the persistence stage sends its commit notices first.
    pub fn drop_synced_pages(&self) {
        if self.writes_direct() {
            // Direct writes leave nothing in the page cache.
            return;
        }
        let end = self.synced_to.load(Ordering::Relaxed);
        // Whole pages only: the kernel keeps a partly covered one, so start at a page boundary.
        let from = self.uncached_before.load(Ordering::Relaxed) & !4095;
        if end <= from {
            return;
        }
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(from),
            libc::off_t::try_from(end - from),
        ) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is owned by
        // `self.file` and open for the whole call.
        let rc = unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED)
        };
        // Advice only: a failure changes speed, not what is stored.
        if rc == 0 {
            self.uncached_before.store(end, Ordering::Relaxed);
        }
    }

    /// Reads the record at `extent`.
    pub fn read(&self, extent: Extent) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0; extent.len as usize];
        self.file
            .read_exact_at(&mut buf, extent.offset)
            .map_err(|e| io_err(&self.path, "read", e))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_grow_and_reuse_unindexed_tail() {
        append_read_grow_and_reuse(true);
        append_read_grow_and_reuse(false);
    }

    /// Through the page cache or around it (`direct`), the same records land at the same
    /// offsets; direct writes end in zeros to a block boundary.
    fn append_read_grow_and_reuse(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.log");
        let open = |end| ValueLog::open_with(&path, end, [1; 32], direct);
        let log = open(0).unwrap();
        // Direct where asked, unless this file system has none.
        let direct = log.writes_direct();
        let written_end = |end| if direct { direct::align_up(end) } else { end };
        let ex = log.append(&[b"hello", b"", b"world!"]).unwrap();
        log.sync().unwrap();
        log.drop_synced_pages();
        // Synced bytes are still read back (from disk) after their pages are dropped.
        assert_eq!(log.read(ex[0]).unwrap(), b"hello");
        assert_eq!(ex[0], Extent { offset: 0, len: 5 });
        assert_eq!(ex[2], Extent { offset: 5, len: 6 });
        assert_eq!(log.read(ex[2]).unwrap(), b"world!");
        assert_eq!(Extent::decode(&ex[2].encode()).unwrap(), ex[2]);
        assert!(Extent::decode(&[0; 5]).is_err());
        // A failed group commit: its appends are overwritten by the next one.
        let lost = log.append(&[b"lost"]).unwrap();
        log.rewind(lost[0].offset);
        let next = log.append(&[b"kept"]).unwrap();
        assert_eq!(next[0].offset, lost[0].offset);
        drop(log);
        // The file is allocated ahead of the records, in zero-filled steps.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW_STEP);
        // Reopened with the index reaching only "hello": the rest is free space, overwritten by
        // the next append.
        let log = open(5).unwrap();
        assert_eq!(log.end(), 5);
        let again = log.append(&[b"again"]).unwrap();
        assert_eq!(again[0], Extent { offset: 5, len: 5 });
        assert_eq!(log.read(again[0]).unwrap(), b"again");
        // A small record past the allocated space grows it by a step; a large one is appended
        // past the end with no zeros after it.
        let fill = vec![6u8; (GROW_STEP - 10 - 100) as usize];
        log.append(&[&fill]).unwrap();
        let small = log.append(&[&[5u8; 200]]).unwrap();
        assert_eq!(small[0].end(), GROW_STEP + 100);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * GROW_STEP);
        let big = vec![7u8; GROW_STEP as usize + 10];
        let ex = log.append(&[&big]).unwrap();
        assert_eq!(log.read(ex[0]).unwrap(), big);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            written_end(ex[0].end())
        );
        assert_eq!(log.read(small[0]).unwrap(), [5u8; 200]);
        drop(log);
        // An index past the data is refused with a message naming the file.
        let err = open(9 * GROW_STEP).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("v.log"), "{err}");
    }

    /// Groups read back whole, in order, with their extents; reading stops at bytes that are
    /// not a group (zeros allocated ahead, other bytes, a group cut short).
    #[test]
    fn groups_are_recovered_until_the_first_damaged_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.log");
        let log = ValueLog::open(&path, 0, [1; 32]).unwrap();
        let entry = |height, block_len, proof_len| GroupEntry {
            height,
            block_len,
            proof_len,
            exec_root: Some([height as u8; 32]),
            payload: None,
        };
        let m1 = GroupMeta {
            entries: vec![entry(1, 3, Some(2)), entry(2, 4, None)],
        };
        let plain = |r: &[&'static [u8]]| r.iter().map(|b| Record::plain(b)).collect::<Vec<_>>();
        let g1 = log
            .append_group(m1.clone(), &plain(&[b"one", b"p1", b"two!"]))
            .unwrap();
        let big = vec![9u8; 100_000];
        let m2 = GroupMeta {
            entries: vec![entry(3, big.len() as u32, None)],
        };
        let g2 = log.append_group(m2, &[Record::plain(&big)]).unwrap();
        let end = g2.end;
        log.sync().unwrap();
        assert_eq!(log.end(), end);
        assert!(log.synced_to() >= end);
        drop(log);

        let log = ValueLog::open(&path, 0, [1; 32]).unwrap();
        let got = log.recover_groups(0).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].meta, m1);
        assert_eq!(got[0], g1);
        assert_eq!(got[1], g2);
        // Block, its proof, the next block: one after the other.
        let (b1, p1) = g1.extents[0];
        assert_eq!(p1.map(|p| p.offset), Some(b1.end()));
        assert_eq!((b1.len, p1.map(|p| p.len)), (3, Some(2)));
        assert_eq!(g1.extents[1].0.offset, b1.end() + 2);
        assert_eq!(got[1].end, end);
        assert_eq!(log.end(), end);
        assert_eq!(log.read(g1.extents[1].0).unwrap(), b"two!");
        // From the second group's start, only it.
        assert_eq!(log.recover_groups(got[0].end).unwrap().len(), 1);
        drop(log);
        // Under another key the same bytes are no group (nor is any group found further on).
        let stranger = ValueLog::open(&path, 0, [2; 32]).unwrap();
        assert!(stranger.recover_groups(0).unwrap().is_empty());
        assert_eq!(stranger.end(), 0);
        drop(stranger);

        // The second group cut short (the file ends inside it): only the first is whole.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(end - 1).unwrap();
        drop(f);
        let log = ValueLog::open(&path, 0, [1; 32]).unwrap();
        let got = log.recover_groups(0).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(log.end(), got[0].end);
        // Other bytes where a group would start: nothing.
        let other = ValueLog::open(&dir.path().join("o.log"), 0, [1; 32]).unwrap();
        other.append(&[&[7u8; 200]]).unwrap();
        assert!(other.recover_groups(0).unwrap().is_empty());
        assert!(other.recover_groups(u64::MAX - 10).unwrap().is_empty());
    }

    /// A block record whose payload enters the digest by its payload digest: recovered whole,
    /// read back byte for byte; one payload byte changed on disk (the header, section and other
    /// bytes intact) and the group is no longer whole. A section that does not describe its
    /// records is refused at append.
    #[test]
    fn payload_spans_are_checked_by_their_digest_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        let log = ValueLog::open(&path, 0, [3; 32]).unwrap();
        let payload = vec![0xabu8; 300_000];
        let digest = crate::consensus::payload_digest(&payload);
        let (head, tail) = (b"HEAD".as_slice(), b"tail!".as_slice());
        let rec = Record {
            head,
            payload: Some((&payload, &digest)),
            tail,
        };
        let len = (head.len() + payload.len() + tail.len()) as u32;
        let meta = |span| GroupMeta {
            entries: vec![GroupEntry {
                height: 7,
                block_len: len,
                proof_len: Some(2),
                exec_root: None,
                payload: span,
            }],
        };
        let good = meta(Some((4, payload.len() as u32)));
        for bad in [meta(None), meta(Some((5, payload.len() as u32)))] {
            let err = log
                .append_group(bad, &[rec, Record::plain(b"pf")])
                .unwrap_err();
            assert!(err.to_string().contains("does not describe"), "{err}");
        }
        assert!(
            log.append_group(good.clone(), &[rec]).is_err(),
            "missing proof"
        );
        let g = log
            .append_group(good.clone(), &[rec, Record::plain(b"pf")])
            .unwrap();
        log.sync().unwrap();
        drop(log);
        let log = ValueLog::open(&path, 0, [3; 32]).unwrap();
        let got = log.recover_groups(0).unwrap();
        assert_eq!(got, vec![g.clone()]);
        assert_eq!(got[0].meta, good);
        let block = log.read(g.extents[0].0).unwrap();
        assert_eq!(block, [head, &payload[..], tail].concat());
        drop(log);
        // One payload byte flipped.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xac], g.extents[0].0.offset + 4 + 150_000)
            .unwrap();
        drop(f);
        let log = ValueLog::open(&path, 0, [3; 32]).unwrap();
        assert!(log.recover_groups(0).unwrap().is_empty());
    }

    /// A group of format 1 (every record byte in the digest, entries without payload spans),
    /// as the previous version wrote it, is still recovered; the next group, of format 2,
    /// follows it.
    #[test]
    fn format_1_groups_are_still_recovered() {
        #[derive(serde::Serialize)]
        struct EntryV1 {
            height: u64,
            block_len: u32,
            proof_len: Option<u32>,
            exec_root: Option<[u8; 32]>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.log");
        let key = [4; 32];
        let log = ValueLog::open(&path, 0, key).unwrap();
        let section = crate::codec::encode_infallible(&vec![EntryV1 {
            height: 1,
            block_len: 5,
            proof_len: None,
            exec_root: Some([1; 32]),
        }]);
        let body_len = section.len() as u64 + 5;
        let mut h = group_hasher(&key, GROUP_DIGEST_CONTEXT_V1, 0, body_len, &section);
        h.update(b"block");
        let mut bytes = GROUP_MAGIC_V1.to_vec();
        bytes.extend_from_slice(&body_len.to_le_bytes());
        bytes.extend_from_slice(&(section.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(h.finalize().as_bytes());
        bytes.extend_from_slice(&section);
        bytes.extend_from_slice(b"block");
        log.append(&[&bytes]).unwrap();
        let entry = GroupEntry {
            height: 2,
            block_len: 3,
            proof_len: None,
            exec_root: None,
            payload: None,
        };
        let g2 = log
            .append_group(
                GroupMeta {
                    entries: vec![entry],
                },
                &[Record::plain(b"two")],
            )
            .unwrap();
        log.sync().unwrap();
        drop(log);
        let log = ValueLog::open(&path, 0, key).unwrap();
        let got = log.recover_groups(0).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].meta.entries[0].height, 1);
        assert_eq!(got[0].meta.entries[0].payload, None);
        assert_eq!(log.read(got[0].extents[0].0).unwrap(), b"block");
        assert_eq!(got[1], g2);
    }
}
