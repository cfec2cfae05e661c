//! Read routing against the real local primary and streaming replica
//! (`infra/scripts/replica.sh up` starts the replica; CI does so before the tests).

use std::sync::Arc;
use std::time::Duration;

use platform_db::{Database, DbSettings, ReadSource};
use platform_testing::{TestDatabase, closed_port, eventually};
use sqlx::migrate::Migrator;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn settings(db: &TestDatabase, replicas: Vec<String>) -> DbSettings {
    DbSettings {
        database_replica_urls: replicas,
        db_replica_check_interval_ms: 50,
        db_replica_max_lag_ms: 5_000,
        ..db.settings.clone()
    }
}

async fn replica_joins(database: &Arc<Database>) -> bool {
    eventually(Duration::from_secs(20), || async {
        database.replica_status().iter().all(|r| r.healthy)
    })
    .await
}

#[tokio::test]
async fn a_reader_that_wrote_is_served_by_the_replica_only_once_it_has_replayed_the_write() {
    let db = TestDatabase::create(&NO_MIGRATIONS).await;
    let database = Arc::new(Database::connect(&settings(&db, db.replica_urls())).unwrap());
    let _monitor = database.spawn_monitor();
    assert!(
        replica_joins(&database).await,
        "the replica did not join the pool; is it running? (infra/scripts/replica.sh up)"
    );

    sqlx::query("CREATE TABLE notes (id INT PRIMARY KEY)")
        .execute(database.primary())
        .await
        .unwrap();
    for id in 0..50 {
        sqlx::query("INSERT INTO notes VALUES ($1)")
            .bind(id)
            .execute(database.primary())
            .await
            .unwrap();
        let written = database.current_lsn().await.unwrap();
        // Whichever pool the router picks, the row must be there: that is read-your-writes.
        let (pool, _) = database.reader(Some(written));
        let seen: Option<i32> = sqlx::query_scalar("SELECT id FROM notes WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap();
        assert_eq!(seen, Some(id), "read after write {id} missed the row");
    }
    // Once the monitor has seen the replica replay everything, it serves the reads.
    let written = database.current_lsn().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            database.reader(Some(written)).1 == ReadSource::Replica(0)
        })
        .await
    );
}

#[tokio::test]
async fn writes_through_a_replica_pool_fail_loudly() {
    let db = TestDatabase::create(&NO_MIGRATIONS).await;
    let database = Arc::new(Database::connect(&settings(&db, db.replica_urls())).unwrap());
    let _monitor = database.spawn_monitor();
    assert!(replica_joins(&database).await);
    let (pool, source) = database.reader(None);
    assert_eq!(source, ReadSource::Replica(0));
    let result = sqlx::query("CREATE TABLE nope (id INT)")
        .execute(pool)
        .await;
    let error = result.unwrap_err().to_string();
    assert!(error.contains("read-only"), "{error}");
}

#[tokio::test]
async fn an_unreachable_replica_stays_out_of_the_pool_and_the_primary_serves_reads() {
    let db = TestDatabase::create(&NO_MIGRATIONS).await;
    let down = format!("postgres://postgres@127.0.0.1:{}/x", closed_port());
    let database = Arc::new(Database::connect(&settings(&db, vec![down])).unwrap());
    database.check_replicas(&mut Default::default()).await;
    assert!(!database.replica_status()[0].healthy);
    let (pool, source) = database.reader(None);
    assert_eq!(source, ReadSource::Primary);
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

#[tokio::test]
async fn the_primary_itself_is_refused_as_a_replica() {
    let db = TestDatabase::create(&NO_MIGRATIONS).await;
    let primary_url = db.settings.database_url.expose().to_owned();
    let database = Database::connect(&settings(&db, vec![primary_url])).unwrap();
    database.check_replicas(&mut Default::default()).await;
    assert!(!database.replica_status()[0].healthy);
    assert_eq!(database.reader(None).1, ReadSource::Primary);
}
