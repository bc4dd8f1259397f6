//! The consensus journal: the safety state and the uncommitted blocks a restart needs (DESIGN
//! §3), made durable together, with one `fdatasync`, before any vote, timeout or proposal leaves
//! the node.
//!
//! Every write is one *record*: the current safety state and the blocks kept since the previous
//! record (a block this node votes for, proposes or saw certified). A vote therefore leaves only
//! once the block it votes for is on disk here, so any QC names a block that a quorum stored:
//! after every validator stops at once, some honest one still holds each block the others'
//! highest QCs name, and the chain resumes from there.
//!
//! # Layout
//! A directory of segment files `<number>.seg` (20 digits), each a sequence of records:
//! header — magic `bpcijnl1` (8 bytes) ‖ sequence number (u64 LE) ‖ body length (u64 LE) ‖
//! section length (u32 LE) ‖ 4 zero bytes ‖ digest (32) — then the body: the section (BCS of the
//! record's safety state and of one entry per block: id, height, encoded length, where its payload
//! lies) and each block's encoding. The digest is BLAKE3 in derive-key mode over the sequence
//! number, the lengths, the section and the blocks' encodings, each payload entering by its
//! [`payload_digest`](crate::consensus::payload_digest), which the block already holds: a write
//! hashes a few hundred bytes per block rather than every payload byte.
//!
//! Records are appended through [`ValueLog::append`] (direct I/O, small records into zero-filled
//! space the file already has, so that their `fdatasync` commits no size change). A proposal's
//! block may be written ahead, as a record of its own without a sync, as soon as it arrives
//! ([`Journal::prewrite`]): the vote's write then only adds the safety state, and its one
//! `fdatasync` makes both durable, the block's bytes already on the device. On open, each
//! segment is read from its start, record after record, up to the first bytes that are not a
//! whole record with a matching digest: a write torn by a crash ends its segment there, and its
//! vote never left (votes leave only after the write returns); the next record overwrites it.
//!
//! # Segments
//! A segment grows to [`SEGMENT_BYTES`]; the next record then starts a new one. A record's
//! digest covers its segment's number, so that a segment file may be reused: a dropped segment
//! is kept as a spare (up to two) and written over by a later segment, whose writes then
//! change no file size (an `fdatasync` with a size change also commits the file system's
//! journal), and whose stale records fail their digests under the new number. A new segment is
//! written whole under a temporary name, synced, renamed and its directory synced, so every
//! segment file begins with an intact record, and the newest record is never the only one a torn
//! write could take. A segment other than the newest is deleted once every block in it is at or
//! below the durable committed height (the chain store holds those, or they lost to another
//! branch): what a restart reads is bounded by the blocks not yet durable in the chain, plus one
//! segment.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::log::ValueLog;
use crate::codec::{check_len, decode, encode_infallible, Bounded, DecodeError};
use crate::consensus::{payload_hasher, Block, SafetyState, StorageError};
use crate::types::{BlockId, Height};

/// First bytes of every record.
const MAGIC: [u8; 8] = *b"bpcijnl1";
/// Header: magic, sequence number, body length, section length, 4 zero bytes, digest.
const HEADER_LEN: usize = 64;
/// BLAKE3 derive-key context of a record's digest.
const DIGEST_CONTEXT: &str = "bpci 2026-12 consensus journal record v1";
/// A segment this long or longer takes no more records: the next one starts a new segment.
pub const SEGMENT_BYTES: u64 = 256 << 20;
/// Most blocks one record keeps.
pub const MAX_BLOCKS_PER_RECORD: usize = 4096;
/// Largest section read on open.
const MAX_SECTION: u64 = 16 << 20;
/// Largest block encoding read on open (a block's payload limit, its header and slack).
const MAX_BLOCK_RECORD: u64 = (crate::consensus::MAX_PAYLOAD_BYTES as u64) + (8 << 20);
/// Extension of segment files, and of one being created.
const SEGMENT_EXT: &str = "seg";
const CREATING_EXT: &str = "seg.tmp";
/// Extension of a dropped segment kept for reuse.
const SPARE_EXT: &str = "spare";
/// Dropped segments kept for reuse (see [`Journal`]'s module docs).
const MAX_SPARES: usize = 2;

/// One kept block as a record's section names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    id: BlockId,
    height: Height,
    /// Length of the block's encoding.
    len: u32,
    /// Where its payload lies in the encoding (offset, length).
    payload: (u32, u32),
}

/// The section of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Section {
    /// The safety state as of this record (`None` only in the record that creates the journal
    /// of a node that has never voted).
    safety: Option<SafetyState>,
    /// The blocks kept since the previous record, in record order.
    blocks: Vec<Entry>,
}

impl Bounded for Section {
    fn check_bounds(&self) -> Result<(), DecodeError> {
        check_len("journal.blocks", self.blocks.len(), MAX_BLOCKS_PER_RECORD)
    }
}

#[derive(Debug)]
struct Segment {
    number: u64,
    path: PathBuf,
    /// The highest block it holds (0 for none).
    max_height: u64,
}

/// The blocks durable in a journal, by id, with their heights (shared with the chain's
/// writer, which needs no sync of its own for blocks the journal already holds durably).
pub type DurableIds = std::collections::HashMap<BlockId, u64>;

/// The journal of one node (one writer: the consensus thread).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Oldest first; the last one takes the records.
    segments: VecDeque<Segment>,
    /// The newest segment's appender.
    active: ValueLog,
    next_seq: u64,
    /// Durable kept blocks above the durable height.
    live: HashMap<BlockId, Arc<Block>>,
    staged: Vec<(BlockId, Arc<Block>)>,
    safety: Option<SafetyState>,
    /// The durable committed height (moved by the chain's group commits).
    durable: Arc<AtomicU64>,
    segment_bytes: u64,
    /// Blocks written since the last sync, with their heights.
    unsynced: Vec<(BlockId, u64)>,
    /// Blocks durable here.
    durable_ids: Arc<std::sync::Mutex<DurableIds>>,
    /// Dropped segment files kept for reuse.
    spares: Vec<PathBuf>,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    super::io_err("consensus journal", path, what, e)
}

fn lock_ids(m: &std::sync::Mutex<DurableIds>) -> std::sync::MutexGuard<'_, DurableIds> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn damaged(path: &Path, why: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!(
        "consensus journal {} is damaged: {why}; refusing to start without the safety state it \
         holds (restore the data directory from a copy)",
        path.display()
    ))
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".seg")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// A record's bytes, ready to append.
struct Encoded {
    head: Vec<u8>,
    /// Per block: the encoding before the payload, the payload, the encoding after it.
    parts: Vec<(Vec<u8>, bytes::Bytes, Vec<u8>)>,
}

impl Encoded {
    fn len(&self) -> u64 {
        self.head.len() as u64
            + self
                .parts
                .iter()
                .map(|(h, p, t)| (h.len() + p.len() + t.len()) as u64)
                .sum::<u64>()
    }

    fn slices(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(1 + 3 * self.parts.len());
        out.push(self.head.as_slice());
        for (h, p, t) in &self.parts {
            out.extend(
                [h.as_slice(), &p[..], t.as_slice()]
                    .into_iter()
                    .filter(|s| !s.is_empty()),
            );
        }
        out
    }
}

fn encode_record(
    segment: u64,
    seq: u64,
    safety: Option<&SafetyState>,
    blocks: &[(BlockId, Arc<Block>)],
) -> Result<Encoded, StorageError> {
    let mut entries = Vec::with_capacity(blocks.len());
    let mut parts = Vec::with_capacity(blocks.len());
    let u32_of = |n: usize| {
        u32::try_from(n).map_err(|_| StorageError::Backend(format!("a kept block of {n} bytes")))
    };
    for (id, b) in blocks {
        let (head, tail) = b.encode_around_payload().ok_or_else(|| {
            StorageError::Backend(format!(
                "block at height {}: its encoding does not split around its payload",
                b.height.0
            ))
        })?;
        entries.push(Entry {
            id: *id,
            height: b.height,
            len: u32_of(head.len() + b.payload.len() + tail.len())?,
            payload: (u32_of(head.len())?, u32_of(b.payload.len())?),
        });
        parts.push((head, b.payload.shared(), tail));
    }
    let section = encode_infallible(&Section {
        safety: safety.cloned(),
        blocks: entries,
    });
    let body_len = section.len() as u64
        + parts
            .iter()
            .map(|(h, p, t)| (h.len() + p.len() + t.len()) as u64)
            .sum::<u64>();
    let mut h = record_hasher(segment, seq, body_len, &section);
    for ((head, _, tail), (_, b)) in parts.iter().zip(blocks) {
        h.update(head);
        h.update(&b.payload.digest());
        h.update(tail);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + section.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&(section.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(h.finalize().as_bytes());
    out.extend_from_slice(&section);
    Ok(Encoded { head: out, parts })
}

fn record_hasher(segment: u64, seq: u64, body_len: u64, section: &[u8]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    h.update(&segment.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&body_len.to_le_bytes());
    h.update(&(section.len() as u64).to_le_bytes());
    h.update(section);
    h
}

/// One intact record read back.
struct Read {
    seq: u64,
    safety: Option<SafetyState>,
    blocks: Vec<(BlockId, Block)>,
    end: u64,
}

/// The record at `at` in `file` (segment `segment`), if whole and intact.
fn read_record(
    file: &File,
    path: &Path,
    segment: u64,
    at: u64,
    file_len: u64,
) -> Result<Option<Read>, StorageError> {
    let Some(body_at) = at.checked_add(HEADER_LEN as u64) else {
        return Ok(None);
    };
    if body_at > file_len {
        return Ok(None);
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, at)
        .map_err(|e| io_err(path, "read", e))?;
    if head[..8] != MAGIC {
        return Ok(None);
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let seq = u64_at(8);
    let body_len = u64_at(16);
    let mut b4 = [0u8; 4];
    b4.copy_from_slice(&head[24..28]);
    let section_len = u64::from(u32::from_le_bytes(b4));
    let end = match body_at.checked_add(body_len) {
        Some(e) if e <= file_len && section_len <= body_len && section_len <= MAX_SECTION => e,
        _ => return Ok(None),
    };
    let mut section = vec![0u8; section_len as usize];
    file.read_exact_at(&mut section, body_at)
        .map_err(|e| io_err(path, "read", e))?;
    let Ok(meta) = decode::<Section>(&section) else {
        return Ok(None);
    };
    let total: u64 = meta.blocks.iter().map(|e| u64::from(e.len)).sum();
    if section_len + total != body_len {
        return Ok(None);
    }
    let mut h = record_hasher(segment, seq, body_len, &section);
    let mut pos = body_at + section_len;
    let mut encodings = Vec::with_capacity(meta.blocks.len());
    for e in &meta.blocks {
        let (p_at, p_len) = (u64::from(e.payload.0), u64::from(e.payload.1));
        if u64::from(e.len) > MAX_BLOCK_RECORD || p_at + p_len > u64::from(e.len) {
            return Ok(None);
        }
        let mut bytes = vec![0u8; e.len as usize];
        file.read_exact_at(&mut bytes, pos)
            .map_err(|e| io_err(path, "read", e))?;
        let (before, rest) = bytes.split_at(p_at as usize);
        let (payload, after) = rest.split_at(p_len as usize);
        h.update(before);
        h.update(payload_hasher().update(payload).finalize().as_bytes());
        h.update(after);
        encodings.push(bytes);
        pos += u64::from(e.len);
    }
    if h.finalize().as_bytes()[..] != head[32..64] {
        return Ok(None);
    }
    let mut blocks = Vec::with_capacity(encodings.len());
    for (e, bytes) in meta.blocks.iter().zip(encodings) {
        let block: Block = decode(&bytes).map_err(|err| {
            damaged(
                path,
                format!("a kept block at byte {at} does not decode: {err}"),
            )
        })?;
        blocks.push((e.id, block));
    }
    Ok(Some(Read {
        seq,
        safety: meta.safety,
        blocks,
        end,
    }))
}

impl Journal {
    /// Opens the journal in `dir` (creating it), reading back every intact record. A journal
    /// not yet created is created with one record holding `initial()`'s state (the safety state
    /// an earlier version kept elsewhere, or `None` for a new node), durable before this
    /// returns. `durable` is the durable committed height, which the chain's group commits move.
    ///
    /// # Errors
    /// I/O errors, and damage: a segment that does not begin with an intact record, or sequence
    /// numbers that do not increase.
    pub fn open(
        dir: &Path,
        durable: Arc<AtomicU64>,
        initial: impl FnOnce() -> Result<Option<SafetyState>, StorageError>,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "creating the directory", e))?;
        super::sync_parent_dir("consensus journal", dir)?;
        let mut paths = Vec::new();
        let mut spares = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, "listing", e))? {
            let path = entry.map_err(|e| io_err(dir, "listing", e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(&format!(".{SPARE_EXT}")) {
                spares.push(path);
            } else if name.ends_with(&format!(".{CREATING_EXT}")) {
                // A segment whose creation a crash interrupted: never part of the journal.
                std::fs::remove_file(&path).map_err(|e| io_err(&path, "removing", e))?;
            } else if let Some(n) = segment_number(&path) {
                paths.push((n, path));
            }
        }
        paths.sort();
        let durable_now = durable.load(Ordering::Acquire);
        let mut segments = VecDeque::new();
        let mut live = HashMap::new();
        let mut safety = None;
        let mut last_seq = 0;
        let mut active_end = 0;
        for (number, path) in &paths {
            let file = File::open(path).map_err(|e| io_err(path, "open", e))?;
            let len = file
                .metadata()
                .map_err(|e| io_err(path, "metadata", e))?
                .len();
            let mut at = 0;
            let mut max_height = 0;
            let mut records = 0u64;
            while let Some(r) = read_record(&file, path, *number, at, len)? {
                if r.seq <= last_seq {
                    return Err(damaged(
                        path,
                        format!("record {} at byte {at} follows record {last_seq}", r.seq),
                    ));
                }
                last_seq = r.seq;
                if r.safety.is_some() {
                    safety = r.safety;
                }
                for (id, block) in r.blocks {
                    max_height = max_height.max(block.height.0);
                    if block.height.0 > durable_now {
                        live.insert(id, Arc::new(block));
                    }
                }
                at = r.end;
                records += 1;
            }
            if records == 0 {
                return Err(damaged(
                    path,
                    "the segment does not begin with an intact record",
                ));
            }
            active_end = at;
            segments.push_back(Segment {
                number: *number,
                path: path.clone(),
                max_height,
            });
        }
        let mut journal = match segments.back() {
            Some(last) => Self {
                dir: dir.to_path_buf(),
                active: ValueLog::open_with(&last.path, active_end, [0; 32], true)?,
                segments,
                next_seq: last_seq + 1,
                live,
                staged: Vec::new(),
                safety,
                durable,
                segment_bytes: SEGMENT_BYTES,
                unsynced: Vec::new(),
                durable_ids: Arc::default(),
                spares,
            },
            None => {
                let safety = initial()?;
                let first = encode_record(1, 1, safety.as_ref(), &[])?;
                let (segment, active) = create_segment(dir, 1, &first, None)?;
                Self {
                    dir: dir.to_path_buf(),
                    active,
                    segments: VecDeque::from([segment]),
                    next_seq: 2,
                    live,
                    staged: Vec::new(),
                    safety,
                    durable,
                    segment_bytes: SEGMENT_BYTES,
                    unsynced: Vec::new(),
                    durable_ids: Arc::default(),
                    spares,
                }
            }
        };
        {
            let mut ids = lock_ids(&journal.durable_ids);
            ids.extend(journal.live.iter().map(|(id, b)| (*id, b.height.0)));
        }
        journal.drop_dead_segments();
        Ok(journal)
    }

    /// The blocks durable in this journal (a shared, live view).
    pub fn durable_ids(&self) -> Arc<std::sync::Mutex<DurableIds>> {
        Arc::clone(&self.durable_ids)
    }

    /// Everything written is synced: the blocks written since the last sync are durable.
    fn all_synced(&mut self) {
        let durable = self.durable.load(Ordering::Acquire);
        let mut ids = lock_ids(&self.durable_ids);
        ids.extend(self.unsynced.drain(..));
        ids.retain(|_, h| *h > durable);
    }

    /// The newest durable safety state.
    pub fn safety(&self) -> Option<&SafetyState> {
        self.safety.as_ref()
    }

    /// Keeps `block`: durable with the next [`Journal::write`].
    pub fn keep(&mut self, id: BlockId, block: &Arc<Block>) {
        if !self.live.contains_key(&id) && !self.staged.iter().any(|(s, _)| *s == id) {
            self.staged.push((id, Arc::clone(block)));
        }
    }

    /// The durable kept blocks above `height`, in height order.
    pub fn kept_blocks_above(&self, height: Height) -> Vec<(BlockId, Arc<Block>)> {
        let mut out: Vec<(BlockId, Arc<Block>)> = self
            .live
            .iter()
            .filter(|(_, b)| b.height > height)
            .map(|(id, b)| (*id, Arc::clone(b)))
            .collect();
        out.sort_by_key(|(_, b)| b.height);
        out
    }

    /// Writes `block` ahead of the write that will make it durable (see
    /// [`super::BlockPrewriter`]): one record of its own, appended without a sync, so that the
    /// next [`Journal::write`]'s `fdatasync` (whose record follows it in the file) finds its
    /// bytes already on the device. A block kept or written already is left alone.
    ///
    /// # Errors
    /// I/O errors (the block is then kept, and written, by the next [`Journal::write`] as any
    /// other).
    pub fn prewrite(&mut self, id: BlockId, block: Arc<Block>) -> Result<(), StorageError> {
        let durable = self.durable.load(Ordering::Acquire);
        if block.height.0 <= durable
            || self.live.contains_key(&id)
            || self.staged.iter().any(|(s, _)| *s == id)
        {
            return Ok(());
        }
        let one = [(id, block)];
        let rotated = self.active.end() >= self.segment_bytes;
        let record = encode_record(self.target_segment(rotated), self.next_seq, None, &one)?;
        if rotated {
            self.rotate(&record)?;
        } else {
            let start = self.active.end();
            if let Err(e) = self.active.append(&record.slices()) {
                self.active.rewind(start);
                return Err(e);
            }
        }
        self.next_seq += 1;
        let [(id, block)] = one;
        if let Some(s) = self.segments.back_mut() {
            s.max_height = s.max_height.max(block.height.0);
        }
        self.unsynced.push((id, block.height.0));
        if rotated {
            // The old segment was synced and the new one was created synced.
            self.all_synced();
        }
        self.live.insert(id, block);
        Ok(())
    }

    /// A kept block (durable or about to be), by id.
    pub fn kept_block(&self, id: &BlockId) -> Option<Arc<Block>> {
        self.live.get(id).cloned().or_else(|| {
            self.staged
                .iter()
                .find(|(s, _)| s == id)
                .map(|(_, b)| Arc::clone(b))
        })
    }

    /// Makes `state` durable with every block kept since the previous write: one record, one
    /// `fdatasync`. On error nothing is durable and the blocks stay to go with the next write.
    /// Returns the bytes of the blocks written.
    ///
    /// # Errors
    /// I/O errors (the caller then sends nothing).
    pub fn write(&mut self, state: &SafetyState) -> Result<u64, StorageError> {
        let durable = self.durable.load(Ordering::Acquire);
        self.staged.retain(|(_, b)| b.height.0 > durable);
        let staged = std::mem::take(&mut self.staged);
        let taken = staged.len().min(MAX_BLOCKS_PER_RECORD);
        let rotating = self.active.end() >= self.segment_bytes;
        let record = match encode_record(
            self.target_segment(rotating),
            self.next_seq,
            Some(state),
            &staged[..taken],
        ) {
            Ok(r) => r,
            Err(e) => {
                self.staged = staged;
                return Err(e);
            }
        };
        let result = if rotating {
            self.rotate(&record)
        } else {
            self.append(&record)
        };
        if let Err(e) = result {
            self.staged = staged;
            return Err(e);
        }
        let block_bytes = record.len() - record.head.len() as u64;
        let mut staged = staged.into_iter();
        for (id, block) in staged.by_ref().take(taken) {
            if let Some(s) = self.segments.back_mut() {
                s.max_height = s.max_height.max(block.height.0);
            }
            self.unsynced.push((id, block.height.0));
            self.live.insert(id, block);
        }
        self.all_synced();
        // More than one record holds: the rest go with the next write.
        self.staged.extend(staged);
        self.next_seq += 1;
        self.safety = Some(state.clone());
        self.live.retain(|_, b| b.height.0 > durable);
        self.drop_dead_segments();
        Ok(block_bytes)
    }

    fn append(&mut self, record: &Encoded) -> Result<(), StorageError> {
        let start = self.active.end();
        let done = self
            .active
            .append(&record.slices())
            .and_then(|_| self.active.sync());
        if done.is_err() {
            self.active.rewind(start);
        }
        done
    }

    /// The segment the next record goes to: the active one, or the next if `rotating`.
    fn target_segment(&self, rotating: bool) -> u64 {
        let active = self.segments.back().map_or(0, |s| s.number);
        if rotating {
            active + 1
        } else {
            active
        }
    }

    /// Starts a new segment with `record` as its first. The segment it closes is synced first:
    /// blocks written ahead into it become durable with it, as the next record's sync would
    /// have made them.
    fn rotate(&mut self, record: &Encoded) -> Result<(), StorageError> {
        self.active.sync()?;
        let number = self.target_segment(true);
        let (segment, active) = create_segment(&self.dir, number, record, self.spares.pop())?;
        self.segments.push_back(segment);
        self.active = active;
        Ok(())
    }

    /// Deletes the segments, other than the newest, whose blocks are all durable in the chain
    /// (or lost to another branch below its tip).
    fn drop_dead_segments(&mut self) {
        let durable = self.durable.load(Ordering::Acquire);
        let newest = self.segments.back().map(|s| s.number);
        let dir = self.dir.clone();
        let spares = &mut self.spares;
        self.segments.retain(|s| {
            if Some(s.number) == newest || s.max_height > durable {
                return true;
            }
            // Kept as a spare for a later segment (its blocks already allocated and written,
            // so writes into it change no file size), or deleted.
            let result = if spares.len() < MAX_SPARES {
                let spare = dir.join(format!("{:020}.{SPARE_EXT}", s.number));
                std::fs::rename(&s.path, &spare).map(|()| spares.push(spare))
            } else {
                std::fs::remove_file(&s.path)
            };
            match result {
                Ok(()) => {
                    tracing::debug!(target: "store.journal", segment = s.number, "segment dropped");
                    false
                }
                Err(e) => {
                    tracing::warn!(target: "store.journal", path = %s.path.display(), error = %e, "could not drop a journal segment; kept");
                    true
                }
            }
        });
    }

    /// Segments on disk (oldest first): their numbers.
    pub fn segment_numbers(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.number).collect()
    }

    /// Test-only: a smaller segment size.
    #[cfg(test)]
    fn set_segment_bytes(&mut self, n: u64) {
        self.segment_bytes = n;
    }
}

/// Writes `record` as the first record of segment `number` under a temporary name, syncs it,
/// renames it into place and syncs the directory: a segment file always begins with an intact
/// record.
fn create_segment(
    dir: &Path,
    number: u64,
    record: &Encoded,
    spare: Option<PathBuf>,
) -> Result<(Segment, ValueLog), StorageError> {
    let path = dir.join(format!("{number:020}.{SEGMENT_EXT}"));
    let tmp = dir.join(format!("{number:020}.{CREATING_EXT}"));
    {
        // A spare is written over from its start: its old records, under another segment
        // number, fail their digests here and end the segment on reading.
        let mut f = match spare {
            Some(old) => {
                std::fs::rename(&old, &tmp).map_err(|e| io_err(&old, "reusing", e))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&tmp)
                    .map_err(|e| io_err(&tmp, "open", e))?
            }
            None => File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?,
        };
        for s in record.slices() {
            f.write_all(s).map_err(|e| io_err(&tmp, "write", e))?;
        }
        f.sync_all().map_err(|e| io_err(&tmp, "fsync", e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, "renaming into place", e))?;
    super::sync_parent_dir("consensus journal", &path)?;
    let active = ValueLog::open_with(&path, record.len(), [0; 32], true)?;
    Ok((
        Segment {
            number,
            path,
            max_height: 0,
        },
        active,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::QuorumCert;
    use crate::types::{Epoch, Round};

    fn block(h: u64, payload_len: usize) -> (BlockId, Arc<Block>) {
        let mut b = Block::genesis(Epoch(1));
        b.height = Height(h);
        b.round = Round(h);
        b.payload = vec![h as u8; payload_len].into();
        let id = b.id("test");
        (id, Arc::new(b))
    }

    fn state(round: u64) -> SafetyState {
        let mut s = SafetyState::initial(Epoch(1), QuorumCert::genesis("test", Epoch(1)));
        s.last_voted_round = Round(round);
        s
    }

    fn open(dir: &Path, durable: &Arc<AtomicU64>) -> Journal {
        Journal::open(dir, Arc::clone(durable), || Ok(None)).unwrap()
    }

    /// The safety state and the blocks kept before it come back after a reopen; blocks at or
    /// below the durable height do not.
    #[test]
    fn state_and_kept_blocks_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let mut j = open(dir.path(), &durable);
        assert_eq!(j.safety(), None);
        let (a, ba) = block(1, 100);
        let (b, bb) = block(2, 70_000);
        j.keep(a, &ba);
        j.write(&state(1)).unwrap();
        j.keep(b, &bb);
        j.keep(a, &ba); // kept already: not written again
        assert!(j.kept_block(&b).is_some(), "staged blocks are served too");
        j.write(&state(2)).unwrap();
        // Kept after the last write: not durable.
        let (c, bc) = block(3, 10);
        j.keep(c, &bc);
        drop(j);
        let j = open(dir.path(), &durable);
        assert_eq!(j.safety(), Some(&state(2)));
        let kept = j.kept_blocks_above(Height(0));
        assert_eq!(
            kept.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(*kept[1].1, *bb);
        assert!(j.kept_block(&c).is_none());
        drop(j);
        durable.store(1, Ordering::Release);
        let j = open(dir.path(), &durable);
        assert_eq!(
            j.kept_blocks_above(Height(0))
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            vec![b]
        );
    }

    /// A record torn by a crash (any byte of its last record changed, or the record cut short)
    /// is not read: the previous one holds, and the next write overwrites the torn bytes.
    #[test]
    fn a_torn_record_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let mut j = open(dir.path(), &durable);
        j.write(&state(1)).unwrap();
        let before = j.active.end();
        let (a, ba) = block(1, 5000);
        j.keep(a, &ba);
        j.write(&state(2)).unwrap();
        let after = j.active.end();
        let path = j.segments.back().unwrap().path.clone();
        drop(j);
        let pristine = std::fs::read(&path).unwrap();
        for at in [before + 3, before + 40, (before + after) / 2, after - 1] {
            let mut bytes = pristine.clone();
            bytes[at as usize] ^= 0x20;
            std::fs::write(&path, &bytes).unwrap();
            let mut j = open(dir.path(), &durable);
            assert_eq!(j.safety(), Some(&state(1)), "flipped byte {at}");
            assert!(j.kept_blocks_above(Height(0)).is_empty());
            // Writing again overwrites the torn record.
            j.write(&state(3)).unwrap();
            drop(j);
            assert_eq!(open(dir.path(), &durable).safety(), Some(&state(3)));
        }
        std::fs::write(&path, &pristine[..(before + 100) as usize]).unwrap();
        assert_eq!(open(dir.path(), &durable).safety(), Some(&state(1)));
    }

    /// Segments rotate at their size; an old segment goes once every block in it is durable in
    /// the chain, and the newest record always survives.
    #[test]
    fn segments_rotate_and_dead_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let mut j = open(dir.path(), &durable);
        j.set_segment_bytes(64 << 10);
        for h in 1..=20u64 {
            let (id, b) = block(h, 20_000);
            j.keep(id, &b);
            j.write(&state(h)).unwrap();
        }
        let segments = j.segment_numbers();
        assert!(segments.len() >= 5, "{segments:?}");
        drop(j);
        let mut j = open(dir.path(), &durable);
        j.set_segment_bytes(64 << 10);
        assert_eq!(j.safety(), Some(&state(20)));
        assert_eq!(j.kept_blocks_above(Height(0)).len(), 20);
        // The chain reaches height 15: segments holding only blocks up to 15 go.
        durable.store(15, Ordering::Release);
        j.write(&state(21)).unwrap();
        let left = j.segment_numbers();
        assert!(left.len() < segments.len(), "{left:?}");
        drop(j);
        let j = open(dir.path(), &durable);
        assert_eq!(j.safety(), Some(&state(21)));
        let kept: Vec<u64> = j
            .kept_blocks_above(Height(0))
            .iter()
            .map(|(_, b)| b.height.0)
            .collect();
        assert_eq!(kept, (16..=20).collect::<Vec<_>>());
        // Everything durable: only the newest segment stays; two dropped ones are kept as
        // spares, and new segments reuse them (the directory does not grow).
        durable.store(20, Ordering::Release);
        let mut j = j;
        j.set_segment_bytes(64 << 10);
        j.write(&state(22)).unwrap();
        assert_eq!(j.segment_numbers().len(), 1);
        let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
        assert_eq!(files(dir.path()), 1 + MAX_SPARES);
        for h in 21..=40u64 {
            let (id, b) = block(h, 20_000);
            j.keep(id, &b);
            j.write(&state(h + 2)).unwrap();
            durable.store(h, Ordering::Release);
        }
        assert!(files(dir.path()) <= 2 + MAX_SPARES, "{}", files(dir.path()));
        drop(j);
        let j = open(dir.path(), &durable);
        assert_eq!(j.safety(), Some(&state(42)));
    }

    /// A segment whose creation a crash interrupted is ignored and removed; a segment that does
    /// not begin with an intact record is damage and refused, naming the file.
    #[test]
    fn interrupted_creation_is_ignored_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let mut j = open(dir.path(), &durable);
        j.write(&state(4)).unwrap();
        drop(j);
        let tmp = dir.path().join(format!("{:020}.{CREATING_EXT}", 2));
        std::fs::write(&tmp, b"half a segment").unwrap();
        assert_eq!(open(dir.path(), &durable).safety(), Some(&state(4)));
        assert!(!tmp.exists());
        let seg = dir.path().join(format!("{:020}.{SEGMENT_EXT}", 1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        let err = Journal::open(dir.path(), durable, || Ok(None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged") && err.contains(".seg"), "{err}");
    }

    /// A block written ahead is durable with the next write, served meanwhile, and never
    /// written twice; ahead of a rotation, the closing segment is synced with it.
    #[test]
    fn blocks_written_ahead_become_durable_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let mut j = open(dir.path(), &durable);
        let (a, ba) = block(1, 50_000);
        j.prewrite(a, Arc::clone(&ba)).unwrap();
        let end = j.active.end();
        j.prewrite(a, Arc::clone(&ba)).unwrap();
        assert_eq!(j.active.end(), end, "written once");
        assert!(j.kept_block(&a).is_some());
        // Kept by the core after it was written ahead: not staged again.
        j.keep(a, &ba);
        assert!(j.staged.is_empty());
        j.write(&state(1)).unwrap();
        drop(j);
        let mut j = open(dir.path(), &durable);
        assert_eq!(j.kept_blocks_above(Height(0)).len(), 1);
        assert_eq!(j.safety(), Some(&state(1)));
        // Written ahead into a full segment: goes into a new one.
        j.set_segment_bytes(1);
        let (b, bb) = block(2, 1000);
        j.prewrite(b, bb).unwrap();
        assert_eq!(j.segment_numbers().len(), 2);
        j.write(&state(2)).unwrap();
        drop(j);
        let j = open(dir.path(), &durable);
        assert_eq!(j.kept_blocks_above(Height(0)).len(), 2);
        assert_eq!(j.safety(), Some(&state(2)));
    }

    /// A new journal starts from the state an earlier version kept elsewhere.
    #[test]
    fn a_new_journal_takes_the_migrated_state() {
        let dir = tempfile::tempdir().unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let j = Journal::open(dir.path(), Arc::clone(&durable), || Ok(Some(state(9)))).unwrap();
        assert_eq!(j.safety(), Some(&state(9)));
        drop(j);
        // Read from the journal now, not asked again.
        let j = Journal::open(dir.path(), durable, || panic!("asked twice")).unwrap();
        assert_eq!(j.safety(), Some(&state(9)));
    }
}
