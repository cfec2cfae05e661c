//! Who is calling. The token is a session id from the Redis store shared with the web service,
//! read by `platform-session` from `Authorization: Bearer` or, failing that, the web's `sid`
//! cookie; a session is one and the same whichever front end created it.

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use domain::UserId;
use platform_db::Lsn;
use platform_http::caching::Policy;
use platform_session::{Session, transport};

use crate::error::ApiError;
use crate::startup::AppState;

/// A signed-in caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session: Session,
    pub user_id: UserId,
    pub username: String,
}

/// Whether the request carries any credential, valid or not.
pub fn presents_credentials(req: &HttpRequest) -> bool {
    req.headers().contains_key(AUTHORIZATION) || req.cookie(transport::COOKIE_NAME).is_some()
}

/// The caching policy of a read of public content: shared caches may keep what anonymous
/// callers get, but a reply to a request carrying credentials is the caller's alone.
///
/// Deciding by the presence of a credential rather than by loading the session keeps anonymous
/// and authenticated reads working while Redis is down.
pub fn read_policy(state: &AppState, req: &HttpRequest) -> Policy {
    if presents_credentials(req) {
        Policy::Private
    } else {
        state.settings.cache.public()
    }
}

/// The position of the caller's latest write, if they present a session that has one: their
/// reads must see it. Anonymous callers, and any caller while Redis is down, have none.
pub async fn last_write(state: &AppState, req: &HttpRequest) -> Option<Lsn> {
    if !presents_credentials(req) {
        return None;
    }
    match state.sessions.current(req).await {
        Ok(session) => session.and_then(|s| s.data.last_write_lsn).map(Lsn),
        Err(_) => None,
    }
}

/// Remembers in the caller's session that they wrote at `lsn`. Failing to remember is logged,
/// not an error: the write itself succeeded.
pub async fn remember_write(state: &AppState, caller: Caller, lsn: Lsn) {
    let mut session = caller.session;
    session.data.last_write_lsn = Some(lsn.0);
    if let Err(e) = state.sessions.save(&session).await {
        tracing::warn!(message = "Could not record a write in the session.", error = %e);
    }
}

/// The live session the request presents, signed in or not; 401 without one, 503 when the
/// session store is down.
pub async fn session(state: &AppState, req: &HttpRequest) -> Result<Session, ApiError> {
    state
        .sessions
        .current(req)
        .await?
        .ok_or(ApiError::Unauthorized {
            token_presented: presents_credentials(req),
        })
}

/// The signed-in caller; an anonymous session (a web visitor who has not logged in) is 401.
pub async fn caller(state: &AppState, req: &HttpRequest) -> Result<Caller, ApiError> {
    let session = session(state, req).await?;
    match (session.data.user_id, session.data.username.clone()) {
        (Some(id), Some(username)) => Ok(Caller {
            user_id: UserId(id),
            username,
            session,
        }),
        _ => Err(ApiError::Unauthorized {
            token_presented: true,
        }),
    }
}
