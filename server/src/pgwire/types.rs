//! Arrow ↔ PostgreSQL types: the OID a column is described with, its values encoded in the
//! text or binary format of that type, and parameter values decoded from either.
//!
//! | Arrow | PostgreSQL (OID) | Rust value encoded |
//! |---|---|---|
//! | `Boolean` | `bool` (16) | `bool` |
//! | `Int8`, `Int16`, `UInt8` | `int2` (21) | `i16` |
//! | `Int32`, `UInt16` | `int4` (23) | `i32` |
//! | `Int64`, `UInt32`, `UInt64` | `int8` (20) | `i64` (a `UInt64` above `i64::MAX` is an error) |
//! | `Float16`, `Float32` | `float4` (700) | `f32` |
//! | `Float64`, `Decimal128/256` | `float8` (701) | `f64` |
//! | `Utf8`, `LargeUtf8`, `Utf8View` | `text` (25) | `&str` |
//! | `Timestamp(_, None)` | `timestamp` (1114) | `chrono::NaiveDateTime` |
//! | `Timestamp(_, Some(tz))` | `timestamptz` (1184) | `chrono::DateTime<Utc>` |
//! | `Date32`, `Date64` | `date` (1082) | `chrono::NaiveDate` |
//! | `Binary`, `LargeBinary`, `BinaryView` | `bytea` (17) | `&[u8]` |
//! | anything else (lists, structs, durations …) | `text` | Arrow's display of the value |
//!
//! Binary formats follow PostgreSQL's `send`/`recv` functions (through `postgres-types`);
//! text formats PostgreSQL's output functions with `DateStyle = ISO` and
//! `extra_float_digits = 1` (shortest exact floats).

use std::sync::Arc;

use amx_sql::arrow::array::{Array, ArrayRef, AsArray};
use amx_sql::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use amx_sql::arrow::record_batch::RecordBatch;
use amx_sql::arrow::util::display::{ArrayFormatter, FormatOptions as ArrowFormat};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{CopyEncoder, DataRowEncoder, FieldInfo};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use postgres_types::ToSql;

/// The PostgreSQL type a column of Arrow type `data_type` is described and encoded as.
pub fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::FLOAT8,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        _ => Type::TEXT,
    }
}

/// PostgreSQL's name of the type a column of `data_type` is shown as (what `pg_typeof` and
/// `format_type` answer): `bigint`, `double precision`, `timestamp with time zone`, ….
pub fn pg_type_name(data_type: &DataType) -> &'static str {
    match pg_type(data_type) {
        t if t == Type::BOOL => "boolean",
        t if t == Type::INT2 => "smallint",
        t if t == Type::INT4 => "integer",
        t if t == Type::INT8 => "bigint",
        t if t == Type::FLOAT4 => "real",
        t if t == Type::FLOAT8 => "double precision",
        t if t == Type::TIMESTAMP => "timestamp without time zone",
        t if t == Type::TIMESTAMPTZ => "timestamp with time zone",
        t if t == Type::DATE => "date",
        t if t == Type::BYTEA => "bytea",
        _ => "text",
    }
}

/// The row description of `schema`, column `i` in format `format.format_for(i)`.
pub fn fields(schema: &SchemaRef, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), format.format_for(i)))
        .collect()
}

/// Where encoded values go: a data row, or a row of `COPY … TO STDOUT`.
trait ValueSink {
    fn put<T: ToSql + ToSqlText>(&mut self, value: &T) -> PgWireResult<()>;
}

impl ValueSink for DataRowEncoder {
    fn put<T: ToSql + ToSqlText>(&mut self, value: &T) -> PgWireResult<()> {
        self.encode_field(value)
    }
}

impl ValueSink for CopyEncoder {
    fn put<T: ToSql + ToSqlText>(&mut self, value: &T) -> PgWireResult<()> {
        self.encode_field(value)
    }
}

fn encode_error(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22003".into(), message)))
}

/// Encodes value `row` of `array` (of the column described as `pg_type(array.data_type())`).
fn put_value<S: ValueSink>(sink: &mut S, array: &ArrayRef, row: usize, formatter: &ArrayFormatter) -> PgWireResult<()> {
    if array.is_null(row) {
        return sink.put(&None::<i64>);
    }
    match array.data_type() {
        DataType::Boolean => sink.put(&array.as_boolean().value(row)),
        DataType::Int8 => sink.put(&i16::from(array.as_primitive::<Int8Type>().value(row))),
        DataType::Int16 => sink.put(&array.as_primitive::<Int16Type>().value(row)),
        DataType::UInt8 => sink.put(&i16::from(array.as_primitive::<UInt8Type>().value(row))),
        DataType::Int32 => sink.put(&array.as_primitive::<Int32Type>().value(row)),
        DataType::UInt16 => sink.put(&i32::from(array.as_primitive::<UInt16Type>().value(row))),
        DataType::Int64 => sink.put(&array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => sink.put(&i64::from(array.as_primitive::<UInt32Type>().value(row))),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(row);
            let v = i64::try_from(v).map_err(|_| encode_error(format!("{v} is out of range for type bigint")))?;
            sink.put(&v)
        }
        DataType::Float16 => sink.put(&array.as_primitive::<Float16Type>().value(row).to_f32()),
        DataType::Float32 => sink.put(&array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => sink.put(&array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(..) | DataType::Decimal256(..) => {
            let text = formatter.value(row).to_string();
            let v: f64 = text.parse().map_err(|_| encode_error(format!("{text} is not a number")))?;
            sink.put(&v)
        }
        DataType::Utf8 => sink.put(&array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => sink.put(&array.as_string::<i64>().value(row)),
        DataType::Utf8View => sink.put(&array.as_string_view().value(row)),
        DataType::Binary => sink.put(&array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => sink.put(&array.as_binary::<i64>().value(row)),
        DataType::BinaryView => sink.put(&array.as_binary_view().value(row)),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            let date = NaiveDate::from_num_days_from_ce_opt(days + 719_163)
                .ok_or_else(|| encode_error(format!("date {days} days after 1970-01-01 is out of range")))?;
            sink.put(&date)
        }
        DataType::Date64 => {
            let ms = array.as_primitive::<Date64Type>().value(row);
            let date = DateTime::<Utc>::from_timestamp_millis(ms)
                .ok_or_else(|| encode_error(format!("date {ms} ms is out of range")))?
                .date_naive();
            sink.put(&date)
        }
        DataType::Timestamp(unit, tz) => {
            let micros = timestamp_micros(array, row, unit);
            let at = DateTime::<Utc>::from_timestamp_micros(micros)
                .ok_or_else(|| encode_error(format!("timestamp {micros} µs is out of range")))?;
            if tz.is_some() { sink.put(&at) } else { sink.put(&at.naive_utc()) }
        }
        _ => sink.put(&formatter.value(row).to_string()),
    }
}

/// A timestamp value in µs since the Unix epoch (nanoseconds truncated).
fn timestamp_micros(array: &ArrayRef, row: usize, unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row).saturating_mul(1_000_000),
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row).saturating_mul(1_000),
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row).div_euclid(1_000),
    }
}

fn formatters(batch: &RecordBatch) -> PgWireResult<Vec<ArrayFormatter<'_>>> {
    let options = ArrowFormat::default().with_null("");
    batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).map_err(|e| encode_error(e.to_string())))
        .collect()
}

/// The rows of `batch` as data rows described by `fields`.
pub fn data_rows(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let formatters = formatters(batch)?;
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (column, formatter) in batch.columns().iter().zip(&formatters) {
            put_value(&mut encoder, column, row, formatter)?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

/// The rows of `batch` in `COPY … TO STDOUT` text format (tab-separated, `\N` for NULL),
/// one line each, appended to `out`.
pub fn copy_rows(batch: &RecordBatch, encoder: &mut CopyEncoder, out: &mut Vec<u8>) -> PgWireResult<()> {
    let formatters = formatters(batch)?;
    for row in 0..batch.num_rows() {
        for (column, formatter) in batch.columns().iter().zip(&formatters) {
            put_value(encoder, column, row, formatter)?;
        }
        out.extend_from_slice(&encoder.take_copy().data);
    }
    Ok(())
}

/// The Arrow type of a parameter the client declared as PostgreSQL type `t`: the type its
/// values decode to in [`parameter`] (`numeric` as a double; text for a type without one of
/// its own).
pub fn arrow_type(t: &Type) -> DataType {
    match t {
        t if *t == Type::NUMERIC => DataType::Float64,
        t if *t == Type::BOOL => DataType::Boolean,
        t if *t == Type::INT2 => DataType::Int16,
        t if *t == Type::INT4 => DataType::Int32,
        t if *t == Type::INT8 => DataType::Int64,
        t if *t == Type::FLOAT4 => DataType::Float32,
        t if *t == Type::FLOAT8 => DataType::Float64,
        t if *t == Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        t if *t == Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        t if *t == Type::DATE => DataType::Date32,
        t if *t == Type::BYTEA => DataType::Binary,
        _ => DataType::Utf8,
    }
}

/// Decodes parameter `idx` of `portal`, sent as PostgreSQL type `sent` (the type the client
/// named, or the one the statement was described with), into a value of Arrow type `want`
/// (`None`: as sent).
///
/// A value the client typed itself (as drivers do: psycopg sends a Python `float` as
/// `float8`, a `bool` as `boolean`, a `Decimal` as `numeric`) converts to `want` only within
/// its kind ([`Kind`]: a number to a number, a date or time to a date or time) and only
/// exactly: `1.5` sent as `float8` for a `BIGINT` is refused, not taken as `1` (PostgreSQL
/// compares in the type sent, so `n = 1.5` matches no integer), and a boolean is not taken as
/// a number or as text, nor a number as a time (PostgreSQL has no `text = boolean` or
/// `bigint = boolean`). Narrowing a `float8` to a `real` is not checked. Text, and values of
/// types the client leaves unknown, are read as a value of `want`, as PostgreSQL reads an
/// untyped literal.
///
/// # Errors
/// A value that does not decode as `sent` (22P02), does not convert to `want` (22P02), or
/// converts only to another kind of value or with another value (42804).
pub fn parameter<S: Clone>(
    portal: &Portal<S>,
    idx: usize,
    sent: &Type,
    want: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let bad =
        |message: String| PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22P02".into(), message)));
    let mismatch = |value: &dyn std::fmt::Display, why: String| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "42804".into(),
            format!("parameter ${} is {value} sent as {}, {why}", idx + 1, sent.name()),
        )))
    };
    let other_kind = |want: &DataType| format!("which the statement takes as {}", pg_type_name(want));
    let value = match sent {
        t if *t == Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(idx, t)?),
        t if *t == Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(idx, t)?),
        t if *t == Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(idx, t)?),
        t if *t == Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(idx, t)?),
        t if *t == Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(idx, t)?),
        t if *t == Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(idx, t)?),
        t if *t == Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal.parameter::<NaiveDateTime>(idx, t)?.map(|v| v.and_utc().timestamp_micros()),
            None,
        ),
        t if *t == Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal.parameter::<DateTime<chrono::FixedOffset>>(idx, t)?.map(|v| v.timestamp_micros()),
            Some("UTC".into()),
        ),
        t if *t == Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(idx, t)?
                .map(|d| d.signed_duration_since(NaiveDate::default()).num_days() as i32),
        ),
        t if *t == Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(idx, t)?),
        _ => {
            // text, varchar, unknown and every other type: the value's text, cast below.
            let raw = portal.parameters.get(idx).ok_or(PgWireError::ParameterIndexOutOfBound(idx))?;
            let text = match raw {
                None => None,
                Some(bytes)
                    if portal.parameter_format.is_binary(idx)
                        && *sent != Type::TEXT
                        && *sent != Type::VARCHAR
                        && *sent != Type::UNKNOWN =>
                {
                    return Err(bad(format!(
                        "parameter ${} is sent in binary as type {}, which is not supported; send it as text",
                        idx + 1,
                        sent.name()
                    )));
                }
                Some(bytes) => Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| bad(format!("parameter ${} is not UTF-8", idx + 1)))?,
                ),
            };
            match (text, want) {
                // A `numeric` (a `Decimal`) is a number: not text, not a boolean.
                (Some(text), Some(want)) if *sent == Type::NUMERIC && Kind::of(want) != Kind::Number => {
                    return Err(mismatch(&text, other_kind(want)));
                }
                (Some(text), Some(want)) if want != &DataType::Utf8 => {
                    return ScalarValue::try_from_string(text.clone(), want).map_err(|e| {
                        bad(format!("parameter ${}: {text:?} is not a valid {}: {e}", idx + 1, pg_type_name(want)))
                    });
                }
                (text, _) => ScalarValue::Utf8(text),
            }
        }
    };
    match want {
        Some(want) if &value.data_type() != want && !value.is_null() => {
            if Kind::of(&value.data_type()) != Kind::of(want) || Kind::of(want) == Kind::Other {
                return Err(mismatch(&value, other_kind(want)));
            }
            let converted = value
                .cast_to(want)
                .map_err(|e| bad(format!("parameter ${} does not convert to {}: {e}", idx + 1, pg_type_name(want))))?;
            let floats = value.data_type().is_floating() && want.is_floating();
            if !floats && !converted.cast_to(&value.data_type()).is_ok_and(|back| same(&back, &value)) {
                let why = format!("which has no exact {} value (it would be {converted})", pg_type_name(want));
                return Err(mismatch(&value, why));
            }
            Ok(converted)
        }
        Some(want) if value.is_null() => ScalarValue::try_from(want).or(Ok(value)),
        _ => Ok(value),
    }
}

/// What kind of value a type holds: a typed parameter converts only to a type of its kind
/// (see [`parameter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Number,
    Bool,
    Text,
    /// Dates and timestamps.
    Time,
    Other,
}

impl Kind {
    fn of(t: &DataType) -> Kind {
        match t {
            t if t.is_numeric() => Kind::Number,
            DataType::Boolean => Kind::Bool,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => Kind::Time,
            _ => Kind::Other,
        }
    }
}

/// Whether two values of one type are the same value (floats by number: `-0.0` is `0.0`).
fn same(a: &ScalarValue, b: &ScalarValue) -> bool {
    match (a, b) {
        (ScalarValue::Float64(Some(x)), ScalarValue::Float64(Some(y))) => x == y,
        (ScalarValue::Float32(Some(x)), ScalarValue::Float32(Some(y))) => x == y,
        _ => a == b,
    }
}

/// `schema`, the answer to query `sql`, with its unnamed columns named as PostgreSQL names
/// them ([`figure_column_name`]) rather than as DataFusion does (`Int64(1)`, `count(*)`): a
/// psql or driver user sees `?column?` and `count`, as against PostgreSQL. Applies when `sql`
/// is one query whose (first) `SELECT` lists no wildcard and as many items as `schema` has
/// fields; any other statement keeps its names. A column with an alias keeps it.
pub fn postgres_column_names(sql: &str, schema: &SchemaRef) -> SchemaRef {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr, Statement};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    // Names that are plain words are column references or aliases, named alike by both: no
    // second parse for the common query (a point lookup's `SELECT collection, size_bytes …`).
    let plain = |name: &str| name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if schema.fields().iter().all(|f| plain(f.name())) {
        return schema.clone();
    }
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else { return schema.clone() };
    let (Some(Statement::Query(query)), None) = (statements.pop(), statements.pop()) else { return schema.clone() };
    let mut body = &*query.body;
    let select = loop {
        match body {
            SetExpr::Select(select) => break select,
            SetExpr::Query(query) => body = &query.body,
            // A set operation's columns are named by its first branch.
            SetExpr::SetOperation { left, .. } => body = left,
            _ => return schema.clone(),
        }
    };
    if select.projection.len() != schema.fields().len() {
        return schema.clone();
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    for (item, field) in select.projection.iter().zip(schema.fields()) {
        let name = match item {
            // A column reference keeps the name the engine resolved it to.
            SelectItem::UnnamedExpr(expr) if !is_column_reference(expr) => figure_column_name(expr).0,
            SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. } => field.name().clone(),
            _ => return schema.clone(),
        };
        fields.push(field.as_ref().clone().with_name(name));
    }
    Arc::new(amx_sql::arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Whether `expr` is a column reference (`c`, `t.c`), parenthesized or not.
fn is_column_reference(expr: &datafusion::sql::sqlparser::ast::Expr) -> bool {
    use datafusion::sql::sqlparser::ast::Expr;
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::Nested(inner) => is_column_reference(inner),
        _ => false,
    }
}

/// The name PostgreSQL gives an output column without an alias, and whether it is a strong
/// one: `FigureColnameInternal` of PostgreSQL's `src/backend/parser/parse_target.c` — a column
/// reference's column, a function call's function (`count`, `sum`), `CASE` → `case`,
/// `EXISTS` → `exists`, `ARRAY[…]` → `array`, a row → `row`, a subquery → its first column's
/// name, a cast → what it casts if that has a name, else the type's (`int4`, `int8`,
/// `float8`, `text`, …); anything else (constants, operators) `?column?`.
pub fn figure_column_name(expr: &datafusion::sql::sqlparser::ast::Expr) -> (String, bool) {
    use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Value};
    let weak = || ("?column?".to_owned(), false);
    let strong = |name: &str| (name.to_owned(), true);
    match expr {
        Expr::Identifier(ident) => strong(&ident.value),
        Expr::CompoundIdentifier(parts) => parts.last().map_or_else(weak, |i| strong(&i.value)),
        Expr::Nested(inner) => figure_column_name(inner),
        Expr::Function(function) => match function.name.0.last().and_then(|p| p.as_ident()) {
            Some(ident) if ident.quote_style.is_some() => strong(&ident.value),
            Some(ident) => strong(&ident.value.to_lowercase()),
            None => weak(),
        },
        Expr::Cast { expr, data_type, .. } => match figure_column_name(expr) {
            (name, true) => (name, true),
            _ => (postgres_type_name(data_type), true),
        },
        Expr::TypedString(typed) => (postgres_type_name(&typed.data_type), true),
        // PostgreSQL reads `true` as the text 't' cast to bool.
        Expr::Value(value) if matches!(value.value, Value::Boolean(_)) => strong("bool"),
        Expr::Case { .. } => strong("case"),
        Expr::Exists { .. } => strong("exists"),
        Expr::Array(_) => strong("array"),
        Expr::Tuple(_) => strong("row"),
        Expr::Extract { .. } => strong("extract"),
        Expr::Substring { .. } => strong("substring"),
        Expr::Position { .. } => strong("position"),
        Expr::Ceil { .. } => strong("ceil"),
        Expr::Floor { .. } => strong("floor"),
        Expr::Trim { .. } => strong("btrim"),
        Expr::Subquery(query) => match &*query.body {
            SetExpr::Select(select) => match select.projection.first() {
                Some(SelectItem::UnnamedExpr(expr)) => figure_column_name(expr),
                Some(SelectItem::ExprWithAlias { alias, .. }) => strong(&alias.value),
                _ => weak(),
            },
            _ => weak(),
        },
        _ => weak(),
    }
}

/// PostgreSQL's internal name of a type as SQL writes it (`format_type`'s short names where
/// a cast names its column: `int4` for `INT`, `int8` for `BIGINT`, …).
fn postgres_type_name(data_type: &datafusion::sql::sqlparser::ast::DataType) -> String {
    use datafusion::sql::sqlparser::ast::{DataType as Sql, TimezoneInfo};
    match data_type {
        Sql::SmallInt(_) | Sql::Int2(_) => "int2".into(),
        Sql::Int(_) | Sql::Integer(_) | Sql::Int4(_) => "int4".into(),
        Sql::BigInt(_) | Sql::Int8(_) => "int8".into(),
        Sql::Real | Sql::Float4 => "float4".into(),
        Sql::Double(_) | Sql::DoublePrecision | Sql::Float8 => "float8".into(),
        Sql::Boolean | Sql::Bool => "bool".into(),
        Sql::Varchar(_) | Sql::CharacterVarying(_) => "varchar".into(),
        Sql::Char(_) | Sql::Character(_) => "bpchar".into(),
        Sql::Numeric(_) | Sql::Decimal(_) => "numeric".into(),
        Sql::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => "timestamptz".into(),
        Sql::Timestamp(..) => "timestamp".into(),
        other => other.to_string().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_postgres_oids() {
        assert_eq!(pg_type(&DataType::Int64).oid(), 20);
        assert_eq!(pg_type(&DataType::Float64).oid(), 701);
        assert_eq!(pg_type(&DataType::Utf8).oid(), 25);
        assert_eq!(pg_type(&DataType::Boolean).oid(), 16);
        assert_eq!(pg_type(&DataType::Timestamp(TimeUnit::Microsecond, None)).oid(), 1114);
        assert_eq!(pg_type(&DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))).oid(), 1184);
        assert_eq!(pg_type(&DataType::Date32).oid(), 1082);
    }

    /// The names PostgreSQL 16 gives these columns (`SELECT …` in psql), by its rules.
    #[test]
    fn unnamed_columns_are_named_as_postgresql_names_them() {
        use amx_sql::arrow::datatypes::{Field, Schema};
        let sql = "SELECT 1, 40 + 2, x AS answer, count(*), SUM(t.y), CAST('7' AS BIGINT), '1'::int, CAST(y AS TEXT), \
                   CASE WHEN true THEN 1 END, coalesce(y, 0), (SELECT 3 AS three), t.y, (z), DATE '2024-01-01', \
                   EXISTS (SELECT 1), true FROM t";
        // DataFusion's names of expressions are not plain words (`Int64(1)`, `count(*)`).
        let fields: Vec<Field> = (0..16).map(|i| Field::new(format!("df({i})"), DataType::Int64, true)).collect();
        let schema = Arc::new(Schema::new(fields));
        let named = postgres_column_names(sql, &schema);
        let names: Vec<&str> = named.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "?column?", "?column?", "df(2)", "count", "sum", "int8", "int4", "y", "case", "coalesce", "three",
                "df(11)", "df(12)", "date", "exists", "bool"
            ]
        );
        // A wildcard, or a statement that is not one query: the names stay.
        for sql in ["SELECT *, 1 FROM t", "SELECT 1; SELECT 2", "SHOW VIEWS"] {
            let one = Arc::new(Schema::new(vec![
                Field::new("f(a)", DataType::Int64, true),
                Field::new("f(b)", DataType::Int64, true),
            ]));
            assert_eq!(postgres_column_names(sql, &one), one, "{sql}");
        }
        let union = "SELECT 1 UNION ALL SELECT count(*) FROM t";
        let one = Arc::new(Schema::new(vec![Field::new("Int64(1)", DataType::Int64, true)]));
        assert_eq!(postgres_column_names(union, &one).field(0).name(), "?column?", "the first branch names them");
    }
}
