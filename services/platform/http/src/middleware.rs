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
    // Field names follow OpenTelemetry's HTTP server conventions; `otel.*` fields name and
    // classify the span when traces are exported.
    let span = tracing::info_span!(
        "http.request",
        otel.name = %req.method(),
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // Continue the caller's trace (the gateway's span) when it sent a `traceparent`.
    platform_telemetry::propagation::set_remote_parent(&span, |name| {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    });
    let traced = match platform_telemetry::propagation::ids(&span) {
        Some((trace_id, span_id)) => {
            span.record("trace_id", trace_id);
            span.record("span_id", span_id);
            true
        }
        None => false,
    };
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let route = res.request().match_pattern();
    // Recording into a span re-renders its fields for the log; with no trace to carry them,
    // the completion line below says the same for less.
    if traced {
        span.record("http.response.status_code", status);
        if let Some(route) = &route {
            let name = format!("{} {route}", res.request().method());
            platform_telemetry::propagation::rename(&span, name);
            span.record("http.route", route.as_str());
        }
    }
    span.in_scope(|| {
        tracing::info!(
            message = "Request completed.",
            status,
            route = route.as_deref().unwrap_or("unmatched"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    #[actix_web::test]
    async fn a_request_continues_the_callers_trace_and_names_its_span_by_route() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(platform_telemetry::otel_layer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);

        let app = test::init_service(
            App::new()
                .route("/posts/{id}", actix_web::web::get().to(HttpResponse::Ok))
                .wrap(from_fn(request_span)),
        )
        .await;
        let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller_span = "00f067aa0ba902b7";
        let req = test::TestRequest::get()
            .uri("/posts/7")
            .insert_header(("traceparent", format!("00-{caller_trace}-{caller_span}-01")))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().contains_key("x-request-id"));

        let spans = exporter.get_finished_spans().unwrap();
        let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
        let span = spans
            .iter()
            .find(|s| s.name == "GET /posts/{id}")
            .unwrap_or_else(|| panic!("the request span among {names:?}"));
        assert_eq!(span.span_context.trace_id().to_string(), caller_trace);
        assert_eq!(span.parent_span_id.to_string(), caller_span);
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
    }
}
