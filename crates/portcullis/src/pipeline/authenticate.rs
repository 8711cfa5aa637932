//! Authenticate phase: who is calling.
//!
//! The target's [`AuthPolicy`] says which credentials it accepts. A public target skips the
//! phase. Otherwise the one [`Credential`](crate::auth::Credential) the request presents is
//! extracted (`auth::extract`, from the request head and the connection facts) and handed to
//! the one contract, [`Authenticators::authenticate`], which yields an identity or a refusal.
//! Every refusal goes to the audit sink and answers the same fixed 401 (503 when the identity
//! store cannot answer: fail closed). Once used, the credential is removed from the request:
//! services never see it.

use http::HeaderMap;
use tokio::time::Instant;
use tracing::Instrument;

use super::call::Call;
use super::resolve::AuthPolicy;
use crate::audit::{AuditSink, Refusal};
use crate::auth::{AuthFailure, Authenticators};
use crate::error::GatewayError;

/// The authenticate phase, built once.
#[derive(Debug)]
pub struct Authenticate {
    authenticators: Authenticators,
    audit: AuditSink,
}

impl Authenticate {
    /// Authenticate with `authenticators`, reporting refusals to `audit`.
    pub fn new(authenticators: Authenticators, audit: AuditSink) -> Self {
        Self {
            authenticators,
            audit,
        }
    }

    /// Authenticate the caller of `call` as its target's policy requires.
    pub async fn run(&self, call: &mut Call, headers: &mut HeaderMap) -> Result<(), GatewayError> {
        let policy = call
            .target
            .as_ref()
            .map_or(AuthPolicy::Public, |t| t.auth());
        let AuthPolicy::Credential(accepted) = policy else {
            call.timings.authenticated = Some(Instant::now());
            return Ok(());
        };
        let facts = call.conn.as_ref().map(|c| &*c.facts);
        let verified = match crate::auth::extract(headers, facts, accepted) {
            Ok(credential) => self
                .authenticators
                .authenticate(&credential)
                .instrument(tracing::debug_span!("authenticate"))
                .await
                .map_err(|f| (f, credential.claimed_id().map(String::from))),
            Err(f) => Err((f, None)),
        };
        match verified {
            Ok(identity) => {
                // The credential is the gateway's business: services never see it.
                headers.remove(http::header::AUTHORIZATION);
                call.span.record("key_id", &*identity.via.id);
                call.identity = Some(identity);
                call.timings.authenticated = Some(Instant::now());
                Ok(())
            }
            Err((failure, claimed)) => {
                self.audit.refused(Refusal {
                    reason: failure.as_str(),
                    credential_id: claimed.as_deref(),
                    peer: call.peer_ip(),
                    capability: None,
                });
                Err(match failure {
                    AuthFailure::Unavailable => GatewayError::Unavailable("identity store"),
                    f => GatewayError::Unauthorized(f.as_str()),
                })
            }
        }
    }
}
