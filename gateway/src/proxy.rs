//! The L7 path: limits, routing, backend choice (affinity, hash, policy), header rewriting,
//! one retry, and streaming the answer back.
//!
//! The request is read once per phase and never copied: its head is written to the backend
//! straight from the parsed client request, so a retry writes the same head again, and only a
//! buffered body is kept (as shared bytes) for that second attempt.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hyper::body::Body;
use hyper::header::{COOKIE, HOST, HeaderMap, HeaderName, HeaderValue, SET_COOKIE};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Method, Request, Response};

use platform_telemetry::propagation;
use tracing::Instrument as _;

use crate::balance::hash_bytes;
use crate::body::{BodyError, ResponseBody, UpstreamBody};
use crate::config::HashKey;
use crate::conn::Deadline;
use crate::error::{ErrorSource, ProxyError};
use crate::h1::RequestHead;
use crate::pool::{BackendBody, SendError};
use crate::server::ClientBody;
use crate::state::{Runtime, Shared};
use crate::upstream::{InFlight, Upstream, ms_at};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What the gateway knows about a client connection, computed once at accept.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub ip_header: HeaderValue,
}

impl Peer {
    /// Describes a freshly accepted connection.
    pub fn new(addr: SocketAddr) -> Self {
        let ip_header = HeaderValue::try_from(addr.ip().to_string()).expect("an IP is ASCII");
        Self { addr, ip_header }
    }
}

/// Serves one request with the runtime current when it arrived; every failure becomes a
/// problem+json answer. `deadline` is the connection's timer for the backend's response.
///
/// With `tracing` on, the request runs inside a server span (see [`serve_traced`]); off, no
/// span is created and no trace header is touched.
pub async fn serve(
    shared: &Shared,
    rt: &Runtime,
    peer: &Peer,
    req: Request<ClientBody>,
    tracing: bool,
    deadline: &mut Deadline,
) -> Response<ResponseBody> {
    if tracing {
        // Boxed, so the span and its bookkeeping do not grow the future of untraced requests.
        return Box::pin(serve_traced(shared, rt, peer, req, deadline)).await;
    }
    match proxy(rt, peer, req, None, deadline).await {
        Ok(response) => response,
        Err(error) => local_answer(shared, error),
    }
}

/// Counts, logs and answers a request the gateway could not proxy.
pub(crate) fn local_answer(shared: &Shared, error: ProxyError) -> Response<ResponseBody> {
    let status = error.status().as_u16();
    shared.local.record(status);
    // By who caused it, not by status: a 501 for a client's transfer coding is its fault.
    if error.source_kind() != ErrorSource::Downstream {
        tracing::warn!(message = "Request failed.", %error, source = ?error.source_kind());
    } else {
        tracing::debug!(message = "Request refused.", %error);
    }
    error.into_response()
}

/// Serves one request inside an OpenTelemetry server span that continues the client's trace.
///
/// Attributes follow OpenTelemetry's HTTP server conventions (`http.request.method`,
/// `url.path`, `server.address` and `server.port` from `Host`, `network.peer.address`,
/// `http.response.status_code`, error status on 5xx); the gateway's own decisions are
/// `scaleout.upstream`, `scaleout.policy` and `scaleout.backend` (the backend address). The
/// span ends with the response head, like the services' request spans.
async fn serve_traced(
    shared: &Shared,
    rt: &Runtime,
    peer: &Peer,
    req: Request<ClientBody>,
    deadline: &mut Deadline,
) -> Response<ResponseBody> {
    use tracing::field::Empty;

    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http.request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = req.uri().path(),
        url.scheme = "http",
        server.address = Empty,
        server.port = Empty,
        network.peer.address = %peer.addr.ip(),
        network.peer.port = i64::from(peer.addr.port()),
        http.response.status_code = Empty,
        scaleout.upstream = Empty,
        scaleout.policy = Empty,
        scaleout.backend = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if let Some(host) = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
    {
        span.record("server.address", host.host());
        if let Some(port) = host.port_u16() {
            span.record("server.port", i64::from(port));
        }
    }
    propagation::set_remote_parent(&span, |name| {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    });
    if let Some((trace_id, span_id)) = propagation::ids(&span) {
        span.record("trace_id", trace_id);
        span.record("span_id", span_id);
    }

    let response = match proxy(rt, peer, req, Some(&span), deadline)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(error) => span.in_scope(|| local_answer(shared, error)),
    };
    let status = response.status().as_u16();
    // As an i64: OpenTelemetry has no unsigned integers, and smaller ones arrive as text.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Points the backend's `traceparent` (and `tracestate`) at the gateway's span, replacing the
/// client's, so the service's span becomes the gateway span's child. Without an OpenTelemetry
/// layer the span has no context, and the client's headers are left as they are.
fn propagate(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = propagation::inject(span);
    let Some(parent) = context
        .get("traceparent")
        .and_then(|v| HeaderValue::from_str(v).ok())
    else {
        return;
    };
    headers.insert(&TRACEPARENT, parent);
    match context
        .get("tracestate")
        .filter(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        Some(state) => headers.insert(&TRACESTATE, state),
        None => headers.remove(&TRACESTATE),
    };
}

/// The L7 path proper. `span` is the request's span when tracing is on.
async fn proxy(
    rt: &Runtime,
    peer: &Peer,
    req: Request<ClientBody>,
    span: Option<&tracing::Span>,
    deadline: &mut Deadline,
) -> Result<Response<ResponseBody>, ProxyError> {
    let trusted = rt.is_trusted(peer.addr.ip());
    let client_ip = if trusted {
        forwarded_client(req.headers(), rt).unwrap_or(peer.addr.ip())
    } else {
        peer.addr.ip()
    };
    if let Some(limiter) = &rt.rate_limiter {
        limiter
            .check(client_ip, Instant::now())
            .map_err(ProxyError::RateLimited)?;
    }
    // The head's size and framing were checked as it was parsed.
    let limits = &rt.config.limits;
    let content_length = req.body().declared_length();
    if content_length.is_some_and(|l| l > limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge(limits.max_body_bytes));
    }

    let route = rt
        .route(&req)
        .ok_or_else(|| ProxyError::NoRoute(req.uri().path().to_owned()))?;
    let upstream = &route.upstream;
    let set = upstream.backends();
    if let Some(span) = span {
        span.record("scaleout.upstream", &*upstream.name);
        span.record("scaleout.policy", upstream.policy.as_str());
    }

    let pinned = upstream
        .sticky_cookie
        .as_deref()
        .and_then(|name| cookie(req.headers(), name))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok());
    let hash = match &upstream.hash_key {
        None => 0,
        Some(key) => hash_key(key, req.headers()).unwrap_or_else(|| hash_ip(client_ip)),
    };

    let (mut parts, body) = req.into_parts();
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD)
        || parts.headers.contains_key(&IDEMPOTENCY_KEY);
    rewrite_request_headers(&mut parts.headers, peer, trusted);
    if let Some(span) = span {
        propagate(span, &mut parts.headers);
    }
    let body = if body.is_end_stream() {
        UpstreamBody::Empty
    } else if idempotent
        && rt.config.retry.enabled
        && content_length.is_some_and(|l| l <= rt.config.retry.max_buffered_body_bytes)
    {
        Box::pin(UpstreamBody::buffer(body, limits.max_body_bytes))
            .await
            .map_err(body_error)?
    } else {
        UpstreamBody::stream(body, limits.max_body_bytes)
    };
    rt.retry_budget.deposit();

    let (first, guard) = set
        .start_request(pinned, hash, None)
        .ok_or_else(|| ProxyError::NoHealthyBackend(upstream.name.to_string()))?;
    let spare_body = if idempotent && rt.config.retry.enabled {
        body.try_clone()
    } else {
        None
    };
    let head = RequestHead {
        method: &parts.method,
        // Backends get the origin form (`/path?query`), even from a client that sent an
        // absolute URI.
        target: parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
        headers: &parts.headers,
        host: None,
    };

    if let Some(span) = span {
        span.record("scaleout.backend", &*guard.backend().addr_text);
    }
    let error = match attempt(rt, upstream, guard, &head, body, idempotent, deadline).await {
        Ok(exchange) => return Ok(respond(exchange, upstream, pinned)),
        Err(error) => error,
    };
    let Some(body) = spare_body.filter(|_| error.is_retryable()) else {
        return Err(error);
    };
    let Some(second) = set.pick(hash, Some(first)) else {
        return Err(error);
    };
    if !rt.retry_budget.try_withdraw() {
        tracing::debug!(message = "Retry budget exhausted.", upstream = %upstream.name);
        return Err(error);
    }
    // Fails only if a drain of that backend began since the pick: too rare to pick again.
    let Some(guard) = set.backends[second].try_start() else {
        rt.retry_budget.refund();
        return Err(error);
    };
    tracing::debug!(message = "Retrying on another backend.", %error);
    if let Some(span) = span {
        span.record("scaleout.backend", &*guard.backend().addr_text);
    }
    // Boxed: a retry is rare, and its state would otherwise double the size of every request.
    let exchange = Box::pin(attempt(
        rt, upstream, guard, &head, body, idempotent, deadline,
    ))
    .await?;
    Ok(respond(exchange, upstream, pinned))
}

/// Sends the request to the backend `guard` counts it on and waits up to
/// `timeouts.response_ms` for its response head, on the connection's deadline. An
/// `idempotent` request may go twice to the backend (see [`ConnPool::send`]).
///
/// [`ConnPool::send`]: crate::pool::ConnPool::send
async fn attempt(
    rt: &Runtime,
    upstream: &Upstream,
    guard: InFlight,
    head: &RequestHead<'_>,
    body: UpstreamBody,
    idempotent: bool,
    deadline: &mut Deadline,
) -> Result<(Response<BackendBody>, InFlight), ProxyError> {
    let backend = guard.backend();
    let head = RequestHead {
        host: if head.headers.contains_key(HOST) {
            None
        } else {
            Some(&backend.host)
        },
        ..*head
    };

    // One clock read serves both the deadline and the latency.
    let started = tokio::time::Instant::now();
    deadline.arm(started + rt.response_timeout);
    let sent = backend
        .pool
        .send(&head, body, idempotent, ms_at(started.into_std()));
    match deadline.within(sent).await {
        Some(Ok(response)) => {
            upstream.latency.observe(started.elapsed());
            backend.record_status(response.status().as_u16(), upstream);
            Ok((response, guard))
        }
        Some(Err(SendError::Connect(_))) => {
            backend.record_connect_failure(upstream);
            Err(ProxyError::Connect(backend.addr_text.to_string()))
        }
        // The client's fault, not the backend's: no failure is counted against it.
        Some(Err(SendError::Body(error))) => Err(body_error(error)),
        Some(Err(SendError::Failed(error))) => {
            tracing::debug!(message = "Backend exchange failed.", backend = %backend.addr, %error);
            backend.record_failure(upstream);
            Err(ProxyError::Reset(backend.addr_text.to_string()))
        }
        None => {
            backend.record_failure(upstream);
            Err(ProxyError::Timeout(backend.addr_text.to_string()))
        }
    }
}

/// Builds the client's response: the backend's status and fields (hop-by-hop ones were left
/// out as its head was parsed), the affinity cookie when the client is not (or no longer)
/// pinned to this backend, and the streamed body.
fn respond(
    (response, guard): (Response<BackendBody>, InFlight),
    upstream: &Upstream,
    pinned: Option<u64>,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    let backend = guard.backend();
    if let Some(cookie) = &backend.sticky_set_cookie
        && upstream.sticky_cookie.is_some()
        && pinned != Some(backend.id)
    {
        parts.headers.append(SET_COOKIE, cookie.clone());
    }
    Response::from_parts(parts, ResponseBody::upstream(body, guard))
}

fn body_error(e: BodyError) -> ProxyError {
    match e {
        BodyError::TooLarge(limit) => ProxyError::BodyTooLarge(limit),
        BodyError::Client(e) if e.kind() == std::io::ErrorKind::TimedOut => ProxyError::BodyStalled,
        BodyError::Client(_) => ProxyError::BadRequest("the request body broke off"),
    }
}

/// Sets `X-Forwarded-*`: a trusted proxy's values are kept and extended, anyone else's are
/// replaced, so a client cannot forge its address to a backend. Hop-by-hop fields were left
/// out when the request was parsed.
fn rewrite_request_headers(headers: &mut HeaderMap, peer: &Peer, trusted: bool) {
    let forwarded_for = if trusted && headers.contains_key(&X_FORWARDED_FOR) {
        // Every line of it, in order: a list split over several fields is one list.
        let mut v = Vec::with_capacity(64);
        for existing in headers.get_all(&X_FORWARDED_FOR) {
            v.extend_from_slice(existing.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(peer.ip_header.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.ip_header.clone())
    } else {
        peer.ip_header.clone()
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match headers.get(HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if !trusted && headers.contains_key(&FORWARDED) {
        headers.remove(&FORWARDED);
    }
}

/// The client address a trusted proxy reports: the right-most `X-Forwarded-For` entry that is
/// not itself a trusted proxy.
fn forwarded_client(headers: &HeaderMap, rt: &Runtime) -> Option<IpAddr> {
    let mut last = None;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.to_str().ok()?.rsplit(',') {
            let ip: IpAddr = entry.trim().parse().ok()?;
            if !rt.is_trusted(ip) {
                return Some(ip);
            }
            last = Some(ip);
        }
    }
    last
}

/// The value of a cookie in the `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=").map(<[u8]>::trim_ascii_end)
        })
    })
}

fn hash_key(key: &HashKey, headers: &HeaderMap) -> Option<u64> {
    match key {
        HashKey::Cookie(name) => cookie(headers, name).map(hash_bytes),
        HashKey::Header(name) => headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::ClientIp => None,
    }
}

/// Hash of an IP address for the hash ring.
pub(crate) fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; sid=xyz ;b=2"));
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "si"), None);
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn an_untrusted_client_cannot_forge_forwarding_headers() {
        let peer = Peer::new("192.0.2.7:5000".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert(HOST, HeaderValue::from_static("example.org"));
        rewrite_request_headers(&mut h, &peer, false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.org");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended() {
        let peer = Peer::new("10.0.0.2:5000".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        rewrite_request_headers(&mut h, &peer, true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn a_trusted_proxy_chain_split_over_several_fields_is_kept_whole() {
        let peer = Peer::new("10.0.0.2:5000".parse().unwrap());
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("5.6.7.8, 10.0.0.1"),
        );
        rewrite_request_headers(&mut h, &peer, true);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1, 10.0.0.2");
    }
}
