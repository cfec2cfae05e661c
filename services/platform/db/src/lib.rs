//! Postgres for scaleout processes: pools with explicit limits, database creation and
//! migrations that are safe when several replicas start at once.
//!
//! Every limit a pool has is set here from [`DbSettings`], never left to a library default:
//! sqlx waits 30 s for a free connection by default, which turns an overloaded database into
//! requests that hang instead of answering 503.
//!
//! # Layout
//! - [`DbSettings`]: the `DATABASE_*` and `DB_*` settings.
//! - [`connect`]: a pool for the primary.
//! - [`ensure_database`] and [`migrate`]: what a process runs before it serves.
//! - [`routing`]: [`Database`], reads split across replicas with read-your-writes.
//! - [`client_span`]: the span each query runs in, for traces.
//! - [`batch`]: group commit, many callers' writes in one statement.

pub mod batch;
pub mod routing;

use std::str::FromStr;
use std::time::Duration;

use platform_config::{Secret, comma_separated};
pub use routing::{Database, Lsn, ReadSource};
use serde::{Deserialize, Serialize};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

/// The span for one Postgres round trip, after OpenTelemetry's database client conventions:
/// named `{operation} {collection}` ("SELECT posts"), kind client, with `db.system.name`,
/// `db.operation.name` and `db.collection.name`. Run the query in it with
/// `.instrument(client_span(..))`. Only these low-cardinality names go in: never query text,
/// whose values could hold user data.
///
/// DEBUG, so it exists only when the OpenTelemetry layer is installed (see
/// `platform_telemetry`'s filtering): without trace export it costs a level check.
pub fn client_span(operation: &'static str, collection: &'static str) -> tracing::Span {
    span(operation, Some(collection))
}

/// [`client_span`] for a statement that names no table: `BEGIN`, `COMMIT`, or a function call
/// such as `pg_current_wal_lsn()`. Named after the operation alone, as OpenTelemetry says.
pub fn client_span_without_collection(operation: &'static str) -> tracing::Span {
    span(operation, None)
}

fn span(operation: &'static str, collection: Option<&'static str>) -> tracing::Span {
    tracing::debug_span!(
        "db.client",
        otel.name = %SpanName { operation, collection },
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

/// `{operation} {collection}`, written out only when the span is enabled.
struct SpanName {
    operation: &'static str,
    collection: Option<&'static str>,
}

impl std::fmt::Display for SpanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.collection {
            Some(collection) => write!(f, "{} {collection}", self.operation),
            None => f.write_str(self.operation),
        }
    }
}

/// Database settings shared by every process that talks to Postgres.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DbSettings {
    /// `DATABASE_URL`: the primary, which takes every write.
    pub database_url: Secret,
    /// `DATABASE_REPLICA_URLS`: comma-separated streaming replicas for reads; may be empty.
    #[serde(with = "comma_separated")]
    pub database_replica_urls: Vec<String>,
    /// `DB_MAX_CONNECTIONS`: connections per pool, per process.
    pub db_max_connections: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS`: how long a request waits for a pooled connection (including
    /// connecting) before it fails; this bounds how long a write takes to fail with the primary
    /// down.
    pub db_acquire_timeout_ms: u64,
    /// `DB_STATEMENT_TIMEOUT_MS`: Postgres cancels any statement running longer than this.
    pub db_statement_timeout_ms: u64,
    /// `DB_IDLE_TIMEOUT_SECS`: idle connections above the minimum are closed after this.
    pub db_idle_timeout_secs: u64,
    /// `DB_REPLICA_MAX_LAG_MS`: a replica further behind the primary than this serves no reads.
    pub db_replica_max_lag_ms: u64,
    /// `DB_REPLICA_CHECK_INTERVAL_MS`: how often each replica's position and lag are checked.
    pub db_replica_check_interval_ms: u64,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            database_url: Secret::new("postgres://postgres@127.0.0.1:5432/scaleout"),
            database_replica_urls: Vec::new(),
            db_max_connections: 10,
            db_acquire_timeout_ms: 3_000,
            db_statement_timeout_ms: 5_000,
            db_idle_timeout_secs: 300,
            db_replica_max_lag_ms: 1_000,
            db_replica_check_interval_ms: 200,
        }
    }
}

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` is not a Postgres URL.
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server could not be reached or refused a statement.
    #[error("{context}")]
    Query {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating the database failed")]
    Migrate(#[from] MigrateError),
}

impl DbSettings {
    /// Connection options for the primary, with the statement timeout applied per session.
    pub fn primary_options(&self) -> Result<PgConnectOptions, DbError> {
        let options =
            PgConnectOptions::from_str(self.database_url.expose()).map_err(DbError::InvalidUrl)?;
        Ok(self.with_session_settings(options))
    }

    pub(crate) fn with_session_settings(&self, options: PgConnectOptions) -> PgConnectOptions {
        options
            .options([(
                "statement_timeout",
                format!("{}ms", self.db_statement_timeout_ms),
            )])
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500))
    }

    pub(crate) fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.db_max_connections)
            .acquire_timeout(Duration::from_millis(self.db_acquire_timeout_ms))
            .idle_timeout(Some(Duration::from_secs(self.db_idle_timeout_secs)))
    }
}

/// A pool for the primary. It connects lazily, so a process starts (and reports not ready)
/// while the database is still coming up.
pub fn connect(settings: &DbSettings) -> Result<PgPool, DbError> {
    Ok(settings
        .pool_options()
        .connect_lazy_with(settings.primary_options()?))
}

/// Creates the database named in `settings` if it does not exist yet.
///
/// It connects to the server's `postgres` maintenance database. Two processes racing to create
/// the same database both succeed: the loser's "already exists" error is the outcome it wanted.
pub async fn ensure_database(settings: &DbSettings) -> Result<(), DbError> {
    let options = settings.primary_options()?;
    let name = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_owned();
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(|source| DbError::Query {
            context: "connecting to the Postgres server failed",
            source,
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| DbError::Query {
                context: "looking up the database failed",
                source,
            })?;
    if !exists {
        let statement = format!("CREATE DATABASE {}", quote_identifier(&name));
        match sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(message = "Created the database.", database = %name),
            // 42P04 duplicate_database, 23505 unique_violation on pg_database: another process
            // created it between our check and our statement.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(source) => {
                return Err(DbError::Query {
                    context: "creating the database failed",
                    source,
                });
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Drops the database named in `settings`, closing its other connections first.
///
/// Test harnesses use this to leave nothing behind; no service calls it.
pub async fn drop_database(settings: &DbSettings) -> Result<(), DbError> {
    let options = settings.primary_options()?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = PgConnection::connect_with(&options.database("postgres"))
        .await
        .map_err(|source| DbError::Query {
            context: "connecting to the Postgres server failed",
            source,
        })?;
    let statement = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_identifier(&name)
    );
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(&mut conn)
        .await
        .map_err(|source| DbError::Query {
            context: "dropping the database failed",
            source,
        })?;
    let _ = conn.close().await;
    Ok(())
}

/// Quotes a name for use as a Postgres identifier: database names cannot be bind parameters.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies `migrator` to the database behind `pool`.
///
/// sqlx holds a Postgres advisory lock for the whole run, so replicas that start together apply
/// each migration once: the first takes the lock, the others wait and then find nothing to do.
pub async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<(), DbError> {
    debug_assert!(migrator.locking, "migrations must hold the advisory lock");
    migrator.run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_settings() -> DbSettings {
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&format!("scratch_{}", uuid::Uuid::new_v4().simple()));
        DbSettings {
            database_url: Secret::new(url.to_string()),
            ..DbSettings::default()
        }
    }

    #[tokio::test]
    async fn racing_processes_create_the_database_once_and_both_succeed() {
        let settings = scratch_settings();
        let (a, b) = tokio::join!(ensure_database(&settings), ensure_database(&settings));
        a.unwrap();
        b.unwrap();
        let pool = connect(&settings).unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
        pool.close().await;
        drop_database(&settings).await.unwrap();
    }

    #[tokio::test]
    async fn the_statement_timeout_is_applied_to_every_connection() {
        let settings = DbSettings {
            db_statement_timeout_ms: 1234,
            ..scratch_settings()
        };
        ensure_database(&settings).await.unwrap();
        let pool = connect(&settings).unwrap();
        let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(timeout, "1234ms");
        pool.close().await;
        drop_database(&settings).await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_primary_fails_within_the_acquire_timeout() {
        let settings = DbSettings {
            database_url: Secret::new("postgres://postgres@127.0.0.1:1/none"),
            db_acquire_timeout_ms: 300,
            ..DbSettings::default()
        };
        let pool = connect(&settings).unwrap();
        let started = std::time::Instant::now();
        assert!(pool.acquire().await.is_err());
        // Generous bound: this checks the timeout is not sqlx's 30 s default, not its precision.
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
