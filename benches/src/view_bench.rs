//! `amx-view-bench`: incremental maintenance of a SQL view with a join and a group-by,
//! against recomputing it from scratch with DataFusion.
//!
//! ```text
//! cargo run --release -p amx-benches --bin amx-view-bench -- [--rows 1000000] [--changes 1000] [--workers 1]
//! ```
//! Tables shaped like the demo workload: `spans(trace_id TEXT, tool_name TEXT, output_tokens
//! BIGINT)` with `--rows` rows over `--rows / 10` traces and 30 tools, and `traces(trace_id
//! TEXT, agent_name TEXT)` over 50 agents. The view:
//! `SELECT t.agent_name, s.tool_name, count(*), sum(s.output_tokens) FROM spans s JOIN traces t
//! ON s.trace_id = t.trace_id GROUP BY t.agent_name, s.tool_name`.
//! It loads the tables (one epoch), then applies 5 batches of `--changes` changes to `spans`
//! (half inserts, half deletes of present rows), timing each until the view reflects it; then
//! it times DataFusion answering the same query over the same 1M-row tables (3 runs).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use amx_dataflows::row::{Datum, Row};
use amx_operators::CollectionExt;
use amx_sql::render::Renderer;
use amx_sql::views::ViewPlanner;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;
use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use amx_benches::{arg, peak_rss_mib};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VIEW: &str = "SELECT t.agent_name, s.tool_name, count(*) AS calls, sum(s.output_tokens) AS tokens \
                    FROM spans s JOIN traces t ON s.trace_id = t.trace_id GROUP BY t.agent_name, s.tool_name";

fn span(rng: &mut SmallRng, traces: usize) -> Row {
    vec![
        Datum::Text(format!("{:032x}", rng.random_range(0..traces as u128) * 0x9e37_79b9_7f4a_7c15)),
        Datum::Text(format!("tool_{:02}", rng.random_range(0..30))),
        Datum::Int(rng.random_range(1..2000)),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // As the engine's binary does (README, "Transparent huge pages").
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let rows = arg(&args, "--rows", 1_000_000)?;
    let changes = arg(&args, "--changes", 1_000)?;
    let workers = arg(&args, "--workers", 1)?;
    let traces = (rows / 10).max(1);
    let rounds = 5;

    let mut rng = SmallRng::seed_from_u64(42);
    let spans: Vec<Row> = (0..rows).map(|_| span(&mut rng, traces)).collect();
    let trace_rows: Vec<Row> = (0..traces as u128)
        .map(|t| {
            vec![
                Datum::Text(format!("{:032x}", t * 0x9e37_79b9_7f4a_7c15)),
                Datum::Text(format!("agent_{:02}", rng.random_range(0..50))),
            ]
        })
        .collect();
    // Batches of changes: half new spans, half deletes of distinct present spans.
    let mut batches: Vec<Vec<(Row, isize)>> = Vec::new();
    let mut next_delete = 0usize;
    for _ in 0..rounds {
        let mut batch = Vec::new();
        for k in 0..changes {
            if k % 2 == 0 {
                batch.push((span(&mut rng, traces), 1));
            } else {
                batch.push((spans[next_delete].clone(), -1));
                next_delete += 1;
            }
        }
        batches.push(batch);
    }

    let schema = |cols: &[(&str, DataType)]| -> SchemaRef {
        Arc::new(Schema::new(cols.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect::<Vec<_>>()))
    };
    let spans_schema =
        schema(&[("trace_id", DataType::Utf8), ("tool_name", DataType::Utf8), ("output_tokens", DataType::Int64)]);
    let traces_schema = schema(&[("trace_id", DataType::Utf8), ("agent_name", DataType::Utf8)]);
    let tables = [("spans".to_owned(), spans_schema.clone()), ("traces".to_owned(), traces_schema.clone())];
    let mut planner = ViewPlanner::new(&tables)?;
    let view = planner.create("v", VIEW)?.clone();

    let timings: Arc<Mutex<(f64, Vec<f64>, usize)>> = Arc::default();
    let out = timings.clone();
    let (spans_c, traces_c, batches_c) = (Arc::new(spans.clone()), Arc::new(trace_rows.clone()), Arc::new(batches));
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let result_rows: std::rc::Rc<std::cell::RefCell<std::collections::HashMap<Row, isize>>> = Default::default();
        let sink = result_rows.clone();
        let (mut s_in, mut t_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (s_in, s) = scope.new_collection::<Row, isize>();
            let (t_in, t) = scope.new_collection::<Row, isize>();
            let mut renderer = Renderer::new([("spans".to_owned(), s), ("traces".to_owned(), t)].into_iter().collect());
            let (probe, _) = renderer
                .render_view(&view)
                .expect("renders")
                .gather_to(0)
                .inspect_batch(move |_, d| {
                    let mut m = sink.borrow_mut();
                    for (r, _, n) in d {
                        *m.entry(r.clone()).or_insert(0) += n;
                    }
                })
                .probe();
            (s_in, t_in, probe)
        });
        let start = Instant::now();
        for (i, r) in spans_c.iter().enumerate() {
            if i % peers == index {
                s_in.insert(r.clone());
            }
        }
        for (i, r) in traces_c.iter().enumerate() {
            if i % peers == index {
                t_in.insert(r.clone());
            }
        }
        s_in.advance_to(1);
        t_in.advance_to(1);
        s_in.flush();
        t_in.flush();
        while probe.less_than(&1) {
            worker.step();
        }
        let load = start.elapsed().as_secs_f64();
        let mut updates = Vec::new();
        for (round, batch) in batches_c.iter().enumerate() {
            let t = round as u64 + 2;
            let start = Instant::now();
            for (i, (r, d)) in batch.iter().enumerate() {
                if i % peers == index {
                    s_in.update(r.clone(), *d);
                }
            }
            s_in.advance_to(t);
            t_in.advance_to(t);
            s_in.flush();
            t_in.flush();
            while probe.less_than(&t) {
                worker.step();
            }
            updates.push(start.elapsed().as_secs_f64());
        }
        if index == 0 {
            let groups = result_rows.borrow().values().filter(|n| **n != 0).count();
            *out.lock().unwrap() = (load, updates, groups);
        }
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    let (load, updates, groups) = timings.lock().unwrap().clone();

    // DataFusion: the same query over the same tables (after all changes), from scratch.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    let to_batch = |rows: &[Row], schema: &SchemaRef| {
        let refs: Vec<&Row> = rows.iter().collect();
        amx_sql::convert::rows_to_batch(&refs, schema)
    };
    let ctx =
        SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(workers));
    ctx.register_table(
        "spans",
        Arc::new(MemTable::try_new(spans_schema.clone(), vec![vec![to_batch(&spans, &spans_schema)?]])?),
    )?;
    ctx.register_table(
        "traces",
        Arc::new(MemTable::try_new(traces_schema.clone(), vec![vec![to_batch(&trace_rows, &traces_schema)?]])?),
    )?;
    let mut recompute = Vec::new();
    let mut df_groups = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let batches = runtime.block_on(async { ctx.sql(VIEW).await?.collect().await })?;
        recompute.push(start.elapsed().as_secs_f64());
        df_groups = batches.iter().map(|b| b.num_rows()).sum();
    }

    let update = median(updates);
    let full = median(recompute);
    println!(
        "amx-view-bench: {rows} spans, {traces} traces, {workers} workers: load {load:.2} s ({:.0} rows/s per core); \
         {changes} changes: incremental {:.2} ms (median of {rounds}; {:.0} changes/s per core), \
         DataFusion recompute {:.1} ms (median of 3), {:.0}x; groups {groups} (DataFusion {df_groups}); peak RSS {:.0} MiB",
        (rows + traces) as f64 / load / workers as f64,
        update * 1000.0,
        changes as f64 / update / workers as f64,
        full * 1000.0,
        full / update,
        peak_rss_mib().unwrap_or(f64::NAN),
    );
    Ok(())
}
