//! `portcullis demo`: a gateway and the echo service, linked in one process, with nothing to
//! configure and no network beyond loopback. The echo service links the way production
//! services do, with an Ed25519 instance key enrolled by pairing (generated per run, kept in
//! memory); the one difference, **for the demo only**, is that the demo approves the pairing
//! itself the moment it is requested, where a real gateway waits for an admin's
//! `portcullis pairings approve CODE`. Routed endpoints need an API key like anywhere else: the
//! demo initialises a store (in a fresh temporary directory unless `--data-dir` is given),
//! creates a demo key and prints it, so the CLI can be pointed at the running demo with
//! `--data-dir`.

use std::future::Future;
use std::net::SocketAddr;

use crate::config::{Config, ServiceConfig};

/// Flags of `portcullis demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Client-facing address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub ingress: SocketAddr,
    /// Address the echo service links to.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub link: SocketAddr,
    /// Print one JSON object line once ready instead of the guide.
    #[arg(long)]
    pub json: bool,
    /// Keep the store here instead of a fresh temporary directory (removed on exit).
    #[arg(long, env = "PORTCULLIS_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Run the demo until `shutdown` resolves.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Held until the demo ends: the temporary store is removed with it.
    let (data_dir, _temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("portcullis-demo-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut config = Config {
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    crate::admin::init(&config)
        .await
        .map_err(|e| anyhow::anyhow!("demo store: {e}"))?;
    // Sessions: one progress-worker process per session — this very binary in its worker
    // mode (`portcullis demo-worker`), so nothing else has to be built or found.
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("demo: cannot locate this binary for its worker: {e}"))?;
    config.backends.insert(
        "progress".into(),
        crate::sessions::BackendConfig::new(vec![exe.display().to_string(), "demo-worker".into()]),
    );
    config.sessions.default_backend = Some("progress".into());
    config.ingress.listen = args.ingress;
    config.link.listen = args.link;
    config
        .services
        .insert("echo".into(), ServiceConfig::ed25519());
    // The demo approves at once, so its links need not wait the production pace.
    config.link.pairing.retry_after = std::time::Duration::from_millis(100);
    // One link per gateway worker: every call is served on the worker of its connection.
    let links = crate::dataplane::resolve_count(config.runtime.threads)
        .clamp(1, portcullis_sdk::MAX_LINKS_PER_GATEWAY);
    let gateway = crate::Running::start(config).await?;
    let key = gateway
        .auth
        .create_key(
            &crate::auth::authenticator::CreateKey {
                workspace: crate::store::DEFAULT_WORKSPACE.into(),
                name: "demo".into(),
                scopes: [
                    "echo.read",
                    "echo.write",
                    "sessions.open",
                    "sessions.read",
                    "sessions.close",
                    "sessions.events.read",
                    "compute.run",
                    "compute.read",
                ]
                .map(String::from)
                .to_vec(),
                expires_in: None,
                key_id: None,
            },
            "demo",
        )
        .await
        .map_err(|e| anyhow::anyhow!("demo key: {e}"))?;
    let api_key = key.api_key;
    let ingress = format!("http://{}", gateway.ingress_addr);
    let link = format!("tcp://{}", gateway.link_addr);

    let endpoints = echo_service::endpoints();
    let routes: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{} {}", e.descriptor().method, e.descriptor().path))
        .collect();
    // DEMO ONLY: approve the echo service's pairing as soon as it is requested. A real gateway
    // never does this: an admin approves each new key (`portcullis pairings approve CODE`).
    let (instance_key, _) = portcullis_sdk::InstanceKey::generate()?;
    let (codes, mut pending) = tokio::sync::mpsc::unbounded_channel::<String>();
    let store = gateway.auth.store().clone();
    let approver = tokio::spawn(async move {
        while let Some(code) = pending.recv().await {
            match store
                .decide_pairing(
                    &code,
                    true,
                    false,
                    crate::store::now_ms(),
                    "demo-auto-approve",
                )
                .await
            {
                Ok(k) => tracing::warn!(
                    code = %code, fingerprint = %k.fingerprint,
                    "DEMO ONLY: pairing approved automatically; a real gateway waits for `portcullis pairings approve`"
                ),
                // Another link of the same instance showed the same code: approved already.
                Err(e) => tracing::debug!(error = %e, "demo pairing already decided"),
            }
        }
    });
    let mut builder = portcullis_sdk::Service::builder("echo")
        .gateway(link.clone())
        .instance_key(instance_key)
        .on_pairing(move |p| {
            let _ = codes.send(p.code.clone());
        })
        .instance_id("echo-demo")
        .links_per_gateway(links)
        .version(env!("CARGO_PKG_VERSION"));
    for e in endpoints {
        builder = builder.endpoint(e);
    }
    let service = builder.serve(echo_service::router(echo_service::Stats::default()))?;
    service.linked().await?;

    if args.json {
        let line = serde_json::json!({
            "ingress": ingress,
            "link": link,
            "routes": routes,
            "api_key": api_key,
            "key_id": key.record.key_id,
            "data_dir": data_dir,
        });
        println!("{line}");
    } else {
        let dd = shell_word(&data_dir.to_string_lossy());
        // The guide names the binary that is running, so its commands work as printed
        // whether or not `portcullis` is on the PATH (`cargo run` builds it in target/).
        let exe = std::env::current_exe()
            .map(|p| shell_word(&p.to_string_lossy()))
            .unwrap_or_else(|_| "portcullis".into());
        println!(
            "\nPortcullis demo is running.\n\n  gateway (clients):  {ingress}\n  link (services):    {link}\n  service linked:     echo ({} routes; Ed25519 key, pairing approved automatically — demo only)\n  store:              {dd}\n\nA demo API key (scopes echo.*, sessions.*, compute.*; shown once):\n\n  export PORTCULLIS_KEY={api_key}\n\nTry:\n  curl -s -H \"Authorization: Bearer $PORTCULLIS_KEY\" '{ingress}/echo/hello?name=world'\n  curl -s -X POST -H \"Authorization: Bearer $PORTCULLIS_KEY\" --data-binary @/etc/hostname {ingress}/upload\n  curl -s -H \"Authorization: Bearer $PORTCULLIS_KEY\" '{ingress}/stream?bytes=1048576' | wc -c\n  curl -si {ingress}/echo/hello            # no key: 401\n\nA session (one worker process of its own, streaming progress):\n  S=$(curl -s -X POST -H \"Authorization: Bearer $PORTCULLIS_KEY\" -d '{{}}' {ingress}/api/v1/sessions | sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/')\n  curl -sN -H \"Authorization: Bearer $PORTCULLIS_KEY\" {ingress}/api/v1/sessions/$S/events &\n  curl -s -X POST -H \"Authorization: Bearer $PORTCULLIS_KEY\" -d '{{\"kind\":\"primes\",\"payload\":{{\"below\":2000000,\"steps\":10}}}}' {ingress}/api/v1/sessions/$S/invoke\n  curl -s -X DELETE -H \"Authorization: Bearer $PORTCULLIS_KEY\" {ingress}/api/v1/sessions/$S\n\nManage keys of this demo (in another terminal):\n  {exe} keys list --data-dir {dd}\n  {exe} keys revoke {} --data-dir {dd}\n  {exe} audit list --data-dir {dd}\n\nRoutes:\n{}\n\nPress Ctrl-C to stop.",
            routes.len(),
            key.record.key_id,
            routes.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n"),
        );
    }
    shutdown.await;
    approver.abort();
    service.shutdown().await;
    gateway.shutdown().await
}

/// `word` as one shell word: unchanged when it needs no quoting, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            super::shell_word("/usr/bin/portcullis"),
            "/usr/bin/portcullis"
        );
        assert_eq!(super::shell_word("/a b/portcullis"), "'/a b/portcullis'");
        assert_eq!(super::shell_word("/it's"), "'/it'\\''s'");
    }
}
