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

impl SubmitCommentError {
    /// What a failed [`submit_many`] of one comment means: a foreign key violation can only be
    /// the post, since the author is the caller's own session.
    pub fn from_write(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(db) if db.is_foreign_key_violation() => Self::PostNotFound,
            _ => Self::Database(e),
        }
    }
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
/// with it: the comment is accepted whole or not at all (see [`submit_many`]).
pub async fn submit(
    pool: &PgPool,
    post: PostId,
    author: UserId,
    body: &CommentBody,
) -> Result<CommentId, SubmitCommentError> {
    submit_traced(pool, post, author, body, &TraceContext::default()).await
}

/// [`submit`], carrying the submitting request's trace context into the event.
pub async fn submit_traced(
    pool: &PgPool,
    post: PostId,
    author: UserId,
    body: &CommentBody,
    trace: &TraceContext,
) -> Result<CommentId, SubmitCommentError> {
    let comment = NewComment {
        post,
        author,
        body: body.clone(),
        trace: trace.clone(),
    };
    let ids = submit_many(pool, std::slice::from_ref(&comment))
        .await
        .map_err(SubmitCommentError::from_write)?;
    ids.into_iter().next().ok_or_else(|| {
        SubmitCommentError::Database(sqlx::Error::Protocol("no comment id returned".into()))
    })
}

/// A comment to submit, with the trace context of the request that submits it.
#[derive(Debug, Clone)]
pub struct NewComment {
    pub post: PostId,
    pub author: UserId,
    pub body: CommentBody,
    pub trace: TraceContext,
}

/// Stores `comments` as `pending`, each with its `comment.submitted` outbox row, and returns
/// their ids in the order given.
///
/// Everything is one statement, and a statement is its own transaction: either every comment
/// and its event exist or none does, so a comment that was accepted always has an event for the
/// relay to publish, and no event announces a comment that was rolled back. One statement is
/// also one round trip and one commit for the whole batch, where `BEGIN` ... `COMMIT` around
/// each comment would be three round trips and a WAL flush per comment. A post that does not
/// exist fails the whole statement with a foreign key violation. Nothing here talks to the
/// broker; callers answer as soon as this returns.
pub async fn submit_many(
    pool: &PgPool,
    comments: &[NewComment],
) -> Result<Vec<CommentId>, sqlx::Error> {
    let mut posts = Vec::with_capacity(comments.len());
    let mut authors = Vec::with_capacity(comments.len());
    let mut bodies = Vec::with_capacity(comments.len());
    let mut traceparents = Vec::with_capacity(comments.len());
    let mut tracestates = Vec::with_capacity(comments.len());
    for c in comments {
        posts.push(c.post.0);
        authors.push(c.author.0);
        bodies.push(c.body.as_ref());
        traceparents.push(c.trace.traceparent.as_deref());
        tracestates.push(c.trace.tracestate.as_deref());
    }
    // The ids are drawn before the insert, in the input's order, so that each caller learns its
    // own: the order of `RETURNING` rows is not something Postgres promises. `input` calls a
    // volatile function, so it is computed once and every reference sees the same ids.
    sqlx::query_scalar(
        "WITH input AS ( \
             SELECT nextval(pg_get_serial_sequence('comments', 'id')) AS id, t.* \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $5::text[], $6::text[]) \
                  WITH ORDINALITY AS t(post_id, author_id, body, traceparent, tracestate, ord)), \
         c AS ( \
             INSERT INTO comments (id, post_id, author_id, body) OVERRIDING SYSTEM VALUE \
             SELECT id, post_id, author_id, body FROM input ORDER BY ord \
             RETURNING id, post_id, author_id, body, created_at), \
         o AS ( \
             INSERT INTO outbox (event_type, payload, traceparent, tracestate) \
             SELECT $4, jsonb_build_object( \
                        'comment_id', c.id, 'post_id', c.post_id, 'author_id', c.author_id, \
                        'author', u.username, 'body', c.body, 'submitted_at', c.created_at), \
                    i.traceparent, i.tracestate \
             FROM c JOIN input i USING (id) JOIN users u ON u.id = c.author_id \
             ORDER BY i.ord) \
         SELECT id FROM input ORDER BY ord",
    )
    .bind(&posts)
    .bind(&authors)
    .bind(&bodies)
    .bind(COMMENT_SUBMITTED)
    .bind(&traceparents)
    .bind(&tracestates)
    .fetch_all(pool)
    // Named after the comments it stores; the outbox rows ride in the same statement.
    .instrument(client_span("INSERT", "comments"))
    .await
    .map(|ids| ids.into_iter().map(CommentId).collect())
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
/// from `$4`); `claimed` records each message as processed by consumer `$1`; `todo` is the
/// input of the messages the claim inserted; `locked` takes the comments' row locks in id
/// order, so two workers updating overlapping batches wait for each other instead of
/// deadlocking; `applied` runs the effect (`{effect}`, the `SET` list over `c` and `i`) for
/// `todo`. The statement answers with the claimed message ids: any other message of the batch
/// is a duplicate and changed nothing.
///
/// `todo` is its own `WITH` so the claim is joined once, by hash. Joined inside the `UPDATE`,
/// the planner compared every row of the batch with every claimed one (128 x 128 for a full
/// batch), which was most of the statement's time.
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
             todo AS (SELECT input.* FROM input JOIN claimed USING (message_id)), \
             locked AS ( \
                 SELECT id FROM comments WHERE id IN (SELECT comment_id FROM todo) \
                 ORDER BY id FOR UPDATE), \
             applied AS ( \
                 UPDATE comments c SET ",
            $effect,
            " FROM todo i \
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
