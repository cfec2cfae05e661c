//! The endpoints under `/api/v1`, one module per group, and what their responses share.

mod account;
mod comments;
mod posts;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, VARY};
use actix_web::{HttpResponseBuilder, ResponseError, web};
use platform_http::Problem;
use platform_http::caching::VARY_CREDENTIALS;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// The path prefix of every endpoint.
pub const PREFIX: &str = "/api/v1";

/// Mounts every endpoint. Each resource answers an unsupported method with a 405 problem, and
/// anything else is a 404 problem.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope(PREFIX)
            .service(resource("/auth/register").route(web::post().to(account::register)))
            .service(resource("/auth/login").route(web::post().to(account::login)))
            .service(resource("/auth/logout").route(web::post().to(account::logout)))
            .service(resource("/me").route(web::get().to(account::me)))
            .service(
                resource("/posts")
                    .route(web::get().to(posts::list))
                    .route(web::post().to(posts::create)),
            )
            .service(
                resource("/posts/{id}")
                    .route(web::get().to(posts::show))
                    .route(web::put().to(posts::update)),
            )
            .service(
                resource("/posts/{id}/comments")
                    .route(web::get().to(comments::list))
                    .route(web::post().to(comments::submit)),
            )
            .service(resource("/comments/{id}").route(web::get().to(comments::status))),
    )
    .default_service(web::to(|| async {
        ApiError::NotFound("The resource").error_response()
    }));
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
        .with_detail("This endpoint does not support that method.")
        .error_response()
    }))
}

/// Account and authentication responses: never stored by any cache, and dependent on the
/// caller's credentials.
fn no_store(mut builder: HttpResponseBuilder) -> HttpResponseBuilder {
    builder
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((VARY, VARY_CREDENTIALS));
    builder
}

/// Timestamps as RFC 3339, which every JSON client parses.
fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// A path id: anything that is not a positive integer names nothing, so it is a 404 like an id
/// that does not exist.
fn path_id(raw: &str, what: &'static str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound(what))
}
