//! Compact JWS with Ed25519 (`alg: EdDSA`, RFC 8037), the one signature format of Portcullis:
//! user access tokens and the identity assertions the gateway adds to forwarded calls.
//!
//! Deliberately narrow. A token is accepted only if it is at most [`MAX_TOKEN_BYTES`], has
//! exactly three canonical base64url (no padding) parts, a header of exactly
//! `{"alg":"EdDSA","kid":…,"typ":…}` (unknown header members such as `crit`, `jku` or `x5u`
//! are refused, so nothing in a token can point the verifier at a key), a `typ` the caller
//! expects (an access token is never accepted as an assertion, nor the reverse), a `kid` the
//! verifier already holds, and a valid 64-byte Ed25519 signature over `header.payload`. There
//! is no algorithm negotiation: `alg: none`, HMAC and RSA are not parsed at all.
//!
//! The claims are checked after the signature: [`TokenClaims`] and [`AssertionClaims`] are
//! refused when expired, issued in the future, for another audience, or (assertions) valid for
//! longer than [`MAX_ASSERTION_LIFETIME_S`]. Times are JWT NumericDates: Unix seconds.
//!
//! Signing and verification use `ring` — the crypto provider the TLS stack already uses.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest token accepted, bytes. Ours are under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The only algorithm.
pub const ALG: &str = "EdDSA";
/// `typ` of a user access token (RFC 9068's media type).
pub const TYP_ACCESS_TOKEN: &str = "at+jwt";
/// `typ` of an identity assertion on a forwarded call.
pub const TYP_ASSERTION: &str = "portcullis-identity+jwt";
/// Longest validity of an identity assertion, seconds (`exp - iat`).
pub const MAX_ASSERTION_LIFETIME_S: i64 = 60;
/// Clock skew tolerated on `iat` and `exp`, seconds.
pub const LEEWAY_S: i64 = 5;
/// Longest key id.
pub const MAX_KID_LEN: usize = 64;

/// Why a token was refused. The gateway and the SDK log [`JwsError::as_str`]; callers never see
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Over [`MAX_TOKEN_BYTES`], not three parts, bad base64url or bad JSON.
    #[error("malformed token")]
    Malformed,
    /// A header other than `{alg: EdDSA, kid, typ}` or a `typ` other than expected.
    #[error("unsupported token header")]
    Header,
    /// No key with this `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// `iat` in the future, or a lifetime longer than allowed.
    #[error("bad validity period")]
    Validity,
    /// `aud` is not the expected audience.
    #[error("wrong audience")]
    Audience,
}

impl JwsError {
    /// Stable name: metric label and audit reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::Header => "token_header",
            Self::UnknownKey => "token_unknown_key",
            Self::Signature => "token_signature",
            Self::Expired => "token_expired",
            Self::Validity => "token_validity",
            Self::Audience => "token_audience",
        }
    }
}

/// The protected header; exactly these members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`ALG`].
    pub alg: String,
    /// Key id.
    pub kid: String,
    /// [`TYP_ACCESS_TOKEN`] or [`TYP_ASSERTION`].
    pub typ: String,
}

/// Is `kid` a well-formed key id: 1 to [`MAX_KID_LEN`] of `[A-Za-z0-9_-]`?
pub fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Sign `claims` as a compact JWS with `key`, named `kid`, of type `typ`.
pub fn sign<C: Serialize>(
    claims: &C,
    kid: &str,
    typ: &str,
    key: &Ed25519KeyPair,
) -> Result<String, serde_json::Error> {
    let header = Header {
        alg: ALG.into(),
        kid: kid.into(),
        typ: typ.into(),
    };
    let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims)?, &mut out);
    let sig = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut out);
    Ok(out)
}

/// A token taken apart, not verified.
struct Split<'a> {
    header: Header,
    /// `header.payload`, the bytes the signature covers.
    signed: &'a str,
    /// The decoded claims bytes.
    payload: Vec<u8>,
    sig: [u8; 64],
}

/// Split and decode a token without verifying it: the header and the raw claims bytes. Only
/// for [`verify`] and tests; never trust what it returns.
fn split(token: &str) -> Result<Split<'_>, JwsError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::Malformed);
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwsError::Malformed)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| JwsError::Header)?;
    if header.alg != ALG || !valid_kid(&header.kid) {
        return Err(JwsError::Header);
    }
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwsError::Malformed)?;
    let mut sig = [0u8; 64];
    match URL_SAFE_NO_PAD.decode_slice(s, &mut sig) {
        Ok(64) => {}
        _ => return Err(JwsError::Malformed),
    }
    let signed_len = h.len() + 1 + p.len();
    Ok(Split {
        header,
        signed: &token[..signed_len],
        payload,
        sig,
    })
}

/// Verify `token` of type `typ` with the key `keys` returns for its `kid`, and decode its
/// claims. Claims are not checked here: call the claims type's `check`.
pub fn verify<C, K>(token: &str, typ: &str, keys: K) -> Result<(Header, C), JwsError>
where
    C: DeserializeOwned,
    K: FnOnce(&str) -> Option<[u8; 32]>,
{
    let Split {
        header,
        signed,
        payload,
        sig,
    } = split(token)?;
    if header.typ != typ {
        return Err(JwsError::Header);
    }
    let public = keys(&header.kid).ok_or(JwsError::UnknownKey)?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| JwsError::Signature)?;
    let claims = serde_json::from_slice(&payload).map_err(|_| JwsError::Malformed)?;
    Ok((header, claims))
}

/// The `kid` a token names, unverified: which key a verifier should look up or refresh.
pub fn peek_kid(token: &str) -> Option<String> {
    split(token).ok().map(|s| s.header.kid)
}

fn check_times(iat: i64, exp: i64, now_s: i64) -> Result<(), JwsError> {
    if exp <= iat || iat > now_s + LEEWAY_S {
        return Err(JwsError::Validity);
    }
    if exp + LEEWAY_S <= now_s {
        return Err(JwsError::Expired);
    }
    Ok(())
}

/// Claims of a user access token: identity only, never roles or scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    /// Subject: `user:<user-id>`.
    pub sub: String,
    /// Workspace id the user belongs to.
    pub ws: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// Audience: the gateway's configured audience.
    pub aud: String,
}

impl TokenClaims {
    /// Valid at `now_s` for audience `aud`?
    pub fn check(&self, now_s: i64, aud: &str) -> Result<(), JwsError> {
        check_times(self.iat, self.exp, now_s)?;
        if self.aud != aud {
            return Err(JwsError::Audience);
        }
        Ok(())
    }
}

/// How the caller proved who it is, in an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertedVia {
    /// Credential kind: `api_key` or `token`.
    pub kind: String,
    /// Credential id: an API key's key id, a token's `jti`.
    pub id: String,
}

/// Claims of an identity assertion (`x-portcullis-identity`), specified in
/// `docs/link-protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionClaims {
    /// Issuer: the gateway's configured issuer name.
    pub iss: String,
    /// Subject: `user:<id>` or `key:<key-id>`.
    pub sub: String,
    /// Workspace id the call acts in.
    pub ws: String,
    /// Workspace name.
    pub wsn: String,
    /// The credential that proved the subject.
    pub via: AssertedVia,
    /// Audience: the service the call is forwarded to.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds; at most [`MAX_ASSERTION_LIFETIME_S`] after `iat`.
    pub exp: i64,
}

impl AssertionClaims {
    /// Valid at `now_s` for the service `aud`?
    pub fn check(&self, now_s: i64, aud: &str) -> Result<(), JwsError> {
        check_times(self.iat, self.exp, now_s)?;
        if self.exp - self.iat > MAX_ASSERTION_LIFETIME_S {
            return Err(JwsError::Validity);
        }
        if self.aud != aud {
            return Err(JwsError::Audience);
        }
        Ok(())
    }
}

/// A public key as a JWK (RFC 8037 §2: `kty: OKP`, `crv: Ed25519`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    /// Key id.
    pub kid: String,
    /// Always `EdDSA`.
    #[serde(default)]
    pub alg: Option<String>,
    /// Always `sig`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
}

impl Jwk {
    /// The JWK of an Ed25519 public key.
    pub fn ed25519(kid: &str, public: &[u8; 32]) -> Self {
        Self {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(public),
            kid: kid.into(),
            alg: Some(ALG.into()),
            use_: Some("sig".into()),
        }
    }

    /// The raw public key, if this is a well-formed Ed25519 signing JWK.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        if self.kty != "OKP" || self.crv != "Ed25519" || !valid_kid(&self.kid) {
            return None;
        }
        if self.alg.as_deref().is_some_and(|a| a != ALG)
            || self.use_.as_deref().is_some_and(|u| u != "sig")
        {
            return None;
        }
        let mut out = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(&self.x, &mut out) {
            Ok(32) => Some(out),
            _ => None,
        }
    }
}

/// Most keys a JWK set may carry (current, next, and those retired but still verifying).
pub const MAX_JWKS_KEYS: usize = 16;

/// A JWK set (`/.well-known/jwks.json`, and the keys the gateway sends over a link).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The usable keys, as `(kid, public key)`, at most [`MAX_JWKS_KEYS`]; malformed entries are
    /// skipped.
    pub fn public_keys(&self) -> Vec<(String, [u8; 32])> {
        self.keys
            .iter()
            .filter_map(|k| k.public_key().map(|p| (k.kid.clone(), p)))
            .take(MAX_JWKS_KEYS)
            .collect()
    }
}

/// The 32-byte public key of a key pair.
pub fn public_key_of(pair: &Ed25519KeyPair) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(pair.public_key().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn pair() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn assertion(now: i64) -> AssertionClaims {
        AssertionClaims {
            iss: "portcullis".into(),
            sub: "user:usr_1".into(),
            ws: "ws_1".into(),
            wsn: "default".into(),
            via: AssertedVia {
                kind: "token".into(),
                id: "j1".into(),
            },
            aud: "echo".into(),
            iat: now,
            exp: now + 60,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let k = pair();
        let pk = public_key_of(&k);
        let t = sign(&assertion(1000), "k1", TYP_ASSERTION, &k).unwrap();
        let (h, c): (Header, AssertionClaims) =
            verify(&t, TYP_ASSERTION, |kid| (kid == "k1").then_some(pk)).unwrap();
        assert_eq!(h.kid, "k1");
        assert_eq!(c, assertion(1000));
        assert_eq!(c.check(1010, "echo"), Ok(()));
        assert_eq!(c.check(1010, "other"), Err(JwsError::Audience));
        assert_eq!(c.check(1100, "echo"), Err(JwsError::Expired));
        assert_eq!(c.check(900, "echo"), Err(JwsError::Validity));
    }

    #[test]
    fn refuses_another_key_type_and_tampering() {
        let k = pair();
        let pk = public_key_of(&k);
        let other = public_key_of(&pair());
        let t = sign(&assertion(1000), "k1", TYP_ASSERTION, &k).unwrap();
        let r: Result<(Header, AssertionClaims), _> = verify(&t, TYP_ASSERTION, |_| Some(other));
        assert_eq!(r.unwrap_err(), JwsError::Signature);
        let r: Result<(Header, AssertionClaims), _> = verify(&t, TYP_ACCESS_TOKEN, |_| Some(pk));
        assert_eq!(r.unwrap_err(), JwsError::Header);
        let r: Result<(Header, AssertionClaims), _> = verify(&t, TYP_ASSERTION, |_| None);
        assert_eq!(r.unwrap_err(), JwsError::UnknownKey);
        // Re-signed claims under the same header: the signature no longer matches.
        let (h, _, s) = {
            let mut p = t.split('.');
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
        };
        let mut forged = assertion(1000);
        forged.sub = "user:admin".into();
        let p2 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let r: Result<(Header, AssertionClaims), _> =
            verify(&format!("{h}.{p2}.{s}"), TYP_ASSERTION, |_| Some(pk));
        assert_eq!(r.unwrap_err(), JwsError::Signature);
    }

    #[test]
    fn refuses_alg_none_and_extra_header_members() {
        let pk = public_key_of(&pair());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&assertion(1000)).unwrap());
        for header in [
            r#"{"alg":"none","kid":"k1","typ":"portcullis-identity+jwt"}"#,
            r#"{"alg":"HS256","kid":"k1","typ":"portcullis-identity+jwt"}"#,
            r#"{"alg":"EdDSA","kid":"k1","typ":"portcullis-identity+jwt","crit":["x"]}"#,
            r#"{"alg":"EdDSA","kid":"k1","typ":"portcullis-identity+jwt","jku":"http://x"}"#,
            r#"{"alg":"EdDSA","kid":"../k","typ":"portcullis-identity+jwt"}"#,
        ] {
            let h = URL_SAFE_NO_PAD.encode(header);
            let sig = URL_SAFE_NO_PAD.encode([0u8; 64]);
            for t in [format!("{h}.{payload}."), format!("{h}.{payload}.{sig}")] {
                let r: Result<(Header, AssertionClaims), _> =
                    verify(&t, TYP_ASSERTION, |_| Some(pk));
                assert!(
                    matches!(r, Err(JwsError::Header | JwsError::Malformed)),
                    "{header}"
                );
            }
        }
    }

    #[test]
    fn refuses_malformed_shapes() {
        let k = pair();
        let pk = public_key_of(&k);
        let t = sign(&assertion(1000), "k1", TYP_ASSERTION, &k).unwrap();
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            &format!("{t}="),
            &format!("{t}.x"),
            &format!("={t}"),
            &long,
        ] {
            let r: Result<(Header, AssertionClaims), _> = verify(bad, TYP_ASSERTION, |_| Some(pk));
            assert!(r.is_err(), "{bad}");
        }
        assert_eq!(peek_kid(&t).as_deref(), Some("k1"));
    }

    #[test]
    fn an_assertion_valid_longer_than_a_minute_is_refused() {
        let mut c = assertion(1000);
        c.exp = c.iat + MAX_ASSERTION_LIFETIME_S + 1;
        assert_eq!(c.check(1001, "echo"), Err(JwsError::Validity));
    }

    #[test]
    fn jwk_round_trip() {
        let k = pair();
        let pk = public_key_of(&k);
        let set = Jwks {
            keys: vec![Jwk::ed25519("k1", &pk)],
        };
        let json = serde_json::to_string(&set).unwrap();
        let back: Jwks = serde_json::from_str(&json).unwrap();
        assert_eq!(back.public_keys(), vec![("k1".to_string(), pk)]);
        let mut bad = Jwk::ed25519("k2", &pk);
        bad.crv = "X25519".into();
        assert_eq!(bad.public_key(), None);
    }
}
