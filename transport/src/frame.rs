//! Length-prefixed framing: `[len: u32 big-endian][len bytes]`, with a hard size limit.
//!
//! Both halves are sans-IO. [`FrameDecoder`] turns stream chunks into frames and refuses an
//! oversized length prefix as soon as the prefix is complete, before reserving any memory
//! for it. [`BatchEncoder`] coalesces many queued frames into few large buffers so that a
//! writer issues one stream write per batch, not one per frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::LEN_PREFIX_BYTES;

/// Frames up to this size are copied into the shared batch buffer; larger ones are handed to
/// the stream as their own chunk (no copy).
pub(crate) const COPY_FRAME_BYTES_MAX: usize = 16 * 1024;

/// A writer flushes its batch once the buffered chunks reach this many bytes.
pub(crate) const BATCH_BYTES_TARGET: usize = 256 * 1024;

/// First allocation of a batch buffer; it grows (up to about [`BATCH_BYTES_TARGET`]) as needed.
const BATCH_BUFFER_BYTES_INITIAL: usize = 64 * 1024;

/// A frame's length prefix exceeds the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame length {len} exceeds the limit of {max} bytes")]
pub struct FrameTooLarge {
    /// The length the prefix claims.
    pub len: u64,
    /// The limit it exceeds.
    pub max: usize,
}

/// Incremental decoder of length-prefixed frames from one stream.
///
/// Contract: call [`FrameDecoder::push`] with each chunk read, then [`FrameDecoder::next_frame`]
/// until it returns `Ok(None)`. After an error the stream must be abandoned.
/// Memory: at most one partial frame (≤ `max_frame_bytes` + 4) plus one pushed chunk.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
    /// Length of the frame whose prefix has been read but whose body is incomplete.
    pending_len: Option<usize>,
}

impl FrameDecoder {
    /// A decoder that refuses frames above `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
            pending_len: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or an error if the
    /// next length prefix is above the limit (nothing is allocated for it).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        let len = match self.pending_len {
            Some(len) => len,
            None => {
                if self.buf.len() < LEN_PREFIX_BYTES {
                    return Ok(None);
                }
                let len = u64::from(self.buf.get_u32());
                if len > self.max_frame_bytes as u64 {
                    return Err(FrameTooLarge {
                        len,
                        max: self.max_frame_bytes,
                    });
                }
                // Bounded by the check above, so this cannot truncate.
                let len = len as usize;
                self.pending_len = Some(len);
                // One reservation of the (checked) size instead of repeated doubling.
                self.buf.reserve(len.saturating_sub(self.buf.len()));
                len
            }
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        self.pending_len = None;
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// True if the stream ended in the middle of a frame (a truncated frame).
    pub fn is_mid_frame(&self) -> bool {
        self.pending_len.is_some() || !self.buf.is_empty()
    }
}

/// Builds the stream chunks for a batch of frames.
///
/// Small frames and every length prefix are copied into one contiguous buffer; frames larger
/// than [`COPY_FRAME_BYTES_MAX`] are appended as their own (shared, uncopied) chunk.
#[derive(Debug, Default)]
pub(crate) struct BatchEncoder {
    cur: BytesMut,
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl BatchEncoder {
    /// Appends one frame. The caller guarantees `frame.len() <= u32::MAX`
    /// (the send path refuses frames above `max_frame_bytes`, itself ≤ u32::MAX).
    pub(crate) fn push(&mut self, frame: Bytes) {
        debug_assert!(u32::try_from(frame.len()).is_ok());
        if self.cur.capacity() == 0 {
            self.cur.reserve(BATCH_BUFFER_BYTES_INITIAL);
        }
        self.cur.put_u32(frame.len() as u32);
        self.bytes += LEN_PREFIX_BYTES + frame.len();
        if frame.len() <= COPY_FRAME_BYTES_MAX {
            self.cur.extend_from_slice(&frame);
        } else {
            self.chunks.push(self.cur.split().freeze());
            self.chunks.push(frame);
        }
    }

    /// Bytes (prefixes included) pushed since the last [`BatchEncoder::take`].
    #[cfg(test)]
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// True when the batch is large enough to be written now.
    pub(crate) fn is_full(&self) -> bool {
        self.bytes >= BATCH_BYTES_TARGET
    }

    /// Takes the chunks to write, in order, and resets the encoder.
    pub(crate) fn take(&mut self) -> Vec<Bytes> {
        if !self.cur.is_empty() {
            self.chunks.push(self.cur.split().freeze());
        }
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(frames: &[Bytes]) -> Vec<u8> {
        let mut enc = BatchEncoder::default();
        for f in frames {
            enc.push(f.clone());
        }
        let total = enc.len_bytes();
        let out: Vec<u8> = enc.take().iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(out.len(), total);
        out
    }

    fn frames() -> Vec<Bytes> {
        vec![
            Bytes::new(),
            Bytes::from_static(b"x"),
            Bytes::from(vec![7u8; 512]),
            Bytes::from(vec![9u8; COPY_FRAME_BYTES_MAX + 1]),
            Bytes::from_static(b"tail"),
        ]
    }

    #[test]
    fn round_trips_through_any_chunking() {
        let input = frames();
        let wire = encode_all(&input);
        for chunk in [1usize, 3, 4, 5, 511, 4096, wire.len()] {
            let mut dec = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.push(piece);
                while let Some(f) = dec.next_frame().expect("within limit") {
                    got.push(f);
                }
            }
            assert_eq!(got, input, "chunk size {chunk}");
            assert!(!dec.is_mid_frame());
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_any_reservation() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameTooLarge {
                len: u64::from(u32::MAX),
                max: 1024
            })
        );
        assert!(dec.buf.capacity() < 1024, "capacity {}", dec.buf.capacity());
    }

    #[test]
    fn limit_is_inclusive() {
        let mut dec = FrameDecoder::new(3);
        dec.push(&[0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 4]);
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::from_static(&[1, 2, 3]))));
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn truncated_frame_is_reported_mid_frame() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&[0, 0, 0, 10, 1, 2]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.is_mid_frame());
        let mut dec = FrameDecoder::new(100);
        dec.push(&[0, 0]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.is_mid_frame());
    }

    #[test]
    fn encoder_coalesces_small_frames_into_one_chunk() {
        let mut enc = BatchEncoder::default();
        for _ in 0..100 {
            enc.push(Bytes::from(vec![1u8; 512]));
        }
        assert!(!enc.is_full());
        let chunks = enc.take();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), 100 * 516);
        assert_eq!(enc.len_bytes(), 0);
        assert!(enc.take().is_empty());
    }

    #[test]
    fn encoder_passes_large_frames_without_copy() {
        let big = Bytes::from(vec![5u8; 100_000]);
        let mut enc = BatchEncoder::default();
        enc.push(Bytes::from_static(b"a"));
        enc.push(big.clone());
        enc.push(Bytes::from_static(b"b"));
        let chunks = enc.take();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
    }
}
