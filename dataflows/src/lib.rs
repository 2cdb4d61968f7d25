//! AIMatrix's event model and its built-in domain dataflows.
//!
//! - [`event`]: the canonical relations (`spans`, `evaluations`, `workflow_events`,
//!   `knowledge_events`, `ingest_errors`) that every source format decodes into;
//! - [`prices`]: `model_prices`, the price table model calls are priced by, and what a call
//!   costs;
//! - [`views`]: the built-in incremental views over them (`agent_traces`, `tool_usage`,
//!   `model_usage`, `span_costs`, `cost_by_agent_day`, `workflow_runs`, `workflow_steps`,
//!   `documents`, `collection_stats`);
//! - [`row`]: the untyped [`row::Row`] shape in which state leaves the dataflows for SQL.
//!
//! [`render`] builds all of it inside a timely scope.

pub mod event;
pub mod packed;
pub mod prices;
pub mod render;
pub mod row;
pub mod testing;
pub mod views;

/// The dataflows' logical timestamp: an epoch number, advanced once per ingested batch.
pub type Time = u64;

/// Differences (multiplicities) of every collection: +n inserts n copies, −n retracts them.
pub type Diff = isize;
