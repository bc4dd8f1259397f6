//! Single Ed25519 verification by the ZIP-215 rule (ed25519-zebra). See the module docs of
//! [`crate::crypto`] for the rule; [`super::BatchVerifier`] gives the same answers in batches.

use ed25519_zebra::{VerificationKey, VerificationKeyBytes};

use super::keys::PublicKey;
use super::signature::Signature;

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature is not 64 bytes long (rejected before any curve arithmetic).
    #[error("signature must be 64 bytes, found {len}")]
    SignatureLength {
        /// Bytes found.
        len: usize,
    },
    /// The key bytes do not decode to a point on edwards25519.
    #[error("verification key is not a point on edwards25519")]
    MalformedKey,
    /// The signature fails ZIP-215: `R` is not a point, `S >= L`, or the cofactored
    /// equation `[8][S]B = [8]R + [8][k]A` does not hold.
    #[error("signature is invalid (ZIP-215)")]
    InvalidSignature,
}

/// Verifies `sig` on `msg` under a checked validator key, by ZIP-215.
///
/// # Errors
/// [`VerifyError::InvalidSignature`] when the signature does not verify.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &Signature) -> Result<(), VerifyError> {
    verify_key_bytes(key.as_bytes(), msg, sig)
}

/// Verifies `sig` on `msg` under any 32 key bytes, by ZIP-215: non-canonical and small-order
/// keys are allowed here (test vectors use them); validator keys are refused earlier, by
/// [`PublicKey::from_bytes`].
///
/// # Errors
/// [`VerifyError::MalformedKey`] when the key is not a curve point,
/// [`VerifyError::InvalidSignature`] when the signature does not verify.
pub fn verify_key_bytes(key: &[u8; 32], msg: &[u8], sig: &Signature) -> Result<(), VerifyError> {
    let key = VerificationKey::try_from(VerificationKeyBytes::from(*key))
        .map_err(|_| VerifyError::MalformedKey)?;
    key.verify(&zebra_signature(sig), msg)
        .map_err(|_| VerifyError::InvalidSignature)
}

/// The same 64 bytes as ed25519-zebra's signature type.
pub(super) fn zebra_signature(sig: &Signature) -> ed25519_zebra::Signature {
    ed25519_zebra::Signature::from_bytes(sig.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    #[test]
    fn sign_then_verify() {
        let pair = Keypair::from_seed(&[1; 32]);
        let sig = pair.sign(b"hello");
        assert_eq!(verify(&pair.public(), b"hello", &sig), Ok(()));
        assert_eq!(
            verify_key_bytes(pair.public().as_bytes(), b"hello", &sig),
            Ok(())
        );
    }

    /// Name, key, message, signature, expected error.
    type Case<'a> = (&'a str, [u8; 32], &'a [u8], Signature, VerifyError);

    #[test]
    fn rejections_table() {
        let pair = Keypair::from_seed(&[2; 32]);
        let other = Keypair::from_seed(&[3; 32]);
        let sig = pair.sign(b"msg");
        let mut flipped_r = sig.to_bytes();
        flipped_r[0] ^= 1;
        let mut flipped_s = sig.to_bytes();
        flipped_s[40] ^= 1;
        let mut big_s = sig.to_bytes();
        big_s[63] |= 0xf0;
        let not_on_curve = {
            let mut b = [0u8; 32];
            b[0] = 2;
            b
        };
        let key = *pair.public().as_bytes();
        let cases: [Case; 6] = [
            (
                "wrong message",
                key,
                b"msh",
                sig,
                VerifyError::InvalidSignature,
            ),
            (
                "wrong key",
                *other.public().as_bytes(),
                b"msg",
                sig,
                VerifyError::InvalidSignature,
            ),
            (
                "flipped R",
                key,
                b"msg",
                Signature::from_bytes(flipped_r),
                VerifyError::InvalidSignature,
            ),
            (
                "flipped S",
                key,
                b"msg",
                Signature::from_bytes(flipped_s),
                VerifyError::InvalidSignature,
            ),
            (
                "S >= L",
                key,
                b"msg",
                Signature::from_bytes(big_s),
                VerifyError::InvalidSignature,
            ),
            (
                "key not on curve",
                not_on_curve,
                b"msg",
                sig,
                VerifyError::MalformedKey,
            ),
        ];
        for (name, key, msg, sig, expected) in cases {
            assert_eq!(verify_key_bytes(&key, msg, &sig), Err(expected), "{name}");
        }
    }
}
