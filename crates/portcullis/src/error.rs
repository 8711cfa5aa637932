//! The rescue point: every refusal or failure on the request path is a [`GatewayError`], and
//! this module alone turns one into a response ([`GatewayError::into_response`]). Bodies are
//! fixed JSON so a client learns the class of failure and nothing else; the detail — with its
//! whole source chain ([`Chain`]) — goes to logs and metrics.
//!
//! gRPC callers (`content-type: application/grpc*`) get the same refusals as gRPC expects
//! them: a trailers-only response (HTTP 200, no body) whose `grpc-status` maps the class
//! (401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED, 404/405/501 → UNIMPLEMENTED,
//! 413/429/431 → RESOURCE_EXHAUSTED, 502/503 → UNAVAILABLE, 504 → DEADLINE_EXCEEDED,
//! 400 → INVALID_ARGUMENT) and whose `grpc-message` is as fixed as the JSON body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::GatewayBody;

/// Why the gateway answered a call itself instead of with the service's response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (bad path, dot segments, bad header).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No credential, or one that does not verify.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A verified caller without the capability.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// No route matches the path.
    #[error("no route")]
    NotFound,
    /// The path is routed, but not for this method; the value is the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed(String),
    /// The request body exceeds the limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// The request head is larger than the service's link accepts (its HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`): refused before a byte of it is sent.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The request uses something the gateway does not implement (a transfer coding other
    /// than chunked).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The route exists but no instance can take the call.
    #[error("no healthy instance of {0}")]
    NoHealthyInstance(String),
    /// The gateway is draining or over its in-flight ceiling.
    #[error("overloaded")]
    Overloaded,
    /// A dependency the decision needs (the identity store) cannot be reached: fail closed.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// The client stopped sending its request body (`ingress.request_body_stall_timeout`).
    #[error("request body stalled")]
    RequestTimeout,
    /// The service did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// The link broke or the service reset the call.
    #[error("upstream failure on {instance}")]
    Upstream {
        /// `service/instance` of the link.
        instance: String,
        /// What the link reported.
        #[source]
        source: h2::Error,
    },
}

/// Displays an error with its whole source chain (`outer: cause: root cause`), for logs.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// gRPC status codes the rescue point answers with.
mod grpc {
    pub const INVALID_ARGUMENT: &str = "3";
    pub const DEADLINE_EXCEEDED: &str = "4";
    pub const PERMISSION_DENIED: &str = "7";
    pub const RESOURCE_EXHAUSTED: &str = "8";
    pub const UNIMPLEMENTED: &str = "12";
    pub const UNAVAILABLE: &str = "14";
    pub const UNAUTHENTICATED: &str = "16";
}

/// Is this request a gRPC call (`content-type: application/grpc`, `application/grpc+proto`…)?
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl GatewayError {
    /// Status code of the response.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::NoHealthyInstance(_) | Self::Overloaded | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short stable name of the class, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "request_header_fields_too_large",
            Self::NotImplemented(_) => "not_implemented",
            Self::NoHealthyInstance(_) => "no_healthy_instance",
            Self::Overloaded => "overloaded",
            Self::Unavailable(_) => "unavailable",
            Self::RequestTimeout => "request_timeout",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Upstream { .. } => "upstream_error",
        }
    }

    /// The fixed body of this class.
    pub fn body(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => r#"{"error":"bad_request"}"#,
            Self::Unauthorized(_) => r#"{"error":"unauthorized"}"#,
            Self::Forbidden(_) => r#"{"error":"forbidden"}"#,
            Self::NotFound => r#"{"error":"not_found"}"#,
            Self::MethodNotAllowed(_) => r#"{"error":"method_not_allowed"}"#,
            Self::PayloadTooLarge => r#"{"error":"payload_too_large"}"#,
            Self::HeadersTooLarge => r#"{"error":"request_header_fields_too_large"}"#,
            Self::NotImplemented(_) => r#"{"error":"not_implemented"}"#,
            Self::NoHealthyInstance(_) => r#"{"error":"no_healthy_instance"}"#,
            Self::Overloaded => r#"{"error":"overloaded"}"#,
            Self::Unavailable(_) => r#"{"error":"unavailable"}"#,
            Self::RequestTimeout => r#"{"error":"request_timeout"}"#,
            Self::UpstreamTimeout => r#"{"error":"upstream_timeout"}"#,
            Self::Upstream { .. } => r#"{"error":"bad_gateway"}"#,
        }
    }

    /// The gRPC status of this class and its fixed message.
    fn grpc_status(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (grpc::INVALID_ARGUMENT, "bad request"),
            Self::Unauthorized(_) => (grpc::UNAUTHENTICATED, "unauthenticated"),
            Self::Forbidden(_) => (grpc::PERMISSION_DENIED, "permission denied"),
            Self::NotFound | Self::MethodNotAllowed(_) => (grpc::UNIMPLEMENTED, "unimplemented"),
            Self::NotImplemented(_) => (grpc::UNIMPLEMENTED, "unimplemented"),
            Self::PayloadTooLarge | Self::HeadersTooLarge => {
                (grpc::RESOURCE_EXHAUSTED, "request too large")
            }
            Self::NoHealthyInstance(_)
            | Self::Overloaded
            | Self::Unavailable(_)
            | Self::Upstream { .. } => (grpc::UNAVAILABLE, "unavailable"),
            Self::UpstreamTimeout => (grpc::DEADLINE_EXCEEDED, "deadline exceeded"),
            Self::RequestTimeout => (grpc::DEADLINE_EXCEEDED, "request body stalled"),
        }
    }

    /// The response for this error, in the caller's protocol: a gRPC trailers-only response
    /// when `grpc`, the fixed JSON body otherwise.
    pub fn rescue(self, grpc: bool) -> Response<GatewayBody> {
        if !grpc {
            return self.into_response();
        }
        let (code, message) = self.grpc_status();
        let mut resp = Response::new(GatewayBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", HeaderValue::from_static(message));
        self.class_headers(h);
        resp
    }

    /// Headers the class adds whatever the protocol.
    fn class_headers(&self, h: &mut http::HeaderMap) {
        match self {
            Self::MethodNotAllowed(allow) => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    h.insert(header::ALLOW, v);
                }
            }
            Self::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::NoHealthyInstance(_) | Self::Overloaded | Self::Unavailable(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
    }

    /// The plain HTTP response for this error (fixed JSON body).
    pub fn into_response(self) -> Response<GatewayBody> {
        let mut resp = Response::new(GatewayBody::full(Bytes::from_static(
            self.body().as_bytes(),
        )));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.class_headers(h);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_refusals_are_trailers_only_with_the_mapped_status() {
        for (e, code) in [
            (GatewayError::Unauthorized("x"), "16"),
            (GatewayError::Forbidden("x"), "7"),
            (GatewayError::NotFound, "12"),
            (GatewayError::MethodNotAllowed("GET".into()), "12"),
            (GatewayError::Overloaded, "14"),
            (GatewayError::UpstreamTimeout, "4"),
            (GatewayError::PayloadTooLarge, "8"),
        ] {
            let r = e.rescue(true);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["grpc-status"], code);
            assert_eq!(r.headers()["content-type"], "application/grpc");
            assert!(http_body::Body::is_end_stream(r.body()));
        }
    }

    #[test]
    fn plain_refusals_keep_their_fixed_bodies() {
        let r = GatewayError::Unauthorized("wrong").rescue(false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }

    #[test]
    fn the_chain_shows_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("root"));
        assert_eq!(Chain(&e).to_string(), "outer: root");
    }

    #[test]
    fn grpc_is_detected_by_content_type() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
    }
}
