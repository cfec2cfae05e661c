//! The configuration file: its schema, its defaults and the checks run before anything binds.
//!
//! Every section rejects unknown keys, so a typo fails at start instead of silently meaning
//! "use the default". Validation errors name the key they are about, in the dotted form a user
//! would search the file for (`upstreams[1].backends[0].addr`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use hyper::Method;
use hyper::header::HeaderName;
use serde::Deserialize;

/// The whole gateway configuration, as read from one TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the public HTTP listener. Port 0 picks a free port (tests use it).
    pub listen: SocketAddr,
    /// Address of the admin API and `/metrics`. Keep it on loopback or a private network.
    pub admin_listen: SocketAddr,
    /// Number of tokio worker threads. `1` runs everything on one thread, like one nginx worker.
    /// Defaults to the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Serve client and backend sockets through io_uring (see [`crate::ring`]); `false` keeps
    /// them on epoll. Where the kernel refuses io_uring the gateway uses epoll regardless.
    /// A reload applies it to connections opened afterwards.
    #[serde(default = "default_io_uring")]
    pub io_uring: bool,
    /// Peers whose `X-Forwarded-*` headers are kept and extended instead of replaced: IP
    /// addresses or CIDR blocks (`"10.0.0.0/8"`).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Timeouts towards clients and backends.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Request size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Retries of idempotent requests on another backend.
    #[serde(default)]
    pub retry: Retry,
    /// Per-client request rate limit.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Named groups of backends that routes and TCP listeners send traffic to.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// HTTP routes, tried in order; the first whose conditions all hold wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Layer-4 listeners that balance whole TCP connections.
    #[serde(default)]
    pub tcp: Vec<TcpConfig>,
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time allowed to open a TCP connection to a backend.
    pub connect_ms: u64,
    /// Time allowed between sending a request to a backend and receiving its response headers.
    pub response_ms: u64,
    /// How long an idle keep-alive connection (client side and backend pool) is kept open.
    pub idle_ms: u64,
    /// On SIGTERM, how long in-flight requests and TCP sessions get to finish.
    pub shutdown_ms: u64,
    /// How long `DELETE /admin/upstreams/{name}/backends/{addr}` waits for in-flight requests
    /// before removing the backend anyway.
    pub drain_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            response_ms: 30_000,
            idle_ms: 60_000,
            shutdown_ms: 30_000,
            drain_ms: 30_000,
        }
    }
}

/// Request size limits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Retries of idempotent requests (GET, HEAD, or any request with an `Idempotency-Key`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Turns retries off when false.
    pub enabled: bool,
    /// Retries allowed as a fraction of requests: 0.2 means at most 20% extra requests.
    pub budget_ratio: f64,
    /// Retries always allowed on top of the ratio, so a quiet gateway can still retry.
    pub min_retries: u32,
    /// Largest body buffered so that a request with a body can be sent again.
    pub max_buffered_body_bytes: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            enabled: true,
            budget_ratio: 0.2,
            min_retries: 10,
            max_buffered_body_bytes: 64 * 1024,
        }
    }
}

/// A token bucket per client IP address.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Sustained requests per second per client; 0 turns the limit off.
    pub requests_per_second: f64,
    /// Requests a client may send at once before the rate applies; 0 means one second's worth.
    pub burst: u32,
}

/// A named group of backends and how to balance between them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name that routes and TCP listeners refer to, and the admin API's path segment.
    pub name: String,
    /// How a backend is chosen for each request (or TCP connection).
    #[serde(default)]
    pub policy: Policy,
    /// What `consistent_hash` hashes: `"cookie:NAME"`, `"header:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Name of the session-affinity cookie; when set, a client stays on one backend while it
    /// is healthy.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    /// The backends. May be empty and filled through the admin API.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Active health checks; without them only passive ejection applies.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Consecutive connect errors or 5xx answers that take a backend out of rotation; 0 turns
    /// passive ejection off.
    #[serde(default = "default_passive_failures")]
    pub passive_failures: u32,
    /// Without active checks, how long a passively ejected backend stays out before it is tried
    /// again.
    #[serde(default = "default_passive_eject_ms")]
    pub passive_eject_ms: u64,
}

fn default_passive_failures() -> u32 {
    3
}

fn default_passive_eject_ms() -> u64 {
    10_000
}

/// Load-balancing policy of an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// nginx's smooth weighted round robin.
    WeightedRoundRobin,
    /// The backend with the fewest in-flight requests.
    LeastConnections,
    /// The less loaded of two backends picked at random.
    PowerOfTwo,
    /// A backend picked at random.
    Random,
    /// A hash ring over `hash_key`.
    ConsistentHash,
}

impl Policy {
    /// The name used in the config file and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConnections => "least_connections",
            Self::PowerOfTwo => "power_of_two",
            Self::Random => "random",
            Self::ConsistentHash => "consistent_hash",
        }
    }
}

/// One backend of an upstream.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `IP:port` of the backend.
    pub addr: SocketAddr,
    /// Relative share of traffic for `weighted_round_robin` and `consistent_hash`.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_io_uring() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}

/// Active health checks of an upstream.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path requested with GET; a 2xx or 3xx answer is healthy.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between two checks of a backend.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time a check may take before it counts as failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive good checks that bring an unhealthy backend back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take a healthy backend out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}
fn default_interval_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_threshold() -> u32 {
    2
}

/// An HTTP route: conditions and the upstream they lead to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Matches when the request path starts with this string.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Matches when the request method is one of these.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Matches when this header has this value; a trailing `*` matches a prefix.
    #[serde(default)]
    pub header: Option<HeaderMatchConfig>,
    /// Matches every request; put it last.
    #[serde(default)]
    pub default: bool,
    /// Name of the upstream that serves matching requests.
    pub upstream: String,
}

/// A header condition of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    /// Header name, case-insensitive.
    pub name: String,
    /// Expected value, case-sensitive; `"US,*"` matches every value starting with `US,`.
    pub value: String,
}

/// A layer-4 listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address to accept TCP connections on.
    pub listen: SocketAddr,
    /// Name of the upstream whose backends receive the connections.
    pub upstream: String,
}

/// Why a configuration was rejected. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML did not match the schema (unknown key, wrong type).
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent with another.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key the problem is about.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl fmt::Display, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The value of a cookie.
    Cookie(String),
    /// The value of a request header.
    Header(HeaderName),
    /// The client's IP address.
    ClientIp,
}

impl HashKey {
    /// Parses `"cookie:NAME"`, `"header:NAME"` or `"client_ip"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(Self::ClientIp);
        }
        if let Some(name) = s.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
            return Ok(Self::Cookie(name.to_owned()));
        }
        if let Some(name) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("invalid header name {name:?}"));
        }
        Err(format!(
            "expected \"cookie:NAME\", \"header:NAME\" or \"client_ip\", got {s:?}"
        ))
    }
}

/// An IP network from `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `"10.0.0.0/8"`, `"::1"` or `"192.168.1.7"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address {ip:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length {p:?}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses a method list entry the way routes compare methods (upper case tokens).
pub(crate) fn parse_method(s: &str) -> Result<Method, String> {
    if s.is_empty() || s.bytes().any(|b| !b.is_ascii_uppercase()) {
        return Err(format!(
            "invalid method {s:?} (use upper case, like \"GET\")"
        ));
    }
    Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid method {s:?}"))
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot: ranges, references between sections, key syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            Cidr::parse(p).map_err(|m| invalid(format_args!("trusted_proxies[{i}]"), m))?;
        }
        let t = &self.timeouts;
        for (key, v) in [
            ("timeouts.connect_ms", t.connect_ms),
            ("timeouts.response_ms", t.response_ms),
            ("timeouts.idle_ms", t.idle_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(invalid("limits.max_header_bytes", "must be at least 1024"));
        }
        let r = &self.retry;
        if !(0.0..=1.0).contains(&r.budget_ratio) {
            return Err(invalid("retry.budget_ratio", "must be between 0.0 and 1.0"));
        }
        let rl = &self.rate_limit;
        if !rl.requests_per_second.is_finite() || rl.requests_per_second < 0.0 {
            return Err(invalid(
                "rate_limit.requests_per_second",
                "must be 0 (off) or positive",
            ));
        }

        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("upstreams[{i}]");
            validate_upstream(&key, u)?;
            if !names.insert(u.name.as_str()) {
                return Err(invalid(
                    format_args!("{key}.name"),
                    format!("duplicate upstream name {:?}", u.name),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if r.path_prefix.is_none() && r.methods.is_none() && r.header.is_none() && !r.default {
                return Err(invalid(
                    &key,
                    "a route needs at least one of path_prefix, methods, header, or default = true",
                ));
            }
            if r.default && (r.path_prefix.is_some() || r.methods.is_some() || r.header.is_some()) {
                return Err(invalid(
                    format_args!("{key}.default"),
                    "a default route takes no other condition",
                ));
            }
            if let Some(p) = &r.path_prefix
                && !p.starts_with('/')
            {
                return Err(invalid(
                    format_args!("{key}.path_prefix"),
                    "must start with '/'",
                ));
            }
            if let Some(methods) = &r.methods {
                if methods.is_empty() {
                    return Err(invalid(format_args!("{key}.methods"), "must not be empty"));
                }
                for (j, m) in methods.iter().enumerate() {
                    parse_method(m).map_err(|e| invalid(format_args!("{key}.methods[{j}]"), e))?;
                }
            }
            if let Some(h) = &r.header {
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    invalid(
                        format_args!("{key}.header.name"),
                        format!("invalid header name {:?}", h.name),
                    )
                })?;
            }
            if !names.contains(r.upstream.as_str()) {
                return Err(invalid(
                    format_args!("{key}.upstream"),
                    format!("no upstream named {:?}", r.upstream),
                ));
            }
        }
        let mut listens = vec![self.listen, self.admin_listen];
        for (i, t) in self.tcp.iter().enumerate() {
            if !names.contains(t.upstream.as_str()) {
                return Err(invalid(
                    format_args!("tcp[{i}].upstream"),
                    format!("no upstream named {:?}", t.upstream),
                ));
            }
            listens.push(t.listen);
        }
        for (i, a) in listens.iter().enumerate() {
            if a.port() != 0 && listens[..i].contains(a) {
                return Err(invalid("listen", format!("address {a} is used twice")));
            }
        }
        Ok(())
    }
}

fn validate_upstream(key: &str, u: &UpstreamConfig) -> Result<(), ConfigError> {
    if u.name.is_empty()
        || !u
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(
            format_args!("{key}.name"),
            "must be non-empty and use only letters, digits, '-', '_' and '.'",
        ));
    }
    match (&u.hash_key, u.policy) {
        (None, Policy::ConsistentHash) => {
            return Err(invalid(
                format_args!("{key}.hash_key"),
                "required when policy = \"consistent_hash\"",
            ));
        }
        (Some(_), p) if p != Policy::ConsistentHash => {
            return Err(invalid(
                format_args!("{key}.hash_key"),
                "only used with policy = \"consistent_hash\"",
            ));
        }
        (Some(k), _) => {
            HashKey::parse(k).map_err(|m| invalid(format_args!("{key}.hash_key"), m))?;
        }
        (None, _) => {}
    }
    if let Some(c) = &u.sticky_cookie
        && (c.is_empty() || !c.bytes().all(is_cookie_name_byte))
    {
        return Err(invalid(
            format_args!("{key}.sticky_cookie"),
            format!("invalid cookie name {c:?}"),
        ));
    }
    for (j, b) in u.backends.iter().enumerate() {
        if b.weight == 0 || b.weight > 1000 {
            return Err(invalid(
                format_args!("{key}.backends[{j}].weight"),
                "must be between 1 and 1000",
            ));
        }
        if u.backends[..j].iter().any(|o| o.addr == b.addr) {
            return Err(invalid(
                format_args!("{key}.backends[{j}].addr"),
                format!("duplicate backend {}", b.addr),
            ));
        }
    }
    if let Some(h) = &u.health {
        if !h.path.starts_with('/') {
            return Err(invalid(
                format_args!("{key}.health.path"),
                "must start with '/'",
            ));
        }
        for (k, v) in [
            ("interval_ms", h.interval_ms),
            ("timeout_ms", h.timeout_ms),
            ("healthy_threshold", u64::from(h.healthy_threshold)),
            ("unhealthy_threshold", u64::from(h.unhealthy_threshold)),
        ] {
            if v == 0 {
                return Err(invalid(
                    format_args!("{key}.health.{k}"),
                    "must be greater than 0",
                ));
            }
        }
    }
    if u.passive_eject_ms == 0 {
        return Err(invalid(
            format_args!("{key}.passive_eject_ms"),
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// Cookie-name characters allowed by RFC 6265 (an HTTP token).
pub(crate) fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[[upstreams]]
name = "web"
backends = [{ addr = "127.0.0.1:1" }]
[[routes]]
default = true
upstream = "web"
"#;

    #[test]
    fn a_minimal_file_parses_with_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.upstreams[0].policy, Policy::RoundRobin);
        assert_eq!(c.upstreams[0].backends[0].weight, 1);
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_name() {
        let text = MINIMAL.replace("[[routes]]", "[[routes]]\npath_prefx = \"/a\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("path_prefx"), "{err}");
    }

    #[test]
    fn a_route_to_a_missing_upstream_names_the_key() {
        let text = MINIMAL.replace("upstream = \"web\"", "upstream = \"nope\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("routes[0].upstream"), "{err}");
    }

    #[test]
    fn consistent_hash_requires_a_valid_hash_key() {
        let text = MINIMAL.replace(
            "name = \"web\"",
            "name = \"web\"\npolicy = \"consistent_hash\"",
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("upstreams[0].hash_key"), "{err}");
        let text = text.replace("policy =", "hash_key = \"body\"\npolicy =");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("upstreams[0].hash_key"), "{err}");
    }

    #[test]
    fn a_route_without_conditions_is_rejected() {
        let text = MINIMAL.replace("default = true\n", "");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("routes[0]"), "{err}");
    }

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }
}
