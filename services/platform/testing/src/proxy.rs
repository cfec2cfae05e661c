//! A TCP proxy for fault injection: tests put it between a client and a real server, then
//! [`TcpProxy::stop`] it to make the server look down (connections reset, new ones refused)
//! without stopping the server other tests share.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to one target.
pub struct TcpProxy {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("bound");
        let (stop, stopped) = watch::channel(false);
        let mut accept_stopped = stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = accept_stopped.changed() => return,
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let mut conn_stopped = stopped.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(target).await else { return };
                            let mut client = client;
                            tokio::select! {
                                _ = conn_stopped.changed() => {}
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            }
                        });
                    }
                }
            }
        });
        Self { addr, stop }
    }

    /// The address clients connect to instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and stops listening: from now on the target looks down.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
