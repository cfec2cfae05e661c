//! Gateway behaviour over real sockets: an in-process gateway in front of stub backends.

mod admin;
mod affinity;
mod balancing;
mod cli;
mod headers;
mod health;
mod helpers;
mod http1;
mod limits;
mod metrics;
mod reload;
mod retry;
mod routing;
mod signals;
mod tcp;
mod tracing;
