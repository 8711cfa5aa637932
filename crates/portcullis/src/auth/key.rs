//! The API key format: `pcs_<key-id>_<secret><checksum>`.
//!
//! - `key-id`: `[a-z0-9-]{4,64}`, public; it names the key in the store, the CLI and the audit
//!   log. It contains no `_`, so the first `_` after the prefix ends it.
//! - `secret`: base62, at least [`MIN_SECRET_LEN`] characters (≥ 128 bits); generated keys
//!   carry [`SECRET_LEN`] characters (≈ 178 bits).
//! - `checksum`: CRC32 of everything before it (`pcs_<key-id>_<secret>`), as exactly six base62
//!   characters. A typo or a random string is refused by [`parse`] before any lookup, so junk
//!   costs neither a database query nor an HMAC.
//!
//! Parsing is pure, bounded ([`MAX_KEY_LEN`]) and never panics; it is property-tested here and
//! fuzzed by `crates/portcullis/fuzz`.

use rand::Rng;
use std::fmt;

/// Prefix of every key: lets secret scanners and the log redaction layer recognise keys.
pub const PREFIX: &str = "pcs_";
/// Characters of a generated secret: 30 × log2(62) ≈ 178 bits.
pub const SECRET_LEN: usize = 30;
/// Fewest secret characters accepted: 22 × log2(62) ≈ 131 bits ≥ 128.
pub const MIN_SECRET_LEN: usize = 22;
/// Most secret characters accepted.
pub const MAX_SECRET_LEN: usize = 128;
/// Characters of the checksum: 62⁶ > 2³².
pub const CHECKSUM_LEN: usize = 6;
/// Longest string that can be a key; longer input is refused before it is looked at.
pub const MAX_KEY_LEN: usize = PREFIX.len() + 64 + 1 + MAX_SECRET_LEN + CHECKSUM_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not an API key. Deliberately coarse: callers report all of them as
/// "malformed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Longer than [`MAX_KEY_LEN`].
    #[error("too long")]
    TooLong,
    /// Does not start with `pcs_`.
    #[error("missing pcs_ prefix")]
    Prefix,
    /// The key id is not `[a-z0-9-]{4,64}`.
    #[error("invalid key id")]
    KeyId,
    /// The secret is too short or too long, or not base62.
    #[error("invalid secret")]
    Secret,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// A key that passed [`parse`]: the checksum matched. The secret is still unverified.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The public key id.
    pub key_id: &'a str,
    /// The secret part, without the checksum.
    pub secret: &'a str,
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .finish()
    }
}

/// Is `id` a valid key id, `[a-z0-9-]{4,64}`?
pub fn valid_key_id(id: &str) -> bool {
    (4..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// CRC32 of `body` as six base62 characters, most significant first.
pub fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Parse and checksum-verify `raw`. Never looks anything up.
pub fn parse(raw: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    if raw.len() > MAX_KEY_LEN {
        return Err(KeyFormatError::TooLong);
    }
    let rest = raw.strip_prefix(PREFIX).ok_or(KeyFormatError::Prefix)?;
    let (key_id, tail) = rest.split_once('_').ok_or(KeyFormatError::KeyId)?;
    if !valid_key_id(key_id) {
        return Err(KeyFormatError::KeyId);
    }
    if !is_base62(tail) || tail.len() < MIN_SECRET_LEN + CHECKSUM_LEN {
        return Err(KeyFormatError::Secret);
    }
    let split = tail.len() - CHECKSUM_LEN;
    let (secret, sum) = tail.split_at(split);
    if secret.len() > MAX_SECRET_LEN {
        return Err(KeyFormatError::Secret);
    }
    let body = &raw[..raw.len() - CHECKSUM_LEN];
    // Not secret: the checksum is a function of the (untrusted) input only.
    if checksum(body) != sum.as_bytes() {
        return Err(KeyFormatError::Checksum);
    }
    Ok(ParsedKey { key_id, secret })
}

/// Assemble a key from its parts. `secret` must be base62.
pub fn format_key(key_id: &str, secret: &str) -> String {
    let mut s = String::with_capacity(PREFIX.len() + key_id.len() + 1 + secret.len() + 6);
    s.push_str(PREFIX);
    s.push_str(key_id);
    s.push('_');
    s.push_str(secret);
    let sum = checksum(&s);
    s.extend(sum.iter().map(|&b| b as char));
    s
}

/// A random base62 string of `len` characters from the OS-seeded CSPRNG.
pub fn random_base62(len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A fresh key id: 12 random characters of `[a-z0-9]`.
pub fn generate_key_id() -> String {
    let mut rng = rand::rngs::OsRng;
    const ID: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..12)
        .map(|_| ID[rng.gen_range(0..ID.len())] as char)
        .collect()
}

/// A freshly generated key. `Debug` hides the secret.
#[derive(Clone)]
pub struct NewKey {
    /// The key id.
    pub key_id: String,
    /// The secret part (what the store keeps an HMAC of).
    pub secret: String,
    /// The whole key, to show the caller exactly once.
    pub raw: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Generate a key with id `key_id` (validated by the caller) and a fresh secret.
pub fn generate(key_id: &str) -> NewKey {
    let secret = random_base62(SECRET_LEN);
    let raw = format_key(key_id, &secret);
    NewKey {
        key_id: key_id.to_string(),
        secret,
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_parse() {
        let k = generate("my-key-1");
        let p = parse(&k.raw).unwrap();
        assert_eq!(p.key_id, "my-key-1");
        assert_eq!(p.secret, k.secret);
        assert_eq!(k.secret.len(), SECRET_LEN);
        assert!(valid_key_id(&generate_key_id()));
        assert!(!format!("{k:?}").contains(&k.secret));
    }

    #[test]
    fn junk_is_refused() {
        assert_eq!(parse("Bearer x"), Err(KeyFormatError::Prefix));
        assert_eq!(parse("pcs_"), Err(KeyFormatError::KeyId));
        assert_eq!(parse("pcs_abc_"), Err(KeyFormatError::KeyId));
        assert_eq!(parse("pcs_ABCD_x"), Err(KeyFormatError::KeyId));
        assert_eq!(
            parse(&format!("pcs_abcd_{}", "a".repeat(27))),
            Err(KeyFormatError::Secret)
        );
        assert_eq!(
            parse(&format!("pcs_abcd_{}", "a".repeat(40))),
            Err(KeyFormatError::Checksum)
        );
        assert_eq!(parse(&"a".repeat(1000)), Err(KeyFormatError::TooLong));
        // The key from the redaction test: right shape, wrong checksum.
        assert!(parse("pcs_testkey1_S3cretSecretSecretSecret1abcde").is_err());
    }

    #[test]
    fn exhaustive_single_character_changes_are_refused() {
        let raw = generate("exhaustive-1").raw;
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.~ ";
        for i in 0..raw.len() {
            for &c in alphabet {
                if raw.as_bytes()[i] == c {
                    continue;
                }
                let mut b = raw.clone().into_bytes();
                b[i] = c;
                let changed = String::from_utf8(b).unwrap();
                assert!(parse(&changed).is_err(), "accepted {changed}");
            }
        }
    }

    fn key_id() -> impl Strategy<Value = String> {
        "[a-z0-9-]{4,64}"
    }

    fn secret() -> impl Strategy<Value = String> {
        "[0-9A-Za-z]{22,128}"
    }

    proptest! {
        #[test]
        fn round_trip(id in key_id(), s in secret()) {
            let raw = format_key(&id, &s);
            prop_assert!(raw.len() <= MAX_KEY_LEN);
            let p = parse(&raw).unwrap();
            prop_assert_eq!(p.key_id, id.as_str());
            prop_assert_eq!(p.secret, s.as_str());
        }

        #[test]
        fn every_single_character_change_is_refused(
            id in key_id(),
            s in secret(),
            pos in any::<prop::sample::Index>(),
            replacement in prop::sample::select(
                b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-+/=. ".to_vec()
            ),
        ) {
            let raw = format_key(&id, &s);
            let i = pos.index(raw.len());
            prop_assume!(raw.as_bytes()[i] != replacement);
            let mut bytes = raw.into_bytes();
            bytes[i] = replacement;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(parse(&changed).is_err(), "accepted {}", changed);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s);
        }
    }
}
