//! Sessions with real worker processes (the `progress-worker` example, as
//! `portcullis demo-worker`) through the real gateway on loopback: events per second from one
//! worker to one SSE client and to one gRPC client (`StreamEvents` over HTTP/2), open-to-Ready
//! latency (p50/p99 printed besides criterion's estimate), the gateway's resident memory with
//! many sessions open, and its memory while a subscriber stalls (reads nothing) and the worker
//! keeps sending, until the session faults on the full hop.
//!
//! `cargo bench -p portcullis --bench sessions` (`SESSIONS_BENCH_N` sets how many sessions the
//! memory figure opens; default 1000).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use portcullis::auth::authenticator::CreateKey;
use portcullis::config::{BackendConfig, Config};
use portcullis::store::testing::TestStore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

type C = Client<HttpConnector, Full<Bytes>>;

struct Bench {
    _store: TestStore,
    _gw: portcullis::Running,
    base: String,
    key: String,
    client: C,
    /// HTTP/2 with prior knowledge, for gRPC.
    h2: C,
}

async fn start(max: usize) -> Bench {
    let store = TestStore::sqlite();
    let mut cfg = Config::default();
    cfg.ingress.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = store.data_dir();
    cfg.store.url = store.options.url.clone();
    cfg.ingress.max_in_flight = 100_000;
    cfg.backends.insert(
        "progress".into(),
        BackendConfig::new(vec![
            env!("CARGO_BIN_EXE_portcullis").into(),
            "demo-worker".into(),
        ]),
    );
    cfg.sessions.default_backend = Some("progress".into());
    cfg.sessions.max = max;
    cfg.sessions.max_per_workspace = max;
    portcullis::admin::init(&cfg).await.unwrap();
    let gw = portcullis::Running::start(cfg).await.unwrap();
    let key = gw
        .auth
        .create_key(
            &CreateKey {
                workspace: "default".into(),
                name: "bench".into(),
                scopes: vec!["*".into()],
                expires_in: None,
                key_id: None,
            },
            "bench",
        )
        .await
        .unwrap()
        .api_key;
    Bench {
        base: format!("http://{}", gw.ingress_addr),
        _gw: gw,
        _store: store,
        key,
        client: Client::builder(TokioExecutor::new()).build_http(),
        h2: Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    }
}

impl Bench {
    fn req(&self, method: &str, path: &str, body: Option<Value>) -> http::Request<Full<Bytes>> {
        http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key))
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap()
    }

    async fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let resp = self
            .client
            .request(self.req(method, path, body))
            .await
            .unwrap();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    async fn open(&self) -> String {
        let v = self.json("POST", "/api/v1/sessions", Some(json!({}))).await;
        v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string()
    }

    async fn last_sequence(&self, id: &str) -> u64 {
        self.json("GET", &format!("/api/v1/sessions/{id}"), None)
            .await["last_event_sequence"]
            .as_u64()
            .unwrap_or(0)
    }

    async fn state(&self, id: &str) -> String {
        self.json("GET", &format!("/api/v1/sessions/{id}"), None)
            .await["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `StreamEvents(after)` over gRPC: the response body, one length-prefixed message per
    /// event.
    async fn grpc_events(&self, id: &str, after: u64) -> hyper::body::Incoming {
        use prost::Message;
        let msg = portcullis::sessions::grpc::pb::StreamEventsRequest {
            session_id: id.into(),
            after_sequence: after,
        }
        .encode_to_vec();
        let mut framed = Vec::with_capacity(5 + msg.len());
        framed.push(0);
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let req = http::Request::post(format!(
            "{}{}StreamEvents",
            self.base,
            portcullis::sessions::grpc::PREFIX
        ))
        .header("authorization", format!("Bearer {}", self.key))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
        let resp = self.h2.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body()
    }

    async fn close(&self, id: &str) {
        self.json("DELETE", &format!("/api/v1/sessions/{id}"), None)
            .await;
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = rt.block_on(start(2000));

    let mut g = c.benchmark_group("sessions");
    g.sample_size(10);
    let mut samples = Vec::new();
    g.bench_function("open to Ready (worker process spawn + handshake)", |bn| {
        bn.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let id = b.open().await;
                    let took = t.elapsed();
                    total += took;
                    samples.push(took);
                    b.close(&id).await;
                }
                total
            })
        })
    });
    if !samples.is_empty() {
        println!(
            "open to Ready over {} opens: p50 {:?}, p99 {:?}",
            samples.len(),
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99)
        );
    }

    // One command, 1,000 progress events, one SSE client reading them all.
    const EVENTS: u64 = 1000;
    let id = rt.block_on(b.open());
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("events from one worker to one SSE client", |bn| {
        bn.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let last = b
                        .json("GET", &format!("/api/v1/sessions/{id}"), None)
                        .await["last_event_sequence"]
                        .as_u64()
                        .unwrap_or(0);
                    let mut req = b.req("GET", &format!("/api/v1/sessions/{id}/events"), None);
                    req.headers_mut()
                        .insert("last-event-id", last.to_string().parse().unwrap());
                    let mut body = b.client.request(req).await.unwrap().into_body();
                    let t = Instant::now();
                    let path = format!("/api/v1/sessions/{id}/invoke");
                    let inv = b.json(
                        "POST",
                        &path,
                        Some(json!({"kind": "primes", "payload": {"below": EVENTS, "steps": EVENTS}})),
                    );
                    let read = async {
                        // Count event lines across chunk boundaries: keep the tail.
                        let mut n = 0u64;
                        let mut buf: Vec<u8> = Vec::new();
                        while n < EVENTS {
                            let f = body.frame().await.unwrap().unwrap();
                            if let Ok(d) = f.into_data() {
                                buf.extend_from_slice(&d);
                                n += buf.windows(6).filter(|w| w == b"\ndata:").count() as u64;
                                let keep = buf.len().saturating_sub(5);
                                buf.drain(..keep);
                            }
                        }
                    };
                    let (_, ()) = tokio::join!(inv, read);
                    total += t.elapsed();
                    drop(body);
                    // The slot frees once the gateway notices the stream is gone.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                total
            })
        })
    });

    // The same over gRPC: `StreamEvents(after_sequence)`, one message per event.
    g.bench_function("events from one worker to one gRPC client", |bn| {
        bn.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let last = b.last_sequence(&id).await;
                    let mut body = b.grpc_events(&id, last).await;
                    let t = Instant::now();
                    let path = format!("/api/v1/sessions/{id}/invoke");
                    let inv = b.json(
                        "POST",
                        &path,
                        Some(json!({"kind": "primes", "payload": {"below": EVENTS, "steps": EVENTS}})),
                    );
                    let read = async {
                        // Walk the gRPC messages (1-byte flag, 4-byte length, message) across
                        // DATA frames.
                        let mut n = 0u64;
                        let mut buf: Vec<u8> = Vec::new();
                        while n < EVENTS {
                            let f = body.frame().await.unwrap().unwrap();
                            if let Ok(d) = f.into_data() {
                                buf.extend_from_slice(&d);
                                while buf.len() >= 5 {
                                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]])
                                        as usize;
                                    if buf.len() < 5 + len {
                                        break;
                                    }
                                    buf.drain(..5 + len);
                                    n += 1;
                                }
                            }
                        }
                    };
                    let (_, ()) = tokio::join!(inv, read);
                    total += t.elapsed();
                    drop(body);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                total
            })
        })
    });
    g.finish();
    rt.block_on(b.close(&id));

    // A subscriber that stalls: it opens the SSE stream and reads nothing while the worker
    // keeps sending. Every hop is bounded, so the gateway's memory stays flat until the
    // subscriber's queue is full and the session faults naming the hop.
    rt.block_on(async {
        let id = b.open().await;
        let req = b.req("GET", &format!("/api/v1/sessions/{id}/events"), None);
        let stalled = b.client.request(req).await.unwrap().into_body();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib();
        let (mut peak, mut commands) = (before, 0u32);
        let t = Instant::now();
        let mut state = b.state(&id).await;
        while state != "faulted" && state != "closed" && t.elapsed() < Duration::from_secs(60) {
            let path = format!("/api/v1/sessions/{id}/invoke");
            b.json(
                "POST",
                &path,
                Some(json!({"kind": "primes", "payload": {"below": 1000, "steps": 1000}})),
            )
            .await;
            commands += 1;
            peak = peak.max(rss_kib());
            state = b.state(&id).await;
        }
        let fault = b.json("GET", &format!("/api/v1/sessions/{id}"), None).await;
        println!(
            "stalled subscriber: {} events sent in {commands} commands over {:?}; gateway RSS {before} KiB -> peak {peak} KiB (+{} KiB); session {state}: {}",
            commands as u64 * 1000,
            t.elapsed(),
            peak.saturating_sub(before),
            fault.get("fault").map(|f| f.to_string()).unwrap_or_default()
        );
        drop(stalled);
        b.close(&id).await;
    });

    let n: usize = std::env::var("SESSIONS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib();
        let t = Instant::now();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(b.open().await);
        }
        let opened = t.elapsed();
        let after = rss_kib();
        println!(
            "{n} sessions open: gateway RSS {before} KiB -> {after} KiB (+{} KiB, {:.1} KiB per session); opened in {opened:?}",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 / n as f64
        );
        for id in &ids {
            b.close(id).await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
