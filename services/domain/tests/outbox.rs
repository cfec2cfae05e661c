//! The comment pipeline's database side: submit writes the comment and its event together, and
//! the workers' effects apply once per message.

use domain::comments::{
    self, Applied, NewComment, SentimentLabel, SubmitCommentError, TraceContext,
};
use domain::{CommentBody, PostBody, PostId, PostTitle, UserId, Username, posts, users};
use platform_testing::TestDatabase;
use uuid::Uuid;

async fn author_and_post(db: &TestDatabase) -> (UserId, PostId) {
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
    (author, post)
}

#[tokio::test]
async fn a_submitted_comment_and_its_event_are_written_together() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let trace = TraceContext::from_headers(
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Some("vendor=1"),
    );
    let id = comments::submit_traced(
        &db.pool,
        post,
        author,
        &CommentBody::parse("hello").unwrap(),
        &trace,
    )
    .await
    .unwrap();
    let (event_type, comment_id, body, author_name, traceparent, published): (
        String,
        i64,
        String,
        String,
        Option<String>,
        Option<time::OffsetDateTime>,
    ) = sqlx::query_as(
        "SELECT event_type, (payload->>'comment_id')::bigint, payload->>'body', \
                payload->>'author', traceparent, published_at FROM outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(event_type, comments::COMMENT_SUBMITTED);
    assert_eq!(comment_id, id.0);
    assert_eq!(body, "hello");
    assert_eq!(author_name, "ada");
    assert_eq!(traceparent, trace.traceparent);
    assert!(published.is_none(), "waiting for the relay");
}

#[tokio::test]
async fn a_refused_comment_leaves_no_event_behind() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, _) = author_and_post(&db).await;
    let result = comments::submit(
        &db.pool,
        PostId(424242),
        author,
        &CommentBody::parse("hi").unwrap(),
    )
    .await;
    assert!(matches!(result, Err(SubmitCommentError::PostNotFound)));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

/// A batch returns each comment's own id, in the order given, and each comment has its own
/// event carrying its own trace context.
#[tokio::test]
async fn a_batch_of_comments_returns_each_its_own_id_and_event() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let batch: Vec<NewComment> = (0..20)
        .map(|i| NewComment {
            post,
            author,
            // Two identical bodies, so nothing could match comments to callers by content.
            body: CommentBody::parse(&format!("comment {}", i / 2)).unwrap(),
            trace: TraceContext::from_headers(
                Some(&format!("00-{:032x}-b7ad6b7169203331-01", i + 1)),
                None,
            ),
        })
        .collect();
    let ids = comments::submit_many(&db.pool, &batch).await.unwrap();
    assert_eq!(ids.len(), batch.len());
    for (comment, id) in batch.iter().zip(&ids) {
        let (body, event_body, traceparent): (String, String, Option<String>) = sqlx::query_as(
            "SELECT c.body, o.payload->>'body', o.traceparent \
             FROM comments c JOIN outbox o ON (o.payload->>'comment_id')::bigint = c.id \
             WHERE c.id = $1",
        )
        .bind(id.0)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(body, comment.body.as_ref());
        assert_eq!(event_body, body);
        assert_eq!(traceparent, comment.trace.traceparent, "comment {}", id.0);
    }
}

/// One comment on a missing post fails its whole batch: nothing of it is written.
#[tokio::test]
async fn a_batch_with_a_missing_post_writes_nothing() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let batch: Vec<NewComment> = [post, PostId(424242), post]
        .into_iter()
        .map(|post| NewComment {
            post,
            author,
            body: CommentBody::parse("hi").unwrap(),
            trace: TraceContext::default(),
        })
        .collect();
    let error = comments::submit_many(&db.pool, &batch).await.unwrap_err();
    assert!(matches!(
        SubmitCommentError::from_write(error),
        SubmitCommentError::PostNotFound
    ));
    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM comments) + (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(written, 0);
}

#[test]
fn a_malformed_traceparent_is_dropped_with_its_tracestate() {
    let trace = TraceContext::from_headers(Some("00-nothex-01"), Some("vendor=1"));
    assert_eq!(trace, TraceContext::default());
}

#[tokio::test]
async fn a_verdict_applies_once_however_often_its_message_arrives() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let id = comments::submit(&db.pool, post, author, &CommentBody::parse("hi").unwrap())
        .await
        .unwrap();
    let message = Uuid::new_v4();
    let first = comments::apply_spam_verdict(&db.pool, "spam", message, id, false, 0.1)
        .await
        .unwrap();
    assert_eq!(first, Applied::Done);
    // The same message again, even carrying another verdict, changes nothing.
    let again = comments::apply_spam_verdict(&db.pool, "spam", message, id, true, 0.99)
        .await
        .unwrap();
    assert_eq!(again, Applied::Duplicate);
    let status = comments::status(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(status.status, "published");

    // Another consumer's inbox is its own.
    let scored = comments::apply_sentiment(
        &db.pool,
        "sentiment",
        message,
        id,
        0.6,
        SentimentLabel::Positive,
    )
    .await
    .unwrap();
    assert_eq!(scored, Applied::Done);
    let status = comments::status(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(status.sentiment_label.as_deref(), Some("positive"));
    assert_eq!(
        comments::list_visible(&db.pool, post).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn spam_is_rejected_and_stays_hidden() {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let id = comments::submit(&db.pool, post, author, &CommentBody::parse("buy").unwrap())
        .await
        .unwrap();
    comments::apply_spam_verdict(&db.pool, "spam", Uuid::new_v4(), id, true, 0.99)
        .await
        .unwrap();
    let status = comments::status(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(status.status, "rejected");
    assert!(
        comments::list_visible(&db.pool, post)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A fresh database, a connection listening where the relay does, and a waker sending to it.
async fn waker_and_listener() -> (
    TestDatabase,
    sqlx::postgres::PgListener,
    domain::outbox::OutboxWaker,
    tokio::task::JoinHandle<()>,
) {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(domain::outbox::CHANNEL).await.unwrap();
    let waker = domain::outbox::OutboxWaker::new();
    let sender = waker.spawn(db.pool.clone());
    (db, listener, waker, sender)
}

#[tokio::test]
async fn a_burst_of_wake_ups_sends_one_notification() {
    use std::time::Duration;

    let (_db, mut listener, waker, _sender) = waker_and_listener().await;
    // A thousand commits' wake-ups before the sender runs (this runtime has one thread).
    for _ in 0..1000 {
        waker.wake();
    }
    let first = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(first, Ok(Ok(_))), "the relay is woken");
    let more = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(more.is_err(), "the burst folded into one notification");

    // A later commit wakes it again.
    waker.wake();
    let again = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(again, Ok(Ok(_))));
}

/// Under steady load each notification is a commit of its own, so they are spaced: a commit
/// every millisecond for 200 ms wakes the relay about once per `WAKE_SPACING`, not 200 times.
#[tokio::test]
async fn steady_wake_ups_are_spaced() {
    use domain::outbox::WAKE_SPACING;
    use std::time::{Duration, Instant};

    let (_db, mut listener, waker, _sender) = waker_and_listener().await;
    let started = Instant::now();
    let producer = tokio::spawn({
        let waker = waker.clone();
        async move {
            while started.elapsed() < Duration::from_millis(200) {
                waker.wake();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut received = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await {
        received += 1;
    }
    producer.await.unwrap();
    let most = (started.elapsed().as_millis() / WAKE_SPACING.as_millis()) as usize + 1;
    assert!(received >= 2, "steady commits keep waking the relay");
    assert!(
        received <= most,
        "{received} notifications, at most {most} expected"
    );
}

/// A batch applies each new message once, in one statement: a message already in the inbox
/// and a second copy inside the batch are duplicates, and the outcomes come back in order.
#[tokio::test]
async fn a_batch_of_verdicts_applies_each_new_message_once() {
    use comments::SpamVerdict;

    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let mut ids = Vec::new();
    for body in ["one", "two", "three"] {
        let body = CommentBody::parse(body).unwrap();
        ids.push(
            comments::submit(&db.pool, post, author, &body)
                .await
                .unwrap(),
        );
    }
    let seen = Uuid::new_v4();
    comments::apply_spam_verdict(&db.pool, "spam", seen, ids[0], false, 0.1)
        .await
        .unwrap();
    let twice = Uuid::new_v4();
    let verdict = |message_id, comment, is_spam| SpamVerdict {
        message_id,
        comment,
        is_spam,
        score: if is_spam { 0.99 } else { 0.01 },
    };
    let batch = [
        verdict(seen, ids[0], true),
        verdict(twice, ids[1], true),
        verdict(twice, ids[1], false),
        verdict(Uuid::new_v4(), ids[2], false),
    ];
    let outcomes = comments::apply_spam_verdicts(&db.pool, "spam", &batch)
        .await
        .unwrap();
    use Applied::{Done, Duplicate};
    assert_eq!(outcomes, vec![Duplicate, Done, Duplicate, Done]);
    let status = |id| comments::status(&db.pool, id);
    assert_eq!(status(ids[0]).await.unwrap().unwrap().status, "published");
    assert_eq!(status(ids[1]).await.unwrap().unwrap().status, "rejected");
    assert_eq!(status(ids[2]).await.unwrap().unwrap().status, "published");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = 'spam'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 3);
}

/// The two workers update the same comments in batches of their own; the batches take their
/// row locks in id order, so overlapping batches in opposite orders wait, never deadlock.
#[tokio::test]
async fn overlapping_batches_of_two_workers_do_not_deadlock() {
    use comments::{SentimentScore, SpamVerdict};

    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let (author, post) = author_and_post(&db).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = CommentBody::parse(&format!("comment {i}")).unwrap();
        ids.push(
            comments::submit(&db.pool, post, author, &body)
                .await
                .unwrap(),
        );
    }
    let mut rounds = Vec::new();
    for round in 0..10 {
        let pool = db.pool.clone();
        let forward: Vec<SpamVerdict> = ids
            .iter()
            .map(|&comment| SpamVerdict {
                message_id: Uuid::new_v4(),
                comment,
                is_spam: false,
                score: 0.1,
            })
            .collect();
        let backward: Vec<SentimentScore> = ids
            .iter()
            .rev()
            .map(|&comment| SentimentScore {
                message_id: Uuid::new_v4(),
                comment,
                score: 0.5,
                label: SentimentLabel::Positive,
            })
            .collect();
        rounds.push(tokio::spawn(async move {
            let (spam, sentiment) = tokio::join!(
                comments::apply_spam_verdicts(&pool, "spam", &forward),
                comments::apply_sentiments(&pool, "sentiment", &backward),
            );
            (round, spam.map(|o| o.len()), sentiment.map(|o| o.len()))
        }));
    }
    for round in rounds {
        let (round, spam, sentiment) = round.await.unwrap();
        assert_eq!(spam.unwrap(), 40, "round {round}");
        assert_eq!(sentiment.unwrap(), 40, "round {round}");
    }
}
