//! The L4 path: whole TCP connections balanced by the upstream's policy.
//!
//! A connection counts as one in-flight request on its backend for its whole life, so
//! `least_connections` balances open connections. A refused connect is retried once on
//! another backend; nothing has been sent yet, so any protocol is safe to retry.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::proxy::hash_ip;
use crate::ring::Socket;
use crate::state::Shared;

/// Proxies one accepted connection to a backend of the upstream of TCP listener `index`.
pub async fn proxy(shared: Arc<Shared>, index: usize, client: TcpStream) {
    let runtime = shared.runtime();
    let Some(upstream) = runtime.tcp.get(index).cloned().flatten() else {
        return;
    };
    let connect_timeout = Duration::from_millis(runtime.config.timeouts.connect_ms);
    let hash = client.peer_addr().map_or(0, |a| hash_ip(a.ip()));
    let io_uring = runtime.config.io_uring;
    drop(runtime);
    let mut client = Socket::new(client, io_uring);
    let set = upstream.backends();
    let mut exclude = None;
    for _ in 0..2 {
        let Some((i, guard)) = set.start_request(None, hash, exclude) else {
            tracing::warn!(message = "No healthy backend for a TCP connection.", upstream = %upstream.name);
            return;
        };
        let backend = guard.backend();
        match tokio::time::timeout(connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(server)) => {
                backend.record_success();
                let _ = server.set_nodelay(true);
                let mut server = Socket::new(server, io_uring);
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                    tracing::debug!(message = "TCP session ended with an error.", %error);
                }
                return;
            }
            _ => {
                backend.record_connect_failure(&upstream);
                exclude = Some(i);
            }
        }
    }
    tracing::warn!(message = "TCP connect failed twice.", upstream = %upstream.name);
}
