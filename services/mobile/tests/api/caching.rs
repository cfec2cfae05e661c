use std::time::{Duration, SystemTime};

use domain::comments::SentimentLabel;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} is set"))
        .to_str()
        .unwrap()
}

/// A header's HTTP date as a time, so two dates can be ordered.
fn http_date(value: &str) -> SystemTime {
    value
        .parse::<actix_web::http::header::HttpDate>()
        .expect("an HTTP date")
        .into()
}

#[tokio::test]
async fn an_anonymous_post_is_publicly_cacheable_with_strong_validators() {
    let app = spawn_app_with(|s| s.cache.cache_max_age_secs = 42).await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let response = app.get(&format!("/posts/{id}"), None).await;
    let headers = response.headers();
    assert_eq!(header(headers, "cache-control"), "public, max-age=42");
    let etag = header(headers, "etag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    assert!(header(headers, "last-modified").ends_with(" GMT"));
    assert!(headers.contains_key("expires"));
    assert_eq!(header(headers, "vary"), "Authorization, Cookie");
}

#[tokio::test]
async fn a_conditional_get_is_304_until_an_edit_changes_the_etag() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let path = format!("/posts/{id}");
    let first = app.get(&path, None).await;
    let etag = header(first.headers(), "etag").to_owned();
    let last_modified = header(first.headers(), "last-modified").to_owned();

    // A 304 carries the headers the 200 would have, so a cache can refresh its stored copy.
    for cached in [
        app.get_if_none_match(&path, &etag).await,
        app.get_if_modified_since(&path, &last_modified).await,
    ] {
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        let headers = cached.headers();
        assert_eq!(header(headers, "etag"), etag);
        assert_eq!(header(headers, "vary"), "Authorization, Cookie");
        assert!(header(headers, "cache-control").starts_with("public, max-age="));
        assert_eq!(header(headers, "last-modified"), last_modified);
        assert!(
            cached.bytes().await.unwrap().is_empty(),
            "a 304 has no body"
        );
    }

    let edit = json!({ "title": "Edited", "body": "Body" });
    let edited = app.put_json(&path, &edit, Some(&token)).await;
    assert_eq!(edited.status(), StatusCode::OK);
    let after_edit = header(edited.headers(), "etag").to_owned();
    assert_ne!(after_edit, etag);

    let stale = app.get_if_none_match(&path, &etag).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(header(stale.headers(), "etag"), after_edit);
    assert_eq!(
        stale.json::<serde_json::Value>().await.unwrap()["title"],
        "Edited"
    );
    let current = app.get_if_none_match(&path, &after_edit).await;
    assert_eq!(current.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn the_listing_revalidates_until_a_post_arrives_or_a_comment_is_published() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "One", "Body").await;
    let first = app.get("/posts", None).await;
    assert!(header(first.headers(), "cache-control").starts_with("public, max-age="));
    assert!(first.headers().contains_key("last-modified"));
    let etag = header(first.headers(), "etag").to_owned();
    assert_eq!(
        app.get_if_none_match("/posts", &etag).await.status(),
        StatusCode::NOT_MODIFIED
    );

    app.create_post(&token, "Two", "Body").await;
    let after_post = app.get_if_none_match("/posts", &etag).await;
    assert_eq!(after_post.status(), StatusCode::OK);
    let etag = header(after_post.headers(), "etag").to_owned();

    let comment = app.comment(&token, id, "hi").await;
    assert_eq!(
        app.get_if_none_match("/posts", &etag).await.status(),
        StatusCode::NOT_MODIFIED,
        "a pending comment changes nothing visible"
    );
    app.publish_comment(id, comment).await;
    assert_eq!(
        app.get_if_none_match("/posts", &etag).await.status(),
        StatusCode::OK,
        "the comment count changed"
    );
}

#[tokio::test]
async fn the_listing_answers_if_modified_since_until_a_comment_on_it_is_published() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "One", "Body").await;
    let first = app.get("/posts", None).await;
    let last_modified = header(first.headers(), "last-modified").to_owned();
    let cached = app.get_if_modified_since("/posts", &last_modified).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert!(
        cached.bytes().await.unwrap().is_empty(),
        "a 304 has no body"
    );

    // HTTP dates have whole seconds: publish in a later one than the date the client holds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let comment = app.comment(&token, id, "hi").await;
    assert_eq!(
        app.get_if_modified_since("/posts", &last_modified)
            .await
            .status(),
        StatusCode::NOT_MODIFIED,
        "a pending comment changes nothing visible"
    );
    app.publish_comment(id, comment).await;
    let fresh = app.get_if_modified_since("/posts", &last_modified).await;
    assert_eq!(
        fresh.status(),
        StatusCode::OK,
        "the comment count changed, so the page was modified"
    );
    let newer = header(fresh.headers(), "last-modified").to_owned();
    assert!(http_date(&newer) > http_date(&last_modified), "{newer}");
    let page: serde_json::Value = fresh.json().await.unwrap();
    assert_eq!(page["items"][0]["comment_count"], 1);
    assert_eq!(
        app.get_if_modified_since("/posts", &newer).await.status(),
        StatusCode::NOT_MODIFIED
    );
}

#[tokio::test]
async fn authenticated_reads_are_private_and_account_replies_are_never_stored() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    for path in [
        format!("/posts/{id}"),
        "/posts".to_owned(),
        format!("/posts/{id}/comments"),
    ] {
        let response = app.get(&path, Some(&token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(response.headers(), "cache-control"),
            "private, no-cache",
            "{path}"
        );
        assert_eq!(header(response.headers(), "vary"), "Authorization, Cookie");
        let anonymous = app.get(&path, None).await;
        assert!(
            header(anonymous.headers(), "cache-control").starts_with("public"),
            "{path}"
        );
    }
    let me = app.get("/me", Some(&token)).await;
    assert_eq!(header(me.headers(), "cache-control"), "no-store");
    assert_eq!(header(me.headers(), "vary"), "Authorization, Cookie");
    assert!(!me.headers().contains_key("etag"));
}

#[tokio::test]
async fn the_comment_list_answers_304_while_nothing_is_published() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let path = format!("/posts/{id}/comments");
    let first = app.get(&path, None).await;
    let etag = header(first.headers(), "etag").to_owned();
    assert_eq!(
        app.get_if_none_match(&path, &etag).await.status(),
        StatusCode::NOT_MODIFIED
    );
}

#[tokio::test]
async fn the_comment_list_answers_if_modified_since_until_a_comment_is_published_or_scored() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let path = format!("/posts/{id}/comments");
    let empty = app.get(&path, None).await;
    let since_created = header(empty.headers(), "last-modified").to_owned();
    let cached = app.get_if_modified_since(&path, &since_created).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert!(
        cached.bytes().await.unwrap().is_empty(),
        "a 304 has no body"
    );

    // Each change lands in a later second than the date the client holds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let comment = app.comment(&token, id, "Lovely").await;
    app.publish_comment(id, comment).await;
    let published = app.get_if_modified_since(&path, &since_created).await;
    assert_eq!(
        published.status(),
        StatusCode::OK,
        "a comment was published"
    );
    let since_published = header(published.headers(), "last-modified").to_owned();
    assert!(http_date(&since_published) > http_date(&since_created));
    let list: serde_json::Value = published.json().await.unwrap();
    assert_eq!(list["items"][0]["id"], comment);
    assert!(list["items"][0]["sentiment"].is_null());
    assert_eq!(
        app.get_if_modified_since(&path, &since_published)
            .await
            .status(),
        StatusCode::NOT_MODIFIED
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.score_comment(id, comment, 0.6, SentimentLabel::Positive)
        .await;
    let scored = app.get_if_modified_since(&path, &since_published).await;
    assert_eq!(scored.status(), StatusCode::OK, "the comment was scored");
    let list: serde_json::Value = scored.json().await.unwrap();
    assert_eq!(list["items"][0]["sentiment"]["label"], "positive");
}

#[tokio::test]
async fn head_answers_with_the_validators_and_no_body() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let path = format!("/posts/{id}");
    let etag = header(app.get(&path, None).await.headers(), "etag").to_owned();
    let head = app.client.head(app.url(&path)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(head.headers(), "etag"), etag);
    assert!(head.bytes().await.unwrap().is_empty());
    let conditional = app
        .client
        .head(app.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn an_edit_with_a_stale_if_match_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let id = app.create_post(&token, "Post", "Body").await;
    let path = format!("/posts/{id}");
    let original = header(app.get(&path, None).await.headers(), "etag").to_owned();
    let put = |etag: String, title: &'static str| {
        app.client
            .put(app.url(&path))
            .bearer_auth(&token)
            .header("if-match", etag)
            .json(&json!({ "title": title, "body": "Body" }))
            .send()
    };

    let first = put(original.clone(), "First edit").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let current = header(first.headers(), "etag").to_owned();

    let stale = put(original, "Lost update").await.unwrap();
    let (status, kind, _) = crate::helpers::problem(stale).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::PRECONDITION_FAILED, "precondition-failed")
    );
    let post: serde_json::Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(post["title"], "First edit", "the stale edit wrote nothing");

    assert_eq!(
        put(current, "Second edit").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        put("*".into(), "Third edit").await.unwrap().status(),
        StatusCode::OK
    );
}
