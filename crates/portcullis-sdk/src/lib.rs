//! Portcullis SDK: link a Rust service to one or more Portcullis gateways.
//!
//! A service never opens an inbound port. It dials each gateway, proves who it is with a
//! credential, declares the endpoints it serves, and then answers calls the gateway forwards
//! over that same connection: after the handshake the connection carries HTTP/2 with the roles
//! reversed, the service being the HTTP/2 server. The SDK answers the gateway's health
//! exchange itself, counts calls in flight, reconnects with jittered backoff when a link
//! drops, and drains gracefully (GOAWAY, then wait for in-flight calls) on shutdown.
//!
//! Any `tower::Service` over `http::Request<hyper::body::Incoming>` serves calls; an
//! `axum::Router` works directly. The wire protocol is specified in `docs/link-protocol.md`
//! and implemented in the `portcullis-link` crate.
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_sdk::{Endpoint, Service};
//!
//! # async fn run() -> Result<(), portcullis_sdk::Error> {
//! let router = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hello" }));
//! let running = Service::builder("hello")
//!     .gateway("tcp://127.0.0.1:7070")
//!     .token(std::env::var("PORTCULLIS_SERVICE_TOKEN").unwrap_or_default())
//!     .version(env!("CARGO_PKG_VERSION"))
//!     .endpoint(Endpoint::get("/hello").timeout(Duration::from_secs(5)))
//!     .serve(router)?;
//! running.linked().await;
//! // ... until a shutdown signal:
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod endpoint;
mod error;
mod gateway;
mod handshake;
mod serve;
mod service;
mod supervisor;

#[cfg(test)]
mod tests;

pub use endpoint::Endpoint;
pub use error::{BoxError, Error, ErrorKind};
pub use portcullis_link::{EndpointDescriptor, HealthReport, Protocol, RejectCode};
pub use service::{
    Running, Service, ServiceBuilder, DEFAULT_CONCURRENCY, DEFAULT_DRAIN_GRACE,
    MAX_LINKS_PER_GATEWAY,
};
