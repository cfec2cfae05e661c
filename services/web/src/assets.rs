//! Static assets, served under names that carry a hash of their content
//! (`/static/app.<hash>.css`), so every cache may keep them for a year without revalidating:
//! a new stylesheet is a new name, which the pages link to as soon as they are served by the
//! new build.
//!
//! The files are compiled into the binary, so a replica needs nothing beside it and its pages
//! can never link to an asset it does not have.

use std::sync::LazyLock;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};
use actix_web::{HttpResponse, ResponseError, web};
use platform_http::caching::{Fingerprint, IMMUTABLE};

use crate::error::PageError;

const APP_CSS: &str = include_str!("../static/app.css");

/// The stylesheet's content hash, computed once at start.
static APP_CSS_HASH: LazyLock<String> =
    LazyLock::new(|| Fingerprint::new("asset").bytes(APP_CSS.as_bytes()).hex());

static STYLESHEET_PATH: LazyLock<String> =
    LazyLock::new(|| format!("/static/app.{}.css", *APP_CSS_HASH));

/// Everything besides the data that a page's bytes depend on: the templates (compiled in, so
/// listed here to be hashed), the stylesheet's name and the package version.
const TEMPLATES: [&str; 6] = [
    include_str!("../templates/base.html"),
    include_str!("../templates/home.html"),
    include_str!("../templates/post.html"),
    include_str!("../templates/new_post.html"),
    include_str!("../templates/account_form.html"),
    include_str!("../templates/error.html"),
];

static BUILD_FINGERPRINT: LazyLock<String> = LazyLock::new(|| {
    TEMPLATES
        .iter()
        .fold(Fingerprint::new("web-build"), |f, t| f.part(t))
        .part(env!("CARGO_PKG_VERSION"))
        .part(&*APP_CSS_HASH)
        .hex()
});

/// A hash of what pages are rendered with, mixed into every page's ETag so a deploy that
/// changes a template or the stylesheet invalidates cached pages even when no post changed.
pub fn build_fingerprint() -> &'static str {
    &BUILD_FINGERPRINT
}

/// Where pages link the stylesheet: its content-hashed path.
pub fn stylesheet_path() -> &'static str {
    &STYLESHEET_PATH
}

/// `GET /static/{name}`: the asset whose hashed name is `name`. Any other name, including the
/// stylesheet under an old or made-up hash, is a 404: serving current bytes under a stale name
/// would let an immutable cache entry hold the wrong content.
pub(crate) async fn serve(name: web::Path<String>) -> HttpResponse {
    if format!("/static/{name}") != stylesheet_path() {
        return PageError::NotFound.error_response();
    }
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/css; charset=utf-8"))
        .insert_header((CACHE_CONTROL, IMMUTABLE))
        .insert_header((ETAG, format!("\"{}\"", *APP_CSS_HASH)))
        .body(APP_CSS)
}
