//! Load-balancing policies: given the backends of an upstream, pick one.
//!
//! A policy sees backends only through [`Pool`] (is it eligible, how loaded is it), so each one
//! is a small type tested here on plain numbers. Policies never allocate on the pick path; the
//! hash ring is built once per change of the backend set.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Policy;

/// What a policy may know about the backends it chooses from.
pub trait Pool {
    /// Number of backends, eligible or not.
    fn len(&self) -> usize;
    /// Whether there are no backends at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether backend `i` may receive a new request (healthy, not draining, not excluded).
    fn eligible(&self, i: usize) -> bool;
    /// Current load of backend `i`: its in-flight requests.
    fn load(&self, i: usize) -> u64;
}

/// A pool with one backend hidden, used to retry on a different backend.
struct Excluding<'a, P: ?Sized> {
    pool: &'a P,
    exclude: usize,
}

impl<P: Pool + ?Sized> Pool for Excluding<'_, P> {
    fn len(&self) -> usize {
        self.pool.len()
    }
    fn eligible(&self, i: usize) -> bool {
        i != self.exclude && self.pool.eligible(i)
    }
    fn load(&self, i: usize) -> u64 {
        self.pool.load(i)
    }
}

/// A policy together with the state it keeps between picks.
#[derive(Debug)]
pub enum Balancer {
    /// See [`RoundRobin`].
    RoundRobin(RoundRobin),
    /// See [`SmoothWeighted`].
    WeightedRoundRobin(SmoothWeighted),
    /// See [`LeastConnections`].
    LeastConnections(LeastConnections),
    /// See [`PowerOfTwo`].
    PowerOfTwo(PowerOfTwo),
    /// See [`RandomPick`].
    Random(RandomPick),
    /// See [`Ring`].
    ConsistentHash(Ring),
}

impl Balancer {
    /// Builds the policy for a backend set; `backends` gives each backend's stable id and weight.
    pub fn new(policy: Policy, backends: &[(u64, u32)]) -> Self {
        match policy {
            Policy::RoundRobin => Self::RoundRobin(RoundRobin::default()),
            Policy::WeightedRoundRobin => {
                Self::WeightedRoundRobin(SmoothWeighted::new(backends.iter().map(|(_, w)| *w)))
            }
            Policy::LeastConnections => Self::LeastConnections(LeastConnections::default()),
            Policy::PowerOfTwo => Self::PowerOfTwo(PowerOfTwo),
            Policy::Random => Self::Random(RandomPick),
            Policy::ConsistentHash => Self::ConsistentHash(Ring::new(backends)),
        }
    }

    /// Picks an eligible backend other than `exclude`; `hash` is only read by the hash ring.
    pub fn pick<P: Pool + ?Sized>(
        &self,
        pool: &P,
        hash: u64,
        exclude: Option<usize>,
    ) -> Option<usize> {
        match exclude {
            Some(exclude) => self.pick_from(&Excluding { pool, exclude }, hash),
            None => self.pick_from(pool, hash),
        }
    }

    fn pick_from<P: Pool + ?Sized>(&self, pool: &P, hash: u64) -> Option<usize> {
        match self {
            Self::RoundRobin(b) => b.pick(pool),
            Self::WeightedRoundRobin(b) => b.pick(pool),
            Self::LeastConnections(b) => b.pick(pool),
            Self::PowerOfTwo(b) => b.pick(pool),
            Self::Random(b) => b.pick(pool),
            Self::ConsistentHash(b) => b.pick(pool, hash),
        }
    }
}

// === impl RoundRobin ===

/// Each eligible backend in turn; an ineligible one is skipped.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    fn pick<P: Pool + ?Sized>(&self, pool: &P) -> Option<usize> {
        let n = pool.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find(|&i| pool.eligible(i))
    }
}

// === impl SmoothWeighted ===

/// nginx's smooth weighted round robin: every pick adds each weight to its backend's current
/// value, takes the largest, and subtracts the total from it. Weights 2:1 give A,B,A,A,B,A
/// rather than bursts of A.
///
/// The state is a per-upstream mutex held for a few additions; it is never held across I/O.
#[derive(Debug)]
pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    fn new(weights: impl Iterator<Item = u32>) -> Self {
        let weights: Vec<i64> = weights.map(i64::from).collect();
        let current = Mutex::new(vec![0; weights.len()]);
        Self { weights, current }
    }

    fn pick<P: Pool + ?Sized>(&self, pool: &P) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate().take(pool.len()) {
            if !pool.eligible(i) {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

// === impl LeastConnections ===

/// The eligible backend with the fewest in-flight requests; ties go round robin so an idle
/// upstream still spreads its traffic.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    fn pick<P: Pool + ?Sized>(&self, pool: &P) -> Option<usize> {
        let n = pool.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !pool.eligible(i) {
                continue;
            }
            let load = pool.load(i);
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

// === impl PowerOfTwo ===

/// Two eligible backends drawn at random; the less loaded wins. Nearly as good as least
/// connections without reading every backend's counter.
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl PowerOfTwo {
    fn pick<P: Pool + ?Sized>(&self, pool: &P) -> Option<usize> {
        let m = count_eligible(pool);
        match m {
            0 => None,
            1 => nth_eligible(pool, 0),
            _ => {
                let a = random_below(m);
                let mut b = random_below(m - 1);
                if b >= a {
                    b += 1;
                }
                let a = nth_eligible(pool, a)?;
                let b = nth_eligible(pool, b)?;
                Some(if pool.load(b) < pool.load(a) { b } else { a })
            }
        }
    }
}

// === impl RandomPick ===

/// A uniformly random eligible backend.
#[derive(Debug, Default)]
pub struct RandomPick;

impl RandomPick {
    fn pick<P: Pool + ?Sized>(&self, pool: &P) -> Option<usize> {
        match count_eligible(pool) {
            0 => None,
            m => nth_eligible(pool, random_below(m)),
        }
    }
}

fn count_eligible<P: Pool + ?Sized>(pool: &P) -> usize {
    (0..pool.len()).filter(|&i| pool.eligible(i)).count()
}

fn nth_eligible<P: Pool + ?Sized>(pool: &P, n: usize) -> Option<usize> {
    (0..pool.len()).filter(|&i| pool.eligible(i)).nth(n)
}

// === impl Ring ===

/// Virtual nodes per unit of weight: enough that each backend owns close to its share of the
/// ring, few enough that building it stays cheap.
const VNODES_PER_WEIGHT: u64 = 128;

/// A consistent-hash ring with virtual nodes. A key belongs to the first point at or after its
/// hash; adding a backend only takes over the arcs its own points land on, so about 1/n of the
/// keys move, and they all move to the new backend.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    fn new(backends: &[(u64, u32)]) -> Self {
        let mut points = Vec::new();
        for (index, (id, weight)) in backends.iter().enumerate() {
            for v in 0..u64::from(*weight) * VNODES_PER_WEIGHT {
                let point = mix64(id ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                points.push((point, index as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    fn pick<P: Pool + ?Sized>(&self, pool: &P, hash: u64) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| pool.eligible(i))
    }
}

/// A stable 64-bit hash (FNV-1a, then a finalizer so nearby inputs spread over the ring).
/// Stable across builds and machines, which the hash ring and sticky cookies rely on.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// MurmurHash3's 64-bit finalizer.
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

thread_local! {
    // A per-thread generator: no shared state and no lock for random and power_of_two.
    static RNG: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
}

/// A number in `0..n` from a per-thread xorshift generator (not for secrets).
fn random_below(n: usize) -> usize {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        ((u128::from(x) * n as u128) >> 64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool on plain numbers: `loads[i]` in flight, `down[i]` ineligible.
    struct Fake {
        loads: Vec<u64>,
        down: Vec<bool>,
    }

    impl Fake {
        fn new(n: usize) -> Self {
            Self {
                loads: vec![0; n],
                down: vec![false; n],
            }
        }
    }

    impl Pool for Fake {
        fn len(&self) -> usize {
            self.loads.len()
        }
        fn eligible(&self, i: usize) -> bool {
            !self.down[i]
        }
        fn load(&self, i: usize) -> u64 {
            self.loads[i]
        }
    }

    fn ids(weights: &[u32]) -> Vec<(u64, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (hash_bytes(format!("10.0.0.{i}:80").as_bytes()), *w))
            .collect()
    }

    fn sequence(b: &Balancer, pool: &Fake, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(pool, 0, None).unwrap()).collect()
    }

    #[test]
    fn round_robin_visits_each_backend_in_turn() {
        let b = Balancer::new(Policy::RoundRobin, &ids(&[1, 1, 1]));
        assert_eq!(sequence(&b, &Fake::new(3), 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_an_ineligible_backend() {
        let b = Balancer::new(Policy::RoundRobin, &ids(&[1, 1, 1]));
        let mut pool = Fake::new(3);
        pool.down[1] = true;
        assert!(sequence(&b, &pool, 30).iter().all(|&i| i != 1));
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_two_to_one() {
        let b = Balancer::new(Policy::WeightedRoundRobin, &ids(&[2, 1]));
        assert_eq!(sequence(&b, &Fake::new(2), 6), [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn smooth_weighted_round_robin_matches_nginx_for_five_one_one() {
        let b = Balancer::new(Policy::WeightedRoundRobin, &ids(&[5, 1, 1]));
        assert_eq!(sequence(&b, &Fake::new(3), 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_connections_takes_the_least_loaded_backend() {
        let b = Balancer::new(Policy::LeastConnections, &ids(&[1, 1, 1]));
        let mut pool = Fake::new(3);
        pool.loads = vec![5, 1, 3];
        assert!(sequence(&b, &pool, 10).iter().all(|&i| i == 1));
    }

    #[test]
    fn least_connections_spreads_ties() {
        let b = Balancer::new(Policy::LeastConnections, &ids(&[1, 1]));
        let picks = sequence(&b, &Fake::new(2), 10);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
    }

    #[test]
    fn power_of_two_never_picks_the_most_loaded_of_three() {
        let b = Balancer::new(Policy::PowerOfTwo, &ids(&[1, 1, 1]));
        let mut pool = Fake::new(3);
        pool.loads = vec![0, 100, 1];
        let picks = sequence(&b, &pool, 200);
        assert!(picks.iter().all(|&i| i != 1));
        assert!(picks.contains(&0));
    }

    #[test]
    fn power_of_two_and_random_pick_only_eligible_backends() {
        for policy in [Policy::PowerOfTwo, Policy::Random] {
            let b = Balancer::new(policy, &ids(&[1, 1, 1]));
            let mut pool = Fake::new(3);
            pool.down[0] = true;
            pool.down[2] = true;
            assert!(sequence(&b, &pool, 50).iter().all(|&i| i == 1));
            pool.down[1] = true;
            assert_eq!(b.pick(&pool, 0, None), None);
        }
    }

    #[test]
    fn random_reaches_every_backend() {
        let b = Balancer::new(Policy::Random, &ids(&[1, 1, 1, 1]));
        let picks = sequence(&b, &Fake::new(4), 400);
        assert!((0..4).all(|i| picks.contains(&i)));
    }

    #[test]
    fn an_excluded_backend_is_not_picked() {
        let b = Balancer::new(Policy::RoundRobin, &ids(&[1, 1]));
        let pool = Fake::new(2);
        assert!((0..10).all(|_| b.pick(&pool, 0, Some(0)) == Some(1)));
    }

    #[test]
    fn the_hash_ring_keeps_a_key_on_one_backend() {
        let b = Balancer::new(Policy::ConsistentHash, &ids(&[1, 1, 1]));
        let pool = Fake::new(3);
        for key in 0..100u32 {
            let h = hash_bytes(&key.to_be_bytes());
            let first = b.pick(&pool, h, None);
            assert!((0..5).all(|_| b.pick(&pool, h, None) == first));
        }
    }

    #[test]
    fn adding_a_backend_to_the_ring_moves_about_one_in_n_keys_all_to_it() {
        let before = Balancer::new(Policy::ConsistentHash, &ids(&[1, 1, 1]));
        let after = Balancer::new(Policy::ConsistentHash, &ids(&[1, 1, 1, 1]));
        let keys = 10_000u32;
        let mut moved = 0;
        for key in 0..keys {
            let h = hash_bytes(format!("session-{key}").as_bytes());
            let a = before.pick(&Fake::new(3), h, None).unwrap();
            let b = after.pick(&Fake::new(4), h, None).unwrap();
            if a != b {
                assert_eq!(b, 3, "a moved key must move to the new backend");
                moved += 1;
            }
        }
        let share = f64::from(moved) / f64::from(keys);
        assert!((0.18..0.32).contains(&share), "moved {share}");
    }

    #[test]
    fn the_hash_ring_skips_an_ineligible_backend() {
        let b = Balancer::new(Policy::ConsistentHash, &ids(&[1, 1, 1]));
        let mut pool = Fake::new(3);
        pool.down[2] = true;
        for key in 0..200u32 {
            let h = hash_bytes(&key.to_be_bytes());
            assert_ne!(b.pick(&pool, h, None), Some(2));
        }
    }

    #[test]
    fn random_below_stays_in_range() {
        assert!((0..1000).all(|_| random_below(3) < 3));
    }
}
