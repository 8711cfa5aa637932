use axum::{extract::Path, routing::get, routing::post, Json, Router};
use portcullis_sdk::{Endpoint, Identity, Service};
use std::time::Duration;

async fn get_order(caller: Identity, Path(id): Path<u64>) -> Json<serde_json::Value> {
    // `caller` is the gateway's signed word on who is calling, verified by the SDK.
    let (who, workspace) = (caller.subject(), caller.workspace_name());
    Json(serde_json::json!({ "id": id, "for": who, "workspace": workspace }))
}

async fn create_order(body: String) -> String {
    format!("created: {body}\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The SDK logs why it is not linked (refusals, reconnects) through `tracing`.
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let gateway = std::env::var("ORDERS_GATEWAY").unwrap_or_else(|_| "tcp://127.0.0.1:7070".into());
    let token_file =
        std::env::var("ORDERS_TOKEN_FILE").unwrap_or_else(|_| "/run/secrets/orders.token".into());
    let token = std::fs::read_to_string(&token_file).map_err(|e| format!("{token_file}: {e}"))?;

    let app = Router::new()
        .route("/orders/{id}", get(get_order))
        .route("/orders", post(create_order));

    let running = Service::builder("orders")
        .gateway(gateway) // repeat for every gateway node
        .token(token.trim())
        .endpoint(
            Endpoint::get("/orders/{id}")
                .timeout(Duration::from_secs(5))
                .capability("orders.read"),
        )
        .endpoint(Endpoint::post("/orders").capability("orders.write"))
        .serve(app)?; // refuses what the gateway would refuse, naming the endpoint

    // Fails, naming the gateway's REJECT code and reason, if every gateway refuses the
    // service for good (a wrong token, an invalid endpoint, a route another service keeps).
    running
        .linked()
        .await
        .map_err(|e| format!("orders: not linked: {e}"))?;
    println!("orders: linked, serving until Ctrl-C");

    tokio::signal::ctrl_c().await?;
    println!("orders: draining");
    running.shutdown().await; // the gateway stops sending calls; in-flight ones finish
    println!("orders: stopped");
    Ok(())
}
