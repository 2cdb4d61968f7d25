//! The bodies of the API's answers, as types: the handlers answer with them and the OpenAPI
//! document is derived from them (`utoipa`), so the two cannot drift apart.

use amx_cluster::controller::JobInfo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Every error: `{"error": "…"}`, the message naming the problem (and, for a limit, the
/// setting that raises it).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `POST /v1/jobs`: the new job's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobCreated {
    /// The job's id.
    pub id: u64,
}

/// `GET /v1/jobs`: every job, in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// The jobs (cancelled ones included).
    pub jobs: Vec<JobInfo>,
}

/// `DELETE /v1/jobs/{id}`: the job cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobCancelled {
    /// The job's id.
    pub id: u64,
    /// Always `cancelled`.
    pub state: String,
    /// Whether what it ingested was retracted (`?retract=true`).
    pub retracted: bool,
}

/// The body of `POST /v1/sql` as `application/json`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"sql": "SELECT collection, documents, edits FROM collection_stats"}))]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One SQL statement: a query, or `CREATE`/`DROP MATERIALIZED VIEW`.
    pub sql: String,
}

/// A column: its name and its Arrow type (`Int64`, `Float64`, `Utf8`, `Boolean`,
/// `Timestamp(Millisecond, Some("UTC"))`, `Date32`, …).
#[derive(Debug, Serialize, ToSchema)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Arrow type, as Arrow prints it.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// A query's answer as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct SqlRows {
    /// The answer's columns, in order.
    pub columns: Vec<Column>,
    /// The time every table was read at (ms since the Unix epoch).
    pub timestamp: u64,
    /// One object per row, keyed by column name: NULL as null, timestamps as RFC 3339 text,
    /// NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
}

/// `CREATE MATERIALIZED VIEW`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewCreated {
    /// The view.
    pub created: String,
    /// With `IF NOT EXISTS`: a relation or view of that name was there, nothing was created.
    pub existed: bool,
}

/// `DROP MATERIALIZED VIEW`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewDropped {
    /// The view.
    pub dropped: String,
    /// Whether it existed (with `IF EXISTS`, a missing view is no error).
    pub existed: bool,
}

/// What `POST /v1/sql` answers as JSON: a query's rows, or what a view statement did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SqlResult {
    /// A query.
    Rows(SqlRows),
    /// `CREATE MATERIALIZED VIEW`.
    Created(ViewCreated),
    /// `DROP MATERIALIZED VIEW`.
    Dropped(ViewDropped),
}

/// A relation or view with its columns.
#[derive(Debug, Serialize, ToSchema)]
pub struct Relation {
    /// Name.
    pub name: String,
    /// Columns, in order.
    pub columns: Vec<Column>,
}

/// `GET /v1/catalog`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalog {
    /// Every relation and view, by name.
    pub relations: Vec<Relation>,
}
