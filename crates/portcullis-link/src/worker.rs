//! The worker protocol's frames: what the gateway and a session's worker process exchange over
//! the session's Unix socket. Pure code, no I/O, so it is fuzzed (`fuzz/fuzz_targets/
//! worker_frame.rs`) and property-tested; the normative text is `docs/worker-protocol.md`.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of one JSON object, the
//! [`Envelope`]: protocol version, session id, the sender's sequence number, an optional
//! correlation id and a body tagged by `type`. JSON because a worker may be written in any
//! language with nothing but its standard library; the length prefix because a reader must
//! know where a frame ends without parsing it and must refuse an oversized one before
//! allocating it ([`frame_len`]).
//!
//! Decoding checks shape and bounds ([`Envelope::check`]); what a frame *means* (the handshake
//! order, sequence numbers, the session id) is the receiver's state machine's to check.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The protocol version this crate speaks. Both hellos must carry exactly this.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default and largest frame (the JSON after the prefix) either side accepts: 1 MiB.
pub const MAX_WORKER_FRAME_LEN: usize = 1 << 20;

/// Longest session id, correlation id or nonce, bytes.
pub const MAX_ID_LEN: usize = 128;

/// Longest command kind, event kind, fault category or capability name, bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Longest fault message or shutdown reason, bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Most command kinds a worker may declare in its hello.
pub const MAX_COMMANDS: usize = 256;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces an empty frame.
    #[error("empty frame")]
    Empty,
    /// The frame is larger than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not an envelope (bad JSON, unknown type, missing or unknown field).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A field is out of bounds.
    #[error("field {field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One frame. `B` is [`ToWorker`] or [`FromWorker`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<B> {
    /// Protocol version of the sender; MUST be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The session this frame belongs to.
    pub session_id: String,
    /// Per-sender sequence number: 1 for the sender's first frame, then +1 for each frame.
    pub sequence: u64,
    /// Ties a command to its reply and its cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// What the frame says.
    pub body: B,
}

/// A command kind a worker serves and the capability a caller needs to invoke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandDecl {
    /// The command kind (`run`, `status`).
    pub kind: String,
    /// The capability a caller needs (`compute.run`).
    pub capability: String,
}

/// Frames the gateway sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// The gateway's half of the handshake.
    Hello {
        /// MUST equal the version on the worker's command line.
        protocol_version: u32,
        /// The nonce from `PORTCULLIS_WORKER_NONCE`.
        nonce: String,
        /// The gateway's version, informational.
        gateway_version: String,
        /// How often the worker MUST send a heartbeat, milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// Run a command; the envelope's correlation id names it.
    Command {
        /// One of the kinds the worker declared.
        kind: String,
        /// The caller's payload, any JSON value.
        payload: serde_json::Value,
        /// Milliseconds the caller waits for the reply.
        deadline_ms: u64,
    },
    /// The command with the envelope's correlation id is no longer awaited.
    Cancel {},
    /// Stop within `grace_ms`: answer with a shutdown ack, then exit.
    Shutdown {
        /// Milliseconds before the gateway kills the process group.
        grace_ms: u64,
        /// Why (`client-close`, `lease-expired`, `idle`, `gateway-shutdown`).
        reason: String,
    },
}

/// Frames a worker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromWorker {
    /// The worker's half of the handshake; MUST be its first frame.
    Hello {
        /// MUST equal the gateway's.
        protocol_version: u32,
        /// MUST equal the nonce the gateway put in the environment.
        nonce: String,
        /// The worker's process id.
        pid: u32,
        /// The command kinds it serves.
        commands: Vec<CommandDecl>,
    },
    /// The backend is up; commands may come. MUST follow the hello.
    Ready {
        /// The worker's process id.
        pid: u32,
    },
    /// The answer to the command with the envelope's correlation id.
    Reply {
        /// The backend's own status code, passed to the caller untouched.
        status: i64,
        /// The backend's answer, passed to the caller untouched. Required.
        payload: serde_json::Value,
    },
    /// Something happened; delivered to the subscriber in sequence order.
    Event {
        /// The event's kind (`progress`).
        kind: String,
        /// The event's data.
        payload: serde_json::Value,
    },
    /// Still alive.
    Heartbeat {
        /// The worker's process id.
        pid: u32,
    },
    /// The worker cannot go on (or, before ready, cannot start its backend).
    Fault {
        /// A short category (`backend`, `protocol`).
        category: String,
        /// What happened.
        message: String,
    },
    /// The shutdown was received; the worker exits next.
    ShutdownAck {},
}

impl ToWorker {
    /// The frame's `type`, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Command { .. } => "command",
            Self::Cancel {} => "cancel",
            Self::Shutdown { .. } => "shutdown",
        }
    }
}

impl FromWorker {
    /// The frame's `type`, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ready { .. } => "ready",
            Self::Reply { .. } => "reply",
            Self::Event { .. } => "event",
            Self::Heartbeat { .. } => "heartbeat",
            Self::Fault { .. } => "fault",
            Self::ShutdownAck {} => "shutdown_ack",
        }
    }
}

/// Bounds a body's fields must keep.
pub trait Bounded {
    /// Check every field's bound.
    fn check(&self) -> Result<(), FrameError>;
}

fn bound(field: &'static str, s: &str, max: usize) -> Result<(), FrameError> {
    if s.len() > max {
        return Err(FrameError::Field {
            field,
            reason: "too long",
        });
    }
    Ok(())
}

/// A name: 1..=[`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._:-]`, so it is safe in a log line, a
/// metric label (kinds are bounded by what the worker declared) and an SSE field.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn name(field: &'static str, s: &str) -> Result<(), FrameError> {
    if !valid_name(s) {
        return Err(FrameError::Field {
            field,
            reason: "must be 1-128 of [A-Za-z0-9._:-]",
        });
    }
    Ok(())
}

impl Bounded for ToWorker {
    fn check(&self) -> Result<(), FrameError> {
        match self {
            Self::Hello {
                nonce,
                gateway_version,
                ..
            } => {
                bound("nonce", nonce, MAX_ID_LEN)?;
                bound("gateway_version", gateway_version, MAX_NAME_LEN)
            }
            Self::Command { kind, .. } => name("kind", kind),
            Self::Cancel {} => Ok(()),
            Self::Shutdown { reason, .. } => bound("reason", reason, MAX_MESSAGE_LEN),
        }
    }
}

impl Bounded for FromWorker {
    fn check(&self) -> Result<(), FrameError> {
        match self {
            Self::Hello {
                nonce, commands, ..
            } => {
                bound("nonce", nonce, MAX_ID_LEN)?;
                if commands.len() > MAX_COMMANDS {
                    return Err(FrameError::Field {
                        field: "commands",
                        reason: "more than 256 kinds",
                    });
                }
                for c in commands {
                    name("commands.kind", &c.kind)?;
                    name("commands.capability", &c.capability)?;
                }
                Ok(())
            }
            Self::Event { kind, .. } => name("kind", kind),
            Self::Fault { category, message } => {
                name("category", category)?;
                bound("message", message, MAX_MESSAGE_LEN)
            }
            Self::Ready { .. } | Self::Reply { .. } | Self::Heartbeat { .. } => Ok(()),
            Self::ShutdownAck {} => Ok(()),
        }
    }
}

impl<B: Bounded> Envelope<B> {
    /// Check the envelope's and the body's bounds.
    pub fn check(&self) -> Result<(), FrameError> {
        bound("session_id", &self.session_id, MAX_ID_LEN)?;
        if let Some(c) = &self.correlation_id {
            bound("correlation_id", c, MAX_ID_LEN)?;
        }
        self.body.check()
    }
}

/// The length a 4-byte prefix announces, refused when empty or over `max` — before anything
/// is allocated for it.
pub fn frame_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decode the bytes after the prefix into a checked envelope.
pub fn decode<B: DeserializeOwned + Bounded>(bytes: &[u8]) -> Result<Envelope<B>, FrameError> {
    let env: Envelope<B> =
        serde_json::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    env.check()?;
    Ok(env)
}

/// Encode an envelope as prefix and JSON, refused when the JSON exceeds `max`.
pub fn encode<B: Serialize + Bounded>(
    env: &Envelope<B>,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    env.check()?;
    let mut out = vec![0u8; LEN_PREFIX];
    serde_json::to_writer(&mut out, env).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Split one whole frame off the front of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the decoded envelope and the bytes it used. For readers that buffer (the fuzz
/// target, tests); the gateway and the SDK read the prefix and then exactly its length.
pub fn split<B: DeserializeOwned + Bounded>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(Envelope<B>, usize)>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut p = [0u8; LEN_PREFIX];
    p.copy_from_slice(prefix);
    let len = frame_len(p, max)?;
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, LEN_PREFIX + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env<B>(body: B) -> Envelope<B> {
        Envelope {
            version: PROTOCOL_VERSION,
            session_id: "s-1".into(),
            sequence: 1,
            correlation_id: None,
            body,
        }
    }

    #[test]
    fn the_documented_example_decodes() {
        let json = br#"{"version":1,"session_id":"n1-abc","sequence":3,"correlation_id":"c-7","body":{"type":"reply","status":404,"payload":{"error":"no such row"}}}"#;
        let mut framed = (json.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(json);
        let (e, used) = split::<FromWorker>(&framed, MAX_WORKER_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(used, framed.len());
        assert_eq!(e.correlation_id.as_deref(), Some("c-7"));
        assert_eq!(
            e.body,
            FromWorker::Reply {
                status: 404,
                payload: serde_json::json!({"error": "no such row"})
            }
        );
    }

    #[test]
    fn a_reply_without_a_payload_and_unknown_fields_are_malformed() {
        for json in [
            r#"{"version":1,"session_id":"s","sequence":1,"body":{"type":"reply","status":0}}"#,
            r#"{"version":1,"session_id":"s","sequence":1,"body":{"type":"ready","pid":1,"x":1}}"#,
            r#"{"version":1,"session_id":"s","sequence":1,"extra":0,"body":{"type":"ready","pid":1}}"#,
            r#"{"version":1,"session_id":"s","sequence":1,"body":{"type":"launch"}}"#,
        ] {
            assert!(
                matches!(
                    decode::<FromWorker>(json.as_bytes()),
                    Err(FrameError::Malformed(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn lengths_are_refused_before_allocation() {
        assert_eq!(frame_len([0, 0, 0, 0], 10), Err(FrameError::Empty));
        assert_eq!(
            frame_len([0, 0, 0, 11], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(frame_len([0, 0, 0, 10], 10), Ok(10));
        let big = env(FromWorker::Event {
            kind: "e".into(),
            payload: serde_json::Value::String("x".repeat(100)),
        });
        assert!(matches!(encode(&big, 50), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn names_are_bounded_to_a_safe_alphabet() {
        let bad = env(FromWorker::Event {
            kind: "a\nb".into(),
            payload: serde_json::Value::Null,
        });
        assert!(matches!(
            encode(&bad, MAX_WORKER_FRAME_LEN),
            Err(FrameError::Field { field: "kind", .. })
        ));
        assert!(valid_name("compute.run"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(129)));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            ".{0,20}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn from_worker() -> impl Strategy<Value = FromWorker> {
        let n = "[a-z][a-z0-9._-]{0,20}";
        prop_oneof![
            (
                any::<u32>(),
                ".{0,32}", // at most 128 bytes (MAX_ID_LEN)
                any::<u32>(),
                prop::collection::vec((n, n), 0..5)
            )
                .prop_map(|(protocol_version, nonce, pid, c)| FromWorker::Hello {
                    protocol_version,
                    nonce,
                    pid,
                    commands: c
                        .into_iter()
                        .map(|(kind, capability)| CommandDecl { kind, capability })
                        .collect()
                }),
            any::<u32>().prop_map(|pid| FromWorker::Ready { pid }),
            (any::<i64>(), json_value())
                .prop_map(|(status, payload)| FromWorker::Reply { status, payload }),
            (n, json_value()).prop_map(|(kind, payload)| FromWorker::Event { kind, payload }),
            any::<u32>().prop_map(|pid| FromWorker::Heartbeat { pid }),
            (n, ".{0,100}").prop_map(|(category, message)| FromWorker::Fault { category, message }),
            Just(FromWorker::ShutdownAck {}),
        ]
    }

    proptest! {
        #[test]
        fn worker_frames_round_trip(
            body in from_worker(),
            sequence in any::<u64>(),
            // At most 32 characters of up to 4 bytes each: within MAX_ID_LEN (128 bytes).
            session_id in ".{0,32}",
            correlation_id in proptest::option::of(".{0,32}"),
        ) {
            let e = Envelope { version: PROTOCOL_VERSION, session_id, sequence, correlation_id, body };
            let bytes = encode(&e, MAX_WORKER_FRAME_LEN).unwrap();
            let (back, used) = split::<FromWorker>(&bytes, MAX_WORKER_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, e);
        }

        #[test]
        fn gateway_frames_round_trip(
            grace_ms in any::<u64>(), deadline_ms in any::<u64>(), payload in json_value(),
            reason in ".{0,50}", kind in "[a-z][a-z0-9._-]{0,20}",
        ) {
            for body in [
                ToWorker::Shutdown { grace_ms, reason: reason.clone() },
                ToWorker::Command { kind: kind.clone(), payload: payload.clone(), deadline_ms },
                ToWorker::Cancel {},
            ] {
                let e = env(body);
                let bytes = encode(&e, MAX_WORKER_FRAME_LEN).unwrap();
                let (back, _) = split::<ToWorker>(&bytes, MAX_WORKER_FRAME_LEN).unwrap().unwrap();
                prop_assert_eq!(back, e);
            }
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = split::<FromWorker>(&bytes, 256);
            let _ = split::<ToWorker>(&bytes, 256);
            let _ = decode::<FromWorker>(&bytes);
        }

        #[test]
        fn a_truncated_frame_asks_for_more(body in from_worker(), cut in 0usize..1000) {
            let bytes = encode(&env(body), MAX_WORKER_FRAME_LEN).unwrap();
            let cut = cut % bytes.len();
            prop_assert_eq!(split::<FromWorker>(&bytes[..cut], MAX_WORKER_FRAME_LEN).unwrap(), None);
        }
    }
}
