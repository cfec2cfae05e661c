use reqwest::StatusCode;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_form_without_a_valid_csrf_token_is_refused() {
    let app = spawn_app().await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    for token in [None, Some("forged-token")] {
        let mut fields = vec![("title", "t"), ("body", "b")];
        if let Some(token) = token {
            fields.push(("csrf_token", token));
        }
        let response = author.post("/posts", &fields).await;
        let expected = if token.is_some() {
            StatusCode::FORBIDDEN
        } else {
            // A form without the field at all cannot even be read.
            StatusCode::BAD_REQUEST
        };
        assert_eq!(response.status(), expected);
    }
    // A login form posted with a token from nowhere is refused too.
    let response = app
        .visitor()
        .post(
            "/login",
            &[
                ("csrf_token", "x"),
                ("username", "ada"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let posts: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(posts, 0);
}

#[tokio::test]
async fn a_script_in_a_title_is_rendered_as_text() {
    let app = spawn_app().await;
    let mut author = app
        .registered_user("mallory", "correct horse battery")
        .await;
    let created = author
        .submit(
            "/posts/new",
            "/posts",
            &[
                ("title", "<script>alert(1)</script>"),
                ("body", "<b>hi</b>"),
            ],
        )
        .await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    for path in ["/", location.as_str()] {
        let html = author.get(path).await.text().await.unwrap();
        assert!(!html.contains("<script>alert(1)</script>"), "{path}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{path}"
        );
    }
    let page = author.get(&location).await.text().await.unwrap();
    assert!(!page.contains("<b>hi</b>"), "bodies are escaped too");
    assert!(page.contains("&#60;b&#62;hi&#60;/b&#62;"));
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_nothing_is_stored() {
    let app = spawn_app_with(|s| s.http.max_body_bytes = 1024).await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    let big = "x".repeat(4096);
    let response = author
        .submit("/posts/new", "/posts", &[("title", "big"), ("body", &big)])
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let posts: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(posts, 0);
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_same_site_lax() {
    let app = spawn_app().await;
    let response = app.visitor().get("/login").await;
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("sid="));
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    assert!(cookie.contains("Path=/"));
    assert!(
        !cookie.contains("Secure"),
        "Secure is off unless configured"
    );
    let app = spawn_app_with(|s| s.session.session_cookie_secure = true).await;
    let response = app.visitor().get("/login").await;
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Secure")
    );
}

#[tokio::test]
async fn pages_carrying_a_csrf_token_are_never_cached() {
    let app = spawn_app().await;
    let response = app.visitor().get("/login").await;
    assert_eq!(response.headers()["cache-control"], "no-store");
}
