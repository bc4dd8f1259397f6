//! The one canonical byte encoding of every message: BCS (Binary Canonical Serialization).
//!
//! BCS gives each value exactly one encoding: fixed-width little-endian integers, ULEB128 lengths that
//! must be minimal, enum tags as ULEB128 variant indices, no padding. Decoding here adds the bounds a
//! network border needs:
//! - input longer than [`MAX_MESSAGE_BYTES`] is refused before any parsing;
//! - truncated input, trailing bytes, unknown enum tags and non-canonical lengths are typed errors;
//! - after parsing, each message checks its own named length limits ([`Bounded`]), so a decoded value
//!   never carries more validators, blocks, evidence or payload bytes than the protocol allows.
//!
//! Memory is bounded by construction: every element costs at least one input byte, so a decoded value
//! is never larger than a small multiple of the input, and the input is bounded.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Hard upper bound on one encoded message (a frame), in bytes: 16 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Why bytes could not become a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is longer than the message size limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The input ended before the message was complete.
    #[error("truncated message: input ended early")]
    Truncated,
    /// A complete message was followed by more bytes.
    #[error("trailing bytes after a complete message")]
    TrailingBytes,
    /// An enum tag that no message kind uses.
    #[error("unknown tag: {0}")]
    UnknownTag(String),
    /// A length or integer not in its minimal (canonical) encoding.
    #[error("non-canonical encoding: {0}")]
    NonCanonical(String),
    /// A field holds more elements or bytes than its named limit.
    #[error("field `{field}` has {len} elements, over the limit of {max}")]
    LimitExceeded {
        /// The limited field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Its limit.
        max: usize,
    },
    /// A value that parses but is not valid (a bad key, a bad boolean, ...).
    #[error("invalid value: {0}")]
    Invalid(String),
}

/// Why a value could not be encoded. Encoding our own types cannot fail in practice (no maps with
/// non-string keys, bounded depth); this keeps the API honest instead of panicking.
#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(String);

/// A decoded value's own length limits.
pub trait Bounded {
    /// Checks every variable-length field against its named limit.
    fn check_bounds(&self) -> Result<(), DecodeError>;
}

/// Checks one field length against its limit.
pub fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::LimitExceeded { field, len, max });
    }
    Ok(())
}

/// Encodes a value canonically.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    to_bytes_sized(value).map_err(|e| EncodeError(e.to_string()))
}

/// `bcs::to_bytes` into a buffer of the exact size: `bcs::to_bytes` starts from an empty vector
/// and doubles it, copying a 250 KB proposal about 16 times on its way (1.3 % of all CPU in the
/// testnet at 75,000 tx/s went to that regrowth). Measuring first walks the value once more,
/// which for byte strings is a length read.
fn to_bytes_sized<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bcs::Error> {
    let mut out = Vec::with_capacity(bcs::serialized_size(value)?);
    bcs::serialize_into(&mut out, value)?;
    Ok(out)
}

/// Encodes a value that is one of our own protocol types. BCS only fails on maps with
/// non-canonical keys or on nesting deeper than 500 levels; our types have neither, so a failure
/// here is a bug, reported by an empty output that every decoder refuses.
pub fn encode_infallible<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match to_bytes_sized(value) {
        Ok(bytes) => bytes,
        Err(e) => {
            debug_assert!(false, "encoding a protocol type failed: {e}");
            Vec::new()
        }
    }
}

/// Decodes exactly one value from `bytes`, refusing oversize, truncated, trailing, unknown-tag and
/// non-canonical input, then checks the value's named limits.
pub fn decode<T: DeserializeOwned + Bounded>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_borrowed(bytes)
}

/// [`decode`] for values that borrow from `bytes` (byte strings left in place, not copied).
pub fn decode_borrowed<'a, T: Deserialize<'a> + Bounded>(
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let value: T = bcs::from_bytes(bytes).map_err(map_bcs_error)?;
    value.check_bounds()?;
    Ok(value)
}

thread_local! {
    /// The frame [`decode_shared`] is decoding on this thread, if any.
    static SHARED_FRAME: std::cell::RefCell<Option<bytes::Bytes>> = const { std::cell::RefCell::new(None) };
}

/// [`decode`] from a shared frame: byte strings that opt in (block payloads, see
/// [`crate::consensus::PayloadBytes`]) become slices of `frame` instead of copies.
pub fn decode_shared<T: DeserializeOwned + Bounded>(
    frame: &bytes::Bytes,
) -> Result<T, DecodeError> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SHARED_FRAME.with(|f| f.borrow_mut().take());
        }
    }
    SHARED_FRAME.with(|f| *f.borrow_mut() = Some(frame.clone()));
    let _reset = Reset;
    decode_borrowed(frame)
}

/// `part` as a slice of the frame [`decode_shared`] is decoding, if it lies inside it; a copy
/// otherwise.
pub fn share_or_copy(part: &[u8]) -> bytes::Bytes {
    SHARED_FRAME.with(|f| {
        let f = f.borrow();
        match f.as_ref() {
            Some(frame) if within(frame, part) => frame.slice_ref(part),
            _ => bytes::Bytes::copy_from_slice(part),
        }
    })
}

/// Whether `part` lies inside `whole` (address range; an empty `part` only at a valid position).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fn map_bcs_error(e: bcs::Error) -> DecodeError {
    match e {
        bcs::Error::Eof => DecodeError::Truncated,
        bcs::Error::RemainingInput => DecodeError::TrailingBytes,
        bcs::Error::NonCanonicalUleb128Encoding
        | bcs::Error::IntegerOverflowDuringUleb128Decoding
        | bcs::Error::NonCanonicalMap => DecodeError::NonCanonical(e.to_string()),
        bcs::Error::ExceededMaxLen(len) => DecodeError::LimitExceeded {
            field: "sequence",
            len,
            max: bcs::MAX_SEQUENCE_LENGTH,
        },
        bcs::Error::Custom(msg) if msg.contains("variant index") => DecodeError::UnknownTag(msg),
        other => DecodeError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        A(u32),
        B(Vec<u8>),
    }

    impl Bounded for Sample {
        fn check_bounds(&self) -> Result<(), DecodeError> {
            match self {
                Sample::A(_) => Ok(()),
                Sample::B(b) => check_len("sample.b", b.len(), 8),
            }
        }
    }

    #[test]
    fn encodings_are_bcs_in_a_buffer_of_the_exact_size() {
        let big: Vec<serde_bytes::ByteBuf> = (0..500u32)
            .map(|i| serde_bytes::ByteBuf::from(vec![i as u8; 512 + i as usize]))
            .collect();
        let expected = bcs::to_bytes(&big).unwrap();
        for out in [encode(&big).unwrap(), encode_infallible(&big)] {
            assert_eq!(out, expected);
            // `Vec::with_capacity(n)` gives exactly n (std guarantees it): a larger capacity
            // means the buffer was regrown.
            assert_eq!(out.capacity(), out.len(), "sized once, never regrown");
        }
        assert_eq!(
            encode_infallible(&Sample::A(7)),
            bcs::to_bytes(&Sample::A(7)).unwrap()
        );
    }

    #[test]
    fn decode_refuses_each_kind_of_bad_input() {
        let good = encode(&Sample::B(vec![1, 2, 3])).unwrap_or_default();
        assert_eq!(decode::<Sample>(&good), Ok(Sample::B(vec![1, 2, 3])));
        type Case = (&'static str, Vec<u8>, fn(&DecodeError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", vec![], |e| *e == DecodeError::Truncated),
            ("truncated", good[..good.len() - 1].to_vec(), |e| {
                *e == DecodeError::Truncated
            }),
            ("trailing", [good.clone(), vec![0]].concat(), |e| {
                *e == DecodeError::TrailingBytes
            }),
            ("unknown tag", vec![7, 0, 0, 0, 0], |e| {
                matches!(e, DecodeError::UnknownTag(_))
            }),
            ("non-canonical length", vec![1, 0x83, 0x00, 1, 2, 3], |e| {
                matches!(e, DecodeError::NonCanonical(_))
            }),
            (
                "over named limit",
                encode(&Sample::B(vec![0; 9])).unwrap_or_default(),
                |e| {
                    matches!(
                        e,
                        DecodeError::LimitExceeded {
                            field: "sample.b",
                            len: 9,
                            max: 8
                        }
                    )
                },
            ),
            ("too large", vec![0; MAX_MESSAGE_BYTES + 1], |e| {
                matches!(e, DecodeError::TooLarge { .. })
            }),
        ];
        for (name, bytes, expect) in cases {
            match decode::<Sample>(&bytes) {
                Ok(v) => panic!("{name}: decoded {v:?}"),
                Err(e) => assert!(expect(&e), "{name}: unexpected error {e:?}"),
            }
        }
    }
}
