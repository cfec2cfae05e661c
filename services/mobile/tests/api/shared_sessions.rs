//! One session, two front ends: the web's `sid` cookie and the API's bearer token are the same
//! Redis session.

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, COOKIE};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, spawn_app, spawn_web};

#[tokio::test]
async fn a_web_logins_cookie_works_as_an_api_bearer_token() {
    let app = spawn_app().await;
    let web = spawn_web(&app).await;
    app.register("ada", PASSWORD).await;
    let sid = web.login("ada", PASSWORD).await;

    let me = app.get("/me", Some(&sid)).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.json::<Value>().await.unwrap()["username"], "ada");
    // The cookie itself, sent to the API as a browser would, works too.
    let by_cookie = app
        .client
        .get(app.url("/me"))
        .header(COOKIE, format!("sid={sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);
    let created = app
        .post_json(
            "/posts",
            &json!({ "title": "From the web session", "body": "b" }),
            Some(&sid),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_api_token_works_as_the_web_session_cookie() {
    let app = spawn_app().await;
    let web = spawn_web(&app).await;
    let token = app.user("ada").await;
    let home = web.page("/", &token).await;
    assert_eq!(home.status(), StatusCode::OK);
    assert!(
        home.text()
            .await
            .unwrap()
            .contains("Signed in as <strong>ada</strong>")
    );
    let form = web.page("/posts/new", &token).await;
    assert_eq!(
        form.status(),
        StatusCode::OK,
        "the web serves the signed-in form"
    );
}

#[tokio::test]
async fn logging_out_on_the_api_ends_the_web_session() {
    let app = spawn_app().await;
    let web = spawn_web(&app).await;
    app.register("ada", PASSWORD).await;
    let sid = web.login("ada", PASSWORD).await;
    let response = app
        .client
        .post(app.url("/auth/logout"))
        .header(AUTHORIZATION, format!("Bearer {sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let home = web.page("/", &sid).await.text().await.unwrap();
    assert!(!home.contains("Signed in as"));
    let form = web.page("/posts/new", &sid).await;
    assert_eq!(form.status(), StatusCode::SEE_OTHER, "sent to log in again");
    assert_eq!(form.headers()["location"], "/login");
}

#[tokio::test]
async fn logging_out_on_the_web_ends_the_api_token() {
    let app = spawn_app().await;
    let web = spawn_web(&app).await;
    let token = app.user("ada").await;
    assert_eq!(app.get("/me", Some(&token)).await.status(), StatusCode::OK);
    web.logout(&token).await;
    assert_eq!(
        app.get("/me", Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}
