//! Introspection relations: the controller's own state, readable with SQL like any relation
//! (as Materialize's `mz_internal` and `mz_introspection` relations), read when a query runs.
//!
//! | relation | columns | one row per |
//! |---|---|---|
//! | `aimatrix_jobs` | `id` BIGINT, `name` TEXT (null: none given), `kind` TEXT (`job`, or `view` for one created with `CREATE MATERIALIZED VIEW`), `state` TEXT (`running`, `failed`, `cancelled`), `sources` TEXT, `views` TEXT, `sinks` TEXT (names, `, `-separated), `errors` TEXT (`; `-separated; null: none) | job, cancelled ones too |
//! | `aimatrix_frontiers` | `collection` TEXT, `frontier` BIGINT (ms since the Unix epoch: every change before it is complete), `lag_ms` BIGINT (the wall clock's lead over it, ≥ 0) | collection every worker maintains |
//! | `aimatrix_subscriptions` | `id` BIGINT, `collection` TEXT, `client` TEXT (`http`, `pgwire`, `sink`), `as_of` BIGINT (ms: the snapshot's time), `progressed` BIGINT (ms: every change before it has been sent; null while the snapshot is read), `queued_rows` BIGINT, `queued_bytes` BIGINT (changes sent and not yet taken by the subscriber, and their bytes, estimated) | open subscription (HTTP, pgwire, sinks) |
//!
//! Unlike the collections the workers maintain, these are read from the controller's memory at
//! the moment the query runs, not at the query's timestamp. Views cannot read them (they are
//! not collections of the dataflows).

use std::sync::Arc;

use amx_sql::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::controller::Controller;

/// The names of the introspection relations.
pub const RELATIONS: [&str; 3] = ["aimatrix_jobs", "aimatrix_frontiers", "aimatrix_subscriptions"];

/// The schema of introspection relation `name` (`None`: no such relation).
pub fn schema(name: &str) -> Option<SchemaRef> {
    let text = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    let int = |n: &str, nullable: bool| Field::new(n, DataType::Int64, nullable);
    let fields = match name {
        "aimatrix_jobs" => vec![
            int("id", false),
            text("name", true),
            text("kind", false),
            text("state", false),
            text("sources", false),
            text("views", false),
            text("sinks", false),
            text("errors", true),
        ],
        "aimatrix_frontiers" => vec![text("collection", false), int("frontier", false), int("lag_ms", false)],
        "aimatrix_subscriptions" => vec![
            int("id", false),
            text("collection", false),
            text("client", false),
            int("as_of", false),
            int("progressed", true),
            int("queued_rows", false),
            int("queued_bytes", false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// Introspection relation `name` now, as one batch (`None`: no such relation).
pub fn batch(controller: &Controller, name: &str) -> Option<RecordBatch> {
    let schema = schema(name)?;
    let int = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let clamp = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
    let columns: Vec<ArrayRef> = match name {
        "aimatrix_jobs" => {
            let jobs = controller.all_jobs();
            let names = |list: Vec<String>| Some(list.join(", "));
            vec![
                int(jobs.iter().map(|j| Some(clamp(j.id.0))).collect()),
                text(jobs.iter().map(|j| j.name.clone()).collect()),
                text(jobs.iter().map(|j| Some(label(&j.kind))).collect()),
                text(jobs.iter().map(|j| Some(label(&j.state))).collect()),
                text(jobs.iter().map(|j| names(j.sources.iter().map(|s| s.name.clone()).collect())).collect()),
                text(jobs.iter().map(|j| names(j.views.iter().map(|v| v.name.clone()).collect())).collect()),
                text(jobs.iter().map(|j| names(j.sinks.iter().map(|s| s.name.clone()).collect())).collect()),
                text(jobs.iter().map(|j| (!j.errors.is_empty()).then(|| j.errors.join("; "))).collect()),
            ]
        }
        "aimatrix_frontiers" => {
            let now = crate::controller::now_ms();
            let uppers = controller.collection_uppers();
            vec![
                text(uppers.iter().map(|(c, _)| Some(c.clone())).collect()),
                int(uppers.iter().map(|(_, u)| Some(clamp(*u))).collect()),
                int(uppers.iter().map(|(_, u)| Some(clamp(now.saturating_sub(*u)))).collect()),
            ]
        }
        "aimatrix_subscriptions" => {
            let open = controller.subscriptions_open();
            vec![
                int(open.iter().map(|s| Some(clamp(s.id))).collect()),
                text(open.iter().map(|s| Some(s.collection.clone())).collect()),
                text(open.iter().map(|s| Some(s.client.to_owned())).collect()),
                int(open.iter().map(|s| Some(clamp(s.as_of))).collect()),
                int(open.iter().map(|s| s.progressed.map(clamp)).collect()),
                int(open.iter().map(|s| Some(clamp(s.queued_rows))).collect()),
                int(open.iter().map(|s| Some(clamp(s.queued_bytes))).collect()),
            ]
        }
        _ => return None,
    };
    RecordBatch::try_new(schema, columns).ok()
}

/// The text of a job's kind or state, as the HTTP API writes it (its serde name: `running`).
fn label(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}
