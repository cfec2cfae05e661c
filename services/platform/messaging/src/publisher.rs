//! Persistent, mandatory publishes with publisher confirms.
//!
//! A publish counts only when the broker has confirmed it: `basic_publish(..).await` only means
//! "written to the socket". An unroutable message is confirmed too (with `mandatory` it also
//! comes back as a return), so a returned message is an error here, never a success.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{AmqpSettings, MessagingError, bounded};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub exchange: String,
    pub routing_key: String,
    /// The AMQP `message_id`, which consumers deduplicate on.
    pub message_id: Uuid,
    /// The AMQP `type` property.
    pub event_type: String,
    pub body: Vec<u8>,
    /// `traceparent` and `tracestate`, copied into the message headers when present.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl OutgoingMessage {
    /// Persistent (`delivery_mode` 2), JSON, with its id, type, timestamp and trace headers.
    fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("traceparent", &self.traceparent),
            ("tracestate", &self.tracestate),
        ] {
            if let Some(value) = value {
                headers.insert(
                    name.into(),
                    AMQPValue::LongString(LongString::from(value.as_str())),
                );
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(self.message_id.to_string().into())
            .with_type(self.event_type.as_str().into())
            .with_timestamp(now)
            .with_headers(headers)
    }
}

/// Why a message was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The connection or channel failed or timed out; the channel should be replaced.
    #[error(transparent)]
    Broker(#[from] MessagingError),
    /// No queue is bound for the routing key: the broker returned the message.
    #[error("the broker could not route the message: {0}")]
    Unroutable(String),
    /// The broker refused the message (for instance a queue rejecting publishes when full).
    #[error("the broker refused the message (nack)")]
    Nacked,
}

impl PublishError {
    /// Whether the channel is still usable: a return or a nack leaves it healthy, while a
    /// broker error or a timeout means it must be replaced.
    pub fn channel_is_broken(&self) -> bool {
        matches!(self, Self::Broker(_))
    }
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    publish_timeout: Duration,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(
        connection: &Connection,
        settings: &AmqpSettings,
    ) -> Result<Self, MessagingError> {
        let timeout = settings.operation_timeout();
        let channel = bounded("opening a channel", timeout, connection.create_channel()).await?;
        Self::on_channel(channel, settings).await
    }

    /// Puts `channel` in confirm mode and publishes on it.
    pub async fn on_channel(
        channel: Channel,
        settings: &AmqpSettings,
    ) -> Result<Self, MessagingError> {
        let timeout = settings.operation_timeout();
        bounded(
            "enabling publisher confirms",
            timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self {
            channel,
            publish_timeout: timeout,
            confirm_timeout: settings.confirm_timeout(),
        })
    }

    /// Publishes every message, then waits for their confirms, all within one confirm timeout;
    /// the answer has one result per message, in order. Sending the batch before waiting lets
    /// the broker confirm many messages with one fsync.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let sent = bounded(
                "publishing",
                self.publish_timeout,
                self.channel.basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties(),
                ),
            )
            .await;
            pending.push(sent);
        }
        let deadline = Instant::now() + self.confirm_timeout;
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            results.push(match sent {
                Ok(confirm) => confirmed(deadline, self.confirm_timeout, confirm).await,
                Err(e) => Err(e.into()),
            });
        }
        results
    }

    /// Publishes one message with explicit properties and waits for its confirm.
    pub(crate) async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = bounded(
            "publishing",
            self.publish_timeout,
            self.channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            ),
        )
        .await?;
        confirmed(
            Instant::now() + self.confirm_timeout,
            self.confirm_timeout,
            confirm,
        )
        .await
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

async fn confirmed(
    deadline: Instant,
    timeout: Duration,
    confirm: lapin::PublisherConfirm,
) -> Result<(), PublishError> {
    let confirmation = match tokio::time::timeout_at(deadline, confirm).await {
        Ok(Ok(confirmation)) => confirmation,
        Ok(Err(source)) => {
            return Err(MessagingError::Broker {
                operation: "waiting for a publisher confirm",
                source,
            }
            .into());
        }
        Err(_) => {
            return Err(MessagingError::Timeout {
                operation: "waiting for a publisher confirm",
                timeout,
            }
            .into());
        }
    };
    if confirmation.is_nack() {
        return Err(PublishError::Nacked);
    }
    match confirmation.take_message() {
        Some(returned) => Err(PublishError::Unroutable(returned.reply_text.to_string())),
        None => Ok(()),
    }
}
