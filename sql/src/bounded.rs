//! Scalar functions whose output can be far larger than their input, held to a query's memory
//! limit before they allocate.
//!
//! DataFusion's memory pool accounts for what operators hold (hash tables, sorts), not for
//! the values scalar functions make: `repeat('x', 1000000000)` makes a 1 GB string in one call,
//! and over a batch of rows many of them. [`register`] replaces such functions in a session by
//! wrappers that estimate, from their arguments, the bytes one call (one batch) would make, and
//! fail with an error naming `sql.query_memory_bytes` when that is over the limit; under it
//! they call the function itself. The estimates (per batch, in bytes):
//!
//! | function | estimate |
//! |---|---|
//! | `repeat(s, n)` | rows × longest `s` × largest `n` |
//! | `lpad(s, n[, f])`, `rpad(…)` | rows × largest `n` (characters; at least one byte each) |
//! | `array_repeat(x, n)` | rows × largest `n` × 8 |
//! | `range(…)`, `generate_series(…)` as functions making lists | rows × elements × 8 |
//!
//! The wrapper delegates every other method of [`ScalarUDFImpl`] to the function it wraps (as
//! DataFusion's own `AliasedScalarUDFImpl` does, `datafusion-expr` 55, `udf.rs`), so planning,
//! coercion and simplification are unchanged.

use datafusion::execution::FunctionRegistry;

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{ExprSchema, Result, ScalarValue, exec_err};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, StructFieldMapping,
};
use datafusion::prelude::SessionContext;

/// How a function's output size is estimated from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`.
    Repeat,
    /// `lpad`/`rpad(s, n, …)`.
    Pad,
    /// `array_repeat(x, n)`.
    ArrayRepeat,
    /// `range`/`generate_series(stop)`, `(start, stop[, step])`.
    Range,
}

/// The functions wrapped, by name.
const BOUNDED: &[(&str, Growth)] = &[
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// Replaces, in `ctx`, the functions of the table above by wrappers held to `limit` bytes a
/// call (the query's `sql.query_memory_bytes`). Functions the session lacks are skipped.
pub fn register(ctx: &SessionContext, limit: u64) {
    for (name, growth) in BOUNDED {
        if let Ok(inner) = ctx.udf(name) {
            let bounded = Bounded { inner: inner.as_ref().clone(), growth: *growth, limit };
            ctx.register_udf(ScalarUDF::new_from_impl(bounded));
        }
    }
}

/// A function held to a limit on the bytes one call makes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    limit: u64,
}

/// The largest value of an integer argument (scalar, or over the batch), 0 when none.
fn largest(arg: &ColumnarValue) -> i64 {
    match arg {
        ColumnarValue::Scalar(value) => match value.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(v))) => v,
            _ => 0,
        },
        ColumnarValue::Array(array) => match datafusion::arrow::compute::cast(array, &DataType::Int64) {
            Ok(cast) => datafusion::arrow::compute::max(cast.as_primitive::<Int64Type>()).unwrap_or(0),
            Err(_) => 0,
        },
    }
}

/// The longest value, in bytes, of a string argument.
fn longest(arg: &ColumnarValue) -> u64 {
    let array: ArrayRef = match arg {
        ColumnarValue::Scalar(value) => match value.to_array_of_size(1) {
            Ok(a) => a,
            Err(_) => return 0,
        },
        ColumnarValue::Array(array) => array.clone(),
    };
    match datafusion::arrow::compute::kernels::length::length(&array) {
        Ok(lengths) => match datafusion::arrow::compute::cast(&lengths, &DataType::Int64) {
            Ok(cast) => datafusion::arrow::compute::max(cast.as_primitive::<Int64Type>()).unwrap_or(0).max(0) as u64,
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

impl Bounded {
    /// The bytes one call over `args` (a batch of `rows`) is estimated to make.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> u64 {
        let rows = rows.max(1) as u64;
        let count = |i: usize| args.get(i).map_or(0, largest).max(0) as u64;
        let per_row = match self.growth {
            Growth::Repeat => args.first().map_or(0, longest).saturating_mul(count(1)),
            Growth::Pad => count(1),
            Growth::ArrayRepeat => count(1).saturating_mul(8),
            Growth::Range => {
                let (start, stop, step) = match args.len() {
                    1 => (0, args.first().map_or(0, largest), 1),
                    2 => (args.first().map_or(0, largest), args.get(1).map_or(0, largest), 1),
                    _ => (
                        args.first().map_or(0, largest),
                        args.get(1).map_or(0, largest),
                        args.get(2).map_or(1, largest),
                    ),
                };
                let span = (i128::from(stop) - i128::from(start)).unsigned_abs();
                let step = i128::from(step).unsigned_abs().max(1);
                u64::try_from(span / step + 1).unwrap_or(u64::MAX).saturating_mul(8)
            }
        };
        per_row.saturating_mul(rows)
    }
}

#[warn(clippy::missing_trait_methods)] // Delegates, so it implements every trait method.
impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.estimate(&args.args, args.number_rows);
        if bytes > self.limit {
            return exec_err!(
                "{}(…) would make about {bytes} bytes over {} rows, more than the query's memory limit of {} bytes \
                 (sql.query_memory_bytes): ask for less, or raise sql.query_memory_bytes",
                self.inner.name(),
                args.number_rows,
                self.limit
            );
        }
        self.inner.inner().invoke_with_args(args)
    }

    fn with_updated_config(&self, _config: &datafusion::common::config::ConfigOptions) -> Option<ScalarUDF> {
        None
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn preimage(&self, args: &[Expr], lit_expr: &Expr, info: &SimplifyContext) -> Result<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> Result<Option<Vec<Interval>>> {
        self.inner.inner().propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(ctx: &SessionContext, sql: &str) -> Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    #[tokio::test]
    async fn big_outputs_are_refused_before_they_are_made_and_small_ones_answered() {
        let ctx = SessionContext::new();
        register(&ctx, 1_000_000);
        for sql in [
            "SELECT length(repeat('x', 1000000000)) AS n",
            "SELECT length(repeat('ab', 600000)) AS n",
            "SELECT length(lpad('x', 2000000)) AS n",
            "SELECT cardinality(array_repeat(1, 1000000)) AS n",
            "SELECT cardinality(range(1, 1000000000)) AS n",
            // 20 KB a row is little, but over a batch of 100 rows it is 2 MB.
            "SELECT sum(length(repeat('x', 20000 + v / 1000))) AS n FROM generate_series(1, 100) AS t(v)",
        ] {
            let e = answer(&ctx, sql).await.expect_err(sql).to_string();
            assert!(e.contains("sql.query_memory_bytes"), "{sql}: {e}");
        }
        // Within the limit: the functions themselves answer (lengths computed by hand).
        let text = answer(
            &ctx,
            "SELECT length(repeat('ab', 3)) AS a, lpad('7', 3, '0') AS b, rpad('x', 2, '-') AS c, \
                                 cardinality(range(1, 11)) AS d, cardinality(array_repeat('z', 4)) AS e",
        )
        .await
        .expect("answered");
        assert!(text.contains("| 6 | 007 | x- | 10 | 4 |"), "{text}");
        let text =
            answer(&ctx, "SELECT count(*) AS n FROM generate_series(1, 5000000)").await.expect("a table function");
        assert!(text.contains("5000000"), "{text}");
    }
}
