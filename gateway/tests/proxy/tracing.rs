//! Request tracing with an OpenTelemetry layer installed by the test (an in-memory exporter), as
//! `platform_telemetry::init` installs one in the binary when an OTLP endpoint is set.

use std::time::Duration;

use gateway::{Config, Gateway};
use hyper::Method;
use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::*;

/// Exports spans to memory for as long as the guard lives, on the test's thread (the test
/// runtime runs the gateway and the stubs on that thread too).
fn in_memory_tracing() -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(platform_telemetry::otel_layer(provider.tracer("gateway")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

async fn traced_gateway(stub: &Stub) -> TestGateway {
    let toml = format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"least_connections\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[stub])
    );
    let gateway = Gateway::build(Config::parse(&toml).unwrap())
        .await
        .unwrap()
        .with_tracing(true);
    TestGateway::start_with(gateway)
}

async fn gateway_span(exporter: &InMemorySpanExporter) -> SpanData {
    let mut found = None;
    eventually(Duration::from_secs(5), "the gateway's span", || {
        found = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| s.span_kind == SpanKind::Server);
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.unwrap()
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// The (trace id, parent id) of a `traceparent` value.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn with_tracing_on_the_gateway_span_continues_the_clients_trace_and_parents_the_backends() {
    let (exporter, _tracing) = in_memory_tracing();
    let a = Stub::start("a").await;
    let gw = traced_gateway(&a).await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = TestClient::new()
        .send(
            Method::GET,
            &gw.url("/posts/7"),
            &[(
                "traceparent",
                &format!("00-{client_trace}-{client_span}-01"),
            )],
            "",
        )
        .await;
    assert_eq!(r.status, 200);

    let span = gateway_span(&exporter).await;
    assert_eq!(span.span_context.trace_id().to_string(), client_trace);
    assert_eq!(span.parent_span_id.to_string(), client_span);
    assert_eq!(span.name, "GET");
    assert_eq!(attribute(&span, "http.request.method"), Some("GET".into()));
    assert_eq!(attribute(&span, "url.path"), Some("/posts/7".into()));
    assert_eq!(
        attribute(&span, "http.response.status_code"),
        Some(Value::I64(200))
    );
    assert_eq!(attribute(&span, "scaleout.upstream"), Some("web".into()));
    assert_eq!(
        attribute(&span, "scaleout.policy"),
        Some("least_connections".into())
    );
    assert_eq!(
        attribute(&span, "scaleout.backend"),
        Some(a.addr.to_string().into())
    );
    assert_eq!(
        attribute(&span, "server.address"),
        Some(gw.addr.ip().to_string().into())
    );

    let sent = a.last_headers();
    let (trace, parent) = parse_traceparent(sent["traceparent"].to_str().unwrap());
    assert_eq!(
        trace, client_trace,
        "the backend stays in the client's trace"
    );
    assert_eq!(
        parent,
        span.span_context.span_id().to_string(),
        "the backend's parent is the gateway's span, not the client's"
    );
}

#[tokio::test]
async fn with_tracing_on_a_request_without_traceparent_starts_a_trace_that_the_backend_joins() {
    let (exporter, _tracing) = in_memory_tracing();
    let a = Stub::start("a").await;
    let gw = traced_gateway(&a).await;
    let r = TestClient::new().get(&gw.url("/")).await;
    assert_eq!(r.status, 200);

    let span = gateway_span(&exporter).await;
    assert!(span.span_context.is_valid());
    let sent = a.last_headers();
    let (trace, parent) = parse_traceparent(sent["traceparent"].to_str().unwrap());
    assert_eq!(trace, span.span_context.trace_id().to_string());
    assert_eq!(parent, span.span_context.span_id().to_string());
}

#[tokio::test]
async fn with_tracing_on_an_answer_of_the_gateway_itself_is_an_error_span_with_its_status() {
    let (exporter, _tracing) = in_memory_tracing();
    let dead = closed_port().await;
    let toml = format!(
        "{LISTEN}[retry]\nenabled = false\n[[upstreams]]\nname = \"web\"\nbackends = [{{ addr = \"{dead}\" }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n"
    );
    let gateway = Gateway::build(Config::parse(&toml).unwrap())
        .await
        .unwrap()
        .with_tracing(true);
    let gw = TestGateway::start_with(gateway);
    let r = TestClient::new().get(&gw.url("/")).await;
    assert_eq!(r.status, 502);

    let span = gateway_span(&exporter).await;
    assert_eq!(
        attribute(&span, "http.response.status_code"),
        Some(Value::I64(502))
    );
    assert!(
        matches!(span.status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        span.status
    );
}
