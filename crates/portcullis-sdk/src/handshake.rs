//! The service side of the link handshake: read CHALLENGE, send HELLO, read HELLO_ACK or
//! REJECT.
//!
//! Frames are read with exactly [`HEADER_LEN`] bytes and then exactly the announced body
//! length, never more: the first byte after HELLO_ACK belongs to HTTP/2, so the stream must be
//! handed over untouched.

use std::time::Duration;

use portcullis_link::{
    Credential, DecodeError, Frame, FrameHeader, Hello, HelloAck, Reject, RejectCode,
    ED25519_VERSION, HEADER_LEN, MIN_VERSION, SESSIONS_VERSION, VERSION,
};

use crate::instance_key::InstanceKey;

/// The versions the SDK speaks, newest first: 4 (pinned sessions), 3 (Ed25519 keys) and 2
/// (assertion keys; a version 1 gateway sends none, so the SDK could verify no call).
const SPOKEN: [u8; 3] = [VERSION, ED25519_VERSION, 2];

/// What the HELLO is proved with on this connection: the instance key, if any, and the
/// connection's TLS exporter value.
#[derive(Clone, Copy, Default)]
pub(crate) struct Proving<'a> {
    pub(crate) key: Option<&'a InstanceKey>,
    pub(crate) tls_exporter: Option<[u8; 32]>,
}
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, ErrorKind};

/// How long the whole handshake may take on the service side.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame the service accepts from a gateway. CHALLENGE, HELLO_ACK and REJECT are a
/// few hundred bytes; a low bound keeps a confused peer from making us allocate.
const MAX_INBOUND_FRAME: u32 = 64 * 1024;

/// Run the handshake on `io` within [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn handshake<IO>(
    io: &mut IO,
    hello: &Hello,
    proving: Proving<'_>,
) -> Result<HelloAck, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    handshake_within(io, hello, proving, HANDSHAKE_TIMEOUT).await
}

pub(crate) async fn handshake_within<IO>(
    io: &mut IO,
    hello: &Hello,
    proving: Proving<'_>,
    limit: Duration,
) -> Result<HelloAck, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, exchange(io, hello, proving)).await {
        Ok(r) => r,
        Err(_) => {
            let reject = Reject {
                code: RejectCode::Timeout,
                message: "handshake took too long".into(),
                retry_after_ms: None,
                pairing: None,
            };
            // Best effort, bounded: the peer may not be reading at all.
            let _ = tokio::time::timeout(Duration::from_millis(100), send_reject(io, reject)).await;
            Err(Error::new(
                ErrorKind::Timeout,
                "no HELLO_ACK within the handshake timeout",
            ))
        }
    }
}

async fn exchange<IO>(io: &mut IO, hello: &Hello, proving: Proving<'_>) -> Result<HelloAck, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = match read_frame(io).await? {
        Frame::Challenge(c) => c,
        Frame::Reject(r) => return Err(Error::rejected(&r)),
        other => {
            return Err(protocol_violation(io, "CHALLENGE", &other).await);
        }
    };
    // The newest version both speak; an instance key needs version 3, sessions version 4.
    let version = SPOKEN
        .into_iter()
        .filter(|v| matches!(hello.credential, Credential::Token { .. }) || *v >= ED25519_VERSION)
        .filter(|v| hello.sessions.is_none() || *v >= SESSIONS_VERSION)
        .find(|v| challenge.versions.contains(v));
    let Some(version) = version else {
        let wanted = if hello.sessions.is_some() {
            format!("{SESSIONS_VERSION} (pinned sessions)")
        } else if !matches!(hello.credential, Credential::Token { .. }) {
            format!("{ED25519_VERSION} or later (instance keys, client certificates)")
        } else {
            "2 to 4".to_string()
        };
        let reject = Reject {
            code: RejectCode::UnsupportedVersion,
            message: format!("service speaks version {wanted}"),
            retry_after_ms: None,
            pairing: None,
        };
        let _ = send_reject(io, reject).await;
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("gateway does not accept protocol version {wanted}"),
        ));
    };
    let mut hello = hello.clone();
    if let Some(key) = proving.key {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        hello.credential =
            key.credential(&hello, version, &challenge.nonce, now, proving.tls_exporter)?;
    } else if matches!(hello.credential, Credential::Ed25519 { .. }) {
        return Err(Error::config("an Ed25519 credential without its key"));
    }
    let bytes = Frame::Hello(Box::new(hello))
        .encode_as(version)
        .map_err(|e| Error::config("HELLO does not fit in a frame").with_source(e))?;
    io.write_all(&bytes).await.map_err(link_io)?;
    io.flush().await.map_err(link_io)?;
    match read_frame(io).await? {
        Frame::HelloAck(ack) => {
            if ack.heartbeat_interval_ms == 0 {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "HELLO_ACK with a zero heartbeat interval",
                ));
            }
            Ok(ack)
        }
        Frame::Reject(r) => Err(Error::rejected(&r)),
        other => Err(protocol_violation(io, "HELLO_ACK or REJECT", &other).await),
    }
}

/// Read one frame: exactly a header, then exactly its body. A decode error is answered with
/// the matching REJECT (best effort) before it is returned.
async fn read_frame<IO>(io: &mut IO) -> Result<Frame, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; HEADER_LEN];
    io.read_exact(&mut head).await.map_err(link_io)?;
    let header = match FrameHeader::parse(&head, MAX_INBOUND_FRAME) {
        Ok(h) => h,
        Err(e) => return Err(decode_failure(io, e).await),
    };
    let mut body = vec![0u8; header.len as usize];
    io.read_exact(&mut body).await.map_err(link_io)?;
    match Frame::decode_body(&header, &body) {
        Ok(f) => Ok(f),
        Err(e) => Err(decode_failure(io, e).await),
    }
}

async fn decode_failure<IO>(io: &mut IO, e: DecodeError) -> Error
where
    IO: AsyncWrite + Unpin,
{
    let reject = Reject {
        code: e.reject_code(),
        message: e.to_string(),
        retry_after_ms: None,
        pairing: None,
    };
    let _ = send_reject(io, reject).await;
    Error::new(ErrorKind::Protocol, "undecodable frame from gateway").with_source(e)
}

async fn protocol_violation<IO>(io: &mut IO, expected: &str, got: &Frame) -> Error
where
    IO: AsyncWrite + Unpin,
{
    let message = format!(
        "expected {expected}, got frame type {}",
        got.frame_type() as u8
    );
    let reject = Reject {
        code: RejectCode::MalformedFrame,
        message: message.clone(),
        retry_after_ms: None,
        pairing: None,
    };
    let _ = send_reject(io, reject).await;
    Error::new(ErrorKind::Protocol, message)
}

async fn send_reject<IO>(io: &mut IO, reject: Reject) -> std::io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    // Version 1: every gateway reads it, and every code the SDK sends exists there.
    let bytes = Frame::Reject(reject)
        .encode_as(MIN_VERSION)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    io.write_all(&bytes).await?;
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(())
}

fn link_io(e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "gateway closed the connection during the handshake"
    } else {
        "I/O error during the handshake"
    };
    Error::new(ErrorKind::Link, kind).with_source(e)
}
