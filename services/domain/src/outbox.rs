//! Waking the outbox relay after commits that wrote events.
//!
//! The relay sleeps on `LISTEN outbox`. A `NOTIFY` inside the writing transaction would be the
//! simplest wake-up, but Postgres serialises the commits of notifying transactions (a global
//! lock held through the WAL flush, so commits stop sharing flushes): on the development
//! machine, 16 clients inserting rows managed about 5,000 commits/s plain and about 1,600 with
//! an in-transaction `NOTIFY` (pgbench). So the writer commits first and then asks the
//! [`OutboxWaker`], which sends `NOTIFY outbox` in a transaction of its own with at most one in
//! flight per process, and then pauses for [`WAKE_SPACING`]: a burst of commits costs one
//! notification per pause, not one each. The pause matters because a notifying transaction
//! takes a transaction id, so each notification is a commit and a WAL flush of its own; sent
//! back to back under load they were a flush for every few comments. The relay drains whole
//! batches once awake, so the pause adds at most [`WAKE_SPACING`] to a comment's way to the
//! broker.
//!
//! Nothing depends on a notification arriving: a wake-up lost with a crashed process only
//! delays the event until the relay's next poll (`RELAY_POLL_INTERVAL_MS`).

use std::sync::Arc;
use std::time::Duration;

use platform_db::client_span_without_collection;
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::Instrument;

/// The channel the relay listens on.
pub const CHANNEL: &str = "outbox";

/// The least time between two notifications from one process.
pub const WAKE_SPACING: Duration = Duration::from_millis(10);

/// Coalesces wake-ups into `NOTIFY outbox`. Cheap to clone; clones share one sender task.
#[derive(Debug, Clone, Default)]
pub struct OutboxWaker {
    pending: Arc<Notify>,
}

impl OutboxWaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a notification after a commit that wrote events. Never waits: calls made
    /// while one is being sent fold into the next.
    pub fn wake(&self) {
        // `notify_one` leaves a single permit when the sender is busy, which is the coalescing.
        self.pending.notify_one();
    }

    /// Sends the notifications over `pool` until the returned task is aborted.
    pub fn spawn(&self, pool: PgPool) -> tokio::task::JoinHandle<()> {
        let pending = self.pending.clone();
        tokio::spawn(async move {
            loop {
                pending.notified().await;
                if let Err(e) = crate::untraced(notify(&pool)).await {
                    tracing::debug!(message = "Could not wake the relay; it will poll.", error = %e);
                }
                // Wake-ups asked for meanwhile leave their permit and fold into the next one.
                tokio::time::sleep(WAKE_SPACING).await;
            }
        })
    }
}

/// Sends one `NOTIFY outbox` now.
pub async fn notify(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(pool)
        .instrument(client_span_without_collection("SELECT"))
        .await
        .map(drop)
}
