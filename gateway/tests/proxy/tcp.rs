use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Opens a TCP connection, speaks one HTTP/1.0-style exchange, and returns the body.
async fn through_tcp(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_l4_mode_balances_tcp_connections_and_skips_a_refusing_backend() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[tcp]]\nlisten = \"127.0.0.1:0\"\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let addr = gw.tcp[0];
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *counts.entry(through_tcp(addr).await).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([("a".into(), 5), ("b".into(), 5)]));

    b.kill();
    for _ in 0..6 {
        assert_eq!(through_tcp(addr).await, "a");
    }
}
