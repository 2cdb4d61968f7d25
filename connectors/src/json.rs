//! Format `json`: any JSON records mapped onto ONE relation by a declarative mapping.
//!
//! Options:
//!
//! | option | meaning |
//! | --- | --- |
//! | `relation` | required: `spans`, `evaluations`, `workflow_events` or `knowledge_events`; or `model_prices`, read as a declared relation with a key ([`crate::model_prices_table`]: a record upserts its key) |
//! | `time_unit` | unit of numeric times: `s`, `ms` (default), `us` or `ns` |
//! | `mapping` | table: column → spec |
//!
//! Specs:
//!
//! | spec | value |
//! | --- | --- |
//! | `"/a/b"` | the value at a JSON pointer (RFC 6901); missing or null → NULL |
//! | `{ const = VALUE }` | a constant |
//! | `{ pointer = "/type", map = { edit = "upsert" }, default = "upsert" }` | the value at the pointer translated by `map` (looked up by its text); `default` when the value is missing or not in `map`; without `default` a value not in `map` is an error (a missing one is NULL) |
//! | `{ pointer = "/x", unit = "s" }` | a time column in its own unit |
//! | `{ metadata = "/key" }` | the value at a JSON pointer into the record's metadata ([`Record::metadata`]): for a Kafka message `/topic`, `/partition`, `/offset`, `/timestamp` (ms), `/key` (text) and `/headers/NAME` (text); for format `debezium`, the change event's envelope at `/debezium/…` ([`crate::debezium`]); NULL where the source has none |
//!
//! `map`, `default` and `unit` combine freely with `pointer` and `metadata`. Unmapped columns
//! are NULL.
//! Required columns (spans: `trace_id`, `span_id`, `name`; evaluations: `trace_id`, `name`;
//! workflow_events: `run_id`, `state`; knowledge_events: `collection`, `document_id`, `op`)
//! must be mapped (else a [`ConfigError`]) and a record where one is NULL is an ingest error
//! (`missing required column `document_id` (/title)`), as is a record where one is the empty
//! string (`empty required column `trace_id` (/trace_id)`: unknown values are NULL, never
//! `""`). Fallbacks: a span's `name` is its
//! `operation` when `name` is unmapped or NULL; a workflow event's `raw_state` is the state's
//! source text (before `map`) when unmapped or NULL; a span's `status` is `unset` when NULL.
//!
//! Conversions (a value that does not convert is an ingest error naming the column and value):
//! - TEXT: strings; numbers and bools as JSON renders them; objects and arrays as compact JSON;
//! - BIGINT: integers, or strings holding one (floats are errors); token counts (the spans'
//!   `*_tokens` columns) must be in `0..=1000000000`;
//! - DOUBLE: numbers, or strings holding a finite one (CSV fields are strings);
//! - BOOLEAN: booleans, or the strings `true`/`false` (any case);
//! - TIMESTAMP: RFC 3339 strings, or numbers (or numeric strings) in the column's unit,
//!   within the years 0001..=9999 (see [`time`]);
//! - `trace_id`: text, then [`TraceId::parse`]; `status`: [`SpanStatus::parse`] (or the OTLP
//!   codes 0/1/2); `state`: [`WorkflowState::parse`] (any case; `CANCELED` too); `op`:
//!   [`KnowledgeOp::parse`].

use std::cell::Cell;
use std::collections::BTreeMap;

use amx_dataflows::event::{
    Evaluation, Event, KnowledgeEvent, KnowledgeOp, Span, SpanStatus, TableRow, TraceId, WorkflowEvent, WorkflowState,
};
use amx_dataflows::row::{ColumnType, Datum, RelationDesc, ToRow};
use ordered_float::OrderedFloat;
use serde_json::Value;

use crate::fields::FieldTree;
use crate::options::{Options, bad};
use crate::time::{self, TimeUnit};
use crate::{ConfigError, Decoder, MAX_TOKENS, Record, error, parse_record, short, value_text};

/// The format's name.
pub const FORMAT: &str = "json";

/// The relation a `json` source feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    /// `spans` ([`Span`]).
    Spans,
    /// `evaluations` ([`Evaluation`]).
    Evaluations,
    /// `workflow_events` ([`WorkflowEvent`]).
    WorkflowEvents,
    /// `knowledge_events` ([`KnowledgeEvent`]).
    KnowledgeEvents,
}

impl Relation {
    /// Every relation, in a stable order.
    pub const ALL: [Relation; 4] =
        [Relation::Spans, Relation::Evaluations, Relation::WorkflowEvents, Relation::KnowledgeEvents];

    /// The relation's description (name and columns) from the event model.
    pub fn desc(self) -> RelationDesc {
        match self {
            Relation::Spans => Span::desc(),
            Relation::Evaluations => Evaluation::desc(),
            Relation::WorkflowEvents => WorkflowEvent::desc(),
            Relation::KnowledgeEvents => KnowledgeEvent::desc(),
        }
    }

    /// The relation's SQL name.
    pub fn name(self) -> &'static str {
        self.desc().name
    }

    /// Parses a relation name.
    pub fn parse(s: &str) -> Option<Relation> {
        Relation::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The columns that cannot be NULL.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            Relation::Spans => &["trace_id", "span_id", "name"],
            Relation::Evaluations => &["trace_id", "name"],
            Relation::WorkflowEvents => &["run_id", "state"],
            Relation::KnowledgeEvents => &["collection", "document_id", "op"],
        }
    }
}

/// How a column's values are converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    TraceId,
    Int,
    /// A token count: an integer in `0..=MAX_TOKENS`.
    Tokens,
    Float,
    Bool,
    Timestamp,
    Status,
    State,
    Op,
}

impl Kind {
    fn of(relation: Relation, column: &str, ty: ColumnType) -> Kind {
        match (relation, column) {
            (Relation::Spans | Relation::Evaluations, "trace_id") => Kind::TraceId,
            (Relation::Spans, "status") => Kind::Status,
            (Relation::WorkflowEvents, "state") => Kind::State,
            (Relation::KnowledgeEvents, "op") => Kind::Op,
            (
                Relation::Spans,
                "input_tokens" | "output_tokens" | "cache_read_input_tokens" | "reasoning_output_tokens",
            ) => Kind::Tokens,
            _ => Kind::of_type(ty),
        }
    }

    /// How a value of a column of type `ty` is converted, outside the canonical relations'
    /// columns of their own kinds.
    fn of_type(ty: ColumnType) -> Kind {
        match ty {
            ColumnType::Text => Kind::Text,
            ColumnType::Int => Kind::Int,
            ColumnType::Float => Kind::Float,
            ColumnType::Bool => Kind::Bool,
            ColumnType::Timestamp => Kind::Timestamp,
        }
    }
}

/// Where a column's value comes from.
#[derive(Clone, Debug)]
enum Source {
    Pointer(String),
    /// A pointer into the record's metadata.
    Metadata(String),
    Const(Value),
}

/// A column's mapping.
#[derive(Clone, Debug)]
struct Spec {
    source: Source,
    map: Option<BTreeMap<String, Value>>,
    default: Option<Value>,
    unit: TimeUnit,
}

impl Spec {
    /// How the spec is named in error messages: the pointer, or `const`.
    fn describe(&self) -> &str {
        match &self.source {
            Source::Pointer(p) | Source::Metadata(p) => p,
            Source::Const(_) => "const",
        }
    }
}

/// A column of the relation with its mapping (None = unmapped).
#[derive(Clone, Debug)]
struct Column {
    name: String,
    kind: Kind,
    spec: Option<Spec>,
    /// For a pointer into the record: its slot in the decoder's [`FieldTree`].
    slot: usize,
}

/// The relation a decoder feeds.
#[derive(Clone, Debug)]
enum Target {
    /// A canonical relation.
    Canonical(Relation),
    /// A relation the source declared: its name and the positions of its key columns.
    Table { name: String, key: Vec<usize> },
}

/// The `json` decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct JsonDecoder {
    target: Target,
    columns: Vec<Column>,
    /// The pointers the columns read from the record, read in one pass over its text.
    fields: FieldTree,
}

impl JsonDecoder {
    /// Builds the decoder from the source's options (see the module docs).
    ///
    /// # Errors
    /// A missing or unknown `relation`, a bad `time_unit`, an unknown column, a malformed spec
    /// (e.g. a string that is not a pointer: use `{ const = … }` for constants), a constant,
    /// `map` value or `default` that does not convert to the column's type, `unit` on a
    /// column that is not a time, or a required column left unmapped.
    pub fn new(options: &Value) -> Result<JsonDecoder, ConfigError> {
        JsonDecoder::new_for(FORMAT, options)
    }

    /// [`JsonDecoder::new`] for format `format` (named in option errors); `debezium` also
    /// takes `{ metadata = "/debezium/…" }` (its envelope, [`crate::debezium`]).
    pub(crate) fn new_for(format: &'static str, options: &Value) -> Result<JsonDecoder, ConfigError> {
        let mut o = Options::new(format, options)?;
        let names = || Relation::ALL.map(Relation::name).join(", ");
        let relation = match o.string("relation")? {
            None => return Err(bad("relation", format!("required: one of {}", names()))),
            Some(r) => Relation::parse(&r)
                .ok_or_else(|| bad("relation", format!("unknown relation `{r}` (expected one of {})", names())))?,
        };
        let (unit, mapping) = time_unit_and_mapping(o)?;
        let desc = relation.desc();
        let declared: Vec<(&str, ColumnType)> = desc.columns.iter().map(|c| (c.name, c.ty)).collect();
        check_mapping(desc.name, &declared, &mapping)?;
        let mut columns = Vec::with_capacity(desc.columns.len());
        for c in &desc.columns {
            let kind = Kind::of(relation, c.name, c.ty);
            let spec = mapping.get(c.name).map(|s| parse_spec(format, c.name, kind, s, unit)).transpose()?;
            columns.push(Column { name: c.name.to_owned(), kind, spec, slot: 0 });
        }
        let mapped = |name: &str| columns.iter().any(|c| c.name == name && c.spec.is_some());
        for &name in relation.required() {
            if mapped(name) || (relation == Relation::Spans && name == "name" && mapped("operation")) {
                continue;
            }
            let hint = if relation == Relation::Spans && name == "name" {
                " (or map `operation`, which it defaults to)"
            } else {
                ""
            };
            return Err(ConfigError::BadMapping {
                column: name.to_owned(),
                reason: format!("required column of `{}` is not mapped{hint}", desc.name),
            });
        }
        Ok(JsonDecoder::with_columns(Target::Canonical(relation), columns))
    }

    /// Builds a decoder of records into the relation `table` that a source declared (see
    /// [`crate::table`]): each column is read from the record's field of its name, unless the
    /// `mapping` option says otherwise (the same specs as for the canonical relations).
    ///
    /// # Errors
    /// The option `relation` (the source declares its own), a bad `time_unit`, a mapping of a
    /// column the relation does not have, or a malformed spec.
    pub fn for_table(options: &Value, table: &crate::table::TableConfig) -> Result<JsonDecoder, ConfigError> {
        JsonDecoder::for_table_in(FORMAT, options, table)
    }

    /// [`JsonDecoder::for_table`] for format `format` (see [`JsonDecoder::new_for`]).
    pub(crate) fn for_table_in(
        format: &'static str,
        options: &Value,
        table: &crate::table::TableConfig,
    ) -> Result<JsonDecoder, ConfigError> {
        let mut o = Options::new(format, options)?;
        if o.value("relation").is_some() {
            return Err(bad(
                "relation",
                format!(
                    "the source declares its relation (`{}`) in [sources.relation]; remove this option",
                    table.name
                ),
            ));
        }
        let (unit, mapping) = time_unit_and_mapping(o)?;
        let declared: Vec<(&str, ColumnType)> = table.columns.iter().map(|c| (c.name.as_str(), c.ty)).collect();
        check_mapping(&table.name, &declared, &mapping)?;
        let mut columns = Vec::with_capacity(table.columns.len());
        for c in &table.columns {
            let kind = Kind::of_type(c.ty);
            let spec = match mapping.get(&c.name) {
                Some(spec) => parse_spec(format, &c.name, kind, spec, unit)?,
                None => Spec { source: Source::Pointer(pointer_to(&c.name)), map: None, default: None, unit },
            };
            columns.push(Column { name: c.name.clone(), kind, spec: Some(spec), slot: 0 });
        }
        let target = Target::Table { name: table.name.clone(), key: table.key_indices() };
        Ok(JsonDecoder::with_columns(target, columns))
    }

    /// The decoder of `columns` into `target`: each pointer into the record gets its slot in
    /// the tree of what a record is read for.
    fn with_columns(target: Target, mut columns: Vec<Column>) -> JsonDecoder {
        let mut pointers = Vec::new();
        for column in &mut columns {
            if let Some(Spec { source: Source::Pointer(p), .. }) = &column.spec {
                column.slot = pointers.len();
                pointers.push(p.clone());
            }
        }
        let fields = FieldTree::new(pointers.iter().map(String::as_str));
        JsonDecoder { target, columns, fields }
    }

    /// The canonical relation the decoder feeds (`None`: a relation the source declared).
    pub fn relation(&self) -> Option<Relation> {
        match self.target {
            Target::Canonical(relation) => Some(relation),
            Target::Table { .. } => None,
        }
    }
}

/// The options `time_unit` and `mapping`, the last ones read: what is left is unknown.
fn time_unit_and_mapping(mut o: Options) -> Result<(TimeUnit, serde_json::Map<String, Value>), ConfigError> {
    let unit = match o.string("time_unit")? {
        None => TimeUnit::Millis,
        Some(u) => TimeUnit::parse(&u)
            .ok_or_else(|| bad("time_unit", format!("unknown unit `{u}` (expected s, ms, us or ns)")))?,
    };
    let mapping = match o.value("mapping") {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(bad("mapping", format!("expected a table (column → spec), found {}", short(other))));
        }
    };
    o.finish()?;
    Ok((unit, mapping))
}

/// Refuses a mapping of a column that relation `name` does not have.
fn check_mapping(
    name: &str,
    columns: &[(&str, ColumnType)],
    mapping: &serde_json::Map<String, Value>,
) -> Result<(), ConfigError> {
    for column in mapping.keys() {
        if !columns.iter().any(|(c, _)| c == column) {
            let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            return Err(ConfigError::BadMapping {
                column: column.clone(),
                reason: format!("`{name}` has no such column (columns: {})", names.join(", ")),
            });
        }
    }
    Ok(())
}

/// The JSON pointer (RFC 6901) to the top-level field `name`.
fn pointer_to(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// Parses one column's spec for format `format`.
fn parse_spec(format: &str, column: &str, kind: Kind, spec: &Value, unit: TimeUnit) -> Result<Spec, ConfigError> {
    let err = |reason: String| ConfigError::BadMapping { column: column.to_owned(), reason };
    let pointer = |p: &Value| match p {
        Value::String(s) if s.starts_with('/') => Ok(s.clone()),
        Value::String(s) => Err(err(format!(
            "\"{s}\" is not a JSON pointer (it must start with `/`); use {{ const = … }} for constants"
        ))),
        other => Err(err(format!("`pointer` must be a string, found {}", short(other)))),
    };
    let metadata = |p: &Value| match p {
        Value::String(s) => {
            // `/debezium/…`: a Debezium change event's envelope (format `debezium` only).
            let known = ["/topic", "/partition", "/offset", "/timestamp", "/key", "/headers"].contains(&s.as_str())
                || s.strip_prefix("/headers/").is_some_and(|name| !name.is_empty() && !name.contains('/'))
                || (format == crate::debezium::FORMAT && is_envelope(s));
            if known {
                Ok(s.clone())
            } else {
                Err(err(format!(
                    "`metadata = \"{s}\"`: a Kafka message has /topic, /partition, /offset, /timestamp, /key, \
                     /headers and /headers/NAME (and, for format debezium, the change event's /debezium/…)"
                )))
            }
        }
        other => Err(err(format!("`metadata` must be a string, found {}", short(other)))),
    };
    let mut out = Spec { source: Source::Const(Value::Null), map: None, default: None, unit };
    match spec {
        Value::String(_) => out.source = Source::Pointer(pointer(spec)?),
        Value::Object(table) => {
            for key in table.keys() {
                if !["const", "pointer", "metadata", "map", "default", "unit"].contains(&key.as_str()) {
                    return Err(err(format!(
                        "unknown key `{key}` (expected const, pointer, metadata, map, default or unit)"
                    )));
                }
            }
            if let Some(c) = table.get("const") {
                if table.len() > 1 {
                    return Err(err("`const` cannot be combined with other keys".into()));
                }
                convert(column, kind, c, unit).map_err(err)?;
                out.source = Source::Const(c.clone());
                return Ok(out);
            }
            out.source = match (table.get("pointer"), table.get("metadata")) {
                (Some(p), None) => Source::Pointer(pointer(p)?),
                (None, Some(p)) => Source::Metadata(metadata(p)?),
                (Some(_), Some(_)) => return Err(err("`pointer` and `metadata` cannot be combined".into())),
                (None, None) => return Err(err("a table spec needs `pointer` (or `metadata` or `const`)".into())),
            };
            if let Some(u) = table.get("unit") {
                if kind != Kind::Timestamp {
                    return Err(err("`unit` applies only to time columns".into()));
                }
                out.unit = u
                    .as_str()
                    .and_then(TimeUnit::parse)
                    .ok_or_else(|| err(format!("unknown unit {} (expected s, ms, us or ns)", short(u))))?;
            }
            if let Some(m) = table.get("map") {
                let Value::Object(m) = m else {
                    return Err(err(format!("`map` must be a table, found {}", short(m))));
                };
                for v in m.values() {
                    convert(column, kind, v, out.unit).map_err(|e| err(format!("in `map`: {e}")))?;
                }
                out.map = Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            }
            if let Some(d) = table.get("default") {
                convert(column, kind, d, out.unit).map_err(|e| err(format!("`default`: {e}")))?;
                out.default = Some(d.clone());
            }
        }
        other => {
            return Err(err(format!("expected a JSON pointer string or a table, found {}", short(other))));
        }
    }
    Ok(out)
}

/// The key of a value in a `map`: strings as they are, numbers and bools as JSON renders
/// them; None for other values.
fn map_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// Converts a non-null value to a column's type (enums as their canonical text).
fn convert(column: &str, kind: Kind, v: &Value, unit: TimeUnit) -> Result<Datum, String> {
    let fail = |expected: &str| format!("column `{column}`: expected {expected}, found {}", short(v));
    if v.is_null() {
        return Ok(Datum::Null);
    }
    Ok(match kind {
        Kind::Text | Kind::TraceId => Datum::Text(value_text(v).unwrap_or_default()),
        Kind::Int | Kind::Tokens => {
            let n: i64 = match v {
                Value::Number(n) => n.as_i64().ok_or_else(|| fail("an integer"))?,
                Value::String(s) => s.trim().parse().map_err(|_| fail("an integer"))?,
                _ => return Err(fail("an integer")),
            };
            if kind == Kind::Tokens && !(0..=MAX_TOKENS).contains(&n) {
                return Err(format!("column `{column}`: token count {n} is out of range (0..={MAX_TOKENS})"));
            }
            Datum::Int(n)
        }
        Kind::Float => {
            let x = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
                _ => None,
            };
            // Canonical (-0.0 is 0.0): equal values have equal bits (see `Datum::float`).
            Datum::float(Some(x.ok_or_else(|| fail("a number"))?))
        }
        Kind::Bool => match v {
            Value::Bool(b) => Datum::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Datum::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Datum::Bool(false),
            _ => return Err(fail("a boolean")),
        },
        Kind::Timestamp => match time::from_json(v, unit) {
            Ok(Some(t)) => Datum::Timestamp(t),
            Ok(None) => Datum::Null,
            Err(e) => return Err(format!("column `{column}`: {e}")),
        },
        Kind::Status => {
            let status = match v {
                Value::String(s) => SpanStatus::parse(s),
                Value::Number(n) => match n.as_u64() {
                    Some(0) => Some(SpanStatus::Unset),
                    Some(1) => Some(SpanStatus::Ok),
                    Some(2) => Some(SpanStatus::Error),
                    _ => None,
                },
                _ => None,
            };
            Datum::Text(status.ok_or_else(|| fail("ok, error or unset"))?.as_str().to_owned())
        }
        Kind::State => {
            let s = v.as_str().ok_or_else(|| fail("a workflow state"))?;
            let state = WorkflowState::parse(s)
                .or_else(|| s.eq_ignore_ascii_case("canceled").then_some(WorkflowState::Cancelled));
            let states = WorkflowState::ALL.map(WorkflowState::as_str).join(", ");
            Datum::Text(state.ok_or_else(|| fail(&format!("one of {states}")))?.as_str().to_owned())
        }
        Kind::Op => {
            let op = v.as_str().and_then(KnowledgeOp::parse).ok_or_else(|| fail("upsert or delete"))?;
            Datum::Text(op.as_str().to_owned())
        }
    })
}

/// A record's fields: the record parsed whole, or the values at the decoder's pointers.
#[derive(Clone, Copy)]
enum Fields<'a> {
    /// The whole record.
    Parsed(&'a Value),
    /// What [`FieldTree::read`] read, by slot: each slot is read by one column, which takes
    /// its value out rather than copying it.
    Read(&'a [Cell<Option<Value>>]),
}

impl<'a> Fields<'a> {
    /// The fields [`FieldTree::read`] read.
    fn read(slots: &'a mut [Option<Value>]) -> Fields<'a> {
        Fields::Read(Cell::from_mut(slots).as_slice_of_cells())
    }
}

impl Column {
    /// The column's value in `record` (with the source's `metadata`), and, for a workflow
    /// state column, its source text (before `map`).
    fn eval(&self, record: Fields, metadata: Option<&Value>) -> Result<(Datum, Option<String>), String> {
        let Some(spec) = &self.spec else {
            return Ok((Datum::Null, None));
        };
        let mut taken = None;
        if let (Source::Pointer(_), Fields::Read(slots)) = (&spec.source, record) {
            taken = slots.get(self.slot).and_then(Cell::take);
            // A string for a text column is the column's value as it is: moved, not copied.
            if spec.map.is_none() && matches!(self.kind, Kind::Text | Kind::TraceId) {
                match taken {
                    Some(Value::String(s)) => return Ok((Datum::Text(s), None)),
                    other => taken = other,
                }
            }
        }
        let raw = match &spec.source {
            Source::Pointer(p) => match record {
                Fields::Parsed(v) => lookup(v, p),
                Fields::Read(_) => taken.as_ref(),
            }
            .filter(|v| !v.is_null()),
            Source::Metadata(p) => metadata.and_then(|m| lookup(m, p)).filter(|v| !v.is_null()),
            Source::Const(c) => Some(c),
        };
        let value = match (&spec.map, raw) {
            (_, None) => spec.default.as_ref(),
            (None, Some(v)) => Some(v),
            (Some(map), Some(v)) => match map_key(v).and_then(|k| map.get(&k)).or(spec.default.as_ref()) {
                Some(t) => Some(t),
                None => {
                    return Err(format!(
                        "column `{}`: value {} at {} is not in `map` and there is no `default`",
                        &self.name,
                        short(v),
                        spec.describe()
                    ));
                }
            },
        };
        // Only a workflow state's source text is kept (as `raw_state`): not copied for others.
        let source_text =
            if self.kind == Kind::State { raw.or(spec.default.as_ref()).and_then(value_text) } else { None };
        let datum = match value {
            None => Datum::Null,
            Some(v) => convert(&self.name, self.kind, v, spec.unit)?,
        };
        Ok((datum, source_text))
    }
}

/// A record's converted columns, taken out by name to build the relation's struct; the
/// second field is where the next one is looked for first (they are taken in the order of
/// the relation's columns).
struct Cells<'a>(Vec<(&'a str, Datum)>, usize);

impl Cells<'_> {
    fn take(&mut self, name: &str) -> Datum {
        let at = match self.0.get(self.1) {
            Some((n, _)) if *n == name => self.1,
            _ => match self.0.iter().position(|(n, _)| *n == name) {
                Some(at) => at,
                None => return Datum::Null,
            },
        };
        self.1 = at + 1;
        std::mem::replace(&mut self.0[at].1, Datum::Null)
    }
    fn text(&mut self, name: &str) -> Option<String> {
        match self.take(name) {
            Datum::Text(s) => Some(s),
            _ => None,
        }
    }
    fn int(&mut self, name: &str) -> Option<i64> {
        match self.take(name) {
            Datum::Int(i) => Some(i),
            _ => None,
        }
    }
    fn float(&mut self, name: &str) -> Option<f64> {
        match self.take(name) {
            Datum::Float(f) => Some(f.0),
            _ => None,
        }
    }
    fn bool(&mut self, name: &str) -> Option<bool> {
        match self.take(name) {
            Datum::Bool(b) => Some(b),
            _ => None,
        }
    }
    fn ts(&mut self, name: &str) -> Option<i64> {
        match self.take(name) {
            Datum::Timestamp(t) => Some(t),
            _ => None,
        }
    }
}

impl JsonDecoder {
    /// The relation's row of a record (with the source's `metadata`), or the reasons it
    /// cannot be built.
    fn row(&self, v: Fields, metadata: Option<&Value>) -> Result<Event, Vec<String>> {
        let relation = match &self.target {
            Target::Canonical(relation) => *relation,
            Target::Table { name, key } => return self.table_row(name, key, v, metadata),
        };
        let mut errors = Vec::new();
        let mut failed = Vec::new();
        let mut cells = Cells(Vec::with_capacity(self.columns.len()), 0);
        let mut state_source = None;
        for col in &self.columns {
            match col.eval(v, metadata) {
                Ok((datum, source)) => {
                    if col.kind == Kind::State {
                        state_source = source;
                    }
                    cells.0.push((col.name.as_str(), datum));
                }
                Err(e) => {
                    errors.push(e);
                    failed.push(col.name.as_str());
                    cells.0.push((col.name.as_str(), Datum::Null));
                }
            }
        }
        let column = |name: &str| self.columns.iter().find(|c| c.name == name);
        let describe = |name: &str| column(name).and_then(|c| c.spec.as_ref()).map_or("unmapped", Spec::describe);
        // Fallbacks.
        let is_null = |cells: &Cells, name: &str| cells.0.iter().any(|(n, d)| *n == name && *d == Datum::Null);
        if relation == Relation::Spans && is_null(&cells, "name") && !failed.contains(&"name") {
            let op = cells.0.iter().find(|(n, _)| *n == "operation").map(|(_, d)| d.clone());
            if let (Some(slot), Some(op)) = (cells.0.iter_mut().find(|(n, _)| *n == "name"), op) {
                slot.1 = op;
            }
        }
        if relation == Relation::WorkflowEvents
            && is_null(&cells, "raw_state")
            && !failed.contains(&"raw_state")
            && let (Some(slot), Some(src)) = (cells.0.iter_mut().find(|(n, _)| *n == "raw_state"), state_source)
        {
            slot.1 = Datum::Text(src);
        }
        let is_empty = |cells: &Cells, name: &str| {
            cells.0.iter().any(|(n, d)| *n == name && matches!(d, Datum::Text(s) if s.is_empty()))
        };
        for &name in relation.required() {
            if failed.contains(&name) {
                continue;
            }
            let problem = if is_null(&cells, name) {
                "missing"
            } else if is_empty(&cells, name) {
                "empty"
            } else {
                continue;
            };
            let from =
                if relation == Relation::Spans && name == "name" && column(name).is_some_and(|c| c.spec.is_none()) {
                    format!("unmapped; defaults to `operation`: {}", describe("operation"))
                } else {
                    describe(name).to_owned()
                };
            errors.push(format!("{problem} required column `{name}` ({from})"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let c = &mut cells;
        Ok(match relation {
            Relation::Spans => Event::Span(Span {
                trace_id: TraceId::parse(&c.text("trace_id").unwrap_or_default()),
                span_id: c.text("span_id").unwrap_or_default(),
                parent_span_id: c.text("parent_span_id"),
                name: c.text("name").unwrap_or_default(),
                operation: c.text("operation"),
                provider: c.text("provider"),
                request_model: c.text("request_model"),
                response_model: c.text("response_model"),
                agent_name: c.text("agent_name"),
                conversation_id: c.text("conversation_id"),
                tool_name: c.text("tool_name"),
                tool_call_id: c.text("tool_call_id"),
                input_tokens: c.int("input_tokens"),
                output_tokens: c.int("output_tokens"),
                cache_read_input_tokens: c.int("cache_read_input_tokens"),
                reasoning_output_tokens: c.int("reasoning_output_tokens"),
                start_time: c.ts("start_time"),
                end_time: c.ts("end_time"),
                status: c.text("status").and_then(|s| SpanStatus::parse(&s)).unwrap_or(SpanStatus::Unset),
                error_type: c.text("error_type"),
                attributes: c.text("attributes"),
            }),
            Relation::Evaluations => Event::Evaluation(Evaluation {
                trace_id: TraceId::parse(&c.text("trace_id").unwrap_or_default()),
                span_id: c.text("span_id"),
                name: c.text("name").unwrap_or_default(),
                score: c.float("score").map(OrderedFloat),
                label: c.text("label"),
            }),
            Relation::WorkflowEvents => {
                let state = c.text("state").and_then(|s| WorkflowState::parse(&s)).unwrap_or(WorkflowState::Running);
                Event::Workflow(WorkflowEvent {
                    run_id: c.text("run_id").unwrap_or_default(),
                    workflow_name: c.text("workflow_name"),
                    step_id: c.text("step_id"),
                    step_name: c.text("step_name"),
                    step_type: c.text("step_type"),
                    state,
                    raw_state: c.text("raw_state").unwrap_or_else(|| state.as_str().to_owned()),
                    attempt: c.int("attempt"),
                    event_time: c.ts("event_time"),
                    event_seq: c.int("event_seq"),
                    failure_message: c.text("failure_message"),
                })
            }
            Relation::KnowledgeEvents => Event::Knowledge(KnowledgeEvent {
                collection: c.text("collection").unwrap_or_default(),
                document_id: c.text("document_id").unwrap_or_default(),
                op: c.text("op").and_then(|s| KnowledgeOp::parse(&s)).unwrap_or(KnowledgeOp::Upsert),
                version: c.int("version"),
                size_bytes: c.int("size_bytes"),
                event_time: c.ts("event_time"),
                actor: c.text("actor"),
                is_bot: c.bool("is_bot"),
                source_offset: c.int("source_offset"),
            }),
        })
    }
}

impl JsonDecoder {
    /// A record's change to a relation the source declared: its row (and key), or the reasons
    /// it cannot be built (a column that does not convert; a key column that is NULL).
    fn table_row(&self, name: &str, key: &[usize], v: Fields, metadata: Option<&Value>) -> Result<Event, Vec<String>> {
        let mut errors = Vec::new();
        let mut row = Vec::with_capacity(self.columns.len());
        let mut failed = Vec::new();
        for (i, col) in self.columns.iter().enumerate() {
            match col.eval(v, metadata) {
                Ok((datum, _)) => row.push(datum),
                Err(e) => {
                    errors.push(e);
                    failed.push(i);
                    row.push(Datum::Null);
                }
            }
        }
        for &k in key.iter().filter(|k| !failed.contains(k)) {
            if row[k] == Datum::Null {
                let col = &self.columns[k];
                let from = col.spec.as_ref().map_or("unmapped", Spec::describe);
                errors.push(format!("missing key column `{}` ({from})", col.name));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let key = key.iter().map(|&k| row[k].clone()).collect();
        Ok(Event::Table(TableRow { relation: name.to_owned(), position: 0, key, row: Some(row) }))
    }

    /// A Kafka tombstone (a message with no value) of a relation with a key: the delete of
    /// the key, read from the message's metadata; an error when a key column is read from the
    /// (absent) value.
    fn tombstone(&self, source: &str, record: &Record, name: &str, key: &[usize]) -> Event {
        let mut values = Vec::with_capacity(key.len());
        for &k in key {
            let col = &self.columns[k];
            let datum = col.eval(Fields::Parsed(&Value::Null), record.metadata.as_deref()).map(|(d, _)| d);
            match datum {
                Ok(Datum::Null) => {
                    let from = col.spec.as_ref().map_or("unmapped", Spec::describe);
                    return error(
                        source,
                        &record.location,
                        format!(
                            "a tombstone (a message with no value) deletes a key only when the key columns are read                              from the message's metadata ({{ metadata = \"/key\" }}); key column `{}` is read from {from}",
                            col.name
                        ),
                        &record.text,
                    );
                }
                Ok(datum) => values.push(datum),
                Err(e) => return error(source, &record.location, e, &record.text),
            }
        }
        Event::Table(TableRow { relation: name.to_owned(), position: 0, key: values, row: None })
    }
}

/// Whether a metadata pointer reads a Debezium change event's envelope (`/debezium`, `/debezium/…`).
pub(crate) fn is_envelope(pointer: &str) -> bool {
    pointer == "/debezium" || pointer.starts_with("/debezium/")
}

impl JsonDecoder {
    /// The pointers into the record's metadata that the mapping reads.
    pub(crate) fn metadata_pointers(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().filter_map(|c| match c.spec.as_ref().map(|s| &s.source) {
            Some(Source::Metadata(p)) => Some(p.as_str()),
            _ => None,
        })
    }

    /// Decodes `value`, already parsed from `record` (a part of it: a Debezium event's row
    /// image), with `metadata` for `{ metadata = … }`; an error is at the record's location
    /// with its whole text.
    pub(crate) fn decode_parsed(
        &self,
        source: &str,
        record: &Record,
        value: &Value,
        metadata: Option<&Value>,
        out: &mut Vec<Event>,
    ) {
        match self.row(Fields::Parsed(value), metadata) {
            Ok(event) => out.push(event),
            Err(errors) => out.push(error(source, &record.location, errors.join("; "), &record.text)),
        }
    }
}

impl Decoder for JsonDecoder {
    /// Whether a column reads the source's metadata (a Debezium envelope's `/debezium/…` is
    /// the record's own, not the source's).
    fn reads_metadata(&self) -> bool {
        self.metadata_pointers().any(|p| !is_envelope(p))
    }

    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        if let Target::Table { name, key } = &self.target
            && !key.is_empty()
            && record.is_tombstone()
        {
            out.push(self.tombstone(source, record, name, key));
            return;
        }
        // The fields the mapping reads, in one pass over the text; a record that is not a JSON
        // object (or not JSON) is parsed whole, to say why.
        if record.error.is_none()
            && let Some(mut fields) = self.fields.read(record.text.strip_prefix('\u{feff}').unwrap_or(&record.text))
        {
            match self.row(Fields::read(&mut fields), record.metadata.as_deref()) {
                Ok(event) => out.push(event),
                Err(errors) => out.push(error(source, &record.location, errors.join("; "), &record.text)),
            }
            return;
        }
        let Some(v) = parse_record(source, record, out) else {
            return;
        };
        match self.row(Fields::Parsed(&v), record.metadata.as_deref()) {
            Ok(event) => out.push(event),
            Err(errors) => {
                // A record that is no object fails for that reason, not its columns'.
                let kind = match &v {
                    Value::Object(_) => None,
                    Value::Array(_) => Some("an array"),
                    Value::String(_) => Some("a string"),
                    Value::Number(_) => Some("a number"),
                    Value::Bool(_) => Some("a boolean"),
                    Value::Null => Some("null"),
                };
                let message = match kind {
                    Some(kind) => format!("the record is {kind}, not a JSON object: {}", errors.join("; ")),
                    None => errors.join("; "),
                };
                out.push(error(source, &record.location, message, &record.text))
            }
        }
    }
}

/// `value.pointer(pointer)` (RFC 6901) without allocating: `~1` and `~0` are unescaped only
/// in the (rare) tokens that contain `~`.
fn lookup<'v>(value: &'v Value, pointer: &str) -> Option<&'v Value> {
    if pointer.is_empty() {
        return Some(value);
    }
    let mut target = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        let unescaped;
        let token = if token.contains('~') {
            unescaped = token.replace("~1", "/").replace("~0", "~");
            unescaped.as_str()
        } else {
            token
        };
        target = match target {
            Value::Object(map) => map.get(token)?,
            Value::Array(list) => list.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FileReader;
    use crate::record::tests::TempDir;
    use serde_json::json;

    fn decoder(options: Value) -> JsonDecoder {
        match JsonDecoder::new(&options) {
            Ok(d) => d,
            Err(e) => panic!("options rejected: {e}"),
        }
    }

    fn decode(d: &JsonDecoder, record: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        d.decode("wiki", &Record::new("w.ndjson:1", record.to_string()), &mut out);
        out
    }

    fn config_error(options: Value) -> String {
        JsonDecoder::new(&options).err().map(|e| e.to_string()).unwrap_or_default()
    }

    fn one_error(out: &[Event]) -> String {
        match out {
            [Event::Error(e)] => e.error.clone(),
            other => format!("not one error: {other:?}"),
        }
    }

    /// Reading only the mapped fields in one pass gives the rows (and the errors) that looking
    /// them up in the record parsed whole gives, for records of every shape: repeated keys,
    /// arrays on the path, values of the wrong type, nulls, escapes.
    #[test]
    fn reading_the_fields_equals_parsing_the_record() {
        let d = decoder(json!({"relation": "spans", "mapping": {
            "trace_id": "/t", "span_id": "/s/id", "name": {"pointer": "/n", "default": "x"},
            "operation": {"pointer": "/n", "map": {"chat": "chat", "1": "one"}, "default": "other"},
            "input_tokens": "/u/0", "output_tokens": "/u/1/v", "attributes": "/attrs", "start_time": "/ts",
            "status": "/st", "agent_name": "/a~1b", "tool_name": "/s"}}));
        let records = [
            r#"{"t":"abc","s":{"id":"1"},"n":"chat","u":[5,{"v":6}],"attrs":{"k":[1,2]},"ts":"2025-01-01T00:00:00Z","st":"ok"}"#,
            r#"{"t":"abc","s":{"id":1},"n":1,"extra":{"deep":[{"x":[]}]},"a/b":"slash"}"#,
            r#"{"t":"abc","s":"no object","u":{"0":3},"ts":"not a time"}"#,
            r#"{"t":"a","t":"b","s":{"id":"1"},"s":{"x":2},"u":[1],"u":[]}"#,
            r#"{"t":null,"s":null,"n":null,"attrs":null}"#,
            r#"{"t":"\u0061bc","s":{"i\u0064":"\"quoted\""},"st":"error","u":[-1]}"#,
            r#"{"t":"abc","s":{"id":"2"},"u":[1e3, {"v": 2.5}],"st":2,"ts":1700000000000}"#,
            r#"{}"#,
        ];
        for text in records {
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            let read = d.fields.read(text).map(|mut fields| d.row(Fields::read(&mut fields), None));
            assert_eq!(read, Some(d.row(Fields::Parsed(&v), None)), "{text}");
        }
    }

    /// A double is read as the nearest double to its decimal text — what Rust's own parser,
    /// which rounds correctly, gives — also where serde_json's fast path (without its
    /// `float_roundtrip` feature) is one step off: the first three values, found by pushing
    /// random doubles to a server.
    #[test]
    fn doubles_are_read_as_the_nearest_double() {
        use crate::table::TableConfig;
        let table: TableConfig = serde_json::from_value(json!({
            "name": "t",
            "columns": [{"name": "id", "type": "text"}, {"name": "x", "type": "double"}],
        }))
        .unwrap();
        let d = JsonDecoder::for_table(&json!({}), &table).unwrap();
        let texts = [
            "-992886.6173490159",
            "-940600.1706639073",
            "-915615.8921307449",
            "0.1",
            "5e-324",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "123456789012345678901234567890",
        ];
        for text in texts {
            let want: f64 = text.parse().unwrap();
            for record in [format!(r#"{{"id": "a", "x": {text}}}"#), format!(r#"{{"id": "a", "x": "{text}"}}"#)] {
                let mut out = Vec::new();
                d.decode("s", &Record::new("r:1", record.clone()), &mut out);
                let got = match &out[..] {
                    [Event::Table(t)] => t.row.as_ref().and_then(|r| r.get(1).cloned()),
                    _ => None,
                };
                assert_eq!(got, Some(Datum::float(Some(want))), "{record}: {out:?}");
            }
        }
    }

    /// A relation the source declares: typed columns read by name (or by a mapping), a key
    /// that may not be NULL, conversions that fail as ingest errors naming the column, and a
    /// Kafka tombstone that deletes the key read from its metadata.
    #[test]
    fn declared_relations_decode_typed_rows() {
        use crate::table::TableConfig;
        let table: TableConfig = serde_json::from_value(json!({
            "name": "orders",
            "key": ["id"],
            "columns": [
                {"name": "id", "type": "text"},
                {"name": "amount", "type": "double"},
                {"name": "n", "type": "bigint"},
                {"name": "paid", "type": "boolean"},
                {"name": "at", "type": "timestamp"},
            ],
        }))
        .unwrap();
        let d = JsonDecoder::for_table(&json!({"time_unit": "s", "mapping": {"n": "/count/items"}}), &table).unwrap();
        let out = decode(&d, &json!({"id": "o-1", "amount": "2.5", "count": {"items": 3}, "paid": true, "at": 60}));
        let row = vec![
            Datum::Text("o-1".into()),
            Datum::float(Some(2.5)),
            Datum::Int(3),
            Datum::Bool(true),
            Datum::Timestamp(60_000_000),
        ];
        let want =
            TableRow { relation: "orders".into(), position: 0, key: vec![Datum::Text("o-1".into())], row: Some(row) };
        assert_eq!(out, vec![Event::Table(want)]);
        // Missing columns are NULL; a missing key is an error, as is a value of another type.
        let out = decode(&d, &json!({"id": "o-2"}));
        assert!(
            matches!(&out[..], [Event::Table(t)] if t.row.as_ref().unwrap()[1..].iter().all(|d| *d == Datum::Null))
        );
        assert_eq!(one_error(&decode(&d, &json!({"amount": 1}))), "missing key column `id` (/id)");
        assert_eq!(
            one_error(&decode(&d, &json!({"id": "o-3", "count": {"items": 1.5}}))),
            "column `n`: expected an integer, found 1.5"
        );
        // A tombstone deletes a key only when the key is read from the message's metadata.
        let tombstone = Record::new("kafka:t/0@7", "").with_error(crate::record::TOMBSTONE);
        let mut out = Vec::new();
        d.decode("k", &tombstone.clone().with_metadata(json!({"key": "o-1"})), &mut out);
        assert!(
            one_error(&out).starts_with("a tombstone (a message with no value) deletes a key only when"),
            "{out:?}"
        );
        let by_key = JsonDecoder::for_table(&json!({"mapping": {"id": {"metadata": "/key"}}}), &table).unwrap();
        assert!(by_key.reads_metadata());
        let mut out = Vec::new();
        by_key.decode("k", &tombstone.with_metadata(json!({"key": "o-1"})), &mut out);
        let delete =
            TableRow { relation: "orders".into(), position: 0, key: vec![Datum::Text("o-1".into())], row: None };
        assert_eq!(out, vec![Event::Table(delete)]);
        // The relation is the source's own: the option `relation` is refused, as is a mapping
        // of a column it does not have.
        let refused = |options: Value| JsonDecoder::for_table(&options, &table).err().map(|e| e.to_string());
        assert!(refused(json!({"relation": "spans"})).unwrap_or_default().contains("declares its relation"));
        assert!(
            refused(json!({"mapping": {"nope": "/x"}})).unwrap_or_default().contains("`orders` has no such column")
        );
    }

    /// The mapping for Wikimedia recent changes (as recommended in the report).
    fn wiki() -> JsonDecoder {
        decoder(json!({
            "relation": "knowledge_events",
            "mapping": {
                "collection": "/meta/domain",
                "document_id": "/title",
                "op": {"pointer": "/log_action", "map": {"delete": "delete"}, "default": "upsert"},
                "version": "/revision/new",
                "size_bytes": "/length/new",
                "event_time": {"pointer": "/timestamp", "unit": "s"},
                "actor": "/user",
                "is_bot": "/bot",
                "source_offset": "/meta/offset"
            }
        }))
    }

    #[test]
    fn wikipedia_like_record() {
        let edit = json!({
            "$schema": "/mediawiki/recentchange/1.0.0",
            "meta": {"domain": "en.wikipedia.org", "offset": 4820784717_i64, "dt": "2023-07-29T07:51:39Z"},
            "id": 1659529639, "type": "edit", "namespace": 0, "title": "EFL Championship",
            "timestamp": 1690617099, "user": "87.12.215.232", "bot": false,
            "length": {"old": 91108, "new": 91166}, "revision": {"old": 1166824248, "new": 1167689309}
        });
        assert_eq!(
            decode(&wiki(), &edit),
            vec![Event::Knowledge(KnowledgeEvent {
                collection: "en.wikipedia.org".into(),
                document_id: "EFL Championship".into(),
                op: KnowledgeOp::Upsert,
                version: Some(1_167_689_309),
                size_bytes: Some(91_166),
                // 2023-07-29T07:51:39Z.
                event_time: Some(1_690_617_099_000_000),
                actor: Some("87.12.215.232".into()),
                is_bot: Some(false),
                source_offset: Some(4_820_784_717),
            })]
        );
        // A page deletion: a log event without revision or length.
        // (The same edit as a Kafka message: its key, offset, timestamp and a header mapped.)
        let kafka = decoder(json!({"relation": "knowledge_events", "mapping": {
            "collection": {"metadata": "/topic"},
            "document_id": {"metadata": "/key"},
            "op": {"metadata": "/headers/op", "map": {"gone": "delete"}, "default": "upsert"},
            "version": "/revision/new",
            "event_time": {"metadata": "/timestamp", "unit": "ms"},
            "actor": {"metadata": "/headers/user"},
            "source_offset": {"metadata": "/offset"}}}));
        let metadata = json!({"topic": "wiki", "partition": 2, "offset": 41, "timestamp": 1_690_617_099_123_i64,
            "key": "EFL Championship", "headers": {"op": "gone"}});
        let mut out = Vec::new();
        kafka.decode("k", &Record::new("kafka:wiki/2@41", edit.to_string()).with_metadata(metadata), &mut out);
        assert_eq!(
            out,
            vec![Event::Knowledge(KnowledgeEvent {
                collection: "wiki".into(),
                document_id: "EFL Championship".into(),
                op: KnowledgeOp::Delete,
                version: Some(1_167_689_309),
                size_bytes: None,
                event_time: Some(1_690_617_099_123_000),
                // No `user` header: NULL.
                actor: None,
                is_bot: None,
                source_offset: Some(41),
            })]
        );
        // Without metadata (a file line) a metadata column is NULL, and a required one missing.
        assert!(
            one_error(&decode(&kafka, &edit)).contains("missing required column `collection`"),
            "{:?}",
            decode(&kafka, &edit)
        );
        let delete = json!({
            "meta": {"domain": "en.wikipedia.org", "offset": 7}, "type": "log", "log_type": "delete",
            "log_action": "delete", "title": "Spam page", "timestamp": 1690617100, "user": "Admin", "bot": true
        });
        assert_eq!(
            decode(&wiki(), &delete),
            vec![Event::Knowledge(KnowledgeEvent {
                collection: "en.wikipedia.org".into(),
                document_id: "Spam page".into(),
                op: KnowledgeOp::Delete,
                version: None,
                size_bytes: None,
                event_time: Some(1_690_617_100_000_000),
                actor: Some("Admin".into()),
                is_bot: Some(true),
                source_offset: Some(7),
            })]
        );
    }

    #[test]
    fn a_record_that_is_no_object_says_so() {
        let out = decode(&wiki(), &json!([1, 2]));
        assert!(one_error(&out).starts_with("the record is an array, not a JSON object: missing required column"));
        assert!(one_error(&decode(&wiki(), &json!(42))).starts_with("the record is a number, not a JSON object: "));
        assert!(one_error(&decode(&wiki(), &json!(null))).starts_with("the record is null, not a JSON object: "));
    }

    #[test]
    fn missing_required_column() {
        let out = decode(&wiki(), &json!({"meta": {"domain": "d"}, "title": null}));
        assert_eq!(one_error(&out), "missing required column `document_id` (/title)");
        // Several problems are reported together.
        let out = decode(&wiki(), &json!({"title": "t", "bot": "maybe"}));
        assert_eq!(
            one_error(&out),
            "column `is_bot`: expected a boolean, found \"maybe\"; missing required column `collection` (/meta/domain)"
        );
    }

    #[test]
    fn bad_int() {
        let out = decode(&wiki(), &json!({"meta": {"domain": "d"}, "title": "t", "revision": {"new": 1.5}}));
        assert_eq!(one_error(&out), "column `version`: expected an integer, found 1.5");
        let out = decode(&wiki(), &json!({"meta": {"domain": "d"}, "title": "t", "revision": {"new": "12a"}}));
        assert_eq!(one_error(&out), "column `version`: expected an integer, found \"12a\"");
        // Integer strings (proto-JSON int64) are fine.
        let out = decode(&wiki(), &json!({"meta": {"domain": "d"}, "title": "t", "revision": {"new": " 12"}}));
        assert!(matches!(&out[..], [Event::Knowledge(k)] if k.version == Some(12)));
    }

    #[test]
    fn numeric_time_units() {
        // 1690617099 s = 2023-07-29T07:51:39Z.
        let t = 1_690_617_099_000_000_i64;
        let base = |unit: Option<&str>| {
            let mut o = json!({"relation": "workflow_events", "mapping": {
                "run_id": "/run", "state": "/state", "event_time": "/t",
                "attempt": {"const": 1}, "event_seq": "/seq"}});
            if let Some(u) = unit {
                o["time_unit"] = json!(u);
            }
            decoder(o)
        };
        let time = |d: &JsonDecoder, v: Value| match &decode(d, &json!({"run": "r", "state": "running", "t": v}))[..] {
            [Event::Workflow(w)] => Ok(w.event_time),
            [Event::Error(e)] => Err(e.error.clone()),
            other => Err(format!("{other:?}")),
        };
        assert_eq!(time(&base(None), json!(1_690_617_099_123_i64)), Ok(Some(t + 123_000)));
        assert_eq!(time(&base(Some("s")), json!(1_690_617_099.25)), Ok(Some(t + 250_000)));
        assert_eq!(time(&base(Some("us")), json!(1_690_617_099_000_007_i64)), Ok(Some(t + 7)));
        assert_eq!(time(&base(Some("ns")), json!("1690617099000007999")), Ok(Some(t + 7)));
        assert_eq!(time(&base(Some("ns")), json!("2023-07-29T07:51:39.5Z")), Ok(Some(t + 500_000)));
        assert_eq!(time(&base(None), json!(null)), Ok(None));
        assert_eq!(
            time(&base(Some("us")), json!(1.5)),
            Err("column `event_time`: time 1.5 us: expected an integer".into())
        );
        // A per-column unit overrides time_unit.
        let d = decoder(json!({"relation": "spans", "time_unit": "ns", "mapping": {
            "trace_id": "/t", "span_id": "/s", "operation": "/op",
            "start_time": {"pointer": "/start", "unit": "s"}, "end_time": "/end", "status": "/status"}}));
        let out = decode(
            &d,
            &json!({"t": "4bf92f3577b34da6a3ce929d0e0e4736", "s": "1", "op": "chat",
            "start": 1690617099, "end": 1690617100000000000_i64, "status": 2}),
        );
        let mut span = Span::new(TraceId::Hex128(0x4bf92f3577b34da6a3ce929d0e0e4736), "1", "chat");
        span.operation = Some("chat".into());
        span.start_time = Some(t);
        span.end_time = Some(t + 1_000_000);
        span.status = SpanStatus::Error;
        assert_eq!(out, vec![Event::Span(span)]);
    }

    #[test]
    fn map_and_default_and_source_text() {
        let d = decoder(json!({"relation": "workflow_events", "mapping": {
            "run_id": "/id", "step_id": "/step",
            "state": {"pointer": "/status", "map": {"queued": "SCHEDULED", "in_progress": "running", "completed": "Completed"}},
            "attempt": "/attempt"}}));
        let row = |v: Value| match &decode(&d, &v)[..] {
            [Event::Workflow(w)] => Ok((w.state, w.raw_state.clone(), w.step_id.clone(), w.attempt)),
            [Event::Error(e)] => Err(e.error.clone()),
            other => Err(format!("{other:?}")),
        };
        assert_eq!(
            row(json!({"id": 5, "status": "in_progress", "step": 3, "attempt": "2"})),
            Ok((WorkflowState::Running, "in_progress".into(), Some("3".into()), Some(2)))
        );
        assert_eq!(
            row(json!({"id": "r", "status": "waiting"})),
            Err("column `state`: value \"waiting\" at /status is not in `map` and there is no `default`".into())
        );
        // Missing without default: NULL, so a missing required column.
        assert_eq!(row(json!({"id": "r"})), Err("missing required column `state` (/status)".into()));
        let d = decoder(json!({"relation": "knowledge_events", "mapping": {
            "collection": {"const": "c"}, "document_id": "/d",
            "op": {"pointer": "/type", "map": {"edit": "upsert", "new": "upsert", "gone": "DELETE"}, "default": "upsert"}}}));
        let op = |v: Value| match &decode(&d, &v)[..] {
            [Event::Knowledge(k)] => Some((k.collection.clone(), k.document_id.clone(), k.op)),
            _ => None,
        };
        assert_eq!(op(json!({"d": "x", "type": "gone"})), Some(("c".into(), "x".into(), KnowledgeOp::Delete)));
        assert_eq!(op(json!({"d": "x", "type": "categorize"})), Some(("c".into(), "x".into(), KnowledgeOp::Upsert)));
        assert_eq!(op(json!({"d": 12})), Some(("c".into(), "12".into(), KnowledgeOp::Upsert)));
        // Without map, a bad enum value is an error naming column and value.
        let d = decoder(json!({"relation": "knowledge_events", "mapping": {
            "collection": {"const": "c"}, "document_id": "/d", "op": "/op"}}));
        assert_eq!(
            one_error(&decode(&d, &json!({"d": "x", "op": "edit"}))),
            "column `op`: expected upsert or delete, found \"edit\""
        );
    }

    #[test]
    fn text_columns_and_span_fallbacks() {
        let d = decoder(json!({"relation": "spans", "mapping": {
            "trace_id": "/trace", "span_id": "/id", "operation": "/op", "attributes": "/attrs",
            "input_tokens": "/usage/in", "agent_name": "/flag"}}));
        let out = decode(
            &d,
            &json!({"trace": 17, "id": 3.5, "op": "execute_tool", "attrs": {"b": [1, 2], "a": "x"}, "flag": true}),
        );
        let mut span = Span::new(TraceId::Text("17".into()), "3.5", "execute_tool");
        span.operation = Some("execute_tool".into());
        span.attributes = Some(r#"{"a":"x","b":[1,2]}"#.into());
        span.agent_name = Some("true".into());
        assert_eq!(out, vec![Event::Span(span)]);
        assert_eq!(
            one_error(&decode(&d, &json!({"trace": "t", "id": "s"}))),
            "missing required column `name` (unmapped; defaults to `operation`: /op)"
        );
    }

    #[test]
    fn evaluations() {
        let d = decoder(json!({"relation": "evaluations", "mapping": {
            "trace_id": "/t", "name": {"const": "reward"}, "score": "/r", "label": "/l"}}));
        assert_eq!(
            decode(&d, &json!({"t": "a/b", "r": 1, "l": "pass"})),
            vec![Event::Evaluation(Evaluation {
                trace_id: TraceId::Text("a/b".into()),
                span_id: None,
                name: "reward".into(),
                score: Some(OrderedFloat(1.0)),
                label: Some("pass".into()),
            })]
        );
        assert_eq!(
            one_error(&decode(&d, &json!({"t": "a", "r": "high"}))),
            "column `score`: expected a number, found \"high\""
        );
    }

    #[test]
    fn malformed_line_among_good_lines() {
        let dir = TempDir::new("jsonfmt");
        let path = dir.write(
            "changes.ndjson",
            "{\"title\": \"A\", \"meta\": {\"domain\": \"d\"}}\n{\"title\": \"B\", \n{\"title\": \"C\", \"meta\": {\"domain\": \"d\"}}\n",
        );
        let mut reader = FileReader::new(&path).expect("glob");
        let mut records = Vec::new();
        reader.poll(true, &mut records).expect("poll");
        let d = wiki();
        let mut out = Vec::new();
        for r in &records {
            d.decode("wiki", r, &mut out);
        }
        let got: Vec<String> = out
            .iter()
            .map(|e| match e {
                Event::Knowledge(k) => k.document_id.clone(),
                Event::Error(e) => format!("{} @ {} [{}]", e.error, e.location, e.raw),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "A".to_owned(),
                format!(
                    "invalid JSON: EOF while parsing a value at line 1 column 15 @ {path}:2 [{{\"title\": \"B\", ]"
                ),
                "C".to_owned(),
            ]
        );
    }

    #[test]
    fn empty_required_columns() {
        let out = decode(&wiki(), &json!({"meta": {"domain": "d"}, "title": ""}));
        assert_eq!(one_error(&out), "empty required column `document_id` (/title)");
        let d = decoder(json!({"relation": "evaluations", "mapping": {"trace_id": "/trace_id", "name": "/n"}}));
        assert_eq!(
            one_error(&decode(&d, &json!({"trace_id": "", "n": "x"}))),
            "empty required column `trace_id` (/trace_id)"
        );
        // A span's name defaulting to an empty operation.
        let d =
            decoder(json!({"relation": "spans", "mapping": {"trace_id": "/t", "span_id": "/s", "operation": "/op"}}));
        assert_eq!(
            one_error(&decode(&d, &json!({"t": "a", "s": "1", "op": ""}))),
            "empty required column `name` (unmapped; defaults to `operation`: /op)"
        );
        // Optional columns may be empty strings.
        let d = decoder(json!({"relation": "evaluations", "mapping": {"trace_id": "/t", "name": "/n", "label": "/l"}}));
        assert!(matches!(&decode(&d, &json!({"t": "a", "n": "x", "l": ""}))[..],
            [Event::Evaluation(e)] if e.label.as_deref() == Some("")));
    }

    #[test]
    fn token_and_time_ranges() {
        let d = decoder(json!({"relation": "spans", "mapping": {
            "trace_id": "/t", "span_id": "/s", "name": "/n", "input_tokens": "/in", "output_tokens": "/out",
            "start_time": "/start"}}));
        let span = |v: Value| match &decode(&d, &v)[..] {
            [Event::Span(s)] => Ok((s.input_tokens, s.output_tokens, s.start_time)),
            [Event::Error(e)] => Err(e.error.clone()),
            other => Err(format!("{other:?}")),
        };
        let base = |extra: Value| {
            let mut v = json!({"t": "a", "s": "1", "n": "chat"});
            if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            v
        };
        assert_eq!(
            span(base(json!({"in": -500}))),
            Err("column `input_tokens`: token count -500 is out of range (0..=1000000000)".into())
        );
        assert_eq!(
            span(base(json!({"out": "1000000001"}))),
            Err("column `output_tokens`: token count 1000000001 is out of range (0..=1000000000)".into())
        );
        assert_eq!(span(base(json!({"in": 0, "out": 1_000_000_000}))), Ok((Some(0), Some(1_000_000_000), None)));
        // Times (default unit ms): 10000-01-01T00:00:00Z is 253402300800 s after the epoch
        // (2932897 days), 0001-01-01T00:00:00Z is 62135596800 s before it (719162 days).
        assert_eq!(
            span(base(json!({"start": 253_402_300_800_000_i64}))),
            Err("column `start_time`: time 253402300800000 ms is out of range (years 0001..=9999)".into())
        );
        assert_eq!(
            span(base(json!({"start": 253_402_300_799_999_i64}))),
            Ok((None, None, Some(253_402_300_799_999_000)))
        );
        assert_eq!(
            span(base(json!({"start": -62_135_596_800_000_i64}))),
            Ok((None, None, Some(-62_135_596_800_000_000)))
        );
        assert_eq!(
            span(base(json!({"start": -62_135_596_800_001_i64}))),
            Err("column `start_time`: time -62135596800001 ms is out of range (years 0001..=9999)".into())
        );
        // Year 100000 in ms (about 3.09e15): fits in i64 microseconds, but out of range.
        assert_eq!(
            span(base(json!({"start": 3_093_527_980_800_000_i64}))),
            Err("column `start_time`: time 3093527980800000 ms is out of range (years 0001..=9999)".into())
        );
        // An offset can move a string out of range: 0001-01-01T00:00:00+01:00 is in year 0.
        assert_eq!(
            span(base(json!({"start": "0001-01-01T00:00:00+01:00"}))),
            Err("column `start_time`: time \"0001-01-01T00:00:00+01:00\" is out of range (years 0001..=9999)".into())
        );
        // Constants are checked when the job is loaded.
        assert_eq!(
            config_error(json!({"relation": "spans", "mapping": {
                "trace_id": "/t", "span_id": "/s", "name": "/n", "input_tokens": {"const": -1}}})),
            "mapping of column `input_tokens`: column `input_tokens`: token count -1 is out of range (0..=1000000000)"
        );
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            config_error(json!({"mapping": {}})),
            "option `relation`: required: one of spans, evaluations, workflow_events, knowledge_events"
        );
        assert_eq!(
            config_error(json!({"relation": "docs"})),
            "option `relation`: unknown relation `docs` (expected one of spans, evaluations, workflow_events, knowledge_events)"
        );
        assert_eq!(
            config_error(json!({"relation": "evaluations", "time_unit": "min"})),
            "option `time_unit`: unknown unit `min` (expected s, ms, us or ns)"
        );
        let ev = |mapping: Value| config_error(json!({"relation": "evaluations", "mapping": mapping}));
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": "reward"})),
            "mapping of column `name`: \"reward\" is not a JSON pointer (it must start with `/`); use { const = … } for constants"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": "/n", "scor": "/s"})),
            "mapping of column `scor`: `evaluations` has no such column (columns: trace_id, span_id, name, score, label)"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t"})),
            "mapping of column `name`: required column of `evaluations` is not mapped"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": "/n", "score": {"const": "x"}})),
            "mapping of column `score`: column `score`: expected a number, found \"x\""
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": "/n", "score": {"pointer": "/s", "unit": "s"}})),
            "mapping of column `score`: `unit` applies only to time columns"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"const": "n", "pointer": "/n"}})),
            "mapping of column `name`: `const` cannot be combined with other keys"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"pointr": "/n"}})),
            "mapping of column `name`: unknown key `pointr` (expected const, pointer, metadata, map, default or unit)"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"map": {}}})),
            "mapping of column `name`: a table spec needs `pointer` (or `metadata` or `const`)"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"metadata": "/key/x"}})),
            "mapping of column `name`: `metadata = \"/key/x\"`: a Kafka message has /topic, /partition, /offset, \
             /timestamp, /key, /headers and /headers/NAME (and, for format debezium, the change event's /debezium/…)"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"metadata": 5}})),
            "mapping of column `name`: `metadata` must be a string, found 5"
        );
        assert!(
            config_error(json!({"relation": "evaluations", "mapping": {
            "trace_id": "/t", "name": {"metadata": "/headers/user"}}}))
            .is_empty()
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"pointer": "/n", "metadata": "/key"}})),
            "mapping of column `name`: `pointer` and `metadata` cannot be combined"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": {"metadata": "key"}})),
            "mapping of column `name`: `metadata = \"key\"`: a Kafka message has /topic, /partition, /offset, \
             /timestamp, /key, /headers and /headers/NAME (and, for format debezium, the change event's /debezium/…)"
        );
        assert_eq!(
            ev(json!({"trace_id": "/t", "name": 3})),
            "mapping of column `name`: expected a JSON pointer string or a table, found 3"
        );
        assert_eq!(
            config_error(json!({"relation": "knowledge_events", "mapping": {
                "collection": "/c", "document_id": "/d", "op": {"pointer": "/o", "map": {"edit": "update"}}}})),
            "mapping of column `op`: in `map`: column `op`: expected upsert or delete, found \"update\""
        );
        assert_eq!(
            config_error(json!({"relation": "spans", "mapping": {"trace_id": "/t", "span_id": "/s"}})),
            "mapping of column `name`: required column of `spans` is not mapped (or map `operation`, which it defaults to)"
        );
    }
}
