//! SQL over the running cluster: DataFusion plans over tables that peek the workers'
//! arrangements.
//!
//! A query's tables are resolved first; the controller then takes a [`ReadHold`] at one time
//! every one of them has passed, and each table is a [`PeekTable`] whose scan peeks the
//! workers' shares at that time (only the columns DataFusion asks for: projection pushdown).
//! So every table a query reads is read at the same timestamp: a consistent snapshot.
//! `CREATE MATERIALIZED VIEW` and `DROP MATERIALIZED VIEW` install and drop views on the
//! workers ([`Controller::create_view`]).

use std::sync::Arc;

use amx_dataflows::Time;
use amx_dataflows::row::{Datum, Row};
use amx_sql::arrow::datatypes::{DataType, SchemaRef};
use amx_sql::arrow::record_batch::RecordBatch;
use amx_sql::views::ViewStatement;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNode;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement as DfStatement;

use crate::controller::{ClusterError, Controller, ReadHold, SQL_SLOTS};

mod point;

/// A collection of the running cluster as a DataFusion table, read as of one held time.
#[derive(Debug)]
pub struct PeekTable {
    name: String,
    schema: SchemaRef,
    as_of: Time,
    /// The job that made the collection when the read hold was taken ([`ReadHold::owner`]).
    owner: Option<Option<crate::protocol::JobId>>,
    controller: ControllerRef,
}

/// The controller, printable (DataFusion's tables are `Debug`).
#[derive(Clone)]
struct ControllerRef(Controller);

impl std::fmt::Debug for ControllerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Controller")
    }
}

#[async_trait]
impl TableProvider for PeekTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    /// `column = literal` (either way round, on a BIGINT, TEXT or BOOLEAN column, the literal
    /// of the column's type) is evaluated in the peek, on the workers; DataFusion applies it
    /// again (`Inexact`), so the answer never depends on it.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if equality(f, &self.schema).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let filter: Vec<(usize, Datum)> = filters.iter().filter_map(|f| equality(f, &self.schema)).collect();
        // DataFusion passes a limit only when nothing else restricts the rows; with inexact
        // filters it still re-applies them above, so the limit goes to the peek only without.
        let limit = if filters.is_empty() { limit } else { None };
        let rows = self
            .controller
            .0
            .peek(&self.name, self.as_of, projection.cloned(), filter, limit)
            .await
            .and_then(|rows| self.controller.0.still_held(&self.name, self.owner).map(|()| rows))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let expanded: Vec<&Row> =
            rows.iter().flat_map(|(row, count)| std::iter::repeat_n(row, (*count).max(0) as usize)).collect();
        let batch =
            amx_sql::convert::rows_to_batch(&expanded, &schema).map_err(|e| DataFusionError::External(e.into()))?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?)
    }
}

/// `column = literal` as `(column position, value)`, when the literal has the column's type
/// and the type compares in the peek exactly as in SQL (BIGINT, TEXT, BOOLEAN; not DOUBLE,
/// whose NaN and -0.0 SQL compares its own way).
fn equality(expr: &Expr, schema: &SchemaRef) -> Option<(usize, Datum)> {
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = expr else {
        return None;
    };
    let (column, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, v),
        _ => return None,
    };
    let index = schema.index_of(&column.name).ok()?;
    let ty = schema.field(index).data_type();
    let datum = match value {
        ScalarValue::Int64(Some(v)) if *ty == DataType::Int64 => Datum::Int(*v),
        ScalarValue::Utf8(Some(v)) if *ty == DataType::Utf8 => Datum::Text(v.clone()),
        ScalarValue::Boolean(Some(v)) if *ty == DataType::Boolean => Datum::Bool(*v),
        _ => return None,
    };
    Some((index, datum))
}

/// Plans query `sql` against empty tables of these schemas, reading nothing: the errors
/// [`Controller::execute_sql`] would answer it with (syntax with line and column, unknown
/// tables or columns, types, statements other than queries), before any data is there.
///
/// # Errors
/// [`ClusterError::Sql`].
pub async fn check_query(catalog: &[(String, SchemaRef)], sql: &str) -> Result<(), ClusterError> {
    plan_shape(catalog, sql, &QueryExtras::default(), true).await.map(|_| ())
}

/// What query `sql` would answer with, planned against empty tables of these schemas (and
/// the tables and functions of `extras`), reading nothing: its columns, and the type of each
/// parameter `$1`, `$2`, … (`None` where the query does not fix it), in order. With
/// `extras.params` (values of every parameter; typed NULLs will do), the columns are those of
/// the query with them (`SELECT $1` answers with the type of `$1`'s value).
///
/// # Errors
/// As [`check_query`].
/// The query is planned, not optimized: the optimizer folds constants (`repeat('x', 1e9)`)
/// by evaluating them, which only a query's run may do, within its memory limit and its time.
pub async fn describe_query(
    catalog: &[(String, SchemaRef)],
    sql: &str,
    extras: &QueryExtras,
) -> Result<QueryShape, ClusterError> {
    plan_shape(catalog, sql, extras, false).await
}

/// [`describe_query`], and with `optimize` the plan optimized too (which finds more errors).
async fn plan_shape(
    catalog: &[(String, SchemaRef)],
    sql: &str,
    extras: &QueryExtras,
    optimize: bool,
) -> Result<QueryShape, ClusterError> {
    let sql_error = |e: DataFusionError| ClusterError::Sql(amx_sql::error::message(&e));
    let tables = amx_sql::referenced_tables(sql).map_err(|e| ClusterError::Sql(format!("{e:#}")))?;
    let ctx = amx_sql::session(datafusion::prelude::SessionConfig::new().with_target_partitions(1))
        .map_err(|e| ClusterError::Sql(format!("{e:#}")))?;
    for (name, schema) in catalog.iter().filter(|(n, _)| tables.contains(n)) {
        let table = datafusion::datasource::empty::EmptyTable::new(schema.clone());
        ctx.register_table(TableReference::bare(name.as_str()), Arc::new(table)).map_err(sql_error)?;
    }
    if let Some(prepare) = &extras.prepare {
        prepare(&ctx, &tables).map_err(sql_error)?;
    }
    let text = sql.to_owned();
    let statement = amx_sql::on_sql_stack(|| amx_sql::parse::parse(&text)).map_err(sql_error)?;
    if !amx_sql::is_query(&statement) {
        return Err(ClusterError::Sql(NOT_A_QUERY.into()));
    }
    let state = ctx.state();
    let mut plan = state.statement_to_plan(statement).await.map_err(sql_error)?;
    let parameters = parameter_types(&plan).map_err(sql_error)?;
    if !extras.params.is_empty() {
        plan = plan.with_param_values(extras.params.clone()).map_err(sql_error)?;
    }
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    if optimize {
        amx_sql::on_sql_stack(|| state.optimize(&plan)).map_err(sql_error)?;
    }
    Ok(QueryShape { schema, parameters })
}

/// The most parameters a statement may have: PostgreSQL's (a `Bind` message counts them in 16
/// bits).
pub const MAX_PARAMETERS: usize = 65_535;

/// The types of a plan's parameters `$1`, `$2`, …, in order (`None`: not fixed by the query).
///
/// # Errors
/// A parameter numbered past [`MAX_PARAMETERS`] (`$4294967296` would ask for that many).
fn parameter_types(plan: &datafusion::logical_expr::LogicalPlan) -> DfResult<Vec<Option<DataType>>> {
    let types = plan.get_parameter_types()?;
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, ty)| {
            // `$N` past usize (`$18446744073709551616`) is past the limit too.
            let n = name.strip_prefix('$').filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?;
            Some((n.parse::<usize>().unwrap_or(usize::MAX), ty))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    let count = numbered.last().map_or(0, |(n, _)| *n);
    if count > MAX_PARAMETERS {
        return Err(datafusion::error::DataFusionError::Plan(format!(
            "a statement takes at most {MAX_PARAMETERS} parameters ($1 to ${MAX_PARAMETERS})"
        )));
    }
    let mut out = vec![None; count];
    for (n, ty) in numbered {
        if n >= 1 {
            out[n - 1] = ty;
        }
    }
    Ok(out)
}

/// A query's shape, from [`describe_query`].
#[derive(Clone, Debug)]
pub struct QueryShape {
    /// Its answer's columns.
    pub schema: SchemaRef,
    /// The type of each parameter `$1`, `$2`, … (`None`: any).
    pub parameters: Vec<Option<DataType>>,
}

/// Registers more tables and functions in a query's DataFusion session; called with the
/// session and the names of the tables the query reads (as [`amx_sql::referenced_tables`]).
pub type PrepareSession = Arc<dyn Fn(&datafusion::prelude::SessionContext, &[String]) -> DfResult<()> + Send + Sync>;

/// What a front end adds to a query: values for its parameters, and more tables and
/// functions (pgwire's `pg_catalog`).
#[derive(Clone, Default)]
pub struct QueryExtras {
    /// Values of `$1`, `$2`, … in order (none: the query has no parameters).
    pub params: Vec<datafusion::common::ScalarValue>,
    /// Called on the query's session before it is planned.
    pub prepare: Option<PrepareSession>,
    /// When set, `CREATE`/`DROP MATERIALIZED VIEW` are refused with
    /// [`ClusterError::Forbidden`] and this message (the caller's role may not change the
    /// catalog); queries run as usual.
    pub refuse_views: Option<String>,
}

impl std::fmt::Debug for QueryExtras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryExtras")
            .field("params", &self.params)
            .field("refuse_views", &self.refuse_views)
            .finish_non_exhaustive()
    }
}

/// The error for a statement that is neither a query nor a view statement.
const NOT_A_QUERY: &str = "only queries (SELECT, WITH, VALUES, EXPLAIN) and CREATE/DROP MATERIALIZED VIEW can be \
                           run; the relations are maintained by the engine";

/// What a SQL statement did.
#[derive(Debug)]
pub enum SqlAnswer {
    /// A query's answer, read at `timestamp` (ms since the Unix epoch).
    Rows {
        /// The answer's columns.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
        /// The time every table was read at.
        timestamp: Time,
    },
    /// `CREATE MATERIALIZED VIEW`: the view.
    Created {
        /// View name.
        view: String,
        /// A relation or view of that name was already there (only with `IF NOT EXISTS`):
        /// nothing was created.
        existed: bool,
    },
    /// `DROP MATERIALIZED VIEW`.
    Dropped {
        /// View name.
        view: String,
        /// Whether it existed (`IF EXISTS` drops nothing otherwise).
        existed: bool,
    },
}

impl Controller {
    /// Runs one SQL statement: a query over the live state, or `CREATE`/`DROP MATERIALIZED
    /// VIEW`. Runs on the caller's tokio runtime (planning views on its blocking pool).
    ///
    /// # Errors
    /// [`ClusterError::Sql`] for syntax errors (with line and column), unknown tables or
    /// columns, type and execution errors and statements other than queries;
    /// [`ClusterError::Conflict`] / [`ClusterError::UnknownCollection`] for view statements.
    pub async fn execute_sql(&self, sql: &str) -> Result<SqlAnswer, ClusterError> {
        self.execute_sql_with(sql, QueryExtras::default()).await
    }

    /// [`Controller::execute_sql`] with parameter values and more tables and functions for a
    /// query (ignored by view statements).
    ///
    /// # Errors
    /// As [`Controller::execute_sql`]; a parameter without a value, or of the wrong type, is
    /// [`ClusterError::Sql`].
    pub async fn execute_sql_with(&self, sql: &str, extras: QueryExtras) -> Result<SqlAnswer, ClusterError> {
        let text = sql.to_owned();
        // On the SQL runtime's blocking threads, whose stacks hold a statement's parse; parsed
        // once, planned below from what this parse made.
        let amx_sql::views::Classified { kind, query } = self
            .sql_runtime()
            .spawn_blocking(move || amx_sql::views::classify(&text).map_err(|e| amx_sql::error::message(&e)))
            .await
            .map_err(|e| ClusterError::Sql(e.to_string()))?
            .map_err(ClusterError::Sql)?;
        if let (Some(message), ViewStatement::Create { .. } | ViewStatement::Drop { .. }) =
            (&extras.refuse_views, &kind)
        {
            return Err(ClusterError::Forbidden(message.clone()));
        }
        match kind {
            ViewStatement::Create { name, if_not_exists: true, .. }
                if self.schema(&name).is_some() || crate::introspection::schema(&name).is_some() =>
            {
                Ok(SqlAnswer::Created { view: name, existed: true })
            }
            ViewStatement::Create { name, query, .. } => {
                let me = self.clone();
                let view = name.clone();
                let span = tracing::Span::current();
                tokio::task::spawn_blocking(move || span.in_scope(|| me.create_view(&name, &query)))
                    .await
                    .map_err(|e| ClusterError::Sql(e.to_string()))??;
                Ok(SqlAnswer::Created { view, existed: false })
            }
            ViewStatement::Drop { name, if_exists } => {
                let existed = self.drop_view(&name, if_exists).await?;
                Ok(SqlAnswer::Dropped { view: name, existed })
            }
            ViewStatement::Other => {
                let (statement, tables) = query.ok_or_else(|| ClusterError::Sql(NOT_A_QUERY.into()))?;
                self.run_query(statement, tables, extras).await
            }
        }
    }

    /// Runs a query on the SQL runtime, a few at a time ([`SQL_SLOTS`]), within
    /// `sql.timeout_ms` ([`crate::limits`]). The query is a task of its own, aborted when the
    /// time is up or when this future is dropped (its caller gone): its stream is dropped at
    /// DataFusion's next cooperative yield, and its slot freed with it.
    async fn run_query(
        &self,
        statement: DfStatement,
        tables: Vec<String>,
        extras: QueryExtras,
    ) -> Result<SqlAnswer, ClusterError> {
        let timeout = self.inner.sql_limits.timeout;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let ms = timeout.map_or(0, |t| t.as_millis());
        let slot = within(deadline, self.sql_slot()).await.ok_or_else(|| {
            ClusterError::Timeout(format!(
                "the query waited sql.timeout_ms = {ms} ms for a query slot and was not run: all {SQL_SLOTS} slots \
                 are busy with other queries; try again, or raise sql.timeout_ms"
            ))
        })?;
        let me = self.clone();
        let task = self.sql_runtime().spawn(async move {
            let _slot = slot;
            let hold: ReadHold = me.read_hold(&tables);
            me.query_as_of(Parsed::Statement(statement), &tables, &hold, &extras).await
        });
        let _abort = AbortOnDrop(task.abort_handle());
        match within(deadline, task).await {
            None => Err(ClusterError::Timeout(format!(
                "the query ran longer than sql.timeout_ms = {ms} ms and was cancelled; narrow it (WHERE, LIMIT), or \
                 raise sql.timeout_ms"
            ))),
            Some(Err(e)) => Err(ClusterError::Sql(format!("the query failed: {e}"))),
            Some(Ok(answer)) => answer,
        }
    }

    /// What one query may take (`[sql]` of a server's configuration).
    pub fn sql_limits(&self) -> &crate::SqlLimits {
        &self.inner.sql_limits
    }

    /// The runtime queries run on: [`SQL_SLOTS`] threads with large stacks (planning recurses
    /// over deep statements; see `amx_sql::parse`), made at the first query.
    fn sql_runtime(&self) -> tokio::runtime::Handle {
        self.inner
            .sql_runtime
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(SQL_SLOTS)
                    .thread_name("amx-sql")
                    .thread_stack_size(amx_sql::parse::SQL_THREAD_STACK_BYTES)
                    .enable_all()
                    .build()
                    .expect("starting the SQL runtime");
                SqlRuntime(Some(runtime))
            })
            .0
            .as_ref()
            .expect("kept until dropped")
            .handle()
            .clone()
    }

    /// Answers query `sql` as of the time `hold` holds: queries answered at one hold read one
    /// state. `hold` must hold every collection the query reads (taken with their names). Runs
    /// on the caller's thread: call it on a large stack (`amx_sql::on_sql_stack`).
    ///
    /// # Errors
    /// As [`Controller::execute_sql`] (view statements are [`ClusterError::Sql`] here).
    pub async fn query_at(&self, sql: &str, hold: &ReadHold) -> Result<SqlAnswer, ClusterError> {
        let tables = amx_sql::referenced_tables(sql).map_err(|e| ClusterError::Sql(format!("{e:#}")))?;
        self.query_as_of(Parsed::Text(sql), &tables, hold, &QueryExtras::default()).await
    }

    async fn query_as_of(
        &self,
        sql: Parsed<'_>,
        tables: &[String],
        hold: &ReadHold,
        extras: &QueryExtras,
    ) -> Result<SqlAnswer, ClusterError> {
        if let Parsed::Statement(statement) = &sql
            && let Some(point) = point::point_query(statement, |name| self.schema(name), &extras.params)
        {
            return self.answer_point_query(point, hold).await;
        }
        let known: Vec<(String, SchemaRef)> =
            tables.iter().filter_map(|t| self.schema(t).map(|s| (t.clone(), s))).collect();
        let sql_error = |e: DataFusionError| match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => ClusterError::Limit(m.clone()),
            _ => ClusterError::Sql(amx_sql::error::message(&e)),
        };
        let limits = &self.inner.sql_limits;
        let pool =
            crate::limits::QueryPool::new(self.inner.sql_pool.clone(), limits.query_memory_bytes, limits.memory_bytes);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            // No spilling: a query lives within its memory limit or fails naming it (a
            // server's disk is not a query's to fill).
            .with_disk_manager_builder(
                datafusion::execution::disk_manager::DiskManagerBuilder::default()
                    .with_mode(datafusion::execution::disk_manager::DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(sql_error)?;
        let template = match self.inner.sql_sessions.get() {
            Some(template) => template,
            None => {
                // One partition: float aggregates add in one order, so answers are reproducible.
                let config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
                let template = amx_sql::SessionTemplate::new(config, |ctx| {
                    // Functions that make values far larger than their input (repeat, lpad, …)
                    // are held to the query's memory limit too: the pool does not see what
                    // they make.
                    if let Some(limit) = limits.query_memory_bytes {
                        amx_sql::bounded::register(ctx, limit);
                    }
                })
                .map_err(|e| ClusterError::Sql(format!("{e:#}")))?;
                self.inner.sql_sessions.get_or_init(|| template)
            }
        };
        let ctx = template.session();
        for (name, schema) in known {
            let table = PeekTable {
                owner: hold.owner(&name),
                name: name.clone(),
                schema,
                as_of: hold.time(),
                controller: ControllerRef(self.clone()),
            };
            ctx.register_table(TableReference::bare(name), Arc::new(table)).map_err(sql_error)?;
        }
        // The introspection relations it reads, as they are now (not collections of the
        // workers: nothing to peek).
        for name in tables.iter().filter(|t| self.schema(t).is_none()) {
            if let Some(batch) = crate::introspection::batch(self, name) {
                let table =
                    datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(sql_error)?;
                ctx.register_table(TableReference::bare(name.as_str()), Arc::new(table)).map_err(sql_error)?;
            }
        }
        if let Some(prepare) = &extras.prepare {
            prepare(&ctx, tables).map_err(sql_error)?;
        }
        let statement = match sql {
            Parsed::Statement(statement) => statement,
            Parsed::Text(text) => {
                let text = text.to_owned();
                tokio::task::spawn_blocking(move || amx_sql::on_sql_stack(|| amx_sql::parse::parse(&text)))
                    .await
                    .map_err(|e| ClusterError::Sql(e.to_string()))?
                    .map_err(sql_error)?
            }
        };
        if !amx_sql::is_query(&statement) {
            return Err(ClusterError::Sql(NOT_A_QUERY.into()));
        }
        let mut plan = ctx.state().statement_to_plan(statement).await.map_err(sql_error)?;
        if !extras.params.is_empty() {
            plan = plan.with_param_values(extras.params.clone()).map_err(sql_error)?;
        }
        let df = ctx.execute_logical_plan(plan).await.map_err(sql_error)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        // A peek's own error (the cluster stopped, or a view dropped while the query ran) is
        // reported as itself, not as a SQL error.
        let run_error = |e: DataFusionError| match e.find_root() {
            DataFusionError::External(inner) => match inner.downcast_ref::<ClusterError>() {
                Some(ClusterError::Stopped) => ClusterError::Stopped,
                Some(other) => ClusterError::Sql(other.to_string()),
                None => sql_error(e),
            },
            _ => sql_error(e),
        };
        // Every operator's output takes from tokio's cooperative budget, so that a query can
        // be cancelled between any two batches: DataFusion yields at its sources only, and a
        // join that makes many batches of each input batch (a cross join) would otherwise
        // run on, past its timeout, until it was done.
        // Executed over the query's own runtime: its memory pool holds it to its limits.
        let task = Arc::new(datafusion::execution::TaskContext::from(&ctx).with_runtime(runtime));
        let plan = df.create_physical_plan().await.map_err(run_error)?;
        let plan = plan
            .transform_up(|node| {
                let wrapped: Arc<dyn ExecutionPlan> =
                    Arc::new(datafusion::physical_plan::coop::CooperativeExec::new(node));
                Ok(datafusion::common::tree_node::Transformed::yes(wrapped))
            })
            .map_err(run_error)?
            .data;
        // The answer batch by batch, so that one past a limit stops the query there.
        let mut stream = datafusion::physical_plan::execute_stream(plan, task).map_err(run_error)?;
        let (mut batches, mut rows, mut bytes) = (Vec::new(), 0u64, 0u64);
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            let batch = batch.map_err(run_error)?;
            rows += batch.num_rows() as u64;
            bytes += answer_bytes(&batch);
            within_result_limits(limits, rows, bytes)?;
            batches.push(batch);
        }
        Ok(SqlAnswer::Rows { schema, batches, timestamp: hold.time() })
    }

    /// Answers a point query ([`point`]) by one peek at `hold`'s time, without DataFusion.
    ///
    /// # Errors
    /// As [`Controller::execute_sql`]'s queries: the collection dropped meanwhile
    /// ([`ClusterError::Sql`]), the cluster stopped, an answer past `sql.max_result_rows` or
    /// `sql.max_result_bytes` ([`ClusterError::Limit`]).
    async fn answer_point_query(&self, point: point::PointQuery, hold: &ReadHold) -> Result<SqlAnswer, ClusterError> {
        let point::PointQuery { collection, projection, filter, schema } = point;
        let rows = self.peek(&collection, hold.time(), Some(projection), filter, None).await.map_err(|e| match e {
            ClusterError::Stopped => ClusterError::Stopped,
            other => ClusterError::Sql(other.to_string()),
        })?;
        self.still_held(&collection, hold.owner(&collection))?;
        self.inner.point_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let count: u64 = rows.iter().map(|(_, n)| (*n).max(0) as u64).sum();
        within_result_limits(&self.inner.sql_limits, count, 0)?;
        if count == 0 {
            return Ok(SqlAnswer::Rows { schema, batches: Vec::new(), timestamp: hold.time() });
        }
        let expanded: Vec<&Row> =
            rows.iter().flat_map(|(row, n)| std::iter::repeat_n(row, (*n).max(0) as usize)).collect();
        let batch = amx_sql::convert::rows_to_batch(&expanded, &schema)
            .map_err(|e| ClusterError::Sql(format!("the query failed: {e}")))?;
        within_result_limits(&self.inner.sql_limits, count, answer_bytes(&batch))?;
        Ok(SqlAnswer::Rows { schema, batches: vec![batch], timestamp: hold.time() })
    }

    /// Queries answered by one peek, without DataFusion, since the server started (see
    /// [`point`]).
    pub fn point_queries(&self) -> u64 {
        self.inner.point_queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `Ok` while an answer of `rows` rows and `bytes` bytes (as [`answer_bytes`] counts them) is
/// within `sql.max_result_rows` and `sql.max_result_bytes`.
///
/// # Errors
/// [`ClusterError::Limit`], naming the limit passed.
fn within_result_limits(limits: &crate::SqlLimits, rows: u64, bytes: u64) -> Result<(), ClusterError> {
    if let Some(max) = limits.max_result_rows.filter(|max| rows > *max) {
        return Err(ClusterError::Limit(format!(
            "the answer has more than {max} rows (sql.max_result_rows); add a LIMIT or a WHERE, or raise \
             sql.max_result_rows"
        )));
    }
    if let Some(max) = limits.max_result_bytes.filter(|max| bytes > *max) {
        return Err(ClusterError::Limit(format!(
            "the answer is larger than {max} bytes (sql.max_result_bytes); select fewer rows or columns, or raise \
             sql.max_result_bytes"
        )));
    }
    Ok(())
}

/// The bytes of an answer's batch, as [`crate::SqlLimits::max_result_bytes`] counts them: its
/// columns' values as sliced. A batch cut from a larger one shares its buffers, and
/// `get_array_memory_size` counts those whole: a collection of 224,044 short ids, read in 28
/// batches, counted 20 times its size and was refused past 128 MiB.
fn answer_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()) as u64)
        .sum()
}

/// A query to plan: its text, or the statement it was parsed into already.
enum Parsed<'a> {
    /// The text, parsed where it is planned.
    Text(&'a str),
    /// Parsed ([`amx_sql::views::classify`]).
    Statement(DfStatement),
}

/// The runtime SQL queries run on; shut down in the background when the controller goes (it
/// may go inside another runtime, where a runtime cannot be dropped in place).
pub(crate) struct SqlRuntime(Option<tokio::runtime::Runtime>);

impl Drop for SqlRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `future`'s output, or `None` once `deadline` (if any) has passed.
async fn within<T>(deadline: Option<tokio::time::Instant>, future: impl std::future::Future<Output = T>) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push source of knowledge events (`c` → collection, `id` → document_id, `v` → version).
    const JOB: &str = r#"name = "docs"
[[sources]]
name = "events"
kind = "push"
format = "json"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/c"
document_id = "/id"
op = { pointer = "/op", default = "upsert" }
version = "/v"
"#;

    /// A query at a read hold taken before its view was dropped and made again reads the new
    /// view's arrangement, which holds none of the held time's rows (they arrive at the new
    /// view's first time): it is refused, by the point path and by DataFusion's, rather than
    /// answered with no rows. At the hold, before that, both answer the one matching row.
    #[test]
    fn a_query_whose_view_was_replaced_after_its_read_hold_is_refused() {
        let controller = Controller::start(crate::ClusterConfig { workers: 2, ..Default::default() }).expect("starts");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let job = crate::job::Job::parse(JOB, std::path::Path::new(".")).expect("a job");
            let id = controller.install_job(&job).expect("installed");
            let lines = r#"{"c": "a", "id": "d1", "v": 1}
{"c": "a", "id": "d2", "v": 1}"#;
            controller.ingest(id, "events", lines).await.expect("ingested");
            let create = "CREATE MATERIALIZED VIEW v AS SELECT document_id FROM knowledge_events";
            controller.execute_sql(create).await.expect("created");
            let tables = vec!["v".to_owned()];
            // Wait until the view has its rows (its first times pass the push's).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let hold = loop {
                let hold = controller.read_hold(&tables);
                let parsed = Parsed::Statement(amx_sql::parse::parse("SELECT count(*) AS n FROM v").expect("parses"));
                let answer = controller.query_as_of(parsed, &tables, &hold, &QueryExtras::default()).await;
                if let Ok(SqlAnswer::Rows { batches, .. }) = &answer
                    && batches.iter().map(|b| b.num_rows()).sum::<usize>() == 1
                    && amx_sql::arrow::array::AsArray::as_primitive::<amx_sql::arrow::datatypes::Int64Type>(
                        batches[0].column(0),
                    )
                    .value(0)
                        == 2
                {
                    break hold;
                }
                assert!(std::time::Instant::now() < deadline, "the view never had its rows: {answer:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            let point = "SELECT document_id FROM v WHERE document_id = 'd1'";
            let planned = "SELECT document_id FROM v WHERE (document_id = 'd1')";
            let extras = QueryExtras::default();
            let ask = |sql: &str| {
                let parsed = Parsed::Statement(amx_sql::parse::parse(sql).expect("parses"));
                controller.query_as_of(parsed, &tables, &hold, &extras)
            };
            for sql in [point, planned] {
                match ask(sql).await {
                    Ok(SqlAnswer::Rows { batches, .. }) => {
                        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "{sql}")
                    }
                    other => panic!("{sql}: {other:?}"),
                }
            }
            controller.execute_sql("DROP MATERIALIZED VIEW v").await.expect("dropped");
            controller.execute_sql(create).await.expect("created again");
            for sql in [point, planned] {
                match ask(sql).await {
                    Err(ClusterError::Sql(message)) => {
                        assert!(message.contains("`v` was dropped or replaced while the query read it"), "{message}")
                    }
                    other => panic!("{sql}: {other:?}"),
                }
            }
        });
    }
}
