//! Temporal filters: `WHERE t > now() - INTERVAL '…'` in a materialized view.
//!
//! In a view, `now()` is the engine's clock: the dataflow timestamp, which the runtime
//! advances with wall-clock time (milliseconds since the Unix epoch). A row passes
//! `t > now() - i` while `now < t + i`; the filter therefore emits each row at the time it
//! arrives and its retraction at the first timestamp where the condition fails, so the row
//! leaves the view when it ages out — nothing is re-evaluated as time passes.

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{BinaryExpr, Operator};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, expr::ScalarFunction,
};

/// `now()` / `current_timestamp` for views: volatile, so DataFusion's optimizer keeps it in
/// the plan (its batch `now()` is folded to a constant at planning time) and the planner can
/// turn the predicate into a temporal filter. Evaluating it outside a temporal filter is an
/// error.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EngineNow {
    signature: Signature,
    aliases: Vec<String>,
}

impl EngineNow {
    /// The function, as a UDF to register (it replaces DataFusion's `now`).
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(EngineNow {
            signature: Signature::nullary(Volatility::Volatile),
            aliases: vec!["current_timestamp".to_owned()],
        })
    }
}

impl ScalarUDFImpl for EngineNow {
    fn name(&self) -> &str {
        "now"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())))
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(DataFusionError::Plan(
            "in a materialized view, now() may only appear as `t > now() - INTERVAL '…'` (a temporal filter)".into(),
        ))
    }
}

/// Whether `expr` calls `now()`.
pub fn mentions_now(expr: &Expr) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = false;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && f.name() == "now"
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A recognised temporal predicate: `time > now() - interval` (`inclusive`: `>=`).
#[derive(Clone, Debug)]
pub struct TemporalPredicate {
    /// The compared time expression.
    pub time: Expr,
    /// The interval (µs).
    pub interval_us: i64,
    /// `>=` rather than `>`.
    pub inclusive: bool,
}

fn interval_us(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(v.days as i64 * 86_400_000_000 + v.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => Some(v.days as i64 * 86_400_000_000 + v.milliseconds as i64 * 1000),
        _ => None,
    }
}

fn strip_cast(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_cast(&c.expr),
        Expr::TryCast(c) => strip_cast(&c.expr),
        e => e,
    }
}

/// `now() - INTERVAL '…'` → the interval in µs.
fn now_minus(e: &Expr) -> Option<i64> {
    let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) = strip_cast(e) else { return None };
    let Expr::ScalarFunction(ScalarFunction { func, args }) = strip_cast(left) else { return None };
    if func.name() != "now" || !args.is_empty() {
        return None;
    }
    match strip_cast(right) {
        Expr::Literal(v, _) => interval_us(v),
        _ => None,
    }
}

/// Recognises `t > now() - i`, `t >= now() - i`, `now() - i < t` and `now() - i <= t`.
pub fn temporal_predicate(e: &Expr) -> Option<TemporalPredicate> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else { return None };
    let (time, interval_us, inclusive) = match op {
        Operator::Gt | Operator::GtEq => (left.as_ref().clone(), now_minus(right)?, *op == Operator::GtEq),
        Operator::Lt | Operator::LtEq => (right.as_ref().clone(), now_minus(left)?, *op == Operator::LtEq),
        _ => return None,
    };
    if mentions_now(&time) {
        return None;
    }
    Some(TemporalPredicate { time, interval_us, inclusive })
}

/// The first engine timestamp (ms) at which a row with time `t_us` no longer passes the
/// predicate: `now < t + i` fails once `now·1000 ≥ t + i` (with `>=`: once `now·1000 > t + i`).
pub fn expiry_ms(t_us: i64, interval_us: i64, inclusive: bool) -> u64 {
    let end = t_us.saturating_add(interval_us);
    let ms =
        if inclusive { end.div_euclid(1000) + 1 } else { end.div_euclid(1000) + i64::from(end.rem_euclid(1000) != 0) };
    ms.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::expiry_ms;

    #[test]
    fn expiry_is_the_first_failing_millisecond() {
        // t = 10.0005 s, i = 1 s: passes while now < 11.0005 s, so at 11000 ms, fails at 11001 ms.
        assert_eq!(expiry_ms(10_000_500, 1_000_000, false), 11_001);
        // Exactly on a millisecond: t + i = 11 s; `>` fails at 11000 ms, `>=` at 11001 ms.
        assert_eq!(expiry_ms(10_000_000, 1_000_000, false), 11_000);
        assert_eq!(expiry_ms(10_000_000, 1_000_000, true), 11_001);
    }
}
