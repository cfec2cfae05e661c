//! Middleware every service mounts: a request id and span around each request, and a body-size
//! limit that holds for every route.

use std::rc::Rc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use futures_util::StreamExt;
use tracing::Instrument;

use crate::Problem;

/// The header carrying the request id, in and out.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, available to handlers as `web::ReqData<RequestId>`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id (the caller's `X-Request-Id` when it is sane, else a new UUID),
/// runs it inside a span carrying that id, logs one line when it completes, and echoes the id
/// in the response.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "http.request",
        request_id = %id,
        http.method = %req.method(),
        http.target = %req.path(),
        http.status = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    span.record("http.status", status);
    span.in_scope(|| {
        tracing::info!(
            message = "Request completed.",
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    Ok(res)
}

/// The body-size limit for every route, as middleware state.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Refuses bodies over the limit with 413 before a handler runs when `Content-Length` says so,
/// and cuts off streamed (chunked) bodies at the limit. Extractor limits alone would miss
/// handlers that read the raw payload.
pub async fn limit_body(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let limit = req
        .app_data::<web::Data<BodyLimit>>()
        .map(|l| l.0)
        .unwrap_or(usize::MAX);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        let response = Problem::payload_too_large(limit).error_response();
        return Ok(req.into_response(response));
    }
    let mut req = req;
    if declared.is_none() {
        let stream = req.take_payload();
        let seen = Rc::new(std::cell::Cell::new(0usize));
        let limited = stream.map(move |chunk| {
            let chunk = chunk?;
            seen.set(seen.get() + chunk.len());
            if seen.get() > limit {
                Err(PayloadError::Overflow)
            } else {
                Ok(chunk)
            }
        });
        req.set_payload(Payload::Stream {
            payload: Box::pin(limited),
        });
    }
    next.call(req).await
}
