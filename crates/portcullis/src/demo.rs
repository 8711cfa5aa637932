//! `portcullis demo`: a gateway and the echo service, linked in one process, with nothing to
//! configure and no network beyond loopback. The service token is random per run and lives
//! only in memory. Routed endpoints need an API key like anywhere else: the demo initialises a
//! store (in a fresh temporary directory unless `--data-dir` is given), creates a demo key
//! and prints it, so the CLI can be pointed at the running demo with `--data-dir`.

use rand::RngCore;
use std::future::Future;
use std::net::SocketAddr;

use crate::config::{Config, Secret, ServiceConfig};

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
    let mut token = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut token);
    let token = hex::encode(token);

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
    config.ingress.listen = args.ingress;
    config.link.listen = args.link;
    config.services.insert(
        "echo".into(),
        ServiceConfig {
            token_sha256: Secret::new(hex::encode(crate::link::hash_token(&token))),
        },
    );
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
                scopes: vec!["echo.read".into(), "echo.write".into()],
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
    let mut builder = portcullis_sdk::Service::builder("echo")
        .gateway(link.clone())
        .token(token)
        .instance_id("echo-demo")
        .links_per_gateway(links)
        .version(env!("CARGO_PKG_VERSION"));
    for e in endpoints {
        builder = builder.endpoint(e);
    }
    let service = builder.serve(echo_service::router(echo_service::Stats::default()))?;
    service.linked().await;

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
            "\nPortcullis demo is running.\n\n  gateway (clients):  {ingress}\n  link (services):    {link}\n  service linked:     echo ({} routes)\n  store:              {dd}\n\nA demo API key (scopes echo.read, echo.write; shown once):\n\n  export PORTCULLIS_KEY={api_key}\n\nTry:\n  curl -s -H \"Authorization: Bearer $PORTCULLIS_KEY\" '{ingress}/echo/hello?name=world'\n  curl -s -X POST -H \"Authorization: Bearer $PORTCULLIS_KEY\" --data-binary @/etc/hostname {ingress}/upload\n  curl -s -H \"Authorization: Bearer $PORTCULLIS_KEY\" '{ingress}/stream?bytes=1048576' | wc -c\n  curl -si {ingress}/echo/hello            # no key: 401\n\nManage keys of this demo (in another terminal):\n  {exe} keys list --data-dir {dd}\n  {exe} keys revoke {} --data-dir {dd}\n  {exe} audit list --data-dir {dd}\n\nRoutes:\n{}\n\nPress Ctrl-C to stop.",
            routes.len(),
            key.record.key_id,
            routes.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n"),
        );
    }
    shutdown.await;
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
