//! Active health checks, one task per upstream.
//!
//! Each tick checks every backend of the current set at once, so one slow backend does not
//! delay the verdict on the others. An upstream without active checks still gets a task: it
//! brings passively ejected backends back after `passive_eject_ms`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{HOST, HeaderMap, HeaderValue, USER_AGENT};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Uri};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::body::UpstreamBody;
use crate::config::HealthConfig;
use crate::h1::RequestHead;
use crate::upstream::{Backend, Upstream, now_ms};

/// Starts the health task of an upstream; it ends on shutdown or when a reload retires the
/// upstream.
pub fn spawn(upstream: Arc<Upstream>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let period = match &upstream.health {
            Some(h) => Duration::from_millis(h.interval_ms),
            None => (upstream.passive_eject / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        };
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            if upstream.is_retired() || *shutdown.borrow() {
                return;
            }
            let set = upstream.backends();
            let Some(health) = &upstream.health else {
                for b in &set.backends {
                    if b.readmit_after(upstream.passive_eject) {
                        tracing::info!(message = "Backend readmitted after its eject time.", upstream = %upstream.name, backend = %b.addr);
                    }
                }
                continue;
            };
            let mut checks = JoinSet::new();
            for b in &set.backends {
                let b = Arc::clone(b);
                let h = health.clone();
                checks.spawn(async move {
                    let ok = check(&b, &h).await;
                    (b, ok)
                });
            }
            while let Some(Ok((b, ok))) = checks.join_next().await {
                // A reload during the round: the upstream that replaced this one has the same
                // backends' state and checks them itself; two rounds must not count as one.
                if upstream.is_retired() {
                    return;
                }
                match b.record_check(ok, health) {
                    Some(true) => {
                        tracing::info!(message = "Backend healthy again.", upstream = %upstream.name, backend = %b.addr)
                    }
                    Some(false) => {
                        tracing::warn!(message = "Backend failed its health checks.", upstream = %upstream.name, backend = %b.addr)
                    }
                    None => {}
                }
            }
        }
    });
}

/// One check: GET the path; a 2xx or 3xx within the timeout is healthy.
async fn check(backend: &Backend, health: &HealthConfig) -> bool {
    let Ok(uri) = Uri::try_from(health.path.as_str()) else {
        return false;
    };
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(HOST, backend.host.clone());
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static("scaleout-gateway-health"),
    );
    let head = RequestHead {
        method: &Method::GET,
        target: uri.path_and_query().map_or("/", PathAndQuery::as_str),
        headers: &headers,
        host: None,
    };
    let exchange = async {
        let response = backend
            .pool
            .send(&head, UpstreamBody::Empty, true, now_ms())
            .await
            .ok()?;
        let ok = response.status().is_success() || response.status().is_redirection();
        // Read the body to its end so the connection can go back to the pool.
        response.into_body().collect().await.ok()?;
        Some(ok)
    };
    tokio::time::timeout(Duration::from_millis(health.timeout_ms), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
