//! The scaleout mobile API: a compact JSON API under `/api/v1` for phone clients, with bearer
//! sessions shared with the web front end, RFC 9457 problem+json errors, and ETag/304 caching.
//!
//! Like the web service, this crate holds only its HTTP surface: what a post or a user is lives
//! in the `domain` crate, sessions in `platform-session`, and the caching rules in
//! `platform_http::caching`, all shared with the web service rather than reached through it.
//!
//! # Layout
//! - [`configuration`]: the settings and their environment variables.
//! - [`startup`]: [`startup::Application`], which binds, wires and runs the server.
//! - [`routes`]: one module per group of endpoints, and the JSON shapes they exchange.
//! - [`auth`]: who is calling, from the bearer token (or the web's `sid` cookie).
//! - [`error`]: [`error::ApiError`], rendered as problem+json.

pub mod auth;
pub mod configuration;
pub mod error;
pub mod routes;
pub mod startup;
