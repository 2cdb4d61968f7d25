//! The process's memory: transparent huge pages off.
//!
//! Where the kernel's transparent huge pages are `always` (`/sys/kernel/mm/transparent_hugepage/
//! enabled` says `[always]`, as on many distributions), a fresh or purged 2 MiB region of the
//! allocator's is faulted in and zeroed whole at its first touch; mimalloc hands freed regions
//! back to the kernel after a second, so the engine zeroed the same memory again and again (27%
//! of a profile of the peers workload, in `clear_page_erms`), and its freshness p99 under load
//! was 5–10× what it is without (README, "Transparent huge pages"). Redis and MongoDB advise
//! turning THP off for theirs; the engine does it for itself, for the whole process, before its
//! first worker starts.

/// What [`disable_transparent_huge_pages`] did.
#[derive(Debug)]
pub enum HugePages {
    /// The process is opted out (`prctl(PR_SET_THP_DISABLE, 1)`, Linux 3.15+): from here on no
    /// page fault of its maps a huge page, and its children inherit the setting.
    Disabled,
    /// Left as the system has it: `MIMALLOC_ALLOW_THP` asks for huge pages (`1`, `true`, `on`,
    /// `yes`: mimalloc's own option and spellings), or the platform has no such setting.
    Kept,
    /// The kernel refused (`EINVAL` before Linux 3.15): left as the system has it.
    Failed(std::io::Error),
}

/// Opts this process out of transparent huge pages, unless its environment's
/// `MIMALLOC_ALLOW_THP` asks for them. Called first thing in `main` (and by the benchmarks), so
/// that the allocator's regions, all faulted in after it, are never huge pages.
pub fn disable_transparent_huge_pages() -> HugePages {
    let wanted = std::env::var("MIMALLOC_ALLOW_THP")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes"));
    if wanted {
        return HugePages::Kept;
    }
    disable()
}

#[cfg(target_os = "linux")]
fn disable() -> HugePages {
    match rustix::thread::disable_transparent_huge_pages(true) {
        Ok(()) => HugePages::Disabled,
        Err(e) => HugePages::Failed(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn disable() -> HugePages {
    HugePages::Kept
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The kernel's own account of the process (`/proc/self/status`, `THP_enabled`, Linux 5.0+)
    /// says huge pages are off after the call.
    #[test]
    fn the_kernel_reports_huge_pages_off() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return;
        }
        assert!(matches!(disable_transparent_huge_pages(), HugePages::Disabled));
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }
}
