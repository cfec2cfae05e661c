use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_new_post_appears_on_the_front_page_and_on_its_own_page() {
    let app = spawn_app().await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    let created = author
        .submit(
            "/posts/new",
            "/posts",
            &[
                ("title", "Hello, scaleout"),
                ("body", "First post.\nSecond line."),
            ],
        )
        .await;
    assert_eq!(created.status(), StatusCode::SEE_OTHER);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/posts/"));

    let mut reader = app.visitor();
    let home = reader.get("/").await.text().await.unwrap();
    assert!(home.contains("Hello, scaleout"));
    assert!(home.contains(&format!(r#"href="{location}""#)));
    let page = reader.get(&location).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("Hello, scaleout"));
    assert!(
        page.contains("First post.\nSecond line."),
        "line breaks are kept"
    );
    assert!(page.contains("by ada"));
}

#[tokio::test]
async fn the_front_page_pages_by_cursor() {
    let app = spawn_app_with_page_size(2).await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    for title in ["one", "two", "three"] {
        author
            .submit("/posts/new", "/posts", &[("title", title), ("body", "b")])
            .await;
    }
    let first = author.get("/").await.text().await.unwrap();
    assert!(first.contains(">three<") && first.contains(">two<") && !first.contains(">one<"));
    let start = first.find("/?before=").expect("a link to older posts");
    let link: String = first[start..].chars().take_while(|c| *c != '"').collect();
    let second = author.get(&link).await.text().await.unwrap();
    assert!(second.contains(">one<") && !second.contains(">two<"));
    assert!(
        !second.contains("/?before="),
        "the last page has no next link"
    );
}

async fn spawn_app_with_page_size(n: u32) -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|s| s.page_size = n).await
}

#[tokio::test]
async fn an_invalid_post_is_explained_and_not_stored() {
    let app = spawn_app().await;
    let mut author = app.registered_user("ada", "correct horse battery").await;
    let response = author
        .submit(
            "/posts/new",
            "/posts",
            &[("title", "   "), ("body", "body")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("The title must not be empty.")
    );
    let posts: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(posts, 0);
}

#[tokio::test]
async fn anonymous_visitors_are_sent_to_log_in_before_writing() {
    let app = spawn_app().await;
    let response = app.visitor().get("/posts/new").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/login");
}

#[tokio::test]
async fn unknown_and_malformed_post_ids_are_404_pages() {
    let app = spawn_app().await;
    let mut visitor = app.visitor();
    for path in ["/posts/999999", "/posts/not-a-number", "/no-such-page"] {
        let response = visitor.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(response.text().await.unwrap().contains("Not found"));
    }
}
