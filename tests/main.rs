//! The `aimatrix` package's integration tests, one binary (each file a module): they run the
//! built `aimatrix` binary as users do — its CLI, `serve` with HTTP, WebSocket and pgwire
//! clients, and two-process clusters. One test binary links once, where eight linked eight
//! copies of the engine.

mod auth;
mod bad_input;
mod builtin_overflow;
mod cli;
mod cluster;
mod common;
mod follow;
mod hostile_sql;
mod serve;
