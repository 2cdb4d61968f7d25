//! Every built-in view on small fixtures whose expected contents were worked out by hand
//! (the arithmetic is in the comments), at 1 and 3 workers.

use std::collections::HashMap;

use amx_dataflows::Diff;
use amx_dataflows::event::*;
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::testing::{Contents, run_batches};
use ordered_float::OrderedFloat;

const S: i64 = 1_000_000; // one second in µs

fn t(s: &str) -> Datum {
    Datum::Text(s.to_owned())
}
fn i(v: i64) -> Datum {
    Datum::Int(v)
}
fn f(v: f64) -> Datum {
    Datum::Float(OrderedFloat(v))
}
fn ts(v: i64) -> Datum {
    Datum::Timestamp(v)
}
const N: Datum = Datum::Null;

fn expect(contents: &Contents, view: &str, rows: Vec<Row>) {
    let mut want: HashMap<Row, Diff> = HashMap::new();
    for r in rows {
        *want.entry(r).or_insert(0) += 1;
    }
    let got = &contents[view];
    if got != &want {
        let mut g: Vec<_> = got.iter().collect();
        g.sort();
        let mut w: Vec<_> = want.iter().collect();
        w.sort();
        panic!("view {view} differs\n got: {g:#?}\nwant: {w:#?}");
    }
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: &str,
    op: &str,
    provider: Option<&str>,
    model: Option<&str>,
    tool: Option<&str>,
    agent: Option<&str>,
    tokens: (Option<i64>, Option<i64>),
    times: (Option<i64>, Option<i64>),
    status: SpanStatus,
) -> Event {
    let mut s = Span::new(TraceId::parse(trace), id, format!("{op} {id}"));
    s.operation = Some(op.to_owned());
    s.provider = provider.map(String::from);
    s.request_model = model.map(String::from);
    s.tool_name = tool.map(String::from);
    s.agent_name = agent.map(String::from);
    s.input_tokens = tokens.0;
    s.output_tokens = tokens.1;
    s.start_time = times.0;
    s.end_time = times.1;
    s.status = status;
    Event::Span(s)
}

fn eval(trace: &str, score: Option<f64>) -> Event {
    Event::Evaluation(Evaluation {
        trace_id: TraceId::parse(trace),
        span_id: None,
        name: "reward".into(),
        score: score.map(OrderedFloat),
        label: None,
    })
}

const T2: &str = "0af7651916cd43dd8448eb211c80319c";

fn agent_fixture() -> Vec<Event> {
    use SpanStatus::*;
    let oa = (Some("openai"), Some("gpt-4o"));
    vec![
        span(
            "t1",
            "s1",
            "chat",
            oa.0,
            oa.1,
            None,
            Some("alpha"),
            (Some(100), Some(20)),
            (Some(S), Some(S + 500_000)),
            Ok,
        ),
        span(
            "t1",
            "s2",
            "execute_tool",
            None,
            None,
            Some("search"),
            Some("alpha"),
            (None, None),
            (Some(1_600_000), Some(1_700_000)),
            Error,
        ),
        span("t1", "s3", "chat", oa.0, oa.1, None, None, (None, Some(30)), (Some(2 * S), Some(3 * S)), Ok),
        span(
            T2,
            "s4",
            "chat",
            oa.0,
            oa.1,
            None,
            Some("beta"),
            (Some(50), Some(5)),
            (Some(5 * S), Some(5 * S + 200_000)),
            Error,
        ),
        span(T2, "s5", "execute_tool", None, None, None, Some("beta"), (None, None), (None, None), Ok),
        span(T2, "s6", "execute_tool", None, None, Some("search"), Some("beta"), (None, None), (None, None), Ok),
        span("t3", "s7", "chat", Some("anthropic"), None, None, None, (None, None), (None, None), Unset),
        eval("t1", Some(1.0)),
        eval("t1", Some(0.0)),
        eval("t1", None),
    ]
}

#[test]
fn agent_views_by_hand() {
    for workers in [1, 3] {
        let batch: Vec<(Event, Diff)> = agent_fixture().into_iter().map(|e| (e, 1)).collect();
        let c = run_batches(workers, vec![batch]);
        assert_eq!(c["spans"].len(), 7);
        assert_eq!(c["evaluations"].len(), 3);
        // t1: 3 spans (2 chat, 1 tool in error); input 100 (s3's NULL ignored); output 20+30;
        // start min(1 s, 1.6 s, 2 s) = 1 s; end max(1.5 s, 1.7 s, 3 s) = 3 s; eval mean(1, 0) = 0.5.
        // T2: s4 errors -> status error; tool_errors counts tool spans only -> 0.
        // t3: nothing known but one unset chat span.
        expect(
            &c,
            "agent_traces",
            vec![
                vec![
                    t("t1"),
                    t("alpha"),
                    i(3),
                    i(2),
                    i(1),
                    i(1),
                    i(100),
                    i(50),
                    ts(S),
                    ts(3 * S),
                    t("error"),
                    f(0.5),
                    f(0.00075),
                ],
                vec![
                    t(T2),
                    t("beta"),
                    i(3),
                    i(1),
                    i(2),
                    i(0),
                    i(50),
                    i(5),
                    ts(5 * S),
                    ts(5 * S + 200_000),
                    t("error"),
                    N,
                    f(0.000175),
                ],
                vec![t("t3"), N, i(1), i(1), i(0), i(0), N, N, N, N, t("unset"), N, N],
            ],
        );
        // search: s2 (error, t1) and s6 (ok, T2); the NULL tool name is its own group (s5).
        expect(&c, "tool_usage", vec![vec![t("search"), i(2), i(1), i(2)], vec![N, i(1), i(0), i(1)]]);
        // openai/gpt-4o: s1, s3, s4; input 100 + 50; output 20 + 30 + 5; latencies 500, 1000, 200 ms.
        // sorted 200, 500, 1000: p50 = x[1] = 500; p95: h = 0.95*2 = 1.9 -> 500 + 0.9*(1000-500) = 950.
        expect(
            &c,
            "model_usage",
            vec![
                vec![t("openai"), t("gpt-4o"), i(3), i(1), i(150), i(55), f(500.0), f(950.0), f(0.000925)],
                vec![t("anthropic"), N, i(1), i(0), N, N, N, N, N],
            ],
        );
        // Costs at the shipped gpt-4o price (row `*`, `gpt-4o*`, valid from 1970: 2.50 USD per
        // 1M input tokens, 10.00 per 1M output): s1 100 · 2.5e-6 + 20 · 1e-5 = 0.00045;
        // s3 30 · 1e-5 = 0.0003; s4 50 · 2.5e-6 + 5 · 1e-5 = 0.000175. t1 = 0.00075,
        // T2 = 0.000175, gpt-4o = 0.000925; s7 names no model: no cost.
        let gpt4o = |trace: &str, span: &str, cost: f64| {
            vec![t(trace), t(span), t("openai"), t("gpt-4o"), t("*"), t("gpt-4o*"), ts(0), f(cost)]
        };
        expect(
            &c,
            "span_costs",
            vec![gpt4o("t1", "s1", 0.00045), gpt4o("t1", "s3", 0.0003), gpt4o(T2, "s4", 0.000175)],
        );
        // Traces by agent and the day they started (both on 1970-01-01); t3 has neither.
        expect(
            &c,
            "cost_by_agent_day",
            vec![
                vec![t("alpha"), ts(0), i(1), i(2), i(100), i(50), f(0.00075)],
                vec![t("beta"), ts(0), i(1), i(1), i(50), i(5), f(0.000175)],
                vec![N, N, i(1), i(1), N, N, N],
            ],
        );
    }
}

/// A price row is changed, then deleted: the spans it applies to are re-priced each time,
/// and their traces, models and days with them.
#[test]
fn a_changed_price_re_prices_history() {
    let spans: Vec<(Event, Diff)> = agent_fixture().into_iter().map(|e| (e, 1)).collect();
    let key = vec![t("openai"), t("gpt-4o"), ts(2 * S)];
    let price = |row: Option<Row>| {
        let change = TableRow { relation: "model_prices".into(), position: 1, key: key.clone(), row };
        vec![(Event::Table(change), 1)]
    };
    // openai's own gpt-4o price from 2 s on: 1.00 USD per 1M input, 2.00 per 1M output.
    let set = price(Some(vec![t("openai"), t("gpt-4o"), ts(2 * S), f(1.0), N, f(2.0), N]));
    for workers in [1, 3] {
        let c = run_batches(workers, vec![spans.clone(), set.clone()]);
        // s1 started at 1 s: the shipped price, 0.00045. s3 (2 s): 30 · 2e-6 = 0.00006.
        // s4 (5 s): 50 · 1e-6 + 5 · 2e-6 = 0.00006. t1 = 0.00051, gpt-4o = 0.00057.
        let own = [t("openai"), t("gpt-4o"), ts(2 * S)];
        let row = |trace: &str, span: &str, price: &[Datum], cost: f64| {
            let mut r = vec![t(trace), t(span), t("openai"), t("gpt-4o")];
            r.extend_from_slice(price);
            r.push(f(cost));
            r
        };
        let shipped = [t("*"), t("gpt-4o*"), ts(0)];
        expect(
            &c,
            "span_costs",
            vec![
                row("t1", "s1", &shipped, 0.00045),
                row("t1", "s3", &own[..], 0.00006),
                row(T2, "s4", &own[..], 0.00006),
            ],
        );
        let costs = |c: &Contents, view: &str, column: usize| {
            let mut v: Vec<(String, Datum)> =
                c[view].keys().map(|r| (format!("{:?}", &r[..2]), r[column].clone())).collect();
            v.sort();
            v.into_iter().map(|(_, cost)| cost).collect::<Vec<_>>()
        };
        // agent_traces by trace id text: T2 ("0af7…") sorts before t1 and t3.
        assert_eq!(costs(&c, "agent_traces", 12), vec![f(0.00006), f(0.00051), N]);
        assert_eq!(costs(&c, "model_usage", 8), vec![N, f(0.00057)]);
        assert_eq!(costs(&c, "cost_by_agent_day", 6), vec![N, f(0.00051), f(0.00006)]);
        assert!(c["model_prices"].contains_key(&vec![t("openai"), t("gpt-4o"), ts(2 * S), f(1.0), N, f(2.0), N]));
        // Deleted again: every cost is back at the shipped price.
        let c = run_batches(workers, vec![spans.clone(), set.clone(), price(None)]);
        assert_eq!(costs(&c, "agent_traces", 12), vec![f(0.000175), f(0.00075), N]);
        assert_eq!(costs(&c, "model_usage", 8), vec![N, f(0.000925)]);
        assert_eq!(c["model_prices"].len(), amx_dataflows::prices::default_rows().len());
    }
}

#[test]
fn agent_views_retract_a_span() {
    let first: Vec<(Event, Diff)> = agent_fixture().into_iter().map(|e| (e, 1)).collect();
    let s3 = first[2].0.clone();
    for workers in [1, 2] {
        let c = run_batches(workers, vec![first.clone(), vec![(s3.clone(), -1)]]);
        // Without s3: t1 has 2 spans, 1 chat, output 20, end = 1.7 s.
        expect(
            &c,
            "agent_traces",
            vec![
                vec![
                    t("t1"),
                    t("alpha"),
                    i(2),
                    i(1),
                    i(1),
                    i(1),
                    i(100),
                    i(20),
                    ts(S),
                    ts(1_700_000),
                    t("error"),
                    f(0.5),
                    f(0.00045),
                ],
                vec![
                    t(T2),
                    t("beta"),
                    i(3),
                    i(1),
                    i(2),
                    i(0),
                    i(50),
                    i(5),
                    ts(5 * S),
                    ts(5 * S + 200_000),
                    t("error"),
                    N,
                    f(0.000175),
                ],
                vec![t("t3"), N, i(1), i(1), i(0), i(0), N, N, N, N, t("unset"), N, N],
            ],
        );
        // latencies 200, 500: p50 = 200 + 0.5*300 = 350; p95 = 200 + 0.95*300 = 485.
        expect(
            &c,
            "model_usage",
            vec![
                vec![t("openai"), t("gpt-4o"), i(2), i(1), i(150), i(25), f(350.0), f(485.0), f(0.000625)],
                vec![t("anthropic"), N, i(1), i(0), N, N, N, N, N],
            ],
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn wf(
    run: &str,
    name: Option<&str>,
    step: Option<(&str, &str)>,
    state: WorkflowState,
    attempt: Option<i64>,
    time_s: i64,
    seq: i64,
    failure: Option<&str>,
) -> Event {
    Event::Workflow(WorkflowEvent {
        run_id: run.into(),
        workflow_name: name.map(String::from),
        step_id: step.map(|s| s.0.to_owned()),
        step_name: step.map(|s| s.1.to_owned()),
        step_type: step.map(|_| "activity".to_owned()),
        state,
        raw_state: state.as_str().to_owned(),
        attempt,
        event_time: Some(time_s * S),
        event_seq: Some(seq),
        failure_message: failure.map(String::from),
    })
}

#[test]
fn workflow_views_by_hand() {
    use WorkflowState::*;
    let w = Some("checkout");
    let charge = Some(("5", "charge"));
    let ship = Some(("6", "ship"));
    // The run's final event arrives first (out of order); the activity `charge` was retried and
    // succeeded on attempt 3; `ship` failed.
    let events = vec![
        wf("r1", w, None, Failed, None, 17, 8, Some("ship failed")),
        wf("r1", w, None, Running, None, 10, 1, None),
        wf("r1", w, charge, Scheduled, None, 11, 2, None),
        wf("r1", w, charge, Running, Some(3), 12, 3, None),
        wf("r1", w, charge, Completed, Some(3), 13, 4, None),
        wf("r1", w, ship, Scheduled, None, 14, 5, None),
        wf("r1", w, ship, Running, Some(1), 15, 6, None),
        wf("r1", w, ship, Failed, Some(1), 16, 7, Some("boom")),
        wf("r2", None, None, Running, None, 20, 1, None),
        wf("r2", None, Some(("1", "plan")), Scheduled, None, 21, 2, None),
    ];
    for workers in [1, 3] {
        // Two batches: the late final event first, the rest after.
        let mut batches: Vec<Vec<(Event, Diff)>> = vec![vec![], vec![]];
        for (k, e) in events.iter().enumerate() {
            batches[usize::from(k > 0)].push((e.clone(), 1));
        }
        let c = run_batches(workers, batches);
        expect(
            &c,
            "workflow_steps",
            vec![
                vec![t("r1"), t("5"), t("charge"), t("activity"), t("COMPLETED"), i(3), ts(12 * S), ts(13 * S)],
                vec![t("r1"), t("6"), t("ship"), t("activity"), t("FAILED"), i(1), ts(15 * S), ts(16 * S)],
                vec![t("r2"), t("1"), t("plan"), t("activity"), t("SCHEDULED"), i(1), N, N],
            ],
        );
        // r1: latest run event seq 8 FAILED at 17 s; started at the first event, 10 s;
        // 2 steps, 1 completed, 1 failed; retries = (3-1) + (1-1) = 2.
        expect(
            &c,
            "workflow_runs",
            vec![
                vec![t("r1"), t("checkout"), t("FAILED"), ts(10 * S), ts(17 * S), i(2), i(1), i(1), i(2)],
                vec![t("r2"), N, t("RUNNING"), ts(20 * S), N, i(1), i(0), i(0), i(0)],
            ],
        );
    }
}

fn kn(
    coll: &str,
    doc: &str,
    op: KnowledgeOp,
    version: Option<i64>,
    size: Option<i64>,
    time_s: i64,
    bot: bool,
) -> Event {
    Event::Knowledge(KnowledgeEvent {
        collection: coll.into(),
        document_id: doc.into(),
        op,
        version,
        size_bytes: size,
        event_time: Some(time_s * S),
        actor: Some(if bot { "bot" } else { "alice" }.into()),
        is_bot: Some(bot),
        source_offset: None,
    })
}

#[test]
fn knowledge_views_by_hand() {
    use KnowledgeOp::*;
    let arrivals = vec![
        // A: version 2 (t=20) arrives before version 1 (t=10): v2 stays current.
        kn("kb", "A", Upsert, Some(2), Some(200), 20, false),
        kn("kb", "A", Upsert, Some(1), Some(100), 10, false),
        // B: deleted after its upsert: gone.
        kn("kb", "B", Upsert, Some(1), Some(50), 10, false),
        kn("kb", "B", Delete, None, None, 30, true),
        // C: size unknown, edited by a bot.
        kn("kb", "C", Upsert, Some(1), None, 5, true),
        // D: deleted, then upserted again later: live.
        kn("kb", "D", Delete, None, None, 5, false),
        kn("kb", "D", Upsert, Some(3), Some(10), 40, false),
        // A collection whose only document was deleted.
        kn("old", "X", Upsert, Some(1), Some(7), 1, false),
        kn("old", "X", Delete, Some(2), None, 2, false),
    ];
    for workers in [1, 3] {
        // One event per batch, in arrival order.
        let batches = arrivals.iter().map(|e| vec![(e.clone(), 1)]).collect();
        let c = run_batches(workers, batches);
        expect(
            &c,
            "documents",
            vec![
                vec![t("kb"), t("A"), i(2), i(200), ts(20 * S), i(2)],
                vec![t("kb"), t("C"), i(1), N, ts(5 * S), i(1)],
                vec![t("kb"), t("D"), i(3), i(10), ts(40 * S), i(2)],
            ],
        );
        // kb: live A, C, D; edits 2+2+1+2 = 7; bot edits B's delete + C = 2; size 200 + 10 (C unknown).
        // old: no live document, 2 edits, size NULL.
        expect(
            &c,
            "collection_stats",
            vec![vec![t("kb"), i(3), i(7), i(2), i(210)], vec![t("old"), i(0), i(2), i(0), N]],
        );
    }
}

#[test]
fn ingest_errors_pass_through() {
    let e = IngestError::new("src", "f.jsonl:2", "expected value at line 1 column 1", &"x".repeat(5000));
    assert_eq!(e.raw.len(), INGEST_ERROR_RAW_MAX_BYTES);
    let c = run_batches(2, vec![vec![(Event::Error(e), 1)]]);
    let rows: Vec<&Row> = c["ingest_errors"].keys().collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], t("f.jsonl:2"));
}

/// Error rows of the built-in views: `[view, error]`.
fn errors(c: &Contents) -> Vec<Row> {
    let mut rows: Vec<Row> = c["aimatrix_view_errors"].keys().cloned().collect();
    rows.sort();
    rows
}

#[test]
fn collection_stats_size_beyond_bigint_is_null_and_an_error_row() {
    use KnowledgeOp::*;
    let a = kn("c", "a", Upsert, Some(1), Some(i64::MAX), 1, false);
    let b = kn("c", "b", Upsert, Some(1), Some(1), 2, false);
    for workers in [1, 3] {
        let c = run_batches(workers, vec![vec![(a.clone(), 1), (b.clone(), 1)]]);
        // 9223372036854775807 + 1 = 2^63 = 9223372036854775808 > i64::MAX: NULL, not a wrapped
        // -9223372036854775808; 2 live documents, 2 edits, no bot edits.
        expect(&c, "collection_stats", vec![vec![t("c"), i(2), i(2), i(0), N]]);
        assert_eq!(
            errors(&c),
            vec![vec![
                t("collection_stats"),
                t("integer overflow in size_bytes (BIGINT): 9223372036854775808 (key ('c'))")
            ]]
        );
        // Deleting b brings the sum back to 9223372036854775807: the row has it again and the
        // error row is retracted.
        let c = run_batches(workers, vec![vec![(a.clone(), 1), (b.clone(), 1)], vec![(b.clone(), -1)]]);
        expect(&c, "collection_stats", vec![vec![t("c"), i(1), i(1), i(0), i(i64::MAX)]]);
        assert!(errors(&c).is_empty());
    }
}

#[test]
fn workflow_retries_beyond_bigint_are_null_and_an_error_row() {
    use WorkflowState::*;
    let max = Some(i64::MAX);
    let events = [
        wf("r", None, Some(("1", "a")), Running, max, 1, 1, None),
        wf("r", None, Some(("2", "b")), Running, max, 2, 2, None),
        wf("r", None, Some(("3", "c")), Running, max, 3, 3, None),
        // A nonsensical attempt far below 1 counts no retries (and must not overflow).
        wf("q", None, Some(("1", "a")), Running, Some(i64::MIN), 4, 1, None),
    ];
    for workers in [1, 3] {
        let c = run_batches(workers, vec![events.iter().map(|e| (e.clone(), 1)).collect()]);
        let step = |run: &str, id: &str, name: &str, attempts: i64, s: i64| {
            vec![t(run), t(id), t(name), t("activity"), t("RUNNING"), i(attempts), ts(s * S), N]
        };
        expect(
            &c,
            "workflow_steps",
            vec![
                step("r", "1", "a", i64::MAX, 1),
                step("r", "2", "b", i64::MAX, 2),
                step("r", "3", "c", i64::MAX, 3),
                step("q", "1", "a", i64::MIN, 4),
            ],
        );
        // r: retries = 3 · (9223372036854775807 − 1) = 27670116110564327418 > i64::MAX: NULL
        // (the wrapped value would be 9223372036854775802). q: max(i64::MIN − 1, 0) = 0.
        expect(
            &c,
            "workflow_runs",
            vec![
                vec![t("r"), N, N, ts(S), N, i(3), i(0), i(0), N],
                vec![t("q"), N, N, ts(4 * S), N, i(1), i(0), i(0), i(0)],
            ],
        );
        assert_eq!(
            errors(&c),
            vec![vec![t("workflow_runs"), t("integer overflow in retries (BIGINT): 27670116110564327418 (key ('r'))")]]
        );
    }
}

#[test]
fn token_sums_beyond_bigint_are_null_and_error_rows() {
    let p = (Some("p"), Some("m"));
    let spans = [
        span("big", "s1", "chat", p.0, p.1, None, None, (Some(i64::MAX), None), (None, None), SpanStatus::Unset),
        span("big", "s2", "chat", p.0, p.1, None, None, (Some(1), None), (None, None), SpanStatus::Unset),
    ];
    for workers in [1, 3] {
        let c = run_batches(workers, vec![spans.iter().map(|e| (e.clone(), 1)).collect()]);
        // input_tokens: 9223372036854775807 + 1 = 9223372036854775808 > i64::MAX in both views.
        expect(&c, "agent_traces", vec![vec![t("big"), N, i(2), i(2), i(0), i(0), N, N, N, N, t("unset"), N, N]]);
        expect(&c, "model_usage", vec![vec![t("p"), t("m"), i(2), i(0), N, N, N, N, N]]);
        assert_eq!(
            errors(&c),
            vec![
                vec![
                    t("agent_traces"),
                    t("integer overflow in input_tokens (BIGINT): 9223372036854775808 (key ('big'))")
                ],
                vec![
                    t("model_usage"),
                    t("integer overflow in input_tokens (BIGINT): 9223372036854775808 (key ('p', 'm'))")
                ],
            ]
        );
    }
}

#[test]
fn eval_score_mean_is_exact_whatever_the_order() {
    let mut events = vec![span("e", "s1", "chat", None, None, None, None, (None, None), (None, None), SpanStatus::Ok)];
    events.extend([eval("e", Some(-1e31)), eval("e", Some(1e31)), eval("e", Some(3.0))]);
    for workers in [1, 3] {
        let c = run_batches(workers, vec![events.iter().map(|e| (e.clone(), 1)).collect()]);
        // (-1e31 + 1e31 + 3) / 3 = 1 exactly; adding in sorted order (-1e31, 3, 1e31) gives 0.
        expect(&c, "agent_traces", vec![vec![t("e"), N, i(1), i(1), i(0), i(0), N, N, N, N, t("ok"), f(1.0), N]]);
    }
}

/// A price out of range (here 1e300 USD per 1M tokens, where 1e300 · 1,000 tokens would
/// overflow any integer) makes its row price nothing — the spans it wins have no cost, as
/// with a NULL price — and is an error row naming it.
#[test]
fn a_price_out_of_range_prices_nothing_and_is_an_error_row() {
    let spans: Vec<(Event, Diff)> = agent_fixture().into_iter().map(|e| (e, 1)).collect();
    let key = vec![t("openai"), t("gpt-4o"), ts(0)];
    let row = vec![t("openai"), t("gpt-4o"), ts(0), f(1e300), N, f(1.0), N];
    let change = TableRow { relation: "model_prices".into(), position: 1, key, row: Some(row) };
    for workers in [1, 3] {
        let c = run_batches(workers, vec![spans.clone(), vec![(Event::Table(change.clone()), 1)]]);
        // s1, s3 and s4 (openai, gpt-4o) are won by the exact row: no cost, no trace cost.
        assert!(c["span_costs"].is_empty(), "{:?}", c["span_costs"]);
        assert!(c["agent_traces"].keys().all(|r| r[12] == N));
        assert_eq!(
            errors(&c),
            vec![vec![
                t("model_prices"),
                t(
                    "price out of range in input_usd_per_mtok: 1e300 (key ('openai', 'gpt-4o', 1970-01-01 00:00:00)): USD \
                   per 1M tokens must be in 0..=1000000; the row prices nothing"
                )
            ]]
        );
    }
}
