//! The endpoints under `/api/v1`, one module per group, and what their responses share.

mod account;
mod comments;
mod posts;

use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, CACHE_CONTROL, HeaderValue, VARY};
use actix_web::{HttpResponseBuilder, ResponseError, web};
use platform_http::Problem;
use platform_http::caching::VARY_CREDENTIALS;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// The path prefix of every endpoint.
pub const PREFIX: &str = "/api/v1";

/// Mounts every endpoint; `body_limit` bounds JSON bodies. The cacheable reads answer `HEAD`
/// too (headers only, validators included). Each resource answers an unsupported method with
/// a 405 problem, and anything else is a 404 problem.
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.app_data(platform_http::json::json_config(body_limit))
        .app_data(platform_http::json::query_config())
        .service(
            web::scope(PREFIX)
                .service(
                    resource("/auth/register", "POST").route(web::post().to(account::register)),
                )
                .service(resource("/auth/login", "POST").route(web::post().to(account::login)))
                .service(resource("/auth/logout", "POST").route(web::post().to(account::logout)))
                .service(resource("/me", "GET").route(web::get().to(account::me)))
                .service(
                    resource("/posts", "GET, HEAD, POST")
                        .route(web::get().to(posts::list))
                        .route(web::head().to(posts::list))
                        .route(web::post().to(posts::create)),
                )
                .service(
                    resource("/posts/{id}", "GET, HEAD, PUT")
                        .route(web::get().to(posts::show))
                        .route(web::head().to(posts::show))
                        .route(web::put().to(posts::update)),
                )
                .service(
                    resource("/posts/{id}/comments", "GET, HEAD, POST")
                        .route(web::get().to(comments::list))
                        .route(web::head().to(comments::list))
                        .route(web::post().to(comments::submit)),
                )
                .service(resource("/comments/{id}", "GET").route(web::get().to(comments::status))),
        )
        .default_service(web::to(|| async {
            ApiError::NotFound("The resource").error_response()
        }));
}

/// A resource whose unsupported methods get a 405 problem naming the `allow`ed ones.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut response = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
        .with_detail(format!("This endpoint supports {allow}."))
        .error_response();
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        response
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
