//! `/healthz`, `/readyz` and `/metrics` on `BIND`, through platform-http's probe server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix_web::dev::Server;
use anyhow::Context;
use platform_http::HttpSettings;
use platform_http::health::{ReadinessCheck, serve_probes};
use platform_metrics::Metrics;
use sqlx::PgPool;

pub use platform_http::health::shutdown_signal;

/// The probe server: ready when Postgres answers and `broker_connected` is true. It ignores
/// signals; the process stops it after the relay has finished its batch.
pub fn serve(
    settings: &HttpSettings,
    pool: PgPool,
    broker_connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(u16, Server)> {
    let checks = vec![
        ReadinessCheck::new("postgres", move || {
            let pool = pool.clone();
            async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop) }
        }),
        ReadinessCheck::flag("rabbitmq", broker_connected, "not connected"),
    ];
    serve_probes(settings, checks, move |cfg| {
        platform_metrics::configure(cfg, metrics.clone())
    })
    .with_context(|| format!("Failed to bind {}", settings.bind))
}
