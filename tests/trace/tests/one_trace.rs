//! One comment, one trace: the gateway's span, the mobile API's request span, the relay's
//! publish span and both workers' consume spans share a trace id, each the child of the hop
//! before it, with the Redis and Postgres client spans under the request and the workers.
//! Every process runs in this test, with an in-memory span exporter installed as the binaries
//! install the OTLP one (the same subscriber, so the same filters).

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use trace_tests::Stack;

fn install_in_memory_tracing() -> InMemorySpanExporter {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // Global, not scoped: the API's actix workers run on threads of their own.
    let otel = platform_telemetry::otel_layer(provider.tracer("e2e"));
    let subscriber = platform_telemetry::subscriber("info", std::io::sink, Some(otel));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    exporter
}

fn parent_of<'a>(spans: &'a [SpanData], child: &SpanData) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.span_context.span_id() == child.parent_span_id)
}

/// Whether `span` is `ancestor` or below it.
fn descends_from(spans: &[SpanData], span: &SpanData, ancestor: &SpanData) -> bool {
    let mut current = Some(span);
    while let Some(s) = current {
        if s.span_context.span_id() == ancestor.span_context.span_id() {
            return true;
        }
        current = parent_of(spans, s);
    }
    false
}

/// The database client spans of `system` ("redis", "postgresql") below `ancestor`.
fn client_spans_below<'a>(
    spans: &'a [SpanData],
    ancestor: &SpanData,
    system: &str,
) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| {
            s.span_kind == SpanKind::Client
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "db.system.name" && kv.value.as_str() == system)
                && descends_from(spans, s, ancestor)
        })
        .collect()
}

#[tokio::test]
async fn a_comment_is_one_trace_from_the_gateway_to_both_workers() {
    let exporter = install_in_memory_tracing();
    let mut stack = Stack::start().await;
    stack
        .comment_on_a_new_post("What a lovely post, thank you!")
        .await;
    stack.stop_gateway();

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

    // The API's request span, and the Redis and Postgres round trips made while serving it.
    let request = in_trace
        .iter()
        .find(|s| s.span_kind == SpanKind::Server && s.name == "POST /api/v1/posts/{id}/comments")
        .unwrap_or_else(|| panic!("the API's request span in {names:?}"));
    let redis: Vec<String> = client_spans_below(&spans, request, "redis")
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert!(
        redis.iter().any(|n| n == "GETEX"),
        "the session lookup is a Redis client span under the request: {redis:?}"
    );
    let postgres: Vec<String> = client_spans_below(&spans, request, "postgresql")
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert!(
        postgres.iter().any(|n| n == "INSERT comments"),
        "the comment insert is a Postgres client span under the request: {postgres:?}"
    );

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
        let verdict_writes: Vec<_> = client_spans_below(&spans, consume, "postgresql")
            .into_iter()
            .map(|s| s.name.to_string())
            .collect();
        assert!(
            verdict_writes.iter().any(|n| n == "UPDATE comments"),
            "a worker writes its verdict under its consume span: {verdict_writes:?}"
        );
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
