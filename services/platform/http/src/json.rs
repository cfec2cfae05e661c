//! JSON request bodies and query strings for JSON APIs: bounded, and every way they can be
//! wrong answered with its own problem type, so clients can tell a bug in their encoder
//! (malformed JSON) from a stale client (an unknown field) from a wrong header (415).

use actix_web::error::{InternalError, JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{ResponseError, web};

use crate::Problem;

/// The problem for a JSON body that could not be read.
pub fn body_problem(err: &JsonPayloadError) -> Problem {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => Problem::payload_too_large(*limit),
        JsonPayloadError::ContentType => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .with_detail("The body must be JSON, sent with `Content-Type: application/json`."),
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            let message = e.to_string();
            if message.starts_with("unknown field") {
                Problem::new(StatusCode::BAD_REQUEST, "unknown-field", "Unknown field").with_detail(
                    format!("The body has a field this API does not accept: {message}."),
                )
            } else {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-body", "Invalid body").with_detail(
                    format!("The body does not have the expected shape: {message}."),
                )
            }
        }
        JsonPayloadError::Deserialize(e) => {
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
                .with_detail(format!("The body is not valid JSON: {e}."))
        }
        // The body-limit middleware cut a streamed (chunked) body off.
        JsonPayloadError::Payload(actix_web::error::PayloadError::Overflow) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
        )
        .with_detail("The body is larger than this service accepts."),
        other => Problem::new(StatusCode::BAD_REQUEST, "invalid-body", "Invalid body")
            .with_detail(format!("The body could not be read: {other}.")),
    }
}

/// JSON bodies of at most `limit` bytes, failures answered as problems.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req| {
            let response = body_problem(&err).error_response();
            InternalError::from_response(err, response).into()
        })
}

/// Query strings, failures answered as `invalid-query` problems.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let detail = match &err {
            QueryPayloadError::Deserialize(e) => format!("The query string is invalid: {e}."),
            other => format!("The query string is invalid: {other}."),
        };
        let response = Problem::new(StatusCode::BAD_REQUEST, "invalid-query", "Invalid query")
            .with_detail(detail)
            .error_response();
        InternalError::from_response(err, response).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, HttpResponse, test};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
    }

    async fn kind_of(content_type: Option<&str>, body: &str) -> (u16, String) {
        let app = test::init_service(App::new().app_data(json_config(64)).route(
            "/",
            web::post().to(|_: web::Json<Body>| async { HttpResponse::NoContent().finish() }),
        ))
        .await;
        let mut req = test::TestRequest::post()
            .uri("/")
            .set_payload(body.to_owned());
        if let Some(ct) = content_type {
            req = req.insert_header(("content-type", ct));
        }
        let res = test::call_service(&app, req.to_request()).await;
        let status = res.status().as_u16();
        if status == 204 {
            return (status, String::new());
        }
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            crate::problem::CONTENT_TYPE
        );
        let problem: serde_json::Value = test::read_body_json(res).await;
        (
            status,
            problem["type"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned(),
        )
    }

    #[actix_web::test]
    async fn each_way_a_body_can_be_wrong_has_its_own_problem_type() {
        let json = Some("application/json");
        assert_eq!(kind_of(json, r#"{"name":"a"}"#).await.0, 204);
        assert_eq!(
            kind_of(json, r#"{"name":"#).await,
            (400, "malformed-json".into())
        );
        assert_eq!(
            kind_of(json, r#"{"name":"a","x":1}"#).await,
            (400, "unknown-field".into())
        );
        assert_eq!(
            kind_of(json, r#"{"name":1}"#).await,
            (400, "invalid-body".into())
        );
        assert_eq!(
            kind_of(Some("text/plain"), r#"{"name":"a"}"#).await,
            (415, "unsupported-media-type".into())
        );
        assert_eq!(
            kind_of(None, r#"{"name":"a"}"#).await,
            (415, "unsupported-media-type".into())
        );
        let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(100));
        assert_eq!(kind_of(json, &big).await, (413, "payload-too-large".into()));
    }
}
