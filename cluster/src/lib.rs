//! The AIMatrix cluster runtime: a long-running timely cluster that installs and drops jobs
//! while it runs, keeps their state in arrangements sharded over the workers, and answers
//! peeks, subscriptions and SQL over them.
//!
//! - [`protocol`]: the commands (install a job, drop it, ingest, peek, subscribe, allow
//!   compaction) and responses; commands are sequenced by worker 0 and broadcast through a
//!   timely dataflow, so every worker of every process applies them in one order.
//! - [`worker`]: the loop every worker runs: the agent state (canonical relations and
//!   built-in views, arranged), the jobs' sources and view dataflows, peeks, subscriptions.
//! - [`controller`]: process 0's side: the catalog and the jobs, read holds and compaction.
//! - [`sql`]: SQL over the live state (DataFusion over tables that peek the arrangements);
//!   [`limits`]: the time, memory and answer size one query may take.
//! - [`job`]: job files; [`net`]: connecting the processes of a cluster.
//!
//! The model: one agent state per cluster. The canonical relations (`spans`, `evaluations`,
//! `workflow_events`, `knowledge_events`, `ingest_errors`), the built-in views and the
//! ingestion counters are shared, and every job's sources feed them. A job's own SQL views
//! belong to it. Cancelling a job stops its sources and drops its views (on every worker, at
//! the same point of the command sequence); what it already ingested stays, as it happened.

pub mod controller;
pub mod introspection;
pub mod job;
pub mod limits;
pub mod net;
pub mod protocol;
pub mod sinks;
pub mod sources;
pub mod sql;
pub mod storage;
pub mod worker;

use std::sync::Arc;

use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub use controller::{
    ClusterConfig, ClusterError, Controller, DEFAULT_RESTART_ROWS_AHEAD, SubscribeEvent, Subscription,
};
pub use limits::SqlLimits;
pub use sql::{QueryExtras, QueryShape, SqlAnswer};

/// The Arrow schema of `aimatrix_view_errors`: `view TEXT, error TEXT`.
pub fn view_errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("view", DataType::Utf8, true), Field::new("error", DataType::Utf8, true)]))
}
