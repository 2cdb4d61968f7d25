//! Conversions between Arrow arrays and [`Datum`] rows for SQL views.
//!
//! Rows inside the dataflows hold a few canonical datum kinds; a column's declared Arrow type
//! (from DataFusion's plan) says how to turn them back into arrays. Supported Arrow types
//! ([`supported`]): `Null`, `Boolean`, `Int8`–`Int64`, `UInt8`–`UInt64` (as `Int`; `UInt64` values above `i64::MAX` become NULL),
//! `Float32`/`Float64` (as `Float`), `Utf8`/`LargeUtf8`/`Utf8View` (as `Text`),
//! `Timestamp(any unit, any zone)` (as `Timestamp`, µs) and `Date32` (as `Int`, days).

use std::sync::Arc;

use amx_dataflows::row::{Datum, Row};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, NullArray, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result};

/// Whether rows can carry values of this Arrow type (see the module doc).
pub fn supported(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Null
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Timestamp(_, _)
            | DataType::Date32
    )
}

fn bad(d: &Datum, ty: &DataType) -> DataFusionError {
    DataFusionError::Internal(format!("value {d:?} in a column of type {ty}"))
}

/// Builds an array of type `ty` from one datum per row (`Null` → NULL).
pub fn to_array<'a>(datums: impl Iterator<Item = &'a Datum>, len: usize, ty: &DataType) -> Result<ArrayRef> {
    let canonical: ArrayRef = match ty {
        DataType::Null => return Ok(Arc::new(NullArray::new(len))),
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(len);
            for d in datums {
                match d {
                    Datum::Null => b.append_null(),
                    Datum::Bool(v) => b.append_value(*v),
                    d => return Err(bad(d, ty)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let mut b = Int64Builder::with_capacity(len);
            for d in datums {
                match d {
                    Datum::Null => b.append_null(),
                    Datum::Int(v) => b.append_value(*v),
                    d => return Err(bad(d, ty)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Date32 => {
            let mut b = Date32Builder::with_capacity(len);
            for d in datums {
                match d {
                    Datum::Null => b.append_null(),
                    Datum::Int(v) => b.append_value(i32::try_from(*v).map_err(|_| bad(d, ty))?),
                    d => return Err(bad(d, ty)),
                }
            }
            return Ok(Arc::new(b.finish()));
        }
        DataType::Float32 | DataType::Float64 => {
            let mut b = Float64Builder::with_capacity(len);
            for d in datums {
                match d {
                    Datum::Null => b.append_null(),
                    Datum::Float(v) => b.append_value(v.0),
                    d => return Err(bad(d, ty)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let mut b = StringBuilder::with_capacity(len, len * 8);
            for d in datums {
                match d {
                    Datum::Null => b.append_null(),
                    Datum::Text(v) => b.append_value(v),
                    d => return Err(bad(d, ty)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(_, tz) => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(len).with_timezone_opt(tz.clone());
            for d in datums {
                match d {
                    Datum::Null => b.append_null(),
                    Datum::Timestamp(v) => b.append_value(*v),
                    d => return Err(bad(d, ty)),
                }
            }
            Arc::new(b.finish())
        }
        other => {
            return Err(DataFusionError::NotImplemented(format!("columns of type {other}")));
        }
    };
    if canonical.data_type() == ty { Ok(canonical) } else { Ok(cast(&canonical, ty)?) }
}

/// Reads row `i` of `array` as a datum.
fn datum_at(array: &ArrayRef, i: usize) -> Datum {
    if array.is_null(i) {
        return Datum::Null;
    }
    match array.data_type() {
        DataType::Boolean => Datum::Bool(array.as_boolean().value(i)),
        DataType::Int64 => Datum::Int(array.as_primitive::<Int64Type>().value(i)),
        // Canonical bits (-0.0 as 0.0, one NaN), as every float the dataflows store.
        DataType::Float64 => Datum::float(Some(array.as_primitive::<Float64Type>().value(i))),
        DataType::Utf8 => Datum::Text(array.as_string::<i32>().value(i).to_owned()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Datum::Timestamp(array.as_primitive::<TimestampMicrosecondType>().value(i))
        }
        DataType::Date32 => Datum::Int(array.as_primitive::<Date32Type>().value(i) as i64),
        _ => Datum::Null,
    }
}

/// The canonical Arrow type rows are read through.
fn canonical(ty: &DataType) -> Result<DataType> {
    Ok(match ty {
        DataType::Null | DataType::Boolean | DataType::Date32 => ty.clone(),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DataType::Int64,
        DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        other => {
            return Err(DataFusionError::NotImplemented(format!("columns of type {other}")));
        }
    })
}

/// Converts arrays (one per column, equal lengths) into rows.
pub fn arrays_to_rows(arrays: &[ArrayRef], len: usize) -> Result<Vec<Row>> {
    let columns: Vec<ArrayRef> = arrays
        .iter()
        .map(|a| {
            let c = canonical(a.data_type())?;
            if &c == a.data_type() { Ok(a.clone()) } else { Ok(cast(a, &c)?) }
        })
        .collect::<Result<_>>()?;
    Ok((0..len).map(|i| columns.iter().map(|c| datum_at(c, i)).collect()).collect())
}

/// Builds a record batch of `schema` from rows: column `c` of the batch is `row[c]`. Rows may
/// be wider than the schema; the extra trailing columns are not read.
pub fn rows_to_batch(rows: &[&Row], schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, f)| to_array(rows.iter().map(|r| &r[c]), rows.len(), f.data_type()))
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}
