//! Endpoint declarations: the fluent [`Endpoint`] a service builds, turned into the link
//! protocol's [`EndpointDescriptor`] and validated before anything is dialled.

use std::time::Duration;

use portcullis_link::{EndpointDescriptor, Protocol, RESERVED_PREFIX};

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

    /// The capability a caller needs, e.g. `scans.read`.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.descriptor.capability = Some(capability.into());
        self
    }

    /// The wire descriptor this endpoint becomes.
    pub fn descriptor(&self) -> &EndpointDescriptor {
        &self.descriptor
    }

    /// Check the endpoint; the error names it.
    pub(crate) fn validate(&self) -> Result<String, Error> {
        let d = &self.descriptor;
        let template = d.validate().map_err(|e| {
            Error::config(format!("endpoint {} {}: {e}", d.method, d.path)).with_source(e)
        })?;
        if d.path.starts_with(RESERVED_PREFIX) {
            return Err(Error::config(format!(
                "endpoint {} {}: paths under {RESERVED_PREFIX} are reserved",
                d.method, d.path
            )));
        }
        Ok(format!("{} {}", d.method, template.shape()))
    }
}

impl From<Endpoint> for EndpointDescriptor {
    fn from(e: Endpoint) -> Self {
        e.descriptor
    }
}

/// Validate every endpoint and refuse two with the same method and template shape.
pub(crate) fn validate_all(endpoints: &[Endpoint]) -> Result<(), Error> {
    if endpoints.len() > portcullis_link::MAX_ENDPOINTS {
        return Err(Error::config(format!(
            "more than {} endpoints",
            portcullis_link::MAX_ENDPOINTS
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for e in endpoints {
        let key = e.validate()?;
        if !seen.insert(key) {
            let d = &e.descriptor;
            return Err(Error::config(format!(
                "endpoint {} {}: declared twice",
                d.method, d.path
            )));
        }
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
}
