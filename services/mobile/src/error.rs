//! Errors an endpoint can end in, each rendered as RFC 9457 problem+json with a stable `type`
//! (`https://scaleout.dev/problems/<kind>`); the README lists every kind.

use actix_web::http::StatusCode;
use actix_web::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use platform_http::Problem;
use serde::Serialize;

/// One invalid field of a request, in the `errors` member of a `validation` problem.
#[derive(Debug, Clone, Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

#[derive(thiserror::Error)]
pub enum ApiError {
    /// Well-formed input that breaks a domain rule (an empty title, a short password).
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// A query parameter that is not what the API accepts (a `limit` of 0, a forged cursor).
    #[error("{0}")]
    InvalidQuery(String),
    /// No live session: none presented, or the one presented has ended. `token_presented`
    /// picks the `WWW-Authenticate` error code.
    #[error("authentication required")]
    Unauthorized { token_presented: bool },
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("that username is already taken")]
    UsernameTaken,
    /// `If-Match` named a version of the resource that is no longer current.
    #[error("the resource has changed")]
    PreconditionFailed,
    #[error("too many attempts")]
    TooManyRequests { retry_after_secs: u64 },
    /// A dependency the request needs is down; `0` names it for the reader.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field,
            message: message.into(),
        }])
    }
}

frontend::front_end_error!(ApiError);

impl ApiError {
    fn problem(&self) -> Problem {
        match self {
            Self::Validation(errors) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid fields",
            )
            .with_detail(
                errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .with_extension(
                "errors",
                serde_json::to_value(errors).unwrap_or(serde_json::Value::Null),
            ),
            Self::InvalidQuery(detail) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query")
                    .with_detail(detail.clone())
            }
            Self::Unauthorized { token_presented } => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            )
            .with_detail(if *token_presented {
                "The token is invalid or its session has ended; log in again."
            } else {
                "Send `Authorization: Bearer <token>` with a token from POST /api/v1/auth/login."
            }),
            Self::InvalidCredentials => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "Invalid credentials",
            )
            .with_detail("Invalid username or password."),
            Self::Forbidden(detail) => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(*detail)
            }
            Self::NotFound(what) => Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
                .with_detail(format!("{what} does not exist.")),
            Self::UsernameTaken => {
                Problem::new(StatusCode::CONFLICT, "username-taken", "Username taken")
                    .with_detail("That username is already taken; choose another.")
            }
            Self::PreconditionFailed => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            )
            .with_detail(
                "The post has changed since the copy named by `If-Match`; \
                 fetch it again and reapply the edit.",
            ),
            Self::TooManyRequests { retry_after_secs } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many attempts",
            )
            .with_detail(format!(
                "Too many attempts; try again in {retry_after_secs} seconds."
            )),
            Self::Unavailable(what) => Problem::unavailable(what),
            Self::Unexpected(_) => Problem::internal(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.problem().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unexpected(e) = self {
            tracing::error!(message = "Request failed.", error = ?e);
        }
        let mut response = self.problem().error_response();
        let headers = response.headers_mut();
        match self {
            // RFC 6750 section 3: a 401 names the scheme, and says why when a token was sent.
            Self::Unauthorized { token_presented } => {
                let value = if *token_presented {
                    r#"Bearer realm="scaleout", error="invalid_token""#
                } else {
                    r#"Bearer realm="scaleout""#
                };
                headers.insert(WWW_AUTHENTICATE, value.parse().expect("a valid header"));
            }
            Self::InvalidCredentials => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    r#"Bearer realm="scaleout""#.parse().expect("a valid header"),
                );
            }
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(RETRY_AFTER, (*retry_after_secs).into());
            }
            Self::Unavailable(_) => {
                headers.insert(RETRY_AFTER, 1u64.into());
            }
            _ => {}
        }
        response
    }
}
