//! `GET /metrics` of the web process: the series a dashboard reads, moving with the pages
//! served.

use platform_metrics::scrape::Scrape;
use reqwest::StatusCode;

use crate::helpers::{TestApp, spawn_app};

async fn scrape(app: &TestApp) -> Scrape {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    Scrape::parse(&response.text().await.unwrap()).expect("the Prometheus text format")
}

#[tokio::test]
async fn pages_statuses_cache_and_database_reads_move_with_traffic() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    assert!(
        before.convention_breaks().is_empty(),
        "{:?}",
        before.convention_breaks()
    );
    let home = [("method", "GET"), ("route", "/")];
    let list = [("kind", "post_list")];
    let primary = [("pool", "primary")];

    // The home page twice: a miss read from the primary, then a hit that reads nothing.
    let get = |path: &str| app.client.get(format!("{}{path}", app.address)).send();
    assert_eq!(get("/").await.unwrap().status(), StatusCode::OK);
    let after_miss = scrape(&app).await;
    assert_eq!(get("/").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get("/posts/999999").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let after = scrape(&app).await;

    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        moved(
            "http_requests_total",
            &[home[0], home[1], ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        moved(
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/posts/{id}"),
                ("status", "404")
            ]
        ),
        1.0
    );
    assert_eq!(moved("http_request_duration_seconds_count", &home), 2.0);
    assert_eq!(
        after_miss.get("cache_misses_total", &list) - before.get("cache_misses_total", &list),
        1.0
    );
    assert_eq!(
        after.get("cache_hits_total", &list) - after_miss.get("cache_hits_total", &list),
        1.0
    );
    assert!(after_miss.get("db_reads_total", &primary) > before.get("db_reads_total", &primary));
    assert_eq!(
        after.get("db_reads_total", &primary) - after_miss.get("db_reads_total", &primary),
        1.0,
        "only the missing post, never cached before, reads the database"
    );
}
