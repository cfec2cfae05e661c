//! The current visitor's session, in the three shapes handlers need it.

use actix_web::HttpRequest;
use platform_db::Lsn;
use platform_session::{Session, SessionData};

use crate::error::PageError;
use crate::pages::Viewer;
use crate::startup::AppState;

/// The live session the request presents, if any. Redis errors are errors.
pub async fn current(state: &AppState, req: &HttpRequest) -> Result<Option<Session>, PageError> {
    Ok(state.sessions.current(req).await?)
}

/// For pages anyone can read: who is looking, and the position of their latest write (their
/// reads must see it). A Redis outage makes the visitor anonymous instead of failing the page,
/// so reading keeps working without the session store.
pub async fn reader(state: &AppState, req: &HttpRequest) -> (Viewer, Option<Lsn>) {
    match current(state, req).await {
        Ok(session) => (
            Viewer::from(session.as_ref()),
            session.and_then(|s| s.data.last_write_lsn).map(Lsn),
        ),
        Err(_) => (Viewer::default(), None),
    }
}

/// Remembers in the session that it wrote at `lsn`, so its next reads see the write even on a
/// replica. Failing to remember is logged, not an error: the write itself succeeded.
pub async fn remember_write(state: &AppState, mut session: Session, lsn: Lsn) {
    session.data.last_write_lsn = Some(lsn.0);
    if let Err(e) = state.sessions.save(&session).await {
        tracing::warn!(message = "Could not record a write in the session.", error = %e);
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
