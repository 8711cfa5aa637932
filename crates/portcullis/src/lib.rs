//! Portcullis, the gateway: ingress, authentication, link server, routing and proxying, wired
//! together by [`server::run`]; the identity store and its admin commands. The binary in `main.rs` only parses flags and handles signals.
//!
//! Modules are named after the concern they own (CONVENTIONS "Layout"); the path of one call
//! through them is drawn in `docs/ARCHITECTURE.md`.

pub mod admin;
pub mod auth;
pub mod body;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod ingress;
pub mod link;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod workers;

pub use config::Config;
pub use server::{run, run_with_auth, Listeners, Running};
