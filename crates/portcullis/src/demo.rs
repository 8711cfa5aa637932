//! `portcullis demo`: a gateway and the echo service, linked in one process, with nothing to
//! configure and no network beyond loopback. The service token is random per run and lives
//! only in memory.

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
}

/// Run the demo until `shutdown` resolves.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut token = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut token);
    let token = hex::encode(token);

    let mut config = Config::default();
    config.ingress.listen = args.ingress;
    config.link.listen = args.link;
    config.services.insert(
        "echo".into(),
        ServiceConfig {
            token_sha256: Secret::new(hex::encode(crate::link::hash_token(&token))),
        },
    );
    let gateway = crate::Running::start(config).await?;
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
        });
        println!("{line}");
    } else {
        println!(
            "\nPortcullis demo is running.\n\n  gateway (clients):  {ingress}\n  link (services):    {link}\n  service linked:     echo ({} routes)\n\nTry:\n  curl -s {ingress}/echo/hello?name=world\n  curl -s -X POST --data-binary @/etc/hostname {ingress}/upload\n  curl -s '{ingress}/stream?bytes=1048576' | wc -c\n\nRoutes:\n{}\n\nPress Ctrl-C to stop.",
            routes.len(),
            routes.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n"),
        );
    }
    shutdown.await;
    service.shutdown().await;
    gateway.shutdown().await
}
