//! Forwarding one call over a link: the request head goes out as HTTP/2 HEADERS on a new
//! stream, the client's body is pumped under the link's flow control, and the service's
//! response streams back through [`GatewayBody`].
//!
//! Nothing here buffers a whole body. Dropping the call (client gone, timeout) drops the h2
//! stream handles, which makes h2 send RST_STREAM(CANCEL): the service's handler is dropped.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::routing::{InFlight, Instance, LinkState, Route};

/// Request headers that describe one hop and never cross the gateway (RFC 9110 §7.6.1), plus
/// `host`, which becomes the HTTP/2 `:authority`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::HOST,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const IDENTITY: HeaderName = HeaderName::from_static(portcullis_link::headers::IDENTITY);

/// Response extension naming the instance that served the call, for the access log.
#[derive(Debug, Clone)]
pub struct ServedBy(pub Arc<str>);

/// What a call needs besides the request.
pub struct CallContext<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// The gateway's identity assertion of the caller (`x-portcullis-identity`); `None` for a
    /// public target, which then carries none.
    pub identity: Option<HeaderValue>,
    /// Correlation id of the call.
    pub correlation_id: &'a HeaderValue,
    /// Largest body the client may send.
    pub max_body_bytes: u64,
    /// Longest wait for the next byte of the client's body.
    pub body_stall_timeout: std::time::Duration,
    /// Address of the client, for `x-forwarded-for`.
    pub client_ip: Option<std::net::IpAddr>,
    /// Where upstream latency is recorded.
    pub metrics: &'a crate::telemetry::Metrics,
}

/// Remove hop-by-hop headers and those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip_connection_named(h);
    let keep_te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
    if keep_te_trailers {
        // gRPC requires `te: trailers` end to end; it is the one TE value HTTP/2 allows.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Remove the headers named in `Connection` (RFC 9110 §7.6.1). Allocates only when the
/// header is present, which HTTP/2 clients never send.
fn strip_connection_named(h: &mut HeaderMap) {
    if !h.contains_key(header::CONNECTION) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in &named {
        h.remove(n);
    }
}

/// The header policy for what a client sends towards a service, one function for request
/// heads and request trailers alike: no field a service would take as the gateway's word
/// (`x-portcullis-*`), no credential (`authorization`, `proxy-authorization`: the gateway
/// consumed them), no hop-by-hop field (RFC 9110 §7.6.1) other than `te: trailers`.
///
/// Call it on a head only once the credential has been read from it. `host` is kept: the
/// forwarder turns it into `:authority`.
pub fn strip_client_forbidden(h: &mut HeaderMap) {
    strip_gateway_named(h);
    h.remove(header::AUTHORIZATION);
    let host = h.remove(header::HOST);
    strip_hop_by_hop(h);
    if let Some(host) = host {
        h.insert(header::HOST, host);
    }
}

/// The policy of [`strip_client_forbidden`] for trailers, which also may not carry framing,
/// routing or `te` at all (RFC 9110 §6.5.1; an HTTP/2 server resets a stream whose trailers
/// hold a connection-specific field).
pub fn strip_client_forbidden_trailers(h: &mut HeaderMap) {
    strip_client_forbidden(h);
    for n in [
        header::TE,
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::TRAILER,
    ] {
        h.remove(n);
    }
}

/// Remove every `x-portcullis-*` field; allocation-free unless there is one.
fn strip_gateway_named(h: &mut HeaderMap) {
    let prefix = portcullis_link::headers::PREFIX;
    if !h.keys().any(|k| k.as_str().starts_with(prefix)) {
        return;
    }
    let spoofed: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for k in spoofed {
        h.remove(&k);
    }
}

/// Size of a header list the RFC 9113 §6.5.2 way: for every field, name and value lengths
/// plus 32. One pass over the map, no allocation: it runs on every call.
fn field_list_size(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum()
}

/// Size of the HEADERS block h2 will send for `head`: the pseudo-headers it writes
/// (`:method`, `:scheme`, `:authority`, `:path`) and every field.
fn head_list_size(head: &http::request::Parts) -> usize {
    let uri = &head.uri;
    let pseudo = |name: usize, value: usize| name + value + 32;
    let mut n = pseudo(":method".len(), head.method.as_str().len());
    if let Some(s) = uri.scheme_str() {
        n += pseudo(":scheme".len(), s.len());
    }
    if let Some(a) = uri.authority() {
        n += pseudo(":authority".len(), a.as_str().len());
    }
    let path = uri.path_and_query().map_or(1, |p| p.as_str().len());
    n + pseudo(":path".len(), path) + field_list_size(&head.headers)
}

/// Try instances until one accepts a new stream; an instance whose link has received GOAWAY
/// or died refuses at once and is marked, so the caller never sees a drained instance.
async fn open_stream(
    route: &Route,
    tiers: &crate::routing::Tiers,
) -> Result<(InFlight, h2::client::SendRequest<Bytes>), GatewayError> {
    let mut tried: Vec<Arc<Instance>> = Vec::new();
    loop {
        let inst = crate::routing::select(&route.instances, tiers, &tried)
            .ok_or_else(|| GatewayError::NoHealthyInstance(route.service.to_string()))?;
        let call = inst.begin_call();
        match inst.sender.clone().ready().await {
            Ok(sender) => return Ok((call, sender)),
            Err(e) => {
                let to = if e.is_go_away() {
                    LinkState::Draining
                } else {
                    LinkState::Offline
                };
                tracing::debug!(service = %inst.service, instance = %inst.instance_id, error = %e, "link refused a new stream");
                inst.set_state(to);
                tried.push(inst);
            }
        }
    }
}

/// Forward `req` to an instance of `ctx.route`.
///
/// Nothing a single call sends may become a connection error on the link, which would fail
/// every other call on it: the head is measured against the service's declared header list
/// limit and refused with 431 before a byte is sent, only `te: trailers` crosses, the
/// `content-length` sent is the one the client's framing proved, and trailers get the same
/// policy and bound as heads.
pub async fn forward<B>(
    req: Request<B>,
    ctx: CallContext<'_>,
    tiers: &crate::routing::Tiers,
) -> Result<Response<GatewayBody>, GatewayError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let (mut parts, body) = req.into_parts();

    let exact_len = body.size_hint().exact();
    if let Some(len) = exact_len {
        if len > ctx.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge);
        }
    }
    if parts.method == http::Method::CONNECT {
        // An HTTP/2 server treats CONNECT with `:path`/`:scheme` as malformed, and enough
        // malformed streams make it close the connection (h2's local error reset limit).
        return Err(GatewayError::BadRequest("method"));
    }

    // The service sees the client's host as `:authority` (a bad one is replaced by the service
    // name). Parsed once; the path and query are reused as they are.
    let authority = match parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) => h.parse::<Authority>().ok(),
        None => parts.uri.authority().cloned(),
    };
    // The early phase applies [`strip_client_forbidden`]; here only what must never cross
    // a hop, whoever added it.
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    let h = &mut parts.headers;
    // The length the service is told is the length the client's framing delivers: a
    // `content-length` beside chunked framing would make the service's HTTP/2 server reset
    // the stream as malformed (and count it towards closing the link).
    match exact_len {
        Some(n) if h.contains_key(header::CONTENT_LENGTH) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Some(_) => {}
        None => {
            h.remove(header::CONTENT_LENGTH);
        }
    }
    // Marked sensitive where it was made (`pipeline::correlation_id`): never indexed, so it
    // does not churn the link's HPACK table.
    h.insert(
        HeaderName::from_static(portcullis_link::headers::CORRELATION_ID),
        ctx.correlation_id.clone(),
    );
    if let Some(v) = &ctx.route.template_header {
        h.insert(
            HeaderName::from_static(portcullis_link::headers::ROUTE),
            v.clone(),
        );
    }
    // The one identity a service sees is the gateway's. `insert` replaces every value; the
    // early phase stripped the client's already, this keeps it so whoever added one.
    match ctx.identity {
        Some(v) => {
            h.insert(IDENTITY, v);
        }
        None => {
            h.remove(IDENTITY);
        }
    }
    if let Some(ip) = ctx.client_ip {
        use std::fmt::Write;
        let mut xff = String::with_capacity(48);
        if let Some(prev) = h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            xff.push_str(prev);
            xff.push_str(", ");
        }
        let _ = write!(xff, "{ip}");
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
            h.insert(X_FORWARDED_FOR, v);
        }
    }

    let authority = match authority {
        Some(a) => a,
        None => ctx
            .route
            .service
            .parse::<Authority>()
            .map_err(|_| GatewayError::BadRequest("uri"))?,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| GatewayError::BadRequest("uri"))?;
    parts.version = http::Version::HTTP_2;
    crate::telemetry::inject_trace(&mut parts.headers);
    // Measured after every header the gateway adds: this is the block h2 will encode.
    let head_size = head_list_size(&parts);
    let head = Request::from_parts(parts, ());

    // One deadline bounds both waiting for stream capacity and waiting for the response head.
    let deadline = tokio::time::Instant::now() + ctx.route.timeout;
    let (call, mut sender) = tokio::time::timeout_at(deadline, open_stream(ctx.route, tiers))
        .await
        .map_err(|_| GatewayError::UpstreamTimeout)??;
    let max_fields = call.instance().max_header_list_size as usize;
    // h2 servers flag a list *at* the limit as over it.
    if head_size >= max_fields {
        return Err(GatewayError::HeadersTooLarge);
    }
    let opened = std::time::Instant::now();
    let end_of_stream = body.is_end_stream();
    let (response, send) = sender
        .send_request(head, end_of_stream)
        .map_err(|e| upstream(&call, e))?;

    let (end_tx, mut end_rx) = oneshot::channel();
    if !end_of_stream {
        tokio::spawn(pump(
            body,
            send,
            PumpLimits {
                max_body: ctx.max_body_bytes,
                stall: ctx.body_stall_timeout,
                max_fields,
            },
            end_tx,
        ));
    } else {
        drop(end_tx);
    }

    // The pump says why it stopped *before* it resets the stream, and is polled first, so a
    // refusal of the client's body (413, 400, 431) is never mistaken for the service's
    // failure when the reset makes the response future fail too.
    tokio::pin!(response);
    let head = tokio::select! {
        biased;
        Ok(end) = &mut end_rx => return Err(end.into()),
        r = tokio::time::timeout_at(deadline, &mut response) => match r {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) => {
                if let Ok(end) = end_rx.try_recv() {
                    return Err(end.into());
                }
                return Err(upstream(&call, e));
            }
            Ok(Ok(resp)) => resp,
        },
    };
    ctx.metrics
        .upstream_duration
        .get_or_create(&crate::telemetry::metrics::RouteLabels {
            service: crate::telemetry::metrics::Label(ctx.route.service.clone()),
            route: crate::telemetry::metrics::Label(ctx.route.template.clone()),
        })
        .observe(opened.elapsed().as_secs_f64());
    let (mut parts, recv) = head.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .extensions
        .insert(ServedBy(call.instance().instance_id.clone()));
    Ok(Response::from_parts(
        parts,
        GatewayBody::upstream(recv, call),
    ))
}

fn upstream(call: &InFlight, e: h2::Error) -> GatewayError {
    let inst = call.instance();
    if e.is_io() || e.is_go_away() {
        // A dead link: stop choosing the instance now; its link task removes it.
        if e.is_io() {
            inst.set_state(LinkState::Offline);
        }
    }
    GatewayError::Upstream {
        instance: format!("{}/{}", inst.service, inst.instance_id),
        source: e,
    }
}

/// Why the pump stopped the client's body before its end: each is the client's fault, and
/// answered as such instead of as the service's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// More than `ingress.max_body_bytes`: 413.
    TooLarge,
    /// The client's framing is broken (bad chunk), or the client went away mid-body: 400.
    ClientBody,
    /// Trailers larger than the service's header list limit: 431.
    TrailersTooLarge,
    /// No byte of the body for `ingress.request_body_stall_timeout`: 408.
    Stalled,
}

impl From<PumpEnd> for GatewayError {
    fn from(e: PumpEnd) -> Self {
        match e {
            PumpEnd::TooLarge => GatewayError::PayloadTooLarge,
            PumpEnd::ClientBody => GatewayError::BadRequest("body"),
            PumpEnd::TrailersTooLarge => GatewayError::HeadersTooLarge,
            PumpEnd::Stalled => GatewayError::RequestTimeout,
        }
    }
}

struct PumpLimits {
    max_body: u64,
    /// The service's header list limit, for the trailers.
    max_fields: usize,
    /// Longest wait for the next frame of the client's body.
    stall: std::time::Duration,
}

/// Send `data` on `send` as the stream's flow control allows, waiting for capacity; `Err`
/// when the stream is gone (reset, or the link closed).
pub(crate) async fn send_all(send: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(c)) if c > 0 => c,
            Some(Ok(_)) => continue,
            _ => return Err(()),
        };
        let chunk = data.split_to(cap.min(data.len()));
        send.send_data(chunk, false).map_err(drop)?;
    }
    Ok(())
}

/// Copy the client's body to the service under HTTP/2 flow control.
async fn pump<B>(
    body: B,
    mut send: h2::SendStream<Bytes>,
    limits: PumpLimits,
    end: oneshot::Sender<PumpEnd>,
) where
    B: Body<Data = Bytes> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut sent: u64 = 0;
    // Report first, then reset: the forwarder must see the reason before the reset.
    let stop = |send: &mut h2::SendStream<Bytes>, end: oneshot::Sender<PumpEnd>, why| {
        let _ = end.send(why);
        send.send_reset(h2::Reason::CANCEL);
    };
    loop {
        let frame = tokio::select! {
            // The error's detail is not needed, and dropping it keeps the task `Send`.
            f = tokio::time::timeout(limits.stall, body.frame()) => match f {
                Ok(f) => f.map(|r| r.map_err(drop)),
                Err(_) => {
                    tracing::warn!(
                        received_bytes = sent,
                        stall_ms = limits.stall.as_millis() as u64,
                        "request body stalled: call ended"
                    );
                    stop(&mut send, end, PumpEnd::Stalled);
                    return;
                }
            },
            // The service reset the stream (answered early or went away): stop reading.
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                // Bad chunk framing, or the client went away mid-body.
                stop(&mut send, end, PumpEnd::ClientBody);
                return;
            }
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        sent += data.len() as u64;
                        if sent > limits.max_body {
                            stop(&mut send, end, PumpEnd::TooLarge);
                            return;
                        }
                        if send_all(&mut send, data).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(frame) => frame,
                };
                if let Ok(mut trailers) = frame.into_trailers() {
                    strip_client_forbidden_trailers(&mut trailers);
                    // Trailers are a HEADERS block too: one the service cannot take would
                    // close the link just as an oversized head would.
                    if field_list_size(&trailers) >= limits.max_fields {
                        stop(&mut send, end, PumpEnd::TrailersTooLarge);
                        return;
                    }
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_policy_drops_gateway_fields_credentials_and_hop_by_hop_in_one_place() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-portcullis-route", "/spoof"),
            ("x-portcullis-anything", "1"),
            ("authorization", "Bearer stolen"),
            ("proxy-authorization", "Basic x"),
            ("connection", "x-named"),
            ("x-named", "1"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers, gzip"),
            ("host", "example"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let mut trailers = h.clone();
        strip_client_forbidden(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
        strip_client_forbidden_trailers(&mut trailers);
        let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn head_size_counts_pseudo_headers_and_32_octets_per_field() {
        let req = Request::get("http://svc/abc?q=1")
            .header("x-a", "bc")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        let expected = (7 + 3 + 32) // :method GET
            + (7 + 4 + 32) // :scheme http
            + (10 + 3 + 32) // :authority svc
            + (5 + 8 + 32) // :path /abc?q=1
            + (3 + 2 + 32); // x-a: bc
        assert_eq!(head_list_size(&parts), expected);
    }
}
