//! Reading and writing handshake frames on a byte stream.
//!
//! A reader takes exactly the header, then exactly the body the header announced, and not a
//! byte more: what follows HELLO_ACK is HTTP/2 and must stay in the stream.

use portcullis_link::{DecodeError, Frame, FrameHeader, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::routing::RegisterError;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's bytes are not a valid frame.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A valid frame, but not the one expected at this point.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// The frame the handshake waited for (`HELLO`).
        expected: &'static str,
        /// The frame that came (`HELLO_ACK`, ...).
        got: &'static str,
    },
    /// The credential was refused (or a pairing is pending).
    #[error("{0}")]
    Refused(super::LinkAuthFailure),
    /// Endpoints refused.
    #[error("{0}")]
    Register(RegisterError),
    /// The handshake slot was given to a newer connection before a HELLO arrived.
    #[error("handshake slot evicted before HELLO")]
    Evicted,
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The connection failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP/2 could not start after HELLO_ACK.
    #[error("http/2 handshake: {0}")]
    Http2(String),
}

/// Read one frame, refusing bodies over `limit` before reading them.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Frame, HandshakeError> {
    Ok(read_frame_versioned(r, limit).await?.1)
}

/// [`read_frame`], with the protocol version the frame's header names.
pub async fn read_frame_versioned<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<(u8, Frame), HandshakeError> {
    let (header, body) = read_raw(r, limit).await?;
    Ok((header.version, Frame::decode_body(&header, &body)?))
}

/// One frame's header and body, not decoded: for a reader that wants the body of a frame
/// that does not decode (what HELLO it was, for the log line of the refusal).
pub(crate) async fn read_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<(FrameHeader, Vec<u8>), HandshakeError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let header = FrameHeader::parse(&head, limit)?;
    // Grow the buffer only as bytes arrive: a peer announcing a large frame and sending
    // nothing costs us a small allocation, not the announced size.
    let mut body = Vec::with_capacity((header.len as usize).min(16 * 1024));
    let n = r.take(u64::from(header.len)).read_to_end(&mut body).await?;
    if n != header.len as usize {
        return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok((header, body))
}

/// Write one frame as [`Frame::encode`] does (CHALLENGE as the oldest version, the rest as the
/// newest) and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame,
) -> Result<(), HandshakeError> {
    write_bytes(w, &f.encode()?).await
}

/// Write one frame as protocol `version` and flush it.
pub async fn write_frame_as<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame,
    version: u8,
) -> Result<(), HandshakeError> {
    write_bytes(w, &f.encode_as(version)?).await
}

async fn write_bytes<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), HandshakeError> {
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}
