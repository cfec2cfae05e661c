//! `/healthz` and `/readyz` on `BIND`, and the signals that stop the relay.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer};
use anyhow::Context;
use platform_http::HttpSettings;
use platform_http::health::{Readiness, ReadinessCheck};
use platform_metrics::Metrics;
use sqlx::PgPool;

/// A health server on `settings.bind` (port 0 picks one; the port is returned): `/healthz`,
/// `/readyz` (ready when Postgres answers and `broker_connected` is true) and `/metrics`. It ignores signals: the process stops it
/// after the relay has finished its batch.
pub fn serve(
    settings: &HttpSettings,
    pool: PgPool,
    broker_connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(u16, Server)> {
    let readiness = Readiness::new(
        vec![
            ReadinessCheck::new("postgres", move || {
                let pool = pool.clone();
                async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop) }
            }),
            ReadinessCheck::new("rabbitmq", move || {
                let connected = broker_connected.load(Ordering::Relaxed);
                async move {
                    if connected {
                        Ok(())
                    } else {
                        Err("not connected")
                    }
                }
            }),
        ],
        Duration::from_millis(settings.readiness_timeout_ms),
    );
    let listener = TcpListener::bind(&settings.bind)
        .with_context(|| format!("Failed to bind {}", settings.bind))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .configure(|cfg| platform_http::health::configure(cfg, readiness.clone()))
            .configure(|cfg| platform_metrics::configure(cfg, metrics.clone()))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((port, server))
}

/// Resolves on SIGTERM (what an orchestrator sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("the SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!(message = "Stopping.");
}
