//! The SDK's error type: opaque, with a [`ErrorKind`] callers can match on.
//!
//! Internals (I/O errors, TLS errors, decode errors) stay behind the opaque [`Error`] so that
//! callers depend only on the kind and, for refusals, on the gateway's [`RejectCode`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use portcullis_link::RejectCode;

/// A boxed error, the currency of tower and hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The builder was given something unusable (bad endpoint, gateway URL, CA, name...).
    Config,
    /// The gateway could not be reached (DNS, TCP, TLS).
    Connect,
    /// The gateway broke the handshake protocol (malformed or unexpected frame).
    Protocol,
    /// The gateway refused the handshake with a REJECT frame; see [`Error::reject_code`].
    Rejected,
    /// The handshake did not finish in time.
    Timeout,
    /// The link failed after the handshake (I/O or HTTP/2 error).
    Link,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "configuration error",
            Self::Connect => "connect error",
            Self::Protocol => "protocol error",
            Self::Rejected => "rejected by gateway",
            Self::Timeout => "handshake timeout",
            Self::Link => "link error",
        })
    }
}

/// An SDK error. Opaque: inspect it through [`Error::kind`] and, for refusals,
/// [`Error::reject_code`], [`Error::retry_after`] and [`Error::is_permanent`].
///
/// Cloning is cheap and shares the source: [`Running::failures`](crate::Running::failures)
/// hands out the refusals it keeps.
#[derive(thiserror::Error, Clone)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    kind: ErrorKind,
    message: String,
    reject: Option<(RejectCode, Option<u64>)>,
    /// The pairing of a `pairing_required` refusal.
    pairing: Option<portcullis_link::PairingPrompt>,
    /// The gateway the error concerns, once a supervisor has attributed it.
    gateway: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: message.into(),
            reject: None,
            pairing: None,
            gateway: None,
            source: None,
        }))
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(Arc::from(source.into()));
        self
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn rejected(reject: &portcullis_link::Reject) -> Self {
        let mut e = Self::new(
            ErrorKind::Rejected,
            format!("{}: {}", reject.code, reject.message),
        );
        e.0.reject = Some((reject.code, reject.retry_after_ms));
        e.0.pairing = reject.pairing.clone();
        e
    }

    /// The pending pairing a `pairing_required` refusal named.
    pub(crate) fn pairing(&self) -> Option<&portcullis_link::PairingPrompt> {
        self.0.pairing.as_ref()
    }

    /// This refusal, as the error of a link slot that stopped dialling `gateway` for good.
    pub(crate) fn given_up(mut self, gateway: &str) -> Self {
        self.0.message = format!(
            "gateway {gateway} refused the link and retrying cannot fix it, stopped dialling it: {}",
            self.0.message
        );
        self.0.gateway = Some(gateway.to_string());
        self
    }

    /// The broad kind of the error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The gateway's reason, when the kind is [`ErrorKind::Rejected`].
    pub fn reject_code(&self) -> Option<RejectCode> {
        self.0.reject.map(|(c, _)| c)
    }

    /// The gateway (`tcp://host:port` or `tls://host:port`) a refusal came from, for the errors
    /// [`Running::failures`](crate::Running::failures) reports.
    pub fn gateway(&self) -> Option<&str> {
        self.0.gateway.as_deref()
    }

    /// Is this a refusal that retrying cannot fix? The SDK stops dialling a gateway that
    /// answers with one (its other gateways are unaffected); the crate documentation, section
    /// *Refusals*, lists the codes and why.
    pub fn is_permanent(&self) -> bool {
        self.reject_code().is_some_and(permanent)
    }

    /// How long the gateway asked us to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0
            .reject
            .and_then(|(_, ms)| ms)
            .map(Duration::from_millis)
    }
}

/// Is `code` a refusal that retrying with the same HELLO cannot fix?
///
/// A HELLO is the same on every attempt (identity, endpoints, credential are fixed when the
/// service is built) and so is the gateway's configuration (loaded when it starts). So:
///
/// - **Permanent** — `invalid_descriptor`, `unsupported_version`, `malformed_frame`,
///   `too_large`: a property of the HELLO or of the protocol versions; the same bytes get the
///   same answer every time. `bad_credential`: the gateway holds one token hash per service,
///   read from its configuration at start; a wrong token stays wrong for as long as both
///   processes run, and every retry is one more authentication failure on the gateway's
///   alerts. Giving up turns a silent retry loop into an error the service can act on
///   (exit, alert); when the gateway's configuration is fixed, restarting the service links it.
/// - **Transient** — `unavailable`, `timeout`: the gateway's load or shutdown.
///   `route_conflict`: another service holds a route *now*; during a deploy that moves a
///   route from one service to another the new owner is refused until the old one unlinks,
///   and giving up at once would turn that ordering race into an outage (the supervisor gives
///   up on one only once it has lasted the service's `conflict_patience`). `duplicate_instance`: the
///   live link it names goes away. `pairing_required`: an admin approves the pairing.
///   `stale_timestamp`: the instance's clock may be corrected. These keep the backoff (and
///   `retry_after_ms`). `pairing_denied` is permanent: the key is refused for good.
///   (`bad_credential` to an instance key is retried by the supervisor: a key revoked for a
///   replay or a flood of failures pairs again on its next attempt.)
pub(crate) fn permanent(code: RejectCode) -> bool {
    match code {
        RejectCode::InvalidDescriptor
        | RejectCode::UnsupportedVersion
        | RejectCode::MalformedFrame
        | RejectCode::TooLarge
        | RejectCode::BadCredential
        | RejectCode::PairingDenied => true,
        RejectCode::Unavailable
        | RejectCode::Timeout
        | RejectCode::RouteConflict
        | RejectCode::DuplicateInstance
        | RejectCode::PairingRequired
        | RejectCode::StaleTimestamp => false,
    }
}

impl std::error::Error for Inner {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Formats an error with its chain of causes, for logs: `a: b: c`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}
