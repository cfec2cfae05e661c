//! Redis for scaleout processes: a connection pool with every timeout explicit, and key
//! prefixes.
//!
//! deadpool sets no timeouts by default, so a Redis that accepts connections but never answers
//! (a stopped process, a full network buffer) would hold each request for as long as the OS
//! keeps the socket. Here every wait is bounded by `REDIS_TIMEOUT_MS`: waiting for a pooled
//! connection, connecting, recycling, and each command's response. A hung Redis then costs a
//! request at most a couple of timeouts, and callers decide what "unavailable" means for them
//! (a cache miss, or a 503 for what needs a session).
//!
//! Every key goes through [`Redis::key`], which puts `REDIS_KEY_PREFIX` in front, so tests and
//! several deployments can share one Redis without seeing each other's keys.
//!
//! Every command runs in a [`client_span`], so traces show each round trip to Redis.
//!
//! # Layout
//! - [`Redis`]: the pool and the key prefix; [`RedisSettings`] its configuration.
//! - [`Connection`] (in `connection.rs`): a pooled connection that leaves the pool without a
//!   round trip while in steady use, and never goes back to it once broken.

mod connection;

use std::sync::Arc;
use std::time::Duration;

pub use connection::Connection;
use connection::{Manager, Pool};
pub use deadpool_redis::redis;
use deadpool_redis::redis::AsyncConnectionConfig;
use platform_config::Secret;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// The span for one Redis round trip (a command, or a pipeline or script sent as one), after
/// OpenTelemetry's database client conventions: named after the command ("GET", "EVAL"; an
/// atomic pipeline goes out as `MULTI` ... `EXEC`, so "MULTI"), kind client, with
/// `db.system.name` and `db.operation.name`. Run the command in it with
/// `.instrument(client_span(..))`. Keys and arguments never go in: they hold user data.
///
/// DEBUG, so it exists only when the OpenTelemetry layer is installed (see
/// `platform_telemetry`'s filtering): without trace export it costs a level check.
pub fn client_span(command: &'static str) -> tracing::Span {
    tracing::debug_span!(
        "db.client",
        otel.name = command,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = command,
    )
}

/// Redis settings shared by every process that uses Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// `REDIS_URL`: the Redis server holding sessions and the application cache.
    pub redis_url: Secret,
    /// `REDIS_POOL_SIZE`: pooled connections per process (each is multiplexed).
    pub redis_pool_size: usize,
    /// `REDIS_TIMEOUT_MS`: bound on waiting for a connection, connecting, and each command.
    pub redis_timeout_ms: u64,
    /// `REDIS_KEY_PREFIX`: put in front of every key this process reads or writes.
    pub redis_key_prefix: String,
    /// `REDIS_CHECK_IDLE_MS`: a pooled connection unused for longer than this is checked with
    /// a `PING` round trip before it goes out again; one in steady use is not, and one that
    /// broke (an I/O error, not a timeout) is closed instead of returned. `0` checks at every
    /// checkout, as deadpool-redis does on its own.
    pub redis_check_idle_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            redis_pool_size: 16,
            redis_timeout_ms: 250,
            redis_key_prefix: "scaleout:".to_owned(),
            redis_check_idle_ms: 5_000,
        }
    }
}

/// Why a Redis operation failed. Every variant means "Redis is unavailable right now" to a
/// caller; the variants exist so logs say which part gave up.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `REDIS_URL` could not be parsed.
    #[error("REDIS_URL is not a valid Redis URL: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// No pooled connection could be had within the timeout.
    #[error("no Redis connection available")]
    Pool(#[from] deadpool::managed::PoolError<redis::RedisError>),
    /// A command failed or timed out.
    #[error("Redis command failed")]
    Command(#[from] redis::RedisError),
}

/// A pooled Redis client with a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("status", &self.pool.status())
            .finish()
    }
}

impl Redis {
    /// Builds the pool. No connection is made until the first command.
    pub fn connect(settings: &RedisSettings) -> Result<Self, RedisError> {
        let timeout = Some(Duration::from_millis(settings.redis_timeout_ms));
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let manager =
            deadpool_redis::Manager::new_with_config(settings.redis_url.expose(), connection)
                .map_err(RedisError::InvalidUrl)?;
        let check_idle_after = Duration::from_millis(settings.redis_check_idle_ms);
        let pool = Pool::builder(Manager::new(manager, check_idle_after))
            .max_size(settings.redis_pool_size)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            // The most recently returned connection goes out first: a few stay busy, hence
            // unchecked, while the rest idle, rather than every connection taking turns and
            // each being checked again after sitting idle.
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is set, so building the pool cannot fail");
        Ok(Self {
            pool,
            prefix: settings.redis_key_prefix.as_str().into(),
        })
    }

    /// A connection from the pool, within the configured timeout.
    pub async fn conn(&self) -> Result<Connection, RedisError> {
        Ok(Connection::new(self.pool.get().await?))
    }

    /// The full key for `name`: the configured prefix followed by `name`.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The configured prefix, for tools that scan this process's keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Round-trips a `PING`; readiness probes use this.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .instrument(client_span("PING"))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_reachable_redis_answers_ping() {
        let redis = Redis::connect(&RedisSettings::default()).unwrap();
        redis.ping().await.unwrap();
    }

    /// A server that accepts connections and never answers is the worst case for a client: the
    /// timeouts are what turn it into a quick error.
    #[tokio::test]
    async fn a_hung_redis_fails_within_the_timeouts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let redis = Redis::connect(&RedisSettings {
            redis_url: Secret::new(format!("redis://{addr}")),
            redis_timeout_ms: 100,
            ..RedisSettings::default()
        })
        .unwrap();
        let started = Instant::now();
        assert!(redis.ping().await.is_err());
        // Generous bound: it proves a timeout exists, not its precision on a busy machine.
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    fn single_connection() -> Redis {
        Redis::connect(&RedisSettings {
            redis_pool_size: 1,
            ..RedisSettings::default()
        })
        .unwrap()
    }

    async fn client_id(redis: &Redis) -> i64 {
        id_of(&mut redis.conn().await.unwrap()).await
    }

    async fn id_of(conn: &mut Connection) -> i64 {
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(conn)
            .await
            .unwrap()
    }

    /// Closes the connections `ids` from the server's side, as a restart would.
    async fn kill_clients(ids: &[i64]) {
        let observer = Redis::connect(&RedisSettings::default()).unwrap();
        let mut conn = observer.conn().await.unwrap();
        for id in ids {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    }

    /// `CLIENT LIST` of one connection, asked over another.
    async fn describe_client(id: i64) -> String {
        let observer = Redis::connect(&RedisSettings::default()).unwrap();
        let mut conn = observer.conn().await.unwrap();
        redis::cmd("CLIENT")
            .arg("LIST")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// A connection in steady use goes out again without a check: after its second checkout,
    /// the last command the server saw from it is still the caller's own.
    #[tokio::test]
    async fn a_connection_in_steady_use_leaves_the_pool_without_a_round_trip() {
        let redis = single_connection();
        let id = client_id(&redis).await;
        let again = redis.conn().await.unwrap();
        let described = describe_client(id).await;
        assert!(described.contains("cmd=client|id"), "{described}");
        drop(again);
        assert_eq!(client_id(&redis).await, id, "the one connection is reused");
    }

    /// A connection the server closed fails at most the command that finds it closed; it is
    /// not put back, and the next command runs on a new connection.
    #[tokio::test]
    async fn a_broken_connection_is_replaced() {
        let redis = single_connection();
        let id = client_id(&redis).await;
        kill_clients(&[id]).await;
        let _finds_it_closed = redis.ping().await;
        redis.ping().await.unwrap();
        assert_ne!(client_id(&redis).await, id);
    }

    /// A server restart closes every pooled connection at once: the first command to find its
    /// connection closed empties the pool, so the next one connects afresh instead of drawing
    /// another closed connection.
    #[tokio::test]
    async fn a_connection_closed_by_the_server_takes_the_idle_ones_with_it() {
        let redis = Redis::connect(&RedisSettings {
            redis_pool_size: 2,
            ..RedisSettings::default()
        })
        .unwrap();
        let (mut a, mut b) = (redis.conn().await.unwrap(), redis.conn().await.unwrap());
        let ids = [id_of(&mut a).await, id_of(&mut b).await];
        drop((a, b));
        kill_clients(&ids).await;
        let _finds_it_closed = redis.ping().await;
        redis.ping().await.unwrap();
    }

    #[test]
    fn keys_carry_the_prefix() {
        let redis = Redis::connect(&RedisSettings {
            redis_key_prefix: "t1:".into(),
            ..RedisSettings::default()
        })
        .unwrap();
        assert_eq!(redis.key("session:abc"), "t1:session:abc");
    }
}
