//! Comments: what a post's page shows. Only published comments are visible; pending ones wait
//! for the spam check and rejected ones stay hidden.
//!
//! Submitting writes the comment and its `comment.submitted` event to the outbox in one
//! statement; the spam and sentiment workers write their verdicts back in batches through
//! [`apply_spam_verdicts`] and [`apply_sentiments`], each effect with its inbox row, so a
//! message delivered twice changes nothing.

use platform_db::client_span;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::{CommentBody, PostId, UserId};

/// A visible comment.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize)]
pub struct Comment {
    pub id: i64,
    pub author: String,
    pub body: String,
    pub created_at: OffsetDateTime,
    pub sentiment_label: Option<String>,
    pub sentiment_score: Option<f64>,
    /// When the comment last changed as readers see it: published, or scored, whichever came
    /// later; what `Last-Modified` of the pages showing it derives from.
    ///
    /// Not optional, so a cached list of an older shape, without it, is unreadable and counts
    /// as a miss.
    pub changed_at: OffsetDateTime,
}

/// When the latest of `comments` changed (see [`Comment::changed_at`]); `None` without any.
pub fn last_changed(comments: &[Comment]) -> Option<OffsetDateTime> {
    comments.iter().map(|c| c.changed_at).max()
}

/// The published comments of `post`, oldest first.
pub async fn list_visible(pool: &PgPool, post: PostId) -> Result<Vec<Comment>, sqlx::Error> {
    // `greatest` ignores NULL; `created_at` stands in for a comment published before
    // `moderated_at` existed.
    sqlx::query_as(
        "SELECT c.id, u.username AS author, c.body, c.created_at, c.sentiment_label, \
                c.sentiment_score, \
                greatest(c.created_at, c.moderated_at, c.scored_at) AS changed_at \
         FROM comments c JOIN users u ON u.id = c.author_id \
         WHERE c.post_id = $1 AND c.status = 'published' ORDER BY c.id LIMIT 500",
    )
    .bind(post)
    .fetch_all(pool)
    .instrument(client_span("SELECT", "comments"))
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

/// The W3C trace context of the request that submits a comment, carried with its event so the
/// workers' spans join the request's trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    pub traceparent: Option<String>,
    /// `tracestate`: vendor data, passed along untouched.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context from incoming header values; a malformed `traceparent` is dropped (with its
    /// `tracestate`, which means nothing without it) rather than carried into the pipeline.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.filter(|t| is_traceparent(t)) {
            Some(parent) => Self {
                traceparent: Some(parent.to_owned()),
                tracestate: tracestate
                    .filter(|s| s.len() <= 512 && s.is_ascii())
                    .map(str::to_owned),
            },
            None => Self::default(),
        }
    }
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// The routing key and outbox event type of a newly submitted comment.
pub const COMMENT_SUBMITTED: &str = "comment.submitted";

/// Stores a new comment as `pending`, in one transaction with everything that must happen
/// with it: the comment is accepted whole or not at all.
pub async fn submit(
    pool: &PgPool,
    post: PostId,
    author: UserId,
    body: &CommentBody,
) -> Result<CommentId, SubmitCommentError> {
    submit_traced(pool, post, author, body, &TraceContext::default()).await
}

/// [`submit`], carrying the submitting request's trace context into the event.
///
/// The comment and its `comment.submitted` outbox row are written by one statement, and a
/// statement is its own transaction: either both exist or neither does, so a comment that was
/// accepted always has an event for the relay to publish, and no event announces a comment that
/// was rolled back. One statement is also one round trip, where `BEGIN` ... `COMMIT` around it
/// would be three. Nothing here talks to the broker; the caller answers as soon as this returns.
pub async fn submit_traced(
    pool: &PgPool,
    post: PostId,
    author: UserId,
    body: &CommentBody,
    trace: &TraceContext,
) -> Result<CommentId, SubmitCommentError> {
    let inserted = sqlx::query_scalar(
        "WITH c AS ( \
             INSERT INTO comments (post_id, author_id, body) VALUES ($1, $2, $3) \
             RETURNING id, post_id, author_id, body, created_at) \
         INSERT INTO outbox (event_type, payload, traceparent, tracestate) \
         SELECT $4, jsonb_build_object( \
                    'comment_id', c.id, 'post_id', c.post_id, 'author_id', c.author_id, \
                    'author', u.username, 'body', c.body, 'submitted_at', c.created_at), \
                $5, $6 \
         FROM c JOIN users u ON u.id = c.author_id \
         RETURNING (payload->>'comment_id')::bigint",
    )
    .bind(post)
    .bind(author)
    .bind(body.as_ref())
    .bind(COMMENT_SUBMITTED)
    .bind(trace.traceparent.as_deref())
    .bind(trace.tracestate.as_deref())
    .fetch_one(pool)
    // Named after the comment it stores; the outbox row rides in the same statement.
    .instrument(client_span("INSERT", "comments"))
    .await;
    match inserted {
        Ok(id) => Ok(CommentId(id)),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(SubmitCommentError::PostNotFound)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a worker's message changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect and the inbox row committed together.
    Done,
    /// The inbox already held this message: a redelivery or a duplicate, and nothing changed.
    Duplicate,
}

/// A comment's sentiment, from VADER's compound score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentimentLabel {
    Positive,
    Neutral,
    Negative,
}

impl SentimentLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Positive => "positive",
            Self::Neutral => "neutral",
            Self::Negative => "negative",
        }
    }
}

/// One spam verdict to apply: the message that asked for it, the comment, and the verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpamVerdict {
    pub message_id: Uuid,
    pub comment: CommentId,
    pub is_spam: bool,
    pub score: f64,
}

/// One sentiment score to apply, with the message that asked for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SentimentScore {
    pub message_id: Uuid,
    pub comment: CommentId,
    pub score: f64,
    pub label: SentimentLabel,
}

/// How a batch of a worker's effects and their inbox rows are written: one statement, so one
/// transaction, one round trip and one WAL flush for the whole batch. `input` unpacks the
/// batch from arrays (`$2` the message ids, `$3` the comment ids, the effect's own columns
/// from `$4`); `claimed` records each message as processed by consumer `$1`; `locked` takes
/// the comments' row locks in id order, so two workers updating overlapping batches wait for
/// each other instead of deadlocking; `applied` runs the effect (`{effect}`, the `SET` list
/// over `c` and `i`) only for the messages the claim inserted. The statement answers with the
/// claimed message ids: any other message of the batch is a duplicate and changed nothing.
///
/// Two deliveries of one message racing in two replicas of a worker serialise on the inbox's
/// primary key: the second insert waits for the first statement to commit, then finds the row
/// and does nothing. The inbox rows are inserted in message id order, for the same reason the
/// comments are locked in id order: two batches sharing messages wait, never deadlock.
/// Postgres runs every data-modifying `WITH` to completion whether or not the outer query
/// reads it.
macro_rules! once_per_message {
    ($columns:literal, $effect:literal) => {
        concat!(
            "WITH input AS (SELECT * FROM unnest(",
            $columns,
            ")), \
             claimed AS ( \
                 INSERT INTO inbox (consumer, message_id) \
                 SELECT $1, message_id FROM input ORDER BY message_id \
                 ON CONFLICT DO NOTHING RETURNING message_id), \
             locked AS ( \
                 SELECT id FROM comments WHERE id IN ( \
                     SELECT comment_id FROM input JOIN claimed USING (message_id)) \
                 ORDER BY id FOR UPDATE), \
             applied AS ( \
                 UPDATE comments c SET ",
            $effect,
            " FROM input i JOIN claimed USING (message_id) \
                 WHERE c.id = i.comment_id AND c.id IN (SELECT id FROM locked) RETURNING 1) \
             SELECT message_id FROM claimed"
        )
    };
}

/// The first entry of each message in `batch`: a message twice in one batch applies once, as
/// its first copy says, and the statement's input needs each message once.
fn first_of_each<T>(batch: &[T], message_id: fn(&T) -> Uuid) -> Vec<&T> {
    let mut seen = std::collections::HashSet::new();
    batch
        .iter()
        .filter(|e| seen.insert(message_id(e)))
        .collect()
}

/// Whether each message of a batch, in order, was applied: those the statement claimed are
/// `Done` (the first of them, should one message appear twice); the rest are duplicates.
fn outcomes(batch: impl Iterator<Item = Uuid>, claimed: Vec<Uuid>) -> Vec<Applied> {
    let mut claimed: std::collections::HashSet<Uuid> = claimed.into_iter().collect();
    batch
        .map(|id| {
            if claimed.remove(&id) {
                Applied::Done
            } else {
                Applied::Duplicate
            }
        })
        .collect()
}

/// The spam check's effect for a batch: stores each verdict and moves a pending comment to
/// `published` (ham) or `rejected` (spam), together with the inbox row of its message, in one
/// transaction. Returns each verdict's outcome, in order.
///
/// A comment already out of `pending` keeps its status (a verdict never flips a decision), and
/// a comment deleted since it was submitted leaves nothing to update; both still record the
/// message, so it is not retried.
pub async fn apply_spam_verdicts(
    pool: &PgPool,
    consumer: &str,
    batch: &[SpamVerdict],
) -> Result<Vec<Applied>, sqlx::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let verdicts = first_of_each(batch, |v| v.message_id);
    let claimed: Vec<Uuid> = sqlx::query_scalar(once_per_message!(
        "$2::uuid[], $3::bigint[], $4::text[], $5::float8[], $6::text[]) \
         AS t(message_id, comment_id, verdict, score, status",
        "spam_verdict = i.verdict, spam_score = i.score, \
         status = CASE WHEN c.status = 'pending' THEN i.status ELSE c.status END, \
         moderated_at = COALESCE(c.moderated_at, now())"
    ))
    .bind(consumer)
    .bind(verdicts.iter().map(|v| v.message_id).collect::<Vec<_>>())
    .bind(verdicts.iter().map(|v| v.comment.0).collect::<Vec<_>>())
    .bind(
        verdicts
            .iter()
            .map(|v| if v.is_spam { "spam" } else { "ham" })
            .collect::<Vec<_>>(),
    )
    .bind(verdicts.iter().map(|v| v.score).collect::<Vec<_>>())
    .bind(
        verdicts
            .iter()
            .map(|v| if v.is_spam { "rejected" } else { "published" })
            .collect::<Vec<_>>(),
    )
    .fetch_all(pool)
    // Named after the effect; the inbox rows ride in the same statement.
    .instrument(client_span("UPDATE", "comments"))
    .await?;
    Ok(outcomes(batch.iter().map(|v| v.message_id), claimed))
}

/// [`apply_spam_verdicts`] for one message.
pub async fn apply_spam_verdict(
    pool: &PgPool,
    consumer: &str,
    message_id: Uuid,
    comment: CommentId,
    is_spam: bool,
    spam_score: f64,
) -> Result<Applied, sqlx::Error> {
    let verdict = SpamVerdict {
        message_id,
        comment,
        is_spam,
        score: spam_score,
    };
    let outcomes = apply_spam_verdicts(pool, consumer, &[verdict]).await?;
    Ok(outcomes[0])
}

/// The sentiment check's effect for a batch: stores each score, its label and when it landed
/// together with the inbox row of its message, in one transaction. It does not touch the
/// status, so it may land before or after the spam verdict. Returns each score's outcome, in
/// order.
pub async fn apply_sentiments(
    pool: &PgPool,
    consumer: &str,
    batch: &[SentimentScore],
) -> Result<Vec<Applied>, sqlx::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let scores = first_of_each(batch, |s| s.message_id);
    let claimed: Vec<Uuid> = sqlx::query_scalar(once_per_message!(
        "$2::uuid[], $3::bigint[], $4::float8[], $5::text[]) \
         AS t(message_id, comment_id, score, label",
        "sentiment_score = i.score, sentiment_label = i.label, scored_at = now()"
    ))
    .bind(consumer)
    .bind(scores.iter().map(|s| s.message_id).collect::<Vec<_>>())
    .bind(scores.iter().map(|s| s.comment.0).collect::<Vec<_>>())
    .bind(
        scores
            .iter()
            .map(|s| s.score.clamp(-1.0, 1.0))
            .collect::<Vec<_>>(),
    )
    .bind(scores.iter().map(|s| s.label.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .instrument(client_span("UPDATE", "comments"))
    .await?;
    Ok(outcomes(batch.iter().map(|s| s.message_id), claimed))
}

/// [`apply_sentiments`] for one message.
pub async fn apply_sentiment(
    pool: &PgPool,
    consumer: &str,
    message_id: Uuid,
    comment: CommentId,
    score: f64,
    label: SentimentLabel,
) -> Result<Applied, sqlx::Error> {
    let one = SentimentScore {
        message_id,
        comment,
        score,
        label,
    };
    let outcomes = apply_sentiments(pool, consumer, &[one]).await?;
    Ok(outcomes[0])
}

/// The moderation status of comment `id`, if it exists.
pub async fn status(pool: &PgPool, id: CommentId) -> Result<Option<CommentStatus>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, post_id, author_id, status, sentiment_label, sentiment_score \
         FROM comments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .instrument(client_span("SELECT", "comments"))
    .await
}
