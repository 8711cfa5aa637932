//! The gateway's integration tests, in one test binary: each links the whole gateway, and on
//! the two cores CI builds on, one link step beats a dozen. Each module is one area; the
//! harness (`common`) starts real gateways on port 0, real SDK services and, where it matters,
//! the real binary.
//!
//! `tests/workers.rs` stays its own binary: it counts the process's threads.

mod common;

mod access;
mod assertion;
mod auth;
mod backbone;
mod binary;
#[cfg(feature = "demo")]
mod demo;
mod docs;
mod hostile_http;
mod hostile_link;
mod iam;
mod limits;
mod link_handshake;
mod link_refusals;
mod messages;
mod mtls;
mod operations;
mod operator;
mod pairing;
mod pinned;
mod pipeline;
mod readme;
mod sdk_limits;
mod sessions;
mod skips;
mod store;
mod store_iam;
mod tls;
mod tokens;
