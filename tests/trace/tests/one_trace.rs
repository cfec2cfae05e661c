//! One comment, one trace: the gateway's span, the mobile API's request span, the relay's
//! publish span and both workers' consume spans share a trace id, each the child of the hop
//! before it. Every process runs in this test, with an in-memory span exporter installed as the
//! binaries install the OTLP one.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use platform_messaging::test_support::TestTopology;
use platform_messaging::topology::{SENTIMENT, SPAM};
use platform_messaging::{ConsumeMode, Consumer, Outcome};
use platform_redis::Redis;
use platform_testing::{TestDatabase, TestRedis};
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;
use workers::classifier::SpamModel;
use workers::sentiment::Sentiment;
use workers::{
    DEFAULT_SPAM_THRESHOLD, SENTIMENT_CONSUMER, SPAM_CONSUMER, SentimentHandler, SpamHandler,
};

fn install_in_memory_tracing() -> InMemorySpanExporter {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // Global, not scoped: the API's actix workers run on threads of their own.
    let subscriber =
        tracing_subscriber::registry().with(platform_telemetry::otel_layer(provider.tracer("e2e")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    exporter
}

async fn call(client: &reqwest::Client, url: String, body: Value, token: Option<&str>) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the gateway answers");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap_or(Value::Null)
}

fn parent_of<'a>(spans: &'a [SpanData], child: &SpanData) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.span_context.span_id() == child.parent_span_id)
}

#[tokio::test]
async fn a_comment_is_one_trace_from_the_gateway_to_both_workers() {
    let exporter = install_in_memory_tracing();
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let topology = TestTopology::create().await;

    // The mobile API, on a free port.
    let mut settings = mobile::configuration::Settings::default();
    settings.http.bind = "127.0.0.1:0".into();
    settings.http.http_workers = 1;
    settings.db = db.settings.clone();
    settings.redis = redis.settings.clone();
    settings.run_migrations = false;
    let api = mobile::startup::Application::build(settings).await.unwrap();
    let api_port = api.port();
    tokio::spawn(api.run_until_stopped());

    // The gateway in front of it, tracing.
    let config = gateway::Config::parse(&format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[upstreams]]\nname = \"mobile\"\npolicy = \"round_robin\"\n\
         backends = [{{ addr = \"127.0.0.1:{api_port}\" }}]\n\
         [[routes]]\ndefault = true\nupstream = \"mobile\"\n"
    ))
    .unwrap();
    let gateway = gateway::Gateway::build(config)
        .await
        .unwrap()
        .with_tracing(true);
    let base = format!("http://{}/api/v1", gateway.local_addr());
    let (stop_gateway, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));

    // A user comments, through the gateway.
    let client = reqwest::Client::new();
    let credentials = json!({ "username": "ada", "password": "correct horse battery" });
    call(
        &client,
        format!("{base}/auth/register"),
        credentials.clone(),
        None,
    )
    .await;
    let token = call(&client, format!("{base}/auth/login"), credentials, None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = call(
        &client,
        format!("{base}/posts"),
        json!({ "title": "Traced", "body": "A post." }),
        Some(&token),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let comment = call(
        &client,
        format!("{base}/posts/{post}/comments"),
        json!({ "body": "What a lovely post, thank you!" }),
        Some(&token),
    )
    .await;
    assert_eq!(comment["status"], "pending");

    // The relay publishes it; each worker handles its copy.
    let mut relay = relay::Relay::new(
        db.pool.clone(),
        relay::Settings {
            db: db.settings.clone(),
            amqp: topology.settings.clone(),
            run_migrations: false,
            ..relay::Settings::default()
        },
    );
    assert_eq!(relay.relay_batch().await.unwrap().claimed, 1);
    let store = || {
        domain::store::Store::connect(
            &db.settings,
            Redis::connect(&redis.settings).unwrap(),
            &platform_cache::CacheSettings::default(),
        )
        .unwrap()
    };
    let mut spam = Consumer::new(
        topology.settings.clone(),
        topology.topology.subscriber(SPAM).unwrap().clone(),
        SPAM_CONSUMER,
        ConsumeMode::Pull,
        1,
        SpamHandler::new(
            store(),
            Arc::new(SpamModel::embedded()),
            DEFAULT_SPAM_THRESHOLD,
        ),
    );
    let mut sentiment = Consumer::new(
        topology.settings.clone(),
        topology.topology.subscriber(SENTIMENT).unwrap().clone(),
        SENTIMENT_CONSUMER,
        ConsumeMode::Pull,
        1,
        SentimentHandler::new(store(), Arc::new(Sentiment::default())),
    );
    for consumer_outcome in [
        spam.try_handle_one(Duration::from_secs(10)).await.unwrap(),
        sentiment
            .try_handle_one(Duration::from_secs(10))
            .await
            .unwrap(),
    ] {
        assert_eq!(consumer_outcome, Some(Outcome::Acked));
    }
    let _ = stop_gateway.send(());

    // The spans: find the comment's request at the gateway, then walk the chain from each
    // worker back to it.
    let spans = exporter.get_finished_spans().unwrap();
    let gateway_span = spans
        .iter()
        .find(|s| {
            s.span_kind == SpanKind::Server
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "url.path" && kv.value.as_str().ends_with("/comments")
                })
                && s.parent_span_id == SpanId::INVALID
        })
        .expect("the gateway's span of the comment request");
    let trace: TraceId = gateway_span.span_context.trace_id();
    let in_trace: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let names: Vec<String> = in_trace.iter().map(|s| s.name.to_string()).collect();

    let consumes: Vec<&&SpanData> = in_trace.iter().filter(|s| s.name == "consume").collect();
    assert_eq!(
        consumes.len(),
        2,
        "one consume span per worker in {names:?}"
    );
    for consume in consumes {
        assert_eq!(consume.span_kind, SpanKind::Consumer);
        let publish = parent_of(&spans, consume).expect("the consume span's parent");
        assert_eq!(
            publish.name, "publish",
            "a worker's parent is the relay's publish"
        );
        assert_eq!(publish.span_kind, SpanKind::Producer);
        let request = parent_of(&spans, publish).expect("the publish span's parent");
        assert_eq!(
            request.name, "POST /api/v1/posts/{id}/comments",
            "the relay's parent is the API's request span"
        );
        let edge = parent_of(&spans, request).expect("the request span's parent");
        assert_eq!(
            edge.span_context.span_id(),
            gateway_span.span_context.span_id(),
            "the API's parent is the gateway's span"
        );
    }
}
