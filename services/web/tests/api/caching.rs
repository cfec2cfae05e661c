//! HTTP caching of the pages anyone can read, and of the stylesheet.

use domain::{PostBody, PostTitle, UserId, posts};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} is set"))
        .to_str()
        .unwrap()
}

async fn conditional(app: &TestApp, path: &str, etag: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap()
}

/// Publishes a post by `ada` (created here) straight through the domain; returns its path and
/// the author's id.
async fn seed_post(app: &TestApp) -> (String, UserId) {
    let mut ada = app.registered_user("ada", "correct horse battery").await;
    let created = ada
        .submit(
            "/posts/new",
            "/posts",
            &[("title", "Hello"), ("body", "Body")],
        )
        .await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let author = sqlx::query_scalar("SELECT id FROM users WHERE username = 'ada'")
        .fetch_one(&app.db.pool)
        .await
        .map(UserId)
        .unwrap();
    (location, author)
}

#[tokio::test]
async fn anonymous_pages_are_public_with_validators_and_answer_304_until_they_change() {
    // The edit below goes straight to the database, around the application cache (which has its
    // own tests); with the cache on, the page would rightly stay as cached until its TTL.
    let app = spawn_app_with(|s| {
        s.cache.cache_max_age_secs = 42;
        s.app_cache.cache_enabled = false;
    })
    .await;
    let (location, author) = seed_post(&app).await;
    let mut reader = app.visitor();

    for path in ["/", location.as_str()] {
        let page = reader.get(path).await;
        assert_eq!(page.status(), StatusCode::OK);
        let headers = page.headers();
        assert_eq!(
            header(headers, "cache-control"),
            "public, max-age=42",
            "{path}"
        );
        assert_eq!(header(headers, "vary"), "Authorization, Cookie");
        assert!(header(headers, "last-modified").ends_with(" GMT"));
        let etag = header(headers, "etag").to_owned();
        assert!(etag.starts_with('"'), "a strong ETag");
        let cached = conditional(&app, path, &etag).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(cached.bytes().await.unwrap().is_empty());
    }

    let post_etag = header(reader.get(&location).await.headers(), "etag").to_owned();
    let home_etag = header(reader.get("/").await.headers(), "etag").to_owned();
    let id = location.rsplit('/').next().unwrap().parse().unwrap();
    posts::update(
        &app.db.pool,
        domain::PostId(id),
        author,
        &PostTitle::parse("Edited").unwrap(),
        &PostBody::parse("Body").unwrap(),
    )
    .await
    .unwrap();
    for (path, stale) in [(location.as_str(), post_etag), ("/", home_etag)] {
        let fresh = conditional(&app, path, &stale).await;
        assert_eq!(fresh.status(), StatusCode::OK, "{path}");
        assert_ne!(header(fresh.headers(), "etag"), stale);
        assert!(fresh.text().await.unwrap().contains("Edited"));
    }
}

#[tokio::test]
async fn signed_in_pages_are_never_stored_and_carry_no_validators() {
    let app = spawn_app().await;
    let (location, _) = seed_post(&app).await;
    let mut grace = app.registered_user("grace", "correct horse battery").await;
    for path in ["/", location.as_str()] {
        let page = grace.get(path).await;
        assert_eq!(
            header(page.headers(), "cache-control"),
            "no-store",
            "{path}"
        );
        assert_eq!(header(page.headers(), "vary"), "Authorization, Cookie");
        assert!(!page.headers().contains_key("etag"));
        assert!(page.text().await.unwrap().contains("Signed in as"));
    }
}

#[tokio::test]
async fn the_stylesheet_is_served_under_its_content_hash_and_cached_forever() {
    let app = spawn_app().await;
    let home = app.visitor().get("/").await.text().await.unwrap();
    let start = home
        .find("/static/app.")
        .expect("the page links the stylesheet");
    let path: String = home[start..].chars().take_while(|c| *c != '"').collect();
    let hash = path
        .strip_prefix("/static/app.")
        .and_then(|p| p.strip_suffix(".css"))
        .unwrap();
    assert_eq!(hash.len(), 16);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!home.contains("<style>"), "no inline styles");

    let css = app
        .client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), StatusCode::OK);
    assert_eq!(
        header(css.headers(), "content-type"),
        "text/css; charset=utf-8"
    );
    assert_eq!(
        header(css.headers(), "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(css.text().await.unwrap().contains("font-family"));

    for stale in [
        "/static/app.0000000000000000.css",
        "/static/app.css",
        "/static/other.css",
    ] {
        let response = app
            .client
            .get(format!("{}{stale}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{stale}");
    }
}
