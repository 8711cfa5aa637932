//! The Portcullis link protocol: the bytes a service and the gateway exchange before the
//! connection turns into HTTP/2 with the roles reversed.
//!
//! This crate owns the handshake vocabulary (CHALLENGE, HELLO, HELLO_ACK, REJECT), its
//! versioned length-prefixed framing with a hard size limit, endpoint descriptors with their
//! path templates, and the constants both sides must agree on. It performs no I/O: callers read
//! exactly [`HEADER_LEN`] bytes, hand them to [`FrameHeader::parse`], read exactly
//! `header.len` more bytes and hand those to [`Frame::decode_body`]. Reading exactly what the
//! header announces matters: the first byte after HELLO_ACK belongs to HTTP/2.
//!
//! The normative description lives in `docs/link-protocol.md`.

mod descriptor;
mod frame;
pub mod jws;
pub mod proof;
pub mod shard;
mod template;
pub mod worker;

pub use descriptor::{
    find_overlap, methods_overlap, DescriptorError, EndpointDescriptor, Overlap, Protocol,
    MAX_ENDPOINTS, MAX_TIMEOUT_MS,
};
pub use frame::{
    claimed_service, sanitize, valid_pairing_code, AssertionKeys, Challenge, Credential,
    DecodeError, Frame, FrameHeader, FrameType, Hello, HelloAck, LinkLimits, PairingPrompt, Reject,
    RejectCode, ED25519_VERSION, HEADER_LEN, MAGIC, MAX_FRAME_LEN, MAX_QUOTED, MIN_VERSION,
    PAIRING_ALPHABET, PAIRING_CODE_LEN, SESSIONS_VERSION, VERSION, VERSIONS,
};
pub use frame::{SessionsDecl, MAX_DECLARED_SESSIONS};
pub use template::{PathTemplate, Segment, TemplateError};

/// Path the gateway requests over an established link for the periodic health exchange.
/// The SDK answers it itself; it never reaches the service's own router, and the gateway never
/// routes client traffic to it.
pub const HEALTH_PATH: &str = "/.well-known/portcullis/health";

/// Prefix of every path reserved for the link itself.
pub const RESERVED_PREFIX: &str = "/.well-known/portcullis/";

/// Path the gateway sends the public keys of its identity assertions to (`PUT`, a
/// [`jws::Jwks`] body) whenever they change. The SDK answers it itself (204).
pub const KEYS_PATH: &str = "/.well-known/portcullis/keys";

/// Path the gateway sends `POST` (no body) to on every link when it shuts down, once its
/// in-flight calls have finished: the link's graceful end, since an HTTP/2 client has no
/// GOAWAY of its own to send. The SDK answers 204 itself, then drains the link (GOAWAY as the
/// HTTP/2 server, open streams finish) and dials again with its backoff — a gateway restart,
/// not a crash (docs/link-protocol.md §6.3).
pub const DRAIN_PATH: &str = "/.well-known/portcullis/drain";

/// Path of a pinned session's stream (version 4): the gateway opens one `POST` here per
/// session it pins to an instance that declared [`Hello::sessions`], and the stream then
/// carries the worker protocol ([`worker`]) in both directions for the life of the session.
/// The SDK answers it itself; it never reaches the service's own router.
pub const SESSIONS_PATH: &str = "/.well-known/portcullis/sessions";

/// Largest body of a `PUT` to [`KEYS_PATH`] a service accepts, bytes. A set of
/// [`jws::MAX_JWKS_KEYS`] keys is under 3 KiB.
pub const MAX_KEYS_BODY: usize = 64 * 1024;

/// Body of the health exchange, as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HealthReport {
    /// Calls the instance is serving right now.
    pub in_flight: u32,
    /// Load the service reports, 0.0 (idle) to 1.0 (saturated). The SDK reports in-flight
    /// relative to its concurrency limit unless the service sets its own figure.
    pub load: f32,
    /// True once the instance has begun to drain; the gateway stops choosing it.
    #[serde(default)]
    pub draining: bool,
}

/// Header names the gateway sets on every forwarded request. Clients may not set them: the
/// gateway strips any incoming header with the `x-portcullis-` prefix before routing.
pub mod headers {
    /// Prefix of every header the gateway owns.
    pub const PREFIX: &str = "x-portcullis-";
    /// Correlation id of the call, also returned to the client.
    pub const CORRELATION_ID: &str = "x-correlation-id";
    /// Route template the gateway matched, e.g. `/api/v1/scans/{id}`.
    pub const ROUTE: &str = "x-portcullis-route";
    /// Deadline in milliseconds the gateway will wait for the response head.
    pub const TIMEOUT_MS: &str = "x-portcullis-timeout-ms";
    /// The gateway's signed identity assertion of the caller (a compact JWS, see
    /// [`crate::jws::AssertionClaims`]).
    pub const IDENTITY: &str = "x-portcullis-identity";
    /// On a [`crate::SESSIONS_PATH`] stream: the session's id (what a process worker gets as
    /// `--session-id`).
    pub const SESSION_ID: &str = "x-portcullis-session-id";
    /// On a [`crate::SESSIONS_PATH`] stream: the one-time nonce the worker's hello repeats
    /// (what a process worker gets in `PORTCULLIS_WORKER_NONCE`). Never logged.
    pub const WORKER_NONCE: &str = "x-portcullis-worker-nonce";
    /// On a [`crate::SESSIONS_PATH`] stream: the worker protocol version (`--protocol-version`).
    pub const WORKER_PROTOCOL: &str = "x-portcullis-worker-protocol";
}

/// Is `s` a valid service name: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Is `s` a valid instance id or other opaque token: 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
