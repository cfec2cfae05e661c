//! Domain queries against a real, freshly migrated database.

use domain::comments::{self, CommentId, SubmitCommentError};
use domain::{CommentBody, PostBody, PostId, PostTitle, Username, posts, users};
use platform_testing::TestDatabase;

#[tokio::test]
async fn a_submitted_comment_is_pending_and_hidden_until_published() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let post = posts::create(
        &db.pool,
        author,
        &PostTitle::parse("t").unwrap(),
        &PostBody::parse("b").unwrap(),
    )
    .await
    .unwrap();
    let id = comments::submit(&db.pool, post, author, &CommentBody::parse("hi").unwrap())
        .await
        .unwrap();
    let status = comments::status(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(status.status, "pending");
    assert!(
        comments::list_visible(&db.pool, post)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        comments::status(&db.pool, CommentId(-1))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_comment_on_a_missing_post_is_refused_and_nothing_is_written() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let result = comments::submit(
        &db.pool,
        PostId(424242),
        author,
        &CommentBody::parse("hi").unwrap(),
    )
    .await;
    assert!(matches!(result, Err(SubmitCommentError::PostNotFound)));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM comments")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn only_the_author_can_edit_a_post_and_an_edit_bumps_its_version() {
    use domain::posts::UpdatePostError;
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let other = users::create(&db.pool, &Username::parse("grace").unwrap(), "hash")
        .await
        .unwrap();
    let title = PostTitle::parse("t").unwrap();
    let body = PostBody::parse("b").unwrap();
    let id = posts::create(&db.pool, author, &title, &body)
        .await
        .unwrap();
    let before = posts::get(&db.pool, id).await.unwrap().unwrap();

    let new_title = PostTitle::parse("edited").unwrap();
    let refused = posts::update(&db.pool, id, other, &new_title, &body).await;
    assert!(matches!(refused, Err(UpdatePostError::Forbidden)));
    let missing = posts::update(&db.pool, PostId(424242), author, &new_title, &body).await;
    assert!(matches!(missing, Err(UpdatePostError::NotFound)));
    assert_eq!(
        posts::get(&db.pool, id).await.unwrap().unwrap().title,
        "t",
        "a refused edit writes nothing"
    );

    let after = posts::update(&db.pool, id, author, &new_title, &body)
        .await
        .unwrap();
    assert_eq!(after.title, "edited");
    assert_eq!(after.version, before.version + 1);
    assert!(after.updated_at > before.updated_at);
}

#[tokio::test]
async fn an_edit_based_on_a_stale_version_is_refused_and_writes_nothing() {
    use domain::posts::UpdatePostError;
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let body = PostBody::parse("b").unwrap();
    let id = posts::create(&db.pool, author, &PostTitle::parse("t").unwrap(), &body)
        .await
        .unwrap();
    let first = PostTitle::parse("first edit").unwrap();
    let edited = posts::update_if_version(&db.pool, id, author, Some(1), &first, &body)
        .await
        .unwrap();
    assert_eq!(edited.version, 2);
    let second = PostTitle::parse("from a stale copy").unwrap();
    let stale = posts::update_if_version(&db.pool, id, author, Some(1), &second, &body).await;
    assert!(matches!(stale, Err(UpdatePostError::VersionMismatch)));
    assert_eq!(
        posts::get(&db.pool, id).await.unwrap().unwrap().title,
        "first edit"
    );
}

#[tokio::test]
async fn publishing_moves_the_listings_change_time_and_scoring_moves_the_comments() {
    use comments::{Applied, SentimentLabel};
    use uuid::Uuid;
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let author = users::create(&db.pool, &Username::parse("ada").unwrap(), "hash")
        .await
        .unwrap();
    let post = posts::create(
        &db.pool,
        author,
        &PostTitle::parse("t").unwrap(),
        &PostBody::parse("b").unwrap(),
    )
    .await
    .unwrap();
    let pool = &db.pool;
    let listed = || async { posts::list(pool, None, 20).await.unwrap() };
    let created = listed().await;
    assert_eq!(created.items[0].last_modified, created.items[0].updated_at);
    assert_eq!(created.last_modified(), Some(created.items[0].updated_at));

    let submit = |text: &'static str| async move {
        comments::submit(pool, post, author, &CommentBody::parse(text).unwrap())
            .await
            .unwrap()
    };
    let ham = submit("ham").await;
    let spam = submit("spam").await;
    comments::apply_spam_verdict(&db.pool, "spam", Uuid::new_v4(), spam, true, 0.99)
        .await
        .unwrap();
    assert_eq!(
        listed().await.last_modified(),
        created.last_modified(),
        "neither a pending nor a rejected comment is counted, so neither changes the listing"
    );

    comments::apply_spam_verdict(&db.pool, "spam", Uuid::new_v4(), ham, false, 0.01)
        .await
        .unwrap();
    let published_at: time::OffsetDateTime =
        sqlx::query_scalar("SELECT moderated_at FROM comments WHERE id = $1")
            .bind(ham)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let published = listed().await;
    assert_eq!(published.items[0].comment_count, 1);
    assert_eq!(published.items[0].updated_at, created.items[0].updated_at);
    assert_eq!(published.last_modified(), Some(published_at));
    assert!(published_at > created.items[0].updated_at);
    let visible = comments::list_visible(&db.pool, post).await.unwrap();
    assert_eq!(comments::last_changed(&visible), Some(published_at));

    let scored = comments::apply_sentiment(
        &db.pool,
        "sentiment",
        Uuid::new_v4(),
        ham,
        0.5,
        SentimentLabel::Positive,
    )
    .await
    .unwrap();
    assert_eq!(scored, Applied::Done);
    let visible = comments::list_visible(&db.pool, post).await.unwrap();
    assert!(
        visible[0].changed_at > published_at,
        "the score landed later"
    );
    assert_eq!(
        listed().await.last_modified(),
        Some(published_at),
        "the listing shows no sentiment"
    );
}
