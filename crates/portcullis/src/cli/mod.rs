//! The command-line grammar of `portcullis` and its dispatch.
//!
//! The binary (`main.rs`) parses a [`Cli`], makes the shutdown future from signals and calls
//! [`run`]; everything between — loading configuration, starting runtimes, calling the admin
//! operations and rendering what they return — is here, in the library, where it can be read
//! and tested without a process.
//!
//! Admin commands print what their operation returned through one rendering layer
//! ([`render`]): the value's serde shape with `--json`, its [`Render`] text otherwise; errors
//! go to stderr (as `{"error":…}` with `--json`) with exit code 1, or 2 for bad usage.
//! Commands that touch the store take `--config FILE` or `--data-dir DIR`
//! (`PORTCULLIS_DATA_DIR`). A raw key is printed exactly once, by the command that made it.

mod examples;
pub mod iam;
mod login;
pub mod render;
mod sessions;

pub use examples::{command, parse};
pub use login::call_gateway;
pub use render::Render;

use clap::{Parser, Subcommand};
use serde::Serialize;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::admin::{self, AdminError};
use crate::config::Config;

/// Portcullis: a secure front door for internal services.
///
/// Clients reach the gateway over HTTP/1.1, HTTP/2 and TLS; services dial out to it over an
/// authenticated link and declare the endpoints they serve.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    Init(Target),
    /// Create the first admin: with `--admin-user NAME`, a user (password from the terminal)
    /// bound to `admin` in every workspace; without, an admin key (scope `*`, workspace
    /// `default`) printed once. Refused once an admin exists.
    Bootstrap(BootstrapArgs),
    /// Manage users (people who log in for a token).
    Users(iam::UsersArgs),
    /// Manage role bindings (who holds which role where).
    Roles(iam::RolesArgs),
    /// Manage API keys.
    Keys(KeysArgs),
    /// Manage workspaces (tenants); `init` creates `default`.
    Workspaces(WorkspacesArgs),
    /// Read the audit log.
    Audit(AuditArgs),
    /// Manage the gateway's signing keys (user tokens, identity assertions).
    SigningKeys(SigningKeysArgs),
    /// Approve, deny and revoke the Ed25519 keys services link with (enrolment by pairing).
    Pairings(PairingsArgs),
    /// The services linked to a running gateway (asks its API with the key in
    /// `PORTCULLIS_KEY`).
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Log in as a user and print an access token, for scripts. The password is read from
    /// the terminal without echo, or from standard input when it is not a terminal; never
    /// from the command line or the environment.
    Login(LoginArgs),
    /// Inspect and close sessions on a running gateway (its REST API, with the API key or
    /// token in `PORTCULLIS_KEY`).
    Sessions(sessions::SessionsArgs),
    /// Run a self-contained demo: a gateway on 127.0.0.1:8080 with the echo service linked.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// The demo's session worker (the `progress-worker` example), which `portcullis demo`
    /// starts once per session with the worker protocol's arguments; not for direct use.
    /// A worker mode of this binary rather than a second one, so `cargo run -- demo` builds
    /// it and the demo finds it next to itself (`std::env::current_exe`).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    DemoWorker {
        /// `--session-id ID --socket PATH --protocol-version N`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Not in this build: it was built without the `demo` feature.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Demo {
        /// Whatever was passed; refused.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Check a configuration file (with PORTCULLIS_* overrides) and print every problem with
    /// its key path; exits 1 if there is any. The file is given as `FILE` or, as every other
    /// command takes it, `--config FILE`.
    CheckConfig {
        /// TOML configuration file.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The same file, given as every other command takes it.
        #[arg(long, short, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print one JSON document on stdout instead: `file`, `ok`, `problems` (`key`,
        /// `message`), `warnings`, `listeners` (`ingress`, `link`, `monitoring`).
        #[arg(long)]
        json: bool,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read a service link token from standard input and print the SHA-256 to put in
    /// `services.<name>.token_sha256`. The token never appears on a command line.
    HashToken {
        /// Print `{"token_sha256": …}` instead (never the token itself).
        #[arg(long)]
        json: bool,
    },
}

/// Where the store is: a configuration file, a data directory, or both (the directory wins).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// TOML configuration file (its `data_dir`, `[store]` and `[auth]` are used).
    #[arg(long, short, env = "PORTCULLIS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite store and pepper file); overrides the configuration's.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Target {
    /// The effective configuration: file (with `PORTCULLIS_*` overrides) or defaults, then
    /// `--data-dir`.
    pub fn load(&self) -> Result<Config, AdminError> {
        let mut cfg = Config::load(self.config.as_deref()).map_err(|e| match e {
            crate::config::LoadError::Read(m) => AdminError::failure(m),
            crate::config::LoadError::Invalid(errs) => AdminError::usage(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        })?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

/// `portcullis bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// Create the first admin as this user (password from the terminal or standard input).
    #[arg(long)]
    pub admin_user: Option<String>,
    /// Workspace of the admin user.
    #[arg(long, default_value = crate::store::DEFAULT_WORKSPACE, requires = "admin_user")]
    pub workspace: String,
    /// Bootstrap over HTTP through this gateway (e.g. `https://gw:8443`) instead of on the
    /// store: the gateway must be configured with `auth.bootstrap_token_file`.
    #[arg(long, requires_all = ["admin_user", "token_file"])]
    pub gateway: Option<String>,
    /// With `--gateway`: a file holding the gateway's one-time bootstrap token (never give
    /// the token itself on the command line).
    #[arg(long, requires = "gateway")]
    pub token_file: Option<PathBuf>,
}

/// `portcullis keys …`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to do with keys.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// `portcullis keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (`pcs_<key-id>_<secret><checksum>`). Only an HMAC of
    /// its secret is stored.
    Create(CreateArgs),
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

/// Flags of `keys create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Workspace the key belongs to.
    #[arg(long, short, default_value = crate::store::DEFAULT_WORKSPACE)]
    pub workspace: String,
    /// Display name (who or what uses the key).
    #[arg(long, short)]
    pub name: String,
    /// Capabilities the key grants, comma-separated (`*` grants all: an admin key).
    #[arg(long, short, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. `30d`, `12h`. Default: no expiry.
    #[arg(long)]
    pub expires: Option<String>,
    /// Key id, 4-64 of [a-z0-9-]. Default: generated.
    #[arg(long)]
    pub id: Option<String>,
    /// Issue the key to this user (`usr_…` or `workspace/username`): it acts with the user's
    /// roles narrowed by its scopes, in the user's workspace, and goes with the user.
    #[arg(long)]
    pub user: Option<String>,
}

impl CreateArgs {
    /// The request these flags make; a bad `--expires` is a usage error.
    pub fn request(&self) -> Result<crate::auth::authenticator::CreateKey, AdminError> {
        let expires_in = self
            .expires
            .as_deref()
            .map(|s| parse_duration("--expires", s))
            .transpose()?;
        Ok(crate::auth::authenticator::CreateKey {
            workspace: self.workspace.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            expires_in,
            key_id: self.id.clone(),
        })
    }
}

/// `portcullis workspaces …`.
#[derive(Debug, clap::Args)]
pub struct WorkspacesArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to do with workspaces.
    #[command(subcommand)]
    pub command: WorkspacesCommand,
}

/// `portcullis workspaces` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkspacesCommand {
    /// Create a workspace.
    Create {
        /// Name, 1-63 of [a-z0-9-].
        name: String,
    },
    /// List workspaces.
    List,
    /// Show, update, disable or enable one.
    #[command(flatten)]
    Change(iam::WorkspaceChange),
}

/// `portcullis audit …`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to read.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// `portcullis audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest audit events (key created, rotated, revoked, bootstrap,
    /// authentication failures coalesced per reason per second). Text lists them oldest first,
    /// like a log; `--json` lists them newest first, as the admin API answers.
    List {
        /// How many of the newest events.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

/// `portcullis signing-keys …`.
#[derive(Debug, clap::Args)]
pub struct SigningKeysArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to do with signing keys.
    #[command(subcommand)]
    pub command: SigningKeysCommand,
}

/// `portcullis signing-keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// List signing keys: kid, status (signing, next, retiring, retired, expired), times.
    /// Never key material.
    List,
    /// Create a new signing key now. It is published at once and signs after the publish
    /// delay; the current key stops signing then and verifies until what it signed expired.
    Rotate,
}

/// `portcullis pairings …`.
#[derive(Debug, clap::Args)]
pub struct PairingsArgs {
    /// Where the store is.
    #[command(flatten)]
    pub target: Target,
    /// What to do with pairings.
    #[command(subcommand)]
    pub command: PairingsCommand,
}

/// `portcullis pairings` subcommands.
#[derive(Debug, Subcommand)]
pub enum PairingsCommand {
    /// List instance keys and their pairings (pending with their codes first to act on):
    /// state, code, service, instance, fingerprint, times, webhook delivery.
    List {
        /// Only pairings waiting for a decision.
        #[arg(long)]
        pending: bool,
    },
    /// Approve the pending pairing with this code: its key may link as its service.
    Approve {
        /// The code the instance shows (8 characters; case and a dash do not matter).
        code: String,
        /// Bind the key to the instance that asked, not to any instance of the service.
        #[arg(long)]
        bind_instance: bool,
    },
    /// Deny the pending pairing with this code: its key never links.
    Deny {
        /// The code the instance shows.
        code: String,
    },
    /// Revoke the approved keys of one instance: its links close and it must pair again.
    Revoke {
        /// `SERVICE/INSTANCE`.
        target: String,
    },
}

/// `portcullis services` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Every linked instance and link: state (online, unstable, draining), round-trip time,
    /// calls in flight, the credential that proved it, key fingerprint, since when.
    List {
        /// Gateway base URL, e.g. `http://127.0.0.1:8080`. Default: the configuration's
        /// `ingress.listen`.
        #[arg(long)]
        gateway: Option<String>,
        /// TOML configuration file, for the default gateway address.
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `portcullis login`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// Workspace of the user.
    #[arg(long, short, default_value = crate::store::DEFAULT_WORKSPACE)]
    pub workspace: String,
    /// Username.
    #[arg(long, short)]
    pub username: String,
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`. Default: the configuration's
    /// `ingress.listen` (https when `ingress.tls` is set).
    #[arg(long)]
    pub gateway: Option<String>,
    /// TOML configuration file, for the default gateway address.
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the token response as JSON instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

/// `portcullis config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (file, overrides and defaults) with secrets masked.
    Show {
        /// TOML configuration file; without it, the defaults plus PORTCULLIS_* overrides.
        #[arg(long, short, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Print the same configuration as one JSON document (absent fields as `null`,
        /// secrets as `"***"`).
        #[arg(long)]
        json: bool,
    },
}

/// Parse a duration flag (`30d`, `24h`, `0`); a bad one is a usage error naming the flag and
/// giving examples of what it accepts (`--expires` takes no zero: a key that is expired at
/// once is a mistake).
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, AdminError> {
    let positive = flag == "--expires";
    let examples = if positive {
        "a positive duration, e.g. 90d, 12h, 30m"
    } else {
        "e.g. 24h, 15m, or 0 for none"
    };
    match humantime::parse_duration(s.trim()) {
        Ok(d) if positive && d.is_zero() => Err(AdminError::usage(format!(
            "{flag} {s:?}: must be positive ({examples})"
        ))),
        Ok(d) => Ok(d),
        Err(e) => Err(AdminError::usage(format!("{flag} {s:?}: {e} ({examples})"))),
    }
}

/// Run a parsed command to its exit code. `shutdown` ends `serve` and `demo` (the binary makes
/// it from signals); other commands ignore it.
pub fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send + 'static) -> ExitCode {
    match cli.command {
        Command::CheckConfig { file, config, json } => {
            let Some(file) = file.or(config) else {
                // clap requires one of the two.
                return ExitCode::from(2);
            };
            check_config(&file, json)
        }
        Command::Config(ConfigCommand::Show { config, json }) => {
            let shown = load_config(config.as_deref())
                .map(render::ConfigView)
                .map_err(AdminError::failure);
            render::finish(shown, json)
        }
        Command::HashToken { json } => render::finish(hash_token(), json),
        Command::Init(t) => admin_command(&t, |c| async move { admin::init(&c).await }),
        Command::Bootstrap(BootstrapArgs {
            target,
            admin_user: Some(user),
            workspace,
            gateway: Some(gateway),
            token_file: Some(token_file),
        }) => render::finish(
            login::bootstrap_over_http(&gateway, &token_file, &workspace, &user),
            target.json,
        ),
        Command::Bootstrap(BootstrapArgs {
            target,
            admin_user: Some(user),
            workspace,
            ..
        }) => iam::bootstrap_admin(&target, workspace, user),
        Command::Bootstrap(BootstrapArgs { target, .. }) => {
            admin_command(&target, |c| async move { admin::bootstrap(&c).await })
        }
        Command::Users(a) => iam::users(a),
        Command::Roles(a) => iam::roles(a),
        Command::Keys(KeysArgs { target, command }) => match command {
            KeysCommand::Create(a) if a.user.is_some() => iam::keys_create_for_user(&target, a),
            KeysCommand::Create(a) => admin_command(&target, |c| async move {
                admin::keys_create(&c, &a.request()?).await
            }),
            KeysCommand::List { workspace } => admin_command(&target, |c| async move {
                admin::keys_list(&c, workspace.as_deref()).await
            }),
            KeysCommand::Revoke { id } => {
                admin_command(
                    &target,
                    |c| async move { admin::keys_revoke(&c, &id).await },
                )
            }
            KeysCommand::Rotate { id, overlap } => admin_command(&target, |c| async move {
                let overlap = parse_duration("--overlap", &overlap)?;
                admin::keys_rotate(&c, &id, overlap).await
            }),
        },
        Command::Workspaces(WorkspacesArgs { target, command }) => match command {
            WorkspacesCommand::Create { name } => admin_command(&target, |c| async move {
                admin::workspaces_create(&c, &name).await
            }),
            WorkspacesCommand::List => {
                admin_command(&target, |c| async move { admin::workspaces_list(&c).await })
            }
            WorkspacesCommand::Change(change) => iam::workspace_change(&target, change),
        },
        Command::Audit(AuditArgs { target, command }) => match command {
            AuditCommand::List { limit } => {
                admin_command(
                    &target,
                    |c| async move { admin::audit_list(&c, limit).await },
                )
            }
        },
        Command::SigningKeys(SigningKeysArgs { target, command }) => match command {
            SigningKeysCommand::List => {
                admin_command(
                    &target,
                    |c| async move { admin::signing_keys_list(&c).await },
                )
            }
            SigningKeysCommand::Rotate => {
                admin_command(
                    &target,
                    |c| async move { admin::signing_keys_rotate(&c).await },
                )
            }
        },
        Command::Pairings(PairingsArgs { target, command }) => match command {
            PairingsCommand::List { pending } => admin_command(&target, |c| async move {
                crate::pairings::list(&c, pending).await
            }),
            PairingsCommand::Approve {
                code,
                bind_instance,
            } => admin_command(&target, |c| async move {
                crate::pairings::decide(&c, &code, true, bind_instance).await
            }),
            PairingsCommand::Deny { code } => admin_command(&target, |c| async move {
                crate::pairings::decide(&c, &code, false, false).await
            }),
            PairingsCommand::Revoke { target: t } => {
                admin_command(
                    &target,
                    |c| async move { crate::pairings::revoke(&c, &t).await },
                )
            }
        },
        Command::Services(ServicesCommand::List {
            gateway,
            config,
            json,
        }) => {
            let result =
                login::gateway_base(gateway.as_deref(), config.as_deref()).and_then(|base| {
                    let key = login::key_from_env("an API key with iam.services.read")?;
                    crate::services::list_remote(&base, &key)
                });
            render::finish(result, json)
        }
        Command::Login(args) => login::run(&args),
        Command::Sessions(args) => sessions::run(&args),
        Command::Serve { config, data_dir } => serve(&config, data_dir, shutdown),
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            let _telemetry = crate::telemetry::init(&crate::telemetry::TelemetryConfig::default());
            runtime(crate::demo::run(args, shutdown))
        }
        #[cfg(feature = "demo")]
        Command::DemoWorker { args } => ExitCode::from(progress_worker::worker().main_with(args)),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "error: this portcullis was built without the demo (cargo feature `demo`); \
                 build it with default features to run `portcullis demo`"
            );
            ExitCode::from(2)
        }
    }
}

/// `check-config FILE`: with `--json` the whole report on stdout; otherwise `FILE: ok` (and
/// what the listeners serve, when that differs from the default) on stdout, warnings and
/// problems on stderr. Exits 1 when there is a problem.
fn check_config(file: &Path, json: bool) -> ExitCode {
    let report = render::CheckReport::of(file, Config::load(Some(file)));
    if json {
        let (out, _) = render::outcome::<_>(&Ok(report.clone()), true);
        print!("{out}");
    } else {
        for w in &report.warnings {
            eprintln!("{}: warning: {w}", report.file);
        }
        for p in &report.problems {
            match &p.key {
                Some(k) => eprintln!("{}: {k}: {}", report.file, p.message),
                None => eprintln!("{}", p.message),
            }
        }
        print!("{}", report.text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `serve`: the gateway until `shutdown`.
fn serve(
    config: &Path,
    data_dir: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ExitCode {
    let mut cfg = match load_config(Some(config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    // Outside the runtime: the span exporter owns a blocking HTTP client and its guard
    // flushes after the runtime has stopped.
    let _telemetry = match crate::telemetry::init(&cfg.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    runtime(async move {
        let listeners = crate::Listeners::bind(&cfg).await?;
        crate::run(cfg, listeners, shutdown).await
    })
}

/// `hash-token`: the token from standard input (bounded), never from a command line; the
/// result holds only its hash.
fn hash_token() -> Result<render::TokenHash, AdminError> {
    let mut token = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut token)
        .map_err(|_| AdminError::failure("could not read the token from standard input"))?;
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        return Err(AdminError::failure("empty token on standard input"));
    }
    Ok(render::TokenHash {
        token_sha256: hex::encode(crate::link::hash_token(token)),
    })
}

/// The configuration (file or defaults, then environment overrides), or every problem, one
/// per line, each prefixed with the file's path when there is a file.
pub fn load_config(path: Option<&Path>) -> Result<Config, String> {
    Config::load(path).map_err(|e| match e {
        crate::config::LoadError::Read(m) => m,
        crate::config::LoadError::Invalid(errs) => errs
            .iter()
            .map(|e| match path {
                Some(p) => format!("{}: {e}", p.display()),
                None => e.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// Run an admin operation on a single-threaded runtime and print what it returned.
pub(crate) fn admin_command<T, F, Fut>(target: &Target, f: F) -> ExitCode
where
    T: Serialize + Render,
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<T, AdminError>>,
{
    let result = target.load().and_then(|cfg| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AdminError::failure(format!("cannot start the runtime: {e}")))?;
        rt.block_on(f(cfg))
    });
    render::finish(result, target.json)
}

/// Run `fut` on a multi-threaded runtime (the control runtime of `serve` and `demo`).
fn runtime(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bad_duration_flag_is_a_usage_error_naming_the_flag() {
        let e = parse_duration("--overlap", "soon").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message.starts_with("--overlap \"soon\""), "{e}");
        assert_eq!(
            parse_duration("--expires", "30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        // What each flag's error suggests, it accepts.
        let e = parse_duration("--expires", "0").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.message
                .contains("must be positive (a positive duration, e.g. 90d"),
            "{e}"
        );
        assert!(parse_duration("--expires", "90d").is_ok());
        assert!(parse_duration("--expires", "12h").is_ok());
        assert!(parse_duration("--expires", "30m").is_ok());
        let e = parse_duration("--overlap", "x").unwrap_err();
        assert!(e.message.ends_with("(e.g. 24h, 15m, or 0 for none)"), "{e}");
        assert!(parse_duration("--overlap", "0").unwrap().is_zero());
        assert!(parse_duration("--overlap", "15m").is_ok());
    }
}
