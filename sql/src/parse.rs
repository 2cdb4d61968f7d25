//! Parsing SQL statements with limits that keep hostile input from taking the engine down.
//!
//! DataFusion and sqlparser plan a statement by recursing over its expression trees, and not
//! every recursion guards its stack (naming, formatting, cloning and dropping expressions do
//! not), and DataFusion's type coercion costs time quadratic in an expression's depth. So:
//!
//! - [`parse`] refuses a statement whose expressions nest deeper than [`MAX_EXPR_DEPTH`]
//!   (`1 + 1 + … + 1` with more than that many terms, a chain of more `OR`s) right after
//!   parsing, in time linear in the statement's length, before DataFusion sees it;
//! - [`on_sql_stack`] runs planning and execution on a thread whose stack holds every
//!   recursion over an expression within that depth, and [`evaluate`] grows the stack of a
//!   dataflow worker that evaluates a deep expression in a view.
//!
//! Parentheses, subqueries and prefix operators nest at most [`PARSER_RECURSION_LIMIT`] deep
//! (sqlparser's own limit).

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::parser::{CopyToSource, DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, Query, Value, Visit, VisitMut, Visitor, VisitorMut};
use datafusion::sql::sqlparser::dialect::GenericDialect;

/// Deepest nesting of expressions (and subqueries) a statement may have: an expression
/// `1 + 1 + … + 1` of more than this many terms, or a `WHERE` with more `OR`s, is refused
/// when it is parsed. The same bound as SQLite's `SQLITE_MAX_EXPR_DEPTH`.
pub const MAX_EXPR_DEPTH: usize = 1000;

/// sqlparser's recursion limit (also set as DataFusion's `sql_parser.recursion_limit`, whose
/// default is 50): how deep parentheses, subqueries, `CASE` and prefix operators such as `NOT`
/// may nest. SQL is parsed and planned on [`SQL_STACK_BYTES`] stacks, so this can be well
/// above DataFusion's default.
pub const PARSER_RECURSION_LIMIT: usize = 256;

/// Stack size of the threads that parse, plan and run SQL (see [`on_sql_stack`]).
pub const SQL_STACK_BYTES: usize = 256 << 20;

/// Runs `f` on a thread with a [`SQL_STACK_BYTES`] stack and returns its result (a panic in
/// `f` is resumed on the caller's thread).
///
/// Every statement this crate parses, plans or runs goes through here, so that a statement
/// within [`MAX_EXPR_DEPTH`] cannot overflow the caller's stack, whatever thread it runs on.
pub fn on_sql_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("amx-sql-plan".into())
            .stack_size(SQL_STACK_BYTES)
            .spawn_scoped(scope, f)
            .expect("spawning a SQL planning thread");
        match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Expressions at most this deep are evaluated on the caller's stack by [`evaluate`].
const SHALLOW_DEPTH: usize = 64;

/// Stack [`evaluate`] makes sure of per level of a deeper expression (debug builds use about
/// 4 KiB per level of a binary expression).
const STACK_PER_LEVEL: usize = 16 << 10;

/// How deep a physical expression nests (1 for a column or a literal); without recursing.
pub fn depth(expr: &dyn PhysicalExpr) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&dyn PhysicalExpr, usize)> = vec![(expr, 1)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(e.children().into_iter().map(|c| (c.as_ref(), d + 1)));
    }
    deepest
}

/// Evaluates `expr` over `batch`, on a larger stack when `expr` is deep: DataFusion evaluates
/// an expression by recursing over it, and the dataflow's worker threads have small stacks.
pub fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ColumnarValue> {
    let depth = depth(expr.as_ref());
    if depth <= SHALLOW_DEPTH {
        return expr.evaluate(batch);
    }
    let needed = depth * STACK_PER_LEVEL;
    stacker::maybe_grow(needed, 2 * needed, || expr.evaluate(batch))
}

/// Parses exactly one statement (generic dialect, DataFusion's extensions included).
///
/// Errors: a syntax error (with its line and column), no statement or several, and
/// expressions nested deeper than [`MAX_EXPR_DEPTH`].
///
/// Call it on a thread with a large stack ([`on_sql_stack`]): the statement it returns may
/// still be [`MAX_EXPR_DEPTH`] deep, and formatting, cloning and dropping it recurse.
pub fn parse(sql: &str) -> Result<DfStatement> {
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()?
        .parse_statements()?;
    if statements.len() > 1 {
        let n = statements.len();
        statements.into_iter().for_each(dismantle);
        return Err(DataFusionError::Plan(format!("one SQL statement at a time, not {n}")));
    }
    let statement = statements.pop_front().ok_or_else(|| DataFusionError::Plan("no SQL statement".into()))?;
    if too_deep(&statement) {
        dismantle(statement);
        return Err(DataFusionError::Plan(format!(
            "expression nested too deeply: more than {MAX_EXPR_DEPTH} levels (such as a chain of more than \
             {MAX_EXPR_DEPTH} operators; write a long OR of comparisons as `x IN (…)`)"
        )));
    }
    Ok(statement)
}

/// Counts how deep expressions and queries nest, stopping once past [`MAX_EXPR_DEPTH`].
#[derive(Default)]
struct Depth {
    depth: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
    fn leave(&mut self) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

impl Visitor for Depth {
    type Break = ();
    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter()
    }
    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.leave()
    }
    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.enter()
    }
    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.leave()
    }
}

/// Whether the statement nests deeper than [`MAX_EXPR_DEPTH`]. Linear in the statement's
/// size, and stops as soon as the limit is passed (sqlparser's visitor guards its stack).
fn too_deep(statement: &DfStatement) -> bool {
    let mut depth = Depth::default();
    match statement {
        DfStatement::Statement(s) => s.visit(&mut depth).is_break(),
        DfStatement::Explain(e) => too_deep(&e.statement),
        DfStatement::CopyTo(c) => match &c.source {
            CopyToSource::Query(q) => q.visit(&mut depth).is_break(),
            CopyToSource::Relation(_) => false,
        },
        DfStatement::CreateExternalTable(_) | DfStatement::Reset(_) => false,
    }
}

/// Drops a statement without recursing down its expression chains (dropping a chain of a
/// million `+` recursively would overflow any stack).
fn dismantle(statement: DfStatement) {
    /// Takes every outermost expression out of the statement.
    struct Take(Vec<Expr>);
    impl VisitorMut for Take {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            // Replaced by a leaf, so the visitor does not descend into it.
            self.0.push(std::mem::replace(expr, Expr::value(Value::Null)));
            ControlFlow::Continue(())
        }
    }
    let mut take = Take(Vec::new());
    match statement {
        DfStatement::Statement(mut s) => {
            let _ = VisitMut::visit(s.as_mut(), &mut take);
        }
        DfStatement::Explain(e) => return dismantle(*e.statement),
        DfStatement::CopyTo(mut c) => {
            if let CopyToSource::Query(q) = &mut c.source {
                let _ = VisitMut::visit(q.as_mut(), &mut take);
            }
        }
        DfStatement::CreateExternalTable(_) | DfStatement::Reset(_) => {}
    }
    let mut stack = take.0;
    while let Some(expr) = stack.pop() {
        match expr {
            Expr::BinaryOp { left, right, .. } => {
                stack.push(*left);
                stack.push(*right);
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::Cast { expr, .. }
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr) => stack.push(*expr),
            Expr::InList { expr, list, .. } => {
                stack.push(*expr);
                stack.extend(list);
            }
            Expr::Between { expr, low, high, .. } => {
                stack.push(*expr);
                stack.push(*low);
                stack.push(*high);
            }
            // Anything else is dropped as usual (on the caller's large stack).
            other => drop(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(op: &str, terms: usize) -> String {
        vec!["1"; terms].join(op)
    }

    #[test]
    fn a_chain_at_the_limit_parses_and_one_term_more_is_refused() {
        // `SELECT e`: the expression `1+…+1` of n terms nests n deep (n - 1 operators over
        // the leftmost 1), inside the query (one more level).
        on_sql_stack(|| {
            assert!(parse(&format!("SELECT {}", chain("+", MAX_EXPR_DEPTH - 1))).is_ok());
            let err = parse(&format!("SELECT {}", chain("+", MAX_EXPR_DEPTH))).unwrap_err();
            assert!(err.to_string().contains("nested too deeply: more than 1000 levels"), "{err}");
        });
    }

    #[test]
    fn a_huge_chain_is_refused_without_overflowing_the_stack() {
        // 1,000,000 terms (2 MB of SQL); refusing it must neither overflow nor recurse per term.
        on_sql_stack(|| {
            let sql = format!("SELECT {} AS s", chain("+", 1_000_000));
            let err = parse(&sql).unwrap_err();
            assert!(err.to_string().contains("nested too deeply"), "{err}");
            let sql = format!("SELECT 1 WHERE {}", vec!["x = 1"; 200_000].join(" OR "));
            assert!(parse(&sql).unwrap_err().to_string().contains("nested too deeply"));
        });
    }

    #[test]
    fn several_statements_are_refused() {
        let err = on_sql_stack(|| parse("SELECT 1; SELECT 2")).unwrap_err();
        assert!(err.to_string().contains("one SQL statement at a time, not 2"), "{err}");
    }
}
