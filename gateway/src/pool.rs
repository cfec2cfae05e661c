//! Keep-alive HTTP/1.1 connections to one backend, driven by the request that uses them.
//!
//! Each backend owns its pool, so the only lock is per backend and is held for a push or a
//! pop. A request takes a connection, writes its head and body, and reads the response in its
//! own task: no connection task, no channel between the two, no wake-up to hand a response
//! over. The response body reads from the same socket as the client's connection polls it, and
//! the connection goes back to the pool once that body has ended; one abandoned half-way is
//! dropped, because its framing state is unknown.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Response};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::body::{BodyError, UpstreamBody};
use crate::h1::{self, Chunked, Decoded, Delimiter, Framing, RequestHead, ResponseFields};
use crate::ring::Socket;
use crate::upstream::ClientSettings;

/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// A body at most this large is written in the same system call as its head.
const INLINE_BODY_BYTES: usize = 16 * 1024;

/// A read is attempted only with at least this much free buffer space.
const MIN_READ_SPACE: usize = 2048;

/// What a read buffer grows by.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Why a request did not get a response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened; nothing was sent.
    Connect(io::Error),
    /// The client's request body failed (too large, or broken off): not the backend's fault.
    Body(BodyError),
    /// The exchange failed after the request was (maybe partly) written.
    Failed(io::Error),
}

/// How an exchange on one connection failed.
#[derive(Debug)]
enum ExchangeError {
    /// The connection was closed or reset before the backend sent a byte of answer.
    Unanswered(io::Error),
    /// Anything else.
    Send(SendError),
}

impl From<SendError> for ExchangeError {
    fn from(error: SendError) -> Self {
        Self::Send(error)
    }
}

impl From<ExchangeError> for SendError {
    fn from(error: ExchangeError) -> Self {
        match error {
            ExchangeError::Unanswered(error) => SendError::Failed(error),
            ExchangeError::Send(error) => error,
        }
    }
}

/// Sorts an I/O error of an exchange: the peer closing or resetting the connection before any
/// answer is [`ExchangeError::Unanswered`].
fn exchange_error(error: io::Error, answered: bool) -> ExchangeError {
    use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    if !answered
        && matches!(
            error.kind(),
            BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof
        )
    {
        ExchangeError::Unanswered(error)
    } else {
        ExchangeError::Send(SendError::Failed(error))
    }
}

/// One open connection with its buffers, boxed so checking it out and in moves a pointer.
#[derive(Debug)]
struct Connection {
    stream: Socket,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
}

impl Connection {
    /// Whether an idle connection can carry a request: the backend has neither closed it nor
    /// sent anything unasked.
    fn is_usable(&self) -> bool {
        self.stream.is_idle_and_open()
    }

    /// Reads more bytes into the read buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.stream, &mut self.read_buf, cx)
    }
}

/// Reads more bytes from `stream` into `buf`, growing it when little room is left; `Ok(0)` is
/// the end of the stream. Once the bytes split off earlier are dropped, growing reuses their
/// allocation.
pub(crate) fn poll_fill(
    stream: &mut Socket,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_BUFFER_BYTES);
    }
    pin!(stream.read_buf(buf)).poll(cx)
}

/// The idle connections of one backend.
#[derive(Debug)]
pub struct ConnPool {
    addr: SocketAddr,
    settings: ClientSettings,
    idle_timeout_ms: u64,
    /// Most recently used at the back; the front holds the oldest.
    idle: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    connection: Box<Connection>,
    since_ms: u64,
}

impl ConnPool {
    /// An empty pool.
    pub fn new(addr: SocketAddr, settings: ClientSettings) -> Self {
        Self {
            addr,
            settings,
            idle_timeout_ms: settings.idle.as_millis() as u64,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The settings its connections are made with.
    pub fn settings(&self) -> ClientSettings {
        self.settings
    }

    /// Sends a request on a pooled connection, or a new one, and reads the response head.
    ///
    /// A pooled connection found closed is dropped without counting as a failure. So is one
    /// that ends before a byte of answer when the request is `replayable` (idempotent: the
    /// caller's word) and its body can be sent again (none, or one held in memory): a backend
    /// closes idle connections on its own schedule, and one may close just as a request goes
    /// out on it. The request then goes once more, on a new connection, as Go's HTTP client
    /// resends an idempotent request. Any other request fails: the backend may have acted on
    /// it before it closed (a crash, a restart), and it must not act twice.
    ///
    /// `now_ms` is [`now_ms`](crate::upstream::now_ms) as the caller read it; it also stamps
    /// the connection's return to the pool, so a connection counts as idle from the start of
    /// its last exchange (a little early, which only retires it sooner) and a request costs
    /// the pool no clock read.
    pub async fn send(
        self: &Arc<Self>,
        head: &RequestHead<'_>,
        body: UpstreamBody,
        replayable: bool,
        now_ms: u64,
    ) -> Result<Response<BackendBody>, SendError> {
        let body = match self.take_idle(now_ms) {
            None => body,
            Some(conn) => {
                let spare = body.try_clone().filter(|_| replayable);
                match (conn.exchange(head, body).await, spare) {
                    (Err(ExchangeError::Unanswered(error)), Some(spare)) => {
                        tracing::debug!(
                            message = "A pooled connection ended unanswered; sending again on a new one.",
                            backend = %self.addr,
                            %error
                        );
                        spare
                    }
                    (result, _) => return result.map_err(SendError::from),
                }
            }
        };
        // Boxed: the connect future is needed only for a new connection, and keeping it out
        // of line keeps every request's future small.
        let conn = Box::pin(self.connect(now_ms)).await.map_err(|error| {
            tracing::debug!(message = "Connect failed.", backend = %self.addr, %error);
            SendError::Connect(error)
        })?;
        conn.exchange(head, body).await.map_err(SendError::from)
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(self: &Arc<Self>, now: u64) -> Option<Conn> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_back()?;
            if !self.is_fresh(&idle, now) {
                continue;
            }
            return Some(Conn {
                connection: idle.connection,
                pool: Arc::clone(self),
                taken_ms: now,
            });
        }
    }

    async fn connect(self: &Arc<Self>, now_ms: u64) -> io::Result<Conn> {
        let stream = tokio::time::timeout(self.settings.connect, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            connection: Box::new(Connection {
                stream: Socket::new(stream, self.settings.io_uring),
                read_buf: BytesMut::with_capacity(READ_BUFFER_BYTES),
                write_buf: Vec::with_capacity(1024),
            }),
            pool: Arc::clone(self),
            taken_ms: now_ms,
        })
    }

    fn is_fresh(&self, idle: &Idle, now_ms: u64) -> bool {
        now_ms.saturating_sub(idle.since_ms) <= self.idle_timeout_ms && idle.connection.is_usable()
    }

    /// Returns a connection taken at `now` ([`now_ms`](crate::upstream::now_ms)).
    fn release(&self, connection: Box<Connection>, now: u64) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Idle connections are not read, so one the backend closed would wait at the front
        // until it is taken; each release closes the oldest if it expired or was closed.
        let stale = idle
            .front()
            .is_some_and(|oldest| !self.is_fresh(oldest, now))
            .then(|| idle.pop_front());
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                connection,
                since_ms: now,
            });
        }
        // Closed outside the lock.
        drop(idle);
        drop(stale);
    }
}

/// A connection checked out of a pool. Dropping it closes it.
#[derive(Debug)]
struct Conn {
    connection: Box<Connection>,
    pool: Arc<ConnPool>,
    /// When it was taken from the pool (or opened), in [`now_ms`](crate::upstream::now_ms).
    taken_ms: u64,
}

impl Conn {
    /// Writes the request and reads the response head; a request body that does not fit in
    /// the first write keeps streaming while the response is read, as a backend may answer
    /// before it has read the whole request.
    async fn exchange(
        mut self,
        head: &RequestHead<'_>,
        body: UpstreamBody,
    ) -> Result<Response<BackendBody>, ExchangeError> {
        let io = &mut *self.connection;
        // A buffered body gets its length even if the client's field went missing: without
        // one the backend would read the body as the next request.
        let delimiter = match &body {
            _ if head.headers.contains_key(CONTENT_LENGTH) => Delimiter::None,
            UpstreamBody::Stream { .. } => Delimiter::Chunked,
            UpstreamBody::Full(Some(data)) if !data.is_empty() => {
                Delimiter::Length(data.len() as u64)
            }
            UpstreamBody::Empty | UpstreamBody::Full(_) => Delimiter::None,
        };
        let chunked = delimiter == Delimiter::Chunked;
        io.write_buf.clear();
        h1::encode_request_head(&mut io.write_buf, head, delimiter);
        let mut upload = match body {
            UpstreamBody::Empty | UpstreamBody::Full(None) => None,
            UpstreamBody::Full(Some(data)) if data.len() <= INLINE_BODY_BYTES => {
                io.write_buf.extend_from_slice(&data);
                None
            }
            body => Some(Upload::new(body, chunked)),
        };
        io.stream
            .write_all(&io.write_buf)
            .await
            .map_err(|error| exchange_error(error, false))?;

        let head_request = *head.method == Method::HEAD;
        let mut upload_failed = false;
        // Whether any byte of the response has arrived (an interim 1xx answer counts).
        let mut answered = false;
        let response = poll_fn(|cx| {
            loop {
                if !io.read_buf.is_empty()
                    && let Some(response) = h1::parse_response_head(&mut io.read_buf, head_request)
                        .map_err(|error| ExchangeError::Send(SendError::Failed(error)))?
                {
                    return Poll::Ready(Ok(response));
                }
                if let Some(up) = upload.as_mut() {
                    match up.poll_send(&mut io.stream, cx) {
                        Poll::Ready(Ok(())) => upload = None,
                        Poll::Ready(Err(UploadError::Body(e))) => {
                            return Poll::Ready(Err(SendError::Body(e).into()));
                        }
                        // The backend may have stopped reading to answer early: read on.
                        Poll::Ready(Err(UploadError::Io(error))) => {
                            tracing::debug!(message = "Writing the request body failed.", %error);
                            upload = None;
                            upload_failed = true;
                        }
                        Poll::Pending => {}
                    }
                }
                match ready!(io.poll_fill(cx)) {
                    Ok(0) => {
                        let error = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the backend closed the connection before answering",
                        );
                        return Poll::Ready(Err(exchange_error(error, answered)));
                    }
                    Ok(_) => answered = true,
                    Err(error) => return Poll::Ready(Err(exchange_error(error, answered))),
                }
            }
        })
        .await?;

        let reusable = response.keep_alive && !upload_failed;
        let state = match h1::take_whole_body(&mut io.read_buf, response.framing) {
            Some(data) => BodyState::Whole(Some(data)),
            None => match response.framing {
                Framing::Length(0) => BodyState::Done,
                Framing::Length(n) => BodyState::Length(n),
                Framing::Chunked => BodyState::Chunked(Chunked::Size),
                Framing::UntilClose => BodyState::UntilClose,
            },
        };
        let mut body = BackendBody {
            state,
            fields: response.fields,
            conn: Some(self),
            upload: upload.map(Box::new),
            reusable,
        };
        if body.state.read_all() {
            body.finish();
        }
        let mut built = Response::new(body);
        *built.status_mut() = response.status;
        *built.version_mut() = response.version;
        if let Some(reason) = response.reason {
            built.extensions_mut().insert(reason);
        }
        Ok(built)
    }

    fn release(self) {
        self.pool.release(self.connection, self.taken_ms);
    }
}

#[derive(Debug)]
enum UploadError {
    Body(BodyError),
    Io(io::Error),
}

/// A request body being written to the backend.
#[derive(Debug)]
struct Upload {
    body: UpstreamBody,
    chunked: bool,
    /// Chunk framing waiting to be written before `data`.
    framing: Vec<u8>,
    /// Body bytes waiting to be written.
    data: Bytes,
    sent_a_chunk: bool,
    ended: bool,
}

impl Upload {
    fn new(body: UpstreamBody, chunked: bool) -> Self {
        Self {
            body,
            chunked,
            framing: Vec::new(),
            data: Bytes::new(),
            sent_a_chunk: false,
            ended: false,
        }
    }

    /// Moves the body on; ready once it has been written to its end.
    fn poll_send(
        &mut self,
        stream: &mut Socket,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            if !self.framing.is_empty() || !self.data.is_empty() {
                let bufs = [IoSlice::new(&self.framing), IoSlice::new(&self.data)];
                let n = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &bufs))
                    .map_err(UploadError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(UploadError::Io(io::ErrorKind::WriteZero.into())));
                }
                let from_framing = n.min(self.framing.len());
                self.framing.drain(..from_framing);
                self.data.advance(n - from_framing);
                continue;
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Request trailers are not forwarded.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if self.chunked {
                            if self.sent_a_chunk {
                                self.framing.extend_from_slice(b"\r\n");
                            }
                            h1::encode_chunk_size(&mut self.framing, data.len());
                            self.sent_a_chunk = true;
                        }
                        self.data = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(UploadError::Body(e))),
                None => {
                    self.ended = true;
                    if self.chunked {
                        if self.sent_a_chunk {
                            self.framing.extend_from_slice(b"\r\n");
                        }
                        self.framing.extend_from_slice(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum BodyState {
    /// The whole body arrived with the head.
    Whole(Option<Bytes>),
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl BodyState {
    /// Whether everything has been read from the connection.
    fn read_all(&self) -> bool {
        matches!(
            self,
            BodyState::Whole(_) | BodyState::Done | BodyState::Chunked(Chunked::Done)
        )
    }
}

/// A backend's response body, read from the connection as the client takes it. The connection
/// goes back to the pool as soon as the body has been read to its end.
///
/// The response's header fields travel with it, as the lines the backend sent, so they reach
/// the client's connection without being rebuilt into a header map; the response's own map
/// holds only what the gateway adds.
#[derive(Debug)]
pub struct BackendBody {
    state: BodyState,
    fields: ResponseFields,
    conn: Option<Conn>,
    /// Boxed: a body still uploading once the response has come is rare, and inline it would
    /// make every response larger to move.
    upload: Option<Box<Upload>>,
    reusable: bool,
}

impl BackendBody {
    /// The end-to-end header fields of the response.
    pub fn fields(&self) -> &ResponseFields {
        &self.fields
    }

    /// Returns the connection to its pool if it is in a known state, or closes it.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.reusable && self.upload.is_none() && conn.connection.read_buf.is_empty() {
            conn.release();
        }
        self.upload = None;
    }

    fn fail(&mut self) {
        self.conn = None;
        self.upload = None;
        self.state = BodyState::Done;
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Frame<Bytes>>>> {
        match &mut self.state {
            BodyState::Whole(data) => return Poll::Ready(Ok(data.take().map(Frame::data))),
            BodyState::Done | BodyState::Chunked(Chunked::Done) => return Poll::Ready(Ok(None)),
            _ => {}
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        let io = &mut *conn.connection;
        loop {
            match &mut self.state {
                BodyState::Whole(_) | BodyState::Done => return Poll::Ready(Ok(None)),
                BodyState::Length(left) => {
                    if !io.read_buf.is_empty() {
                        let n = (*left).min(io.read_buf.len() as u64);
                        *left -= n;
                        let data = io.read_buf.split_to(n as usize).freeze();
                        if *left == 0 {
                            self.state = BodyState::Done;
                        }
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                BodyState::Chunked(chunked) => {
                    match chunked.decode(&mut io.read_buf, h1::MAX_HEAD_BYTES)? {
                        Decoded::Data(data) => return Poll::Ready(Ok(Some(Frame::data(data)))),
                        Decoded::Trailers(trailers) => {
                            return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                        }
                        Decoded::End => {
                            self.state = BodyState::Done;
                            return Poll::Ready(Ok(None));
                        }
                        Decoded::NeedMore => {}
                    }
                }
                BodyState::UntilClose => {
                    if !io.read_buf.is_empty() {
                        let data = io.read_buf.split().freeze();
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
            }
            if ready!(io.poll_fill(cx))? == 0 {
                if matches!(self.state, BodyState::UntilClose) {
                    self.state = BodyState::Done;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection in the middle of a response body",
                )));
            }
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let (Some(upload), Some(conn)) = (this.upload.as_mut(), this.conn.as_mut()) {
            match upload.poll_send(&mut conn.connection.stream, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(UploadError::Body(e))) => {
                    this.fail();
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                Poll::Ready(Err(UploadError::Io(error))) => {
                    tracing::debug!(message = "Writing the request body failed.", %error);
                    this.upload = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        match this.poll_read(cx) {
            Poll::Ready(Ok(frame)) => {
                if this.state.read_all() {
                    this.finish();
                }
                Poll::Ready(frame.map(Ok))
            }
            Poll::Ready(Err(e)) => {
                this.fail();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.state,
            BodyState::Done | BodyState::Whole(None) | BodyState::Chunked(Chunked::Done)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyState::Length(left) => SizeHint::with_exact(*left),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::{HeaderMap, StatusCode};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use crate::upstream::now_ms;

    use super::*;

    /// A backend that answers each request head with the next scripted response, closing the
    /// connection after each one when `close` is set; an empty response closes it without
    /// answering. Returns its address and accept count.
    async fn scripted(
        responses: &'static [&'static [u8]],
        close: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut next = responses.iter();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
                let mut seen = Vec::new();
                loop {
                    let mut buf = [0u8; 4096];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    seen.clear();
                    let Some(response) = next.next() else { return };
                    if response.is_empty() {
                        break;
                    }
                    stream.write_all(response).await.unwrap();
                    if close {
                        break;
                    }
                }
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &Arc<ConnPool>) -> (StatusCode, Vec<u8>, Option<HeaderMap>) {
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &Method::GET,
            target: "/",
            headers: &headers,
            host: None,
        };
        let response = pool
            .send(&head, UpstreamBody::Empty, true, now_ms())
            .await
            .unwrap();
        let status = response.status();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (status, collected.to_bytes().to_vec(), trailers)
    }

    fn pool(addr: SocketAddr) -> Arc<ConnPool> {
        Arc::new(ConnPool::new(
            addr,
            ClientSettings {
                connect: Duration::from_secs(1),
                idle: Duration::from_secs(10),
                io_uring: true,
            },
        ))
    }

    #[tokio::test]
    async fn a_chunked_body_with_trailers_streams_and_its_connection_is_reused() {
        let (addr, accepted) = scripted(
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
                b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nhi",
            ],
            false,
        )
        .await;
        let pool = pool(addr);
        let (status, body, trailers) = get(&pool).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"abcde"[..]));
        assert_eq!(trailers.unwrap()["x-sum"], "5");
        let (status, body, _) = get(&pool).await;
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"hi"[..]));
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_backend_closed_is_replaced_unnoticed() {
        let (addr, accepted) = scripted(
            &[
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
            ],
            true,
        )
        .await;
        let pool = pool(addr);
        assert_eq!(get(&pool).await.1, b"a");
        // Lets the reactor see the backend's FIN on the idle connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&pool).await.1, b"b");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_request_crossing_the_backends_idle_close_goes_again_on_a_new_connection() {
        // The second request reaches the backend as it closes the connection, unanswered.
        let (addr, accepted) = scripted(
            &[
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
                b"",
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
            ],
            false,
        )
        .await;
        let pool = pool(addr);
        assert_eq!(get(&pool).await.1, b"a");
        assert_eq!(get(&pool).await.1, b"b");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    /// A request the backend may have acted on before it closed is not sent again: one that is
    /// not idempotent, even without a body, and an idempotent one whose body was streamed.
    #[tokio::test]
    async fn a_request_that_cannot_be_replayed_crossing_the_backends_idle_close_fails() {
        let streamed = || UpstreamBody::stream(crate::server::ClientBody::empty(), 1024);
        let cases: [(fn() -> UpstreamBody, bool); 2] =
            [(|| UpstreamBody::Empty, false), (streamed, true)];
        for (body, replayable) in cases {
            let (addr, accepted) = scripted(
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na", b""],
                false,
            )
            .await;
            let pool = pool(addr);
            assert_eq!(get(&pool).await.1, b"a");
            let headers = HeaderMap::new();
            let head = RequestHead {
                method: &Method::POST,
                target: "/",
                headers: &headers,
                host: None,
            };
            let sent = pool.send(&head, body(), replayable, now_ms()).await;
            assert!(
                matches!(sent, Err(SendError::Failed(_))),
                "{:?}",
                sent.map(|r| r.status())
            );
            assert_eq!(accepted.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test]
    async fn a_body_without_length_ends_when_the_backend_closes() {
        let (addr, accepted) = scripted(
            &[
                b"HTTP/1.1 200 OK\r\n\r\nuntil close",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            true,
        )
        .await;
        let pool = pool(addr);
        assert_eq!(get(&pool).await.1, b"until close");
        assert_eq!(get(&pool).await.0, StatusCode::NO_CONTENT);
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }
}
