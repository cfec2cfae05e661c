//! `GET /metrics` of the API process: the series a dashboard reads, moving with the requests
//! that should move them.

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
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::parse(&response.text().await.unwrap()).expect("the Prometheus text format")
}

const SHOW: &[(&str, &str)] = &[("method", "GET"), ("route", "/api/v1/posts/{id}")];
const LIST_KIND: &[(&str, &str)] = &[("kind", "post_list")];
const PRIMARY: &[(&str, &str)] = &[("pool", "primary")];

fn with<'a>(labels: &[(&'a str, &'a str)], more: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut all = labels.to_vec();
    all.push(more);
    all
}

#[tokio::test]
async fn requests_statuses_latency_cache_and_database_reads_move_with_traffic() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let before = scrape(&app).await;
    assert!(
        before.convention_breaks().is_empty(),
        "{:?}",
        before.convention_breaks()
    );

    // Two reads of a post and one of a missing post, by route pattern and status.
    for path in [
        format!("/posts/{id}"),
        format!("/posts/{id}"),
        "/posts/999999".into(),
    ] {
        app.get(&path, None).await;
    }
    // A page of posts: a miss read from the primary, then a hit that reads nothing.
    assert_eq!(
        app.get("/posts?limit=5", None).await.status(),
        StatusCode::OK
    );
    let after_miss = scrape(&app).await;
    assert_eq!(
        app.get("/posts?limit=5", None).await.status(),
        StatusCode::OK
    );
    let after = scrape(&app).await;

    let moved =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        moved("http_requests_total", &with(SHOW, ("status", "200"))),
        2.0
    );
    assert_eq!(
        moved("http_requests_total", &with(SHOW, ("status", "404"))),
        1.0
    );
    assert_eq!(moved("http_request_duration_seconds_count", SHOW), 3.0);
    assert!(moved("http_request_duration_seconds_sum", SHOW) > 0.0);
    assert_eq!(
        after
            .types
            .get("http_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    assert_eq!(
        after_miss.get("cache_misses_total", LIST_KIND)
            - before.get("cache_misses_total", LIST_KIND),
        1.0
    );
    assert_eq!(
        after.get("cache_hits_total", LIST_KIND) - after_miss.get("cache_hits_total", LIST_KIND),
        1.0,
        "the second page is served from the cache"
    );
    assert!(
        after_miss.get("db_reads_total", PRIMARY) > before.get("db_reads_total", PRIMARY),
        "a miss reads the database"
    );
    assert_eq!(
        after.get("db_reads_total", PRIMARY),
        after_miss.get("db_reads_total", PRIMARY),
        "a hit reads nothing"
    );
    assert!(
        moved("cache_hits_total", &[("kind", "post")])
            + moved("cache_misses_total", &[("kind", "post")])
            >= 3.0
    );
    assert_eq!(after.get("cache_circuit_closed", &[]), 1.0);
}
