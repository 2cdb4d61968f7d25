//! Helpers shared by the benchmark binaries (`amx-bench`, `amx-view-bench`).

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
