//! The public listener's HTTP/1.1 server codec, spoken to over raw sockets.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn config(stub: &Stub, extra: &str) -> String {
    format!(
        "{LISTEN}{extra}\n[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[stub])
    )
}

/// A gateway in front of the one backend at `addr`, with `extra` top-level keys.
fn backend_config(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{LISTEN}{extra}\n[[upstreams]]\nname = \"web\"\nbackends = [{{ addr = \"{addr}\" }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n"
    )
}

/// One response as it came on the wire.
#[derive(Debug)]
struct Raw {
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A client connection that reads responses one by one, keeping what arrives early.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(gw: &TestGateway) -> Self {
        Self {
            stream: TcpStream::connect(gw.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; `false` once the server has closed the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("the gateway answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn take_until(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return self.buf.drain(..at + end.len()).collect();
            }
            assert!(self.fill().await, "closed early: {:?}", self.text());
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed early: {:?}", self.text());
        }
        self.buf.drain(..n).collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Reads one response; `head` says whether it answers a HEAD request.
    async fn response(&mut self, head: bool) -> Raw {
        let head_bytes = self.take_until(b"\r\n\r\n").await;
        let mut raw = Raw {
            head: String::from_utf8(head_bytes).unwrap(),
            body: Vec::new(),
        };
        if head || raw.status() == 204 || raw.status() == 304 {
            return raw;
        }
        if let Some(n) = raw.header("content-length") {
            raw.body = self.take(n.parse().unwrap()).await;
        } else if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let line = self.take_until(b"\r\n").await;
                let size =
                    usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
                if size == 0 {
                    self.take_until(b"\r\n").await;
                    break;
                }
                raw.body.extend(self.take(size).await);
                self.take(2).await;
            }
        } else {
            while self.fill().await {}
            raw.body = std::mem::take(&mut self.buf);
        }
        raw
    }

    async fn is_closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let mut c = Client::connect(&gw).await;
    c.send(
        b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\none\
          GET / HTTP/1.1\r\nhost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\ntwo",
    )
    .await;
    let bodies = [
        c.response(false).await,
        c.response(false).await,
        c.response(false).await,
    ]
    .map(|r| String::from_utf8(r.body).unwrap());
    assert_eq!(bodies, ["one", "a", "two"]);
    assert_eq!(a.hits(), 3);
}

#[tokio::test]
async fn a_chunked_request_body_is_forwarded_whole() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let mut c = Client::connect(&gw).await;
    c.send(
        b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("x-body-len"), Some("11"));
    assert_eq!(a.last_headers()["transfer-encoding"], "chunked");
    // The connection carries another request.
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(c.response(false).await.body, b"a");
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_read() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let mut c = Client::connect(&gw).await;
    c.send(b"PUT /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        .await;
    let interim = c.take_until(b"\r\n\r\n").await;
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"data").await;
    let r = c.response(false).await;
    assert_eq!((r.status(), &r.body[..]), (200, &b"data"[..]));
    assert!(!a.last_headers().contains_key("expect"));
}

#[tokio::test]
async fn an_answer_given_before_the_body_is_read_closes_the_connection() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "[limits]\nmax_body_bytes = 16")).await;
    let mut c = Client::connect(&gw).await;
    c.send(b"POST / HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 100\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status(), 413);
    assert!(!r.head.contains("100 Continue"), "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"));
    // Sent anyway: it is read and discarded, not taken for a request.
    c.send(&[b'x'; 100]).await;
    assert!(c.is_closed().await, "{}", c.text());
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn http_1_0_clients_get_1_0_answers_and_keep_alive_only_when_they_ask() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;

    let mut c = Client::connect(&gw).await;
    c.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let r = c.response(false).await;
    assert!(r.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", r.head);
    assert_eq!(r.body, b"a");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed().await);
    // The backend got a Host it can route by.
    assert!(a.last_headers().contains_key("host"));

    let mut c = Client::connect(&gw).await;
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let r = c.response(false).await;
        assert!(r.head.starts_with("HTTP/1.0 200"), "{}", r.head);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[tokio::test]
async fn a_head_request_gets_the_length_without_the_body() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let mut c = Client::connect(&gw).await;
    c.send(b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\nGET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let head = c.response(true).await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.header("content-length"), Some("1"));
    assert!(head.header("date").is_some());
    let get = c.response(false).await;
    assert_eq!(get.body, b"a");
}

#[tokio::test]
async fn a_head_one_byte_over_the_limit_gets_431_and_the_connection_closes() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "[limits]\nmax_header_bytes = 1024")).await;
    let head_of = |size: usize| {
        let start = "GET / HTTP/1.1\r\nhost: t\r\nx-pad: ";
        let pad = "p".repeat(size - start.len() - 4);
        format!("{start}{pad}\r\n\r\n")
    };
    let mut c = Client::connect(&gw).await;
    c.send(head_of(1024).as_bytes()).await;
    assert_eq!(c.response(false).await.status(), 200);
    c.send(head_of(1025).as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status(), 431);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn ambiguous_or_malformed_requests_get_400_and_the_connection_closes() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    for request in [
        &b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1x\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /echo HTTP/1.0\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: t\r\nhost: other\r\n\r\n",
    ] {
        let mut c = Client::connect(&gw).await;
        c.send(request).await;
        let r = c.response(false).await;
        assert_eq!(r.status(), 400, "{}", String::from_utf8_lossy(request));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(c.is_closed().await);
    }
}

#[tokio::test]
async fn connection_close_from_the_client_is_honoured() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let mut c = Client::connect(&gw).await;
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn a_large_answer_before_a_close_arrives_whole_to_a_client_slower_than_the_gateway() {
    // Far more than the socket buffers hold, read more slowly than the gateway writes; the
    // gateway is done with the connection right after its last write, whose bytes must still
    // all arrive before the close.
    let body: Vec<u8> = (0..6 << 20).map(|i| (i % 251) as u8).collect();
    let mut response =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(&body);
    let backend = scripted_backend(Box::leak(response.into_boxed_slice())).await;
    let gw = TestGateway::start(&backend_config(backend, "")).await;
    // A small receive buffer the kernel does not grow: what the gateway's socket holds is
    // then less than the body.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk));
        match read.await.expect("the gateway goes on writing or closes") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        got.len() - head_end,
        body.len(),
        "every byte of the body arrives"
    );
    assert!(got[head_end..] == body[..], "in order");
}

#[tokio::test]
async fn a_backend_slower_than_the_response_timeout_gets_504_and_the_connection_stays_usable() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "[timeouts]\nresponse_ms = 150")).await;
    let mut c = Client::connect(&gw).await;
    a.set_delay(Duration::from_millis(3000));
    let started = std::time::Instant::now();
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status(), 504);
    let took = started.elapsed();
    // Well before the backend would have answered.
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    a.set_delay(Duration::ZERO);
    // Each request gets the whole timeout again.
    for _ in 0..3 {
        c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        assert_eq!(c.response(false).await.status(), 200);
    }
}

/// A backend that answers every request head with `response`, keeping the connection open.
async fn scripted_backend(response: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                    seen.extend_from_slice(&chunk[..n]);
                    while let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..at + 4);
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn backend_fields_pass_through_without_hop_by_hop_ones_and_trailers_only_when_asked_for() {
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nX-Case: Kept\r\nConnection: X-Secret\r\nX-Secret: s\r\n\
          Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
          3\r\nabc\r\n0\r\nx-sum: 7\r\nContent-Length: 3\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\nKeep-Alive: 1\r\nTE: trailers\r\nTrailer: x\r\n\
          Upgrade: h2c\r\nProxy-Authenticate: Basic\r\n\r\n",
    )
    .await;
    let gw = TestGateway::start(&backend_config(backend, "")).await;
    let mut c = Client::connect(&gw).await;

    c.send(b"GET / HTTP/1.1\r\nhost: t\r\nte: trailers\r\n\r\n")
        .await;
    let head = String::from_utf8(c.take_until(b"\r\n\r\n").await).unwrap();
    assert!(head.contains("\r\nX-Case: Kept\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    for gone in ["x-secret", "keep-alive", "trailer:", "connection: x-secret"] {
        assert!(
            !head.to_ascii_lowercase().contains(gone),
            "{gone} in {head}"
        );
    }
    assert_eq!(c.take_until(b"0\r\n").await, b"3\r\nabc\r\n0\r\n");
    assert_eq!(c.take_until(b"\r\n\r\n").await, b"x-sum: 7\r\n\r\n");

    c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.body, b"abc");
    // Nothing is left over from a trailer section the client did not ask for.
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(c.response(false).await.body, b"abc");
}

#[tokio::test]
async fn shutdown_closes_an_idle_keep_alive_connection_at_once() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let mut c = Client::connect(&gw).await;
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        assert_eq!(c.response(false).await.status(), 200);
    }
    let started = std::time::Instant::now();
    let run = gw.stop().await;
    assert!(c.is_closed().await);
    run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_http_1_0_client_gets_a_body_of_unknown_length_ended_by_closing() {
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    let gw = TestGateway::start(&backend_config(backend, "")).await;
    let mut c = Client::connect(&gw).await;
    c.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert!(r.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", r.head);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, b"abcde");
}

#[tokio::test]
async fn a_connection_header_naming_a_framing_field_is_refused_before_any_backend_sees_it() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: t\r\n\r\n";
    for hidden in ["content-length", "Transfer-Encoding", "close, host"] {
        let request = format!(
            "GET / HTTP/1.1\r\nhost: t\r\nconnection: {hidden}\r\ncontent-length: {}\r\n\r\n",
            smuggled.len()
        );
        let mut c = Client::connect(&gw).await;
        c.send(request.as_bytes()).await;
        c.send(smuggled).await;
        let r = c.response(false).await;
        assert_eq!(r.status(), 400, "{hidden}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(c.is_closed().await);
    }
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_request_body_that_stops_coming_gets_408_after_the_idle_timeout_and_the_connection_closes()
 {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "[timeouts]\nidle_ms = 300")).await;
    // Buffered for a retry (a GET), then streamed (a POST), each stalling after a few bytes.
    for request in [
        &b"GET / HTTP/1.1\r\nhost: t\r\ncontent-length: 65536\r\n\r\nabc"[..],
        b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 65536\r\n\r\nabc",
        b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ] {
        let mut c = Client::connect(&gw).await;
        let started = std::time::Instant::now();
        c.send(request).await;
        let r = c.response(false).await;
        let took = started.elapsed();
        assert_eq!(r.status(), 408, "{}", String::from_utf8_lossy(request));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.is_closed().await);
    }
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_gets_501_and_the_connection_closes() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "")).await;
    for coding in ["gzip, chunked", "chunked, gzip", "identity"] {
        let mut c = Client::connect(&gw).await;
        let request = format!(
            "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: {coding}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        c.send(request.as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status(), 501, "{coding}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(c.is_closed().await);
    }
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn request_trailers_are_held_to_the_header_limit() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&config(&a, "[limits]\nmax_header_bytes = 1024")).await;
    let small = "x-t: 1\r\n";
    let large = format!("x-t: {}\r\n", "y".repeat(1100));
    for (trailer, status) in [(small, 200), (large.as_str(), 400)] {
        let mut c = Client::connect(&gw).await;
        let request = format!(
            "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n{trailer}\r\n"
        );
        c.send(request.as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status(), status);
        if status == 400 {
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
            assert!(c.is_closed().await);
        } else {
            assert_eq!(r.body, b"abc");
        }
    }
}

#[tokio::test]
async fn shutdown_gives_a_response_still_trickling_one_more_idle_period() {
    // A backend whose chunked body never ends, a chunk well within each idle period.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                let _ = stream.read(&mut chunk).await;
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                while stream.write_all(b"1\r\na\r\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    let gw = TestGateway::start(&backend_config(backend, "[timeouts]\nidle_ms = 400")).await;
    let mut c = Client::connect(&gw).await;
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    c.take_until(b"\r\n\r\n").await;
    c.take_until(b"1\r\na\r\n").await;
    let started = std::time::Instant::now();
    let run = gw.stop().await;
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while c.fill().await {
            c.buf.clear();
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection outlived the shutdown");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(350), "{took:?}");
    run.await.unwrap().unwrap();
}
