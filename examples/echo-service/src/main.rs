//! `echo-service`: the demo service. Links to one or more gateways (`--gateway`), or with
//! `--listen` serves the same routes as a plain HTTP/1.1 + h2c server for benchmarks.
//!
//! The service token is read from `PORTCULLIS_SERVICE_TOKEN` or `--token-file`, never from the
//! command line, where other users of the machine could read it. SIGINT/SIGTERM drain.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use echo_service::{endpoints, router, Stats};

/// The Portcullis demo service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Serve plainly on this address (HTTP/1.1 and h2c) instead of linking to a gateway.
    #[arg(long, conflicts_with = "gateway")]
    listen: Option<SocketAddr>,
    /// Gateway link URL (`tcp://host:port`, `tls://host:port`); repeatable.
    #[arg(long)]
    gateway: Vec<String>,
    /// File holding the service token (else `PORTCULLIS_SERVICE_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM file of the root CA for `tls://` gateways.
    #[arg(long)]
    tls_root_ca: Option<PathBuf>,
    /// Instance id (default: `echo-<random>`).
    #[arg(long)]
    instance_id: Option<String>,
    /// Region this instance runs in.
    #[arg(long)]
    region: Option<String>,
    /// Links per gateway.
    #[arg(long, default_value_t = 1)]
    links: usize,
    /// Drain grace period in seconds.
    #[arg(long, default_value_t = 30)]
    drain_grace_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = Args::parse();
    let stats = Stats::default();
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving plainly");
        axum::serve(listener, router(stats))
            .with_graceful_shutdown(signal())
            .await?;
        return Ok(());
    }
    if args.gateway.is_empty() {
        bail!("give --gateway URL (repeatable) or --listen ADDR");
    }
    let token = read_token(args.token_file.as_deref())?;
    let mut builder = portcullis_sdk::Service::builder("echo")
        .token(token)
        .version(env!("CARGO_PKG_VERSION"))
        .links_per_gateway(args.links)
        .drain_grace(Duration::from_secs(args.drain_grace_secs))
        .endpoints(endpoints());
    for g in &args.gateway {
        builder = builder.gateway(g.clone());
    }
    if let Some(id) = args.instance_id {
        builder = builder.instance_id(id);
    }
    if let Some(region) = args.region {
        builder = builder.region(region);
    }
    if let Some(path) = &args.tls_root_ca {
        let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        builder = builder.tls_root_ca_pem(pem);
    }
    let running = builder.serve(router(stats))?;
    let stop = signal();
    tokio::pin!(stop);
    tokio::select! {
        linked = running.try_linked() => {
            // Every gateway refused the service for good (a bad token, say): exit with the
            // reason instead of running unlinked.
            linked?;
            tracing::info!(instance = running.instance_id(), "linked");
            (&mut stop).await;
        }
        _ = &mut stop => {}
    }
    tracing::info!("draining");
    running.shutdown().await;
    Ok(())
}

fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("read token file {}", path.display()))?,
        None => std::env::var("PORTCULLIS_SERVICE_TOKEN")
            .context("set PORTCULLIS_SERVICE_TOKEN or give --token-file")?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the service token is empty");
    }
    Ok(token)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::stderr().is_terminal() {
        fmt.with_writer(std::io::stderr).init();
    } else {
        fmt.json().with_writer(std::io::stderr).init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
