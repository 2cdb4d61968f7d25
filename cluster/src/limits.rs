//! The resources one SQL query may take on a server, and the memory pool that enforces them.
//!
//! - **Time**: a query that runs longer than [`SqlLimits::timeout`] is cancelled — its task
//!   aborted at DataFusion's next cooperative yield point, its stream dropped and its query
//!   slot freed at once — and answered [`ClusterError::Timeout`](crate::ClusterError). A query
//!   whose caller goes away (an HTTP client that disconnects) is cancelled the same way.
//! - **Memory while it runs**: DataFusion's operators that hold data (hash joins and
//!   aggregates, sorts, …) reserve it from a memory pool ([`QueryPool`]): at most
//!   [`SqlLimits::query_memory_bytes`] per query, and at most [`SqlLimits::memory_bytes`] for
//!   all running queries together (one `GreedyMemoryPool` shared by them). A reservation past
//!   either is refused, and the query fails with an error naming the limit.
//! - **Its answer**: at most [`SqlLimits::max_result_rows`] rows and
//!   [`SqlLimits::max_result_bytes`] bytes (Arrow memory of the batches); the answer is read
//!   batch by batch and the query stops at the first batch past a limit.
//!
//! `aimatrix run` answers its own queries without limits ([`SqlLimits::unlimited`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// What one query may take (see the module docs). `None`: no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlLimits {
    /// How long a query may take, waiting for a slot and for its views included
    /// (`sql.timeout_ms`).
    pub timeout: Option<Duration>,
    /// Rows of an answer (`sql.max_result_rows`).
    pub max_result_rows: Option<u64>,
    /// Bytes of an answer, as Arrow memory (`sql.max_result_bytes`).
    pub max_result_bytes: Option<u64>,
    /// Memory DataFusion's operators may reserve for one query, in bytes
    /// (`sql.query_memory_bytes`).
    pub query_memory_bytes: Option<u64>,
    /// Memory all running queries may reserve together, in bytes (`sql.memory_bytes`).
    pub memory_bytes: Option<u64>,
}

impl SqlLimits {
    /// No limits (`aimatrix run`).
    pub fn unlimited() -> SqlLimits {
        SqlLimits {
            timeout: None,
            max_result_rows: None,
            max_result_bytes: None,
            query_memory_bytes: None,
            memory_bytes: None,
        }
    }
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits::unlimited()
    }
}

/// The physical memory of this machine in bytes (`MemTotal` of `/proc/meminfo`), or 4 GiB
/// where that cannot be read; what the server's default memory limits are sized from.
pub fn physical_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30)
}

/// The pool all queries reserve from: a `GreedyMemoryPool` of `bytes` (unbounded: `None`).
pub(crate) fn shared_pool(bytes: Option<u64>) -> Arc<dyn MemoryPool> {
    let bytes = bytes.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
    Arc::new(GreedyMemoryPool::new(bytes))
}

/// One query's memory pool: reservations count against its own limit and the shared pool.
#[derive(Debug)]
pub struct QueryPool {
    shared: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
    /// The shared pool's limit, for messages (`usize::MAX`: none).
    shared_limit: usize,
}

impl QueryPool {
    /// A pool of at most `limit` bytes (`None`: only the shared pool's limit) drawing on
    /// `shared`, whose limit is `shared_limit` bytes.
    pub(crate) fn new(shared: Arc<dyn MemoryPool>, limit: Option<u64>, shared_limit: Option<u64>) -> QueryPool {
        let bytes = |b: Option<u64>| b.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
        QueryPool { shared, limit: bytes(limit), used: AtomicUsize::new(0), shared_limit: bytes(shared_limit) }
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query pool: {} of {} bytes reserved", self.reserved(), self.limit)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "amx-query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.shared.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(additional) > self.limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the query needs more than its memory limit of {} bytes (sql.query_memory_bytes; {used} in use, \
                 {additional} more asked by {}): narrow it, or raise sql.query_memory_bytes",
                self.limit,
                reservation.consumer().name()
            )));
        }
        self.shared.try_grow(reservation, additional).map_err(|_| {
            DataFusionError::ResourcesExhausted(format!(
                "the queries running now hold the server's SQL memory limit of {} bytes (sql.memory_bytes; {} in \
                 use, {additional} more asked): try again, or raise sql.memory_bytes",
                self.shared_limit,
                self.shared.reserved()
            ))
        })?;
        self.used.fetch_add(additional, Ordering::Relaxed);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit.min(self.shared_limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_held_to_its_own_limit_and_to_the_shared_one() {
        let shared = shared_pool(Some(1000));
        let a: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(shared.clone(), Some(600), Some(1000)));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(shared.clone(), Some(600), Some(1000)));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(500).expect("within both");
        let e = ra.try_grow(200).expect_err("past the query's limit").to_string();
        assert!(e.contains("sql.query_memory_bytes"), "{e}");
        let e = rb.try_grow(600).expect_err("past the shared limit").to_string();
        assert!(e.contains("sql.memory_bytes"), "{e}");
        rb.try_grow(500).expect("what is left");
        assert_eq!((a.reserved(), b.reserved(), shared.reserved()), (500, 500, 1000));
        drop(ra);
        assert_eq!((a.reserved(), shared.reserved()), (0, 500));
        rb.try_grow(100).expect("freed by the other query");
    }
}
