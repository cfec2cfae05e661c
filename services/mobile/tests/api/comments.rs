use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn a_comment_is_accepted_as_pending_and_its_author_can_follow_it() {
    let app = spawn_app().await;
    let ada = app.user("ada").await;
    let grace = app.user("grace").await;
    let post = app.create_post(&ada, "Post", "Body").await;

    let response = app
        .post_json(
            &format!("/posts/{post}/comments"),
            &json!({ "body": "Nice post!" }),
            Some(&grace),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "pending");
    let id = accepted["id"].as_i64().unwrap();
    assert_eq!(location, format!("/api/v1/comments/{id}"));

    let status = app.get(&format!("/comments/{id}"), Some(&grace)).await;
    assert_eq!(status.status(), StatusCode::OK);
    assert!(
        status.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private")
    );
    let status: Value = status.json().await.unwrap();
    assert_eq!(status["status"], "pending");
    assert!(status["sentiment"].is_null());

    let listed: Value = app
        .get(&format!("/posts/{post}/comments"), None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["items"].as_array().unwrap().is_empty(),
        "pending comments are hidden"
    );

    // Moderation (another service) publishes and scores it.
    sqlx::query(
        "UPDATE comments SET status = 'published', sentiment_label = 'positive', \
         sentiment_score = 0.8 WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    app.comments_changed(post).await;
    let status: Value = app
        .get(&format!("/comments/{id}"), Some(&grace))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "published");
    assert_eq!(status["sentiment"]["label"], "positive");
    let listed: Value = app
        .get(&format!("/posts/{post}/comments"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], id);
    assert_eq!(listed["items"][0]["author"], "grace");
    assert_eq!(listed["items"][0]["body"], "Nice post!");
    assert_eq!(listed["items"][0]["sentiment"]["score"], 0.8);
    let posts: Value = app.get("/posts", None).await.json().await.unwrap();
    assert_eq!(posts["items"][0]["comment_count"], 1);
}

#[tokio::test]
async fn a_comments_status_is_its_authors_alone() {
    let app = spawn_app().await;
    let ada = app.user("ada").await;
    let grace = app.user("grace").await;
    let post = app.create_post(&ada, "Post", "Body").await;
    let accepted: Value = app
        .post_json(
            &format!("/posts/{post}/comments"),
            &json!({ "body": "hi" }),
            Some(&grace),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_i64().unwrap();
    let (status, kind, _) = problem(app.get(&format!("/comments/{id}"), Some(&ada)).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "not-found")
    );
    let (status, _, _) = problem(app.get(&format!("/comments/{id}"), None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = problem(app.get("/comments/424242", Some(&grace)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn commenting_needs_a_token_an_existing_post_and_a_valid_body() {
    let app = spawn_app().await;
    let ada = app.user("ada").await;
    let post = app.create_post(&ada, "Post", "Body").await;
    let path = format!("/posts/{post}/comments");

    let (status, _, _) = problem(app.post_json(&path, &json!({ "body": "hi" }), None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, kind, body) = problem(
        app.post_json(&path, &json!({ "body": "  " }), Some(&ada))
            .await,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation")
    );
    assert_eq!(
        body["errors"][0]["message"],
        "The comment must not be empty."
    );
    let (status, _, _) = problem(
        app.post_json(&path, &json!({ "body": "x".repeat(2_001) }), Some(&ada))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, kind, _) = problem(
        app.post_json(
            "/posts/424242/comments",
            &json!({ "body": "hi" }),
            Some(&ada),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::NOT_FOUND, "not-found")
    );
    let comments: i64 = sqlx::query_scalar("SELECT count(*) FROM comments")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(comments, 0, "nothing refused is stored");
}
