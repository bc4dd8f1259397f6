//! Appends that bypass the page cache (`O_DIRECT`), for the value log.
//!
//! A buffered `pwrite` copies every byte into a freshly allocated page-cache page (on this VM the
//! largest single cost of a validator at 75,000 tx/s: `copy_folio_from_iter_atomic`, 9 % of all
//! CPU), and the `fdatasync` that follows walks those pages again to write them back. A direct
//! write hands the device the writer's own memory instead: the bytes are copied once, in user
//! space, into an aligned staging buffer, and written from there.
//!
//! Direct I/O wants the file offset, the length and the buffer's address aligned to the device's
//! logical block size; [`ALIGN`] (4 KiB) covers the usual 512 and 4,096. An append rarely starts
//! or ends on that boundary, so each write starts at the block that holds the append's first
//! byte, rewriting the bytes already there (kept from the previous write, or read back once), and
//! ends with zeros to the next boundary. The rewritten bytes are the same bytes, so a write torn
//! by a crash leaves them as they were (as a buffered write-back of the same partial page would);
//! the zeros past the end are free space, as the value log's format already allows.
//!
//! The writer does not sync: `fdatasync` on the file (any descriptor of it) still makes the
//! written blocks durable and records a grown file size.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use aligned_vec::{AVec, ConstAlign};

/// Alignment of every direct write's offset, length and buffer (a multiple of 512 and 4,096-byte
/// logical blocks).
pub const ALIGN: u64 = 4096;
/// Most bytes staged, and so written, at once (bounds the staging buffer).
pub const CHUNK_BYTES: usize = 4 << 20;

type Stage = AVec<u8, ConstAlign<{ ALIGN as usize }>>;

/// A second descriptor of a file, opened with `O_DIRECT`, and its staging buffer.
pub struct DirectWriter {
    file: File,
    stage: Stage,
    /// The file offset up to which `stage` holds the bytes of the block it starts with (the
    /// block of the last write's end), or `None` when it holds nothing known.
    staged_to: Option<u64>,
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter")
            .field("staged_to", &self.staged_to)
            .finish_non_exhaustive()
    }
}

/// Rounds `n` down to a multiple of [`ALIGN`].
pub const fn align_down(n: u64) -> u64 {
    n & !(ALIGN - 1)
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    align_down(n + ALIGN - 1)
}

/// Whether an error means the file system or device refuses direct I/O as asked (rather than
/// a failed write): the caller writes through the page cache instead.
pub fn unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

impl DirectWriter {
    /// Opens `path` (which must exist) for direct writes; `Ok(None)` when its file system does
    /// not do direct I/O (tmpfs on older kernels, some network file systems).
    pub fn open(path: &Path) -> std::io::Result<Option<Self>> {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Ok(Some(Self {
                file,
                stage: Stage::with_capacity(ALIGN as usize, ALIGN as usize),
                staged_to: None,
            })),
            Err(e) if unsupported(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `parts`, one after the other, at `at`. The bytes of the file before `at` in its
    /// block are written again as they are: kept from the previous write when it ended at `at`,
    /// else read through `reader` (a buffered descriptor of the same file). The last block is
    /// completed with zeros. Returns the first offset after what was written (`at`'s end
    /// rounded up to [`ALIGN`]).
    ///
    /// # Errors
    /// I/O errors. After an [`unsupported`] one some leading blocks may have been written; the
    /// caller writes all of `parts` again at `at` through the page cache, which covers them.
    pub fn write_at(&mut self, reader: &File, at: u64, parts: &[&[u8]]) -> std::io::Result<u64> {
        let mut pos = align_down(at);
        let keep = (at - pos) as usize;
        if self.staged_to != Some(at) {
            self.staged_to = None;
            self.stage.clear();
            self.stage.resize(keep, 0);
            if keep > 0 {
                reader.read_exact_at(&mut self.stage[..keep], pos)?;
            }
        }
        debug_assert_eq!(self.stage.len(), keep);
        let result = self.stage_and_write(&mut pos, parts);
        if result.is_err() {
            // What the stage holds no longer matches a known end.
            self.staged_to = None;
        }
        result
    }

    fn stage_and_write(&mut self, pos: &mut u64, parts: &[&[u8]]) -> std::io::Result<u64> {
        for part in parts {
            let mut rest = *part;
            while !rest.is_empty() {
                let n = (CHUNK_BYTES - self.stage.len()).min(rest.len());
                self.stage.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if self.stage.len() == CHUNK_BYTES {
                    self.file.write_all_at(&self.stage, *pos)?;
                    *pos += CHUNK_BYTES as u64;
                    self.stage.clear();
                }
            }
        }
        let data = self.stage.len();
        let end = *pos + data as u64;
        if data > 0 {
            self.stage.resize(align_up(data as u64) as usize, 0);
            self.file.write_all_at(&self.stage, *pos)?;
            // Keep the last, partial block for the next write.
            let whole = align_down(data as u64) as usize;
            self.stage.copy_within(whole..data, 0);
            self.stage.truncate(data - whole);
        }
        self.staged_to = Some(end);
        Ok(align_up(end))
    }

    /// Writes zeros over `from..to`, both multiples of [`ALIGN`] (the staging buffer is kept).
    ///
    /// # Errors
    /// I/O errors.
    pub fn zero(&mut self, from: u64, to: u64) -> std::io::Result<()> {
        debug_assert!(from % ALIGN == 0 && to % ALIGN == 0);
        write_zeros(&self.file, from, to)
    }
}

/// Bytes of the shared buffer of zeros.
const ZEROS_BYTES: usize = 1 << 20;

/// Writes zeros over `from..to` of `file` from one aligned buffer, made once per process.
///
/// # Errors
/// I/O errors.
pub fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: std::sync::OnceLock<Stage> = std::sync::OnceLock::new();
    let zeros = ZEROS
        .get_or_init(|| Stage::from_iter(ALIGN as usize, std::iter::repeat_n(0u8, ZEROS_BYTES)));
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that start and end anywhere land byte for byte, whether the block before them
    /// comes from the previous write or is read back; the last block ends in zeros.
    #[test]
    fn unaligned_appends_land_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let reader = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let Some(mut w) = DirectWriter::open(&path).unwrap() else {
            eprintln!("no direct I/O on this file system: nothing to test");
            return;
        };
        let mut want = Vec::new();
        let mut at = 0u64;
        // Sizes across the block and chunk boundaries.
        let sizes = [
            1usize,
            4095,
            1,
            4096,
            5000,
            CHUNK_BYTES + 3,
            7,
            CHUNK_BYTES - 7,
            100,
        ];
        for (i, n) in sizes.into_iter().enumerate() {
            let bytes: Vec<u8> = (0..n).map(|j| (i * 31 + j * 7) as u8).collect();
            let (a, b) = bytes.split_at(n / 3);
            let written_to = w.write_at(&reader, at, &[a, &[], b]).unwrap();
            want.extend_from_slice(&bytes);
            at += n as u64;
            assert_eq!(written_to, align_up(at));
            if i == 4 {
                // A writer that knows nothing of the end (a new one) reads the block back.
                w = DirectWriter::open(&path).unwrap().unwrap();
            }
        }
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len() as u64, align_up(at));
        assert_eq!(&got[..want.len()], &want[..]);
        assert!(got[want.len()..].iter().all(|b| *b == 0));
        // An earlier offset (a rewound append): the block is read back, later bytes replaced.
        w.write_at(&reader, 10, &[b"rewritten"]).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..10], &want[..10]);
        assert_eq!(&got[10..19], b"rewritten");
        // Zeros over whole blocks.
        w.zero(align_up(at), align_up(at) + 3 * ALIGN).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            align_up(at) + 3 * ALIGN
        );
    }
}
