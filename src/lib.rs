//! The `aimatrix` binary's library: job files, the built-in demo workload and the cluster
//! runtime that runs jobs on timely and answers SQL.

pub mod cluster;
pub mod demo;
pub mod job;
pub mod runtime;
