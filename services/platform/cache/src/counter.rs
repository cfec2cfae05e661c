//! Write-behind counters: increments are tallied in the process, pushed to a Redis hash in
//! batches, and reach the database in batches.
//!
//! Counting a post view with an `UPDATE` per read would turn the hottest read path into a write
//! path, and even an `HINCRBY` per read is a round trip to Redis on every cached read: on the
//! development machine it was about a third of the cost of a cache hit. So a view is an
//! increment of an in-process tally ([`WriteBehindCounter::add`], no I/O); [`push`] moves the
//! whole tally into the Redis hash in one pipelined round trip, where every process's counts
//! meet; and [`take`] removes the hash atomically (read and delete in one Lua script) for the
//! caller to apply in one statement. The services push and take every
//! `CACHE_FLUSH_INTERVAL_MS`, and once more on shutdown.
//!
//! What can be lost, all of it bounded by one interval: the tally of a process killed without
//! shutting down; the counts in Redis if Redis dies (it keeps nothing on disk); those of a push
//! whose reply never came (it may have been applied, so it is not repeated); those taken by a
//! flush whose database write then fails. A push that finds no connection keeps its counts in
//! the tally for the next one, so Redis being away loses nothing by itself. For view counts that
//! is an acceptable price; for money it would not be.
//!
//! [`push`]: WriteBehindCounter::push
//! [`take`]: WriteBehindCounter::take

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use platform_redis::{Redis, RedisError, client_span, redis};
use tracing::Instrument;

/// A set of counters, one per field, under one Redis hash. Cheap to clone; clones share the
/// tally.
#[derive(Debug, Clone)]
pub struct WriteBehindCounter {
    redis: Redis,
    key: String,
    /// Increments not yet pushed to Redis, by field.
    tally: Arc<Mutex<HashMap<String, i64>>>,
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
        Self {
            redis,
            key,
            tally: Arc::default(),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.tally.lock().expect("the tally is never poisoned")
    }

    /// Adds `by` to `field` in this process's tally; it reaches Redis with the next
    /// [`push`](Self::push). Never waits on anything but a short lock.
    pub fn add(&self, field: &str, by: i64) {
        let mut tally = self.tally();
        match tally.get_mut(field) {
            Some(count) => *count += by,
            None => {
                tally.insert(field.to_owned(), by);
            }
        }
    }

    /// What this process has counted and not yet pushed, summed over the fields.
    pub fn unpushed(&self) -> i64 {
        self.tally().values().sum()
    }

    /// Moves the tally into the Redis hash in one round trip; returns how many fields it
    /// carried. When no connection could be had, nothing was sent and the counts go back into
    /// the tally for the next push. A command that failed after it was sent may still have
    /// been applied (a reply lost to a timeout), so its counts are dropped rather than risk
    /// counting them twice.
    pub async fn push(&self) -> Result<usize, RedisError> {
        let batch = std::mem::take(&mut *self.tally());
        if batch.is_empty() {
            return Ok(0);
        }
        let mut conn = match self.redis.conn().await {
            Ok(conn) => conn,
            Err(e) => {
                let mut tally = self.tally();
                for (field, by) in batch {
                    *tally.entry(field).or_default() += by;
                }
                return Err(e);
            }
        };
        let mut pipe = redis::pipe();
        // All or nothing, so a connection lost midway cannot leave half the batch applied.
        pipe.atomic();
        for (field, by) in &batch {
            pipe.cmd("HINCRBY")
                .arg(&self.key)
                .arg(field)
                .arg(*by)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .instrument(client_span("MULTI"))
            .await?;
        Ok(batch.len())
    }

    /// Takes every count pushed to Redis (by any process), leaving none behind.
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
