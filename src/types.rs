//! Protocol quantities as newtypes: no bare `u64` crosses a module boundary meaning one of these.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident, $label:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl $name {
            /// The next value (saturating: a protocol counter never wraps).
            pub fn next(self) -> Self {
                Self(self.0.saturating_add(1))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype_u64!(
    /// A HotStuff round (view). Round 0 belongs to the genesis block.
    Round,
    "r"
);
newtype_u64!(
    /// A block's distance from genesis (genesis is height 0).
    Height,
    "h"
);
newtype_u64!(
    /// A validator-set epoch. Every signature binds the epoch it was made in.
    Epoch,
    "e"
);
newtype_u64!(
    /// Stake, in the chain's smallest unit.
    Stake,
    "s"
);

/// A validator's position in the epoch's validator set (config order).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ValidatorIndex(pub u16);

impl ValidatorIndex {
    /// As a `usize`, for indexing the validator set.
    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Debug for ValidatorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for ValidatorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block's identity: the domain-separated BLAKE3 digest of its canonical encoding.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 32]);

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

/// Milliseconds of (real or virtual) time. The core never reads a clock: time is an input.
pub type TimeMs = u64;
