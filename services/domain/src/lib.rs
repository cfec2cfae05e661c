//! The scaleout discussion domain shared by every service: users, posts and comments, their
//! rules, queries and schema.
//!
//! Services hold only their HTTP surface; whatever is true of a post whether it arrives by a web
//! form or the JSON API lives here. Input becomes a domain type through `parse` (parse, don't
//! validate), so a `PostTitle` in hand is known to be valid and queries never see raw strings.
//!
//! # Layout
//! - [`types`]: validated values (`Username`, `Password`, `PostTitle`, ...).
//! - [`auth`]: argon2id password hashing with a bound on concurrent hashes.
//! - [`users`], [`posts`], [`comments`]: queries.
//! - [`outbox`]: waking the relay after commits that wrote events.
//! - [`store`]: the same reads and writes through the cache and the replicas.
//! - [`MIGRATOR`]: the schema, embedded from `migrations/`.

pub mod auth;
pub mod comments;
pub mod outbox;
pub mod posts;
pub mod store;
pub mod types;
pub mod users;

pub use types::{CommentBody, Password, PostBody, PostId, PostTitle, UserId, Username};

/// The schema's migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database if it is missing and applies [`MIGRATOR`]; every service runs this
/// before serving (or a `migrate` command runs it once before they start).
pub async fn prepare_database(
    settings: &platform_db::DbSettings,
) -> Result<(), platform_db::DbError> {
    platform_db::ensure_database(settings).await?;
    let pool = platform_db::connect(settings)?;
    let migrated = platform_db::migrate(&pool, &MIGRATOR).await;
    pool.close().await;
    migrated
}

/// Runs `work` with tracing off: for periodic bookkeeping (flushing view counts, waking the
/// relay) whose client spans would each start a trace of their own and bury the requests'.
/// `work` must return its errors for the caller to log.
pub(crate) async fn untraced<F: Future>(work: F) -> F::Output {
    use tracing::instrument::WithSubscriber;
    work.with_subscriber(tracing::Dispatch::none()).await
}
