//! Introspection relations: the controller's own state, readable with SQL like any relation
//! (as Materialize's `mz_internal` and `mz_introspection` relations), read when a query runs.
//!
//! | relation | columns | one row per |
//! |---|---|---|
//! | `aimatrix_jobs` | `id` BIGINT, `name` TEXT (null: none given), `kind` TEXT (`job`, or `view` for one created with `CREATE MATERIALIZED VIEW`), `state` TEXT (`running`, `failed`, `cancelled`), `sources` TEXT, `views` TEXT, `sinks` TEXT (names, `, `-separated), `errors` TEXT (`; `-separated; null: none), then the backfill of its file sources, summed (null for a cancelled job): `records_read` BIGINT, `bytes_read` BIGINT, `bytes_total` BIGINT (what their files hold now), `hydration` DOUBLE (`bytes_read / bytes_total`, 0 to 1; 1 with no file source), `rate_bytes_per_s` BIGINT (bytes read since this process began reading them, over the seconds since; null in the first 200 ms and once all are read), `eta_ms` BIGINT (time left until the slowest is read at its rate; 0 once all are; null while unknown) | job, cancelled ones too |
//! | `aimatrix_frontiers` | `collection` TEXT, `frontier` BIGINT (ms since the Unix epoch: every change before it is complete), `lag_ms` BIGINT (the wall clock's lead over it, ≥ 0) | collection every worker maintains |
//! | `aimatrix_dataflows` | `worker` BIGINT, `id` BIGINT (timely's dataflow index), `name` TEXT (`control`, `agent state`, `job N`, `subscribe C` …), `operators` BIGINT, `arrangements` BIGINT, `records` BIGINT (updates in its arrangements), `elapsed_ns` BIGINT (time the worker spent in it) | dataflow on each worker |
//! | `aimatrix_operators` | `worker` BIGINT, `id` BIGINT (timely's operator id, unique on its worker), `dataflow_id` BIGINT, `address` TEXT (`2.5.1`: the dataflow's index, then the index in each scope), `name` TEXT, `activations` BIGINT (times scheduled), `elapsed_ns` BIGINT (time scheduled; a scope's includes its operators'), `records_received` BIGINT (records on its inputs) | operator on each worker |
//! | `aimatrix_operator_durations` | `worker` BIGINT, `id` BIGINT (as in `aimatrix_operators`), `duration_ns` BIGINT (a power of two), `activations` BIGINT (its activations that took at most `duration_ns` and more than half of it) | operator on each worker and length of activation it had (Materialize's `mz_compute_operator_durations_histogram`) |
//! | `aimatrix_arrangements` | `worker` BIGINT, `operator_id` BIGINT, `dataflow_id` BIGINT, `name` TEXT (the operator's: `Arrange spans` for a readable collection's arrangement), `collection` TEXT (the readable collection it holds; null for the arrangements inside views' operators), `records` BIGINT (updates `(row, time, diff)` held), `batches` BIGINT, `bytes` BIGINT (estimated for the readable collections' arrangements: the mean size of a sample of each batch's rows times its rows, plus a time and a difference per update; null for others) | arrangement on each worker |
//! | `aimatrix_subscriptions` | `id` BIGINT, `collection` TEXT, `client` TEXT (`http`, `pgwire`, `sink`), `as_of` BIGINT (ms: the snapshot's time), `progressed` BIGINT (ms: every change before it has been sent; null while the snapshot is read), `queued_rows` BIGINT, `queued_bytes` BIGINT (changes sent and not yet taken by the subscriber, and their bytes, estimated) | open subscription (HTTP, pgwire, sinks) |
//!
//! Unlike the collections the workers maintain, these are read from the controller's memory at
//! the moment the query runs, not at the query's timestamp. Views cannot read them (they are
//! not collections of the dataflows). The dataflows, operators and arrangements come from
//! timely's and differential's logging streams on each worker (see `worker/logging.rs`),
//! reported to the controller about once a second: a query sees each worker as of its last
//! report. Sum over `worker` for a whole cluster's figures:
//! `SELECT collection, sum(records), sum(bytes) FROM aimatrix_arrangements GROUP BY collection`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use amx_sql::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::controller::{Backfill, Controller, JobState};
use crate::protocol::{ArrangementReport, OperatorReport, WorkerReport};

/// The names of the introspection relations.
pub const RELATIONS: [&str; 7] = [
    "aimatrix_jobs",
    "aimatrix_frontiers",
    "aimatrix_subscriptions",
    "aimatrix_dataflows",
    "aimatrix_operators",
    "aimatrix_operator_durations",
    "aimatrix_arrangements",
];

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
            int("records_read", true),
            int("bytes_read", true),
            int("bytes_total", true),
            Field::new("hydration", DataType::Float64, true),
            int("rate_bytes_per_s", true),
            int("eta_ms", true),
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
        "aimatrix_dataflows" => vec![
            int("worker", false),
            int("id", false),
            text("name", false),
            int("operators", false),
            int("arrangements", false),
            int("records", false),
            int("elapsed_ns", false),
        ],
        "aimatrix_operators" => vec![
            int("worker", false),
            int("id", false),
            int("dataflow_id", false),
            text("address", false),
            text("name", false),
            int("activations", false),
            int("elapsed_ns", false),
            int("records_received", false),
        ],
        "aimatrix_operator_durations" => {
            vec![int("worker", false), int("id", false), int("duration_ns", false), int("activations", false)]
        }
        "aimatrix_arrangements" => vec![
            int("worker", false),
            int("operator_id", false),
            int("dataflow_id", false),
            text("name", false),
            text("collection", true),
            int("records", false),
            int("batches", false),
            int("bytes", true),
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
            let backfill: Vec<Option<Backfill>> = jobs
                .iter()
                .map(|j| {
                    let files = controller.file_progress(j.id);
                    (j.state != JobState::Cancelled).then(|| Backfill::of(files.iter().map(|(_, p)| p)))
                })
                .collect();
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
                int(backfill.iter().map(|b| b.map(|b| clamp(b.records_read))).collect()),
                int(backfill.iter().map(|b| b.map(|b| clamp(b.bytes_read))).collect()),
                int(backfill.iter().map(|b| b.map(|b| clamp(b.bytes_total))).collect()),
                Arc::new(Float64Array::from(backfill.iter().map(|b| b.map(|b| b.fraction())).collect::<Vec<_>>())),
                int(backfill.iter().map(|b| b.and_then(|b| b.rate_bytes_per_s).map(clamp)).collect()),
                int(backfill.iter().map(|b| b.and_then(|b| b.eta_ms).map(clamp)).collect()),
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
        "aimatrix_dataflows" | "aimatrix_operators" | "aimatrix_operator_durations" | "aimatrix_arrangements" => {
            logged(name, &controller.worker_reports())?
        }
        _ => return None,
    };
    RecordBatch::try_new(schema, columns).ok()
}

/// A row of `aimatrix_dataflows`, keyed by (worker, index): its name, operators, arrangements,
/// their records, and its elapsed ns.
type Dataflow = (String, i64, i64, i64, i64);

/// The columns of `aimatrix_dataflows`, `aimatrix_operators`, `aimatrix_operator_durations` or
/// `aimatrix_arrangements` from the workers' `reports`.
fn logged(name: &str, reports: &BTreeMap<usize, WorkerReport>) -> Option<Vec<ArrayRef>> {
    let int = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let index = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    // The dataflow of an operator is the first element of its address.
    let dataflow = |o: &OperatorReport| o.address.first().copied().map_or(-1, index);
    Some(match name {
        "aimatrix_dataflows" => {
            let mut dataflows: BTreeMap<(usize, usize), Dataflow> = BTreeMap::new();
            for (worker, report) in reports {
                for o in report.operators.iter().filter(|o| o.address.len() == 1) {
                    dataflows.insert((*worker, o.address[0]), (o.name.clone(), 0, 0, 0, clamp(o.elapsed_ns)));
                }
                let dataflow_of: HashMap<usize, usize> =
                    report.operators.iter().filter_map(|o| Some((o.id, *o.address.first()?))).collect();
                for o in report.operators.iter().filter(|o| o.address.len() > 1) {
                    if let Some(d) = dataflows.get_mut(&(*worker, o.address[0])) {
                        d.1 += 1;
                    }
                }
                for a in &report.arrangements {
                    if let Some(d) = dataflow_of.get(&a.operator).and_then(|i| dataflows.get_mut(&(*worker, *i))) {
                        d.2 += 1;
                        d.3 += a.records;
                    }
                }
            }
            let rows: Vec<_> = dataflows.into_iter().collect();
            vec![
                int(rows.iter().map(|((w, _), _)| index(*w)).collect()),
                int(rows.iter().map(|((_, i), _)| index(*i)).collect()),
                text(rows.iter().map(|(_, d)| Some(d.0.clone())).collect()),
                int(rows.iter().map(|(_, d)| d.1).collect()),
                int(rows.iter().map(|(_, d)| d.2).collect()),
                int(rows.iter().map(|(_, d)| d.3).collect()),
                int(rows.iter().map(|(_, d)| d.4).collect()),
            ]
        }
        "aimatrix_operators" => {
            let rows: Vec<(usize, &OperatorReport)> =
                reports.iter().flat_map(|(w, r)| r.operators.iter().map(move |o| (*w, o))).collect();
            let address = |o: &OperatorReport| o.address.iter().map(usize::to_string).collect::<Vec<_>>().join(".");
            vec![
                int(rows.iter().map(|(w, _)| index(*w)).collect()),
                int(rows.iter().map(|(_, o)| index(o.id)).collect()),
                int(rows.iter().map(|(_, o)| dataflow(o)).collect()),
                text(rows.iter().map(|(_, o)| Some(address(o))).collect()),
                text(rows.iter().map(|(_, o)| Some(o.name.clone())).collect()),
                int(rows.iter().map(|(_, o)| clamp(o.activations)).collect()),
                int(rows.iter().map(|(_, o)| clamp(o.elapsed_ns)).collect()),
                int(rows.iter().map(|(_, o)| clamp(o.records_received)).collect()),
            ]
        }
        "aimatrix_operator_durations" => {
            let rows: Vec<(usize, usize, u64, u64)> = reports
                .iter()
                .flat_map(|(w, r)| r.operators.iter().map(move |o| (*w, o)))
                .flat_map(|(w, o)| o.durations.iter().map(move |(ns, n)| (w, o.id, *ns, *n)))
                .collect();
            vec![
                int(rows.iter().map(|r| index(r.0)).collect()),
                int(rows.iter().map(|r| index(r.1)).collect()),
                int(rows.iter().map(|r| clamp(r.2)).collect()),
                int(rows.iter().map(|r| clamp(r.3)).collect()),
            ]
        }
        "aimatrix_arrangements" => {
            let mut rows: Vec<(usize, &ArrangementReport, Option<&OperatorReport>)> = Vec::new();
            for (worker, report) in reports {
                let operators: HashMap<usize, &OperatorReport> = report.operators.iter().map(|o| (o.id, o)).collect();
                rows.extend(report.arrangements.iter().map(|a| (*worker, a, operators.get(&a.operator).copied())));
            }
            vec![
                int(rows.iter().map(|(w, ..)| index(*w)).collect()),
                int(rows.iter().map(|(_, a, _)| index(a.operator)).collect()),
                int(rows.iter().map(|(.., o)| o.map_or(-1, dataflow)).collect()),
                text(rows.iter().map(|(.., o)| Some(o.map_or_else(String::new, |o| o.name.clone()))).collect()),
                text(rows.iter().map(|(_, a, _)| a.collection.clone()).collect()),
                int(rows.iter().map(|(_, a, _)| a.records).collect()),
                int(rows.iter().map(|(_, a, _)| a.batches).collect()),
                Arc::new(Int64Array::from(rows.iter().map(|(_, a, _)| a.bytes.map(clamp)).collect::<Vec<_>>())),
            ]
        }
        _ => return None,
    })
}

/// The text of a job's kind or state, as the HTTP API writes it (its serde name: `running`).
fn label(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}
