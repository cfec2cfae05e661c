//! The HTTP/1.1 server codec of the public listener.
//!
//! hyper's server is built for any service: a dispatcher between the socket and the service,
//! a header map encoded field by field, a timer per request. The proxy needs less, so client
//! connections are served here. Request heads are parsed with `httparse` into a request whose
//! header values share the read buffer, and hop-by-hop fields are left out as they are parsed.
//! A response head goes out in the same system call as a body that arrived whole. Timeouts are
//! the connection's own [`Deadline`]s, moved on for each request rather than created anew.
//!
//! Framing follows RFC 9112: requests are answered one after the other, pipelined ones in
//! order; request bodies come by `Content-Length` or chunked; a response is framed by its
//! length when that is known, chunked otherwise, or by closing the connection for an HTTP/1.0
//! client. The admin listener keeps hyper: it is not on the request path.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::ext::ReasonPhrase;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue,
    TRANSFER_ENCODING,
};
use hyper::http::response;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::conn::Deadline;
use crate::error::ProxyError;
use crate::h1::{self, Chunked, Decoded, FieldKind, ResponseFields};
use crate::pool::poll_fill;
use crate::proxy::{self, Peer};
use crate::ring::Socket;
use crate::state::{Runtime, Shared};

/// Header fields accepted in a request head (hyper's server default); more is a 431.
const MAX_HEADERS: usize = 100;

/// Room left in a request's header map for the `X-Forwarded-*` fields the proxy adds.
const FORWARDING_HEADERS: usize = 3;

/// What the read buffer starts with.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A body chunk at most this large is copied behind the head or the previous chunk, so both
/// leave in one system call; a larger one is written from where it is.
const INLINE_BODY_BYTES: usize = 16 * 1024;

/// Gathered response bytes are written once there are this many, so a backend faster than its
/// client does not pile its body up in memory.
const FLUSH_BYTES: usize = 64 * 1024;

/// How long a connection closed with a request body still coming is read and discarded, so
/// the answer already sent is not lost to a reset.
const LINGER: Duration = Duration::from_secs(2);

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How much of a request body is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// This many bytes.
    Length(u64),
    Chunked(Chunked),
    /// Nothing (no body, or read to its end).
    Done,
}

/// The connection's socket and read buffer, shared between the server and the request body
/// that reads from them while the proxy forwards it. The lock is only held inside a poll.
#[derive(Debug)]
struct Wire {
    stream: Socket,
    buf: BytesMut,
    body: BodyFraming,
    /// Bytes of the `100 Continue` interim answer still to write before the body is read.
    continue_left: usize,
    /// `limits.max_header_bytes` of the request being read: its trailers are header fields
    /// too, and are held to the same bound.
    max_trailer_bytes: usize,
}

fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wire {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Frame<Bytes>>>> {
        while self.continue_left > 0 {
            let sent = CONTINUE.len() - self.continue_left;
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &CONTINUE[sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_left -= n;
        }
        loop {
            match &mut self.body {
                BodyFraming::Done => return Poll::Ready(Ok(None)),
                BodyFraming::Length(left) => {
                    if !self.buf.is_empty() {
                        let n = (*left).min(self.buf.len() as u64);
                        *left -= n;
                        if *left == 0 {
                            self.body = BodyFraming::Done;
                        }
                        let data = self.buf.split_to(n as usize).freeze();
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                BodyFraming::Chunked(chunked) => {
                    match chunked.decode(&mut self.buf, self.max_trailer_bytes)? {
                        Decoded::Data(data) => return Poll::Ready(Ok(Some(Frame::data(data)))),
                        Decoded::Trailers(trailers) => {
                            self.body = BodyFraming::Done;
                            return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                        }
                        Decoded::End => {
                            self.body = BodyFraming::Done;
                            return Poll::Ready(Ok(None));
                        }
                        Decoded::NeedMore => {}
                    }
                }
            }
            if ready!(poll_fill(&mut self.stream, &mut self.buf, cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection in the middle of a request body",
                )));
            }
        }
    }
}

/// A client's request body, read from its connection as the proxy forwards it. The first
/// read answers `Expect: 100-continue`. A read that waits `idle` without a byte fails with
/// [`io::ErrorKind::TimedOut`], so a client that announces a body and sends none cannot hold
/// the connection (and a backend connection) forever.
#[derive(Debug)]
pub struct ClientBody {
    wire: Option<Arc<Mutex<Wire>>>,
    declared: Option<u64>,
    idle: Duration,
    /// Armed when a read first has to wait; a body that is all there never creates its timer.
    stall: Deadline,
    waiting: bool,
}

impl ClientBody {
    /// A request without a body.
    pub fn empty() -> Self {
        Self::reading(None, Some(0), Duration::ZERO)
    }

    fn reading(wire: Option<Arc<Mutex<Wire>>>, declared: Option<u64>, idle: Duration) -> Self {
        Self {
            wire,
            declared,
            idle,
            stall: Deadline::new(),
            waiting: false,
        }
    }

    /// The `Content-Length` the client announced; `None` for a chunked body.
    pub fn declared_length(&self) -> Option<u64> {
        self.declared
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(wire) = &this.wire else {
            return Poll::Ready(None);
        };
        let polled = lock(wire).poll_body(cx);
        if polled.is_pending() {
            if !this.waiting {
                this.waiting = true;
                this.stall.arm(Instant::now() + this.idle);
            }
            if this.stall.poll_passed(cx).is_ready() {
                this.wire = None;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent no request body bytes for the idle timeout",
                ))));
            }
            return Poll::Pending;
        }
        this.waiting = false;
        match polled {
            Poll::Ready(Ok(Some(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Ok(None)) => {
                this.wire = None;
                Poll::Ready(None)
            }
            Poll::Ready(Err(error)) => {
                this.wire = None;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.wire.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.wire, self.declared) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Some(n)) => {
                let mut hint = SizeHint::new();
                hint.set_upper(n);
                hint
            }
            (Some(_), None) => SizeHint::new(),
        }
    }
}

/// Why no request head could be read.
#[derive(Debug)]
enum HeadError {
    /// The client closed the connection, or reading failed: nothing to answer.
    Gone,
    /// The client sent something to refuse with this error, then close.
    Refused(ProxyError),
}

/// A parsed request head and what the server itself must remember of it.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    framing: BodyFraming,
    content_length: Option<u64>,
    keep_alive: bool,
    expect_continue: bool,
    trailers: bool,
}

/// Parses the request head at the front of `buf` and removes it; `Ok(None)` means more bytes
/// are needed. A head is refused with 431 once it is known to exceed `max_head_bytes`.
fn parse_head(buf: &mut BytesMut, max_head_bytes: usize) -> Result<Option<Head>, ProxyError> {
    const MALFORMED: &str = "malformed request head";
    // Parsed where it lies: a head still arriving stays in the buffer untouched, and a slow
    // client costs no copy per read. A whole head is then split off and frozen, so header
    // values can share its bytes; for that, where each part lies is noted by offset.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head_bytes {
                return Err(ProxyError::HeadersTooLarge(max_head_bytes));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::HeadersTooLarge(max_head_bytes));
        }
        Err(_) => return Err(ProxyError::BadRequest(MALFORMED)),
    };
    if len > max_head_bytes {
        return Err(ProxyError::HeadersTooLarge(max_head_bytes));
    }
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let at = (part.as_ptr() as usize).wrapping_sub(base);
        at..at.wrapping_add(part.len())
    };
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| ProxyError::BadRequest("invalid method"))?;
    let path = request.path.map(|p| span(p.as_bytes()));
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let count = request.headers.len();
    let mut fields = [const { (0..0, 0..0) }; MAX_HEADERS];
    for (slot, field) in fields.iter_mut().zip(request.headers.iter()) {
        *slot = (span(field.name.as_bytes()), span(field.value));
    }
    let data = buf.split_to(len).freeze();
    // Offsets from the parser lie inside the head; a miss is refused rather than trusted.
    let part = |range: &std::ops::Range<usize>| {
        data.get(range.clone())
            .ok_or(ProxyError::BadRequest(MALFORMED))
    };
    let target = match &path {
        Some(range) => data.slice_ref(part(range)?),
        None => Bytes::new(),
    };
    let uri = Uri::from_maybe_shared(target)
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;

    let mut headers = HeaderMap::with_capacity(count + FORWARDING_HEADERS);
    let mut content_length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut trailers = false;
    let mut named_by_connection: Vec<HeaderName> = Vec::new();
    for (name_at, value_at) in &fields[..count] {
        let raw_name = part(name_at)?;
        let value = part(value_at)?;
        let kind = h1::field_kind(raw_name);
        if kind.is_hop_by_hop() {
            if kind == FieldKind::TransferEncoding {
                // Only `chunked` alone, in one field: the gateway applies no other coding, and
                // forwarding the body decoded under its old name would change its meaning.
                chunked =
                    Some(chunked.is_none() && value.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if kind == FieldKind::Connection {
                for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if token.eq_ignore_ascii_case(b"host")
                        || matches!(
                            h1::field_kind(token),
                            FieldKind::ContentLength | FieldKind::TransferEncoding
                        )
                    {
                        // Removing a framing field would leave the body to be read as the
                        // next request; removing `Host` would unmoor the request.
                        return Err(ProxyError::BadRequest(
                            "Connection names a framing or Host field",
                        ));
                    } else if let Ok(named) = HeaderName::from_bytes(token) {
                        named_by_connection.push(named);
                    }
                }
            } else if kind == FieldKind::Te {
                trailers |= value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
            continue;
        }
        let name =
            HeaderName::from_bytes(raw_name).map_err(|_| ProxyError::BadRequest(MALFORMED))?;
        if name == HOST {
            // RFC 9112 3.2: which one the backend would route by is anyone's guess.
            if headers.contains_key(HOST) {
                return Err(ProxyError::BadRequest("more than one Host field"));
            }
        } else if name == CONTENT_LENGTH {
            let n = h1::parse_content_length(value)
                .map_err(|_| ProxyError::BadRequest("invalid Content-Length"))?;
            match content_length {
                Some(m) if m != n => {
                    return Err(ProxyError::BadRequest("conflicting Content-Length values"));
                }
                Some(_) => continue,
                None => content_length = Some(n),
            }
        } else if name == EXPECT && value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            // Answered here, so the backend never waits for a `100 Continue` of its own.
            expect_continue = true;
            continue;
        }
        let value = HeaderValue::from_maybe_shared(data.slice_ref(value))
            .map_err(|_| ProxyError::BadRequest(MALFORMED))?;
        headers.append(name, value);
    }
    for name in &named_by_connection {
        headers.remove(name);
    }

    let framing = match (chunked, content_length) {
        // A length beside a transfer coding is how requests are smuggled past a proxy.
        (Some(_), Some(_)) => {
            return Err(ProxyError::BadRequest(
                "Content-Length together with Transfer-Encoding",
            ));
        }
        // RFC 9112 6.1: an HTTP/1.0 peer may not know chunked framing, so the body's end is
        // in doubt and the request is treated as faulty framing.
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (Some(true), None) => BodyFraming::Chunked(Chunked::Size),
        (Some(false), None) => return Err(ProxyError::UnsupportedTransferCoding),
        (None, None | Some(0)) => BodyFraming::Done,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        content_length,
        keep_alive: !close && (version == Version::HTTP_11 || keep_alive_token),
        expect_continue: expect_continue && version == Version::HTTP_11,
        trailers,
    }))
}

/// Reads until a whole request head is buffered. The runtime (and with it the head size
/// limit) is loaded once the first byte is there, so a request on a connection that idled
/// through a reload still gets the new config.
async fn read_head(wire: &Mutex<Wire>, shared: &Shared) -> Result<(Head, Arc<Runtime>), HeadError> {
    let mut runtime: Option<Arc<Runtime>> = None;
    poll_fn(|cx| {
        let mut wire = lock(wire);
        let wire = &mut *wire;
        loop {
            if !wire.buf.is_empty() {
                let rt = runtime.get_or_insert_with(|| shared.runtime());
                match parse_head(&mut wire.buf, rt.config.limits.max_header_bytes) {
                    Ok(Some(head)) => return Poll::Ready(Ok((head, Arc::clone(rt)))),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Err(HeadError::Refused(error))),
                }
            }
            match ready!(poll_fill(&mut wire.stream, &mut wire.buf, cx)) {
                Ok(0) => return Poll::Ready(Err(HeadError::Gone)),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(message = "Reading from a client failed.", %error);
                    return Poll::Ready(Err(HeadError::Gone));
                }
            }
        }
    })
    .await
}

/// What the response to a request depends on besides the response itself.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    http10: bool,
    head_request: bool,
    /// The client sent `TE: trailers`.
    trailers: bool,
}

/// How a response body is delimited on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// No body is sent; a `Content-Length` from the backend describes the one a GET would get.
    Bodiless {
        keep_length: bool,
    },
    Length(u64),
    Chunked,
    /// Ended by closing the connection (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// Serves one client connection until the client closes it, it idles for `idle`, or the
/// gateway shuts down; a request in flight at shutdown is answered first, with
/// `Connection: close`.
pub async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    peer: Peer,
    tracing: bool,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let busy = AtomicBool::new(false);
    let stopping = AtomicBool::new(false);
    let stream = Socket::new(stream, shared.runtime().config.io_uring);
    let mut connection = Connection {
        wire: Arc::new(Mutex::new(Wire {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER_BYTES),
            body: BodyFraming::Done,
            continue_left: 0,
            max_trailer_bytes: 0,
        })),
        out: Vec::with_capacity(1024),
        shared,
        peer,
        tracing,
        idle,
        idle_deadline: Deadline::new(),
        response_deadline: Deadline::new(),
    };
    let requests = connection.serve_requests(&busy, &stopping);
    tokio::pin!(requests);
    let probe = shutdown.clone();
    // Unconstrained: tokio's cooperative budget must not turn the one poll that registers
    // the waker into a spurious `Pending`.
    let signal = tokio::task::unconstrained(shutdown.changed());
    tokio::pin!(signal);
    let mut watching = false;
    let shut_down = poll_fn(|cx| {
        if requests.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        // The signal is polled once, to leave the task's waker with it; after that, reading
        // its version tells whether it is what woke the task, which is cheaper than polling
        // it again on every wake-up of a busy connection.
        if !watching {
            watching = true;
            return signal.as_mut().poll(cx).map(|_| true);
        }
        if probe.has_changed().unwrap_or(true) {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    })
    .await;
    if shut_down && busy.load(Ordering::Relaxed) {
        stopping.store(true, Ordering::Relaxed);
        // Each wait inside is bounded, but not their sum: a response that keeps trickling
        // would hold the shutdown open. One more idle period is what the request gets.
        let _ = tokio::time::timeout(idle, requests).await;
    }
}

/// One client connection and the buffers and timers it reuses for every request.
#[derive(Debug)]
struct Connection {
    wire: Arc<Mutex<Wire>>,
    /// The response being written.
    out: Vec<u8>,
    shared: Arc<Shared>,
    peer: Peer,
    tracing: bool,
    idle: Duration,
    /// Bounds the wait for a request head and every stalled write or response body.
    idle_deadline: Deadline,
    /// Bounds the wait for a backend's response head.
    response_deadline: Deadline,
}

impl Connection {
    async fn serve_requests(&mut self, busy: &AtomicBool, stopping: &AtomicBool) {
        loop {
            let read = self
                .idle_deadline
                .within_once_waiting(self.idle, read_head(&self.wire, &self.shared))
                .await;
            let (head, rt) = match read {
                None | Some(Err(HeadError::Gone)) => return,
                Some(Err(HeadError::Refused(error))) => {
                    let response = proxy::local_answer(&self.shared, error);
                    let exchange = Exchange {
                        http10: false,
                        head_request: false,
                        trailers: false,
                    };
                    self.respond(response, exchange, true).await;
                    self.linger().await;
                    return;
                }
                Some(Ok(parsed)) => parsed,
            };
            busy.store(true, Ordering::Relaxed);
            let exchange = Exchange {
                http10: head.version == Version::HTTP_10,
                head_request: head.method == Method::HEAD,
                trailers: head.trailers,
            };
            let body = if head.framing == BodyFraming::Done {
                ClientBody::empty()
            } else {
                let mut wire = lock(&self.wire);
                wire.body = head.framing;
                wire.max_trailer_bytes = rt.config.limits.max_header_bytes;
                wire.continue_left = if head.expect_continue {
                    CONTINUE.len()
                } else {
                    0
                };
                drop(wire);
                ClientBody::reading(Some(Arc::clone(&self.wire)), head.content_length, self.idle)
            };
            let mut request = Request::new(body);
            *request.method_mut() = head.method;
            *request.uri_mut() = head.uri;
            *request.version_mut() = head.version;
            *request.headers_mut() = head.headers;

            let response = proxy::serve(
                &self.shared,
                &rt,
                &self.peer,
                request,
                self.tracing,
                &mut self.response_deadline,
            )
            .await;
            drop(rt);
            let body_unread = {
                let mut wire = lock(&self.wire);
                // An answer given before the body was asked for needs no `100 Continue`; one
                // that was begun is finished ahead of the final answer.
                let left = std::mem::take(&mut wire.continue_left);
                if left > 0 && left < CONTINUE.len() {
                    self.out
                        .extend_from_slice(&CONTINUE[CONTINUE.len() - left..]);
                }
                wire.body != BodyFraming::Done
            };
            // A body still coming cannot be told apart from the next request: the connection
            // ends with this answer.
            let close = !head.keep_alive || body_unread || stopping.load(Ordering::Relaxed);
            let reusable = self.respond(response, exchange, close).await;
            busy.store(false, Ordering::Relaxed);
            if !reusable || stopping.load(Ordering::Relaxed) {
                if lock(&self.wire).body != BodyFraming::Done {
                    self.linger().await;
                }
                return;
            }
        }
    }

    /// Writes one response after whatever `out` already holds; `true` if the connection can
    /// carry another request.
    async fn respond(
        &mut self,
        response: Response<ResponseBody>,
        exchange: Exchange,
        mut close: bool,
    ) -> bool {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let outgoing = if exchange.head_request || status == StatusCode::NOT_MODIFIED {
            Outgoing::Bodiless { keep_length: true }
        } else if status.is_informational() || status == StatusCode::NO_CONTENT {
            Outgoing::Bodiless { keep_length: false }
        } else if let Some(n) = body.size_hint().exact() {
            Outgoing::Length(n)
        } else if exchange.http10 {
            close = true;
            Outgoing::UntilClose
        } else {
            Outgoing::Chunked
        };
        encode_response_head(
            &mut self.out,
            &parts,
            body.backend_fields(),
            exchange.http10,
            outgoing,
            close,
        );
        drop(parts);
        if let Outgoing::Bodiless { .. } = outgoing {
            drop(body);
            return self.write(&[]).await && self.flush_if(close).await && !close;
        }

        let chunked = outgoing == Outgoing::Chunked;
        let mut sent: u64 = 0;
        let mut trailers_sent = false;
        loop {
            // Polled once first: a body that is already there goes out with the head, and
            // only one that has to wait costs a write of what is gathered and a clock read.
            let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !self.out.is_empty() && !self.write(&[]).await {
                        return false;
                    }
                    let next = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                    match self
                        .idle_deadline
                        .within_once_waiting(self.idle, next)
                        .await
                    {
                        Some(frame) => frame,
                        None => {
                            tracing::debug!(message = "The response body stalled.");
                            return false;
                        }
                    }
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    // The client sees the body end early: the connection closes unfinished.
                    tracing::debug!(message = "The response body broke off.", %error);
                    return false;
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(fields) = frame.into_trailers()
                        && chunked
                        && exchange.trailers
                        && !trailers_sent
                    {
                        self.out.extend_from_slice(b"0\r\n");
                        encode_trailers(&mut self.out, &fields);
                        self.out.extend_from_slice(b"\r\n");
                        trailers_sent = true;
                    }
                    continue;
                }
            };
            if data.is_empty() || trailers_sent {
                continue;
            }
            sent += data.len() as u64;
            if let Outgoing::Length(n) = outgoing
                && sent > n
            {
                tracing::debug!(message = "The response body is longer than announced.");
                return false;
            }
            if chunked {
                h1::encode_chunk_size(&mut self.out, data.len());
            }
            if data.len() <= INLINE_BODY_BYTES {
                self.out.extend_from_slice(&data);
            } else if !self.write(&data).await {
                return false;
            }
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if self.out.len() >= FLUSH_BYTES && !self.write(&[]).await {
                return false;
            }
        }
        match outgoing {
            Outgoing::Chunked if !trailers_sent => self.out.extend_from_slice(b"0\r\n\r\n"),
            Outgoing::Length(n) if sent != n => {
                tracing::debug!(message = "The response body is shorter than announced.");
                return false;
            }
            _ => {}
        }
        let written = self.write(&[]).await && self.flush_if(close).await;
        // The backend's in-flight slot is held until the last byte has left.
        drop(body);
        written && !close
    }

    /// Writes what is gathered in `out`, then `data`, in as few system calls as the socket
    /// allows; a write that stalls for `idle` fails. `true` once all is written.
    async fn write(&mut self, data: &[u8]) -> bool {
        let Self {
            wire,
            out,
            idle,
            idle_deadline,
            ..
        } = self;
        let (mut from_out, mut from_data) = (0, 0);
        let all = poll_fn(|cx| {
            while from_out < out.len() || from_data < data.len() {
                let (head, tail) = (&out[from_out..], &data[from_data..]);
                let mut wire = lock(wire);
                let stream = Pin::new(&mut wire.stream);
                // One buffer goes by `send`: `writev` costs the kernel an iovec import and a
                // trip through the VFS for nothing.
                let n = ready!(if tail.is_empty() {
                    stream.poll_write(cx, head)
                } else if head.is_empty() {
                    stream.poll_write(cx, tail)
                } else {
                    stream.poll_write_vectored(cx, &[IoSlice::new(head), IoSlice::new(tail)])
                })?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
                }
                let taken = n.min(out.len() - from_out);
                from_out += taken;
                from_data += n - taken;
            }
            Poll::Ready(Ok::<(), io::Error>(()))
        });
        let result = idle_deadline.within_once_waiting(*idle, all).await;
        out.clear();
        match result {
            Some(Ok(())) => true,
            Some(Err(error)) => {
                tracing::debug!(message = "Writing to a client failed.", %error);
                false
            }
            None => {
                tracing::debug!(message = "Writing to a client stalled.");
                false
            }
        }
    }

    /// When `last`, waits (up to `idle`) until the kernel has taken everything written: a
    /// socket on the ring reports a write done once it is queued, and dropping it would
    /// cancel a send still waiting for room. `true` when there is nothing left to send.
    async fn flush_if(&mut self, last: bool) -> bool {
        if !last {
            return true;
        }
        let Self {
            wire,
            idle,
            idle_deadline,
            ..
        } = self;
        let flushed = poll_fn(|cx| Pin::new(&mut lock(wire).stream).poll_flush(cx));
        matches!(
            idle_deadline.within_once_waiting(*idle, flushed).await,
            Some(Ok(()))
        )
    }

    /// Ends the sending side and reads what the client still sends for a while: closing with
    /// unread bytes would reset the connection, and the client could lose the answer.
    async fn linger(&mut self) {
        let wire = &self.wire;
        let _ = poll_fn(|cx| Pin::new(&mut lock(wire).stream).poll_shutdown(cx)).await;
        let discard = poll_fn(|cx| {
            let mut wire = lock(wire);
            let wire = &mut *wire;
            loop {
                wire.buf.clear();
                match ready!(poll_fill(&mut wire.stream, &mut wire.buf, cx)) {
                    Ok(0) | Err(_) => return Poll::Ready(()),
                    Ok(_) => {}
                }
            }
        });
        let _ = tokio::time::timeout(LINGER.min(self.idle), discard).await;
    }
}

/// Appends the status line and header section.
fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &response::Parts,
    backend_fields: Option<&ResponseFields>,
    http10: bool,
    outgoing: Outgoing,
    close: bool,
) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    let keep_length = outgoing == Outgoing::Bodiless { keep_length: true };
    let mut dated = false;
    if let Some(fields) = backend_fields {
        out.extend_from_slice(&fields.lines);
        dated = fields.dated;
        if keep_length && let Some(n) = fields.content_length {
            h1::encode_length(out, n);
        }
    }
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            if !keep_length {
                continue;
            }
        } else if name == TRANSFER_ENCODING || name == CONNECTION {
            // The framing and the connection are this hop's to describe.
            continue;
        } else if name == DATE {
            dated = true;
        }
        encode_field(out, name, value);
    }
    match outgoing {
        Outgoing::Length(n) => h1::encode_length(out, n),
        Outgoing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Outgoing::Bodiless { .. } | Outgoing::UntilClose => {}
    }
    if !dated {
        encode_date(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a backend's trailer fields, except those that describe its hop or the framing: a
/// client could take them for this connection's.
fn encode_trailers(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        let kind = h1::field_kind(name.as_str().as_bytes());
        if !kind.is_hop_by_hop() && kind != FieldKind::ContentLength {
            encode_field(out, name, value);
        }
    }
}

fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a `Date` field (RFC 9110 6.6.1: an origin server must send one, and backends that
/// do not leave it to the gateway). The text is formatted once a second per thread.
fn encode_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Head>, ProxyError> {
        parse_head(&mut BytesMut::from(raw), 8192)
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_while_parsing() {
        let head = parse(
            b"GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: 5\r\nTE: trailers\r\nX-Kept: 2\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.uri, "/a?b");
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.headers["x-kept"], "2");
        assert!(head.keep_alive && head.trailers);
        assert!(head.headers.capacity() >= 2 + FORWARDING_HEADERS);
    }

    #[test]
    fn bytes_after_the_head_stay_in_the_buffer() {
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET"[..]);
        let head = parse_head(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.framing, BodyFraming::Length(3));
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn a_partial_head_waits_until_it_is_known_to_be_too_large() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nx: "[..]);
        let at = buf.as_ptr();
        assert!(parse_head(&mut buf, 64).unwrap().is_none());
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\nx: ");
        // Left where it was, not copied.
        assert_eq!(buf.as_ptr(), at);
        buf.extend_from_slice(&[b'y'; 64]);
        assert!(matches!(
            parse_head(&mut buf, 64),
            Err(ProxyError::HeadersTooLarge(64))
        ));
    }

    #[test]
    fn the_head_size_limit_is_exact() {
        let raw = b"GET / HTTP/1.1\r\nhost: h\r\n\r\n";
        assert!(parse_head(&mut BytesMut::from(&raw[..]), raw.len()).is_ok());
        assert!(matches!(
            parse_head(&mut BytesMut::from(&raw[..]), raw.len() - 1),
            Err(ProxyError::HeadersTooLarge(_))
        ));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(parse(raw), Err(ProxyError::BadRequest(_))));
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_alone_are_not_implemented() {
        for raw in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(
                parse(raw),
                Err(ProxyError::UnsupportedTransferCoding)
            ));
        }
        let head = parse(b"POST / HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Chunked(Chunked::Size));
    }

    #[test]
    fn http_1_0_keeps_alive_only_when_asked() {
        let plain = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!plain.keep_alive);
        let asked = parse(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(asked.keep_alive);
        let closing = parse(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!closing.keep_alive);
    }

    #[test]
    fn a_response_head_takes_its_framing_from_the_body() {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("9"));
        response.headers_mut().insert(
            DATE,
            HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
        );
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        encode_response_head(&mut out, &parts, None, false, Outgoing::Length(12), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 12\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_response_head(&mut out, &parts, None, true, Outgoing::UntilClose, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    }
}
