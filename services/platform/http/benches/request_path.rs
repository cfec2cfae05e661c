//! What the request span costs on every request, with trace export off and on.
//!
//! `cargo bench -p platform-http --bench request_path` drives a trivial handler through actix's
//! service stack in one thread, with no network, so the differences between the rows are the
//! middleware and the subscriber alone:
//!
//! - `bare`: the handler, no middleware;
//! - `span, no subscriber`: `request_span` with nothing listening;
//! - `span + JSON log, export unset`: what a service runs without `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (the log line goes to a sink instead of stdout);
//! - `span + JSON log + OpenTelemetry`: the same with the OpenTelemetry layer recording every
//!   span (into a provider with no exporter, so export itself is not measured).
//!
//! Rounds are interleaved; the table shows each row's median time per request over the rounds.
//! `BENCH_REQUESTS` (default 20000) and `BENCH_ROUNDS` (default 5) size the run.

use std::io;
use std::time::Instant;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, test, web};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use platform_http::middleware::request_span;
use tracing::Dispatch;
use tracing_subscriber::layer::Identity;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A row of the table: its name, the app, and the subscriber to build for each round.
type Row = (&'static str, Stack, Box<dyn Fn() -> Dispatch>);

#[derive(Clone, Copy)]
enum Stack {
    Bare,
    Span,
}

/// Sends `requests` GETs carrying a `traceparent` through `app`; the elapsed nanoseconds.
macro_rules! time {
    ($app:expr, $requests:expr) => {{
        let started = Instant::now();
        for _ in 0..$requests {
            let req = test::TestRequest::get()
                .uri("/posts/42")
                .insert_header(("traceparent", TRACEPARENT))
                .to_request();
            let res = test::call_service(&$app, req).await;
            assert!(res.status().is_success());
        }
        started.elapsed().as_nanos() as f64
    }};
}

/// Nanoseconds per request for `requests` requests through the app.
fn run(stack: Stack, dispatch: Dispatch, requests: u32) -> f64 {
    tracing::dispatcher::with_default(&dispatch, || {
        actix_web::rt::System::new().block_on(async move {
            let handler = || web::get().to(|| async { HttpResponse::Ok().body("ok") });
            let elapsed = match stack {
                Stack::Span => {
                    let app = test::init_service(
                        App::new()
                            .wrap(from_fn(request_span))
                            .route("/posts/{id}", handler()),
                    )
                    .await;
                    time!(app, requests)
                }
                Stack::Bare => {
                    let app = test::init_service(App::new().route("/posts/{id}", handler())).await;
                    time!(app, requests)
                }
            };
            elapsed / f64::from(requests)
        })
    })
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let requests = env_or("BENCH_REQUESTS", 20_000);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let provider = SdkTracerProvider::builder().build();
    let rows: Vec<Row> = vec![
        ("bare", Stack::Bare, Box::new(Dispatch::none)),
        ("span, no subscriber", Stack::Span, Box::new(Dispatch::none)),
        (
            "span + JSON log, export unset",
            Stack::Span,
            Box::new(move || {
                let none: Option<Identity> = None;
                Dispatch::new(platform_telemetry::subscriber("info", io::sink, none))
            }),
        ),
        (
            "span + JSON log + OpenTelemetry",
            Stack::Span,
            Box::new(move || {
                let otel = platform_telemetry::otel_layer(provider.tracer("bench"));
                Dispatch::new(platform_telemetry::subscriber("info", io::sink, Some(otel)))
            }),
        ),
    ];
    // One warm-up pass, then interleaved rounds.
    for (_, stack, dispatch) in &rows {
        run(*stack, dispatch(), requests / 10);
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for _ in 0..rounds {
        for (i, (_, stack, dispatch)) in rows.iter().enumerate() {
            samples[i].push(run(*stack, dispatch(), requests));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare = median(&mut samples[0].clone());
    println!("{requests} requests x {rounds} rounds, median per request\n");
    println!("| stack | µs per request | over bare (µs) |");
    println!("|---|---:|---:|");
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let m = median(&mut samples[i]);
        println!(
            "| {name} | {:.2} | {:+.2} |",
            m / 1000.0,
            (m - bare) / 1000.0
        );
    }
}
