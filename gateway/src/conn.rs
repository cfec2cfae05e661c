//! Client connections: timeouts that cost one timer per connection, not per request.
//!
//! hyper's own header-read timeout allocates and registers a new timer for every request on a
//! keep-alive connection. Instead, on the admin listener the socket records the time of its
//! last read or write, and one watchdog per connection sleeps until that time plus `idle_ms`.
//! The public listener's server keeps a [`Deadline`] per connection for each timeout (idle,
//! backend response) and moves it on for every request (a request body that has to wait for
//! the client gets one of its own). A deadline moved later leaves its timer where it is until
//! the timer fires, so a busy connection touches the timer wheel about once per timeout
//! period, where a fresh `tokio::time::timeout` registers and deregisters a timer each time.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

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

/// A timer owned by one connection and re-armed for each request.
///
/// Re-arming is lazy: a deadline moved later leaves the timer where it is, and when the
/// timer fires early it is pushed on to the real deadline then. Deadlines on a busy
/// connection only ever move later, so the timer is touched about once per timeout period
/// instead of once per request.
#[derive(Debug, Default)]
pub struct Deadline {
    /// Created on first use: most connections never need some of their timeouts.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The instant that counts; the timer may be set earlier.
    at: Option<Instant>,
}

impl Deadline {
    /// A deadline not armed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the instant at which [`within`](Self::within) gives up.
    pub fn arm(&mut self, at: Instant) {
        self.at = Some(at);
        match &mut self.sleep {
            // A timer due later than the new deadline would fire too late: moved now.
            Some(sleep) if sleep.deadline() > at => sleep.as_mut().reset(at),
            Some(_) => {}
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Ready once the armed instant has passed; never, unarmed.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(sleep), Some(at)) = (&mut self.sleep, self.at) else {
            return Poll::Pending;
        };
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= at {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline since moved on.
            sleep.as_mut().reset(at);
        }
    }

    /// Runs `future` until it completes or the armed instant passes (`None`). Unarmed, it
    /// only runs the future.
    pub async fn within<F: Future>(&mut self, future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            self.poll_passed(cx).map(|()| None)
        })
        .await
    }

    /// Runs `future` for at most `limit` from the moment it first has to wait, so a future
    /// that is ready at once costs neither a clock read nor a timer update.
    pub async fn within_once_waiting<F: Future>(
        &mut self,
        limit: Duration,
        future: F,
    ) -> Option<F::Output> {
        let mut future = pin!(future);
        let mut armed = false;
        poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if !armed {
                armed = true;
                self.arm(Instant::now() + limit);
            }
            self.poll_passed(cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(40);
    const LONG: Duration = Duration::from_millis(400);

    #[tokio::test]
    async fn a_deadline_moved_later_does_not_fire_at_the_earlier_instant() {
        let mut deadline = Deadline::new();
        let now = Instant::now();
        deadline.arm(now + SHORT);
        // The next request's deadline: the timer stays set for the first, and must not end
        // the wait when it fires.
        deadline.arm(now + LONG);
        let waited = deadline.within(tokio::time::sleep(SHORT * 3)).await;
        assert_eq!(waited, Some(()), "the moved deadline has not passed yet");
        assert_eq!(deadline.within(std::future::pending::<()>()).await, None);
        assert!(
            Instant::now() >= now + LONG,
            "it fires at the later instant"
        );
    }

    #[tokio::test]
    async fn a_deadline_moved_earlier_fires_at_the_earlier_instant() {
        let mut deadline = Deadline::new();
        let now = Instant::now();
        deadline.arm(now + LONG * 10);
        deadline.arm(now + SHORT);
        assert_eq!(deadline.within(std::future::pending::<()>()).await, None);
        assert!(Instant::now() < now + LONG * 10);
    }
}
