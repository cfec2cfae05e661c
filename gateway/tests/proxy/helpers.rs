//! Stub backends, a test client and an in-process gateway, all on 127.0.0.1 port 0.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::{Config, Gateway, Shared};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

/// What a stub backend shares with the test that drives it.
#[derive(Debug, Default)]
pub(crate) struct StubState {
    /// Requests served, health checks excluded.
    pub(crate) hits: AtomicUsize,
    /// Health checks answered.
    pub(crate) health_checks: AtomicUsize,
    /// Whether `/healthz` answers 200 (otherwise 503).
    pub(crate) unhealthy: AtomicBool,
    /// Whether every answer (health checks aside) is a 500.
    pub(crate) failing: AtomicBool,
    /// Delay before each answer, in milliseconds.
    pub(crate) delay_ms: AtomicU64,
    /// Whether answers wait for [`Stub::release`].
    held: AtomicBool,
    released: Notify,
    /// Headers of the last request.
    pub(crate) last_headers: Mutex<HeaderMap>,
}

/// A tiny HTTP backend that answers with its own name.
pub(crate) struct Stub {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<StubState>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Stub {
    pub(crate) async fn start(name: &str) -> Stub {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to bring a killed stub back on its port).
    pub(crate) async fn start_on(name: &str, addr: SocketAddr) -> Stub {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(StubState::default());
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let (state, tasks, name) = (state.clone(), tasks.clone(), name.to_owned());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (state, name) = (state.clone(), name.clone());
                    let conn = tokio::spawn(async move {
                        let svc = service_fn(move |req| answer(name.clone(), state.clone(), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                    tasks.lock().unwrap().push(conn.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        Stub {
            name: name.to_owned(),
            addr,
            state,
            tasks,
        }
    }

    pub(crate) fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    pub(crate) fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes requests wait, once counted, until [`release`](Self::release): a request held in
    /// flight for as long as a test needs, with no timing to guess.
    pub(crate) fn hold(&self) {
        self.state.held.store(true, Ordering::SeqCst);
    }

    /// Lets the held requests, and the ones to come, be answered.
    pub(crate) fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
        self.state.released.notify_waiters();
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    pub(crate) fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub(crate) fn last_headers(&self) -> HeaderMap {
        self.state.last_headers.lock().unwrap().clone()
    }

    /// Closes the listener and every open connection, like a crashed process.
    pub(crate) fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answer(
    name: String,
    state: Arc<StubState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = if state.unhealthy.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        *r.status_mut() = status;
        return Ok(r);
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    *state.last_headers.lock().unwrap() = req.headers().clone();
    loop {
        // Created before the flag is read, so a release in between is not missed.
        let released = state.released.notified();
        if !state.held.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if state.failing.load(Ordering::SeqCst) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"broken")));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(r);
    }
    let echo = req.uri().path().starts_with("/echo");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let len = body.len();
    let mut r = Response::new(Full::new(if echo {
        body
    } else {
        Bytes::from(name.clone())
    }));
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r.headers_mut().insert("x-body-len", len.into());
    Ok(r)
}

/// An address nothing listens on.
pub(crate) async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A backend that reads each request head and hangs up without answering, as a crashing
/// server does; returns its address and the number of request heads it read.
pub(crate) async fn hanging_up_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                    seen.extend_from_slice(&chunk[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// A reply as the test sees it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

/// An HTTP/1.1 client with keep-alive.
#[derive(Clone)]
pub(crate) struct TestClient(Client<HttpConnector, Full<Bytes>>);

impl TestClient {
    pub(crate) fn new() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }

    pub(crate) async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_send(method, url, headers, body)
            .await
            .expect("request failed")
    }

    pub(crate) async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let response = self.0.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A gateway running in-process.
pub(crate) struct TestGateway {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) tcp: Vec<SocketAddr>,
    pub(crate) shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The listen lines every test config starts with.
pub(crate) const LISTEN: &str = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";

impl TestGateway {
    /// A gateway on `toml`. `GATEWAY_TEST_IO_URING=false` runs it on epoll, so the suite
    /// covers both socket paths (`make test` runs it both ways).
    pub(crate) async fn start(toml: &str) -> Self {
        let mut config = Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        if std::env::var("GATEWAY_TEST_IO_URING").is_ok_and(|v| v == "false") {
            config.io_uring = false;
        }
        Self::start_with(Gateway::build(config).await.unwrap())
    }

    pub(crate) fn start_with(gateway: Gateway) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, admin, tcp, shared) = (
            gateway.local_addr(),
            gateway.admin_addr(),
            gateway.tcp_addrs(),
            gateway.shared(),
        );
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            tcp,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Backend state by address, from the admin API.
    pub(crate) async fn backends(
        &self,
        client: &TestClient,
        upstream: &str,
    ) -> HashMap<String, serde_json::Value> {
        let reply = client
            .get(&self.admin_url(&format!("/admin/upstreams/{upstream}")))
            .await;
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["addr"].as_str().unwrap().to_owned(), b.clone()))
            .collect()
    }

    /// Stops the gateway and waits for `run` to return.
    pub(crate) async fn stop(mut self) -> JoinHandle<anyhow::Result<()>> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `check` until it holds or `within` passes; returns how long it took.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts replies per backend name.
pub(crate) fn tally(replies: &[Reply]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in replies {
        *m.entry(r.body.clone()).or_insert(0) += 1;
    }
    m
}

/// A config line for a backend list.
pub(crate) fn backends(stubs: &[&Stub]) -> String {
    let list: Vec<String> = stubs
        .iter()
        .map(|s| format!("{{ addr = \"{}\" }}", s.addr))
        .collect();
    format!("backends = [{}]", list.join(", "))
}
