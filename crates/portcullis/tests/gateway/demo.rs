//! `portcullis demo --json` from the real binary: one JSON line once ready (with the demo's
//! API key and data directory), the routes it lists answer through the gateway with that key
//! and refuse calls without it, and the CLI pointed at the demo's store manages its key.

use crate::common::*;
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

    let key = v["api_key"].as_str().expect("api_key in the JSON line");
    let data_dir = v["data_dir"].as_str().expect("data_dir in the JSON line");
    assert!(std::path::Path::new(data_dir)
        .join("portcullis.db")
        .exists());

    let get = |key: Option<String>| {
        let ingress = ingress.clone();
        async move {
            let mut req = http::Request::get(format!("{ingress}/echo/hello?name=world"));
            if let Some(k) = key {
                req = req.header("authorization", format!("Bearer {k}"));
            }
            collect(client().request(req.body(empty()).unwrap()).await.unwrap()).await
        }
    };
    let (status, _, body) = get(Some(key.to_string())).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(json(&body)["query"], "name=world");
    let (status, headers, body) = get(None).await;
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(&body[..], br#"{"error":"unauthorized"}"#);

    // The echo service linked with an Ed25519 key whose pairing the demo (and only the demo)
    // approved by itself.
    let (code, out, err) = process::cli(&["pairings", "list", "--json", "--data-dir", data_dir]);
    assert_eq!(code, 0, "{err}");
    let pairings: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(pairings["pairings"][0]["state"], "approved", "{pairings}");
    assert_eq!(pairings["pairings"][0]["service"], "echo");
    assert_eq!(pairings["pairings"][0]["decided_by"], "demo-auto-approve");

    // The CLI, pointed at the running demo, sees its key and can revoke it.
    let key_id = v["key_id"].as_str().unwrap();
    // `process::cli` runs the binary in a clean environment: no PORTCULLIS_* of the runner's
    // can point it at another store.
    let (code, out, _) = process::cli(&["keys", "list", "--json", "--data-dir", data_dir]);
    assert_eq!(code, 0);
    assert!(out.contains(key_id));
    let (code, _, err) = process::cli(&["keys", "revoke", key_id, "--data-dir", data_dir]);
    assert_eq!(code, 0, "{err}");
    // Another process changed the key: the demo gateway notices within its poll interval.
    eventually("the revoked demo key is refused", || {
        let key = key.to_string();
        async move { get(Some(key)).await.0 == http::StatusCode::UNAUTHORIZED }
    })
    .await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "demo exits cleanly on SIGTERM: {status:?}"
    );
}

/// The guide the demo prints names the binary that runs it, so its commands work pasted as
/// they are, with no `portcullis` on the PATH (the README's `cargo run -- demo`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_guide_names_the_binary_it_runs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--ingress", "127.0.0.1:0", "--link", "127.0.0.1:0"])
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
    let mut guide = Vec::new();
    while !guide.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        guide.push(
            rx.recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the guide ends; got {guide:?}")),
        );
    }
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_portcullis")).unwrap();
    let list = guide
        .iter()
        .find(|l| l.contains(" keys list --data-dir "))
        .expect("a keys list line");
    let shown = list.trim().split(' ').next().unwrap();
    assert_eq!(
        std::fs::canonicalize(shown).ok().as_deref(),
        Some(exe.as_path()),
        "{list}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}
