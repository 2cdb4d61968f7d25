//! `amx-bench`: the demo workload through every relation and built-in view.
//!
//! ```text
//! cargo run --release -p amx-benches -- [--events N] [--workers W] [--batch B]
//! ```
//! Generates `N` demo records (agent spans, evaluations, workflow and knowledge events) into
//! a temporary directory, runs them as one job (JSON decoding, the dataflows, collection of
//! every view's changes, one SQL query at the end) and prints wall time, events/s,
//! events/s per core (per worker thread) and the process's peak resident memory (VmHWM).

use std::time::Instant;

use aimatrix::demo::{DemoConfig, demo_job_toml, write_demo_data};
use aimatrix::job::Job;
use aimatrix::runtime::{RunOptions, run};

use amx_benches::{arg, peak_rss_mib};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // As the engine's binary does (README, "Transparent huge pages").
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let events = arg(&args, "--events", 1_000_000)?;
    let workers = arg(&args, "--workers", 1)?;
    let batch = arg(&args, "--batch", 100_000)?;

    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let data = write_demo_data(dir.path(), &DemoConfig { events, seed: 42 })?;
    let records: usize = data.files.iter().map(|f| f.records).sum();
    let bytes: u64 = data.files.iter().map(|f| std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0)).sum();
    eprintln!("generated {records} records ({:.1} MB) in {:.2} s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());
    let job_path = dir.path().join("bench.toml");
    std::fs::write(&job_path, demo_job_toml(&data))?;
    let job = Job::load(&job_path)?;

    let opts = RunOptions {
        workers,
        batch_records: batch,
        progress: false,
        summary: false,
        queries: vec![("views".into(), "SELECT (SELECT count(*) FROM agent_traces) AS traces, (SELECT count(*) FROM documents) AS documents, (SELECT count(*) FROM workflow_runs) AS runs".into())],
        ..RunOptions::default()
    };
    let start = Instant::now();
    let mut answer = Vec::new();
    let summary = run(&job, &opts, &mut answer)?;
    let secs = start.elapsed().as_secs_f64();
    let per_sec = summary.records as f64 / secs;
    println!("{}", String::from_utf8_lossy(&answer).trim_end());
    println!(
        "amx-bench: {} records, {} workers, batch {}: {:.2} s, {:.0} events/s, {:.0} events/s per core, peak RSS {:.0} MiB, {} ingest errors",
        summary.records,
        workers,
        batch,
        secs,
        per_sec,
        per_sec / workers as f64,
        peak_rss_mib().unwrap_or(f64::NAN),
        summary.errors
    );
    Ok(())
}
