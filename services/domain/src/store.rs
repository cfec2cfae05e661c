//! The data tier as the services see it: reads through the Redis cache to a replica that has
//! seen the reader's writes (or the primary), writes to the primary, and the cache kept current.
//!
//! | data | pattern |
//! |---|---|
//! | a post, a page of the listing, a post's comments | cache-aside, with single flight and negative caching |
//! | user profiles | read-through: the loader is registered with the cache |
//! | an edited post | write-through: the new version is written to the cache before the request returns |
//! | view counts | write-behind: counted in Redis, flushed to Postgres in batches |
//!
//! Read-your-writes: every write returns the primary's WAL position after its commit (an
//! [`Lsn`]); the caller keeps it in the user's session and passes it to later reads. A read with
//! a position goes to a replica only once that replica has replayed it, and it goes around the
//! cache until every replica has: until then a cache entry might have been filled from a replica
//! that had not seen the write.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use platform_cache::counter::WriteBehindCounter;
use platform_cache::{Cache, CacheSettings, Kind, ReadThrough};
use platform_db::batch::{BatchError, Batcher};
use platform_db::{Database, DbError, DbSettings, Lsn, client_span};
use platform_redis::Redis;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::comments::{self, Comment, CommentId, NewComment, SubmitCommentError, TraceContext};
use crate::outbox::OutboxWaker;
use crate::posts::{self, Page, Post, UpdatePostError};
use crate::{CommentBody, PostBody, PostId, PostTitle, UserId};

/// What the application shows of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Profile {
    pub id: UserId,
    pub username: String,
    pub created_at: OffsetDateTime,
}

/// Cached, replica-aware access to posts, comments and profiles.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    cache: Cache,
    post: Kind,
    post_list: Kind,
    comment_list: Kind,
    profiles: ReadThrough<UserId, Profile, sqlx::Error>,
    views: WriteBehindCounter,
    outbox: OutboxWaker,
    /// Started by the first submission, inside the runtime (see [`Store::submit_comment`]).
    comment_writer: Arc<OnceLock<CommentWriter>>,
}

/// Stores the comments submitted at about the same time with one statement, and answers each
/// with its id and the primary's position after the commit.
type CommentWriter = Batcher<NewComment, (CommentId, Lsn), sqlx::Error>;

/// The most comments one statement stores. Bodies are at most 2,000 characters, so a full
/// batch stays well under a megabyte.
const MAX_SUBMIT_BATCH: usize = 128;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("db", &self.db).finish()
    }
}

/// The position to use when a write's position cannot be read: no replica ever reaches it, so
/// the writer reads from the primary (and around the cache) until their next write.
const UNKNOWN_POSITION: Lsn = Lsn(u64::MAX);

/// The primary's position after a write, for the writer's later reads; [`UNKNOWN_POSITION`]
/// when it cannot be read.
async fn position_after_write(db: &Database) -> Lsn {
    match db.current_lsn().await {
        Ok(lsn) => lsn,
        Err(e) => {
            tracing::warn!(message = "Could not read the WAL position after a write.", error = %e);
            UNKNOWN_POSITION
        }
    }
}

/// The data tier's background work: the replica monitor, the view-count flusher and the
/// relay's waker. Dropping it stops them.
pub struct BackgroundTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Store {
    /// Connects the data tier: pools for the primary and the replicas of `db`, and the
    /// application cache over `redis`. Nothing connects until first used.
    pub fn connect(db: &DbSettings, redis: Redis, cache: &CacheSettings) -> Result<Self, DbError> {
        let database = Arc::new(Database::connect(db)?);
        Ok(Self::new(database, Cache::new(redis, cache), cache))
    }

    /// Starts the replica monitor, the write-behind flusher (every `CACHE_FLUSH_INTERVAL_MS`)
    /// and the sender of the relay's wake-ups. Without them, reads stay on the primary, views
    /// stay in the process and the relay finds new comments only when it polls.
    pub fn spawn_background(&self, settings: &CacheSettings) -> BackgroundTasks {
        BackgroundTasks(vec![
            self.db.spawn_monitor(),
            self.spawn_view_flusher(Duration::from_millis(settings.cache_flush_interval_ms)),
            self.outbox.spawn(self.db.primary().clone()),
        ])
    }

    pub fn new(db: Arc<Database>, cache: Cache, settings: &CacheSettings) -> Self {
        let secs = Duration::from_secs;
        let user = cache.kind("user", secs(settings.cache_ttl_user_secs));
        let primary = db.primary().clone();
        let profiles = ReadThrough::new(cache.clone(), user, move |id: UserId| {
            let pool = primary.clone();
            async move { load_profile(&pool, id).await }
        });
        Self {
            post: cache.kind("post", secs(settings.cache_ttl_post_secs)),
            post_list: cache.indexed_kind("post_list", secs(settings.cache_ttl_post_list_secs)),
            comment_list: cache.kind("comment_list", secs(settings.cache_ttl_comments_secs)),
            views: WriteBehindCounter::new(cache.redis().clone(), "post_views"),
            outbox: OutboxWaker::new(),
            comment_writer: Arc::new(OnceLock::new()),
            profiles,
            cache,
            db,
        }
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The pool for a read by someone whose last write was at `seen` (if any).
    fn reader(&self, seen: Option<Lsn>) -> &PgPool {
        self.db.reader(seen).0
    }

    /// Whether a read by someone whose last write was at `seen` may be served from the cache.
    fn cache_safe(&self, seen: Option<Lsn>) -> bool {
        seen.is_none_or(|lsn| self.db.replicas_caught_up(lsn))
    }

    /// Post `id`.
    pub async fn post(&self, id: PostId, seen: Option<Lsn>) -> Result<Option<Post>, sqlx::Error> {
        if !self.cache_safe(seen) {
            return posts::get(self.reader(seen), id).await;
        }
        // The pool is chosen only on a miss, so `db_reads_total` counts real database reads.
        self.cache
            .get_or_load(&self.post, &id.to_string(), || {
                posts::get(self.reader(seen), id)
            })
            .await
    }

    /// A page of the newest posts.
    pub async fn list_posts(
        &self,
        before: Option<PostId>,
        limit: u32,
        seen: Option<Lsn>,
    ) -> Result<Page, sqlx::Error> {
        if !self.cache_safe(seen) {
            return posts::list(self.reader(seen), before, limit).await;
        }
        let key = format!("{}:{limit}", before.map_or(0, |b| b.0));
        let page = self
            .cache
            .get_or_load(&self.post_list, &key, || async {
                posts::list(self.reader(seen), before, limit)
                    .await
                    .map(Some)
            })
            .await?;
        Ok(page.unwrap_or(Page {
            items: Vec::new(),
            next_cursor: None,
        }))
    }

    /// The published comments of `post`.
    pub async fn visible_comments(
        &self,
        post: PostId,
        seen: Option<Lsn>,
    ) -> Result<Vec<Comment>, sqlx::Error> {
        if !self.cache_safe(seen) {
            return comments::list_visible(self.reader(seen), post).await;
        }
        let found = self
            .cache
            .get_or_load(&self.comment_list, &post.to_string(), || async {
                comments::list_visible(self.reader(seen), post)
                    .await
                    .map(Some)
            })
            .await?;
        Ok(found.unwrap_or_default())
    }

    /// User `id`'s profile (read-through).
    pub async fn profile(&self, id: UserId) -> Result<Option<Profile>, sqlx::Error> {
        self.profiles.get(id).await
    }

    /// Publishes a post. Every cached page of the listing may now be missing it, so they go.
    pub async fn create_post(
        &self,
        author: UserId,
        title: &PostTitle,
        body: &PostBody,
    ) -> Result<(PostId, Lsn), sqlx::Error> {
        let id = posts::create(self.db.primary(), author, title, body).await?;
        self.forget_listing().await;
        Ok((id, position_after_write(&self.db).await))
    }

    /// Edits a post (author only). Write-through: the new version is in the cache before this
    /// returns, so no reader is served the old one from the cache.
    pub async fn update_post(
        &self,
        id: PostId,
        editor: UserId,
        expected_version: Option<i32>,
        title: &PostTitle,
        body: &PostBody,
    ) -> Result<(Post, Lsn), UpdatePostError> {
        let post =
            posts::update_if_version(self.db.primary(), id, editor, expected_version, title, body)
                .await?;
        if let Err(e) = self.cache.put(&self.post, &id.to_string(), &post).await {
            // The entry may now be stale until its TTL; drop it rather than keep the old one.
            tracing::warn!(message = "Write-through failed; dropping the entry.", error = %e);
            let _ = self.cache.invalidate(&self.post, &[id.to_string()]).await;
        }
        self.forget_listing().await;
        Ok((post, position_after_write(&self.db).await))
    }

    /// Accepts a comment as pending, with its outbox event, and wakes the relay.
    ///
    /// Comments submitted while an earlier batch is being written are stored together by one
    /// statement ([`comments::submit_many`]) and share its commit and its WAL position: under
    /// load, each comment no longer pays for a commit, a WAL flush and a position read of its
    /// own. This returns only once the comment's batch has committed. A comment whose post does
    /// not exist fails its batch, which is then written one comment at a time, so it fails alone.
    pub async fn submit_comment(
        &self,
        post: PostId,
        author: UserId,
        body: &CommentBody,
        trace: &TraceContext,
    ) -> Result<(CommentId, Lsn), SubmitCommentError> {
        let comment = NewComment {
            post,
            author,
            body: body.clone(),
            trace: trace.clone(),
        };
        let written = self.comment_writer().submit(comment).await;
        let (id, lsn) = written.map_err(|e| match e {
            BatchError::Failed(e) => SubmitCommentError::from_write(
                Arc::try_unwrap(e).unwrap_or_else(|e| sqlx::Error::Protocol(e.to_string())),
            ),
            BatchError::Stopped => SubmitCommentError::Database(sqlx::Error::PoolClosed),
        })?;
        self.outbox.wake();
        Ok((id, lsn))
    }

    /// The writer of submitted comments, started on first use: its task must run inside a
    /// runtime, and building a store does not need one. It holds the database, not the store,
    /// so it ends with the last store that can submit to it.
    fn comment_writer(&self) -> &CommentWriter {
        self.comment_writer.get_or_init(|| {
            let db = Arc::clone(&self.db);
            Batcher::spawn(MAX_SUBMIT_BATCH, move |batch: Vec<NewComment>| {
                let db = Arc::clone(&db);
                async move {
                    let ids = comments::submit_many(db.primary(), &batch).await?;
                    let lsn = position_after_write(&db).await;
                    Ok(ids.into_iter().map(|id| (id, lsn)).collect())
                }
            })
        })
    }

    /// Called when a comment of `post` was published or scored: its comment list and the
    /// listing's comment counts change.
    pub async fn comments_changed(&self, post: PostId) {
        self.comments_changed_on(&[post]).await;
    }

    /// [`Store::comments_changed`] for comments of several posts at once: one round trip drops
    /// every named comment list, another the listing.
    pub async fn comments_changed_on(&self, posts: &[PostId]) {
        let mut keys: Vec<String> = posts.iter().map(PostId::to_string).collect();
        keys.sort_unstable();
        keys.dedup();
        if let Err(e) = self.cache.invalidate(&self.comment_list, &keys).await {
            tracing::warn!(message = "Could not invalidate comment lists.", posts = keys.len(), error = %e);
        }
        self.forget_listing().await;
    }

    async fn forget_listing(&self) {
        if let Err(e) = self.cache.invalidate_kind(&self.post_list).await {
            tracing::warn!(message = "Could not invalidate the listing.", error = %e);
        }
    }

    /// Counts a view of `post` (write-behind): a tally in this process, pushed to Redis and on
    /// to Postgres by [`Store::flush_views`]. `CACHE_ENABLED=false` turns off read caching
    /// only: counting views with an UPDATE per read would measure a different design, not the
    /// same one without a cache. Costs the reader no I/O, so a slow Redis cannot slow a read.
    pub fn record_view(&self, post: PostId) {
        self.views.add(&post.to_string(), 1);
    }

    /// Pushes this process's view counts to Redis, then moves every process's pending counts
    /// from Redis into Postgres; returns how many posts changed. Counts whose push fails wait
    /// in the process for the next flush.
    pub async fn flush_views(&self) -> Result<usize, FlushError> {
        self.views.push().await?;
        let pending = self.views.take().await?;
        let counts: Vec<(PostId, i64)> = pending
            .into_iter()
            .filter_map(|(id, n)| Some((PostId(id.parse().ok()?), n)))
            .collect();
        if counts.is_empty() {
            return Ok(0);
        }
        add_views(self.db.primary(), &counts).await?;
        Ok(counts.len())
    }

    /// Flushes view counts every `interval` until the returned handle is aborted; call
    /// [`Store::flush_views`] once more on shutdown.
    pub fn spawn_view_flusher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = crate::untraced(store.flush_views()).await {
                    tracing::warn!(message = "Flushing view counts failed.", error = %e);
                }
            }
        })
    }
}

/// Why view counts could not be flushed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("pushing the counts to Redis, or taking them back, failed")]
    Redis(#[from] platform_redis::RedisError),
    #[error("writing the counts to Postgres failed; they are lost")]
    Database(#[from] sqlx::Error),
}

async fn load_profile(pool: &PgPool, id: UserId) -> Result<Option<Profile>, sqlx::Error> {
    sqlx::query_as("SELECT id, username, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .instrument(client_span("SELECT", "users"))
        .await
}

/// Adds view counts in one statement.
async fn add_views(pool: &PgPool, counts: &[(PostId, i64)]) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = counts.iter().map(|(id, _)| id.0).collect();
    let by: Vec<i64> = counts.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "UPDATE posts SET views = posts.views + d.n \
         FROM unnest($1::BIGINT[], $2::BIGINT[]) AS d(id, n) WHERE posts.id = d.id",
    )
    .bind(&ids)
    .bind(&by)
    .execute(pool)
    .instrument(client_span("UPDATE", "posts"))
    .await?;
    Ok(())
}
