//! Building and running the API server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, dev::Server, web};
use anyhow::Context;
use domain::auth::PasswordHasher;
use domain::store::{BackgroundTasks, Store};
use platform_http::health::{Readiness, ReadinessCheck};
use platform_http::middleware::{BodyLimit, limit_body, request_span};
use platform_metrics::{Metrics, track_requests};
use platform_redis::Redis;
use platform_session::SessionStore;
use platform_session::throttle::Throttle;
use sqlx::PgPool;

use crate::configuration::Settings;
use crate::routes;

/// What every handler can reach, shared by all workers.
pub struct AppState {
    /// The primary, for accounts and for reading back what a request just wrote.
    pub pool: PgPool,
    /// Posts and comments through the cache and the replicas.
    pub store: Store,
    pub sessions: SessionStore,
    pub hasher: PasswordHasher,
    pub login_per_account: Throttle,
    pub login_per_client: Throttle,
    pub settings: Arc<Settings>,
}

/// A bound, ready-to-run API server.
pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    background: BackgroundTasks,
}

impl Application {
    /// Prepares the database (when configured), connects the pools and binds `BIND`. Port 0
    /// binds a free port, which [`Application::port`] reports; tests rely on that.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.run_migrations {
            domain::prepare_database(&settings.db)
                .await
                .context("Failed to prepare the database")?;
        }
        let redis = Redis::connect(&settings.redis)?;
        let store = Store::connect(&settings.db, redis.clone(), &settings.app_cache)?;
        let background = store.spawn_background(&settings.app_cache);
        let pool = store.database().primary().clone();
        let mut metrics = Metrics::new();
        metrics.register_collector(platform_metrics::platform::cache(store.cache().clone()));
        metrics.register_collector(platform_metrics::platform::database(
            store.database().clone(),
        ));
        let metrics = Arc::new(metrics);
        let listener = TcpListener::bind(&settings.http.bind)
            .with_context(|| format!("Failed to bind {}", settings.http.bind))?;
        let port = listener.local_addr()?.port();

        // The throttles share their Redis names with the web service's, so an attacker cannot
        // double their login attempts by alternating front ends.
        let window = Duration::from_secs(settings.login_window_secs);
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            store: store.clone(),
            sessions: SessionStore::new(redis.clone(), &settings.session),
            hasher: PasswordHasher::new(settings.password_hash_concurrency),
            login_per_account: Throttle::new(
                redis.clone(),
                "login-account",
                settings.login_attempts_per_account,
                window,
            ),
            login_per_client: Throttle::new(
                redis.clone(),
                "login-client",
                settings.login_attempts_per_client,
                window,
            ),
            settings: Arc::new(settings.clone()),
        });
        let readiness = Readiness::new(
            vec![
                ReadinessCheck::new("postgres", move || {
                    let pool = pool.clone();
                    async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop) }
                }),
                ReadinessCheck::new("redis", move || {
                    let redis = redis.clone();
                    async move { redis.ping().await }
                }),
            ],
            Duration::from_millis(settings.http.readiness_timeout_ms),
        );
        let limit = settings.http.max_body_bytes;

        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(BodyLimit(limit)))
                .app_data(platform_http::json::json_config(limit))
                .app_data(platform_http::json::query_config())
                .configure(|cfg| platform_http::health::configure(cfg, readiness.clone()))
                .configure(|cfg| platform_metrics::configure(cfg, metrics.clone()))
                .configure(routes::configure)
                .wrap(from_fn(limit_body))
                .wrap(from_fn(track_requests))
                .wrap(from_fn(request_span))
        })
        .listen(listener)?
        .shutdown_timeout(settings.http.shutdown_timeout_secs);
        if settings.http.http_workers > 0 {
            server = server.workers(settings.http.http_workers);
        }
        tracing::info!(message = "Listening.", port);
        Ok(Self {
            port,
            server: server.run(),
            store,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or Ctrl-C, then lets in-flight requests finish within
    /// `SHUTDOWN_TIMEOUT_SECS`.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        drop(self.background);
        if let Err(e) = self.store.flush_views().await {
            tracing::warn!(message = "Flushing view counts at shutdown failed.", error = %e);
        }
        Ok(())
    }
}
