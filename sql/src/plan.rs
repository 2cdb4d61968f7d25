//! SQL → dataflow planning: DataFusion plans a view's `SELECT` (parsing, name resolution, type
//! checking, its logical optimizer, subquery decorrelation); [`lower`] turns the optimized
//! [`LogicalPlan`] into a [`Plan`], the dataflow IR that [`crate::render`] renders into
//! differential operators.
//!
//! Scalar expressions stay DataFusion's own physical expressions, evaluated over Arrow batches
//! of the rows, so a view computes exactly what DataFusion's batch engine computes (NULLs,
//! casts, overflow, string, date and JSON functions).
//!
//! Whatever the IR cannot maintain is refused when the view is created, with a plan error that
//! names the construct and, where the construct's keyword appears in the SQL, its line and
//! column.

use std::sync::Arc;

use amx_dataflows::row::{Datum, Row};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, DFSchemaRef, JoinType, NullEquality, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::logical_plan::{Distinct, FetchType, LogicalPlan, SkipType};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, WindowFunctionDefinition};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::convert;

/// A DataFusion physical expression (shared by all workers; evaluation is pure).
pub type PhysExpr = Arc<dyn PhysicalExpr>;

/// An aggregate function a [`Plan::Reduce`] maintains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// `count(x)` (`count(*)` is `count(1)`): non-NULL inputs.
    Count,
    /// `sum(x)`: NULL when no input is non-NULL; integer overflow is an error.
    Sum,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `avg(x)`: `DOUBLE`.
    Avg,
    /// `bool_and(x)`.
    BoolAnd,
    /// `bool_or(x)`.
    BoolOr,
}

/// One aggregate of a [`Plan::Reduce`].
#[derive(Clone, Debug)]
pub struct Agg {
    /// The function.
    pub func: AggFunc,
    /// Column (of the reduce's value columns) holding the argument.
    pub arg: usize,
    /// `DISTINCT`: aggregate the distinct non-NULL values only.
    pub distinct: bool,
    /// Result type, as DataFusion declares it.
    pub output: DataType,
    /// Type of the argument.
    pub input: DataType,
}

impl Agg {
    /// Whether the aggregate can be maintained by adding and subtracting (count, and sum and
    /// avg of integers and of doubles, the latter as exact sums, without DISTINCT): then a
    /// change costs O(1), not O(group size).
    pub fn invertible(&self) -> bool {
        !self.distinct
            && match self.func {
                AggFunc::Count => true,
                AggFunc::Sum | AggFunc::Avg => self.input.is_integer() || self.input == DataType::Float64,
                _ => false,
            }
    }
}

/// A ranking window function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankFunc {
    /// `row_number()`.
    RowNumber,
    /// `rank()`.
    Rank,
    /// `dense_rank()`.
    DenseRank,
}

/// Sort direction of one ordering column: `(ascending, nulls_first)`.
pub type Order = (bool, bool);

/// Join kinds the IR maintains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Inner join.
    Inner,
    /// Left outer join.
    Left,
    /// Right outer join.
    Right,
    /// Full outer join.
    Full,
    /// Left rows with a match (`EXISTS`, `IN`, `INTERSECT`).
    LeftSemi,
    /// Left rows without a match (`NOT EXISTS`, `EXCEPT`).
    LeftAnti,
}

/// The dataflow IR: a tree of collection operators over rows.
///
/// Every node's rows have the columns of its DataFusion schema, in order.
#[derive(Clone, Debug)]
pub enum Plan {
    /// A relation, built-in view or other view, by name.
    Get {
        /// Relation name.
        name: String,
    },
    /// A constant collection.
    Constant {
        /// Its rows.
        rows: Vec<Row>,
    },
    /// Evaluates `exprs` over each input row (SQL projection).
    Map {
        /// Input.
        input: Box<Plan>,
        /// One expression per output column.
        exprs: Vec<PhysExpr>,
        /// The input's Arrow schema (the batches the expressions see).
        input_schema: SchemaRef,
    },
    /// Keeps rows where `predicate` is true (NULL and false drop the row).
    Filter {
        /// Input.
        input: Box<Plan>,
        /// Boolean expression.
        predicate: PhysExpr,
        /// The input's Arrow schema.
        input_schema: SchemaRef,
    },
    /// A temporal filter: keeps a row while the engine clock `now` satisfies
    /// `time > now - interval` (`inclusive`: `>=`), retracting it when it ages out.
    TemporalFilter {
        /// Input.
        input: Box<Plan>,
        /// The row's time (a TIMESTAMP expression over the input).
        time: PhysExpr,
        /// The input's Arrow schema.
        input_schema: SchemaRef,
        /// The interval (µs).
        interval_us: i64,
        /// `>=` rather than `>`.
        inclusive: bool,
    },
    /// `GROUP BY` the first `keys` columns, aggregating the others.
    Reduce {
        /// Input rows: `keys` group columns, then the aggregate arguments.
        input: Box<Plan>,
        /// Number of group columns.
        keys: usize,
        /// Aggregates; each reads one value column.
        aggs: Vec<Agg>,
    },
    /// An equi-join on the trailing `keys` columns of both inputs.
    Join {
        /// Left input: its `left_arity` columns, then the key columns.
        left: Box<Plan>,
        /// Right input: its `right_arity` columns, then the key columns.
        right: Box<Plan>,
        /// Columns of the left input before its keys.
        left_arity: usize,
        /// Columns of the right input before its keys.
        right_arity: usize,
        /// Kind.
        kind: JoinKind,
        /// Whether NULL keys match each other (`INTERSECT`, `EXCEPT`).
        nulls_equal: bool,
        /// Extra (non-equi) predicate over the left ++ right columns.
        filter: Option<(PhysExpr, SchemaRef)>,
    },
    /// Removes duplicate rows.
    Distinct {
        /// Input.
        input: Box<Plan>,
    },
    /// `UNION ALL`.
    Union {
        /// Inputs (same columns).
        inputs: Vec<Plan>,
    },
    /// `ORDER BY … LIMIT`: rows `offset .. offset + limit` by the trailing order columns.
    TopK {
        /// Input: `arity` columns, then one column per order expression.
        input: Box<Plan>,
        /// Output columns.
        arity: usize,
        /// Direction of each order column.
        order: Vec<Order>,
        /// Rows skipped.
        offset: usize,
        /// Rows kept (None: all).
        limit: Option<usize>,
    },
    /// A ranking window function per partition.
    Window {
        /// Input: `arity` columns, then `partitions` partition columns, then the order columns.
        input: Box<Plan>,
        /// Columns passed through.
        arity: usize,
        /// Number of partition columns.
        partitions: usize,
        /// Direction of each order column.
        order: Vec<Order>,
        /// The function; its value is appended as the last column.
        func: RankFunc,
    },
}

/// Where the construct named `word` first appears in `sql`, as " at line L, column C".
pub fn position(sql: &str, word: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    let word = word.to_ascii_lowercase();
    let is_ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    // The first occurrence that is a whole word (not inside a longer identifier).
    let found = lower.match_indices(&word).map(|(at, _)| at).find(|&at| {
        let word_starts = word.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let word_ends = word.chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        (!word_starts || !is_ident(lower[..at].chars().last()))
            && (!word_ends || !is_ident(lower[at + word.len()..].chars().next()))
    });
    match found {
        Some(at) => {
            let line = sql[..at].matches('\n').count() + 1;
            let column = at - sql[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
            format!(" at line {line}, column {column}")
        }
        None => String::new(),
    }
}

/// The name of the first volatile function `expr` calls (`random`, `uuid`, …).
fn volatile_function(expr: &Expr) -> Option<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Volatility;
    let mut found = None;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && f.func.signature().volatility == Volatility::Volatile
        {
            found = Some(f.name().to_owned());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Lowers optimized DataFusion plans, refusing what the IR cannot maintain.
pub struct Lowerer<'a> {
    sql: &'a str,
    props: ExecutionProps,
}

impl<'a> Lowerer<'a> {
    /// A lowerer for plans of `sql` (used to locate refused constructs).
    pub fn new(sql: &'a str) -> Lowerer<'a> {
        Lowerer { sql, props: ExecutionProps::new() }
    }

    fn refuse(&self, construct: &str, keyword: &str) -> DataFusionError {
        DataFusionError::Plan(format!(
            "{construct} is not supported in a materialized view{}",
            position(self.sql, keyword)
        ))
    }

    fn phys(&self, expr: &Expr, schema: &DFSchema) -> Result<PhysExpr> {
        if crate::temporal::mentions_now(expr) {
            return Err(
                self.refuse("now() other than in `WHERE t > now() - INTERVAL '…'` (a temporal filter)", "now()")
            );
        }
        if expr.is_volatile() {
            // A maintained view must compute the same value when it retracts a row.
            let name = volatile_function(expr).unwrap_or_else(|| "random".to_owned());
            let call = format!("{name}(");
            let keyword = if position(self.sql, &call).is_empty() { name.as_str() } else { call.as_str() };
            return Err(self.refuse(&format!("the volatile function {name}()"), keyword));
        }
        let mut subquery = false;
        let _ = datafusion::common::tree_node::TreeNode::apply(expr, |e| {
            subquery |= matches!(e, Expr::ScalarSubquery(_));
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        if subquery {
            return Err(self.refuse("an uncorrelated scalar subquery (write it as a join)", "(select"));
        }
        create_physical_expr(expr, schema, &self.props, &PhysicalPlanningContext::default())
    }

    fn check_types(&self, schema: &DFSchema) -> Result<()> {
        for f in schema.fields() {
            if !convert::supported(f.data_type()) {
                return Err(DataFusionError::Plan(format!(
                    "column `{}` has type {}, which materialized views do not support yet{}",
                    f.name(),
                    f.data_type(),
                    position(self.sql, f.name())
                )));
            }
        }
        Ok(())
    }

    /// `input`, then `exprs` appended as extra columns.
    fn extend(&self, input: Plan, schema: &DFSchemaRef, exprs: &[Expr]) -> Result<Plan> {
        if exprs.is_empty() {
            return Ok(input);
        }
        let mut all: Vec<PhysExpr> = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            all.push(Arc::new(datafusion::physical_expr::expressions::Column::new(field.name(), i)));
        }
        for e in exprs {
            all.push(self.phys(e, schema)?);
        }
        Ok(Plan::Map { input: Box::new(input), exprs: all, input_schema: Arc::new(schema.as_arrow().clone()) })
    }

    /// Lowers one optimized logical plan.
    pub fn lower(&self, plan: &LogicalPlan) -> Result<Plan> {
        self.check_types(plan.schema())?;
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(self.refuse("LIMIT without ORDER BY", "limit"));
                }
                // A view reads the engine's relations and views (planned as empty `MemTable`s);
                // anything else here is a table function (`generate_series`, `range`), whose
                // rows a view would never receive: refused, not read as nothing.
                let provider = datafusion::datasource::source_as_provider(&scan.source)?;
                let provider: &dyn std::any::Any = provider.as_ref();
                if !provider.is::<datafusion::catalog::MemTable>() {
                    let name = scan.table_name.table().trim_end_matches("()");
                    return Err(self.refuse(&format!("the table function {name}() (list its rows with VALUES)"), name));
                }
                let mut out = Plan::Get { name: scan.table_name.table().to_owned() };
                let full = scan.source.schema();
                let full_df = DFSchema::try_from_qualified_schema(scan.table_name.clone(), &full)?;
                for f in &scan.filters {
                    out = Plan::Filter {
                        input: Box::new(out),
                        predicate: self.phys(f, &full_df)?,
                        input_schema: full.clone(),
                    };
                }
                if let Some(projection) = &scan.projection {
                    let exprs = projection
                        .iter()
                        .map(|&i| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(full.field(i).name(), i))
                                as PhysExpr
                        })
                        .collect();
                    out = Plan::Map { input: Box::new(out), exprs, input_schema: full };
                }
                Ok(out)
            }
            LogicalPlan::Projection(p) => {
                let input = self.lower(&p.input)?;
                let exprs = p.expr.iter().map(|e| self.phys(e, p.input.schema())).collect::<Result<_>>()?;
                Ok(Plan::Map {
                    input: Box::new(input),
                    exprs,
                    input_schema: Arc::new(p.input.schema().as_arrow().clone()),
                })
            }
            LogicalPlan::Filter(f) => {
                let mut out = self.lower(&f.input)?;
                let input_schema: SchemaRef = Arc::new(f.input.schema().as_arrow().clone());
                let mut rest = Vec::new();
                for conjunct in datafusion::logical_expr::utils::split_conjunction(&f.predicate) {
                    if !crate::temporal::mentions_now(conjunct) {
                        rest.push(conjunct.clone());
                        continue;
                    }
                    let Some(t) = crate::temporal::temporal_predicate(conjunct) else {
                        return Err(
                            self.refuse("now() other than in `t > now() - INTERVAL '…'` (a temporal filter)", "now()")
                        );
                    };
                    out = Plan::TemporalFilter {
                        input: Box::new(out),
                        time: self.phys(&t.time, f.input.schema())?,
                        input_schema: input_schema.clone(),
                        interval_us: t.interval_us,
                        inclusive: t.inclusive,
                    };
                }
                if let Some(predicate) = datafusion::logical_expr::utils::conjunction(rest) {
                    out = Plan::Filter {
                        input: Box::new(out),
                        predicate: self.phys(&predicate, f.input.schema())?,
                        input_schema,
                    };
                }
                Ok(out)
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input),
            LogicalPlan::Repartition(r) => self.lower(&r.input),
            LogicalPlan::Distinct(Distinct::All(input)) => Ok(Plan::Distinct { input: Box::new(self.lower(input)?) }),
            LogicalPlan::Distinct(Distinct::On(_)) => Err(self.refuse("DISTINCT ON", "distinct on")),
            LogicalPlan::Union(u) => {
                Ok(Plan::Union { inputs: u.inputs.iter().map(|i| self.lower(i)).collect::<Result<_>>()? })
            }
            LogicalPlan::EmptyRelation(e) => {
                Ok(Plan::Constant { rows: if e.produce_one_row { vec![vec![]] } else { vec![] } })
            }
            LogicalPlan::Values(v) => {
                let empty = DFSchema::empty();
                let mut rows = Vec::new();
                for exprs in &v.values {
                    let mut row = Vec::new();
                    for (e, field) in exprs.iter().zip(v.schema.fields()) {
                        let value = self.phys(e, &empty)?.evaluate(&arrow::record_batch::RecordBatch::new_empty(
                            Arc::new(arrow::datatypes::Schema::empty()),
                        ));
                        let array = value?.into_array(1)?;
                        let array = arrow::compute::cast(&array, field.data_type())?;
                        row.push(convert::arrays_to_rows(&[array], 1)?.remove(0).remove(0));
                    }
                    rows.push(row);
                }
                Ok(Plan::Constant { rows })
            }
            LogicalPlan::Aggregate(a) => self.lower_aggregate(a),
            LogicalPlan::Join(j) => self.lower_join(j),
            LogicalPlan::Sort(s) => match s.fetch {
                // A view is a collection: ORDER BY without LIMIT does not change its contents.
                None => self.lower(&s.input),
                Some(fetch) => self.lower_top_k(&s.input, &s.expr, 0, Some(fetch)),
            },
            LogicalPlan::Limit(l) => {
                let skip = match l.get_skip_type()? {
                    SkipType::Literal(s) => s,
                    SkipType::UnsupportedExpr => {
                        return Err(self.refuse("a non-constant OFFSET", "offset"));
                    }
                };
                let fetch = match l.get_fetch_type()? {
                    FetchType::Literal(f) => f,
                    FetchType::UnsupportedExpr => {
                        return Err(self.refuse("a non-constant LIMIT", "limit"));
                    }
                };
                match l.input.as_ref() {
                    LogicalPlan::Sort(s) => {
                        let limit = match (fetch, s.fetch) {
                            (Some(f), Some(sf)) => Some(f.min(sf.saturating_sub(skip))),
                            (f, None) => f,
                            (None, Some(sf)) => Some(sf.saturating_sub(skip)),
                        };
                        self.lower_top_k(&s.input, &s.expr, skip, limit)
                    }
                    _ => Err(self.refuse("LIMIT without ORDER BY (its rows would be arbitrary)", "limit")),
                }
            }
            LogicalPlan::Window(w) => self.lower_window(w),
            LogicalPlan::Subquery(_) => Err(self.refuse("a subquery DataFusion could not decorrelate", "select")),
            LogicalPlan::Unnest(_) => Err(self.refuse("UNNEST", "unnest")),
            LogicalPlan::RecursiveQuery(_) => Err(self.refuse("WITH RECURSIVE", "recursive")),
            other => Err(DataFusionError::Plan(format!("{} is not supported in a materialized view", other.display()))),
        }
    }

    fn lower_aggregate(&self, a: &datafusion::logical_expr::logical_plan::Aggregate) -> Result<Plan> {
        if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
            return Err(self.refuse("GROUPING SETS / ROLLUP / CUBE", "group"));
        }
        let input = self.lower(&a.input)?;
        let schema = a.input.schema();
        let mut exprs: Vec<Expr> = a.group_expr.clone();
        let mut aggs = Vec::new();
        for (i, e) in a.aggr_expr.iter().enumerate() {
            let inner = match e {
                Expr::Alias(alias) => alias.expr.as_ref(),
                e => e,
            };
            let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
                return Err(DataFusionError::Plan(format!("unexpected aggregate expression {e}")));
            };
            let name = func.name().to_ascii_lowercase();
            let f = match name.as_str() {
                "count" => AggFunc::Count,
                "sum" => AggFunc::Sum,
                "min" => AggFunc::Min,
                "max" => AggFunc::Max,
                "avg" | "mean" => AggFunc::Avg,
                "bool_and" => AggFunc::BoolAnd,
                "bool_or" => AggFunc::BoolOr,
                "first_value" | "last_value" => {
                    return Err(self.refuse("DISTINCT ON (or first_value()/last_value())", "distinct on"));
                }
                other => {
                    return Err(self.refuse(&format!("the aggregate function {other}()"), other));
                }
            };
            if params.filter.is_some() {
                return Err(self.refuse("an aggregate FILTER clause", "filter"));
            }
            if !params.order_by.is_empty() {
                return Err(self.refuse("an ordered aggregate", &name));
            }
            let arg = match params.args.as_slice() {
                [arg] => arg.clone(),
                [] => Expr::Literal(ScalarValue::Int64(Some(1)), None),
                _ => return Err(self.refuse(&format!("{name}() with several arguments"), &name)),
            };
            let output = a.schema.field(a.group_expr.len() + i).data_type().clone();
            let input = datafusion::logical_expr::ExprSchemable::get_type(&arg, schema)?;
            aggs.push(Agg { func: f, arg: i, distinct: params.distinct, output, input });
            exprs.push(arg);
        }
        let physical = exprs.iter().map(|e| self.phys(e, schema)).collect::<Result<Vec<_>>>()?;
        let mapped =
            Plan::Map { input: Box::new(input), exprs: physical, input_schema: Arc::new(schema.as_arrow().clone()) };
        Ok(Plan::Reduce { input: Box::new(mapped), keys: a.group_expr.len(), aggs })
    }

    fn lower_join(&self, j: &datafusion::logical_expr::logical_plan::Join) -> Result<Plan> {
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti => JoinKind::LeftAnti,
            other => return Err(self.refuse(&format!("a {other} join"), "join")),
        };
        if j.null_aware {
            return Err(self.refuse("NOT IN over a subquery (null-aware anti join)", "not in"));
        }
        let left = self.lower(&j.left)?;
        let right = self.lower(&j.right)?;
        let left_keys: Vec<Expr> = j.on.iter().map(|(l, _)| l.clone()).collect();
        let right_keys: Vec<Expr> = j.on.iter().map(|(_, r)| r.clone()).collect();
        let left = self.extend(left, j.left.schema(), &left_keys)?;
        let right = self.extend(right, j.right.schema(), &right_keys)?;
        let filter = match &j.filter {
            None => None,
            Some(f) => {
                let both = j.left.schema().join(j.right.schema())?;
                Some((self.phys(f, &both)?, Arc::new(both.as_arrow().clone())))
            }
        };
        Ok(Plan::Join {
            left: Box::new(left),
            right: Box::new(right),
            left_arity: j.left.schema().fields().len(),
            right_arity: j.right.schema().fields().len(),
            kind,
            nulls_equal: j.null_equality == NullEquality::NullEqualsNull,
            filter,
        })
    }

    fn lower_top_k(
        &self,
        input: &LogicalPlan,
        sort: &[datafusion::logical_expr::SortExpr],
        offset: usize,
        limit: Option<usize>,
    ) -> Result<Plan> {
        let lowered = self.lower(input)?;
        let exprs: Vec<Expr> = sort.iter().map(|s| s.expr.clone()).collect();
        let extended = self.extend(lowered, input.schema(), &exprs)?;
        Ok(Plan::TopK {
            input: Box::new(extended),
            arity: input.schema().fields().len(),
            order: sort.iter().map(|s| (s.asc, s.nulls_first)).collect(),
            offset,
            limit,
        })
    }

    fn lower_window(&self, w: &datafusion::logical_expr::logical_plan::Window) -> Result<Plan> {
        let [expr] = w.window_expr.as_slice() else {
            return Err(self.refuse("several window functions in one SELECT", "over"));
        };
        let inner = match expr {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::WindowFunction(wf) = inner else {
            return Err(DataFusionError::Plan(format!("unexpected window expression {expr}")));
        };
        let WindowFunction { fun, params } = wf.as_ref();
        let func = match fun {
            WindowFunctionDefinition::WindowUDF(udf) => match udf.name() {
                "row_number" => RankFunc::RowNumber,
                "rank" => RankFunc::Rank,
                "dense_rank" => RankFunc::DenseRank,
                other => return Err(self.refuse(&format!("the window function {other}()"), other)),
            },
            WindowFunctionDefinition::AggregateUDF(udf) => {
                return Err(self.refuse(&format!("the window aggregate {}() OVER (…)", udf.name()), "over"));
            }
        };
        let input = self.lower(&w.input)?;
        let mut exprs = params.partition_by.clone();
        exprs.extend(params.order_by.iter().map(|s| s.expr.clone()));
        let extended = self.extend(input, w.input.schema(), &exprs)?;
        Ok(Plan::Window {
            input: Box::new(extended),
            arity: w.input.schema().fields().len(),
            partitions: params.partition_by.len(),
            order: params.order_by.iter().map(|s| (s.asc, s.nulls_first)).collect(),
            func,
        })
    }
}

/// Names of the relations a plan reads.
pub fn dependencies(plan: &Plan, out: &mut Vec<String>) {
    match plan {
        Plan::Get { name } => {
            if !out.contains(name) {
                out.push(name.clone())
            }
        }
        Plan::Constant { .. } => {}
        Plan::Map { input, .. }
        | Plan::Filter { input, .. }
        | Plan::TemporalFilter { input, .. }
        | Plan::Reduce { input, .. }
        | Plan::Distinct { input }
        | Plan::TopK { input, .. }
        | Plan::Window { input, .. } => dependencies(input, out),
        Plan::Join { left, right, .. } => {
            dependencies(left, out);
            dependencies(right, out);
        }
        Plan::Union { inputs } => inputs.iter().for_each(|i| dependencies(i, out)),
    }
}

/// `Datum::Null` rows of a given width (outer-join padding).
pub fn nulls(width: usize) -> Row {
    vec![Datum::Null; width]
}
