use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn a_created_post_is_201_with_its_location_and_reads_back() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let response = app
        .post_json(
            "/posts",
            &json!({ "title": "  Hello  ", "body": "First line.\nSecond." }),
            Some(&token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(location, format!("/api/v1/posts/{id}"));
    assert_eq!(created["title"], "Hello", "input is trimmed");

    let response = app
        .client
        .get(format!("{}{location}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let post: Value = response.json().await.unwrap();
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = post
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    };
    assert_eq!(
        keys,
        [
            "author",
            "body",
            "created_at",
            "id",
            "title",
            "updated_at",
            "views"
        ]
    );
    assert_eq!(post["author"], "ada");
    assert_eq!(post["body"], "First line.\nSecond.");
    assert_eq!(post["views"], 0);
}

#[tokio::test]
async fn writing_a_post_needs_a_token_and_valid_fields() {
    let app = spawn_app().await;
    let body = json!({ "title": "t", "body": "b" });
    let response = app.post_json("/posts", &body, None).await;
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(problem(response).await.1, "unauthorized");

    let token = app.user("ada").await;
    let invalid = json!({ "title": "", "body": "x".repeat(20_001) });
    let (status, kind, body) = problem(app.post_json("/posts", &invalid, Some(&token)).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation")
    );
    assert_eq!(body["errors"][0]["field"], "title");
    assert_eq!(body["errors"][0]["message"], "The title must not be empty.");
    assert_eq!(body["errors"][1]["field"], "body");
    let multiline_title = json!({ "title": "a\nb", "body": "b" });
    let (_, kind, _) = problem(
        app.post_json("/posts", &multiline_title, Some(&token))
            .await,
    )
    .await;
    assert_eq!(kind, "validation");
    let long_title = json!({ "title": "t".repeat(201), "body": "b" });
    let (status, kind, body) =
        problem(app.post_json("/posts", &long_title, Some(&token)).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation")
    );
    assert_eq!(body["errors"][0]["field"], "title");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
    let posts: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(posts, 0, "nothing invalid is stored");
}

#[tokio::test]
async fn a_missing_or_malformed_post_id_is_a_404_problem() {
    let app = spawn_app().await;
    for path in [
        "/posts/424242",
        "/posts/abc",
        "/posts/-1",
        "/posts/424242/comments",
    ] {
        let (status, kind, _) = problem(app.get(path, None).await).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::NOT_FOUND, "not-found"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn only_the_author_may_edit_a_post() {
    let app = spawn_app().await;
    let ada = app.user("ada").await;
    let grace = app.user("grace").await;
    let id = app.create_post(&ada, "Original", "Body").await;
    let edit = json!({ "title": "Edited", "body": "New body" });

    let (status, kind, _) = problem(
        app.put_json(&format!("/posts/{id}"), &edit, Some(&grace))
            .await,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, kind, _) = problem(app.put_json(&format!("/posts/{id}"), &edit, None).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _, _) = problem(app.put_json("/posts/424242", &edit, Some(&ada)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let bad = json!({ "title": "", "body": "b" });
    let (status, _, _) = problem(
        app.put_json(&format!("/posts/{id}"), &bad, Some(&ada))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let unchanged: Value = app
        .get(&format!("/posts/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        unchanged["title"], "Original",
        "refused edits change nothing"
    );

    let response = app
        .put_json(&format!("/posts/{id}"), &edit, Some(&ada))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("etag"));
    let edited: Value = response.json().await.unwrap();
    assert_eq!(edited["title"], "Edited");
    assert_eq!(edited["body"], "New body");
    assert_ne!(edited["updated_at"], edited["created_at"]);
}

#[tokio::test]
async fn the_listing_is_newest_first_with_counts_and_a_cursor() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(app.create_post(&token, &format!("post {n}"), "body").await);
        }
        ids
    };
    let first: Value = app.get("/posts?limit=2", None).await.json().await.unwrap();
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[2]);
    assert_eq!(items[1]["id"], ids[1]);
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = items[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    };
    assert_eq!(
        keys,
        [
            "author",
            "comment_count",
            "created_at",
            "id",
            "title",
            "views"
        ]
    );
    assert_eq!(items[0]["comment_count"], 0);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!("/posts?limit=2&cursor={cursor}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["id"], ids[0]);
    assert!(second["next_cursor"].is_null());
}

#[tokio::test]
async fn a_bad_limit_or_cursor_is_a_400_problem() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "cursor=abc",
        "cursor=0",
    ] {
        let (status, kind, _) = problem(app.get(&format!("/posts?{query}"), None).await).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::BAD_REQUEST, "invalid-query"),
            "{query}"
        );
    }
}

#[tokio::test]
async fn paging_while_posts_arrive_returns_every_earlier_post_exactly_once() {
    let app = spawn_app().await;
    let token = app.user("ada").await;
    let mut earlier = Vec::new();
    for n in 0..11 {
        earlier.push(app.create_post(&token, &format!("earlier {n}"), "b").await);
    }
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/posts?limit=3&cursor={c}"),
            None => "/posts?limit=3".to_owned(),
        };
        let page: Value = app.get(&path, None).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            *seen.entry(item["id"].as_i64().unwrap()).or_default() += 1;
        }
        pages += 1;
        // New posts arrive between every two pages.
        app.create_post(&token, &format!("newer {pages}"), "b")
            .await;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 20, "paging terminates");
    }
    for id in &earlier {
        assert_eq!(seen.get(id), Some(&1), "post {id} is seen exactly once");
    }
    assert!(seen.values().all(|n| *n == 1), "no post is seen twice");
    assert_eq!(pages, 4);
}
