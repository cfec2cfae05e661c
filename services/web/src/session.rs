//! The current visitor's session, in the three shapes handlers need it.

use actix_web::HttpRequest;
use platform_session::{Session, SessionData};

use crate::error::PageError;
use crate::pages::Viewer;
use crate::startup::AppState;

/// The live session the request presents, if any. Redis errors are errors.
pub async fn current(state: &AppState, req: &HttpRequest) -> Result<Option<Session>, PageError> {
    Ok(state.sessions.current(req).await?)
}

/// For pages anyone can read: a Redis outage makes the visitor anonymous instead of failing
/// the page, so reading keeps working without the session store.
pub async fn viewer(state: &AppState, req: &HttpRequest) -> Viewer {
    match current(state, req).await {
        Ok(session) => Viewer::from(session.as_ref()),
        Err(_) => Viewer::default(),
    }
}

/// The visitor's session, creating an anonymous one when there is none. The `bool` says
/// whether it is new, so the caller sets the cookie.
pub async fn ensure(state: &AppState, req: &HttpRequest) -> Result<(Session, bool), PageError> {
    if let Some(session) = current(state, req).await? {
        return Ok((session, false));
    }
    Ok((state.sessions.create(SessionData::anonymous()).await?, true))
}

/// The session of a form submission whose CSRF token checks out; anything else is 403.
pub async fn verified(
    state: &AppState,
    req: &HttpRequest,
    submitted_token: &str,
) -> Result<Session, PageError> {
    match current(state, req).await? {
        Some(session) if session.data.csrf_matches(submitted_token) => Ok(session),
        _ => Err(PageError::Forbidden),
    }
}
