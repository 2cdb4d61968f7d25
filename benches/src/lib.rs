//! Helpers shared by the benchmark binaries (`amx-bench`, `amx-view-bench`,
//! `amx-serve-bench`, `amx-durable-bench`).

/// Resident set size of this process now, in MiB (Linux `/proc/self/status` `VmRSS`); 0
/// where that file is not available.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `p`-quantile (0..=1) of `sorted` by the nearest rank; NaN when it is empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `SELECT count(*) FROM view` through the controller (0 for an answer without rows).
///
/// # Errors
/// The query's.
pub async fn count(controller: &amx_cluster::Controller, view: &str) -> anyhow::Result<i64> {
    match controller.execute_sql(&format!("SELECT count(*) AS n FROM {view}")).await? {
        amx_cluster::SqlAnswer::Rows { batches, .. } => {
            let column = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().cloned();
            Ok(column.map_or(0, |c| c.value(0)))
        }
        _ => Ok(0),
    }
}

/// Peak resident set size of this process in MiB (Linux `/proc/self/status` `VmHWM`); None
/// where that file is not available.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The number after flag `name` in `args` (underscores allowed: `1_000_000`), or `default`
/// when the flag is absent.
///
/// Errors when the flag has no value or the value is not a non-negative integer.
pub fn arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let value = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{name} needs a number"))?;
            value.replace('_', "").parse().map_err(|_| anyhow::anyhow!("{name} takes a number, not `{value}`"))
        }
    }
}

/// A knowledge event for [`KNOWLEDGE_JOB`]'s push source, as a JSON line: document `id`, in
/// collection `c{i mod 16}`, of `i mod 5000` bytes, at `1_700_000_000 + i mod 100_000` s.
pub fn knowledge_line(id: &str, i: usize) -> String {
    format!(r#"{{"c":"c{}","id":"{id}","v":1,"size":{},"t":{}}}"#, i % 16, i % 5000, 1_700_000_000 + i % 100_000)
}

/// The job the serve and durability benches run: a push source `events` mapping JSON lines
/// `{"c": collection, "id": document, "op"?: "upsert" | "delete", "v": version, "size": bytes,
/// "t": seconds}` onto `knowledge_events`, and a view `by_id` (`document_id, collection,
/// size_bytes`).
pub const KNOWLEDGE_JOB: &str = include_str!("../knowledge_job.toml");
