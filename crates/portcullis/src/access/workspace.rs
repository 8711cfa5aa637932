//! The target workspace of a call: which tenant's resources it acts on.
//!
//! A call acts in the caller's own workspace unless it names another in
//! `x-portcullis-workspace`, **by workspace id** (`ws_…`), never by name: the decision compares
//! the id with the workspaces of the caller's role bindings, which are kept by id, so an id
//! cannot be re-pointed by renaming a workspace. Naming one's own workspace is the same as
//! naming none.
//!
//! - The header is read by the early phase before it strips every `x-portcullis-*` header, so
//!   it is never forwarded; the service learns the workspace from the gateway's identity
//!   assertion only.
//! - A malformed value — not 1-64 of `[A-Za-z0-9_-]`, or the header given twice — is answered
//!   400 (`bad_request`) after authentication, never 403: it is the same syntax error for
//!   every caller, tells nothing about which workspaces exist or who may enter them, and a
//!   403 would send an operator hunting through role bindings for a typo. Before
//!   authentication it changes nothing: every non-public path still answers the same 401.
//! - A well-formed id the caller holds no binding in (directly or through `*`) is refused by
//!   the decision: 403 with the fixed body, `forbidden_workspace` to the audit log. Once the
//!   decision allows, the workspace must exist and be active (`Access::enter_workspace`, one
//!   cached lookup, asked only for callers the decision allowed, so a flood of made-up ids
//!   from callers bound nowhere costs the store nothing): a `*` binding covers every
//!   workspace, but a disabled one is entered by nobody — the same 403, `forbidden_workspace`.
//! - Only workspace-scoped targets can be pointed at another workspace: a service route
//!   declared `workspace_scoped` and gateway operations. Naming another workspace on a route
//!   that is not is 400 (`bad_request`), after authentication: the service would act in the
//!   caller's own workspace whatever the header said, and a caller acting across workspaces
//!   must not believe otherwise.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

use crate::auth::WorkspaceRef;

/// The header a caller names its target workspace in.
pub const WORKSPACE_HEADER: HeaderName = HeaderName::from_static("x-portcullis-workspace");

/// Longest workspace id accepted in the header.
pub const MAX_WORKSPACE_ID: usize = 64;

/// The `x-portcullis-workspace` header was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed x-portcullis-workspace")]
pub struct MalformedWorkspace;

/// What the request named in `x-portcullis-workspace`: nothing, a well-formed id (kept as the
/// header value: no copy), or something malformed.
pub type RequestedWorkspace = Option<Result<HeaderValue, MalformedWorkspace>>;

/// Read `x-portcullis-workspace` from `headers` (before they are stripped).
pub fn requested_workspace(headers: &HeaderMap) -> RequestedWorkspace {
    let mut values = headers.get_all(&WORKSPACE_HEADER).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(MalformedWorkspace));
    }
    let b = first.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_WORKSPACE_ID
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'));
    Some(if ok {
        Ok(first.clone())
    } else {
        Err(MalformedWorkspace)
    })
}

/// The workspace a call acts in, decided by the authorise phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetWorkspace {
    /// The caller's own (no header, or the header named it).
    Own(Arc<str>),
    /// Another, named by id in `x-portcullis-workspace`, the caller allowed there and the
    /// workspace found active (`Access::enter_workspace`), with its current name.
    Named(WorkspaceRef),
}

/// The workspace a caller of workspace `own` named, when it is another one: naming one's own
/// is naming none.
pub fn other_workspace<'a>(
    own: &str,
    requested: Option<&'a HeaderValue>,
) -> Option<&'a HeaderValue> {
    requested.filter(|v| v.as_bytes() != own.as_bytes())
}

impl TargetWorkspace {
    /// The workspace id.
    pub fn id(&self) -> &str {
        match self {
            Self::Own(id) => id,
            Self::Named(w) => &w.id,
        }
    }

    /// Is it the caller's own workspace?
    pub fn is_own(&self) -> bool {
        matches!(self, Self::Own(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&WORKSPACE_HEADER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_header_is_one_well_formed_id_or_malformed() {
        assert_eq!(requested_workspace(&headers(&[])), None);
        assert_eq!(
            requested_workspace(&headers(&["ws_0123abcd"])),
            Some(Ok(HeaderValue::from_static("ws_0123abcd")))
        );
        for bad in [
            &["ws 1"][..],
            &[""],
            &["a/b"],
            &["ws_1", "ws_2"],
            &["ws_1,ws_2"],
        ] {
            assert_eq!(
                requested_workspace(&headers(bad)),
                Some(Err(MalformedWorkspace)),
                "{bad:?}"
            );
        }
        let long = "a".repeat(MAX_WORKSPACE_ID + 1);
        assert_eq!(
            requested_workspace(&headers(&[&long])),
            Some(Err(MalformedWorkspace))
        );
    }

    #[test]
    fn naming_ones_own_workspace_is_naming_none() {
        let (own, other) = (
            HeaderValue::from_static("ws_1"),
            HeaderValue::from_static("ws_2"),
        );
        assert_eq!(other_workspace("ws_1", Some(&own)), None);
        assert_eq!(other_workspace("ws_1", None), None);
        assert_eq!(other_workspace("ws_1", Some(&other)), Some(&other));
        let t = TargetWorkspace::Own("ws_1".into());
        assert_eq!((t.id(), t.is_own()), ("ws_1", true));
    }
}
