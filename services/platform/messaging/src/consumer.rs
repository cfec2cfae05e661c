//! Consuming a queue: push (`basic.consume`) or pull (`basic.get`), manual acks, retries with
//! delay and parking.
//!
//! What happens to one message, whatever the mode:
//!
//! | handler answer | what the consumer does | then |
//! |---|---|---|
//! | `Ok` | ack | done; a duplicate delivery must be a no-op in the handler (inbox) |
//! | `Retry`, attempts left | publish a copy to `<queue>.retry` (confirmed), ack | back in `<queue>` after `AMQP_RETRY_DELAY_MS` |
//! | `Retry`, last attempt, or `Park` | publish a copy to `<queue>.parking` (confirmed), ack | waits for a person |
//! | the copy is not confirmed | `nack` with requeue | delivered again at once; counts toward `x-delivery-limit` |
//! | the worker dies holding it | the broker requeues it | counts toward `x-delivery-limit`; at the limit the broker dead-letters it to `<queue>.parking` |
//!
//! The ack always follows the handler's commit, never precedes it: a crash between the two
//! redelivers a message whose effect is already recorded, which the handler's inbox turns into
//! a no-op. `ack()` answers `Ok(false)` when its channel died; that is reported as
//! [`Outcome::AckLost`], not as success, and the message will come again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::publisher::{PublishError, Publisher};
use crate::{AmqpSettings, MessagingError, QueueSet, Topology, backoff, bounded};

/// The header counting handling attempts of a message (1 on first publish).
pub const ATTEMPT_HEADER: &str = "x-scaleout-attempt";
/// The header saying why a message was parked.
pub const PARKED_REASON_HEADER: &str = "x-scaleout-parked-reason";

/// How a consumer receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeMode {
    /// `basic.consume`: the broker pushes up to `prefetch` unacked messages. The default.
    #[default]
    Push,
    /// `basic.get`: one round trip per message, polled; kept for comparison.
    Pull,
}

/// A delivery as a handler sees it.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    /// The AMQP `message_id`, when it is a UUID (ours always are).
    pub message_id: Option<Uuid>,
    pub body: Vec<u8>,
    /// The broker's hint that this may have been delivered before.
    pub redelivered: bool,
    /// Which handling attempt this is, from 1.
    pub attempt: u32,
    /// The W3C trace context of the message headers.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Why a handler did not finish a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Something that may work later (the database is down): retry after a delay.
    #[error("{0}")]
    Retry(String),
    /// Something that will never work (a body that is not an event): park at once.
    #[error("{0}")]
    Park(String),
}

/// What a consumer does with each message.
pub trait MessageHandler: Send + Sync + 'static {
    /// Applies the message. It must commit its effect before returning `Ok`, and applying the
    /// same message twice must change nothing.
    fn handle(
        &self,
        message: &IncomingMessage,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled and acknowledged.
    Acked,
    /// Sent to the retry queue for attempt `next_attempt`.
    Retried { next_attempt: u32 },
    /// Sent to the parking queue.
    Parked { reason: String },
    /// Handled, but the ack did not reach the broker (the channel died): it will be
    /// redelivered, and the handler's inbox will make that a no-op.
    AckLost,
    /// The retry or parking copy could not be published; the original was requeued.
    Requeued,
}

/// What a consumer has done since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub acked: AtomicU64,
    pub retried: AtomicU64,
    pub parked: AtomicU64,
    pub ack_lost: AtomicU64,
    pub requeued: AtomicU64,
    /// Connections made (the first one included).
    pub connections: AtomicU64,
}

impl ConsumerStats {
    fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Acked => &self.acked,
            Outcome::Retried { .. } => &self.retried,
            Outcome::Parked { .. } => &self.parked,
            Outcome::AckLost => &self.ack_lost,
            Outcome::Requeued => &self.requeued,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A queue consumer that reconnects by itself.
///
/// [`Consumer::try_handle_one`] is one step: it takes at most one message and settles it;
/// [`Consumer::run`] loops over such steps with concurrency, reconnection and graceful stop.
pub struct Consumer<H> {
    settings: AmqpSettings,
    queues: QueueSet,
    name: String,
    mode: ConsumeMode,
    prefetch: u16,
    pull_interval: Duration,
    handler: Arc<H>,
    topology: Option<Topology>,
    session: Option<Session>,
    connected: Arc<AtomicBool>,
    stats: Arc<ConsumerStats>,
}

struct Session {
    connection: Connection,
    publisher: Publisher,
    stream: Option<(lapin::Consumer, String)>,
}

/// What the per-message tasks share.
struct Settle<H> {
    handler: Arc<H>,
    stats: Arc<ConsumerStats>,
    queues: QueueSet,
    max_attempts: u32,
    operation_timeout: Duration,
}

impl<H: MessageHandler> Consumer<H> {
    /// A consumer of `queues.work` named `name` (the connection name and consumer-tag prefix).
    /// It connects on first use.
    pub fn new(
        settings: AmqpSettings,
        queues: QueueSet,
        name: &str,
        mode: ConsumeMode,
        prefetch: u16,
        handler: H,
    ) -> Self {
        Self {
            settings,
            queues,
            name: name.to_owned(),
            mode,
            prefetch: prefetch.max(1),
            pull_interval: Duration::from_millis(50),
            handler: Arc::new(handler),
            topology: None,
            session: None,
            connected: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ConsumerStats::default()),
        }
    }

    /// How long pull mode waits before asking again when the queue was empty.
    pub fn with_pull_interval(mut self, interval: Duration) -> Self {
        self.pull_interval = interval;
        self
    }

    /// Declares `topology` on every (re)connection before consuming, so a worker that starts
    /// before anything else, or after the broker lost its state, finds its queues.
    pub fn with_topology(mut self, topology: Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// A flag that is true while the consumer holds a live connection; `/readyz` reads it.
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// The consumer's counters; `/metrics` reads them.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// The queues this consumer works on (its work queue, retry queue and parking queue).
    pub fn queues(&self) -> &QueueSet {
        &self.queues
    }

    /// The handler: tests inspect what it saw, `/metrics` reads what it counts.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Takes at most one message, waiting up to `wait` for it, and settles it. `Ok(None)`:
    /// nothing arrived. An error means the connection was lost; the next call reconnects.
    pub async fn try_handle_one(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Outcome>, MessagingError> {
        let Some(delivery) = self.next_delivery(wait).await? else {
            return Ok(None);
        };
        let publisher = self.session.as_ref().map(|s| s.publisher.clone());
        let Some(publisher) = publisher else {
            return Ok(None);
        };
        Ok(Some(self.settle().run(&publisher, delivery).await))
    }

    /// Consumes until `shutdown` turns true, then stops taking messages, finishes and acks those
    /// it holds, and closes its connection. Up to `prefetch` messages are handled at once.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let settle = Arc::new(self.settle());
        let mut in_flight = JoinSet::new();
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            while in_flight.len() >= usize::from(self.prefetch) {
                in_flight.join_next().await;
            }
            while in_flight.try_join_next().is_some() {}
            let wait = Duration::from_millis(500);
            let next = tokio::select! {
                _ = shutdown.changed() => break,
                next = self.next_delivery(wait) => next,
            };
            match next {
                Ok(Some(delivery)) => {
                    failures = 0;
                    let Some(publisher) = self.session.as_ref().map(|s| s.publisher.clone()) else {
                        continue;
                    };
                    let settle = settle.clone();
                    in_flight.spawn(async move { settle.run(&publisher, delivery).await });
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    let delay = backoff(&self.settings, failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        message = "Broker unavailable; reconnecting.",
                        queue = %self.queues.work,
                        error = %error_chain(&e),
                        retry_in_ms = delay.as_millis() as u64,
                    );
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.stop(settle, in_flight).await;
    }

    /// Graceful stop: cancel the subscription so the broker sends nothing more, handle what was
    /// already delivered (the prefetched messages, which would otherwise be requeued and count
    /// toward their delivery limit), wait for every handler, then close.
    async fn stop(&mut self, settle: Arc<Settle<H>>, mut in_flight: JoinSet<Outcome>) {
        let timeout = self.settings.operation_timeout();
        if let Some(session) = self.session.as_mut()
            && let Some((mut stream, tag)) = session.stream.take()
        {
            let cancelled = bounded(
                "cancelling the subscription",
                timeout,
                session
                    .publisher
                    .channel()
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
            if cancelled.is_ok() {
                while let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(200), stream.next()).await
                {
                    let (settle, publisher) = (settle.clone(), session.publisher.clone());
                    in_flight.spawn(async move { settle.run(&publisher, delivery).await });
                }
            }
        }
        while in_flight.join_next().await.is_some() {}
        if let Some(session) = self.session.take() {
            let _ = bounded(
                "closing the connection",
                timeout,
                session.connection.close(200, "shutting down".into()),
            )
            .await;
        }
        self.connected.store(false, Ordering::Relaxed);
        tracing::info!(message = "Consumer stopped.", queue = %self.queues.work);
    }

    fn settle(&self) -> Settle<H> {
        Settle {
            handler: self.handler.clone(),
            stats: self.stats.clone(),
            queues: self.queues.clone(),
            max_attempts: self.settings.amqp_max_attempts.max(1),
            operation_timeout: self.settings.operation_timeout(),
        }
    }

    /// Opens the connection, channel, QoS and (in push mode) the subscription.
    async fn ensure_session(&mut self) -> Result<&mut Session, MessagingError> {
        if self.session.as_ref().is_some_and(|s| {
            s.connection.status().connected() && s.publisher.channel().status().connected()
        }) {
            return Ok(self.session.as_mut().expect("checked above"));
        }
        self.session = None;
        self.connected.store(false, Ordering::Relaxed);
        let timeout = self.settings.operation_timeout();
        let connection = crate::connect(&self.settings, &self.name).await?;
        if let Some(topology) = &self.topology {
            topology.declare(&connection, &self.settings).await?;
        }
        let channel = bounded("opening a channel", timeout, connection.create_channel()).await?;
        // Per-consumer prefetch: quorum queues refuse a global QoS.
        bounded(
            "setting the prefetch",
            timeout,
            channel.basic_qos(self.prefetch, BasicQosOptions { global: false }),
        )
        .await?;
        let publisher = Publisher::on_channel(channel.clone(), &self.settings).await?;
        let stream = match self.mode {
            ConsumeMode::Push => {
                let tag = format!("{}-{}", self.name, Uuid::new_v4().simple());
                let consumer = bounded(
                    "subscribing",
                    timeout,
                    channel.basic_consume(
                        self.queues.work.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
                Some((consumer, tag))
            }
            ConsumeMode::Pull => None,
        };
        tracing::info!(message = "Consuming.", queue = %self.queues.work, mode = ?self.mode);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
        Ok(self.session.insert(Session {
            connection,
            publisher,
            stream,
        }))
    }

    /// The next delivery, waiting up to `wait`.
    async fn next_delivery(&mut self, wait: Duration) -> Result<Option<Delivery>, MessagingError> {
        let timeout = self.settings.operation_timeout();
        let queue = self.queues.work.clone();
        let pull_interval = self.pull_interval;
        let session = self.ensure_session().await?;
        let result =
            match &mut session.stream {
                Some((stream, _)) => match tokio::time::timeout(wait, stream.next()).await {
                    Err(_) => Ok(None),
                    Ok(Some(Ok(delivery))) => Ok(Some(delivery)),
                    Ok(Some(Err(source))) => Err(MessagingError::Broker {
                        operation: "receiving a delivery",
                        source,
                    }),
                    Ok(None) => Err(MessagingError::Broker {
                        operation: "receiving a delivery",
                        source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                            lapin::ConnectionState::Closed,
                        )),
                    }),
                },
                None => {
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        let got = bounded(
                            "basic.get",
                            timeout,
                            session.publisher.channel().basic_get(
                                queue.as_str().into(),
                                BasicGetOptions { no_ack: false },
                            ),
                        )
                        .await;
                        match got {
                            Ok(Some(message)) => break Ok(Some(message.delivery)),
                            Ok(None) if tokio::time::Instant::now() < until => {
                                tokio::time::sleep(pull_interval.min(
                                    until.saturating_duration_since(tokio::time::Instant::now()),
                                ))
                                .await;
                            }
                            Ok(None) => break Ok(None),
                            Err(e) => break Err(e),
                        }
                    }
                }
            };
        if result.is_err() {
            self.session = None;
            self.connected.store(false, Ordering::Relaxed);
        }
        result
    }
}

impl<H: MessageHandler> Settle<H> {
    /// Handles one delivery, settles it with the broker and counts the outcome.
    async fn run(&self, publisher: &Publisher, delivery: Delivery) -> Outcome {
        let outcome = self.settle_one(publisher, delivery).await;
        self.stats.record(&outcome);
        outcome
    }

    async fn settle_one(&self, publisher: &Publisher, delivery: Delivery) -> Outcome {
        let message = incoming(&delivery);
        // The handler's span continues the trace the message carries (the relay's publish span,
        // itself a child of the request that wrote the comment).
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            messaging.destination.name = %self.queues.work,
            messaging.message.id = ?message.message_id,
            attempt = message.attempt,
        );
        platform_telemetry::propagation::set_remote_parent(&span, |name| match name {
            "traceparent" => message.traceparent.as_deref(),
            "tracestate" => message.tracestate.as_deref(),
            _ => None,
        });
        let result = match message.message_id {
            None => Err(HandlerError::Park(
                "the message has no UUID message_id".into(),
            )),
            Some(_) => self.handler.handle(&message).instrument(span).await,
        };
        let outcome = match result {
            Ok(()) => return self.ack(&delivery, Outcome::Acked).await,
            Err(HandlerError::Retry(reason)) if message.attempt < self.max_attempts => {
                let next_attempt = message.attempt + 1;
                tracing::warn!(
                    message = "Handling failed; retrying after a delay.",
                    queue = %self.queues.work, attempt = message.attempt, error = %reason,
                );
                let copy = with_header(
                    &delivery.properties,
                    ATTEMPT_HEADER,
                    AMQPValue::LongLongInt(i64::from(next_attempt)),
                );
                publisher
                    .publish_with("", &self.queues.retry, &delivery.data, copy)
                    .await
                    .map(|()| Outcome::Retried { next_attempt })
            }
            Err(HandlerError::Retry(reason) | HandlerError::Park(reason)) => {
                let reason = format!("attempt {}: {reason}", message.attempt);
                tracing::error!(
                    message = "Message parked.", queue = %self.queues.work, reason = %reason,
                );
                let copy = with_header(
                    &delivery.properties,
                    PARKED_REASON_HEADER,
                    AMQPValue::LongString(LongString::from(reason.as_str())),
                );
                publisher
                    .publish_with("", &self.queues.parking, &delivery.data, copy)
                    .await
                    .map(|()| Outcome::Parked { reason })
            }
        };
        match outcome {
            Ok(outcome) => self.ack(&delivery, outcome).await,
            Err(e) => self.requeue(&delivery, &e).await,
        }
    }

    async fn ack(&self, delivery: &Delivery, outcome: Outcome) -> Outcome {
        let acked = bounded(
            "basic.ack",
            self.operation_timeout,
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await;
        match acked {
            Ok(true) => outcome,
            Ok(false) => {
                tracing::warn!(
                    message = "The ack was not delivered (the channel is gone); the message will be redelivered.",
                    queue = %self.queues.work,
                );
                Outcome::AckLost
            }
            Err(e) => {
                tracing::warn!(
                    message = "The ack failed; the message will be redelivered.",
                    queue = %self.queues.work, error = %error_chain(&e),
                );
                Outcome::AckLost
            }
        }
    }

    async fn requeue(&self, delivery: &Delivery, cause: &PublishError) -> Outcome {
        tracing::warn!(
            message = "Could not publish the retry or parking copy; requeueing.",
            queue = %self.queues.work, error = %error_chain(cause),
        );
        let nacked = bounded(
            "basic.nack",
            self.operation_timeout,
            delivery.acker.nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            }),
        )
        .await;
        match nacked {
            Ok(true) => Outcome::Requeued,
            _ => Outcome::AckLost,
        }
    }
}

fn incoming(delivery: &Delivery) -> IncomingMessage {
    let properties = &delivery.properties;
    let headers = properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| h.inner().get(name));
    let attempt = match header(ATTEMPT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        _ => 1,
    }
    .max(1);
    let text = |name: &str| match header(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    IncomingMessage {
        message_id: properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok()),
        body: delivery.data.clone(),
        redelivered: delivery.redelivered,
        attempt,
        traceparent: text("traceparent"),
        tracestate: text("tracestate"),
    }
}

/// `properties` with `name` set in its headers (message id, type and persistence are kept).
fn with_header(properties: &BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// An error with its causes, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
