use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, problem, spawn_app, spawn_app_with};

/// Posts a raw body with a content type to `/posts` as a signed-in user.
async fn raw_post(
    app: &crate::helpers::TestApp,
    token: &str,
    content_type: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/posts"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(body);
    if let Some(ct) = content_type {
        request = request.header(CONTENT_TYPE, ct);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn malformed_json_an_unknown_field_a_wrong_shape_and_a_wrong_type_each_have_their_own_problem()
 {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let json = Some("application/json");
    let cases = [
        (
            json,
            r#"{"title": "t", "body": "#,
            StatusCode::BAD_REQUEST,
            "malformed-json",
        ),
        (json, "", StatusCode::BAD_REQUEST, "malformed-json"),
        (
            json,
            r#"{"title": "t", "body": "b", "author": "someone else"}"#,
            StatusCode::BAD_REQUEST,
            "unknown-field",
        ),
        (
            json,
            r#"{"title": "t"}"#,
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            json,
            r#"{"title": 1, "body": "b"}"#,
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            Some("text/plain"),
            r#"{"title": "t", "body": "b"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            None,
            r#"{"title": "t", "body": "b"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
    ];
    for (content_type, body, expected_status, expected_kind) in cases {
        let response = raw_post(&app, &token, content_type, body.to_owned()).await;
        let (status, kind, problem) = problem(response).await;
        assert_eq!(
            (status, kind.as_str()),
            (expected_status, expected_kind),
            "{body}"
        );
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let unknown: serde_json::Value = raw_post(
        &app,
        &token,
        json,
        r#"{"title": "t", "body": "b", "author": "x"}"#.to_owned(),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(unknown["detail"].as_str().unwrap().contains("author"));
    let posts: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(posts, 0);
}

#[tokio::test]
async fn every_json_route_refuses_an_unknown_field_and_writes_nothing() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let post = app.create_post(&token, "Post", "Body").await;
    let cases = [
        (
            Method::POST,
            "/auth/register".to_owned(),
            json!({ "username": "grace", "password": PASSWORD, "admin": true }),
            "admin",
        ),
        (
            Method::POST,
            "/auth/login".to_owned(),
            json!({ "username": "ada", "password": PASSWORD, "remember": true }),
            "remember",
        ),
        (
            Method::PUT,
            format!("/posts/{post}"),
            json!({ "title": "Edited", "body": "Body", "author": "grace" }),
            "author",
        ),
        (
            Method::POST,
            format!("/posts/{post}/comments"),
            json!({ "body": "hi", "status": "published" }),
            "status",
        ),
    ];
    for (method, path, body, field) in cases {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, kind, problem) = problem(response).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::BAD_REQUEST, "unknown-field"),
            "{method} {path}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{method} {path}: {problem}"
        );
    }
    let written: (i64, i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM comments), \
                (SELECT version FROM posts WHERE id = $1)",
    )
    .bind(post)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(written, (1, 0, 1), "no user, comment or edit was written");
}

#[tokio::test]
async fn an_oversized_body_is_413_whether_declared_or_streamed() {
    let app = spawn_app_with(|s| s.http.max_body_bytes = 1024).await;
    let token = app.user("ada").await;
    let big = json!({ "title": "t", "body": "x".repeat(2000) }).to_string();
    let (status, kind, _) =
        problem(raw_post(&app, &token, Some("application/json"), big.clone()).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large")
    );
    // Without Content-Length (chunked), the limit cuts the stream off.
    let address = app.address.trim_start_matches("http://").to_owned();
    let raw = tokio::task::spawn_blocking(move || chunked_post(&address, &token, &big))
        .await
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("application/problem+json"), "{raw}");
    assert!(raw.contains("payload-too-large"), "{raw}");
}

/// Sends `body` to `/api/v1/posts` with `Transfer-Encoding: chunked` over a plain socket (no
/// `Content-Length`), and returns the raw response.
fn chunked_post(address: &str, token: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "POST /api/v1/posts HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(256) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before reading everything; a write error then is fine.
    let _ = stream.write_all(request.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_app().await;
    let (status, kind, _) = problem(app.get("/nothing-here", None).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "not-found")
    );
    let response = app.client.delete(app.url("/posts/1")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD, PUT");
    let (status, kind, _) = problem(response).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
    );
}

#[tokio::test]
async fn with_redis_down_sessions_answer_503_while_anonymous_reads_keep_working() {
    let working = spawn_app().await;
    let token = working.user("ada").await;
    let id = working.create_post(&token, "Post", "Body").await;
    // A second API on the same database whose Redis is unreachable.
    let down = spawn_app_with(|s| {
        s.db = working.db.settings.clone();
        s.redis.redis_url = platform_config::Secret::new(format!(
            "redis://127.0.0.1:{}",
            platform_testing::closed_port()
        ));
    })
    .await;
    assert_eq!(
        down.get(&format!("/posts/{id}"), None).await.status(),
        StatusCode::OK
    );
    assert_eq!(down.get("/posts", None).await.status(), StatusCode::OK);
    let response = down.get("/me", Some(&token)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, kind, _) = problem(response).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let (status, _, _) = problem(down.login("ada", crate::helpers::PASSWORD).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = problem(
        down.post_json("/posts", &json!({"title": "t", "body": "b"}), Some(&token))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
