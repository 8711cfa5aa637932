//! The target workspace of a call: which tenant's resources it acts on.
//!
//! A call acts in the caller's own workspace unless it names another in
//! `x-portcullis-workspace`, **by workspace id** (`ws_…`), never by name: the decision compares
//! the id with the workspaces of the caller's role bindings, which are kept by id, so naming
//! costs no lookup, and an id cannot be re-pointed by renaming a workspace. Naming one's own
//! workspace is the same as naming none.
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
//!   the decision: 403 with the fixed body, `forbidden_workspace` to the audit log.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

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
    /// Another, named by id in `x-portcullis-workspace` (checked well-formed ASCII).
    Named(HeaderValue),
}

impl TargetWorkspace {
    /// The target of a caller of workspace `own` that asked for `requested` (well-formed).
    pub fn choose(own: &Arc<str>, requested: Option<&HeaderValue>) -> Self {
        match requested {
            Some(v) if v.as_bytes() != own.as_bytes() => Self::Named(v.clone()),
            _ => Self::Own(own.clone()),
        }
    }

    /// The workspace id.
    pub fn id(&self) -> &str {
        match self {
            Self::Own(id) => id,
            // Checked to be ASCII when read; never empty in practice, and an empty id is
            // bound nowhere.
            Self::Named(v) => v.to_str().unwrap_or(""),
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
        let own: Arc<str> = "ws_1".into();
        let t = TargetWorkspace::choose(&own, Some(&HeaderValue::from_static("ws_1")));
        assert!(t.is_own());
        let t = TargetWorkspace::choose(&own, None);
        assert_eq!((t.id(), t.is_own()), ("ws_1", true));
        let t = TargetWorkspace::choose(&own, Some(&HeaderValue::from_static("ws_2")));
        assert_eq!((t.id(), t.is_own()), ("ws_2", false));
    }
}
