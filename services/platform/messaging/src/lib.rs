//! AMQP for scaleout processes: settings with explicit timeouts, topology as data, the event
//! envelope, a confirmed publisher and a consumer that checks its acks.
//!
//! This is the only crate that knows lapin. Everything above it (the relay, the workers) speaks
//! in envelopes, queue names and handler outcomes.
//!
//! Three facts about the broker shape every function here:
//! - an awaited broker operation can hang through an outage (a publish waited 16 s for a
//!   restarted broker), so every await is bounded by a configured timeout;
//! - `ack()` can answer `Ok(false)` after the channel died, so its answer is checked;
//! - a channel or connection that saw an error is dropped and made anew: the connection is
//!   rebuilt by the caller's loop with backoff rather than by lapin's hidden auto-recovery,
//!   so an outage is visible in logs, readiness and tests.
//!
//! # Layout
//! - [`AmqpSettings`]: `AMQP_URL` and the `AMQP_*` limits.
//! - [`topology`]: exchanges and queues as data, declared at start and exported for compose.
//! - [`envelope`]: the JSON body every event travels in, with its trace context.
//! - [`publisher`]: persistent, mandatory publishes with publisher confirms.
//! - [`consumer`]: push (`basic.consume`) and pull (`basic.get`) consumption, retries with delay
//!   and parking.
//! - `test_support` (feature `test-support`): a per-test topology, deleted afterwards.

pub mod consumer;
pub mod envelope;
pub mod publisher;
pub mod settings;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod topology;

pub use consumer::{
    ConsumeMode, Consumer, ConsumerStats, HandlerError, IncomingMessage, MessageHandler, Outcome,
};
pub use envelope::{CommentSubmitted, Envelope, TraceContext};
pub use publisher::{OutgoingMessage, PublishError, Publisher};
pub use settings::AmqpSettings;
pub use topology::{QueueSet, Topology};

/// lapin's types, for tests and tools that drive the broker directly.
pub use lapin;

use std::future::Future;
use std::time::Duration;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The broker did not answer within the configured time.
    #[error("{operation} got no answer from the broker within {} ms", .timeout.as_millis())]
    Timeout {
        operation: &'static str,
        timeout: Duration,
    },
    /// The broker or the connection refused the operation.
    #[error("{operation} failed")]
    Broker {
        operation: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// `AMQP_URL` could not be parsed.
    #[error("AMQP_URL is not a valid AMQP URL: {0}")]
    InvalidUrl(String),
}

/// Runs a broker operation under `timeout`, naming it in the error.
pub(crate) async fn bounded<T>(
    operation: &'static str,
    timeout: Duration,
    future: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, MessagingError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(MessagingError::Broker { operation, source }),
        Err(_) => Err(MessagingError::Timeout { operation, timeout }),
    }
}

/// Opens a connection to `AMQP_URL`, bounded by `AMQP_CONNECT_TIMEOUT_MS`, with the heartbeat
/// of `AMQP_HEARTBEAT_SECS` unless the URL sets one, so a dead peer is noticed in seconds rather
/// than the minutes TCP takes.
pub async fn connect(
    settings: &AmqpSettings,
    name: &str,
) -> Result<lapin::Connection, MessagingError> {
    let mut uri: lapin::uri::AMQPUri = settings
        .amqp_url
        .expose()
        .parse()
        .map_err(MessagingError::InvalidUrl)?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(settings.amqp_heartbeat_secs);
    }
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    bounded(
        "connecting to the broker",
        settings.connect_timeout(),
        lapin::Connection::connect_uri(uri, properties),
    )
    .await
}

/// The delay before reconnect attempt `attempt` (0-based): doubling from
/// `AMQP_RECONNECT_MIN_MS` up to `AMQP_RECONNECT_MAX_MS`.
pub fn backoff(settings: &AmqpSettings, attempt: u32) -> Duration {
    let min = settings.amqp_reconnect_min_ms.max(1);
    let delay = min.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(delay.min(settings.amqp_reconnect_max_ms.max(min)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let settings = AmqpSettings {
            amqp_reconnect_min_ms: 100,
            amqp_reconnect_max_ms: 1_000,
            ..AmqpSettings::default()
        };
        let delays: Vec<u128> = (0..6).map(|n| backoff(&settings, n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff(&settings, 200).as_millis(), 1_000);
    }

    #[tokio::test]
    async fn a_closed_port_fails_quickly_and_says_so() {
        let settings = AmqpSettings {
            amqp_url: platform_config::Secret::new(format!(
                "amqp://guest:guest@127.0.0.1:{}/%2f",
                platform_testing::closed_port()
            )),
            ..AmqpSettings::default()
        };
        let err = connect(&settings, "test").await.unwrap_err();
        assert!(
            matches!(err, MessagingError::Broker { .. }),
            "refused, not timed out: {err:?}"
        );
    }
}
