//! Validator key files: `ed25519-secret:<64 hex seed>` on one line, mode 0600.

use std::io::Write;
use std::path::Path;

use crate::crypto::Keypair;

/// The key file's line prefix.
pub const SECRET_PREFIX: &str = "ed25519-secret:";

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists and would be overwritten.
    #[error("{0} exists: refusing to overwrite a key")]
    Exists(String),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read the secret.
    #[error("{path} has mode {mode:o}: a secret key file must not be readable by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// The contents are not a key.
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a new random key to `path` with mode 0600 (never overwriting) and returns it.
pub fn generate(path: &Path) -> Result<Keypair, KeyFileError> {
    let key = Keypair::generate(&mut rand::rngs::OsRng);
    write(path, &key)?;
    Ok(key)
}

/// Writes `key` to a new file at `path` with mode 0600.
pub fn write(path: &Path, key: &Keypair) -> Result<(), KeyFileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.display().to_string())
        } else {
            io(path)(e)
        }
    })?;
    writeln!(f, "{SECRET_PREFIX}{}", hex::encode(key.seed())).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// A new random operator token: 48 hex digits (192 bits from the OS).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Shortest operator token accepted (characters).
pub const TOKEN_LEN_MIN: usize = 16;

/// Reads an operator token file (`node.operator_token_file`): one line, at least
/// [`TOKEN_LEN_MIN`] printable ASCII characters, mode 0600 as a key file.
pub fn read_token(path: &Path) -> Result<String, KeyFileError> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let token = text.trim();
    let malformed = |why: String| KeyFileError::Malformed {
        path: path.display().to_string(),
        why,
    };
    if token.len() < TOKEN_LEN_MIN {
        return Err(malformed(format!(
            "the token has {} characters; at least {TOKEN_LEN_MIN} are needed",
            token.len()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(
            "the token must be one line of printable ASCII without spaces".into(),
        ));
    }
    Ok(token.to_string())
}

/// Refuses a secret file that group or others may read.
fn check_private(path: &Path) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// Reads a key file, refusing one readable by group or others.
pub fn read(path: &Path) -> Result<Keypair, KeyFileError> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let malformed = |why: &str| KeyFileError::Malformed {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let hex_seed = text
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| malformed("does not start with `ed25519-secret:`"))?;
    let bytes = hex::decode(hex_seed).map_err(|_| malformed("the seed is not hex"))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| malformed("the seed is not 32 bytes (64 hex digits)"))?;
    Ok(Keypair::from_seed(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_read_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.key");
        let k = generate(&path).unwrap();
        assert_eq!(read(&path).unwrap().public(), k.public());
        assert!(matches!(generate(&path), Err(KeyFileError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(read(&path), Err(KeyFileError::Permissions { .. })));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "ed25519-secret:zz").unwrap();
        assert!(matches!(read(&path), Err(KeyFileError::Malformed { .. })));
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(read(&path), Err(KeyFileError::Malformed { .. })));
    }
}
