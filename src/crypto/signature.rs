//! [`Signature`]: an Ed25519 signature, 64 bytes `R ‖ S`, stored exactly as received.
//!
//! A `Signature` is only bytes: nothing about `R` or `S` is checked when one is built, so any
//! 64 bytes from the wire become a `Signature` and verification ([`super::verify()`]) decides.
//! Only the length is checked, by [`Signature::from_slice`].

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::verify::VerifyError;

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Bytes shown by `Debug` (the rest is elided).
const DEBUG_PREFIX_LEN: usize = 8;

/// An Ed25519 signature: `R` (32 bytes, a compressed point) then `S` (32 bytes, a scalar, LE).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps 64 bytes; nothing is checked until verification.
    pub fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// Wraps a slice that must be exactly 64 bytes long.
    ///
    /// # Errors
    /// [`VerifyError::SignatureLength`] when `bytes` is not 64 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, VerifyError> {
        <[u8; SIGNATURE_LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| VerifyError::SignatureLength { len: bytes.len() })
    }

    /// The 64 bytes `R ‖ S`.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0
    }

    /// The 64 bytes `R ‖ S`, borrowed.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}…)",
            hex::encode(&self.0[..DEBUG_PREFIX_LEN])
        )
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Binary formats (bcs): a fixed 64-byte tuple, no length prefix. Human-readable formats
/// (JSON, YAML): 128 hex digits.
impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return serializer.serialize_str(&hex::encode(self.0));
        }
        let mut tuple = serializer.serialize_tuple(SIGNATURE_LEN)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            let mut bytes = [0u8; SIGNATURE_LEN];
            hex::decode_to_slice(&text, &mut bytes).map_err(|e| {
                de::Error::custom(format_args!("signature: expected 128 hex digits: {e}"))
            })?;
            return Ok(Self(bytes));
        }
        deserializer
            .deserialize_tuple(SIGNATURE_LEN, SignatureVisitor)
            .map(Self)
    }
}

/// Reads exactly 64 bytes from a serde tuple.
struct SignatureVisitor;

impl<'de> Visitor<'de> for SignatureVisitor {
    type Value = [u8; SIGNATURE_LEN];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SIGNATURE_LEN} signature bytes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut bytes = [0u8; SIGNATURE_LEN];
        for (i, slot) in bytes.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Signature {
        let mut bytes = [0u8; SIGNATURE_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(5);
        }
        Signature::from_bytes(bytes)
    }

    #[test]
    fn bytes_round_trip() {
        let sig = sample();
        assert_eq!(Signature::from_bytes(sig.to_bytes()), sig);
        assert_eq!(Signature::from_slice(sig.as_bytes()), Ok(sig));
    }

    #[test]
    fn from_slice_refuses_wrong_lengths() {
        for len in [0usize, 32, 62, 63, 65, 66, 96] {
            let bytes = vec![7u8; len];
            assert_eq!(
                Signature::from_slice(&bytes),
                Err(VerifyError::SignatureLength { len }),
                "len {len}"
            );
        }
    }

    #[test]
    fn bcs_is_64_bytes_without_length_prefix() {
        let sig = sample();
        let encoded = bcs::to_bytes(&sig).unwrap();
        assert_eq!(encoded.as_slice(), sig.as_bytes());
        assert_eq!(bcs::from_bytes::<Signature>(&encoded).unwrap(), sig);
        assert!(bcs::from_bytes::<Signature>(&encoded[..63]).is_err());
    }

    #[test]
    fn json_is_hex() {
        let sig = sample();
        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(json, format!("\"{}\"", hex::encode(sig.as_bytes())));
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
        assert!(serde_json::from_str::<Signature>("\"abcd\"").is_err());
    }

    #[test]
    fn debug_is_short() {
        let text = format!("{:?}", sample());
        assert!(text.starts_with("Signature("));
        assert!(text.len() < 40, "{text}");
    }
}
