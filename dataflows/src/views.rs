//! The built-in views: differential dataflows over the canonical relations.
//!
//! Every view is keyed; its input is exchanged by that key, so each worker maintains the keys
//! that hash to it, and an event changes only the keys it touches. Each function takes the
//! input collections and returns the view's collection (one row per key); the exact meaning
//! of every column is on the row struct.
//!
//! Aggregates that can be inverted (counts, sums) use differential's data-in-the-diff idiom
//! (`explode` + `count_total`): a retraction subtracts, nothing is recomputed. Aggregates that
//! cannot (min, max, latest, percentiles) use `reduce`, which revisits only the changed keys.
//!
//! Integer sums (tokens, `size_bytes`, retries) are carried exactly in `i128` (no intermediate
//! sum can overflow: fewer than 2⁶³ records of at most 2⁶³ each stay below 2¹²⁶). A result
//! outside `BIGINT` is never wrapped: the column is NULL and the view's [`Errors`] get a row
//! `[view, "integer overflow in COLUMN (BIGINT): VALUE (key (…))"]`, which the runtime shows
//! in `aimatrix_view_errors`. Float means are exact ([`amx_operators::float::ExactSum`]).

use amx_operators::float::ExactSum;
use differential_dataflow::VecCollection;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use ordered_float::OrderedFloat;
use serde::{Deserialize, Serialize};

use crate::event::{
    Evaluation, KnowledgeEvent, KnowledgeOp, Span, SpanStatus, TimestampUs, TraceId, WorkflowEvent, WorkflowState,
};
use crate::packed::PackedRow;
use crate::prices::{self, Applicable, PriceRow, Tokens};
use crate::row::{ColumnType::*, Datum, RelationDesc, Row, ToRow, desc};
use crate::{Diff, Time};

/// A collection of the dataflow's timestamp and difference types.
pub type Coll<'s, D> = VecCollection<'s, Time, D, Diff>;

/// Error rows of built-in views, `[view TEXT, error TEXT]` (the rows of `aimatrix_view_errors`):
/// one per key and column whose value does not fit its type.
pub type Errors<'s> = Coll<'s, Row>;

/// Columns of a row whose exact sum left `BIGINT`: `(column, exact sum)`.
type Overflows = Vec<(String, i128)>;

/// An exact sum as a `BIGINT`, or `None` (and the overflow noted) when it does not fit.
fn bigint(sum: i128, column: &str, overflows: &mut Overflows) -> Option<i64> {
    let narrow = i64::try_from(sum).ok();
    if narrow.is_none() {
        overflows.push((column.to_owned(), sum));
    }
    narrow
}

/// A count of records as a `BIGINT` (fewer than 2⁶³ records: it always fits).
fn count(n: i128) -> i64 {
    n.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// The error row of one overflowing column; `key` is the key as SQL-ish text, `('a', NULL)`.
fn overflow_row(view: &str, key: &str, (column, sum): (String, i128)) -> Row {
    vec![Datum::Text(view.to_owned()), Datum::Text(format!("integer overflow in {column} (BIGINT): {sum} (key {key})"))]
}

/// A key as SQL-ish text: `('a', NULL)`.
fn key_text(parts: &[Option<&str>]) -> String {
    let parts: Vec<String> =
        parts.iter().map(|p| p.map_or("NULL".to_owned(), |s| format!("'{}'", s.replace('\'', "''")))).collect();
    format!("({})", parts.join(", "))
}

/// Eight exact counters carried in the difference (counts and sums of the views that use
/// `count_total`); see the module doc for why `i128` cannot overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Wide([i128; 8]);

impl IsZero for Wide {
    fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }
}

impl Semigroup for Wide {
    fn plus_equals(&mut self, rhs: &Self) {
        self.0.iter_mut().zip(rhs.0).for_each(|(a, b)| *a += b);
    }
}

impl Monoid for Wide {
    fn zero() -> Self {
        Wide([0; 8])
    }
}

impl Abelian for Wide {
    fn negate(&mut self) {
        self.0.iter_mut().for_each(|v| *v = -*v);
    }
}

impl Multiply<Diff> for Wide {
    type Output = Wide;
    fn multiply(mut self, rhs: &Diff) -> Wide {
        self.0.iter_mut().for_each(|v| *v *= *rhs as i128);
        self
    }
}

/// `(value, 1)` for a known value, `(0, 0)` for NULL: a sum that can tell "all NULL" from 0.
fn nullable(v: Option<i64>) -> (i128, i128) {
    v.map_or((0, 0), |v| (v.into(), 1))
}

/// A nullable sum `(sum, non-NULL count)` as a `BIGINT`: NULL when no value was known or
/// when the sum does not fit (noted in `overflows`).
fn sum_or_null(sum: i128, non_null: i128, column: &str, overflows: &mut Overflows) -> Option<i64> {
    if non_null > 0 { bigint(sum, column, overflows) } else { None }
}

// ---------------------------------------------------------------------------------------------
// agent_traces

/// A row of `agent_traces`: one per trace with at least one span.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentTrace {
    /// Key.
    pub trace_id: TraceId,
    /// The smallest non-NULL `agent_name` of the trace's spans (NULL when none has one).
    pub agent_name: Option<String>,
    /// Number of spans.
    pub spans: i64,
    /// Spans whose operation is a model call (`chat`, `text_completion`, `generate_content`).
    pub llm_calls: i64,
    /// `execute_tool` spans.
    pub tool_calls: i64,
    /// `execute_tool` spans with status `error`.
    pub tool_errors: i64,
    /// Sum of `input_tokens` (tokens); NULL when every span's is NULL.
    pub input_tokens: Option<i64>,
    /// Sum of `output_tokens` (tokens); NULL when every span's is NULL.
    pub output_tokens: Option<i64>,
    /// Earliest span `start_time` (µs, UTC).
    pub start_time: Option<TimestampUs>,
    /// Latest span `end_time` (µs, UTC).
    pub end_time: Option<TimestampUs>,
    /// `error` if any span failed, else `ok` if any span is ok, else `unset`.
    pub status: SpanStatus,
    /// Mean of the non-NULL scores of the trace's evaluations; NULL when there are none.
    pub eval_score: Option<OrderedFloat<f64>>,
    /// What the trace's model calls cost (USD): the sum of its spans' `span_costs.cost_usd`;
    /// NULL when none of its spans is priced.
    pub cost_usd: Option<OrderedFloat<f64>>,
}

impl ToRow for AgentTrace {
    fn desc() -> RelationDesc {
        desc(
            "agent_traces",
            &["trace_id"],
            &[
                ("trace_id", Text),
                ("agent_name", Text),
                ("spans", Int),
                ("llm_calls", Int),
                ("tool_calls", Int),
                ("tool_errors", Int),
                ("input_tokens", Int),
                ("output_tokens", Int),
                ("start_time", Timestamp),
                ("end_time", Timestamp),
                ("status", Text),
                ("eval_score", Float),
                ("cost_usd", Float),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.trace_id.to_string()),
            Datum::text(self.agent_name.as_deref()),
            Datum::Int(self.spans),
            Datum::Int(self.llm_calls),
            Datum::Int(self.tool_calls),
            Datum::Int(self.tool_errors),
            Datum::int(self.input_tokens),
            Datum::int(self.output_tokens),
            Datum::ts(self.start_time),
            Datum::ts(self.end_time),
            Datum::Text(self.status.as_str().to_owned()),
            Datum::float(self.eval_score.map(|s| s.0)),
            Datum::float(self.cost_usd.map(|s| s.0)),
        ]
    }
}

/// What `agent_traces` keeps of a span or an evaluation (projection before the arrangement).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
enum TraceItem {
    Span {
        agent: Option<String>,
        llm: bool,
        tool: bool,
        status: SpanStatus,
        input: Option<i64>,
        output: Option<i64>,
        start: Option<i64>,
        end: Option<i64>,
    },
    Eval(Option<OrderedFloat<f64>>),
    /// A priced span's cost (pico-USD).
    Cost(i128),
}

/// Adds `v · n` (exactly) to an optional sum that stays NULL until a non-NULL value arrives.
fn add_opt(acc: &mut Option<i128>, v: Option<i64>, n: i64) {
    if let Some(v) = v {
        *acc = Some(acc.unwrap_or(0) + i128::from(v) * i128::from(n));
    }
}

/// What each span view keeps of a span. [`split_spans`] moves every field of a span into
/// the one part that needs it, so a span is not copied once per view.
pub(crate) struct SpanParts<'s> {
    traces: Coll<'s, (TraceId, TraceItem)>,
    tools: Coll<'s, ToolCall>,
    models: Coll<'s, ModelCall>,
    priced: Coll<'s, (PriceShard, PricedCall)>,
    /// The `(provider, model)` pairs the priced calls name: each once per worker, at its first
    /// call there, and never retracted (a pair whose calls are all retracted keeps its price
    /// list, which then prices nothing).
    named: Coll<'s, PriceKey>,
}

/// What a call is priced by: `(provider, model)`, the model being `response_model`, else
/// `request_model` (see [`prices`]).
type PriceKey = (Option<String>, String);

/// Shards of each [`PriceKey`]'s calls: the priced calls are arranged by `(key, shard)` (the
/// shard a hash of the span id), and each key's prices copied to every shard, so that the
/// calls of one popular model spread over the workers rather than landing on one.
const PRICE_SHARDS: u8 = 64;

/// What the priced calls are arranged by: a hash of their [`PriceKey`] (see [`key_hashes`])
/// and their shard (see [`PRICE_SHARDS`]) — integers, which sort and move faster than the
/// key's texts.
type PriceShard = (u64, u8);

/// Two independent 64-bit hashes of a [`PriceKey`] (owned, or borrowed as `(Option<&str>,
/// &str)`: `Hash` gives both the same): the first is what calls are arranged by, the second
/// (kept with each call and each price list) tells apart two keys whose first hashes collide,
/// so a call is priced by its own key's list (unless both hashes collide).
fn key_hashes<K: std::hash::Hash>(key: &K) -> (u64, u64) {
    (hash(key), hash(&(key, 0x9e37_79b9_7f4a_7c15_u64)))
}

/// What pricing keeps of a span that names a model and a token count (its provider and the
/// model priced are its [`PriceKey`], known by its hashes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct PricedCall {
    /// A hash of the span id: first, so that sorting the calls of one key compares integers.
    span_hash: u64,
    /// The second of [`key_hashes`].
    key_check: u64,
    trace_id: TraceId,
    span_id: String,
    /// The span's `request_model` (its `model_usage` key's second part) when it is not the
    /// model priced; `None` when it is.
    request_model: Option<Option<String>>,
    start: Option<TimestampUs>,
    /// Input, cached input, output and reasoning tokens; -1: NULL.
    tokens: [i64; 4],
}

impl PricedCall {
    fn tokens(&self) -> Tokens {
        let count = |v: i64| (v >= 0).then_some(v);
        let [input, cached_input, output, reasoning] = self.tokens.map(count);
        Tokens { input, cached_input, output, reasoning }
    }
}

/// A tool call: `(tool_name, trace_id, failed)`.
type ToolCall = (Option<String>, TraceId, bool);

/// A `model_usage` key: `(provider, request_model)`.
type UsageKey = (Option<String>, Option<String>);

/// A model call: `((provider, request_model), failed, input_tokens, output_tokens, latency_us)`.
type ModelCall = (UsageKey, bool, Option<i64>, Option<i64>, Option<i64>);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
enum SpanPart {
    Trace(TraceId, TraceItem),
    Tool(ToolCall),
    Model(ModelCall),
    /// Boxed: the other parts stay small.
    Priced(Box<(PriceShard, PricedCall)>),
    Named(PriceKey),
}

/// Routes each span's parts to the span views with one `flat_map` and a `partition`.
pub(crate) fn split_spans<'s>(spans: Coll<'s, Span>) -> SpanParts<'s> {
    use differential_dataflow::AsCollection;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::core::{Map, Partition};

    // The pairs this worker has named (see [`SpanParts::named`]), by their hashes.
    let mut named = std::collections::HashSet::<(u64, u64)>::new();
    let parts = spans
        .inner
        .flat_map::<Vec<(u64, (SpanPart, Time, Diff))>, _, _>(move |(s, time, diff): (Span, Time, Diff)| {
            let (llm, tool) = (s.is_llm_call(), s.is_tool_call());
            let failed = s.status == SpanStatus::Error;
            let mut out = Vec::with_capacity(4);
            if s.provider.is_some() || s.request_model.is_some() {
                let latency = match (s.start_time, s.end_time) {
                    (Some(a), Some(b)) => b.checked_sub(a),
                    _ => None,
                };
                let tokens = [s.input_tokens, s.cache_read_input_tokens, s.output_tokens, s.reasoning_output_tokens];
                if let Some(model) = s.response_model.as_ref().or(s.request_model.as_ref())
                    && tokens.iter().any(Option::is_some)
                {
                    let span_hash = hash(&s.span_id);
                    // The key's hashes, from borrowed texts (hashed as the owned key is).
                    let hashes @ (key_hash, key_check) = key_hashes(&(s.provider.as_deref(), model.as_str()));
                    let call = PricedCall {
                        span_hash,
                        key_check,
                        trace_id: s.trace_id.clone(),
                        span_id: s.span_id.clone(),
                        request_model: s.response_model.is_some().then(|| s.request_model.clone()),
                        start: s.start_time,
                        tokens: tokens.map(|v| v.map_or(-1, |v| v.max(0))),
                    };
                    if named.insert(hashes) {
                        out.push((4, (SpanPart::Named((s.provider.clone(), model.clone())), time, 1)));
                    }
                    let shard = (span_hash % u64::from(PRICE_SHARDS)) as u8;
                    out.push((3, (SpanPart::Priced(Box::new(((key_hash, shard), call))), time, diff)));
                }
                let call = ((s.provider, s.request_model), failed, s.input_tokens, s.output_tokens, latency);
                out.push((2, (SpanPart::Model(call), time, diff)));
            }
            if tool {
                out.push((1, (SpanPart::Tool((s.tool_name, s.trace_id.clone(), failed)), time, diff)));
            }
            let item = TraceItem::Span {
                llm,
                tool,
                agent: s.agent_name,
                status: s.status,
                input: s.input_tokens,
                output: s.output_tokens,
                start: s.start_time,
                end: s.end_time,
            };
            out.push((0, (SpanPart::Trace(s.trace_id, item), time, diff)));
            out
        })
        .partition::<CapacityContainerBuilder<Vec<(SpanPart, Time, Diff)>>, _, _>(5, |(route, update)| (route, update));
    let mut parts = parts.into_iter().map(|p| p.as_collection());
    let (Some(traces), Some(tools), Some(models), Some(priced), Some(named)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        unreachable!("partition(5) returns five streams")
    };
    SpanParts {
        traces: traces.flat_map(|p| if let SpanPart::Trace(k, i) = p { Some((k, i)) } else { None }),
        tools: tools.flat_map(|p| if let SpanPart::Tool(t) = p { Some(t) } else { None }),
        models: models.flat_map(|p| if let SpanPart::Model(m) = p { Some(m) } else { None }),
        priced: priced.flat_map(|p| if let SpanPart::Priced(c) = p { Some(*c) } else { None }),
        named: named.flat_map(|p| if let SpanPart::Named(k) = p { Some(k) } else { None }),
    }
}

/// A value's hash (std's `DefaultHasher`: the same in every worker and process of one build).
fn hash<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(value)
}

/// `agent_traces` from the spans' trace parts (see [`split_spans`]).
/// Each row comes with its exact cost (pico-USD), for `cost_by_agent_day`.
fn agent_traces_from<'s>(
    span_items: Coll<'s, (TraceId, TraceItem)>,
    evaluations: Coll<'s, Evaluation>,
    costs: Coll<'s, (TraceId, i128)>,
) -> (Coll<'s, (AgentTrace, Option<i128>)>, Errors<'s>) {
    let eval_items = evaluations.map(|e| (e.trace_id, TraceItem::Eval(e.score)));
    let cost_items = costs.map(|(trace, pusd)| (trace, TraceItem::Cost(pusd)));
    let traces = span_items.concat(eval_items).concat(cost_items).reduce_named("agent_traces", |_trace, items, out| {
        let mut row = AgentTrace {
            trace_id: TraceId::Hex128(0),
            agent_name: None,
            spans: 0,
            llm_calls: 0,
            tool_calls: 0,
            tool_errors: 0,
            input_tokens: None,
            output_tokens: None,
            start_time: None,
            end_time: None,
            status: SpanStatus::Unset,
            eval_score: None,
            cost_usd: None,
        };
        let (mut score_sum, mut score_n) = (ExactSum::new(), 0u64);
        let mut cost: Option<i128> = None;
        let (mut input_tokens, mut output_tokens) = (None, None);
        for (item, n) in items {
            let n = *n as i64;
            if n <= 0 {
                continue;
            }
            match item {
                TraceItem::Span { agent, llm, tool, status, input, output, start, end } => {
                    row.spans += n;
                    row.llm_calls += if *llm { n } else { 0 };
                    row.tool_calls += if *tool { n } else { 0 };
                    if *tool && *status == SpanStatus::Error {
                        row.tool_errors += n;
                    }
                    if let Some(a) = agent
                        && row.agent_name.as_ref().is_none_or(|cur| a < cur)
                    {
                        row.agent_name = Some(a.clone());
                    }
                    add_opt(&mut input_tokens, *input, n);
                    add_opt(&mut output_tokens, *output, n);
                    if let Some(s) = start {
                        row.start_time = Some(row.start_time.map_or(*s, |c| c.min(*s)));
                    }
                    if let Some(e) = end {
                        row.end_time = Some(row.end_time.map_or(*e, |c| c.max(*e)));
                    }
                    row.status = row.status.max(*status);
                }
                TraceItem::Eval(score) => {
                    if let Some(s) = score {
                        score_sum.add(s.0, n);
                        score_n += n as u64;
                    }
                }
                TraceItem::Cost(pusd) => *cost.get_or_insert(0) += pusd * i128::from(n),
            }
        }
        if row.spans > 0 {
            if score_n > 0 {
                row.eval_score = Some(OrderedFloat(score_sum.mean(score_n)));
            }
            let mut overflows = Overflows::new();
            row.input_tokens = input_tokens.and_then(|s| bigint(s, "input_tokens", &mut overflows));
            row.output_tokens = output_tokens.and_then(|s| bigint(s, "output_tokens", &mut overflows));
            row.cost_usd = cost.map(|c| OrderedFloat(prices::usd(c)));
            out.push(((row, overflows, cost), 1));
        }
    });
    let errors = traces.clone().flat_map(|(trace_id, (_, overflows, _))| {
        let key = key_text(&[Some(&trace_id.to_string())]);
        overflows.into_iter().map(move |o| overflow_row("agent_traces", &key, o))
    });
    let rows = traces.map(|(trace_id, (mut row, _, cost))| {
        row.trace_id = trace_id;
        (row, cost)
    });
    (rows, errors)
}

// ---------------------------------------------------------------------------------------------
// tool_usage

/// A row of `tool_usage`: one per `tool_name` of `execute_tool` spans (NULL names form one group).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ToolUsage {
    /// Key.
    pub tool_name: Option<String>,
    /// `execute_tool` spans.
    pub calls: i64,
    /// Of those, spans with status `error`.
    pub errors: i64,
    /// Distinct `trace_id`s among those spans.
    pub traces: i64,
}

impl ToRow for ToolUsage {
    fn desc() -> RelationDesc {
        desc("tool_usage", &["tool_name"], &[("tool_name", Text), ("calls", Int), ("errors", Int), ("traces", Int)])
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::text(self.tool_name.as_deref()),
            Datum::Int(self.calls),
            Datum::Int(self.errors),
            Datum::Int(self.traces),
        ]
    }
}

/// `tool_usage`, keyed by `tool_name`.
pub fn tool_usage<'s>(spans: Coll<'s, Span>) -> Coll<'s, ToolUsage> {
    tool_usage_from(split_spans(spans).tools)
}

/// `tool_usage` from the spans' tool calls (see [`split_spans`]).
fn tool_usage_from<'s>(tools: Coll<'s, ToolCall>) -> Coll<'s, ToolUsage> {
    let counts = tools.clone().explode(|(tool, _trace, err)| Some((tool, (1isize, err as isize)))).count_total();
    let traces =
        tools.map(|(tool, trace, _err)| (trace, tool)).distinct_total().map(|(_trace, tool)| tool).count_total();
    counts
        .map(|(tool, (calls, errors))| (tool, (calls as i64, errors as i64)))
        .join(traces.map(|(tool, n)| (tool, n as i64)))
        .map(|(tool_name, ((calls, errors), traces))| ToolUsage { tool_name, calls, errors, traces })
}

// ---------------------------------------------------------------------------------------------
// model_usage

/// A row of `model_usage`: one per `(provider, request_model)` over spans that name a model
/// (`provider` or `request_model` not NULL); NULLs form their own groups.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelUsage {
    /// Key, first part.
    pub provider: Option<String>,
    /// Key, second part.
    pub request_model: Option<String>,
    /// Spans (calls).
    pub calls: i64,
    /// Calls with status `error`.
    pub error_calls: i64,
    /// Sum of `input_tokens`; NULL when all are NULL.
    pub input_tokens: Option<i64>,
    /// Sum of `output_tokens`; NULL when all are NULL.
    pub output_tokens: Option<i64>,
    /// Median latency `end_time − start_time` (ms, µs precision) over calls with both times,
    /// by linear interpolation (PostgreSQL `percentile_cont(0.5)`); NULL when no call has both.
    pub latency_ms_p50: Option<OrderedFloat<f64>>,
    /// 95th-percentile latency (ms), `percentile_cont(0.95)` over the same calls.
    pub latency_ms_p95: Option<OrderedFloat<f64>>,
    /// What the calls cost (USD): the sum of their `span_costs.cost_usd`; NULL when none is
    /// priced.
    pub cost_usd: Option<OrderedFloat<f64>>,
}

impl ToRow for ModelUsage {
    fn desc() -> RelationDesc {
        desc(
            "model_usage",
            &["provider", "request_model"],
            &[
                ("provider", Text),
                ("request_model", Text),
                ("calls", Int),
                ("error_calls", Int),
                ("input_tokens", Int),
                ("output_tokens", Int),
                ("latency_ms_p50", Float),
                ("latency_ms_p95", Float),
                ("cost_usd", Float),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::text(self.provider.as_deref()),
            Datum::text(self.request_model.as_deref()),
            Datum::Int(self.calls),
            Datum::Int(self.error_calls),
            Datum::int(self.input_tokens),
            Datum::int(self.output_tokens),
            Datum::float(self.latency_ms_p50.map(|v| v.0)),
            Datum::float(self.latency_ms_p95.map(|v| v.0)),
            Datum::float(self.cost_usd.map(|v| v.0)),
        ]
    }
}

/// `model_usage` (keyed by `(provider, request_model)`) from the spans' model calls (see
/// [`split_spans`]) and their costs (pico-USD, by the same key), and its error rows (token
/// sums beyond `BIGINT`).
fn model_usage_from<'s>(
    calls: Coll<'s, ModelCall>,
    costs: Coll<'s, (UsageKey, i128)>,
) -> (Coll<'s, ModelUsage>, Errors<'s>) {
    let costs = costs.explode(|(key, pusd)| Some((key, Wide([0, 0, 0, 0, 0, 0, pusd, 1]))));
    let sums = calls
        .clone()
        .explode(|(key, err, input, output, _latency)| {
            let ((input, has_input), (output, has_output)) = (nullable(input), nullable(output));
            Some((key, Wide([1, err.into(), input, has_input, output, has_output, 0, 0])))
        })
        .concat(costs)
        .count_total()
        .map(|(key, Wide([calls, errors, input, has_input, output, has_output, cost, priced]))| {
            let mut overflows = Overflows::new();
            let input = sum_or_null(input, has_input, "input_tokens", &mut overflows);
            let output = sum_or_null(output, has_output, "output_tokens", &mut overflows);
            let cost = (priced > 0).then(|| OrderedFloat(prices::usd(cost)));
            (key, ((count(calls), count(errors), input, output, cost), overflows))
        });
    let errors = sums.clone().flat_map(|((provider, model), (_, overflows))| {
        let key = key_text(&[provider.as_deref(), model.as_deref()]);
        overflows.into_iter().map(move |o| overflow_row("model_usage", &key, o))
    });
    let sums = sums.map(|(key, (sums, _))| (key, sums));
    let percentiles = calls.map(|(key, _err, _in, _out, latency)| (key, latency)).reduce_named(
        "model_usage_latency",
        |_key, latencies, out| {
            // `latencies` is sorted: NULLs first, then ascending values.
            let sorted: Vec<(i64, i64)> = latencies.iter().filter_map(|(l, n)| l.map(|l| (l, *n as i64))).collect();
            let ms = |p| amx_operators::percentile_cont(&sorted, p).map(|us| OrderedFloat(us / 1000.0));
            out.push(((ms(0.5), ms(0.95)), 1));
        },
    );
    let rows = sums.join(percentiles).map(
        |((provider, request_model), ((calls, error_calls, input_tokens, output_tokens, cost_usd), (p50, p95)))| {
            ModelUsage {
                provider,
                request_model,
                calls,
                error_calls,
                input_tokens,
                output_tokens,
                latency_ms_p50: p50,
                latency_ms_p95: p95,
                cost_usd,
            }
        },
    );
    (rows, errors)
}

// ---------------------------------------------------------------------------------------------
// workflow_steps and workflow_runs

/// A row of `workflow_steps`: one per `(run_id, step_id)` of step-level workflow events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkflowStep {
    /// Key, first part.
    pub run_id: String,
    /// Key, second part.
    pub step_id: String,
    /// First non-NULL `step_name` in event order.
    pub step_name: Option<String>,
    /// First non-NULL `step_type` in event order.
    pub step_type: Option<String>,
    /// State of the latest event, ordered by `event_seq`, then `event_time` (NULLs first),
    /// then state (`SCHEDULED` < `RUNNING` < terminal states) for exact ties.
    pub state: WorkflowState,
    /// Greatest `attempt` seen (1 when no event carries one).
    pub attempts: i64,
    /// Earliest `event_time` of a `RUNNING` event (µs, UTC).
    pub started_at: Option<TimestampUs>,
    /// `event_time` of the latest event when its state is terminal, else NULL.
    pub ended_at: Option<TimestampUs>,
}

impl ToRow for WorkflowStep {
    fn desc() -> RelationDesc {
        desc(
            "workflow_steps",
            &["run_id", "step_id"],
            &[
                ("run_id", Text),
                ("step_id", Text),
                ("step_name", Text),
                ("step_type", Text),
                ("state", Text),
                ("attempts", Int),
                ("started_at", Timestamp),
                ("ended_at", Timestamp),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.run_id.clone()),
            Datum::Text(self.step_id.clone()),
            Datum::text(self.step_name.as_deref()),
            Datum::text(self.step_type.as_deref()),
            Datum::Text(self.state.as_str().to_owned()),
            Datum::Int(self.attempts),
            Datum::ts(self.started_at),
            Datum::ts(self.ended_at),
        ]
    }
}

/// A row of `workflow_runs`: one per `run_id` with any workflow event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkflowRun {
    /// Key.
    pub run_id: String,
    /// First non-NULL `workflow_name` of the run's run-level events in event order (exact ties:
    /// the smaller name), else of its steps (in `step_id` order).
    pub workflow_name: Option<String>,
    /// State of the latest run-level event (by `event_seq`, then `event_time`); NULL when the
    /// run has only step events so far.
    pub status: Option<WorkflowState>,
    /// Earliest `event_time` of any of the run's events (µs, UTC).
    pub started_at: Option<TimestampUs>,
    /// `event_time` of the latest run-level event when its state is terminal, else NULL.
    pub ended_at: Option<TimestampUs>,
    /// Steps (distinct `step_id`s).
    pub steps: i64,
    /// Steps whose state is `COMPLETED`.
    pub steps_completed: i64,
    /// Steps whose state is `FAILED` or `TIMED_OUT`.
    pub steps_failed: i64,
    /// Attempts beyond the first, summed over steps: Σ max(attempts − 1, 0); NULL when the sum
    /// does not fit a `BIGINT` (an error row says so).
    pub retries: Option<i64>,
}

impl ToRow for WorkflowRun {
    fn desc() -> RelationDesc {
        desc(
            "workflow_runs",
            &["run_id"],
            &[
                ("run_id", Text),
                ("workflow_name", Text),
                ("status", Text),
                ("started_at", Timestamp),
                ("ended_at", Timestamp),
                ("steps", Int),
                ("steps_completed", Int),
                ("steps_failed", Int),
                ("retries", Int),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.run_id.clone()),
            Datum::text(self.workflow_name.as_deref()),
            Datum::text(self.status.map(WorkflowState::as_str)),
            Datum::ts(self.started_at),
            Datum::ts(self.ended_at),
            Datum::Int(self.steps),
            Datum::Int(self.steps_completed),
            Datum::Int(self.steps_failed),
            Datum::int(self.retries),
        ]
    }
}

/// The order in which workflow events supersede each other: `(event_seq, event_time, state)`.
type EventOrder = (Option<i64>, Option<TimestampUs>, WorkflowState);

/// What a step contributes to its run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct StepSummary {
    step: WorkflowStep,
    first_event_time: Option<TimestampUs>,
    workflow_name: Option<String>,
}

/// A step event projected for the `workflow_steps` reduce.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct StepItem {
    order: EventOrder,
    attempt: Option<i64>,
    step_name: Option<String>,
    step_type: Option<String>,
    workflow_name: Option<String>,
}

/// `workflow_steps` (keyed by `(run_id, step_id)`), `workflow_runs` (keyed by `run_id`) and
/// their error rows (retries beyond `BIGINT`).
pub fn workflows<'s>(events: Coll<'s, WorkflowEvent>) -> (Coll<'s, WorkflowStep>, Coll<'s, WorkflowRun>, Errors<'s>) {
    let summaries = events
        .clone()
        .flat_map(|e| {
            let step_id = e.step_id?;
            let item = StepItem {
                order: (e.event_seq, e.event_time, e.state),
                attempt: e.attempt,
                step_name: e.step_name,
                step_type: e.step_type,
                workflow_name: e.workflow_name,
            };
            Some(((e.run_id, step_id), item))
        })
        .reduce_named("workflow_steps", |(run_id, step_id), items, out| {
            // Items are sorted by `order`, so the first non-NULL name is the earliest event's.
            let live: Vec<&StepItem> = items.iter().filter(|(_, n)| *n > 0).map(|(i, _)| *i).collect();
            let Some(latest) = live.last() else { return };
            let (_, latest_time, state) = latest.order;
            let step = WorkflowStep {
                run_id: run_id.clone(),
                step_id: step_id.clone(),
                step_name: live.iter().find_map(|i| i.step_name.clone()),
                step_type: live.iter().find_map(|i| i.step_type.clone()),
                state,
                attempts: live.iter().filter_map(|i| i.attempt).max().unwrap_or(1),
                started_at: live.iter().filter(|i| i.order.2 == WorkflowState::Running).filter_map(|i| i.order.1).min(),
                ended_at: if state.is_terminal() { latest_time } else { None },
            };
            out.push((
                StepSummary {
                    step,
                    first_event_time: live.iter().filter_map(|i| i.order.1).min(),
                    workflow_name: live.iter().find_map(|i| i.workflow_name.clone()),
                },
                1,
            ));
        })
        .map(|(_key, summary)| summary);

    let steps = summaries.clone().map(|s| s.step);

    #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    enum RunItem {
        Event { order: EventOrder, workflow_name: Option<String> },
        Step(StepSummary),
    }
    let run_events = events.flat_map(|e| {
        e.step_id.is_none().then(|| {
            let order = (e.event_seq, e.event_time, e.state);
            (e.run_id, RunItem::Event { order, workflow_name: e.workflow_name })
        })
    });
    let run_steps = summaries.map(|s| (s.step.run_id.clone(), RunItem::Step(s)));
    let runs = run_events.concat(run_steps).reduce_named("workflow_runs", |run_id, items, out| {
        let mut run = WorkflowRun {
            run_id: run_id.clone(),
            workflow_name: None,
            status: None,
            started_at: None,
            ended_at: None,
            steps: 0,
            steps_completed: 0,
            steps_failed: 0,
            retries: None,
        };
        let mut retries = 0i128;
        let mut step_workflow_name = None;
        let mut latest: Option<EventOrder> = None;
        let min_time = |t: Option<i64>, run: &mut WorkflowRun| {
            if let Some(t) = t {
                run.started_at = Some(run.started_at.map_or(t, |c| c.min(t)));
            }
        };
        for (item, n) in items {
            if *n <= 0 {
                continue;
            }
            match item {
                RunItem::Event { order, workflow_name } => {
                    if run.workflow_name.is_none() {
                        run.workflow_name.clone_from(workflow_name);
                    }
                    min_time(order.1, &mut run);
                    // Events are sorted by order: the last one seen is the latest.
                    latest = Some(*order);
                }
                RunItem::Step(s) => {
                    run.steps += 1;
                    match s.step.state {
                        WorkflowState::Completed => run.steps_completed += 1,
                        WorkflowState::Failed | WorkflowState::TimedOut => run.steps_failed += 1,
                        _ => {}
                    }
                    retries += (i128::from(s.step.attempts) - 1).max(0);
                    min_time(s.first_event_time, &mut run);
                    if step_workflow_name.is_none() {
                        step_workflow_name.clone_from(&s.workflow_name);
                    }
                }
            }
        }
        if run.workflow_name.is_none() {
            run.workflow_name = step_workflow_name;
        }
        if let Some((_, time, state)) = latest {
            run.status = Some(state);
            run.ended_at = if state.is_terminal() { time } else { None };
        }
        let mut overflows = Overflows::new();
        run.retries = bigint(retries, "retries", &mut overflows);
        out.push(((run, overflows), 1));
    });
    let errors = runs.clone().flat_map(|(run_id, (_, overflows))| {
        let key = key_text(&[Some(&run_id)]);
        overflows.into_iter().map(move |o| overflow_row("workflow_runs", &key, o))
    });
    let runs = runs.map(|(_run_id, (run, _))| run);
    (steps, runs, errors)
}

// ---------------------------------------------------------------------------------------------
// documents and collection_stats

/// A row of `documents`: the current version of each live document.
///
/// The current version is the event with the greatest `event_time` (ties: greatest `version`;
/// NULLs lose; a delete wins an exact tie), whatever order events arrive in. When that event
/// is a delete, the document is gone (no row).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Document {
    /// Key, first part.
    pub collection: String,
    /// Key, second part.
    pub document_id: String,
    /// `version` of the current event.
    pub version: Option<i64>,
    /// `size_bytes` of the current event (bytes).
    pub size_bytes: Option<i64>,
    /// `event_time` of the current event (µs, UTC).
    pub updated_at: Option<TimestampUs>,
    /// Events seen for the document (upserts and deletes).
    pub edits: i64,
}

impl ToRow for Document {
    fn desc() -> RelationDesc {
        desc(
            "documents",
            &["collection", "document_id"],
            &[
                ("collection", Text),
                ("document_id", Text),
                ("version", Int),
                ("size_bytes", Int),
                ("updated_at", Timestamp),
                ("edits", Int),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.collection.clone()),
            Datum::Text(self.document_id.clone()),
            Datum::int(self.version),
            Datum::int(self.size_bytes),
            Datum::ts(self.updated_at),
            Datum::Int(self.edits),
        ]
    }
}

/// A row of `collection_stats`: one per collection with any knowledge event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CollectionStats {
    /// Key.
    pub collection: String,
    /// Live documents (rows of `documents`).
    pub documents: i64,
    /// Knowledge events seen.
    pub edits: i64,
    /// Of those, events with `is_bot = true`.
    pub bot_edits: i64,
    /// Sum of the live documents' `size_bytes` (bytes); NULL when none is known.
    pub size_bytes: Option<i64>,
}

impl ToRow for CollectionStats {
    fn desc() -> RelationDesc {
        desc(
            "collection_stats",
            &["collection"],
            &[("collection", Text), ("documents", Int), ("edits", Int), ("bot_edits", Int), ("size_bytes", Int)],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.collection.clone()),
            Datum::Int(self.documents),
            Datum::Int(self.edits),
            Datum::Int(self.bot_edits),
            Datum::int(self.size_bytes),
        ]
    }
}

/// `documents` (keyed by `(collection, document_id)`), `collection_stats` (keyed by
/// `collection`) and their error rows (`size_bytes` sums beyond `BIGINT`).
pub fn knowledge<'s>(events: Coll<'s, KnowledgeEvent>) -> (Coll<'s, Document>, Coll<'s, CollectionStats>, Errors<'s>) {
    type Version = (Option<TimestampUs>, Option<i64>, KnowledgeOp, Option<i64>);
    let documents = events
        .clone()
        .map(|e| {
            let v: Version = (e.event_time, e.version, e.op, e.size_bytes);
            // Keyed by the two texts packed into one buffer (inline up to
            // `PackedRow::INLINE` bytes): the reduction's arrangements then copy bytes in
            // their merges, not two heap strings per key.
            (PackedRow::pack(&[Datum::Text(e.collection), Datum::Text(e.document_id)]), v)
        })
        .reduce_named("documents", |_key, versions, out| {
            let edits: i64 = versions.iter().map(|(_, n)| (*n as i64).max(0)).sum();
            // Sorted ascending by (event_time, version, op, size): the last live one wins.
            let Some(((time, version, op, size), _)) = versions.iter().rev().find(|(_, n)| *n > 0) else {
                return;
            };
            if *op == KnowledgeOp::Upsert {
                out.push(((*version, *size, *time, edits), 1));
            }
        })
        .map(|(key, (version, size_bytes, updated_at, edits))| {
            // The key is the two texts packed above (nothing else is ever packed into it).
            let mut texts = key.iter().map(|d| match d {
                Datum::Text(s) => s,
                _ => String::new(),
            });
            let (collection, document_id) = (texts.next().unwrap_or_default(), texts.next().unwrap_or_default());
            Document { collection, document_id, version, size_bytes, updated_at, edits }
        });
    let edits = events.explode(|e| {
        let bot = e.is_bot == Some(true);
        Some((e.collection, Wide([1, bot.into(), 0, 0, 0, 0, 0, 0])))
    });
    let live = documents.clone().explode(|d| {
        let (size, known) = nullable(d.size_bytes);
        Some((d.collection, Wide([0, 0, 1, size, known, 0, 0, 0])))
    });
    let stats =
        edits.concat(live).count_total().map(|(collection, Wide([edits, bot_edits, documents, size, known, ..]))| {
            let mut overflows = Overflows::new();
            let size_bytes = sum_or_null(size, known, "size_bytes", &mut overflows);
            let stats = CollectionStats {
                collection,
                documents: count(documents),
                edits: count(edits),
                bot_edits: count(bot_edits),
                size_bytes,
            };
            (stats, overflows)
        });
    let errors = stats.clone().flat_map(|(stats, overflows)| {
        let key = key_text(&[Some(&stats.collection)]);
        overflows.into_iter().map(move |o| overflow_row("collection_stats", &key, o))
    });
    (documents, stats.map(|(stats, _)| stats), errors)
}

// ---------------------------------------------------------------------------------------------
// span_costs and cost_by_agent_day

/// A row of `span_costs`: one per priced span (see [`prices`] for which spans are priced, by
/// which row of `model_prices`, and how), keyed by `(trace_id, span_id)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpanCost {
    /// Key, first part.
    pub trace_id: TraceId,
    /// Key, second part.
    pub span_id: String,
    /// The span's `provider`.
    pub provider: Option<String>,
    /// The model it was priced as: its `response_model`, else its `request_model`.
    pub model: String,
    /// The key of the `model_prices` row that priced it: `provider` (`*` for every provider)…
    pub price_provider: String,
    /// … `model` (a name or a `prefix*` pattern) …
    pub price_model: String,
    /// … and `valid_from` (µs, UTC).
    pub price_valid_from: TimestampUs,
    /// What the call cost (USD).
    pub cost_usd: OrderedFloat<f64>,
}

impl ToRow for SpanCost {
    fn desc() -> RelationDesc {
        desc(
            "span_costs",
            &["trace_id", "span_id"],
            &[
                ("trace_id", Text),
                ("span_id", Text),
                ("provider", Text),
                ("model", Text),
                ("price_provider", Text),
                ("price_model", Text),
                ("price_valid_from", Timestamp),
                ("cost_usd", Float),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::Text(self.trace_id.to_string()),
            Datum::Text(self.span_id.clone()),
            Datum::text(self.provider.as_deref()),
            Datum::Text(self.model.clone()),
            Datum::Text(self.price_provider.clone()),
            Datum::Text(self.price_model.clone()),
            Datum::Timestamp(self.price_valid_from),
            Datum::float(Some(self.cost_usd.0)),
        ]
    }
}

/// What a priced call feeds: its trace's cost and its `model_usage` key's cost (pico-USD),
/// and its `span_costs` row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
enum CostPart {
    Trace(TraceId, i128),
    Usage(UsageKey, i128),
    /// Boxed: the other parts stay small.
    Row(Box<SpanCost>),
}

/// The priced calls' costs: by trace, by `model_usage` key, and as `span_costs` rows (`None`
/// when not wanted).
struct Costs<'s> {
    traces: Coll<'s, (TraceId, i128)>,
    usage: Coll<'s, (UsageKey, i128)>,
    rows: Option<Coll<'s, SpanCost>>,
    /// A row of `[model_prices, message]` per price out of range ([`prices::price_errors`]).
    errors: Errors<'s>,
}

/// Prices the spans' priced calls (see [`split_spans`]) by `model_prices`' rows (see
/// [`prices`]); the `span_costs` rows only when `rows`.
///
/// The `(provider, model)` pairs the calls name are joined with the price rows of their
/// provider and of `*`; each pair's applicable rows are gathered in one list (a `reduce`),
/// copied to each of the pair's [`PRICE_SHARDS`] shards, and joined with the calls. A changed
/// price row changes the lists of the pairs it applies to, and the join re-prices their calls:
/// the old cost retracted, the new one inserted.
fn span_costs_from<'s>(
    priced: Coll<'s, (PriceShard, PricedCall)>,
    named: Coll<'s, PriceKey>,
    prices: Coll<'s, Row>,
    rows: bool,
) -> Costs<'s> {
    use differential_dataflow::AsCollection;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::core::{Map, Partition};

    let by_provider = named.distinct_total().flat_map(|(provider, model)| {
        let own = provider.clone().filter(|p| p != "*").map(|p| (p, (provider.clone(), model.clone())));
        own.into_iter().chain(std::iter::once(("*".to_owned(), (provider, model))))
    });
    let errors = prices.clone().flat_map(|row| {
        prices::price_errors(&row)
            .into_iter()
            .map(|e| vec![Datum::Text(prices::MODEL_PRICES.to_owned()), Datum::Text(e)])
    });
    let price_rows = prices.flat_map(|row| PriceRow::from_row(&row).map(|p| (p.provider.clone(), p)));
    let applicable = by_provider.join(price_rows).flat_map(|(_provider, ((provider, model), row))| {
        let specificity = row.specificity(provider.as_deref(), &model)?;
        Some(((provider, model), Applicable { specificity, row }))
    });
    let lists = applicable.reduce_named("model_prices_by_model", |_key, rows, out| {
        let list: Vec<Applicable> = rows.iter().filter(|(_, n)| *n > 0).map(|(a, _)| (*a).clone()).collect();
        out.push((list, 1));
    });
    let sharded = lists
        .flat_map(|(key, list)| {
            let (key_hash, key_check) = key_hashes(&key);
            (0..PRICE_SHARDS).map(move |shard| ((key_hash, shard), (key_check, key.clone(), list.clone())))
        })
        .arrange_by_key_named("model_prices_by_shard");
    let calls = priced.arrange_by_key_named("priced_calls");
    type PriceList = (u64, PriceKey, Vec<Applicable>);
    let parts = calls.join_core(sharded, move |_shard, call: &PricedCall, (key_check, key, list): &PriceList| {
        let mut out = Vec::new();
        if *key_check != call.key_check {
            return out;
        }
        let (provider, model) = key;
        let Some(applied) = prices::price_at(list, call.start) else { return out };
        let Some(pusd) = applied.row.rates.as_ref().and_then(|rates| prices::cost_pusd(rates, &call.tokens())) else {
            return out;
        };
        out.push(CostPart::Trace(call.trace_id.clone(), pusd));
        let request_model = call.request_model.clone().unwrap_or_else(|| Some(model.clone()));
        out.push(CostPart::Usage((provider.clone(), request_model), pusd));
        if rows {
            out.push(CostPart::Row(Box::new(SpanCost {
                trace_id: call.trace_id.clone(),
                span_id: call.span_id.clone(),
                provider: provider.clone(),
                model: model.clone(),
                price_provider: applied.row.provider.clone(),
                price_model: applied.row.model.clone(),
                price_valid_from: applied.row.valid_from,
                cost_usd: OrderedFloat(prices::usd(pusd)),
            })));
        }
        out
    });
    let parts = parts
        .inner
        .map::<Vec<(u64, (CostPart, Time, Diff))>, _, _>(|(part, time, diff)| {
            let route = match &part {
                CostPart::Trace(..) => 0,
                CostPart::Usage(..) => 1,
                CostPart::Row(_) => 2,
            };
            (route, (part, time, diff))
        })
        .partition::<CapacityContainerBuilder<Vec<(CostPart, Time, Diff)>>, _, _>(3, |(route, update)| (route, update));
    let mut parts = parts.into_iter().map(|p| p.as_collection());
    let (Some(traces), Some(usage), Some(row_parts)) = (parts.next(), parts.next(), parts.next()) else {
        unreachable!("partition(3) returns three streams")
    };
    Costs {
        traces: traces.flat_map(|p| if let CostPart::Trace(t, c) = p { Some((t, c)) } else { None }),
        usage: usage.flat_map(|p| if let CostPart::Usage(k, c) = p { Some((k, c)) } else { None }),
        rows: rows.then(|| row_parts.flat_map(|p| if let CostPart::Row(r) = p { Some(*r) } else { None })),
        errors,
    }
}

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// A row of `cost_by_agent_day`: one per `(agent_name, day)` of `agent_traces`, each trace
/// counted for its agent (`agent_traces.agent_name`, NULLs forming their own group) on the UTC
/// day its first span started (NULL when no span has a start time).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentCostDay {
    /// Key, first part.
    pub agent_name: Option<String>,
    /// Key, second part: the day (its 00:00:00 UTC).
    pub day: Option<TimestampUs>,
    /// Traces.
    pub traces: i64,
    /// Sum of their `llm_calls`.
    pub llm_calls: i64,
    /// Sum of their `input_tokens`; NULL when all are NULL.
    pub input_tokens: Option<i64>,
    /// Sum of their `output_tokens`; NULL when all are NULL.
    pub output_tokens: Option<i64>,
    /// Sum of their `cost_usd` (USD); NULL when all are NULL.
    pub cost_usd: Option<OrderedFloat<f64>>,
}

impl ToRow for AgentCostDay {
    fn desc() -> RelationDesc {
        desc(
            "cost_by_agent_day",
            &["agent_name", "day"],
            &[
                ("agent_name", Text),
                ("day", Timestamp),
                ("traces", Int),
                ("llm_calls", Int),
                ("input_tokens", Int),
                ("output_tokens", Int),
                ("cost_usd", Float),
            ],
        )
    }
    fn to_row(&self) -> Row {
        vec![
            Datum::text(self.agent_name.as_deref()),
            Datum::ts(self.day),
            Datum::Int(self.traces),
            Datum::Int(self.llm_calls),
            Datum::int(self.input_tokens),
            Datum::int(self.output_tokens),
            Datum::float(self.cost_usd.map(|c| c.0)),
        ]
    }
}

/// `cost_by_agent_day` from `agent_traces`' rows with their exact costs, and its error rows
/// (token sums beyond `BIGINT`).
fn cost_by_agent_day_from<'s>(traces: Coll<'s, (AgentTrace, Option<i128>)>) -> (Coll<'s, AgentCostDay>, Errors<'s>) {
    let sums = traces
        .explode(|(t, cost)| {
            let day = t.start_time.map(|s| s.div_euclid(DAY_US) * DAY_US);
            let ((input, has_input), (output, has_output)) = (nullable(t.input_tokens), nullable(t.output_tokens));
            let (cost, has_cost) = cost.map_or((0, 0), |c| (c, 1));
            let lanes = [1, t.llm_calls.into(), input, has_input, output, has_output, cost, has_cost];
            Some(((t.agent_name, day), Wide(lanes)))
        })
        .count_total()
        .map(|((agent_name, day), Wide([traces, llm_calls, input, has_input, output, has_output, cost, has_cost]))| {
            let mut overflows = Overflows::new();
            let row = AgentCostDay {
                agent_name,
                day,
                traces: count(traces),
                llm_calls: count(llm_calls),
                input_tokens: sum_or_null(input, has_input, "input_tokens", &mut overflows),
                output_tokens: sum_or_null(output, has_output, "output_tokens", &mut overflows),
                cost_usd: (has_cost > 0).then(|| OrderedFloat(prices::usd(cost))),
            };
            (row, overflows)
        });
    let errors = sums.clone().flat_map(|(row, overflows)| {
        let day = row.day.map(|d| d.to_string());
        let key = key_text(&[row.agent_name.as_deref(), day.as_deref()]);
        overflows.into_iter().map(move |o| overflow_row("cost_by_agent_day", &key, o))
    });
    (sums.map(|(row, _)| row), errors)
}

/// The views computed from the spans, in one pass (see [`span_views`]).
pub(crate) struct SpanViews<'s> {
    pub(crate) agent_traces: Coll<'s, AgentTrace>,
    pub(crate) tool_usage: Coll<'s, ToolUsage>,
    pub(crate) model_usage: Coll<'s, ModelUsage>,
    /// `None` when not wanted.
    pub(crate) span_costs: Option<Coll<'s, SpanCost>>,
    /// `None` when not wanted.
    pub(crate) cost_by_agent_day: Option<Coll<'s, AgentCostDay>>,
    /// Their error rows.
    pub(crate) errors: Errors<'s>,
}

/// `agent_traces`, `tool_usage` and `model_usage` from one pass over the spans, priced by
/// `model_prices`' rows `prices`, with `span_costs` and `cost_by_agent_day` when
/// `span_costs` and `by_day`, and their error rows.
pub(crate) fn span_views<'s>(
    spans: Coll<'s, Span>,
    evaluations: Coll<'s, Evaluation>,
    prices: Coll<'s, Row>,
    (span_costs, by_day): (bool, bool),
) -> SpanViews<'s> {
    let parts = split_spans(spans);
    let costs = span_costs_from(parts.priced, parts.named, prices, span_costs);
    let (traces, trace_errors) = agent_traces_from(parts.traces, evaluations, costs.traces);
    let (models, model_errors) = model_usage_from(parts.models, costs.usage);
    let mut errors = costs.errors.concat(trace_errors).concat(model_errors);
    let cost_by_agent_day = by_day.then(|| {
        let (days, day_errors) = cost_by_agent_day_from(traces.clone());
        errors = errors.clone().concat(day_errors);
        days
    });
    SpanViews {
        agent_traces: traces.map(|(t, _)| t),
        tool_usage: tool_usage_from(parts.tools),
        model_usage: models,
        span_costs: costs.rows,
        cost_by_agent_day,
        errors,
    }
}
