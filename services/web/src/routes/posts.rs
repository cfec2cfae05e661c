//! The front page, a post's page, and writing a post.

use actix_web::{HttpRequest, HttpResponse, web};
use domain::{PostBody, PostId, PostTitle, UserId, comments, posts};
use serde::Deserialize;

use super::{html, see_other, set_session_cookie};
use crate::error::PageError;
use crate::pages::{HomePage, NewPostPage, PostPage, Viewer};
use crate::session;
use crate::startup::AppState;

#[derive(Deserialize)]
pub(super) struct HomeQuery {
    before: Option<i64>,
}

/// `GET /`: the newest posts, a page at a time.
pub(super) async fn home(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<HomeQuery>,
) -> Result<HttpResponse, PageError> {
    let viewer = session::viewer(&state, &req).await;
    let page = posts::list(
        &state.pool,
        query.before.map(PostId),
        state.settings.page_size,
    )
    .await?;
    let private = viewer.username.is_some();
    html(
        HttpResponse::Ok(),
        &HomePage {
            viewer,
            page: &page,
        },
        private,
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
    let viewer = session::viewer(&state, &req).await;
    let post = posts::get(&state.pool, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let comments = comments::list_visible(&state.pool, id).await?;
    let private = viewer.username.is_some();
    html(
        HttpResponse::Ok(),
        &PostPage {
            viewer,
            post: &post,
            comments: &comments,
        },
        private,
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
    let id = posts::create(&state.pool, author, &title, &body).await?;
    tracing::info!(
        message = "Post created.",
        post_id = id.0,
        user_id = author.0
    );
    Ok(see_other(&format!("/posts/{id}")).finish())
}
