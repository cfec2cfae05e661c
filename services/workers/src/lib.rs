//! The scaleout comment workers: a naive Bayes spam check and a VADER sentiment score, each
//! consuming its own queue idempotently.
//!
//! Both workers read `comment.submitted` events from their own quorum queue
//! (`comments.spam`, `comments.sentiment`) and write their verdict to the comment together
//! with an inbox row `(consumer, message_id)` in one statement, which carries the effects of
//! every message the worker holds at once; the ack follows the commit.
//! A redelivered or duplicated message finds its inbox row and changes nothing. They hold no
//! state between messages, so any number of each can run, and either may finish first.
//!
//! # Layout
//! - [`Settings`], [`SpamSettings`], [`SentimentSettings`]: `BIND`, database, broker,
//!   `CONSUME_MODE`, `PREFETCH`, `SPAM_THRESHOLD`.
//! - [`SpamHandler`], [`SentimentHandler`]: one message's work; the effects of the messages
//!   a worker holds at once are written together by a [`Batcher`].
//! - [`classifier`], the naive Bayes model and its training and evaluation helpers.
//! - [`sentiment`], VADER.
//! - [`run_worker`]: what each binary's `main` runs; [`health`]: `/healthz`, `/readyz`.

pub mod classifier;
pub mod health;
pub mod sentiment;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use domain::PostId;
use domain::comments::{self, Applied, CommentId, SentimentScore, SpamVerdict};
use domain::store::Store;
use platform_cache::CacheSettings;
use platform_db::DbSettings;
use platform_db::batch::{BatchError, Batcher};
use platform_http::HttpSettings;
use platform_messaging::{
    AmqpSettings, CommentSubmitted, ConsumeMode, Consumer, Envelope, HandlerError, IncomingMessage,
    MessageHandler, Topology,
};
use platform_redis::{Redis, RedisSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::classifier::SpamModel;
use crate::sentiment::Sentiment;

/// The inbox name of the spam worker.
pub const SPAM_CONSUMER: &str = "spam-worker";
/// The inbox name of the sentiment worker.
pub const SENTIMENT_CONSUMER: &str = "sentiment-worker";

/// How many messages a handler decided each way, for `/metrics`. A redelivered message that
/// finds its inbox row is not counted again.
#[derive(Debug)]
pub struct Verdicts {
    counts: Vec<(&'static str, AtomicU64)>,
}

impl Verdicts {
    /// Counters for each of `verdicts`, all at zero.
    pub fn new(verdicts: &[&'static str]) -> Arc<Self> {
        Arc::new(Self {
            counts: verdicts.iter().map(|v| (*v, AtomicU64::new(0))).collect(),
        })
    }

    fn record(&self, verdict: &str) {
        if let Some((_, count)) = self.counts.iter().find(|(v, _)| *v == verdict) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each verdict with its count so far.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts
            .iter()
            .map(|(v, c)| (*v, c.load(Ordering::Relaxed)))
    }
}

/// A handler that reaches a verdict on each message and counts them.
pub trait Judge: MessageHandler {
    fn verdicts(&self) -> Arc<Verdicts>;
}

/// What both workers read; each field is the environment variable of its name in upper case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub http: HttpSettings,
    #[serde(flatten)]
    pub db: DbSettings,
    #[serde(flatten)]
    pub amqp: AmqpSettings,
    /// `REDIS_URL` and friends: the application cache, whose comment lists the workers
    /// invalidate.
    #[serde(flatten)]
    pub redis: RedisSettings,
    /// `CACHE_ENABLED`, `CACHE_TTL_*`...: as in the web and mobile services.
    #[serde(flatten)]
    pub app_cache: CacheSettings,
    /// `CONSUME_MODE`: `push` (`basic.consume`, the default) or `pull` (`basic.get`).
    pub consume_mode: ConsumeMode,
    /// `PREFETCH`: unacknowledged messages the broker hands this worker at once; also how many
    /// it handles concurrently, and so the largest batch of effects one statement writes. 128,
    /// not fewer: a message stays in hand through its batch's commit and its cache drop, so the
    /// prefetch bounds throughput (at 32, moderation fell behind 500 comments/s on two cores).
    pub prefetch: u16,
    /// `PULL_INTERVAL_MS`: in pull mode, the pause after finding the queue empty.
    pub pull_interval_ms: u64,
    /// `RUN_MIGRATIONS`: create and migrate the database at start (safe with many replicas).
    pub run_migrations: bool,
}

impl Default for Settings {
    /// The spam worker's defaults; the sentiment worker's differ only in `BIND`.
    fn default() -> Self {
        Self::with_bind("127.0.0.1:9301")
    }
}

impl Settings {
    fn with_bind(bind: &str) -> Self {
        Self {
            http: HttpSettings {
                bind: bind.to_owned(),
                http_workers: 1,
                ..HttpSettings::default()
            },
            db: DbSettings::default(),
            amqp: AmqpSettings::default(),
            redis: RedisSettings::default(),
            app_cache: CacheSettings::default(),
            consume_mode: ConsumeMode::Push,
            prefetch: 128,
            pull_interval_ms: 50,
            run_migrations: true,
        }
    }
}

/// The spam worker's settings: [`Settings`] on `127.0.0.1:9301`, and its threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SpamSettings {
    #[serde(flatten)]
    pub common: Settings,
    /// `SPAM_THRESHOLD`: a comment whose spam probability is at least this is rejected.
    pub spam_threshold: f64,
}

impl Default for SpamSettings {
    fn default() -> Self {
        Self {
            common: Settings::with_bind("127.0.0.1:9301"),
            spam_threshold: DEFAULT_SPAM_THRESHOLD,
        }
    }
}

/// The rejection threshold `spam-eval` measures by default.
pub const DEFAULT_SPAM_THRESHOLD: f64 = 0.9;

/// The sentiment worker's settings: [`Settings`] on `127.0.0.1:9302`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SentimentSettings {
    #[serde(flatten)]
    pub common: Settings,
}

impl Default for SentimentSettings {
    fn default() -> Self {
        Self {
            common: Settings::with_bind("127.0.0.1:9302"),
        }
    }
}

/// Reads a `comment.submitted` event; a body that is not one can never succeed, so it is parked.
fn comment_event(message: &IncomingMessage) -> Result<Envelope<CommentSubmitted>, HandlerError> {
    serde_json::from_slice(&message.body)
        .map_err(|e| HandlerError::Park(format!("not a comment.submitted event: {e}")))
}

/// A database failure may pass (a restart, a full pool): retry after the delay.
fn retry(e: BatchError<sqlx::Error>) -> HandlerError {
    HandlerError::Retry(format!("writing the effect failed: {e}"))
}

/// The most effects one statement writes. A batch holds at most the messages the worker has in
/// hand (`PREFETCH`), so this only bounds a misconfigured prefetch.
const MAX_BATCH: usize = 256;

type EffectWriter<I> = Batcher<I, Applied, sqlx::Error>;

/// Drops the cached comment lists of posts whose comments changed, and the listing, for every
/// message that asks at about the same time in one go: under load a batch of effects mostly
/// touches the same few posts, and each message dropping them itself was two round trips to
/// Redis per message. A handler asks after its own commit and waits for a drop that started
/// after it asked, so no reader refills the cache from before the commit.
type CacheInvalidator = Batcher<PostId, (), std::convert::Infallible>;

fn cache_invalidator(store: &Store) -> CacheInvalidator {
    let store = store.clone();
    Batcher::spawn(MAX_BATCH, move |posts: Vec<PostId>| {
        let store = store.clone();
        async move {
            store.comments_changed_on(&posts).await;
            Ok(vec![(); posts.len()])
        }
    })
}

/// Waits until the cache no longer holds what `post`'s changed comments make stale. A failure
/// is logged by the store and the entries expire with their TTL; it does not undo the effect.
async fn comments_changed(invalidator: &CacheInvalidator, post: PostId) {
    // Infallible, and the invalidator outlives the handler that owns it.
    let _ = invalidator.submit(post).await;
}

/// Classifies a comment and publishes or rejects it.
pub struct SpamHandler {
    writer: EffectWriter<SpamVerdict>,
    invalidator: CacheInvalidator,
    model: Arc<SpamModel>,
    threshold: f64,
    verdicts: Arc<Verdicts>,
}

impl SpamHandler {
    /// Writes through `store`'s primary and invalidates its cache. Starts its effect writer, so
    /// it must be called inside the runtime.
    pub fn new(store: Store, model: Arc<SpamModel>, threshold: f64) -> Self {
        let pool = store.database().primary().clone();
        let writer = Batcher::spawn(MAX_BATCH, move |batch: Vec<SpamVerdict>| {
            let pool = pool.clone();
            async move { comments::apply_spam_verdicts(&pool, SPAM_CONSUMER, &batch).await }
        });
        Self {
            invalidator: cache_invalidator(&store),
            writer,
            model,
            threshold,
            verdicts: Verdicts::new(&["ham", "spam"]),
        }
    }
}

impl Judge for SpamHandler {
    fn verdicts(&self) -> Arc<Verdicts> {
        self.verdicts.clone()
    }
}

impl MessageHandler for SpamHandler {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandlerError> {
        let event = comment_event(message)?;
        let message_id = message.message_id.unwrap_or(event.event_id);
        let score = self.model.score(&event.data.body).0;
        let is_spam = score >= self.threshold;
        let applied = self
            .writer
            .submit(SpamVerdict {
                message_id,
                comment: CommentId(event.data.comment_id),
                is_spam,
                score,
            })
            .await
            .map_err(retry)?;
        tracing::info!(
            message = "Spam verdict.",
            comment_id = event.data.comment_id,
            spam = is_spam,
            score,
            duplicate = applied == Applied::Duplicate,
            traceparent = event.trace_context.traceparent.as_deref(),
        );
        if applied == Applied::Done {
            self.verdicts.record(if is_spam { "spam" } else { "ham" });
        }
        // A published comment changes its post's visible comments: drop the cached list, after
        // the commit, so a reader who refills it sees the comment.
        if applied == Applied::Done && !is_spam {
            comments_changed(&self.invalidator, PostId(event.data.post_id)).await;
        }
        Ok(())
    }
}

/// Scores a comment's sentiment.
pub struct SentimentHandler {
    writer: EffectWriter<SentimentScore>,
    invalidator: CacheInvalidator,
    sentiment: Arc<Sentiment>,
    verdicts: Arc<Verdicts>,
}

impl SentimentHandler {
    /// Writes through `store`'s primary and invalidates its cache. Starts its effect writer, so
    /// it must be called inside the runtime.
    pub fn new(store: Store, sentiment: Arc<Sentiment>) -> Self {
        let pool = store.database().primary().clone();
        let writer = Batcher::spawn(MAX_BATCH, move |batch: Vec<SentimentScore>| {
            let pool = pool.clone();
            async move { comments::apply_sentiments(&pool, SENTIMENT_CONSUMER, &batch).await }
        });
        Self {
            invalidator: cache_invalidator(&store),
            writer,
            sentiment,
            verdicts: Verdicts::new(&["positive", "neutral", "negative"]),
        }
    }
}

impl Judge for SentimentHandler {
    fn verdicts(&self) -> Arc<Verdicts> {
        self.verdicts.clone()
    }
}

impl MessageHandler for SentimentHandler {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandlerError> {
        let event = comment_event(message)?;
        let message_id = message.message_id.unwrap_or(event.event_id);
        let (score, label) = self.sentiment.score(&event.data.body);
        let applied = self
            .writer
            .submit(SentimentScore {
                message_id,
                comment: CommentId(event.data.comment_id),
                score,
                label,
            })
            .await
            .map_err(retry)?;
        tracing::info!(
            message = "Sentiment scored.",
            comment_id = event.data.comment_id,
            score,
            label = label.as_str(),
            duplicate = applied == Applied::Duplicate,
            traceparent = event.trace_context.traceparent.as_deref(),
        );
        // The badge shows on a published comment's list whichever worker finishes first.
        if applied == Applied::Done {
            self.verdicts.record(label.as_str());
            comments_changed(&self.invalidator, PostId(event.data.post_id)).await;
        }
        Ok(())
    }
}

/// A consumer of subscription `subscription` (`spam` or `sentiment`) with `handler`, declaring
/// the topology on every connection.
pub fn consumer<H: MessageHandler>(
    settings: &Settings,
    subscription: &str,
    name: &str,
    handler: H,
) -> anyhow::Result<Consumer<H>> {
    let topology = Topology::comments(&settings.amqp);
    let queues = topology
        .subscriber(subscription)
        .with_context(|| format!("no subscription named {subscription}"))?
        .clone();
    Ok(Consumer::new(
        settings.amqp.clone(),
        queues,
        name,
        settings.consume_mode,
        settings.prefetch,
        handler,
    )
    .with_pull_interval(Duration::from_millis(settings.pull_interval_ms))
    .with_topology(topology))
}

/// Prepares the database, then consumes until SIGTERM or Ctrl-C while serving `/healthz` and
/// `/readyz`; on the signal it stops consuming, finishes and acks what it holds, and exits.
pub async fn run_worker<H: Judge>(
    settings: Settings,
    subscription: &str,
    name: &str,
    make_handler: impl FnOnce(Store) -> H,
) -> anyhow::Result<()> {
    if settings.run_migrations {
        domain::prepare_database(&settings.db).await?;
    }
    let redis = Redis::connect(&settings.redis)?;
    let store = Store::connect(&settings.db, redis, &settings.app_cache)?;
    let pool = store.database().primary().clone();
    let consumer = consumer(&settings, subscription, name, make_handler(store))?;
    let metrics = Arc::new(metrics(name, &consumer));
    let (port, server) = health::serve(&settings.http, pool, consumer.connected_flag(), metrics)?;
    tracing::info!(message = "Listening.", port);
    let server_handle = server.handle();
    tokio::spawn(server);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        health::shutdown_signal().await;
        let _ = stop.send(true);
    });
    consumer.run(stopped).await;
    server_handle.stop(true).await;
    Ok(())
}

/// A worker's `/metrics`, read at scrape time: messages settled from its queue by outcome
/// (`messages_dead_lettered_total` counts those sent to the parking queue), the handler's
/// verdicts, and the broker connection.
pub fn metrics<H: Judge>(name: &str, consumer: &Consumer<H>) -> platform_metrics::Metrics {
    let (stats, connected) = (consumer.stats(), consumer.connected_flag());
    let (worker, queue) = (name.to_owned(), consumer.queues().work.clone());
    let verdicts = consumer.handler().verdicts();
    let mut metrics = platform_metrics::Metrics::new();
    metrics.register_collector(platform_metrics::collector(move |s| {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let labels = [("worker", worker.as_str()), ("queue", queue.as_str())];
        let outcomes = [
            (
                "messages_acked",
                "Messages handled and acknowledged",
                load(&stats.acked),
            ),
            (
                "messages_retried",
                "Messages sent to the retry queue after a failure that may pass",
                load(&stats.retried),
            ),
            (
                "messages_dead_lettered",
                "Messages parked: unreadable, or out of attempts",
                load(&stats.parked),
            ),
            (
                "messages_ack_lost",
                "Messages handled whose ack was lost with the channel; redelivered, then deduplicated",
                load(&stats.ack_lost),
            ),
            (
                "messages_requeued",
                "Messages put back on the queue because their retry or parking copy failed",
                load(&stats.requeued),
            ),
        ];
        s.counter(
            "messages_consumed",
            "Messages taken from the queue and settled",
            &labels,
            outcomes.iter().map(|(_, _, n)| n).sum(),
        );
        for (name, help, count) in outcomes {
            s.counter(name, help, &labels, count);
        }
        for (verdict, count) in verdicts.counts() {
            s.counter(
                "classifier_verdicts",
                "Comments judged, by verdict",
                &[labels[0], ("verdict", verdict)],
                count,
            );
        }
        s.counter(
            "worker_ack_frames",
            "basic.ack frames sent; one settles every message up to its own",
            &labels,
            load(&stats.ack_frames),
        );
        s.counter(
            "worker_broker_connections",
            "Broker connections made",
            &labels[..1],
            load(&stats.connections),
        );
        let up = if connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        s.gauge(
            "worker_broker_connected",
            "1 while connected to the broker",
            &labels[..1],
            up,
        );
    }));
    metrics
}
