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

frontend::front_end_error!(PageError);

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
