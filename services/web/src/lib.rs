//! The scaleout web front end: server-rendered HTML pages with cookie sessions and
//! CSRF-protected forms.
//!
//! This crate holds only the HTTP surface and its wiring; what a post or a user is lives in the
//! `domain` crate, which the mobile API shares.
//!
//! # Layout
//! - [`assets`]: the stylesheet, served under a content-hashed name.
//! - [`configuration`]: the settings and their environment variables.
//! - [`startup`]: [`startup::Application`], which binds, wires and runs the server.
//! - [`routes`]: one module per group of pages.
//! - [`session`]: the current visitor's session, as handlers need it.
//! - [`error`]: [`error::PageError`], rendered as a readable page.
//! - [`pages`]: the askama templates' types.

pub mod assets;
pub mod configuration;
pub mod error;
pub mod pages;
pub mod routes;
pub mod session;
pub mod startup;
