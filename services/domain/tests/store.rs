//! The data tier against real Postgres (the primary and the local streaming replica, started by
//! `infra/scripts/replica.sh up`) and Redis.

use std::time::{Duration, Instant};

use domain::comments::{SubmitCommentError, TraceContext};
use domain::store::Store;
use domain::{CommentBody, PostBody, PostId, PostTitle, UserId, Username, posts, users};
use platform_cache::CacheSettings;
use platform_config::Secret;
use platform_db::{DbSettings, ReadSource};
use platform_redis::{Redis, RedisSettings};
use platform_testing::{TcpProxy, TestDatabase, TestRedis, closed_port, eventually};

fn title(s: &str) -> PostTitle {
    PostTitle::parse(s).unwrap()
}

fn body(s: &str) -> PostBody {
    PostBody::parse(s).unwrap()
}

async fn author_and_post(db: &TestDatabase) -> (UserId, PostId) {
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let post = posts::create(&db.pool, author, &title("First"), &body("Body"))
        .await
        .unwrap();
    (author, post)
}

fn db_settings(db: &TestDatabase, replicas: Vec<String>) -> DbSettings {
    DbSettings {
        database_replica_urls: replicas,
        db_replica_check_interval_ms: 50,
        ..db.settings.clone()
    }
}

fn store(db: DbSettings, redis: &RedisSettings) -> Store {
    Store::connect(
        &db,
        Redis::connect(redis).unwrap(),
        &CacheSettings::default(),
    )
    .unwrap()
}

fn stat(store: &Store, kind: &str, pick: fn(&platform_cache::KindStats) -> u64) -> u64 {
    store
        .cache()
        .kinds()
        .iter()
        .find(|k| k.name() == kind)
        .map_or(0, |k| pick(k.stats()))
}

fn hits(s: &platform_cache::KindStats) -> u64 {
    s.hits.load(std::sync::atomic::Ordering::Relaxed)
}

fn misses(s: &platform_cache::KindStats) -> u64 {
    s.misses.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn each_read_pattern_misses_once_then_hits() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (author, post) = author_and_post(&db).await;
    let store = store(db_settings(&db, vec![]), &redis.settings);

    for _ in 0..2 {
        assert_eq!(
            store.post(post, None).await.unwrap().unwrap().title,
            "First"
        );
        assert_eq!(
            store.list_posts(None, 20, None).await.unwrap().items.len(),
            1
        );
        assert!(store.visible_comments(post, None).await.unwrap().is_empty());
        assert_eq!(
            store.profile(author).await.unwrap().unwrap().username,
            "ada"
        );
        assert!(store.post(PostId(999_999), None).await.unwrap().is_none());
    }
    for kind in ["post", "post_list", "comment_list", "user"] {
        assert!(stat(&store, kind, misses) >= 1, "{kind} missed first");
        assert!(stat(&store, kind, hits) >= 1, "{kind} hit second");
    }
    // The missing id was remembered too: one miss, one hit.
    assert_eq!(stat(&store, "post", misses), 2);
}

#[tokio::test]
async fn an_edit_is_in_the_cache_before_the_write_returns() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (author, post) = author_and_post(&db).await;
    let store = store(db_settings(&db, vec![]), &redis.settings);
    store.post(post, None).await.unwrap();

    let (edited, _) = store
        .update_post(post, author, None, &title("Edited"), &body("New body"))
        .await
        .unwrap();
    let misses_before = stat(&store, "post", misses);
    let read = store.post(post, None).await.unwrap().unwrap();
    assert_eq!(read.title, "Edited");
    assert_eq!(read.version, edited.version);
    assert_eq!(
        stat(&store, "post", misses),
        misses_before,
        "served from the cache"
    );
}

#[tokio::test]
async fn views_are_counted_write_behind_and_reach_postgres_when_flushed() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (_, post) = author_and_post(&db).await;
    let store = store(db_settings(&db, vec![]), &redis.settings);
    for _ in 0..3 {
        store.record_view(post);
    }
    let before: i64 = sqlx::query_scalar("SELECT views FROM posts WHERE id = $1")
        .bind(post)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(before, 0, "not written through");
    assert_eq!(store.flush_views().await.unwrap(), 1);
    let after: i64 = sqlx::query_scalar("SELECT views FROM posts WHERE id = $1")
        .bind(post)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(after, 3);
    assert_eq!(
        store.flush_views().await.unwrap(),
        0,
        "counts are taken once"
    );
}

#[tokio::test]
async fn with_redis_unreachable_reads_come_from_postgres_within_the_bound() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (_, post) = author_and_post(&db).await;
    let redis = RedisSettings {
        redis_url: Secret::new(format!("redis://127.0.0.1:{}", closed_port())),
        ..RedisSettings::default()
    };
    let store = store(db_settings(&db, vec![]), &redis);
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(
            store.post(post, None).await.unwrap().unwrap().title,
            "First"
        );
        // Generous: a refused connection costs well under a millisecond; this only proves no
        // read waits on a dead Redis for long.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(!store.cache().circuit_closed(), "the circuit opened");
}

#[tokio::test]
async fn two_thousand_write_then_read_pairs_through_a_replica_never_read_stale() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (author, post) = author_and_post(&db).await;
    let store = store(db_settings(&db, db.replica_urls()), &redis.settings);
    let _background = store.spawn_background(&CacheSettings::default());
    assert!(
        eventually(Duration::from_secs(20), || async {
            store.database().replica_status().iter().all(|r| r.healthy)
        })
        .await,
        "the replica did not join the pool; is it running? (infra/scripts/replica.sh up)"
    );

    let mut stale = 0;
    for i in 0..2_000 {
        let text = format!("Edit {i}");
        let (edited, written_at) = store
            .update_post(post, author, None, &title(&text), &body("b"))
            .await
            .unwrap();
        let read = store.post(post, Some(written_at)).await.unwrap().unwrap();
        if read.version < edited.version {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads after a write");
    // Once the replica has replayed everything, a reader's reads go to it.
    let (_, written_at) = store
        .update_post(post, author, None, &title("Last"), &body("b"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.database().reader(Some(written_at)).1 == ReadSource::Replica(0)
        })
        .await
    );
}

#[tokio::test]
async fn a_stopped_replica_leaves_the_pool_and_reads_go_on() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (_, post) = author_and_post(&db).await;
    let replica = url::Url::parse(&db.replica_urls()[0]).unwrap();
    let target = format!(
        "{}:{}",
        replica.host_str().unwrap(),
        replica.port().unwrap_or(5432)
    );
    let proxy = TcpProxy::start(target.parse().unwrap()).await;
    let mut through_proxy = replica.clone();
    through_proxy.set_port(Some(proxy.addr().port())).unwrap();
    let settings = DbSettings {
        db_acquire_timeout_ms: 1_000,
        ..db_settings(&db, vec![through_proxy.to_string()])
    };
    let store = store(settings, &redis.settings);
    let _background = store.spawn_background(&CacheSettings::default());
    assert!(
        eventually(Duration::from_secs(20), || async {
            store.database().replica_status()[0].healthy
        })
        .await
    );

    proxy.stop();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !store.database().replica_status()[0].healthy
        })
        .await,
        "the stopped replica left the pool"
    );
    let (pool, source) = store.database().reader(None);
    assert_eq!(source, ReadSource::Primary);
    let title: String = sqlx::query_scalar("SELECT title FROM posts WHERE id = $1")
        .bind(post)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(title, "First");
}

#[tokio::test]
async fn with_the_primary_down_writes_fail_fast_and_reads_go_on() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (author, post) = author_and_post(&db).await;
    let primary = url::Url::parse(db.settings.database_url.expose()).unwrap();
    let target = format!(
        "{}:{}",
        primary.host_str().unwrap(),
        primary.port().unwrap_or(5432)
    );
    let proxy = TcpProxy::start(target.parse().unwrap()).await;
    let mut through_proxy = primary.clone();
    through_proxy.set_port(Some(proxy.addr().port())).unwrap();
    let settings = DbSettings {
        database_url: Secret::new(through_proxy.to_string()),
        db_acquire_timeout_ms: 1_000,
        ..db_settings(&db, db.replica_urls())
    };
    let store = store(settings, &redis.settings);
    let _background = store.spawn_background(&CacheSettings::default());
    assert!(
        eventually(Duration::from_secs(20), || async {
            store.database().replica_status()[0].healthy
        })
        .await
    );
    store.post(post, None).await.unwrap();

    proxy.stop();
    let started = Instant::now();
    let write = store
        .update_post(post, author, None, &title("Lost"), &body("b"))
        .await;
    assert!(write.is_err(), "a write without a primary fails");
    assert!(started.elapsed() < Duration::from_secs(5), "and fails fast");

    assert_eq!(
        store.post(post, None).await.unwrap().unwrap().title,
        "First",
        "cached"
    );
    let page = store.list_posts(None, 20, None).await.unwrap();
    assert_eq!(page.items.len(), 1, "read from the replica");
}

/// Comments submitted at the same time share statements and commits (they come back with the
/// same WAL position), and each caller still gets the id of its own comment.
#[tokio::test]
async fn concurrent_comments_share_a_commit_and_each_gets_its_own_id() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (author, post) = author_and_post(&db).await;
    let store = store(db_settings(&db, vec![]), &redis.settings);
    let submissions: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let text = format!("comment {i}");
                let body = CommentBody::parse(&text).unwrap();
                let submitted = store
                    .submit_comment(post, author, &body, &TraceContext::default())
                    .await;
                (text, submitted.unwrap())
            })
        })
        .collect();
    let mut positions = Vec::new();
    for submission in submissions {
        let (text, (id, position)) = submission.await.unwrap();
        let stored: String = sqlx::query_scalar("SELECT body FROM comments WHERE id = $1")
            .bind(id.0)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(stored, text);
        positions.push(position);
    }
    positions.sort_unstable();
    positions.dedup();
    assert!(
        positions.len() < 50,
        "every comment had a commit of its own ({} positions)",
        positions.len()
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 50);
}

/// A comment on a missing post, submitted among good ones, fails alone.
#[tokio::test]
async fn a_comment_on_a_missing_post_fails_alone_among_concurrent_ones() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let (author, post) = author_and_post(&db).await;
    let store = store(db_settings(&db, vec![]), &redis.settings);
    let submissions: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            let target = if i == 5 { PostId(424242) } else { post };
            tokio::spawn(async move {
                let body = CommentBody::parse("hi").unwrap();
                store
                    .submit_comment(target, author, &body, &TraceContext::default())
                    .await
            })
        })
        .collect();
    for (i, submission) in submissions.into_iter().enumerate() {
        let result = submission.await.unwrap();
        if i == 5 {
            assert!(matches!(result, Err(SubmitCommentError::PostNotFound)));
        } else {
            assert!(result.is_ok(), "comment {i}: {result:?}");
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM comments")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 9);
}
