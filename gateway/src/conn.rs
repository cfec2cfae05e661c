//! Client connections: an idle timeout that costs one timer per connection, not per request.
//!
//! hyper's own header-read timeout allocates and registers a new timer for every request on a
//! keep-alive connection. Instead, the socket records the time of its last read or write, and
//! one watchdog per connection sleeps until that time plus `idle_ms`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::upstream::now_ms;

/// A TCP stream that records when it last moved bytes.
#[derive(Debug)]
pub struct Tracked {
    stream: TcpStream,
    last_active_ms: Arc<AtomicU64>,
}

impl Tracked {
    /// Wraps a stream; the returned clock is what [`idle`] watches.
    pub fn new(stream: TcpStream) -> (Self, Arc<AtomicU64>) {
        let clock = Arc::new(AtomicU64::new(now_ms()));
        let tracked = Self {
            stream,
            last_active_ms: Arc::clone(&clock),
        };
        (tracked, clock)
    }

    fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Resolves once the stream has moved no bytes for `limit`.
pub async fn idle(clock: &AtomicU64, limit: Duration) {
    let limit = limit.as_millis() as u64;
    loop {
        let deadline = clock.load(Ordering::Relaxed) + limit;
        let now = now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}
