//! The scaleout integration-test harness: a fresh database, Redis key prefix and AMQP names per
//! test, removed afterwards.
//!
//! Tests talk to real Postgres, Redis and RabbitMQ, found through the same variables the
//! services read (`DATABASE_URL`, `REDIS_URL`, `AMQP_URL`) or their local defaults. Each test
//! gets its own database and key prefix, so tests run in parallel without seeing each other,
//! and each resource is removed when its guard drops, so a run leaves nothing behind.
//!
//! The shape follows zero2prod's `spawn_app`: a service's `tests/api/helpers.rs` builds its
//! settings from these pieces, binds port 0 and drives the real application over HTTP.

mod proxy;

use std::time::Duration;

use platform_config::Secret;
use platform_db::DbSettings;
use platform_redis::{Redis, RedisSettings, redis};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use proxy::TcpProxy;

/// A name no other test uses: `<prefix>_<32 hex digits>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A database created for one test, migrated, and dropped when this guard drops.
pub struct TestDatabase {
    pub settings: DbSettings,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates `test_<uuid>` on the server of `DATABASE_URL` and applies `migrator`.
    pub async fn create(migrator: &Migrator) -> Self {
        platform_telemetry::init_for_tests();
        let server = env_or(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let mut url = url::Url::parse(&server).expect("DATABASE_URL is a valid URL");
        url.set_path(&unique_name("test"));
        let settings = DbSettings {
            database_url: Secret::new(url.to_string()),
            // Tests fail fast rather than wait on a missing server.
            db_acquire_timeout_ms: 5_000,
            db_max_connections: 5,
            ..DbSettings::default()
        };
        platform_db::ensure_database(&settings)
            .await
            .expect("the test database can be created (is Postgres running?)");
        let pool = platform_db::connect(&settings).expect("valid settings");
        platform_db::migrate(&pool, migrator)
            .await
            .expect("migrations apply to an empty database");
        Self { settings, pool }
    }
}

impl TestDatabase {
    /// URLs for this test's database on the streaming replicas of `DATABASE_REPLICA_URLS`
    /// (default: the local replica that `infra/scripts/replica.sh up` starts on port 5433).
    /// Replicas copy the whole cluster, so the test database appears there by itself.
    pub fn replica_urls(&self) -> Vec<String> {
        let name = self
            .settings
            .primary_options()
            .expect("valid settings")
            .get_database()
            .expect("a test database has a name")
            .to_owned();
        env_or(
            "DATABASE_REPLICA_URLS",
            "postgres://postgres@127.0.0.1:5433/postgres",
        )
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            let mut url = url::Url::parse(server).expect("DATABASE_REPLICA_URLS holds URLs");
            url.set_path(&name);
            url.to_string()
        })
        .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        // Drop cannot await, and the test's runtime may be shutting down: a thread with its own
        // runtime finishes the job before the test returns.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime can be built")
                .block_on(platform_db::drop_database(&settings))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: a test database could not be dropped");
        }
    }
}

/// A Redis key prefix for one test; every key under it is deleted when this guard drops.
pub struct TestRedis {
    pub settings: RedisSettings,
}

impl TestRedis {
    /// Settings for the Redis of `REDIS_URL`, with prefix `test:<uuid>:`.
    pub fn new() -> Self {
        Self {
            settings: RedisSettings {
                redis_url: Secret::new(env_or("REDIS_URL", "redis://127.0.0.1:6379")),
                redis_key_prefix: format!("{}:", unique_name("test")),
                // Generous: a loaded CI machine must not turn slowness into failures.
                redis_timeout_ms: 2_000,
                ..RedisSettings::default()
            },
        }
    }

    /// Deletes every key under this test's prefix.
    pub async fn cleanup(settings: &RedisSettings) -> Result<(), platform_redis::RedisError> {
        let redis = Redis::connect(settings)?;
        let mut conn = redis.conn().await?;
        let pattern = format!("{}*", redis.prefix());
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime can be built")
                .block_on(Self::cleanup(&settings))
        })
        .join();
        if !matches!(cleaned, Ok(Ok(()))) {
            eprintln!("warning: a test's Redis keys could not be deleted");
        }
    }
}

/// An address that refuses connections: a port bound and released, so nothing listens on it.
/// Tests use it to stand for a dependency that is down.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// Polls `check` every 20 ms until it returns true or `deadline` passes; tests wait on
/// conditions with this instead of sleeping a fixed time.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static EMPTY: Migrator = Migrator::DEFAULT;

    #[tokio::test]
    async fn a_test_database_exists_while_held_and_is_gone_after() {
        let db = TestDatabase::create(&EMPTY).await;
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        db.pool.close().await;
        let admin = db.settings.clone();
        drop(db);
        let options = admin.primary_options().unwrap().database("postgres");
        let pool = sqlx::PgPool::connect_with(options).await.unwrap();
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(!left, "database {name} was left behind");
    }

    #[tokio::test]
    async fn a_test_prefix_leaves_no_keys_behind() {
        let test_redis = TestRedis::new();
        let settings = test_redis.settings.clone();
        let redis = Redis::connect(&settings).unwrap();
        let mut conn = redis.conn().await.unwrap();
        redis::cmd("SET")
            .arg(redis.key("k"))
            .arg(1)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        drop(test_redis);
        let exists: bool = redis::cmd("EXISTS")
            .arg(redis.key("k"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists);
    }
}
