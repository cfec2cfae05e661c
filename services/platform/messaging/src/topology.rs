//! Exchanges and queues as data: declared by each process at start, and exported as a RabbitMQ
//! definitions file (`infra/rabbitmq/definitions.json`) for compose.
//!
//! One topic exchange; each subscriber owns three quorum queues:
//!
//! ```text
//! comments (topic) ──comment.submitted──> comments.spam ──(handler fails)──> comments.spam.retry
//!                                            ^    │                            │ x-message-ttl
//!                                            │    │                            │ dead-letters back
//!                                            └────┼────────────────────────────┘
//!                                                 │ attempts exhausted (worker) or
//!                                                 │ x-delivery-limit reached (broker)
//!                                                 v
//!                                          comments.spam.parking
//! ```
//!
//! A new subscriber is one more [`QueueSet`] bound to the exchange; nothing else changes.
//!
//! Queue arguments cannot change once a queue exists (the broker answers 406 to a redeclare
//! with other arguments), so they live here, in one place, and the definitions file is checked
//! against this code by a test.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};
use serde_json::{Value, json};

use crate::{AmqpSettings, MessagingError, bounded};

/// One subscriber's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSet {
    /// Where the subscriber consumes from, bound to the exchange with `binding_key`.
    pub work: String,
    /// Where a failed message waits `retry_delay_ms` before it returns to `work`.
    pub retry: String,
    /// Where a message that cannot be handled ends, for a person to look at.
    pub parking: String,
    /// The topic pattern the work queue is bound with.
    pub binding_key: String,
}

impl QueueSet {
    /// `work`, with `work.retry` and `work.parking` beside it.
    pub fn new(work: impl Into<String>, binding_key: impl Into<String>) -> Self {
        let work = work.into();
        Self {
            retry: format!("{work}.retry"),
            parking: format!("{work}.parking"),
            work,
            binding_key: binding_key.into(),
        }
    }
}

/// The exchange and every subscriber's queues.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub subscribers: Vec<QueueSet>,
    /// `x-delivery-limit` of the work queues. RabbitMQ 3.10 sets none by default (4.x sets 20).
    pub delivery_limit: u32,
    /// `x-message-ttl` of the retry queues.
    pub retry_delay_ms: u32,
}

/// The spam worker's subscription: `<exchange>.spam`.
pub const SPAM: &str = "spam";
/// The sentiment worker's subscription: `<exchange>.sentiment`.
pub const SENTIMENT: &str = "sentiment";
/// What both workers subscribe to.
pub const COMMENT_SUBMITTED: &str = "comment.submitted";

impl Topology {
    /// The comment pipeline: exchange `AMQP_EXCHANGE` (`comments`) and the queues
    /// `comments.spam` and `comments.sentiment`, both bound with `comment.submitted`.
    pub fn comments(settings: &AmqpSettings) -> Self {
        let exchange = settings.amqp_exchange.clone();
        Self {
            subscribers: [SPAM, SENTIMENT]
                .map(|name| QueueSet::new(format!("{exchange}.{name}"), COMMENT_SUBMITTED))
                .to_vec(),
            exchange,
            delivery_limit: settings.amqp_delivery_limit,
            retry_delay_ms: settings.amqp_retry_delay_ms,
        }
    }

    /// The queue set named `<exchange>.<name>`.
    pub fn subscriber(&self, name: &str) -> Option<&QueueSet> {
        let work = format!("{}.{name}", self.exchange);
        self.subscribers.iter().find(|s| s.work == work)
    }

    /// Every queue with its arguments, as data.
    pub fn queues(&self) -> Vec<(String, Vec<(&'static str, Argument)>)> {
        let mut queues = Vec::new();
        for set in &self.subscribers {
            // Dead-lettering goes through the default exchange, which routes by queue name, so
            // no extra exchange is needed. `at-least-once` makes the broker keep a message until
            // the target queue has confirmed it; it requires `reject-publish` overflow.
            let dead_letter_to = |target: &str| {
                vec![
                    ("x-dead-letter-exchange", Argument::Text(String::new())),
                    (
                        "x-dead-letter-routing-key",
                        Argument::Text(target.to_owned()),
                    ),
                    (
                        "x-dead-letter-strategy",
                        Argument::Text("at-least-once".into()),
                    ),
                    ("x-overflow", Argument::Text("reject-publish".into())),
                ]
            };
            let mut work = vec![
                ("x-queue-type", Argument::Text("quorum".into())),
                (
                    "x-delivery-limit",
                    Argument::Int(i64::from(self.delivery_limit)),
                ),
            ];
            work.extend(dead_letter_to(&set.parking));
            let mut retry = vec![
                ("x-queue-type", Argument::Text("quorum".into())),
                (
                    "x-message-ttl",
                    Argument::Int(i64::from(self.retry_delay_ms)),
                ),
            ];
            retry.extend(dead_letter_to(&set.work));
            let parking = vec![("x-queue-type", Argument::Text("quorum".into()))];
            queues.push((set.work.clone(), work));
            queues.push((set.retry.clone(), retry));
            queues.push((set.parking.clone(), parking));
        }
        queues
    }

    /// Declares the exchange, the queues and the bindings. Idempotent: every process runs it at
    /// start, and a redeclare with the same arguments changes nothing.
    pub async fn declare(
        &self,
        connection: &Connection,
        settings: &AmqpSettings,
    ) -> Result<(), MessagingError> {
        let timeout = settings.operation_timeout();
        let channel = bounded("opening a channel", timeout, connection.create_channel()).await?;
        bounded(
            "declaring the exchange",
            timeout,
            channel.exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        for (name, arguments) in self.queues() {
            let mut table = FieldTable::default();
            for (key, value) in arguments {
                table.insert(key.into(), value.to_amqp());
            }
            bounded(
                "declaring a queue",
                timeout,
                channel.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    table,
                ),
            )
            .await?;
        }
        for set in &self.subscribers {
            bounded(
                "binding a queue",
                timeout,
                channel.queue_bind(
                    set.work.as_str().into(),
                    self.exchange.as_str().into(),
                    set.binding_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        let _ = bounded(
            "closing a channel",
            timeout,
            channel.close(200, "OK".into()),
        )
        .await;
        Ok(())
    }

    /// Deletes the queues and the exchange; tests use it to leave the broker as they found it.
    pub async fn delete(
        &self,
        connection: &Connection,
        settings: &AmqpSettings,
    ) -> Result<(), MessagingError> {
        let timeout = settings.operation_timeout();
        let channel = bounded("opening a channel", timeout, connection.create_channel()).await?;
        for (name, _) in self.queues() {
            bounded(
                "deleting a queue",
                timeout,
                channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
            )
            .await?;
        }
        bounded(
            "deleting the exchange",
            timeout,
            channel.exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            ),
        )
        .await?;
        let _ = bounded(
            "closing a channel",
            timeout,
            channel.close(200, "OK".into()),
        )
        .await;
        Ok(())
    }

    /// The topology as a RabbitMQ definitions document (vhost `/`), for
    /// `load_definitions` in compose.
    pub fn definitions(&self) -> Value {
        let queues: Vec<Value> = self
            .queues()
            .into_iter()
            .map(|(name, arguments)| {
                let arguments: serde_json::Map<String, Value> = arguments
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_json()))
                    .collect();
                json!({"name": name, "vhost": "/", "durable": true, "auto_delete": false,
                       "arguments": arguments})
            })
            .collect();
        let bindings: Vec<Value> = self
            .subscribers
            .iter()
            .map(|set| {
                json!({"source": self.exchange, "vhost": "/", "destination": set.work,
                       "destination_type": "queue", "routing_key": set.binding_key,
                       "arguments": {}})
            })
            .collect();
        json!({
            "exchanges": [{"name": self.exchange, "vhost": "/", "type": "topic", "durable": true,
                           "auto_delete": false, "internal": false, "arguments": {}}],
            "queues": queues,
            "bindings": bindings,
        })
    }
}

/// A queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    Text(String),
    Int(i64),
}

impl Argument {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            Self::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Self::Int(n) => AMQPValue::LongLongInt(*n),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Text(s) => json!(s),
            Self::Int(n) => json!(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_definitions_file_matches_the_topology_the_code_declares() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../infra/rabbitmq/definitions.json"
        );
        let expected = Topology::comments(&AmqpSettings::default()).definitions();
        let text = std::fs::read_to_string(path).expect("infra/rabbitmq/definitions.json exists");
        let on_disk: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            on_disk,
            expected,
            "regenerate with `cargo run -p platform-messaging --example definitions`:\n{}",
            serde_json::to_string_pretty(&expected).unwrap()
        );
    }

    #[test]
    fn each_subscriber_has_its_own_work_retry_and_parking_queues() {
        let topology = Topology::comments(&AmqpSettings::default());
        let spam = topology.subscriber(SPAM).unwrap();
        assert_eq!(spam.work, "comments.spam");
        assert_eq!(spam.retry, "comments.spam.retry");
        assert_eq!(spam.parking, "comments.spam.parking");
        assert_eq!(
            topology.subscriber(SENTIMENT).unwrap().work,
            "comments.sentiment"
        );
        assert_eq!(topology.queues().len(), 6);
    }
}
