//! The data-plane threads end with the gateway, even when its future is dropped without
//! a shutdown (a runtime torn down, a task aborted), and take their connections with them.
//! Alone in its test binary: it counts the process's threads by name.

#[path = "gateway/common/mod.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Threads named `portcullis-dp-N` (the kernel keeps 15 characters of a name).
fn data_plane_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("portcullis-dp-"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn data_plane_threads_stop_when_the_gateway_future_is_dropped() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (gw, svc, mut client) = rt.block_on(async {
        let mut cfg = config_with_services(&["echo"]);
        cfg.runtime.threads = 2;
        let gw = TestGateway::start(cfg).await;
        let svc = gw.echo("echo-1").await;
        // A keep-alive client connection outside the runtime: only the gateway can close it.
        let mut client = std::net::TcpStream::connect(gw.ingress).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!(
            "GET /echo/x HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\n\r\n",
            gw.api_key()
        );
        client.write_all(request.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        client.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        (gw, svc, client)
    });
    assert_eq!(
        data_plane_threads(),
        2,
        "two data-plane threads while the gateway runs"
    );

    // The gateway's task (and with it the only owner of the data plane) goes with the runtime.
    rt.shutdown_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while data_plane_threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        data_plane_threads(),
        0,
        "the data-plane threads end with the gateway"
    );
    // The connection was dropped with its thread: the rest of the response, then EOF.
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("closed, not timed out");

    // What the test still holds is dropped where a runtime exists.
    let cleanup = tokio::runtime::Runtime::new().unwrap();
    cleanup.block_on(async move {
        drop(svc);
        drop(gw);
    });
}
