//! The Portcullis demo service: echo, stream, upload, sleep, stats, whoami.
//!
//! [`router`] is a plain `axum::Router`, so the same routes serve over a gateway link (through
//! `portcullis-sdk`) or on a plain listener for benchmarks. [`endpoints`] declares them to the
//! gateway. Every body is handled as a stream: no route buffers a whole request or response.
//! `/whoami` answers with the caller the gateway asserted (the SDK's verified
//! [`Identity`]); on a plain listener there is none, and it answers 401.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use portcullis_sdk::{Endpoint, Identity};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Default chunk size of `/stream`.
pub const DEFAULT_CHUNK: usize = 64 * 1024;
/// Largest chunk size of `/stream`.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Longest `/sleep`: ten minutes.
pub const MAX_SLEEP_MS: u64 = 600_000;

/// Capability callers need for the read-only routes.
const READ_CAPABILITY: Option<&str> = Some("echo.read");
/// Capability callers need for `/upload`.
const WRITE_CAPABILITY: Option<&str> = Some("echo.write");

/// Counters shared by every clone; cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Stats(Arc<Counters>);

#[derive(Default, Debug)]
struct Counters {
    requests: AtomicU64,
    cancellations: AtomicU64,
}

impl Stats {
    /// Requests received, on every route.
    pub fn requests(&self) -> u64 {
        self.0.requests.load(Ordering::Relaxed)
    }

    /// `/sleep` calls whose handler was dropped before it answered.
    pub fn cancellations(&self) -> u64 {
        self.0.cancellations.load(Ordering::Relaxed)
    }

    fn count_request(&self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// The service's routes.
pub fn router(stats: Stats) -> Router {
    Router::new()
        // A link template's catch-all also matches nothing; axum's does not.
        .route("/echo", any(echo))
        .route("/echo/", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/stream", get(stream))
        .route("/upload", post(upload))
        .route("/sleep", get(sleep))
        .route("/stats", get(stats_handler))
        .route("/whoami", get(whoami))
        .with_state(stats)
}

fn declare(e: Endpoint, capability: Option<&str>) -> Endpoint {
    match capability {
        Some(c) => e.capability(c),
        None => e,
    }
}

/// The endpoints [`router`] serves, as declared to the gateway.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        declare(
            Endpoint::any("/echo/{*rest}").workspace_scoped(),
            READ_CAPABILITY,
        ),
        declare(Endpoint::get("/stream").streaming(), READ_CAPABILITY),
        declare(
            Endpoint::post("/upload").streaming().workspace_scoped(),
            WRITE_CAPABILITY,
        ),
        declare(
            Endpoint::get("/sleep").timeout(Duration::from_millis(MAX_SLEEP_MS)),
            READ_CAPABILITY,
        ),
        declare(Endpoint::get("/stats"), READ_CAPABILITY),
        declare(Endpoint::get("/whoami").workspace_scoped(), READ_CAPABILITY),
    ]
}

/// Count the bytes of a body without holding it.
async fn drain_body(body: Body, mut each: impl FnMut(&Bytes)) -> Result<u64, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        each(&chunk);
    }
    Ok(n)
}

fn bad_body(e: axum::Error) -> (axum::http::StatusCode, String) {
    (
        axum::http::StatusCode::BAD_REQUEST,
        format!("request body: {e}"),
    )
}

async fn echo(
    State(stats): State<Stats>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
    stats.count_request();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        // The gateway's signed identity assertion is a credential the service verified: it is
        // never handed back to the caller (`/whoami` shows who the caller is).
        let value = if name.as_str() == portcullis_sdk::IDENTITY_HEADER {
            "[redacted]".into()
        } else {
            String::from_utf8_lossy(value.as_bytes())
        };
        map.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let body_len = drain_body(body, |_| {}).await.map_err(bad_body)?;
    Ok(Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": map,
        "body_len": body_len,
    })))
}

/// Query of `/stream`.
#[derive(Debug, Deserialize)]
struct StreamQuery {
    bytes: u64,
    chunk: Option<usize>,
}

/// `bytes` bytes of a repeating pattern, in chunks of `chunk`; never allocates more than one
/// chunk.
async fn stream(State(stats): State<Stats>, Query(q): Query<StreamQuery>) -> Body {
    stats.count_request();
    let chunk = q.chunk.unwrap_or(DEFAULT_CHUNK).clamp(1, MAX_CHUNK);
    let len = usize::try_from(q.bytes).map_or(chunk, |b| b.min(chunk));
    let block: Bytes = (0..len)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into();
    // Each chunk restarts the pattern at 'a', so a chunk is always a prefix of `block`.
    let body = futures_util::stream::unfold(q.bytes, move |left| {
        let block = block.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = usize::try_from(left).map_or(block.len(), |l| l.min(block.len()));
            Some((
                Ok::<_, std::convert::Infallible>(block.slice(..n)),
                left - n as u64,
            ))
        }
    });
    Body::from_stream(body)
}

async fn upload(
    State(stats): State<Stats>,
    body: Body,
) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
    stats.count_request();
    let mut hasher = Sha256::new();
    let bytes = drain_body(body, |c| hasher.update(c))
        .await
        .map_err(bad_body)?;
    Ok(Json(
        json!({ "bytes": bytes, "sha256": hex::encode(hasher.finalize()) }),
    ))
}

/// Query of `/sleep`.
#[derive(Debug, Deserialize)]
struct SleepQuery {
    ms: u64,
}

/// Counts a cancellation unless disarmed: dropped before the handler answered.
struct CancelGuard {
    stats: Stats,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.stats.0.cancellations.fetch_add(1, Ordering::Relaxed);
            tracing::info!("sleep cancelled");
        }
    }
}

async fn sleep(State(stats): State<Stats>, Query(q): Query<SleepQuery>) -> Json<Value> {
    stats.count_request();
    let ms = q.ms.min(MAX_SLEEP_MS);
    let mut guard = CancelGuard { stats, armed: true };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    guard.armed = false;
    Json(json!({ "slept_ms": ms }))
}

/// The verified caller: who, in which workspace, by which credential.
async fn whoami(State(stats): State<Stats>, id: Identity) -> Json<Value> {
    stats.count_request();
    Json(json!({
        "subject": id.subject(),
        "workspace": { "id": id.workspace_id(), "name": id.workspace_name() },
        "credential": { "kind": id.credential_kind(), "id": id.credential_id() },
    }))
}

async fn stats_handler(State(stats): State<Stats>) -> Json<Value> {
    stats.count_request();
    Json(json!({
        "cancellations": stats.cancellations(),
        "requests": stats.requests(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(stats: &Stats, req: Request<Body>) -> (StatusCode, Bytes) {
        let resp = router(stats.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn json_of(stats: &Stats, req: Request<Body>) -> Value {
        let (status, body) = call(stats, req).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn echo_reports_the_request() {
        let stats = Stats::default();
        let req = Request::put("/echo/a/b?x=1&y=2")
            .header("x-one", "1")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(Body::from("hello"))
            .unwrap();
        let v = json_of(&stats, req).await;
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], "/echo/a/b");
        assert_eq!(v["query"], "x=1&y=2");
        assert_eq!(v["headers"]["x-one"], "1");
        assert_eq!(v["headers"]["x-multi"], "a, b");
        assert_eq!(v["body_len"], 5);
        let v = json_of(&stats, Request::get("/echo/").body(Body::empty()).unwrap()).await;
        assert_eq!(v["query"], Value::Null);
        assert_eq!(stats.requests(), 2);
    }

    #[tokio::test]
    async fn stream_sends_exactly_n_bytes_in_bounded_chunks() {
        let stats = Stats::default();
        let req = Request::get("/stream?bytes=200000&chunk=65536")
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&stats, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 200_000);
        assert_eq!(&body[..3], b"abc");
        assert_eq!(body[65_536], b'a');

        let req = Request::get("/stream?bytes=3000000&chunk=99999999")
            .body(Body::empty())
            .unwrap();
        let mut body = router(stats.clone())
            .oneshot(req)
            .await
            .unwrap()
            .into_body();
        let (mut total, mut biggest) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            total += data.len();
            biggest = biggest.max(data.len());
        }
        assert_eq!(total, 3_000_000);
        assert_eq!(biggest, MAX_CHUNK);

        let (_, body) = call(
            &stats,
            Request::get("/stream?bytes=0").body(Body::empty()).unwrap(),
        )
        .await;
        assert!(body.is_empty());
        let (status, _) = call(&stats, Request::get("/stream").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn upload_hashes_the_body() {
        let stats = Stats::default();
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let req = Request::post("/upload")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        let v = json_of(&stats, req).await;
        assert_eq!(v["bytes"], 11);
        assert_eq!(
            v["sha256"],
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_answers_and_counts_cancellations() {
        let stats = Stats::default();
        let v = json_of(
            &stats,
            Request::get("/sleep?ms=50").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(v["slept_ms"], 50);
        let v = json_of(
            &stats,
            Request::get("/sleep?ms=99999999")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(v["slept_ms"], MAX_SLEEP_MS);
        assert_eq!(stats.cancellations(), 0);

        let req = Request::get("/sleep?ms=10000").body(Body::empty()).unwrap();
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            router(stats.clone()).oneshot(req),
        )
        .await;
        assert!(r.is_err());
        assert_eq!(stats.cancellations(), 1);

        let v = json_of(&stats, Request::get("/stats").body(Body::empty()).unwrap()).await;
        assert_eq!(v["cancellations"], 1);
        assert_eq!(v["requests"], 4);
    }

    /// Served without a gateway there is no verified caller: refused, not answered empty.
    #[tokio::test]
    async fn whoami_needs_a_verified_identity() {
        let stats = Stats::default();
        let req = Request::get("/whoami")
            .header("x-portcullis-identity", "forged")
            .body(Body::empty())
            .unwrap();
        let (status, _) = call(&stats, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(stats.requests(), 0);
    }

    #[test]
    fn endpoints_are_valid_and_match_the_routes() {
        let eps = endpoints();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = rt.enter();
        // The SDK validates descriptors in `serve`; nothing is dialled before the first poll.
        let running = portcullis_sdk::Service::builder("echo")
            .gateway("tcp://127.0.0.1:9")
            .token("t")
            .endpoints(eps.clone())
            .serve(router(Stats::default()));
        assert!(running.is_ok());
        let shapes: Vec<_> = eps
            .iter()
            .map(|e| (e.descriptor().method.as_str(), e.descriptor().path.as_str()))
            .collect();
        assert!(shapes.contains(&("*", "/echo/{*rest}")));
        let upload = eps
            .iter()
            .find(|e| e.descriptor().path == "/upload")
            .unwrap();
        assert_eq!(
            upload.descriptor().capability.as_deref(),
            Some("echo.write")
        );
        let sleep = eps
            .iter()
            .find(|e| e.descriptor().path == "/sleep")
            .unwrap();
        assert_eq!(sleep.descriptor().timeout_ms, Some(600_000));
    }
}
