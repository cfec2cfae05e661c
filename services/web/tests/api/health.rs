use platform_config::Secret;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_healthy_app_is_alive_and_ready() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn with_redis_unreachable_readyz_fails_healthz_passes_and_pages_still_render() {
    let port = platform_testing::closed_port();
    let app = spawn_app_with(|s| {
        s.redis.redis_url = Secret::new(format!("redis://127.0.0.1:{port}"));
    })
    .await;

    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("failed")
    );

    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Reading needs no session: the front page renders from the database alone.
    let home = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), 200);
    // What needs a session says so instead of failing obscurely.
    let login = app
        .client
        .get(format!("{}/login", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 503);
    assert!(
        login
            .text()
            .await
            .unwrap()
            .contains("session store is unavailable")
    );
}
