use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, problem, spawn_app};

#[tokio::test]
async fn registering_creates_an_account_and_a_taken_name_is_a_conflict() {
    let app = spawn_app().await;
    let response = app.register("ada", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["username"], "ada");
    assert!(body["id"].as_i64().unwrap() > 0);

    let (status, kind, _) = problem(app.register("ADA", PASSWORD).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::CONFLICT, "username-taken")
    );
}

#[tokio::test]
async fn invalid_registrations_name_every_bad_field_and_store_nothing() {
    let app = spawn_app().await;
    let (status, kind, body) = problem(app.register("a", "short").await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation")
    );
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["username", "password"]);
    let (_, kind, body) = problem(app.register("   ", PASSWORD).await).await;
    assert_eq!(kind, "validation");
    assert_eq!(
        body["errors"][0]["message"],
        "The username must be at least 3 characters."
    );
    let (_, kind, _) = problem(app.register("ada", &"p".repeat(129)).await).await;
    assert_eq!(kind, "validation");
    let (status, kind, body) = problem(app.register(&"a".repeat(33), PASSWORD).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation")
    );
    assert_eq!(body["errors"][0]["field"], "username");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn logging_in_returns_a_token_that_identifies_the_caller() {
    let app = spawn_app().await;
    app.register("ada", PASSWORD).await;
    let response = app.login("ada", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(token.len(), 43, "a 256-bit session id");
    let expires_at = body["expires_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
            .unwrap()
            > time::OffsetDateTime::now_utc(),
        "{expires_at}"
    );

    let me = app.get("/me", Some(token)).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.headers()["cache-control"], "no-store");
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["username"], "ada");
    assert!(me["id"].as_i64().is_some());
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_401() {
    let app = spawn_app().await;
    app.register("ada", PASSWORD).await;
    for (username, password) in [("ada", "wrong password"), ("nobody", PASSWORD)] {
        let response = app.login(username, password).await;
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="scaleout""#
        );
        let (status, kind, body) = problem(response).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid-credentials")
        );
        assert_eq!(body["detail"], "Invalid username or password.");
    }
    let (status, kind, _) = problem(app.login("", "").await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation")
    );
}

#[tokio::test]
async fn logins_are_rate_limited_per_account() {
    let app = crate::helpers::spawn_app_with(|s| s.login_attempts_per_account = 2).await;
    app.register("ada", PASSWORD).await;
    app.login("ada", "wrong password").await;
    app.login("ada", "wrong password").await;
    let response = app.login("ada", PASSWORD).await;
    assert!(response.headers().contains_key("retry-after"));
    let (status, kind, _) = problem(response).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too-many-requests")
    );
}

#[tokio::test]
async fn me_without_a_token_or_with_a_bad_one_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let response = app.get("/me", None).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="scaleout""#
    );
    let (status, kind, _) = problem(response).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    for token in ["garbage", &"A".repeat(43)] {
        let response = app.get("/me", Some(token)).await;
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="scaleout", error="invalid_token""#
        );
        assert_eq!(problem(response).await.1, "unauthorized");
    }
}

#[tokio::test]
async fn logging_out_ends_the_token_and_needs_one() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let response = app
        .post_json("/auth/logout", &json!({}), Some(&token))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        app.get("/me", Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let again = app
        .post_json("/auth/logout", &json!({}), Some(&token))
        .await;
    assert_eq!(problem(again).await.1, "unauthorized");
}
