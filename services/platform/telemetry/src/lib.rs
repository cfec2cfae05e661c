//! The one place where scaleout processes build their tracing subscriber: structured JSON logs.
//!
//! Every binary calls [`init`] first thing in `main`; tests call [`init_for_tests`], which prints
//! only when `TEST_LOG` is set. Keeping the subscriber's construction here means exporters (such
//! as OpenTelemetry) are added once for every process.

use std::io;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry};

/// A subscriber writing one JSON object per event to `sink`, filtered by `RUST_LOG` (or
/// `default_filter` when unset), with the fields of the current span on every line.
pub fn subscriber<W>(default_filter: &str, sink: W) -> impl Subscriber + Send + Sync + use<W>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(sink);
    Registry::default().with(filter).with(json)
}

/// Installs the JSON subscriber for a process named `service`, logging to stdout.
///
/// # Panics
/// If a global subscriber is already installed: that is a programming error in `main`.
pub fn init(service: &'static str) {
    tracing::subscriber::set_global_default(subscriber("info", io::stdout))
        .expect("the tracing subscriber is installed once, by main");
    tracing::info!(message = "Starting.", service);
}

/// Installs a subscriber for tests: to stdout if `TEST_LOG` is set, else nowhere. Safe to call
/// from every test; only the first call installs it.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let result = if std::env::var_os("TEST_LOG").is_some() {
            tracing::subscriber::set_global_default(subscriber("info", io::stdout))
        } else {
            tracing::subscriber::set_global_default(subscriber("info", io::sink))
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
        let subscriber = subscriber("info", move || sink.clone());
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
}
