//! The pages, one module per group, and the helpers their responses share.

mod account;
mod comments;
mod posts;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError, web};
use askama::Template;
use platform_session::{Session, transport};

use crate::error::PageError;
use crate::startup::AppState;

/// Mounts every page; `body_limit` bounds form bodies.
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    // The cacheable pages answer `HEAD` too: headers and validators without the body.
    cfg.app_data(form_config(body_limit))
        .route("/", web::get().to(posts::home))
        .route("/", web::head().to(posts::home))
        .route("/posts/new", web::get().to(posts::new_post_form))
        .route("/posts", web::post().to(posts::create_post))
        .route("/posts/{id}", web::get().to(posts::show_post))
        .route("/posts/{id}", web::head().to(posts::show_post))
        .route(
            "/posts/{id}/comments",
            web::post().to(comments::submit_comment),
        )
        .route("/register", web::get().to(account::register_form))
        .route("/register", web::post().to(account::register))
        .route("/login", web::get().to(account::login_form))
        .route("/login", web::post().to(account::login))
        .route("/logout", web::post().to(account::logout))
        .route("/static/{name}", web::get().to(crate::assets::serve))
        .default_service(web::to(|| async { PageError::NotFound.error_response() }));
}

/// Form bodies: bounded like every body, and a malformed one is a readable 400 page.
fn form_config(limit: usize) -> web::FormConfig {
    web::FormConfig::default()
        .limit(limit)
        .error_handler(|err, _| {
            let message = format!("The form could not be read: {err}.");
            actix_web::error::InternalError::from_response(
                err,
                PageError::BadRequest(message).error_response(),
            )
            .into()
        })
}

/// An HTML response from a template. Pages that carry a session's CSRF token are never stored
/// by any cache.
fn html(
    mut builder: HttpResponseBuilder,
    page: &impl Template,
    private: bool,
) -> Result<HttpResponse, PageError> {
    let body = page
        .render()
        .map_err(|e| PageError::Unexpected(anyhow::Error::new(e).context("Rendering failed")))?;
    builder.insert_header((CONTENT_TYPE, "text/html; charset=utf-8"));
    if private {
        builder.insert_header((CACHE_CONTROL, "no-store"));
    }
    Ok(builder.body(body))
}

/// 303 See Other: after a form POST the browser GETs `location`, so a reload does not resubmit.
fn see_other(location: &str) -> HttpResponseBuilder {
    let mut builder = HttpResponse::SeeOther();
    builder
        .insert_header((LOCATION, location))
        .insert_header((CACHE_CONTROL, "no-store"));
    builder
}

/// Attaches the `sid` cookie for `session`.
fn set_session_cookie(builder: &mut HttpResponseBuilder, state: &AppState, session: &Session) {
    builder.cookie(transport::cookie(
        &session.id,
        state.settings.session.session_cookie_secure,
        state.sessions.absolute_timeout(),
    ));
}
