//! Wiring: build every part from the configuration, run the listeners, and shut down in two
//! stages — drain, then force (CONVENTIONS "Shutdown").
//!
//! The library takes bound listeners and a shutdown future; only the binary parses flags and
//! handles signals, so tests bind port 0 and never collide.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::audit::AuditSink;
use crate::auth::assertion::AssertionSigner;
use crate::auth::authenticator::AuthSettings;
use crate::auth::keyring::{KeyRing, KeySet, SigningKey};
use crate::auth::ApiKeyAuthenticator;
use crate::auth::Authenticators;
use crate::config::Config;
use crate::ingress::Ingress;
use crate::link::LinkServer;
use crate::pipeline::{Limits, Operations, Pipeline, Policy};
use crate::routing::{Registry, Tiers};
use crate::store::{Store, StoreOptions};
use crate::telemetry::{LinksCollector, Metrics};
use crate::transport::Listener;

/// The two listeners the gateway serves.
#[derive(Debug)]
pub struct Listeners {
    /// Client-facing.
    pub ingress: Listener,
    /// Service-facing.
    pub link: Listener,
}

impl Listeners {
    /// Bind the addresses in `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let ingress = Listener::tcp(config.ingress.listen)
            .await
            .map_err(|e| anyhow::anyhow!("ingress.listen {}: {e}", config.ingress.listen))?;
        let link = Listener::tcp(config.link.listen)
            .await
            .map_err(|e| anyhow::anyhow!("link.listen {}: {e}", config.link.listen))?;
        Ok(Self { ingress, link })
    }
}

fn validate(config: &Config) -> anyhow::Result<()> {
    config.validate().map_err(|errs| {
        anyhow::anyhow!(errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    })
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

/// The signing keys of tokens and identity assertions.
///
/// For now one key generated at start-up: services receive it in HELLO_ACK, and a restarted
/// gateway hands its linked services a new one as they relink. Store-backed keys shared by
/// every node replace this. The publish delay covers the link's push of a new key set: pushed
/// at once, a failed push retried on each heartbeat, so a key added to the ring signs only
/// after three heartbeat intervals (a lone key signs at once: nobody holds an older one).
pub async fn keyring(config: &Config, _auth: &ApiKeyAuthenticator) -> anyhow::Result<Arc<KeyRing>> {
    let now = crate::store::now_ms();
    let key = SigningKey::generate(now).map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
    let publish_delay_ms =
        i64::try_from(config.link.heartbeat_interval.as_millis().saturating_mul(3))
            .unwrap_or(i64::MAX);
    Ok(Arc::new(KeyRing::new(
        KeySet::new(vec![Arc::new(key.key)]),
        publish_delay_ms,
    )))
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
    let keys = keyring(&config, &auth).await?;
    run_with_auth(config, listeners, auth, keys, shutdown).await
}

/// [`run`] with an authenticator and signing keys the caller already opened (and may keep
/// using, e.g. to revoke keys with immediate effect, or to rotate signing keys).
pub async fn run_with_auth(
    config: Config,
    listeners: Listeners,
    auth: Arc<ApiKeyAuthenticator>,
    keys: Arc<KeyRing>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    validate(&config)?;
    let assertions = Arc::new(AssertionSigner::new(
        keys,
        config.link.assertion_issuer.as_str(),
        crate::clock::Clock::system(),
        crate::auth::assertion::DEFAULT_CAPACITY,
    ));
    let registry = Arc::new(Registry::new(config.routing.default_timeout));
    let health = Arc::new(crate::health::Health::default());
    let metrics = Arc::new(Metrics::new(vec![Box::new(LinksCollector(
        registry.clone(),
    ))]));
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
    operations.register(crate::telemetry::metrics::operation(
        metrics.clone(),
        config.auth.metrics_scope.as_deref().map(Into::into),
    ));
    let audit = AuditSink::new(metrics.clone(), auth.clone());
    let link_audit = audit.clone();
    let pipeline = Pipeline::new(crate::pipeline::Parts {
        registry: registry.clone(),
        tiers,
        metrics: metrics.clone(),
        authenticators: Authenticators::new(auth.clone()),
        access: Access::new(auth.clone()),
        audit,
        assertions: assertions.clone(),
        policy: Policy {
            limits: Limits {
                max_in_flight: config.ingress.max_in_flight,
                max_body_bytes: config.ingress.max_body_bytes,
            },
            operations,
        },
    });
    let dataplane =
        crate::dataplane::DataPlane::start(crate::dataplane::resolve_count(config.runtime.threads))
            .map_err(|e| anyhow::anyhow!("cannot start the data-plane threads: {e}"))?;
    let ingress = Arc::new(Ingress::new(
        &config.ingress,
        pipeline,
        metrics.clone(),
        &dataplane,
    )?);
    let link = Arc::new(LinkServer::new(
        &config,
        registry.clone(),
        metrics,
        link_audit,
        &dataplane,
        assertions,
    )?);

    // Audit writer, last-used writer, change poll; stopped after the listeners.
    let background = CancellationToken::new();
    let auth_task = auth.start(background.clone());
    let stop_accepting = CancellationToken::new();
    let drain = CancellationToken::new();
    let close_links = CancellationToken::new();
    tracing::info!(
        ingress = %listeners.ingress.describe(),
        link = %listeners.link.describe(),
        threads = dataplane.len(),
        "gateway listening"
    );
    // Everything is built and the listeners are bound: a probe on the first accepted
    // connection must already see a started gateway.
    health.set_started();
    let ingress_task = tokio::spawn(ingress.clone().serve(
        listeners.ingress,
        stop_accepting.clone(),
        drain.clone(),
    ));
    let link_task = tokio::spawn(link.clone().serve(listeners.link, close_links.clone()));

    shutdown.await;
    tracing::info!(grace = ?config.shutdown.grace_period, "shutting down: draining");
    health.set_draining();
    stop_accepting.cancel();
    drain.cancel();
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
    close_links.cancel();
    let _ = link_task.await;
    for inst in registry.instances() {
        inst.close.cancel();
    }
    // Established links end at once; one still handshaking is dropped with its worker.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), link.wait()).await;
    dataplane.shutdown().await;
    // Last: write what the authenticator still holds (audit rows, last-used times).
    background.cancel();
    let _ = auth_task.await;
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
    /// The gateway's authenticator: keys changed through it take effect at once.
    pub auth: Arc<ApiKeyAuthenticator>,
    /// The gateway's signing keys: a set replaced here is pushed to every linked service.
    pub keys: Arc<KeyRing>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Open the store, bind the configured addresses (port 0 picks free ones) and start.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        validate(&config)?;
        let auth = open_auth(&config).await?;
        let keys = keyring(&config, &auth).await?;
        let listeners = Listeners::bind(&config).await?;
        let ingress_addr = listeners
            .ingress
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("the ingress listener has no TCP address"))?;
        let link_addr = listeners
            .link
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("the link listener has no TCP address"))?;
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let a = auth.clone();
        let k = keys.clone();
        let task = tokio::spawn(async move {
            run_with_auth(config, listeners, a, k, s.cancelled_owned()).await
        });
        Ok(Self {
            ingress_addr,
            link_addr,
            auth,
            keys,
            shutdown,
            task,
        })
    }

    /// Drain and stop; resolves when the gateway has stopped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}
