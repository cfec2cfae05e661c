//! What the two front ends' error types share: how a failing dependency is told apart from a
//! bug, and a `Debug` that prints the chain of causes. [`front_end_error!`](crate::front_end_error)
//! implements both for an error type.

use std::fmt;

pub use platform_session::SessionError;
pub use sqlx::Error as DatabaseError;

/// A dependency's failure, sorted for the reader: one that may pass (the answer is 503 naming
/// the dependency) or one that is a bug (500).
#[derive(Debug)]
pub enum DependencyFailure {
    /// The dependency is unreachable or saturated; this names it.
    Unavailable(&'static str),
    Unexpected(anyhow::Error),
}

impl From<DatabaseError> for DependencyFailure {
    fn from(e: DatabaseError) -> Self {
        match e {
            DatabaseError::PoolTimedOut | DatabaseError::Io(_) | DatabaseError::PoolClosed => {
                tracing::warn!(message = "Database unavailable.", error = %e);
                Self::Unavailable("The database")
            }
            other => Self::Unexpected(anyhow::Error::new(other).context("Database query failed")),
        }
    }
}

impl From<SessionError> for DependencyFailure {
    fn from(e: SessionError) -> Self {
        tracing::warn!(message = "Session store unavailable.", error = %e);
        Self::Unavailable("The session store")
    }
}

/// Writes `error` and each of its causes, so the request log says why, not just what.
pub fn write_chain(error: &dyn std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{error}")?;
    let mut source = error.source();
    while let Some(cause) = source {
        writeln!(f, "Caused by:\n\t{cause}")?;
        source = cause.source();
    }
    Ok(())
}

/// For an error enum with the variants `Unavailable(&'static str)` and
/// `Unexpected(anyhow::Error)`: conversions from database and session failures (through
/// [`DependencyFailure`]) and a `Debug` that prints the chain of causes.
#[macro_export]
macro_rules! front_end_error {
    ($error:ident) => {
        impl From<$crate::failure::DependencyFailure> for $error {
            fn from(failure: $crate::failure::DependencyFailure) -> Self {
                match failure {
                    $crate::failure::DependencyFailure::Unavailable(what) => {
                        Self::Unavailable(what)
                    }
                    $crate::failure::DependencyFailure::Unexpected(e) => Self::Unexpected(e),
                }
            }
        }

        impl From<$crate::failure::DatabaseError> for $error {
            fn from(e: $crate::failure::DatabaseError) -> Self {
                $crate::failure::DependencyFailure::from(e).into()
            }
        }

        impl From<$crate::failure::SessionError> for $error {
            fn from(e: $crate::failure::SessionError) -> Self {
                $crate::failure::DependencyFailure::from(e).into()
            }
        }

        impl std::fmt::Debug for $error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::failure::write_chain(self, f)
            }
        }
    };
}
