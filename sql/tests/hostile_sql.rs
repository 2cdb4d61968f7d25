//! Hostile SQL at the library layer (issue 6): statements that used to overflow the stack or
//! plan for minutes, view names that were accepted and then unreadable, and error messages
//! that said the same thing two or three times.

use std::sync::Arc;

use amx_dataflows::row::{Column, ColumnType, Datum, RelationDesc};
use amx_sql::referenced_tables;
use amx_sql::testing::{Contents, run_views};
use amx_sql::testing::{SqlEngine, State};
use amx_sql::views::{ViewPlanner, ViewStatement, parse_statement};
use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

/// `t(k BIGINT, x BIGINT)` with rows (1, 1) and (2, 2), as a [`State`] relation named `name`.
fn state(names: &[&'static str]) -> State {
    let descs: Vec<RelationDesc> = names
        .iter()
        .map(|name| RelationDesc {
            name,
            columns: vec![Column { name: "k", ty: ColumnType::Int }, Column { name: "x", ty: ColumnType::Int }],
            key: Vec::new(),
        })
        .collect();
    let mut state = State::new(descs);
    let rows = (0..names.len()).flat_map(|rel| [1, 2].map(|v| ((rel, vec![Datum::Int(v), Datum::Int(v)]), 0, 1)));
    state.apply(rows, 1).unwrap();
    state
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("x", DataType::Int64, true)]))
}

fn ints(batches: &[RecordBatch]) -> Vec<i64> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column(0).as_any().downcast_ref::<Int64Array>().expect("BIGINT");
        out.extend(col.iter().map(|v| v.expect("not NULL")));
    }
    out
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

#[test]
fn an_expression_of_10000_terms_is_refused_and_the_engine_goes_on() {
    // Before: `SELECT 1+1+…` of 10,000 terms overflowed the stack and aborted the process.
    let engine = SqlEngine::new().unwrap();
    let mut state = state(&["t"]);
    let sum = chain("1", "+", 10_000);
    let ors = format!("SELECT k FROM t WHERE {}", chain("x = 1", " OR ", 10_000));
    let refused = "expression nested too deeply: more than 1000 levels";
    for sql in [format!("SELECT {sum} AS s"), ors.clone()] {
        let err = engine.query(&mut state, &sql).unwrap_err().to_string();
        assert!(err.starts_with(refused), "{err}");
        assert!(engine.check(&state, &sql).unwrap_err().to_string().starts_with(refused));
        assert!(referenced_tables(&sql).unwrap_err().to_string().starts_with(refused));
    }
    let create = format!("CREATE MATERIALIZED VIEW v AS SELECT k, {} AS s FROM t", chain("x", "+", 10_000));
    assert!(parse_statement(&create).unwrap_err().to_string().contains(refused));
    let mut planner = ViewPlanner::new(&[("t".to_owned(), schema())]).unwrap();
    let err = planner.create("v", &format!("SELECT k, {} AS s FROM t", chain("x", "+", 10_000))).unwrap_err();
    assert!(err.to_string().contains(refused), "{err}");
    assert!(planner.create("w", &ors).unwrap_err().to_string().contains(refused));
    // The engine still answers: 1 + 1 = 2.
    assert_eq!(ints(&engine.query(&mut state, "SELECT 1 + 1").unwrap()), vec![2]);
}

#[test]
fn a_deep_expression_within_the_limit_is_answered_in_queries_and_views() {
    // 600 terms x + x + … + x: 600·x, so 600 for x = 1 and 1200 for x = 2. Deep enough to
    // overflow a 2 MiB thread stack (a test thread, a dataflow worker) in a debug build.
    let terms = 600;
    let sum = chain("x", "+", terms);
    let engine = SqlEngine::new().unwrap();
    let mut state = state(&["t"]);
    let sql = format!("SELECT {sum} AS s FROM t ORDER BY k");
    assert_eq!(ints(&engine.query(&mut state, &sql).unwrap()), vec![600, 1200]);

    let tables = [("t".to_owned(), schema())];
    let mut planner = ViewPlanner::new(&tables).unwrap();
    let view = planner.create("v", &format!("SELECT k, {sum} AS s FROM t")).unwrap().clone();
    let changes = vec![(0, vec![Datum::Int(1), Datum::Int(1)], 1), (0, vec![Datum::Int(2), Datum::Int(2)], 1)];
    let want: Contents =
        [(vec![Datum::Int(1), Datum::Int(600)], 1), (vec![Datum::Int(2), Datum::Int(1200)], 1)].into_iter().collect();
    for workers in [1, 2] {
        let steps = run_views(workers, &tables, std::slice::from_ref(&view), vec![changes.clone()]);
        assert_eq!(steps[0].views[0], want, "{workers} workers");
        assert!(steps[0].errors.is_empty());
    }
}

#[test]
fn quoted_and_qualified_view_names_resolve_as_datafusion_resolves_them() {
    let create = |name: &str| format!("CREATE MATERIALIZED VIEW {name} AS SELECT k FROM t");
    let created = |name: &str| ViewStatement::Create {
        name: name.to_owned(),
        query: "SELECT k FROM t".to_owned(),
        if_not_exists: false,
    };
    // Quoted: case and spaces kept; unquoted: folded to lower case.
    assert_eq!(parse_statement(&create("\"MyV\"")).unwrap(), created("MyV"));
    assert_eq!(parse_statement(&create("\"my view\"")).unwrap(), created("my view"));
    assert_eq!(parse_statement(&create("MyV")).unwrap(), created("myv"));
    // The default schema and catalog name the same table as the bare name.
    assert_eq!(parse_statement(&create("public.x")).unwrap(), created("x"));
    assert_eq!(parse_statement(&create("datafusion.public.x")).unwrap(), created("x"));
    assert_eq!(parse_statement(&create("Datafusion.Public.X")).unwrap(), created("x"));
    for other in ["other.x", "datafusion.other.x", "cat.public.x", "\"Public\".x"] {
        let err = parse_statement(&create(other)).unwrap_err().to_string();
        assert!(err.contains("views live in the schema datafusion.public"), "{other}: {err}");
    }
    assert_eq!(
        parse_statement("DROP MATERIALIZED VIEW \"MyV\"").unwrap(),
        ViewStatement::Drop { name: "MyV".to_owned(), if_exists: false }
    );
    assert_eq!(
        parse_statement("DROP MATERIALIZED VIEW datafusion.public.x").unwrap(),
        ViewStatement::Drop { name: "x".to_owned(), if_exists: false }
    );
    assert_eq!(
        parse_statement("CREATE MATERIALIZED VIEW IF NOT EXISTS X AS SELECT k FROM t").unwrap(),
        ViewStatement::Create { name: "x".to_owned(), query: "SELECT k FROM t".to_owned(), if_not_exists: true }
    );
    let replace = parse_statement("CREATE OR REPLACE MATERIALIZED VIEW x AS SELECT k FROM t").unwrap_err();
    assert!(replace.to_string().contains("CREATE OR REPLACE MATERIALIZED VIEW is not supported"), "{replace}");

    // A view named `MyV` (as the runtime's catalog names it) is read with `"MyV"`, not `MyV`.
    let mut planner = ViewPlanner::new(&[("t".to_owned(), schema())]).unwrap();
    planner.create_in("MyV", "SELECT k FROM t", &create("\"MyV\"")).unwrap();
    planner.create_in("x", "SELECT k FROM \"MyV\"", "").unwrap();
    assert_eq!(planner.views()[1].reads, vec!["MyV".to_owned()]);
    assert!(planner.create("y", "SELECT k FROM MyV").unwrap_err().to_string().contains("myv' not found"));
    assert!(planner.drop("myv", false).unwrap_err().to_string().contains("no materialized view named `myv`"));
    assert!(planner.drop("MyV", false).unwrap_err().to_string().contains("view `x` reads `MyV`"));
    planner.drop("x", false).unwrap();
    planner.drop("MyV", false).unwrap();

    let engine = SqlEngine::new().unwrap();
    let mut state = state(&["MyV", "x"]);
    let mut read = referenced_tables("SELECT * FROM \"MyV\", MyV").unwrap();
    read.sort();
    assert_eq!(read, vec!["MyV".to_owned(), "myv".to_owned()]);
    assert_eq!(ints(&engine.query(&mut state, "SELECT k FROM \"MyV\" ORDER BY k").unwrap()), vec![1, 2]);
    let err = engine.query(&mut state, "SELECT k FROM MyV").unwrap_err().to_string();
    assert!(err.starts_with("table 'datafusion.public.myv' not found"), "{err}");
    for x in ["x", "public.x", "datafusion.public.x"] {
        assert_eq!(ints(&engine.query(&mut state, &format!("SELECT count(*) FROM {x}")).unwrap()), vec![2], "{x}");
    }
}

#[test]
fn errors_say_what_once_with_where_and_the_hint() {
    let engine = SqlEngine::new().unwrap();
    let mut state = state(&["t"]);
    let cases = [
        // `nope` starts at column 8.
        ("SELECT nope FROM t", "No field named nope at line 1, column 8. Valid fields are t.k, t.x."),
        ("SELEC 1", "syntax error: Expected: an SQL statement, found: SELEC at line 1, column 1"),
        // `nothere` starts at column 8 of the second line.
        ("SELECT *\nFROM   nothere", "table 'datafusion.public.nothere' not found at line 2, column 8"),
        ("SELECT count(*) FROM t; SELECT 1", "one SQL statement at a time, not 2"),
        ("SELECT nope(1)", "Invalid function 'nope' at line 1, column 8. Did you mean 'now'?"),
    ];
    for (sql, want) in cases {
        assert_eq!(engine.query(&mut state, sql).unwrap_err().to_string(), want, "{sql}");
        // Planned without data, the same error.
        assert_eq!(engine.check(&state, sql).unwrap_err().to_string(), want, "{sql}");
    }
    // Execution errors: once, without the "Arrow error:" wrapping and its source repeated.
    assert_eq!(engine.query(&mut state, "SELECT x / (k - k) FROM t").unwrap_err().to_string(), "Divide by zero error");
    assert_eq!(
        engine.query(&mut state, "SELECT CAST('x' AS INT)").unwrap_err().to_string(),
        "Cast error: Cannot cast string 'x' to value of Int32 type"
    );
    // Volatile functions in a view are refused with their name and position (column 20).
    let mut planner = ViewPlanner::new(&[("t".to_owned(), schema())]).unwrap();
    let err = planner.create("v", "SELECT k, x + 1,\n  uuid() AS u FROM t").unwrap_err().to_string();
    assert!(
        err.ends_with("the volatile function uuid() is not supported in a materialized view at line 2, column 3"),
        "{err}"
    );
    let err = planner.create("v", "SELECT k, random() AS r FROM t").unwrap_err().to_string();
    assert!(
        err.ends_with("the volatile function random() is not supported in a materialized view at line 1, column 11"),
        "{err}"
    );
}

#[test]
fn nesting_that_backtracked_for_hours_is_refused_and_the_engine_goes_on() {
    // 256 nested CASTs kept a core busy for hours (sqlparser retried every enclosing CAST as a
    // function call after failing at its recursion limit); 100,000 nested ARRAY< overflowed
    // the stack and aborted the process.
    let engine = SqlEngine::new().unwrap();
    let mut state = state(&["t"]);
    let casts = format!("SELECT {}k{} FROM t", "CAST(".repeat(300), " AS BIGINT)".repeat(300));
    let err = engine.query(&mut state, &casts).unwrap_err().to_string();
    assert!(err.contains("more than 8 keyword calls such as CAST(…)"), "{err}");
    let types = format!("SELECT CAST(NULL AS {}INT{})", "ARRAY<".repeat(100_000), ">".repeat(100_000));
    let err = engine.query(&mut state, &types).unwrap_err().to_string();
    assert!(err.contains("more than 1024 brackets"), "{err}");
    let nots = format!("SELECT k FROM t WHERE {}x = 1", "NOT ".repeat(301));
    let err = engine.query(&mut state, &nots).unwrap_err().to_string();
    assert!(err.contains("nested more than 256 deep"), "{err}");
    // Within the limits the same shapes are answered: 200 CASTs of k, 200 NOTs (an even
    // number: x = 1) over (1, 1) and (2, 2).
    let casts = format!("SELECT {}k{} AS k FROM t ORDER BY k", "CAST(".repeat(200), " AS BIGINT)".repeat(200));
    assert_eq!(ints(&engine.query(&mut state, &casts).unwrap()), vec![1, 2]);
    let nots = format!("SELECT k FROM t WHERE {}x = 1", "NOT ".repeat(200));
    assert_eq!(ints(&engine.query(&mut state, &nots).unwrap()), vec![1]);
}
