//! Ed25519 keys: [`Keypair`] (signing, ed25519-dalek) and [`PublicKey`] (a checked validator key).
//!
//! A [`PublicKey`] is parsed at the border (config, genesis, wire) and checked once there:
//! the 32 bytes must decode to a point on edwards25519, the encoding must be canonical
//! (`y < p`, and no sign bit on `x = 0`) and the point must not be of small order (in the
//! 8-torsion). Code behind the border never re-checks.
//!
//! Text form: `ed25519:` followed by 64 hex digits (either case on input, lowercase on output).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::signature::Signature;

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The text prefix of a public key: `ed25519:<64 hex>`.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Bytes shown by `Debug` (the rest is elided).
const DEBUG_PREFIX_LEN: usize = 6;

/// Why bytes or text are not an acceptable validator public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not start with `ed25519:`.
    #[error("public key must start with \"{PUBLIC_KEY_PREFIX}\"")]
    MissingPrefix,
    /// The text after the prefix is not 64 characters long.
    #[error("public key must have 64 hex digits after \"{PUBLIC_KEY_PREFIX}\", found {len}")]
    HexLength {
        /// Characters found after the prefix.
        len: usize,
    },
    /// The text after the prefix holds a character that is not a hex digit.
    #[error("public key has a non-hex character {found:?} at hex position {position}")]
    BadHex {
        /// The offending character.
        found: char,
        /// Its position, counted from the first character after the prefix.
        position: usize,
    },
    /// The bytes are not the encoding of any point on edwards25519.
    #[error("public key is not a point on edwards25519")]
    NotOnCurve,
    /// The bytes decode to a point but are not its canonical encoding (`y >= p`, or the sign
    /// bit set while `x = 0`).
    #[error("public key is a non-canonical point encoding")]
    NonCanonical,
    /// The point lies in the 8-torsion subgroup: a key anyone can forge signatures for.
    #[error("public key is a small-order point")]
    SmallOrder,
}

/// A validator's Ed25519 public key: 32 bytes, checked canonical and not of small order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Checks and wraps 32 bytes.
    ///
    /// # Errors
    /// [`KeyError::NotOnCurve`], [`KeyError::NonCanonical`] or [`KeyError::SmallOrder`].
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotOnCurve)?;
        // Decompression reduces y mod p and negates x = 0 to itself, so a non-canonical
        // encoding decodes; re-encoding the point shows it.
        if key.to_edwards().compress().to_bytes() != *bytes {
            return Err(KeyError::NonCanonical);
        }
        if key.is_weak() {
            return Err(KeyError::SmallOrder);
        }
        Ok(Self(*bytes))
    }

    /// Wraps bytes known to be a valid key (the public half of a [`Keypair`]).
    fn from_bytes_unchecked(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32-byte compressed point.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0
    }

    /// The 32-byte compressed point, borrowed.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let digits = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(KeyError::MissingPrefix)?;
        let len = digits.chars().count();
        if len != 2 * PUBLIC_KEY_LEN {
            return Err(KeyError::HexLength { len });
        }
        if let Some((position, found)) = digits
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_hexdigit())
        {
            return Err(KeyError::BadHex { found, position });
        }
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        // Cannot fail after the checks above; map anyway rather than panic.
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| KeyError::HexLength { len })?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({PUBLIC_KEY_PREFIX}{}…)",
            hex::encode(&self.0[..DEBUG_PREFIX_LEN])
        )
    }
}

/// Binary formats (bcs): a fixed 32-byte tuple, no length prefix. Human-readable formats
/// (JSON, YAML config): the text form `ed25519:<64 hex>`. Both run the [`PublicKey::from_bytes`]
/// checks when deserializing.
impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(de::Error::custom)
        } else {
            let bytes = <[u8; PUBLIC_KEY_LEN]>::deserialize(deserializer)?;
            Self::from_bytes(&bytes).map_err(de::Error::custom)
        }
    }
}

/// An Ed25519 signing key (ed25519-dalek). The secret is zeroized on drop and never printed.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh random key.
    pub fn generate<R: rand_core::CryptoRng + rand_core::RngCore>(rng: &mut R) -> Self {
        Self {
            signing: SigningKey::generate(rng),
        }
    }

    /// The key for a 32-byte seed (RFC 8032 §5.1.5 secret key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed. Handle with care: it is the secret.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        let bytes = self.signing.verifying_key().to_bytes();
        // A = [a]B with a clamped: A is in the prime-order subgroup and never the identity,
        // so the check cannot fail; if it ever did, the key still signs and verifies under
        // ZIP-215, so keep the bytes rather than panic.
        PublicKey::from_bytes(&bytes).unwrap_or_else(|_| PublicKey::from_bytes_unchecked(bytes))
    }

    /// Signs `msg` (RFC 8032 Ed25519, deterministic).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature::from_bytes(self.signing.sign(msg).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// A valid key: the public half of RFC 8032 TEST 1.
    const GOOD_HEX: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn parse(text: &str) -> Result<PublicKey, KeyError> {
        text.parse()
    }

    #[test]
    fn parse_table() {
        let good = format!("ed25519:{GOOD_HEX}");
        let upper = format!("ed25519:{}", GOOD_HEX.to_uppercase());
        let bad_hex = format!("ed25519:{}g", &GOOD_HEX[..63]);
        let cases: Vec<(&str, String, Result<(), KeyError>)> = vec![
            ("good", good.clone(), Ok(())),
            ("uppercase hex", upper, Ok(())),
            (
                "no prefix",
                GOOD_HEX.to_string(),
                Err(KeyError::MissingPrefix),
            ),
            (
                "wrong prefix",
                format!("ed448:{GOOD_HEX}"),
                Err(KeyError::MissingPrefix),
            ),
            (
                "prefix case",
                format!("ED25519:{GOOD_HEX}"),
                Err(KeyError::MissingPrefix),
            ),
            ("empty", String::new(), Err(KeyError::MissingPrefix)),
            (
                "short",
                format!("ed25519:{}", &GOOD_HEX[..62]),
                Err(KeyError::HexLength { len: 62 }),
            ),
            (
                "long",
                format!("{good}00"),
                Err(KeyError::HexLength { len: 66 }),
            ),
            (
                "prefix only",
                "ed25519:".into(),
                Err(KeyError::HexLength { len: 0 }),
            ),
            (
                "bad hex",
                bad_hex,
                Err(KeyError::BadHex {
                    found: 'g',
                    position: 63,
                }),
            ),
            (
                "space",
                format!("ed25519: {}", &GOOD_HEX[1..]),
                Err(KeyError::BadHex {
                    found: ' ',
                    position: 0,
                }),
            ),
            (
                "identity (order 1)",
                format!("ed25519:01{}", "00".repeat(31)),
                Err(KeyError::SmallOrder),
            ),
            (
                "y = -1 (order 2)",
                format!("ed25519:ec{}7f", "ff".repeat(30)),
                Err(KeyError::SmallOrder),
            ),
            (
                "all zero: y = 0 (order 4)",
                format!("ed25519:{}", "00".repeat(32)),
                Err(KeyError::SmallOrder),
            ),
            (
                "order 8 point",
                "ed25519:26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05".into(),
                Err(KeyError::SmallOrder),
            ),
            (
                "y = p (non-canonical 0)",
                format!("ed25519:ed{}7f", "ff".repeat(30)),
                Err(KeyError::NonCanonical),
            ),
            (
                "y = p + 1 (non-canonical identity)",
                format!("ed25519:ee{}7f", "ff".repeat(30)),
                Err(KeyError::NonCanonical),
            ),
            (
                "identity with sign bit",
                format!("ed25519:01{}80", "00".repeat(30)),
                Err(KeyError::NonCanonical),
            ),
            (
                "y = -1 with sign bit",
                format!("ed25519:ec{}ff", "ff".repeat(30)),
                Err(KeyError::NonCanonical),
            ),
            (
                "y = 2 is not on the curve",
                format!("ed25519:02{}", "00".repeat(31)),
                Err(KeyError::NotOnCurve),
            ),
        ];
        for (name, text, expected) in cases {
            let got = parse(&text).map(|_| ());
            assert_eq!(got, expected, "{name}: {text}");
        }
    }

    #[test]
    fn display_round_trip() {
        let key = parse(&format!("ed25519:{}", GOOD_HEX.to_uppercase())).unwrap();
        assert_eq!(key.to_string(), format!("ed25519:{GOOD_HEX}"));
        assert_eq!(parse(&key.to_string()), Ok(key));
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..16 {
            let key = Keypair::generate(&mut rng).public();
            assert_eq!(parse(&key.to_string()), Ok(key));
            assert_eq!(PublicKey::from_bytes(key.as_bytes()), Ok(key));
            assert_eq!(key.to_bytes(), *key.as_bytes());
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let text = parse("ed25519:00").unwrap_err().to_string();
        assert!(
            text.contains("64 hex digits") && text.contains('2'),
            "{text}"
        );
        let text = parse(&format!("ed25519:01{}", "00".repeat(31)))
            .unwrap_err()
            .to_string();
        assert!(text.contains("small-order"), "{text}");
        let text = parse(&format!("ed25519:ed{}7f", "ff".repeat(30)))
            .unwrap_err()
            .to_string();
        assert!(text.contains("non-canonical"), "{text}");
    }

    #[test]
    fn serde_forms() {
        let key = Keypair::from_seed(&[3; 32]).public();
        let encoded = bcs::to_bytes(&key).unwrap();
        assert_eq!(encoded.as_slice(), key.as_bytes());
        assert_eq!(bcs::from_bytes::<PublicKey>(&encoded), Ok(key));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);

        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        let err = bcs::from_bytes::<PublicKey>(&bcs::to_bytes(&identity).unwrap()).unwrap_err();
        assert!(err.to_string().contains("small-order"), "{err}");
        let err = serde_json::from_str::<PublicKey>("\"abc\"").unwrap_err();
        assert!(err.to_string().contains("ed25519:"), "{err}");
    }

    #[test]
    fn keypair_seed_sign_and_debug() {
        let pair = Keypair::from_seed(&[7; 32]);
        assert_eq!(pair.seed(), [7; 32]);
        assert_eq!(Keypair::from_seed(&pair.seed()).public(), pair.public());
        assert_eq!(pair.sign(b"m"), pair.clone().sign(b"m"));
        assert_ne!(pair.sign(b"m"), pair.sign(b"n"));
        let debug = format!("{pair:?}");
        assert!(!debug.contains(&hex::encode([7u8; 32])), "{debug}");
        assert!(!debug.contains("0707"), "{debug}");
        assert!(debug.starts_with("Keypair"), "{debug}");
    }

    #[test]
    fn key_order_is_byte_order() {
        let mut keys: Vec<PublicKey> = (1u8..=8)
            .map(|i| Keypair::from_seed(&[i; 32]).public())
            .collect();
        keys.sort();
        assert!(keys.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()));
    }
}
