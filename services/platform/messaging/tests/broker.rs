//! The broker behaviour the pipeline relies on, pinned against the real RabbitMQ (3.10 here).

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use platform_messaging::consumer::{ATTEMPT_HEADER, PARKED_REASON_HEADER};
use platform_messaging::lapin::BasicProperties;
use platform_messaging::lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use platform_messaging::lapin::types::AMQPValue;
use platform_messaging::test_support::TestTopology;
use platform_messaging::topology::{COMMENT_SUBMITTED, SPAM};
use platform_messaging::{
    ConsumeMode, Consumer, HandlerError, IncomingMessage, MessageHandler, Outcome, OutgoingMessage,
    PublishError, Publisher,
};
use tokio::sync::watch;
use uuid::Uuid;

fn event(exchange: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage {
        exchange: exchange.to_owned(),
        routing_key: COMMENT_SUBMITTED.to_owned(),
        message_id: Uuid::new_v4(),
        event_type: COMMENT_SUBMITTED.to_owned(),
        body: body.as_bytes().to_vec(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    }
}

async fn publish(t: &TestTopology, bodies: &[&str]) {
    let connection = platform_messaging::connect(&t.settings, "test-publisher")
        .await
        .unwrap();
    let publisher = Publisher::open(&connection, &t.settings).await.unwrap();
    let messages: Vec<_> = bodies
        .iter()
        .map(|b| event(&t.topology.exchange, b))
        .collect();
    for result in publisher.publish_all(&messages).await {
        result.unwrap();
    }
    let _ = connection.close(200, "OK".into()).await;
}

#[tokio::test]
async fn a_confirmed_event_reaches_every_subscriber_and_an_unroutable_one_is_an_error() {
    let t = TestTopology::create().await;
    publish(&t, &["hello"]).await;
    for set in &t.topology.subscribers {
        let got = t.drain(&set.work).await;
        assert_eq!(got.len(), 1, "{}", set.work);
        let properties = &got[0].properties;
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert!(properties.message_id().is_some());
        let headers = properties.headers().as_ref().unwrap();
        assert!(headers.inner().contains_key("traceparent"));
    }

    let connection = platform_messaging::connect(&t.settings, "test-publisher")
        .await
        .unwrap();
    let publisher = Publisher::open(&connection, &t.settings).await.unwrap();
    let mut stray = event(&t.topology.exchange, "nobody listens");
    stray.routing_key = "comment.nobody".into();
    let results = publisher.publish_all(&[stray]).await;
    assert!(
        matches!(results[0], Err(PublishError::Unroutable(_))),
        "{results:?}"
    );
    assert!(!results[0].as_ref().unwrap_err().channel_is_broken());
    let _ = connection.close(200, "OK".into()).await;
}

/// RabbitMQ 3.10: no delivery limit unless set, and `basic.nack` with requeue counts as a
/// failed delivery (4.3 counts only `basic.reject`). With `x-delivery-limit` = 3 a message is
/// delivered 4 times, then dead-lettered to the parking queue with reason `delivery_limit`.
#[tokio::test]
async fn rabbitmq_parks_a_message_nacked_past_its_delivery_limit() {
    let t = TestTopology::create().await;
    let spam = t.topology.subscriber(SPAM).unwrap().clone();
    publish(&t, &["poison"]).await;

    let connection = platform_messaging::connect(&t.settings, "test-nacker")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut deliveries = 0;
    // Bounded: 4 deliveries, then polls (20 ms apart) until the dead-lettered copy lands.
    for _ in 0..250 {
        match channel
            .basic_get(spam.work.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            Some(message) => {
                deliveries += 1;
                assert!(
                    message
                        .delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                        .unwrap()
                );
            }
            None if t.ready(&spam.parking).await == 1 => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(deliveries, t.settings.amqp_delivery_limit + 1);
    let parked = t.drain(&spam.parking).await;
    assert_eq!(parked.len(), 1);
    let headers = parked[0].properties.headers().clone().unwrap();
    let reason = match headers.inner().get("x-first-death-reason") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("no death reason: {other:?}"),
    };
    assert_eq!(reason, "delivery_limit");
    let _ = connection.close(200, "OK".into()).await;
}

/// Fails every message whose body is `poison`; records the others.
#[derive(Default)]
struct Picky {
    handled: Mutex<Vec<String>>,
    poison_attempts: Mutex<Vec<u32>>,
}

impl MessageHandler for Picky {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandlerError> {
        let body = String::from_utf8_lossy(&message.body).into_owned();
        if body == "poison" {
            self.poison_attempts.lock().unwrap().push(message.attempt);
            return Err(HandlerError::Retry("poison always fails".into()));
        }
        self.handled.lock().unwrap().push(body);
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_message_is_retried_with_delay_then_parked_while_good_ones_flow() {
    let t = TestTopology::create().await;
    let spam = t.topology.subscriber(SPAM).unwrap().clone();
    let good: Vec<String> = (0..50).map(|n| format!("good {n}")).collect();
    let mut bodies: Vec<&str> = vec!["poison"];
    bodies.extend(good.iter().map(String::as_str));
    publish(&t, &bodies).await;

    let mut consumer = Consumer::new(
        t.settings.clone(),
        spam.clone(),
        "test",
        ConsumeMode::Push,
        10,
        Picky::default(),
    );
    let mut outcomes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        if let Some(outcome) = consumer
            .try_handle_one(Duration::from_millis(200))
            .await
            .unwrap()
        {
            outcomes.push(outcome);
        }
        let parked = outcomes.iter().any(|o| matches!(o, Outcome::Parked { .. }));
        let acked = outcomes.iter().filter(|o| **o == Outcome::Acked).count();
        if parked && acked == 50 {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
    };
    assert!(done, "{outcomes:?}");
    assert_eq!(
        *consumer.handler().poison_attempts.lock().unwrap(),
        [1, 2, 3]
    );
    assert!(outcomes.contains(&Outcome::Retried { next_attempt: 2 }));
    assert!(outcomes.contains(&Outcome::Retried { next_attempt: 3 }));
    let mut handled = consumer.handler().handled.lock().unwrap().clone();
    handled.sort();
    let mut expected = good.clone();
    expected.sort();
    assert_eq!(handled, expected, "every good message once");

    let parked = t.drain(&spam.parking).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].data, b"poison");
    let headers = parked[0].properties.headers().clone().unwrap();
    assert!(headers.inner().contains_key(PARKED_REASON_HEADER));
    assert_eq!(
        headers.inner().get(ATTEMPT_HEADER),
        Some(&AMQPValue::LongLongInt(3))
    );
    assert_eq!(t.ready(&spam.work).await, 0);
    assert_eq!(t.ready(&spam.retry).await, 0);
}

#[tokio::test]
async fn pull_mode_takes_messages_one_get_at_a_time() {
    let t = TestTopology::create().await;
    let spam = t.topology.subscriber(SPAM).unwrap().clone();
    publish(&t, &["one", "two"]).await;
    let mut consumer = Consumer::new(
        t.settings.clone(),
        spam.clone(),
        "test",
        ConsumeMode::Pull,
        1,
        Picky::default(),
    );
    for _ in 0..2 {
        let outcome = consumer
            .try_handle_one(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(outcome, Some(Outcome::Acked));
    }
    assert_eq!(
        consumer
            .try_handle_one(Duration::from_millis(100))
            .await
            .unwrap(),
        None
    );
    assert_eq!(consumer.handler().handled.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_message_without_a_uuid_message_id_is_parked_at_once() {
    let t = TestTopology::create().await;
    let spam = t.topology.subscriber(SPAM).unwrap().clone();
    let connection = platform_messaging::connect(&t.settings, "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            spam.work.as_str().into(),
            BasicPublishOptions::default(),
            b"anonymous",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut consumer = Consumer::new(
        t.settings.clone(),
        spam.clone(),
        "test",
        ConsumeMode::Push,
        1,
        Picky::default(),
    );
    let outcome = consumer
        .try_handle_one(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(outcome, Some(Outcome::Parked { .. })),
        "{outcome:?}"
    );
    assert!(consumer.handler().handled.lock().unwrap().is_empty());
    assert_eq!(t.drain(&spam.parking).await.len(), 1);
    let _ = connection.close(200, "OK".into()).await;
}

/// Finishes messages in bursts, as a worker whose effects commit in batches does: each waits for
/// the next tick of a shared gate, and the burst wakes in no particular order.
struct Bursty {
    inner: Picky,
    gate: std::sync::Arc<tokio::sync::Notify>,
}

impl MessageHandler for Bursty {
    async fn handle(&self, message: &IncomingMessage) -> Result<(), HandlerError> {
        self.gate.notified().await;
        self.inner.handle(message).await
    }
}

/// `run` acks with `multiple`: an ack covering a message settled on a retry, or one another
/// message's ack already covered, must neither lose nor repeat a message (a repeated ack of a
/// tag closes the channel, and every message held would come again).
#[tokio::test]
async fn run_coalesces_acks_and_settles_every_message_once() {
    let t = TestTopology::create().await;
    let spam = t.topology.subscriber(SPAM).unwrap().clone();
    let good: Vec<String> = (0..300).map(|n| format!("good {n}")).collect();
    let mut bodies: Vec<&str> = good.iter().map(String::as_str).collect();
    bodies.insert(150, "poison");
    publish(&t, &bodies).await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let ticker = tokio::spawn({
        let gate = gate.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                gate.notify_waiters();
            }
        }
    });

    let consumer = Consumer::new(
        t.settings.clone(),
        spam.clone(),
        "test",
        ConsumeMode::Push,
        64,
        Bursty {
            inner: Picky::default(),
            gate: gate.clone(),
        },
    );
    let stats = consumer.stats();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(consumer.run(stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (stats.acked.load(Ordering::Relaxed) < 300 || stats.parked.load(Ordering::Relaxed) < 1)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the consumer stops")
        .unwrap();
    ticker.abort();

    assert_eq!(stats.acked.load(Ordering::Relaxed), 300);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2);
    assert_eq!(stats.parked.load(Ordering::Relaxed), 1);
    assert_eq!(stats.ack_lost.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.connections.load(Ordering::Relaxed),
        1,
        "the channel never broke"
    );
    let frames = stats.ack_frames.load(Ordering::Relaxed);
    assert!(frames < 100, "{frames} ack frames for 303 settlements");
    // Nothing is left unacked: a message still held would be back in the queue now.
    assert_eq!(t.ready(&spam.work).await, 0);
    assert_eq!(t.ready(&spam.retry).await, 0);
    assert_eq!(t.drain(&spam.parking).await.len(), 1);
}
