//! Proxy errors: where each came from, whether a retry may help, and the RFC 9457 answer the
//! client gets.
//!
//! As in pingora, the source decides the status family: a downstream (client) fault is a 4xx,
//! an upstream fault a 502/503/504. Retryability is decided here too, so the
//! proxy loop reads one flag instead of matching on causes.

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::body::ResponseBody;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client: a request too large, too fast, or for nothing routed.
    Downstream,
    /// A backend: refused, reset, too slow, or none healthy.
    Upstream,
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched the request.
    #[error("no route matches {0}")]
    NoRoute(String),
    /// The request head is over `limits.max_header_bytes`.
    #[error("request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    /// The request body is over `limits.max_body_bytes`.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// The client is over its rate limit; retry after this many seconds.
    #[error("rate limit exceeded")]
    RateLimited(u64),
    /// The client sent something unusable (a broken body, a bad URI).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request has a transfer coding other than `chunked` alone (RFC 9112 6.1).
    #[error("only the chunked transfer coding is implemented")]
    UnsupportedTransferCoding,
    /// The client stopped sending its request body for `timeouts.idle_ms`.
    #[error("the request body stalled")]
    BodyStalled,
    /// Every backend of the upstream is unhealthy or draining.
    #[error("no healthy backend in upstream {0:?}")]
    NoHealthyBackend(String),
    /// The TCP connection to the backend could not be opened. Nothing was sent.
    #[error("cannot connect to backend {0}")]
    Connect(String),
    /// The backend closed or reset the connection before answering.
    #[error("backend {0} closed the connection before answering")]
    Reset(String),
    /// The backend did not answer within `timeouts.response_ms`.
    #[error("backend {0} did not answer in time")]
    Timeout(String),
}

impl ProxyError {
    /// Where the failure came from.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::NoRoute(_)
            | Self::HeadersTooLarge(_)
            | Self::BodyTooLarge(_)
            | Self::RateLimited(_)
            | Self::BadRequest(_)
            | Self::BodyStalled
            | Self::UnsupportedTransferCoding => ErrorSource::Downstream,
            Self::NoHealthyBackend(_) | Self::Connect(_) | Self::Reset(_) | Self::Timeout(_) => {
                ErrorSource::Upstream
            }
        }
    }

    /// Whether sending the same idempotent request to another backend may succeed. A timeout is
    /// not retried: the backend may still be working on it, and retrying slow requests doubles
    /// the load exactly when a backend is struggling.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Reset(_))
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::NoHealthyBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect(_) | Self::Reset(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `application/problem+json` answer.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let mut response = problem(status, &self.to_string());
        if let Self::RateLimited(secs) = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// An RFC 9457 problem document with `type` left as `about:blank`, so `title` is the status's
/// reason phrase and `detail` says what happened.
pub fn problem(status: StatusCode, detail: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_connect_failures_are_retryable_and_timeouts_are_not() {
        assert!(ProxyError::Connect("a".into()).is_retryable());
        assert!(ProxyError::Reset("a".into()).is_retryable());
        assert!(!ProxyError::Timeout("a".into()).is_retryable());
        assert!(!ProxyError::BodyTooLarge(1).is_retryable());
    }

    #[test]
    fn errors_are_classified_by_source() {
        assert_eq!(
            ProxyError::RateLimited(1).source_kind(),
            ErrorSource::Downstream
        );
        assert_eq!(
            ProxyError::NoHealthyBackend("web".into()).source_kind(),
            ErrorSource::Upstream
        );
    }

    #[test]
    fn a_rate_limited_answer_carries_retry_after() {
        let r = ProxyError::RateLimited(3).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "3");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
    }
}
