//! The SDK's error type: opaque, with a [`ErrorKind`] callers can match on.
//!
//! Internals (I/O errors, TLS errors, decode errors) stay behind the opaque [`Error`] so that
//! callers depend only on the kind and, for refusals, on the gateway's [`RejectCode`].

use std::fmt;
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
/// [`Error::reject_code`] and [`Error::retry_after`].
#[derive(thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    message: String,
    reject: Option<(RejectCode, Option<u64>)>,
    source: Option<BoxError>,
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
            source: None,
        }))
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
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
        e
    }

    /// The broad kind of the error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The gateway's reason, when the kind is [`ErrorKind::Rejected`].
    pub fn reject_code(&self) -> Option<RejectCode> {
        self.0.reject.map(|(c, _)| c)
    }

    /// How long the gateway asked us to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0
            .reject
            .and_then(|(_, ms)| ms)
            .map(Duration::from_millis)
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
