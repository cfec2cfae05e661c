//! Writing a comment: a form on the post's page that posts here.
//!
//! The comment is stored as pending together with its outbox event, and the writer is sent
//! back to the post at once with a note that it awaits moderation; the spam and sentiment
//! workers decide the rest in the background, so this request never waits on the broker.

use actix_web::{HttpRequest, HttpResponse, web};
use domain::comments::{SubmitCommentError, TraceContext};
use domain::{CommentBody, PostId, UserId};
use serde::Deserialize;

use super::see_other;
use crate::error::PageError;
use crate::session;
use crate::startup::AppState;

#[derive(Deserialize)]
pub(super) struct CommentForm {
    csrf_token: String,
    body: String,
}

/// `POST /posts/{id}/comments`: signed-in users only, CSRF-checked; 303 back to the post with
/// `?comment=pending`, which shows the "awaiting moderation" note.
pub(super) async fn submit_comment(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<CommentForm>,
) -> Result<HttpResponse, PageError> {
    let post = path
        .parse::<i64>()
        .map(PostId)
        .map_err(|_| PageError::NotFound)?;
    let session = session::verified(&state, &req, &form.csrf_token).await?;
    let Some(author) = session.data.user_id.map(UserId) else {
        return Ok(see_other("/login").finish());
    };
    let body = CommentBody::parse(&form.body).map_err(PageError::BadRequest)?;
    let (parent, state_header) = platform_http::outgoing_trace_context(&req);
    let trace = TraceContext::from_headers(parent.as_deref(), state_header.as_deref());
    let (id, written_at) = match state
        .store
        .submit_comment(post, author, &body, &trace)
        .await
    {
        Ok(submitted) => submitted,
        Err(SubmitCommentError::PostNotFound) => return Err(PageError::NotFound),
        Err(SubmitCommentError::Database(e)) => return Err(e.into()),
    };
    session::remember_write(&state, session, written_at).await;
    tracing::info!(
        message = "Comment submitted.",
        comment_id = id.0,
        post_id = post.0,
        user_id = author.0
    );
    Ok(see_other(&format!("/posts/{}?comment=pending#comments", post.0)).finish())
}
