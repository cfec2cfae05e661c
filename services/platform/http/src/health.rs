//! `/healthz` says the process is alive; `/readyz` says its dependencies answer.
//!
//! An orchestrator restarts a process that fails `/healthz` and stops routing to one that fails
//! `/readyz`, so the two must differ: a Redis outage makes a service unready, never dead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::future::join_all;
use serde_json::json;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency probed by `/readyz`.
#[derive(Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    probe: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl ReadinessCheck {
    /// A check named `name` (shown in the response) that runs `probe`.
    pub fn new<F, Fut, E>(name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        Self {
            name,
            probe: Arc::new(move || {
                let fut = probe();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        }
    }
}

/// The checks `/readyz` runs, each bounded by `timeout`.
#[derive(Clone)]
pub struct Readiness {
    checks: Vec<ReadinessCheck>,
    timeout: Duration,
}

impl Readiness {
    pub fn new(checks: Vec<ReadinessCheck>, timeout: Duration) -> Self {
        Self { checks, timeout }
    }
}

impl ReadinessCheck {
    /// A check that passes while `flag` is set, for a dependency a process tracks itself (a
    /// broker connection that its consumer loop keeps open); `what` says why it is not ready.
    pub fn flag(
        name: &'static str,
        flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
        what: &'static str,
    ) -> Self {
        Self::new(name, move || {
            let up = flag.load(std::sync::atomic::Ordering::Relaxed);
            async move { if up { Ok(()) } else { Err(what) } }
        })
    }
}

/// A probe server for processes with no HTTP API of their own (the relay, the workers):
/// `/healthz`, `/readyz` with `checks`, and whatever `extra` mounts (`/metrics`), on one worker
/// thread at `settings.bind` (port 0 picks one; the port is returned).
///
/// It ignores signals: the process stops it after it has finished its own work, so the probes
/// answer for as long as the process is alive.
pub fn serve_probes<F>(
    settings: &crate::HttpSettings,
    checks: Vec<ReadinessCheck>,
    extra: F,
) -> std::io::Result<(u16, actix_web::dev::Server)>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let readiness = Readiness::new(checks, Duration::from_millis(settings.readiness_timeout_ms));
    let listener = std::net::TcpListener::bind(&settings.bind)?;
    let port = listener.local_addr()?.port();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .configure(|cfg| configure(cfg, readiness.clone()))
            .configure(extra.clone())
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((port, server))
}

/// Resolves on SIGTERM (what an orchestrator sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("the SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!(message = "Stopping.");
}

/// Registers `/healthz` and `/readyz`.
pub fn configure(cfg: &mut web::ServiceConfig, readiness: Readiness) {
    cfg.app_data(web::Data::new(readiness))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({ "status": "ok" }))
}

/// Runs every check at once, so a slow dependency costs one timeout, not one per check.
async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let timeout = readiness.timeout;
    let results = join_all(readiness.checks.iter().map(|check| async move {
        let outcome = match tokio::time::timeout(timeout, (check.probe)()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        (check.name, outcome)
    }))
    .await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<_, _> = results
        .into_iter()
        .map(|(name, r)| {
            let value = match r {
                Ok(()) => json!("ok"),
                Err(e) => {
                    tracing::warn!(message = "Readiness check failed.", check = name, error = %e);
                    json!(format!("failed: {e}"))
                }
            };
            (name.to_owned(), value)
        })
        .collect();
    let body = json!({ "status": if ready { "ready" } else { "unready" }, "checks": checks });
    if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    }
    .insert_header(("cache-control", "no-store"))
    .json(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, test};

    #[actix_web::test]
    async fn a_hung_dependency_makes_readyz_fail_within_the_timeout_while_healthz_passes() {
        let readiness = Readiness::new(
            vec![
                ReadinessCheck::new("fine", || async { Ok::<_, String>(()) }),
                ReadinessCheck::new("hung", || async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, String>(())
                }),
            ],
            Duration::from_millis(50),
        );
        let app = test::init_service(App::new().configure(|c| configure(c, readiness))).await;
        let health =
            test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(health.status(), 200);
        let ready =
            test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = test::read_body_json(ready).await;
        assert_eq!(body["checks"]["fine"], "ok");
        assert!(
            body["checks"]["hung"]
                .as_str()
                .unwrap()
                .starts_with("failed")
        );
    }
}
