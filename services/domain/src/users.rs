//! Users: registration and the lookup behind login.

use platform_db::client_span;
use sqlx::PgPool;
use tracing::Instrument;

use crate::{UserId, Username};

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// The name is taken (ignoring case).
    #[error("that username is already taken")]
    UsernameTaken,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What login needs to know about an account.
#[derive(Debug, sqlx::FromRow)]
pub struct Credentials {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
}

/// Inserts a user. The unique index decides races between two registrations of one name.
pub async fn create(
    pool: &PgPool,
    username: &Username,
    password_hash: &str,
) -> Result<UserId, CreateUserError> {
    let result = sqlx::query_scalar(
        "INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id",
    )
    .bind(username.as_ref())
    .bind(password_hash)
    .fetch_one(pool)
    .instrument(client_span("INSERT", "users"))
    .await;
    match result {
        Ok(id) => Ok(UserId(id)),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(CreateUserError::UsernameTaken)
        }
        Err(e) => Err(e.into()),
    }
}

/// The account named `username` (ignoring case), if any.
pub async fn find_credentials(
    pool: &PgPool,
    username: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)",
    )
    .bind(username)
    .fetch_optional(pool)
    .instrument(client_span("SELECT", "users"))
    .await
}
