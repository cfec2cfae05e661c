//! A circuit breaker for Redis: after `threshold` consecutive failures, skip Redis for
//! `cooldown`, then let one call probe it.
//!
//! A hung Redis costs each call a full timeout; with the circuit open, requests go straight to
//! the database and pay nothing, and one probe per cooldown finds out when Redis is back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Circuit {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls are refused.
    open_until: AtomicU64,
    epoch: Instant,
}

impl Circuit {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go to Redis now. While open, no; once the cooldown is over, exactly
    /// one caller gets through as the probe (the others stay refused for another cooldown
    /// unless the probe succeeds first).
    pub fn allow(&self) -> bool {
        if self.failures.load(Ordering::Acquire) < self.threshold {
            return true;
        }
        let now = self.now_ms();
        let until = self.open_until.load(Ordering::Acquire);
        if now < until {
            return false;
        }
        let next = now + self.cooldown.as_millis() as u64;
        self.open_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
    }

    /// Counts a failure; returns true when this failure opened the circuit.
    pub fn record_failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures == self.threshold {
            let until = self.now_ms() + self.cooldown.as_millis() as u64;
            self.open_until.store(until, Ordering::Release);
            return true;
        }
        false
    }

    /// Whether calls currently go through (for readiness and metrics).
    pub fn is_closed(&self) -> bool {
        self.failures.load(Ordering::Acquire) < self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() {
        let circuit = Circuit::new(2, Duration::from_millis(30));
        assert!(circuit.allow());
        assert!(!circuit.record_failure());
        assert!(circuit.allow(), "one failure is not enough");
        assert!(circuit.record_failure());
        assert!(!circuit.allow(), "open");
        std::thread::sleep(Duration::from_millis(40));
        assert!(circuit.allow(), "the probe");
        assert!(!circuit.allow(), "only one probe");
        circuit.record_success();
        assert!(circuit.allow() && circuit.is_closed());
    }
}
