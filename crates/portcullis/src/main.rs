//! The `portcullis` binary: parses flags, sets up logging, turns signals into the library's
//! shutdown future. Everything else lives in the library.

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis::config::Config;

/// mimalloc rather than glibc malloc: malloc/free were ~8% of the gateway's profile under the
/// GET benchmark, and mimalloc cut gateway CPU per call by ~10% there (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis: a secure front door for internal services.
///
/// Clients reach the gateway over HTTP/1.1, HTTP/2 and TLS; services dial out to it over an
/// authenticated link and declare the endpoints they serve.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway from a configuration file. The store must exist: run
    /// `portcullis init` first.
    Serve {
        /// TOML configuration file (see docs/configuration.md).
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Data directory; overrides the configuration's `data_dir`.
        #[arg(long, env = "PORTCULLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Create the store (SQLite in the data directory, or PostgreSQL from `store.url`), apply
    /// migrations, create the `default` workspace and, when no pepper is configured, a pepper
    /// file (mode 0600) in the data directory. Safe to run again.
    Init(portcullis::admin::Target),
    /// Create the first admin key (scope `*`, workspace `default`) and print it once. Refused
    /// when an active admin key exists.
    Bootstrap(portcullis::admin::Target),
    /// Manage API keys.
    Keys(KeysArgs),
    /// Manage workspaces (tenants); `init` creates `default`.
    Workspaces(WorkspacesArgs),
    /// Read the audit log.
    Audit(AuditArgs),
    /// Run a self-contained demo: a gateway on 127.0.0.1:8080 with the echo service linked.
    Demo(portcullis::demo::DemoArgs),
    /// Check a configuration file (with PORTCULLIS_* overrides) and print every problem with
    /// its key path; exits 1 if there is any.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read a service link token from standard input and print the SHA-256 to put in
    /// `services.<name>.token_sha256`. The token never appears on a command line.
    HashToken,
}

#[derive(Debug, clap::Args)]
struct KeysArgs {
    #[command(flatten)]
    target: portcullis::admin::Target,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it once (`pcs_<key-id>_<secret><checksum>`). Only an HMAC of
    /// its secret is stored.
    Create(portcullis::admin::CreateArgs),
    /// List keys: id, workspace, status, scopes, times. Never secrets or hashes.
    List {
        /// Only keys of this workspace.
        #[arg(long, short)]
        workspace: Option<String>,
    },
    /// Revoke a key: gateways refuse it from the next call on.
    Revoke {
        /// Key id (the part between `pcs_` and the next `_`).
        id: String,
    },
    /// Issue a new secret for a key and print the new key once; the old one keeps working
    /// until the overlap ends.
    Rotate {
        /// Key id.
        id: String,
        /// How long the previous secret stays valid, e.g. `24h`, `15m`, `0` for immediately.
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
}

#[derive(Debug, clap::Args)]
struct WorkspacesArgs {
    #[command(flatten)]
    target: portcullis::admin::Target,
    #[command(subcommand)]
    command: WorkspacesCommand,
}

#[derive(Debug, Subcommand)]
enum WorkspacesCommand {
    /// Create a workspace.
    Create {
        /// Name, 1-63 of [a-z0-9-].
        name: String,
    },
    /// List workspaces.
    List,
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    #[command(flatten)]
    target: portcullis::admin::Target,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the newest audit events (key created, rotated, revoked, bootstrap,
    /// authentication failures coalesced per reason per second).
    List {
        /// How many events, newest first.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

/// Run an admin command: print its output (JSON or text), errors on stderr, exit 0/1/2.
fn admin<F, Fut>(target: &portcullis::admin::Target, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<
        Output = Result<portcullis::admin::Output, portcullis::admin::AdminError>,
    >,
{
    let fail = |e: &portcullis::admin::AdminError| {
        if target.json {
            eprintln!("{}", serde_json::json!({ "error": e.message }));
        } else {
            eprintln!("error: {}", e.message);
        }
        ExitCode::from(e.code)
    };
    let cfg = match target.load() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f(cfg)) {
        Ok(out) => {
            if target.json {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
///
/// The listeners are registered once, before the first signal, and reused for the second: a
/// listener registered only after the first signal would miss a second one sent right away,
/// and with the handler installed the default action would not end the process either.
async fn shutdown_signal() {
    let mut signals = Signals::new();
    signals.recv().await;
    tracing::info!("signal received: draining (send again to exit now)");
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere), listened to from creation on.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { unix }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (file, overrides and defaults) with secrets masked.
    Show {
        /// TOML configuration file; without it, the defaults plus PORTCULLIS_* overrides.
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// The configuration (file or defaults, then environment overrides), or every problem, one
/// per line, each prefixed with the file's path when there is a file.
fn load_config(path: Option<&Path>) -> Result<Config, String> {
    Config::load(path).map_err(|e| match e {
        portcullis::config::LoadError::Read(m) => m,
        portcullis::config::LoadError::Invalid(errs) => errs
            .iter()
            .map(|e| match path {
                Some(p) => format!("{}: {e}", p.display()),
                None => e.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match load_config(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Show { config }) => {
            let cfg = load_config(config.as_deref());
            match cfg {
                Ok(c) => {
                    print!("{}", c.to_toml_masked());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashToken => {
            let mut token = String::new();
            if std::io::stdin()
                .take(4096)
                .read_to_string(&mut token)
                .is_err()
            {
                eprintln!("could not read the token from standard input");
                return ExitCode::FAILURE;
            }
            let token = token.trim_end_matches(['\r', '\n']);
            if token.is_empty() {
                eprintln!("empty token on standard input");
                return ExitCode::FAILURE;
            }
            println!("{}", hex::encode(portcullis::link::hash_token(token)));
            ExitCode::SUCCESS
        }
        Command::Init(t) => admin(&t, |c| async move { portcullis::admin::init(&c).await }),
        Command::Bootstrap(t) => admin(
            &t,
            |c| async move { portcullis::admin::bootstrap(&c).await },
        ),
        Command::Keys(KeysArgs { target, command }) => match command {
            KeysCommand::Create(a) => admin(&target, |c| async move {
                portcullis::admin::keys_create(&c, &a).await
            }),
            KeysCommand::List { workspace } => admin(&target, |c| async move {
                portcullis::admin::keys_list(&c, workspace.as_deref()).await
            }),
            KeysCommand::Revoke { id } => admin(&target, |c| async move {
                portcullis::admin::keys_revoke(&c, &id).await
            }),
            KeysCommand::Rotate { id, overlap } => admin(&target, |c| async move {
                portcullis::admin::keys_rotate(&c, &id, &overlap).await
            }),
        },
        Command::Workspaces(WorkspacesArgs { target, command }) => match command {
            WorkspacesCommand::Create { name } => admin(&target, |c| async move {
                portcullis::admin::workspaces_create(&c, &name).await
            }),
            WorkspacesCommand::List => admin(&target, |c| async move {
                portcullis::admin::workspaces_list(&c).await
            }),
        },
        Command::Audit(AuditArgs { target, command }) => match command {
            AuditCommand::List { limit } => admin(&target, |c| async move {
                portcullis::admin::audit_list(&c, limit).await
            }),
        },
        Command::Serve { config, data_dir } => {
            let mut cfg = match load_config(Some(&config)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            // Outside the runtime: the span exporter owns a blocking HTTP client and its
            // guard flushes after the runtime has stopped.
            let _telemetry = match portcullis::telemetry::init(&cfg.telemetry) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime(async move {
                let listeners = portcullis::Listeners::bind(&cfg).await?;
                portcullis::run(cfg, listeners, shutdown_signal()).await
            })
        }
        Command::Demo(args) => {
            let _telemetry =
                portcullis::telemetry::init(&portcullis::telemetry::TelemetryConfig::default());
            runtime(portcullis::demo::run(args, shutdown_signal()))
        }
    }
}

fn runtime(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
