//! The gateway's end of one worker connection: reading and writing frames with their bounds,
//! sequence numbers and the session id, and the handshake. The transport is any byte stream:
//! a process worker's Unix socket, or a pinned session's stream on a link ([`super::pinned`]).

use std::collections::HashMap;
use std::time::Duration;

use portcullis_link::worker::{
    self, CommandDecl, Envelope, FrameError, FromWorker, ToWorker, LEN_PREFIX, PROTOCOL_VERSION,
};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The reading half of a worker's transport.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a worker's transport.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// How long one frame write may take before the session faults with "write failed".
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A protocol violation or transport failure, as the session reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The worker closed its end.
    #[error("worker disconnected")]
    Disconnected,
    /// A read failed.
    #[error("read failed: {0}")]
    Read(String),
    /// A write failed or timed out.
    #[error("write failed: {0}")]
    Write(String),
    /// The worker broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Reads frames from the worker and checks what every frame must satisfy: the version, the
/// session id and the next sequence number.
pub struct Reader {
    half: ReadHalf,
    session_id: String,
    expected: u64,
    max: usize,
}

impl Reader {
    /// A reader for `session_id`'s worker, frames at most `max` bytes.
    pub fn new(half: ReadHalf, session_id: &str, max: usize) -> Self {
        Self {
            half,
            session_id: session_id.into(),
            expected: 1,
            max,
        }
    }

    /// The next frame. Cancel-safe only between frames: callers do not drop it mid-read
    /// except to abandon the connection.
    pub async fn next(&mut self) -> Result<Envelope<FromWorker>, ConnError> {
        let mut prefix = [0u8; LEN_PREFIX];
        if let Err(e) = self.half.read_exact(&mut prefix).await {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof => ConnError::Disconnected,
                _ => ConnError::Read(e.kind().to_string()),
            });
        }
        let len = worker::frame_len(prefix, self.max).map_err(protocol)?;
        let mut body = vec![0u8; len];
        self.half
            .read_exact(&mut body)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => ConnError::Disconnected,
                _ => ConnError::Read(e.kind().to_string()),
            })?;
        let env: Envelope<FromWorker> = worker::decode(&body).map_err(protocol)?;
        if env.version != PROTOCOL_VERSION {
            return Err(ConnError::Protocol(format!(
                "frame version {} is not {PROTOCOL_VERSION}",
                env.version
            )));
        }
        if env.session_id != self.session_id {
            return Err(ConnError::Protocol("session id mismatch".into()));
        }
        if env.sequence != self.expected {
            return Err(ConnError::Protocol(format!(
                "out-of-order frame: sequence {} where {} was due",
                env.sequence, self.expected
            )));
        }
        self.expected += 1;
        Ok(env)
    }
}

fn protocol(e: FrameError) -> ConnError {
    ConnError::Protocol(e.to_string())
}

/// Writes frames to the worker with the gateway's own sequence numbers.
pub struct Writer {
    half: WriteHalf,
    session_id: String,
    next: u64,
    max: usize,
}

impl Writer {
    /// A writer for `session_id`'s worker.
    pub fn new(half: WriteHalf, session_id: &str, max: usize) -> Self {
        Self {
            half,
            session_id: session_id.into(),
            next: 1,
            max,
        }
    }

    /// Send `body` (with `correlation_id`), within [`WRITE_TIMEOUT`].
    pub async fn send(
        &mut self,
        correlation_id: Option<String>,
        body: ToWorker,
    ) -> Result<(), ConnError> {
        let env = Envelope {
            version: PROTOCOL_VERSION,
            session_id: self.session_id.clone(),
            sequence: self.next,
            correlation_id,
            body,
        };
        let bytes = worker::encode(&env, self.max).map_err(protocol)?;
        self.next += 1;
        let write = async {
            self.half.write_all(&bytes).await?;
            // A link stream's pump forwards what it is given; a socket's flush is a no-op.
            self.half.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnError::Write(e.kind().to_string())),
            Err(_) => Err(ConnError::Write("timed out".into())),
        }
    }
}

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The pid the worker reported.
    pub pid: u32,
    /// Command kind → capability the caller needs.
    pub commands: HashMap<String, String>,
}

/// The gateway's side of the handshake: the worker's hello (exact version and nonce), the
/// gateway's hello, the worker's ready. The caller bounds it with the handshake timeout.
pub async fn handshake(
    reader: &mut Reader,
    writer: &mut Writer,
    nonce: &str,
    heartbeat_interval: Duration,
    backend: &str,
) -> Result<Handshake, ConnError> {
    let first = reader.next().await?;
    let (pid, commands) = match first.body {
        FromWorker::Hello {
            protocol_version,
            nonce: theirs,
            pid,
            commands,
        } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(ConnError::Protocol(format!(
                    "unsupported protocol version {protocol_version} (the gateway speaks {PROTOCOL_VERSION})"
                )));
            }
            if !bool::from(theirs.as_bytes().ct_eq(nonce.as_bytes())) {
                return Err(ConnError::Protocol("nonce mismatch".into()));
            }
            (pid, commands)
        }
        other => {
            return Err(ConnError::Protocol(format!(
                "expected hello but received {}",
                other.name()
            )))
        }
    };
    let commands = declared(backend, commands)?;
    writer
        .send(
            None,
            ToWorker::Hello {
                protocol_version: PROTOCOL_VERSION,
                nonce: nonce.into(),
                gateway_version: env!("CARGO_PKG_VERSION").into(),
                heartbeat_interval_ms: heartbeat_interval.as_millis() as u64,
            },
        )
        .await?;
    match reader.next().await?.body {
        FromWorker::Ready { .. } => Ok(Handshake { pid, commands }),
        FromWorker::Fault { category, message } => Err(ConnError::Protocol(format!(
            "the worker could not start its backend ({category}): {message}"
        ))),
        other => Err(ConnError::Protocol(format!(
            "expected ready but received {}",
            other.name()
        ))),
    }
}

/// The declared kinds, each capability checked as a routed endpoint's would be (a valid
/// name outside the gateway's reserved namespaces), each kind once.
fn declared(
    backend: &str,
    commands: Vec<CommandDecl>,
) -> Result<HashMap<String, String>, ConnError> {
    let mut out = HashMap::with_capacity(commands.len());
    for c in commands {
        crate::access::registry::endpoint_capability(backend, Some(&c.capability))
            .map_err(|e| ConnError::Protocol(format!("command {}: {e}", c.kind)))?;
        if out.insert(c.kind.clone(), c.capability).is_some() {
            return Err(ConnError::Protocol(format!(
                "command {} declared twice",
                c.kind
            )));
        }
    }
    Ok(out)
}
