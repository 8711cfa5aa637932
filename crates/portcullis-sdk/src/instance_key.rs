//! The instance's Ed25519 key, and the credential it makes for each HELLO
//! (docs/link-protocol.md §10).
//!
//! The key is generated once and kept: a new key is a new pairing, which an admin has to
//! approve. [`InstanceKey::load_or_generate`] keeps it in a PKCS#8 file created with mode 0600
//! (never overwritten); [`InstanceKey::from_pkcs8`] takes one held elsewhere (a secret store).
//! The private key never leaves this type: `Debug` shows only the fingerprint, and nothing
//! here logs a nonce or a signature.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use portcullis_link::proof::{self, Proof};
use portcullis_link::{Credential, Hello, PairingPrompt};
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::error::Error;

/// An instance's Ed25519 key pair.
#[derive(Clone)]
pub struct InstanceKey {
    pair: Arc<Ed25519KeyPair>,
    public: [u8; 32],
}

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceKey({})", self.fingerprint())
    }
}

/// Largest key file read (a PKCS#8 Ed25519 document is under 100 bytes).
const MAX_KEY_FILE: u64 = 4096;

impl InstanceKey {
    /// A new random key, with its PKCS#8 document (to keep somewhere safe).
    pub fn generate() -> Result<(Self, Vec<u8>), Error> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Error::config("cannot generate an Ed25519 key"))?;
        let key = Self::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// The key in a PKCS#8 (v1 or v2) DER document.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| Error::config("instance key: not a PKCS#8 Ed25519 key"))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| Error::config("instance key: unexpected public key length"))?;
        Ok(Self {
            pair: Arc::new(pair),
            public,
        })
    }

    /// The key in the PKCS#8 file at `path`, or — when there is none — a new one written
    /// there (created with mode 0600 on Unix, never overwriting a file that appeared
    /// meanwhile).
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        match std::fs::metadata(path) {
            Ok(m) => {
                if m.len() > MAX_KEY_FILE {
                    return Err(Error::config(format!(
                        "instance key {shown}: file too large"
                    )));
                }
                let der = std::fs::read(path).map_err(|e| {
                    Error::config(format!("instance key {shown}: cannot read")).with_source(e)
                })?;
                Self::from_pkcs8(&der)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, der) = Self::generate()?;
                write_new(path, &der).map_err(|e| {
                    Error::config(format!("instance key {shown}: cannot create")).with_source(e)
                })?;
                tracing::info!(path = %shown, fingerprint = %key.fingerprint(), "instance key generated");
                Ok(key)
            }
            Err(e) => {
                Err(Error::config(format!("instance key {shown}: cannot read")).with_source(e))
            }
        }
    }

    /// The public key, raw.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The fingerprint an admin sees (`SHA256:…`).
    pub fn fingerprint(&self) -> String {
        proof::fingerprint(&self.public)
    }

    /// The Ed25519 credential of `hello` (version `version`), answering the CHALLENGE nonce
    /// `gateway_nonce` at `timestamp_ms`, bound to the connection by `tls_exporter`.
    pub(crate) fn credential(
        &self,
        hello: &Hello,
        version: u8,
        gateway_nonce: &str,
        timestamp_ms: u64,
        tls_exporter: Option<[u8; 32]>,
    ) -> Result<Credential, Error> {
        let gateway_nonce = proof::decode_hex::<32>(gateway_nonce)
            .ok_or_else(|| Error::new(crate::ErrorKind::Protocol, "CHALLENGE nonce is not hex"))?;
        let mut service_nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut service_nonce);
        let message = Proof {
            version,
            gateway_nonce,
            service_nonce,
            timestamp_ms,
            service: hello.service.clone(),
            instance_id: hello.instance_id.clone(),
            tls_exporter,
        }
        .encode()
        .map_err(|e| Error::config("cannot sign the HELLO").with_source(e))?;
        let signature = self.pair.sign(&message);
        Ok(Credential::Ed25519 {
            public_key: proof::encode_hex(&self.public),
            nonce: proof::encode_hex(&service_nonce),
            timestamp_ms,
            signature: proof::encode_hex(signature.as_ref()),
        })
    }
}

fn write_new(path: &Path, der: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(der)?;
    f.sync_all()
}

/// What the service is told while its key waits for an admin: the code to read out and the
/// key's fingerprint. Handed to [`ServiceBuilder::on_pairing`](crate::ServiceBuilder::on_pairing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    /// The gateway it is pending on (`tcp://…`, `tls://…`).
    pub gateway: String,
    /// The pairing code: an admin runs `portcullis pairings approve CODE`.
    pub code: String,
    /// When the pairing lapses unless approved, Unix ms (a new code follows).
    pub expires_at_ms: u64,
    /// The key's fingerprint, for the admin to compare.
    pub fingerprint: String,
}

impl Pairing {
    pub(crate) fn new(gateway: &str, p: &PairingPrompt) -> Self {
        Self {
            gateway: gateway.to_string(),
            code: p.code.clone(),
            expires_at_ms: p.expires_at_ms,
            fingerprint: p.fingerprint.clone(),
        }
    }
}

/// The callback of [`ServiceBuilder::on_pairing`](crate::ServiceBuilder::on_pairing).
pub(crate) type PairingCallback = Arc<dyn Fn(&Pairing) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("pcs-key-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("instance.key");
        let a = InstanceKey::load_or_generate(&path).unwrap();
        let b = InstanceKey::load_or_generate(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(format!("{a:?}").starts_with("InstanceKey(SHA256:"));
        std::fs::write(&path, b"not a key").unwrap();
        assert!(InstanceKey::load_or_generate(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
