//! HTTP caching of the pages anyone can read, and of the stylesheet.

use std::time::Duration;

use domain::{CommentBody, PostBody, PostTitle, UserId, comments, posts};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use uuid::Uuid;

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

async fn if_modified_since(app: &TestApp, path: &str, date: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .header("if-modified-since", date)
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
async fn anonymous_pages_answer_if_modified_since_until_a_comment_is_published() {
    // The comment is published straight through the domain, as the spam worker does, around
    // the application cache (which has its own tests).
    let app = spawn_app_with(|s| s.app_cache.cache_enabled = false).await;
    let (location, author) = seed_post(&app).await;
    let id = domain::PostId(location.rsplit('/').next().unwrap().parse().unwrap());
    let mut reader = app.visitor();
    let mut dates = Vec::new();
    for path in ["/", location.as_str()] {
        let page = reader.get(path).await;
        let last_modified = header(page.headers(), "last-modified").to_owned();
        let cached = if_modified_since(&app, path, &last_modified).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(cached.bytes().await.unwrap().is_empty(), "{path}");
        dates.push((path, last_modified));
    }

    // HTTP dates have whole seconds: publish in a later one than the dates the client holds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let comment = comments::submit(
        &app.db.pool,
        id,
        author,
        &CommentBody::parse("A published comment").unwrap(),
    )
    .await
    .unwrap();
    for (path, last_modified) in &dates {
        assert_eq!(
            if_modified_since(&app, path, last_modified).await.status(),
            StatusCode::NOT_MODIFIED,
            "a pending comment changes nothing visible on {path}"
        );
    }
    comments::apply_spam_verdict(&app.db.pool, "spam", Uuid::new_v4(), comment, false, 0.0)
        .await
        .unwrap();
    for (path, last_modified) in &dates {
        let fresh = if_modified_since(&app, path, last_modified).await;
        assert_eq!(fresh.status(), StatusCode::OK, "{path}");
        assert_ne!(header(fresh.headers(), "last-modified"), last_modified);
        let html = fresh.text().await.unwrap();
        let shown = if *path == "/" {
            "1 comments"
        } else {
            "A published comment"
        };
        assert!(html.contains(shown), "{path} shows the comment");
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
