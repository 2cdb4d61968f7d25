//! `amx-sql`'s integration tests, one binary (each file a module).

mod float_aggregates;
mod hostile_sql;
mod json_output;
mod slt;
mod views;
