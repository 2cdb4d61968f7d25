//! The `aimatrix` binary's library: the built-in demo workload, the batch runtime of `run`,
//! the client of a running server (`job`, `sql`, `subscribe`), and the process's tracing (logs,
//! and spans over OTLP).

pub mod client;
pub mod demo;
pub mod memory;
pub mod runtime;
pub mod telemetry;

pub use amx_cluster::{job, net as cluster};
