//! The relay against real Postgres and RabbitMQ.

use std::time::Duration;

use domain::comments;
use domain::{CommentBody, PostBody, PostTitle, Username, posts, users};
use platform_config::Secret;
use platform_messaging::test_support::TestTopology;
use platform_messaging::topology::SPAM;
use platform_messaging::{CommentSubmitted, Envelope};
use platform_testing::{TestDatabase, closed_port, eventually};
use relay::{Relay, RelayError, Settings};
use tokio::sync::watch;
use uuid::Uuid;

async fn submit_comments(db: &TestDatabase, n: usize) {
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let post = posts::create(
        &db.pool,
        author,
        &PostTitle::parse("t").unwrap(),
        &PostBody::parse("b").unwrap(),
    )
    .await
    .unwrap();
    for i in 0..n {
        let body = CommentBody::parse(&format!("comment {i}")).unwrap();
        comments::submit(&db.pool, post, author, &body)
            .await
            .unwrap();
    }
}

fn settings(db: &TestDatabase, t: &TestTopology) -> Settings {
    Settings {
        db: db.settings.clone(),
        amqp: t.settings.clone(),
        relay_batch_size: 7,
        run_migrations: false,
        ..Settings::default()
    }
}

async fn unpublished(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backlog_written_while_the_broker_was_unreachable_is_published_when_it_returns() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let t = TestTopology::create().await;
    submit_comments(&db, 20).await;

    let mut away = settings(&db, &t);
    away.amqp.amqp_url = Secret::new(format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        closed_port()
    ));
    let mut relay = Relay::new(db.pool.clone(), away);
    for _ in 0..3 {
        assert!(matches!(
            relay.relay_batch().await,
            Err(RelayError::Broker(_))
        ));
    }
    assert_eq!(unpublished(&db).await, 20, "nothing is lost or marked");
    relay::measure_backlog(&db.pool, &relay.stats())
        .await
        .unwrap();
    let waiting =
        platform_metrics::scrape::Scrape::parse(&relay::metrics(&relay).render()).unwrap();
    assert_eq!(waiting.get("outbox_backlog", &[]), 20.0);
    assert!(waiting.get("outbox_oldest_age_seconds", &[]) > 0.0);
    assert_eq!(waiting.get("relay_broker_connected", &[]), 0.0);

    let mut relay = Relay::new(db.pool.clone(), settings(&db, &t));
    let mut published = 0;
    while published < 20 {
        let report = relay.relay_batch().await.unwrap();
        assert!(report.claimed > 0, "rows remain to claim");
        assert_eq!(report.failed, 0);
        published += report.published;
    }
    assert_eq!(published, 20);
    assert_eq!(unpublished(&db).await, 0);
    assert_eq!(relay.relay_batch().await.unwrap().claimed, 0);
    relay::measure_backlog(&db.pool, &relay.stats())
        .await
        .unwrap();
    let drained =
        platform_metrics::scrape::Scrape::parse(&relay::metrics(&relay).render()).unwrap();
    assert!(
        drained.convention_breaks().is_empty(),
        "{:?}",
        drained.convention_breaks()
    );
    assert_eq!(drained.get("relay_events_published_total", &[]), 20.0);
    assert_eq!(drained.get("relay_broker_connected", &[]), 1.0);
    assert_eq!(drained.get("outbox_backlog", &[]), 0.0);
    assert_eq!(drained.get("outbox_oldest_age_seconds", &[]), 0.0);

    // Every subscriber got every event once, with the outbox's event id as message_id.
    let event_ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for set in &t.topology.subscribers {
        let got = t.drain(&set.work).await;
        let mut ids: Vec<Uuid> = got
            .iter()
            .map(|d| {
                let envelope: Envelope<CommentSubmitted> = serde_json::from_slice(&d.data).unwrap();
                let id = d.properties.message_id().as_ref().unwrap();
                assert_eq!(id.as_str(), envelope.event_id.to_string());
                assert_eq!(envelope.event_type, "comment.submitted");
                envelope.event_id
            })
            .collect();
        ids.sort();
        let mut expected = event_ids.clone();
        expected.sort();
        assert_eq!(ids, expected, "{}", set.work);
    }
}

#[tokio::test]
async fn the_relay_wakes_on_a_notification_rather_than_polling() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let t = TestTopology::create().await;
    let mut s = settings(&db, &t);
    // A poll interval far beyond the test's deadline: only the writer's wake-up can wake it
    // in time.
    s.relay_poll_interval_ms = 600_000;
    let relay = Relay::new(db.pool.clone(), s);
    let ready = relay.connected_flag();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(relay.run(stopped));
    assert!(
        eventually(Duration::from_secs(10), || {
            let ready = ready.clone();
            async move { ready.load(std::sync::atomic::Ordering::Relaxed) }
        })
        .await
    );
    // Let the relay reach its wait before the comment is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    submit_comments(&db, 3).await;
    let waker = domain::outbox::OutboxWaker::new();
    let _sender = waker.spawn(db.pool.clone());
    waker.wake();
    assert!(
        eventually(Duration::from_secs(10), || async {
            unpublished(&db).await == 0
        })
        .await,
        "the notification woke the relay"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the relay stops when told")
        .unwrap();
    let spam = t.topology.subscriber(SPAM).unwrap();
    assert_eq!(t.drain(&spam.work).await.len(), 3);
}

#[tokio::test]
async fn pruning_deletes_only_rows_published_before_the_retention_among_the_oldest() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let t = TestTopology::create().await;
    submit_comments(&db, 6).await;
    // Rows 1 and 2 were published two hours ago, 3 a minute ago, 4 failed long ago and is still
    // unpublished, 5 two hours ago behind it; 6 is waiting.
    sqlx::query(
        "UPDATE outbox SET published_at = now() - CASE id \
             WHEN 1 THEN interval '2 hours' WHEN 2 THEN interval '2 hours' \
             WHEN 3 THEN interval '1 minute' WHEN 5 THEN interval '2 hours' END \
         WHERE id IN (1, 2, 3, 5)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let relay = Relay::new(db.pool.clone(), settings(&db, &t));
    assert_eq!(relay.prune().await.unwrap(), 3);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, [3, 4, 6]);
    assert_eq!(relay.prune().await.unwrap(), 0);
}

#[tokio::test]
async fn pruning_reads_no_further_than_the_oldest_rows_of_its_window() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let t = TestTopology::create().await;
    // A window's worth of rows published a minute ago, then one published two hours ago: the
    // old one lies past the window, so this prune leaves it for a later one.
    sqlx::query(
        "INSERT INTO outbox (event_type, payload, published_at) \
         SELECT 'comment.submitted', '{}', now() - interval '1 minute' \
         FROM generate_series(1, $1)",
    )
    .bind(relay::PRUNE_WINDOW)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_type, payload, published_at) \
         VALUES ('comment.submitted', '{}', now() - interval '2 hours')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let relay = Relay::new(db.pool.clone(), settings(&db, &t));
    assert_eq!(relay.prune().await.unwrap(), 0);
    // Once the front rows are gone, the old one is inside the window.
    sqlx::query("DELETE FROM outbox WHERE published_at > now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(relay.prune().await.unwrap(), 1);
}
