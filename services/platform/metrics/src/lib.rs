//! Prometheus metrics for scaleout services and workers: the registry, `GET /metrics`, and
//! per-route HTTP request metrics.
//!
//! Metrics that already live elsewhere as atomics (cache hit counters, replica lag, outbox
//! backlog) are not copied into a second set of counters: a process registers a [`collector`]
//! closure that reads them when Prometheus scrapes, so the numbers have one source.
//!
//! # Layout
//! - [`Metrics`]: the registry, built once at start.
//! - [`HttpMetrics`] and [`track_requests`]: request counts and latency per route.
//! - [`collector`] and [`Snapshot`]: scrape-time metrics from a closure.
//! - [`configure`]: mounts `GET /metrics`.
//! - [`platform`]: collectors for the platform's cache and database.
//! - [`scrape`]: the text format read back, for tests and tools.

pub mod platform;
pub mod scrape;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, web};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The media type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s, doubling.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Request counts by method, route and status, and latency by method and route.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

/// The registry of one process. Build it at start ([`Metrics::new`], then
/// [`Metrics::register_collector`] as needed), then share it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http: HttpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the HTTP request metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests handled, by method, route and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to handle an HTTP request, by method and route",
            http.duration.clone(),
        );
        Self { registry, http }
    }

    /// The HTTP metrics, for [`track_requests`].
    pub fn http(&self) -> HttpMetrics {
        self.http.clone()
    }

    /// The underlying registry, to register further metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Adds metrics read at scrape time; see [`collector`].
    pub fn register_collector(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// Everything registered, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Counts and times each request under its route pattern (`/posts/{id}`, not `/posts/7`), so
/// the number of series stays bounded whatever clients request.
pub async fn track_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let metrics = req.app_data::<web::Data<HttpMetrics>>().cloned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.call(req).await?;
    if let Some(metrics) = metrics {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        metrics
            .duration
            .get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: res.status().as_u16(),
            })
            .inc();
    }
    Ok(res)
}

/// Mounts `GET /metrics` and makes the HTTP metrics available to [`track_requests`].
pub fn configure(cfg: &mut web::ServiceConfig, metrics: Arc<Metrics>) {
    cfg.app_data(web::Data::new(metrics.http()))
        .app_data(web::Data::from(metrics))
        .route("/metrics", web::get().to(scrape));
}

async fn scrape(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .insert_header(("cache-control", "no-store"))
        .body(metrics.render())
}

/// One metric family read at scrape time.
struct SnapshotFamily {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// What a [`collector`] closure fills in on each scrape.
#[derive(Default)]
pub struct Snapshot {
    families: Vec<SnapshotFamily>,
}

impl Snapshot {
    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        counter: bool,
    ) -> &mut SnapshotFamily {
        if let Some(i) = self.families.iter().position(|f| f.name == name) {
            return &mut self.families[i];
        }
        self.families.push(SnapshotFamily {
            name,
            help,
            counter,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }

    /// A counter sample (`_total` is appended to `name`).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.family(name, help, true)
            .samples
            .push((labels, value as f64));
    }

    /// A gauge sample.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.family(name, help, false).samples.push((labels, value));
    }
}

struct FnCollector<F>(F);

impl<F> std::fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut Snapshot) + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut snapshot = Snapshot::default();
        (self.0)(&mut snapshot);
        for family in &snapshot.families {
            let kind = if family.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                if family.counter {
                    ConstCounter::new(*value as u64).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

/// A collector whose metrics `fill` writes into a [`Snapshot`] on every scrape.
pub fn collector(fill: impl Fn(&mut Snapshot) + Send + Sync + 'static) -> impl Collector {
    FnCollector(fill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{App, test};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[actix_web::test]
    async fn requests_are_counted_per_route_pattern_and_collectors_are_read_at_scrape() {
        let hits = Arc::new(AtomicU64::new(0));
        let mut metrics = Metrics::new();
        let read = hits.clone();
        metrics.register_collector(collector(move |s| {
            s.counter(
                "cache_hits",
                "Cache hits",
                &[("kind", "post")],
                read.load(Ordering::Relaxed),
            );
            s.gauge(
                "replica_lag_seconds",
                "Replica lag",
                &[("replica", "r1")],
                0.25,
            );
        }));
        let metrics = Arc::new(metrics);
        let app = test::init_service(
            App::new()
                .configure(|c| configure(c, metrics.clone()))
                .route("/posts/{id}", web::get().to(HttpResponse::Ok))
                .wrap(from_fn(track_requests)),
        )
        .await;
        for id in [1, 2] {
            let req = test::TestRequest::get()
                .uri(&format!("/posts/{id}"))
                .to_request();
            test::call_service(&app, req).await;
        }
        hits.store(7, Ordering::Relaxed);
        let req = test::TestRequest::get().uri("/metrics").to_request();
        let body = test::call_and_read_body(&app, req).await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/posts/{id}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(
            text.contains(r#"cache_hits_total{kind="post"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"replica_lag_seconds{replica="r1"} 0.25"#),
            "{text}"
        );
    }
}
