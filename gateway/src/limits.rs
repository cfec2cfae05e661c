//! Admission limits: the per-client rate limit and the retry budget.
//!
//! Body and header size limits are enforced where the bytes are read (`server.rs` for the
//! request head, `proxy.rs` and `body.rs` for the body); this module holds the two limits that
//! keep state between requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use crate::balance::hash_bytes;
use crate::config::{RateLimit, Retry};

// === impl RateLimiter ===

/// Shards of the per-client table: clients on different shards never contend.
const SHARDS: usize = 32;
/// A shard past this many clients forgets the ones whose bucket has refilled.
const SHARD_SOFT_CAP: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per client IP: `rate` tokens a second, at most `burst` saved.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    /// A limiter, or `None` when the config turns it off.
    pub fn from_config(config: &RateLimit) -> Option<Self> {
        if config.requests_per_second <= 0.0 {
            return None;
        }
        let burst = if config.burst == 0 {
            config.requests_per_second.ceil().max(1.0)
        } else {
            f64::from(config.burst)
        };
        Some(Self {
            rate: config.requests_per_second,
            burst,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Takes a token for `client`, or says in how many seconds one will be there.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        let key = match client {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        };
        let shard = &self.shards[key as usize % SHARDS];
        let mut table = shard.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= SHARD_SOFT_CAP {
            let (rate, burst) = (self.rate, self.burst);
            table.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
            });
            // Still full (many clients at once, say a spoofing flood): forget them all rather
            // than scan the table on every request.
            if table.len() >= SHARD_SOFT_CAP {
                table.clear();
            }
        }
        let bucket = table.entry(client).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

// === impl RetryBudget ===

/// One retry, in the budget's fixed-point unit.
const RETRY: i64 = 1000;

/// Caps retries at a fraction of requests, as Finagle and linkerd do: each request deposits
/// `ratio` of a retry, each retry withdraws one, and a floor of `min_retries` is kept so a
/// quiet gateway can still retry. When a whole upstream fails, retries stop at the budget
/// instead of doubling the load.
#[derive(Debug)]
pub struct RetryBudget {
    enabled: bool,
    deposit: i64,
    cap: i64,
    balance: AtomicI64,
}

impl RetryBudget {
    /// A budget from the config.
    pub fn new(config: &Retry) -> Self {
        let floor = i64::from(config.min_retries) * RETRY;
        Self {
            enabled: config.enabled,
            deposit: (config.budget_ratio * RETRY as f64) as i64,
            // Savings are capped, so a long quiet spell cannot fund a storm of retries.
            cap: floor.max(100 * RETRY),
            balance: AtomicI64::new(floor),
        }
    }

    /// Called for every request.
    pub fn deposit(&self) {
        // A load first: at the cap (the steady state) the shared line is only read.
        if self.deposit > 0 && self.balance.load(Ordering::Relaxed) < self.cap {
            self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        }
    }

    /// Gives back a retry taken for an attempt that could not be made.
    pub fn refund(&self) {
        self.balance.fetch_add(RETRY, Ordering::Relaxed);
    }

    /// Takes one retry if the budget allows it.
    pub fn try_withdraw(&self) -> bool {
        self.enabled
            && self
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    (b >= RETRY).then_some(b - RETRY)
                })
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(rps: f64, burst: u32) -> RateLimiter {
        RateLimiter::from_config(&RateLimit {
            requests_per_second: rps,
            burst,
        })
        .unwrap()
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_rate() {
        let l = limiter(2.0, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.check(ip, t0).is_ok()));
        assert_eq!(l.check(ip, t0), Err(1));
        assert!(l.check(ip, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check(ip, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn clients_have_separate_buckets() {
        let l = limiter(1.0, 1);
        let t0 = Instant::now();
        assert!(l.check("10.0.0.1".parse().unwrap(), t0).is_ok());
        assert!(l.check("10.0.0.2".parse().unwrap(), t0).is_ok());
        assert!(l.check("10.0.0.1".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        assert!(RateLimiter::from_config(&RateLimit::default()).is_none());
    }

    #[test]
    fn the_retry_budget_allows_the_floor_then_a_fifth_of_requests() {
        let b = RetryBudget::new(&Retry {
            min_retries: 2,
            ..Retry::default()
        });
        assert!(b.try_withdraw() && b.try_withdraw());
        assert!(!b.try_withdraw());
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw() && b.try_withdraw());
        assert!(!b.try_withdraw());
    }
}
