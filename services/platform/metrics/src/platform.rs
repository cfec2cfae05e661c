//! Scrape-time collectors for the platform's own counters: the application cache per kind, and
//! which database pool served reads, with each replica's health and lag.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use platform_cache::Cache;
use platform_db::Database;

use crate::{Snapshot, collector};

/// `cache_hits_total`, `cache_misses_total`, `cache_errors_total` and
/// `cache_lookup_seconds_{sum,count}` per kind, plus `cache_circuit_closed`.
pub fn cache(cache: Cache) -> impl prometheus_client::collector::Collector {
    collector(move |s: &mut Snapshot| {
        for kind in cache.kinds() {
            let labels = [("kind", kind.name())];
            let stats = kind.stats();
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            s.counter(
                "cache_hits",
                "Application cache hits",
                &labels,
                load(&stats.hits),
            );
            s.counter(
                "cache_misses",
                "Application cache misses",
                &labels,
                load(&stats.misses),
            );
            s.counter(
                "cache_errors",
                "Application cache operations that failed (each served as a miss)",
                &labels,
                load(&stats.errors),
            );
            s.gauge(
                "cache_lookup_seconds_sum",
                "Total time spent in cache lookups",
                &labels,
                load(&stats.lookup_micros) as f64 / 1e6,
            );
            s.gauge(
                "cache_lookup_seconds_count",
                "Cache lookups timed",
                &labels,
                load(&stats.lookups) as f64,
            );
        }
        s.gauge(
            "cache_circuit_closed",
            "1 while the cache circuit lets calls through to Redis, 0 while it is open",
            &[],
            if cache.circuit_closed() { 1.0 } else { 0.0 },
        );
    })
}

/// `db_reads_total` by pool (`primary` or the replica's address), and per replica
/// `db_replica_healthy` and `db_replica_lag_seconds`.
pub fn database(db: Arc<Database>) -> impl prometheus_client::collector::Collector {
    collector(move |s: &mut Snapshot| {
        s.counter(
            "db_reads",
            "Reads routed to each database pool",
            &[("pool", "primary")],
            db.primary_reads(),
        );
        for replica in db.replica_status() {
            let labels = [("pool", replica.name.as_str())];
            s.counter(
                "db_reads",
                "Reads routed to each database pool",
                &labels,
                replica.reads,
            );
            s.gauge(
                "db_replica_healthy",
                "1 while the replica is in the read pool",
                &labels,
                if replica.healthy { 1.0 } else { 0.0 },
            );
            if replica.lag_ms != u64::MAX {
                s.gauge(
                    "db_replica_lag_seconds",
                    "How far the replica's replay is behind the primary",
                    &labels,
                    replica.lag_ms as f64 / 1000.0,
                );
            }
        }
    })
}
