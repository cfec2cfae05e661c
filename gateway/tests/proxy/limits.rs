use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn limited(stub: &Stub, limits: &str) -> String {
    format!(
        "{LISTEN}{limits}\n[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[stub])
    )
}

/// Sends raw bytes and returns the status code of the answer.
async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_whether_announced_or_streamed() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&limited(&a, "[limits]\nmax_body_bytes = 1024")).await;
    let c = TestClient::new();
    let ok = c
        .send(Method::POST, &gw.url("/"), &[], vec![b'x'; 1024])
        .await;
    assert_eq!(ok.status, 200);
    let r = c
        .send(Method::POST, &gw.url("/"), &[], vec![b'x'; 1025])
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.headers["content-type"], "application/problem+json");

    let chunk = "x".repeat(2000);
    let chunked = format!(
        "POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    assert_eq!(raw_status(gw.addr, chunked.as_bytes()).await, 413);
}

#[tokio::test]
async fn headers_over_the_limit_get_431() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&limited(&a, "[limits]\nmax_header_bytes = 2048")).await;
    let c = TestClient::new();
    let big = "y".repeat(3000);
    let r = c
        .send(Method::GET, &gw.url("/"), &[("x-big", &big)], "")
        .await;
    assert_eq!(r.status, 431);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(
        c.send(Method::GET, &gw.url("/"), &[("x-small", "1")], "")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&limited(
        &a,
        // One token every 10 s: the four requests cannot outlast a refill, however slow.
        "[rate_limit]\nrequests_per_second = 0.1\nburst = 3",
    ))
    .await;
    let c = TestClient::new();
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/")).await.status, 200);
    }
    let r = c.get(&gw.url("/")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "10");
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(a.hits(), 3);
}

/// Reads until the server closes the connection; returns what came and how long it took.
async fn read_until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the connection stays open")
            .unwrap_or(0);
        if n == 0 {
            return (
                String::from_utf8_lossy(&all).into_owned(),
                started.elapsed(),
            );
        }
        all.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_and_a_stalled_request_head_are_closed() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&limited(&a, "[timeouts]\nidle_ms = 200")).await;

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (reply, took) = read_until_closed(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(took >= Duration::from_millis(150), "closed after {took:?}");

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
    let (reply, _) = read_until_closed(&mut s).await;
    assert!(!reply.contains("200"), "{reply}");
}
