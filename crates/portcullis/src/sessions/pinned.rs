//! Pinned sessions: a session served by one instance of a linked service instead of a
//! process the gateway starts. The instance is chosen like a call's (health, region tiers,
//! load) among those whose HELLO declared `sessions`, within its slots; the session then
//! holds one long-lived HTTP/2 stream on that instance's link (`POST`
//! [`portcullis_link::SESSIONS_PATH`]) and speaks the worker protocol over it, frame for
//! frame what a process worker speaks over its socket. Everything after the transport —
//! handshake, commands, cancel, events and their hops, heartbeats, close — is the session
//! module's one implementation.
//!
//! The stream is bridged to the session's reader and writer through an in-memory duplex
//! pipe of [`PIPE_BYTES`]: the session's reader refuses an oversized frame from the pipe
//! exactly as from a socket, and the pumps move bytes under HTTP/2 flow control, releasing
//! the link's window only once the pipe has taken them, so a session that reads slowly
//! holds its own stream window, never the link's. A session never moves: when the link goes
//! away, the session faults (`instance-gone`).

use std::sync::Arc;

use bytes::Bytes;
use portcullis_link::headers::{SESSION_ID, WORKER_NONCE, WORKER_PROTOCOL};
use portcullis_link::worker::PROTOCOL_VERSION;
use portcullis_link::SESSIONS_PATH;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::conn::{ReadHalf, WriteHalf};
use super::Fault;
use crate::routing::{Instance, Pinned, Registry, Tiers};

/// Bytes the pipe between a session and its link stream holds in each direction.
pub const PIPE_BYTES: usize = 64 * 1024;

/// Where pinned sessions find their instances.
#[derive(Debug, Clone)]
pub struct Links {
    /// The live instances.
    pub registry: Arc<Registry>,
    /// The gateway's region preference, as for calls.
    pub tiers: Tiers,
}

impl Links {
    /// Choose an instance of `service` that serves sessions and take one of its slots (at
    /// most `limit` per instance). Never an instance that did not declare sessions.
    pub fn choose(&self, service: &str, limit: u32) -> Result<Pinned, Fault> {
        let all = self.registry.instances_of(service);
        if all.is_empty() {
            return Err(Fault::new(
                "no-instance",
                format!("no instance of service {service} is linked"),
            ));
        }
        let serving: Vec<_> = all
            .into_iter()
            .filter(|i| i.max_sessions.is_some())
            .collect();
        if serving.is_empty() {
            return Err(Fault::new(
                "no-instance",
                format!(
                    "no linked instance of service {service} serves sessions (none declared \
                     sessions in its HELLO)"
                ),
            ));
        }
        let mut tried = Vec::new();
        loop {
            let Some(inst) = crate::routing::select(&serving, &self.tiers, &tried) else {
                return Err(Fault::new(
                    "no-instance",
                    format!(
                        "every instance of service {service} that serves sessions is \
                         unavailable or holds as many sessions as it may"
                    ),
                ));
            };
            if let Some(p) = inst.pin(limit) {
                return Ok(p);
            }
            tried.push(inst);
        }
    }
}

/// Open the session stream on `inst`'s link and bridge it to a reader and writer. The caller
/// bounds this with the startup timeout; `stop` ends the pumps (which resets the stream).
pub async fn open(
    inst: &Instance,
    session_id: &str,
    nonce: &str,
    stop: &CancellationToken,
) -> Result<(ReadHalf, WriteHalf), Fault> {
    let failed = |what: &str| {
        Fault::new(
            "spawn-failed",
            format!(
                "instance {} of service {}: {what}",
                inst.instance_id, inst.service
            ),
        )
    };
    let req = http::Request::post(format!("http://{}{SESSIONS_PATH}", inst.service))
        .header(SESSION_ID, session_id)
        .header(WORKER_NONCE, nonce)
        .header(WORKER_PROTOCOL, PROTOCOL_VERSION.to_string())
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(())
        .map_err(|_| failed("the session stream's head is invalid"))?;
    let mut sender = inst
        .sender
        .clone()
        .ready()
        .await
        .map_err(|_| failed("its link takes no new stream"))?;
    let (resp, send) = sender
        .send_request(req, false)
        .map_err(|_| failed("its link refused the session stream"))?;
    let resp = resp
        .await
        .map_err(|_| failed("the session stream was reset"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(failed(&format!(
            "answered {} to the session stream",
            resp.status().as_u16()
        )));
    }
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (from_pipe, into_pipe) = tokio::io::split(theirs);
    tokio::spawn(pump_in(resp.into_body(), into_pipe, stop.clone()));
    tokio::spawn(pump_out(from_pipe, send, stop.clone()));
    let (r, w) = tokio::io::split(ours);
    Ok((Box::new(r), Box::new(w)))
}

/// Instance → session: DATA into the pipe, the window released once the pipe holds it.
/// Ends (and with it the session's reader) when the stream ends or fails.
async fn pump_in(
    mut recv: h2::RecvStream,
    mut pipe: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    stop: CancellationToken,
) {
    let copy = async {
        while let Some(Ok(chunk)) = recv.data().await {
            let n = chunk.len();
            if pipe.write_all(&chunk).await.is_err() {
                return;
            }
            let _ = recv.flow_control().release_capacity(n);
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = stop.cancelled() => {}
    }
}

/// Session → instance: what the session's writer put in the pipe, as DATA under the
/// stream's flow control. Dropping the stream unfinished resets it.
async fn pump_out(
    mut pipe: tokio::io::ReadHalf<tokio::io::DuplexStream>,
    mut send: h2::SendStream<Bytes>,
    stop: CancellationToken,
) {
    let copy = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = send.send_data(Bytes::new(), true);
                    return;
                }
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if crate::proxy::send_all(&mut send, data).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let stopped = tokio::select! {
        _ = copy => false,
        _ = stop.cancelled() => true,
    };
    if stopped {
        send.send_reset(h2::Reason::CANCEL);
    }
}
