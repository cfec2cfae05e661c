//! The comment pipeline end to end against real Postgres and RabbitMQ: submit, relay, the two
//! workers, duplicates, poison messages, a killed worker, a lost connection.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use domain::comments::{self, CommentId};
use domain::store::Store;
use domain::{CommentBody, PostBody, PostId, PostTitle, UserId, Username, posts, users};
use platform_cache::CacheSettings;
use platform_messaging::lapin::BasicProperties;
use platform_messaging::lapin::options::BasicPublishOptions;
use platform_messaging::test_support::TestTopology;
use platform_messaging::topology::{SENTIMENT, SPAM};
use platform_messaging::{ConsumeMode, Consumer, Outcome};
use platform_metrics::scrape::Scrape;
use platform_redis::Redis;
use platform_testing::{TestDatabase, TestRedis, closed_port, eventually};
use relay::Relay;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use workers::classifier::SpamModel;
use workers::sentiment::Sentiment;
use workers::{
    DEFAULT_SPAM_THRESHOLD, SENTIMENT_CONSUMER, SPAM_CONSUMER, SentimentHandler, SpamHandler,
};

const SPAM_TEXT: &str = "CLICK HERE to claim your FREE money!!! Limited time offer, act now. \
                         Earn $5000 a week from home, no credit check.";
const HAM_TEXT: &str = "I love this post, thanks for writing it up so clearly!";

struct Fixture {
    db: TestDatabase,
    redis: TestRedis,
    t: TestTopology,
    author: UserId,
    post: PostId,
}

impl Fixture {
    async fn new() -> Self {
        let db = TestDatabase::create(&domain::MIGRATOR).await;
        let t = TestTopology::create().await;
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
        Self {
            db,
            redis: TestRedis::new(),
            t,
            author,
            post,
        }
    }

    /// The data tier over this test's database and Redis prefix, with the cache on.
    fn store(&self) -> Store {
        Store::connect(
            &self.db.settings,
            Redis::connect(&self.redis.settings).unwrap(),
            &CacheSettings::default(),
        )
        .unwrap()
    }

    async fn submit(&self, body: &str) -> CommentId {
        comments::submit(
            &self.db.pool,
            self.post,
            self.author,
            &CommentBody::parse(body).unwrap(),
        )
        .await
        .unwrap()
    }

    /// Publishes the whole outbox.
    async fn relay_all(&self) {
        let mut relay = Relay::new(
            self.db.pool.clone(),
            relay::Settings {
                db: self.db.settings.clone(),
                amqp: self.t.settings.clone(),
                run_migrations: false,
                ..relay::Settings::default()
            },
        );
        while relay.relay_batch().await.unwrap().claimed > 0 {}
    }

    fn spam_consumer(&self, prefetch: u16) -> Consumer<SpamHandler> {
        self.spam_consumer_with(self.t.settings.clone(), prefetch)
    }

    fn spam_consumer_with(
        &self,
        amqp: platform_messaging::AmqpSettings,
        prefetch: u16,
    ) -> Consumer<SpamHandler> {
        Consumer::new(
            amqp,
            self.t.topology.subscriber(SPAM).unwrap().clone(),
            SPAM_CONSUMER,
            ConsumeMode::Push,
            prefetch,
            SpamHandler::new(
                self.store(),
                Arc::new(SpamModel::embedded()),
                DEFAULT_SPAM_THRESHOLD,
            ),
        )
    }

    fn sentiment_consumer(&self, mode: ConsumeMode) -> Consumer<SentimentHandler> {
        Consumer::new(
            self.t.settings.clone(),
            self.t.topology.subscriber(SENTIMENT).unwrap().clone(),
            SENTIMENT_CONSUMER,
            mode,
            8,
            SentimentHandler::new(self.store(), Arc::new(Sentiment::default())),
        )
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

/// Steps `consumer` until `n` messages were settled (or 20 s pass); returns the outcomes.
async fn handle<H: platform_messaging::MessageHandler>(
    consumer: &mut Consumer<H>,
    n: usize,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outcomes.len() < n && tokio::time::Instant::now() < deadline {
        if let Some(outcome) = consumer
            .try_handle_one(Duration::from_millis(200))
            .await
            .unwrap()
        {
            outcomes.push(outcome);
        }
    }
    outcomes
}

#[tokio::test]
async fn a_comment_ends_published_with_a_sentiment_and_obvious_spam_ends_rejected() {
    let f = Fixture::new().await;
    let ham = f.submit(HAM_TEXT).await;
    let spam = f.submit(SPAM_TEXT).await;
    f.relay_all().await;

    // A reader fills the cache with the post's (still empty) comment list.
    let store = f.store();
    assert!(
        store
            .visible_comments(f.post, None)
            .await
            .unwrap()
            .is_empty()
    );

    // Sentiment first this time, in pull mode: either worker may finish first.
    let mut sentiment = f.sentiment_consumer(ConsumeMode::Pull);
    assert_eq!(
        handle(&mut sentiment, 2).await,
        [Outcome::Acked, Outcome::Acked]
    );
    let pending = comments::status(&f.db.pool, ham).await.unwrap().unwrap();
    assert_eq!(pending.status, "pending");
    assert_eq!(pending.sentiment_label.as_deref(), Some("positive"));

    let mut spam_worker = f.spam_consumer(4);
    assert_eq!(
        handle(&mut spam_worker, 2).await,
        [Outcome::Acked, Outcome::Acked]
    );
    let ham = comments::status(&f.db.pool, ham).await.unwrap().unwrap();
    assert_eq!(ham.status, "published");
    assert!(ham.sentiment_score.unwrap() > 0.05);
    let spam = comments::status(&f.db.pool, spam).await.unwrap().unwrap();
    assert_eq!(spam.status, "rejected");

    // Publishing invalidated the cached list: the reader sees the comment at once.
    let visible = store.visible_comments(f.post, None).await.unwrap();
    assert_eq!(visible.len(), 1);
    assert_eq!(visible[0].body, HAM_TEXT);
    assert_eq!(visible[0].sentiment_label.as_deref(), Some("positive"));
}

#[tokio::test]
async fn the_same_message_delivered_twice_changes_nothing() {
    let f = Fixture::new().await;
    let id = f.submit(HAM_TEXT).await;
    f.relay_all().await;
    // Publish the very same message (same body, same message_id) a second time, as a relay
    // that lost a confirm would.
    let spam = f.t.topology.subscriber(SPAM).unwrap().clone();
    let original = f.t.drain(&spam.work).await.remove(0);
    let connection = platform_messaging::connect(&f.t.settings, "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for _ in 0..2 {
        channel
            .basic_publish(
                "".into(),
                spam.work.as_str().into(),
                BasicPublishOptions::default(),
                &original.data,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(original.properties.message_id().clone().unwrap()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = connection.close(200, "OK".into()).await;

    let mut worker = f.spam_consumer(4);
    assert_eq!(handle(&mut worker, 1).await, [Outcome::Acked]);
    let first: (String, f64) =
        sqlx::query_as("SELECT status, spam_score FROM comments WHERE id = $1")
            .bind(id)
            .fetch_one(&f.db.pool)
            .await
            .unwrap();
    // Make a second application visible if it happened: reset what it would rewrite.
    sqlx::query("UPDATE comments SET spam_score = -1 WHERE id = $1")
        .bind(id)
        .execute(&f.db.pool)
        .await
        .unwrap();
    assert_eq!(handle(&mut worker, 1).await, [Outcome::Acked]);
    assert_eq!(first.0, "published");
    assert_eq!(
        f.count("SELECT count(*) FROM inbox WHERE consumer = 'spam-worker'")
            .await,
        1
    );
    let score: f64 = sqlx::query_scalar("SELECT spam_score FROM comments WHERE id = $1")
        .bind(id)
        .fetch_one(&f.db.pool)
        .await
        .unwrap();
    assert_eq!(score, -1.0, "the duplicate did not apply its effect again");
    assert_eq!(f.t.ready(&spam.work).await, 0);
}

#[tokio::test]
async fn a_poison_message_is_parked_while_the_good_ones_flow() {
    let f = Fixture::new().await;
    for i in 0..10 {
        f.submit(&format!("{HAM_TEXT} ({i})")).await;
    }
    let spam = f.t.topology.subscriber(SPAM).unwrap().clone();
    // A message that is not an event, in the middle of the good ones.
    let connection = platform_messaging::connect(&f.t.settings, "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            spam.work.as_str().into(),
            BasicPublishOptions::default(),
            b"{\"not\": \"an event\"}",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(uuid::Uuid::new_v4().to_string().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "OK".into()).await;
    f.relay_all().await;

    let mut worker = f.spam_consumer(4);
    let outcomes = handle(&mut worker, 11).await;
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Acked).count(),
        10
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Parked { .. }))
            .count(),
        1
    );
    assert_eq!(
        f.count("SELECT count(*) FROM comments WHERE status = 'published'")
            .await,
        10
    );
    let parked = f.t.drain(&spam.parking).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].data, b"{\"not\": \"an event\"}");

    // `/metrics` counts the dead letter against its queue, beside the verdicts.
    let metrics = Scrape::parse(&workers::metrics(SPAM_CONSUMER, &worker).render()).unwrap();
    let queue = [("worker", SPAM_CONSUMER), ("queue", spam.work.as_str())];
    assert_eq!(metrics.get("messages_dead_lettered_total", &queue), 1.0);
    assert_eq!(metrics.get("messages_acked_total", &queue), 10.0);
    assert_eq!(metrics.get("messages_consumed_total", &queue), 11.0);
    let verdict = |v| metrics.get("classifier_verdicts_total", &[queue[0], ("verdict", v)]);
    assert_eq!((verdict("ham"), verdict("spam")), (10.0, 0.0));
}

fn spawn_spam_worker(f: &Fixture, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spam-worker"))
        .env("DATABASE_URL", f.db.settings.database_url.expose())
        .env("AMQP_URL", f.t.settings.amqp_url.expose())
        .env("AMQP_EXCHANGE", &f.t.settings.amqp_exchange)
        .env(
            "AMQP_DELIVERY_LIMIT",
            f.t.settings.amqp_delivery_limit.to_string(),
        )
        .env(
            "AMQP_RETRY_DELAY_MS",
            f.t.settings.amqp_retry_delay_ms.to_string(),
        )
        .env("BIND", format!("127.0.0.1:{port}"))
        .env("RUN_MIGRATIONS", "false")
        .env("PREFETCH", "100")
        .env("REDIS_URL", f.redis.settings.redis_url.expose())
        .env("REDIS_KEY_PREFIX", &f.redis.settings.redis_key_prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the spam-worker binary starts")
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let f = Fixture::new().await;
    let total: i64 = 1_000;
    let mut tx = f.db.pool.begin().await.unwrap();
    for i in 0..total {
        let body = format!("{HAM_TEXT} #{i}");
        sqlx::query(
            "WITH c AS (INSERT INTO comments (post_id, author_id, body) VALUES ($1, $2, $3) \
                        RETURNING id, post_id, author_id, body, created_at) \
             INSERT INTO outbox (event_type, payload) \
             SELECT 'comment.submitted', jsonb_build_object('comment_id', c.id, \
                    'post_id', c.post_id, 'author_id', c.author_id, 'author', 'ada', \
                    'body', c.body, 'submitted_at', c.created_at) FROM c",
        )
        .bind(f.post)
        .bind(f.author)
        .bind(body)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    f.relay_all().await;

    let done = "SELECT count(*) FROM comments WHERE status <> 'pending'";
    let mut worker = spawn_spam_worker(&f, 0);
    let started = eventually(Duration::from_secs(30), || async {
        f.count(done).await >= 50
    })
    .await;
    // SIGKILL: no graceful stop, up to PREFETCH deliveries held unacked.
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(
        started,
        "the worker processed messages before it was killed"
    );
    let at_kill = f.count(done).await;

    let port = closed_port();
    let mut worker = spawn_spam_worker(&f, port);
    let finished = eventually(Duration::from_secs(60), || async {
        f.count(done).await == total
    })
    .await;
    // Its health and metrics, on BIND.
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .ok()?;
            Some((response.status().as_u16(), response.text().await.ok()?))
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(get("/readyz").await, Some((200, _)))
        })
        .await
    );
    assert_eq!(get("/healthz").await.unwrap().0, 200);
    let (status, metrics) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let metrics = Scrape::parse(&metrics).unwrap();
    assert!(metrics.has(
        "messages_acked_total",
        &[
            ("worker", SPAM_CONSUMER),
            (
                "queue",
                f.t.topology.subscriber(SPAM).unwrap().work.as_str()
            )
        ]
    ));
    assert_eq!(
        metrics.get("worker_broker_connected", &[("worker", SPAM_CONSUMER)]),
        1.0
    );
    // SIGTERM: a graceful stop, which must exit cleanly.
    let terminated = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = worker.wait().unwrap();
    assert!(
        finished,
        "every comment got a verdict (killed at {at_kill} of {total})"
    );
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    assert_eq!(
        f.count("SELECT count(*) FROM inbox WHERE consumer = 'spam-worker'")
            .await,
        total,
        "one inbox row per message: nothing lost, nothing applied twice"
    );
    let spam = f.t.topology.subscriber(SPAM).unwrap();
    assert_eq!(f.t.ready(&spam.work).await, 0);
    assert_eq!(f.t.ready(&spam.parking).await, 0);
}

/// A TCP proxy in front of the broker whose connections can be cut, to stand for a network
/// failure or a broker restart.
struct Proxy {
    port: u16,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cuts) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cuts = cuts.clone();
                // Only cuts after this connection was made apply to it.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    /// Closes every connection made so far.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn a_worker_resumes_by_itself_after_its_connection_is_cut() {
    let f = Fixture::new().await;
    // The proxy stands between the worker and the broker of AMQP_URL.
    let mut amqp = f.t.settings.clone();
    let url = amqp.amqp_url.expose().to_owned();
    let authority = url.split_once("://").unwrap().1.split('/').next().unwrap();
    let broker = authority.rsplit('@').next().unwrap().to_owned();
    let upstream = if broker.contains(':') {
        broker.clone()
    } else {
        format!("{broker}:5672")
    };
    let proxy = Proxy::start(upstream).await;
    let url = url.replacen(&broker, &format!("127.0.0.1:{}", proxy.port), 1);
    amqp.amqp_url = platform_config::Secret::new(url);
    let worker = f.spam_consumer_with(amqp, 8);
    let connected = worker.connected_flag();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));

    f.submit(HAM_TEXT).await;
    f.relay_all().await;
    let published = "SELECT count(*) FROM comments WHERE status = 'published'";
    assert!(
        eventually(Duration::from_secs(10), || async {
            f.count(published).await == 1
        })
        .await
    );

    proxy.cut();
    f.submit(HAM_TEXT).await;
    f.relay_all().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            f.count(published).await == 2
        })
        .await,
        "the worker reconnected and took the new message"
    );
    assert!(connected.load(std::sync::atomic::Ordering::Relaxed));
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops when told")
        .unwrap();
}
