//! The pool's manager and its connections: a connection in steady use leaves the pool without
//! a round trip, and one that broke never goes back into it.
//!
//! deadpool-redis's own manager checks every connection with an `UNWATCH` + `PING` round trip
//! each time it leaves the pool. The connections are multiplexed and nothing here uses
//! `WATCH`, so on the hot path that check only doubled the round trips: a cached read paid one
//! for its `GET` and one for the check, and the view it counted two more.
//!
//! Instead, each connection watches the results of its own commands. An I/O error or a dropped
//! connection marks it broken, and a broken connection is taken out of the pool when it is
//! dropped, so the next checkout connects afresh; a connection the server closed also empties
//! the pool of its idle connections, since a server restart closed those too, and each would
//! otherwise fail one request before being replaced. A timeout alone does not break a
//! connection: it is multiplexed and matches replies in order, so a late reply is discarded
//! and the connection stays usable. A connection that has sat unused for
//! longer than `REDIS_CHECK_IDLE_MS` is still checked with deadpool-redis's round trip before it
//! goes out, because a server restart or an idle timeout may have closed it meanwhile.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::{self, Cmd, Pipeline, RedisFuture, Value};

/// Creates connections with deadpool-redis's manager (and its connection settings), and
/// recycles them without a round trip unless they were idle.
pub(crate) struct Manager {
    inner: deadpool_redis::Manager,
    /// A connection unused for longer than this is checked with a round trip before reuse.
    /// Busy connections are never idle this long; one the server closed while it sat idle is
    /// caught here instead of failing the request that draws it. Zero checks every checkout.
    check_idle_after: Duration,
}

impl Manager {
    pub(crate) fn new(inner: deadpool_redis::Manager, check_idle_after: Duration) -> Self {
        Self {
            inner,
            check_idle_after,
        }
    }
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        self.inner.create().await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        metrics: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        if metrics.last_used() < self.check_idle_after {
            return Ok(());
        }
        self.inner.recycle(conn, metrics).await
    }
}

pub(crate) type Pool = managed::Pool<Manager>;

/// A pooled connection. Use it as any `redis` async connection; it goes back to the pool when
/// dropped, unless one of its commands failed in a way that leaves the connection unusable.
pub struct Connection {
    /// Always `Some` until dropped.
    object: Option<managed::Object<Manager>>,
    broken: bool,
    /// The server closed the connection (a restart, `CLIENT KILL`, an idle timeout).
    closed_by_server: bool,
}

impl Connection {
    pub(crate) fn new(object: managed::Object<Manager>) -> Self {
        Self {
            object: Some(object),
            broken: false,
            closed_by_server: false,
        }
    }

    fn inner(&mut self) -> &mut MultiplexedConnection {
        self.object.as_mut().expect("present until dropped")
    }

    fn watch<T>(&mut self, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && leaves_connection_unusable(e)
        {
            self.broken = true;
            self.closed_by_server |= e.is_connection_dropped();
        }
    }
}

/// Whether `e` means the connection cannot be used again. A server's error reply (a wrong
/// type, a script error) says nothing about the connection, and a timeout leaves it usable.
fn leaves_connection_unusable(e: &redis::RedisError) -> bool {
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner().req_packed_command(cmd).await;
            self.watch(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.watch(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.object.as_ref().map_or(0, |conn| conn.get_db())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(object) = self.object.take()
            && self.broken
        {
            if self.closed_by_server
                && let Some(pool) = managed::Object::pool(&object)
            {
                // The others were closed by the same restart; connect afresh instead.
                pool.retain(|_, _| false);
            }
            // Detached from the pool and closed; the pool makes a new one when it needs it.
            drop(managed::Object::take(object));
        }
    }
}
