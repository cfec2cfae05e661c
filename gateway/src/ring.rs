//! Socket I/O through io_uring: the reads and writes of every connection on a thread are
//! queued while tasks run and handed to the kernel together, one system call per turn of the
//! event loop instead of one per read or write.
//!
//! On loopback most of a proxied request's CPU time is the kernel's, and with epoll every
//! `recv` and `send` is a system call of its own. Worse, a `send` that wakes the peer (the
//! client, the backend) lets the peer take the CPU the moment the call returns, in the middle
//! of the gateway's turn; sends submitted together return once, after all of them. The L4
//! mode measured 5.9 µs of CPU per request this way against 7.6 µs on epoll, the L7 path 8.8
//! against 9.9 µs, with preemptions per request down from 0.1–0.3 to 0.01 (the earlier runs,
//! on an Intel Xeon, in `gateway/README.md`; the shared receive buffers below took the L7 path
//! to 0.76x–0.85x of epoll's CPU per request in the later ones).
//!
//! One [`Ring`] serves each thread that runs connections, made on first use and driven by a
//! tokio task: it submits what the tasks queued, reaps completions, wakes the tasks they
//! belong to and steps aside, so those tasks queue their next operations before the next
//! submission. With nothing to do it waits on the ring's descriptor in tokio's own reactor,
//! so timers, signals and the admin listener work as before. Where io_uring is unavailable
//! (an old kernel, or a container whose seccomp profile forbids it) sockets stay on epoll.
//!
//! [`RingStream`] puts an `AsyncRead`/`AsyncWrite` face on a socket served by the ring:
//! - Every socket keeps one multishot receive posted, which takes a buffer from a pool the
//!   ring shares (a provided-buffer ring) only when bytes arrive: no receive is posted again
//!   per read, and an idle connection holds no buffer, yet a pooled one learns of its
//!   backend's close with no system call of its own. A socket whose reader falls four buffers
//!   behind stops receiving until it catches up, leaving its sender to TCP's flow control;
//!   that takes effect from the next submission, so what arrives before it (a fast sender's
//!   whole backlog, at worst the whole pool) is still taken. When the pool is empty a socket
//!   receives into a buffer of its own, freed once read, so no socket's progress waits on
//!   another's reader.
//! - A write is copied and queued, and reported done; the next write or a flush waits for
//!   the kernel to take it. That is what `send` promises too (the kernel has the bytes), one
//!   turn later; an error surfaces on the next write, flush or read.
//! - Dropping a stream cancels what it still has posted. A send already queued is attempted
//!   first, so a last answer that fits in the socket goes out; one still waiting for room is
//!   cancelled, so a writer that must deliver flushes before it drops (the server does before
//!   closing a connection).
//!
//! This is the one module with `unsafe` code. Its invariant: a buffer or descriptor named in
//! a queued entry belongs to a slot that is neither freed nor touched until the entry's
//! completion has been reaped.

#![allow(unsafe_code)]

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Submission queue entries; a turn that queues more submits early, so this bounds only how
/// many operations share one system call.
const RING_ENTRIES: u32 = 256;

/// Completion queue entries. More completions than this wait in the kernel's overflow list
/// until the next turn asks for them.
const COMPLETION_ENTRIES: u32 = 4096;

/// The oldest kernel whose cancellation by descriptor covers registered files, `(major, minor)`.
const MIN_KERNEL: (u32, u32) = (6, 0);

/// Sizes of registered-file table to try, largest first: an operation on a registered file
/// skips the kernel's descriptor lookup and reference count (`fget`, about 2 % of the
/// gateway's CPU). The kernel refuses a table larger than the descriptor limit.
const FIXED_FILE_TABLES: [u32; 4] = [65_536, 16_384, 4_096, 1_024];

/// Receive buffers shared by the sockets of one ring, and the bytes of each: 4 MiB per thread
/// however many connections it holds, where a buffer per socket would cost that much for every
/// 256 idle connections. Received bytes wait in a shared buffer until their reader takes them.
const SHARED_BUFFERS: u16 = 512;
const SHARED_BUFFER_BYTES: usize = 8 * 1024;

/// Shared buffers one socket may fill before its reader takes them. A socket at this many
/// stops receiving, so the kernel's socket buffer and then TCP's window hold its sender back,
/// as they would on epoll. The stop is a cancel that goes with the next submission: until
/// then the kernel goes on filling buffers for it, so this bounds what a socket keeps across
/// turns, not what one turn's arrivals take.
const HELD_PER_SOCKET: usize = 4;

/// The buffer a socket receives into on its own once the shared ones are all taken, so a
/// socket's progress never waits on another socket's reader.
const OWN_BUFFER_BYTES: usize = 16 * 1024;

/// The group id of the shared buffers: a ring registers only the one group.
const BUFFER_GROUP: u16 = 0;

/// The buffer id that stands for a socket's own buffer in its queue of received chunks.
const OWN_BUFFER: u16 = u16::MAX;

/// The most one write takes; the caller writes the rest once it has gone.
const MAX_WRITE_BYTES: usize = 64 * 1024;

/// A send buffer grown past this is given back once its bytes have gone.
const RETAINED_WRITE_BYTES: usize = 16 * 1024;

/// How long dropping a ring waits for the kernel to give back operations it still holds.
const DRAIN_ON_DROP: Duration = Duration::from_millis(200);

/// The kind of operation, in the low two bits of its user data; the slot index is above.
/// A receive into the shared buffers, multishot: it stays posted across completions.
const RECV: u64 = 0;
const SEND: u64 = 1;
const CANCEL: u64 = 2;
/// A one-shot receive into the socket's own buffer.
const RECV_OWN: u64 = 3;
/// The user data of the cancel-everything entry of `Drop for Ring`, which has no slot.
const RING_CANCEL: u64 = u64::MAX;

/// A socket of the data path: on the thread's [`Ring`] when there is one, on tokio's epoll
/// reactor otherwise.
#[derive(Debug)]
pub enum Socket {
    Epoll(TcpStream),
    Ring(RingStream),
}

impl Socket {
    /// Serves `stream` through the thread's ring when `use_ring` is set and io_uring works
    /// here; otherwise it stays with tokio.
    pub fn new(stream: TcpStream, use_ring: bool) -> Self {
        if !use_ring {
            return Self::Epoll(stream);
        }
        let Some(ring) = Ring::current() else {
            return Self::Epoll(stream);
        };
        // Leaving tokio's reactor and blocking mode: the ring's receives then wait in the
        // kernel for data rather than failing with `EAGAIN`.
        match stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
        {
            Ok(std) => Self::Ring(ring.register(std)),
            Err(error) => {
                // The descriptor is gone with the error; the caller sees a closed stream.
                tracing::warn!(message = "A socket could not move to io_uring.", %error);
                Self::Ring(ring.register_closed())
            }
        }
    }

    /// Whether an idle connection can carry a request: the peer has neither closed it nor
    /// sent anything unasked. Costs no system call.
    pub fn is_idle_and_open(&self) -> bool {
        match self {
            Self::Epoll(stream) => {
                let mut probe = [0u8; 1];
                matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Self::Ring(stream) => stream.is_idle_and_open(),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Epoll(s) => Pin::new(s).poll_read(cx, buf),
            Self::Ring(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Epoll(s) => Pin::new(s).poll_write(cx, buf),
            Self::Ring(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Epoll(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Ring(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Epoll(s) => Pin::new(s).poll_flush(cx),
            Self::Ring(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Epoll(s) => Pin::new(s).poll_shutdown(cx),
            Self::Ring(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One io_uring instance and the sockets it serves.
pub struct Ring {
    /// The ring's descriptor in tokio's reactor: readable when completions wait. Declared
    /// first so it leaves the reactor before `inner` closes the descriptor.
    readiness: AsyncFd<RingFd>,
    inner: Mutex<Inner>,
    /// Cleared when the driving task is dropped with its runtime; a new runtime on the same
    /// thread then gets a new ring.
    driven: AtomicBool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

/// The ring's descriptor, borrowed for the reactor; `IoUring` owns it.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

struct Inner {
    uring: IoUring,
    /// Slots below this use the registered-file entry of their own index.
    fixed_files: u32,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Entries were queued since the last submission.
    queued: bool,
    /// Entries that found the submission queue full even after a submission; they go first
    /// in the next turn.
    backlog: Vec<squeue::Entry>,
    /// The driving task, when it waits for work.
    driver: Option<Waker>,
    /// `None` where the kernel refused them: every receive then uses its socket's own buffer.
    /// After `uring`, so the ring closes before the buffers go.
    shared: Option<SharedBuffers>,
}

/// One socket's state. Its buffers are on the heap, so moving the slot (as the vector
/// grows) leaves the addresses the kernel holds valid.
#[derive(Default)]
struct Slot {
    fd: Option<OwnedFd>,
    /// `fd` is also registered at this slot's index in the ring's file table.
    fixed: bool,
    /// Operations the kernel holds for this slot (receive, send, cancel).
    in_flight: u8,
    /// The stream is gone: the slot is freed, and its socket closed, once `in_flight` is 0.
    dropped: bool,
    read: ReadSide,
    write: WriteSide,
}

/// How an operation names its socket.
#[derive(Debug, Clone, Copy)]
enum Target {
    Fd(RawFd),
    Fixed(u32),
}

impl Slot {
    /// `None` once the socket is closed (or never was open).
    fn target(&self, id: usize) -> Option<Target> {
        let fd = self.fd.as_ref()?.as_raw_fd();
        Some(if self.fixed {
            Target::Fixed(id as u32)
        } else {
            Target::Fd(fd)
        })
    }
}

#[derive(Default)]
struct ReadSide {
    /// Received bytes not yet read, oldest first: `(buffer id, length)`, where the id is a
    /// shared buffer's or [`OWN_BUFFER`].
    chunks: VecDeque<(u16, usize)>,
    /// Bytes of the front chunk already read.
    pos: usize,
    /// Allocated when the shared buffers run out under this socket (on every receive where
    /// there are none), and freed once read where there are.
    own: Box<[u8]>,
    posted: Option<Posted>,
    /// A cancel of the multishot receive is queued: the socket holds its share of buffers.
    pausing: bool,
    /// The shared buffers ran out under this socket's receive; the next one uses `own`.
    starved: bool,
    /// The end of the stream (0) or an error (a negative errno); sticky.
    ended: Option<i32>,
    waker: Option<Waker>,
}

/// Which receive the kernel holds for a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    /// Multishot, into the shared buffers: it completes once per arrival and stays posted.
    Shared,
    /// One-shot, into the socket's own buffer.
    Own,
}

/// The kernel's `struct io_uring_buf`: one descriptor in a provided-buffer ring. The first
/// descriptor's `resv` is the ring's tail.
#[repr(C)]
struct BufferDescriptor {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// Receive buffers lent to the kernel through a provided-buffer ring. A multishot receive on
/// any socket takes the next free buffer as data arrives, and the reader gives it back once it
/// has copied the bytes out; a socket with nothing arriving holds no buffer at all.
struct SharedBuffers {
    /// How many: a power of two, [`SHARED_BUFFERS`] outside tests.
    count: u16,
    /// The descriptors the kernel takes buffers from, one per buffer, on pages of their own.
    /// The tail, this side's end, is the first entry's reserved field.
    entries: NonNull<BufferDescriptor>,
    /// The buffers, of [`SHARED_BUFFER_BYTES`] each, in one allocation.
    memory: NonNull<u8>,
    /// The tail as last published.
    tail: u16,
    /// Buffers the kernel holds, as far as the completions reaped so far tell.
    lent: u16,
}

impl SharedBuffers {
    /// The layouts of the descriptors (on pages of their own) and of the buffers.
    fn layouts(count: u16) -> io::Result<(Layout, Layout)> {
        let descriptors = usize::from(count) * std::mem::size_of::<BufferDescriptor>();
        let entries = Layout::from_size_align(descriptors, page_size());
        let memory = Layout::from_size_align(usize::from(count) * SHARED_BUFFER_BYTES, 64);
        match (entries, memory) {
            (Ok(entries), Ok(memory)) => Ok((entries, memory)),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    /// Allocates `count` buffers (a power of two) and lends them all to `uring` as group
    /// [`BUFFER_GROUP`].
    fn register(uring: &IoUring, count: u16) -> io::Result<Self> {
        if !count.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let (entries_layout, memory_layout) = Self::layouts(count)?;
        let no_memory = || io::Error::from(io::ErrorKind::OutOfMemory);
        // SAFETY (both allocations): the layouts have non-zero sizes.
        let entries = NonNull::new(unsafe { std::alloc::alloc_zeroed(entries_layout) })
            .ok_or_else(no_memory)?
            .cast::<BufferDescriptor>();
        let Some(memory) = NonNull::new(unsafe { std::alloc::alloc(memory_layout) }) else {
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(no_memory());
        };
        // Made before registering, so that an error frees both allocations.
        let mut shared = Self {
            count,
            entries,
            memory,
            tail: 0,
            lent: 0,
        };
        // SAFETY: the entries stay allocated, and in place, until `Drop`, which runs after
        // the ring has unregistered them or closed (`Inner`'s field order).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                BUFFER_GROUP,
                0,
            )
        }?;
        for bid in 0..count {
            shared.give_back(bid);
        }
        Ok(shared)
    }

    /// The start of buffer `bid`; callers check `bid < count` first.
    fn buffer(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: every id below `count` names a buffer inside `memory`.
        unsafe {
            self.memory
                .as_ptr()
                .add(usize::from(bid) * SHARED_BUFFER_BYTES)
        }
    }

    /// The first `len` bytes of buffer `bid`, which a reaped completion filled; `None` for
    /// an id or a length no completion can carry.
    fn bytes(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count || len > SHARED_BUFFER_BYTES {
            return None;
        }
        // SAFETY: the kernel filled the buffer and let go of it, and nothing writes it until
        // `give_back`, which needs `&mut self`.
        Some(unsafe { std::slice::from_raw_parts(self.buffer(bid), len) })
    }

    /// Lends buffer `bid` to the kernel again.
    fn give_back(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let index = usize::from(self.tail & (self.count - 1));
        let entry = self.entries.as_ptr();
        // SAFETY: the descriptor at the tail is this side's to write, since the kernel reads
        // none at or past the tail. Its fields are written one by one, never the first
        // descriptor's `resv`, which is the tail and read by the kernel at any time.
        unsafe {
            let at = entry.add(index);
            std::ptr::addr_of_mut!((*at).addr).write(self.buffer(bid) as u64);
            std::ptr::addr_of_mut!((*at).len).write(SHARED_BUFFER_BYTES as u32);
            std::ptr::addr_of_mut!((*at).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is an aligned `u16` inside the first descriptor, written only here.
        let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*entry).resv)) };
        // Release: the kernel that reads the new tail sees the descriptor written before it.
        tail.store(self.tail, Ordering::Release);
        self.lent += 1;
    }
}

impl Drop for SharedBuffers {
    fn drop(&mut self) {
        // `register` made these layouts for the same count, so they are made again here.
        let Ok((entries_layout, memory_layout)) = Self::layouts(self.count) else {
            return;
        };
        // SAFETY: allocated in `register` with these layouts, and the kernel holds none of it.
        unsafe {
            std::alloc::dealloc(self.entries.as_ptr().cast(), entries_layout);
            std::alloc::dealloc(self.memory.as_ptr(), memory_layout);
        }
    }
}

// SAFETY: the pointers are owned allocations, reached only through the ring's mutex.
unsafe impl Send for SharedBuffers {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(4096)
}

#[derive(Default)]
struct WriteSide {
    buf: Vec<u8>,
    /// Bytes of `buf` the kernel has taken.
    sent: usize,
    posted: bool,
    /// The errno of a failed send; sticky.
    error: Option<i32>,
    waker: Option<Waker>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Ring>>> = const { RefCell::new(None) };
}

impl Ring {
    /// This thread's ring, made (and its driver spawned on the current tokio runtime) on
    /// first use; `None` where io_uring cannot be set up, which is logged once.
    pub fn current() -> Option<Arc<Ring>> {
        static UNAVAILABLE: OnceLock<()> = OnceLock::new();
        if UNAVAILABLE.get().is_some() {
            return None;
        }
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            if let Some(ring) = current
                .as_ref()
                .filter(|r| r.driven.load(Ordering::Acquire))
            {
                return Some(Arc::clone(ring));
            }
            match Ring::start(SHARED_BUFFERS) {
                Ok(ring) => {
                    *current = Some(Arc::clone(&ring));
                    Some(ring)
                }
                Err(error) => {
                    UNAVAILABLE.get_or_init(|| {
                        tracing::warn!(
                            message = "io_uring is unavailable; sockets stay on epoll.",
                            %error
                        );
                    });
                    None
                }
            }
        })
    }

    /// A ring lending `shared_buffers` receive buffers (a power of two) to its sockets.
    fn start(shared_buffers: u16) -> io::Result<Arc<Ring>> {
        // Cancelling every operation on a descriptor, registered or not, is what closes a
        // dropped stream's socket; older kernels refuse it.
        if kernel_release() < MIN_KERNEL {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring sockets need Linux 6.0 or later",
            ));
        }
        // Cooperative task running: completions are posted when the thread next enters the
        // kernel, instead of by interrupting it wherever it is. A large completion queue,
        // since every open socket keeps a receive posted. Not deferred task running
        // (`DEFER_TASKRUN`): it wakes a thread that waits anywhere but in `io_uring_enter` only
        // through a registered eventfd, which Linux 6.18 signalled 12 to 15 ms late here, and
        // this thread waits in tokio's reactor.
        let uring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(COMPLETION_ENTRIES)
            .build(RING_ENTRIES)?;
        let fixed_files = FIXED_FILE_TABLES
            .into_iter()
            .find(|&n| uring.submitter().register_files_sparse(n).is_ok())
            .unwrap_or(0);
        // SAFETY: the descriptor is the ring's, which `Ring` closes only after dropping
        // `readiness` (field order).
        let readiness = unsafe {
            AsyncFd::register_with_interest(
                RingFd(uring.as_raw_fd()),
                tokio::io::Interest::READABLE,
            )
        }?;
        // Last of what can fail: the buffers are then never freed while still registered.
        let shared = match SharedBuffers::register(&uring, shared_buffers) {
            Ok(shared) => Some(shared),
            Err(error) => {
                tracing::debug!(message = "No shared receive buffers; each socket uses its own.", %error);
                None
            }
        };
        let ring = Arc::new(Ring {
            inner: Mutex::new(Inner {
                uring,
                fixed_files,
                slots: Vec::new(),
                free: Vec::new(),
                queued: false,
                backlog: Vec::new(),
                driver: None,
                shared,
            }),
            readiness,
            driven: AtomicBool::new(true),
        });
        // Made before the spawn: a runtime dropped before the driver first runs still marks
        // the ring undriven, so the next runtime on this thread gets a new one.
        let stopped = Stopped(Arc::downgrade(&ring));
        tokio::spawn(drive(Arc::downgrade(&ring), stopped));
        Ok(ring)
    }

    /// Serves `stream` (in blocking mode) from now on; its first receive is posted at once.
    fn register(self: &Arc<Self>, stream: std::net::TcpStream) -> RingStream {
        let fd = stream.into_raw_fd();
        let mut inner = lock(&self.inner);
        let id = inner.allocate();
        // SAFETY: `fd` was just released by the stream, so the slot is its only owner.
        inner.slots[id].fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        inner.slots[id].fixed = (id as u64) < u64::from(inner.fixed_files)
            && inner
                .uring
                .submitter()
                .register_files_update(id as u32, &[fd])
                .is_ok();
        inner.post_recv(id);
        drop(inner);
        RingStream {
            ring: Arc::clone(self),
            id,
            fd,
        }
    }

    /// A stream that reads as closed: what a socket that failed to move becomes.
    fn register_closed(self: &Arc<Self>) -> RingStream {
        let mut inner = lock(&self.inner);
        let id = inner.allocate();
        let slot = &mut inner.slots[id];
        slot.read.ended = Some(-libc::ENOTCONN);
        slot.write.error = Some(libc::ENOTCONN);
        drop(inner);
        RingStream {
            ring: Arc::clone(self),
            id,
            fd: -1,
        }
    }

    /// Submits what is queued and wakes the tasks whose operations completed; returns how
    /// many it woke, and whether it submitted or reaped anything at all.
    fn turn(&self) -> (usize, bool) {
        let mut inner = lock(&self.inner);
        inner.flush_backlog();
        let sq = inner.uring.submission();
        // Either flag needs an enter: task work to run, or completions parked in overflow.
        let kernel_work = sq.taskrun() || sq.cq_overflow();
        drop(sq);
        let mut progressed = false;
        if inner.queued || kernel_work {
            inner.queued = !inner.backlog.is_empty();
            match inner.uring.submit() {
                Ok(submitted) => progressed = submitted > 0,
                Err(error) => {
                    // EINTR or EBUSY (completions to reap first): the next turn submits again.
                    inner.queued = true;
                    tracing::trace!(message = "io_uring submission deferred.", %error);
                }
            }
        }
        progressed |= !inner.uring.completion().is_empty();
        let wakers = inner.reap();
        drop(inner);
        let woken = wakers.len();
        for waker in wakers {
            waker.wake();
        }
        (woken, progressed)
    }

    /// Ready when there is something to submit or reap.
    fn poll_work(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut inner = lock(&self.inner);
            if inner.queued
                || !inner.uring.completion().is_empty()
                || inner.uring.submission().taskrun()
                || inner.uring.submission().cq_overflow()
            {
                return Poll::Ready(());
            }
            store_waker(&mut inner.driver, cx);
        }
        match self.readiness.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                // Cleared before reaping: a completion posted after this sets it again.
                guard.clear_ready();
                Poll::Ready(())
            }
            Poll::Ready(Err(_)) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still hold operations on buffers about to be freed: cancel them all
        // and wait (briefly) for it to give them back.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.slots.iter().any(|s| s.in_flight > 0) {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(RING_CANCEL);
            // SAFETY: the entry refers to no memory.
            let _ = unsafe { inner.uring.submission().push(&cancel) };
            let deadline = std::time::Instant::now() + DRAIN_ON_DROP;
            while inner.slots.iter().any(|s| s.in_flight > 0)
                && std::time::Instant::now() < deadline
            {
                // Entries still waiting for room go in first, and the cancel again if the
                // queue was full when it was pushed.
                inner.flush_backlog();
                // SAFETY: as above.
                let _ = unsafe { inner.uring.submission().push(&cancel) };
                let wait = types::Timespec::new().nsec(10_000_000);
                let args = types::SubmitArgs::new().timespec(&wait);
                let _ = inner.uring.submitter().submit_with_args(1, &args);
                drop(inner.reap());
            }
        }
        if inner.slots.iter().any(|s| s.in_flight > 0) {
            // The kernel kept some: leaking their buffers is safe, freeing them is not.
            std::mem::forget(std::mem::take(&mut inner.slots));
            std::mem::forget(inner.shared.take());
        } else if inner.shared.is_some() {
            let _ = inner.uring.submitter().unregister_buf_ring(BUFFER_GROUP);
        }
    }
}

impl Inner {
    fn allocate(&mut self) -> usize {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        }
    }

    fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY (for both pushes): every entry's buffer belongs to a slot that stays
        // allocated, and is not touched by user code, until its completion is reaped.
        if !self.backlog.is_empty() {
            // Behind the entries already waiting, to keep their order.
            self.backlog.push(entry.clone());
        } else if unsafe { self.uring.submission().push(entry) }.is_err() {
            // A full queue is submitted early; the entry then fits, or waits its turn.
            let _ = self.uring.submit();
            if unsafe { self.uring.submission().push(entry) }.is_err() {
                self.backlog.push(entry.clone());
            }
        }
        if !self.queued {
            self.queued = true;
            if let Some(driver) = self.driver.take() {
                driver.wake();
            }
        }
    }

    /// Moves waiting entries into the submission queue, as many as fit.
    fn flush_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let mut moved = 0;
        {
            let mut sq = self.uring.submission();
            for entry in &self.backlog {
                // SAFETY: as in `push`; these entries were checked in there.
                if unsafe { sq.push(entry) }.is_err() {
                    break;
                }
                moved += 1;
            }
        }
        self.backlog.drain(..moved);
        if moved > 0 {
            self.queued = true;
        }
    }

    /// Posts the socket's next receive, unless one is posted, the stream is over or the socket
    /// holds its share of the shared buffers: multishot into those while any are left, one-shot
    /// into its own buffer once they are not (and that buffer's last bytes have been read).
    fn post_recv(&mut self, id: usize) {
        let shared_left = self.shared.as_ref().is_some_and(|s| s.lent > 0);
        let slot = &mut self.slots[id];
        let Some(target) = slot.target(id) else {
            return;
        };
        let read = &mut slot.read;
        if slot.dropped
            || read.posted.is_some()
            || read.ended.is_some()
            || read.chunks.len() >= HELD_PER_SOCKET
        {
            return;
        }
        let entry = if shared_left && !read.starved {
            read.posted = Some(Posted::Shared);
            match target {
                Target::Fd(fd) => opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP).build(),
                Target::Fixed(index) => {
                    opcode::RecvMulti::new(types::Fixed(index), BUFFER_GROUP).build()
                }
            }
            .user_data(((id as u64) << 2) | RECV)
        } else {
            if read.chunks.iter().any(|&(bid, _)| bid == OWN_BUFFER) {
                return;
            }
            read.starved = false;
            if read.own.is_empty() {
                read.own = vec![0; OWN_BUFFER_BYTES].into_boxed_slice();
            }
            read.posted = Some(Posted::Own);
            let (buf, len) = (read.own.as_mut_ptr(), read.own.len() as u32);
            match target {
                Target::Fd(fd) => opcode::Recv::new(types::Fd(fd), buf, len).build(),
                Target::Fixed(index) => opcode::Recv::new(types::Fixed(index), buf, len).build(),
            }
            .user_data(((id as u64) << 2) | RECV_OWN)
        };
        slot.in_flight += 1;
        self.push(&entry);
    }

    /// Cancels a socket's multishot receive: it holds its share of the shared buffers. Its
    /// reader posts the next receive once it has taken some of them.
    fn pause_recv(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        if slot.dropped || slot.read.pausing || slot.read.posted != Some(Posted::Shared) {
            return;
        }
        slot.read.pausing = true;
        slot.in_flight += 1;
        let recv = types::CancelBuilder::user_data(((id as u64) << 2) | RECV);
        let cancel = opcode::AsyncCancel2::new(recv)
            .build()
            .user_data(((id as u64) << 2) | CANCEL);
        self.push(&cancel);
    }

    fn post_send(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        let Some(target) = slot.target(id) else {
            return;
        };
        let write = &mut slot.write;
        write.posted = true;
        slot.in_flight += 1;
        let rest = &write.buf[write.sent..];
        // MSG_WAITALL: the kernel finishes a partial send itself rather than completing short.
        let (buf, len) = (rest.as_ptr(), rest.len() as u32);
        let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        let entry = match target {
            Target::Fd(fd) => opcode::Send::new(types::Fd(fd), buf, len)
                .flags(flags)
                .build(),
            Target::Fixed(index) => opcode::Send::new(types::Fixed(index), buf, len)
                .flags(flags)
                .build(),
        }
        .user_data(((id as u64) << 2) | SEND);
        self.push(&entry);
    }

    /// Applies every completion to its slot; returns the wakers of the tasks to wake.
    fn reap(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut resend = Vec::new();
        let mut released = Vec::new();
        let mut rearm = Vec::new();
        let mut pause = Vec::new();
        let Inner {
            uring,
            slots,
            shared,
            ..
        } = self;
        for cqe in uring.completion() {
            if cqe.user_data() == RING_CANCEL {
                continue;
            }
            let (id, kind, res, flags) = (
                (cqe.user_data() >> 2) as usize,
                cqe.user_data() & 3,
                cqe.result(),
                cqe.flags(),
            );
            // A shared buffer the kernel filled is this side's now, whoever reads it.
            let mut filled = cqueue::buffer_select(flags).filter(|_| shared.is_some());
            if let (Some(_), Some(shared)) = (filled, shared.as_mut()) {
                shared.lent = shared.lent.saturating_sub(1);
            }
            let Some(slot) = slots.get_mut(id) else {
                if let (Some(bid), Some(shared)) = (filled, shared.as_mut()) {
                    shared.give_back(bid);
                }
                continue;
            };
            // A multishot receive is the kernel's until its last completion.
            let finished = !cqueue::more(flags);
            let last = finished && slot.in_flight == 1;
            if finished {
                debug_assert!(slot.in_flight > 0, "a completion nothing was counted for");
                slot.in_flight = slot.in_flight.saturating_sub(1);
            }
            match kind {
                RECV | RECV_OWN => {
                    let read = &mut slot.read;
                    let paused = finished && std::mem::take(&mut read.pausing);
                    if finished {
                        read.posted = None;
                    }
                    let chunk = if kind == RECV_OWN {
                        Some(OWN_BUFFER)
                    } else {
                        filled.take()
                    };
                    if res > 0 {
                        match (chunk, slot.dropped) {
                            (Some(bid), false) if read.ended.is_none() => {
                                read.chunks.push_back((bid, res as usize));
                                if !finished && read.chunks.len() >= HELD_PER_SOCKET {
                                    pause.push(id);
                                }
                            }
                            // Nobody will read it (the stream is gone, or failed): straight
                            // back to the kernel.
                            (Some(bid), _) => filled = Some(bid).filter(|&b| b != OWN_BUFFER),
                            // Bytes in no buffer named: no kernel does this, and the stream
                            // fails rather than going on with a gap.
                            (None, _) => read.ended = Some(-libc::EIO),
                        }
                    } else if res == -libc::ENOBUFS {
                        // Not the socket's end: its bytes wait in the kernel for a buffer.
                        read.starved = true;
                    } else if !(res == -libc::ECANCELED && paused) {
                        read.ended = Some(res);
                    }
                    if res <= 0 {
                        // A receive that selected a buffer and then failed (or found the end)
                        // from a kernel worker still used the buffer up.
                        filled = chunk.filter(|&bid| bid != OWN_BUFFER);
                    }
                    if finished && !slot.dropped && read.ended.is_none() {
                        rearm.push(id);
                    }
                    wakers.extend(read.waker.take());
                }
                SEND => {
                    let write = &mut slot.write;
                    write.posted = false;
                    if res < 0 {
                        write.error = Some(-res);
                    } else if res == 0 && write.sent < write.buf.len() {
                        // Nothing taken and no error: the bytes cannot go, say so.
                        write.error = Some(libc::EPIPE);
                    } else {
                        write.sent += res as usize;
                        if write.sent < write.buf.len() && !slot.dropped {
                            resend.push(id);
                        } else if write.buf.capacity() > RETAINED_WRITE_BYTES {
                            // A large answer's buffer is not kept for the connection's life.
                            write.buf = Vec::new();
                        }
                    }
                    wakers.extend(write.waker.take());
                }
                _ => {}
            }
            // A filled buffer that no chunk holds goes straight back.
            if let (Some(bid), Some(shared)) = (filled, shared.as_mut()) {
                shared.give_back(bid);
            }
            // Only on the completion that brought it to 0: a stray one must not free the slot
            // a second time.
            if slot.dropped && last {
                released.push(id);
            }
        }
        for id in released {
            self.release(id);
        }
        for id in resend {
            self.post_send(id);
        }
        for id in rearm {
            self.post_recv(id);
        }
        for id in pause {
            self.pause_recv(id);
        }
        wakers
    }

    /// Closes a dropped stream's socket and keeps its buffers for the next one.
    fn release(&mut self, id: usize) {
        let slot = &mut self.slots[id];
        if slot.fixed {
            // The table holds its own reference: without this the socket would stay open.
            let _ = self
                .uring
                .submitter()
                .register_files_update(id as u32, &[-1]);
        }
        slot.fd = None;
        slot.dropped = false;
        let mut chunks = std::mem::take(&mut slot.read.chunks);
        for (bid, _) in chunks.drain(..) {
            if let (Some(shared), true) = (self.shared.as_mut(), bid != OWN_BUFFER) {
                shared.give_back(bid);
            }
        }
        // Kept for the next socket only where every socket receives into its own.
        let own = match self.shared {
            Some(_) => Box::default(),
            None => std::mem::take(&mut slot.read.own),
        };
        let mut write = std::mem::take(&mut slot.write.buf);
        if write.capacity() > RETAINED_WRITE_BYTES {
            write = Vec::new();
        }
        write.clear();
        *slot = Slot::default();
        slot.read.chunks = chunks;
        slot.read.own = own;
        slot.write.buf = write;
        self.free.push(id);
    }
}

/// The running kernel's `(major, minor)`; `(0, 0)` if it cannot be read.
fn kernel_release() -> (u32, u32) {
    let mut name = std::mem::MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `uname` fills the struct it is given; on failure it stays zeroed.
    let name = unsafe {
        libc::uname(name.as_mut_ptr());
        name.assume_init()
    };
    // SAFETY: `release` is a NUL-terminated string inside the struct (or all zeros).
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    major_minor(release.to_str().unwrap_or(""))
}

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`; `(0, 0)` if there is none.
fn major_minor(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Submits and reaps for one ring until its runtime drops this task.
/// Marks its ring undriven when the driving task is dropped.
struct Stopped(Weak<Ring>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(ring) = self.0.upgrade() {
            ring.driven.store(false, Ordering::Release);
        }
    }
}

/// Steps aside once: the task goes behind every task already woken.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

async fn drive(ring: Weak<Ring>, _stopped: Stopped) {
    loop {
        let Some(current) = ring.upgrade() else {
            return;
        };
        let (woken, progressed) = current.turn();
        drop(current);
        if woken > 0 || !progressed {
            // Behind the tasks just woken, so what they queue goes in the next submission.
            // A turn that did nothing although work seemed due (task work only another
            // thread can run, a refused submission) steps aside too: never spin in one poll.
            yield_once().await;
            if woken > 0 {
                continue;
            }
        }
        let alive = poll_fn(|cx| match ring.upgrade() {
            Some(current) => current.poll_work(cx).map(|()| true),
            None => Poll::Ready(false),
        })
        .await;
        if !alive {
            return;
        }
    }
}

/// A socket served by a [`Ring`].
pub struct RingStream {
    ring: Arc<Ring>,
    id: usize,
    /// For `shutdown`, which goes to the kernel directly; -1 for a stream that never had one.
    fd: RawFd,
}

impl std::fmt::Debug for RingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingStream").field("fd", &self.fd).finish()
    }
}

impl RingStream {
    fn is_idle_and_open(&self) -> bool {
        let inner = lock(&self.ring.inner);
        let slot = &inner.slots[self.id];
        let read = &slot.read;
        read.posted.is_some()
            && read.chunks.is_empty()
            && read.ended.is_none()
            && slot.write.error.is_none()
    }

    /// Copies `bufs` into the send buffer (up to [`MAX_WRITE_BYTES`]) and queues them.
    fn poll_write_from(&self, cx: &Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut inner = lock(&self.ring.inner);
        let write = &mut inner.slots[self.id].write;
        if let Some(errno) = write.error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if write.posted {
            store_waker(&mut write.waker, cx);
            return Poll::Pending;
        }
        write.buf.clear();
        write.sent = 0;
        for buf in bufs {
            let room = MAX_WRITE_BYTES - write.buf.len();
            if room == 0 {
                break;
            }
            write.buf.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        let n = write.buf.len();
        if n > 0 {
            inner.post_send(self.id);
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for RingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut inner = lock(&self.ring.inner);
        let Inner { slots, shared, .. } = &mut *inner;
        let read = &mut slots[id].read;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut copied = false;
        while buf.remaining() > 0 {
            let Some(&(bid, len)) = read.chunks.front() else {
                break;
            };
            let bytes = if bid == OWN_BUFFER {
                read.own.get(..len)
            } else {
                shared.as_ref().and_then(|s| s.bytes(bid, len))
            };
            match bytes.filter(|b| read.pos < b.len()) {
                Some(bytes) => {
                    let n = (len - read.pos).min(buf.remaining());
                    buf.put_slice(&bytes[read.pos..read.pos + n]);
                    read.pos += n;
                    copied = true;
                }
                // No completion makes such a chunk; should one appear, the stream fails
                // rather than the thread, and nothing after the gap is handed out.
                None => {
                    read.ended = Some(-libc::EIO);
                    read.pos = 0;
                    for (bid, _) in read.chunks.drain(..) {
                        if let (Some(shared), true) = (shared.as_mut(), bid != OWN_BUFFER) {
                            shared.give_back(bid);
                        }
                    }
                    break;
                }
            }
            if read.pos == len {
                read.chunks.pop_front();
                read.pos = 0;
                match shared.as_mut() {
                    Some(shared) if bid != OWN_BUFFER => shared.give_back(bid),
                    // Its own buffer tided the socket over a shortage of shared ones: freed
                    // once read, unless a receive into it is posted again already.
                    Some(_) if read.posted != Some(Posted::Own) => read.own = Box::default(),
                    _ => {}
                }
            }
        }
        if copied {
            // Once the reader has taken some, a socket that stopped at its share receives again.
            inner.post_recv(id);
            return Poll::Ready(Ok(()));
        }
        match read.ended {
            Some(0) => return Poll::Ready(Ok(())),
            Some(res) => return Poll::Ready(Err(io::Error::from_raw_os_error(-res))),
            None => {}
        }
        store_waker(&mut read.waker, cx);
        inner.post_recv(id);
        Poll::Pending
    }
}

impl AsyncWrite for RingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_from(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_from(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.ring.inner);
        let write = &mut inner.slots[self.id].write;
        if write.posted {
            store_waker(&mut write.waker, cx);
            return Poll::Pending;
        }
        match write.error {
            Some(errno) => Poll::Ready(Err(io::Error::from_raw_os_error(errno))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        if self.fd < 0 {
            return Poll::Ready(Ok(()));
        }
        // SAFETY: the slot owns `fd` and keeps it open while this stream exists.
        if unsafe { libc::shutdown(self.fd, libc::SHUT_WR) } == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::last_os_error()))
        }
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        let mut inner = lock(&self.ring.inner);
        let id = self.id;
        let slot = &mut inner.slots[id];
        slot.dropped = true;
        slot.read.waker = None;
        slot.write.waker = None;
        if slot.in_flight == 0 {
            inner.release(id);
            return;
        }
        let Some(target) = slot.target(id) else {
            return;
        };
        // Queued after any send still waiting to be submitted, so a last answer that fits goes
        // out first; a send waiting for room, and the posted receive, are cancelled.
        slot.in_flight += 1;
        let on = match target {
            Target::Fd(fd) => types::CancelBuilder::fd(types::Fd(fd)),
            Target::Fixed(index) => types::CancelBuilder::fd(types::Fixed(index)),
        };
        let cancel = opcode::AsyncCancel2::new(on.all())
            .build()
            .user_data(((id as u64) << 2) | CANCEL);
        inner.push(&cancel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair: the near end served by the thread's ring, the far end a plain tokio
    /// socket.
    async fn pair() -> (RingStream, TcpStream) {
        let ring = Ring::current().expect("these tests need a kernel that allows io_uring");
        pair_on(&ring).await
    }

    /// A connected pair with the near end served by `ring`.
    async fn pair_on(ring: &Arc<Ring>) -> (RingStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(listener.accept(), far);
        let near = near.unwrap().0.into_std().unwrap();
        near.set_nonblocking(false).unwrap();
        (ring.register(near), far.unwrap())
    }

    /// How many received chunks `near` holds, and how many shared buffers its ring lends.
    fn holdings(near: &RingStream) -> (usize, u16) {
        let inner = lock(&near.ring.inner);
        let lent = inner.shared.as_ref().map_or(0, |s| s.lent);
        (inner.slots[near.id].read.chunks.len(), lent)
    }

    /// Waits (boundedly) until `ready` holds.
    async fn until(what: &str, mut ready: impl FnMut() -> bool) {
        let waited = async {
            while !ready() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), waited)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
    }

    async fn read_to_end(far: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut got))
            .await
            .expect("the far end sees the end of the stream")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_the_far_close_reads_as_the_end() {
        let (mut near, mut far) = pair().await;
        far.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        near.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        near.write_all(b"pong").await.unwrap();
        near.flush().await.unwrap();
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(far);
        assert_eq!(near.read(&mut buf).await.unwrap(), 0);
        assert_eq!(
            near.read(&mut buf).await.unwrap(),
            0,
            "the end stays the end"
        );
    }

    #[tokio::test]
    async fn a_write_large_enough_to_need_many_sends_arrives_whole_and_in_order() {
        let (mut near, mut far) = pair().await;
        let sent: Vec<u8> = (0..3 * MAX_WRITE_BYTES + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let reader = tokio::spawn(async move { read_to_end(&mut far).await });
        near.write_all(&sent).await.unwrap();
        near.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), sent);
    }

    #[tokio::test]
    async fn an_answer_written_just_before_the_drop_still_arrives_then_the_socket_closes() {
        let (mut near, mut far) = pair().await;
        near.write_all(b"last words").await.unwrap();
        // No flush: a `Connection: close` answer is dropped right after its last write.
        drop(near);
        assert_eq!(read_to_end(&mut far).await, b"last words");
    }

    #[tokio::test]
    async fn a_flush_waits_until_the_kernel_has_taken_every_byte() {
        let (mut near, mut far) = pair().await;
        // Far more than the socket buffers hold, with nobody reading at first.
        let sent: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            near.write_all(&sent).await.unwrap();
            near.flush().await.unwrap();
            // Dropped at once after the flush, as the server drops a closed connection.
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(read_to_end(&mut far).await, expected);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn dropping_a_stream_with_a_receive_posted_closes_its_socket() {
        let (near, mut far) = pair().await;
        // The receive posted at registration is still waiting for bytes when the stream goes.
        drop(near);
        assert_eq!(read_to_end(&mut far).await, b"");
    }

    #[tokio::test]
    async fn an_idle_stream_learns_its_peer_closed_without_reading() {
        let (near, far) = pair().await;
        assert!(near.is_idle_and_open());
        drop(far);
        until("the stream stops counting as idle and open", || {
            !near.is_idle_and_open()
        })
        .await;
    }

    #[tokio::test]
    async fn bytes_sent_unasked_make_an_idle_stream_unusable() {
        let (near, mut far) = pair().await;
        far.write_all(b"surprise").await.unwrap();
        until("the stream stops counting as idle and open", || {
            !near.is_idle_and_open()
        })
        .await;
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_leaves_the_shared_buffers_to_the_others() {
        let (mut near, mut far) = pair().await;
        let sent: Vec<u8> = (0..4 << 20).map(|i| (i % 249) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            // A sender that leaves the ring a turn now and then, as one on another host does.
            for piece in sent.chunks(64 * 1024) {
                far.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            far
        });
        // Nothing is read for a while: the sender goes as far as the stream lets it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (held, lent) = holdings(&near);
        let quarter = usize::from(SHARED_BUFFERS) / 4;
        assert!(held < quarter, "the stream holds {held} buffers");
        assert!(
            usize::from(lent) > 3 * quarter,
            "only {lent} buffers are left"
        );
        let mut got = vec![0; expected.len()];
        near.read_exact(&mut got).await.unwrap();
        assert!(got == expected, "the bytes arrive whole and in order");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn with_every_shared_buffer_taken_a_socket_reads_into_its_own() {
        let ring = Ring::start(2).unwrap();
        let (mut starved, mut starved_far) = pair_on(&ring).await;
        let (mut hoarder, mut hoarder_far) = pair_on(&ring).await;
        // Two arrivals nobody reads take both shared buffers.
        for part in [&b"one"[..], b"two"] {
            let before = holdings(&hoarder).0;
            hoarder_far.write_all(part).await.unwrap();
            until("the arrival lands", || holdings(&hoarder).0 > before).await;
        }
        assert_eq!(holdings(&hoarder), (2, 0));
        starved_far.write_all(b"still served").await.unwrap();
        let mut buf = [0u8; 12];
        starved.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still served");
        let mut buf = [0u8; 6];
        hoarder.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"onetwo");
        assert_eq!(holdings(&hoarder), (0, 2), "read buffers are lent again");
    }

    #[tokio::test]
    async fn sockets_that_outnumber_the_shared_buffers_each_get_their_bytes_whole_and_in_order() {
        // Four buffers for eight sockets, fast senders and readers of different speeds: every
        // path of the receive side (pausing, running out, own buffers, giving back) is taken.
        let ring = Ring::start(4).unwrap();
        let mut flows = Vec::new();
        for n in 0..8u32 {
            let (mut near, mut far) = pair_on(&ring).await;
            let sent: Vec<u8> = (0..256 * 1024u32)
                .map(|i| (i.wrapping_mul(31) ^ n) as u8)
                .collect();
            let expected = sent.clone();
            let writer = tokio::spawn(async move {
                let mut at = 0;
                let mut piece = 1 + n as usize * 997;
                while at < sent.len() {
                    let end = (at + piece).min(sent.len());
                    far.write_all(&sent[at..end]).await.unwrap();
                    at = end;
                    piece = piece * 7 % 20_011 + 1;
                    tokio::task::yield_now().await;
                }
                far
            });
            let reader = tokio::spawn(async move {
                let mut got = Vec::with_capacity(expected.len());
                let mut buf = vec![0u8; 1 + n as usize * 3_001];
                while got.len() < expected.len() {
                    let read = near.read(&mut buf).await.unwrap();
                    assert!(read > 0, "the stream ended early");
                    got.extend_from_slice(&buf[..read]);
                    if n % 2 == 1 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                assert!(
                    got == expected,
                    "socket {n} got its bytes whole and in order"
                );
                near
            });
            flows.push((writer, reader));
        }
        let all = async {
            for (writer, reader) in flows {
                drop(reader.await.unwrap());
                drop(writer.await.unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("every socket gets all its bytes");
        let inner = lock(&ring.inner);
        assert_eq!(
            inner.shared.as_ref().map(|s| s.lent),
            Some(4),
            "every shared buffer is back with the kernel"
        );
    }

    #[tokio::test]
    async fn writing_to_a_peer_that_reset_the_connection_fails() {
        let (mut near, far) = pair().await;
        // Linger 0: closing sends a reset rather than a FIN.
        far.set_zero_linger().unwrap();
        drop(far);
        let mut buf = [0u8; 1];
        assert!(
            near.read(&mut buf).await.is_err(),
            "a reset reads as an error"
        );
        let failed = async {
            loop {
                if near.write_all(b"x").await.is_err() || near.flush().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), failed)
            .await
            .expect("the write fails");
    }

    #[test]
    fn kernels_before_6_0_are_told_apart_by_their_release() {
        assert_eq!(major_minor("6.18.44-fc-v1252"), (6, 18));
        assert_eq!(major_minor("5.15.0-91-generic"), (5, 15));
        assert!(major_minor("5.19.17") < MIN_KERNEL);
        assert!(major_minor("6.0.0") >= MIN_KERNEL);
        assert_eq!(
            major_minor(""),
            (0, 0),
            "an unreadable release counts as too old"
        );
    }

    #[tokio::test]
    async fn a_socket_that_failed_to_move_reads_and_writes_as_closed() {
        let ring = Ring::current().expect("these tests need a kernel that allows io_uring");
        let mut closed = ring.register_closed();
        assert!(!closed.is_idle_and_open());
        let mut buf = [0u8; 1];
        assert!(closed.read(&mut buf).await.is_err());
        assert!(closed.write_all(b"x").await.is_err());
        assert!(closed.shutdown().await.is_err());
    }

    #[tokio::test]
    async fn a_slot_freed_by_a_drop_serves_the_next_socket() {
        let (first, _far) = pair().await;
        let id = first.id;
        drop(first);
        // The cancel and the cancelled receive come back on the next turns.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut second, mut far) = pair().await;
        assert_eq!(
            second.id, id,
            "the slot is reused once its operations are back"
        );
        far.write_all(b"fresh").await.unwrap();
        let mut buf = [0u8; 5];
        second.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"fresh");
    }
}
