use reqwest::StatusCode;

use crate::helpers::{csrf_token, spawn_app};

#[tokio::test]
async fn a_signed_in_reader_comments_and_is_told_it_awaits_moderation() {
    let app = spawn_app().await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    let created = author
        .submit(
            "/posts/new",
            "/posts",
            &[("title", "Hello"), ("body", "Post.")],
        )
        .await;
    let post = created.headers()["location"].to_str().unwrap().to_owned();

    let response = author
        .submit(
            &post,
            &format!("{post}/comments"),
            &[("body", "What a lovely post!")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let back = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{post}?comment=pending")),
        "{back}"
    );
    let page = author.get(&back).await.text().await.unwrap();
    assert!(page.contains("awaiting moderation"));
    // Pending: not shown until the spam check publishes it.
    assert!(!page.contains("What a lovely post!"));

    let (status, events): (String, i64) = sqlx::query_as(
        "SELECT c.status, (SELECT count(*) FROM outbox) FROM comments c WHERE c.body = $1",
    )
    .bind("What a lovely post!")
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(status, "pending");
    assert_eq!(events, 1, "the comment's event waits in the outbox");
}

#[tokio::test]
async fn commenting_needs_a_valid_form_token_a_session_and_a_real_post() {
    let app = spawn_app().await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    let created = author
        .submit(
            "/posts/new",
            "/posts",
            &[("title", "Hello"), ("body", "Post.")],
        )
        .await;
    let post = created.headers()["location"].to_str().unwrap().to_owned();

    let forged = author
        .post(
            &format!("{post}/comments"),
            &[("csrf_token", "forged"), ("body", "hi")],
        )
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    let html = author.get(&post).await.text().await.unwrap();
    let token = csrf_token(&html);
    let empty = author
        .post(
            &format!("{post}/comments"),
            &[("csrf_token", token.as_str()), ("body", "   ")],
        )
        .await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    assert!(empty.text().await.unwrap().contains("comment"));
    let missing = author
        .post(
            "/posts/999999/comments",
            &[("csrf_token", token.as_str()), ("body", "hi")],
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let anonymous = app
        .visitor()
        .post(
            &format!("{post}/comments"),
            &[("csrf_token", "x"), ("body", "hi")],
        )
        .await;
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM comments")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing refused was written");
    let page = app.visitor().get(&post).await.text().await.unwrap();
    assert!(page.contains("Log in</a> to comment"));
}
