//! The real `portcullis` binary in its own process, for what only a process shows: signals,
//! exit codes, log output and the subcommands.
//!
//! Every call to a routed endpoint goes through [`GatewayProcess::request`] (or `get`), so
//! credentials can be attached in one place.

use super::{client, collect, empty, token_for, AuthClient, Body};
use bytes::Bytes;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// A `portcullis` command whose environment holds no `PORTCULLIS_*` variable of the caller,
/// so overrides in the test runner's environment cannot change what a test sees.
pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Run `portcullis ARGS` to completion with extra environment variables.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// Run `portcullis ARGS` in a clean environment; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = run(args, &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `portcullis init` then `keys create --json` (scope `*`) in `dir`; returns the raw key.
pub fn init_and_create_key(dir: &std::path::Path) -> String {
    let d = dir.to_str().unwrap();
    let (code, _, err) = cli(&["init", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "init: {err}");
    let (code, out, err) = cli(&[
        "keys",
        "create",
        "--data-dir",
        d,
        "--name",
        "binary test",
        "--scopes",
        "*",
        "--json",
    ]);
    assert_eq!(code, 0, "keys create: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    v["api_key"].as_str().unwrap().to_string()
}

/// Linked instances of `service` the gateway can route to, from a `/metrics` text.
pub fn links_online(metrics: &str, service: &str) -> u64 {
    let prefix = format!("portcullis_links{{service=\"{service}\",state=\"online\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The `[services.echo]` table for the echo service's test token.
pub fn echo_service_toml() -> String {
    format!(
        "[services.echo]\ntoken_sha256 = \"{}\"\n",
        hex::encode(portcullis::link::hash_token(&token_for("echo")))
    )
}

pub struct GatewayProcess {
    pub child: Child,
    pub ingress: SocketAddr,
    pub link: SocketAddr,
    /// The monitoring listener, when `[monitoring] listen` was set.
    pub monitoring: Option<SocketAddr>,
    pub logs: Arc<Mutex<String>>,
    /// Sends the process's API key unless a request carries its own `authorization`.
    pub client: AuthClient,
    /// A key of scope `*` created with the CLI before the gateway started.
    pub key: String,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// `portcullis serve` on port 0 with the echo service allowed, `extra_toml` appended
    /// (start it with a `[section]` header) and `PORTCULLIS_LOG=log_level`.
    pub fn start(extra_toml: &str, log_level: &str) -> Self {
        Self::start_with_env(extra_toml, &[("PORTCULLIS_LOG", log_level)])
    }

    pub fn start_with_env(extra_toml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = init_and_create_key(dir.path());
        let path = dir.path().join("portcullis.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "[ingress]\nlisten = \"127.0.0.1:0\"\n[link]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"200ms\"\n{}{extra_toml}",
            echo_service_toml()
        )
        .unwrap();
        let mut cmd = command();
        cmd.args(["serve", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the binary starts");
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
            monitoring: v["monitoring"].as_str().and_then(|a| a.parse().ok()),
            logs,
            client: AuthClient {
                inner: client(),
                key: Some(key.clone()),
            },
            key,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingress, path)
    }

    /// SIGTERM, wait for the exit and for the last line ("gateway stopped") to be read;
    /// returns everything the process wrote.
    pub async fn stop_and_read_logs(&mut self) -> String {
        self.signal("-TERM");
        assert!(self.wait_exit(Duration::from_secs(15)).await.is_some());
        super::eventually("the last log line is read", || {
            let done = self.logs().contains("gateway stopped");
            async move { done }
        })
        .await;
        self.logs()
    }

    /// Everything the process wrote so far, stdout and stderr.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Send a request through the gateway with the process's key (unless it has its own).
    pub async fn request(&self, req: http::Request<Body>) -> http::Response<hyper::body::Incoming> {
        self.try_request(req)
            .await
            .expect("request reaches the gateway")
    }

    /// [`GatewayProcess::request`] for calls that may legitimately fail (the process exits).
    pub async fn try_request(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }

    pub async fn try_get(
        &self,
        path: &str,
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), hyper_util::client::legacy::Error> {
        let req = http::Request::get(self.url(path)).body(empty()).unwrap();
        Ok(collect(self.try_request(req).await?).await)
    }

    pub async fn get(&self, path: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let req = http::Request::get(self.url(path)).body(empty()).unwrap();
        collect(self.request(req).await).await
    }

    /// Link an echo service instance `echo-1` and wait until it is up.
    pub async fn echo(&self) -> (portcullis_sdk::Running, echo_service::Stats) {
        let (running, stats) = super::serve_echo(
            portcullis_sdk::Service::builder("echo")
                .gateway(format!("tcp://{}", self.link))
                .token(token_for("echo"))
                .instance_id("echo-1"),
        )
        .await;
        // And the gateway's own count, which the tests of this process read from /metrics.
        super::eventually("the gateway routes to echo", || async {
            let (_, _, body) = self.get("/metrics").await;
            links_online(&String::from_utf8_lossy(&body), "echo") >= 1
        })
        .await;
        (running, stats)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Wait up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory of the gateway process, bytes.
    pub fn peak_rss(&self) -> u64 {
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
