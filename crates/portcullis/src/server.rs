//! Wiring: build every part from the configuration, run the listeners, and shut down in two
//! stages — drain, then force (CONVENTIONS "Shutdown").
//!
//! The library takes bound listeners and a shutdown future; only the binary parses flags and
//! handles signals, so tests bind port 0 and never collide.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::access::{
    Access, AccessParts, AccessSettings, CapabilityRegistry, NoBindings, PolicySource, Requirement,
    Roles,
};
use crate::audit::AuditSink;
use crate::auth::assertion::AssertionSigner;
use crate::auth::authenticator::AuthSettings;
use crate::auth::keyring::KeyRing;
use crate::auth::login::Login;
use crate::auth::password::PasswordHasher;
use crate::auth::signing::{MemorySigningKeys, SigningKeyStore, SigningKeys, SigningSettings};
use crate::auth::throttle::{LoginThrottle, ThrottleStore};
use crate::auth::token::TokenSettings;
use crate::auth::users::UserDirectory;
use crate::auth::{ApiKeyAuthenticator, Authenticators, TokenAuthenticator};
use crate::config::Config;
use crate::ingress::Ingress;
use crate::link::LinkServer;
use crate::pipeline::{Limits, Operations, Pipeline, Policy};
use crate::routing::{Registry, Tiers};
use crate::store::{Store, StoreOptions};
use crate::telemetry::{LinksCollector, Metrics};
use crate::transport::Listener;

/// The listeners the gateway serves.
#[derive(Debug)]
pub struct Listeners {
    /// Client-facing.
    pub ingress: Listener,
    /// Service-facing.
    pub link: Listener,
    /// Health probes and metric scrapes, when `monitoring.listen` is set.
    pub monitoring: Option<Listener>,
}

impl Listeners {
    /// Bind the addresses in `config`. An address that cannot be bound (in use, not local,
    /// privileged) is an error naming its key and address.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |key: &'static str, addr: SocketAddr| async move {
            Listener::tcp(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{key} {addr}: cannot listen: {e}"))
        };
        let ingress = bind("ingress.listen", config.ingress.listen).await?;
        let link = bind("link.listen", config.link.listen).await?;
        let monitoring = match config.monitoring.listen {
            Some(addr) => Some(bind("monitoring.listen", addr).await?),
            None => None,
        };
        Ok(Self {
            ingress,
            link,
            monitoring,
        })
    }
}

fn validate(config: &Config) -> anyhow::Result<()> {
    config.validate().map_err(config_errors)
}

fn config_errors(errs: Vec<crate::config::ConfigError>) -> anyhow::Error {
    anyhow::anyhow!(errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; "))
}

/// Open the identity store (initialised, schema not newer than this binary) and the pepper,
/// and build the authenticator. Errors say what the operator should do.
pub async fn open_auth(config: &Config) -> anyhow::Result<Arc<ApiKeyAuthenticator>> {
    let store = Store::open(&StoreOptions::from_config(config))
        .await
        .map_err(|e| anyhow::anyhow!("store: {e}"))?;
    let pepper = crate::admin::load_pepper(config).map_err(|e| anyhow::anyhow!("auth: {e}"))?;
    Ok(ApiKeyAuthenticator::new(
        store,
        pepper,
        AuthSettings::from_config(&config.auth),
    ))
}

/// What authentication is built from: the API key authenticator (store, pepper, cache,
/// generation poll) and the store interfaces users, login throttling and signing keys go
/// through.
#[derive(Clone)]
pub struct AuthParts {
    /// API keys; its store, pepper and change poll are shared by everything below.
    pub api_keys: Arc<ApiKeyAuthenticator>,
    /// Users who log in. `None`: no user can log in (every login is refused).
    pub users: Option<Arc<dyn UserDirectory>>,
    /// The per-account login throttle shared between nodes; `None`: per node only.
    pub throttle: Option<Arc<dyn ThrottleStore>>,
    /// Where signing keys are kept.
    pub signing_keys: Arc<dyn SigningKeyStore>,
    /// Where the role bindings of users and keys come from.
    pub policy: Arc<dyn PolicySource>,
}

impl std::fmt::Debug for AuthParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthParts")
            .field("api_keys", &self.api_keys)
            .field("users", &self.users.is_some())
            .field("throttle", &self.throttle.is_some())
            .finish_non_exhaustive()
    }
}

impl AuthParts {
    /// Everything from the API key authenticator's store: its users, its `login_throttle`
    /// and its `signing_keys`.
    pub fn from_store(api_keys: Arc<ApiKeyAuthenticator>) -> Self {
        let store = Arc::new(api_keys.store().clone());
        Self {
            users: Some(store.clone()),
            throttle: Some(store.clone()),
            signing_keys: store.clone(),
            policy: store,
            api_keys,
        }
    }

    /// API keys only: no user can log in, and signing keys live in memory as long as the
    /// process (component tests and benches without a store's users).
    pub fn keys_only(api_keys: Arc<ApiKeyAuthenticator>) -> Self {
        Self {
            api_keys,
            users: None,
            throttle: None,
            signing_keys: MemorySigningKeys::new(),
            policy: Arc::new(NoBindings),
        }
    }
}

/// The parts of authentication a running gateway has built, for the parts that need them
/// (the link's identity assertions, tests).
#[derive(Debug, Clone)]
pub struct AuthHandles {
    /// API keys.
    pub api_keys: Arc<ApiKeyAuthenticator>,
    /// User access tokens.
    pub tokens: Arc<TokenAuthenticator>,
    /// Login and password changes.
    pub login: Arc<Login>,
    /// The signing keys behind the ring.
    pub signing: Arc<SigningKeys>,
}

impl AuthHandles {
    /// The one key ring of the gateway.
    pub fn keys(&self) -> &Arc<KeyRing> {
        self.signing.ring()
    }
}

/// Build token verification, login and the signing keys on `parts` (loads the signing keys:
/// a key that does not unseal is an error naming its kid).
async fn build_auth(
    config: &Config,
    parts: &AuthParts,
    audit: &AuditSink,
) -> anyhow::Result<AuthHandles> {
    let api_keys = parts.api_keys.clone();
    let clock = api_keys.clock().clone();
    let signing = SigningKeys::load(
        parts.signing_keys.clone(),
        api_keys.pepper().clone(),
        SigningSettings {
            clock: clock.clone(),
            ..SigningSettings::from_config(config)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let users: Arc<dyn UserDirectory> = match &parts.users {
        Some(u) => u.clone(),
        None => crate::auth::users::MemoryUsers::new(),
    };
    let tokens = TokenAuthenticator::new(
        signing.ring().clone(),
        users.clone(),
        TokenSettings {
            clock,
            ..TokenSettings::from_config(&config.auth)
        },
        api_keys.changes().clone(),
        api_keys.lookup_turns(),
    );
    // One Argon2 run for the dummy hash: on the blocking pool, not the runtime's threads.
    let hash_settings = config.auth.hash_settings();
    let hasher = tokio::task::spawn_blocking(move || PasswordHasher::new(hash_settings))
        .await
        .map_err(|e| anyhow::anyhow!("auth: {e}"))?
        .map_err(|e| anyhow::anyhow!("auth: {e}"))?;
    let login = Login::new(
        users,
        Arc::new(hasher),
        Arc::new(LoginThrottle::new(config.auth.throttle_settings())),
        parts.throttle.clone(),
        tokens.clone(),
        audit.clone(),
    );
    Ok(AuthHandles {
        api_keys,
        tokens,
        login,
        signing,
    })
}

/// Run the gateway until `shutdown` resolves, then drain: stop accepting, turn not-ready, ask
/// every client connection to finish, wait up to `shutdown.grace_period`, then close links.
///
/// The store must have been initialised (`portcullis init`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    validate(&config)?;
    let auth = open_auth(&config).await?;
    run_with_auth(config, listeners, auth, shutdown).await
}

/// [`run`] with an authenticator the caller already opened (and may keep using, e.g. to
/// revoke keys with immediate effect).
pub async fn run_with_auth(
    config: Config,
    listeners: Listeners,
    auth: Arc<ApiKeyAuthenticator>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_parts(
        config,
        listeners,
        AuthParts::from_store(auth),
        shutdown,
        |_| {},
    )
    .await
}

/// [`run`] on authentication parts the caller built; `ready` receives what was built from them
/// once the gateway is listening (never when building fails: the error is returned).
pub async fn run_with_parts(
    config: Config,
    listeners: Listeners,
    parts: AuthParts,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&AuthHandles),
) -> anyhow::Result<()> {
    validate(&config)?;
    let auth = parts.api_keys.clone();
    // The one capability registry: gateway operations below, linked endpoints as they come.
    let capabilities = Arc::new(CapabilityRegistry::new());
    let registry = Arc::new(Registry::with_capabilities(
        config.routing.default_timeout,
        capabilities.clone(),
    ));
    let health = Arc::new(crate::health::Health::default());
    let metrics = Arc::new(Metrics::new(vec![
        Box::new(LinksCollector(registry.clone())),
        Box::new(crate::telemetry::StoreCollector(auth.store().clone())),
    ]));
    let tiers = Tiers {
        own: config.routing.region.clone(),
        neighbours: config.routing.neighbour_regions.clone(),
    };
    let store = auth.store().clone();
    let check: crate::health::Check = Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|_| "unavailable".to_string()) })
    });
    health.add_check("store", check);
    let mut operations = Operations::default();
    operations.register(crate::health::operation(health.clone()));
    // With a monitoring listener, `/metrics` is served there only (docs/ARCHITECTURE.md).
    let metrics_op = crate::telemetry::metrics::operation(
        metrics.clone(),
        config.auth.metrics_scope.as_deref().map(Into::into),
    );
    let mut monitoring_ops = Operations::default();
    if listeners.monitoring.is_some() {
        monitoring_ops.register(crate::health::operation(health.clone()));
        monitoring_ops.register(metrics_op);
        operations.register(crate::telemetry::metrics::served_elsewhere());
    } else {
        operations.register(metrics_op);
    }
    let audit = AuditSink::new(metrics.clone(), auth.clone());
    let link_audit = audit.clone();
    let handles = build_auth(&config, &parts, &audit).await?;
    // The one key ring signs user tokens and the identity assertion of every forwarded call.
    let assertions = Arc::new(
        AssertionSigner::new(
            handles.keys().clone(),
            config.link.assertion_issuer.as_str(),
            auth.clock().clone(),
            crate::auth::assertion::DEFAULT_CAPACITY,
        )
        .counting_into(metrics.assertions_signed.clone()),
    );
    for op in crate::auth::login::operations(
        handles.login.clone(),
        handles.keys().clone(),
        auth.clock().clone(),
    ) {
        operations.register(op);
    }
    if let Some(path) = &config.auth.bootstrap_token_file {
        let token = crate::auth::bootstrap::BootstrapToken::from_file(path)?;
        match auth.store().has_admin_binding().await {
            Ok(true) => tracing::warn!(
                "auth.bootstrap_token_file is set but an admin exists: HTTP bootstrap refuses \
                 every attempt; remove the setting"
            ),
            Ok(false) => tracing::info!(
                path = crate::auth::bootstrap::BOOTSTRAP_PATH,
                "HTTP bootstrap enabled until the first admin exists"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot tell whether an admin exists"),
        }
        operations.register(crate::auth::bootstrap::operation(Arc::new(
            crate::auth::bootstrap::Bootstrap {
                token,
                store: auth.store().clone(),
                hasher: handles.login.hasher().clone(),
                audit: audit.clone(),
            },
        )));
    }
    for ops in [&operations, &monitoring_ops] {
        ops.register_capabilities(&capabilities).map_err(|e| {
            anyhow::anyhow!("gateway operations (auth.metrics_scope among them): {e}")
        })?;
    }
    // The IAM API decides per request what it acts on (the workspace in its path or body) and
    // authorises that itself; the capabilities it asks for are registered here, before roles
    // are checked against the registry.
    for c in crate::access::registry::IAM_CAPABILITIES {
        capabilities
            .register_operation("iam", Requirement::Capability((*c).into()))
            .map_err(|e| anyhow::anyhow!("iam: {e}"))?;
    }
    capabilities
        .register_operation("iam", Requirement::Authenticated)
        .map_err(|e| anyhow::anyhow!("iam: {e}"))?;
    // The sessions API likewise authorises per request: in the session's workspace, with the
    // capability each command kind's worker declared.
    for c in crate::sessions::api::CAPABILITIES {
        capabilities
            .register_operation("sessions", Requirement::Capability((*c).into()))
            .map_err(|e| anyhow::anyhow!("sessions: {e}"))?;
    }
    // Role patterns are checked against the registered namespaces and the configured
    // services: a typo stops the start instead of granting nothing.
    let roles = Roles::build(
        &config.access,
        "access",
        &capabilities,
        config.services.keys(),
    )
    .map_err(config_errors)?;
    let access = Access::with_parts(AccessParts {
        keys: auth.clone(),
        policy: parts.policy.clone(),
        roles,
        capabilities,
        settings: AccessSettings::from_config(&config.access),
    });
    operations.register(crate::pipeline::Operation {
        name: "iam",
        path: crate::pipeline::PathMatch::Prefix(crate::api::IAM_PREFIX),
        requires: Requirement::Authenticated,
        auth: crate::pipeline::AuthPolicy::Credential(crate::auth::CredentialKinds::BEARER),
        router: crate::api::router(Arc::new(crate::api::IamApi {
            store: auth.store().clone(),
            hasher: handles.login.hasher().clone(),
            access: access.clone(),
            audit: audit.clone(),
            known_role: {
                let roles = access.roles().clone();
                Arc::new(move |name: &str| roles.get(name).is_some())
            },
            keys: auth.clone(),
            registry: Some(registry.clone()),
        })),
    });
    let sessions = crate::sessions::Sessions::new(
        config.sessions.clone(),
        &config.backends,
        Some(crate::sessions::pinned::Links {
            registry: registry.clone(),
            tiers: tiers.clone(),
        }),
        metrics.sessions.clone(),
    );
    let sessions_parts = Arc::new(crate::sessions::api::SessionsApi {
        sessions: sessions.clone(),
        access: access.clone(),
        audit: audit.clone(),
    });
    let sessions_api = crate::sessions::api::router(sessions_parts.clone());
    // The same API over gRPC, `portcullis.sessions.v1.Sessions`, on the ingress port.
    operations.register(crate::pipeline::Operation {
        name: "sessions",
        path: crate::pipeline::PathMatch::Prefix(crate::sessions::grpc::PREFIX),
        requires: Requirement::Authenticated,
        auth: crate::pipeline::AuthPolicy::Credential(crate::auth::CredentialKinds::BEARER),
        router: axum::Router::new()
            .fallback_service(crate::sessions::grpc::SessionsService::new(sessions_parts)),
    });
    for path in [
        crate::pipeline::PathMatch::Exact(crate::sessions::api::SESSIONS_PATH),
        crate::pipeline::PathMatch::Prefix(crate::sessions::api::SESSIONS_PREFIX),
    ] {
        operations.register(crate::pipeline::Operation {
            name: "sessions",
            path,
            requires: Requirement::Authenticated,
            auth: crate::pipeline::AuthPolicy::Credential(crate::auth::CredentialKinds::BEARER),
            router: sessions_api.clone(),
        });
    }
    let authenticators = Authenticators::new(auth.clone()).with_tokens(handles.tokens.clone());
    // The monitoring listener's pipeline: the same phases, authentication and access (so
    // `auth.metrics_scope` holds there too), with only health and metrics and no routes.
    // It sheds nothing: a probe must not fail because the public port is overloaded; its
    // connection limit times `MonitoringConfig::MAX_STREAMS` bounds its calls instead.
    let monitoring_pipeline = Pipeline::new(crate::pipeline::Parts {
        registry: Arc::new(Registry::new(config.routing.default_timeout)),
        tiers: tiers.clone(),
        metrics: metrics.clone(),
        authenticators: authenticators.clone(),
        access: access.clone(),
        audit: audit.clone(),
        assertions: assertions.clone(),
        policy: Policy {
            limits: Limits {
                max_in_flight: usize::MAX,
                max_body_bytes: 64 * 1024,
                body_stall_timeout: config.ingress.request_body_stall_timeout,
            },
            operations: monitoring_ops,
        },
        keys: handles.keys().clone(),
    });
    let pipeline = Pipeline::new(crate::pipeline::Parts {
        registry: registry.clone(),
        tiers,
        metrics: metrics.clone(),
        authenticators,
        access,
        audit,
        assertions: assertions.clone(),
        policy: Policy {
            limits: Limits {
                max_in_flight: config.ingress.max_in_flight,
                max_body_bytes: config.ingress.max_body_bytes,
                body_stall_timeout: config.ingress.request_body_stall_timeout,
            },
            operations,
        },
        keys: handles.keys().clone(),
    });
    let dataplane =
        crate::dataplane::DataPlane::start(crate::dataplane::resolve_count(config.runtime.threads))
            .map_err(|e| anyhow::anyhow!("cannot start the data-plane threads: {e}"))?;
    let ingress = Arc::new(Ingress::new(
        &config.ingress,
        pipeline,
        metrics.clone(),
        &dataplane,
        auth.clock().clone(),
    )?);
    let monitoring = match config.monitoring.ingress(&config.ingress) {
        Some(cfg) => Some(Arc::new(
            Ingress::new(
                &cfg,
                monitoring_pipeline,
                metrics.clone(),
                &dataplane,
                auth.clock().clone(),
            )?
            .labelled(crate::telemetry::metrics::Listener::monitoring),
        )),
        None => None,
    };
    // Ed25519 instance keys of the services that require them, enrolled by pairing.
    let webhook = match &config.link.pairing.webhook {
        Some(w) => Some(crate::link::webhook::Notifier::new(
            w.clone(),
            auth.store().clone(),
        )?),
        None => None,
    };
    let mut instance_keys = crate::link::InstanceKeys::new(
        auth.store().clone(),
        auth.clock().clone(),
        config.link.pairing.clone(),
        config
            .services
            .iter()
            .filter(|(_, s)| s.requires(crate::config::LinkAuthKind::Ed25519))
            .map(|(name, _)| name.clone()),
    )
    .with_metrics(metrics.clone());
    if let Some(n) = webhook {
        instance_keys = instance_keys.with_listener(Arc::new(move |k| n.notify(k)));
    }
    let instance_keys = Arc::new(instance_keys);
    let link = Arc::new(LinkServer::new(
        &config,
        registry.clone(),
        metrics,
        link_audit,
        &dataplane,
        assertions,
        Some(instance_keys.clone()),
        Some(auth.changes().clone()),
    )?);

    // Audit writer, last-used writer, change poll; stopped after the listeners.
    let background = CancellationToken::new();
    let auth_task = auth.start(background.clone());
    let signing_task = handles.signing.start(auth.changes(), background.clone());
    let throttle_task = handles.login.start(background.clone());
    let sessions_monitor = sessions.spawn_monitor(background.clone());
    let pairing_task = instance_keys.start(auth.changes().clone(), background.clone());
    let stop_accepting = CancellationToken::new();
    let drain = CancellationToken::new();
    let close_links = CancellationToken::new();
    let monitoring_at = listeners.monitoring.as_ref().map(|l| l.describe());
    tracing::info!(
        ingress = %listeners.ingress.describe(),
        link = %listeners.link.describe(),
        monitoring = monitoring_at.as_deref().unwrap_or("-"),
        threads = dataplane.len(),
        "gateway listening"
    );
    // Everything is built and the listeners are bound: a probe on the first accepted
    // connection must already see a started gateway.
    health.set_started();
    ready(&handles);
    let ingress_task = tokio::spawn(ingress.clone().serve(
        listeners.ingress,
        stop_accepting.clone(),
        drain.clone(),
    ));
    let link_task = tokio::spawn(link.clone().serve(listeners.link, close_links.clone()));
    // The monitoring listener drains last, after the ingress: probes keep seeing `draining`
    // (503) and a last scrape sees the drain, instead of both meeting a refused connection.
    let stop_monitoring = CancellationToken::new();
    let monitoring_task = match (&monitoring, listeners.monitoring) {
        (Some(m), Some(l)) => Some(tokio::spawn(m.clone().serve(
            l,
            stop_monitoring.clone(),
            stop_monitoring.clone(),
        ))),
        _ => None,
    };

    shutdown.await;
    tracing::info!(grace = ?config.shutdown.grace_period, "shutting down: draining");
    health.set_draining();
    stop_accepting.cancel();
    drain.cancel();
    // Sessions close first: their event streams end, so their connections can finish.
    sessions.shutdown(config.shutdown.grace_period).await;
    let _ = ingress_task.await;
    if tokio::time::timeout(config.shutdown.grace_period, ingress.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = ingress.connection_count(),
            "grace period over: closing remaining connections"
        );
    }
    stop_monitoring.cancel();
    if let (Some(m), Some(t)) = (&monitoring, monitoring_task) {
        let _ = t.await;
        if tokio::time::timeout(config.shutdown.grace_period, m.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = m.connection_count(),
                "grace period over: closing remaining monitoring connections"
            );
        }
    }
    close_links.cancel();
    let _ = link_task.await;
    for inst in registry.instances() {
        inst.close.cancel();
    }
    // Established links take the drain notice and end (bounded by its timeout); one still
    // handshaking is dropped with its worker.
    let _ = tokio::time::timeout(
        crate::link::DRAIN_NOTICE_TIMEOUT + std::time::Duration::from_secs(1),
        link.wait(),
    )
    .await;
    dataplane.shutdown().await;
    // Last: write what the authenticator still holds (audit rows, last-used times).
    background.cancel();
    let _ = auth_task.await;
    let _ = signing_task.await;
    let _ = sessions_monitor.await;
    let _ = pairing_task.await;
    if let Some(t) = throttle_task {
        let _ = t.await;
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// A gateway running in the background, for the demo and tests.
#[derive(Debug)]
pub struct Running {
    /// Bound ingress address.
    pub ingress_addr: SocketAddr,
    /// Bound link address.
    pub link_addr: SocketAddr,
    /// Bound monitoring address, when `monitoring.listen` is set.
    pub monitoring_addr: Option<SocketAddr>,
    /// The gateway's authenticator: keys changed through it take effect at once.
    pub auth: Arc<ApiKeyAuthenticator>,
    /// Tokens, login and the signing keys the gateway built.
    pub handles: AuthHandles,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Open the store, bind the configured addresses (port 0 picks free ones) and start.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        validate(&config)?;
        let auth = open_auth(&config).await?;
        Self::start_with(config, AuthParts::from_store(auth)).await
    }

    /// [`Running::start`] with role bindings read from `policy`.
    pub async fn start_with_policy(
        config: Config,
        policy: Arc<dyn PolicySource>,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let auth = open_auth(&config).await?;
        Self::start_with(
            config,
            AuthParts {
                policy,
                ..AuthParts::from_store(auth)
            },
        )
        .await
    }

    /// [`Running::start`] on authentication parts the caller built.
    pub async fn start_with(config: Config, parts: AuthParts) -> anyhow::Result<Self> {
        validate(&config)?;
        let auth = parts.api_keys.clone();
        let listeners = Listeners::bind(&config).await?;
        let ingress_addr = listeners
            .ingress
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("the ingress listener has no TCP address"))?;
        let link_addr = listeners
            .link
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("the link listener has no TCP address"))?;
        let monitoring_addr = listeners.monitoring.as_ref().and_then(|l| l.local_addr());
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut task = tokio::spawn(async move {
            run_with_parts(config, listeners, parts, s.cancelled_owned(), |h| {
                let _ = tx.send(h.clone());
            })
            .await
        });
        let handles = tokio::select! {
            h = rx => h.ok(),
            r = &mut task => {
                return Err(match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("the gateway stopped while starting"),
                    Err(e) => anyhow::anyhow!("the gateway task failed: {e}"),
                });
            }
        };
        let Some(handles) = handles else {
            return Err(match task.await {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the gateway stopped while starting"),
            });
        };
        Ok(Self {
            ingress_addr,
            link_addr,
            monitoring_addr,
            auth,
            handles,
            shutdown,
            task,
        })
    }

    /// The gateway's one key ring.
    pub fn keys(&self) -> &Arc<KeyRing> {
        self.handles.keys()
    }

    /// Drain and stop; resolves when the gateway has stopped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}
