//! How a session id travels: the `sid` cookie for browsers, `Authorization: Bearer` for phones.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::header::AUTHORIZATION;

use crate::SessionId;

/// The cookie that carries the session id.
pub const COOKIE_NAME: &str = "sid";

/// The session id a request presents: the bearer token if there is one, else the `sid`
/// cookie. Malformed values count as none.
pub fn session_id(req: &HttpRequest) -> Option<SessionId> {
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(token) => SessionId::parse(token.trim()),
        None => req
            .cookie(COOKIE_NAME)
            .and_then(|c| SessionId::parse(c.value())),
    }
}

/// The `sid` cookie for `id`: HttpOnly so scripts cannot read it, SameSite=Lax so other sites'
/// forms do not carry it, `Secure` when configured.
pub fn cookie(id: &SessionId, secure: bool, max_age: std::time::Duration) -> Cookie<'static> {
    Cookie::build(COOKIE_NAME, id.as_str().to_owned())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(CookieDuration::seconds(max_age.as_secs() as i64))
        .finish()
}

/// A cookie that tells the browser to forget `sid`.
pub fn removal_cookie(secure: bool) -> Cookie<'static> {
    let mut cookie = cookie(&SessionId(String::new()), secure, std::time::Duration::ZERO);
    cookie.make_removal();
    cookie
}
