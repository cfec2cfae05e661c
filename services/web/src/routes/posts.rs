//! The front page, a post's page, and writing a post.

use actix_web::{HttpRequest, HttpResponse, web};
use domain::{PostBody, PostId, PostTitle, UserId};
use platform_http::caching::{CacheHeaders, Fingerprint, Policy, VARY_CREDENTIALS};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{html, see_other, set_session_cookie};
use crate::error::PageError;
use crate::pages::{HomePage, NewPostPage, PostPage, Viewer};
use crate::session;
use crate::startup::AppState;

#[derive(Deserialize)]
pub(super) struct HomeQuery {
    before: Option<i64>,
}

/// The cache headers of a page anyone can read. Anonymous visitors all get the same bytes, so
/// any cache may share them, with validators from the versions the page is made of; a signed-in
/// visitor's page carries their name and CSRF token, so no cache may keep it.
///
/// Besides the content, a page depends on the templates and the stylesheet's name, so the
/// build's fingerprint is part of every page's.
fn readable_page_cache(
    state: &AppState,
    viewer: &Viewer,
    fingerprint: Fingerprint,
    last_modified: Option<OffsetDateTime>,
) -> CacheHeaders {
    if viewer.username.is_some() {
        return CacheHeaders::new(Policy::NoStore).vary(VARY_CREDENTIALS);
    }
    let fingerprint = fingerprint.part(crate::assets::build_fingerprint());
    let cache = CacheHeaders::new(state.settings.cache.public())
        .etag(&fingerprint)
        .vary(VARY_CREDENTIALS);
    match last_modified {
        Some(at) => cache.last_modified(at),
        None => cache,
    }
}

/// `GET /`: the newest posts, a page at a time.
pub(super) async fn home(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<HomeQuery>,
) -> Result<HttpResponse, PageError> {
    let (viewer, seen) = session::reader(&state, &req).await;
    let page = state
        .store
        .list_posts(query.before.map(PostId), state.settings.page_size, seen)
        .await?;
    // What changes the page: posts arriving (ids), edits (versions), published comments
    // (counts), and where the next page starts; not the approximate view counts.
    let mut fingerprint = Fingerprint::new("web-home");
    for item in &page.items {
        fingerprint = fingerprint
            .part(item.id)
            .part(item.version)
            .part(item.comment_count);
    }
    let fingerprint = fingerprint.part(page.next_cursor.map(|c| c.0).unwrap_or(0));
    // Moved by edits, arrivals and published comments alike (see `Page::last_modified`).
    let cache = readable_page_cache(&state, &viewer, fingerprint, page.last_modified());
    if let Some(not_modified) = cache.not_modified(&req) {
        return Ok(not_modified);
    }
    let mut builder = HttpResponse::Ok();
    cache.apply(&mut builder);
    html(
        builder,
        &HomePage {
            viewer,
            page: &page,
        },
        false,
    )
}

/// `GET /posts/{id}`: a post and its visible comments.
pub(super) async fn show_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let id = path
        .parse::<i64>()
        .map(PostId)
        .map_err(|_| PageError::NotFound)?;
    let (viewer, seen) = session::reader(&state, &req).await;
    let post = state
        .store
        .post(id, seen)
        .await?
        .ok_or(PageError::NotFound)?;
    let comments = state.store.visible_comments(id, seen).await?;
    state.store.record_view(id);
    let comment_pending = req.query_string().contains("comment=pending");
    // The post changes by edits (version); its comments by being published (ids) and scored
    // (sentiment). View counts are approximate and left out (see `domain::store`).
    let mut fingerprint = Fingerprint::new("web-post")
        .part(post.id)
        .part(post.version)
        .part(comment_pending);
    for c in &comments {
        fingerprint = fingerprint
            .part(c.id)
            .part(c.sentiment_label.as_deref().unwrap_or("-"));
    }
    // The page changes when the post is edited and when a comment is published or scored.
    let last_modified = domain::comments::last_changed(&comments)
        .map_or(post.updated_at, |changed| changed.max(post.updated_at));
    let cache = readable_page_cache(&state, &viewer, fingerprint, Some(last_modified));
    if let Some(not_modified) = cache.not_modified(&req) {
        return Ok(not_modified);
    }
    let mut builder = HttpResponse::Ok();
    cache.apply(&mut builder);
    html(
        builder,
        &PostPage {
            viewer,
            post: &post,
            comments: &comments,
            comment_pending,
        },
        false,
    )
}

/// `GET /posts/new`: the form, for signed-in users; others are sent to log in.
pub(super) async fn new_post_form(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, PageError> {
    let Some(session) = session::current(&state, &req).await? else {
        return Ok(see_other("/login").finish());
    };
    if session.data.user_id.is_none() {
        return Ok(see_other("/login").finish());
    }
    let mut builder = HttpResponse::Ok();
    set_session_cookie(&mut builder, &state, &session);
    html(
        builder,
        &NewPostPage {
            viewer: Viewer::from(Some(&session)),
            csrf_token: &session.data.csrf_token,
            title: "",
            body: "",
            error: None,
        },
        true,
    )
}

#[derive(Deserialize)]
pub(super) struct NewPostForm {
    csrf_token: String,
    title: String,
    body: String,
}

/// `POST /posts`: publishes a post and shows it.
pub(super) async fn create_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<NewPostForm>,
) -> Result<HttpResponse, PageError> {
    let session = session::verified(&state, &req, &form.csrf_token).await?;
    let Some(author) = session.data.user_id.map(UserId) else {
        return Ok(see_other("/login").finish());
    };
    let parsed = PostTitle::parse(&form.title)
        .and_then(|title| PostBody::parse(&form.body).map(|body| (title, body)));
    let (title, body) = match parsed {
        Ok(valid) => valid,
        Err(message) => {
            return html(
                HttpResponse::UnprocessableEntity(),
                &NewPostPage {
                    viewer: Viewer::from(Some(&session)),
                    csrf_token: &session.data.csrf_token,
                    title: &form.title,
                    body: &form.body,
                    error: Some(&message),
                },
                true,
            );
        }
    };
    let (id, written_at) = state.store.create_post(author, &title, &body).await?;
    session::remember_write(&state, session, written_at).await;
    tracing::info!(
        message = "Post created.",
        post_id = id.0,
        user_id = author.0
    );
    Ok(see_other(&format!("/posts/{id}")).finish())
}
