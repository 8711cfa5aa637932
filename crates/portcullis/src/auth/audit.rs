//! Refused credentials to the audit log, off the request path and bounded.
//!
//! The request path only `try_send`s into a bounded channel ([`CHANNEL_CAPACITY`]); when it is
//! full the event is dropped and the caller counts it (`portcullis_audit_dropped_total`). A
//! writer task coalesces what arrives per reason per second into one row carrying the count
//! and a sample (claimed key id, peer, capability), then trims the log to
//! `auth.audit_max_rows`. A flood of bad keys therefore costs at most a few rows a second.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::store::{AuditEvent, Store};

/// Events buffered between the request path and the writer.
pub const CHANNEL_CAPACITY: usize = 4096;

/// One refused call.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Reason (an `AuthFailure::as_str()`, or `forbidden`).
    pub reason: &'static str,
    /// The key id the caller claimed, when the key parsed. Never a secret.
    pub key_id: Option<String>,
    /// Peer address.
    pub peer: Option<IpAddr>,
    /// Capability that was missing (`forbidden`).
    pub capability: Option<String>,
}

#[derive(Debug)]
struct Bucket {
    count: u64,
    sample: Failure,
}

/// Failures of the current second, per reason.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    buckets: BTreeMap<&'static str, Bucket>,
}

impl Coalescer {
    pub(crate) fn add(&mut self, f: Failure) {
        self.buckets
            .entry(f.reason)
            .and_modify(|b| b.count += 1)
            .or_insert(Bucket {
                count: 1,
                sample: f,
            });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Write one row per reason, then trim. Errors are logged: auditing failures must not
    /// take the gateway down, and the metric still counts every failure.
    pub(crate) async fn flush(&mut self, store: &Store, max_rows: i64) {
        let buckets = std::mem::take(&mut self.buckets);
        for (reason, b) in buckets {
            let event = if reason == "forbidden" {
                "access_denied"
            } else {
                "auth_failure"
            };
            let detail = serde_json::json!({
                "count": b.count,
                "peer": b.sample.peer.map(|p| p.to_string()),
                "capability": b.sample.capability,
            });
            let e = AuditEvent {
                event,
                actor: "gateway".into(),
                key_id: b.sample.key_id,
                workspace: None,
                reason: Some(reason.to_string()),
                detail: Some(detail.to_string()),
            };
            if let Err(err) = store.audit_append(&e).await {
                tracing::warn!(error = %err, reason, "cannot write the audit log");
            }
        }
        if let Err(err) = store.audit_trim(max_rows).await {
            tracing::warn!(error = %err, "cannot trim the audit log");
        }
    }
}
