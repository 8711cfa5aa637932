//! Tests against the real `portcullis` binary in its own process: graceful shutdown on
//! SIGTERM, redaction of every log line, and memory bounded while 256 MiB bodies stream through.

mod common;

use common::*;
use http::StatusCode;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct GatewayProcess {
    child: Child,
    ingress: SocketAddr,
    link: SocketAddr,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    fn start(extra_toml: &str, log_level: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "[ingress]\nlisten = \"127.0.0.1:0\"\n[link]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"200ms\"\n[services.echo]\ntoken_sha256 = \"{}\"\n{extra_toml}",
            hex::encode(portcullis::link::hash_token(&token_for("echo")))
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("PORTCULLIS_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("gateway listening") {
                        let _ = tx.send(line.clone());
                    }
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway reports its addresses");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        Self {
            child,
            ingress: v["ingress"].as_str().unwrap().parse().unwrap(),
            link: v["link"].as_str().unwrap().parse().unwrap(),
            logs,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingress, path)
    }

    async fn echo(&self) -> (portcullis_sdk::Running, echo_service::Stats) {
        let stats = echo_service::Stats::default();
        let mut b = portcullis_sdk::Service::builder("echo")
            .gateway(format!("tcp://{}", self.link))
            .token(token_for("echo"))
            .instance_id("echo-1");
        for e in echo_service::endpoints() {
            b = b.endpoint(e);
        }
        let running = b.serve(echo_service::router(stats.clone())).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running.linked())
            .await
            .expect("links");
        (running, stats)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Peak resident memory of the gateway process, bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap();
        kb * 1024
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_and_exits_zero() {
    let mut gw = GatewayProcess::start("[shutdown]\ngrace_period = \"20s\"\n", "info");
    let (_svc, stats) = gw.echo().await;
    let client = client();
    let url = gw.url("/sleep?ms=1500");
    let call = tokio::spawn(async move {
        let req = http::Request::get(url).body(empty()).unwrap();
        collect(client.request(req).await.unwrap()).await
    });
    eventually("the call is in flight", || {
        let s = stats.clone();
        async move { s.requests() == 1 }
    })
    .await;
    gw.signal("-TERM");
    let (status, _, body) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let mut exit = None;
    for _ in 0..200 {
        if let Some(s) = gw.child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("the gateway exits within the grace period");
    assert!(exit.success(), "exit status {exit:?}");
    let logs = gw.logs.lock().unwrap().clone();
    assert!(logs.contains("draining"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_logs() {
    let gw = GatewayProcess::start("", "trace");
    let (_svc, _) = gw.echo().await;
    let client = client();
    let key = "pcs_testkey1_S3cretSecretSecretSecret1abcde";
    for path in ["/echo/x", "/nope", &format!("/echo/y?api_key={key}")] {
        let req = http::Request::get(gw.url(path))
            .header("authorization", format!("Bearer {key}"))
            .header("cookie", "session=CookieSecretValue42")
            .header("x-api-key", key)
            .body(empty())
            .unwrap();
        let _ = collect(client.request(req).await.unwrap()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = gw.logs.lock().unwrap().clone();
    assert!(
        logs.contains("\"call\"") || logs.contains("call"),
        "calls are logged"
    );
    for secret in [
        "S3cretSecretSecret",
        "CookieSecretValue42",
        &token_for("echo"),
    ] {
        assert!(!logs.contains(secret), "secret {secret} leaked into logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_gateway_memory() {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    const SIZE: u64 = 256 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let gw = GatewayProcess::start("", "info");
    let (_svc, _) = gw.echo().await;
    let client = client();

    // Upload 256 MiB generated on the fly; the service hashes what it receives.
    let chunk: bytes::Bytes = (0..CHUNK)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut expected = Sha256::new();
    for _ in 0..(SIZE as usize / CHUNK) {
        expected.update(&chunk);
    }
    let expected = hex::encode(expected.finalize());
    let c = chunk.clone();
    let stream = futures_util::stream::iter(0..(SIZE as usize / CHUNK))
        .map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(c.clone())));
    let body = StreamBody::new(stream)
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { match e {} })
        .boxed();
    let req = http::Request::post(gw.url("/upload")).body(body).unwrap();
    let (status, _, body) = collect(client.request(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["bytes"], SIZE);
    assert_eq!(v["sha256"], expected.as_str());

    // Download 256 MiB; compare with the same stream taken from the service directly.
    let req = http::Request::get(gw.url(&format!("/stream?bytes={SIZE}")))
        .body(empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut n, mut h) = (0u64, Sha256::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len() as u64;
            h.update(&data);
        }
    }
    assert_eq!(n, SIZE);
    let direct = {
        use tower::ServiceExt;
        let req = http::Request::get(format!("/stream?bytes={SIZE}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = echo_service::router(echo_service::Stats::default())
            .oneshot(req)
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut h = Sha256::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                h.update(&data);
            }
        }
        h.finalize()
    };
    assert_eq!(h.finalize(), direct, "the download arrives intact");

    // The gateway never held a body: its peak memory stays far below one body.
    let peak = gw.peak_rss();
    eprintln!(
        "gateway peak RSS after 2 x 256 MiB: {} MiB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < 96 * 1024 * 1024,
        "gateway peak RSS {} MiB",
        peak / (1024 * 1024)
    );
}
