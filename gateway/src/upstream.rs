//! Upstreams and their backends: counters, the health state machine, and the backend set that
//! the admin API swaps atomically.
//!
//! Requests read a backend set with one atomic load and never wait on a lock; the admin API
//! builds a new set and swaps it in. A backend leaves rotation by flags (`healthy`,
//! `draining`) that the balancer reads, so taking one out costs no rebuild.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;

use crate::balance::{self, Balancer, Pool};
use crate::config::{HashKey, HealthConfig, Policy, UpstreamConfig};
use crate::metrics::Histogram;
use crate::pool::ConnPool;

/// Settings every backend client of the gateway shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// TCP connect timeout.
    pub connect: Duration,
    /// How long an idle pooled connection is kept.
    pub idle: Duration,
    /// Whether backend sockets go through the thread's io_uring.
    pub io_uring: bool,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process started; cheap to store in an atomic.
pub(crate) fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] of an instant already read, so a caller that has one spends no clock read.
pub(crate) fn ms_at(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_millis() as u64
}

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as text, kept for metric labels and JSON.
    pub addr_text: Box<str>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Stable id (a hash of the address): the sticky-cookie value and the ring seed. Stable
    /// across restarts and reloads, so pinned clients stay pinned.
    pub id: u64,
    /// `Host` for requests that came without one (HTTP/1.0) and for health checks.
    pub(crate) host: HeaderValue,
    /// Keep-alive connections to this backend alone, so a pool lock is never shared between
    /// backends.
    pub(crate) pool: Arc<ConnPool>,
    /// `Set-Cookie` value that pins a client here, built once.
    pub(crate) sticky_set_cookie: Option<HeaderValue>,
    /// Counters and health, shared with the `Backend` of the same address in the config a
    /// reload replaces and in the one that replaces it.
    state: Arc<BackendState>,
}

/// What a backend has done and how it stands. A reload that keeps a backend's address keeps
/// this very object, so requests that started before the reload still count in flight, a drain
/// under way still holds, and no counter or health state is lost or counted twice.
#[derive(Debug)]
struct BackendState {
    in_flight: AtomicU64,
    requests_total: AtomicU64,
    failures_total: AtomicU64,
    /// Responses by status code, index `status - 100` (100 to 599): lock-free counting of
    /// exact codes for 4 KiB per backend.
    responses: Box<[AtomicU64]>,
    healthy: AtomicBool,
    draining: AtomicBool,
    checks_ok: AtomicU32,
    checks_failed: AtomicU32,
    passive_failures: AtomicU32,
    ejected_at_ms: AtomicU64,
}

impl BackendState {
    fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            responses: (100..600).map(|_| AtomicU64::new(0)).collect(),
            // Backends start in rotation: a gateway that starts (or reloads) must not answer
            // 503 for a whole health-check window. Passive ejection and retries cover a
            // backend that is in fact down.
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            checks_ok: AtomicU32::new(0),
            checks_failed: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_at_ms: AtomicU64::new(0),
        }
    }
}

impl Backend {
    /// A backend of the config being built; `previous` is the backend at the same address in
    /// the config it replaces, whose state it takes over (and whose pooled connections, when
    /// the client settings did not change).
    fn new(
        addr: SocketAddr,
        weight: u32,
        sticky_cookie: Option<&str>,
        settings: ClientSettings,
        previous: Option<&Backend>,
    ) -> Self {
        let addr_text: Box<str> = addr.to_string().into();
        let id = balance::hash_bytes(addr_text.as_bytes());
        let host = HeaderValue::try_from(addr_text.as_ref()).expect("a socket address is ASCII");
        let sticky_set_cookie = sticky_cookie.map(|name| {
            HeaderValue::try_from(format!("{name}={id:016x}; Path=/; HttpOnly; SameSite=Lax"))
                .expect("a validated cookie name")
        });
        let pool = match previous {
            Some(old) if old.pool.settings() == settings => Arc::clone(&old.pool),
            _ => Arc::new(ConnPool::new(addr, settings)),
        };
        let state = previous.map_or_else(
            || Arc::new(BackendState::new()),
            |old| Arc::clone(&old.state),
        );
        Self {
            addr,
            addr_text,
            weight,
            id,
            host,
            pool,
            sticky_set_cookie,
            state,
        }
    }

    /// Whether it may receive new requests.
    pub fn is_eligible(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed) && !self.state.draining.load(Ordering::Relaxed)
    }

    /// Whether health checks consider it up.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Whether it is being drained before removal.
    pub fn is_draining(&self) -> bool {
        self.state.draining.load(Ordering::Relaxed)
    }

    /// Requests (or TCP connections) in flight.
    pub fn in_flight(&self) -> u64 {
        // Sequentially consistent: a drain reads it after setting its flag (`try_start`).
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Requests (or TCP connections) sent to it.
    pub fn requests_total(&self) -> u64 {
        self.state.requests_total.load(Ordering::Relaxed)
    }

    /// Connect errors, resets, timeouts and 5xx answers.
    pub fn failures_total(&self) -> u64 {
        self.state.failures_total.load(Ordering::Relaxed)
    }

    /// Responses by status code, codes never seen left out.
    pub fn responses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.state
            .responses
            .iter()
            .zip(100u16..)
            .map(|(c, status)| (status, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }

    /// Counts a request as started, unless a drain has begun; the guard ends it.
    ///
    /// The count is raised before the drain flag is read, and a drain sets the flag before it
    /// reads the count (all four sequentially consistent), so either the request sees the
    /// drain and goes elsewhere, or the drain sees the request and waits for it: no request
    /// slips onto a backend whose drain has already found it idle.
    pub fn try_start(self: &Arc<Self>) -> Option<InFlight> {
        let state = &self.state;
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        if state.draining.load(Ordering::SeqCst) {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        state.requests_total.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(self)))
    }

    /// Records a response status from this backend of `upstream`.
    pub fn record_status(&self, status: u16, upstream: &Upstream) {
        if let Some(c) = self
            .state
            .responses
            .get(usize::from(status).wrapping_sub(100))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if status >= 500 {
            self.record_failure(upstream);
        } else if self.state.passive_failures.load(Ordering::Relaxed) != 0 {
            self.state.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a good exchange that has no status (a TCP session).
    pub fn record_success(&self) {
        if self.state.passive_failures.load(Ordering::Relaxed) != 0 {
            self.state.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed exchange with this backend of `upstream`: a reset, a timeout or a 5xx.
    /// After the upstream's `passive_failures` in a row the backend leaves rotation, if enough
    /// others stay in (see [`Upstream::may_eject_passively`]), and needs `healthy_threshold`
    /// good checks (or the eject delay) to come back.
    pub fn record_failure(&self, upstream: &Upstream) {
        self.fail(upstream, true);
    }

    /// Records a connection to this backend of `upstream` that could not be opened. It counts
    /// like [`record_failure`](Self::record_failure), but ejects whatever the others' state: a
    /// refused connection says nothing about the request, everything about the backend.
    pub fn record_connect_failure(&self, upstream: &Upstream) {
        self.fail(upstream, false);
    }

    fn fail(&self, upstream: &Upstream, keep_half: bool) {
        self.state.failures_total.fetch_add(1, Ordering::Relaxed);
        let limit = upstream.passive_failures;
        if limit == 0 {
            return;
        }
        let n = self.state.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < limit || !self.is_healthy() {
            return;
        }
        // Held while counting the others and ejecting, so that two backends failing at once
        // cannot both find enough others in rotation and leave too few.
        let _ejecting = upstream.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        if keep_half && !upstream.may_eject_passively() {
            tracing::debug!(
                message = "Backend kept in rotation despite consecutive failures: too few others are in.",
                backend = %self.addr,
                failures = n
            );
            return;
        }
        if self.state.healthy.swap(false, Ordering::Relaxed) {
            self.state.checks_ok.store(0, Ordering::Relaxed);
            self.state.ejected_at_ms.store(now_ms(), Ordering::Relaxed);
            tracing::warn!(
                message = "Backend ejected after consecutive failures.",
                backend = %self.addr,
                failures = n
            );
        }
    }

    /// Whether `other` is this very backend: the same address and the same state, carried over
    /// reloads, rather than one added again later.
    pub fn is_same_as(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Feeds one active check result to the state machine; returns the new state on a change.
    pub fn record_check(&self, ok: bool, health: &HealthConfig) -> Option<bool> {
        if ok {
            self.state.checks_failed.store(0, Ordering::Relaxed);
            let n = self.state.checks_ok.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= health.healthy_threshold && !self.state.healthy.swap(true, Ordering::Relaxed) {
                self.state.passive_failures.store(0, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.state.checks_ok.store(0, Ordering::Relaxed);
            let n = self.state.checks_failed.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= health.unhealthy_threshold && self.state.healthy.swap(false, Ordering::Relaxed)
            {
                self.state.ejected_at_ms.store(now_ms(), Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Without active checks, brings a passively ejected backend back after `eject`.
    pub fn readmit_after(&self, eject: Duration) -> bool {
        if self.state.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let since = now_ms().saturating_sub(self.state.ejected_at_ms.load(Ordering::Relaxed));
        if since >= eject.as_millis() as u64 {
            self.state.passive_failures.store(0, Ordering::Relaxed);
            self.state.healthy.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A request (or TCP connection) in flight on a backend; dropping it ends it.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend it counts against.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An immutable set of backends with the balancer built for exactly this set.
#[derive(Debug)]
pub struct BackendSet {
    /// The backends, in config order (admin additions at the end).
    pub backends: Vec<Arc<Backend>>,
    balancer: Balancer,
}

impl BackendSet {
    fn new(policy: Policy, backends: Vec<Arc<Backend>>) -> Self {
        let ids: Vec<(u64, u32)> = backends.iter().map(|b| (b.id, b.weight)).collect();
        Self {
            balancer: Balancer::new(policy, &ids),
            backends,
        }
    }

    /// Picks a backend with the upstream's policy, avoiding `exclude`.
    pub fn pick(&self, hash: u64, exclude: Option<usize>) -> Option<usize> {
        self.balancer.pick(self, hash, exclude)
    }

    /// Chooses a backend for a new request (or TCP connection) and counts it there: the one
    /// `pinned` names while it is eligible, else the policy's pick avoiding `exclude`. A
    /// backend whose drain began after the pick is passed over for another pick.
    pub fn start_request(
        &self,
        pinned: Option<u64>,
        hash: u64,
        exclude: Option<usize>,
    ) -> Option<(usize, InFlight)> {
        // Each pass that fails has seen a backend's drain flag, which later picks skip, so
        // the passes are bounded by the number of backends.
        for _ in 0..=self.backends.len() {
            let i = match pinned.and_then(|id| self.find_eligible(id)) {
                Some(i) => i,
                None => self.pick(hash, exclude)?,
            };
            if let Some(guard) = self.backends[i].try_start() {
                return Some((i, guard));
            }
        }
        None
    }

    /// The eligible backend a sticky cookie points to.
    pub fn find_eligible(&self, id: u64) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.id == id)
            .filter(|&i| self.backends[i].is_eligible())
    }
}

impl Pool for BackendSet {
    fn len(&self) -> usize {
        self.backends.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.backends[i].is_eligible()
    }
    fn load(&self, i: usize) -> u64 {
        self.backends[i].in_flight()
    }
}

/// Why the admin API could not change an upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    /// The backend is already in the upstream.
    #[error("backend {0} already exists")]
    Exists(SocketAddr),
    /// The backend is not in the upstream.
    #[error("no backend {0}")]
    NotFound(SocketAddr),
}

/// A named group of backends.
#[derive(Debug)]
pub struct Upstream {
    /// Its name.
    pub name: Box<str>,
    /// Its policy.
    pub policy: Policy,
    /// What `consistent_hash` hashes.
    pub hash_key: Option<HashKey>,
    /// Affinity cookie name.
    pub sticky_cookie: Option<Box<str>>,
    /// Active checks, if any.
    pub health: Option<HealthConfig>,
    /// Consecutive failures before passive ejection (0: off).
    pub passive_failures: u32,
    /// Eject time when there are no active checks.
    pub passive_eject: Duration,
    settings: ClientSettings,
    /// The current backends; requests load it once each.
    set: ArcSwap<BackendSet>,
    /// Serializes admin changes so two of them cannot lose each other's update.
    changes: Mutex<()>,
    /// Serializes passive ejections, which count the backends still in rotation.
    ejecting: Mutex<()>,
    /// Time to response headers of requests to this upstream.
    pub latency: Histogram,
    /// Set when a reload replaced this upstream, to stop its health checks.
    retired: AtomicBool,
}

impl Upstream {
    /// Builds an upstream from its config. `previous` is the upstream of the same name in the
    /// config this one replaces: each backend it shares an address with hands over its state
    /// (health, counters, requests in flight, a drain under way) and its idle connections.
    pub fn new(
        config: &UpstreamConfig,
        settings: ClientSettings,
        previous: Option<&Upstream>,
    ) -> Self {
        let sticky = config.sticky_cookie.as_deref();
        let old_set = previous.map(Upstream::backends);
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let old = old_set
                    .as_ref()
                    .and_then(|set| set.backends.iter().find(|o| o.addr == b.addr));
                Arc::new(Backend::new(
                    b.addr,
                    b.weight,
                    sticky,
                    settings,
                    old.map(|o| &**o),
                ))
            })
            .collect();
        Self {
            name: config.name.as_str().into(),
            policy: config.policy,
            hash_key: config
                .hash_key
                .as_deref()
                .map(|k| HashKey::parse(k).expect("validated")),
            sticky_cookie: config.sticky_cookie.as_deref().map(Into::into),
            health: config.health.clone(),
            passive_failures: config.passive_failures,
            passive_eject: Duration::from_millis(config.passive_eject_ms),
            settings,
            set: ArcSwap::from_pointee(BackendSet::new(config.policy, backends)),
            changes: Mutex::new(()),
            ejecting: Mutex::new(()),
            latency: Histogram::default(),
            retired: AtomicBool::new(false),
        }
    }

    /// The current backend set.
    pub fn backends(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// Adds a backend at run time.
    pub fn add_backend(&self, addr: SocketAddr, weight: u32) -> Result<(), ChangeError> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.set.load();
        if current.backends.iter().any(|b| b.addr == addr) {
            return Err(ChangeError::Exists(addr));
        }
        let mut backends = current.backends.clone();
        backends.push(Arc::new(Backend::new(
            addr,
            weight,
            self.sticky_cookie.as_deref(),
            self.settings,
            None,
        )));
        self.set
            .store(Arc::new(BackendSet::new(self.policy, backends)));
        Ok(())
    }

    /// Stops sending new requests to a backend; returns it so the caller can wait for its
    /// in-flight requests.
    pub fn start_drain(&self, addr: SocketAddr) -> Result<Arc<Backend>, ChangeError> {
        let set = self.set.load();
        let backend = set
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .ok_or(ChangeError::NotFound(addr))?;
        // Before the caller reads the in-flight count; see `Backend::try_start`.
        backend.state.draining.store(true, Ordering::SeqCst);
        Ok(Arc::clone(backend))
    }

    /// Removes `backend` from the set, if it is still there: the same backend, not one added
    /// at its address since. Returns whether it was.
    pub fn remove_backend(&self, backend: &Backend) -> bool {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.set.load();
        if !current.backends.iter().any(|b| b.is_same_as(backend)) {
            return false;
        }
        let backends = current
            .backends
            .iter()
            .filter(|b| !b.is_same_as(backend))
            .cloned()
            .collect();
        self.set
            .store(Arc::new(BackendSet::new(self.policy, backends)));
        true
    }

    /// Whether one more backend may leave rotation by passive ejection after failed exchanges:
    /// only if at least half of the backends not being drained (rounded up) stay healthy after
    /// it. Failed exchanges say as much about the requests as about the backends (one client
    /// calling a page that fails gets a 5xx from every backend), so they must not empty an
    /// upstream, as Envoy's `max_ejection_percent` keeps them from doing; refused connections
    /// and the active checks, which say something of the backend alone, can.
    pub fn may_eject_passively(&self) -> bool {
        let set = self.set.load();
        let serving = set.backends.iter().filter(|b| !b.is_draining());
        let (total, healthy) = serving.fold((0, 0), |(total, healthy), b| {
            (total + 1, healthy + usize::from(b.is_healthy()))
        });
        healthy > usize::div_ceil(total, 2)
    }

    /// Stops this upstream's background work; a reload calls it on the upstream it replaces.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether a reload replaced it.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClientSettings {
        ClientSettings {
            connect: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            io_uring: false,
        }
    }

    fn backend() -> Backend {
        let addr = "127.0.0.1:1".parse().unwrap();
        Backend::new(addr, 1, Some("aff"), settings(), None)
    }

    fn health() -> HealthConfig {
        HealthConfig {
            path: "/healthz".into(),
            interval_ms: 10,
            timeout_ms: 10,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    #[tokio::test]
    async fn a_backend_leaves_after_unhealthy_threshold_failures_and_returns_after_healthy_threshold()
     {
        let b = backend();
        let h = health();
        assert_eq!(b.record_check(false, &h), None);
        assert_eq!(b.record_check(false, &h), None);
        assert_eq!(b.record_check(false, &h), Some(false));
        assert!(!b.is_eligible());
        assert_eq!(b.record_check(true, &h), None);
        assert_eq!(b.record_check(false, &h), None);
        assert_eq!(b.record_check(true, &h), None);
        assert_eq!(b.record_check(true, &h), Some(true));
        assert!(b.is_eligible());
    }

    /// An upstream of `n` backends (127.0.0.1:1 to :n) ejecting after 3 failures.
    fn upstream(n: u16) -> Upstream {
        Upstream::new(&config(n).upstreams[0], settings(), None)
    }

    /// The config of [`upstream`]`(n)`.
    fn config(n: u16) -> crate::Config {
        let backends: Vec<String> = (1..=n)
            .map(|port| format!("{{ addr = \"127.0.0.1:{port}\" }}"))
            .collect();
        crate::Config::parse(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"web\"\npassive_failures = 3\nbackends = [{}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
            backends.join(", ")
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn consecutive_failures_eject_passively_and_a_success_resets_the_count() {
        let u = upstream(2);
        let b = &u.backends().backends[0];
        b.record_failure(&u);
        b.record_failure(&u);
        b.record_status(200, &u);
        b.record_failure(&u);
        b.record_status(502, &u);
        assert!(b.is_healthy());
        b.record_failure(&u);
        assert!(!b.is_healthy());
        assert_eq!(b.failures_total(), 5);
        assert!(b.readmit_after(Duration::ZERO));
        assert!(b.is_healthy());
    }

    #[tokio::test]
    async fn passive_ejection_keeps_at_least_half_of_the_backends_in_rotation() {
        for (n, ejectable) in [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)] {
            let u = upstream(n);
            let set = u.backends();
            for b in &set.backends {
                (0..3).for_each(|_| b.record_failure(&u));
            }
            let out = set.backends.iter().filter(|b| !b.is_healthy()).count();
            assert_eq!(out, ejectable, "{n} backends");
        }
        // A backend being drained does not count as one left in rotation.
        let u = upstream(2);
        let set = u.backends();
        u.start_drain(set.backends[0].addr).unwrap();
        (0..3).for_each(|_| set.backends[1].record_failure(&u));
        assert!(set.backends[1].is_healthy());
        // Refused connections and the active checks are not held back.
        let u = upstream(1);
        let b = &u.backends().backends[0];
        (0..3).for_each(|_| b.record_connect_failure(&u));
        assert!(!b.is_healthy());
        let u = upstream(1);
        let b = &u.backends().backends[0];
        for _ in 0..3 {
            b.record_check(false, &health());
        }
        assert!(!b.is_healthy());
    }

    #[tokio::test]
    async fn a_draining_backend_takes_no_new_request() {
        let u = upstream(2);
        let set = u.backends();
        let first = set.backends[0].try_start().unwrap();
        u.start_drain(set.backends[0].addr).unwrap();
        assert!(set.backends[0].try_start().is_none());
        assert_eq!(set.backends[0].in_flight(), 1);
        for _ in 0..4 {
            let (i, _guard) = set.start_request(None, 0, None).unwrap();
            assert_eq!(i, 1);
        }
        drop(first);
        assert_eq!(set.backends[0].in_flight(), 0);
        assert_eq!(set.backends[0].requests_total(), 1);
    }

    #[tokio::test]
    async fn a_reload_hands_each_backend_its_state_and_its_pool_while_the_settings_hold() {
        let old = upstream(2);
        let old_set = old.backends();
        let in_flight = old_set.backends[0].try_start().unwrap();
        old.start_drain(old_set.backends[1].addr).unwrap();
        let three = config(3);

        let new = Upstream::new(&three.upstreams[0], settings(), Some(&old));
        let set = new.backends();
        assert!(set.backends[0].is_same_as(&old_set.backends[0]));
        assert_eq!(set.backends[0].in_flight(), 1);
        assert!(set.backends[1].is_draining());
        assert!(Arc::ptr_eq(
            &set.backends[0].pool,
            &old_set.backends[0].pool
        ));
        // The third is new at its address.
        assert_eq!(set.backends[2].requests_total(), 0);
        drop(in_flight);
        assert_eq!(set.backends[0].in_flight(), 0);

        let slower = ClientSettings {
            connect: Duration::from_secs(5),
            ..settings()
        };
        let newer = Upstream::new(&three.upstreams[0], slower, Some(&new));
        let newer_set = newer.backends();
        assert!(newer_set.backends[0].is_same_as(&set.backends[0]));
        assert!(!Arc::ptr_eq(
            &newer_set.backends[0].pool,
            &set.backends[0].pool
        ));
    }

    #[tokio::test]
    async fn the_in_flight_guard_counts_until_dropped() {
        let b = Arc::new(backend());
        let g = b.try_start().unwrap();
        assert_eq!(b.in_flight(), 1);
        drop(g);
        assert_eq!((b.in_flight(), b.requests_total()), (0, 1));
    }
}
