//! The rescue point: every refusal or failure on the request path is a [`GatewayError`], and
//! this module alone turns one into a response. Bodies are fixed JSON so a client learns the
//! class of failure and nothing else; the detail goes to logs and metrics.

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
    /// The route exists but no instance can take the call.
    #[error("no healthy instance of {0}")]
    NoHealthyInstance(String),
    /// The gateway is draining or over its in-flight ceiling.
    #[error("overloaded")]
    Overloaded,
    /// A dependency the decision needs (the identity store) cannot be reached: fail closed.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// The service did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// The link broke or the service reset the call.
    #[error("upstream failure: {0}")]
    Upstream(String),
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
            Self::NoHealthyInstance(_) | Self::Overloaded | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
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
            Self::NoHealthyInstance(_) => "no_healthy_instance",
            Self::Overloaded => "overloaded",
            Self::Unavailable(_) => "unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Upstream(_) => "upstream_error",
        }
    }

    /// The fixed body of this class.
    fn body(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => r#"{"error":"bad_request"}"#,
            Self::Unauthorized(_) => r#"{"error":"unauthorized"}"#,
            Self::Forbidden(_) => r#"{"error":"forbidden"}"#,
            Self::NotFound => r#"{"error":"not_found"}"#,
            Self::MethodNotAllowed(_) => r#"{"error":"method_not_allowed"}"#,
            Self::PayloadTooLarge => r#"{"error":"payload_too_large"}"#,
            Self::HeadersTooLarge => r#"{"error":"request_header_fields_too_large"}"#,
            Self::NoHealthyInstance(_) => r#"{"error":"no_healthy_instance"}"#,
            Self::Overloaded => r#"{"error":"overloaded"}"#,
            Self::Unavailable(_) => r#"{"error":"unavailable"}"#,
            Self::UpstreamTimeout => r#"{"error":"upstream_timeout"}"#,
            Self::Upstream(_) => r#"{"error":"bad_gateway"}"#,
        }
    }

    /// The response for this error.
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
        match &self {
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
        resp
    }
}
