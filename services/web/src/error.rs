//! Errors a page handler can end in, each rendered as a readable HTML page.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use crate::pages::ErrorPage;

#[derive(thiserror::Error)]
pub enum PageError {
    #[error("page not found")]
    NotFound,
    /// The form's CSRF token is missing, stale or from another session.
    #[error("the form's CSRF token is invalid")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error("too many attempts")]
    TooManyRequests { retry_after_secs: u64 },
    /// A dependency the page needs is down; `0` names it for the reader.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl std::fmt::Debug for PageError {
    /// Prints the whole chain of causes, so the request log says why, not just what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            writeln!(f, "Caused by:\n\t{cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(message = "Database unavailable.", error = %e);
                Self::Unavailable("The database")
            }
            other => Self::Unexpected(anyhow::Error::new(other).context("Database query failed")),
        }
    }
}

impl From<platform_session::SessionError> for PageError {
    fn from(e: platform_session::SessionError) -> Self {
        tracing::warn!(message = "Session store unavailable.", error = %e);
        Self::Unavailable("The session store")
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unexpected(e) = self {
            tracing::error!(message = "Request failed.", error = ?e);
        }
        let (title, message) = match self {
            Self::NotFound => ("Not found", "There is nothing at this address.".to_owned()),
            Self::Forbidden => (
                "Form expired",
                "This form has expired or did not come from this site. \
                 Go back, reload the page and try again."
                    .to_owned(),
            ),
            Self::BadRequest(message) => ("Bad request", message.clone()),
            Self::TooManyRequests { retry_after_secs } => (
                "Too many attempts",
                format!("Too many attempts. Try again in {retry_after_secs} seconds."),
            ),
            Self::Unavailable(what) => (
                "Temporarily unavailable",
                format!("{what} is unavailable right now. Please try again in a moment."),
            ),
            Self::Unexpected(_) => (
                "Something went wrong",
                "Something went wrong on our side. Please try again.".to_owned(),
            ),
        };
        let page = ErrorPage {
            viewer: Default::default(),
            title,
            message: &message,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("{title}: {message}"));
        let mut response = HttpResponse::build(self.status_code());
        response
            .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((CACHE_CONTROL, "no-store"));
        if let Self::TooManyRequests { retry_after_secs } = self {
            response.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
        }
        response.body(body)
    }
}
