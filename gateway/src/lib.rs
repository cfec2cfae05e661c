//! The public entry point of scaleout: an L7 and L4 load balancer with health checks, affinity and a live admin API.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, its defaults and validation (`--check`).
//! - [`state`]: the runtime built from a config (routes, upstreams, limits), swapped whole on
//!   reload.
//! - [`upstream`]: backends with their counters and health state machine, and the backend set
//!   the admin API swaps.
//! - [`balance`]: the load-balancing policies, each a small type over a [`balance::Pool`].
//! - [`health`]: active health checks and passive re-admission.
//! - [`server`]: the HTTP/1.1 server codec of the public listener (the admin listener uses
//!   hyper's); [`conn`] holds the per-connection timers of both.
//! - [`proxy`]: the L7 path; [`body`] holds its request and response body types, [`pool`] the
//!   keep-alive connections to each backend, and [`h1`] the HTTP/1.1 codec spoken on them.
//! - [`tcp`]: the L4 path.
//! - [`ring`]: socket I/O of both paths through io_uring, one system call per event-loop turn
//!   ([`ring::Socket`] falls back to epoll where io_uring is unavailable).
//! - [`limits`]: rate limit and retry budget.
//! - [`admin`] and [`metrics`]: the admin API and the Prometheus text.
//! - [`error`]: errors by source and retryability, answered as `application/problem+json`.
//!
//! [`Gateway::build`] binds every listener (port 0 works; read the real addresses back) and
//! [`Gateway::run`] serves until the shutdown future resolves, then drains, in the shape of
//! mini-redis's `run(listener, shutdown)`, so tests drive a real gateway in-process.

pub mod admin;
pub mod balance;
pub mod body;
pub mod config;
pub mod conn;
pub mod error;
pub mod h1;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod ring;
pub mod server;
pub mod state;
pub mod tcp;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub use crate::config::Config;
use crate::proxy::Peer;
pub use crate::state::Shared;

/// A gateway with its listeners bound, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: TcpListener,
    tcp: Vec<TcpListener>,
    tracing: bool,
}

impl Gateway {
    /// Validates the config and binds the public, admin and TCP listeners.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_path(config, None).await
    }

    /// Like [`build`](Self::build), remembering the file that a reload re-reads.
    pub async fn build_with_path(config: Config, path: Option<PathBuf>) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("Failed to bind listen address {}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "Failed to bind admin_listen address {}",
                    config.admin_listen
                )
            })?;
        let mut tcp = Vec::with_capacity(config.tcp.len());
        for t in &config.tcp {
            tcp.push(
                TcpListener::bind(t.listen)
                    .await
                    .with_context(|| format!("Failed to bind tcp listen address {}", t.listen))?,
            );
        }
        Ok(Self {
            shared: Arc::new(Shared::new(config, path)),
            listener,
            admin,
            tcp,
            tracing: false,
        })
    }

    /// Turns request tracing on or off (off by default).
    ///
    /// On, every proxied request gets an OpenTelemetry server span that continues the client's
    /// `traceparent`, and the backend receives a `traceparent` naming that span. The spans go
    /// to whatever subscriber is current: `platform_telemetry::init` in the binary, or one a
    /// test installs. Off, no span is created and `traceparent` passes through untouched, so
    /// tracing costs nothing on the request path.
    pub fn with_tracing(mut self, on: bool) -> Self {
        self.tracing = on;
        self
    }

    /// The bound public address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener")
    }

    /// The bound TCP (L4) addresses, in config order.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .map(|l| l.local_addr().expect("a bound listener"))
            .collect()
    }

    /// The shared state: reload, inspect.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives in-flight requests and
    /// TCP sessions up to `timeouts.shutdown_ms` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            shared,
            listener,
            admin,
            tcp,
            tracing,
        } = self;
        shared.start();
        // Every connection task holds a sender; when all are gone, the receiver sees `None`.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let config = shared.runtime().config.clone();
        // The admin listener's server; the public one is `server`.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Idle connections are closed by `conn::idle`, which needs no timer per request.
            .header_read_timeout(None)
            .max_buf_size((config.limits.max_header_bytes * 2).max(8192) + 8192)
            .max_header_size(config.limits.max_header_bytes * 2);

        let public = {
            let shared = Arc::clone(&shared);
            accept_loop(
                listener,
                shared.shutdown.subscribe(),
                done_tx.clone(),
                move |stream, peer, shutdown, done| {
                    let shared = Arc::clone(&shared);
                    // Read per connection, so a reload's value applies to the next one.
                    let idle = idle_timeout(&shared);
                    async move {
                        let _done = done;
                        server::serve(stream, shared, Peer::new(peer), tracing, idle, shutdown)
                            .await;
                    }
                },
            )
        };
        let admin = {
            let shared = Arc::clone(&shared);
            accept_loop(
                admin,
                shared.shutdown.subscribe(),
                done_tx.clone(),
                move |stream, _peer, shutdown, done| {
                    let shared = Arc::clone(&shared);
                    let idle = idle_timeout(&shared);
                    let service = service_fn(move |req| admin::serve(Arc::clone(&shared), req));
                    serve_http(builder.clone(), stream, service, idle, shutdown, done)
                },
            )
        };
        let mut loops = vec![tokio::spawn(public), tokio::spawn(admin)];
        for (index, listener) in tcp.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            loops.push(tokio::spawn(accept_loop(
                listener,
                shared.shutdown.subscribe(),
                done_tx.clone(),
                move |stream, _peer, _shutdown, done| {
                    let shared = Arc::clone(&shared);
                    async move {
                        let _done = done;
                        tcp::proxy(shared, index, stream).await;
                    }
                },
            )));
        }
        drop(done_tx);

        shutdown.await;
        tracing::info!(message = "Shutting down; draining in-flight requests.");
        shared.shutdown.send_replace(true);
        for l in loops {
            let _ = l.await;
        }
        let deadline = Duration::from_millis(shared.runtime().config.timeouts.shutdown_ms);
        if tokio::time::timeout(deadline, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(message = "Shutdown deadline passed with requests still in flight.");
        }
        for u in &shared.runtime().upstreams {
            u.retire();
        }
        Ok(())
    }
}

/// Accepts until shutdown, handing each connection to `handle` on its own task.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>, mpsc::Sender<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(message = "Accept failed.", %error);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(stream, peer, shutdown.clone(), done.clone()));
    }
}

/// `timeouts.idle_ms` of the current config.
fn idle_timeout(shared: &Shared) -> Duration {
    Duration::from_millis(shared.runtime().config.timeouts.idle_ms)
}

/// Serves the admin API's HTTP/1.1 on one connection; on shutdown or after `idle` without
/// traffic, finishes the request in flight and closes.
async fn serve_http<S>(
    builder: http1::Builder,
    stream: TcpStream,
    service: S,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<body::ResponseBody>,
            Error = std::convert::Infallible,
        >,
{
    let _done = done;
    let (stream, clock) = conn::Tracked::new(stream);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(message = "Client connection ended with an error.", %error);
            }
            return;
        }
        _ = shutdown.changed() => {}
        _ = conn::idle(&clock, idle) => {}
    }
    connection.as_mut().graceful_shutdown();
    // A request still in flight may finish; a client stalled in the middle of a request head
    // is cut off after one more idle period.
    let _ = tokio::time::timeout(idle, connection).await;
}
