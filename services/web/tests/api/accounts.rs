use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_registered_user_can_log_out_and_back_in() {
    let app = spawn_app().await;
    let mut visitor = app.registered_user("ada", "correct horse battery").await;
    let home = visitor.get("/").await.text().await.unwrap();
    assert!(home.contains("Signed in as <strong>ada</strong>"));

    let logout = visitor.submit("/", "/logout", &[]).await;
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    assert!(visitor.sid.is_none(), "the cookie is cleared");

    let login = visitor
        .submit(
            "/login",
            "/login",
            &[("username", "ada"), ("password", "correct horse battery")],
        )
        .await;
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let home = visitor.get("/").await.text().await.unwrap();
    assert!(home.contains("Signed in as <strong>ada</strong>"));
}

#[tokio::test]
async fn login_rotates_the_session_id_and_the_pre_login_id_is_rejected() {
    let app = spawn_app().await;
    app.registered_user("grace", "correct horse battery").await;
    let mut visitor = app.visitor();
    visitor.get("/login").await;
    let before = visitor
        .sid
        .clone()
        .expect("the login form starts a session");

    let login = visitor
        .submit(
            "/login",
            "/login",
            &[("username", "grace"), ("password", "correct horse battery")],
        )
        .await;
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let after = visitor.sid.clone().unwrap();
    assert_ne!(before, after);

    let mut attacker = app.visitor();
    attacker.sid = Some(before);
    let page = attacker.get("/posts/new").await;
    assert_eq!(
        page.status(),
        StatusCode::SEE_OTHER,
        "the old id is not signed in"
    );
    assert_eq!(page.headers()["location"], "/login");
}

#[tokio::test]
async fn after_logout_the_session_id_is_rejected_as_cookie_and_as_bearer_token() {
    let app = spawn_app().await;
    let mut visitor = app.registered_user("linus", "correct horse battery").await;
    let sid = visitor.sid.clone().unwrap();
    assert_eq!(visitor.get("/posts/new").await.status(), StatusCode::OK);

    visitor.submit("/", "/logout", &[]).await;

    let mut replay = app.visitor();
    replay.sid = Some(sid.clone());
    assert_eq!(
        replay.get("/posts/new").await.status(),
        StatusCode::SEE_OTHER
    );
    let bearer = app
        .client
        .get(format!("{}/posts/new", app.address))
        .header(AUTHORIZATION, format!("Bearer {sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_duplicate_username_gets_a_clear_error_whatever_its_case() {
    let app = spawn_app().await;
    app.registered_user("margaret", "correct horse battery")
        .await;
    let mut visitor = app.visitor();
    let response = visitor
        .submit(
            "/register",
            "/register",
            &[("username", "Margaret"), ("password", "another password")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(response.text().await.unwrap().contains("already taken"));
}

#[tokio::test]
async fn invalid_registration_input_is_explained_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut visitor = app.visitor();
    let response = visitor
        .submit(
            "/register",
            "/register",
            &[("username", "ok_name"), ("password", "short")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("at least 8 characters")
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.registered_user("barbara", "correct horse battery")
        .await;
    let mut visitor = app.visitor();
    let wrong_password = visitor
        .submit(
            "/login",
            "/login",
            &[("username", "barbara"), ("password", "wrong password!")],
        )
        .await;
    let status_wrong = wrong_password.status();
    let body_wrong = wrong_password.text().await.unwrap();
    let unknown = visitor
        .submit(
            "/login",
            "/login",
            &[("username", "nobody"), ("password", "wrong password!")],
        )
        .await;
    assert_eq!(status_wrong, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), status_wrong);
    let body_unknown = unknown.text().await.unwrap();
    assert!(body_wrong.contains("Invalid username or password."));
    assert!(body_unknown.contains("Invalid username or password."));
}

#[tokio::test]
async fn logins_are_rate_limited_per_account() {
    let app = crate::helpers::spawn_app_with(|s| s.login_attempts_per_account = 2).await;
    app.registered_user("edsger", "correct horse battery").await;
    let mut visitor = app.visitor();
    for _ in 0..2 {
        let r = visitor
            .submit(
                "/login",
                "/login",
                &[("username", "edsger"), ("password", "wrong password!")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = visitor
        .submit(
            "/login",
            "/login",
            &[
                ("username", "EDSGER"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
}
