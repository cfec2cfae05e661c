//! The mobile service's settings. Every field is one environment variable of the same name in
//! upper case; see the README's configuration table.

use platform_db::DbSettings;
use platform_http::HttpSettings;
use platform_http::caching::CacheSettings;
use platform_redis::RedisSettings;
use platform_session::SessionSettings;
use serde::{Deserialize, Serialize};

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
    #[serde(flatten)]
    pub cache: CacheSettings,
    /// `CACHE_ENABLED`, `CACHE_TTL_*`...: the application cache in Redis.
    #[serde(flatten)]
    pub app_cache: platform_cache::CacheSettings,
    /// `PAGE_SIZE`: posts per page of `GET /api/v1/posts` when the client sends no `limit`.
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
    /// (an advisory lock serialises them); turn off when `mobile migrate` runs as a separate step.
    pub run_migrations: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpSettings {
                bind: "127.0.0.1:8201".to_owned(),
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
