//! Comments: what a post's page shows. Only published comments are visible; pending ones wait
//! for the spam check and rejected ones stay hidden.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::PostId;

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
