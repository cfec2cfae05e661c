//! The live state: the runtime built from a config, swapped whole on reload.
//!
//! A request loads the current [`Runtime`] once and uses that snapshot to the end, so a reload
//! never shows a request half of the old routes and half of the new ones.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::header::HeaderName;
use hyper::{Method, Request};
use tokio::sync::watch;

use crate::config::{Cidr, Config, ConfigError, RouteConfig, parse_method};
use crate::health;
use crate::limits::{RateLimiter, RetryBudget};
use crate::metrics::LocalResponses;
use crate::upstream::{ClientSettings, Upstream};

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    path_prefix: Option<Box<str>>,
    methods: Option<Vec<Method>>,
    header: Option<HeaderMatch>,
    /// The upstream it leads to, resolved once so requests do no name lookup.
    pub upstream: Arc<Upstream>,
}

#[derive(Debug)]
struct HeaderMatch {
    name: HeaderName,
    value: Box<[u8]>,
    prefix: bool,
}

impl Route {
    fn new(config: &RouteConfig, upstream: Arc<Upstream>) -> Self {
        let header = config.header.as_ref().map(|h| {
            let (value, prefix) = match h.value.strip_suffix('*') {
                Some(p) => (p, true),
                None => (h.value.as_str(), false),
            };
            HeaderMatch {
                name: HeaderName::from_bytes(h.name.as_bytes()).expect("validated"),
                value: value.as_bytes().into(),
                prefix,
            }
        });
        Self {
            path_prefix: config.path_prefix.as_deref().map(Into::into),
            methods: config.methods.as_ref().map(|ms| {
                ms.iter()
                    .map(|m| parse_method(m).expect("validated"))
                    .collect()
            }),
            header,
            upstream,
        }
    }

    /// Whether every condition of the route holds for the request.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        if let Some(prefix) = &self.path_prefix
            && !req.uri().path().starts_with(prefix.as_ref())
        {
            return false;
        }
        if let Some(methods) = &self.methods
            && !methods.contains(req.method())
        {
            return false;
        }
        if let Some(h) = &self.header {
            let found = req.headers().get_all(&h.name).iter().any(|v| {
                let v = v.as_bytes();
                if h.prefix {
                    v.starts_with(&h.value)
                } else {
                    v == &*h.value
                }
            });
            if !found {
                return false;
            }
        }
        true
    }
}

/// Everything a request needs, built from one config.
#[derive(Debug)]
pub struct Runtime {
    /// The config it was built from.
    pub config: Config,
    /// Compiled routes, in order.
    pub routes: Vec<Route>,
    /// Upstreams, in config order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Upstream of each bound TCP listener, by position.
    pub tcp: Vec<Option<Arc<Upstream>>>,
    trusted: Vec<Cidr>,
    /// Per-client rate limit, if on.
    pub rate_limiter: Option<RateLimiter>,
    /// Retry budget shared by all upstreams.
    pub retry_budget: RetryBudget,
    /// `timeouts.response_ms`.
    pub response_timeout: Duration,
}

impl Runtime {
    /// Builds a runtime; health state and counters carry over from `previous` by upstream name
    /// and backend address.
    pub fn build(config: Config, previous: Option<&Runtime>) -> Self {
        let settings = ClientSettings {
            connect: Duration::from_millis(config.timeouts.connect_ms),
            idle: Duration::from_millis(config.timeouts.idle_ms),
            io_uring: config.io_uring,
        };
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let old = previous.and_then(|p| p.upstream(&u.name));
                Arc::new(Upstream::new(u, settings, old.map(|o| &**o)))
            })
            .collect();
        let find = |name: &str| {
            upstreams
                .iter()
                .find(|u| &*u.name == name)
                .cloned()
                .expect("validated")
        };
        let routes = config
            .routes
            .iter()
            .map(|r| Route::new(r, find(&r.upstream)))
            .collect();
        let tcp = config.tcp.iter().map(|t| Some(find(&t.upstream))).collect();
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|p| Cidr::parse(p).expect("validated"))
            .collect();
        Self {
            rate_limiter: RateLimiter::from_config(&config.rate_limit),
            retry_budget: RetryBudget::new(&config.retry),
            response_timeout: Duration::from_millis(config.timeouts.response_ms),
            routes,
            upstreams,
            tcp,
            trusted,
            config,
        }
    }

    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// The first route whose conditions hold.
    pub fn route<B>(&self, req: &Request<B>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        !self.trusted.is_empty() && self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// State shared by every listener and task of one gateway.
#[derive(Debug)]
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// File that SIGHUP re-reads.
    pub config_path: Option<PathBuf>,
    /// Answers made by the gateway itself.
    pub local: LocalResponses,
    /// Flips to true once on shutdown; every loop and connection watches it.
    pub shutdown: watch::Sender<bool>,
    /// Whether `run` started; health checks of reloaded upstreams start only then.
    running: AtomicBool,
}

impl Shared {
    /// State for a validated config.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(Runtime::build(config, None)),
            config_path,
            local: LocalResponses::default(),
            shutdown: watch::channel(false).0,
            running: AtomicBool::new(false),
        }
    }

    /// The current runtime snapshot.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Starts the background work of the current runtime.
    pub fn start(&self) {
        self.running.store(true, Ordering::SeqCst);
        for u in &self.runtime().upstreams {
            health::spawn(Arc::clone(u), self.shutdown.subscribe());
        }
    }

    /// Re-reads the config file and swaps it in; on any error the old config keeps serving.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let path = self
            .config_path
            .as_deref()
            .ok_or_else(|| ConfigError::Invalid {
                key: "--config".into(),
                message: "the gateway was started without a config file".into(),
            })?;
        let config = Config::load(path).inspect_err(|error| {
            tracing::error!(message = "Reload rejected; the previous config stays.", %error);
        })?;
        self.apply(config)
    }

    /// Swaps in an already parsed config (it is validated again).
    pub fn apply(&self, config: Config) -> Result<(), ConfigError> {
        config.validate()?;
        let old = self.runtime();
        let c = &old.config;
        if config.listen != c.listen
            || config.admin_listen != c.admin_listen
            || config.workers != c.workers
            || config
                .tcp
                .iter()
                .map(|t| t.listen)
                .ne(c.tcp.iter().map(|t| t.listen))
        {
            tracing::warn!(
                message = "Listen addresses, TCP listeners and workers change only on restart."
            );
        }
        let mut runtime = Runtime::build(config, Some(&old));
        // TCP listeners stay those bound at start; an entry without a bound socket is ignored.
        runtime.tcp.resize(old.tcp.len(), None);
        let runtime = Arc::new(runtime);
        self.runtime.store(Arc::clone(&runtime));
        for u in &old.upstreams {
            u.retire();
        }
        if self.running.load(Ordering::SeqCst) {
            for u in &runtime.upstreams {
                health::spawn(Arc::clone(u), self.shutdown.subscribe());
            }
        }
        tracing::info!(
            message = "Configuration reloaded.",
            upstreams = runtime.upstreams.len()
        );
        Ok(())
    }
}
