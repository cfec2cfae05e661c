//! The admin API: upstream state as JSON, backends added and drained at run time, `/metrics`
//! and `/healthz`.
//!
//! It listens on its own address so it can be kept off the public network, and it shares no
//! lock with the request path: changes build a new backend set and swap it in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::ResponseBody;
use crate::error::problem;
use crate::metrics;
use crate::state::Shared;
use crate::upstream::{Backend, ChangeError, Upstream};

/// Body of `POST /admin/upstreams/{name}/backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    /// `IP:port` of the backend.
    addr: SocketAddr,
    /// Its weight, 1 by default.
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// A backend as the admin API shows it.
#[derive(Debug, Serialize)]
struct BackendView<'a> {
    addr: &'a str,
    weight: u32,
    healthy: bool,
    draining: bool,
    in_flight: u64,
    requests_total: u64,
    failures_total: u64,
}

impl<'a> From<&'a Backend> for BackendView<'a> {
    fn from(b: &'a Backend) -> Self {
        Self {
            addr: &b.addr_text,
            weight: b.weight,
            healthy: b.is_healthy(),
            draining: b.is_draining(),
            in_flight: b.in_flight(),
            requests_total: b.requests_total(),
            failures_total: b.failures_total(),
        }
    }
}

fn upstream_json(u: &Upstream) -> serde_json::Value {
    let set = u.backends();
    let backends: Vec<BackendView<'_>> = set.backends.iter().map(|b| (&**b).into()).collect();
    serde_json::json!({
        "name": &*u.name,
        "policy": u.policy.as_str(),
        "sticky_cookie": u.sticky_cookie.as_deref(),
        "backends": backends,
    })
}

/// Serves one admin request.
pub async fn serve(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let response = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["metrics"]) => {
            let runtime = shared.runtime();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&runtime.upstreams, &shared.local),
            )
        }
        (&Method::GET, ["admin", "upstreams"]) => {
            let runtime = shared.runtime();
            let list: Vec<_> = runtime.upstreams.iter().map(|u| upstream_json(u)).collect();
            json(StatusCode::OK, &serde_json::json!({ "upstreams": list }))
        }
        (&Method::GET, ["admin", "upstreams", name]) => match shared.runtime().upstream(name) {
            Some(u) => json(StatusCode::OK, &upstream_json(u)),
            None => not_found(name),
        },
        (&Method::POST, ["admin", "upstreams", name, "backends"]) => {
            let name = (*name).to_owned();
            add_backend(&shared, &name, req.into_body()).await
        }
        (&Method::DELETE, ["admin", "upstreams", name, "backends", addr]) => {
            remove_backend(&shared, name, addr).await
        }
        (_, ["healthz"] | ["metrics"] | ["admin", "upstreams", ..]) => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this path",
        ),
        _ => problem(StatusCode::NOT_FOUND, "no such admin endpoint"),
    };
    Ok(response)
}

async fn add_backend(shared: &Shared, name: &str, body: Incoming) -> Response<ResponseBody> {
    let bytes = match Limited::new(body, 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return problem(StatusCode::BAD_REQUEST, "unreadable or too large body"),
    };
    let new: NewBackend = match serde_json::from_slice(&bytes) {
        Ok(n) => n,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if new.weight == 0 || new.weight > 1000 {
        return problem(
            StatusCode::BAD_REQUEST,
            "weight: must be between 1 and 1000",
        );
    }
    let runtime = shared.runtime();
    let Some(upstream) = runtime.upstream(name) else {
        return not_found(name);
    };
    match upstream.add_backend(new.addr, new.weight) {
        Ok(()) => {
            tracing::info!(message = "Backend added.", upstream = name, backend = %new.addr);
            json(StatusCode::CREATED, &upstream_json(upstream))
        }
        Err(e) => problem(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Drains a backend (no new requests, in-flight ones finish, up to `timeouts.drain_ms`), then
/// removes it. The answer comes once it is removed, so a script can stop the server next.
async fn remove_backend(shared: &Arc<Shared>, name: &str, addr: &str) -> Response<ResponseBody> {
    let Some(addr) = backend_addr(addr) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the backend must be written IP:port (an IPv6 one as [IP]:port), percent-encoded or not",
        );
    };
    let runtime = shared.runtime();
    let Some(upstream) = runtime.upstream(name) else {
        return not_found(name);
    };
    let backend = match upstream.start_drain(addr) {
        Ok(b) => b,
        Err(e @ ChangeError::NotFound(_)) => {
            return problem(StatusCode::NOT_FOUND, &e.to_string());
        }
        Err(e) => return problem(StatusCode::CONFLICT, &e.to_string()),
    };
    let drain = Duration::from_millis(runtime.config.timeouts.drain_ms);
    // Its own task: a caller that stops waiting must not leave the backend draining forever,
    // out of rotation but never removed (reloads keep the flag).
    let finish = tokio::spawn(finish_drain(
        Arc::clone(shared),
        name.into(),
        backend,
        drain,
    ));
    let drained = finish.await.unwrap_or(false);
    tracing::info!(message = "Backend removed.", upstream = name, backend = %addr, drained);
    json(
        StatusCode::OK,
        &serde_json::json!({ "removed": addr.to_string(), "drained": drained }),
    )
}

/// Waits up to `drain` for a draining backend's requests to finish, then removes it from the
/// upstream named `name`; returns whether it drained.
async fn finish_drain(
    shared: Arc<Shared>,
    name: Box<str>,
    backend: Arc<Backend>,
    drain: Duration,
) -> bool {
    let deadline = Instant::now() + drain;
    // The count can be trusted at once: a request that picked this backend before the flag
    // was set is either counted already or sees the flag and goes elsewhere
    // (`Backend::try_start`).
    while backend.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = backend.in_flight() == 0;
    // From the upstream current now: a reload during the wait built a new one, which took the
    // backend's state over, draining included. A backend already gone (by a reload that
    // dropped it, or another removal) is as removed as this call wants it.
    if let Some(upstream) = shared.runtime().upstream(&name) {
        upstream.remove_backend(&backend);
    }
    drained
}

/// The backend address a path segment names, percent-encoded or not.
fn backend_addr(segment: &str) -> Option<SocketAddr> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    decoded.parse().ok()
}

fn not_found(name: &str) -> Response<ResponseBody> {
    problem(
        StatusCode::NOT_FOUND,
        &format!("no upstream named {name:?}"),
    )
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    text(status, "application/json", value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_address_in_a_path_is_percent_decoded() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(backend_addr("127.0.0.1:80"), Some(v4));
        assert_eq!(backend_addr("127.0.0.1%3a80"), Some(v4));
        assert_eq!(
            backend_addr("%5B%3A%3A1%5D%3A8080"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(backend_addr("1%3"), None);
        assert_eq!(backend_addr("%zz"), None);
        assert_eq!(backend_addr("%ff"), None);
    }
}
