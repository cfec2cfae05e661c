//! A post's visible comments, submitting one, and its moderation status for its author.

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use domain::comments::{self, CommentId, SubmitCommentError, TraceContext};
use domain::{CommentBody, PostId};
use platform_http::caching::{CacheHeaders, Fingerprint, Policy, VARY_CREDENTIALS};
use serde::{Deserialize, Serialize};

use super::{PREFIX, path_id, timestamp};
use crate::auth;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Serialize)]
struct Sentiment<'a> {
    label: &'a str,
    score: Option<f64>,
}

fn sentiment<'a>(label: Option<&'a str>, score: Option<f64>) -> Option<Sentiment<'a>> {
    label.map(|label| Sentiment { label, score })
}

#[derive(Serialize)]
struct CommentJson<'a> {
    id: i64,
    author: &'a str,
    body: &'a str,
    created_at: String,
    sentiment: Option<Sentiment<'a>>,
}

#[derive(Serialize)]
struct CommentList<'a> {
    items: Vec<CommentJson<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommentInput {
    body: String,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    id: i64,
    post_id: i64,
    /// `pending`, `published` or `rejected`.
    status: &'a str,
    sentiment: Option<Sentiment<'a>>,
}

/// `GET /posts/{id}/comments`: the published comments, oldest first.
pub(super) async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = PostId(path_id(&path, "The post")?);
    let seen = auth::last_write(&state, &req).await;
    let post = state
        .store
        .post(id, seen)
        .await?
        .ok_or(ApiError::NotFound("The post"))?;
    let visible = state.store.visible_comments(id, seen).await?;
    // Comments change by being published (ids) and by being scored (sentiment).
    let mut fingerprint = Fingerprint::new("api-comments").part(id);
    for c in &visible {
        fingerprint = fingerprint
            .part(c.id)
            .part(c.sentiment_label.as_deref().unwrap_or("-"))
            .part(c.sentiment_score.unwrap_or(f64::NAN));
    }
    // The list changes only by those two, and was empty from the post's creation until its
    // first comment was published.
    let last_modified = comments::last_changed(&visible)
        .map_or(post.created_at, |changed| changed.max(post.created_at));
    let cache = CacheHeaders::new(auth::read_policy(&state, &req))
        .etag(&fingerprint)
        .last_modified(last_modified)
        .vary(VARY_CREDENTIALS);
    if let Some(not_modified) = cache.not_modified(&req) {
        return Ok(not_modified);
    }
    let body = CommentList {
        items: visible
            .iter()
            .map(|c| CommentJson {
                id: c.id,
                author: &c.author,
                body: &c.body,
                created_at: timestamp(c.created_at),
                sentiment: sentiment(c.sentiment_label.as_deref(), c.sentiment_score),
            })
            .collect(),
    };
    let mut builder = HttpResponse::Ok();
    cache.apply(&mut builder);
    Ok(builder.json(body))
}

/// `POST /posts/{id}/comments`: accepts a comment for moderation; 202, since it is published
/// only once checked.
pub(super) async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    input: web::Json<CommentInput>,
) -> Result<HttpResponse, ApiError> {
    let post = PostId(path_id(&path, "The post")?);
    let caller = auth::caller(&state, &req).await?;
    let body = CommentBody::parse(&input.body).map_err(|m| ApiError::invalid("body", m))?;
    let (parent, trace_state) = platform_http::outgoing_trace_context(&req);
    let trace = TraceContext::from_headers(parent.as_deref(), trace_state.as_deref());
    let submitted = state
        .store
        .submit_comment(post, caller.user_id, &body, &trace)
        .await;
    let id = match submitted {
        Ok((id, written_at)) => {
            tracing::info!(
                message = "Comment submitted.",
                comment_id = id.0,
                post_id = post.0,
                user_id = caller.user_id.0
            );
            auth::remember_write(&state, caller, written_at).await;
            id
        }
        Err(SubmitCommentError::PostNotFound) => return Err(ApiError::NotFound("The post")),
        Err(SubmitCommentError::Database(e)) => return Err(e.into()),
    };
    let mut builder = HttpResponse::Accepted();
    CacheHeaders::new(Policy::NoStore)
        .vary(VARY_CREDENTIALS)
        .apply(&mut builder);
    builder.insert_header((LOCATION, format!("{PREFIX}/comments/{}", id.0)));
    Ok(builder.json(StatusJson {
        id: id.0,
        post_id: post.0,
        status: "pending",
        sentiment: None,
    }))
}

/// `GET /comments/{id}`: where the comment is in moderation. Only its author may ask; to anyone
/// else it does not exist, so its fate is not disclosed.
pub(super) async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = CommentId(path_id(&path, "The comment")?);
    let caller = auth::caller(&state, &req).await?;
    let status = comments::status(&state.pool, id)
        .await?
        .filter(|s| s.author_id == caller.user_id)
        .ok_or(ApiError::NotFound("The comment"))?;
    let mut builder = HttpResponse::Ok();
    // Private and always revalidated: the status changes as moderation runs.
    CacheHeaders::new(Policy::Private)
        .vary(VARY_CREDENTIALS)
        .apply(&mut builder);
    Ok(builder.json(StatusJson {
        id: status.id.0,
        post_id: status.post_id.0,
        status: &status.status,
        sentiment: sentiment(status.sentiment_label.as_deref(), status.sentiment_score),
    }))
}
