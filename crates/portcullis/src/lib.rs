//! Portcullis, the gateway: ingress, authentication, link server, routing and proxying, wired
//! together by [`server::run`]; the identity store and its admin operations; the command line
//! ([`cli`]). The binary in `main.rs` only parses the command line and turns signals into the
//! shutdown future.
//!
//! Modules are named after the concern they own (CONVENTIONS "Layout"); the path of one call
//! through them is drawn in `docs/ARCHITECTURE.md`.

pub mod access;
pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataplane;
/// `portcullis demo`; left out of builds without the default `demo` feature.
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod health;
pub mod iam;
pub mod ingress;
pub mod link;
pub mod pairings;
pub mod pipeline;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod services;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;

pub use config::Config;
pub use server::{run, run_with_auth, run_with_parts, AuthHandles, AuthParts, Listeners, Running};
