//! A topology of its own for each test, with short delays, deleted when the guard drops.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::{AmqpSettings, Topology, bounded};

/// The comment topology under a unique exchange name (`test_<uuid>`, so its queues are
/// `test_<uuid>.spam` and so on), declared on the broker of `AMQP_URL`.
pub struct TestTopology {
    pub settings: AmqpSettings,
    pub topology: Topology,
}

impl TestTopology {
    /// Declares a fresh topology: delivery limit 3, retry delay 100 ms, 3 attempts.
    pub async fn create() -> Self {
        Self::create_with(|_| {}).await
    }

    /// Like [`TestTopology::create`], after `customise` has adjusted the settings.
    pub async fn create_with(customise: impl FnOnce(&mut AmqpSettings)) -> Self {
        let mut settings = AmqpSettings {
            amqp_exchange: format!("test_{}", uuid::Uuid::new_v4().simple()),
            amqp_delivery_limit: 3,
            amqp_retry_delay_ms: 100,
            amqp_max_attempts: 3,
            amqp_reconnect_min_ms: 20,
            amqp_reconnect_max_ms: 200,
            ..AmqpSettings::default()
        };
        if let Ok(url) = std::env::var("AMQP_URL") {
            settings.amqp_url = platform_config::Secret::new(url);
        }
        customise(&mut settings);
        let topology = Topology::comments(&settings);
        let connection = crate::connect(&settings, "test-setup")
            .await
            .expect("the broker is reachable (is RabbitMQ running?)");
        topology
            .declare(&connection, &settings)
            .await
            .expect("the topology can be declared");
        let _ = connection.close(200, "OK".into()).await;
        Self { settings, topology }
    }

    /// Messages ready in `queue`, read without consuming.
    pub async fn ready(&self, queue: &str) -> u32 {
        let connection = crate::connect(&self.settings, "test-count").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "OK".into()).await;
        declared.message_count()
    }

    /// Takes (and acks) every message now in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let connection = crate::connect(&self.settings, "test-drain").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut taken = Vec::new();
        while let Some(message) = bounded(
            "basic.get",
            Duration::from_secs(5),
            channel.basic_get(queue.into(), BasicGetOptions::default()),
        )
        .await
        .unwrap()
        {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            taken.push(message.delivery);
        }
        let _ = connection.close(200, "OK".into()).await;
        taken
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let (settings, topology) = (self.settings.clone(), self.topology.clone());
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime can be built")
                .block_on(async move {
                    let connection = crate::connect(&settings, "test-cleanup").await?;
                    let result = topology.delete(&connection, &settings).await;
                    let _ = connection.close(200, "OK".into()).await;
                    result
                })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("warning: a test's AMQP topology could not be deleted");
        }
    }
}
