//! sqllogictest suite for materialized views (`sql/tests/slt/*.slt`).
//!
//! Every `query` is checked two ways:
//! 1. as a DataFusion batch query over the tables' current contents — its answer is what the
//!    `.slt` file expects (the expected rows were written by hand);
//! 2. as an incrementally maintained view: the view is created over the current contents,
//!    then several random batches of inserts and deletes (deletes only of present rows) are
//!    applied, and after every batch the view's contents must equal the DataFusion batch
//!    answer over the tables at that point — at 1 and at 4 workers.
//!
//! `statement ok CREATE TABLE …` / `INSERT INTO …` define and fill tables (run by DataFusion).
//! A query DataFusion rejects is expected to fail; a query the view planner refuses fails with
//! the planner's message (so `statement error <regex>` can test refusals).
//!
//! The random values include the edge cases of each type: NaN, ±inf, -0.0, 1e308, 5e-324,
//! ±1e31 for `DOUBLE`, `i64::MIN`/`i64::MAX` for `BIGINT`. The comparison is exact, row for
//! row, with [`Datum`]'s equality — PostgreSQL's rule, `NaN = NaN` and `-0.0 = 0.0` (both
//! sides are canonical anyway: see `amx_operators::float`). Float sums need no tolerance:
//! both the views and DataFusion (through `amx_sql::aggregates`, registered by
//! `amx_sql::session`) compute the exact sum rounded once, which has exactly one right answer
//! whatever order the rows are added in; the summation kernel itself is checked against an
//! independent exact summation (Shewchuk's, as Python's `math.fsum`) in `amx-operators`. A
//! state whose DataFusion answer is an error (integer overflow in `sum`, a failing cast) must
//! show errors in the view's `aimatrix_view_errors` rows instead of rows.

use std::path::Path;
use std::sync::Arc;

use amx_dataflows::row::{Datum, Row};
use amx_sql::convert::arrays_to_rows;
use amx_sql::input::TableContents;
use amx_sql::testing::{Change, Contents, run_views};
use amx_sql::views::{ViewPlanner, ViewStatement, parse_statement};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqllogictest::{DBOutput, DefaultColumnType};

const RANDOM_BATCHES: usize = 4;

struct Harness {
    tables: Vec<(String, SchemaRef)>,
    contents: Vec<TableContents>,
    runtime: tokio::runtime::Runtime,
    queries: u64,
    file: String,
}

#[derive(Debug)]
struct Error(String);
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Error {}

fn err(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

impl Harness {
    fn new(file: &str) -> Harness {
        Harness {
            tables: Vec::new(),
            contents: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread().build().expect("runtime"),
            queries: 0,
            file: file.to_owned(),
        }
    }

    /// A DataFusion context holding the tables with the given contents.
    fn context(&self, contents: &[TableContents]) -> Result<SessionContext, Error> {
        let ctx = amx_sql::session(datafusion::prelude::SessionConfig::new().with_target_partitions(1)).map_err(err)?;
        for ((name, schema), rows) in self.tables.iter().zip(contents) {
            let rows = rows.rows();
            let refs: Vec<&Row> = rows.iter().collect();
            let batch = amx_sql::convert::rows_to_batch(&refs, schema).map_err(err)?;
            ctx.register_table(
                name.as_str(),
                Arc::new(MemTable::try_new(schema.clone(), vec![vec![batch]]).map_err(err)?),
            )
            .map_err(err)?;
        }
        Ok(ctx)
    }

    fn batch_query(&self, contents: &[TableContents], sql: &str) -> Result<Vec<RecordBatch>, Error> {
        let ctx = self.context(contents)?;
        self.runtime.block_on(async { ctx.sql(sql).await?.collect().await }).map_err(err)
    }

    fn random_datum(rng: &mut SmallRng, ty: &DataType) -> Datum {
        if rng.random_ratio(1, 6) {
            return Datum::Null;
        }
        match ty {
            DataType::Boolean => Datum::Bool(rng.random()),
            DataType::Float32 | DataType::Float64 => {
                // Mostly ordinary values, sometimes an edge case. Through `Datum::float`, as every
                // float enters the engine: -0.0 is stored as 0.0.
                const ORDINARY: [f64; 5] = [-1.5, 0.0, 2.25, 10.0, 0.5];
                const EDGES: [f64; 8] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e308, 5e-324, -1e31, 1e31];
                let v = if rng.random_ratio(1, 3) {
                    EDGES[rng.random_range(0..EDGES.len())]
                } else {
                    ORDINARY[rng.random_range(0..ORDINARY.len())]
                };
                Datum::float(Some(v))
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Datum::Text(["a", "b", "c", "xyz", ""][rng.random_range(0..5)].to_owned())
            }
            DataType::Timestamp(_, _) => {
                Datum::Timestamp([0, 1_000_000, 60_000_000, 3_600_000_001][rng.random_range(0..4)])
            }
            _ => Datum::Int([-2, 0, 1, 3, 7, 100, i64::MIN, i64::MAX][rng.random_range(0..8)]),
        }
    }

    /// Checks `sql` as a maintained view against DataFusion over random changes.
    fn check_incremental(&mut self, sql: &str) -> Result<(), Error> {
        self.queries += 1;
        let mut planner = ViewPlanner::new(&self.tables).map_err(err)?;
        let view = planner.create("v", sql).map_err(err)?.clone();
        let mut rng = SmallRng::seed_from_u64(self.queries * 7919 + self.file.len() as u64);
        // Batch 0 loads the current contents; the next batches change them at random.
        let mut contents = self.contents.clone();
        let mut batches: Vec<Vec<Change>> =
            vec![contents.iter().enumerate().flat_map(|(t, c)| c.rows().into_iter().map(move |r| (t, r, 1))).collect()];
        let mut states = vec![contents.clone()];
        for _ in 0..RANDOM_BATCHES {
            let mut batch = Vec::new();
            for _ in 0..rng.random_range(0..8) {
                let t = rng.random_range(0..self.tables.len());
                let present = contents[t].rows();
                let (row, diff) = if !present.is_empty() && rng.random_ratio(2, 5) {
                    (present[rng.random_range(0..present.len())].clone(), -1)
                } else {
                    let row: Row =
                        self.tables[t].1.fields().iter().map(|f| Self::random_datum(&mut rng, f.data_type())).collect();
                    (row, 1)
                };
                contents[t].update(row.clone(), diff).map_err(err)?;
                batch.push((t, row, diff));
            }
            batches.push(batch);
            states.push(contents.clone());
        }
        for workers in [1, 4] {
            let steps = run_views(workers, &self.tables, std::slice::from_ref(&view), batches.clone());
            for (step, (got, state)) in steps.iter().zip(&states).enumerate() {
                let want = match self.batch_query(state, sql) {
                    Ok(want) => want,
                    // DataFusion fails over this state: the view must report errors (and its
                    // rows are then not comparable: the failing rows or groups are left out).
                    Err(_) if !got.errors.is_empty() => continue,
                    Err(e) => {
                        return Err(Error(format!(
                            "{}: DataFusion fails after batch {step} at {workers} workers but the view reports no error\nquery: {sql}\nDataFusion: {e}\nbatches: {:?}\n view: {:?}",
                            self.file,
                            &batches[..=step],
                            got.views[0]
                        )));
                    }
                };
                let mut expected = Contents::new();
                for b in &want {
                    for row in arrays_to_rows(b.columns(), b.num_rows()).map_err(err)? {
                        *expected.entry(row).or_insert(0) += 1;
                    }
                }
                if got.views[0] != expected || !got.errors.is_empty() {
                    let mut g: Vec<_> = got.views[0].iter().collect();
                    g.sort();
                    let mut w: Vec<_> = expected.iter().collect();
                    w.sort();
                    return Err(Error(format!(
                        "{}: incremental view differs from DataFusion after batch {step} at {workers} workers\nquery: {sql}\nbatches: {:?}\n view: {g:?}\nbatch: {w:?}\nerrors: {:?}",
                        self.file,
                        &batches[..=step],
                        got.errors
                    )));
                }
            }
        }
        Ok(())
    }
}

fn render_value(d: &Datum) -> String {
    match d {
        Datum::Null => "NULL".into(),
        Datum::Bool(b) => b.to_string(),
        Datum::Int(i) => i.to_string(),
        Datum::Float(f) => {
            let v = f.0;
            if v == v.trunc() && v.abs() < 1e15 { format!("{v:.1}") } else { format!("{v}") }
        }
        Datum::Text(s) if s.is_empty() => "(empty)".into(),
        Datum::Text(s) => s.clone(),
        Datum::Timestamp(us) => chrono_like(*us),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` for microseconds since the epoch (UTC).
fn chrono_like(us: i64) -> String {
    let a = arrow::array::TimestampMicrosecondArray::from(vec![us]);
    arrow::util::display::array_value_to_string(&a, 0).unwrap_or_default()
}

impl sqllogictest::DB for Harness {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let trimmed = sql.trim_start().to_ascii_lowercase();
        if let Some(rest) = trimmed.strip_prefix("create table") {
            let ctx = SessionContext::new();
            self.runtime.block_on(async { ctx.sql(sql).await?.collect().await }).map_err(err)?;
            let table: String = rest
                .trim_start()
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or_default()
                .to_owned();
            let provider = self.runtime.block_on(ctx.table_provider(table.as_str())).map_err(err)?;
            let schema = provider.schema();
            for f in schema.fields() {
                if !amx_sql::convert::supported(f.data_type()) {
                    return Err(Error(format!("unsupported column type {}", f.data_type())));
                }
            }
            self.tables.push((table, schema));
            self.contents.push(TableContents::default());
            return Ok(DBOutput::StatementComplete(0));
        }
        if trimmed.starts_with("insert into") {
            // DataFusion evaluates the VALUES (casts included) into a copy of the table.
            let ctx = self.context(&self.contents)?;
            self.runtime.block_on(async { ctx.sql(sql).await?.collect().await }).map_err(err)?;
            for (i, (name, _)) in self.tables.iter().enumerate() {
                let batches = self
                    .runtime
                    .block_on(async { ctx.sql(&format!("SELECT * FROM {name}")).await?.collect().await })
                    .map_err(err)?;
                let mut fresh = TableContents::default();
                for b in &batches {
                    for row in arrays_to_rows(b.columns(), b.num_rows()).map_err(err)? {
                        fresh.update(row, 1).map_err(err)?;
                    }
                }
                self.contents[i] = fresh;
            }
            return Ok(DBOutput::StatementComplete(0));
        }
        match parse_statement(sql).map_err(err)? {
            ViewStatement::Create { query, .. } => {
                // Only planning is checked here (refusals); queries are checked below.
                let mut planner = ViewPlanner::new(&self.tables).map_err(err)?;
                planner.create_in("v", &query, sql).map_err(err)?;
                return Ok(DBOutput::StatementComplete(0));
            }
            ViewStatement::Drop { .. } => return Ok(DBOutput::StatementComplete(0)),
            ViewStatement::Other => {}
        }
        let batches = self.batch_query(&self.contents, sql)?;
        self.check_incremental(sql)?;
        let mut rows = Vec::new();
        let mut types = Vec::new();
        for b in &batches {
            types = b
                .schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Float32 | DataType::Float64 => DefaultColumnType::FloatingPoint,
                    t if t.is_integer() => DefaultColumnType::Integer,
                    _ => DefaultColumnType::Text,
                })
                .collect();
            for row in arrays_to_rows(b.columns(), b.num_rows()).map_err(err)? {
                rows.push(row.iter().map(render_value).collect());
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }
}

#[test]
fn sqllogictest_suite() {
    // The package directory of this run (cargo sets it for the test process), so a build shared
    // between checkouts reads this checkout's files.
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let dir = Path::new(&root).join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("slt dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut runner = sqllogictest::Runner::new(|| {
            let name = name.clone();
            async move { Ok::<_, Error>(Harness::new(&name)) }
        });
        if let Err(e) = runner.run_file(file) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} .slt files failed:\n{}", failures.len(), failures.join("\n\n"));
}
