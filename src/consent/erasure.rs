//! Erasure of a data subject (GDPR art. 17): the subject's consent history goes, and what must
//! stay (the fact that an erasure happened, when, at whose request) is kept under a keyed
//! pseudonym of the subject id.
//!
//! This module owns the erasure key and the pseudonym. The key lives outside the consent
//! database (a file, by default `DATA_DIR/erasure.key`, created on first use with mode 0600),
//! so that whoever holds a copy of the database alone cannot tell whose erasure a record is;
//! whoever holds the key can answer "was subject X erased?" by recomputing the pseudonym.
//! Replicas that share a database must share the key.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of a generated key.
const KEY_BYTES: usize = 32;
/// Fewest bytes accepted in a key file.
const MIN_KEY_BYTES: usize = 16;

/// The secret behind erasure pseudonyms.
#[derive(Clone)]
pub struct ErasureKey(Vec<u8>);

impl std::fmt::Debug for ErasureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErasureKey(..)")
    }
}

/// The erasure key could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum ErasureKeyError {
    /// Reading, creating or writing the file failed.
    #[error("erasure key {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file holds too little secret.
    #[error(
        "erasure key {path}: {len} bytes, at least {MIN_KEY_BYTES} are needed (delete it to have a new one generated, or write {KEY_BYTES} random bytes)"
    )]
    TooShort {
        /// The key file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// No randomness for a new key.
    #[error("cannot generate an erasure key: {0}")]
    Random(String),
}

impl ErasureKey {
    /// A key from its bytes (tests, or a secret handed over by other means).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// Reads the key at `path`, or creates it (32 random bytes, mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, ErasureKeyError> {
        let io = |source| ErasureKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= MIN_KEY_BYTES => Ok(Self(bytes)),
            Ok(bytes) => Err(ErasureKeyError::TooShort {
                path: path.display().to_string(),
                len: bytes.len(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; KEY_BYTES];
                getrandom::fill(&mut key).map_err(|e| ErasureKeyError::Random(e.to_string()))?;
                write_new_secret(path, &key).map_err(io)?;
                // Another process may have won the race to create it: use what is on disk,
                // which is always a whole key.
                match std::fs::read(path) {
                    Ok(bytes) if bytes.len() >= MIN_KEY_BYTES => Ok(Self(bytes)),
                    Ok(bytes) => Err(ErasureKeyError::TooShort {
                        path: path.display().to_string(),
                        len: bytes.len(),
                    }),
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The pseudonym of `subject`: HMAC-SHA-256 under the key, lower-case hex.
    pub fn pseudonym(&self, subject: &str) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; this branch cannot be reached.
            return String::new();
        };
        mac.update(subject.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Creates `path` with `bytes`, readable by its owner only, unless it exists. The key is
/// written and synced under a temporary name first, then linked into place (a link never
/// replaces a file): a process that starts at the same moment sees either no file or the
/// whole key, never a part of it.
fn write_new_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut unique = [0u8; 8];
    getrandom::fill(&mut unique).map_err(std::io::Error::other)?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", hex::encode(unique)));
    let tmp = std::path::PathBuf::from(name);
    let mut file = options.open(&tmp)?;
    let linked = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("erasure.key");
        let a = ErasureKey::load_or_create(&path).unwrap();
        let b = ErasureKey::load_or_create(&path).unwrap();
        assert_eq!(a.pseudonym("42"), b.pseudonym("42"));
        assert_ne!(a.pseudonym("42"), a.pseudonym("43"));
        assert_eq!(a.pseudonym("42").len(), 64);
        // Lower-case hex only: nothing of the subject id shows through (a digit-only id may
        // appear in it by chance, so that is not what is checked).
        let p = a.pseudonym("subject-42");
        assert!(
            p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{p}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = ErasureKey::from_bytes(&[7u8; 32]);
        assert_ne!(other.pseudonym("42"), a.pseudonym("42"));
    }

    #[test]
    fn processes_starting_at_once_agree_on_one_whole_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("erasure.key");
            let keys: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| ErasureKey::load_or_create(&path).unwrap().pseudonym("7")))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
            assert_eq!(std::fs::read(&path).unwrap().len(), 32);
            // No temporary file is left behind.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("erasure.key");
        std::fs::write(&path, b"short").unwrap();
        let err = ErasureKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
    }
}
