//! The `relay` binary: drains the outbox into RabbitMQ until SIGTERM, serving `/healthz` and
//! `/readyz` on `BIND` (default `127.0.0.1:9303`).

use std::sync::Arc;

use anyhow::Context;
use relay::{Relay, Settings, health};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("relay");
    let settings: Settings = platform_config::load_or_exit("relay");
    if settings.run_migrations {
        domain::prepare_database(&settings.db)
            .await
            .context("Failed to prepare the database")?;
    }
    let pool = platform_db::connect(&settings.db)?;
    let relay = Relay::new(pool.clone(), settings.clone());
    let metrics = Arc::new(relay::metrics(&relay));
    let (port, server) = health::serve(&settings.http, pool, relay.connected_flag(), metrics)?;
    tracing::info!(message = "Listening.", port);
    let server_handle = server.handle();
    tokio::spawn(server);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        health::shutdown_signal().await;
        let _ = stop.send(true);
    });
    relay.run(stopped).await;
    server_handle.stop(true).await;
    Ok(())
}
