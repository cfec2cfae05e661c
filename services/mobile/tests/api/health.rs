use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_api_is_alive_and_ready_with_postgres_and_redis_up() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}
