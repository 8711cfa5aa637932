//! The one audit sink for refusals: every refused credential and every denied operation,
//! whatever the credential kind or the phase that refused it, is reported here once.
//!
//! A refusal is counted in `portcullis_auth_failures_total{reason}` and queued (bounded, never
//! blocking the call) for the audit log, where refusals are coalesced per reason per second
//! (`auth::audit`). A full queue drops the event and counts it in
//! `portcullis_audit_dropped_total`; the metric above still counts the refusal.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::ApiKeyAuthenticator;
use crate::telemetry::Metrics;

/// One refusal, as the audit log records it. Never a secret: a credential appears by its id.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// Stable reason (`missing`, `malformed`, `unknown`, `revoked`, `expired`, `wrong`,
    /// `unavailable`, `forbidden`, …): the metric label and the audit reason.
    pub reason: &'static str,
    /// The credential id the caller claimed or proved (an API key's key id).
    pub credential_id: Option<&'a str>,
    /// The caller's address.
    pub peer: Option<IpAddr>,
    /// The capability the refused operation needs.
    pub capability: Option<&'a str>,
}

/// Where refusals go.
#[derive(Clone)]
pub struct AuditSink {
    metrics: Arc<Metrics>,
    /// Holds the bounded queue the audit writer drains (see `auth::authenticator`); `None`
    /// counts refusals without recording them (component tests without a store).
    queue: Option<Arc<ApiKeyAuthenticator>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
    }
}

impl AuditSink {
    /// A sink counting in `metrics` and queueing on the authenticator's audit writer.
    pub fn new(metrics: Arc<Metrics>, queue: Arc<ApiKeyAuthenticator>) -> Self {
        Self {
            metrics,
            queue: Some(queue),
        }
    }

    /// A sink that only counts (for component tests that run without a store).
    pub fn metrics_only(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            queue: None,
        }
    }

    /// Report one refusal. Never blocks and never fails the call.
    pub fn refused(&self, r: Refusal<'_>) {
        self.metrics.auth_failure(r.reason);
        let Some(queue) = &self.queue else {
            return;
        };
        if !queue.report_failure(r.reason, r.credential_id, r.peer, r.capability) {
            self.metrics.audit_dropped.inc();
        }
    }
}
