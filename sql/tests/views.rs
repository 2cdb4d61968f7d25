//! SQL views on hand-written change sequences whose results were worked out by hand: the
//! classes where streaming SQL engines have shipped wrong answers.

use std::sync::Arc;

use amx_dataflows::row::{Datum, Row};
use amx_sql::testing::{Change, Contents, run_views};
use amx_sql::views::ViewPlanner;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

fn table(name: &str, columns: &[(&str, DataType)]) -> (String, SchemaRef) {
    let fields: Vec<Field> = columns.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect();
    (name.to_owned(), Arc::new(Schema::new(fields)))
}

fn i(v: i64) -> Datum {
    Datum::Int(v)
}
fn t(s: &str) -> Datum {
    Datum::Text(s.to_owned())
}
const N: Datum = Datum::Null;

fn contents(rows: Vec<Row>) -> Contents {
    let mut c = Contents::new();
    for r in rows {
        *c.entry(r).or_insert(0) += 1;
    }
    c
}

/// Plans `sql` over `tables` and runs the change batches at 1 and 3 workers; returns the
/// view's contents and error rows after each batch (the same at both worker counts).
fn run(tables: &[(String, SchemaRef)], sql: &str, batches: Vec<Vec<Change>>) -> Vec<(Contents, Contents)> {
    let mut planner = ViewPlanner::new(tables).expect("planner");
    let view = planner.create("v", sql).expect("plans").clone();
    let one = run_views(1, tables, std::slice::from_ref(&view), batches.clone());
    let three = run_views(3, tables, std::slice::from_ref(&view), batches);
    assert_eq!(one, three, "1 and 3 workers disagree");
    one.into_iter().map(|s| (s.views[0].clone(), s.errors)).collect()
}

#[test]
fn sum_of_a_group_whose_only_value_was_deleted_is_null_and_min_max_follow_deletes() {
    let tables = [table("g", &[("k", DataType::Utf8), ("v", DataType::Int64)])];
    let sql = "SELECT k, sum(v) AS s, min(v) AS lo, max(v) AS hi, count(v) AS n FROM g GROUP BY k";
    let steps = run(
        &tables,
        sql,
        vec![
            vec![
                (0, vec![t("a"), i(5)], 1),
                (0, vec![t("a"), N], 1),
                (0, vec![t("b"), i(1)], 1),
                (0, vec![t("b"), i(9)], 1),
            ],
            // Delete a's only non-NULL value and b's maximum.
            vec![(0, vec![t("a"), i(5)], -1), (0, vec![t("b"), i(9)], -1)],
            // Delete b's last row: the group disappears.
            vec![(0, vec![t("b"), i(1)], -1)],
        ],
    );
    assert_eq!(steps[0].0, contents(vec![vec![t("a"), i(5), i(5), i(5), i(1)], vec![t("b"), i(10), i(1), i(9), i(2)]]));
    // a: only NULL left -> sum NULL (not 0), min/max NULL, count(v) 0; b: max falls back to 1.
    assert_eq!(steps[1].0, contents(vec![vec![t("a"), N, N, N, i(0)], vec![t("b"), i(1), i(1), i(1), i(1)]]));
    assert_eq!(steps[2].0, contents(vec![vec![t("a"), N, N, N, i(0)]]));
}

#[test]
fn integer_overflow_in_sum_is_an_error_row_not_a_wrapped_value() {
    let tables = [table("g", &[("k", DataType::Utf8), ("v", DataType::Int64)])];
    let steps = run(
        &tables,
        "SELECT k, sum(v) AS s FROM g GROUP BY k",
        vec![
            vec![(0, vec![t("big"), i(i64::MAX)], 1), (0, vec![t("big"), i(1)], 1), (0, vec![t("ok"), i(2)], 1)],
            // Removing the 1 brings the sum back in range.
            vec![(0, vec![t("big"), i(1)], -1)],
        ],
    );
    assert_eq!(steps[0].0, contents(vec![vec![t("ok"), i(2)]]));
    assert_eq!(steps[0].1.len(), 1);
    let error = steps[0].1.keys().next().unwrap();
    assert_eq!(error[0], t("v"));
    assert!(matches!(&error[1], Datum::Text(e) if e.contains("overflow") && e.contains("'big'")), "{error:?}");
    assert_eq!(steps[1].0, contents(vec![vec![t("big"), i(i64::MAX)], vec![t("ok"), i(2)]]));
    assert!(steps[1].1.is_empty(), "the error row is retracted with its cause");
}

#[test]
fn a_failing_expression_sends_its_row_to_the_errors_and_the_rest_stays_correct() {
    let tables = [table("t", &[("a", DataType::Int64), ("b", DataType::Int64)])];
    let steps = run(
        &tables,
        "SELECT a, 100 / b AS q FROM t",
        vec![
            vec![(0, vec![i(1), i(4)], 1), (0, vec![i(2), i(0)], 1), (0, vec![i(3), N], 1)],
            vec![(0, vec![i(2), i(0)], -1)],
        ],
    );
    // 100 / 4 = 25; 100 / NULL = NULL; 100 / 0 is an error.
    assert_eq!(steps[0].0, contents(vec![vec![i(1), i(25)], vec![i(3), N]]));
    let errors: Vec<&Row> = steps[0].1.keys().collect();
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(&errors[0][1], Datum::Text(e) if e.contains("Divide by zero") && e.contains("(2, 0)")),
        "{errors:?}"
    );
    assert_eq!(steps[1].0, contents(vec![vec![i(1), i(25)], vec![i(3), N]]));
    assert!(steps[1].1.is_empty());
}

#[test]
fn an_outer_join_whose_match_is_deleted_and_reinserted() {
    let tables = [
        table("l", &[("id", DataType::Int64), ("name", DataType::Utf8)]),
        table("r", &[("id", DataType::Int64), ("score", DataType::Int64)]),
    ];
    let sql = "SELECT l.name, r.score FROM l LEFT JOIN r ON l.id = r.id";
    let steps = run(
        &tables,
        sql,
        vec![
            vec![(0, vec![i(1), t("one")], 1), (0, vec![i(1), t("one")], 1), (1, vec![i(1), i(10)], 1)],
            vec![(1, vec![i(1), i(10)], -1)],
            vec![(1, vec![i(1), i(10)], 1), (1, vec![i(1), i(20)], 1)],
        ],
    );
    // Duplicate left rows each match: two copies of (one, 10).
    assert_eq!(steps[0].0, contents(vec![vec![t("one"), i(10)], vec![t("one"), i(10)]]));
    // The match is gone: both copies come back NULL-padded.
    assert_eq!(steps[1].0, contents(vec![vec![t("one"), N], vec![t("one"), N]]));
    // Re-inserted, plus a second match: 2 left copies × 2 right rows, no padded rows.
    assert_eq!(
        steps[2].0,
        contents(vec![vec![t("one"), i(10)], vec![t("one"), i(10)], vec![t("one"), i(20)], vec![t("one"), i(20)]])
    );
}

#[test]
fn views_read_other_views() {
    let tables = [table("g", &[("k", DataType::Utf8), ("v", DataType::Int64)])];
    let mut planner = ViewPlanner::new(&tables).unwrap();
    planner.create("totals", "SELECT k, sum(v) AS s FROM g GROUP BY k").unwrap();
    planner.create("big", "SELECT k FROM totals WHERE s > 10").unwrap();
    assert!(planner.drop("totals", false).is_err(), "big reads totals");
    let steps = run_views(
        2,
        &tables,
        planner.views(),
        vec![vec![(0, vec![t("a"), i(6)], 1), (0, vec![t("a"), i(6)], 1), (0, vec![t("b"), i(3)], 1)]],
    );
    assert_eq!(steps[0].views[1], contents(vec![vec![t("a")]]));
    planner.drop("big", false).unwrap();
    planner.drop("totals", false).unwrap();
    assert!(planner.views().is_empty());
}

#[test]
fn two_views_joining_the_same_inputs_by_the_same_key_share_the_arrangements() {
    use amx_sql::render::Renderer;
    use differential_dataflow::input::Input;

    let tables = [
        table("l", &[("id", DataType::Int64), ("name", DataType::Utf8)]),
        table("r", &[("id", DataType::Int64), ("score", DataType::Int64)]),
    ];
    let mut planner = ViewPlanner::new(&tables).unwrap();
    planner.create("a", "SELECT l.id, l.name, r.score FROM l JOIN r ON l.id = r.id").unwrap();
    planner.create("b", "SELECT l.name, sum(r.score) AS total FROM l JOIN r ON l.id = r.id GROUP BY l.name").unwrap();
    let views = planner.views().to_vec();
    timely::execute_directly(move |worker| {
        worker.dataflow::<u64, _, _>(|scope| {
            let (_l_in, l) = scope.new_collection::<Row, isize>();
            let (_r_in, r) = scope.new_collection::<Row, isize>();
            let collections = [("l".to_owned(), l), ("r".to_owned(), r)].into_iter().collect();
            let mut renderer = Renderer::new(collections);
            renderer.render_view(&views[0]).unwrap();
            renderer.render_view(&views[1]).unwrap();
            // One arrangement of l by id and one of r by id, each used by both views.
            assert_eq!(renderer.arrangements_built(), 2);
            assert_eq!(renderer.arrangements_reused(), 2);
        });
    });
}

#[test]
fn a_temporal_filter_retracts_rows_as_the_clock_passes_them() {
    use amx_sql::testing::run_views_at;
    use arrow::datatypes::TimeUnit;

    let tables = [table(
        "ev",
        &[("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))), ("n", DataType::Int64)],
    )];
    let mut planner = ViewPlanner::new(&tables).unwrap();
    let view = planner.create("recent", "SELECT n FROM ev WHERE ts > now() - INTERVAL '10 seconds'").unwrap().clone();
    let ev = |secs: i64, n: i64| vec![Datum::Timestamp(secs * 1_000_000), i(n)];
    // Batch times are the engine clock, in ms.
    let batches = vec![
        (100_000, vec![(0, ev(100, 1), 1), (0, ev(105, 2), 1), (0, ev(50, 3), 1)]),
        (110_000, vec![]),
        (112_000, vec![(0, ev(111, 4), 1)]),
        (113_000, vec![(0, ev(111, 4), -1)]),
        (115_000, vec![]),
        (130_000, vec![]),
    ];
    for workers in [1, 3] {
        let steps = run_views_at(workers, &tables, std::slice::from_ref(&view), batches.clone());
        let got: Vec<Contents> = steps.into_iter().map(|s| s.views[0].clone()).collect();
        // At 100 s: 100 > 90 and 105 > 90 pass, 50 does not. At 110 s row 1 ages out
        // (100 > 100 is false); row 4 arrives at 112 s and is deleted at 113 s; at 115 s row 2
        // ages out; nothing comes back later.
        let want = vec![
            contents(vec![vec![i(1)], vec![i(2)]]),
            contents(vec![vec![i(2)]]),
            contents(vec![vec![i(2)], vec![i(4)]]),
            contents(vec![vec![i(2)]]),
            contents(vec![]),
            contents(vec![]),
        ];
        assert_eq!(got, want, "{workers} workers");
    }
}

#[test]
fn an_outer_self_join_over_rows_replaced_in_place() {
    // Rows are replaced (retract old, insert new with the same key) in one batch, as the
    // built-in views update their rows.
    let tables = [table("t", &[("k", DataType::Utf8), ("v", DataType::Int64)])];
    let steps = run(
        &tables,
        "SELECT x.k, y.v FROM t x LEFT JOIN t y ON x.k = y.k",
        vec![
            vec![(0, vec![t("a"), i(1)], 1), (0, vec![t("b"), i(5)], 1)],
            vec![(0, vec![t("a"), i(1)], -1), (0, vec![t("a"), i(2)], 1)],
            vec![(0, vec![t("a"), i(2)], -1), (0, vec![t("a"), i(3)], 1), (0, vec![t("b"), i(5)], -1)],
        ],
    );
    assert_eq!(steps[0].0, contents(vec![vec![t("a"), i(1)], vec![t("b"), i(5)]]));
    assert_eq!(steps[1].0, contents(vec![vec![t("a"), i(2)], vec![t("b"), i(5)]]));
    assert_eq!(steps[2].0, contents(vec![vec![t("a"), i(3)]]));
}

/// Four views that read one table in three ways (two of them the same columns): each reads
/// its own projection of every row from one fan-out operator (`Renderer::share_projections`),
/// which copies a column into all but the last projection that keeps it and moves it into
/// that one. Every view's contents, after inserts and deletes, are the table's rows filtered
/// and projected here, at 1 and 3 workers.
#[test]
fn views_that_project_one_table_differently_each_get_their_columns() {
    let tables = [table("t", &[("a", DataType::Utf8), ("b", DataType::Int64), ("c", DataType::Utf8)])];
    let mut planner = ViewPlanner::new(&tables).expect("planner");
    let sqls = [
        "SELECT a, b FROM t",
        "SELECT c, a, count(*) AS n FROM t GROUP BY c, a",
        "SELECT b FROM t WHERE c = 'x'",
        "SELECT b, a FROM t WHERE b > 1",
    ];
    let views: Vec<_> =
        sqls.iter().enumerate().map(|(n, sql)| planner.create(&format!("v{n}"), sql).expect("plans").clone()).collect();
    let rows = [
        vec![t("k"), i(1), t("x")],
        vec![t("k"), i(2), t("y")],
        vec![t("m"), N, t("x")],
        vec![N, i(5), N],
        vec![t("k"), i(2), t("y")],
    ];
    let batches = vec![
        rows.iter().map(|r| (0, r.clone(), 1)).collect::<Vec<Change>>(),
        vec![(0, rows[1].clone(), -1), (0, rows[0].clone(), -1), (0, vec![t("n"), i(7), t("x")], 1)],
    ];
    let one = run_views(1, &tables, &views, batches.clone());
    let three = run_views(3, &tables, &views, batches.clone());
    assert_eq!(one, three, "1 and 3 workers disagree");
    // The table after each batch, then each view of it, worked out row by row.
    let mut table: Vec<Row> = Vec::new();
    for (step, batch) in batches.iter().enumerate() {
        for (_, row, diff) in batch {
            if *diff > 0 {
                table.push(row.clone());
            } else {
                let at = table.iter().position(|r| r == row).expect("deleted row is there");
                table.remove(at);
            }
        }
        let v0 = contents(table.iter().map(|r| vec![r[0].clone(), r[1].clone()]).collect());
        let mut groups: Contents = Contents::new();
        for r in &table {
            *groups.entry(vec![r[2].clone(), r[0].clone()]).or_insert(0) += 1;
        }
        let v1 = contents(
            groups
                .into_iter()
                .map(|(mut k, n)| {
                    k.push(i(n as i64));
                    k
                })
                .collect(),
        );
        let v2 = contents(table.iter().filter(|r| r[2] == t("x")).map(|r| vec![r[1].clone()]).collect());
        let v3 = contents(
            table
                .iter()
                .filter(|r| matches!(r[1], Datum::Int(b) if b > 1))
                .map(|r| vec![r[1].clone(), r[0].clone()])
                .collect(),
        );
        assert_eq!(one[step].views, vec![v0, v1, v2, v3], "after batch {step}");
        assert!(one[step].errors.is_empty());
    }
}
