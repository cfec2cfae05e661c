//! Fixed-window attempt counters in Redis, used to rate-limit logins per account and per client.
//!
//! A counter is one Redis key that `INCR` bumps and that expires with its window, so every
//! replica shares the same count and nothing needs cleaning up.

use std::time::Duration;

use platform_redis::redis;
use platform_redis::{Redis, RedisError, client_span};
use tracing::Instrument;

/// Counts attempts per key within a window.
#[derive(Debug, Clone)]
pub struct Throttle {
    redis: Redis,
    name: &'static str,
    limit: u64,
    window: Duration,
}

/// The outcome of [`Throttle::hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Too many attempts; retry after this many seconds.
    Limited {
        retry_after_secs: u64,
    },
}

impl Throttle {
    /// A throttle allowing `limit` attempts per `window` for each key; `name` separates
    /// throttles in Redis (`<prefix>throttle:<name>:<key>`).
    pub fn new(redis: Redis, name: &'static str, limit: u64, window: Duration) -> Self {
        Self {
            redis,
            name,
            limit,
            window,
        }
    }

    /// Records one attempt for `key` and says whether it is within the limit.
    pub async fn hit(&self, key: &str) -> Result<Verdict, RedisError> {
        let key = self.redis.key(format_args!("throttle:{}:{key}", self.name));
        let mut conn = self.redis.conn().await?;
        // NX keeps the window fixed from the first attempt: later hits do not extend it.
        let (count, ttl): (u64, i64) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.window.as_secs())
            .arg("NX")
            .ignore()
            .ttl(&key)
            .query_async(&mut conn)
            .instrument(client_span("MULTI"))
            .await?;
        Ok(if count > self.limit {
            Verdict::Limited {
                retry_after_secs: ttl.max(1) as u64,
            }
        } else {
            Verdict::Allowed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform_redis::RedisSettings;

    #[tokio::test]
    async fn the_attempt_after_the_limit_is_refused_with_a_retry_time() {
        let redis = Redis::connect(&RedisSettings {
            redis_key_prefix: format!("test:{}:", crate::random_token()),
            ..RedisSettings::default()
        })
        .unwrap();
        let throttle = Throttle::new(redis.clone(), "login", 2, Duration::from_secs(60));
        assert_eq!(throttle.hit("ada").await.unwrap(), Verdict::Allowed);
        assert_eq!(throttle.hit("ada").await.unwrap(), Verdict::Allowed);
        match throttle.hit("ada").await.unwrap() {
            Verdict::Limited { retry_after_secs } => assert!((1..=60).contains(&retry_after_secs)),
            other => panic!("expected a limit, got {other:?}"),
        }
        assert_eq!(throttle.hit("grace").await.unwrap(), Verdict::Allowed);
        let mut conn = redis.conn().await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(redis.key("throttle:login:ada"))
            .arg(redis.key("throttle:login:grace"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
