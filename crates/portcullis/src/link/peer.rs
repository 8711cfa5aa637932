//! What the service's HTTP/2 server accepts, learned from its first SETTINGS frame.
//!
//! The h2 client keeps the peer's SETTINGS to itself, yet the gateway must know the service's
//! `SETTINGS_MAX_HEADER_LIST_SIZE` to refuse a head the service cannot take *before* sending
//! it: h2 servers answer an oversized header block that spans CONTINUATION frames with GOAWAY
//! (COMPRESSION_ERROR), which would fail every call on the link, not just the one.
//!
//! [`SettingsSniffer`] wraps the link's byte stream on the read side and looks at the bytes h2
//! reads, in place, until the server's first frame (its connection preface, which RFC 9113
//! §3.4 requires to be SETTINGS) has gone by; from then on it only forwards. It keeps at most
//! one frame header and one 6-byte setting, whatever the peer sends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// `SETTINGS_MAX_HEADER_LIST_SIZE` (RFC 9113 §6.5.2).
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// HTTP/2 frame type SETTINGS.
const FRAME_SETTINGS: u8 = 0x4;
/// Flag ACK on a SETTINGS frame.
const FLAG_ACK: u8 = 0x1;
/// Length of an HTTP/2 frame header.
const FRAME_HEADER_LEN: usize = 9;

/// The service's limits as its first SETTINGS frame declared them.
#[derive(Debug)]
pub struct PeerSettings {
    /// `u32::MAX` until known or when the service declared none (RFC 9113: unlimited).
    max_header_list_size: AtomicU32,
    seen: AtomicBool,
    notify: Notify,
}

impl PeerSettings {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            max_header_list_size: AtomicU32::new(u32::MAX),
            seen: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Largest header list the service accepts (`u32::MAX`: no limit declared).
    pub fn max_header_list_size(&self) -> u32 {
        self.max_header_list_size.load(Ordering::Acquire)
    }

    /// Resolve once the first frame from the service has been read (or the sniffer gave up).
    pub async fn seen(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.seen.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }

    fn finish(&self) {
        self.seen.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

enum State {
    /// Collecting the first frame's header.
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Inside the SETTINGS payload: `left` bytes remain, `entry` holds a partial setting.
    Payload {
        left: usize,
        entry: [u8; 6],
        have: usize,
    },
    /// The first frame is past: forward only.
    Done,
}

/// Read-side observer of the link's byte stream; see the module docs.
pub struct SettingsSniffer<IO> {
    io: IO,
    state: State,
    settings: Arc<PeerSettings>,
}

impl<IO> SettingsSniffer<IO> {
    /// Wrap `io`; the returned handle fills in as the service's SETTINGS arrive.
    pub fn new(io: IO) -> (Self, Arc<PeerSettings>) {
        let settings = PeerSettings::new();
        (
            Self {
                io,
                state: State::Header {
                    buf: [0; FRAME_HEADER_LEN],
                    have: 0,
                },
                settings: settings.clone(),
            },
            settings,
        )
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Header { buf, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == FRAME_HEADER_LEN {
                        let len = usize::from(buf[0]) << 16
                            | usize::from(buf[1]) << 8
                            | usize::from(buf[2]);
                        let is_settings = buf[3] == FRAME_SETTINGS
                            && buf[4] & FLAG_ACK == 0
                            && buf[5..9] == [0, 0, 0, 0];
                        if !is_settings || len == 0 {
                            self.done();
                        } else {
                            self.state = State::Payload {
                                left: len,
                                entry: [0; 6],
                                have: 0,
                            };
                        }
                    }
                }
                State::Payload { left, entry, have } => {
                    let n = (6 - *have).min(bytes.len()).min(*left);
                    entry[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    *left -= n;
                    bytes = &bytes[n..];
                    if *have == 6 {
                        let id = u16::from_be_bytes([entry[0], entry[1]]);
                        let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                        if id == SETTINGS_MAX_HEADER_LIST_SIZE {
                            self.settings
                                .max_header_list_size
                                .store(value, Ordering::Release);
                        }
                        *have = 0;
                    }
                    if *left == 0 {
                        self.done();
                    }
                }
            }
        }
    }

    fn done(&mut self) {
        self.state = State::Done;
        self.settings.finish();
    }
}

impl<IO> Drop for SettingsSniffer<IO> {
    fn drop(&mut self) {
        // Nobody waits forever on a link that died before its first frame.
        self.settings.finish();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SettingsSniffer<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.state, State::Done) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let filled = buf.filled();
            if filled.len() == before {
                this.done(); // end of stream
            } else {
                // Split the borrow: `observe` needs `&mut this`, the bytes live in `buf`.
                let new = &filled[before..];
                this.observe(new);
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SettingsSniffer<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_frame(entries: &[(u16, u32)]) -> Vec<u8> {
        let len = entries.len() * 6;
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            4,
            0,
            0,
            0,
            0,
            0,
        ];
        for (id, v) in entries {
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f
    }

    #[tokio::test]
    async fn the_first_settings_frame_is_read_even_one_byte_at_a_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut a, b) = tokio::io::duplex(64);
        let (mut s, settings) = SettingsSniffer::new(b);
        let mut bytes = settings_frame(&[(0x3, 100), (0x6, 16384), (0x4, 65535)]);
        // A second SETTINGS frame after the first is not looked at.
        bytes.extend(settings_frame(&[(0x6, 1)]));
        let total = bytes.len();
        let w = tokio::spawn(async move {
            for b in bytes {
                a.write_all(&[b]).await.unwrap();
            }
            a
        });
        let mut got = vec![0u8; total];
        s.read_exact(&mut got).await.unwrap();
        settings.seen().await;
        assert_eq!(settings.max_header_list_size(), 16384);
        drop(w.await.unwrap());
    }

    #[tokio::test]
    async fn a_first_frame_that_is_not_settings_leaves_the_limit_unknown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut a, b) = tokio::io::duplex(64);
        let (mut s, settings) = SettingsSniffer::new(b);
        // A PING frame.
        let mut f = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
        f.extend_from_slice(&[0; 8]);
        a.write_all(&f).await.unwrap();
        let mut got = vec![0u8; f.len()];
        s.read_exact(&mut got).await.unwrap();
        settings.seen().await;
        assert_eq!(settings.max_header_list_size(), u32::MAX);
    }
}
