//! The README's service, as a newcomer pastes it: `examples/orders-service/src/main.rs` is the
//! program the README prints (checked here, with the `Cargo.toml` lines it shows), built by the
//! workspace on its own, and run here in its own process against a real gateway: it links,
//! serves a call with the caller's identity, and drains and exits 0 on Ctrl-C (SIGINT).

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

// The README's program, compiled into this test binary so it can run as a child process of
// it (`readme_service_process`) without a second cargo build.
mod orders_main {
    include!("../../../../examples/orders-service/src/main.rs");

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

const CHILD: &str = "ORDERS_README_CHILD";
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Fenced blocks of `lang` in a markdown text, each without the indentation of its fence.
fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let indent = line.len() - line.trim_start().len();
        if line.trim_start() != format!("```{lang}") {
            continue;
        }
        let mut block = String::new();
        for l in lines.by_ref() {
            if l.trim_start() == "```" {
                break;
            }
            block.push_str(l.get(indent..).unwrap_or(l.trim_start()));
            block.push('\n');
        }
        out.push(block);
    }
    out
}

#[test]
fn the_readme_prints_the_orders_service_and_the_dependencies_it_builds_with() {
    let readme = read("README.md");
    let main_rs = read("examples/orders-service/src/main.rs");
    assert!(
        blocks(&readme, "rust").contains(&main_rs),
        "README.md must show examples/orders-service/src/main.rs verbatim in a ```rust block"
    );

    // Every dependency of the example, with at least its features, in one ```toml block of
    // the README that has a [dependencies] table.
    let manifest: toml::Table = read("examples/orders-service/Cargo.toml").parse().unwrap();
    let wanted = manifest["dependencies"].as_table().unwrap();
    let shown = blocks(&readme, "toml")
        .into_iter()
        .filter_map(|b| b.parse::<toml::Table>().ok())
        .find_map(|t| t.get("dependencies").and_then(|d| d.as_table()).cloned())
        .expect("a ```toml block with [dependencies] in README.md");
    let features = |v: &toml::Value| -> Vec<String> {
        v.get("features")
            .and_then(|f| f.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (name, spec) in wanted {
        let Some(readme_spec) = shown.get(name) else {
            panic!("README's [dependencies] lacks {name}");
        };
        for f in features(spec) {
            assert!(
                features(readme_spec).contains(&f) || (name == "axum" && f == "json"),
                "README's {name} lacks feature {f}"
            );
        }
    }
    assert_eq!(shown.len(), wanted.len(), "README lists other dependencies");
}

/// Not a test of its own: the entry point of the child process that
/// [`the_readme_service_links_serves_and_drains`] starts; without its variable it does nothing.
#[test]
fn readme_service_process() {
    if std::env::var_os(CHILD).is_some() {
        orders_main::run().expect("the README's service exits cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_service_links_serves_and_drains() {
    let gw = TestGateway::with_services(&["orders"]).await;
    let (_, key) = gw
        .create_key("orders client", &["orders.read", "orders.write"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("orders.token");
    std::fs::write(&token_file, format!("{}\n", token_for("orders"))).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["readme::readme_service_process", "--exact", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD, "1")
        .env("ORDERS_GATEWAY", gw.link_url())
        .env("ORDERS_TOKEN_FILE", &token_file)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary runs");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !seen.iter().any(|l: &String| l.contains(what)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {what:?} from the README's service; it printed {seen:?}"),
            }
        }
    };
    wait_for("orders: linked, serving until Ctrl-C");

    let (status, _, body) = gw.get_with_key("/orders/42", Some(&key)).await;
    assert_eq!(status, http::StatusCode::OK, "{body:?}");
    let v = json(&body);
    assert_eq!(v["id"], 42);
    assert_eq!(v["workspace"], "default");
    assert!(v["for"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

    let req = http::Request::post(gw.url("/orders"))
        .header("authorization", format!("Bearer {key}"))
        .body(full(b"two pizzas"))
        .unwrap();
    let (status, _, body) = collect(gw.request(req).await).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(&body[..], b"created: two pizzas\n");

    // Ctrl-C: the service drains and exits 0.
    let pid = child.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    wait_for("orders: draining");
    wait_for("orders: stopped");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the README's service exited with {status}"
    );

    // Gone from the gateway: its route is no longer served.
    eventually("the orders route is gone", || async {
        gw.get_with_key("/orders/42", Some(&key)).await.0 == http::StatusCode::NOT_FOUND
    })
    .await;
    gw.shutdown().await;
}

/// With a wrong token the README's service does not wait in silence: it exits with the
/// gateway's refusal, code and reason, without any log subscriber being asked for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_service_exits_naming_the_refusal_of_a_wrong_token() {
    let gw = TestGateway::with_services(&["orders"]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("orders.token");
    std::fs::write(&token_file, "not-the-orders-token-0123456789abcdef\n").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["readme::readme_service_process", "--exact", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD, "1")
        .env("ORDERS_GATEWAY", gw.link_url())
        .env("ORDERS_TOKEN_FILE", &token_file)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the README's service kept waiting with a wrong token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = String::new();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        std::io::Read::read_to_string(&mut pipe, &mut out).unwrap();
    }
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("orders: not linked: rejected by gateway: gateway tcp://")
            && out.contains("bad_credential"),
        "{out}"
    );
    assert!(
        !out.contains("not-the-orders-token"),
        "the token leaked: {out}"
    );
    gw.shutdown().await;
}
