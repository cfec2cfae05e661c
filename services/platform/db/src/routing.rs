//! Reads split from writes: a primary for writes, streaming replicas for reads, and
//! read-your-writes through WAL positions.
//!
//! A replica serves a read only if it is healthy, not lagging more than
//! `DB_REPLICA_MAX_LAG_MS`, and, when the reader has written recently, has replayed the WAL up to
//! that write's position (its [`Lsn`]). A background task ([`Database::spawn_monitor`]) keeps
//! each replica's replay position and lag in atomics, so choosing a pool on the hot path costs a
//! few loads and never a query. With no replica qualifying, reads go to the primary.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use tracing::Instrument;

use crate::{DbError, DbSettings};

/// A Postgres WAL position (`pg_lsn`), as a number so positions compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    /// Parses Postgres' text form, `XXXXXXXX/XXXXXXXX` in hex.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("not an LSN: {s}"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|e| format!("not an LSN: {s}: {e}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|e| format!("not an LSN: {s}: {e}"))?;
        Ok(Self((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Which pool served a read; counted per source for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    Primary,
    Replica(usize),
}

/// A replica pool and what the monitor last learnt about it.
struct Replica {
    pool: PgPool,
    /// Its host:port, for logs and metrics.
    name: String,
    healthy: AtomicBool,
    replay_lsn: AtomicU64,
    lag_ms: AtomicU64,
    reads: AtomicU64,
}

/// The primary and the replicas, with the routing rules above.
pub struct Database {
    primary: PgPool,
    replicas: Vec<Replica>,
    next: AtomicUsize,
    max_lag_ms: u64,
    check_interval: Duration,
    primary_reads: AtomicU64,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field(
                "replicas",
                &self.replicas.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What `/metrics` and the admin views report about one replica.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub name: String,
    pub healthy: bool,
    pub replay_lsn: Lsn,
    pub lag_ms: u64,
    pub reads: u64,
}

impl Database {
    /// Pools for the primary and every replica in `settings`. Nothing connects until used; a
    /// replica counts as unhealthy until the monitor has seen it answer.
    pub fn connect(settings: &DbSettings) -> Result<Self, DbError> {
        let primary = crate::connect(settings)?;
        let replicas = settings
            .database_replica_urls
            .iter()
            .map(|url| {
                let options = PgConnectOptions::from_str(url).map_err(DbError::InvalidUrl)?;
                let name = format!("{}:{}", options.get_host(), options.get_port());
                // Read-only by construction: a write routed here by mistake fails loudly
                // instead of silently landing somewhere unexpected.
                let options = settings
                    .with_session_settings(options)
                    .options([("default_transaction_read_only", "on")]);
                Ok(Replica {
                    pool: settings.pool_options().connect_lazy_with(options),
                    name,
                    healthy: AtomicBool::new(false),
                    replay_lsn: AtomicU64::new(0),
                    lag_ms: AtomicU64::new(u64::MAX),
                    reads: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Self {
            primary,
            replicas,
            next: AtomicUsize::new(0),
            max_lag_ms: settings.db_replica_max_lag_ms,
            check_interval: Duration::from_millis(settings.db_replica_check_interval_ms),
            primary_reads: AtomicU64::new(0),
        })
    }

    /// The primary, for writes and for reads that must be current.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// A pool for a read that must observe every write up to `min_lsn` (the reader's own last
    /// write, if any): the next healthy, caught-up replica in turn, else the primary.
    pub fn reader(&self, min_lsn: Option<Lsn>) -> (&PgPool, ReadSource) {
        let n = self.replicas.len();
        if n > 0 {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let index = (start + i) % n;
                let replica = &self.replicas[index];
                let caught_up =
                    min_lsn.is_none_or(|lsn| replica.replay_lsn.load(Ordering::Acquire) >= lsn.0);
                if replica.healthy.load(Ordering::Acquire)
                    && replica.lag_ms.load(Ordering::Acquire) <= self.max_lag_ms
                    && caught_up
                {
                    replica.reads.fetch_add(1, Ordering::Relaxed);
                    return (&replica.pool, ReadSource::Replica(index));
                }
            }
        }
        self.primary_reads.fetch_add(1, Ordering::Relaxed);
        (&self.primary, ReadSource::Primary)
    }

    /// Whether every replica serving reads has replayed `lsn`. Until then, something read from
    /// a replica may predate the write at `lsn` (a cache filled from it, for one).
    pub fn replicas_caught_up(&self, lsn: Lsn) -> bool {
        self.replicas.iter().all(|r| {
            !r.healthy.load(Ordering::Acquire) || r.replay_lsn.load(Ordering::Acquire) >= lsn.0
        })
    }

    /// The primary's current WAL position. Called right after a commit, it is a position every
    /// later read by the same user must have replayed.
    pub async fn current_lsn(&self) -> Result<Lsn, sqlx::Error> {
        self.primary_lsn()
            .instrument(crate::client_span_without_collection("SELECT"))
            .await
    }

    /// [`Database::current_lsn`] without a span: the monitor asks every check interval, in no
    /// request's trace, and a root span per tick would only bury the traces worth reading.
    async fn primary_lsn(&self) -> Result<Lsn, sqlx::Error> {
        let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.primary)
            .await?;
        text.parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))
    }

    /// Reads served by the primary since start.
    pub fn primary_reads(&self) -> u64 {
        self.primary_reads.load(Ordering::Relaxed)
    }

    /// What the monitor knows about each replica.
    pub fn replica_status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|r| ReplicaStatus {
                name: r.name.clone(),
                healthy: r.healthy.load(Ordering::Relaxed),
                replay_lsn: Lsn(r.replay_lsn.load(Ordering::Relaxed)),
                lag_ms: r.lag_ms.load(Ordering::Relaxed),
                reads: r.reads.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Checks every replica once: its replay position, and how far behind the primary it is.
    ///
    /// Lag is measured in time, not bytes: the monitor remembers when it saw the primary reach
    /// each position, and a replica's lag is how long ago the primary first passed the position
    /// the replica has replayed. With the primary down, positions cannot be compared; replicas
    /// that answer stay in the pool so reads keep working.
    pub async fn check_replicas(&self, history: &mut LsnHistory) {
        if self.replicas.is_empty() {
            return;
        }
        let timeout = self.check_interval.max(Duration::from_millis(100));
        // No client spans here (see `primary_lsn`): these checks run on a timer, not for a
        // request or a message.
        let primary_lsn = tokio::time::timeout(timeout, self.primary_lsn()).await;
        let now = Instant::now();
        if let Ok(Ok(lsn)) = primary_lsn {
            history.record(now, lsn);
        }
        for replica in &self.replicas {
            let replayed = tokio::time::timeout(
                timeout,
                // A primary that went through crash recovery still reports the position it
                // replayed then, so recovery itself is the test of being a replica.
                sqlx::query_scalar::<_, Option<String>>(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END",
                )
                .fetch_one(&replica.pool),
            )
            .await;
            match replayed {
                Ok(Ok(Some(text))) => match text.parse::<Lsn>() {
                    Ok(lsn) => {
                        replica.replay_lsn.store(lsn.0, Ordering::Release);
                        let lag = history.lag(now, lsn).as_millis() as u64;
                        replica.lag_ms.store(lag, Ordering::Release);
                        let was = replica.healthy.swap(true, Ordering::AcqRel);
                        if !was {
                            tracing::info!(message = "Replica joined the read pool.", replica = %replica.name);
                        }
                        if lag > self.max_lag_ms {
                            tracing::warn!(message = "Replica is lagging; reads go elsewhere.", replica = %replica.name, lag_ms = lag);
                        }
                    }
                    Err(e) => self.mark_down(replica, &e),
                },
                // NULL: the server is not in recovery, so it is no replica at all (a primary).
                Ok(Ok(None)) => self.mark_down(replica, "not a streaming replica"),
                Ok(Err(e)) => self.mark_down(replica, &e.to_string()),
                Err(_) => self.mark_down(replica, "no answer within the check interval"),
            }
        }
    }

    fn mark_down(&self, replica: &Replica, why: &str) {
        if replica.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(message = "Replica left the read pool.", replica = %replica.name, error = why);
        }
    }

    /// Runs [`Database::check_replicas`] every `DB_REPLICA_CHECK_INTERVAL_MS` until the
    /// returned task is aborted or the database dropped.
    pub fn spawn_monitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let db = Arc::downgrade(self);
        let interval = self.check_interval;
        tokio::spawn(async move {
            let mut history = LsnHistory::default();
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(db) = db.upgrade() else { return };
                db.check_replicas(&mut history).await;
            }
        })
    }
}

/// When the primary was seen at each WAL position, over the last minute.
#[derive(Debug, Default)]
pub struct LsnHistory {
    samples: std::collections::VecDeque<(Instant, Lsn)>,
}

impl LsnHistory {
    const KEEP: Duration = Duration::from_secs(60);

    fn record(&mut self, at: Instant, lsn: Lsn) {
        if self.samples.back().is_none_or(|(_, last)| *last != lsn) {
            self.samples.push_back((at, lsn));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > Self::KEEP)
            && self.samples.len() > 1
        {
            self.samples.pop_front();
        }
    }

    /// How long ago the primary first moved past `replayed`: zero when the replica has replayed
    /// everything the primary was seen to write, the whole history when it is further behind.
    fn lag(&self, now: Instant, replayed: Lsn) -> Duration {
        self.samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_compare_and_print_like_postgres() {
        let a: Lsn = "0/1D000060".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.0, 1 << 32);
        assert_eq!(a.to_string(), "0/1D000060");
        assert!("nonsense".parse::<Lsn>().is_err());
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_write_not_yet_replayed() {
        let start = Instant::now();
        let mut history = LsnHistory::default();
        history.record(start, Lsn(10));
        history.record(start + Duration::from_millis(100), Lsn(20));
        history.record(start + Duration::from_millis(200), Lsn(30));
        let now = start + Duration::from_millis(300);
        assert_eq!(history.lag(now, Lsn(30)), Duration::ZERO);
        assert_eq!(history.lag(now, Lsn(20)), Duration::from_millis(100));
        assert_eq!(history.lag(now, Lsn(15)), Duration::from_millis(200));
    }
}
