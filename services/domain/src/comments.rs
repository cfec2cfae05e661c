//! Comments: what a post's page shows. Only published comments are visible; pending ones wait
//! for the spam check and rejected ones stay hidden.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::{CommentBody, PostId, UserId};

/// A visible comment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Comment {
    pub id: i64,
    pub author: String,
    pub body: String,
    pub created_at: OffsetDateTime,
    pub sentiment_label: Option<String>,
    pub sentiment_score: Option<f64>,
}

/// The published comments of `post`, oldest first.
pub async fn list_visible(pool: &PgPool, post: PostId) -> Result<Vec<Comment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, u.username AS author, c.body, c.created_at, c.sentiment_label, \
                c.sentiment_score \
         FROM comments c JOIN users u ON u.id = c.author_id \
         WHERE c.post_id = $1 AND c.status = 'published' ORDER BY c.id LIMIT 500",
    )
    .bind(post)
    .fetch_all(pool)
    .await
}

/// A comment's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct CommentId(pub i64);

/// Where a comment is in moderation, as its author sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommentStatus {
    pub id: CommentId,
    pub post_id: PostId,
    pub author_id: UserId,
    /// `pending`, `published` or `rejected`.
    pub status: String,
    pub sentiment_label: Option<String>,
    pub sentiment_score: Option<f64>,
}

/// Why a comment could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitCommentError {
    #[error("the post does not exist")]
    PostNotFound,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stores a new comment as `pending`, in one transaction with everything that must happen
/// with it: the comment is accepted whole or not at all.
pub async fn submit(
    pool: &PgPool,
    post: PostId,
    author: UserId,
    body: &CommentBody,
) -> Result<CommentId, SubmitCommentError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query_scalar(
        "INSERT INTO comments (post_id, author_id, body) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(post)
    .bind(author)
    .bind(body.as_ref())
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => CommentId(id),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            return Err(SubmitCommentError::PostNotFound);
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(id)
}

/// The moderation status of comment `id`, if it exists.
pub async fn status(pool: &PgPool, id: CommentId) -> Result<Option<CommentStatus>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, post_id, author_id, status, sentiment_label, sentiment_score \
         FROM comments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}
