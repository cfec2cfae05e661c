//! The cache patterns against a real Redis, each test under its own key prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform_cache::counter::WriteBehindCounter;
use platform_cache::{Cache, CacheError, CacheSettings, ReadThrough};
use platform_config::Secret;
use platform_redis::{Redis, RedisSettings};
use platform_testing::TestRedis;

fn cache(redis: &TestRedis, settings: CacheSettings) -> Cache {
    Cache::new(Redis::connect(&redis.settings).unwrap(), &settings)
}

/// A loader that counts its calls and answers `value` after a short pause.
fn counting(
    calls: &Arc<AtomicUsize>,
    value: Option<String>,
) -> impl Future<Output = Result<Option<String>, String>> + use<> {
    let calls = calls.clone();
    async move {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(value)
    }
}

#[tokio::test]
async fn cache_aside_loads_once_then_hits() {
    let redis = TestRedis::new();
    let cache = cache(&redis, CacheSettings::default());
    let kind = cache.kind("post", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let v = cache
            .get_or_load(&kind, "1", || counting(&calls, Some("hello".into())))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("hello"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(kind.stats().misses.load(Ordering::Relaxed), 1);
    assert_eq!(kind.stats().hits.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn two_hundred_concurrent_misses_on_one_key_make_one_load() {
    let redis = TestRedis::new();
    let cache = cache(&redis, CacheSettings::default());
    let kind = cache.kind("post", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let readers = (0..200).map(|_| {
        let (cache, kind, calls) = (cache.clone(), kind.clone(), calls.clone());
        tokio::spawn(async move {
            cache
                .get_or_load(&kind, "hot", || counting(&calls, Some("v".into())))
                .await
                .unwrap()
        })
    });
    for reader in readers {
        assert_eq!(reader.await.unwrap().as_deref(), Some("v"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "single flight");
}

#[tokio::test]
async fn a_missing_id_is_remembered_briefly() {
    let redis = TestRedis::new();
    let cache = cache(&redis, CacheSettings::default());
    let kind = cache.kind("post", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let v = cache
            .get_or_load(&kind, "404", || counting(&calls, None))
            .await
            .unwrap();
        assert_eq!(v, None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn write_through_and_invalidation_keep_the_cache_current() {
    let redis = TestRedis::new();
    let cache = cache(&redis, CacheSettings::default());
    let kind = cache.kind("post", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    cache.put(&kind, "7", &"edited".to_owned()).await.unwrap();
    let v = cache
        .get_or_load(&kind, "7", || counting(&calls, Some("stale".into())))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("edited"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    cache.invalidate(&kind, &["7".to_owned()]).await.unwrap();
    let v = cache
        .get_or_load(&kind, "7", || counting(&calls, Some("fresh".into())))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("fresh"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let list = cache.indexed_kind("post_list", Duration::from_secs(60));
    for page in ["first", "after:10"] {
        cache.put(&list, page, &page.to_owned()).await.unwrap();
    }
    cache.invalidate_kind(&list).await.unwrap();
    let v = cache
        .get_or_load(&list, "first", || counting(&calls, Some("reloaded".into())))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("reloaded"));
    // Dropping the kind leaves the other kinds alone, and a kind without an index says so.
    let v = cache
        .get_or_load(&kind, "7", || counting(&calls, None))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("fresh"));
    assert!(matches!(
        cache.invalidate_kind(&kind).await,
        Err(CacheError::NotIndexed("post"))
    ));
}

#[tokio::test]
async fn dropping_a_kind_unlinks_its_entries_and_its_index_only() {
    let redis = TestRedis::new();
    let cache = cache(&redis, CacheSettings::default());
    let pages = cache.indexed_kind("post_list", Duration::from_secs(60));
    let posts = cache.kind("post", Duration::from_secs(60));
    for page in 0..1200 {
        cache.put(&pages, &page.to_string(), &page).await.unwrap();
    }
    cache.put(&posts, "1", &"kept").await.unwrap();
    let keys = |pattern: &'static str| {
        let redis = Redis::connect(&redis.settings).unwrap();
        async move {
            let mut c = redis.conn().await.unwrap();
            let found: Vec<String> = platform_redis::redis::cmd("KEYS")
                .arg(redis.key(pattern))
                .query_async(&mut c)
                .await
                .unwrap();
            found.len()
        }
    };
    assert_eq!(keys("cache:post_list:*").await, 1200);
    assert_eq!(keys("cache-index:post_list").await, 1);

    cache.invalidate_kind(&pages).await.unwrap();
    assert_eq!(
        keys("cache:post_list:*").await,
        0,
        "every page, past Lua's unpack limit"
    );
    assert_eq!(keys("cache-index:post_list").await, 0);
    assert_eq!(keys("cache:post:*").await, 1, "other kinds stay");
}

#[tokio::test]
async fn read_through_calls_the_registered_loader_on_a_miss_only() {
    let redis = TestRedis::new();
    let cache = cache(&redis, CacheSettings::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let users = ReadThrough::new(
        cache.clone(),
        cache.kind("user", Duration::from_secs(60)),
        move |id: i64| {
            let calls = counted.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(Some(format!("user-{id}")))
            }
        },
    );
    assert_eq!(users.get(3).await.unwrap().as_deref(), Some("user-3"));
    assert_eq!(users.get(3).await.unwrap().as_deref(), Some("user-3"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    users.invalidate(3).await.unwrap();
    users.get(3).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_the_cache_disabled_every_read_loads_and_nothing_is_stored() {
    let redis = TestRedis::new();
    let cache = cache(
        &redis,
        CacheSettings {
            cache_enabled: false,
            ..CacheSettings::default()
        },
    );
    let kind = cache.kind("post", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        cache
            .get_or_load(&kind, "1", || counting(&calls, Some("x".into())))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// A Redis that accepts connections and never answers: the cache must serve from the loader,
/// and after a few failures stop asking Redis at all.
#[tokio::test]
async fn a_hung_redis_is_a_miss_and_opens_the_circuit() {
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
        redis_timeout_ms: 50,
        ..RedisSettings::default()
    })
    .unwrap();
    let cache = Cache::new(
        redis,
        &CacheSettings {
            cache_circuit_failures: 2,
            cache_circuit_cooldown_ms: 60_000,
            ..CacheSettings::default()
        },
    );
    let kind = cache.kind("post", Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..5 {
        let v = cache
            .get_or_load(&kind, "1", || counting(&calls, Some("from db".into())))
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("from db"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(!cache.circuit_closed(), "the circuit opened");
    // Lookups and fills of the first calls failed; once open, Redis is not asked at all.
    assert!(kind.stats().errors.load(Ordering::Relaxed) >= 2);
    assert!(kind.stats().errors.load(Ordering::Relaxed) <= 4);
}

#[tokio::test]
async fn write_behind_counts_are_taken_whole_and_only_once() {
    let redis = TestRedis::new();
    let counter = WriteBehindCounter::new(Redis::connect(&redis.settings).unwrap(), "views");
    for field in ["1", "1", "2", "1"] {
        counter.add(field, 1);
    }
    assert_eq!(counter.unpushed(), 4);
    assert!(
        counter.take().await.unwrap().is_empty(),
        "counts stay in the process until pushed"
    );
    assert_eq!(counter.push().await.unwrap(), 2, "one entry per field");
    assert_eq!(counter.unpushed(), 0);
    // Another process's counts meet this one's in the same hash.
    let other = WriteBehindCounter::new(Redis::connect(&redis.settings).unwrap(), "views");
    other.add("2", 5);
    other.push().await.unwrap();
    let mut taken = counter.take().await.unwrap();
    taken.sort();
    assert_eq!(taken, vec![("1".to_owned(), 3), ("2".to_owned(), 6)]);
    assert!(counter.take().await.unwrap().is_empty());
}

/// Redis being away loses no counts: a push that finds no connection puts them back for the next.
#[tokio::test]
async fn a_failed_push_keeps_the_counts_for_the_next() {
    let unreachable = Redis::connect(&RedisSettings {
        redis_url: Secret::new("redis://127.0.0.1:1"),
        redis_timeout_ms: 200,
        ..RedisSettings::default()
    })
    .unwrap();
    let counter = WriteBehindCounter::new(unreachable, "views");
    counter.add("7", 2);
    assert!(counter.push().await.is_err());
    counter.add("7", 1);
    assert_eq!(counter.unpushed(), 3);
}
