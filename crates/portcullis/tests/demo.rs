//! `portcullis demo --json` from the real binary: one JSON line once ready, and the routes it
//! lists answer through the gateway.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_json_line_describes_a_working_gateway() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "demo",
            "--ingress",
            "127.0.0.1:0",
            "--link",
            "127.0.0.1:0",
            "--json",
        ])
        .env("PORTCULLIS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("one JSON line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("the line is JSON");
    let ingress = v["ingress"].as_str().unwrap().to_string();
    assert!(v["link"].as_str().unwrap().starts_with("tcp://"));
    let routes: Vec<String> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(routes.iter().any(|r| r == "* /echo/{*rest}"), "{routes:?}");

    let mut req = http::Request::get(format!("{ingress}/echo/hello?name=world"));
    if let Some(key) = v.get("api_key").and_then(|k| k.as_str()) {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let (status, _, body) =
        collect(client().request(req.body(empty()).unwrap()).await.unwrap()).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(json(&body)["query"], "name=world");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "demo exits cleanly on SIGTERM: {status:?}"
    );
}
