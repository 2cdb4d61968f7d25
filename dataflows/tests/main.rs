//! `amx-dataflows`' integration tests, one binary (each file a module).

mod oracle;
mod views;
