//! Authorise phase: may this caller do this?
//!
//! A target that resolved to nothing is answered here, after authentication, so only an
//! authenticated caller learns whether a path exists (404, 405 with `Allow`). Otherwise the one
//! authoriser, [`Access::authorise`], decides on the target's capability and resource; a denial
//! goes to the audit sink and answers the fixed 403. Every refusal is decided here, before any
//! byte reaches a service.

use super::call::Call;
use super::resolve::Target;
use crate::access::{Access, Decision};
use crate::audit::{AuditSink, Refusal};
use crate::error::GatewayError;

/// The authorise phase, built once.
#[derive(Debug)]
pub struct Authorise {
    access: Access,
    audit: AuditSink,
}

impl Authorise {
    /// Decide with `access`, reporting denials to `audit`.
    pub fn new(access: Access, audit: AuditSink) -> Self {
        Self { access, audit }
    }

    /// Decide on `call`'s target.
    pub async fn run(&self, call: &mut Call) -> Result<(), GatewayError> {
        let Some(target) = &call.target else {
            return Err(GatewayError::NotFound);
        };
        if let Target::Unrouted(u) = target {
            return Err(u.clone().into());
        }
        let capability = target.capability();
        let decision = match &call.identity {
            Some(identity) => {
                self.access
                    .authorise(identity, capability, target.resource())
                    .await
            }
            // Public targets need no identity and name no capability.
            None if capability.is_none() => Decision::Allow,
            None => Decision::Deny(crate::access::DenyReason::Capability),
        };
        call.decision = Some(decision);
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                self.audit.refused(Refusal {
                    reason: reason.as_str(),
                    credential_id: call.identity.as_ref().map(|i| &*i.via.id),
                    peer: call.peer_ip(),
                    capability,
                });
                Err(GatewayError::Forbidden(reason.as_str()))
            }
        }
    }
}
