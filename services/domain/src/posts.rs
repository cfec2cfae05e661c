//! Posts: writing one, reading one, and the newest-first listing.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::{PostBody, PostId, PostTitle, UserId};

/// A post as its page shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PostSummary {
    pub id: PostId,
    pub title: String,
    pub author: String,
    pub created_at: OffsetDateTime,
    pub comment_count: i64,
    pub views: i64,
}

/// One page of the listing and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<PostSummary>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next_cursor: Option<PostId>,
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
    .await
}

/// The post `id`, if it exists.
pub async fn get(pool: &PgPool, id: PostId) -> Result<Option<Post>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.title, p.body, u.username AS author, p.created_at, p.updated_at, \
                p.version, p.views \
         FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Newest posts first, `limit` per page, starting below `before` when given.
///
/// Keyset pagination: each page is an index range scan below the cursor, so page 1,000 costs
/// what page 1 does (OFFSET would read and discard every row before it).
pub async fn list(pool: &PgPool, before: Option<PostId>, limit: u32) -> Result<Page, sqlx::Error> {
    let limit = limit.clamp(1, 100);
    let mut items: Vec<PostSummary> = sqlx::query_as(
        "SELECT p.id, p.title, u.username AS author, p.created_at, p.views, \
                (SELECT count(*) FROM comments c \
                  WHERE c.post_id = p.id AND c.status = 'published') AS comment_count \
         FROM posts p JOIN users u ON u.id = p.author_id \
         WHERE $1::BIGINT IS NULL OR p.id < $1 \
         ORDER BY p.id DESC LIMIT $2",
    )
    .bind(before)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
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
