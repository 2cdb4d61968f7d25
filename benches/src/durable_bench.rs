//! `amx-durable-bench`: what the durable log costs, in process (the controller API the HTTP
//! handlers call; no HTTP in the measured path), with every configuration in one run so that
//! they compare as ratios on a noisy machine.
//!
//! ```text
//! cargo run --release -p amx-benches --bin amx-durable-bench -- [--pushes N] [--per M]
//!     [--clients C] [--workers W] [--s3 s3://BUCKET/PREFIX]
//! ```
//! For each log — none, a file log in a temporary directory, and with `--s3` the log in that
//! bucket (the S3 client configured by the `AWS_*` variables, as `aimatrix serve
//! --data-url`) — a fresh cluster runs a job with one push source and a view over it; `C`
//! clients push `N` pushes of `M` events each (each push with its own `Idempotency-Key`, a
//! client sending its next push once the last is acknowledged). Reports events/s, the
//! acknowledgement latency p50/p99, and for the file log its bytes per event. Then the
//! cluster stops (cleanly: the S3 lease is given back) and a new one is started on the same
//! log: the time until the view holds every event again (restart to serving), and the peak
//! resident memory meanwhile, beside the memory of the state when it was live. Then the log
//! is compacted into a snapshot (its time and bytes) and the restart measured again, from it.
//! Every phase runs in this one process, so a restart's memory includes pages the allocator
//! kept from the phases before; `benches/restart_memory.py` measures restart memory against
//! the live state's with each phase in a server process of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use amx_benches::{arg, count, peak_rss_mib, percentile, rss_mib};
use amx_cluster::job::Job;
use amx_cluster::storage::{DurableLog, LogRecords};
use amx_cluster::{ClusterConfig, Controller};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resets the peak resident memory to the current one (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Where a run keeps its log.
#[derive(Clone)]
enum Log {
    None,
    File(std::path::PathBuf),
    S3(String),
}

impl Log {
    fn name(&self) -> &'static str {
        match self {
            Log::None => "no log",
            Log::File(_) => "file log",
            Log::S3(_) => "S3 log",
        }
    }

    fn open(&self) -> anyhow::Result<Option<(Arc<DurableLog>, LogRecords)>> {
        Ok(match self {
            Log::None => None,
            Log::File(dir) => Some(DurableLog::open(dir)?),
            Log::S3(url) => Some(DurableLog::open_url(url, Default::default())?),
        })
    }
}

/// Starts a cluster on `log` (replaying it): the controller and the log.
fn start(
    runtime: &tokio::runtime::Runtime,
    workers: usize,
    log: &Log,
) -> anyhow::Result<(Controller, Option<Arc<DurableLog>>)> {
    let opened = log.open()?;
    let controller = Controller::start(ClusterConfig { workers, ..Default::default() })?;
    let log = match opened {
        Some((log, records)) => {
            runtime.block_on(controller.recover(log.clone(), records, Default::default()))?;
            Some(log)
        }
        None => None,
    };
    Ok((controller, log))
}

fn stop(controller: Controller, log: Option<Arc<DurableLog>>) -> anyhow::Result<()> {
    if let Some(log) = log {
        log.release();
    }
    controller.shutdown();
    controller.join()
}

fn main() -> anyhow::Result<()> {
    // As the engine's binary does (README, "Transparent huge pages").
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let pushes = arg(&args, "--pushes", 1000)?;
    let per = arg(&args, "--per", 1000)?;
    let clients = arg(&args, "--clients", 4)?.max(1);
    let workers = arg(&args, "--workers", 2)?;
    let dir = tempfile::tempdir()?;
    let mut logs = vec![Log::None, Log::File(dir.path().join("data"))];
    if let Some(i) = args.iter().position(|a| a == "--s3") {
        let url = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("--s3 needs s3://BUCKET/PREFIX"))?;
        logs.push(Log::S3(url.clone()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build()?;
    let events = (pushes * per) as i64;
    println!("{pushes} pushes of {per} events, {clients} clients, {workers} workers");
    let mut baseline = None;
    for log in &logs {
        let (controller, durable) = start(&runtime, workers, log)?;
        let id = controller.install_job(&Job::parse(amx_benches::KNOWLEDGE_JOB, std::path::Path::new("."))?)?;
        let started = Instant::now();
        let latencies = runtime.block_on(async {
            let mut tasks = Vec::new();
            for client in 0..clients {
                let controller = controller.clone();
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    for push in (client..pushes).step_by(clients) {
                        let body: Vec<String> = (0..per)
                            .map(|i| {
                                let n = push * per + i;
                                format!(r#"{{"c":"c{}","id":"d{n}","v":1,"size":{},"t":1700000000}}"#, n % 16, n % 5000)
                            })
                            .collect();
                        let sent = Instant::now();
                        let key = format!("push-{push}");
                        controller.ingest_keyed(id, "events", &body.join("\n"), Some(&key)).await?;
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok::<_, anyhow::Error>(latencies)
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await??);
            }
            while count(&controller, "by_id").await? < events {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(all)
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let mut latencies = latencies;
        latencies.sort_by(f64::total_cmp);
        let rate = events as f64 / elapsed;
        let ratio = baseline.map_or(String::new(), |b: f64| format!(" ({:.2}x no log)", rate / b));
        baseline.get_or_insert(rate);
        let bytes = match log {
            Log::File(dir) => std::fs::metadata(dir.join("log"))
                .map(|m| format!("; {:.0} bytes of log per event", m.len() as f64 / events as f64))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let live = rss_mib();
        println!(
            "{}: {rate:.0} events/s{ratio}; acknowledgement p50 {:.1} ms, p99 {:.1} ms{bytes}; RSS {live:.0} MiB",
            log.name(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        );
        stop(controller, durable)?;
        if matches!(log, Log::None) {
            continue;
        }
        let (controller, durable) = restart(&runtime, workers, log, events, "")?;
        // The log compacted into a snapshot, and the restart from it.
        reset_peak();
        let before = rss_mib();
        let started = Instant::now();
        let compacted =
            runtime.block_on(controller.compact())?.map_err(|why| anyhow::anyhow!("not compacted: {why}"))?;
        let peak = peak_rss_mib().unwrap_or(f64::NAN);
        println!(
            "{}: compaction in {:.2} s (RSS {before:.0} MiB, peak {peak:.0} MiB): {} rows, snapshot {:.1} MB ({:.1} \
             bytes per event), log {:.1} MB -> {:.3} MB",
            log.name(),
            started.elapsed().as_secs_f64(),
            compacted.rows,
            compacted.snapshot_bytes as f64 / 1e6,
            compacted.snapshot_bytes as f64 / events as f64,
            compacted.log_bytes_before as f64 / 1e6,
            compacted.log_bytes_after as f64 / 1e6,
        );
        stop(controller, durable)?;
        let (controller, durable) = restart(&runtime, workers, log, events, " from the snapshot")?;
        stop(controller, durable)?;
    }
    Ok(())
}

/// Starts a cluster on `log` again and reports the time until the view holds all `events`
/// (restart to serving) and the memory meanwhile; returns the cluster.
fn restart(
    runtime: &tokio::runtime::Runtime,
    workers: usize,
    log: &Log,
    events: i64,
    from: &str,
) -> anyhow::Result<(Controller, Option<Arc<DurableLog>>)> {
    reset_peak();
    let started = Instant::now();
    let (controller, durable) = start(runtime, workers, log)?;
    runtime.block_on(async {
        while count(&controller, "by_id").await? < events {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let (now, peak) = (rss_mib(), peak_rss_mib().unwrap_or(f64::NAN));
    println!(
        "{}: restart to serving {events} events{from}: {:.2} s; RSS {now:.0} MiB, peak {peak:.0} MiB",
        log.name(),
        started.elapsed().as_secs_f64()
    );
    Ok((controller, durable))
}
