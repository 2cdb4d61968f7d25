//! For tests and benchmarks: SQL views run over tables of rows on a local timely cluster
//! ([`run_views`]), and the batch recomputation they are compared with — a [`State`] of rows
//! at one timestamp, queried by DataFusion over in-memory tables ([`SqlEngine`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use amx_dataflows::row::{RelationDesc, Row};
use amx_dataflows::{Diff, Time};
use amx_operators::CollectionExt;
use anyhow::{Context, Result, bail};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use differential_dataflow::input::Input;

use crate::render::{Renderer, Rows};
use crate::views::ViewDef;

/// Contents of a collection: row → multiplicity.
pub type Contents = HashMap<Row, Diff>;

/// One change to a table: `(table index, row, diff)`.
pub type Change = (usize, Row, Diff);

/// Views' contents and the error rows (`[view, error]`) after one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// One entry per view, in order.
    pub views: Vec<Contents>,
    /// `aimatrix_view_errors` rows.
    pub errors: Contents,
}

/// Feeds `batches` (one epoch each) of changes to `tables` into the `views` on `workers`
/// threads; returns the contents after every batch. Change `i` of a batch is fed by worker
/// `i mod workers`.
///
/// Panics if a view fails to render or a worker panics (tests only).
pub fn run_views(
    workers: usize,
    tables: &[(String, SchemaRef)],
    views: &[ViewDef],
    batches: Vec<Vec<Change>>,
) -> Vec<Step> {
    let timed = batches.into_iter().enumerate().map(|(i, b)| (i as Time, b)).collect();
    run_views_at(workers, tables, views, timed)
}

/// As [`run_views`], with each batch at an explicit, increasing timestamp (for views whose
/// results depend on the clock, such as temporal filters: the timestamp is the engine's
/// `now()` in milliseconds). Step `i` holds the contents at the time of batch `i`.
pub fn run_views_at(
    workers: usize,
    tables: &[(String, SchemaRef)],
    views: &[ViewDef],
    batches: Vec<(Time, Vec<Change>)>,
) -> Vec<Step> {
    let times: Vec<Time> = batches.iter().map(|(t, _)| *t).collect();
    let names: Vec<String> = tables.iter().map(|(n, _)| n.clone()).collect();
    let views = views.to_vec();
    let batches = Arc::new(batches);
    type Captured = Vec<((usize, Row), Time, Diff)>;
    let captured: Arc<Mutex<Captured>> = Arc::default();
    let sink = captured.clone();
    let nviews = views.len();
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let buffer: std::rc::Rc<std::cell::RefCell<Captured>> = Default::default();
        let (mut inputs, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let mut handles = Vec::new();
            let mut collections: HashMap<String, Rows<'_>> = HashMap::new();
            for name in &names {
                let (handle, rows) = scope.new_collection::<Row, Diff>();
                handles.push(handle);
                collections.insert(name.clone(), rows);
            }
            let probe = timely::dataflow::ProbeHandle::new();
            let mut renderer = Renderer::new(collections);
            renderer.share_projections(&views);
            for (i, view) in views.iter().enumerate() {
                let rows = renderer.render_view(view).expect("view renders");
                let b = buffer.clone();
                rows.map(move |r| (i, r))
                    .gather_to(0)
                    .inspect_batch(move |_, d| b.borrow_mut().extend_from_slice(d))
                    .probe_with(&probe);
            }
            let b = buffer.clone();
            if let Some(errors) = renderer.errors() {
                errors
                    .map(move |r| (nviews, r))
                    .gather_to(0)
                    .inspect_batch(move |_, d| b.borrow_mut().extend_from_slice(d))
                    .probe_with(&probe);
            }
            (handles, probe)
        });
        for (time, batch) in batches.iter() {
            for input in &mut inputs {
                if input.time() < time {
                    input.advance_to(*time);
                }
            }
            for (i, (table, row, diff)) in batch.iter().enumerate() {
                if i % peers == index {
                    inputs[*table].update(row.clone(), *diff);
                }
            }
            let next = *time + 1;
            for input in &mut inputs {
                input.advance_to(next);
                input.flush();
            }
            while probe.less_than(&next) {
                worker.step();
            }
        }
        drop(inputs);
        while worker.step() {}
        sink.lock().expect("unpoisoned").extend(buffer.borrow_mut().drain(..));
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker succeeded"));

    let updates = std::mem::take(&mut *captured.lock().expect("unpoisoned"));
    times
        .iter()
        .map(|&step| {
            let mut out = Step { views: vec![Contents::new(); nviews], errors: Contents::new() };
            for ((i, row), time, diff) in &updates {
                if *time <= step {
                    let target = if *i == nviews { &mut out.errors } else { &mut out.views[*i] };
                    *target.entry(row.clone()).or_insert(0) += diff;
                }
            }
            out.views.iter_mut().chain(std::iter::once(&mut out.errors)).for_each(|c| c.retain(|_, n| *n != 0));
            out
        })
        .collect()
}

/// The contents of every relation and view at one timestamp.
///
/// Each relation is a multiset: a map from row to its (positive) multiplicity.
pub struct State {
    descs: Vec<RelationDesc>,
    schemas: Vec<SchemaRef>,
    tables: Vec<HashMap<Row, Diff>>,
    /// Arrow form of each relation, built on first use after a change.
    arrow: Vec<Option<RecordBatch>>,
    upper: Time,
}

impl State {
    /// An empty state over `descs` (index = relation index of the changes).
    pub fn new(descs: Vec<RelationDesc>) -> State {
        let schemas = descs.iter().map(crate::arrow_schema).collect();
        State::with_schemas(descs, schemas)
    }

    /// An empty state whose relations have the given Arrow schemas (SQL views declare theirs).
    pub fn with_schemas(descs: Vec<RelationDesc>, schemas: Vec<SchemaRef>) -> State {
        let n = descs.len();
        State { descs, schemas, tables: vec![HashMap::new(); n], arrow: vec![None; n], upper: 0 }
    }

    /// The relations, in index order.
    pub fn descs(&self) -> &[RelationDesc] {
        &self.descs
    }

    /// The frontier the state is complete up to: it reflects every change at times `< upper`.
    pub fn upper(&self) -> Time {
        self.upper
    }

    /// Applies changes `((relation, row), time, diff)`, all at times `< upper`, and moves the
    /// frontier to `upper`. Errors (leaving the state as it was for that row) when a row's
    /// multiplicity would become negative: a retraction of something never inserted.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = ((usize, Row), Time, Diff)>, upper: Time) -> Result<()> {
        use std::collections::hash_map::Entry;
        // Only the net change of a row up to `upper` is meaningful: within it, a row may be
        // retracted before it is inserted (a dataflow's transient updates).
        let mut net: HashMap<(usize, Row), Diff> = HashMap::new();
        for (key, _time, diff) in changes {
            *net.entry(key).or_insert(0) += diff;
        }
        let mut negative = None;
        for ((rel, row), diff) in net {
            if diff == 0 {
                continue;
            }
            self.arrow[rel] = None;
            let count = match self.tables[rel].entry(row) {
                Entry::Occupied(mut o) => {
                    *o.get_mut() += diff;
                    let c = *o.get();
                    if c == 0 {
                        o.remove();
                    }
                    c
                }
                Entry::Vacant(v) => *v.insert(diff),
            };
            if count < 0 && negative.is_none() {
                negative = Some(rel);
            }
        }
        self.upper = self.upper.max(upper);
        if let Some(rel) = negative {
            bail!("relation {} has a row with negative multiplicity", self.descs[rel].name);
        }
        Ok(())
    }

    /// Number of rows (with multiplicity) of relation `name`, or None if there is no such relation.
    pub fn count(&self, name: &str) -> Option<i64> {
        let i = self.descs.iter().position(|d| d.name == name)?;
        Some(self.tables[i].values().map(|c| *c as i64).sum())
    }

    /// Rows of relation `name` with their multiplicities.
    pub fn rows(&self, name: &str) -> Option<&HashMap<Row, Diff>> {
        let i = self.descs.iter().position(|d| d.name == name)?;
        Some(&self.tables[i])
    }

    fn batch(&mut self, rel: usize) -> Result<RecordBatch> {
        if self.arrow[rel].is_none() {
            // Sorted, so that answers (float sums included) do not depend on hash order.
            let mut distinct: Vec<(&Row, &Diff)> = self.tables[rel].iter().collect();
            distinct.sort_unstable();
            let rows: Vec<&Row> =
                distinct.into_iter().flat_map(|(r, c)| std::iter::repeat_n(r, (*c).max(0) as usize)).collect();
            self.arrow[rel] = Some(crate::convert::rows_to_batch(&rows, &self.schemas[rel])?);
        }
        Ok(self.arrow[rel].clone().expect("built above"))
    }
}

/// Runs DataFusion queries against a [`State`].
pub struct SqlEngine {
    runtime: tokio::runtime::Runtime,
}

impl SqlEngine {
    /// A query engine with its own tokio runtime (two threads).
    pub fn new() -> Result<SqlEngine> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("amx-sql")
            .thread_stack_size(crate::parse::SQL_THREAD_STACK_BYTES)
            .enable_all()
            .build()
            .context("starting the SQL runtime")?;
        Ok(SqlEngine { runtime })
    }

    /// Answers one SQL statement over the current state.
    ///
    /// Errors: SQL syntax errors, statements past the parser's limits ([`parse::parse`]),
    /// unknown tables or columns, type errors and execution errors, each as one message
    /// ([`error::message`]).
    pub fn query(&self, state: &mut State, sql: &str) -> Result<Vec<RecordBatch>> {
        crate::parse::plan_on_sql_stack(|| {
            let descs = state.descs.clone();
            let (ctx, plan) = self.plan(sql, &descs, |rel| {
                let batch = state.batch(rel).map_err(|e| DataFusionError::External(e.into()))?;
                MemTable::try_new(batch.schema(), vec![vec![batch]])
            })?;
            self.runtime.block_on(async {
                let df = ctx.execute_logical_plan(plan).await?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let mut batches = df.collect().await?;
                // An empty answer still has its columns (for table and CSV headers).
                if batches.is_empty() {
                    batches.push(RecordBatch::new_empty(schema));
                }
                Ok(batches)
            })
        })
        .map_err(crate::error::to_anyhow)
    }

    /// Plans one SQL statement (parses it, resolves its tables and columns against the
    /// relations of `state`, type-checks and optimizes it) without running it: the contents
    /// of the relations play no part. A statement that passes fails later, in
    /// [`SqlEngine::query`], only as it runs (a division by zero, a bad cast of a value).
    ///
    /// Errors: as [`SqlEngine::query`].
    pub fn check(&self, state: &State, sql: &str) -> Result<()> {
        crate::parse::plan_on_sql_stack(|| {
            let (ctx, plan) =
                self.plan(sql, &state.descs, |rel| MemTable::try_new(state.schemas[rel].clone(), vec![vec![]]))?;
            ctx.state().optimize(&plan)?;
            Ok(())
        })
        .map_err(crate::error::to_anyhow)
    }

    /// Parses and plans `sql` in a new session where each relation of `descs` it names is
    /// the table `table(index)`.
    fn plan(
        &self,
        sql: &str,
        descs: &[RelationDesc],
        mut table: impl FnMut(usize) -> datafusion::error::Result<MemTable>,
    ) -> datafusion::error::Result<(SessionContext, datafusion::logical_expr::LogicalPlan)> {
        // One partition: float aggregates then add in one order, so answers are reproducible.
        let ctx = crate::session(datafusion::prelude::SessionConfig::new().with_target_partitions(1))
            .map_err(|e| DataFusionError::External(e.into()))?;
        let statement = crate::parse::parse(sql)?;
        if !crate::is_query(&statement) {
            return Err(DataFusionError::Plan(
                "only queries (SELECT, WITH, VALUES, EXPLAIN) can be answered; the relations are maintained by the \
                 engine"
                    .into(),
            ));
        }
        let (references, _ctes) = datafusion::sql::resolve::resolve_table_references(&statement, true)?;
        for reference in references {
            // Resolved as DataFusion resolves names: `"MyView"` is `MyView`, `MyView` is `myview`.
            let name = reference.table();
            if let Some(rel) = descs.iter().position(|d| d.name == name) {
                let bare = datafusion::common::TableReference::bare(name);
                if ctx.table_exist(bare.clone())? {
                    continue;
                }
                ctx.register_table(bare, Arc::new(table(rel)?))?;
            }
        }
        let plan = self.runtime.block_on(ctx.state().statement_to_plan(statement))?;
        Ok((ctx, plan))
    }
}
