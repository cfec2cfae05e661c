//! Write-behind counters: increments land in a Redis hash at once and reach the database in
//! batches.
//!
//! Counting a post view with an `UPDATE` per read would turn the hottest read path into a write
//! path. Instead each view is an `HINCRBY`, and a flush task takes the whole hash atomically
//! (read and delete in one Lua script) every interval and applies it in one statement.
//! What can be lost: the counts of at most one interval if Redis dies (it keeps nothing on
//! disk), or those taken by a flush whose database write then fails. For view counts that is an
//! acceptable price; for money it would not be.

use platform_redis::{Redis, RedisError, client_span, redis};
use tracing::Instrument;

/// A set of counters, one per field, under one Redis hash.
#[derive(Debug, Clone)]
pub struct WriteBehindCounter {
    redis: Redis,
    key: String,
}

/// Atomically returns and deletes the hash, so increments arriving during a flush go to the
/// next one instead of being lost or counted twice.
const TAKE: &str = r"
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return all
";

impl WriteBehindCounter {
    /// Counters stored under `<prefix>counter:<name>`.
    pub fn new(redis: Redis, name: &str) -> Self {
        let key = redis.key(format_args!("counter:{name}"));
        Self { redis, key }
    }

    /// Adds `by` to `field`'s pending count.
    pub async fn incr(&self, field: &str, by: i64) -> Result<(), RedisError> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("HINCRBY")
            .arg(&self.key)
            .arg(field)
            .arg(by)
            .query_async::<()>(&mut conn)
            .instrument(client_span("HINCRBY"))
            .await?;
        Ok(())
    }

    /// Takes every pending count, leaving none behind.
    pub async fn take(&self) -> Result<Vec<(String, i64)>, RedisError> {
        let mut conn = self.redis.conn().await?;
        let flat: Vec<String> = redis::cmd("EVAL")
            .arg(TAKE)
            .arg(1)
            .arg(&self.key)
            .query_async(&mut conn)
            .instrument(client_span("EVAL"))
            .await?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| Some((pair[0].clone(), pair[1].parse().ok()?)))
            .collect())
    }
}
