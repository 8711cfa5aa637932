//! The bytes an instance signs with its Ed25519 key to answer a CHALLENGE (protocol version 3,
//! docs/link-protocol.md §10.3), and key fingerprints.
//!
//! The signed message is a fixed binary layout rather than JSON, so two implementations
//! cannot disagree about whitespace, field order or number formatting:
//!
//! | bytes | field |
//! |------:|-------|
//! | 22    | the context [`PROOF_CONTEXT`], `portcullis-link-proof` and a zero byte |
//! | 1     | protocol version of the HELLO (3) |
//! | 32    | the CHALLENGE nonce (decoded from hex) |
//! | 32    | the service's own nonce (decoded from hex) |
//! | 8     | the service's timestamp, Unix milliseconds, unsigned big-endian |
//! | 1 + n | the service name, its length first |
//! | 1 + n | the instance id, its length first |
//! | 1 + n | the TLS exporter value ([`TLS_EXPORTER_LABEL`], no context, 32 bytes) — length 0 on plaintext TCP |
//!
//! Every variable field carries its length, so no two different proofs encode to the same
//! bytes; [`Proof::decode`] is the exact inverse of [`Proof::encode`] and refuses anything
//! else (trailing bytes, bad names, an exporter that is neither absent nor 32 bytes).

use ring::signature::{UnparsedPublicKey, ED25519};

/// First bytes of every signed proof: a domain separator, so a signature made for the link
/// can never be taken for one over some other message of the same key.
pub const PROOF_CONTEXT: &[u8; 22] = b"portcullis-link-proof\0";

/// The RFC 5705 / RFC 8446 §7.5 exporter label both ends use for the channel binding.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-portcullis-link";

/// Length of the exported keying material.
pub const TLS_EXPORTER_LEN: usize = 32;

/// Longest encoded proof: context, version, two nonces, timestamp, the three length-prefixed
/// fields at their largest.
pub const MAX_PROOF_LEN: usize = 22 + 1 + 32 + 32 + 8 + (1 + 63) + (1 + 128) + (1 + 32);

/// What an instance signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Protocol version of the HELLO.
    pub version: u8,
    /// The nonce the gateway sent in CHALLENGE.
    pub gateway_nonce: [u8; 32],
    /// The instance's own fresh nonce.
    pub service_nonce: [u8; 32],
    /// The instance's clock when it signed, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The service the HELLO names.
    pub service: String,
    /// The instance id the HELLO names.
    pub instance_id: String,
    /// The TLS exporter value of the connection; `None` on plaintext TCP.
    pub tls_exporter: Option<[u8; TLS_EXPORTER_LEN]>,
}

/// Why bytes are not a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not the layout of the table above.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// A name the HELLO could not carry.
    #[error("invalid {0} in proof")]
    InvalidName(&'static str),
}

impl Proof {
    /// The signed bytes. Fails only for a service name or instance id the HELLO could not
    /// carry either (the lengths must fit their one-byte prefixes).
    pub fn encode(&self) -> Result<Vec<u8>, ProofError> {
        if !crate::valid_service_name(&self.service) {
            return Err(ProofError::InvalidName("service"));
        }
        if !crate::valid_token(&self.instance_id) {
            return Err(ProofError::InvalidName("instance_id"));
        }
        let mut out = Vec::with_capacity(MAX_PROOF_LEN);
        out.extend_from_slice(PROOF_CONTEXT);
        out.push(self.version);
        out.extend_from_slice(&self.gateway_nonce);
        out.extend_from_slice(&self.service_nonce);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        // Both lengths were bounded above (63 and 128), so they fit in a byte.
        out.push(self.service.len() as u8);
        out.extend_from_slice(self.service.as_bytes());
        out.push(self.instance_id.len() as u8);
        out.extend_from_slice(self.instance_id.as_bytes());
        match &self.tls_exporter {
            Some(e) => {
                out.push(TLS_EXPORTER_LEN as u8);
                out.extend_from_slice(e);
            }
            None => out.push(0),
        }
        Ok(out)
    }

    /// The proof these bytes encode; the exact inverse of [`Proof::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ProofError> {
        let mut r = Reader(bytes);
        if r.take(PROOF_CONTEXT.len())? != PROOF_CONTEXT {
            return Err(ProofError::Malformed("context"));
        }
        let version = r.take(1)?[0];
        let gateway_nonce = r.array::<32>()?;
        let service_nonce = r.array::<32>()?;
        let timestamp_ms = u64::from_be_bytes(r.array::<8>()?);
        let service = r.prefixed_str()?;
        if !crate::valid_service_name(service) {
            return Err(ProofError::InvalidName("service"));
        }
        let instance_id = r.prefixed_str()?;
        if !crate::valid_token(instance_id) {
            return Err(ProofError::InvalidName("instance_id"));
        }
        let exporter_len = r.take(1)?[0] as usize;
        let tls_exporter = match exporter_len {
            0 => None,
            TLS_EXPORTER_LEN => Some(r.array::<TLS_EXPORTER_LEN>()?),
            _ => return Err(ProofError::Malformed("exporter length")),
        };
        if !r.0.is_empty() {
            return Err(ProofError::Malformed("trailing bytes"));
        }
        Ok(Self {
            version,
            gateway_nonce,
            service_nonce,
            timestamp_ms,
            service: service.to_string(),
            instance_id: instance_id.to_string(),
            tls_exporter,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProofError> {
        if self.0.len() < n {
            return Err(ProofError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProofError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn prefixed_str(&mut self) -> Result<&'a str, ProofError> {
        let n = self.take(1)?[0] as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| ProofError::Malformed("not UTF-8"))
    }
}

/// Does `signature` (64 bytes) verify `message` under the Ed25519 `public_key`?
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// A key's fingerprint as admins compare it: `SHA256:` and the unpadded standard base64 of
/// the SHA-256 of the 32 raw public-key bytes (the form OpenSSH prints).
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
    )
}

/// Decode `n` bytes of lowercase hex, as the HELLO's Ed25519 fields carry them.
pub fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !crate::frame::is_hex(s, N) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// The test vector of docs/link-protocol.md §10.3, checked against the document itself.
    const DOC: &str = include_str!("../../../docs/link-protocol.md");

    fn vector_proof() -> Proof {
        Proof {
            version: 3,
            gateway_nonce: [0x11; 32],
            service_nonce: [0x22; 32],
            timestamp_ms: 1_700_000_000_000,
            service: "echo".into(),
            instance_id: "echo-1".into(),
            tls_exporter: None,
        }
    }

    /// The RFC 8032 §7.1 TEST 1 secret key, as a seed.
    const VECTOR_SEED: [u8; 32] = [
        0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c,
        0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae,
        0x7f, 0x60,
    ];

    /// The hex block that follows `label` in the document (whitespace removed).
    fn doc_hex(label: &str) -> String {
        let start = DOC
            .find(label)
            .unwrap_or_else(|| panic!("{label} not in the doc"));
        let rest = &DOC[start + label.len()..];
        let open = rest.find("```").unwrap() + 3;
        let rest = &rest[open..];
        let rest = &rest[rest.find('\n').unwrap()..];
        let close = rest.find("```").unwrap();
        rest[..close].split_whitespace().collect()
    }

    #[test]
    fn the_documented_test_vector_holds() {
        let bytes = vector_proof().encode().unwrap();
        assert_eq!(encode_hex(&bytes), doc_hex("Signed bytes (hex):"));
        let key = Ed25519KeyPair::from_seed_unchecked(&VECTOR_SEED).unwrap();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        assert_eq!(encode_hex(&public), doc_hex("Public key (hex):"));
        let sig = key.sign(&bytes);
        assert_eq!(encode_hex(sig.as_ref()), doc_hex("Signature (hex):"));
        assert!(verify(&public, &bytes, sig.as_ref()));
        assert_eq!(
            format!("`{}`", fingerprint(&public)),
            DOC.split("Fingerprint: ")
                .nth(1)
                .and_then(|s| s.lines().next())
                .unwrap()
                .trim()
                .trim_end_matches('.')
        );
    }

    #[test]
    fn a_signature_does_not_verify_another_proof() {
        let key = Ed25519KeyPair::from_seed_unchecked(&VECTOR_SEED).unwrap();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        let p = vector_proof();
        let sig = key.sign(&p.encode().unwrap());
        let mut other = p.clone();
        other.tls_exporter = Some([0; 32]);
        assert!(!verify(&public, &other.encode().unwrap(), sig.as_ref()));
        let mut other = p;
        other.instance_id = "echo-2".into();
        assert!(!verify(&public, &other.encode().unwrap(), sig.as_ref()));
    }

    #[test]
    fn decode_refuses_what_encode_never_makes() {
        let bytes = vector_proof().encode().unwrap();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Proof::decode(&trailing),
            Err(ProofError::Malformed("trailing bytes"))
        );
        for n in 0..bytes.len() {
            assert!(Proof::decode(&bytes[..n]).is_err(), "{n}");
        }
        let mut bad_len = bytes.clone();
        *bad_len.last_mut().unwrap() = 5;
        assert!(Proof::decode(&bad_len).is_err());
        let mut p = vector_proof();
        p.service = "Bad".into();
        assert_eq!(p.encode(), Err(ProofError::InvalidName("service")));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(decode_hex::<2>("00ff"), Some([0, 255]));
        assert_eq!(decode_hex::<2>("00FF"), None);
        assert_eq!(decode_hex::<2>("00f"), None);
        assert_eq!(encode_hex(&[0, 255, 16]), "00ff10");
    }

    prop_compose! {
        fn proofs()(
            version in any::<u8>(),
            g in any::<[u8; 32]>(),
            s in any::<[u8; 32]>(),
            ts in any::<u64>(),
            service in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
            instance in "[A-Za-z0-9._-]{1,128}",
            exporter in proptest::option::of(any::<[u8; 32]>()),
        ) -> Proof {
            Proof {
                version, gateway_nonce: g, service_nonce: s, timestamp_ms: ts,
                service, instance_id: instance, tls_exporter: exporter,
            }
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(p in proofs()) {
            let bytes = p.encode().unwrap();
            prop_assert!(bytes.len() <= MAX_PROOF_LEN);
            prop_assert_eq!(Proof::decode(&bytes).unwrap(), p);
        }

        #[test]
        fn distinct_proofs_encode_distinctly(a in proofs(), b in proofs()) {
            prop_assume!(a != b);
            prop_assert_ne!(a.encode().unwrap(), b.encode().unwrap());
        }

        #[test]
        fn decode_never_panics_and_reencodes_exactly(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(p) = Proof::decode(&bytes) {
                prop_assert_eq!(p.encode().unwrap(), bytes);
            }
        }
    }
}
