//! Health of the gateway process for orchestrators: `live` (the process answers), `startup`
//! (initialisation finished), `ready` (listeners bound, not draining, dependencies reachable).
//! No authentication; bodies are JSON with the status and each check. Served as a gateway
//! operation ([`operation`]) through the call pipeline like every other path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A dependency readiness depends on (the store, later Redis): returns `Err(reason)` when down.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Shared health state.
#[derive(Default)]
pub struct Health {
    started: AtomicBool,
    draining: AtomicBool,
    checks: std::sync::RwLock<Vec<(&'static str, Check)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("started", &self.started.load(Ordering::Relaxed))
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Initialisation finished and listeners are bound.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Shutdown began: never ready again.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Is the gateway draining?
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Add a dependency check to readiness.
    pub fn add_check(&self, name: &'static str, check: Check) {
        if let Ok(mut c) = self.checks.write() {
            c.push((name, check));
        }
    }

    /// `(status code, JSON body)` for a health path, or `None` if `path` is not one.
    pub async fn respond(&self, path: &str) -> Option<(u16, String)> {
        let started = self.started.load(Ordering::Acquire);
        match path {
            "/health/live" => Some((
                200,
                r#"{"status":"ok","checks":{"process":"ok"}}"#.to_string(),
            )),
            "/health/startup" => Some(if started {
                (
                    200,
                    r#"{"status":"ok","checks":{"startup":"ok"}}"#.to_string(),
                )
            } else {
                (
                    503,
                    r#"{"status":"starting","checks":{"startup":"pending"}}"#.to_string(),
                )
            }),
            "/health/ready" => {
                let draining = self.is_draining();
                let mut checks = serde_json::Map::new();
                checks.insert(
                    "listeners".into(),
                    (if started { "ok" } else { "pending" }).into(),
                );
                checks.insert(
                    "draining".into(),
                    (if draining { "draining" } else { "ok" }).into(),
                );
                let list: Vec<(&'static str, Check)> =
                    self.checks.read().map(|c| c.clone()).unwrap_or_default();
                let mut ok = started && !draining;
                for (name, check) in list {
                    let r = tokio::time::timeout(std::time::Duration::from_secs(2), check()).await;
                    let v = match r {
                        Ok(Ok(())) => "ok".to_string(),
                        Ok(Err(e)) => {
                            ok = false;
                            e
                        }
                        Err(_) => {
                            ok = false;
                            "timeout".to_string()
                        }
                    };
                    checks.insert(name.into(), v.into());
                }
                let body = serde_json::json!({
                    "status": if ok { "ok" } else if draining { "draining" } else { "unavailable" },
                    "checks": checks,
                });
                Some((if ok { 200 } else { 503 }, body.to_string()))
            }
            _ => None,
        }
    }
}

/// The paths health answers.
pub const PATHS: &[&str] = &["/health/live", "/health/ready", "/health/startup"];

/// The health operation: public, no capability, any method (probes differ in what they send).
pub fn operation(health: Arc<Health>) -> crate::pipeline::Operation {
    use axum::routing::any;
    let mut router = axum::Router::new();
    for path in PATHS {
        let h = health.clone();
        router = router.route(
            path,
            any(move || {
                let h = h.clone();
                async move {
                    let (status, body) = h
                        .respond(path)
                        .await
                        .unwrap_or((404, r#"{"error":"not_found"}"#.to_string()));
                    (
                        http::StatusCode::from_u16(status).unwrap_or_default(),
                        [(http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        );
    }
    crate::pipeline::Operation {
        name: "health",
        path: crate::pipeline::PathMatch::OneOf(PATHS),
        requires: crate::access::Requirement::Public,
        auth: crate::pipeline::AuthPolicy::Public,
        router,
    }
}
