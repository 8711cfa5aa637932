//! Endpoint declarations: the fluent [`Endpoint`] a service builds, turned into the link
//! protocol's [`EndpointDescriptor`] and validated before anything is dialled.

use std::time::Duration;

use portcullis_link::{EndpointDescriptor, PathTemplate, Protocol};

use crate::error::Error;

/// One endpoint the service serves: method, path template, and how the gateway should treat
/// calls to it.
///
/// ```
/// use std::time::Duration;
/// use portcullis_sdk::Endpoint;
///
/// let e = Endpoint::get("/scans/{id}")
///     .timeout(Duration::from_secs(5))
///     .capability("scans.read");
/// assert_eq!(e.descriptor().method, "GET");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    descriptor: EndpointDescriptor,
}

impl Endpoint {
    /// An endpoint for `method` (upper case, or `*` for any) and path template `path`.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            descriptor: EndpointDescriptor {
                method: method.into(),
                path: path.into(),
                timeout_ms: None,
                streaming: false,
                capability: None,
                protocol: Protocol::Http,
                workspace_scoped: false,
            },
        }
    }

    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new("POST", path)
    }

    /// `PUT path`.
    pub fn put(path: impl Into<String>) -> Self {
        Self::new("PUT", path)
    }

    /// `PATCH path`.
    pub fn patch(path: impl Into<String>) -> Self {
        Self::new("PATCH", path)
    }

    /// `DELETE path`.
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new("DELETE", path)
    }

    /// Any method on `path`.
    pub fn any(path: impl Into<String>) -> Self {
        Self::new("*", path)
    }

    /// How long the gateway waits for the response head. Rounded up to whole milliseconds;
    /// must be between 1 ms and one hour.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        self.descriptor.timeout_ms = Some(u64::try_from(ms).unwrap_or(u64::MAX));
        self
    }

    /// Mark the response as a long-lived stream: the timeout bounds only the response head.
    pub fn streaming(mut self) -> Self {
        self.descriptor.streaming = true;
        self
    }

    /// Mark the endpoint as gRPC (trailers carry the status).
    pub fn grpc(mut self) -> Self {
        self.descriptor.protocol = Protocol::Grpc;
        self
    }

    /// Declare that the endpoint serves each workspace's own data, from the workspace in the
    /// caller's [`Identity`](crate::Identity): a caller bound across workspaces may then point
    /// a call at another one (`x-portcullis-workspace`). Without it, every call acts in the
    /// caller's own workspace and the gateway refuses one naming another.
    pub fn workspace_scoped(mut self) -> Self {
        self.descriptor.workspace_scoped = true;
        self
    }

    /// The capability a caller needs, e.g. `scans.read`.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.descriptor.capability = Some(capability.into());
        self
    }

    /// The wire descriptor this endpoint becomes.
    pub fn descriptor(&self) -> &EndpointDescriptor {
        &self.descriptor
    }

    /// Check the endpoint on its own; the error names it.
    pub(crate) fn validate(&self) -> Result<PathTemplate, Error> {
        let d = &self.descriptor;
        let template = d.validate().map_err(|e| {
            Error::config(format!("endpoint {} {}: {e}", d.method, d.path)).with_source(e)
        })?;
        // Reserved paths (`RESERVED_PREFIX`) are refused by `validate` itself, as the gateway
        // refuses them.
        Ok(template)
    }
}

impl From<Endpoint> for EndpointDescriptor {
    fn from(e: Endpoint) -> Self {
        e.descriptor
    }
}

/// Validate every endpoint, then the declaration as a whole with the gateway's own rule
/// ([`portcullis_link::find_overlap`]): two endpoints whose templates have the same shape and
/// whose methods overlap (`*` overlaps every method) claim the same requests, and the gateway
/// would refuse the HELLO with `invalid_descriptor` on every attempt. The error names both.
pub(crate) fn validate_all(endpoints: &[Endpoint]) -> Result<(), Error> {
    if endpoints.len() > portcullis_link::MAX_ENDPOINTS {
        return Err(Error::config(format!(
            "more than {} endpoints",
            portcullis_link::MAX_ENDPOINTS
        )));
    }
    let templates = endpoints
        .iter()
        .map(Endpoint::validate)
        .collect::<Result<Vec<_>, _>>()?;
    let descriptors = endpoints.iter().map(Endpoint::descriptor);
    if let Some(o) = portcullis_link::find_overlap(descriptors.zip(&templates)) {
        let (a, b) = (
            &endpoints[o.first].descriptor,
            &endpoints[o.second].descriptor,
        );
        return Err(Error::config(format!(
            "endpoint {} {}: declared twice: overlaps {} {} (same path shape, overlapping methods)",
            b.method, b.path, a.method, a.path
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn builds_descriptors() {
        let e = Endpoint::any("/x")
            .streaming()
            .grpc()
            .timeout(Duration::from_micros(1500))
            .capability("x.read");
        let d = e.descriptor();
        assert_eq!(d.method, "*");
        assert!(d.streaming);
        assert_eq!(d.protocol, Protocol::Grpc);
        assert_eq!(d.timeout_ms, Some(2));
        assert_eq!(d.capability.as_deref(), Some("x.read"));
    }

    #[test]
    fn bad_endpoints_are_named() {
        let err = validate_all(&[Endpoint::get("/ok"), Endpoint::get("no-slash")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("GET no-slash"), "{err}");

        let err = validate_all(&[Endpoint::get("/a").timeout(Duration::ZERO)]).unwrap_err();
        assert!(err.to_string().contains("GET /a"), "{err}");

        let err = validate_all(&[Endpoint::get("/.well-known/portcullis/x")]).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");

        let err = validate_all(&[Endpoint::get("/a/{x}"), Endpoint::get("/a/{y}")]).unwrap_err();
        assert!(err.to_string().contains("declared twice"), "{err}");
        assert!(validate_all(&[Endpoint::get("/a/{x}"), Endpoint::post("/a/{y}")]).is_ok());
    }

    /// The gateway refuses `*` beside any other method on the same shape (it overlaps them
    /// all); the SDK must refuse it too instead of dialling into a REJECT on every attempt.
    #[test]
    fn any_beside_a_method_on_the_same_path_is_refused_naming_both() {
        for pair in [
            [Endpoint::any("/x"), Endpoint::get("/x")],
            [Endpoint::get("/x"), Endpoint::any("/x")],
            [Endpoint::any("/x/{a}"), Endpoint::post("/x/{b}")],
        ] {
            let err = validate_all(&pair).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            let (a, b) = (pair[0].descriptor(), pair[1].descriptor());
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("endpoint {} {}: declared twice", b.method, b.path)),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("overlaps {} {}", a.method, a.path)),
                "{msg}"
            );
        }
        assert!(validate_all(&[Endpoint::any("/x"), Endpoint::get("/x/{id}")]).is_ok());
    }
}
