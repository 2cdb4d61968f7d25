//! `min`, `max`, `sum` and `avg` for plain queries with the same semantics as the views.
//!
//! DataFusion 55's own versions disagree with the views (and with themselves) on edge cases:
//! its grouped `max`/`min` over floats compare with `partial_cmp` and let a NaN be replaced by
//! any later value (`max` of NaN, 4, 9 is NaN without `GROUP BY` but 9 with it), its float
//! `sum`/`avg` add in row order (so `{-1e31, 1e31, 3}` sums to 0 or 3 depending on the order),
//! and its integer `sum` wraps on overflow. [`register`] replaces the four functions in a
//! session with wrappers around DataFusion's that keep its behaviour for every other type and
//! compute, for these argument types, exactly what [`crate::render`] computes in a view:
//!
//! - `min`/`max` of `REAL`/`DOUBLE`: PostgreSQL's order ([`amx_operators::float::pg_cmp`]:
//!   NaN greater than every other value, `-0.0 = 0.0`); the result is canonical (`0.0`, one NaN).
//! - `sum`/`avg` of `DOUBLE` (and of integers for `avg`, which DataFusion casts to `DOUBLE`):
//!   the exact sum, rounded once ([`amx_operators::float::ExactSum`]).
//! - `sum` of `BIGINT` (and `BIGINT UNSIGNED`): exact in `i128`; a result outside the type is
//!   the error `integer overflow in sum (BIGINT): …`, never a wrapped number.
//!
//! The wrappers keep DataFusion's names (so plans, column names and the view planner see
//! `max`, `sum`, …), signatures, type coercions and return types. For the types above they use
//! their own accumulators (DataFusion wraps them for `GROUP BY`) and skip DataFusion's shortcuts
//! that would bypass them: statistics-based answers, the top-k aggregation (`is_descending`) and
//! the `sum(x + c)` → `sum(x) + c·count(x)` rewrite.

use std::collections::BTreeSet;
use std::sync::Arc;

use amx_operators::float::{ExactSum, canonical, pg_cmp};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::functions_aggregate::{average, min_max, sum};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams, WindowFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs};
use datafusion::logical_expr::utils::{AggregateOrderSensitivity, format_state_name};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Expr, GroupsAccumulator, Operator, ReversedUDAF,
    SetMonotonicity, Signature, StatisticsArgs,
};
use datafusion::prelude::SessionContext;
use ordered_float::OrderedFloat;

/// Replaces `min`, `max`, `sum` and `avg` (alias `mean`) in `ctx` (see the module doc).
pub fn register(ctx: &SessionContext) {
    for (kind, inner) in [
        (Kind::Min, min_max::min_udaf()),
        (Kind::Max, min_max::max_udaf()),
        (Kind::Sum, sum::sum_udaf()),
        (Kind::Avg, average::avg_udaf()),
    ] {
        ctx.register_udaf(AggregateUDF::from(Wrapped { kind, inner }));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Min,
    Max,
    Sum,
    Avg,
}

/// What a wrapper computes itself for one argument type (`None`: DataFusion's accumulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    /// `min`/`max` in PostgreSQL's float order.
    MinMax { max: bool },
    /// Exact float `sum` (`mean`: `avg`).
    Float { mean: bool },
    /// `sum` of integers in `i128`, checked against the result type.
    Int { unsigned: bool },
}

/// One of DataFusion's aggregate functions with some argument types computed by AIMatrix.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Wrapped {
    kind: Kind,
    inner: Arc<AggregateUDF>,
}

impl Wrapped {
    /// What this function computes itself, given its (coerced) argument and result types.
    fn own(&self, arg: &DataType, result: &DataType) -> Option<Own> {
        use DataType::*;
        match (self.kind, arg, result) {
            (Kind::Min | Kind::Max, Float16 | Float32 | Float64, _) => {
                Some(Own::MinMax { max: self.kind == Kind::Max })
            }
            (Kind::Sum, Float64, Float64) => Some(Own::Float { mean: false }),
            (Kind::Avg, Float64, Float64) => Some(Own::Float { mean: true }),
            (Kind::Sum, Int64, Int64) => Some(Own::Int { unsigned: false }),
            (Kind::Sum, UInt64, UInt64) => Some(Own::Int { unsigned: true }),
            _ => None,
        }
    }

    fn own_for(&self, args: &AccumulatorArgs) -> Option<Own> {
        let arg = args.expr_fields.first().map_or(args.return_type(), |f| f.data_type());
        self.own(arg, args.return_type())
    }

    fn imp(&self) -> &dyn AggregateUDFImpl {
        self.inner.inner().as_ref()
    }
}

impl AggregateUDFImpl for Wrapped {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.imp().schema_name(params)
    }
    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.imp().human_display(params)
    }
    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.imp().window_function_schema_name(params)
    }
    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.imp().display_name(params)
    }
    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.imp().window_function_display_name(params)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.imp().return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.imp().return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.imp().is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let out = args.return_type().clone();
        Ok(match (self.own_for(&args), args.is_distinct) {
            (None, _) => return self.imp().accumulator(args),
            (Some(Own::MinMax { max }), _) => Box::new(MinMaxAcc { max, value: None, out }),
            (Some(own), true) => Box::new(DistinctAcc { own, out, values: BTreeSet::new() }),
            (Some(Own::Float { mean }), false) => Box::new(FloatSumAcc { mean, sum: ExactSum::new(), count: 0 }),
            (Some(Own::Int { unsigned }), false) => Box::new(IntSumAcc { unsigned, sum: 0, count: 0 }),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let arg = args.input_fields.first().map_or(args.return_type(), |f| f.data_type());
        let field = |suffix: &str, ty: DataType| -> FieldRef {
            Arc::new(Field::new(format_state_name(args.name, suffix), ty, true))
        };
        Ok(match (self.own(arg, args.return_type()), args.is_distinct) {
            (None, _) => return self.imp().state_fields(args),
            (Some(Own::MinMax { .. }), _) => vec![field("value", args.return_type().clone())],
            (Some(_), true) => vec![Arc::new(Field::new_list(
                format_state_name(args.name, "distinct"),
                Field::new_list_field(arg.clone(), true),
                true,
            ))],
            (Some(_), false) => vec![field("exact", DataType::Binary)],
        })
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        // Ours are plain accumulators: DataFusion adapts them to groups.
        self.own_for(&args).is_none() && self.imp().groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        self.imp().create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let out = args.return_type().clone();
        match (self.own_for(&args), args.is_distinct) {
            (Some(Own::MinMax { max }), _) => Ok(Box::new(SlidingMinMaxAcc { max, values: Default::default(), out })),
            (Some(Own::Float { .. } | Own::Int { .. }), false) => self.accumulator(args),
            _ => self.imp().create_sliding_accumulator(args),
        }
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.imp().order_sensitivity()
    }
    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.imp().simplify()
    }
    fn simplify_expr_op_literal(
        &self,
        _agg_function: &AggregateFunction,
        _arg: &Expr,
        _op: Operator,
        _lit: &Expr,
        _arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        // Not `sum(x + c)` → `sum(x) + c·count(x)`: an exact sum of x + c is not that.
        Ok(None)
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        self.imp().reverse_expr()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.imp().coerce_types(arg_types)
    }
    fn is_descending(&self) -> Option<bool> {
        // Enables DataFusion's top-k aggregation, whose own comparisons bypass ours.
        None
    }
    fn value_from_stats(&self, args: &StatisticsArgs) -> Option<ScalarValue> {
        // For these four, the argument type is the result type wherever `own` applies.
        if self.own(args.return_type, args.return_type).is_some() {
            return None;
        }
        self.imp().value_from_stats(args)
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.imp().default_value(data_type)
    }
    fn supports_null_handling_clause(&self) -> bool {
        self.imp().supports_null_handling_clause()
    }
    fn supports_within_group_clause(&self) -> bool {
        self.imp().supports_within_group_clause()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.imp().documentation()
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.imp().set_monotonicity(data_type)
    }
}

/// `array` as `Float64` (exact for every float type).
fn as_f64(array: &ArrayRef) -> Result<ArrayRef> {
    Ok(if array.data_type() == &DataType::Float64 { Arc::clone(array) } else { cast(array, &DataType::Float64)? })
}

/// A float as a scalar of the result type (exact: the value came from that type).
fn float_scalar(v: Option<f64>, out: &DataType) -> Result<ScalarValue> {
    let v = ScalarValue::Float64(v.map(canonical));
    if out == &DataType::Float64 { Ok(v) } else { v.cast_to(out) }
}

/// `min`/`max` of floats in PostgreSQL's order.
#[derive(Debug)]
struct MinMaxAcc {
    max: bool,
    value: Option<f64>,
    out: DataType,
}

impl Accumulator for MinMaxAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = as_f64(&values[0])?;
        let want = if self.max { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less };
        for v in array.as_primitive::<Float64Type>().iter().flatten() {
            if self.value.is_none_or(|cur| pg_cmp(v, cur) == want) {
                self.value = Some(canonical(v));
            }
        }
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        float_scalar(self.value, &self.out)
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// `min`/`max` of floats over a window frame: the frame's values with their counts.
#[derive(Debug)]
struct SlidingMinMaxAcc {
    max: bool,
    values: std::collections::BTreeMap<OrderedFloat<f64>, i64>,
    out: DataType,
}

impl SlidingMinMaxAcc {
    fn apply(&mut self, values: &ArrayRef, n: i64) -> Result<()> {
        let array = as_f64(values)?;
        for v in array.as_primitive::<Float64Type>().iter().flatten() {
            // OrderedFloat's order is PostgreSQL's (NaN greatest, -0.0 = 0.0).
            let count = self.values.entry(OrderedFloat(canonical(v))).or_insert(0);
            *count += n;
            if *count <= 0 {
                self.values.remove(&OrderedFloat(canonical(v)));
            }
        }
        Ok(())
    }
}

impl Accumulator for SlidingMinMaxAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], 1)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], -1)
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let v = if self.max { self.values.keys().next_back() } else { self.values.keys().next() };
        float_scalar(v.map(|v| v.0), &self.out)
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.len() * 24
    }
}

/// Exact float `sum` or `avg`; the state is `count` (8 bytes) then the [`ExactSum`] bytes.
#[derive(Debug)]
struct FloatSumAcc {
    mean: bool,
    sum: ExactSum,
    count: i64,
}

impl FloatSumAcc {
    fn apply(&mut self, values: &ArrayRef, n: i64) -> Result<()> {
        let array = as_f64(values)?;
        for v in array.as_primitive::<Float64Type>().iter().flatten() {
            self.sum.add(v, n);
            self.count += n;
        }
        Ok(())
    }
}

impl Accumulator for FloatSumAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], 1)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], -1)
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for bytes in states[0].as_binary::<i32>().iter().flatten() {
            let parsed = bytes.split_at_checked(8).and_then(|(count, sum)| {
                Some((i64::from_le_bytes(count.try_into().ok()?), ExactSum::from_bytes(sum)?))
            });
            let Some((count, sum)) = parsed else {
                return exec_err!("malformed exact-sum state");
            };
            self.count += count;
            self.sum.merge(&sum);
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut bytes = self.count.to_le_bytes().to_vec();
        bytes.extend(self.sum.to_bytes());
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(match self.count {
            n if n <= 0 => None,
            n if self.mean => Some(self.sum.mean(n as u64)),
            _ => Some(self.sum.sum()),
        }))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sum.to_bytes().len()
    }
}

/// The checked result of an integer sum.
fn int_result(sum: i128, unsigned: bool) -> Result<ScalarValue> {
    if unsigned {
        match u64::try_from(sum) {
            Ok(v) => Ok(ScalarValue::UInt64(Some(v))),
            Err(_) => exec_err!("integer overflow in sum (BIGINT UNSIGNED): {sum}"),
        }
    } else {
        match i64::try_from(sum) {
            Ok(v) => Ok(ScalarValue::Int64(Some(v))),
            Err(_) => exec_err!("integer overflow in sum (BIGINT): {sum}"),
        }
    }
}

/// `sum` of integers, exact in `i128`; the state is `count` then `sum` (8 + 16 bytes).
#[derive(Debug)]
struct IntSumAcc {
    unsigned: bool,
    sum: i128,
    count: i64,
}

impl IntSumAcc {
    fn apply(&mut self, values: &ArrayRef, n: i64) -> Result<()> {
        let add = |acc: &mut Self, v: i128| {
            acc.sum += v * i128::from(n);
            acc.count += n;
        };
        if self.unsigned {
            let array = cast(values, &DataType::UInt64)?;
            array.as_primitive::<UInt64Type>().iter().flatten().for_each(|v| add(self, v.into()));
        } else {
            let array = cast(values, &DataType::Int64)?;
            array.as_primitive::<Int64Type>().iter().flatten().for_each(|v| add(self, v.into()));
        }
        Ok(())
    }
}

impl Accumulator for IntSumAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], 1)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.apply(&values[0], -1)
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for bytes in states[0].as_binary::<i32>().iter().flatten() {
            let (Some(count), Some(sum)) = (bytes.get(..8), bytes.get(8..24)) else {
                return exec_err!("malformed integer-sum state");
            };
            self.count += i64::from_le_bytes(count.try_into().expect("8 bytes"));
            self.sum += i128::from_le_bytes(sum.try_into().expect("16 bytes"));
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut bytes = self.count.to_le_bytes().to_vec();
        bytes.extend(self.sum.to_le_bytes());
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.count <= 0 {
            return ScalarValue::try_from(if self.unsigned { &DataType::UInt64 } else { &DataType::Int64 });
        }
        int_result(self.sum, self.unsigned)
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// `sum(DISTINCT …)` / `avg(DISTINCT …)`: the distinct values (floats canonical, integers
/// widened); the state is the list of them.
#[derive(Debug)]
struct DistinctAcc {
    own: Own,
    out: DataType,
    values: BTreeSet<Distinct>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Distinct {
    Float(OrderedFloat<f64>),
    Int(i128),
}

impl Accumulator for DistinctAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match self.own {
            Own::Int { unsigned: true } => {
                let array = cast(&values[0], &DataType::UInt64)?;
                self.values
                    .extend(array.as_primitive::<UInt64Type>().iter().flatten().map(|v| Distinct::Int(v.into())));
            }
            Own::Int { unsigned: false } => {
                let array = cast(&values[0], &DataType::Int64)?;
                self.values.extend(array.as_primitive::<Int64Type>().iter().flatten().map(|v| Distinct::Int(v.into())));
            }
            _ => {
                let array = as_f64(&values[0])?;
                let floats = array.as_primitive::<Float64Type>().iter().flatten();
                self.values.extend(floats.map(|v| Distinct::Float(OrderedFloat(canonical(v)))));
            }
        }
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for list in lists.iter().flatten() {
            self.update_batch(&[list])?;
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (values, ty): (Vec<ScalarValue>, DataType) = match self.own {
            Own::Int { unsigned } => {
                let ty = if unsigned { DataType::UInt64 } else { DataType::Int64 };
                let values = self
                    .values
                    .iter()
                    .filter_map(|d| match d {
                        // Every distinct value came from the argument type, so it fits it.
                        Distinct::Int(v) if unsigned => u64::try_from(*v).ok().map(|v| ScalarValue::UInt64(Some(v))),
                        Distinct::Int(v) => i64::try_from(*v).ok().map(|v| ScalarValue::Int64(Some(v))),
                        Distinct::Float(_) => None,
                    })
                    .collect();
                (values, ty)
            }
            _ => {
                let values = self
                    .values
                    .iter()
                    .filter_map(|d| match d {
                        Distinct::Float(v) => Some(ScalarValue::Float64(Some(v.0))),
                        Distinct::Int(_) => None,
                    })
                    .collect();
                (values, DataType::Float64)
            }
        };
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(&values, &ty))])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.values.is_empty() {
            return ScalarValue::try_from(&self.out);
        }
        match self.own {
            Own::Int { unsigned } => {
                let sum: i128 = self.values.iter().map(|d| if let Distinct::Int(v) = d { *v } else { 0 }).sum();
                int_result(sum, unsigned)
            }
            Own::Float { mean } => {
                let mut sum = ExactSum::new();
                for d in &self.values {
                    if let Distinct::Float(v) = d {
                        sum.add(v.0, 1);
                    }
                }
                let n = self.values.len() as u64;
                Ok(ScalarValue::Float64(Some(if mean { sum.mean(n) } else { sum.sum() })))
            }
            Own::MinMax { .. } => exec_err!("min/max do not use a distinct accumulator"),
        }
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.len() * 24
    }
}
