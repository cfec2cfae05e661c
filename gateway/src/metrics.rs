//! Prometheus metrics: lock-free counters on the request path, rendered as text on scrape.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::upstream::Upstream;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket latency histogram built from atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; summed on render).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, c) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Answers the gateway produced itself (errors, limits), by status.
#[derive(Debug)]
pub struct LocalResponses {
    /// Index is `status - 400`.
    by_status: [AtomicU64; 200],
}

impl Default for LocalResponses {
    fn default() -> Self {
        Self {
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LocalResponses {
    /// Counts one answer.
    pub fn record(&self, status: u16) {
        if let Some(c) = self.by_status.get(usize::from(status).wrapping_sub(400)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many answers with this status.
    pub fn get(&self, status: u16) -> u64 {
        self.by_status
            .get(usize::from(status).wrapping_sub(400))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Renders everything in the Prometheus text format.
pub fn render(upstreams: &[Arc<Upstream>], local: &LocalResponses) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(
        "# HELP gateway_requests_total Responses from backends, by upstream, backend and status code.\n# TYPE gateway_requests_total counter\n",
    );
    for u in upstreams {
        for b in &u.backends().backends {
            for (status, n) in b.responses() {
                let _ = writeln!(
                    out,
                    "gateway_requests_total{{upstream=\"{}\",backend=\"{}\",status=\"{status}\"}} {n}",
                    u.name, b.addr_text
                );
            }
        }
    }
    type Read = fn(&crate::upstream::Backend) -> u64;
    let gauges: [(&str, &str, &str, Read); 4] = [
        (
            "gateway_backend_attempts_total",
            "counter",
            "Requests and TCP connections sent to a backend, retries included.",
            |b| b.requests_total(),
        ),
        (
            "gateway_backend_failures_total",
            "counter",
            "Connect errors, resets, timeouts and 5xx answers of a backend.",
            |b| b.failures_total(),
        ),
        (
            "gateway_backend_in_flight",
            "gauge",
            "Requests and TCP connections in flight on a backend.",
            |b| b.in_flight(),
        ),
        (
            "gateway_backend_healthy",
            "gauge",
            "1 when a backend is in rotation by health, 0 when ejected.",
            |b| u64::from(b.is_healthy()),
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for u in upstreams {
            for b in &u.backends().backends {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                    u.name,
                    b.addr_text,
                    value(b)
                );
            }
        }
    }
    out.push_str(
        "# HELP gateway_request_duration_seconds Time from choosing a backend to its response headers.\n# TYPE gateway_request_duration_seconds histogram\n",
    );
    for u in upstreams {
        u.latency.render(
            &mut out,
            "gateway_request_duration_seconds",
            &format!("upstream=\"{}\"", u.name),
        );
    }
    out.push_str(
        "# HELP gateway_local_responses_total Answers made by the gateway itself (limits, routing, upstream failures).\n# TYPE gateway_local_responses_total counter\n",
    );
    for status in 400..600u16 {
        let n = local.get(status);
        if n > 0 {
            let _ = writeln!(
                out,
                "gateway_local_responses_total{{status=\"{status}\"}} {n}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.render(&mut out, "x", "u=\"a\"");
        assert!(out.contains("x_bucket{u=\"a\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{u=\"a\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_count{u=\"a\"} 2\n"), "{out}");
    }
}
