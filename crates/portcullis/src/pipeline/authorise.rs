//! Authorise phase: may this caller do this, and in which workspace?
//!
//! A target that resolved to nothing is answered here, after authentication, so only an
//! authenticated caller learns whether a path exists (404, 405 with `Allow`). Otherwise the
//! call's target workspace is decided — the caller's own, or the one it named in
//! `x-portcullis-workspace` (`access::workspace`: a malformed value, or another workspace on a
//! route not declared workspace-scoped, is 400) — the one authoriser, [`Access::authorise`],
//! decides on the target's capability and resource in that workspace, and a named workspace
//! must then be active ([`Access::enter_workspace`]); the outcome goes on the [`Call`] for the
//! phases after this one. A denial goes to the
//! audit sink and answers the fixed 403. Every refusal is decided here, before any byte
//! reaches a service.

use super::call::Call;
use super::resolve::{AuthPolicy, Target};
use crate::access::workspace::other_workspace;
use crate::access::{Access, Decision, DenyReason, TargetWorkspace};
use crate::audit::{AuditSink, Refusal};
use crate::auth::WorkspaceRef;
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
        let decision = match (&call.identity, capability) {
            // Only public operations name no capability, and their callers present nothing.
            (_, None) if target.auth() == AuthPolicy::Public => Decision::Allow,
            // Operations that act on what the request names authorise that themselves, with
            // `Access::authorise` in the workspace concerned; here the caller is only verified.
            (Some(identity), None) if target.authorises_itself() => {
                call.workspace = Some(TargetWorkspace::Own(identity.workspace.id.clone()));
                Decision::Allow
            }
            (Some(identity), Some(capability)) => {
                let requested = match &call.requested_workspace {
                    None => None,
                    Some(Ok(v)) => other_workspace(&identity.workspace.id, Some(v)),
                    Some(Err(_)) => return Err(GatewayError::BadRequest("workspace")),
                };
                match requested {
                    None => {
                        let own = &identity.workspace.id;
                        let decision = self
                            .access
                            .authorise(identity, capability, target.resource(own))
                            .await;
                        call.workspace = Some(TargetWorkspace::Own(own.clone()));
                        decision
                    }
                    Some(_) if !target.workspace_scoped() => {
                        return Err(GatewayError::BadRequest("workspace"))
                    }
                    Some(named) => {
                        // Checked to be ASCII when read.
                        let id = named.to_str().unwrap_or("");
                        let decision = self
                            .access
                            .authorise(identity, capability, target.resource(id))
                            .await;
                        // Only a caller the decision allowed makes the workspace be looked up.
                        match decision {
                            Decision::Allow => match self.access.enter_workspace(id).await {
                                Ok(name) => {
                                    call.workspace = Some(TargetWorkspace::Named(WorkspaceRef {
                                        id: id.into(),
                                        name,
                                    }));
                                    Decision::Allow
                                }
                                Err(reason) => Decision::Deny(reason),
                            },
                            denied => denied,
                        }
                    }
                }
            }
            // A target that asks for a credential names a capability and is never reached
            // without an identity; anything else is a construction mistake: fail closed.
            _ => Decision::Deny(DenyReason::Capability),
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
