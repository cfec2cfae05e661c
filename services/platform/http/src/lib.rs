//! The HTTP surface every scaleout service shares: health and readiness, problem+json errors,
//! HTTP caching semantics, request ids, body limits and client addresses.
//!
//! # Layout
//! - [`HttpSettings`]: `BIND` and the limits every service enforces.
//! - [`caching`]: Cache-Control policies, ETags, Last-Modified and conditional GET (304).
//! - [`problem`]: RFC 9457 problem details, the error body of every JSON API.
//! - [`json`]: JSON body and query extractors whose every failure is a distinct problem.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`middleware`]: request ids with a request span, and the body-size limit.
//! - [`client_ip`]: the client's address, trusting forwarding headers only from known proxies.

pub mod caching;
pub mod health;
pub mod json;
pub mod middleware;
pub mod problem;

use std::net::IpAddr;

use actix_web::HttpRequest;
use platform_config::comma_separated;
use serde::{Deserialize, Serialize};

pub use problem::Problem;

/// HTTP settings shared by the web and mobile services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// `BIND`: the address to listen on, `host:port`. Port 0 picks a free port.
    pub bind: String,
    /// `HTTP_WORKERS`: actix worker threads; 0 means one per core.
    pub http_workers: usize,
    /// `MAX_BODY_BYTES`: the largest request body accepted on any route; larger ones get 413.
    pub max_body_bytes: usize,
    /// `SHUTDOWN_TIMEOUT_SECS`: on SIGTERM or Ctrl-C, in-flight requests get this long to finish.
    pub shutdown_timeout_secs: u64,
    /// `READINESS_TIMEOUT_MS`: each dependency check of `/readyz` gives up after this.
    pub readiness_timeout_ms: u64,
    /// `TRUSTED_PROXIES`: comma-separated addresses whose `X-Forwarded-For` is believed (the
    /// gateway's). Anyone else's forwarding headers are ignored.
    #[serde(with = "comma_separated")]
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".to_owned(),
            http_workers: 0,
            max_body_bytes: 64 * 1024,
            shutdown_timeout_secs: 10,
            readiness_timeout_ms: 500,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) to hand on to work this request causes,
/// such as the event of a submitted comment: the current span's when traces are exported, so
/// that work joins this service's span; otherwise whatever the caller sent, passed through.
pub fn outgoing_trace_context(req: &HttpRequest) -> (Option<String>, Option<String>) {
    let mut current = platform_telemetry::propagation::inject(&tracing::Span::current());
    if let Some(parent) = current.remove("traceparent") {
        return (Some(parent), current.remove("tracestate"));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (header("traceparent"), header("tracestate"))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
///
/// Walking from the right matters: the left of the header is whatever the client wrote, and
/// only the entries appended by our own proxies can be believed.
pub fn client_ip(req: &HttpRequest, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if trusted_proxies.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // A garbled entry means nothing left of it can be trusted either.
            Err(_) => break,
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.9:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .to_http_request();
        assert_eq!(client_ip(&req, &[]), Some("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_spoofed_entries_are_skipped() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let req = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 203.0.113.7"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[proxy]),
            Some("203.0.113.7".parse().unwrap())
        );
    }
}
