//! The server pepper: the HMAC key API key secrets are stored under.
//!
//! It lives outside the database on purpose: a leaked database dump (backup, replica, SQL
//! injection elsewhere) then holds only HMACs under a key the attacker does not have, so even
//! a weak secret could not be tested offline. It comes from `PORTCULLIS_PEPPER` or a file
//! (`auth.pepper_file`, else `<data_dir>/pepper` written by `portcullis init`), never from
//! the database, a command-line argument or a log line: `Debug` prints `***`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable holding the pepper (takes precedence over files).
pub const PEPPER_ENV: &str = "PORTCULLIS_PEPPER";
/// File name of the pepper `portcullis init` writes into the data directory.
pub const PEPPER_FILE_NAME: &str = "pepper";
/// Shortest pepper accepted, bytes.
pub const MIN_PEPPER_LEN: usize = 32;

/// Why the pepper could not be loaded. Messages name the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    /// No pepper configured and no `<data_dir>/pepper`.
    #[error(
        "no pepper: set {PEPPER_ENV}, or auth.pepper_file, or run `portcullis init` to create {0}"
    )]
    Missing(PathBuf),
    /// The file could not be read.
    #[error("cannot read pepper file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Too short.
    #[error("the pepper from {0} is shorter than {MIN_PEPPER_LEN} bytes")]
    TooShort(String),
    /// The file could not be written.
    #[error("cannot write pepper file {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The pepper and its version. The version is stored next to every HMAC so peppers can be
/// rotated later without guessing which one a row was made with.
#[derive(Clone)]
pub struct Pepper {
    /// HMAC-SHA-256 already keyed with the pepper: each hash clones it instead of deriving the
    /// inner and outer pads again (two of the five SHA-256 blocks a key check costs).
    mac: Hmac<Sha256>,
    version: u32,
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pepper")
            .field("key", &"***")
            .field("version", &self.version)
            .finish()
    }
}

impl Pepper {
    /// A pepper from bytes (at least [`MIN_PEPPER_LEN`]).
    pub fn new(key: impl Into<Vec<u8>>, version: u32) -> Result<Self, PepperError> {
        let key = key.into();
        if key.len() < MIN_PEPPER_LEN {
            return Err(PepperError::TooShort("the given value".into()));
        }
        Self::keyed(&key, version)
    }

    /// Load from `PORTCULLIS_PEPPER`, else `file`, else `<data_dir>/pepper`.
    pub fn load(file: Option<&Path>, data_dir: &Path, version: u32) -> Result<Self, PepperError> {
        Self::load_from(std::env::var(PEPPER_ENV).ok(), file, data_dir, version)
    }

    /// [`Pepper::load`] with the environment value passed in (tests).
    pub fn load_from(
        env: Option<String>,
        file: Option<&Path>,
        data_dir: &Path,
        version: u32,
    ) -> Result<Self, PepperError> {
        if let Some(v) = env.filter(|v| !v.trim().is_empty()) {
            let v = v.trim().as_bytes().to_vec();
            if v.len() < MIN_PEPPER_LEN {
                return Err(PepperError::TooShort(PEPPER_ENV.into()));
            }
            return Self::keyed(&v, version);
        }
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => {
                let p = data_dir.join(PEPPER_FILE_NAME);
                if !p.exists() {
                    return Err(PepperError::Missing(p));
                }
                p
            }
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| PepperError::Read(path.clone(), e))?;
        let key = text.trim().as_bytes().to_vec();
        if key.len() < MIN_PEPPER_LEN {
            return Err(PepperError::TooShort(path.display().to_string()));
        }
        Self::keyed(&key, version)
    }

    fn keyed(key: &[u8], version: u32) -> Result<Self, PepperError> {
        // HMAC takes a key of any length; were that ever refused, no pepper rather than a weak one.
        let mac = Hmac::<Sha256>::new_from_slice(key)
            .map_err(|_| PepperError::TooShort("the given value".into()))?;
        Ok(Self { mac, version })
    }

    /// Write a new random pepper (256 bits, hex) to `path` with mode 0600, unless the file
    /// exists. Returns whether a file was written.
    pub fn create_file(path: &Path) -> Result<bool, PepperError> {
        if path.exists() {
            return Ok(false);
        }
        let value = hex::encode(rand::random::<[u8; 32]>());
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .map_err(|e| PepperError::Write(path.to_path_buf(), e))?;
        std::io::Write::write_all(&mut f, format!("{value}\n").as_bytes())
            .map_err(|e| PepperError::Write(path.to_path_buf(), e))?;
        Ok(true)
    }

    /// The pepper version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A 32-byte key derived from the pepper for one `purpose` (HMAC-SHA-256 as a PRF, domain
    /// separated from key hashing), e.g. the key that seals signing keys at rest. Changing the
    /// pepper changes every derived key.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"pcs-derive-v1\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// HMAC-SHA-256 of a key's secret, bound to its key id so a stored hash cannot be moved
    /// to another key.
    pub fn hash_secret(&self, key_id: &str, secret: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"pcs-api-key-v1\0");
        mac.update(key_id.as_bytes());
        mac.update(b"\0");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let e = Pepper::load_from(None, None, dir.path(), 1).unwrap_err();
        assert!(e.to_string().contains("portcullis init"), "{e}");
        let file = dir.path().join(PEPPER_FILE_NAME);
        assert!(Pepper::create_file(&file).unwrap());
        assert!(!Pepper::create_file(&file).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let from_dir = Pepper::load_from(None, None, dir.path(), 3).unwrap();
        assert_eq!(from_dir.version(), 3);
        let from_env = Pepper::load_from(Some("e".repeat(40)), None, dir.path(), 1).unwrap();
        assert_ne!(
            from_dir.hash_secret("k", "s"),
            from_env.hash_secret("k", "s")
        );
        assert!(Pepper::load_from(Some("short".into()), None, dir.path(), 1).is_err());
        assert!(!format!("{from_env:?}").contains("eeee"));
        // Bound to the key id.
        assert_ne!(
            from_env.hash_secret("a", "secret"),
            from_env.hash_secret("b", "secret")
        );
    }
}
