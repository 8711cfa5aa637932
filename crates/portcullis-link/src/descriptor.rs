//! Endpoint descriptors: what a service declares it serves.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::template::{PathTemplate, TemplateError};

/// Most endpoints one HELLO may declare.
pub const MAX_ENDPOINTS: usize = 1024;
/// Longest endpoint timeout a service may ask for: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Wire protocol of an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP request/response.
    #[default]
    Http,
    /// gRPC over HTTP/2: trailers carry the status.
    Grpc,
}

/// One endpoint an instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDescriptor {
    /// HTTP method in upper case, or `*` for any method.
    pub method: String,
    /// Path template, see [`PathTemplate`].
    pub path: String,
    /// Time the gateway waits for the response head, in milliseconds. `None`: gateway default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The response is a long-lived stream: the timeout bounds only the response head.
    #[serde(default)]
    pub streaming: bool,
    /// Capability a caller needs, e.g. `scans.read`. `None`: the gateway requires
    /// `<service>.call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Protocol of the endpoint.
    #[serde(default)]
    pub protocol: Protocol,
    /// The endpoint serves each workspace's own data, from the workspace the identity
    /// assertion names: a caller bound across workspaces may point a call at another one
    /// (`x-portcullis-workspace`). `false` (the default): a call acts in the caller's own
    /// workspace, and naming another is refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub workspace_scoped: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a descriptor is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// Method is not an upper-case token or `*`.
    #[error("invalid method")]
    Method,
    /// Template does not parse.
    #[error("invalid path template: {0}")]
    Template(#[from] TemplateError),
    /// Timeout is zero or over [`MAX_TIMEOUT_MS`].
    #[error("timeout must be between 1 ms and one hour")]
    Timeout,
    /// Capability is not `[a-z0-9._:-]{1,128}`.
    #[error("invalid capability name")]
    Capability,
    /// The path is under [`RESERVED_PREFIX`](crate::RESERVED_PREFIX), which belongs to the
    /// link itself (health exchange, key push).
    #[error("paths under {} are reserved for the link", crate::RESERVED_PREFIX)]
    Reserved,
}

impl EndpointDescriptor {
    /// Check every field and return the parsed template.
    pub fn validate(&self) -> Result<PathTemplate, DescriptorError> {
        let m = self.method.as_bytes();
        let method_ok = self.method == "*"
            || (!m.is_empty() && m.len() <= 32 && m.iter().all(|b| b.is_ascii_uppercase()));
        if !method_ok {
            return Err(DescriptorError::Method);
        }
        if self
            .timeout_ms
            .is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS)
        {
            return Err(DescriptorError::Timeout);
        }
        if let Some(c) = &self.capability {
            let ok = !c.is_empty()
                && c.len() <= 128
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'.' | b'_' | b':' | b'-')
                });
            if !ok {
                return Err(DescriptorError::Capability);
            }
        }
        let template = PathTemplate::parse(&self.path)?;
        // The prefix without its trailing slash is the same directory: refused too.
        let reserved = crate::RESERVED_PREFIX;
        if self.path.starts_with(reserved) || self.path == reserved[..reserved.len() - 1] {
            return Err(DescriptorError::Reserved);
        }
        Ok(template)
    }
}

/// Do two methods overlap? `*` overlaps every method; otherwise only equal methods do.
pub fn methods_overlap(a: &str, b: &str) -> bool {
    a == "*" || b == "*" || a == b
}

/// Two descriptors of one declaration that claim the same requests: their templates have the
/// same shape ([`PathTemplate::shape`]) and their methods overlap ([`methods_overlap`]).
/// Indices count the descriptors given to [`find_overlap`], `first < second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// The earlier descriptor.
    pub first: usize,
    /// The later descriptor, the one to name as declared twice.
    pub second: usize,
}

/// The first pair of descriptors in one declaration (one HELLO) that claim the same requests,
/// if any: each descriptor with its parsed template (from [`EndpointDescriptor::validate`]),
/// in declaration order.
///
/// The gateway refuses such a HELLO with `invalid_descriptor`, and the SDK runs this same
/// function when a service is built, so a declaration one side accepts is one the other side
/// accepts. Linear in the number of descriptors per shape; a HELLO holds at most
/// [`MAX_ENDPOINTS`].
pub fn find_overlap<'a, I>(endpoints: I) -> Option<Overlap>
where
    I: IntoIterator<Item = (&'a EndpointDescriptor, &'a PathTemplate)>,
{
    let mut by_shape: HashMap<String, Vec<(usize, &'a str)>> = HashMap::new();
    for (second, (d, t)) in endpoints.into_iter().enumerate() {
        let same_shape = by_shape.entry(t.shape()).or_default();
        if let Some(&(first, _)) = same_shape
            .iter()
            .find(|(_, m)| methods_overlap(m, &d.method))
        {
            return Some(Overlap { first, second });
        }
        same_shape.push((second, d.method.as_str()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(method: &str, path: &str) -> EndpointDescriptor {
        EndpointDescriptor {
            method: method.into(),
            path: path.into(),
            timeout_ms: None,
            streaming: false,
            capability: None,
            protocol: Protocol::Http,
            workspace_scoped: false,
        }
    }

    fn overlap(decls: &[(&str, &str)]) -> Option<Overlap> {
        let ds: Vec<_> = decls.iter().map(|(m, p)| d(m, p)).collect();
        let ts: Vec<_> = ds.iter().map(|d| d.validate().unwrap()).collect();
        find_overlap(ds.iter().zip(&ts))
    }

    #[test]
    fn workspace_scoped_is_optional_on_the_wire_both_ways() {
        // A service that never heard of it (protocol v1/v2) declares an unscoped endpoint,
        // and an unscoped endpoint is written as such a service would.
        let old: EndpointDescriptor =
            serde_json::from_str(r#"{"method":"GET","path":"/a"}"#).unwrap();
        assert!(!old.workspace_scoped);
        let json = serde_json::to_string(&d("GET", "/a")).unwrap();
        assert!(!json.contains("workspace_scoped"), "{json}");
        let mut scoped = d("GET", "/a");
        scoped.workspace_scoped = true;
        let back: EndpointDescriptor =
            serde_json::from_str(&serde_json::to_string(&scoped).unwrap()).unwrap();
        assert!(back.workspace_scoped);
    }

    #[test]
    fn any_method_overlaps_every_method_on_the_same_shape() {
        let o = overlap(&[("GET", "/a"), ("*", "/x"), ("GET", "/x")]);
        assert_eq!(
            o,
            Some(Overlap {
                first: 1,
                second: 2
            })
        );
        assert_eq!(
            overlap(&[("GET", "/x"), ("*", "/x")]),
            Some(Overlap {
                first: 0,
                second: 1
            })
        );
        assert!(overlap(&[("*", "/x"), ("*", "/x")]).is_some());
    }

    #[test]
    fn same_method_on_the_same_shape_overlaps_whatever_the_parameter_names() {
        assert_eq!(
            overlap(&[("GET", "/a/{x}"), ("GET", "/a/{y}")]),
            Some(Overlap {
                first: 0,
                second: 1
            })
        );
        assert!(overlap(&[("GET", "/f/{*a}"), ("GET", "/f/{*b}")]).is_some());
    }

    #[test]
    fn different_methods_or_shapes_do_not_overlap() {
        assert_eq!(overlap(&[("GET", "/a/{x}"), ("POST", "/a/{y}")]), None);
        assert_eq!(overlap(&[("*", "/a"), ("GET", "/a/")]), None);
        assert_eq!(overlap(&[("*", "/a/{x}"), ("GET", "/a/{*x}")]), None);
        assert_eq!(overlap(&[("*", "/a/b"), ("GET", "/a/{x}")]), None);
        assert_eq!(overlap(&[]), None);
    }

    #[test]
    fn validates() {
        assert!(d("GET", "/a/{b}").validate().is_ok());
        assert!(d("*", "/a/{*b}").validate().is_ok());
        assert_eq!(d("get", "/a").validate(), Err(DescriptorError::Method));
        let mut x = d("GET", "/a");
        x.timeout_ms = Some(0);
        assert_eq!(x.validate(), Err(DescriptorError::Timeout));
        x.timeout_ms = None;
        x.capability = Some("Bad Cap".into());
        assert_eq!(x.validate(), Err(DescriptorError::Capability));
    }

    #[test]
    fn paths_under_the_reserved_prefix_are_refused() {
        for p in [
            "/.well-known/portcullis/health",
            "/.well-known/portcullis/keys",
            "/.well-known/portcullis/{*rest}",
            "/.well-known/portcullis/",
            "/.well-known/portcullis",
        ] {
            assert_eq!(
                d("GET", p).validate(),
                Err(DescriptorError::Reserved),
                "{p}"
            );
        }
        assert!(d("GET", "/.well-known/other").validate().is_ok());
        assert!(d("GET", "/.well-known/portcullis-like").validate().is_ok());
    }
}
