//! W3C trace context (`traceparent`, `tracestate`) in and out of headers, so one trace follows
//! a request from the gateway through the services, the outbox and RabbitMQ to the workers.
//!
//! With trace export off, the propagator still reads and writes headers, but spans carry no
//! OpenTelemetry context, so nothing is injected and extraction is a no-op.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The trace context of `span` as header name/value pairs (empty when tracing is off).
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Map(&mut headers))
    });
    headers
}

/// The W3C headers, by lower-case name.
const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The remote context carried by headers that `get` looks up (by lower-case name).
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    let carrier: HashMap<String, String> = HEADERS
        .iter()
        .filter_map(|name| get(name).map(|v| ((*name).to_owned(), v.to_owned())))
        .collect();
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier))
}

/// Makes `span` a child of the remote context in the headers, if they carry a valid one.
pub fn set_remote_parent<'a>(span: &tracing::Span, get: impl Fn(&str) -> Option<&'a str>) {
    let cx = extract(get);
    if cx.span().span_context().is_valid() {
        // Fails only when the span is already closed; a fresh span never is.
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the remote context in the headers instead of parenting it: for work that
/// a request caused but that runs on its own time (a worker handling a message).
pub fn add_remote_link<'a>(span: &tracing::Span, get: impl Fn(&str) -> Option<&'a str>) {
    let cx = extract(get);
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

/// Renames the exported span of `span`, for names known only once work is under way (an HTTP
/// span is named after its route, which routing decides). A no-op when tracing is off.
pub fn rename(span: &tracing::Span, name: String) {
    let cx = span.context();
    let otel = cx.span();
    if otel.span_context().is_valid() {
        otel.update_name(name);
    }
}

/// The trace and span ids of `span` as hex, when it is being traced.
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_context_injected_into_headers_is_the_parent_on_the_other_side() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(crate::otel_layer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("publish");
            let headers = inject(&sender);
            let traceparent = headers.get("traceparent").expect("a traceparent");
            let (trace_id, _) = ids(&sender).unwrap();
            assert!(traceparent.contains(&trace_id));

            let receiver = tracing::info_span!("consume");
            set_remote_parent(&receiver, |k| headers.get(k).map(String::as_str));
            assert_eq!(ids(&receiver).unwrap().0, trace_id);
        });
    }

    #[test]
    fn without_tracing_nothing_is_injected() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("plain");
            assert!(inject(&span).is_empty());
            assert!(ids(&span).is_none());
        });
    }
}
