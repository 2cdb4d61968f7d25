//! Oracle test: random event sequences, fed incrementally in batches with retractions, give
//! the same view contents as a from-scratch batch recomputation over the final multiset of
//! events, at 1, 2 and 4 workers. The recomputation below is a deliberately naive,
//! independent implementation of each view's definition (sort, group, fold).

use std::collections::{BTreeMap, HashMap};

use amx_dataflows::Diff;
use amx_dataflows::event::*;
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::testing::run_batches;
use ordered_float::OrderedFloat;
use proptest::prelude::*;

const S: i64 = 1_000_000;

fn opt<T: Clone + std::fmt::Debug + 'static>(values: Vec<T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(proptest::sample::select(values))
}

fn span_strategy() -> impl Strategy<Value = Event> {
    (
        (
            proptest::sample::select(vec!["t0", "t1", "t2", "4bf92f3577b34da6a3ce929d0e0e4736"]),
            0u8..4,
            proptest::sample::select(vec!["chat", "execute_tool", "embeddings"]),
            opt(vec!["openai", "anthropic"]),
            opt(vec!["m1", "m2"]),
            opt(vec!["search", "sql"]),
        ),
        (
            opt(vec!["agent_a", "agent_b"]),
            opt(vec![0i64, 7, 100]),
            opt(vec![1i64, 9]),
            opt(vec![0i64, 1, 2]),
            opt(vec![0i64, 250_000, 3 * S]),
            proptest::sample::select(vec![SpanStatus::Ok, SpanStatus::Error, SpanStatus::Unset]),
        ),
        (opt(vec![0i64, 3, 200]), opt(vec![0i64, 2])),
    )
        .prop_map(
            |(
                (trace, id, op, provider, model, tool),
                (agent, input, output, start, dur, status),
                (cached, reasoning),
            )| {
                let mut s = Span::new(TraceId::parse(trace), format!("s{id}"), op);
                s.operation = Some(op.into());
                s.provider = provider.map(String::from);
                s.request_model = model.map(String::from);
                s.tool_name = tool.map(String::from);
                s.agent_name = agent.map(String::from);
                s.input_tokens = input;
                s.output_tokens = output;
                s.cache_read_input_tokens = cached;
                s.reasoning_output_tokens = reasoning;
                s.start_time = start.map(|v| v * S);
                s.end_time = match (s.start_time, dur) {
                    (Some(st), Some(d)) => Some(st + d),
                    _ => None,
                };
                s.status = status;
                Event::Span(s)
            },
        )
}

fn eval_strategy() -> impl Strategy<Value = Event> {
    (proptest::sample::select(vec!["t0", "t1", "t2"]), opt(vec![0.0f64, 0.5, 1.0])).prop_map(|(trace, score)| {
        Event::Evaluation(Evaluation {
            trace_id: TraceId::parse(trace),
            span_id: None,
            name: "q".into(),
            score: score.map(OrderedFloat),
            label: None,
        })
    })
}

fn workflow_strategy() -> impl Strategy<Value = Event> {
    (
        proptest::sample::select(vec!["r0", "r1", "r2"]),
        opt(vec!["wf_a", "wf_b"]),
        opt(vec!["1", "2"]),
        proptest::sample::select(WorkflowState::ALL.to_vec()),
        opt(vec![1i64, 2, 3]),
        opt(vec![0i64, 1, 2, 3]),
        opt(vec![0i64, 1, 2, 3]),
    )
        .prop_map(|(run, name, step, state, attempt, time, seq)| {
            Event::Workflow(WorkflowEvent {
                run_id: run.into(),
                workflow_name: name.map(String::from),
                step_id: step.map(String::from),
                step_name: step.map(|s| format!("step{s}")),
                step_type: step.map(|_| "activity".into()),
                state,
                raw_state: state.as_str().into(),
                attempt,
                event_time: time.map(|t| t * S),
                event_seq: seq,
                failure_message: None,
            })
        })
}

fn knowledge_strategy() -> impl Strategy<Value = Event> {
    (
        proptest::sample::select(vec!["c0", "c1"]),
        proptest::sample::select(vec!["d0", "d1", "d2"]),
        proptest::sample::select(vec![KnowledgeOp::Upsert, KnowledgeOp::Upsert, KnowledgeOp::Delete]),
        opt(vec![1i64, 2, 3]),
        opt(vec![10i64, 20]),
        opt(vec![0i64, 1, 2]),
        opt(vec![true, false]),
    )
        .prop_map(|(coll, doc, op, version, size, time, bot)| {
            Event::Knowledge(KnowledgeEvent {
                collection: coll.into(),
                document_id: doc.into(),
                op,
                version,
                size_bytes: size,
                event_time: time.map(|t| t * S),
                actor: None,
                is_bot: bot,
                source_offset: None,
            })
        })
}

/// A `model_prices` key and what it is set to (`None`: deleted).
type PriceChange = (Row, Option<Row>);

/// The price table: its rows by key.
type Prices = BTreeMap<Row, Row>;

/// Batches of updates, one timestamp each.
type Batches = Vec<Vec<(Event, Diff)>>;

/// How specifically a price row names a span's model: (exact, pattern length, own provider,
/// valid_from), compared in that order.
type Rank = (bool, usize, bool, i64);

/// A change to `model_prices`: keys over the spans' providers (and `*`), models (and a
/// pattern) and start times; prices that are exact in binary, some NULL (a row that prices
/// nothing, or falls back to the input or output price).
fn price_strategy() -> impl Strategy<Value = PriceChange> {
    (
        proptest::sample::select(vec!["*", "openai", "anthropic"]),
        proptest::sample::select(vec!["m1", "m2", "m*", "x*"]),
        proptest::sample::select(vec![0i64, 1, 2]),
        (opt(vec![0.5f64, 2.0]), opt(vec![0.25f64]), opt(vec![1.0f64, 4.0]), opt(vec![8.0f64])),
        any::<bool>(),
    )
        .prop_map(|(provider, model, from, (input, cached, output, reasoning), delete)| {
            let key = vec![Datum::Text(provider.into()), Datum::Text(model.into()), Datum::Timestamp(from * S)];
            let price = |v: Option<f64>| v.map_or(Datum::Null, |v| Datum::Float(OrderedFloat(v)));
            let mut row = key.clone();
            row.extend([price(input), price(cached), price(output), price(reasoning)]);
            (key, (!delete).then_some(row))
        })
}

/// One step of a random history: insert an event, retract an earlier live one, or change a
/// price (an upsert: it is not retracted, it is replaced or deleted).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Step {
    Insert(Event),
    Retract(usize),
    Price(PriceChange),
}

fn history() -> impl Strategy<Value = Vec<Vec<Step>>> {
    let event = prop_oneof![span_strategy(), eval_strategy(), workflow_strategy(), knowledge_strategy()];
    let step = prop_oneof![
        4 => event.prop_map(Step::Insert),
        1 => any::<usize>().prop_map(Step::Retract),
        1 => price_strategy().prop_map(Step::Price),
    ];
    proptest::collection::vec(proptest::collection::vec(step, 0..25), 1..5)
}

/// Turns steps into batches of valid updates (retract only what is live), the final multiset
/// and the final price table (the shipped rows, then each change in order).
fn materialize(history: &[Vec<Step>]) -> (Batches, Vec<Event>, Prices) {
    let mut live: Vec<Event> = Vec::new();
    let mut prices: BTreeMap<Row, Row> =
        amx_dataflows::prices::default_rows().into_iter().map(|r| (r[..3].to_vec(), r)).collect();
    let mut position = 0;
    let mut batches = Vec::new();
    for steps in history {
        let mut batch = Vec::new();
        for step in steps {
            match step {
                Step::Insert(e) => {
                    live.push(e.clone());
                    batch.push((e.clone(), 1));
                }
                Step::Retract(k) if !live.is_empty() => {
                    let e = live.remove(k % live.len());
                    batch.push((e, -1));
                }
                Step::Retract(_) => {}
                Step::Price((key, row)) => {
                    match row {
                        Some(row) => prices.insert(key.clone(), row.clone()),
                        None => prices.remove(key),
                    };
                    // Later changes of a key in one batch (one timestamp) win by position.
                    position += 1;
                    let change =
                        TableRow { relation: "model_prices".into(), position, key: key.clone(), row: row.clone() };
                    batch.push((Event::Table(change), 1));
                }
            }
        }
        batches.push(batch);
    }
    (batches, live, prices)
}

/// What a span costs (pico-USD) by the price table, worked out from the rules in
/// `amx_dataflows::prices`' docs, naively: every row tried in turn.
fn span_cost(s: &Span, prices: &BTreeMap<Row, Row>) -> Option<(Row, i128)> {
    if s.provider.is_none() && s.request_model.is_none() {
        return None;
    }
    let model = s.response_model.clone().or(s.request_model.clone())?;
    let tokens = [s.input_tokens, s.cache_read_input_tokens, s.output_tokens, s.reasoning_output_tokens];
    if tokens.iter().all(Option::is_none) {
        return None;
    }
    let mut best: Option<(Rank, &Row)> = None;
    for row in prices.values() {
        let [Datum::Text(provider), Datum::Text(pattern), Datum::Timestamp(from), ..] = &row[..] else { panic!() };
        let own = provider != "*";
        if own && s.provider.as_deref() != Some(provider.as_str()) {
            continue;
        }
        let (exact, len) = if let Some(prefix) = pattern.strip_suffix('*') {
            if !model.starts_with(prefix) {
                continue;
            }
            (false, prefix.len())
        } else if *pattern == model {
            (true, model.len())
        } else {
            continue;
        };
        if s.start_time.is_some_and(|start| start < *from) {
            continue;
        }
        let rank = (exact, len, own, *from);
        if best.is_none_or(|(b, _)| rank > b) {
            best = Some((rank, row));
        }
    }
    let (_, row) = best?;
    // pico-USD per token of a price in USD per 1M tokens.
    let rate = |d: &Datum| match d {
        Datum::Float(v) => Some((v.0 * 1e6) as i128),
        _ => None,
    };
    let (input, output) = (rate(&row[3])?, rate(&row[5])?);
    let cached = rate(&row[4]).unwrap_or(input);
    let reasoning = rate(&row[6]).unwrap_or(output);
    let n = |v: Option<i64>| i128::from(v.unwrap_or(0));
    let (i, c, o, r) = (n(tokens[0]), n(tokens[1]), n(tokens[2]), n(tokens[3]));
    let cost = (i - c).max(0) * input + c * cached + (o - r).max(0) * output + r * reasoning;
    Some((row[..3].to_vec(), cost))
}

fn usd(pusd: i128) -> Datum {
    Datum::Float(OrderedFloat(pusd as f64 / 1e12))
}

// ---- the naive batch recomputation -------------------------------------------------------

fn text(s: &Option<String>) -> Datum {
    s.as_ref().map_or(Datum::Null, |s| Datum::Text(s.clone()))
}
fn int(v: Option<i64>) -> Datum {
    v.map_or(Datum::Null, Datum::Int)
}
fn sum(values: impl Iterator<Item = Option<i64>>) -> Option<i64> {
    values.flatten().fold(None, |acc, v| Some(acc.unwrap_or(0) + v))
}
fn quantile(mut xs: Vec<i64>, p: f64) -> Datum {
    if xs.is_empty() {
        return Datum::Null;
    }
    xs.sort();
    let h = p * (xs.len() - 1) as f64;
    let (lo, hi) = (xs[h.floor() as usize] as f64, xs[h.ceil() as usize] as f64);
    Datum::Float(OrderedFloat((lo + (h - h.floor()) * (hi - lo)) / 1000.0))
}

fn recompute(events: &[Event], prices: &BTreeMap<Row, Row>) -> HashMap<&'static str, HashMap<Row, Diff>> {
    let spans: Vec<&Span> = events.iter().filter_map(|e| if let Event::Span(s) = e { Some(s) } else { None }).collect();
    let evals: Vec<&Evaluation> =
        events.iter().filter_map(|e| if let Event::Evaluation(s) = e { Some(s) } else { None }).collect();
    let wfs: Vec<&WorkflowEvent> =
        events.iter().filter_map(|e| if let Event::Workflow(s) = e { Some(s) } else { None }).collect();
    let kns: Vec<&KnowledgeEvent> =
        events.iter().filter_map(|e| if let Event::Knowledge(s) = e { Some(s) } else { None }).collect();
    let mut out: HashMap<&'static str, HashMap<Row, Diff>> = HashMap::new();
    let mut put = |view: &'static str, row: Row| *out.entry(view).or_default().entry(row).or_insert(0) += 1;
    for row in prices.values() {
        put("model_prices", row.clone());
    }
    // span_costs
    for s in &spans {
        if let Some((price, cost)) = span_cost(s, prices) {
            let model = s.response_model.clone().or(s.request_model.clone());
            let mut row = vec![
                Datum::Text(s.trace_id.to_string()),
                Datum::Text(s.span_id.clone()),
                text(&s.provider),
                text(&model),
            ];
            row.extend(price);
            row.push(usd(cost));
            put("span_costs", row);
        }
    }
    // cost_by_agent_day: (agent, day) → (traces, llm calls, input, output, cost)
    type Day = (i64, i64, Option<i64>, Option<i64>, Option<i128>);
    let mut by_day: BTreeMap<(Option<String>, Option<i64>), Day> = BTreeMap::new();

    // agent_traces
    let mut by_trace: BTreeMap<String, Vec<&Span>> = BTreeMap::new();
    for s in &spans {
        by_trace.entry(s.trace_id.to_string()).or_default().push(s);
    }
    for (trace, ss) in &by_trace {
        let is_llm =
            |s: &&&Span| matches!(s.operation.as_deref(), Some("chat" | "text_completion" | "generate_content"));
        let is_tool = |s: &&&Span| s.operation.as_deref() == Some("execute_tool");
        let status = if ss.iter().any(|s| s.status == SpanStatus::Error) {
            "error"
        } else if ss.iter().any(|s| s.status == SpanStatus::Ok) {
            "ok"
        } else {
            "unset"
        };
        let scores: Vec<f64> =
            evals.iter().filter(|e| e.trace_id.to_string() == *trace).filter_map(|e| e.score.map(|s| s.0)).collect();
        let mean = if scores.is_empty() {
            Datum::Null
        } else {
            Datum::Float(OrderedFloat(scores.iter().sum::<f64>() / scores.len() as f64))
        };
        let costs: Vec<i128> = ss.iter().filter_map(|s| Some(span_cost(s, prices)?.1)).collect();
        let cost = (!costs.is_empty()).then(|| costs.iter().sum::<i128>());
        let agent = ss.iter().filter_map(|s| s.agent_name.clone()).min();
        let start = ss.iter().filter_map(|s| s.start_time).min();
        let day = by_day.entry((agent.clone(), start.map(|s| s - s.rem_euclid(86_400 * S)))).or_default();
        day.0 += 1;
        day.1 += ss.iter().filter(is_llm).count() as i64;
        let add = |a: Option<i64>, b: Option<i64>| {
            if a.is_none() && b.is_none() { None } else { Some(a.unwrap_or(0) + b.unwrap_or(0)) }
        };
        day.2 = add(day.2, sum(ss.iter().map(|s| s.input_tokens)));
        day.3 = add(day.3, sum(ss.iter().map(|s| s.output_tokens)));
        day.4 = match (day.4, cost) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        put(
            "agent_traces",
            vec![
                Datum::Text(trace.clone()),
                text(&agent),
                Datum::Int(ss.len() as i64),
                Datum::Int(ss.iter().filter(is_llm).count() as i64),
                Datum::Int(ss.iter().filter(is_tool).count() as i64),
                Datum::Int(ss.iter().filter(is_tool).filter(|s| s.status == SpanStatus::Error).count() as i64),
                int(sum(ss.iter().map(|s| s.input_tokens))),
                int(sum(ss.iter().map(|s| s.output_tokens))),
                ss.iter().filter_map(|s| s.start_time).min().map_or(Datum::Null, Datum::Timestamp),
                ss.iter().filter_map(|s| s.end_time).max().map_or(Datum::Null, Datum::Timestamp),
                Datum::Text(status.into()),
                mean,
                cost.map_or(Datum::Null, usd),
            ],
        );
    }
    for ((agent, day), (traces, llm, input, output, cost)) in by_day {
        let row = vec![
            text(&agent),
            day.map_or(Datum::Null, Datum::Timestamp),
            Datum::Int(traces),
            Datum::Int(llm),
            int(input),
            int(output),
            cost.map_or(Datum::Null, usd),
        ];
        put("cost_by_agent_day", row);
    }

    // tool_usage
    let mut by_tool: BTreeMap<Option<String>, Vec<&Span>> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.operation.as_deref() == Some("execute_tool")) {
        by_tool.entry(s.tool_name.clone()).or_default().push(s);
    }
    for (tool, ss) in &by_tool {
        let mut traces: Vec<String> = ss.iter().map(|s| s.trace_id.to_string()).collect();
        traces.sort();
        traces.dedup();
        put(
            "tool_usage",
            vec![
                text(tool),
                Datum::Int(ss.len() as i64),
                Datum::Int(ss.iter().filter(|s| s.status == SpanStatus::Error).count() as i64),
                Datum::Int(traces.len() as i64),
            ],
        );
    }

    // model_usage
    let mut by_model: BTreeMap<(Option<String>, Option<String>), Vec<&Span>> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.provider.is_some() || s.request_model.is_some()) {
        by_model.entry((s.provider.clone(), s.request_model.clone())).or_default().push(s);
    }
    for ((provider, model), ss) in &by_model {
        let lat: Vec<i64> = ss.iter().filter_map(|s| Some(s.end_time? - s.start_time?)).collect();
        let costs: Vec<i128> = ss.iter().filter_map(|s| Some(span_cost(s, prices)?.1)).collect();
        put(
            "model_usage",
            vec![
                text(provider),
                text(model),
                Datum::Int(ss.len() as i64),
                Datum::Int(ss.iter().filter(|s| s.status == SpanStatus::Error).count() as i64),
                int(sum(ss.iter().map(|s| s.input_tokens))),
                int(sum(ss.iter().map(|s| s.output_tokens))),
                quantile(lat.clone(), 0.5),
                quantile(lat, 0.95),
                if costs.is_empty() { Datum::Null } else { usd(costs.iter().sum()) },
            ],
        );
    }

    // workflow_steps and workflow_runs
    let order = |e: &&&WorkflowEvent| (e.event_seq, e.event_time, e.state);
    let mut by_step: BTreeMap<(String, String), Vec<&WorkflowEvent>> = BTreeMap::new();
    let mut by_run: BTreeMap<String, Vec<&WorkflowEvent>> = BTreeMap::new();
    for e in &wfs {
        by_run.entry(e.run_id.clone()).or_default().push(e);
        if let Some(step) = &e.step_id {
            by_step.entry((e.run_id.clone(), step.clone())).or_default().push(e);
        }
    }
    let mut step_rows: BTreeMap<String, Vec<(WorkflowState, i64)>> = BTreeMap::new();
    for ((run, step), es) in &by_step {
        // Event order; exact ties are broken by attempt, then the names (as the view does).
        let mut sorted = es.clone();
        sorted.sort_by_key(|e| {
            (
                e.event_seq,
                e.event_time,
                e.state,
                e.attempt,
                e.step_name.clone(),
                e.step_type.clone(),
                e.workflow_name.clone(),
            )
        });
        let latest = sorted.last().unwrap();
        let attempts = es.iter().filter_map(|e| e.attempt).max().unwrap_or(1);
        step_rows.entry(run.clone()).or_default().push((latest.state, attempts));
        put(
            "workflow_steps",
            vec![
                Datum::Text(run.clone()),
                Datum::Text(step.clone()),
                text(&sorted.iter().find_map(|e| e.step_name.clone())),
                text(&sorted.iter().find_map(|e| e.step_type.clone())),
                Datum::Text(latest.state.as_str().into()),
                Datum::Int(attempts),
                es.iter()
                    .filter(|e| e.state == WorkflowState::Running)
                    .filter_map(|e| e.event_time)
                    .min()
                    .map_or(Datum::Null, Datum::Timestamp),
                if latest.state.is_terminal() {
                    latest.event_time.map_or(Datum::Null, Datum::Timestamp)
                } else {
                    Datum::Null
                },
            ],
        );
    }
    for (run, es) in &by_run {
        let mut run_level: Vec<&&WorkflowEvent> = es.iter().filter(|e| e.step_id.is_none()).collect();
        // Exact ties in event order: the smaller workflow name first.
        run_level.sort_by_key(|e| (order(e), e.workflow_name.clone()));
        let latest = run_level.last();
        let mut stepped: Vec<&&WorkflowEvent> = es.iter().filter(|e| e.step_id.is_some()).collect();
        stepped.sort_by_key(|e| {
            (
                e.step_id.clone(),
                (e.event_seq, e.event_time, e.state, e.attempt),
                (e.step_name.clone(), e.step_type.clone(), e.workflow_name.clone()),
            )
        });
        let name = run_level
            .iter()
            .find_map(|e| e.workflow_name.clone())
            .or_else(|| stepped.iter().find_map(|e| e.workflow_name.clone()));
        let steps = step_rows.get(run).cloned().unwrap_or_default();
        put(
            "workflow_runs",
            vec![
                Datum::Text(run.clone()),
                text(&name),
                latest.map_or(Datum::Null, |e| Datum::Text(e.state.as_str().into())),
                es.iter().filter_map(|e| e.event_time).min().map_or(Datum::Null, Datum::Timestamp),
                match latest {
                    Some(e) if e.state.is_terminal() => e.event_time.map_or(Datum::Null, Datum::Timestamp),
                    _ => Datum::Null,
                },
                Datum::Int(steps.len() as i64),
                Datum::Int(steps.iter().filter(|s| s.0 == WorkflowState::Completed).count() as i64),
                Datum::Int(
                    steps.iter().filter(|s| matches!(s.0, WorkflowState::Failed | WorkflowState::TimedOut)).count()
                        as i64,
                ),
                Datum::Int(steps.iter().map(|s| s.1 - 1).sum()),
            ],
        );
    }

    // documents and collection_stats
    let mut by_doc: BTreeMap<(String, String), Vec<&KnowledgeEvent>> = BTreeMap::new();
    let mut by_coll: BTreeMap<String, (i64, i64, i64, Option<i64>)> = BTreeMap::new();
    for k in &kns {
        by_doc.entry((k.collection.clone(), k.document_id.clone())).or_default().push(k);
        let c = by_coll.entry(k.collection.clone()).or_default();
        c.1 += 1;
        c.2 += i64::from(k.is_bot == Some(true));
    }
    for ((coll, doc), ks) in &by_doc {
        let winner = ks.iter().max_by_key(|k| (k.event_time, k.version, k.op, k.size_bytes)).unwrap();
        if winner.op == KnowledgeOp::Upsert {
            let c = by_coll.get_mut(coll).unwrap();
            c.0 += 1;
            if let Some(sz) = winner.size_bytes {
                c.3 = Some(c.3.unwrap_or(0) + sz);
            }
            put(
                "documents",
                vec![
                    Datum::Text(coll.clone()),
                    Datum::Text(doc.clone()),
                    int(winner.version),
                    int(winner.size_bytes),
                    winner.event_time.map_or(Datum::Null, Datum::Timestamp),
                    Datum::Int(ks.len() as i64),
                ],
            );
        }
    }
    for (coll, (docs, edits, bots, size)) in by_coll {
        put(
            "collection_stats",
            vec![Datum::Text(coll), Datum::Int(docs), Datum::Int(edits), Datum::Int(bots), int(size)],
        );
    }
    out
}

const VIEWS: [&str; 10] = [
    "model_prices",
    "agent_traces",
    "tool_usage",
    "model_usage",
    "span_costs",
    "cost_by_agent_day",
    "workflow_runs",
    "workflow_steps",
    "documents",
    "collection_stats",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn incremental_views_equal_batch_recomputation(history in history()) {
        let (batches, live, prices) = materialize(&history);
        let expected = recompute(&live, &prices);
        for workers in [1, 2, 4] {
            let got = run_batches(workers, batches.clone());
            for view in VIEWS {
                let empty = HashMap::new();
                let want = expected.get(view).unwrap_or(&empty);
                prop_assert_eq!(&got[view], want, "view {} at {} workers", view, workers);
            }
        }
    }
}
