//! `AMQP_URL` and the limits of every broker interaction.

use std::time::Duration;

use platform_config::Secret;
use serde::{Deserialize, Serialize};

/// Broker settings shared by the relay and the workers. Each field is the environment variable
/// of the same name in upper case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AmqpSettings {
    /// `AMQP_URL`: the broker, `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`).
    pub amqp_url: Secret,
    /// `AMQP_CONNECT_TIMEOUT_MS`: opening a connection gives up after this.
    pub amqp_connect_timeout_ms: u64,
    /// `AMQP_OPERATION_TIMEOUT_MS`: any other broker round trip (declare, qos, consume, get,
    /// ack, cancel, close) gives up after this.
    pub amqp_operation_timeout_ms: u64,
    /// `AMQP_CONFIRM_TIMEOUT_MS`: a publish that is not confirmed by the broker within this
    /// counts as failed and is retried later (it may then arrive twice; consumers deduplicate).
    pub amqp_confirm_timeout_ms: u64,
    /// `AMQP_HEARTBEAT_SECS`: AMQP heartbeat, unless `AMQP_URL` sets `?heartbeat=`.
    pub amqp_heartbeat_secs: u16,
    /// `AMQP_RECONNECT_MIN_MS`: first delay before reconnecting after the broker went away.
    pub amqp_reconnect_min_ms: u64,
    /// `AMQP_RECONNECT_MAX_MS`: the reconnect delay doubles up to this.
    pub amqp_reconnect_max_ms: u64,
    /// `AMQP_EXCHANGE`: the topic exchange comment events are published to.
    pub amqp_exchange: String,
    /// `AMQP_DELIVERY_LIMIT`: the broker dead-letters a message to the parking queue after this
    /// many failed deliveries (a worker that crashed or lost its channel while holding it).
    pub amqp_delivery_limit: u32,
    /// `AMQP_RETRY_DELAY_MS`: how long a message whose handling failed waits in the retry queue
    /// before it is delivered again.
    pub amqp_retry_delay_ms: u32,
    /// `AMQP_MAX_ATTEMPTS`: handling attempts before a failing message is parked.
    pub amqp_max_attempts: u32,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            amqp_url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_connect_timeout_ms: 3_000,
            amqp_operation_timeout_ms: 5_000,
            amqp_confirm_timeout_ms: 5_000,
            amqp_heartbeat_secs: 10,
            amqp_reconnect_min_ms: 100,
            amqp_reconnect_max_ms: 5_000,
            amqp_exchange: "comments".to_owned(),
            amqp_delivery_limit: 5,
            amqp_retry_delay_ms: 1_000,
            amqp_max_attempts: 5,
        }
    }
}

impl AmqpSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.amqp_connect_timeout_ms)
    }

    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.amqp_operation_timeout_ms)
    }

    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.amqp_confirm_timeout_ms)
    }
}
