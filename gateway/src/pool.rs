//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Each backend owns its pool, so the only lock is per backend and is held for a push or a
//! pop. A connection goes back to the pool when its response body has been read to the end;
//! one abandoned half-way is dropped, because its framing state is unknown.
//!
//! Owning the pool (rather than a generic client) gives the proxy what a retry needs: a
//! failed connect, or a pooled connection found dead before anything was written, returns
//! the request untouched.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::upstream::now_ms;

/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// Why a request did not get a response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened; the request comes back untouched.
    Connect(Request<UpstreamBody>),
    /// The connection failed before the request was written; it comes back untouched.
    NotSent(Request<UpstreamBody>, hyper::Error),
    /// The exchange failed after the request was (maybe partly) written.
    Failed(hyper::Error),
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since_ms: u64,
}

/// The idle connections of one backend.
#[derive(Debug)]
pub struct ConnPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout_ms: u64,
    idle: Mutex<Vec<Idle>>,
}

impl ConnPool {
    /// An empty pool.
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            addr,
            connect_timeout,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends a request on a pooled connection, or a new one. A pooled connection that turns out
    /// to be closed is replaced by a new one without counting as a failure.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let req = match self.take_idle().await {
            Some(conn) => match conn.send(req).await {
                Err(SendError::NotSent(req, _)) => req,
                done => return done,
            },
            None => req,
        };
        // Boxed: the handshake's state is large and needed only for a new connection, and
        // keeping it out of line keeps every request's future small (it is moved around).
        Box::pin(self.connect_and_send(req)).await
    }

    async fn connect_and_send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        match self.connect().await {
            Ok(conn) => conn.send(req).await,
            Err(error) => {
                tracing::debug!(message = "Connect failed.", backend = %self.addr, %error);
                Err(SendError::Connect(req))
            }
        }
    }

    /// The most recently used idle connection that is still open and ready.
    async fn take_idle(self: &Arc<Self>) -> Option<Conn> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if idle.sender.is_closed()
                || now_ms().saturating_sub(idle.since_ms) > self.idle_timeout_ms
            {
                continue;
            }
            let mut sender = idle.sender;
            // Usually ready at once; it waits only if the previous response's end is still
            // being processed by the connection task.
            if sender.ready().await.is_ok() {
                return Some(Conn {
                    sender,
                    pool: Arc::clone(self),
                });
            }
        }
    }

    async fn connect(self: &Arc<Self>) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(message = "Backend connection ended with an error.", %error);
            }
        });
        Ok(Conn {
            sender,
            pool: Arc::clone(self),
        })
    }

    fn release(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since_ms: now_ms(),
            });
        }
    }
}

/// A connection checked out of a pool. Dropping it closes the connection once its current
/// exchange ends; [`Conn::release`] returns it for reuse.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<UpstreamBody>,
    pool: Arc<ConnPool>,
}

impl Conn {
    async fn send(
        mut self,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        match self.sender.try_send_request(req).await {
            Ok(response) => Ok((response, self)),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(req, e.into_error())),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    /// Returns the connection to its pool; call it only once the response body has ended.
    pub fn release(self) {
        self.pool.release(self.sender);
    }
}
