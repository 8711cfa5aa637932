//! Handshake frames and their encoding.
//!
//! A frame is an 8-byte header — magic `PC`, protocol version, frame type, body length as a
//! big-endian `u32` — followed by a UTF-8 JSON object of exactly that length. The length is
//! checked against a hard limit before any body byte is read, so a peer cannot make the other
//! side allocate more than [`MAX_FRAME_LEN`].
//!
//! **Versions.** Receivers refuse unknown fields, so a new field, even an optional one, needs
//! a new version: a receiver of the old version would refuse the frame as malformed. Version 2
//! adds [`HelloAck::assertions`] (the keys that verify identity assertions). CHALLENGE is
//! always sent as version [`MIN_VERSION`] so every service can read the list of versions the
//! gateway accepts; the service then picks one and every later frame of the handshake, in both
//! directions, carries it. Version 3 adds the Ed25519 credential ([`Credential::Ed25519`],
//! signing [`crate::proof`]'s bytes), the pairing answer ([`Reject::pairing`]) and the REJECT
//! codes `pairing_required`, `pairing_denied` and `stale_timestamp`; none of them may appear in
//! an older version's frame. Version 4 adds [`Hello::sessions`]: the instance serves pinned
//! sessions over [`crate::SESSIONS_PATH`] streams.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::descriptor::{EndpointDescriptor, MAX_ENDPOINTS};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"PC";
/// The newest protocol version this crate speaks; what a service sends when the gateway
/// accepts it.
pub const VERSION: u8 = 4;
/// The oldest protocol version this crate still decodes (a gateway accepts services of every
/// version from this one to [`VERSION`]).
pub const MIN_VERSION: u8 = 1;
/// Every version this crate speaks, oldest first, as a gateway lists them in CHALLENGE.
pub const VERSIONS: [u8; 4] = [MIN_VERSION, 2, ED25519_VERSION, VERSION];
/// The first version with the Ed25519 credential and pairing.
pub const ED25519_VERSION: u8 = 3;
/// The first version with [`Hello::sessions`].
pub const SESSIONS_VERSION: u8 = 4;
/// Most sessions an instance may declare it serves at once ([`SessionsDecl::max_sessions`]).
pub const MAX_DECLARED_SESSIONS: u32 = 65_536;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Hard upper bound of a frame body. Receivers may enforce a lower one.
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;

/// Frame type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// gateway → service: nonce and server time.
    Challenge = 1,
    /// service → gateway: who it is, what it serves, its credential.
    Hello = 2,
    /// gateway → service: accepted; HTTP/2 follows.
    HelloAck = 3,
    /// either direction: refused, with a code; the connection closes after it.
    Reject = 4,
}

impl FrameType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Challenge,
            2 => Self::Hello,
            3 => Self::HelloAck,
            4 => Self::Reject,
            _ => return None,
        })
    }
}

/// Why bytes could not be turned into a frame. Each maps to the [`RejectCode`] the receiver
/// answers with, see [`DecodeError::reject_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first two bytes are not [`MAGIC`].
    #[error("bad magic bytes")]
    BadMagic,
    /// The peer speaks a version this side does not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The type byte names no frame.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The announced body is longer than the limit.
    #[error("frame body of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// Limit in force.
        limit: u32,
    },
    /// The body is not the JSON object the type calls for, or a field is out of bounds.
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// Frame type name.
        frame: &'static str,
        /// What is wrong, without echoing peer bytes.
        reason: String,
    },
    /// Fewer bytes than a header, or than the header announced.
    #[error("truncated frame")]
    Truncated,
}

impl DecodeError {
    /// The REJECT code a receiver answers this error with.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::UnsupportedVersion(_) => RejectCode::UnsupportedVersion,
            Self::TooLarge { .. } => RejectCode::TooLarge,
            _ => RejectCode::MalformedFrame,
        }
    }
}

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version of the frame.
    pub version: u8,
    /// Frame type.
    pub frame_type: FrameType,
    /// Body length that follows the header.
    pub len: u32,
}

impl FrameHeader {
    /// Parse and check a header against `limit` (capped at [`MAX_FRAME_LEN`]). The version is
    /// checked before the type so a peer from the future gets `UnsupportedVersion`, not a
    /// confusing type error. Every version from [`MIN_VERSION`] to [`VERSION`] is accepted;
    /// which one a peer may use at a given point is the handshake's business.
    pub fn parse(bytes: &[u8; HEADER_LEN], limit: u32) -> Result<Self, DecodeError> {
        if bytes[0..2] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = bytes[2];
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let frame_type = FrameType::from_u8(bytes[3]).ok_or(DecodeError::UnknownType(bytes[3]))?;
        let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let limit = limit.min(MAX_FRAME_LEN);
        if len > limit {
            return Err(DecodeError::TooLarge { len, limit });
        }
        Ok(Self {
            version,
            frame_type,
            len,
        })
    }
}

/// gateway → service, first frame on every link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// 32 random bytes, lowercase hex. Used once.
    pub nonce: String,
    /// Gateway wall-clock time, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// Protocol versions the gateway accepts.
    pub versions: Vec<u8>,
}

/// How a service proves who it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    /// A static per-service token from the gateway configuration.
    Token {
        /// The token itself. Never logged: `Debug` masks it.
        token: String,
    },
    /// Version 3: an Ed25519 key the instance holds, proving possession by signing the bytes
    /// of [`crate::proof::Proof`] (the CHALLENGE's nonce, its own fresh `nonce`,
    /// `timestamp_ms`, its service and instance, and under TLS the exporter value). An unknown
    /// key starts a pairing (docs/link-protocol.md §10).
    Ed25519 {
        /// The public key, 64 lowercase hex characters (32 bytes).
        public_key: String,
        /// The service's fresh nonce, 64 hex characters (32 random bytes), never reused.
        nonce: String,
        /// The service's wall clock when it signed, Unix milliseconds.
        timestamp_ms: u64,
        /// The Ed25519 signature of the proof bytes, 128 hex characters (64 bytes).
        signature: String,
    },
    /// Version 3: nothing beyond the TLS client certificate the connection presented (for a
    /// service whose only required credential is mTLS).
    TlsClientCertificate {},
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token { .. } => f.write_str("Credential::Token(***)"),
            // The public key is public; the nonce and signature are single-use but are kept
            // out of logs all the same (a logged HELLO is a replayable HELLO).
            Self::Ed25519 { public_key, .. } => {
                write!(f, "Credential::Ed25519({public_key}, ***)")
            }
            Self::TlsClientCertificate {} => f.write_str("Credential::TlsClientCertificate"),
        }
    }
}

/// Is `s` exactly `2 * n` lowercase hex digits?
pub(crate) fn is_hex(s: &str, n: usize) -> bool {
    s.len() == 2 * n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// service → gateway: identity, endpoints and credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Service name, `[a-z0-9-]{1,63}`.
    pub service: String,
    /// Instance id, unique per running instance, `[A-Za-z0-9._-]{1,128}`.
    pub instance_id: String,
    /// Version of the service build (free text, at most 64 bytes).
    pub version: String,
    /// Region the instance runs in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoints this instance serves.
    pub endpoints: Vec<EndpointDescriptor>,
    /// OpenAPI document of the service, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<serde_json::Value>,
    /// Proof of identity.
    pub credential: Credential,
    /// Version 4: the instance serves pinned sessions (`docs/link-protocol.md` §6.6). Absent
    /// (the default, and the only choice before version 4): it serves none and is never
    /// pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsDecl>,
}

/// What an instance declares about the pinned sessions it serves. The command kinds and the
/// capabilities they need come in each session's own hello (`docs/worker-protocol.md` §4),
/// as from a process worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsDecl {
    /// Sessions the instance takes at once on this link, 1..=[`MAX_DECLARED_SESSIONS`]. The
    /// gateway pins at most this many (and at most its own per-instance limit).
    pub max_sessions: u32,
}

/// Limits the gateway imposes on the link, sent in HELLO_ACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLimits {
    /// Concurrent HTTP/2 streams the gateway will open on this link.
    pub max_concurrent_streams: u32,
    /// Largest request body the gateway forwards, in bytes.
    pub max_request_body: u64,
}

/// gateway → service: accepted. The next bytes on the connection are HTTP/2, gateway as client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloAck {
    /// Id the gateway gave this link; appears in its logs and admin API.
    pub link_id: String,
    /// How often the gateway pings and asks for health, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Limits in force on the link.
    pub limits: LinkLimits,
    /// Version 2: who signs the identity assertions on this link's calls and the public keys
    /// that verify them. Absent in version 1 (refused there, like any unknown field), and
    /// from a gateway that has no signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertions: Option<AssertionKeys>,
}

/// How a service verifies the identity assertions (`x-portcullis-identity`) of a link's calls:
/// the issuer they name and the public keys they are signed with. Later key changes arrive as
/// a `PUT` of a new [`Jwks`](crate::jws::Jwks) to [`KEYS_PATH`](crate::KEYS_PATH).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionKeys {
    /// The `iss` every assertion carries: 1–128 of `[A-Za-z0-9._-]`.
    pub issuer: String,
    /// The keys that verify assertions now, at most [`MAX_JWKS_KEYS`](crate::jws::MAX_JWKS_KEYS).
    pub keys: crate::jws::Jwks,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The frame's version is not one the receiver speaks.
    UnsupportedVersion,
    /// Bytes that are not a well-formed frame of the expected type.
    MalformedFrame,
    /// The credential is missing, unknown or wrong.
    BadCredential,
    /// Another link for the same instance id is live and this one could not replace it.
    DuplicateInstance,
    /// The frame exceeds the size limit.
    TooLarge,
    /// An endpoint clashes with one another service already serves.
    RouteConflict,
    /// An endpoint descriptor is invalid (bad method, template or timeout).
    InvalidDescriptor,
    /// The gateway is shutting down or over capacity; retry after the given delay.
    Unavailable,
    /// The handshake took too long.
    Timeout,
    /// Version 3: the key is not enrolled; a pairing is pending ([`Reject::pairing`] has its
    /// code). Retry with backoff: the next HELLO links once an admin has approved it.
    PairingRequired,
    /// Version 3: an admin denied this key's pairing. The same key will never link.
    PairingDenied,
    /// Version 3: the signed timestamp is outside the gateway's allowed clock skew.
    StaleTimestamp,
}

impl RejectCode {
    /// Stable lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::MalformedFrame => "malformed_frame",
            Self::BadCredential => "bad_credential",
            Self::DuplicateInstance => "duplicate_instance",
            Self::TooLarge => "too_large",
            Self::RouteConflict => "route_conflict",
            Self::InvalidDescriptor => "invalid_descriptor",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::PairingRequired => "pairing_required",
            Self::PairingDenied => "pairing_denied",
            Self::StaleTimestamp => "stale_timestamp",
        }
    }

    /// The first protocol version that has this code.
    pub fn since_version(self) -> u8 {
        match self {
            Self::PairingRequired | Self::PairingDenied | Self::StaleTimestamp => ED25519_VERSION,
            _ => MIN_VERSION,
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusal; the sender closes the connection after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// Machine-readable reason.
    pub code: RejectCode,
    /// Human-readable detail. Never contains secrets.
    #[serde(default)]
    pub message: String,
    /// When set, the peer should wait this long before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Version 3, with `pairing_required` only: the pending pairing to show the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<PairingPrompt>,
}

/// A pending pairing as the gateway tells the instance about it: what its operator reads to
/// an admin, who approves it with `portcullis pairings approve CODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingPrompt {
    /// The pairing code: [`PAIRING_CODE_LEN`] characters of [`PAIRING_ALPHABET`].
    pub code: String,
    /// When the pairing expires unless approved, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The key's fingerprint ([`crate::proof::fingerprint`]), for the admin to compare.
    pub fingerprint: String,
}

/// Length of a pairing code.
pub const PAIRING_CODE_LEN: usize = 8;
/// The characters of pairing codes: digits and upper-case letters without the ones people
/// confuse (`0`/`O`, `1`/`I`/`L`).
pub const PAIRING_ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Is `s` a well-formed pairing code?
pub fn valid_pairing_code(s: &str) -> bool {
    s.len() == PAIRING_CODE_LEN && s.bytes().all(|b| PAIRING_ALPHABET.contains(&b))
}

/// One handshake frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// See [`Challenge`].
    Challenge(Challenge),
    /// See [`Hello`].
    Hello(Box<Hello>),
    /// See [`HelloAck`].
    HelloAck(HelloAck),
    /// See [`Reject`].
    Reject(Reject),
}

const MAX_STRING: usize = 1024;

impl Frame {
    /// The type byte of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Challenge(_) => FrameType::Challenge,
            Self::Hello(_) => FrameType::Hello,
            Self::HelloAck(_) => FrameType::HelloAck,
            Self::Reject(_) => FrameType::Reject,
        }
    }

    /// Encode header and body: CHALLENGE as [`MIN_VERSION`] (every service must be able to
    /// read it), any other frame as [`VERSION`]. Fails only if the body would exceed
    /// [`MAX_FRAME_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let version = match self {
            Self::Challenge(_) => MIN_VERSION,
            _ => VERSION,
        };
        self.encode_as(version)
    }

    /// Encode header and body as protocol `version`. Fails if the version is not one this
    /// crate speaks, if the frame has a field that version lacks, or if the body would exceed
    /// [`MAX_FRAME_LEN`].
    pub fn encode_as(&self, version: u8) -> Result<Vec<u8>, DecodeError> {
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        self.check_version(version)
            .map_err(|reason| DecodeError::Malformed {
                frame: self.name(),
                reason,
            })?;
        let body = match self {
            Self::Challenge(c) => serde_json::to_vec(c),
            Self::Hello(h) => serde_json::to_vec(h),
            Self::HelloAck(a) => serde_json::to_vec(a),
            Self::Reject(r) => serde_json::to_vec(r),
        }
        .map_err(|e| DecodeError::Malformed {
            frame: self.name(),
            reason: e.to_string(),
        })?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME_LEN)
            .ok_or(DecodeError::TooLarge {
                len: u32::try_from(body.len()).unwrap_or(u32::MAX),
                limit: MAX_FRAME_LEN,
            })?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.push(version);
        out.push(self.frame_type() as u8);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn name(&self) -> &'static str {
        type_name(self.frame_type())
    }

    /// Decode the body that followed `header`. `body.len()` must equal `header.len`.
    pub fn decode_body(header: &FrameHeader, body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() != header.len as usize {
            return Err(DecodeError::Truncated);
        }
        let frame = type_name(header.frame_type);
        let malformed = |reason: String| DecodeError::Malformed { frame, reason };
        let f = match header.frame_type {
            FrameType::Challenge => Self::Challenge(json_body(frame, body)?),
            FrameType::Hello => Self::Hello(Box::new(json_body(frame, body)?)),
            FrameType::HelloAck => Self::HelloAck(json_body(frame, body)?),
            FrameType::Reject => Self::Reject(json_body(frame, body)?),
        };
        f.check_version(header.version).map_err(&malformed)?;
        f.check_bounds().map_err(malformed)?;
        Ok(f)
    }

    /// Fields a version does not have are unknown fields there, and refused as such.
    fn check_version(&self, version: u8) -> Result<(), String> {
        match self {
            Self::HelloAck(a) if version < 2 && a.assertions.is_some() => {
                Err("unknown field `assertions` in version 1".into())
            }
            Self::Hello(h)
                if version < ED25519_VERSION
                    && !matches!(h.credential, Credential::Token { .. }) =>
            {
                Err(format!("unknown credential type in version {version}"))
            }
            Self::Hello(h) if version < SESSIONS_VERSION && h.sessions.is_some() => {
                Err(format!("unknown field `sessions` in version {version}"))
            }
            Self::Reject(r) if version < r.code.since_version() => Err(format!(
                "unknown code `{}` in version {version}",
                r.code.as_str()
            )),
            Self::Reject(r) if version < ED25519_VERSION && r.pairing.is_some() => {
                Err(format!("unknown field `pairing` in version {version}"))
            }
            _ => Ok(()),
        }
    }

    /// Decode a whole frame from `bytes` (header and body, nothing after). Convenience for
    /// tests and fuzzing; streaming readers use [`FrameHeader::parse`] and
    /// [`Frame::decode_body`].
    pub fn decode(bytes: &[u8], limit: u32) -> Result<Self, DecodeError> {
        let head: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::Truncated)?;
        let header = FrameHeader::parse(head, limit)?;
        Self::decode_body(&header, &bytes[HEADER_LEN..])
    }

    /// Field-level bounds that JSON alone does not express.
    fn check_bounds(&self) -> Result<(), String> {
        match self {
            Self::Challenge(c) => {
                if c.nonce.len() != 64 || !c.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("nonce must be 64 hex characters".into());
                }
                if c.versions.len() > 16 {
                    return Err("too many versions".into());
                }
            }
            Self::Hello(h) => {
                if !crate::valid_service_name(&h.service) {
                    return Err("service must be 1-63 of [a-z0-9-]".into());
                }
                if !crate::valid_token(&h.instance_id) {
                    return Err("instance_id must be 1-128 of [A-Za-z0-9._-]".into());
                }
                if h.version.len() > 64 {
                    return Err("version longer than 64 bytes".into());
                }
                if h.region.as_ref().is_some_and(|r| !crate::valid_token(r)) {
                    return Err("region must be 1-128 of [A-Za-z0-9._-]".into());
                }
                if let Some(d) = &h.sessions {
                    if !(1..=MAX_DECLARED_SESSIONS).contains(&d.max_sessions) {
                        return Err(format!(
                            "sessions.max_sessions must be 1-{MAX_DECLARED_SESSIONS}"
                        ));
                    }
                }
                if h.endpoints.len() > MAX_ENDPOINTS {
                    return Err(format!("more than {MAX_ENDPOINTS} endpoints"));
                }
                match &h.credential {
                    Credential::Token { token } => {
                        if token.len() > MAX_STRING {
                            return Err("credential too long".into());
                        }
                    }
                    Credential::Ed25519 {
                        public_key,
                        nonce,
                        signature,
                        ..
                    } => {
                        if !is_hex(public_key, 32) {
                            return Err("public_key must be 64 lowercase hex characters".into());
                        }
                        if !is_hex(nonce, 32) {
                            return Err("nonce must be 64 lowercase hex characters".into());
                        }
                        if !is_hex(signature, 64) {
                            return Err("signature must be 128 lowercase hex characters".into());
                        }
                    }
                    Credential::TlsClientCertificate {} => {}
                }
            }
            Self::HelloAck(a) => {
                if !crate::valid_token(&a.link_id) {
                    return Err("link_id must be 1-128 of [A-Za-z0-9._-]".into());
                }
                if let Some(k) = &a.assertions {
                    if !crate::valid_token(&k.issuer) {
                        return Err("assertions.issuer must be 1-128 of [A-Za-z0-9._-]".into());
                    }
                    if k.keys.keys.len() > crate::jws::MAX_JWKS_KEYS {
                        return Err(format!(
                            "more than {} assertion keys",
                            crate::jws::MAX_JWKS_KEYS
                        ));
                    }
                }
            }
            Self::Reject(r) => {
                if r.message.len() > MAX_STRING {
                    return Err("message too long".into());
                }
                if let Some(p) = &r.pairing {
                    if r.code != RejectCode::PairingRequired {
                        return Err("pairing only with code pairing_required".into());
                    }
                    if !valid_pairing_code(&p.code) {
                        return Err("pairing.code is not a pairing code".into());
                    }
                    if p.fingerprint.len() > 128 {
                        return Err("pairing.fingerprint longer than 128 bytes".into());
                    }
                }
            }
        }
        Ok(())
    }
}

fn type_name(t: FrameType) -> &'static str {
    t.name()
}

impl FrameType {
    /// The frame's name as the specification writes it: `CHALLENGE`, `HELLO`, `HELLO_ACK`,
    /// `REJECT`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Challenge => "CHALLENGE",
            Self::Hello => "HELLO",
            Self::HelloAck => "HELLO_ACK",
            Self::Reject => "REJECT",
        }
    }
}

/// Longest piece of a peer's frame a decode error quotes (a field name, a value), in
/// characters; longer ones are cut and end in `…`.
pub const MAX_QUOTED: usize = 64;

/// Longest reason of a [`DecodeError::Malformed`], in characters: a REJECT's message and a
/// log line stay short whatever the peer sent.
const MAX_REASON: usize = 256;

/// Decode one JSON body, saying on failure which field is wrong and how: `unknown field
/// \`x\`` (with the fields expected there), `missing field \`version\``, `invalid type:
/// string "…", expected u64 at \`endpoints[0].timeout_ms\``, or a syntax error with its
/// column. Whatever of the peer's bytes the message quotes is cut to [`MAX_QUOTED`]
/// characters and has its control characters escaped.
fn json_body<T: serde::de::DeserializeOwned>(
    frame: &'static str,
    body: &[u8],
) -> Result<T, DecodeError> {
    let malformed = |reason| DecodeError::Malformed { frame, reason };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| malformed(json_reason(e.inner(), Some(e.path()))))?;
    // Trailing bytes after the object.
    de.end().map_err(|e| malformed(json_reason(&e, None)))?;
    Ok(value)
}

/// The reason of a failed decode at `path`, bounded: see [`json_body`].
fn json_reason(inner: &serde_json::Error, path: Option<&serde_path_to_error::Path>) -> String {
    use serde_json::error::Category;
    // serde_json appends " at line L column C"; the column is kept, the line is always 1 for
    // a frame a conforming peer wrote, and both are the decoder's, not the peer's, bytes.
    let text = inner.to_string();
    let what = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => text.as_str(),
    };
    let mut reason = match inner.classify() {
        Category::Syntax | Category::Eof => {
            // The column says where; a path is only a guess inside broken JSON.
            return sanitize(
                &format!("syntax error ({what}) at column {}", inner.column()),
                MAX_REASON,
            );
        }
        Category::Data | Category::Io => bounded_quotes(what),
    };
    let path = path.map(ToString::to_string).unwrap_or_default();
    if !matches!(path.as_str(), "" | "." | "?") {
        reason.push_str(" at `");
        reason.push_str(&sanitize(&path, MAX_QUOTED));
        reason.push('`');
    }
    sanitize(&reason, MAX_REASON)
}

/// `msg` with every quoted piece (between backticks, or between double quotes) cut to
/// [`MAX_QUOTED`] characters: serde quotes the peer's field names and string values whole.
fn bounded_quotes(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(MAX_REASON * 2));
    let mut quote: Option<char> = None;
    let mut quoted = 0usize;
    // Inside double quotes serde writes Rust's escapes (`\"`): they do not end the quote.
    let mut escaped = false;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q && !escaped => {
                quote = None;
                out.push(c);
            }
            Some(q) => {
                escaped = q == '"' && c == '\\' && !escaped;
                quoted += 1;
                if quoted <= MAX_QUOTED {
                    out.push(c);
                } else if quoted == MAX_QUOTED + 1 {
                    out.push('…');
                }
            }
            None => {
                if c == '`' || c == '"' {
                    quote = Some(c);
                    quoted = 0;
                }
                out.push(c);
            }
        }
    }
    out
}

/// The service a HELLO body claims, for the log line of its refusal when the body does not
/// decode: its `service` string if it has one, whatever else is wrong, sanitised and cut to
/// 63 characters (the longest valid name). `None` when the body is not a JSON object with a
/// string `service`.
pub fn claimed_service(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Claim {
        service: Option<String>,
    }
    let claim: Claim = serde_json::from_slice(body).ok()?;
    claim.service.map(|s| sanitize(&s, 63))
}

/// `s` with control characters escaped, cut to `max` characters (then `…`): safe to put in
/// a REJECT message or a log line.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 4));
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Protocol;
    use proptest::prelude::*;

    fn hello() -> Frame {
        Frame::Hello(Box::new(Hello {
            service: "echo".into(),
            instance_id: "echo-1".into(),
            version: "1.0.0".into(),
            region: Some("eu-west".into()),
            endpoints: vec![EndpointDescriptor {
                method: "GET".into(),
                path: "/echo/{*rest}".into(),
                timeout_ms: Some(1000),
                streaming: false,
                capability: Some("echo.read".into()),
                protocol: Protocol::Http,
                workspace_scoped: false,
            }],
            openapi: None,
            sessions: None,
            credential: Credential::Token {
                token: "secret".into(),
            },
        }))
    }

    #[test]
    fn round_trip_every_type() {
        let frames = vec![
            Frame::Challenge(Challenge {
                nonce: "ab".repeat(32),
                server_time_ms: 1,
                versions: vec![1],
            }),
            hello(),
            Frame::HelloAck(HelloAck {
                link_id: "l-1".into(),
                heartbeat_interval_ms: 5000,
                limits: LinkLimits {
                    max_concurrent_streams: 100,
                    max_request_body: 1 << 20,
                },
                assertions: None,
            }),
            ack_with_keys(),
            Frame::Reject(Reject {
                code: RejectCode::RouteConflict,
                message: "GET /x is served by other".into(),
                retry_after_ms: Some(10),
                pairing: None,
            }),
            Frame::Reject(Reject {
                code: RejectCode::PairingRequired,
                message: "approve the pairing".into(),
                retry_after_ms: Some(5000),
                pairing: Some(PairingPrompt {
                    code: "ABCD2345".into(),
                    expires_at_ms: 9,
                    fingerprint: "SHA256:x".into(),
                }),
            }),
            ed25519_hello(),
        ];
        for f in frames {
            let bytes = f.encode().unwrap();
            assert_eq!(Frame::decode(&bytes, MAX_FRAME_LEN).unwrap(), f);
        }
    }

    fn ed25519_hello() -> Frame {
        let Frame::Hello(mut h) = hello() else {
            unreachable!()
        };
        h.credential = Credential::Ed25519 {
            public_key: "ab".repeat(32),
            nonce: "01".repeat(32),
            timestamp_ms: 1_700_000_000_000,
            signature: "cd".repeat(64),
        };
        Frame::Hello(h)
    }

    /// Version 3's credential, codes and pairing field are unknown to older receivers: they
    /// cannot be encoded as, and are refused in, a version 1 or 2 frame.
    #[test]
    fn ed25519_and_pairing_exist_from_version_3_on() {
        let reject = Frame::Reject(Reject {
            code: RejectCode::PairingRequired,
            message: String::new(),
            retry_after_ms: None,
            pairing: None,
        });
        for f in [ed25519_hello(), reject] {
            for v in [1, 2] {
                assert!(
                    matches!(f.encode_as(v), Err(DecodeError::Malformed { .. })),
                    "{f:?} as {v}"
                );
                let mut bytes = f.encode_as(3).unwrap();
                bytes[2] = v;
                assert_eq!(
                    Frame::decode(&bytes, MAX_FRAME_LEN)
                        .unwrap_err()
                        .reject_code(),
                    RejectCode::MalformedFrame
                );
            }
            let bytes = f.encode_as(3).unwrap();
            assert_eq!(Frame::decode(&bytes, MAX_FRAME_LEN).unwrap(), f);
        }
        // The older codes stay encodable in every version.
        let old = Frame::Reject(Reject {
            code: RejectCode::BadCredential,
            message: String::new(),
            retry_after_ms: None,
            pairing: None,
        });
        for v in VERSIONS {
            assert!(old.encode_as(v).is_ok());
        }
    }

    #[test]
    fn sessions_are_a_version_4_field_and_an_old_hello_without_them_is_unchanged() {
        // A HELLO without the field encodes byte for byte as before: no `sessions` member.
        let old = hello().encode_as(3).unwrap();
        assert!(!String::from_utf8_lossy(&old).contains("sessions"));
        assert_eq!(Frame::decode(&old, MAX_FRAME_LEN).unwrap(), hello());
        let Frame::Hello(mut h) = hello() else {
            unreachable!()
        };
        h.sessions = Some(SessionsDecl { max_sessions: 8 });
        let f = Frame::Hello(h.clone());
        let v4 = f.encode_as(SESSIONS_VERSION).unwrap();
        assert_eq!(Frame::decode(&v4, MAX_FRAME_LEN).unwrap(), f);
        for v in [1, 2, 3] {
            assert!(f.encode_as(v).is_err(), "version {v} has no sessions field");
            // A version 3 frame carrying the member is refused like any unknown field.
            let mut forged = v4.clone();
            forged[2] = v;
            assert!(matches!(
                Frame::decode(&forged, MAX_FRAME_LEN),
                Err(DecodeError::Malformed { .. })
            ));
        }
        for bad in [0, MAX_DECLARED_SESSIONS + 1] {
            h.sessions = Some(SessionsDecl { max_sessions: bad });
            let bytes = Frame::Hello(h.clone()).encode_as(SESSIONS_VERSION);
            let refused = match bytes {
                Ok(b) => Frame::decode(&b, MAX_FRAME_LEN).is_err(),
                Err(_) => true,
            };
            assert!(refused, "max_sessions {bad}");
        }
    }

    #[test]
    fn ed25519_credential_fields_are_bounded_and_masked() {
        let Frame::Hello(mut h) = ed25519_hello() else {
            unreachable!()
        };
        assert!(!format!("{h:?}").contains(&"01".repeat(32)));
        h.credential = Credential::Ed25519 {
            public_key: "AB".repeat(32),
            nonce: "01".repeat(32),
            timestamp_ms: 0,
            signature: "cd".repeat(64),
        };
        let bytes = Frame::Hello(h).encode().unwrap();
        assert!(matches!(
            Frame::decode(&bytes, MAX_FRAME_LEN),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(valid_pairing_code("ABCD2345"));
        assert!(!valid_pairing_code("ABCD0345"));
        assert!(!valid_pairing_code("abcd2345"));
        assert!(!valid_pairing_code("ABCD234"));
    }

    fn ack_with_keys() -> Frame {
        Frame::HelloAck(HelloAck {
            link_id: "l-2".into(),
            heartbeat_interval_ms: 5000,
            limits: LinkLimits {
                max_concurrent_streams: 100,
                max_request_body: 1 << 20,
            },
            assertions: Some(AssertionKeys {
                issuer: "portcullis".into(),
                keys: crate::jws::Jwks {
                    keys: vec![crate::jws::Jwk::ed25519("k1", &[7u8; 32])],
                },
            }),
        })
    }

    #[test]
    fn challenge_goes_out_as_the_oldest_version_and_the_rest_as_the_newest() {
        let c = Frame::Challenge(Challenge {
            nonce: "ab".repeat(32),
            server_time_ms: 1,
            versions: VERSIONS.to_vec(),
        });
        assert_eq!(c.encode().unwrap()[2], MIN_VERSION);
        assert_eq!(hello().encode().unwrap()[2], VERSION);
        let v1 = hello().encode_as(1).unwrap();
        assert_eq!(v1[2], 1);
        assert_eq!(Frame::decode(&v1, MAX_FRAME_LEN).unwrap(), hello());
        assert_eq!(
            hello().encode_as(VERSION + 1).unwrap_err(),
            DecodeError::UnsupportedVersion(VERSION + 1)
        );
    }

    /// Version 1 receivers refuse unknown fields: a version 1 HELLO_ACK never carries the
    /// assertion keys, and one that does is refused like any unknown field.
    #[test]
    fn assertion_keys_exist_from_version_2_on() {
        let ack = ack_with_keys();
        let v2 = ack.encode_as(2).unwrap();
        assert_eq!(Frame::decode(&v2, MAX_FRAME_LEN).unwrap(), ack);
        assert!(matches!(
            ack.encode_as(1),
            Err(DecodeError::Malformed { .. })
        ));
        let mut v1 = v2.clone();
        v1[2] = 1;
        let e = Frame::decode(&v1, MAX_FRAME_LEN).unwrap_err();
        assert_eq!(e.reject_code(), RejectCode::MalformedFrame, "{e}");
        // Without the field, a version 1 HELLO_ACK decodes and a version 2 one too.
        let Frame::HelloAck(mut plain) = ack else {
            unreachable!()
        };
        plain.assertions = None;
        for v in VERSIONS {
            let bytes = Frame::HelloAck(plain.clone()).encode_as(v).unwrap();
            assert_eq!(
                Frame::decode(&bytes, MAX_FRAME_LEN).unwrap(),
                Frame::HelloAck(plain.clone())
            );
        }
    }

    #[test]
    fn assertion_keys_are_bounded() {
        let Frame::HelloAck(mut a) = ack_with_keys() else {
            unreachable!()
        };
        let keys = a.assertions.as_mut().unwrap();
        keys.keys.keys = (0..=crate::jws::MAX_JWKS_KEYS)
            .map(|i| crate::jws::Jwk::ed25519(&format!("k{i}"), &[1u8; 32]))
            .collect();
        let bytes = Frame::HelloAck(a.clone()).encode().unwrap();
        assert!(matches!(
            Frame::decode(&bytes, MAX_FRAME_LEN),
            Err(DecodeError::Malformed { .. })
        ));
        let keys = a.assertions.as_mut().unwrap();
        keys.keys.keys.truncate(1);
        keys.issuer = "bad issuer".into();
        let bytes = Frame::HelloAck(a).encode().unwrap();
        assert!(matches!(
            Frame::decode(&bytes, MAX_FRAME_LEN),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn header_errors_have_their_codes() {
        let mut bytes = hello().encode().unwrap();
        bytes[2] = 9;
        let e = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedVersion(9));
        assert_eq!(e.reject_code(), RejectCode::UnsupportedVersion);

        let bytes = hello().encode().unwrap();
        let e = Frame::decode(&bytes, 10).unwrap_err();
        assert_eq!(e.reject_code(), RejectCode::TooLarge);

        let mut bytes = hello().encode().unwrap();
        bytes[0] = b'G';
        assert_eq!(
            Frame::decode(&bytes, MAX_FRAME_LEN).unwrap_err(),
            DecodeError::BadMagic
        );

        let mut bytes = hello().encode().unwrap();
        bytes[3] = 77;
        assert_eq!(
            Frame::decode(&bytes, MAX_FRAME_LEN)
                .unwrap_err()
                .reject_code(),
            RejectCode::MalformedFrame
        );
    }

    #[test]
    fn credential_debug_is_masked() {
        let s = format!("{:?}", hello());
        assert!(!s.contains("secret"), "{s}");
    }

    /// A HELLO body as raw JSON behind a valid header, decoded; the error's text.
    fn hello_error(json: &str) -> String {
        let mut bytes = Vec::from(MAGIC);
        bytes.extend([VERSION, FrameType::Hello as u8]);
        bytes.extend(u32::try_from(json.len()).unwrap().to_be_bytes());
        bytes.extend(json.as_bytes());
        let e = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap_err();
        assert_eq!(e.reject_code(), RejectCode::MalformedFrame, "{e}");
        e.to_string()
    }

    const CREDENTIAL: &str = r#""credential":{"type":"token","token":"t"}"#;

    #[test]
    fn an_unknown_field_is_named_with_the_fields_expected() {
        let e = hello_error(&format!(
            r#"{{"service":"a","instance_id":"a-1","version":"1","endpoints":[],{CREDENTIAL},"colour":"red"}}"#
        ));
        assert!(
            e.starts_with(
                "malformed HELLO frame: unknown field `colour`, expected one of `service`"
            ),
            "{e}"
        );
        assert!(!e.contains("column"), "{e}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = hello_error(&format!(
            r#"{{"service":"a","instance_id":"a-1","endpoints":[],{CREDENTIAL}}}"#
        ));
        assert_eq!(e, "malformed HELLO frame: missing field `version`");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_path_and_the_type_expected() {
        let e = hello_error(&format!(
            r#"{{"service":"a","instance_id":"a-1","version":"1","endpoints":[{{"method":"GET","path":"/x","timeout_ms":"soon"}}],{CREDENTIAL}}}"#
        ));
        assert_eq!(
            e,
            "malformed HELLO frame: invalid type: string \"soon\", expected u64 at `endpoints[0].timeout_ms`"
        );
    }

    #[test]
    fn a_syntax_error_gives_its_column() {
        let e = hello_error(r#"{"service":"a" "instance_id""#);
        assert_eq!(
            e,
            "malformed HELLO frame: syntax error (expected `,` or `}`) at column 16"
        );
    }

    #[test]
    fn what_a_decode_error_quotes_of_the_peer_is_bounded_and_escaped() {
        let long = "x".repeat(10_000);
        let e = hello_error(&format!(r#"{{"{long}\u0007\n":1}}"#));
        assert!(
            e.contains(&format!("unknown field `{}…`", "x".repeat(MAX_QUOTED))),
            "{e}"
        );
        assert!(e.chars().count() < 400, "{} chars", e.chars().count());
        let e = hello_error(&format!(r#"{{"service":"a\"{long}","instance_id":7}}"#));
        assert!(e.chars().count() < 400, "{} chars", e.chars().count());
        let e = hello_error(r#"{"bell\u0007\nnext":7}"#);
        assert!(!e.contains('\u{7}') && !e.contains('\n'), "{e:?}");
        assert!(e.contains("unknown field `bell"), "{e}");
    }

    #[test]
    fn bounds_are_checked() {
        let Frame::Hello(mut h) = hello() else {
            unreachable!()
        };
        h.service = "Bad Name".into();
        let bytes = Frame::Hello(h).encode().unwrap();
        assert!(matches!(
            Frame::decode(&bytes, MAX_FRAME_LEN),
            Err(DecodeError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&bytes, MAX_FRAME_LEN);
        }

        #[test]
        fn decode_never_panics_behind_valid_header(
            t in 0u8..6, body in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&MAGIC);
            bytes.push(VERSION);
            bytes.push(t);
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&body);
            let _ = Frame::decode(&bytes, MAX_FRAME_LEN);
        }

        #[test]
        fn json_shaped_bodies_never_panic(s in "\\{\"[a-z_]{1,12}\":(\"[ -~]{0,20}\"|[0-9]{1,25}|\\[\\]|null|true)\\}") {
            for t in 1u8..=4 {
                let mut bytes = Vec::new();
                bytes.extend_from_slice(&MAGIC);
                bytes.push(VERSION);
                bytes.push(t);
                bytes.extend_from_slice(&(s.len() as u32).to_be_bytes());
                bytes.extend_from_slice(s.as_bytes());
                let _ = Frame::decode(&bytes, MAX_FRAME_LEN);
            }
        }

        #[test]
        fn hello_round_trips(service in "[a-z0-9]{1,20}", inst in "[A-Za-z0-9._-]{1,40}", n in 0usize..5) {
            let Frame::Hello(mut h) = hello() else { unreachable!() };
            h.service = service;
            h.instance_id = inst;
            h.endpoints = (0..n).map(|i| EndpointDescriptor {
                method: "POST".into(), path: format!("/p/{i}/{{id}}"), timeout_ms: None,
                streaming: true, capability: None, protocol: Protocol::Grpc, workspace_scoped: i % 2 == 0,
            }).collect();
            let f = Frame::Hello(h);
            let bytes = f.encode().unwrap();
            prop_assert_eq!(Frame::decode(&bytes, MAX_FRAME_LEN).unwrap(), f);
        }
    }
}
