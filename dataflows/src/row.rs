//! Untyped rows: the shape in which maintained state leaves the dataflows.
//!
//! Inside a dataflow every relation and view is a typed Rust struct (compact, cheap to
//! compare). At the boundary to SQL (Arrow snapshots, subscriptions, sinks) each record
//! becomes a [`Row`] of [`Datum`]s described by a [`RelationDesc`]: column names and
//! [`ColumnType`]s, the same for every consumer.

use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

/// The SQL type of a column.
///
/// Mapped to Arrow by `amx-sql`: `Bool` → `Boolean`, `Int` → `Int64` (SQL `BIGINT`),
/// `Float` → `Float64` (`DOUBLE`), `Text` → `Utf8`, `Timestamp` →
/// `Timestamp(Microsecond, "UTC")` (`TIMESTAMP`, UTC, microseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ColumnType {
    /// `BOOLEAN`.
    Bool,
    /// `BIGINT` (64-bit signed).
    Int,
    /// `DOUBLE` (IEEE 754 binary64).
    Float,
    /// `TEXT` (UTF-8).
    Text,
    /// `TIMESTAMP` in UTC with microsecond precision.
    Timestamp,
}

/// One value of a row. `Null` is SQL NULL (an unknown value), never 0 or "".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A `BOOLEAN`.
    Bool(bool),
    /// A `BIGINT`.
    Int(i64),
    /// A `DOUBLE`; totally ordered as in PostgreSQL (`-0.0 = 0.0`; NaN equals NaN and sorts
    /// after every other value) so rows can live in arrangements. Build it with
    /// [`Datum::float`], which stores the canonical bits.
    Float(OrderedFloat<f64>),
    /// A `TEXT` value.
    Text(String),
    /// A `TIMESTAMP`: microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
}

impl Datum {
    /// `Text` from an optional string, `Null` for `None`.
    pub fn text(v: Option<&str>) -> Datum {
        v.map_or(Datum::Null, |s| Datum::Text(s.to_owned()))
    }
    /// `Int` from an optional integer, `Null` for `None`.
    pub fn int(v: Option<i64>) -> Datum {
        v.map_or(Datum::Null, Datum::Int)
    }
    /// `Float` from an optional float, `Null` for `None`; canonical: `-0.0` becomes `0.0` and
    /// every NaN the one NaN ([`amx_operators::float::canonical`]), so equal values have equal bits.
    pub fn float(v: Option<f64>) -> Datum {
        v.map_or(Datum::Null, |f| Datum::Float(OrderedFloat(amx_operators::float::canonical(f))))
    }
    /// `Timestamp` from optional microseconds since the epoch, `Null` for `None`.
    pub fn ts(v: Option<i64>) -> Datum {
        v.map_or(Datum::Null, Datum::Timestamp)
    }
    /// `Bool` from an optional bool, `Null` for `None`.
    pub fn bool(v: Option<bool>) -> Datum {
        v.map_or(Datum::Null, Datum::Bool)
    }
}

/// A row: one [`Datum`] per column of its [`RelationDesc`], in column order.
pub type Row = Vec<Datum>;

/// A column: its name and type. Every column is nullable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name as SQL sees it (lower case, `snake_case`).
    pub name: &'static str,
    /// Column type.
    pub ty: ColumnType,
}

/// A relation's name, columns and key (the columns that identify a row; empty for multisets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationDesc {
    /// Name as SQL sees it (`spans`, `agent_traces`, …).
    pub name: &'static str,
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Names of the key columns (for views: one row per key).
    pub key: Vec<&'static str>,
}

/// A record that knows its relation's shape and how to become a [`Row`].
pub trait ToRow {
    /// The relation's description: name, columns and key.
    fn desc() -> RelationDesc;
    /// This record as a row, one datum per column of [`ToRow::desc`].
    fn to_row(&self) -> Row;
    /// [`ToRow::to_row`], taking the record: its texts are moved into the row, not copied.
    fn into_row(self) -> Row
    where
        Self: Sized,
    {
        self.to_row()
    }
}

/// Shorthand for building a [`RelationDesc`]: `desc("spans", &["trace_id"], &[("trace_id", Text), …])`.
pub fn desc(name: &'static str, key: &[&'static str], columns: &[(&'static str, ColumnType)]) -> RelationDesc {
    RelationDesc { name, columns: columns.iter().map(|&(name, ty)| Column { name, ty }).collect(), key: key.to_vec() }
}
