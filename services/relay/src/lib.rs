//! The scaleout outbox relay: publishes committed outbox rows to RabbitMQ with publisher
//! confirms, then marks them sent.
//!
//! The web and mobile services never talk to the broker: they commit a comment and its outbox
//! row together and answer 202. This process drains the outbox. A row is marked published only
//! after the broker confirmed the message, so a crash, a broker outage or a lost confirm can
//! only cause a row to be published again (a duplicate, which consumers drop by `message_id`),
//! never to be skipped.
//!
//! The relay is its own process so it scales and fails apart from the HTTP services. It claims
//! rows with `FOR UPDATE SKIP LOCKED`, so several relays can run for availability: each takes
//! rows the others have not locked, and a relay that dies releases its rows when its
//! transaction aborts.
//!
//! # Layout
//! - [`Settings`]: `BIND`, the database, the broker and the `RELAY_*` knobs.
//! - [`Relay`]: [`Relay::relay_batch`] is one step (claim, publish, mark); [`Relay::run`] loops
//!   over it, woken by `LISTEN outbox`.
//! - [`health`]: `/healthz` and `/readyz` on `BIND`.

pub mod health;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use platform_db::DbSettings;
use platform_http::HttpSettings;
use platform_messaging::consumer::error_chain;
use platform_messaging::lapin::Connection;
use platform_messaging::{AmqpSettings, MessagingError, OutgoingMessage, Publisher, Topology};
use platform_telemetry::propagation;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use uuid::Uuid;

/// The relay's settings; each field is the environment variable of its name in upper case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub http: HttpSettings,
    #[serde(flatten)]
    pub db: DbSettings,
    #[serde(flatten)]
    pub amqp: AmqpSettings,
    /// `RELAY_BATCH_SIZE`: outbox rows claimed, published and marked per transaction.
    pub relay_batch_size: i64,
    /// `RELAY_POLL_INTERVAL_MS`: with no notification, look at the outbox this often anyway
    /// (a notification can be missed while the listening connection reconnects); the backlog
    /// shown at `/metrics` is measured at the same interval.
    pub relay_poll_interval_ms: u64,
    /// `RELAY_RETENTION_SECS`: published rows are deleted after this long.
    pub relay_retention_secs: u64,
    /// `RUN_MIGRATIONS`: create and migrate the database at start (safe with many replicas).
    pub run_migrations: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: HttpSettings {
                bind: "127.0.0.1:9303".to_owned(),
                http_workers: 1,
                ..HttpSettings::default()
            },
            db: DbSettings {
                db_max_connections: 4,
                ..DbSettings::default()
            },
            amqp: AmqpSettings::default(),
            relay_batch_size: 200,
            relay_poll_interval_ms: 1_000,
            relay_retention_secs: 3_600,
            run_migrations: true,
        }
    }
}

/// Why a batch did not go through.
/// How many of the oldest outbox rows one prune looks at.
pub const PRUNE_WINDOW: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the broker is unavailable")]
    Broker(#[from] MessagingError),
    #[error("the database is unavailable")]
    Database(#[from] sqlx::Error),
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed from the outbox.
    pub claimed: usize,
    /// Rows the broker confirmed, now marked published.
    pub published: usize,
    /// Rows left for a later batch, with their error recorded.
    pub failed: usize,
}

struct BrokerSession {
    connection: Connection,
    publisher: Publisher,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: Uuid,
    event_type: String,
    body: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// What the relay has done since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Events the broker confirmed.
    pub published: AtomicU64,
    /// Events left in the outbox after a failed publish.
    pub failed: AtomicU64,
    /// Batches that found the broker or the database unavailable.
    pub unavailable: AtomicU64,
    /// Broker connections made.
    pub connections: AtomicU64,
    /// Outbox rows waiting to be published, when last measured.
    pub backlog: AtomicU64,
    /// How long the oldest of them has waited, in milliseconds, when last measured.
    pub oldest_age_ms: AtomicU64,
}

/// Measures the outbox backlog into `stats`: the rows still to publish and the age of the
/// oldest. It walks the partial index of unpublished rows, so it costs little while the relay
/// keeps up.
pub async fn measure_backlog(pool: &PgPool, stats: &RelayStats) -> Result<(), sqlx::Error> {
    let (rows, oldest_age_ms): (i64, f64) = sqlx::query_as(
        "SELECT count(*), \
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)) * 1000, 0)::float8 \
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    stats.backlog.store(rows.max(0) as u64, Ordering::Relaxed);
    stats
        .oldest_age_ms
        .store(oldest_age_ms.max(0.0) as u64, Ordering::Relaxed);
    Ok(())
}

/// Drains the outbox into the exchange.
pub struct Relay {
    pool: PgPool,
    settings: Settings,
    topology: Topology,
    broker: Option<BrokerSession>,
    connected: Arc<AtomicBool>,
    stats: Arc<RelayStats>,
}

impl Relay {
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        Self {
            pool,
            topology: Topology::comments(&settings.amqp),
            settings,
            broker: None,
            connected: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(RelayStats::default()),
        }
    }

    /// The relay's counters; `/metrics` reads them.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// True while the relay holds a live broker connection; `/readyz` reads it.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Connects, declares the topology (so a relay never publishes into an exchange with no
    /// queues, which would drop every message) and opens a confirm channel.
    async fn broker(&mut self) -> Result<&Publisher, MessagingError> {
        let alive = self.broker.as_ref().is_some_and(|b| {
            b.connection.status().connected() && b.publisher.channel().status().connected()
        });
        if !alive {
            self.broker = None;
            self.connected.store(false, Ordering::Relaxed);
            let connection = platform_messaging::connect(&self.settings.amqp, "relay").await?;
            self.topology
                .declare(&connection, &self.settings.amqp)
                .await?;
            let publisher = Publisher::open(&connection, &self.settings.amqp).await?;
            tracing::info!(message = "Connected to the broker.");
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            self.connected.store(true, Ordering::Relaxed);
            self.broker = Some(BrokerSession {
                connection,
                publisher,
            });
        }
        Ok(&self.broker.as_ref().expect("set above").publisher)
    }

    /// One step: claims up to `RELAY_BATCH_SIZE` unpublished rows (skipping rows another relay
    /// holds), publishes them, and in the same transaction marks the confirmed ones published
    /// and records the error on the others. A crash anywhere rolls the claim back, and the rows
    /// are published again by the next batch.
    pub async fn relay_batch(&mut self) -> Result<BatchReport, RelayError> {
        // The broker first: while it is away, rows stay untouched and unlocked.
        let publisher = self.broker().await?.clone();
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_id, event_type, traceparent, tracestate, \
                    jsonb_build_object( \
                        'event_id', event_id, 'event_type', event_type, \
                        'occurred_at', created_at, \
                        'trace_context', jsonb_strip_nulls(jsonb_build_object( \
                            'traceparent', traceparent, 'tracestate', tracestate)), \
                        'data', payload)::text AS body \
             FROM outbox WHERE published_at IS NULL \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.settings.relay_batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(BatchReport::default());
        }
        // One producer span per event, a child of the request that wrote it; the message carries
        // the span's own context, so the consumer's span hangs under it. With tracing off the
        // span has no context and the request's is passed on unchanged.
        let spans: Vec<tracing::Span> = rows
            .iter()
            .map(|row| {
                let span = tracing::info_span!(
                    "publish",
                    otel.kind = "producer",
                    messaging.destination.name = %self.topology.exchange,
                    messaging.message.id = %row.event_id,
                );
                propagation::set_remote_parent(&span, |name| match name {
                    "traceparent" => row.traceparent.as_deref(),
                    "tracestate" => row.tracestate.as_deref(),
                    _ => None,
                });
                span
            })
            .collect();
        let messages: Vec<OutgoingMessage> = rows
            .iter()
            .zip(&spans)
            .map(|(row, span)| {
                let mut context = propagation::inject(span);
                OutgoingMessage {
                    exchange: self.topology.exchange.clone(),
                    routing_key: row.event_type.clone(),
                    message_id: row.event_id,
                    event_type: row.event_type.clone(),
                    body: row.body.clone().into_bytes(),
                    traceparent: context
                        .remove("traceparent")
                        .or_else(|| row.traceparent.clone()),
                    tracestate: context
                        .remove("tracestate")
                        .or_else(|| row.tracestate.clone()),
                }
            })
            .collect();
        let results = publisher.publish_all(&messages).await;
        drop(spans);

        let mut published = Vec::new();
        let (mut failed_ids, mut failed_errors) = (Vec::new(), Vec::new());
        let mut broken = false;
        for (row, result) in rows.iter().zip(&results) {
            match result {
                Ok(()) => published.push(row.id),
                Err(e) => {
                    broken |= e.channel_is_broken();
                    failed_ids.push(row.id);
                    failed_errors.push(error_chain(e));
                }
            }
        }
        sqlx::query(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 \
             WHERE id = ANY($1)",
        )
        .bind(&published)
        .execute(&mut *tx)
        .await?;
        if !failed_ids.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error \
                 FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
            )
            .bind(&failed_ids)
            .bind(&failed_errors)
            .execute(&mut *tx)
            .await?;
            tracing::warn!(
                message = "Some events were not confirmed; they stay in the outbox.",
                failed = failed_ids.len(),
                error = %failed_errors[0],
            );
        }
        tx.commit().await?;
        if broken {
            self.drop_broker().await;
        }
        self.stats
            .published
            .fetch_add(published.len() as u64, Ordering::Relaxed);
        self.stats
            .failed
            .fetch_add(failed_ids.len() as u64, Ordering::Relaxed);
        Ok(BatchReport {
            claimed: rows.len(),
            published: published.len(),
            failed: failed_ids.len(),
        })
    }

    async fn drop_broker(&mut self) {
        self.connected.store(false, Ordering::Relaxed);
        if let Some(broker) = self.broker.take() {
            let _ = tokio::time::timeout(
                self.settings.amqp.operation_timeout(),
                broker.connection.close(200, "reconnecting".into()),
            )
            .await;
        }
    }

    /// Deletes rows published more than `RELAY_RETENTION_SECS` ago among the oldest
    /// [`PRUNE_WINDOW`] rows, so one call reads a bounded number of rows however large the
    /// outbox is. Rows are published about in id order, so the old ones are at the front; an
    /// unpublished or recent row there is skipped and looked at again next time.
    ///
    /// Filtering the whole table for old rows instead read every row when none was old, as
    /// during the first `RELAY_RETENTION_SECS` of a busy outbox: an hour at 2,000 comments/s
    /// is 7.2 million rows, read every 64 idle rounds.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE id IN ( \
                 SELECT id FROM (SELECT id, published_at FROM outbox ORDER BY id LIMIT $2) oldest \
                 WHERE published_at < now() - make_interval(secs => $1))",
        )
        .bind(self.settings.relay_retention_secs as f64)
        .bind(PRUNE_WINDOW)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Relays until `shutdown` turns true; the batch in progress then finishes (it is bounded by
    /// the confirm timeout) before the relay closes its connection.
    ///
    /// It sleeps on `LISTEN outbox` between batches (writers notify after committing events;
    /// see `domain::outbox`), polls every `RELAY_POLL_INTERVAL_MS` in case a notification was
    /// missed, and
    /// backs off from `AMQP_RECONNECT_MIN_MS` to `AMQP_RECONNECT_MAX_MS` while the broker or
    /// the database is away.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.settings.relay_poll_interval_ms);
        // Measured apart from the batches: a relay busy draining a backlog never pauses.
        let (pool, stats) = (self.pool.clone(), self.stats.clone());
        let backlog_monitor = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(poll);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = measure_backlog(&pool, &stats).await {
                    tracing::debug!(message = "Could not measure the outbox backlog.", error = %e);
                }
            }
        });
        let mut listener: Option<PgListener> = None;
        let mut failures = 0u32;
        let mut idle_rounds = 0u32;
        while !*shutdown.borrow() {
            if listener.is_none() {
                listener = listen(&self.pool).await;
            }
            let outcome = self.relay_batch().await;
            let wait = match outcome {
                Ok(report) if report.failed == 0 => {
                    failures = 0;
                    if report.claimed as i64 >= self.settings.relay_batch_size {
                        continue;
                    }
                    None
                }
                Ok(_) => Some(platform_messaging::backoff(&self.settings.amqp, failures)),
                Err(e) => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        message = "Relaying failed; backing off.",
                        error = %error_chain(&e),
                    );
                    if matches!(e, RelayError::Broker(_)) {
                        self.drop_broker().await;
                    }
                    Some(platform_messaging::backoff(&self.settings.amqp, failures))
                }
            };
            if let Some(delay) = wait {
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            idle_rounds = idle_rounds.wrapping_add(1);
            if idle_rounds.is_multiple_of(64) {
                match self.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(message = "Pruned published outbox rows.", rows = n),
                    Err(e) => tracing::warn!(message = "Pruning failed.", error = %e),
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                woke = wait_for_notification(&mut listener, poll) => {
                    if !woke {
                        // The listening connection failed: make a new one next round.
                        listener = None;
                    }
                }
            }
        }
        backlog_monitor.abort();
        self.drop_broker().await;
        tracing::info!(message = "Relay stopped.");
    }
}

/// The relay's `/metrics`: its counters, the outbox backlog as last measured, and whether it
/// holds a broker connection, read at scrape time.
pub fn metrics(relay: &Relay) -> platform_metrics::Metrics {
    let (stats, connected) = (relay.stats(), relay.connected_flag());
    let mut metrics = platform_metrics::Metrics::new();
    metrics.register_collector(platform_metrics::collector(move |s| {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.counter(
            "relay_events_published",
            "Events the broker confirmed",
            &[],
            load(&stats.published),
        );
        s.counter(
            "relay_events_failed",
            "Publishes that failed; the rows stay in the outbox",
            &[],
            load(&stats.failed),
        );
        s.counter(
            "relay_unavailable",
            "Batches that found the broker or database away",
            &[],
            load(&stats.unavailable),
        );
        s.gauge(
            "outbox_backlog",
            "Outbox rows waiting to be published",
            &[],
            load(&stats.backlog) as f64,
        );
        s.gauge(
            "outbox_oldest_age_seconds",
            "How long the oldest unpublished outbox row has waited",
            &[],
            load(&stats.oldest_age_ms) as f64 / 1000.0,
        );
        s.counter(
            "relay_broker_connections",
            "Broker connections made",
            &[],
            load(&stats.connections),
        );
        let up = if connected.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        };
        s.gauge(
            "relay_broker_connected",
            "1 while connected to the broker",
            &[],
            up,
        );
    }));
    metrics
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(domain::outbox::CHANNEL).await.ok()?;
    Some(listener)
}

/// Waits for a notification or `poll`, whichever comes first; false if the listener failed.
async fn wait_for_notification(listener: &mut Option<PgListener>, poll: Duration) -> bool {
    match listener {
        Some(l) => !matches!(tokio::time::timeout(poll, l.recv()).await, Ok(Err(_))),
        None => {
            tokio::time::sleep(poll).await;
            true
        }
    }
}
