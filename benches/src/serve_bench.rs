//! `amx-serve-bench`: the long-running cluster under load, in process (the controller API
//! the HTTP handlers call; no HTTP in the measured path).
//!
//! ```text
//! cargo run --release -p amx-benches --bin amx-serve-bench -- [--keys N] [--workers W]
//!     [--rate EVENTS_PER_S] [--seconds S] [--queries Q] [--exert P] [--introspection 0|1]
//! ```
//! (`--exert P`: [`amx_cluster::ClusterConfig::exert_proportionality`]: 0, no idle merging;
//! Materialize uses 16. `--introspection 0`: the workers do not fold their logging streams,
//! [`amx_cluster::worker::WorkerOptions::introspection`]; default 1, as a server.)
//! 1. Loads `N` knowledge events with distinct document ids through a push source; a job view
//!    `by_id` (`SELECT document_id, collection, size_bytes FROM knowledge_events`) arranges
//!    them. Reports the load rate and resident memory (VmRSS) before and after: the state is
//!    the `knowledge_events` arrangement, the built-in `documents` and `collection_stats` views
//!    and `by_id`.
//! 2. For `S` seconds, pushes new events at `EVENTS_PER_S` (a batch every 10 ms, each its own
//!    push, open loop: a batch is sent on time whether or not the earlier ones are
//!    acknowledged, as independent clients would) while a subscription to `by_id` times each
//!    batch from its push to its arrival in the view (event-to-view freshness), and point
//!    queries (`WHERE document_id = …`, one at a time) run: p50/p99 latency and queries/s.
//!    With introspection on, the operators' longest activations in that period
//!    (`aimatrix_operator_durations`, reported about once a second): a worker answers a peek
//!    only between two activations, so these are the waits a query can meet.
//! 3. Cancels the job (drops `by_id`) and reports memory again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amx_benches::{arg, count, percentile, rss_mib};
use amx_cluster::job::Job;
use amx_cluster::{ClusterConfig, Controller, SqlAnswer, SubscribeEvent};
use amx_dataflows::row::Datum;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use amx_benches::knowledge_line as line;

fn main() -> anyhow::Result<()> {
    // As the engine's binary does (README, "Transparent huge pages").
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let keys = arg(&args, "--keys", 1_000_000)?;
    let workers = arg(&args, "--workers", 1)?;
    let rate = arg(&args, "--rate", 100_000)?;
    let seconds = arg(&args, "--seconds", 10)?;
    let queries = arg(&args, "--queries", 2_000)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build()?;
    let exert_proportionality = arg(&args, "--exert", amx_cluster::controller::DEFAULT_EXERT_PROPORTIONALITY)?;
    let introspection = arg(&args, "--introspection", 1)? != 0;
    let worker = amx_cluster::worker::WorkerOptions { introspection, ..Default::default() };
    let controller = Controller::start(ClusterConfig { workers, exert_proportionality, worker, ..Default::default() })?;
    let job = Job::parse(amx_benches::KNOWLEDGE_JOB, std::path::Path::new("."))?;
    let id = controller.install_job(&job)?;
    runtime.block_on(async {
        let before = rss_mib();
        // 1. Load.
        let t = Instant::now();
        for start in (0..keys).step_by(10_000) {
            let body: Vec<String> = (start..(start + 10_000).min(keys)).map(|i| line(&format!("doc-{i}"), i)).collect();
            controller.ingest(id, "events", &body.join("\n")).await?;
        }
        while count(&controller, "by_id").await? < keys as i64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let load = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded = rss_mib();
        println!(
            "load: {keys} events in {load:.2} s ({:.0} events/s, {:.0} per worker); RSS {before:.0} → {loaded:.0} MiB \
             ({:.0} MiB per 1M events: knowledge_events, documents, collection_stats and by_id arranged)",
            keys as f64 / load,
            keys as f64 / load / workers as f64,
            (loaded - before) * 1e6 / keys as f64
        );

        // 2. Ingest at a fixed rate; freshness through a subscription; point queries.
        let mut subscription = controller.subscribe("by_id", "bench")?;
        // The snapshot first.
        while let Some(event) = subscription.recv().await {
            if matches!(event, SubscribeEvent::Snapshot { last: true, .. }) {
                break;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let per_tick = (rate / 100).max(1);
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        let feeder = {
            let controller = controller.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                // Late ticks are not made up in a burst: the rate stays the one asked.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = keys;
                let mut pushes = tokio::task::JoinSet::new();
                let (mut most_in_flight, mut acknowledged) = (0, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let marker = format!("fresh-{n}");
                    let mut body: Vec<String> = vec![line(&marker, n)];
                    body.extend((1..per_tick).map(|k| line(&format!("doc-{}", n + k), n + k)));
                    // Registered before the push: its change may reach the subscription
                    // before the push is acknowledged.
                    let _ = sent_tx.send((marker, Instant::now()));
                    let controller = controller.clone();
                    let body = body.join("\n");
                    pushes.spawn(async move { controller.ingest(id, "events", &body).await.map(|r| r.accepted) });
                    while let Some(done) = pushes.try_join_next() {
                        acknowledged += done??;
                    }
                    most_in_flight = most_in_flight.max(pushes.len());
                    n += per_tick;
                }
                while let Some(done) = pushes.join_next().await {
                    acknowledged += done??;
                }
                Ok::<_, anyhow::Error>((acknowledged, most_in_flight))
            })
        };
        let watcher = tokio::spawn(async move {
            let mut pending: std::collections::HashMap<String, Instant> = Default::default();
            let mut freshness = Vec::new();
            while let Some(event) = subscription.recv().await {
                while let Ok((marker, sent)) = sent_rx.try_recv() {
                    pending.insert(marker, sent);
                }
                if let SubscribeEvent::Changes(changes) = event {
                    let now = Instant::now();
                    for (row, _, diff) in changes {
                        if diff > 0
                            && let Some(Datum::Text(id)) = row.first()
                            && let Some(sent) = pending.remove(id)
                        {
                            freshness.push(now.duration_since(sent).as_secs_f64() * 1e3);
                        }
                    }
                }
                if pending.is_empty() && sent_rx.is_closed() {
                    break;
                }
            }
            freshness
        });
        let activations_before = activations(&controller).await?;
        let t = Instant::now();
        let mut latencies = Vec::new();
        while t.elapsed() < Duration::from_secs(seconds as u64) && latencies.len() < queries {
            let k = (latencies.len() * 7919) % keys;
            let q = Instant::now();
            let answer = controller.execute_sql(&format!("SELECT * FROM by_id WHERE document_id = 'doc-{k}'")).await?;
            latencies.push(q.elapsed().as_secs_f64() * 1e3);
            if let SqlAnswer::Rows { batches, .. } = answer {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                anyhow::ensure!(rows == 1, "doc-{k}: {rows} rows");
            }
        }
        let query_secs = t.elapsed().as_secs_f64();
        // Keep ingesting for the rest of the period.
        let rest = Duration::from_secs(seconds as u64).saturating_sub(t.elapsed());
        tokio::time::sleep(rest).await;
        stop.store(true, Ordering::Relaxed);
        let (pushed, most_in_flight) = feeder.await??;
        let ingest_secs = t.elapsed().as_secs_f64();
        let mut freshness = tokio::time::timeout(Duration::from_secs(30), watcher).await??;
        latencies.sort_by(f64::total_cmp);
        freshness.sort_by(f64::total_cmp);
        println!(
            "while ingesting {:.0} events/s (asked {rate}; at most {most_in_flight} pushes unacknowledged at once): \
             point query p50 {:.2} ms, p99 {:.2} ms, {:.0} queries/s ({} queries)",
            pushed as f64 / ingest_secs,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len() as f64 / query_secs,
            latencies.len()
        );
        println!(
            "event-to-view freshness (push to subscription): p50 {:.1} ms, p99 {:.1} ms ({} batches of {per_tick})",
            percentile(&freshness, 0.5),
            percentile(&freshness, 0.99),
            freshness.len()
        );

        if introspection {
            // Reports arrive about once a second: the last one of the period.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            report_long_activations(&activations_before, &activations(&controller).await?);
        }

        // 3. Cancel the job: `by_id` is dropped.
        let with_view = rss_mib();
        controller.cancel_job(id, false).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!(
            "cancel: RSS {with_view:.0} → {:.0} MiB (the canonical relations and built-in views keep what was ingested)",
            rss_mib()
        );
        Ok::<(), anyhow::Error>(())
    })?;
    controller.shutdown();
    controller.join()
}

/// The workers' operator activations so far by length: (worker, operator id, `duration_ns`
/// bucket) → (the operator's name, its depth: 1 for a dataflow, activations).
type Activations = std::collections::BTreeMap<(i64, i64, i64), (String, usize, i64)>;

/// Reads [`Activations`] from `aimatrix_operator_durations` and `aimatrix_operators`.
async fn activations(controller: &Controller) -> anyhow::Result<Activations> {
    use arrow::array::{Int64Array, StringArray};
    let sql = "SELECT d.worker, d.id, d.duration_ns, d.activations, o.name, o.address \
               FROM aimatrix_operator_durations d JOIN aimatrix_operators o ON d.worker = o.worker AND d.id = o.id";
    let mut out = Activations::new();
    if let SqlAnswer::Rows { batches, .. } = controller.execute_sql(sql).await? {
        for batch in batches {
            let int = |i: usize| batch.column(i).as_any().downcast_ref::<Int64Array>().cloned();
            let text = |i: usize| batch.column(i).as_any().downcast_ref::<StringArray>().cloned();
            let (Some(w), Some(id), Some(ns), Some(n), Some(name), Some(address)) =
                (int(0), int(1), int(2), int(3), text(4), text(5))
            else {
                anyhow::bail!("aimatrix_operator_durations: unexpected column types");
            };
            for r in 0..batch.num_rows() {
                let depth = address.value(r).split('.').count();
                out.insert((w.value(r), id.value(r), ns.value(r)), (name.value(r).to_owned(), depth, n.value(r)));
            }
        }
    }
    Ok(out)
}

/// Prints, for the activations between `before` and `after` that took more than 4 ms, how many
/// there were and the operators whose longest ones were longest (a dataflow's activation
/// holds its operators').
fn report_long_activations(before: &Activations, after: &Activations) {
    const LONG_NS: i64 = 4 << 20;
    // (name, depth) → (activations over 4 ms, the longest bucket)
    let mut long: std::collections::BTreeMap<(String, usize), (i64, i64)> = Default::default();
    for ((w, id, ns), (name, depth, n)) in after {
        let new = n - before.get(&(*w, *id, *ns)).map_or(0, |b| b.2);
        if *ns > LONG_NS && new > 0 {
            let entry = long.entry((name.clone(), *depth)).or_default();
            entry.0 += new;
            entry.1 = entry.1.max(*ns);
        }
    }
    let mut rows: Vec<_> = long.into_iter().collect();
    rows.sort_by_key(|(_, (n, longest))| (std::cmp::Reverse(*longest), std::cmp::Reverse(*n)));
    let line = |((name, _), (n, longest)): &((String, usize), (i64, i64))| {
        format!("{name} {n} (up to {:.1} ms)", *longest as f64 / 1e6)
    };
    let dataflows: Vec<String> = rows.iter().filter(|((_, d), _)| *d == 1).map(line).collect();
    let operators: Vec<String> = rows.iter().filter(|((_, d), _)| *d > 1).take(6).map(line).collect();
    println!(
        "activations over 4 ms while ingesting, all workers: dataflows {}; longest operators {}",
        if dataflows.is_empty() { "none".to_owned() } else { dataflows.join(", ") },
        if operators.is_empty() { "none".to_owned() } else { operators.join(", ") }
    );
}
