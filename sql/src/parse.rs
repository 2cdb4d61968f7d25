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
//! Parentheses, subqueries, `CASE` and prefix operators nest at most [`PARSER_RECURSION_LIMIT`]
//! deep (sqlparser's own limit), and where a statement may nest that deep, keyword calls such
//! as `CAST(…)` nest at most [`MAX_KEYWORD_CALL_DEPTH`] deep: sqlparser backtracks over them,
//! and failing at its limit inside many of them took exponential time (see [`Nesting`]).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::parser::{CopyToSource, DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, Query, Value, Visit, VisitMut, Visitor, VisitorMut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

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

/// Stack size for the threads of a runtime that runs SQL (the server's runtimes): a little
/// more than [`SQL_STACK_BYTES`], so that [`on_sql_stack`] called on one of them still finds
/// that much free below the runtime's own frames and runs its work in place, rather than on a
/// thread started for it (three such threads per query were about a tenth of a point query's
/// time: `clone3`, `mprotect` and `munmap` of their stacks).
pub const SQL_THREAD_STACK_BYTES: usize = SQL_STACK_BYTES + (16 << 20);

/// Runs `f` on a thread with a [`SQL_STACK_BYTES`] stack and returns its result (a panic in
/// `f` is resumed on the caller's thread): on the caller's own thread when at least that much
/// of its stack is free, else on a thread started for it. So `f` may run inside the caller's
/// tokio runtime (a thread of one started with [`SQL_THREAD_STACK_BYTES`]) and must not
/// `block_on` a runtime there; `aimatrix run` blocks on its runtime only from its main thread.
///
/// Every statement this crate parses, plans or runs goes through here, so that a statement
/// within [`MAX_EXPR_DEPTH`] cannot overflow the caller's stack, whatever thread it runs on.
///
/// # Panics
/// When no thread can be started ([`try_on_sql_stack`] answers an error instead).
pub fn on_sql_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    try_on_sql_stack(f).expect("spawning a SQL planning thread")
}

/// [`on_sql_stack`], or the error of starting its thread when none can be started (the
/// process's threads or address space exhausted: `EAGAIN`, `ENOMEM`) after waiting up to about
/// a second for other statements' threads to end.
///
/// # Errors
/// The operating system's, when the thread cannot be started.
pub fn try_on_sql_stack<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    // A thread with that much stack still free (one of a runtime's, started with
    // `SQL_THREAD_STACK_BYTES`) runs `f` itself.
    if stacker::remaining_stack().is_some_and(|free| free >= SQL_STACK_BYTES) {
        return Ok(f());
    }
    // `spawn_scoped` consumes its closure even when it fails: the thread takes `f` from a slot,
    // so that a failed try leaves it there for the next.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let mut tries = 0;
    std::thread::scope(|scope| {
        let handle = loop {
            let taken = slot.clone();
            let spawned = std::thread::Builder::new()
                .name("amx-sql-plan".into())
                .stack_size(SQL_STACK_BYTES)
                .spawn_scoped(scope, move || {
                    let f = taken.lock().unwrap_or_else(|p| p.into_inner()).take().expect("run once");
                    f()
                });
            match spawned {
                Ok(handle) => break handle,
                Err(e) if tries >= 20 => return Err(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        };
        match handle.join() {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// [`try_on_sql_stack`] for a statement's work: the error of starting its thread becomes
/// the statement's (`ResourcesExhausted`), not a panic.
///
/// # Errors
/// `f`'s, or that no thread could be started.
pub fn plan_on_sql_stack<T: Send>(f: impl FnOnce() -> Result<T, DataFusionError> + Send) -> Result<T, DataFusionError> {
    try_on_sql_stack(f).map_err(|e| {
        DataFusionError::ResourcesExhausted(format!(
            "no thread could be started to plan the statement ({e}); try again"
        ))
    })?
}

/// Expressions at most this deep are evaluated on the caller's stack by [`evaluate`].
pub(crate) const SHALLOW_DEPTH: usize = 64;

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
    let nesting = Nesting::of(sql);
    if let Some(at) = nesting.brackets_past_the_limit {
        return Err(DataFusionError::Plan(format!(
            "statement nested too deeply at line {}, column {}: more than {MAX_BRACKET_DEPTH} brackets (or \
             ARRAY<…>, STRUCT<…> and MAP<…> types) inside one another",
            at.line, at.column
        )));
    }
    if let Some(at) = nesting.backtracking_past_the_limit {
        return Err(DataFusionError::Plan(format!(
            "expression nested too deeply at line {}, column {}: more than {MAX_KEYWORD_CALL_DEPTH} keyword \
             calls such as CAST(…) or SUBSTRING(…) inside one another, in an expression that may nest \
             more than {PARSER_RECURSION_LIMIT} levels",
            at.line, at.column
        )));
    }
    let mut statements = match parse_statements(sql, PARSER_RECURSION_LIMIT) {
        Ok(statements) => statements,
        // sqlparser reads a keyword it could not parse as the start of an expression once more
        // as an identifier, so a statement that nests past the limit can fail with a syntax
        // error far from its cause (`NOT NOT … NOT x`: "found NOT at column 1028"). When the
        // statement may nest that deep, a parse with a larger limit tells the two apart: a
        // syntax error fails it the same way.
        Err(e) if nesting.may_pass_limit && !is_recursion_limit(&e) => {
            match parse_statements(sql, 4 * PARSER_RECURSION_LIMIT) {
                Err(deeper) if deeper.find_root().to_string() == e.find_root().to_string() => return Err(e),
                Ok(statements) => {
                    statements.into_iter().for_each(dismantle);
                    return Err(ParserError::RecursionLimitExceeded.into());
                }
                Err(_) => return Err(ParserError::RecursionLimitExceeded.into()),
            }
        }
        Err(e) => return Err(e),
    };
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

/// Brackets, and the `<` of `ARRAY<…>`, `STRUCT<…>` and `MAP<…>` types, nest at most this
/// deep. sqlparser parses data types by recursing without counting against its limit (100,000
/// nested `ARRAY<` overflowed a [`SQL_STACK_BYTES`] stack), and no statement within
/// [`PARSER_RECURSION_LIMIT`] nests its other brackets this deep.
pub const MAX_BRACKET_DEPTH: usize = 4 * PARSER_RECURSION_LIMIT;

/// Keywords after which `<` opens a data type's parameters.
const TYPE_KEYWORDS: &[Keyword] = &[Keyword::ARRAY, Keyword::STRUCT, Keyword::MAP];

/// At most this many keyword calls (`CAST(`, `SUBSTRING(`, `EXISTS(`, `ARRAY[` …) may enclose
/// a place where a statement may nest past [`PARSER_RECURSION_LIMIT`] (see [`Nesting`]).
pub const MAX_KEYWORD_CALL_DEPTH: usize = 8;

/// What [`Nesting`] counts for a statement's first levels (statement, query, select item and
/// expression, with room to spare).
const STATEMENT_LEVELS: usize = 8;

/// Keywords that sqlparser first parses as a special form (`CAST(x AS t)`) and, when that
/// fails, parses once more as a function name or identifier (`cast(x)`). A failure deep inside
/// `k` of them nested is parsed 2^k times.
const BACKTRACKING_KEYWORDS: &[Keyword] = &[
    Keyword::ARRAY,
    Keyword::CAST,
    Keyword::CEIL,
    Keyword::CONVERT,
    Keyword::EXISTS,
    Keyword::EXTRACT,
    Keyword::FLOOR,
    Keyword::MAP,
    Keyword::MATCH,
    Keyword::OVERLAY,
    Keyword::POSITION,
    Keyword::SAFE_CAST,
    Keyword::STRUCT,
    Keyword::SUBSTR,
    Keyword::SUBSTRING,
    Keyword::TRIM,
    Keyword::TRY_CAST,
    Keyword::TRY_CONVERT,
];

/// What one linear pass over a statement's tokens tells about how deep sqlparser will recurse
/// on it, before it is parsed.
///
/// sqlparser recurses (and counts against its limit) once per statement, query,
/// subexpression and table factor, and each of those levels but the statement's first few
/// opens a bracket or consumes a keyword or an operator. So [`STATEMENT_LEVELS`] plus, for
/// every bracket open at a token, 1 and the keywords and operators seen inside it so far,
/// bounds its depth there from above (a keyword of [`BACKTRACKING_KEYWORDS`] counts in the
/// bracket it opens). Only where that bound passes [`PARSER_RECURSION_LIMIT`] can the parse
/// fail for depth, and then every keyword call around that place doubles the work of failing:
/// sqlparser 0.62 parses such a keyword once more as a function name after any error, its
/// recursion limit included (`Parser::parse_prefix`); 256 nested `CAST(` did not finish.
#[derive(Debug, Default)]
struct Nesting {
    /// The bound passes [`PARSER_RECURSION_LIMIT`] somewhere.
    may_pass_limit: bool,
    /// The first bracket (or type's `<`) inside more than [`MAX_BRACKET_DEPTH`] others.
    brackets_past_the_limit: Option<Location>,
    /// The first token where the bound passes the limit inside more than
    /// [`MAX_KEYWORD_CALL_DEPTH`] keyword calls.
    backtracking_past_the_limit: Option<Location>,
}

impl Nesting {
    /// A statement that does not tokenize gives the default (the parser reports the error).
    fn of(sql: &str) -> Nesting {
        let dialect = GenericDialect {};
        let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
            return Nesting::default();
        };
        /// One open bracket: what it adds to the bound, and whether a keyword call opened it.
        struct Open {
            levels: usize,
            keyword_call: bool,
        }
        let mut open = vec![Open { levels: STATEMENT_LEVELS, keyword_call: false }];
        let (mut bound, mut calls) = (STATEMENT_LEVELS, 0usize);
        let mut nesting = Nesting::default();
        let mut previous: Option<&Token> = None;
        // Brackets and types' `<` open at the token, and of those the types' `<`.
        let (mut brackets, mut angles) = (0usize, 0usize);
        for t in &tokens {
            let opened = brackets;
            match &t.token {
                Token::Whitespace(_) => continue,
                Token::Lt if matches!(previous, Some(Token::Word(w)) if TYPE_KEYWORDS.contains(&w.keyword)) => {
                    angles += 1;
                    brackets += 1;
                    open.last_mut().expect("the statement's own level").levels += 1;
                    bound += 1;
                }
                Token::Gt | Token::ShiftRight if angles > 0 => {
                    let closed = angles.min(if t.token == Token::Gt { 1 } else { 2 });
                    angles -= closed;
                    brackets -= closed;
                    open.last_mut().expect("the statement's own level").levels += 1;
                    bound += 1;
                }
                Token::LParen | Token::LBracket | Token::LBrace => {
                    let keyword_call =
                        matches!(previous, Some(Token::Word(w)) if BACKTRACKING_KEYWORDS.contains(&w.keyword));
                    open.push(Open { levels: 1, keyword_call });
                    bound += 1;
                    brackets += 1;
                    calls += usize::from(keyword_call);
                }
                Token::RParen | Token::RBracket | Token::RBrace => {
                    if open.len() > 1 {
                        let closed = open.pop().expect("more than one open");
                        bound -= closed.levels;
                        calls -= usize::from(closed.keyword_call);
                        brackets = brackets.saturating_sub(1);
                    }
                }
                Token::Comma
                | Token::Period
                | Token::SemiColon
                | Token::EOF
                | Token::Number(..)
                | Token::SingleQuotedString(_)
                | Token::DoubleQuotedString(_)
                | Token::Placeholder(_) => {}
                Token::Word(w) if w.keyword == Keyword::NoKeyword || BACKTRACKING_KEYWORDS.contains(&w.keyword) => {}
                // A keyword or an operator: perhaps one more level.
                _ => {
                    open.last_mut().expect("the statement's own level").levels += 1;
                    bound += 1;
                }
            }
            if brackets > opened && brackets > MAX_BRACKET_DEPTH && nesting.brackets_past_the_limit.is_none() {
                nesting.brackets_past_the_limit = Some(t.span.start);
            }
            if bound > PARSER_RECURSION_LIMIT {
                nesting.may_pass_limit = true;
                if calls > MAX_KEYWORD_CALL_DEPTH && nesting.backtracking_past_the_limit.is_none() {
                    nesting.backtracking_past_the_limit = Some(t.span.start);
                }
            }
            previous = Some(&t.token);
        }
        nesting
    }
}

/// Whether `e` is sqlparser's recursion limit.
fn is_recursion_limit(e: &DataFusionError) -> bool {
    matches!(e.find_root(), DataFusionError::SQL(p, _) if matches!(**p, ParserError::RecursionLimitExceeded))
}

/// All the statements of `sql`, parsed with sqlparser's recursion limit at `limit`.
fn parse_statements(sql: &str, limit: usize) -> Result<VecDeque<DfStatement>> {
    let dialect = GenericDialect {};
    DFParserBuilder::new(sql).with_dialect(&dialect).with_recursion_limit(limit).build()?.parse_statements()
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
    fn on_sql_stack_runs_in_place_only_where_the_stack_has_room() {
        let here = || std::thread::current().id();
        // A thread of a SQL runtime: in place.
        let big = std::thread::Builder::new().stack_size(SQL_THREAD_STACK_BYTES).spawn(move || {
            let caller = here();
            (caller, on_sql_stack(here))
        });
        let (caller, ran_on) = big.expect("a thread").join().expect("no panic");
        assert_eq!(caller, ran_on);
        // A thread with a common 2 MiB stack: on a thread of its own, with a deep statement
        // planned.
        let small = std::thread::Builder::new().stack_size(2 << 20).spawn(move || {
            let caller = here();
            let (ran_on, deep) =
                on_sql_stack(|| (here(), parse(&format!("SELECT {}", chain("+", MAX_EXPR_DEPTH - 1))).is_ok()));
            (caller, ran_on, deep)
        });
        let (caller, ran_on, deep) = small.expect("a thread").join().expect("no panic");
        assert_ne!(caller, ran_on);
        assert!(deep);
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

    fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("SELECT {}{inner}{}", open.repeat(n), close.repeat(n))
    }

    fn message(e: DataFusionError) -> String {
        crate::error::message(&e)
    }

    #[test]
    fn keyword_calls_nested_past_the_limit_are_refused_at_once() {
        // Each of these used to run for hours: sqlparser failed at its limit and then parsed
        // every enclosing CAST once more as a function call.
        on_sql_stack(|| {
            for sql in [
                nested("CAST(", "1", " AS INT)", 256),
                nested("CAST(", "1", " AS INT)", 1000),
                nested("TRY_CAST(", "1", " AS INT)", 300),
                nested("SUBSTRING(", "'a'", ", 1)", 300),
                nested("ARRAY[", "1", "]", 300),
                format!(
                    "SELECT {}{}",
                    "NOT ".repeat(240),
                    nested("CAST(", "true", " AS BOOLEAN)", 20).trim_start_matches("SELECT ")
                ),
            ] {
                let err = message(parse(&sql).unwrap_err());
                assert!(err.contains("more than 8 keyword calls such as CAST(…)"), "{err}");
                assert!(err.contains("at line 1, column "), "{err}");
            }
        });
    }

    #[test]
    fn keyword_calls_that_cannot_reach_the_limit_parse() {
        on_sql_stack(|| {
            assert!(parse(&nested("CAST(", "1", " AS INT)", 240)).is_ok());
            assert!(parse(&nested("substring(", "'abc'", ", 1)", 200)).is_ok());
            // Within 8 keyword calls, any depth the parser takes is fine.
            let ands = vec!["x = 1"; 400].join(" AND ");
            assert!(parse(&nested("CAST(", &format!("({ands})"), " AS INT)", 8)).is_ok());
            let err = message(parse(&nested("CAST(", &format!("({ands})"), " AS INT)", 9)).unwrap_err());
            assert!(err.contains("keyword calls"), "{err}");
        });
    }

    #[test]
    fn prefix_chains_past_the_limit_say_they_nest_too_deeply() {
        // sqlparser read the innermost NOT or CASE past its limit as a column name and then
        // failed on the next token ("found NOT at column 1028").
        on_sql_stack(|| {
            for sql in [
                format!("SELECT {}true", "NOT ".repeat(300)),
                format!("SELECT {}true", "NOT ".repeat(3000)),
                nested("CASE WHEN true THEN ", "1", " END", 300),
                format!("SELECT {}1", "- ".repeat(300)),
                nested("(", "1", ")", 300),
                nested("abs(", "1", ")", 300),
                nested("(SELECT ", "1", ")", 200),
            ] {
                let err = message(parse(&sql).unwrap_err());
                assert!(err.contains("nested more than 256 deep"), "{err}");
            }
            // A syntax error in a deep statement is still reported as itself.
            let err = message(parse(&format!("SELECT {}true FROM WHERE", "NOT ".repeat(300))).unwrap_err());
            assert!(err.contains("nested more than 256 deep") || err.contains("syntax error"), "{err}");
            assert!(parse(&format!("SELECT {}true", "NOT ".repeat(200))).is_ok());
        });
    }

    #[test]
    fn a_deeply_nested_type_does_not_overflow_the_stack() {
        // sqlparser parses a data type by recursing without counting against its limit.
        on_sql_stack(|| {
            for n in [100, 1000] {
                assert!(parse(&format!("SELECT CAST(NULL AS {}INT{})", "ARRAY<".repeat(n), ">".repeat(n))).is_ok());
            }
            assert!(
                parse(&format!("SELECT CAST(NULL AS {}INT{})", "STRUCT<a ".repeat(1000), ">>".repeat(500))).is_ok()
            );
            for sql in [
                format!("SELECT CAST(NULL AS {}INT{})", "ARRAY<".repeat(100_000), ">".repeat(100_000)),
                format!("SELECT CAST(NULL AS {}INT{})", "STRUCT(a ".repeat(100_000), ")".repeat(100_000)),
                format!("SELECT {}1", "(".repeat(100_000)),
            ] {
                let err = message(parse(&sql).unwrap_err());
                assert!(err.contains("more than 1024 brackets"), "{err}");
            }
            assert!(parse(&format!("SELECT CAST(NULL AS INT{})", "[]".repeat(100_000))).is_ok());
        });
    }

    #[test]
    fn a_long_flat_statement_still_parses() {
        on_sql_stack(|| {
            let items: Vec<String> = (0..2000).map(|i| format!("CAST(x AS INT) + {i} AS c{i}")).collect();
            assert!(
                parse(&format!("SELECT {} FROM t WHERE x IN ({})", items.join(", "), vec!["1"; 5000].join(",")))
                    .is_ok()
            );
        });
    }

    #[test]
    fn several_statements_are_refused() {
        let err = on_sql_stack(|| parse("SELECT 1; SELECT 2")).unwrap_err();
        assert!(err.to_string().contains("one SQL statement at a time, not 2"), "{err}");
    }
}
