//! The `aimatrix` binary's library: the built-in demo workload, the batch runtime of `run`,
//! and the client of a running server (`job`, `sql`, `subscribe`).

pub mod client;
pub mod demo;
pub mod runtime;

pub use amx_cluster::{job, net as cluster};
