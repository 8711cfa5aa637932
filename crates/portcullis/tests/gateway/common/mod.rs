//! Test harness: a real gateway on port 0 with its own store (SQLite in a temporary
//! directory, or a fresh PostgreSQL database), real SDK services linked to it, and an HTTP
//! client that sends the gateway's test API key (scope `*`) unless told otherwise.
//!
//! ```ignore
//! let gw = TestGateway::with_services(&["echo"]).await;
//! let svc = gw.echo("echo-1").await;
//! let resp = gw.get("/echo/hi").await;              // with the test key
//! let resp = gw.get_with_key("/echo/hi", None).await; // without any key
//! ```
#![allow(dead_code)]

pub mod process;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use portcullis::auth::authenticator::CreateKey;
use portcullis::config::{Config, ServiceConfig};
use portcullis::store::testing::TestStore;
use std::net::SocketAddr;
use std::time::Duration;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn token_for(service: &str) -> String {
    format!("test-token-for-{service}-0123456789abcdef")
}

pub fn config_with_services(services: &[&str]) -> Config {
    let mut cfg = Config::default();
    cfg.ingress.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.heartbeat_interval = Duration::from_millis(200);
    for s in services {
        cfg.services.insert(
            (*s).into(),
            ServiceConfig::token(hex::encode(portcullis::link::hash_token(&token_for(s)))),
        );
    }
    cfg
}

/// An HTTP client that adds `Authorization: Bearer <key>` to requests that carry none.
#[derive(Clone)]
pub struct AuthClient {
    pub inner: Client<HttpConnector, Body>,
    pub key: Option<String>,
}

impl AuthClient {
    pub async fn request(
        &self,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        if let Some(k) = &self.key {
            if !req.headers().contains_key(http::header::AUTHORIZATION) {
                req.headers_mut().insert(
                    http::header::AUTHORIZATION,
                    format!("Bearer {k}").parse().unwrap(),
                );
            }
        }
        self.inner.request(req).await
    }
}

pub struct TestGateway {
    pub running: Option<portcullis::Running>,
    pub ingress: SocketAddr,
    pub link: SocketAddr,
    pub client: AuthClient,
    pub auth: std::sync::Arc<portcullis::auth::ApiKeyAuthenticator>,
    pub store: Option<TestStore>,
    key: String,
    key_id: String,
}

impl TestGateway {
    /// Start on a fresh SQLite store.
    pub async fn start(cfg: Config) -> Self {
        Self::start_on(cfg, TestStore::sqlite()).await
    }

    /// Start on `store` (initialised here), with a test key of scope `*`.
    pub async fn start_on(cfg: Config, store: TestStore) -> Self {
        Self::start_on_parts(cfg, store, |_, parts| parts).await
    }

    /// [`TestGateway::start_on`], with authentication parts `f` makes from the configuration
    /// and the API-keys-only parts on the store.
    pub async fn start_on_parts(
        mut cfg: Config,
        store: TestStore,
        f: impl FnOnce(&Config, portcullis::AuthParts) -> portcullis::AuthParts,
    ) -> Self {
        cfg.data_dir = store.data_dir();
        cfg.store.url = store.options.url.clone();
        portcullis::admin::init(&cfg)
            .await
            .expect("store initialises");
        let api_keys = portcullis::server::open_auth(&cfg)
            .await
            .expect("store opens");
        let parts = f(&cfg, portcullis::AuthParts::from_store(api_keys));
        let running = portcullis::Running::start_with(cfg, parts)
            .await
            .expect("gateway starts");
        let issued = running
            .auth
            .create_key(
                &CreateKey {
                    workspace: "default".into(),
                    name: "test admin".into(),
                    scopes: vec!["*".into()],
                    expires_in: None,
                    key_id: Some("test-admin".into()),
                },
                "test",
            )
            .await
            .expect("test key");
        Self {
            ingress: running.ingress_addr,
            link: running.link_addr,
            auth: running.auth.clone(),
            running: Some(running),
            client: AuthClient {
                inner: client(),
                key: Some(issued.api_key.clone()),
            },
            store: Some(store),
            key: issued.api_key,
            key_id: issued.record.key_id,
        }
    }

    /// The test key (scope `*`).
    pub fn api_key(&self) -> &str {
        &self.key
    }

    /// Its key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Create a key with `scopes` in the default workspace through the gateway's
    /// authenticator; returns (key id, raw key).
    pub async fn create_key(&self, name: &str, scopes: &[&str]) -> (String, String) {
        self.create_key_in("default", name, scopes).await
    }

    /// [`TestGateway::create_key`] in `workspace` (by name).
    pub async fn create_key_in(
        &self,
        workspace: &str,
        name: &str,
        scopes: &[&str],
    ) -> (String, String) {
        let issued = self
            .auth
            .create_key(
                &CreateKey {
                    workspace: workspace.into(),
                    name: name.into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    expires_in: None,
                    key_id: None,
                },
                "test",
            )
            .await
            .expect("key created");
        (issued.record.key_id, issued.api_key)
    }

    /// GET with `key` as the bearer credential, or with no `Authorization` at all.
    pub async fn get_with_key(
        &self,
        path: &str,
        key: Option<&str>,
    ) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let mut req = http::Request::get(self.url(path));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = self
            .client
            .inner
            .request(req.body(empty()).unwrap())
            .await
            .expect("request reaches the gateway");
        collect(resp).await
    }

    pub async fn with_services(services: &[&str]) -> Self {
        Self::start(config_with_services(services)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingress, path)
    }

    pub fn link_url(&self) -> String {
        format!("tcp://{}", self.link)
    }

    /// Link an echo service instance and wait until it is up.
    pub async fn echo(&self, instance: &str) -> (portcullis_sdk::Running, echo_service::Stats) {
        self.echo_as("echo", instance).await
    }

    pub async fn echo_as(
        &self,
        service: &str,
        instance: &str,
    ) -> (portcullis_sdk::Running, echo_service::Stats) {
        serve_echo(
            portcullis_sdk::Service::builder(service)
                .gateway(self.link_url())
                .token(token_for(service))
                .instance_id(instance)
                .drain_grace(Duration::from_secs(10)),
        )
        .await
    }

    pub async fn request(&self, req: http::Request<Body>) -> http::Response<hyper::body::Incoming> {
        self.client
            .request(req)
            .await
            .expect("request reaches the gateway")
    }

    pub async fn get(&self, path: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let req = http::Request::get(self.url(path)).body(empty()).unwrap();
        collect(self.request(req).await).await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: &'static [u8],
    ) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let req = http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .body(full(body))
            .unwrap();
        collect(self.request(req).await).await
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
        if let Some(s) = self.store.take() {
            s.cleanup().await;
        }
    }
}

/// Serve the echo service's routes with `builder` (gateways, token and ids already set) and
/// wait until it counts itself linked.
pub async fn serve_echo(
    builder: portcullis_sdk::ServiceBuilder,
) -> (portcullis_sdk::Running, echo_service::Stats) {
    let stats = echo_service::Stats::default();
    let mut b = builder;
    for e in echo_service::endpoints() {
        b = b.endpoint(e);
    }
    let running = b
        .serve(echo_service::router(stats.clone()))
        .expect("service builds");
    tokio::time::timeout(Duration::from_secs(10), running.linked())
        .await
        .expect("service links within 10 s")
        .unwrap();
    (running, stats)
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: &'static [u8]) -> Body {
    Full::new(Bytes::from_static(b))
        .map_err(|e| match e {})
        .boxed()
}

pub async fn collect(
    resp: http::Response<hyper::body::Incoming>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

pub fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Poll `f` until it returns true, up to 15 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service linked by hand for limits the SDK does not expose: the real handshake over TCP
/// (CHALLENGE, HELLO with the configured token, HELLO_ACK), then a hyper HTTP/2 server with
/// `max_header_list_size` serving `router`. Returns once HELLO_ACK has arrived; the task
/// serves until the link ends.
pub async fn raw_h2_service(
    link: SocketAddr,
    service: &str,
    instance: &str,
    endpoints: Vec<portcullis_link::EndpointDescriptor>,
    max_header_list_size: u32,
    router: axum::Router,
) -> tokio::task::JoinHandle<()> {
    raw_h2_service_as(
        link,
        service,
        instance,
        endpoints,
        (portcullis_link::VERSION, None),
        max_header_list_size,
        router,
    )
    .await
}

/// [`raw_h2_service`] with the HELLO sent as `version`, declaring `sessions`.
pub async fn raw_h2_service_as(
    link: SocketAddr,
    service: &str,
    instance: &str,
    endpoints: Vec<portcullis_link::EndpointDescriptor>,
    (version, sessions): (u8, Option<portcullis_link::SessionsDecl>),
    max_header_list_size: u32,
    router: axum::Router,
) -> tokio::task::JoinHandle<()> {
    use portcullis_link::{Credential, Frame, Hello, MAX_FRAME_LEN};
    let mut s = tokio::net::TcpStream::connect(link)
        .await
        .expect("link port");
    let challenge = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .expect("challenge");
    assert!(matches!(challenge, Frame::Challenge(_)));
    let hello = Hello {
        service: service.into(),
        instance_id: instance.into(),
        version: "0".into(),
        region: None,
        endpoints,
        openapi: None,
        sessions,
        credential: Credential::Token {
            token: token_for(service),
        },
    };
    portcullis::link::write_frame_as(&mut s, &Frame::Hello(Box::new(hello)), version)
        .await
        .expect("hello sent");
    let ack = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .expect("answer");
    assert!(matches!(ack, Frame::HelloAck(_)), "got {ack:?}");
    tokio::spawn(async move {
        use tower::ServiceExt;
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            router.clone().oneshot(req)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(max_header_list_size)
            .max_concurrent_streams(1000)
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    })
}

/// A descriptor for [`raw_h2_service`].
pub fn descriptor(method: &str, path: &str) -> portcullis_link::EndpointDescriptor {
    portcullis_link::EndpointDescriptor {
        method: method.into(),
        path: path.into(),
        timeout_ms: None,
        streaming: true,
        capability: None,
        protocol: portcullis_link::Protocol::Http,
        workspace_scoped: false,
    }
}

/// An HTTP/2 (prior knowledge) client to the gateway.
pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}
