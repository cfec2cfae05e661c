//! What the scaleout web and mobile front ends share: their settings, their state, and the
//! server around their routes.
//!
//! The two front ends differ in what they say (HTML pages, a JSON API) and agree on everything
//! else: the same sessions, the same data tier, the same limits, health checks, metrics and
//! shutdown. That common part is built here once; each service adds its routes.
//!
//! # Layout
//! - [`Settings`]: every variable both services read.
//! - [`AppState`]: what every handler can reach.
//! - [`Application`]: binds, wires and runs a server around a service's routes.
//! - [`failure`] and [`front_end_error!`]: dependency failures and error chains, for both
//!   services' error types.
//! - [`Command`]: the binaries' command line (`serve` or `migrate`).

pub mod failure;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, dev::Server, web};
use anyhow::Context;
use domain::auth::PasswordHasher;
use domain::store::{BackgroundTasks, Store};
use platform_db::DbSettings;
use platform_http::HttpSettings;
use platform_http::caching::CacheSettings;
use platform_http::health::{Readiness, ReadinessCheck};
use platform_http::middleware::{BodyLimit, limit_body, request_span};
use platform_metrics::{Metrics, track_requests};
use platform_redis::{Redis, RedisSettings};
use platform_session::SessionSettings;
use platform_session::SessionStore;
use platform_session::throttle::Throttle;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The settings of a front end. Every field is one environment variable of the same name in
/// upper case; see the README's configuration table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub http: HttpSettings,
    #[serde(flatten)]
    pub db: DbSettings,
    #[serde(flatten)]
    pub redis: RedisSettings,
    #[serde(flatten)]
    pub session: SessionSettings,
    /// `CACHE_MAX_AGE_SECS`: how long HTTP caches may reuse what anonymous readers get.
    #[serde(flatten)]
    pub cache: CacheSettings,
    /// `CACHE_ENABLED`, `CACHE_TTL_*`...: the application cache in Redis.
    #[serde(flatten)]
    pub app_cache: platform_cache::CacheSettings,
    /// `PAGE_SIZE`: posts per page (the API's default `limit`).
    pub page_size: u32,
    /// `LOGIN_ATTEMPTS_PER_ACCOUNT`: login attempts allowed per username per window.
    pub login_attempts_per_account: u64,
    /// `LOGIN_ATTEMPTS_PER_CLIENT`: login attempts allowed per client address per window.
    pub login_attempts_per_client: u64,
    /// `LOGIN_WINDOW_SECS`: the login rate-limit window.
    pub login_window_secs: u64,
    /// `PASSWORD_HASH_CONCURRENCY`: argon2 hashes running at once (each holds 19 MiB).
    pub password_hash_concurrency: usize,
    /// `RUN_MIGRATIONS`: create and migrate the database at start. Safe with many replicas
    /// (an advisory lock serialises them); turn off when a `migrate` command runs as a
    /// separate step.
    pub run_migrations: bool,
}

impl Settings {
    /// The defaults, listening on `bind`.
    pub fn with_bind(bind: &str) -> Self {
        Self {
            http: HttpSettings {
                bind: bind.to_owned(),
                ..HttpSettings::default()
            },
            db: DbSettings::default(),
            redis: RedisSettings::default(),
            session: SessionSettings::default(),
            cache: CacheSettings::default(),
            app_cache: platform_cache::CacheSettings::default(),
            page_size: 20,
            login_attempts_per_account: 10,
            login_attempts_per_client: 50,
            login_window_secs: 300,
            password_hash_concurrency: 2,
            run_migrations: true,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::with_bind(&HttpSettings::default().bind)
    }
}

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

/// A bound, ready-to-run front end.
pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    background: BackgroundTasks,
}

impl Application {
    /// Prepares the database (when configured), connects the data tier and binds `BIND` (port 0
    /// binds a free port, which [`Application::port`] reports; tests rely on that), then serves
    /// `routes` with health checks, `/metrics`, request spans and the body limit around them.
    pub async fn build<F>(settings: Settings, routes: F) -> anyhow::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
    {
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

        // The throttles have the same Redis names in both front ends, so an attacker cannot
        // double their login attempts by alternating between them.
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
                .configure(|cfg| platform_http::health::configure(cfg, readiness.clone()))
                .configure(|cfg| platform_metrics::configure(cfg, metrics.clone()))
                .configure(routes.clone())
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
    /// `SHUTDOWN_TIMEOUT_SECS`; view counts still in the process or in Redis are flushed to
    /// Postgres on the way out.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        drop(self.background);
        if let Err(e) = self.store.flush_views().await {
            tracing::warn!(message = "Flushing view counts at shutdown failed.", error = %e);
        }
        Ok(())
    }
}

/// What a front end's binary was asked to do: `NAME` serves, `NAME migrate` creates and
/// migrates the database, then exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
}

impl Command {
    /// Reads the first argument; anything else prints the usage and exits with `EX_USAGE`.
    pub fn from_args(program: &str) -> Self {
        match std::env::args().nth(1).as_deref() {
            None | Some("serve") => Self::Serve,
            Some("migrate") => Self::Migrate,
            Some(other) => {
                eprintln!("{program}: unknown command `{other}`; usage: {program} [serve|migrate]");
                std::process::exit(64);
            }
        }
    }
}
