//! The one place where scaleout processes build their telemetry: JSON logs, and OpenTelemetry
//! traces over OTLP when configured.
//!
//! Every binary calls [`init`] first thing in `main` and keeps the returned [`Telemetry`] alive
//! until it exits (dropping it flushes the spans still buffered). Tests call
//! [`init_for_tests`], which prints only when `TEST_LOG` is set.
//!
//! Tracing follows the standard OpenTelemetry variables: it is on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans go
//! there over OTLP/HTTP, `OTEL_SERVICE_NAME` overrides the service name and
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` choose the sampler. With neither endpoint set
//! no OpenTelemetry layer is installed at all, so tracing costs nothing.
//!
//! # Filtering
//! Each layer filters on its own. The JSON log layer keeps `RUST_LOG` (default `info`). The
//! OpenTelemetry layer takes the same filter plus every span carrying `db.system.name`: the
//! DEBUG-level database client spans of `platform_db::client_span` and
//! `platform_redis::client_span`, one per Postgres query or Redis command. They are DEBUG so
//! that, with no OpenTelemetry layer, no filter enables them: the `debug_span!` macro then
//! stops at its level check and creates nothing.
//!
//! # Layout
//! - [`init`], [`subscriber`], [`Telemetry`]: building and installing the subscriber.
//! - [`propagation`]: W3C trace context in and out of HTTP headers and message headers.

pub mod propagation;

use std::io;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Keeps the tracer provider alive; dropping it flushes and shuts down the exporter.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {e}");
        }
    }
}

/// Whether the environment asks for trace export.
pub fn export_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// A tracer provider exporting over OTLP/HTTP, named `service` unless `OTEL_SERVICE_NAME` says
/// otherwise.
fn otlp_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The layer that turns tracing spans into OpenTelemetry spans of `tracer`.
pub fn otel_layer<S>(tracer: SdkTracer) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
}

/// The field that marks a database client span (OpenTelemetry's `db.system.name`).
const DB_CLIENT_SPAN_FIELD: &str = "db.system.name";

/// `RUST_LOG`, or `default_filter` when it is unset or invalid.
fn log_filter(default_filter: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
}

/// What the OpenTelemetry layer records: what the logs record (see [`log_filter`]), plus the
/// database client spans, which are DEBUG so that nothing else enables them.
fn otel_filter<S>(default_filter: &str) -> impl Filter<S> + Send + Sync + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // A decision on metadata alone, so it is cached per callsite, not made per span. The level
    // check keeps the filter true to its hint should a TRACE span ever carry the field.
    let db_client_spans = filter_fn(|meta| {
        meta.is_span()
            && *meta.level() <= LevelFilter::DEBUG
            && meta.fields().field(DB_CLIENT_SPAN_FIELD).is_some()
    })
    .with_max_level_hint(LevelFilter::DEBUG);
    log_filter(default_filter).or(db_client_spans)
}

/// A subscriber writing one JSON object per event to `sink`, filtered by `RUST_LOG` (or
/// `default_filter` when unset), with the fields of the enclosing spans (the request id and,
/// when tracing, the trace id) on every line; plus `otel`, the OpenTelemetry layer, if any,
/// which also records the database client spans (see the crate docs, "Filtering").
///
/// With `otel` `None`, nothing below `default_filter`'s level is enabled anywhere, so DEBUG
/// spans and events cost a level check.
pub fn subscriber<W, L>(
    default_filter: &str,
    sink: W,
    otel: Option<L>,
) -> impl Subscriber + Send + Sync + use<W, L>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    L: Layer<Registry> + Send + Sync,
{
    let otel = otel.map(|layer| layer.with_filter(otel_filter(default_filter)));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(true)
        .with_writer(sink)
        .with_filter(log_filter(default_filter));
    Registry::default().with(otel).with(json)
}

/// Installs the subscriber for a process named `service`: JSON logs to stdout, and trace export
/// when the OpenTelemetry variables ask for it.
///
/// # Panics
/// If a global subscriber is already installed: that is a programming error in `main`.
pub fn init(service: &'static str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = if export_configured() {
        match otlp_provider(service) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("{service}: trace export disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| otel_layer(p.tracer(service)));
    tracing::subscriber::set_global_default(subscriber("info", io::stdout, otel))
        .expect("the tracing subscriber is installed once, by main");
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    tracing::info!(message = "Starting.", service, tracing = provider.is_some());
    Telemetry { provider }
}

/// Installs a subscriber for tests: to stdout if `TEST_LOG` is set, else nowhere. Safe to call
/// from every test; only the first call installs it.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let none: Option<tracing_subscriber::layer::Identity> = None;
        let result = if std::env::var_os("TEST_LOG").is_some() {
            tracing::subscriber::set_global_default(subscriber("info", io::stdout, none))
        } else {
            tracing::subscriber::set_global_default(subscriber("info", io::sink, none))
        };
        // Another harness may have installed one already; its output is as good as ours.
        let _ = result;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_one_json_object_per_line_with_span_fields() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let none: Option<tracing_subscriber::layer::Identity> = None;
        let subscriber = subscriber("info", move || sink.clone(), none);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "r-1");
            let _entered = span.enter();
            tracing::info!(message = "Handled.", status = 200);
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line = out.lines().next().expect("one line");
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains(r#""message":"Handled.""#), "{line}");
        assert!(line.contains(r#""status":200"#), "{line}");
        assert!(line.contains(r#""request_id":"r-1""#), "{line}");
    }

    /// A span shaped like `platform_db::client_span`'s (this crate cannot depend on it).
    fn db_client_span() -> tracing::Span {
        tracing::debug_span!(
            "db.client",
            otel.name = "SELECT posts",
            otel.kind = "client",
            db.system.name = "postgresql",
        )
    }

    #[test]
    fn without_an_otel_layer_client_spans_are_disabled_and_logs_still_work() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let none: Option<tracing_subscriber::layer::Identity> = None;
        let subscriber = subscriber("info", move || sink.clone(), none);
        // What lets `debug_span!` stop at its level check in a process with this subscriber.
        assert_eq!(subscriber.max_level_hint(), Some(LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, || {
            let span = db_client_span();
            assert!(span.is_disabled());
            let _entered = span.enter();
            tracing::info!(message = "Still logged.");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains(r#""message":"Still logged.""#), "{out}");
        assert!(!out.contains("db.client"), "{out}");
    }

    #[test]
    fn with_an_otel_layer_client_spans_are_exported_but_not_logged() {
        use opentelemetry_sdk::trace::InMemorySpanExporter;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let otel = otel_layer(provider.tracer("test"));
        let subscriber = subscriber("info", move || sink.clone(), Some(otel));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "r-1");
            let _request = request.enter();
            let span = db_client_span();
            assert!(!span.is_disabled());
            let _entered = span.enter();
            // Other DEBUG spans and events stay off, for both layers.
            assert!(tracing::debug_span!("other").is_disabled());
            tracing::info!(message = "Logged inside the client span.");
        });
        let spans = exporter.get_finished_spans().unwrap();
        let client = spans
            .iter()
            .find(|s| s.name == "SELECT posts")
            .expect("the client span is exported");
        assert_eq!(client.span_kind, opentelemetry::trace::SpanKind::Client);
        let request = spans.iter().find(|s| s.name == "request").unwrap();
        assert_eq!(client.parent_span_id, request.span_context.span_id());
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains(r#""request_id":"r-1""#), "{out}");
        assert!(
            !out.contains("db.client"),
            "the log's span list leaves it out: {out}"
        );
    }
}
