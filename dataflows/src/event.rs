//! The event model: the canonical relations every source format decodes into.
//!
//! Column names follow the OpenTelemetry GenAI semantic conventions where one exists
//! (`gen_ai.operation.name` → `operation`, `gen_ai.provider.name` → `provider`,
//! `gen_ai.usage.input_tokens` → `input_tokens`, …). Times are microseconds since the Unix
//! epoch, UTC (SQL `TIMESTAMP`); token counts are `i64` (`BIGINT`); an unknown value is
//! `None` (SQL NULL), never 0 or "".

use std::fmt;

use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

use crate::row::{ColumnType::*, Datum, RelationDesc, Row, ToRow, desc};

/// Microseconds since 1970-01-01T00:00:00Z (UTC).
pub type TimestampUs = i64;

/// A trace id.
///
/// OpenTelemetry trace ids are 128-bit integers written as 32 lower-case hex digits; those
/// are stored as `Hex128`, so the large per-trace states compare integers rather than
/// heap strings. Any other id (a conversation id, `task=3/trial=1`, …) is kept as text.
/// [`TraceId::parse`] and `Display` round-trip exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TraceId {
    /// A 32-hex-digit OpenTelemetry trace id.
    Hex128(u128),
    /// Any other identifier.
    Text(String),
}

impl TraceId {
    /// `Hex128` when `s` is exactly 32 lower-case hex digits, else `Text(s)`.
    pub fn parse(s: &str) -> TraceId {
        if s.len() == 32
            && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && let Ok(v) = u128::from_str_radix(s, 16)
        {
            return TraceId::Hex128(v);
        }
        TraceId::Text(s.to_owned())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceId::Hex128(v) => write!(f, "{v:032x}"),
            TraceId::Text(s) => f.write_str(s),
        }
    }
}

/// A span's status (OpenTelemetry `Status.code`): `ok`, `error` or `unset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SpanStatus {
    /// `unset`: the instrumentation said nothing.
    Unset,
    /// `ok`.
    Ok,
    /// `error`.
    Error,
}

impl SpanStatus {
    /// The lower-case SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }
    /// Parses `ok`/`error`/`unset` (any case; OTLP's `STATUS_CODE_OK` etc. too).
    pub fn parse(s: &str) -> Option<SpanStatus> {
        const PREFIX: &str = "status_code_";
        let s = match s.get(..PREFIX.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
            _ => s,
        };
        [SpanStatus::Ok, SpanStatus::Error, SpanStatus::Unset].into_iter().find(|v| s.eq_ignore_ascii_case(v.as_str()))
    }
}

/// `gen_ai.operation.name` values that are calls to a model (counted as `llm_calls`).
pub const LLM_OPERATIONS: &[&str] = &["chat", "text_completion", "generate_content"];

/// One agent-interaction span (relation `spans`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    /// Trace the span belongs to (`trace_id`, TEXT).
    pub trace_id: TraceId,
    /// Span id (`span_id`, TEXT).
    pub span_id: String,
    /// Parent span id (`parent_span_id`, TEXT, NULL for a root span).
    pub parent_span_id: Option<String>,
    /// Span name, e.g. `chat gpt-4o` (`name`, TEXT).
    pub name: String,
    /// `gen_ai.operation.name`: `chat`, `execute_tool`, `invoke_agent`, `embeddings`, …
    pub operation: Option<String>,
    /// `gen_ai.provider.name`, e.g. `openai`.
    pub provider: Option<String>,
    /// `gen_ai.request.model`.
    pub request_model: Option<String>,
    /// `gen_ai.response.model`.
    pub response_model: Option<String>,
    /// `gen_ai.agent.name`.
    pub agent_name: Option<String>,
    /// `gen_ai.conversation.id`.
    pub conversation_id: Option<String>,
    /// `gen_ai.tool.name`.
    pub tool_name: Option<String>,
    /// `gen_ai.tool.call.id`.
    pub tool_call_id: Option<String>,
    /// `gen_ai.usage.input_tokens` (tokens).
    pub input_tokens: Option<i64>,
    /// `gen_ai.usage.output_tokens` (tokens).
    pub output_tokens: Option<i64>,
    /// `gen_ai.usage.cache_read.input_tokens` (tokens).
    pub cache_read_input_tokens: Option<i64>,
    /// `gen_ai.usage.reasoning.output_tokens` (tokens).
    pub reasoning_output_tokens: Option<i64>,
    /// Start time (µs since epoch, UTC).
    pub start_time: Option<TimestampUs>,
    /// End time (µs since epoch, UTC).
    pub end_time: Option<TimestampUs>,
    /// Status: `ok`, `error` or `unset`.
    pub status: SpanStatus,
    /// `error.type`: the class of error when `status` is `error`.
    pub error_type: Option<String>,
    /// Every other attribute, as JSON object text.
    pub attributes: Option<String>,
}

impl Span {
    /// An `unset` span with the given ids and name and every optional column NULL.
    pub fn new(trace_id: TraceId, span_id: impl Into<String>, name: impl Into<String>) -> Span {
        Span {
            trace_id,
            span_id: span_id.into(),
            parent_span_id: None,
            name: name.into(),
            operation: None,
            provider: None,
            request_model: None,
            response_model: None,
            agent_name: None,
            conversation_id: None,
            tool_name: None,
            tool_call_id: None,
            input_tokens: None,
            output_tokens: None,
            cache_read_input_tokens: None,
            reasoning_output_tokens: None,
            start_time: None,
            end_time: None,
            status: SpanStatus::Unset,
            error_type: None,
            attributes: None,
        }
    }

    /// Whether the span is a model call (`operation` in [`LLM_OPERATIONS`]).
    pub fn is_llm_call(&self) -> bool {
        self.operation.as_deref().is_some_and(|op| LLM_OPERATIONS.contains(&op))
    }

    /// Whether the span is a tool execution (`operation = 'execute_tool'`).
    pub fn is_tool_call(&self) -> bool {
        self.operation.as_deref() == Some("execute_tool")
    }
}

impl ToRow for Span {
    fn desc() -> RelationDesc {
        desc(
            "spans",
            &[],
            &[
                ("trace_id", Text),
                ("span_id", Text),
                ("parent_span_id", Text),
                ("name", Text),
                ("operation", Text),
                ("provider", Text),
                ("request_model", Text),
                ("response_model", Text),
                ("agent_name", Text),
                ("conversation_id", Text),
                ("tool_name", Text),
                ("tool_call_id", Text),
                ("input_tokens", Int),
                ("output_tokens", Int),
                ("cache_read_input_tokens", Int),
                ("reasoning_output_tokens", Int),
                ("start_time", Timestamp),
                ("end_time", Timestamp),
                ("status", Text),
                ("error_type", Text),
                ("attributes", Text),
            ],
        )
    }
    fn to_row(&self) -> Row {
        self.clone().into_row()
    }
    fn into_row(self) -> Row {
        let text = |s: Option<String>| s.map_or(Datum::Null, Datum::Text);
        vec![
            Datum::Text(self.trace_id.to_string()),
            Datum::Text(self.span_id),
            text(self.parent_span_id),
            Datum::Text(self.name),
            text(self.operation),
            text(self.provider),
            text(self.request_model),
            text(self.response_model),
            text(self.agent_name),
            text(self.conversation_id),
            text(self.tool_name),
            text(self.tool_call_id),
            Datum::int(self.input_tokens),
            Datum::int(self.output_tokens),
            Datum::int(self.cache_read_input_tokens),
            Datum::int(self.reasoning_output_tokens),
            Datum::ts(self.start_time),
            Datum::ts(self.end_time),
            Datum::Text(self.status.as_str().to_owned()),
            text(self.error_type),
            text(self.attributes),
        ]
    }
}

/// An evaluation result of a trace or span (relation `evaluations`), e.g. a benchmark reward.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Evaluation {
    /// Evaluated trace (`trace_id`, TEXT).
    pub trace_id: TraceId,
    /// Evaluated span, NULL when the whole trace is evaluated.
    pub span_id: Option<String>,
    /// Evaluation name (`gen_ai.evaluation.name`), e.g. `reward`.
    pub name: String,
    /// Numeric score (`gen_ai.evaluation.score.value`, DOUBLE).
    pub score: Option<OrderedFloat<f64>>,
    /// Label (`gen_ai.evaluation.score.label`), e.g. `pass`.
    pub label: Option<String>,
}

impl ToRow for Evaluation {
    fn desc() -> RelationDesc {
        desc(
            "evaluations",
            &[],
            &[("trace_id", Text), ("span_id", Text), ("name", Text), ("score", Float), ("label", Text)],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.trace_id.to_string()),
            Datum::text(self.span_id.as_deref()),
            Datum::Text(self.name.clone()),
            Datum::float(self.score.map(|s| s.0)),
            Datum::text(self.label.as_deref()),
        ]
    }
}

/// The state of a workflow run or step, normalised across sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkflowState {
    /// Scheduled or queued, not yet running.
    Scheduled,
    /// Running (started).
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with a failure.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Timed out.
    TimedOut,
    /// Terminated by an operator.
    Terminated,
}

impl WorkflowState {
    /// Every state, in declaration order.
    pub const ALL: [WorkflowState; 7] = [
        WorkflowState::Scheduled,
        WorkflowState::Running,
        WorkflowState::Completed,
        WorkflowState::Failed,
        WorkflowState::Cancelled,
        WorkflowState::TimedOut,
        WorkflowState::Terminated,
    ];
    /// The upper-case SQL spelling (`SCHEDULED`, `RUNNING`, …, `TIMED_OUT`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Scheduled => "SCHEDULED",
            WorkflowState::Running => "RUNNING",
            WorkflowState::Completed => "COMPLETED",
            WorkflowState::Failed => "FAILED",
            WorkflowState::Cancelled => "CANCELLED",
            WorkflowState::TimedOut => "TIMED_OUT",
            WorkflowState::Terminated => "TERMINATED",
        }
    }
    /// Parses the SQL spelling (any case).
    pub fn parse(s: &str) -> Option<WorkflowState> {
        let up = s.to_ascii_uppercase();
        WorkflowState::ALL.into_iter().find(|st| st.as_str() == up)
    }
    /// Whether no further transitions follow (completed, failed, cancelled, timed out, terminated).
    pub fn is_terminal(self) -> bool {
        !matches!(self, WorkflowState::Scheduled | WorkflowState::Running)
    }
}

/// One workflow event (relation `workflow_events`): a run-level event when `step_id` is None,
/// else an event of one step (an activity, a child workflow, a job step).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkflowEvent {
    /// Run id (`run_id`, TEXT).
    pub run_id: String,
    /// Workflow (type) name.
    pub workflow_name: Option<String>,
    /// Step id within the run; None for run-level events.
    pub step_id: Option<String>,
    /// Step name (activity type, job step name).
    pub step_name: Option<String>,
    /// Step type: `activity`, `child_workflow`, `job`, `step`, ….
    pub step_type: Option<String>,
    /// Normalised state.
    pub state: WorkflowState,
    /// The source's own word for the state, e.g. `EVENT_TYPE_ACTIVITY_TASK_STARTED`.
    pub raw_state: String,
    /// Attempt number (1 = first try), when the source says.
    pub attempt: Option<i64>,
    /// When the event happened (µs since epoch, UTC).
    pub event_time: Option<TimestampUs>,
    /// The source's sequence number of the event within its run (Temporal `eventId`).
    pub event_seq: Option<i64>,
    /// Failure message for failed/timed-out events.
    pub failure_message: Option<String>,
}

impl ToRow for WorkflowEvent {
    fn desc() -> RelationDesc {
        desc(
            "workflow_events",
            &[],
            &[
                ("run_id", Text),
                ("workflow_name", Text),
                ("step_id", Text),
                ("step_name", Text),
                ("step_type", Text),
                ("state", Text),
                ("raw_state", Text),
                ("attempt", Int),
                ("event_time", Timestamp),
                ("event_seq", Int),
                ("failure_message", Text),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.run_id.clone()),
            Datum::text(self.workflow_name.as_deref()),
            Datum::text(self.step_id.as_deref()),
            Datum::text(self.step_name.as_deref()),
            Datum::text(self.step_type.as_deref()),
            Datum::Text(self.state.as_str().to_owned()),
            Datum::Text(self.raw_state.clone()),
            Datum::int(self.attempt),
            Datum::ts(self.event_time),
            Datum::int(self.event_seq),
            Datum::text(self.failure_message.as_deref()),
        ]
    }
}

/// What a knowledge event does to its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KnowledgeOp {
    /// Create or replace the document.
    Upsert,
    /// Remove the document.
    Delete,
}

impl KnowledgeOp {
    /// `upsert` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            KnowledgeOp::Upsert => "upsert",
            KnowledgeOp::Delete => "delete",
        }
    }
    /// Parses `upsert`/`delete` (any case).
    pub fn parse(s: &str) -> Option<KnowledgeOp> {
        match s.to_ascii_lowercase().as_str() {
            "upsert" => Some(KnowledgeOp::Upsert),
            "delete" => Some(KnowledgeOp::Delete),
            _ => None,
        }
    }
}

/// One knowledge update (relation `knowledge_events`): a document upserted or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KnowledgeEvent {
    /// Collection (index, wiki, bucket) the document belongs to.
    pub collection: String,
    /// Document id within the collection.
    pub document_id: String,
    /// `upsert` or `delete`.
    pub op: KnowledgeOp,
    /// Document version after the event (e.g. a revision id).
    pub version: Option<i64>,
    /// Document size after the event (bytes).
    pub size_bytes: Option<i64>,
    /// When the change happened (µs since epoch, UTC).
    pub event_time: Option<TimestampUs>,
    /// Who made the change.
    pub actor: Option<String>,
    /// Whether the actor is a bot.
    pub is_bot: Option<bool>,
    /// Position of the event in its source (Kafka offset, line number).
    pub source_offset: Option<i64>,
}

impl ToRow for KnowledgeEvent {
    fn desc() -> RelationDesc {
        desc(
            "knowledge_events",
            &[],
            &[
                ("collection", Text),
                ("document_id", Text),
                ("op", Text),
                ("version", Int),
                ("size_bytes", Int),
                ("event_time", Timestamp),
                ("actor", Text),
                ("is_bot", Bool),
                ("source_offset", Int),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.collection.clone()),
            Datum::Text(self.document_id.clone()),
            Datum::Text(self.op.as_str().to_owned()),
            Datum::int(self.version),
            Datum::int(self.size_bytes),
            Datum::ts(self.event_time),
            Datum::text(self.actor.as_deref()),
            Datum::bool(self.is_bot),
            Datum::int(self.source_offset),
        ]
    }
}

/// Largest `raw` kept in an [`IngestError`] (bytes); longer records are cut at a char boundary.
pub const INGEST_ERROR_RAW_MAX_BYTES: usize = 1024;

/// Largest `error` kept in an [`IngestError`] (bytes): a longer message (one that quotes a huge
/// value) is cut at a char boundary and ends in `… (N bytes)`, N its whole length, so that
/// neither the dead-letter relation nor an answer that repeats it (a push's report, OTLP's
/// partial success) grows with the bad input.
pub const INGEST_ERROR_MESSAGE_MAX_BYTES: usize = 1024;

/// The first `max` bytes of `text` at a char boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A record that could not be decoded (relation `ingest_errors`, the dead-letter collection).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IngestError {
    /// Source name from the job file.
    pub source: String,
    /// Where the record is: `path:line` for files, `path:line#element` inside a JSON array.
    pub location: String,
    /// Why it could not be decoded.
    pub error: String,
    /// The record, truncated to [`INGEST_ERROR_RAW_MAX_BYTES`].
    pub raw: String,
}

impl IngestError {
    /// Builds an error, truncating `raw` to [`INGEST_ERROR_RAW_MAX_BYTES`] and `error` to
    /// [`INGEST_ERROR_MESSAGE_MAX_BYTES`] at UTF-8 boundaries.
    pub fn new(
        source: impl Into<String>,
        location: impl Into<String>,
        error: impl Into<String>,
        raw: &str,
    ) -> IngestError {
        let mut error = error.into();
        if error.len() > INGEST_ERROR_MESSAGE_MAX_BYTES {
            error = format!("{}… ({} bytes)", cut(&error, INGEST_ERROR_MESSAGE_MAX_BYTES - 32), error.len());
        }
        IngestError {
            source: source.into(),
            location: location.into(),
            error,
            raw: cut(raw, INGEST_ERROR_RAW_MAX_BYTES).to_owned(),
        }
    }
}

impl ToRow for IngestError {
    fn desc() -> RelationDesc {
        desc("ingest_errors", &[], &[("source", Text), ("location", Text), ("error", Text), ("raw", Text)])
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.source.clone()),
            Datum::Text(self.location.clone()),
            Datum::Text(self.error.clone()),
            Datum::Text(self.raw.clone()),
        ]
    }
}

/// Any decoded record: what a source format produces for one input record.
///
/// Events are transient (decoded, then moved into an input session), so the variants are
/// not boxed to even out their sizes.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Event {
    /// A row of `spans`.
    Span(Span),
    /// A row of `evaluations`.
    Evaluation(Evaluation),
    /// A row of `workflow_events`.
    Workflow(WorkflowEvent),
    /// A row of `knowledge_events`.
    Knowledge(KnowledgeEvent),
    /// A row of `ingest_errors`.
    Error(IngestError),
    /// A row of a relation a source declared (a *table*), or, for a keyed table, the delete
    /// of a key.
    Table(TableRow),
}

/// A change to a relation that a source declared (`[sources.relation]`): a row to append,
/// or, for a table with a key, a row that replaces the key's current one (*upsert*), or the
/// delete of a key (a Kafka tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRow {
    /// The relation's name.
    pub relation: String,
    /// Where the record was in its source (a line or a record number; 0 when unknown): of two
    /// upserts of one key at the same timestamp, the one from the later position wins.
    pub position: u64,
    /// The key's values, in the order of the table's key columns (empty for a table without
    /// a key).
    pub key: Row,
    /// The row, one datum per declared column; `None`: the key is deleted.
    pub row: Option<Row>,
}

/// Reads the columns of a canonical relation's row back, in order ([`Event::from_row`]).
struct Columns {
    relation: &'static str,
    datums: std::vec::IntoIter<Datum>,
    at: usize,
}

impl Columns {
    fn new(relation: &'static str, row: Row, width: usize) -> Result<Columns, String> {
        if row.len() != width {
            return Err(format!("a row of `{relation}` has {} columns, not {width}", row.len()));
        }
        Ok(Columns { relation, datums: row.into_iter(), at: 0 })
    }

    fn next(&mut self) -> Datum {
        self.at += 1;
        self.datums.next().unwrap_or(Datum::Null)
    }

    fn bad(&self, what: &str, datum: &Datum) -> String {
        format!("column {} of a row of `{}`: {datum:?} is not {what}", self.at, self.relation)
    }

    fn text(&mut self) -> Result<String, String> {
        match self.next() {
            Datum::Text(t) => Ok(t),
            other => Err(self.bad("TEXT", &other)),
        }
    }

    fn opt_text(&mut self) -> Result<Option<String>, String> {
        match self.next() {
            Datum::Null => Ok(None),
            Datum::Text(t) => Ok(Some(t)),
            other => Err(self.bad("TEXT or NULL", &other)),
        }
    }

    fn opt_int(&mut self) -> Result<Option<i64>, String> {
        match self.next() {
            Datum::Null => Ok(None),
            Datum::Int(v) => Ok(Some(v)),
            other => Err(self.bad("BIGINT or NULL", &other)),
        }
    }

    fn opt_ts(&mut self) -> Result<Option<TimestampUs>, String> {
        match self.next() {
            Datum::Null => Ok(None),
            Datum::Timestamp(v) => Ok(Some(v)),
            other => Err(self.bad("TIMESTAMP or NULL", &other)),
        }
    }

    fn opt_float(&mut self) -> Result<Option<OrderedFloat<f64>>, String> {
        match self.next() {
            Datum::Null => Ok(None),
            Datum::Float(v) => Ok(Some(v)),
            other => Err(self.bad("DOUBLE or NULL", &other)),
        }
    }

    fn opt_bool(&mut self) -> Result<Option<bool>, String> {
        match self.next() {
            Datum::Null => Ok(None),
            Datum::Bool(v) => Ok(Some(v)),
            other => Err(self.bad("BOOLEAN or NULL", &other)),
        }
    }

    fn parsed<T>(&mut self, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, String> {
        let text = self.text()?;
        parse(&text).ok_or_else(|| self.bad(what, &Datum::Text(text.clone())))
    }
}

impl Event {
    /// The event whose row of canonical relation `relation` (`spans`, `evaluations`,
    /// `workflow_events`, `knowledge_events`, `ingest_errors`) is `row`: the inverse of
    /// [`ToRow::to_row`], so that a relation's contents read back as rows (a durable
    /// server's snapshot) feed the built-in views as the decoded events did. A DOUBLE keeps
    /// its canonical bits (`-0.0` reads back as `0.0`, as the row stored it).
    ///
    /// # Errors
    /// Another relation; a row of another width, or a column of another type (naming it).
    pub fn from_row(relation: &str, row: Row) -> Result<Event, String> {
        match relation {
            "spans" => {
                let mut c = Columns::new("spans", row, 21)?;
                Ok(Event::Span(Span {
                    trace_id: TraceId::parse(&c.text()?),
                    span_id: c.text()?,
                    parent_span_id: c.opt_text()?,
                    name: c.text()?,
                    operation: c.opt_text()?,
                    provider: c.opt_text()?,
                    request_model: c.opt_text()?,
                    response_model: c.opt_text()?,
                    agent_name: c.opt_text()?,
                    conversation_id: c.opt_text()?,
                    tool_name: c.opt_text()?,
                    tool_call_id: c.opt_text()?,
                    input_tokens: c.opt_int()?,
                    output_tokens: c.opt_int()?,
                    cache_read_input_tokens: c.opt_int()?,
                    reasoning_output_tokens: c.opt_int()?,
                    start_time: c.opt_ts()?,
                    end_time: c.opt_ts()?,
                    status: c.parsed("a span status", SpanStatus::parse)?,
                    error_type: c.opt_text()?,
                    attributes: c.opt_text()?,
                }))
            }
            "evaluations" => {
                let mut c = Columns::new("evaluations", row, 5)?;
                Ok(Event::Evaluation(Evaluation {
                    trace_id: TraceId::parse(&c.text()?),
                    span_id: c.opt_text()?,
                    name: c.text()?,
                    score: c.opt_float()?,
                    label: c.opt_text()?,
                }))
            }
            "workflow_events" => {
                let mut c = Columns::new("workflow_events", row, 11)?;
                Ok(Event::Workflow(WorkflowEvent {
                    run_id: c.text()?,
                    workflow_name: c.opt_text()?,
                    step_id: c.opt_text()?,
                    step_name: c.opt_text()?,
                    step_type: c.opt_text()?,
                    state: c.parsed("a workflow state", WorkflowState::parse)?,
                    raw_state: c.text()?,
                    attempt: c.opt_int()?,
                    event_time: c.opt_ts()?,
                    event_seq: c.opt_int()?,
                    failure_message: c.opt_text()?,
                }))
            }
            "knowledge_events" => {
                let mut c = Columns::new("knowledge_events", row, 9)?;
                Ok(Event::Knowledge(KnowledgeEvent {
                    collection: c.text()?,
                    document_id: c.text()?,
                    op: c.parsed("`upsert` or `delete`", KnowledgeOp::parse)?,
                    version: c.opt_int()?,
                    size_bytes: c.opt_int()?,
                    event_time: c.opt_ts()?,
                    actor: c.opt_text()?,
                    is_bot: c.opt_bool()?,
                    source_offset: c.opt_int()?,
                }))
            }
            "ingest_errors" => {
                let mut c = Columns::new("ingest_errors", row, 4)?;
                Ok(Event::Error(IngestError {
                    source: c.text()?,
                    location: c.text()?,
                    error: c.text()?,
                    raw: c.text()?,
                }))
            }
            other => Err(format!("`{other}` is no canonical relation")),
        }
    }

    /// The canonical relation the event belongs to and its row there (`None` for a row of a
    /// relation a source declared).
    pub fn to_relation_row(&self) -> Option<(&'static str, Row)> {
        match self {
            Event::Span(e) => Some(("spans", e.to_row())),
            Event::Evaluation(e) => Some(("evaluations", e.to_row())),
            Event::Workflow(e) => Some(("workflow_events", e.to_row())),
            Event::Knowledge(e) => Some(("knowledge_events", e.to_row())),
            Event::Error(e) => Some(("ingest_errors", e.to_row())),
            Event::Table(_) => None,
        }
    }

    /// The canonical relations [`Event::from_row`] reads, as `relations()` orders them.
    pub const RELATIONS: [&'static str; 5] =
        ["spans", "evaluations", "workflow_events", "knowledge_events", "ingest_errors"];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message or a record past its limit is cut at a char boundary (a 2-byte `é` straddles
    /// the cut here); the message says how long it was.
    #[test]
    fn ingest_errors_are_bounded() {
        let message = format!("attribute `x` is {}", "é".repeat(600_000));
        let raw = "é".repeat(600);
        let e = IngestError::new("s", "push:1", message.clone(), &raw);
        assert!(e.error.len() <= INGEST_ERROR_MESSAGE_MAX_BYTES, "{}", e.error.len());
        assert!(e.error.starts_with("attribute `x` is éé"));
        assert!(e.error.ends_with(&format!("… ({} bytes)", message.len())), "{}", &e.error[e.error.len() - 40..]);
        assert_eq!(e.raw, "é".repeat(512));
        let short = IngestError::new("s", "push:1", "bad", "{}");
        assert_eq!((short.error.as_str(), short.raw.as_str()), ("bad", "{}"));
    }

    /// Every kind of event, with every optional column both set and NULL, reads back from its
    /// row as it was (the rows written out by hand here, not by `to_row`, are checked too).
    #[test]
    fn events_read_back_from_their_rows() {
        let mut full = Span::new(TraceId::parse("0af7651916cd43dd8448eb211c80319c"), "s1", "chat gpt-4o");
        full.parent_span_id = Some("s0".into());
        full.operation = Some("chat".into());
        full.provider = Some("openai".into());
        full.request_model = Some("gpt-4o".into());
        full.response_model = Some("gpt-4o-2024-08-06".into());
        full.agent_name = Some("a".into());
        full.conversation_id = Some("c".into());
        full.tool_name = Some("t".into());
        full.tool_call_id = Some("call_1".into());
        full.input_tokens = Some(12);
        full.output_tokens = Some(3);
        full.cache_read_input_tokens = Some(0);
        full.reasoning_output_tokens = Some(1);
        full.start_time = Some(1_700_000_000_000_000);
        full.end_time = Some(1_700_000_000_250_000);
        full.status = SpanStatus::Error;
        full.error_type = Some("timeout".into());
        full.attributes = Some("{\"k\":1}".into());
        let bare = Span::new(TraceId::Text("task=3/trial=1".into()), "x", "n");
        let events = vec![
            Event::Span(full),
            Event::Span(bare),
            Event::Evaluation(Evaluation {
                trace_id: TraceId::Text("t".into()),
                span_id: None,
                name: "reward".into(),
                score: Some(OrderedFloat(0.5)),
                label: Some("pass".into()),
            }),
            Event::Workflow(WorkflowEvent {
                run_id: "r".into(),
                workflow_name: Some("w".into()),
                step_id: None,
                step_name: Some("s".into()),
                step_type: Some("activity".into()),
                state: WorkflowState::TimedOut,
                raw_state: "EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT".into(),
                attempt: Some(2),
                event_time: Some(5),
                event_seq: None,
                failure_message: Some("late".into()),
            }),
            Event::Knowledge(KnowledgeEvent {
                collection: "kb".into(),
                document_id: "d".into(),
                op: KnowledgeOp::Delete,
                version: Some(7),
                size_bytes: None,
                event_time: None,
                actor: Some("bot".into()),
                is_bot: Some(true),
                source_offset: Some(9),
            }),
            Event::Error(IngestError::new("src", "f.jsonl:3", "not JSON", "{")),
        ];
        for event in events {
            let (relation, row) = event.to_relation_row().expect("canonical");
            assert_eq!(Event::from_row(relation, row).expect("reads back"), event);
        }
        // A row written by hand: the knowledge event above's columns.
        let row = vec![
            Datum::Text("kb".into()),
            Datum::Text("d".into()),
            Datum::Text("upsert".into()),
            Datum::Null,
            Datum::Int(40),
            Datum::Timestamp(1),
            Datum::Null,
            Datum::Bool(false),
            Datum::Null,
        ];
        let Event::Knowledge(k) = Event::from_row("knowledge_events", row).expect("reads") else { panic!() };
        assert_eq!((k.op, k.size_bytes, k.is_bot, k.version), (KnowledgeOp::Upsert, Some(40), Some(false), None));
    }

    /// A row that is not one of the relation's is refused, naming what is wrong.
    #[test]
    fn a_row_of_another_shape_is_refused() {
        let err = Event::from_row("ingest_errors", vec![Datum::Text("a".into())]).unwrap_err();
        assert!(err.contains("1 columns, not 4"), "{err}");
        let row = vec![Datum::Int(1), Datum::Text("b".into()), Datum::Text("c".into()), Datum::Text("d".into())];
        let err = Event::from_row("ingest_errors", row).unwrap_err();
        assert!(err.contains("column 1") && err.contains("not TEXT"), "{err}");
        assert!(Event::from_row("documents", Vec::new()).unwrap_err().contains("no canonical relation"));
    }

    #[test]
    fn span_status_forms() {
        let cases = [
            ("ok", Some(SpanStatus::Ok)),
            ("OK", Some(SpanStatus::Ok)),
            ("Error", Some(SpanStatus::Error)),
            ("unset", Some(SpanStatus::Unset)),
            ("STATUS_CODE_ERROR", Some(SpanStatus::Error)),
            ("status_code_ok", Some(SpanStatus::Ok)),
            ("Status_Code_Unset", Some(SpanStatus::Unset)),
            ("status_code_", None),
            ("status_code_status_code_ok", None),
            ("okay", None),
            ("", None),
            (" ok", None),
            ("ééééééé", None),
            ("status_codé_ok", None),
        ];
        for (text, expected) in cases {
            assert_eq!(SpanStatus::parse(text), expected, "{text:?}");
        }
    }

    /// A span's row: its columns in the order of `desc`, texts moved in, NULL for `None`.
    #[test]
    fn a_span_row() {
        let mut full = Span::new(TraceId::parse("4fcca39ab683d2e6337ea2dfb09b2a5c"), "s1", "chat m");
        full.parent_span_id = Some("p".into());
        full.operation = Some("chat".into());
        full.provider = Some("openai".into());
        full.request_model = Some("gpt-4o".into());
        full.response_model = Some("gpt-4o-2024".into());
        full.agent_name = Some("a".into());
        full.conversation_id = Some("c".into());
        full.tool_name = Some("t".into());
        full.tool_call_id = Some("tc".into());
        full.input_tokens = Some(1);
        full.output_tokens = Some(2);
        full.cache_read_input_tokens = Some(3);
        full.reasoning_output_tokens = Some(4);
        full.start_time = Some(5);
        full.end_time = Some(6);
        full.status = SpanStatus::Error;
        full.error_type = Some("timeout".into());
        full.attributes = Some("{}".into());
        let text = |s: &str| Datum::Text(s.to_owned());
        let expected = vec![
            text("4fcca39ab683d2e6337ea2dfb09b2a5c"),
            text("s1"),
            text("p"),
            text("chat m"),
            text("chat"),
            text("openai"),
            text("gpt-4o"),
            text("gpt-4o-2024"),
            text("a"),
            text("c"),
            text("t"),
            text("tc"),
            Datum::Int(1),
            Datum::Int(2),
            Datum::Int(3),
            Datum::Int(4),
            Datum::Timestamp(5),
            Datum::Timestamp(6),
            text("error"),
            text("timeout"),
            text("{}"),
        ];
        assert_eq!(Span::desc().columns.len(), expected.len());
        assert_eq!(full.to_row(), expected);
        assert_eq!(full.into_row(), expected);
        let mut bare = vec![Datum::Null; expected.len()];
        bare[0] = text("x");
        bare[1] = text("s2");
        bare[3] = text("n");
        bare[18] = text("unset");
        assert_eq!(Span::new(TraceId::parse("x"), "s2", "n").into_row(), bare);
    }
}
