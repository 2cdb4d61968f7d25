//! min/max/sum/avg over floats (and sum over BIGINT) give the same answer in a maintained
//! view, in a plain query and in a grouped query (`SqlEngine`, as the CLI answers them). The
//! expected values are worked out by hand in the comments.

use amx_dataflows::row::{ColumnType, Datum, Row, desc};
use amx_sql::arrow_schema;
use amx_sql::testing::{Change, run_views};
use amx_sql::testing::{SqlEngine, State};
use amx_sql::views::ViewPlanner;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, SchemaRef};

fn t(s: &str) -> Datum {
    Datum::Text(s.to_owned())
}
fn f(v: f64) -> Datum {
    Datum::Float(ordered_float::OrderedFloat(v))
}

/// One table `ev (name TEXT, score DOUBLE, n BIGINT)` holding `rows`.
fn table(rows: &[Row]) -> (Vec<(String, SchemaRef)>, State) {
    use ColumnType::*;
    let d = desc("ev", &[], &[("name", Text), ("score", Float), ("n", Int)]);
    let tables = vec![("ev".to_owned(), arrow_schema(&d))];
    let mut state = State::new(vec![d]);
    state.apply(rows.iter().map(|r| ((0, r.clone()), 0, 1)), 1).expect("applies");
    (tables, state)
}

/// The single value of a one-row, one-column answer as f64 bits (None for NULL).
fn query_f64(engine: &SqlEngine, state: &mut State, sql: &str) -> Option<u64> {
    let batches = engine.query(state, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let values: Vec<Option<u64>> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column(b.num_columns() - 1).as_primitive::<Float64Type>().clone();
            (0..c.len()).map(move |i| c.is_valid(i).then(|| c.value(i).to_bits()))
        })
        .collect();
    assert_eq!(values.len(), 1, "{sql}: {values:?}");
    values[0]
}

/// The view's single row's last column as f64 bits, after loading `rows`.
fn view_f64(tables: &[(String, SchemaRef)], rows: &[Row], sql: &str) -> Option<u64> {
    let mut planner = ViewPlanner::new(tables).expect("planner");
    let view = planner.create("v", sql).expect("plans").clone();
    let batch: Vec<Change> = rows.iter().map(|r| (0, r.clone(), 1)).collect();
    let at = |workers| {
        let steps = run_views(workers, tables, std::slice::from_ref(&view), vec![batch.clone()]);
        assert!(steps[0].errors.is_empty(), "{sql}: {:?}", steps[0].errors);
        let rows: Vec<&Row> = steps[0].views[0].keys().collect();
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        match rows[0].last() {
            Some(Datum::Float(v)) => Some(v.0.to_bits()),
            _ => None,
        }
    };
    let one = at(1);
    assert_eq!(one, at(3), "{sql}: 1 and 3 workers disagree");
    one
}

/// `agg` as a view, a plain query and a grouped query: all three bit patterns.
fn three_ways(rows: &[Row], agg: &str) -> [Option<u64>; 3] {
    let (tables, mut state) = table(rows);
    let engine = SqlEngine::new().expect("engine");
    let view = view_f64(&tables, rows, &format!("SELECT name, {agg} AS m FROM ev GROUP BY name"));
    let plain = query_f64(&engine, &mut state, &format!("SELECT {agg} AS m FROM ev"));
    let grouped = query_f64(&engine, &mut state, &format!("SELECT name, {agg} AS m FROM ev GROUP BY name"));
    [view, plain, grouped]
}

fn scores(values: &[f64]) -> Vec<Row> {
    values.iter().map(|v| vec![t("x"), f(*v), Datum::Int(1)]).collect()
}

#[test]
fn nan_is_greater_than_everything_in_views_queries_and_grouped_queries() {
    let nan = Some(f64::NAN.to_bits());
    let rows = scores(&[-1.0, 4.0, 9.0]);
    // Scores -1, 4, 9 with -1 mapped to NaN: max is NaN (NaN is the greatest), min is 4.
    let mapped = "CASE WHEN score < 0 THEN CAST('NaN' AS DOUBLE) ELSE score END";
    assert_eq!(three_ways(&rows, &format!("max({mapped})")), [nan; 3]);
    assert_eq!(three_ways(&rows, &format!("min({mapped})")), [Some(4f64.to_bits()); 3]);
    // Only NaNs: min is NaN too.
    assert_eq!(three_ways(&rows, "min(CAST('NaN' AS DOUBLE) + score)"), [nan; 3]);
    // +inf is below NaN: {NaN, 4, inf} (9 mapped to 1e308 · 10 = inf) has max NaN; min(-inf, …) = -inf.
    assert_eq!(three_ways(&rows, &format!("max(CASE WHEN score > 5 THEN 1e308 * 10 ELSE {mapped} END)")), [nan; 3]);
    let neg_inf = Some(f64::NEG_INFINITY.to_bits());
    assert_eq!(three_ways(&rows, "min(CASE WHEN score > 5 THEN -1e308 * 10 ELSE score END)"), [neg_inf; 3]);
    // -0.0 = 0.0, reported as +0.0 (bits 0): max/min of -(score * 0) = -0.0 for positive scores.
    let zero = Some(0);
    assert_eq!(three_ways(&scores(&[4.0, 9.0]), "max(-(score * 0))"), [zero; 3]);
    assert_eq!(three_ways(&scores(&[4.0, 9.0]), "min(-(score * 0))"), [zero; 3]);
}

#[test]
fn float_sums_are_exact_whatever_the_order() {
    // -1e31 + 1e31 + 3 = 3 exactly, mean 1; the engine's tables are sorted (-1e31, 3, 1e31),
    // and adding in that order gives 0.
    let rows = scores(&[1e31, -1e31, 3.0]);
    assert_eq!(three_ways(&rows, "sum(score)"), [Some(3f64.to_bits()); 3]);
    assert_eq!(three_ways(&rows, "avg(score)"), [Some(1f64.to_bits()); 3]);
    // Ten rows of 0.1 sum to exactly 1.0000000000000000555…, whose nearest double is 1.0
    // (adding them one by one gives 0.9999999999999999).
    let tenths = scores(&[0.1; 10]);
    assert_eq!(three_ways(&tenths, "sum(score)"), [Some(1f64.to_bits()); 3]);
    // DISTINCT: {0.1} sums to 0.1.
    assert_eq!(three_ways(&tenths, "sum(DISTINCT score)"), [Some(0.1f64.to_bits()); 3]);
    // 1e308 + 1e308 − 1e308 = 1e308 exactly (a running double sum would overflow to inf).
    let huge = scores(&[1e308, 1e308, -1e308]);
    assert_eq!(three_ways(&huge, "sum(score)"), [Some(1e308f64.to_bits()); 3]);
}

#[test]
fn bigint_sums_do_not_wrap_in_queries() {
    let (_, mut state) = table(&[
        vec![t("x"), Datum::Null, Datum::Int(i64::MAX)],
        vec![t("x"), Datum::Null, Datum::Int(1)],
        vec![t("y"), Datum::Null, Datum::Int(i64::MIN)],
        vec![t("y"), Datum::Null, Datum::Int(i64::MAX)],
        vec![t("y"), Datum::Null, Datum::Int(i64::MIN)],
        vec![t("y"), Datum::Null, Datum::Int(i64::MAX)],
    ]);
    let engine = SqlEngine::new().expect("engine");
    // x: 9223372036854775807 + 1 = 9223372036854775808, beyond BIGINT: an error, not the
    // wrapped -9223372036854775808.
    let err = engine.query(&mut state, "SELECT sum(n) FROM ev WHERE name = 'x'").expect_err("overflows");
    assert!(format!("{err:#}").contains("integer overflow in sum (BIGINT): 9223372036854775808"), "{err:#}");
    // y: 2·(-2^63) + 2·(2^63 - 1) = -2 (its partial sums leave BIGINT; the total does not).
    let batches = engine.query(&mut state, "SELECT name, sum(n) FROM ev WHERE name = 'y' GROUP BY name").expect("y");
    assert_eq!(batches[0].column(1).as_primitive::<Int64Type>().value(0), -2);
}

#[test]
fn window_frames_use_the_same_order_and_exact_sums() {
    let row = |score: f64, n: i64| vec![t("x"), f(score), Datum::Int(n)];
    let (_, mut state) = table(&[row(f64::NAN, 1), row(4.0, 2), row(9.0, 3), row(1e31, 4), row(-1e31, 5), row(3.0, 6)]);
    let engine = SqlEngine::new().expect("engine");
    let frame = "OVER (ORDER BY n ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)";
    let sql = format!(
        "SELECT n, max(score) {frame} AS hi, min(score) {frame} AS lo, sum(score) {frame} AS s FROM ev ORDER BY n"
    );
    let batches = engine.query(&mut state, &sql).expect("window query");
    let column = |c: usize| -> Vec<f64> {
        batches.iter().flat_map(|b| b.column(c).as_primitive::<Float64Type>().values().to_vec()).collect()
    };
    // Frames {NaN}, {NaN, 4}, {4, 9}, {9, 1e31}, {1e31, -1e31}, {-1e31, 3}.
    let hi = column(1);
    assert!(hi[0].is_nan() && hi[1].is_nan());
    assert_eq!(hi[2..], [9.0, 1e31, 1e31, 3.0]);
    let lo = column(2);
    assert!(lo[0].is_nan());
    assert_eq!(lo[1..], [4.0, 4.0, 9.0, -1e31, -1e31]);
    // Sums: NaN, NaN, 13, 9 + 1e31 (rounds to 1e31), exactly 0, -1e31 + 3 (rounds to -1e31).
    let s = column(3);
    assert!(s[0].is_nan() && s[1].is_nan());
    assert_eq!(s[2..], [13.0, 1e31, 0.0, -1e31]);
}
