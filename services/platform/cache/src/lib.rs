//! The scaleout application cache in Redis: cache-aside, read-through, write-through and
//! write-behind, with single flight and a circuit breaker.
//!
//! The cache buys database capacity; it is never the system of record. So every failure of
//! Redis degrades to a miss: the caller's loader reads the database, and the request is served.
//! Each Redis call is bounded by the pool's timeouts (`REDIS_TIMEOUT_MS`), and after a few
//! failures in a row the [`circuit`] opens and requests stop paying even that timeout until a
//! probe finds Redis back.
//!
//! # Layout
//! - [`Cache`]: the patterns. [`Cache::get_or_load`] is cache-aside with single flight and
//!   negative caching; [`Cache::put`] is write-through; [`Cache::invalidate`] removes entries.
//! - [`ReadThrough`]: a cache with its loader registered, so callers only ever ask the cache.
//! - [`counter::WriteBehindCounter`]: counts tallied in the process, pushed to Redis and
//!   flushed to the database in batches.
//! - [`Kind`]: a kind of entry with its TTL and its hit, miss and error counters.

pub mod circuit;
pub mod counter;
mod flight;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform_redis::{Redis, RedisError, client_span, redis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use circuit::Circuit;
use flight::Flights;

/// Cache settings shared by the services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSettings {
    /// `CACHE_ENABLED`: `false` turns the application cache off (every read goes to the
    /// database), so load tests can compare.
    pub cache_enabled: bool,
    /// `CACHE_TTL_POST_SECS`: how long a post stays cached.
    pub cache_ttl_post_secs: u64,
    /// `CACHE_TTL_POST_LIST_SECS`: how long a page of the post listing stays cached.
    pub cache_ttl_post_list_secs: u64,
    /// `CACHE_TTL_COMMENTS_SECS`: how long a post's comment list stays cached.
    pub cache_ttl_comments_secs: u64,
    /// `CACHE_TTL_USER_SECS`: how long a user profile stays cached.
    pub cache_ttl_user_secs: u64,
    /// `CACHE_NEGATIVE_TTL_SECS`: how long "no such id" is remembered.
    pub cache_negative_ttl_secs: u64,
    /// `CACHE_CIRCUIT_FAILURES`: consecutive Redis failures that open the circuit.
    pub cache_circuit_failures: u32,
    /// `CACHE_CIRCUIT_COOLDOWN_MS`: how long an open circuit skips Redis before probing it.
    pub cache_circuit_cooldown_ms: u64,
    /// `CACHE_FLUSH_INTERVAL_MS`: how often write-behind counts (post views) move from each
    /// process to Redis and on to Postgres; at most this much counting is lost if a process is
    /// killed or Redis dies.
    pub cache_flush_interval_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            cache_enabled: true,
            cache_ttl_post_secs: 300,
            cache_ttl_post_list_secs: 5,
            cache_ttl_comments_secs: 60,
            cache_ttl_user_secs: 600,
            cache_negative_ttl_secs: 10,
            cache_circuit_failures: 3,
            cache_circuit_cooldown_ms: 2_000,
            cache_flush_interval_ms: 1_000,
        }
    }
}

/// Why a cache operation failed. Callers of [`Cache::get_or_load`] never see these (a failed
/// cache is a miss); [`Cache::put`] and [`Cache::invalidate`] return them so a write path can
/// log what it could not keep fresh.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("the cache circuit is open")]
    CircuitOpen,
    #[error("a value could not be encoded")]
    Encode(#[from] serde_json::Error),
    /// `invalidate_kind` on a kind made with [`Cache::kind`], whose keys are not tracked.
    #[error("cache kind `{0}` keeps no index of its keys; make it with `Cache::indexed_kind`")]
    NotIndexed(&'static str),
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(RedisError::Command(e))
    }
}

/// Counters for one kind of entry, read by `/metrics`.
#[derive(Debug, Default)]
pub struct KindStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    /// Sum of the time spent in Redis lookups, in microseconds, and how many there were.
    pub lookup_micros: AtomicU64,
    pub lookups: AtomicU64,
}

/// A kind of cache entry: its name (part of the key), its TTL and its counters.
#[derive(Debug, Clone)]
pub struct Kind {
    name: &'static str,
    ttl: Duration,
    /// Whether the kind's keys are tracked in a set, so the whole kind can be dropped at once.
    indexed: bool,
    stats: Arc<KindStats>,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn stats(&self) -> &KindStats {
        &self.stats
    }
}

/// The application cache. Cheap to clone; clones share counters, flights and the circuit.
#[derive(Clone)]
pub struct Cache {
    redis: Redis,
    enabled: bool,
    negative_ttl: Duration,
    circuit: Arc<Circuit>,
    flights: Arc<Flights>,
    kinds: Arc<Mutex<HashMap<&'static str, Kind>>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// A stored entry: a value, or the remembered absence of one (negative caching).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Entry<T> {
    Present { v: T },
    Absent {},
}

impl Cache {
    pub fn new(redis: Redis, settings: &CacheSettings) -> Self {
        Self {
            redis,
            enabled: settings.cache_enabled,
            negative_ttl: Duration::from_secs(settings.cache_negative_ttl_secs),
            circuit: Arc::new(Circuit::new(
                settings.cache_circuit_failures,
                Duration::from_millis(settings.cache_circuit_cooldown_ms),
            )),
            flights: Arc::new(Flights::default()),
            kinds: Arc::default(),
        }
    }

    /// The Redis behind the cache, for patterns that keep their own keys (write-behind).
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Whether the cache is on (`CACHE_ENABLED`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The kind named `name` with time-to-live `ttl`, registered for the metrics. Asking twice
    /// for one name returns the same counters.
    pub fn kind(&self, name: &'static str, ttl: Duration) -> Kind {
        self.register(name, ttl, false)
    }

    /// A kind whose entries can all be dropped at once with [`Cache::invalidate_kind`], such
    /// as the pages of a listing that one write changes. Each fill also records the key in a
    /// set of the kind's keys (same round trip), so dropping them costs one round trip and work
    /// in proportion to the kind's entries, never a scan of the keyspace.
    pub fn indexed_kind(&self, name: &'static str, ttl: Duration) -> Kind {
        self.register(name, ttl, true)
    }

    fn register(&self, name: &'static str, ttl: Duration, indexed: bool) -> Kind {
        self.kinds
            .lock()
            .expect("the kinds registry is never poisoned")
            .entry(name)
            .or_insert_with(|| Kind {
                name,
                ttl,
                indexed,
                stats: Arc::default(),
            })
            .clone()
    }

    /// Every registered kind, for the metrics.
    pub fn kinds(&self) -> Vec<Kind> {
        let kinds = self.kinds.lock().expect("never poisoned");
        let mut all: Vec<_> = kinds.values().cloned().collect();
        all.sort_by_key(|k| k.name);
        all
    }

    /// Whether the circuit currently lets calls through to Redis.
    pub fn circuit_closed(&self) -> bool {
        self.circuit.is_closed()
    }

    fn key(&self, kind: &Kind, key: &str) -> String {
        self.redis.key(format_args!("cache:{}:{key}", kind.name))
    }

    /// The set of an indexed kind's keys.
    fn index_key(&self, kind: &Kind) -> String {
        self.redis.key(format_args!("cache-index:{}", kind.name))
    }

    /// The TTL with ±10 % jitter, so entries written together do not expire together and
    /// stampede the database at once.
    fn jittered(ttl: Duration) -> Duration {
        let mut byte = [0u8; 2];
        getrandom::fill(&mut byte).expect("the OS random source is available");
        let spread = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX); // 0..=1
        ttl.mul_f64(0.9 + 0.2 * spread).max(Duration::from_secs(1))
    }

    /// Runs a Redis operation through the circuit, counting failures against `kind`.
    async fn guarded<R, F, Fut>(&self, kind: &Kind, op: F) -> Result<R, CacheError>
    where
        F: FnOnce(Redis) -> Fut,
        Fut: Future<Output = Result<R, CacheError>>,
    {
        if !self.circuit.allow() {
            return Err(CacheError::CircuitOpen);
        }
        match op(self.redis.clone()).await {
            Ok(r) => {
                self.circuit.record_success();
                Ok(r)
            }
            Err(e) => {
                kind.stats.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, CacheError::Redis(_)) && self.circuit.record_failure() {
                    tracing::warn!(message = "Cache circuit opened; reads go to the database.", error = %e);
                }
                Err(e)
            }
        }
    }

    async fn lookup<T: DeserializeOwned>(
        &self,
        kind: &Kind,
        key: &str,
    ) -> Result<Option<Option<T>>, CacheError> {
        let full = self.key(kind, key);
        let started = Instant::now();
        let raw: Option<String> = self
            .guarded(kind, |redis| async move {
                let mut conn = redis.conn().await?;
                Ok(redis::cmd("GET")
                    .arg(&full)
                    .query_async(&mut conn)
                    .instrument(client_span("GET"))
                    .await?)
            })
            .await?;
        kind.stats
            .lookup_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        kind.stats.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(match raw.as_deref().map(serde_json::from_str::<Entry<T>>) {
            Some(Ok(Entry::Present { v })) => Some(Some(v)),
            Some(Ok(Entry::Absent {})) => Some(None),
            // An entry we cannot read (an older shape) is a miss; the fill overwrites it.
            Some(Err(_)) | None => None,
        })
    }

    async fn store<T: Serialize>(
        &self,
        kind: &Kind,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), CacheError> {
        let (json, ttl) = match value {
            Some(v) => (
                serde_json::to_string(&Entry::Present { v })?,
                Self::jittered(kind.ttl),
            ),
            None => (
                serde_json::to_string(&Entry::<()>::Absent {})?,
                self.negative_ttl,
            ),
        };
        let full = self.key(kind, key);
        // The index outlives every entry it names (jitter adds at most 10 %), and expires with
        // the last of them when nothing drops the kind first.
        let index = kind
            .indexed
            .then(|| (self.index_key(kind), kind.ttl.mul_f64(1.1)));
        self.guarded(kind, |redis| async move {
            let mut conn = redis.conn().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&full)
                .arg(json)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore();
            // The entry and its place in the index land together or not at all.
            if let Some((index, index_ttl)) = &index {
                pipe.atomic();
                pipe.cmd("SADD").arg(index).arg(&full).ignore();
                pipe.cmd("PEXPIRE")
                    .arg(index)
                    .arg(index_ttl.as_millis() as u64)
                    .ignore();
            }
            let span = client_span(if index.is_some() { "MULTI" } else { "SET" });
            pipe.query_async::<()>(&mut conn).instrument(span).await?;
            Ok(())
        })
        .await
    }

    /// Cache-aside: the entry for `key` if cached, else `load()`'s result, which is then cached
    /// (`None` too, for a short time, so lookups of missing ids do not all reach the database).
    ///
    /// Concurrent misses on one key in this process share one `load()` (single flight). Redis
    /// failures count as misses.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        kind: &Kind,
        key: &str,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        if !self.enabled {
            return load().await;
        }
        if let Ok(Some(entry)) = self.lookup::<T>(kind, key).await {
            kind.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(entry);
        }
        kind.stats.misses.fetch_add(1, Ordering::Relaxed);
        let flight_key = self.key(kind, key);
        let json = self
            .flights
            .run(&flight_key, || async {
                let value = load().await?;
                // A fill that fails leaves the next reader a miss; nothing is lost.
                let _ = self.store(kind, key, value.as_ref()).await;
                Ok::<_, E>(serde_json::to_string(&value).expect("values serialize"))
            })
            .await?;
        Ok(serde_json::from_str(&json).expect("a value serialized here deserializes"))
    }

    /// Write-through: stores `value` under `key`; call after the database write committed.
    pub async fn put<T: Serialize>(
        &self,
        kind: &Kind,
        key: &str,
        value: &T,
    ) -> Result<(), CacheError> {
        if !self.enabled {
            return Ok(());
        }
        self.store(kind, key, Some(value)).await
    }

    /// Removes the entries for `keys`; call after a write that changes them.
    pub async fn invalidate(&self, kind: &Kind, keys: &[String]) -> Result<(), CacheError> {
        if !self.enabled || keys.is_empty() {
            return Ok(());
        }
        let full: Vec<String> = keys.iter().map(|k| self.key(kind, k)).collect();
        self.guarded(kind, |redis| async move {
            let mut conn = redis.conn().await?;
            redis::cmd("DEL")
                .arg(&full)
                .query_async::<()>(&mut conn)
                .instrument(client_span("DEL"))
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes every entry of an indexed `kind` (see [`Cache::indexed_kind`]) in one round
    /// trip; used when a write changes more entries than it can name, such as every page of a
    /// listing.
    pub async fn invalidate_kind(&self, kind: &Kind) -> Result<(), CacheError> {
        if !self.enabled {
            return Ok(());
        }
        if !kind.indexed {
            return Err(CacheError::NotIndexed(kind.name));
        }
        let index = self.index_key(kind);
        self.guarded(kind, |redis| async move {
            let mut conn = redis.conn().await?;
            redis::cmd("EVAL")
                .arg(DROP_INDEXED)
                .arg(1)
                .arg(&index)
                .query_async::<u64>(&mut conn)
                .instrument(client_span("EVAL"))
                .await?;
            Ok(())
        })
        .await
    }
}

/// Unlinks every key named in the set `KEYS[1]`, in batches (Lua's `unpack` has a limit), then
/// the set itself; atomic, so a fill racing it lands wholly before or wholly after.
const DROP_INDEXED: &str = r"
    local keys = redis.call('SMEMBERS', KEYS[1])
    for i = 1, #keys, 500 do
        redis.call('UNLINK', unpack(keys, i, math.min(i + 499, #keys)))
    end
    redis.call('DEL', KEYS[1])
    return #keys
";

type BoxLoad<V, E> = std::pin::Pin<Box<dyn Future<Output = Result<Option<V>, E>> + Send>>;

/// Read-through: a cache that owns its loader. Callers ask only the cache; on a miss the
/// registered loader reads the database.
pub struct ReadThrough<K, V, E> {
    cache: Cache,
    kind: Kind,
    loader: Arc<dyn Fn(K) -> BoxLoad<V, E> + Send + Sync>,
}

impl<K, V, E> Clone for ReadThrough<K, V, E> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            kind: self.kind.clone(),
            loader: self.loader.clone(),
        }
    }
}

impl<K, V, E> ReadThrough<K, V, E>
where
    K: std::fmt::Display + Clone,
    V: Serialize + DeserializeOwned,
{
    /// A read-through cache of `kind` whose misses call `loader`.
    pub fn new<F, Fut>(cache: Cache, kind: Kind, loader: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
    {
        Self {
            cache,
            kind,
            loader: Arc::new(move |k| Box::pin(loader(k))),
        }
    }

    /// The value for `key`, from the cache or, on a miss, from the loader.
    pub async fn get(&self, key: K) -> Result<Option<V>, E> {
        let name = key.to_string();
        let loader = self.loader.clone();
        self.cache
            .get_or_load(&self.kind, &name, move || loader(key))
            .await
    }

    /// Drops the cached value for `key`, so the next read loads it afresh.
    pub async fn invalidate(&self, key: K) -> Result<(), CacheError> {
        self.cache.invalidate(&self.kind, &[key.to_string()]).await
    }
}
