//! Expressions evaluated on a [`Row`] directly, without building an Arrow batch.
//!
//! A view's `Map` and `Filter` evaluate DataFusion physical expressions. For most of them —
//! a projection of columns, a comparison with a constant, a `CASE` over such comparisons, a
//! `coalesce`, integer arithmetic — the row-to-Arrow-and-back round trip costs far more than
//! the expression itself. [`RowExpr::compile`] turns such an expression into a small tree
//! evaluated datum by datum; anything it does not know, or whose result it cannot give
//! exactly as DataFusion's kernels do, compiles to `None` and keeps the Arrow path.
//!
//! What compiles, and the rule it follows (each the result DataFusion 55 computes over Arrow
//! arrays, which `tests` check on random rows):
//! - a column reference, and a literal of type `NULL`, `BOOLEAN`, `BIGINT`/`INT`,
//!   `DOUBLE`, `TEXT` or `TIMESTAMP` (µs);
//! - `=`, `<>`, `<`, `<=`, `>`, `>=` between two operands of one type among the integers,
//!   `BOOLEAN`, text and µs timestamps (floats are left to Arrow, whose order differs from the
//!   rows' on `-0.0` and NaN): NULL when either is NULL;
//! - `AND`, `OR` (three-valued, Kleene: `NULL AND false` is false), `NOT`, `IS [NOT] NULL`;
//! - `+`, `-`, `*` of two `BIGINT`s, wrapping on overflow as DataFusion's default
//!   (`add_wrapping`; an expression planned to fail on overflow stays with Arrow);
//! - `CASE [operand] WHEN … THEN … [ELSE …] END`: the first branch whose condition is true
//!   (or whose value equals the operand; NULL matches nothing), else the `ELSE` (NULL without);
//!   (`coalesce(a, b, …)` is planned as such a `CASE`);
//! - `CAST` from an integer to `BIGINT`, from `BIGINT` to `DOUBLE`, and from a µs `TIMESTAMP`
//!   to `BIGINT` (its microseconds).

use std::borrow::Cow;
use std::cmp::Ordering;

use amx_dataflows::row::{Datum, Row};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};

use crate::plan::PhysExpr;

/// An expression over one row (see the module doc for what it covers).
#[derive(Clone, Debug, PartialEq)]
pub enum RowExpr {
    /// The row's column at this index.
    Column(usize),
    /// A constant.
    Literal(Datum),
    /// A comparison of two values of one (non-float) type.
    Compare(Comparison, Box<RowExpr>, Box<RowExpr>),
    /// `a AND b`, three-valued.
    And(Box<RowExpr>, Box<RowExpr>),
    /// `a OR b`, three-valued.
    Or(Box<RowExpr>, Box<RowExpr>),
    /// `NOT a` (NULL stays NULL).
    Not(Box<RowExpr>),
    /// `a IS NULL`.
    IsNull(Box<RowExpr>),
    /// `a IS NOT NULL`.
    IsNotNull(Box<RowExpr>),
    /// `a + b`, `a - b`, `a * b` of `BIGINT`s, wrapping.
    Arithmetic(Arithmetic, Box<RowExpr>, Box<RowExpr>),
    /// `CASE [operand] WHEN w THEN t … [ELSE e] END`.
    Case {
        /// The value each branch's `WHEN` is compared with; `None`: each `WHEN` is a condition.
        operand: Option<Box<RowExpr>>,
        /// `(WHEN, THEN)`, in order.
        branches: Vec<(RowExpr, RowExpr)>,
        /// The `ELSE` (`None`: NULL).
        otherwise: Option<Box<RowExpr>>,
    },
    /// `CAST(a AS DOUBLE)` of a `BIGINT`.
    IntToFloat(Box<RowExpr>),
    /// `CAST(a AS BIGINT)` of an integer (the same number) or of a µs timestamp (its
    /// microseconds).
    ToBigint(Box<RowExpr>),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// A wrapping arithmetic operator on `BIGINT`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Multiply,
}

/// Whether two values of this type compare on rows as Arrow compares them.
fn comparable(ty: &DataType) -> bool {
    is_integer(ty)
        || matches!(
            ty,
            DataType::Boolean
                | DataType::Date32
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Timestamp(TimeUnit::Microsecond, _)
        )
}

/// Whether rows hold this type's values as `Datum::Int` exactly (`UInt64` is not: values above
/// `i64::MAX` become NULL).
fn is_integer(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

/// A literal as the datum a row holds for it, for the types rows carry exactly.
fn literal(value: &ScalarValue) -> Option<Datum> {
    if value.is_null() {
        return matches!(
            value.data_type(),
            DataType::Null
                | DataType::Boolean
                | DataType::Int64
                | DataType::Float64
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Timestamp(TimeUnit::Microsecond, _)
        )
        .then_some(Datum::Null);
    }
    Some(match value {
        ScalarValue::Boolean(Some(b)) => Datum::Bool(*b),
        ScalarValue::Int8(Some(i)) => Datum::Int(i64::from(*i)),
        ScalarValue::Int16(Some(i)) => Datum::Int(i64::from(*i)),
        ScalarValue::Int32(Some(i)) => Datum::Int(i64::from(*i)),
        ScalarValue::Int64(Some(i)) => Datum::Int(*i),
        ScalarValue::Float64(Some(f)) => Datum::float(Some(*f)),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Datum::Text(s.clone())
        }
        ScalarValue::TimestampMicrosecond(Some(us), _) => Datum::Timestamp(*us),
        _ => return None,
    })
}

impl RowExpr {
    /// Compiles `expr` over rows of `schema`, or `None` when it is not one of the module
    /// doc's (the caller evaluates it over Arrow then).
    pub fn compile(expr: &PhysExpr, schema: &Schema) -> Option<RowExpr> {
        let ty = expr.data_type(schema).ok()?;
        let any: &dyn datafusion::physical_expr::PhysicalExpr = expr.as_ref();
        let compile = |e: &PhysExpr| RowExpr::compile(e, schema).map(Box::new);
        let type_of = |e: &PhysExpr| e.data_type(schema).ok();
        if let Some(column) = any.downcast_ref::<Column>() {
            return (column.index() < schema.fields().len()).then_some(RowExpr::Column(column.index()));
        }
        if let Some(lit) = any.downcast_ref::<Literal>() {
            return literal(lit.value()).map(RowExpr::Literal);
        }
        if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
            let (left, right) = (binary.left(), binary.right());
            let (lt, rt) = (type_of(left)?, type_of(right)?);
            let compare = |op| {
                (lt == rt && comparable(&lt)).then_some(())?;
                Some(RowExpr::Compare(op, compile(left)?, compile(right)?))
            };
            // An expression planned to fail on overflow is not the default one.
            let wrapping = || {
                let default = BinaryExpr::new(left.clone(), *binary.op(), right.clone());
                (lt == DataType::Int64 && rt == DataType::Int64 && ty == DataType::Int64 && binary == &default)
                    .then_some(())
            };
            let logical = || (lt == DataType::Boolean && rt == DataType::Boolean).then_some(());
            return match binary.op() {
                Operator::Eq => compare(Comparison::Eq),
                Operator::NotEq => compare(Comparison::NotEq),
                Operator::Lt => compare(Comparison::Lt),
                Operator::LtEq => compare(Comparison::LtEq),
                Operator::Gt => compare(Comparison::Gt),
                Operator::GtEq => compare(Comparison::GtEq),
                Operator::And => logical().and_then(|()| Some(RowExpr::And(compile(left)?, compile(right)?))),
                Operator::Or => logical().and_then(|()| Some(RowExpr::Or(compile(left)?, compile(right)?))),
                Operator::Plus => wrapping()
                    .and_then(|()| Some(RowExpr::Arithmetic(Arithmetic::Plus, compile(left)?, compile(right)?))),
                Operator::Minus => wrapping()
                    .and_then(|()| Some(RowExpr::Arithmetic(Arithmetic::Minus, compile(left)?, compile(right)?))),
                Operator::Multiply => wrapping()
                    .and_then(|()| Some(RowExpr::Arithmetic(Arithmetic::Multiply, compile(left)?, compile(right)?))),
                _ => None,
            };
        }
        if let Some(not) = any.downcast_ref::<NotExpr>() {
            return (type_of(not.arg())? == DataType::Boolean).then(|| Some(RowExpr::Not(compile(not.arg())?)))?;
        }
        if let Some(is_null) = any.downcast_ref::<IsNullExpr>() {
            return Some(RowExpr::IsNull(compile(is_null.arg())?));
        }
        if let Some(is_not_null) = any.downcast_ref::<IsNotNullExpr>() {
            return Some(RowExpr::IsNotNull(compile(is_not_null.arg())?));
        }
        if let Some(case) = any.downcast_ref::<CaseExpr>() {
            // Every branch's value of the CASE's own type (DataFusion casts them so).
            let of_type = |e: &PhysExpr| (type_of(e)? == ty).then(|| RowExpr::compile(e, schema))?;
            let operand = match case.expr() {
                Some(operand) => {
                    let t = type_of(operand)?;
                    comparable(&t).then_some(())?;
                    for (when, _) in case.when_then_expr() {
                        (type_of(when)? == t).then_some(())?;
                    }
                    Some(compile(operand)?)
                }
                None => {
                    for (when, _) in case.when_then_expr() {
                        (type_of(when)? == DataType::Boolean).then_some(())?;
                    }
                    None
                }
            };
            let branches = case
                .when_then_expr()
                .iter()
                .map(|(when, then)| Some((RowExpr::compile(when, schema)?, of_type(then)?)))
                .collect::<Option<Vec<_>>>()?;
            let otherwise = match case.else_expr() {
                Some(e) => Some(Box::new(of_type(e)?)),
                None => None,
            };
            return Some(RowExpr::Case { operand, branches, otherwise });
        }
        if let Some(cast) = any.downcast_ref::<CastExpr>() {
            let from = type_of(cast.expr())?;
            return match (&from, cast.cast_type()) {
                (f, DataType::Int64) if is_integer(f) => Some(RowExpr::ToBigint(compile(cast.expr())?)),
                (DataType::Timestamp(TimeUnit::Microsecond, _), DataType::Int64) => {
                    Some(RowExpr::ToBigint(compile(cast.expr())?))
                }
                (DataType::Int64, DataType::Float64) => Some(RowExpr::IntToFloat(compile(cast.expr())?)),
                _ => None,
            };
        }
        None
    }

    /// Compiles every expression, or `None` when one does not compile or is deeper than
    /// evaluating it by recursion on a worker thread's stack is sure to take (Arrow's path grows
    /// the stack: [`crate::parse::evaluate`]).
    pub fn compile_all(exprs: &[PhysExpr], schema: &Schema) -> Option<Vec<RowExpr>> {
        exprs
            .iter()
            .map(|e| {
                (crate::parse::depth(e.as_ref()) <= crate::parse::SHALLOW_DEPTH).then(|| RowExpr::compile(e, schema))?
            })
            .collect()
    }

    /// The expression's value on `row`.
    ///
    /// # Errors
    /// A datum of a kind its column's type does not hold (a row that does not fit the schema
    /// the expression was compiled for), as converting the row to Arrow would fail.
    pub fn eval(&self, row: &Row) -> Result<Datum, String> {
        self.eval_ref(row).map(Cow::into_owned)
    }

    /// [`RowExpr::eval`], borrowing where it can: a column's datum or a literal (and a `CASE`
    /// that yields one) is not copied, so a comparison of a text column with a constant
    /// allocates nothing.
    ///
    /// # Errors
    /// As [`RowExpr::eval`].
    pub fn eval_ref<'a>(&'a self, row: &'a Row) -> Result<Cow<'a, Datum>, String> {
        let owned = |d: Datum| Ok(Cow::Owned(d));
        match self {
            RowExpr::Column(i) => {
                row.get(*i).map(Cow::Borrowed).ok_or_else(|| format!("no column {i} in a row of {}", row.len()))
            }
            RowExpr::Literal(d) => Ok(Cow::Borrowed(d)),
            RowExpr::Compare(op, a, b) => {
                let (a, b) = (a.eval_ref(row)?, b.eval_ref(row)?);
                let ordering = match (&*a, &*b) {
                    (Datum::Null, _) | (_, Datum::Null) => return owned(Datum::Null),
                    (Datum::Bool(x), Datum::Bool(y)) => x.cmp(y),
                    (Datum::Int(x), Datum::Int(y)) => x.cmp(y),
                    (Datum::Text(x), Datum::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
                    (Datum::Timestamp(x), Datum::Timestamp(y)) => x.cmp(y),
                    (a, b) => return Err(mismatch(a, b)),
                };
                owned(Datum::Bool(match op {
                    Comparison::Eq => ordering == Ordering::Equal,
                    Comparison::NotEq => ordering != Ordering::Equal,
                    Comparison::Lt => ordering == Ordering::Less,
                    Comparison::LtEq => ordering != Ordering::Greater,
                    Comparison::Gt => ordering == Ordering::Greater,
                    Comparison::GtEq => ordering != Ordering::Less,
                }))
            }
            RowExpr::And(a, b) => owned(match (truth(&*a.eval_ref(row)?)?, truth(&*b.eval_ref(row)?)?) {
                (Some(false), _) | (_, Some(false)) => Datum::Bool(false),
                (Some(true), Some(true)) => Datum::Bool(true),
                _ => Datum::Null,
            }),
            RowExpr::Or(a, b) => owned(match (truth(&*a.eval_ref(row)?)?, truth(&*b.eval_ref(row)?)?) {
                (Some(true), _) | (_, Some(true)) => Datum::Bool(true),
                (Some(false), Some(false)) => Datum::Bool(false),
                _ => Datum::Null,
            }),
            RowExpr::Not(a) => owned(truth(&*a.eval_ref(row)?)?.map_or(Datum::Null, |b| Datum::Bool(!b))),
            RowExpr::IsNull(a) => owned(Datum::Bool(*a.eval_ref(row)? == Datum::Null)),
            RowExpr::IsNotNull(a) => owned(Datum::Bool(*a.eval_ref(row)? != Datum::Null)),
            RowExpr::Arithmetic(op, a, b) => owned(match (&*a.eval_ref(row)?, &*b.eval_ref(row)?) {
                (Datum::Null, _) | (_, Datum::Null) => Datum::Null,
                (Datum::Int(x), Datum::Int(y)) => Datum::Int(match op {
                    Arithmetic::Plus => x.wrapping_add(*y),
                    Arithmetic::Minus => x.wrapping_sub(*y),
                    Arithmetic::Multiply => x.wrapping_mul(*y),
                }),
                (a, b) => return Err(mismatch(a, b)),
            }),
            RowExpr::Case { operand, branches, otherwise } => {
                let operand = match operand {
                    Some(o) => Some(o.eval_ref(row)?),
                    None => None,
                };
                for (when, then) in branches {
                    let when = when.eval_ref(row)?;
                    let matched = match &operand {
                        // NULL equals nothing; the operand and the value are of one type.
                        Some(o) => **o != Datum::Null && *when != Datum::Null && **o == *when,
                        None => truth(&when)? == Some(true),
                    };
                    if matched {
                        return then.eval_ref(row);
                    }
                }
                match otherwise {
                    Some(e) => e.eval_ref(row),
                    None => owned(Datum::Null),
                }
            }
            RowExpr::IntToFloat(a) => owned(match &*a.eval_ref(row)? {
                Datum::Null => Datum::Null,
                Datum::Int(i) => Datum::float(Some(*i as f64)),
                d => return Err(format!("value {d:?} where a BIGINT was expected")),
            }),
            RowExpr::ToBigint(a) => owned(match &*a.eval_ref(row)? {
                Datum::Null => Datum::Null,
                Datum::Int(i) | Datum::Timestamp(i) => Datum::Int(*i),
                d => return Err(format!("value {d:?} where an integer or a timestamp was expected")),
            }),
        }
    }

    /// Adds the index of every column the expression reads (once per reference) to `out`.
    pub fn columns(&self, out: &mut Vec<usize>) {
        match self {
            RowExpr::Column(i) => out.push(*i),
            RowExpr::Literal(_) => {}
            RowExpr::Compare(_, a, b) | RowExpr::And(a, b) | RowExpr::Or(a, b) | RowExpr::Arithmetic(_, a, b) => {
                a.columns(out);
                b.columns(out);
            }
            RowExpr::Not(a)
            | RowExpr::IsNull(a)
            | RowExpr::IsNotNull(a)
            | RowExpr::IntToFloat(a)
            | RowExpr::ToBigint(a) => a.columns(out),
            RowExpr::Case { operand, branches, otherwise } => {
                for e in operand.iter().chain(otherwise) {
                    e.columns(out);
                }
                for (when, then) in branches {
                    when.columns(out);
                    then.columns(out);
                }
            }
        }
    }
}

/// A boolean's truth (`None`: NULL).
fn truth(d: &Datum) -> Result<Option<bool>, String> {
    match d {
        Datum::Null => Ok(None),
        Datum::Bool(b) => Ok(Some(*b)),
        d => Err(format!("value {d:?} where a BOOLEAN was expected")),
    }
}

fn mismatch(a: &Datum, b: &Datum) -> String {
    format!("values {a:?} and {b:?} of different kinds in one expression")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use amx_dataflows::row::{Datum, Row};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
    use datafusion::common::DFSchema;
    use datafusion::prelude::SessionContext;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use datafusion::logical_expr::Operator;
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    use datafusion::physical_expr::expressions::BinaryExpr;

    use super::RowExpr;
    use crate::plan::PhysExpr;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("t", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("small", DataType::Int32, true),
        ]))
    }

    /// `sql` as DataFusion plans it over [`schema`] (type coercion and simplification
    /// included, as a view's expressions are planned).
    fn physical(sql: &str) -> PhysExpr {
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema().as_ref().clone()).unwrap();
        let expr = ctx.parse_sql_expr(sql, &df_schema).unwrap();
        let context = SimplifyContext::builder().with_schema(Arc::new(df_schema.clone())).build();
        let expr = ExprSimplifier::new(context).simplify(expr).unwrap();
        ctx.create_physical_expr(expr, &df_schema).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A random row of [`schema`]: NULLs, extremes (so sums wrap), equal values (so
    /// comparisons are sometimes equal), empty and non-ASCII text.
    fn row(rng: &mut SmallRng) -> Row {
        let int = |rng: &mut SmallRng| match rng.random_range(0..6) {
            0 => Datum::Null,
            1 => Datum::Int(i64::MAX - rng.random_range(0..3)),
            2 => Datum::Int(i64::MIN + rng.random_range(0..3)),
            _ => Datum::Int(rng.random_range(-3..4)),
        };
        let text = |rng: &mut SmallRng| {
            ["", "x", "y", "error", "ok", "é", "Z", "x "]
                .get(rng.random_range(0..9))
                .map_or(Datum::Null, |s| Datum::Text((*s).to_owned()))
        };
        let float = match rng.random_range(0..5) {
            0 => Datum::Null,
            1 => Datum::float(Some(f64::NAN)),
            _ => Datum::float(Some(rng.random_range(-2..3) as f64 / 2.0)),
        };
        let ts = match rng.random_range(0..4) {
            0 => Datum::Null,
            _ => Datum::Timestamp(1_700_000_000_000_000 + rng.random_range(-2..3)),
        };
        let flag = match rng.random_range(0..3) {
            0 => Datum::Null,
            n => Datum::Bool(n == 1),
        };
        let small = match rng.random_range(0..4) {
            0 => Datum::Null,
            1 => Datum::Int(i64::from(i32::MAX)),
            _ => Datum::Int(rng.random_range(-2..3)),
        };
        vec![int(rng), int(rng), text(rng), text(rng), float, ts, flag, small]
    }

    /// What DataFusion computes for `expr` over the rows as one Arrow batch, read back into
    /// rows as the views read it.
    fn by_arrow(expr: &PhysExpr, rows: &[Row]) -> Vec<Datum> {
        let refs: Vec<&Row> = rows.iter().collect();
        let batch = crate::convert::rows_to_batch(&refs, &schema()).unwrap();
        let array = crate::parse::evaluate(expr, &batch).unwrap().into_array(rows.len()).unwrap();
        crate::convert::arrays_to_rows(&[array], rows.len()).unwrap().into_iter().map(|mut r| r.remove(0)).collect()
    }

    /// Every expression the row evaluator takes gives, on 2,000 random rows, exactly what
    /// DataFusion's Arrow kernels give.
    #[test]
    fn row_expressions_equal_datafusions_results() {
        let expressions = [
            "a",
            "s",
            "f",
            "ts",
            "flag",
            "1",
            "'lit'",
            "NULL",
            "a = b",
            "a <> 3",
            "a < b",
            "a <= b",
            "a > -1",
            "a >= b",
            "s = 'error'",
            "s < t",
            "s >= t",
            "ts > ts",
            "flag = true",
            "flag < flag",
            "small = 2",
            "a = b AND s = 'x'",
            "flag OR a > 0",
            "flag AND (s IS NULL OR t IS NULL)",
            "NOT flag",
            "a IS NULL",
            "s IS NOT NULL",
            "a + b",
            "a - b",
            "a * b",
            "a + 1",
            "CASE WHEN s = 'error' THEN 1 ELSE 0 END",
            "CASE WHEN flag THEN a END",
            "CASE s WHEN 'x' THEN a WHEN 'y' THEN b END",
            "CASE a WHEN b THEN 'same' ELSE 'different' END",
            "CASE WHEN a > b THEN s WHEN a < b THEN t ELSE 'equal' END",
            "coalesce(a, 0) + b",
            "coalesce(s, t, 'none')",
            "coalesce(a, b)",
            "CAST(ts AS BIGINT)",
            "CAST(a AS DOUBLE)",
            "CAST(small AS BIGINT)",
            "CAST(CAST(ts AS BIGINT) - CAST(ts AS BIGINT) AS DOUBLE)",
            "CASE WHEN s = 'error' THEN 1 ELSE 0 END + coalesce(small, 0)",
        ];
        let mut rng = SmallRng::seed_from_u64(7);
        let rows: Vec<Row> = (0..2000).map(|_| row(&mut rng)).collect();
        for sql in expressions {
            let expr = physical(sql);
            let compiled =
                RowExpr::compile(&expr, &schema()).unwrap_or_else(|| panic!("`{sql}` ({expr}) did not compile"));
            let expected = by_arrow(&expr, &rows);
            for (row, expected) in rows.iter().zip(expected) {
                assert_eq!(compiled.eval(row).unwrap(), expected, "`{sql}` on {row:?}");
            }
        }
    }

    /// What Arrow would compute otherwise than the rows' order, can fail, or is not known to
    /// the evaluator stays with Arrow.
    #[test]
    fn other_expressions_stay_with_arrow() {
        // A µs timestamp compared with a literal, which DataFusion casts to ns, is one of them.
        for sql in [
            "ts <= TIMESTAMP '2023-11-14 22:13:20'",
            "f = 0.0",
            "f < 1.5",
            "a / b",
            "a % 2",
            "upper(s)",
            "s LIKE 'x%'",
            "CAST(s AS BIGINT)",
            "f + 1.0",
        ] {
            assert_eq!(RowExpr::compile(&physical(sql), &schema()), None, "{sql}");
        }
        // Deeper than the worker threads' stacks are sure to take (built by hand: the SQL
        // parser refuses it).
        let mut deep = physical("a + 1");
        for _ in 0..100 {
            deep = Arc::new(BinaryExpr::new(deep, Operator::Plus, physical("1")));
        }
        assert_eq!(RowExpr::compile_all(&[deep], &schema()), None);
        assert!(RowExpr::compile_all(&[physical("a + 1")], &schema()).is_some());
    }
}
