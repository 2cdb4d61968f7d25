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

/// Decodes parameter `idx` of `portal`, sent as PostgreSQL type `sent` (the type the client
/// named, or the one the statement was described with), into a value of Arrow type `want`
/// (`None`: as sent).
///
/// # Errors
/// A value that does not decode as `sent`, or does not convert to `want`.
pub fn parameter<S: Clone>(
    portal: &Portal<S>,
    idx: usize,
    sent: &Type,
    want: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let bad =
        |message: String| PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22P02".into(), message)));
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
        Some(want) if &value.data_type() != want && !value.is_null() => value
            .cast_to(want)
            .map_err(|e| bad(format!("parameter ${} does not convert to {}: {e}", idx + 1, pg_type_name(want)))),
        Some(want) if value.is_null() => ScalarValue::try_from(want).or(Ok(value)),
        _ => Ok(value),
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
}
