//! The web service driven over HTTP against real Postgres and Redis. One binary for all API
//! tests keeps link time down.

mod accounts;
mod caching;
mod comments;
mod health;
mod helpers;
mod metrics;
mod posts;
mod security;
