//! Early phase: before anything else looks at a call. Sheds load past the in-flight ceiling,
//! strips every header a client could use to impersonate the gateway — first keeping, in the
//! call's context, the one a caller may send to the gateway itself: `x-portcullis-workspace`
//! (`access::workspace`), never forwarded — and applies the RFC 9112 head rules hyper leaves
//! to us. The correlation id is made here too, when the call's context is created.

use http::header::{self, HeaderName};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Version};
use prometheus_client::metrics::gauge::Gauge;
use rand::RngCore;
use std::sync::Arc;

use super::call::Call;
use super::Limits;
use crate::error::GatewayError;

const CORRELATION_ID: HeaderName =
    HeaderName::from_static(portcullis_link::headers::CORRELATION_ID);

/// Accept the client's correlation id when it is a safe token, otherwise make one.
///
/// The value is marked *sensitive*, which for HTTP/2 means HPACK's never-indexed literal: it
/// is new on every call, so indexing it (on the link's request and on the client's response)
/// would only push the headers that do repeat out of the connection's 4 KiB table, and h2's
/// encoder would compare each new id with every id still in it (`Table::index_occupied`, 5 %
/// of the gateway's CPU under HTTPS HTTP/2 load; BENCHMARKS.md, stop 21). HTTP/1.1 ignores
/// the flag. `Debug` prints a sensitive value as `Sensitive`: log it through `to_str`, as the
/// call's span and the access log do.
pub fn correlation_id(h: &http::HeaderMap) -> HeaderValue {
    let mut v = client_correlation_id(h).unwrap_or_else(|| {
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(hex::encode(id)))
            .unwrap_or(HeaderValue::from_static("0"))
    });
    v.set_sensitive(true);
    v
}

/// The client's correlation id, if it is a safe token.
fn client_correlation_id(h: &http::HeaderMap) -> Option<HeaderValue> {
    let v = h.get(CORRELATION_ID)?;
    let b = v.as_bytes();
    let safe = !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    safe.then(|| v.clone())
}

/// Remove every header a client could use to impersonate the gateway (`x-portcullis-*`).
/// Allocates only when there is something to remove.
pub fn strip_gateway_headers(headers: &mut HeaderMap) {
    if !has_gateway_headers(headers) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(portcullis_link::headers::PREFIX))
        .cloned()
        .collect();
    for k in spoofed {
        headers.remove(&k);
    }
}

fn has_gateway_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with(portcullis_link::headers::PREFIX))
}

/// RFC 9112 head rules hyper leaves to us, checked before anything else sees the request:
/// an HTTP/1.1 request has exactly one `Host` and it is a valid authority (§3.2: 400 otherwise);
/// the only transfer coding the gateway implements is `chunked` alone (§6.1: 501 for any
/// other, which would otherwise be de-chunked and forwarded as if it were the plain body).
pub fn check_head<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let h = req.headers();
    let mut hosts = h.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(GatewayError::BadRequest("host")),
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(GatewayError::BadRequest("host"))
        }
        (Some(v), None)
            if v.to_str()
                .ok()
                .and_then(|v| v.parse::<Authority>().ok())
                .is_none_or(|a| a.as_str().contains('@')) =>
        {
            return Err(GatewayError::BadRequest("host"));
        }
        _ => {}
    }
    let mut codings = h.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let only_chunked = codings.next().is_none()
            && first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        if !only_chunked {
            return Err(GatewayError::NotImplemented("transfer-encoding"));
        }
    }
    Ok(())
}

/// Calls in progress on the whole gateway, against the configured ceiling. The count is the
/// `portcullis_in_flight_calls` gauge itself: one atomic, exported as it is.
#[derive(Debug, Default)]
pub struct InFlight(Gauge);

/// One admitted call; gives its slot back when the response body ends.
#[derive(Debug)]
pub struct InFlightSlot(Arc<InFlight>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0 .0.dec();
    }
}

impl InFlight {
    /// Count on `gauge` (the metric's).
    pub fn with_gauge(gauge: Gauge) -> Self {
        Self(gauge)
    }

    /// Calls in progress.
    pub fn current(&self) -> usize {
        usize::try_from(self.0.get()).unwrap_or(0)
    }

    /// Admit a call unless `max` are already in progress: past the ceiling the gateway
    /// sheds load with 503 instead of queueing without bound (docs/design.md §8).
    fn admit(self: &Arc<Self>, max: usize) -> Result<InFlightSlot, GatewayError> {
        // `inc` returns the count before this call.
        if usize::try_from(self.0.inc()).unwrap_or(0) >= max {
            self.0.dec();
            return Err(GatewayError::Overloaded);
        }
        Ok(InFlightSlot(self.clone()))
    }
}

/// The early phase, built once.
#[derive(Debug, Default)]
pub struct Early {
    in_flight: Arc<InFlight>,
}

impl Early {
    /// Counting calls in progress on `in_flight` (the `portcullis_in_flight_calls` gauge).
    pub fn new(in_flight: Gauge) -> Self {
        Self {
            in_flight: Arc::new(InFlight::with_gauge(in_flight)),
        }
    }

    /// Shed load past `limits.max_in_flight`, keep the requested workspace, strip spoofable
    /// headers, check the head.
    pub fn run<B>(
        &self,
        call: &mut Call,
        req: &mut Request<B>,
        limits: &Limits,
    ) -> Result<(), GatewayError> {
        call.holds.slot = Some(self.in_flight.admit(limits.max_in_flight)?);
        // One scan of the names on the common path (no gateway header at all).
        if has_gateway_headers(req.headers()) {
            call.requested_workspace = crate::access::workspace::requested_workspace(req.headers());
            strip_gateway_headers(req.headers_mut());
        }
        check_head(req)
    }

    /// The gateway's in-flight count.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids() {
        let mut h = http::HeaderMap::new();
        h.insert(CORRELATION_ID, HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(correlation_id(&h), "abc-123_x.y");
        h.insert(
            CORRELATION_ID,
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(correlation_id(&h).len(), 32);
        h.insert(CORRELATION_ID, HeaderValue::from_static("a b"));
        assert_ne!(correlation_id(&h), "a b");
    }

    /// A per-call value must reach HTTP/2 as a never-indexed literal, on the link's request
    /// and the client's response alike, whether the client chose it or the gateway made it.
    #[test]
    fn correlation_ids_are_never_indexed() {
        let mut h = http::HeaderMap::new();
        assert!(correlation_id(&h).is_sensitive());
        h.insert(CORRELATION_ID, HeaderValue::from_static("abc-123_x.y"));
        let chosen = correlation_id(&h);
        assert_eq!(chosen, "abc-123_x.y");
        assert!(chosen.is_sensitive());
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    fn req(version: Version, hosts: &[&str], te: &[&str]) -> Request<()> {
        let mut r = Request::get("/x").version(version);
        for h in hosts {
            r = r.header("host", *h);
        }
        for t in te {
            r = r.header("transfer-encoding", *t);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        assert!(check_head(&req(Version::HTTP_11, &["example.com:8080"], &[])).is_ok());
        for hosts in [&[][..], &["a", "b"], &["a b"], &["user@evil"], &[""]] {
            let e = check_head(&req(Version::HTTP_11, hosts, &[])).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{hosts:?}");
        }
        // HTTP/2 carries :authority; HTTP/1.0 may omit Host.
        assert!(check_head(&req(Version::HTTP_2, &[], &[])).is_ok());
        assert!(check_head(&req(Version::HTTP_10, &[], &[])).is_ok());
    }

    #[test]
    fn only_plain_chunked_is_implemented() {
        assert!(check_head(&req(Version::HTTP_11, &["h"], &["chunked"])).is_ok());
        assert!(check_head(&req(Version::HTTP_11, &["h"], &["Chunked "])).is_ok());
        for te in [&["gzip, chunked"][..], &["gzip", "chunked"], &["identity"]] {
            let e = check_head(&req(Version::HTTP_11, &["h"], te)).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::NOT_IMPLEMENTED, "{te:?}");
        }
    }

    #[test]
    fn the_workspace_header_is_kept_in_the_call_and_stripped_with_the_others() {
        let limits = Limits {
            max_in_flight: 10,
            max_body_bytes: 1,
            body_stall_timeout: std::time::Duration::from_secs(30),
        };
        let early = Early::default();
        let mut call = Call::new(
            http::Method::GET,
            HeaderValue::from_static("c"),
            false,
            None,
        );
        let mut req = Request::get("/x")
            .header("host", "h")
            .header("x-portcullis-workspace", "ws_2")
            .header("x-portcullis-route", "/spoofed")
            .body(())
            .unwrap();
        early.run(&mut call, &mut req, &limits).unwrap();
        assert_eq!(
            call.requested_workspace,
            Some(Ok(HeaderValue::from_static("ws_2")))
        );
        assert!(req
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with(portcullis_link::headers::PREFIX)));

        let mut call = Call::new(
            http::Method::GET,
            HeaderValue::from_static("c"),
            false,
            None,
        );
        let mut req = Request::get("/x").header("host", "h").body(()).unwrap();
        early.run(&mut call, &mut req, &limits).unwrap();
        assert_eq!(call.requested_workspace, None);
    }

    #[test]
    fn the_ceiling_sheds_and_a_finished_call_frees_its_slot() {
        let f = Arc::new(InFlight::default());
        let a = f.admit(1).unwrap();
        assert!(matches!(f.admit(1), Err(GatewayError::Overloaded)));
        drop(a);
        assert!(f.admit(1).is_ok());
    }
}
