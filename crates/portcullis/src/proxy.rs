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

/// Response extension naming the instance that served the call, for the access log.
#[derive(Debug, Clone)]
pub struct ServedBy(pub Arc<str>);

/// What a call needs besides the request.
pub struct CallContext<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// Correlation id of the call.
    pub correlation_id: &'a HeaderValue,
    /// Largest body the client may send.
    pub max_body_bytes: u64,
    /// Address of the client, for `x-forwarded-for`.
    pub client_ip: Option<std::net::IpAddr>,
    /// Where upstream latency is recorded.
    pub metrics: &'a crate::telemetry::Metrics,
}

/// Remove hop-by-hop headers and those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let keep_te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    if keep_te_trailers {
        // gRPC requires `te: trailers` end to end; it is the one TE value HTTP/2 allows.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
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

    if let Some(len) = body.size_hint().exact() {
        if len > ctx.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge);
        }
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
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    // A fresh value on every call: never indexed, so it does not churn the link's HPACK table
    // (which then keeps the headers that do repeat).
    let mut cid = ctx.correlation_id.clone();
    cid.set_sensitive(true);
    h.insert(
        HeaderName::from_static(portcullis_link::headers::CORRELATION_ID),
        cid,
    );
    if let Some(v) = &ctx.route.template_header {
        h.insert(
            HeaderName::from_static(portcullis_link::headers::ROUTE),
            v.clone(),
        );
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
    let head = Request::from_parts(parts, ());

    // One deadline bounds both waiting for stream capacity and waiting for the response head.
    let deadline = tokio::time::Instant::now() + ctx.route.timeout;
    let (call, mut sender) = tokio::time::timeout_at(deadline, open_stream(ctx.route, tiers))
        .await
        .map_err(|_| GatewayError::UpstreamTimeout)??;
    let opened = std::time::Instant::now();
    let end_of_stream = body.is_end_stream();
    let (response, send) = sender
        .send_request(head, end_of_stream)
        .map_err(|e| upstream(&call, e))?;

    let (too_large_tx, too_large_rx) = oneshot::channel();
    if !end_of_stream {
        tokio::spawn(pump(body, send, ctx.max_body_bytes, too_large_tx));
    }

    let head = tokio::select! {
        r = tokio::time::timeout_at(deadline, response) => match r {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(e)) => return Err(upstream(&call, e)),
            Ok(Ok(resp)) => resp,
        },
        Ok(()) = too_large_rx => return Err(GatewayError::PayloadTooLarge),
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

/// Copy the client's body to the service under HTTP/2 flow control.
async fn pump<B>(body: B, mut send: h2::SendStream<Bytes>, max: u64, too_large: oneshot::Sender<()>)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut sent: u64 = 0;
    loop {
        let frame = tokio::select! {
            // The error's detail is not needed, and dropping it keeps the task `Send`.
            f = body.frame() => f.map(|r| r.map_err(drop)),
            // The service reset the stream (answered early or went away): stop reading.
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                // The client went away mid-body (or sent a malformed one).
                send.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        sent += data.len() as u64;
                        if sent > max {
                            send.send_reset(h2::Reason::CANCEL);
                            let _ = too_large.send(());
                            return;
                        }
                        while !data.is_empty() {
                            send.reserve_capacity(data.len());
                            let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await
                            {
                                Some(Ok(c)) if c > 0 => c,
                                Some(Ok(_)) => continue,
                                _ => return,
                            };
                            let chunk = data.split_to(cap.min(data.len()));
                            if send.send_data(chunk, false).is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Err(frame) => frame,
                };
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}
