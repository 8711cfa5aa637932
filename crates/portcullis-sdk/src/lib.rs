//! Portcullis SDK: link a Rust service to one or more Portcullis gateways.
//!
//! A service never opens an inbound port. It dials each gateway, proves who it is with a
//! credential, declares the endpoints it serves, and then answers calls the gateway forwards
//! over that same connection: after the handshake the connection carries HTTP/2 with the roles
//! reversed, the service being the HTTP/2 server. The SDK verifies the gateway's identity
//! assertion of every call before the service's handler runs, answers the gateway's health
//! exchange and key updates itself, counts calls in flight, reconnects with jittered backoff
//! when a link drops, and drains gracefully (GOAWAY, then wait for in-flight calls) on
//! shutdown. A gateway that shuts down says so on the link; the SDK drains that link and dials
//! again ([`Running::gateway_drains`] counts these), where a link that just closes is a crash.
//!
//! Any `tower::Service` over `http::Request<hyper::body::Incoming>` serves calls; an
//! `axum::Router` works directly. The wire protocol is specified in `docs/link-protocol.md`
//! and implemented in the `portcullis-link` crate.
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_sdk::{Endpoint, Identity, Service};
//!
//! # async fn run() -> Result<(), portcullis_sdk::Error> {
//! let router = axum::Router::new().route(
//!     "/hello",
//!     axum::routing::get(|caller: Identity| async move {
//!         format!("hello {} of {}", caller.subject(), caller.workspace_name())
//!     }),
//! );
//! let running = Service::builder("hello")
//!     .gateway("tcp://127.0.0.1:7070")
//!     .token(std::env::var("PORTCULLIS_SERVICE_TOKEN").unwrap_or_default())
//!     .version(env!("CARGO_PKG_VERSION"))
//!     .endpoint(Endpoint::get("/hello").timeout(Duration::from_secs(5)))
//!     .serve(router)?;
//! // Fails, instead of waiting forever, if every gateway refuses the service for good.
//! running.linked().await?;
//! // ... until a shutdown signal:
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Who is calling
//!
//! The gateway adds its signed assertion of the caller to every call (`x-portcullis-identity`,
//! `docs/link-protocol.md` §6.4) and sends the public keys that verify it over the link: in
//! HELLO_ACK, then on every change. Before a call reaches the service, the SDK verifies the
//! assertion ([`Verifier`]: signature, `EdDSA` only, a key of the link's gateway, at most 60 s
//! of validity, this service as audience, the gateway's issuer — or the one set with
//! [`ServiceBuilder::issuer`]). A call without a valid assertion is answered with a fixed 401
//! (a gRPC status for gRPC calls) and never reaches the service; a verified one carries its
//! [`Identity`] in the request's extensions, and with the `axum` feature (on by default)
//! `Identity` is an extractor (`Option<Identity>` too). The raw assertion
//! ([`Identity::assertion`]) can be handed on to another service as the gateway's word.
//! Verified assertions are cached by value until they expire, so a hot caller costs one
//! signature check about every 45 s.
//!
//! # Where handlers run
//!
//! A call's handler is first polled on its link's own task, right after the link read the
//! request: a handler that answers without waiting costs no task of its own, and its response
//! is written together with the others of the same batch. A handler still waiting after that
//! first poll (for its body, a database, a timer) continues on a task of its own on the
//! runtime, in parallel with the link. So, as everywhere on tokio, do not block: CPU-heavy or
//! blocking work belongs in `tokio::task::spawn_blocking`. A handler that keeps the link's task
//! busy anyway (8 of 32 first polls over 200 µs) makes the link spawn every call for a second
//! before it tries again; a panic resets that call's stream only. With more than one core,
//! keep [`ServiceBuilder::links_per_gateway`] at the gateway's worker count, so calls that
//! answer at once are spread over that many tasks.
//!
//! # Refusals
//!
//! Everything the gateway would refuse about a service's declaration is refused first by
//! [`ServiceBuilder::serve`], naming the endpoint: invalid descriptors, reserved paths, and two
//! endpoints that claim the same requests (same template shape and overlapping methods, `*`
//! overlapping every method — the rule is `portcullis_link::find_overlap`, shared with the
//! gateway).
//!
//! A gateway's REJECT is then either transient — the link slot reconnects with backoff — or
//! permanent ([`Error::is_permanent`]): the same HELLO would get the same answer, so the slot
//! stops dialling that gateway, keeps the reason in [`Running::failures`] and calls
//! [`ServiceBuilder::on_rejected`]; [`Running::linked`] fails with the REJECT's code and
//! message once no gateway is left. Links to other gateways carry on.
//!
//! The SDK also logs every refusal and reconnect through `tracing`; install a subscriber
//! (`tracing_subscriber::fmt()` with an `EnvFilter`, then `RUST_LOG=portcullis_sdk=debug`)
//! to see them.
//!
//! | code | | why |
//! |------|-|-----|
//! | `invalid_descriptor`, `malformed_frame`, `too_large` | permanent | the HELLO is fixed when the service is built |
//! | `unsupported_version` | permanent | neither side's versions change while it runs |
//! | `bad_credential` | permanent | the gateway reads its token hashes at start and the service's token is fixed: retrying only adds authentication failures to the gateway's alerts; restart the service once the configuration is fixed |
//! | `route_conflict` | transient, then permanent | another service holds the route now; during a deploy that moves a route the old owner unlinks soon, and giving up at once would make that race an outage; a conflict that lasts [`ServiceBuilder::conflict_patience`] (2 minutes) is a mistake and ends the slot |
//! | `duplicate_instance`, `unavailable`, `timeout` | transient | the gateway's state, not the HELLO |
//!
//! Connection, TLS and I/O failures are always retried.
//!
//! # What a link accepts
//!
//! The SDK's HTTP/2 server takes request heads up to [`DEFAULT_MAX_HEADER_LIST_SIZE`] (4 MiB,
//! enough for the largest head a gateway can be configured to forward, in the worst HPACK
//! encoding) and advertises the limit in its SETTINGS so the gateway answers larger heads with
//! 431 itself. No single call can fail the link: a burst of calls cancelled before they are
//! accepted, a handler that never reads its upload, or a handler that errors or panics costs
//! only its own stream.

mod endpoint;
mod error;
mod gateway;
mod handshake;
mod identity;
mod inline;
mod instance_key;
mod serve;
mod service;
mod supervisor;
pub mod worker;

#[cfg(test)]
mod tests;

pub use endpoint::Endpoint;
pub use error::{BoxError, Error, ErrorKind};
#[cfg(feature = "axum")]
pub use identity::IdentityRejection;
pub use identity::{Identity, Verifier, VerifyError, DEFAULT_CACHE_CAPACITY};
pub use instance_key::{InstanceKey, Pairing};
pub use portcullis_link::headers::IDENTITY as IDENTITY_HEADER;
pub use portcullis_link::{EndpointDescriptor, HealthReport, Protocol, RejectCode};
pub use service::{
    Running, Service, ServiceBuilder, DEFAULT_CONCURRENCY, DEFAULT_CONFLICT_PATIENCE,
    DEFAULT_DRAIN_GRACE, DEFAULT_MAX_HEADER_LIST_SIZE, MAX_LINKS_PER_GATEWAY,
    MAX_MAX_HEADER_LIST_SIZE, MIN_MAX_HEADER_LIST_SIZE,
};
