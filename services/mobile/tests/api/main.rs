//! The mobile API driven over HTTP against real Postgres and Redis. One binary for all API
//! tests keeps link time down.

mod accounts;
mod caching;
mod comments;
mod errors;
mod health;
mod helpers;
mod metrics;
mod posts;
mod shared_sessions;
