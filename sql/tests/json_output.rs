//! `--output json` of floats JSON numbers cannot hold (issue 6): NaN and ±infinity are the
//! strings "NaN", "Infinity" and "-Infinity" (as PostgreSQL's `to_json`), never `null`, which is
//! SQL NULL.

use std::sync::Arc;

use amx_dataflows::row::{Column, ColumnType, Datum, RelationDesc};
use amx_sql::testing::{SqlEngine, State};
use amx_sql::{OutputFormat, format_batches};
use arrow::array::{ArrayRef, Float32Array, Float64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

#[test]
fn json_output_keeps_nan_and_infinities_apart_from_null() {
    let values =
        Float64Array::from(vec![Some(f64::NAN), Some(f64::INFINITY), Some(f64::NEG_INFINITY), None, Some(1.5)]);
    let schema = Arc::new(Schema::new(vec![Field::new("f", DataType::Float64, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(values) as ArrayRef]).unwrap();
    assert_eq!(
        format_batches(&[batch], OutputFormat::Json).unwrap(),
        "[{\"f\":\"NaN\"},{\"f\":\"Infinity\"},{\"f\":\"-Infinity\"},{\"f\":null},{\"f\":1.5}]\n"
    );
    // Computed by a query, and inside a list.
    let engine = SqlEngine::new().unwrap();
    let mut state = State::new(vec![RelationDesc {
        name: "t",
        columns: vec![Column { name: "k", ty: ColumnType::Int }, Column { name: "x", ty: ColumnType::Int }],
        key: Vec::new(),
    }]);
    state.apply([((0, vec![Datum::Int(1), Datum::Int(1)]), 0, 1)], 1).unwrap();
    let sql = "SELECT CAST(x AS DOUBLE) / 0 AS q, -CAST(x AS DOUBLE) / 0 AS n, make_array(CAST('NaN' AS DOUBLE), \
               0.25) AS l FROM t WHERE k = 1";
    assert_eq!(
        format_batches(&engine.query(&mut state, sql).unwrap(), OutputFormat::Json).unwrap(),
        "[{\"q\":\"Infinity\",\"n\":\"-Infinity\",\"l\":[\"NaN\",0.25]}]\n"
    );
}

#[test]
fn single_precision_floats_too() {
    let values = Float32Array::from(vec![Some(f32::NAN), Some(f32::NEG_INFINITY), Some(0.5)]);
    let schema = Arc::new(Schema::new(vec![Field::new("f", DataType::Float32, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(values) as ArrayRef]).unwrap();
    assert_eq!(
        format_batches(&[batch], OutputFormat::Json).unwrap(),
        "[{\"f\":\"NaN\"},{\"f\":\"-Infinity\"},{\"f\":0.5}]\n"
    );
}
