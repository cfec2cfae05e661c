//! Posts: writing one, editing one (its author only), reading one, and the newest-first
//! listing.

use platform_db::{client_span, client_span_without_collection};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::{PostBody, PostId, PostTitle, UserId};

/// A post as its page shows it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct Post {
    pub id: PostId,
    pub title: String,
    pub body: String,
    pub author: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub version: i32,
    pub views: i64,
}

/// A post as a listing shows it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct PostSummary {
    pub id: PostId,
    pub title: String,
    pub author: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Bumped by every edit; with the ids and `comment_count`, what the listing's `ETag` derives
    /// from.
    pub version: i32,
    pub comment_count: i64,
    /// When what the listing shows of the post last changed: its last edit, or the publication
    /// of its newest published comment (which moved `comment_count`). Views are approximate and
    /// left out, as they are of the `ETag`.
    ///
    /// Not optional, so a cached page of an older shape, without it, is unreadable and counts
    /// as a miss rather than being read as "never commented".
    pub last_modified: OffsetDateTime,
    pub views: i64,
}

/// One page of the listing and where the next one starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<PostSummary>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next_cursor: Option<PostId>,
}

impl Page {
    /// The page's `Last-Modified`: the latest change of any post on it. A post arriving on the
    /// page is newer than any before it, so it moves this too. `None` for an empty page.
    pub fn last_modified(&self) -> Option<OffsetDateTime> {
        self.items.iter().map(|p| p.last_modified).max()
    }
}

/// Why a post could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum UpdatePostError {
    #[error("the post does not exist")]
    NotFound,
    /// Only a post's author may edit it.
    #[error("only the post's author may edit it")]
    Forbidden,
    /// The post changed since the version the edit was based on.
    #[error("the post has changed since it was read")]
    VersionMismatch,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Inserts a post by `author`.
pub async fn create(
    pool: &PgPool,
    author: UserId,
    title: &PostTitle,
    body: &PostBody,
) -> Result<PostId, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO posts (author_id, title, body) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(author)
    .bind(title.as_ref())
    .bind(body.as_ref())
    .fetch_one(pool)
    .instrument(client_span("INSERT", "posts"))
    .await
}

/// The post `id`, if it exists.
pub async fn get(pool: &PgPool, id: PostId) -> Result<Option<Post>, sqlx::Error> {
    get_in(pool, id).await
}

/// Replaces the title and body of post `id` when `editor` wrote it, bumping `version` and
/// `updated_at` so every HTTP validator derived from them changes. Returns the edited post.
pub async fn update(
    pool: &PgPool,
    id: PostId,
    editor: UserId,
    title: &PostTitle,
    body: &PostBody,
) -> Result<Post, UpdatePostError> {
    update_if_version(pool, id, editor, None, title, body).await
}

/// [`update`], but only while the post is still at `expected_version` when one is given: an
/// edit made from a stale copy fails with [`UpdatePostError::VersionMismatch`] instead of
/// silently overwriting the edit it did not see (HTTP's `If-Match`).
///
/// The author and version checks are part of the `UPDATE`'s own `WHERE`, so nothing can slip
/// between a check and the write.
pub async fn update_if_version(
    pool: &PgPool,
    id: PostId,
    editor: UserId,
    expected_version: Option<i32>,
    title: &PostTitle,
    body: &PostBody,
) -> Result<Post, UpdatePostError> {
    let mut tx = pool
        .begin()
        .instrument(client_span_without_collection("BEGIN"))
        .await?;
    // `greatest` keeps `updated_at` strictly increasing even if the clock steps back or two edits
    // share a transaction timestamp, so `Last-Modified` never goes backwards.
    let updated: Option<PostId> = sqlx::query_scalar(
        "UPDATE posts SET title = $3, body = $4, version = version + 1, \
                          updated_at = greatest(now(), updated_at + interval '1 millisecond') \
         WHERE id = $1 AND author_id = $2 AND ($5::INTEGER IS NULL OR version = $5) \
         RETURNING id",
    )
    .bind(id)
    .bind(editor)
    .bind(title.as_ref())
    .bind(body.as_ref())
    .bind(expected_version)
    .fetch_optional(&mut *tx)
    .instrument(client_span("UPDATE", "posts"))
    .await?;
    if updated.is_none() {
        let owner: Option<UserId> = sqlx::query_scalar("SELECT author_id FROM posts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .instrument(client_span("SELECT", "posts"))
            .await?;
        return Err(match owner {
            None => UpdatePostError::NotFound,
            Some(author) if author != editor => UpdatePostError::Forbidden,
            Some(_) => UpdatePostError::VersionMismatch,
        });
    }
    let post = get_in(&mut *tx, id)
        .await?
        .ok_or(UpdatePostError::NotFound)?;
    tx.commit()
        .instrument(client_span_without_collection("COMMIT"))
        .await?;
    Ok(post)
}

async fn get_in<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: PostId,
) -> Result<Option<Post>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.title, p.body, u.username AS author, p.created_at, p.updated_at, \
                p.version, p.views \
         FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .instrument(client_span("SELECT", "posts"))
    .await
}

/// Newest posts first, `limit` per page, starting below `before` when given.
///
/// Keyset pagination: each page is an index range scan below the cursor, so page 1,000 costs
/// what page 1 does (OFFSET would read and discard every row before it). Each post's comment
/// count and newest publication time come from one pass over the index of its published
/// comments.
pub async fn list(pool: &PgPool, before: Option<PostId>, limit: u32) -> Result<Page, sqlx::Error> {
    let limit = limit.clamp(1, 100);
    // `greatest` ignores NULL: a post without published comments was last changed by its edit.
    // Only the spam verdict publishes, and it sets `moderated_at`.
    let mut items: Vec<PostSummary> = sqlx::query_as(
        "SELECT p.id, p.title, u.username AS author, p.created_at, p.updated_at, p.version, \
                p.views, c.comment_count, \
                greatest(p.updated_at, c.last_published_at) AS last_modified \
         FROM posts p JOIN users u ON u.id = p.author_id \
         CROSS JOIN LATERAL ( \
             SELECT count(*) AS comment_count, max(moderated_at) AS last_published_at \
             FROM comments WHERE post_id = p.id AND status = 'published') c \
         WHERE $1::BIGINT IS NULL OR p.id < $1 \
         ORDER BY p.id DESC LIMIT $2",
    )
    .bind(before)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .instrument(client_span("SELECT", "posts"))
    .await?;
    // One extra row tells whether a next page exists without a count query.
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|p| p.id)
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
