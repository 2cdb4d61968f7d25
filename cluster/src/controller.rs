//! The controller: the one place (process 0) where jobs, views, peeks and subscriptions enter
//! the cluster.
//!
//! It keeps the catalog (every collection's name, schema and owner) and the jobs, plans what
//! it is asked to install before it sends anything (so a bad job or view is refused with its
//! error and no worker sees it), and sends [`Command`]s to worker 0, which sequences them
//! ([`crate::protocol`]). It holds no copy of the state: a query peeks the workers'
//! arrangements at one timestamp ([`Controller::peek`], [`crate::sql`]).
//!
//! Timestamps are milliseconds since the Unix epoch, assigned by the workers' clocks as they
//! close epochs. The controller reads at `as_of = min(upper) − 1` over the collections a query
//! reads (the latest time all of them have passed, as worker 0 last saw their frontiers), never
//! below the compaction frontier `since`, which it advances once a second to what every
//! collection has passed and no running query still reads (a [`ReadHold`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use amx_dataflows::render::SOURCE_STATS;
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use crate::job::{Job, SourceConfig, SourceKind};
pub use crate::protocol::SourceProgress;
use crate::protocol::{Command, ControllerLink, Envelope, JobId, MAX_REPORTED_REJECTS, Response, ViewSpec};
use crate::storage::{DurableLog, LogRecord};
use crate::worker::{WorkerOptions, builtin_schemas, run_worker};

/// Errors of the controller's operations, each naming the problem; [`ClusterError::status`]
/// gives the HTTP status a server answers with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    /// A job that does not parse or plan (TOML syntax with line and column, unknown keys, a
    /// bad source, a view that fails to plan).
    #[error("{0}")]
    InvalidJob(String),
    /// A SQL statement that fails to parse, plan or run (the message says where).
    #[error("{0}")]
    Sql(String),
    /// Bad input of another kind (a record batch that is not text, a bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// No job with this id.
    #[error("no job with id `{0}`")]
    UnknownJob(String),
    /// No source of this name in the job, or not a push source.
    #[error("{0}")]
    UnknownSource(String),
    /// No relation or view of this name.
    #[error("no relation or view named `{0}`")]
    UnknownCollection(String),
    /// The request conflicts with the catalog (a name in use, a view another view reads, a
    /// job already cancelled).
    #[error("{0}")]
    Conflict(String),
    /// The request is not allowed (a file source outside the server's file roots).
    #[error("{0}")]
    Forbidden(String),
    /// A query took longer than `sql.timeout_ms` and was cancelled (the message says whether
    /// it waited for a query slot or ran).
    #[error("{0}")]
    Timeout(String),
    /// A query passed a limit on its answer or its memory (the message names the limit and
    /// the setting that raises it).
    #[error("{0}")]
    Limit(String),
    /// The data directory could not take a write (disk full, permission denied, a failed
    /// sync): nothing was acknowledged (see [`crate::storage`]).
    #[error("{0}")]
    Storage(String),
    /// The cluster has stopped (its workers exited).
    #[error("the cluster has stopped")]
    Stopped,
}

impl From<crate::storage::StorageError> for ClusterError {
    fn from(e: crate::storage::StorageError) -> Self {
        ClusterError::Storage(format!("not acknowledged: {e}"))
    }
}

impl ClusterError {
    /// The HTTP status for this error: 400, 403, 404, 409 or 503.
    pub fn status(&self) -> u16 {
        match self {
            ClusterError::InvalidJob(_)
            | ClusterError::Sql(_)
            | ClusterError::BadRequest(_)
            | ClusterError::Limit(_) => 400,
            ClusterError::UnknownJob(_) | ClusterError::UnknownSource(_) | ClusterError::UnknownCollection(_) => 404,
            ClusterError::Forbidden(_) => 403,
            ClusterError::Conflict(_) => 409,
            ClusterError::Stopped | ClusterError::Timeout(_) | ClusterError::Storage(_) => 503,
        }
    }
}

/// The shape of the cluster and the workers' tuning.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Worker threads per process (≥ 1).
    pub workers: usize,
    /// Processes (≥ 1).
    pub processes: usize,
    /// This process's index in `0..processes`; process 0 runs the controller.
    pub process_index: usize,
    /// `host:port` of every process, in process order (used when `processes > 1`).
    pub addresses: Vec<String>,
    /// The worker loop's tuning.
    pub worker: WorkerOptions,
    /// The canonical relations and built-in views to arrange, readable by SQL and by jobs'
    /// views (`None`: all; see [`Command::CreateInstance`]). Used by process 0.
    pub collections: Option<Vec<String>>,
    /// Views maintained with the agent state, never dropped (see [`Command::CreateInstance`]).
    /// Used by process 0.
    pub views: Vec<ViewSpec>,
    /// What one SQL query may take ([`crate::limits`]); default: no limits.
    pub sql: crate::SqlLimits,
    /// Changes a subscriber may leave untaken before its subscription is ended (default
    /// [`DEFAULT_MAX_QUEUED_ROWS`]); the snapshot is not counted.
    pub max_queued_rows: u64,
    /// Bytes of changes (as held in memory, estimated) a subscriber may leave untaken
    /// (default [`DEFAULT_MAX_QUEUED_BYTES`]).
    pub max_queued_bytes: u64,
    /// How long records a worker inserted on its own (what a file source read) may wait for
    /// the controller to close their timestamp ([`Command::AdvanceTo`]; default
    /// [`DEFAULT_TIMESTAMP_INTERVAL`], taken within 1 ms to [`IDLE_TIMESTAMP_INTERVAL`]): they
    /// are visible to queries after it. Without such
    /// records the controller closes one every [`IDLE_TIMESTAMP_INTERVAL`], so that frontiers
    /// and `now()` move on without input; a push or a source batch is closed at once, without
    /// waiting for either.
    pub timestamp_interval: Duration,
    /// How eagerly an idle worker merges the batches of its arrangements (see
    /// [`exert_logic`]): 0, only when new data forces a merge (differential's default); `p`,
    /// also while idle, whenever a batch is within a factor `p` of the largest of its
    /// arrangement (Materialize's `arrangement_exert_proportionality` is 16). Default
    /// [`DEFAULT_EXERT_PROPORTIONALITY`].
    pub exert_proportionality: usize,
    /// Where object-store sinks may write local directories (`file:///DIR`): anywhere
    /// ([`amx_connectors::FileAccess::Any`], the default, as `aimatrix run`), or under a
    /// server's `files.sink_roots` (none: such sinks are refused with 403).
    pub sink_access: amx_connectors::FileAccess,
    /// Rows per worker a restart sends ahead of what the dataflows have processed (default
    /// [`DEFAULT_RESTART_ROWS_AHEAD`]): a snapshot is restored in rounds of this many rows
    /// per worker, each at a timestamp of its own, the next sent once the one before has
    /// passed every collection; a log's records are replayed with at most this many per
    /// worker not yet processed (besides [`REPLAY_WINDOW`]'s bounds).
    pub restart_rows_ahead: usize,
}

/// The default [`ClusterConfig::restart_rows_ahead`]: 10,000. With everything sent at once (a
/// snapshot's rows all at its one timestamp, a log's pushes as fast as the workers take them
/// into their inputs), the arrangements' batchers held the whole input before any of it was
/// sealed and merged, and a restart peaked at 1.36–1.44× the live state's resident memory
/// (snapshot) and up to 1.33× (log); with 25,000, at 1.02–1.11× and 0.87–0.89× (release, 2
/// workers, 1M pushed events, `benches/restart_memory.py`, 2026-12-06; 50,000 peaked at
/// 0.95–1.19×, 100,000 at 1.15×). Since rows are packed the live state is half that size, and
/// against the live process's peak a restart with 25,000 peaked at 1.15–1.26× (snapshot) and
/// 0.85–1.15× (log), with 10,000 at 1.03–1.14× and 0.85–1.07×, with 5,000 at 1.00–1.12× and
/// 0.84–0.98×; to serving in 3.1–3.5 s, 2.5–3.2 s and 3.2–4.0 s from a snapshot (2026-12-08,
/// 4–5 runs each, alternating): 10,000 takes most of the memory off at no cost in time.
pub const DEFAULT_RESTART_ROWS_AHEAD: usize = 10_000;

/// The default [`ClusterConfig::exert_proportionality`]: 0 (off) until measured.
pub const DEFAULT_EXERT_PROPORTIONALITY: usize = 0;

/// The worker configuration: differential's exertion logic, so that idle workers merge the
/// batches of their arrangements ahead of need rather than when the next batch forces it, in a
/// burst that stalls the worker (profiled: 0.1–0.4 s at 1M rows).
///
/// The logic is Materialize's proportional one (`arrangement_exert_proportionality` in
/// `src/compute/src/server.rs`): given the spine's layers, largest first, as `(index, count,
/// length)`, it continues a merge in progress, or merges down a non-empty batch whose layer is
/// within a factor `proportionality` of the largest occupied layer; small batches far below the
/// largest wait for their peers, so an idle worker never rewrites its largest batch to absorb a
/// few rows. `None` (no effort) once the spine is in that shape.
pub fn worker_config(proportionality: usize) -> timely::WorkerConfig {
    let mut config = timely::WorkerConfig::default();
    if proportionality > 0 {
        config.set::<differential_dataflow::trace::ExertionLogic>(
            "differential/default_exert_logic".to_owned(),
            exert_logic(proportionality),
        );
    }
    config
}

/// [`worker_config`]'s exertion logic.
fn exert_logic(proportionality: usize) -> differential_dataflow::trace::ExertionLogic {
    Arc::new(move |layers: &[(usize, usize, usize)]| {
        let mut within = proportionality;
        let mut largest = true;
        for &(_, count, length) in layers.iter().skip_while(|(_, count, _)| *count == 0) {
            if count > 1 {
                return Some(length.max(1));
            }
            if !largest && within > 0 && length > 0 {
                return Some(length);
            }
            largest = false;
            within /= 2;
        }
        None
    })
}

/// The frontier a read of `names` goes up to, from worker 0's published `uppers`.
///
/// The collections worker 0 has seen progress in count; a new one (a view just installed,
/// still at 0) is waited for by the peek rather than pulling the read back in time. Reading
/// nothing, or only new collections, reads where every collection in progress is: a complete
/// one (a constant view, whose frontier is empty: `Time::MAX`) is passed at every time, and
/// must not lift the read past the others, which would then wait for a time that never comes.
fn read_upper(uppers: &HashMap<String, Time>, names: &[String]) -> Time {
    let known = names.iter().filter_map(|n| uppers.get(n).copied()).filter(|u| *u > 0);
    match known.min() {
        Some(u) => u,
        None => uppers.values().copied().filter(|u| *u > 0 && *u < Time::MAX).min().unwrap_or(0),
    }
}

/// The default [`ClusterConfig::timestamp_interval`]: 10 ms.
pub const DEFAULT_TIMESTAMP_INTERVAL: Duration = Duration::from_millis(10);

/// How often the controller closes a timestamp when no worker awaits one: 100 ms.
pub const IDLE_TIMESTAMP_INTERVAL: Duration = Duration::from_millis(100);

/// The default bound of the bytes of a subscriber's untaken changes: 64 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 << 20;

/// The default bound of a subscriber's untaken changes: 200,000 rows (about 50 MB).
pub const DEFAULT_MAX_QUEUED_ROWS: u64 = 200_000;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            workers: 1,
            processes: 1,
            process_index: 0,
            addresses: Vec::new(),
            worker: Default::default(),
            collections: None,
            views: Vec::new(),
            sql: crate::SqlLimits::unlimited(),
            max_queued_rows: DEFAULT_MAX_QUEUED_ROWS,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            timestamp_interval: DEFAULT_TIMESTAMP_INTERVAL,
            exert_proportionality: DEFAULT_EXERT_PROPORTIONALITY,
            sink_access: amx_connectors::FileAccess::Any,
            restart_rows_ahead: DEFAULT_RESTART_ROWS_AHEAD,
        }
    }
}

/// A job's backfill: its file sources' progress, summed (`GET /v1/jobs/{id}`, `aimatrix_jobs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Backfill {
    /// Records read, over the file sources.
    pub records_read: u64,
    /// Bytes read, over the file sources.
    pub bytes_read: u64,
    /// Bytes their files hold now.
    pub bytes_total: u64,
    /// The sum of their rates (bytes/s; `None` when none is known).
    pub rate_bytes_per_s: Option<u64>,
    /// Time left until the slowest is read to its end (ms; they are read side by side): the
    /// largest of theirs, `None` when one is unknown, 0 when all are done or there are none.
    pub eta_ms: Option<u64>,
}

impl Backfill {
    /// The backfill of sources whose progress is `sources`.
    pub fn of<'a>(sources: impl IntoIterator<Item = &'a SourceProgress>) -> Self {
        let mut sum = Self { eta_ms: Some(0), ..Self::default() };
        for p in sources {
            sum.records_read += p.records_read;
            sum.bytes_read += p.bytes_read;
            sum.bytes_total += p.bytes_total;
            if let Some(rate) = p.rate_bytes_per_s {
                sum.rate_bytes_per_s = Some(sum.rate_bytes_per_s.unwrap_or(0) + rate);
            }
            sum.eta_ms = sum.eta_ms.zip(p.eta_ms).map(|(a, b)| a.max(b));
        }
        sum
    }

    /// The fraction of the bytes read, 0 to 1 (1 with no bytes; a file read again from its
    /// start counts twice: at most 1).
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 { 1.0 } else { (self.bytes_read as f64 / self.bytes_total as f64).min(1.0) }
    }
}

/// A change stream of a subscription, in time order.
#[derive(Clone, Debug, PartialEq)]
pub enum SubscribeEvent {
    /// A part of the collection's contents as of `timestamp`: rows with their multiplicities.
    /// The contents come in parts (each row in one part only, at most
    /// [`crate::protocol::SNAPSHOT_PART_ROWS`] rows each), read from the arrangements as the
    /// subscriber takes them; the last part has `last` set. Changes follow.
    Snapshot {
        /// The time of the snapshot (ms since the Unix epoch).
        timestamp: Time,
        /// Rows and counts (> 0).
        rows: Vec<(Row, Diff)>,
        /// The last part of the snapshot.
        last: bool,
    },
    /// Changes after the snapshot: `(row, time, diff)`, in time order, consolidated.
    Changes(Vec<(Row, Time, Diff)>),
    /// Every change before `upper` has been sent.
    Progress {
        /// The frontier (ms since the Unix epoch).
        upper: Time,
    },
}

/// A peek waiting for every worker's share.
struct PeekWait {
    remaining: usize,
    rows: Vec<(Row, Diff)>,
    reply: Option<oneshot::Sender<Vec<(Row, Diff)>>>,
}

/// A subscription's merge of the workers' snapshot parts and change streams.
struct SubscriptionMerge {
    /// The snapshot's time.
    as_of: Time,
    /// Workers yet to send their last snapshot part.
    snapshot_left: usize,
    uppers: Vec<Time>,
    /// Changes not sent yet (before the snapshot is complete: all of them), and their bytes
    /// (as [`change_bytes`]) while the snapshot is read.
    pending: Vec<(Row, Time, Diff)>,
    pending_bytes: u64,
    /// Every change before this time has been sent (once the snapshot is complete).
    emitted: Option<Time>,
    /// Events, each a snapshot part with the worker that sent it (to credit it when taken).
    events: tokio_mpsc::UnboundedSender<(SubscribeEvent, Option<usize>)>,
    /// Changes sent and not yet taken by the subscriber, and what it may leave untaken.
    queue: Arc<SubscriberQueue>,
    /// The collection subscribed to.
    collection: String,
    /// Who subscribed: `http`, `pgwire`, `sink`.
    client: &'static str,
}

/// The changes a subscriber has not taken yet: sent by the controller, taken by
/// [`Subscription::recv`]. Past `max_rows` or `max_bytes` the subscription is ended and
/// `overflowed` set.
#[derive(Debug)]
struct SubscriberQueue {
    rows: AtomicU64,
    max_rows: u64,
    /// Bytes of those changes (estimated: [`change_bytes`]), and their bound.
    bytes: AtomicU64,
    max_bytes: u64,
    overflowed: std::sync::atomic::AtomicBool,
    /// Wakes [`Subscription::overflow`].
    notify: tokio::sync::Notify,
}

impl SubscriptionMerge {
    /// Takes one worker's snapshot part and passes it on (the worker sends its next one once
    /// the subscriber has taken it). Returns true when the subscription has ended.
    fn absorb_snapshot(&mut self, worker: usize, rows: Vec<(Row, Diff)>, done: bool) -> bool {
        if done {
            self.snapshot_left = self.snapshot_left.saturating_sub(1);
        }
        let last = self.snapshot_left == 0;
        // A worker's last part is often empty; it is only sent when it ends the snapshot.
        if !rows.is_empty() || last {
            let credit = if done { None } else { Some(worker) };
            let _ = self.events.send((SubscribeEvent::Snapshot { timestamp: self.as_of, rows, last }, credit));
        }
        if !last {
            return false;
        }
        // Every change up to the snapshot's time is in it.
        self.emitted = Some(self.as_of + 1);
        let _ = self.events.send((SubscribeEvent::Progress { upper: self.as_of + 1 }, None));
        self.release()
    }

    /// Takes one worker's changes and frontier; sends what every worker has passed. Returns
    /// true when the subscription has ended (its collection was dropped: every worker's
    /// frontier closed; or its subscriber fell behind).
    fn absorb(&mut self, worker: usize, updates: Vec<(Row, Time, Diff)>, upper: Time) -> bool {
        if let Some(u) = self.uppers.get_mut(worker) {
            *u = (*u).max(upper);
        }
        if self.snapshot_left > 0 {
            self.pending_bytes += change_bytes(&updates);
        }
        self.pending.extend(updates);
        if self.snapshot_left > 0 {
            // Changes that arrive while the snapshot is read wait for it, within the bound.
            if self.pending.len() as u64 > self.queue.max_rows || self.pending_bytes > self.queue.max_bytes {
                return self.overflow();
            }
            return false;
        }
        self.release()
    }

    /// Sends the changes before the time every worker has passed, and that time.
    fn release(&mut self) -> bool {
        let merged = self.uppers.iter().copied().min().unwrap_or(0);
        if self.emitted.is_some_and(|e| merged <= e) {
            return false;
        }
        let (ready, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|u| u.1 < merged);
        self.pending = later;
        let mut counts: BTreeMap<(Time, Row), Diff> = BTreeMap::new();
        for (row, time, diff) in ready {
            *counts.entry((time, row)).or_insert(0) += diff;
        }
        let changes: Vec<_> = counts.into_iter().filter(|(_, d)| *d != 0).map(|((t, r), d)| (r, t, d)).collect();
        if !changes.is_empty() {
            let queued = self.queue.rows.fetch_add(changes.len() as u64, Ordering::SeqCst) + changes.len() as u64;
            let size = change_bytes(&changes);
            let bytes = self.queue.bytes.fetch_add(size, Ordering::SeqCst) + size;
            if queued > self.queue.max_rows || bytes > self.queue.max_bytes {
                return self.overflow();
            }
            let _ = self.events.send((SubscribeEvent::Changes(changes), None));
        }
        self.emitted = Some(merged);
        if merged == Time::MAX {
            // Closed: the receiver sees the end of the stream.
            return true;
        }
        let _ = self.events.send((SubscribeEvent::Progress { upper: merged }, None));
        false
    }

    /// Ends a subscription whose subscriber does not keep up, rather than buffer without bound.
    fn overflow(&mut self) -> bool {
        self.queue.overflowed.store(true, Ordering::SeqCst);
        self.queue.notify.notify_one();
        true
    }
}

/// A command waiting for the workers it went to (every worker, or one for a push) to apply it.
#[derive(Default)]
struct ApplyWait {
    /// Workers yet to answer.
    left: usize,
    /// What those that answered did.
    applied: Applied,
    /// Where the whole answer goes once `left` is 0.
    reply: Option<oneshot::Sender<Applied>>,
}

/// What every worker did for one command (an ingest: with its records' outcome).
#[derive(Debug, Default)]
struct Applied {
    /// The latest of the workers' input frontiers after it.
    upper: Time,
    /// Pushed records that decoded into rows.
    accepted: u64,
    /// Pushed records that did not.
    rejected: u64,
    /// Rows of `ingest_errors` the records made.
    error_rows: u64,
    /// The first [`MAX_REPORTED_REJECTS`] of those by line: (line from 1, the reason).
    errors: Vec<(u64, String)>,
}

/// What worker 0 shares with the controller.
pub struct Shared {
    commands: Mutex<Option<mpsc::Receiver<Envelope>>>,
    uppers: Mutex<HashMap<String, Time>>,
    /// Per file source (by job and name: a cancelled job's source name may be taken again),
    /// each worker's progress (every worker of every process, as its last
    /// [`Response::Progress`] said).
    progress: Mutex<HashMap<(JobId, String), BTreeMap<usize, SourceProgress>>>,
    peeks: Mutex<HashMap<u64, PeekWait>>,
    subscriptions: Mutex<HashMap<u64, SubscriptionMerge>>,
    /// Per collection: subscriptions ended because their subscriber fell behind.
    slow_subscribers: Mutex<HashMap<String, u64>>,
    failures: Mutex<Vec<(JobId, String)>>,
    /// Ingests and drops waiting for every worker (see [`ApplyWait`]).
    ingests: Mutex<HashMap<u64, ApplyWait>>,
    /// Worker 0's thread, woken when a command is sent (it parks when idle).
    worker0: Mutex<Option<std::thread::Thread>>,
    /// File sources read to their end: (job, source) → (workers done, the latest frontier).
    done: Mutex<HashMap<(JobId, String), (usize, Time)>>,
    /// A worker awaits a closed timestamp ([`Response::AwaitingTimestamp`]).
    awaiting: std::sync::atomic::AtomicBool,
    /// Each worker's last [`Response::Introspection`] report, by worker index.
    reports: Mutex<BTreeMap<usize, crate::protocol::WorkerReport>>,
    peers: usize,
}

/// Locks a mutex, recovering it if a thread panicked while holding it (the data is plain).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControllerLink for Shared {
    fn take_command_receiver(&self) -> Option<mpsc::Receiver<Envelope>> {
        *lock(&self.worker0) = Some(std::thread::current());
        lock(&self.commands).take()
    }

    fn publish(&self, uppers: HashMap<String, Time>) {
        *lock(&self.uppers) = uppers;
    }

    fn deliver(&self, response: Response) {
        self.deliver_response(response);
    }
}

impl Shared {
    /// The link of a cluster of `peers` workers (of every process), whose worker 0 takes its
    /// commands from `commands`.
    fn new(commands: mpsc::Receiver<Envelope>, peers: usize) -> Shared {
        Shared {
            commands: Mutex::new(Some(commands)),
            uppers: Mutex::default(),
            progress: Mutex::default(),
            peeks: Mutex::default(),
            subscriptions: Mutex::default(),
            slow_subscribers: Mutex::default(),
            failures: Mutex::default(),
            ingests: Mutex::default(),
            worker0: Mutex::default(),
            done: Mutex::default(),
            awaiting: Default::default(),
            reports: Default::default(),
            peers,
        }
    }

    /// How far the workers have read file source `name` of job `job`, their shares summed
    /// (the files' size: the largest any saw; done when every worker has said it is; the time
    /// left from the summed rate).
    fn file_progress(&self, job: JobId, name: &str) -> SourceProgress {
        let all = lock(&self.progress);
        let Some(workers) = all.get(&(job, name.to_owned())) else { return SourceProgress::default() };
        let mut sum = SourceProgress { done: workers.len() >= self.peers, ..SourceProgress::default() };
        for p in workers.values() {
            sum.records_read += p.records_read;
            sum.bytes_read += p.bytes_read;
            sum.bytes_total = sum.bytes_total.max(p.bytes_total);
            sum.done &= p.done;
            if let Some(rate) = p.rate_bytes_per_s {
                sum.rate_bytes_per_s = Some(sum.rate_bytes_per_s.unwrap_or(0) + rate);
            }
        }
        sum.with_eta()
    }

    /// One worker's answer to the command waiting as `id`; the last one sends the whole answer.
    fn applied(
        &self,
        id: u64,
        upper: Time,
        (accepted, rejected, error_rows): (u64, u64, u64),
        mut errors: Vec<(u64, String)>,
    ) {
        let mut ingests = lock(&self.ingests);
        let Some(wait) = ingests.get_mut(&id) else { return };
        wait.left = wait.left.saturating_sub(1);
        let applied = &mut wait.applied;
        applied.upper = applied.upper.max(upper);
        applied.accepted += accepted;
        applied.rejected += rejected;
        applied.error_rows += error_rows;
        // The first rejects by line of all workers': each sent its first ones.
        applied.errors.append(&mut errors);
        applied.errors.sort_unstable_by_key(|(line, _)| *line);
        applied.errors.truncate(MAX_REPORTED_REJECTS);
        if wait.left == 0
            && let Some(wait) = ingests.remove(&id)
            && let Some(reply) = wait.reply
        {
            let _ = reply.send(wait.applied);
        }
    }

    /// Hands a worker's answer to subscription `id` (if it still exists) to `absorb`; removes
    /// the subscription when that says it has ended.
    fn subscription(&self, id: u64, absorb: impl FnOnce(&mut SubscriptionMerge) -> bool) {
        let mut subscriptions = lock(&self.subscriptions);
        if let Some(merge) = subscriptions.get_mut(&id)
            && absorb(merge)
        {
            if merge.queue.overflowed.load(Ordering::SeqCst) {
                *lock(&self.slow_subscribers).entry(merge.collection.clone()).or_insert(0) += 1;
            }
            subscriptions.remove(&id);
        }
    }

    /// A response from any worker, handed over by worker 0 ([`ControllerLink::deliver`]).
    fn deliver_response(&self, response: Response) {
        match response {
            Response::AwaitingTimestamp { .. } => self.awaiting.store(true, Ordering::SeqCst),
            Response::Peek { id, rows } => {
                let mut peeks = lock(&self.peeks);
                let done = match peeks.get_mut(&id) {
                    Some(wait) => {
                        wait.rows.extend(rows);
                        wait.remaining -= 1;
                        wait.remaining == 0
                    }
                    None => false,
                };
                if done
                    && let Some(mut wait) = peeks.remove(&id)
                    && let Some(reply) = wait.reply.take()
                {
                    let _ = reply.send(std::mem::take(&mut wait.rows));
                }
            }
            Response::Subscribe { id, worker, updates, upper } => {
                self.subscription(id, |merge| merge.absorb(worker, updates, upper))
            }
            Response::SubscribeSnapshot { id, worker, rows, done } => {
                self.subscription(id, |merge| merge.absorb_snapshot(worker, rows, done))
            }
            Response::SourceFailed { job, source, error } => {
                lock(&self.failures).push((job, format!("source `{source}`: {error}")));
            }
            Response::JobFailed { job, error } => lock(&self.failures).push((job, error)),
            Response::Progress { worker, sources } => {
                let mut all = lock(&self.progress);
                for (job, name, p) in sources {
                    all.entry((job, name)).or_default().insert(worker, p);
                }
            }
            Response::Introspection { worker, report } => {
                lock(&self.reports).insert(worker, report);
            }
            Response::Applied { id, upper } => self.applied(id, upper, (0, 0, 0), Vec::new()),
            Response::Ingested { id, upper, accepted, rejected, error_rows, errors } => {
                self.applied(id, upper, (accepted, rejected, error_rows), errors)
            }
            Response::SourceDone { job, source, upper } => {
                let mut done = lock(&self.done);
                let entry = done.entry((job, source)).or_insert((0, 0));
                entry.0 += 1;
                entry.1 = entry.1.max(upper);
            }
        }
    }
}

/// Whether a job is a submitted job or a view created in SQL (a job of one view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Submitted as a job file.
    Job,
    /// `CREATE MATERIALIZED VIEW` in SQL.
    View,
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Installed on every worker; its sources are read and its views maintained.
    Running,
    /// A source or a view failed (see the job's `error`); the rest goes on.
    Failed,
    /// Cancelled: its sources stopped and its views dropped.
    Cancelled,
}

/// A job as the controller records it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// The job file's `name`, or the view's name.
    pub name: Option<String>,
    /// Job or SQL view.
    pub kind: JobKind,
    /// State.
    pub state: JobState,
    /// Its sources (paths resolved).
    pub sources: Vec<SourceConfig>,
    /// Its views.
    pub views: Vec<ViewSpec>,
    /// Whether cancelling it can retract what it ingested (the job file's `retractable`).
    pub retractable: bool,
    /// Its sinks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<crate::sinks::SinkConfig>,
    /// What failed, if anything.
    pub errors: Vec<String>,
}

impl JobInfo {
    /// The job as its readers may see it: the values of Kafka properties that hold secrets
    /// ([`amx_connectors::kafka::is_secret_property`]) replaced with `<redacted>`, in sources
    /// and sinks, and so is a webhook's `secret`.
    pub fn redacted(mut self) -> JobInfo {
        let redact = |properties: &mut std::collections::BTreeMap<String, String>| {
            for (name, value) in properties.iter_mut() {
                if amx_connectors::kafka::is_secret_property(name) {
                    *value = "<redacted>".into();
                }
            }
        };
        for source in &mut self.sources {
            if let Some(kafka) = &mut source.kafka {
                redact(&mut kafka.properties);
            }
            if let Some(secret) = source.webhook.as_mut().and_then(|w| w.secret.as_mut()) {
                *secret = "<redacted>".into();
            }
        }
        for sink in &mut self.sinks {
            if let Some(kafka) = &mut sink.kafka {
                redact(&mut kafka.properties);
            }
        }
        self
    }
}

/// What a collection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionKind {
    /// A relation: a canonical one (`spans`, `ingest_errors`, …) or one a source declares;
    /// what the sources decode into.
    Relation,
    /// A view of the agent state, maintained for every job (`agent_traces`, `model_usage`, …).
    BuiltinView,
    /// A job's view, or a materialized view created in SQL.
    View,
    /// An introspection relation: the controller's own state (`aimatrix_jobs`, …; see
    /// [`crate::introspection`]), read when a query runs.
    Introspection,
}

/// An open subscription, from [`Controller::subscriptions_open`].
#[derive(Clone, Debug)]
pub struct SubscriptionOpen {
    /// Its id (unique while the server runs).
    pub id: u64,
    /// The collection subscribed to.
    pub collection: String,
    /// Who subscribed: `http`, `pgwire`, `sink`.
    pub client: &'static str,
    /// The snapshot's time (ms since the Unix epoch).
    pub as_of: Time,
    /// Every change before this time (ms) has been sent; `None` while the snapshot is read.
    pub progressed: Option<Time>,
    /// Changes sent and not yet taken by the subscriber.
    pub queued_rows: u64,
    /// Their bytes (estimated).
    pub queued_bytes: u64,
}

/// A collection of the catalog, from [`Controller::catalog_entries`].
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    /// Its name.
    pub name: String,
    /// Its columns.
    pub schema: SchemaRef,
    /// What it is.
    pub kind: CollectionKind,
    /// The job (or SQL view) that made it; `None` for the agent state's own.
    pub owner: Option<JobId>,
}

/// A catalog entry at the controller.
#[derive(Clone, Debug)]
struct Entry {
    schema: SchemaRef,
    /// The job that made it (None: built in).
    owner: Option<JobId>,
    /// Collections it reads (views).
    reads: Vec<String>,
    /// A relation (the canonical ones, and those sources declare), not a view.
    relation: bool,
}

/// The part of the controller behind one lock: what is sent, in the order it is sent.
struct Sequencer {
    tx: mpsc::Sender<Envelope>,
    shared: Arc<Shared>,
    catalog: BTreeMap<String, Entry>,
    jobs: BTreeMap<JobId, JobInfo>,
    /// Push sources of running jobs: name → (job, decoder).
    push: HashMap<String, JobId>,
    /// What failed in the agent state's own views (a bug: the controller planned them).
    instance_errors: Vec<String>,
    next_job: u64,
    since: Time,
    holds: BTreeMap<u64, Time>,
    /// The durable log, once the server has one (`--data-dir`) and has replayed it.
    log: Option<Arc<DurableLog>>,
    /// Per push source, the answers to its recent pushes by `Idempotency-Key`.
    keys: HashMap<(JobId, String), KeyWindow>,
    /// The running sources the server reads (dropping one stops it).
    running: HashMap<(JobId, String), crate::sources::RunningSource>,
    /// Per source the server reads, the positions of the batches sent (and logged) folded:
    /// where it resumes.
    positions: HashMap<(JobId, String), crate::sources::SourceResume>,
    /// Per job, which files its file sources may read (for the sources the server reads).
    access: HashMap<JobId, amx_connectors::FileAccess>,
    /// The running sinks (dropping one stops it).
    sinks: HashMap<(JobId, String), crate::sinks::RunningSink>,
    /// The timestamp oracle: the last timestamp given to a push, batch or retraction, or
    /// one less than the last one closed with [`Command::AdvanceTo`] (ms since the Unix
    /// epoch). Every timestamp given later is past it, and no worker's input time is past it
    /// plus one.
    last_timestamp: Time,
    /// The last time sent in a [`Command::AdvanceTo`].
    closed: Time,
    /// While a log is replayed: the sources the server reads wait (their positions come from
    /// the log), and so do sinks (the views are not whole yet); replayed records keep their
    /// logged timestamps, and no timestamp is closed but theirs.
    replaying: bool,
    /// The catalog changes logged (or replayed), in their order: what a snapshot replays
    /// (see [`crate::storage::snapshot`]).
    catalog_log: Vec<LogRecord>,
    /// Cancellations with `retract` not yet retracted (no snapshot is taken meanwhile: the
    /// job's events would be in it).
    retracting: usize,
}

/// The recent pushes of one push source by `Idempotency-Key`: each key's answer (once known),
/// for the last [`IDEMPOTENCY_KEYS`] keys.
#[derive(Default)]
struct KeyWindow {
    order: std::collections::VecDeque<String>,
    /// Bytes the answers known so far take (estimated: [`IngestReport::bytes`]).
    bytes: u64,
    /// Each key's answer, with a hash of its push's body (a key reused for another body is
    /// refused).
    answers: HashMap<String, (u64, IngestAnswer)>,
}

impl KeyWindow {
    /// Forgets the oldest keys while there are more than [`IDEMPOTENCY_KEYS`], or their answers
    /// take more than [`IDEMPOTENCY_BYTES`] (the newest key is kept).
    fn forget_oldest(&mut self) {
        while self.order.len() > IDEMPOTENCY_KEYS || (self.bytes > IDEMPOTENCY_BYTES && self.order.len() > 1) {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, answer)) = self.answers.remove(&old)
                && let Some(Ok(report)) = answer.borrow().as_ref()
            {
                self.bytes = self.bytes.saturating_sub(report.bytes());
            }
        }
    }
}

/// Where a push comes from.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// A client: answered once queries see it.
    Client,
    /// The log, at a restart: given its logged timestamp again (if it has one), and answered
    /// once the workers have it.
    Replay(Option<Time>),
}

/// Where a change was logged (the log and its sequence number there), if there is a log.
type Stored = Option<(Arc<DurableLog>, u64)>;

/// Pushes and batches a replay sends ahead of their answers: at most this many …
const REPLAY_WINDOW: usize = 256;

/// … and at most this many bytes of their records' text. A file source's or a Kafka topic's
/// batches are up to 4 MiB each: 256 of them in flight would hold a whole 1 GiB of records at
/// once. (Measured, release, 2 workers, restart after 1M spans read from a 330 MB file: 16 MiB
/// 11.6–12.2 s to serving at a peak RSS of 1.22–1.40 GB, 32 MiB 11.6–12.2 s at 1.28–1.35 GB,
/// 64 MiB 10.2–10.9 s at 1.48–1.53 GB, 256 batches 9.3 s at 1.60 GB; the live state: 1.12–1.24
/// GB. The workers decoding and arranging are the bottleneck; a deeper queue lets them take
/// larger steps.)
const REPLAY_WINDOW_BYTES: usize = 64 << 20;

/// A push's answer, once known.
pub(crate) type IngestAnswer = tokio::sync::watch::Receiver<Option<Result<IngestReport, ClusterError>>>;

/// What [`Controller::recover`] replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs and views installed again.
    pub jobs: usize,
    /// Jobs cancelled again.
    pub cancels: usize,
    /// Pushes applied again.
    pub pushes: usize,
    /// The snapshot restored first, if the log was compacted.
    pub snapshot: Option<compaction::Restored>,
}

/// `Idempotency-Key`s remembered per push source: a push retried after this many later pushes
/// to the same source is applied again.
pub const IDEMPOTENCY_KEYS: usize = 100_000;

/// Bytes of the answers remembered per push source, at most (an answer lists up to 1,000
/// rejects): past it the oldest keys are forgotten first.
pub const IDEMPOTENCY_BYTES: u64 = 16 << 20;

impl Sequencer {
    /// Whether the server reads file sources itself (a durable server, also while it replays
    /// its log): what they read is then logged with their cursors, like a Kafka source's
    /// batches, and a restart goes on where they were.
    fn files_by_server(&self) -> bool {
        self.log.is_some() || self.replaying
    }

    /// Whether the server reads `source` itself (see [`crate::sources::read_by_server`]).
    fn reads(&self, source: &SourceConfig) -> bool {
        crate::sources::read_by_server(source.kind, self.files_by_server())
    }

    /// The next timestamp for a push, batch or retraction: `logged` (a replayed record's
    /// timestamp), else the wall clock in ms (while replaying: the last one plus one), and
    /// always later than the last one.
    fn next_timestamp(&mut self, logged: Option<Time>) -> Time {
        let floor = match logged {
            Some(at) => at,
            None if self.replaying => 0,
            None => now_ms(),
        };
        self.last_timestamp = (self.last_timestamp + 1).max(floor);
        self.last_timestamp
    }

    /// Closes every timestamp before the wall clock, and at least one more than last time
    /// (so that time moves on also while the wall clock is behind the timestamps given, after
    /// it went back or while more than 1,000 were given a second): [`Command::AdvanceTo`] to
    /// every worker; later timestamps are at least that time.
    fn close_timestamp(&mut self) -> Result<(), ClusterError> {
        let time = now_ms().max(self.last_timestamp + 1).max(self.closed + 1);
        self.last_timestamp = time - 1;
        self.closed = time;
        self.send(&Command::AdvanceTo { time })
    }

    /// Sends the parts of a push or batch at timestamp `at`, part `w` to worker `w` (each
    /// decodes its own).
    fn send_parts(&mut self, at: Time, parts: Vec<impl FnOnce(Time) -> Command>) -> Result<(), ClusterError> {
        for (worker, part) in parts.into_iter().enumerate() {
            self.send_wire(part(at), Some(worker))?;
        }
        Ok(())
    }

    /// Appends `record` to the durable log, if there is one: its sequence number there.
    /// A catalog change (a job, a view, a cancellation) is also kept for snapshots, while
    /// there is a log or one is replayed.
    fn log(&mut self, record: impl FnOnce() -> LogRecord) -> Result<Stored, ClusterError> {
        if self.log.is_none() && !self.replaying {
            return Ok(None);
        }
        let mut record = record();
        let stored = match &self.log {
            Some(log) => Some((log.clone(), log.append(&mut record)?)),
            None => None,
        };
        self.catalog_log.push(record);
        Ok(stored)
    }

    /// Appends `record` to the durable log, if there is one, and hands it back: a push's or
    /// batch's records move into the log record and out again, uncopied, to be sent on.
    fn log_and_return(&self, mut record: LogRecord) -> Result<(Stored, LogRecord), ClusterError> {
        match &self.log {
            Some(log) => {
                let sequence = log.append(&mut record)?;
                Ok((Some((log.clone(), sequence)), record))
            }
            None => Ok((None, record)),
        }
    }

    /// Sends a command to every worker.
    fn send(&self, command: &Command) -> Result<(), ClusterError> {
        self.send_to(command, None)
    }

    /// Sends a command to worker `to` only (`None`: to every worker).
    fn send_to(&self, command: &Command, to: Option<usize>) -> Result<(), ClusterError> {
        if matches!(command, Command::Ingest { .. } | Command::IngestRecords { .. }) {
            return self.send_wire(command.clone(), to);
        }
        let json = serde_json::to_string(command).map_err(|e| ClusterError::BadRequest(e.to_string()))?;
        self.send_envelope((crate::protocol::Wire { json, texts: Vec::new() }, to))
    }

    /// Sends a command (taken, so that its bulk texts move rather than copy: [`Wire`]) to
    /// worker `to` only (`None`: to every worker).
    ///
    /// [`Wire`]: crate::protocol::Wire
    fn send_wire(&self, command: Command, to: Option<usize>) -> Result<(), ClusterError> {
        let wire = crate::protocol::Wire::encode(command).map_err(|e| ClusterError::BadRequest(e.to_string()))?;
        self.send_envelope((wire, to))
    }

    fn send_envelope(&self, envelope: Envelope) -> Result<(), ClusterError> {
        self.tx.send(envelope).map_err(|_| ClusterError::Stopped)?;
        if let Some(worker0) = lock(&self.shared.worker0).as_ref() {
            worker0.unpark();
        }
        Ok(())
    }

    /// Plans `views` against the catalog and the relations `tables` that the job's sources
    /// declare (each view may read the earlier ones).
    fn plan(
        &self,
        tables: &[(String, SchemaRef)],
        views: &[ViewSpec],
    ) -> Result<Vec<(String, SchemaRef, Vec<String>)>, String> {
        let schemas: Vec<(String, SchemaRef)> =
            self.catalog.iter().map(|(n, e)| (n.clone(), e.schema.clone())).chain(tables.iter().cloned()).collect();
        plan(&schemas, views)
    }
}

/// The wall clock: ms since the Unix epoch.
pub(crate) fn now_ms() -> Time {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Time)
}

/// `body` cut into `parts` runs of whole lines (as `str::lines` counts them), about as many
/// lines each, with the number (from 1) of each run's first line; runs past the last line are
/// empty.
fn split_lines(body: &str, parts: usize) -> Vec<(u64, String)> {
    let lines = body.lines().count();
    let per = lines.div_ceil(parts.max(1)).max(1);
    let mut out = Vec::with_capacity(parts);
    let mut rest = body;
    for part in 0..parts.max(1) {
        let first_line = (part * per) as u64 + 1;
        // The end of this run: after its `per`-th newline, or the body's end.
        let mut end = 0;
        for _ in 0..per {
            match rest[end..].find('\n') {
                Some(i) => end += i + 1,
                None => {
                    end = rest.len();
                    break;
                }
            }
        }
        out.push((first_line, rest[..end].to_owned()));
        rest = &rest[end..];
    }
    out
}

/// Plans `views` against the collections `schemas` (each view may read the earlier ones):
/// each view's name, schema and the collections it reads.
fn plan(schemas: &[(String, SchemaRef)], views: &[ViewSpec]) -> Result<Vec<(String, SchemaRef, Vec<String>)>, String> {
    let defs = crate::worker::plan_views(schemas, views)?;
    Ok(defs.into_iter().map(|d| (d.name, d.schema, d.reads)).collect())
}

/// What a job being installed reads: its sources, whether what they ingest can be retracted,
/// and which files its file sources may read.
struct Inputs {
    sources: Vec<SourceConfig>,
    retractable: bool,
    access: amx_connectors::FileAccess,
}

/// A push body with every line longer than `limit` bytes cut to its first bytes (at most
/// [`amx_connectors::record::RAW_BYTES`], at a character boundary), and those lines (from 1)
/// with their lengths: a line past the limit is rejected whole, so only its head need travel
/// to the workers (a 200 MB line used to be copied several times over). The body itself when
/// no line is that long.
fn cut_oversized(body: &str, limit: u64) -> (String, BTreeMap<u64, u64>) {
    let mut oversized = BTreeMap::new();
    for (i, line) in body.lines().enumerate() {
        // A blank line is no record, however long.
        if line.len() as u64 > limit && !line.trim().is_empty() {
            oversized.insert(i as u64 + 1, line.len() as u64);
        }
    }
    if oversized.is_empty() {
        return (body.to_owned(), oversized);
    }
    let mut cut = String::new();
    for (i, line) in body.lines().enumerate() {
        if i > 0 {
            cut.push('\n');
        }
        if oversized.contains_key(&(i as u64 + 1)) {
            let mut end = line.len().min(amx_connectors::record::RAW_BYTES);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            cut.push_str(&line[..end]);
        } else {
            cut.push_str(line);
        }
    }
    (cut, oversized)
}

/// The memory changes take, estimated: per change its row's values (text at its length) and
/// 48 bytes of row, time and diff.
fn change_bytes(changes: &[(Row, Time, Diff)]) -> u64 {
    changes.iter().map(|(row, _, _)| crate::protocol::row_bytes(row)).sum()
}

mod compaction;
pub use compaction::{Compaction, LogStats, Restored};

/// The controller of a running cluster (cheap to clone: a handle).
#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    seq: Mutex<Sequencer>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    guards: Mutex<Option<timely::communication::WorkerGuards<()>>>,
    /// Queries planned and run at once (the rest wait their turn).
    sql_slots: Arc<tokio::sync::Semaphore>,
    /// The time of the latest acknowledged write (ingest, cancel): reads are never before it.
    last_write: AtomicU64,
    /// What one query may take.
    pub(crate) sql_limits: crate::SqlLimits,
    /// Changes a subscriber may leave untaken, and their bytes.
    max_queued_rows: u64,
    max_queued_bytes: u64,
    /// The largest record, in bytes (`cluster.max_record_bytes`).
    max_record_bytes: u64,
    /// [`ClusterConfig::restart_rows_ahead`].
    restart_rows_ahead: usize,
    /// Where object-store sinks may write local directories ([`ClusterConfig::sink_access`]).
    pub(crate) sink_access: amx_connectors::FileAccess,
    /// The memory pool every query reserves from.
    pub(crate) sql_pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    /// The runtime queries run on (made at the first query).
    pub(crate) sql_runtime: std::sync::OnceLock<crate::sql::SqlRuntime>,
    /// The session every query's is made from (made at the first query).
    pub(crate) sql_sessions: std::sync::OnceLock<amx_sql::SessionTemplate>,
    /// Queries answered by one peek, without DataFusion ([`Controller::point_queries`]).
    pub(crate) point_queries: AtomicU64,
    /// The file sources the server reads (with a durable log): their catch-up requests and
    /// progress, by (job, source).
    feeds: Mutex<HashMap<(JobId, String), Arc<crate::sources::file::FileFeed>>>,
    /// Held while a snapshot is taken (one at a time).
    compaction: tokio::sync::Mutex<()>,
    /// Snapshots taken, and compactions that failed (see [`Controller::log_stats`]).
    compactions: AtomicU64,
    compaction_failures: AtomicU64,
}

/// Queries planned and run at the same time, at most.
pub(crate) const SQL_SLOTS: usize = 4;

impl Drop for Inner {
    /// The last handle gone: the workers stop (else joining them would wait forever).
    fn drop(&mut self) {
        let _ = lock(&self.seq).send(&Command::Shutdown);
    }
}

/// Keeps the arrangements readable at `time` while it lives (no compaction past it).
pub struct ReadHold {
    id: u64,
    time: Time,
    controller: Weak<Inner>,
    /// The collections held, each with the job that made it (`None`: built in).
    owners: Vec<(String, Option<JobId>)>,
}

impl ReadHold {
    /// The time held.
    pub fn time(&self) -> Time {
        self.time
    }

    /// The job that made collection `name` when the hold was taken (`Some(None)`: built in);
    /// `None` when the hold was not taken on a collection of that name.
    pub(crate) fn owner(&self, name: &str) -> Option<Option<JobId>> {
        self.owners.iter().find(|(n, _)| n == name).map(|(_, owner)| *owner)
    }
}

impl Drop for ReadHold {
    fn drop(&mut self) {
        if let Some(inner) = self.controller.upgrade() {
            lock(&inner.seq).holds.remove(&self.id);
        }
    }
}

/// A live subscription: its events, in time order; the stream ends when the collection is
/// dropped (its view dropped, or its job cancelled). Dropping it ends the subscription.
pub struct Subscription {
    /// The collection's columns.
    pub schema: SchemaRef,
    /// Snapshot, then changes and progress; a snapshot part with the worker to credit.
    events: tokio_mpsc::UnboundedReceiver<(SubscribeEvent, Option<usize>)>,
    queue: Arc<SubscriberQueue>,
    id: u64,
    controller: Controller,
}

impl Subscription {
    /// The next event; `None` once the subscription has ended: its collection was dropped, or
    /// the subscriber fell behind by more than the queue's bound ([`Subscription::overflowed`]).
    pub async fn recv(&mut self) -> Option<SubscribeEvent> {
        let event = self.events.recv().await;
        self.taken(event)
    }

    /// The next event if one is queued now.
    pub fn try_recv(&mut self) -> Option<SubscribeEvent> {
        let event = self.events.try_recv().ok();
        self.taken(event)
    }

    fn taken(&mut self, event: Option<(SubscribeEvent, Option<usize>)>) -> Option<SubscribeEvent> {
        let (event, credit) = event?;
        if let SubscribeEvent::Changes(changes) = &event {
            self.queue.rows.fetch_sub(changes.len() as u64, Ordering::SeqCst);
            self.queue.bytes.fetch_sub(change_bytes(changes), Ordering::SeqCst);
        }
        // The worker whose snapshot part this is may read its next one.
        if let Some(worker) = credit {
            let credit = Command::SubscribeCredit { id: self.id, worker };
            let _ = lock(&self.controller.inner.seq).send_to(&credit, Some(worker));
        }
        Some(event)
    }

    /// Whether the subscription was ended because its subscriber left more than the bound of
    /// changes untaken (`subscribe.max_queued_rows`, `subscribe.max_queued_bytes`).
    pub fn overflowed(&self) -> bool {
        self.queue.overflowed.load(Ordering::SeqCst)
    }

    /// Completes once the subscription has been ended for its subscriber falling behind
    /// (while the subscriber may still be blocked writing to its client).
    pub async fn overflow(&self) {
        while !self.overflowed() {
            self.queue.notify.notified().await;
        }
    }

    /// Changes a subscriber may leave untaken before its subscription is ended.
    pub fn max_queued_rows(&self) -> u64 {
        self.queue.max_rows
    }

    /// Bytes of changes a subscriber may leave untaken before its subscription is ended.
    pub fn max_queued_bytes(&self) -> u64 {
        self.queue.max_bytes
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.controller.inner.shared.subscriptions).remove(&self.id);
        let _ = lock(&self.controller.inner.seq).send(&Command::Unsubscribe { id: self.id });
    }
}

/// What a push of records did: counts and each rejected record's reason.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestReport {
    /// Records that decoded into rows.
    pub accepted: u64,
    /// Records that did not (each is a row of `ingest_errors`).
    pub rejected: u64,
    /// Rows of `ingest_errors` the push made: one per rejected record, except where a record
    /// holds many (each rejected span of an OTLP request is a row).
    #[serde(default)]
    pub error_rows: u64,
    /// Why each rejected record was rejected: `{line, error}` (line numbers from 1), for the
    /// first [`MAX_REPORTED_REJECTS`] (1,000) by line; `ingest_errors` has every one.
    pub errors: Vec<IngestReject>,
    /// The time the records were ingested at (ms since the Unix epoch): every query answered
    /// after the reply reads at this time or later, so it sees them.
    pub timestamp: Time,
}

/// One rejected record.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestReject {
    /// Its line in the request body (from 1).
    pub line: u64,
    /// Why.
    pub error: String,
}

impl IngestReport {
    /// Bytes it takes in memory, estimated: 64, and per reject 40 and its message.
    pub fn bytes(&self) -> u64 {
        64 + self.errors.iter().map(|e| 40 + e.error.len() as u64).sum::<u64>()
    }
}

/// A job's state with its sources' and views' figures, as `GET /v1/jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    /// The job.
    #[serde(flatten)]
    pub info: JobInfo,
    /// Per source: records read, rows decoded, ingest errors, bytes read of the total.
    pub source_stats: Vec<SourceStatus>,
    /// Per view: its rows now.
    pub view_stats: Vec<ViewStatus>,
    /// Hydration: the fraction of the file sources' bytes read, 0 to 1 (1.0 with none).
    pub hydration: f64,
    /// The file sources' progress summed: records and bytes read, of the bytes there are,
    /// rate and time left.
    pub backfill: Backfill,
}

/// A source's figures.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SourceStatus {
    /// Name.
    pub name: String,
    /// `file` or `push`.
    pub kind: SourceKind,
    /// Records read (all workers).
    pub records: i64,
    /// Rows decoded into the canonical relations.
    pub decoded: i64,
    /// Rows of `ingest_errors`.
    pub errors: i64,
    /// File sources: bytes read, bytes there are, and whether the end was reached.
    pub progress: Option<SourceProgress>,
}

/// A view's figures.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ViewStatus {
    /// Name.
    pub name: String,
    /// Rows (with multiplicity).
    pub rows: i64,
    /// Subscriptions to it ended because their subscriber fell more than
    /// `subscribe.max_queued_rows` changes, or `subscribe.max_queued_bytes` of them, behind
    /// (their WebSocket closed with code 1013).
    pub slow_subscribers_closed: u64,
}

impl Controller {
    /// Starts this process's part of the cluster. In process 0 the returned controller takes
    /// commands; in other processes the workers follow process 0's commands, and
    /// [`Controller::join`] waits for them to stop.
    ///
    /// # Errors
    /// A bad shape (no workers, an index past the processes, too few addresses), or failing to
    /// connect the processes.
    pub fn start(config: ClusterConfig) -> anyhow::Result<Controller> {
        use anyhow::{anyhow, bail};
        if config.workers == 0 || config.processes == 0 {
            bail!("a cluster needs at least one process and one worker");
        }
        if config.process_index >= config.processes {
            bail!("--process-index {} is not below --processes {}", config.process_index, config.processes);
        }
        // The instance's views, planned before any worker starts (against every relation: they
        // read the relations' rows, arranged or not).
        let planned = if config.process_index == 0 {
            plan(&builtin_schemas(), &config.views).map_err(|e| anyhow!("{e}"))?
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::new(rx, config.workers * config.processes));
        let is_controller = config.process_index == 0;
        let worker_shared = shared.clone();
        let options = config.worker.clone();
        let body = move |worker: &mut timely::worker::Worker| {
            run_worker(worker, is_controller.then(|| worker_shared.clone() as Arc<dyn ControllerLink>), &options)
        };
        let guards = if config.processes > 1 {
            if config.addresses.len() < config.processes {
                bail!("{} addresses for {} processes", config.addresses.len(), config.processes);
            }
            let (builders, others) =
                crate::net::allocators(&config.addresses[..config.processes], config.process_index, config.workers)
                    .map_err(|e| anyhow!("connecting the timely cluster: {e}"))?;
            timely::execute::execute_from(builders, others, worker_config(config.exert_proportionality), body)
        } else {
            let communication = if config.workers == 1 {
                timely::CommunicationConfig::Thread
            } else {
                timely::CommunicationConfig::Process(config.workers)
            };
            timely::execute(timely::Config { communication, worker: worker_config(config.exert_proportionality) }, body)
        }
        .map_err(|e| anyhow!("starting the timely cluster: {e}"))?;
        // The agent state: the collections arranged, and the instance's views.
        let catalog: BTreeMap<String, Entry> = builtin_schemas()
            .into_iter()
            .filter(|(name, _)| {
                name == SOURCE_STATS
                    || name == amx_dataflows::render::VIEW_ERRORS
                    || config.collections.as_ref().is_none_or(|c| c.contains(name))
            })
            .map(|(name, schema)| (name, Entry { schema, owner: None, reads: Vec::new(), relation: false }))
            .collect();
        let mut seq = Sequencer {
            tx,
            shared: shared.clone(),
            catalog,
            jobs: BTreeMap::new(),
            push: HashMap::new(),
            instance_errors: Vec::new(),
            next_job: 1,
            since: 0,
            holds: BTreeMap::new(),
            log: None,
            keys: HashMap::new(),
            running: HashMap::new(),
            positions: HashMap::new(),
            access: HashMap::new(),
            sinks: HashMap::new(),
            last_timestamp: 0,
            closed: 0,
            replaying: false,
            catalog_log: Vec::new(),
            retracting: 0,
        };
        if is_controller {
            for (name, schema, reads) in planned {
                seq.catalog.insert(name, Entry { schema, owner: None, reads, relation: false });
            }
            seq.send(&Command::CreateInstance {
                build: crate::protocol::BUILD.to_owned(),
                collections: config.collections.clone(),
                views: config.views.clone(),
            })
            .map_err(|e| anyhow!(e))?;
        }
        let inner = Arc::new(Inner {
            seq: Mutex::new(seq),
            shared,
            next_id: AtomicU64::new(1),
            guards: Mutex::new(Some(guards)),
            sql_slots: Arc::new(tokio::sync::Semaphore::new(SQL_SLOTS)),
            last_write: AtomicU64::new(0),
            sql_pool: crate::limits::shared_pool(config.sql.memory_bytes),
            sql_sessions: std::sync::OnceLock::new(),
            point_queries: AtomicU64::new(0),
            sql_limits: config.sql.clone(),
            max_queued_rows: config.max_queued_rows,
            max_queued_bytes: config.max_queued_bytes,
            max_record_bytes: config.worker.max_record_bytes.max(1),
            restart_rows_ahead: config.restart_rows_ahead.max(1),
            sink_access: config.sink_access.clone(),
            sql_runtime: std::sync::OnceLock::new(),
            feeds: Mutex::new(HashMap::new()),
            compaction: tokio::sync::Mutex::new(()),
            compactions: AtomicU64::new(0),
            compaction_failures: AtomicU64::new(0),
        });
        if is_controller {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new().name("amx-compaction".into()).spawn(move || compaction_loop(weak))?;
            let weak = Arc::downgrade(&inner);
            let interval = config.timestamp_interval.clamp(Duration::from_millis(1), IDLE_TIMESTAMP_INTERVAL);
            std::thread::Builder::new().name("amx-timestamps".into()).spawn(move || timestamp_loop(weak, interval))?;
        }
        Ok(Controller { inner })
    }

    /// Waits for this process's workers to stop (after [`Controller::shutdown`], here or in
    /// process 0).
    ///
    /// # Errors
    /// A worker that panicked.
    pub fn join(&self) -> anyhow::Result<()> {
        if let Some(guards) = lock(&self.inner.guards).take() {
            for r in guards.join() {
                r.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
            }
        }
        Ok(())
    }

    /// Stops every worker of every process.
    pub fn shutdown(&self) {
        let mut seq = lock(&self.inner.seq);
        seq.running.clear();
        seq.sinks.clear();
        let _ = seq.send(&Command::Shutdown);
    }

    /// Waits for one of the [`SQL_SLOTS`] query slots.
    pub(crate) async fn sql_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.sql_slots.clone().acquire_owned().await.ok()
    }

    /// Checks, by their names alone (nothing on the file system is read), that the local
    /// directories (`file:///DIR`) of the job's object-store sources lie under the roots its
    /// file sources may read, and those of its object-store sinks under the server's sink
    /// roots ([`ClusterConfig::sink_access`]).
    ///
    /// # Errors
    /// [`ClusterError::Forbidden`] naming the source or sink; [`ClusterError::InvalidJob`] for
    /// a URL that is no store's.
    fn check_local_stores(&self, job: &Job) -> Result<(), ClusterError> {
        use crate::storage::{StoreUrl, check_store_url};
        let what = "an object-store URL is s3://BUCKET/PREFIX or file:///DIR";
        for source in &job.config.sources {
            let Some(config) = &source.object_store else { continue };
            let invalid = |e: String| ClusterError::InvalidJob(format!("source `{}`: {e}", source.name));
            if let StoreUrl::Local(dir) = check_store_url(&config.url, what).map_err(invalid)? {
                job.access
                    .check_pattern(&dir.to_string_lossy())
                    .map_err(|e| ClusterError::Forbidden(format!("source `{}`: {e}", source.name)))?;
            }
        }
        for sink in &job.config.sinks {
            let Some(config) = &sink.object_store else { continue };
            let invalid = |e: String| ClusterError::InvalidJob(format!("sink `{}`: {e}", sink.name));
            let StoreUrl::Local(dir) = check_store_url(&config.url, what).map_err(invalid)? else { continue };
            let forbidden = |why: String| ClusterError::Forbidden(format!("sink `{}`: {why}", sink.name));
            match self.inner.sink_access.check_pattern(&dir.to_string_lossy()) {
                Ok(()) => {}
                Err(amx_connectors::AccessError::NoRoots) => {
                    return Err(forbidden(
                        "object-store sinks to local directories are disabled on this server: it writes only under \
                         the sink roots its operator configures (`[files] sink_roots = [\"/data/out\", …]` in the \
                         server's config file, or AIMATRIX__FILES__SINK_ROOTS), and none are configured; write to \
                         s3://BUCKET/PREFIX or ask the operator"
                            .into(),
                    ));
                }
                Err(amx_connectors::AccessError::Outside { pattern, .. }) => {
                    let amx_connectors::FileAccess::Under(roots) = &self.inner.sink_access else { continue };
                    let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                    return Err(forbidden(format!(
                        "`{pattern}` is not under the server's sink roots ({}; `[files] sink_roots` in the server's \
                         config): only absolute paths without `..` under a root can be written",
                        roots.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The largest record the sources take, in bytes (`cluster.max_record_bytes`): a longer
    /// one is an ingest error.
    pub fn max_record_bytes(&self) -> u64 {
        self.inner.max_record_bytes
    }

    /// Workers in the cluster (all processes).
    pub fn peers(&self) -> usize {
        self.inner.shared.peers
    }

    /// Installs a job: checks that its source names are free and plans its views against the
    /// catalog, then sends it to every worker. Returns its id.
    ///
    /// Must not be called from an async context (planning runs DataFusion on its own runtime):
    /// a server calls it through `spawn_blocking`.
    ///
    /// # Errors
    /// [`ClusterError::Conflict`] for a source or view name already in use;
    /// [`ClusterError::InvalidJob`] for a view that fails to plan (the message names the view
    /// and where).
    #[tracing::instrument(name = "job install", skip_all, err(Display),
        fields(job.name = job.config.name.as_deref(), job.id = tracing::field::Empty))]
    pub fn install_job(&self, job: &Job) -> Result<JobId, ClusterError> {
        if job.config.sources.is_empty() && job.config.views.is_empty() && job.config.sinks.is_empty() {
            return Err(ClusterError::InvalidJob("the job has no sources, views or sinks: nothing to run".into()));
        }
        self.check_local_stores(job)?;
        // A Parquet source's relation declared without columns takes those of its first
        // object, now: the job is logged with them.
        let with_columns;
        let job = if job.config.sources.iter().any(|s| s.relation.as_ref().is_some_and(|t| t.columns.is_empty())) {
            let mut filled = job.clone();
            for source in &mut filled.config.sources {
                let name = source.name.clone();
                let invalid = |e: String| ClusterError::InvalidJob(format!("source `{name}`: {e}"));
                crate::sources::object::take_parquet_schema(source, &job.access).map_err(invalid)?;
                if let Some(table) = &source.relation {
                    table.check().map_err(invalid)?;
                }
                source.decoder().map_err(|e| invalid(e.to_string()))?;
            }
            with_columns = filled;
            &with_columns
        } else {
            job
        };
        let replaying = lock(&self.inner.seq).replaying;
        for source in job.config.sources.iter().filter(|s| s.kind == SourceKind::File) {
            // A file source that does not follow is read to its end once: a glob that matches
            // nothing now would never be read.
            job.access
                .check_pattern(&source.path)
                .map_err(|e| ClusterError::Forbidden(format!("source `{}`: {e}", source.name)))?;
            let mut reader = amx_connectors::FileReader::new(&source.path)
                .map_err(|e| ClusterError::InvalidJob(format!("source `{}`: {e}", source.name)))?;
            reader.set_access(job.access.clone());
            // (A directory reached through a link out of the roots is not named as one: its
            // existence is none of the job's business; it then matches no file.)
            let path = std::path::Path::new(&source.path);
            if path.is_dir() && job.access.admits(path) {
                return Err(ClusterError::InvalidJob(format!(
                    "source `{}`: `{}` is a directory; give a file or a glob of files",
                    source.name, source.path
                )));
            }
            // (At a replay, what it read is in the log: its files may be gone since.)
            if reader.paths().is_empty() && !source.follow && !replaying {
                return Err(ClusterError::InvalidJob(format!(
                    "source `{}`: no file matches `{}` (paths are read by the server: a relative one against its \
                     working directory)",
                    source.name, source.path
                )));
            }
        }
        let mut seq = lock(&self.inner.seq);
        for source in &job.config.sources {
            if let Some(owner) = seq.push.get(&source.name) {
                return Err(ClusterError::Conflict(format!("source `{}` is in use by job {owner}", source.name)));
            }
            if let Some(other) = seq
                .jobs
                .values()
                .find(|j| j.state != JobState::Cancelled && j.sources.iter().any(|s| s.name == source.name))
            {
                return Err(ClusterError::Conflict(format!("source `{}` is in use by job {}", source.name, other.id)));
            }
        }
        let views: Vec<ViewSpec> = job
            .config
            .views
            .iter()
            .map(|(name, sql)| ViewSpec {
                name: name.to_ascii_lowercase(),
                sql: sql.as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        // A sink's view, and its key columns, must exist (the job's own views are planned for
        // their columns).
        let tables: Vec<(String, SchemaRef)> =
            job.config.sources.iter().filter_map(SourceConfig::relation_schema).collect();
        let planned =
            if job.config.sinks.is_empty() { Vec::new() } else { seq.plan(&tables, &views).unwrap_or_default() };
        for sink in &job.config.sinks {
            let schema = planned
                .iter()
                .find(|(name, _, _)| *name == sink.view)
                .map(|(_, schema, _)| schema.clone())
                .or_else(|| tables.iter().find(|(name, _)| *name == sink.view).map(|(_, schema)| schema.clone()))
                .or_else(|| seq.catalog.get(&sink.view).map(|e| e.schema.clone()));
            let Some(schema) = schema else {
                return Err(ClusterError::InvalidJob(format!(
                    "sink `{}`: no view or relation named `{}`",
                    sink.name, sink.view
                )));
            };
            if let Some(missing) = sink.key.iter().find(|k| schema.index_of(k).is_err()) {
                let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(ClusterError::InvalidJob(format!(
                    "sink `{}`: view `{}` has no column `{missing}` (its columns: {})",
                    sink.name,
                    sink.view,
                    columns.join(", ")
                )));
            }
            if sink.object_store.is_some()
                && let Some(clash) =
                    crate::sinks::object::META_COLUMNS.iter().find(|name| schema.index_of(name).is_ok())
            {
                return Err(ClusterError::InvalidJob(format!(
                    "sink `{}`: view `{}` has a column `{clash}`, which the Parquet sets add to every row: rename it \
                     in the view",
                    sink.name, sink.view
                )));
            }
        }
        let (name, sources) = (job.config.name.clone(), job.config.sources.clone());
        let inputs = Inputs { sources, retractable: job.config.retractable, access: job.access.clone() };
        let logged = |id: JobId| LogRecord::InstallJob { id: id.0, job: job.config.clone() };
        let (id, stored) = self.install(&mut seq, name, JobKind::Job, inputs, views, logged)?;
        if let Some(info) = seq.jobs.get_mut(&id) {
            info.sinks = job.config.sinks.clone();
        }
        if !seq.replaying {
            self.start_sinks(&mut seq, id);
        }
        drop(seq);
        tracing::Span::current().record("job.id", id.0);
        stored.map(|(log, at)| log.sync_now(at)).transpose()?;
        Ok(id)
    }

    fn install(
        &self,
        seq: &mut Sequencer,
        name: Option<String>,
        kind: JobKind,
        inputs: Inputs,
        views: Vec<ViewSpec>,
        logged: impl FnOnce(JobId) -> LogRecord,
    ) -> Result<(JobId, Stored), ClusterError> {
        let Inputs { sources, retractable, access } = inputs;
        for view in &views {
            // The introspection relations are the controller's, not the dataflows': a view can
            // neither read nor take the name of one.
            let introspection = |name: &str| crate::introspection::RELATIONS.contains(&name);
            if introspection(&view.name) {
                return Err(ClusterError::Conflict(format!(
                    "`{}` is an introspection relation of the server: choose another name",
                    view.name
                )));
            }
            let reads = amx_sql::referenced_tables(&view.sql).unwrap_or_default();
            if let Some(read) = reads.iter().find(|t| introspection(t)) {
                return Err(ClusterError::Sql(format!(
                    "view `{}` reads `{read}`, an introspection relation: it is read from the controller when a \
                     query runs, not maintained by the dataflows, so a materialized view cannot read it (query it \
                     directly)",
                    view.name
                )));
            }
            if view.name.is_empty() {
                return Err(ClusterError::Sql("a view needs a name".into()));
            }
            if seq.catalog.contains_key(&view.name) {
                return Err(ClusterError::Conflict(format!("a relation or view named `{}` already exists", view.name)));
            }
        }
        let tables: Vec<(String, SchemaRef)> = sources.iter().filter_map(SourceConfig::relation_schema).collect();
        for (name, _) in &tables {
            if seq.catalog.contains_key(name) {
                return Err(ClusterError::Conflict(format!("a relation or view named `{name}` already exists")));
            }
        }
        let planned = seq.plan(&tables, &views).map_err(|e| match kind {
            JobKind::Job => ClusterError::InvalidJob(e),
            JobKind::View => ClusterError::Sql(e),
        })?;
        // A push source's decoder is made by every worker; it must be valid before it is sent.
        // (So is that of every source the server reads: its batches arrive as pushes do.)
        let mut pushes = Vec::new();
        for source in sources.iter().filter(|s| s.kind != SourceKind::File || seq.reads(s)) {
            source.decoder().map_err(|e| ClusterError::InvalidJob(format!("source `{}`: {e}", source.name)))?;
            pushes.push(source.name.clone());
        }
        let id = JobId(seq.next_job);
        // The sources the server reads are opened before anything is logged: a job refused
        // here leaves no trace (at a replay they open at its end, at their positions).
        let mut readers = Vec::new();
        if !seq.replaying {
            for source in sources.iter().filter(|s| seq.reads(s)) {
                let context = self.open_context(id, source, &access);
                let reader = crate::sources::open(id, source, Default::default(), context)?;
                readers.push((source.name.clone(), reader));
            }
        }
        // Logged before it is sent: what the workers apply is in the log.
        let stored = seq.log(|| logged(id))?;
        seq.next_job += 1;
        let files_by_server = seq.files_by_server();
        seq.send(&Command::InstallJob {
            id,
            sources: sources.clone(),
            views: views.clone(),
            retractable,
            access: access.clone(),
            files_by_server,
        })?;
        seq.access.insert(id, access);
        for (name, schema) in tables {
            seq.catalog.insert(name, Entry { schema, owner: Some(id), reads: Vec::new(), relation: true });
        }
        for (name, schema, reads) in planned {
            seq.catalog.insert(name, Entry { schema, owner: Some(id), reads, relation: false });
        }
        for name in pushes {
            seq.push.insert(name, id);
        }
        let state = JobState::Running;
        let (sinks, errors) = (Vec::new(), Vec::new());
        seq.jobs.insert(id, JobInfo { id, name, kind, state, sources, views, retractable, sinks, errors });
        for (name, reader) in readers {
            self.spawn_source(seq, id, &name, reader);
        }
        Ok((id, stored))
    }

    /// What opening source `source` of job `id` takes: a file source gets a new feed, which
    /// the controller keeps to ask it for catch-ups and show its progress.
    fn open_context(
        &self,
        id: JobId,
        source: &SourceConfig,
        access: &amx_connectors::FileAccess,
    ) -> crate::sources::OpenContext {
        let feed = Arc::new(crate::sources::file::FileFeed::default());
        if source.kind == SourceKind::File {
            lock(&self.inner.feeds).insert((id, source.name.clone()), feed.clone());
        }
        crate::sources::OpenContext { max_record_bytes: self.inner.max_record_bytes, access: access.clone(), feed }
    }

    /// The feed of file source `source` of `job`, when the server reads it.
    fn feed(&self, job: JobId, source: &str) -> Option<Arc<crate::sources::file::FileFeed>> {
        lock(&self.inner.feeds).get(&(job, source.to_owned())).cloned()
    }

    /// Runs an opened source of job `id`; a thread that cannot start is named in the job's
    /// errors (the job is installed already).
    fn spawn_source(&self, seq: &mut Sequencer, id: JobId, name: &str, reader: Box<dyn crate::sources::BatchSource>) {
        match crate::sources::spawn(self, id, name, reader) {
            Ok(running) => {
                seq.running.insert((id, name.to_owned()), running);
            }
            Err(e) => {
                if let Some(info) = seq.jobs.get_mut(&id) {
                    info.errors.push(format!("source `{name}`: {e}"));
                }
            }
        }
    }

    /// Starts the sinks of job `id`; one that cannot start is named in the job's errors.
    fn start_sinks(&self, seq: &mut Sequencer, id: JobId) {
        let Some(info) = seq.jobs.get(&id) else { return };
        let mut failed = Vec::new();
        for sink in info.sinks.clone() {
            match crate::sinks::start(self, id, &sink) {
                Ok(running) => {
                    seq.sinks.insert((id, sink.name.clone()), running);
                }
                Err(e) => failed.push(format!("sink `{}`: {e}", sink.name)),
            }
        }
        if let Some(info) = seq.jobs.get_mut(&id) {
            info.errors.extend(failed);
        }
    }

    /// Starts the sources of job `id` the server reads (Kafka, object store) at the positions
    /// a replay found; one that no longer opens is named in the job's errors (the start goes
    /// on: the job was valid when it was accepted).
    fn start_server_sources(&self, seq: &mut Sequencer, id: JobId) {
        let Some(info) = seq.jobs.get(&id) else { return };
        let sources: Vec<SourceConfig> = info.sources.iter().filter(|s| seq.reads(s)).cloned().collect();
        let access = seq.access.get(&id).cloned().unwrap_or_default();
        for source in sources {
            let resume = seq.positions.get(&(id, source.name.clone())).cloned().unwrap_or_default();
            let context = self.open_context(id, &source, &access);
            match crate::sources::open(id, &source, resume, context) {
                Ok(reader) => self.spawn_source(seq, id, &source.name, reader),
                Err(e) => {
                    if let Some(info) = seq.jobs.get_mut(&id) {
                        info.errors.push(e.to_string());
                    }
                }
            }
        }
    }

    /// Cancels a job: its sources stop and its views are dropped on every worker; what it
    /// ingested stays, unless `retract`: then every event its sources ingested is retracted
    /// from the shared agent state, at one timestamp. Returns once every worker has dropped it
    /// and the retraction (of its sources' counters, and with `retract` of its events) is
    /// visible (at most 10 s).
    ///
    /// # Errors
    /// [`ClusterError::UnknownJob`]; [`ClusterError::Conflict`] when it is already cancelled,
    /// a view of another job reads one of its views, or `retract` is asked of a job not
    /// submitted `retractable` (or of a materialized view).
    ///
    /// # Panics
    /// With `retract`, outside a tokio runtime (the retraction's second step is a task).
    #[tracing::instrument(name = "job cancel", skip_all, err(Display), fields(job.id = id.0, job.retract = retract))]
    pub async fn cancel_job(&self, id: JobId, retract: bool) -> Result<(), ClusterError> {
        let (applied, stored) = self.begin_cancel(id, retract)?;
        let upper = if retract {
            // From the drop on, the workers hold their time until `RetractJob` arrives. The
            // rest runs in a task of its own, started before anything is awaited, so a caller
            // that goes away (a client that disconnects) cannot leave them holding for good.
            let this = self.clone();
            let retracted = tokio::spawn(async move {
                // However it ends, the retraction is no longer in flight after it.
                struct Done(Controller);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let mut seq = lock(&self.0.inner.seq);
                        seq.retracting = seq.retracting.saturating_sub(1);
                    }
                }
                let _done = Done(this.clone());
                let upper = applied.await.map_err(|_| ClusterError::Stopped)?.upper;
                let (wait, applied) = this.wait_for_workers();
                {
                    let mut seq = lock(&this.inner.seq);
                    let at = seq.next_timestamp(None).max(upper);
                    seq.last_timestamp = at;
                    seq.send(&Command::RetractJob { id, at, wait })?;
                }
                Ok::<_, ClusterError>(applied.await.map_err(|_| ClusterError::Stopped)?.upper)
            });
            retracted.await.map_err(|_| ClusterError::Stopped)??
        } else {
            applied.await.map_err(|_| ClusterError::Stopped)?.upper
        };
        if let Some((log, at)) = stored {
            log.sync(at).await?;
        }
        // A replay closes no timestamps of its own until it ends (and then waits for what it
        // applied): waiting here would wait for a time that is not closed yet, 10 s per
        // cancellation.
        // Reads after it still read from its time on.
        if lock(&self.inner.seq).replaying {
            self.inner.last_write.fetch_max(upper.saturating_sub(1), Ordering::SeqCst);
        } else {
            self.wait_visible(upper).await;
        }
        Ok(())
    }

    /// Cancels a job (see [`Controller::cancel_job`]); the receiver answers with the frontier
    /// once every worker has applied it.
    fn begin_cancel(&self, id: JobId, retract: bool) -> Result<(oneshot::Receiver<Applied>, Stored), ClusterError> {
        let mut seq = lock(&self.inner.seq);
        let job = seq.jobs.get(&id).ok_or_else(|| ClusterError::UnknownJob(id.to_string()))?;
        if job.state == JobState::Cancelled {
            return Err(ClusterError::Conflict(format!("job {id} is already cancelled")));
        }
        if retract && job.kind == JobKind::View {
            return Err(ClusterError::Conflict(format!(
                "job {id} is a materialized view (CREATE MATERIALIZED VIEW): it ingests nothing to retract; \
                 DROP it or cancel it without retract"
            )));
        }
        if retract && !job.retractable {
            return Err(ClusterError::Conflict(format!(
                "job {id} was submitted without `retractable = true`, so what it ingested was not kept and \
                 cannot be retracted; cancel it without retract (its data stays)"
            )));
        }
        let mine: Vec<String> = job
            .views
            .iter()
            .map(|v| v.name.clone())
            .chain(job.sources.iter().filter_map(|s| s.relation.as_ref().map(|t| t.name.clone())))
            .collect();
        if let Some((reader, entry)) = seq
            .catalog
            .iter()
            .find(|(_, e)| e.owner.is_some_and(|o| o != id) && e.reads.iter().any(|r| mine.contains(r)))
        {
            return Err(ClusterError::Conflict(format!(
                "view `{reader}` (job {}) reads a view or relation of job {id}; cancel or drop it first",
                entry.owner.map(|o| o.to_string()).unwrap_or_default()
            )));
        }
        // A sink of another job that writes one of its views (not checked in a replay: the log
        // of an earlier version may hold such a cancellation).
        let writer = seq.jobs.values().filter(|j| j.id != id && j.state != JobState::Cancelled).find_map(|j| {
            j.sinks.iter().find(|s| mine.contains(&s.view)).map(|s| (j.id, s.name.clone(), s.view.clone()))
        });
        if let Some((other, sink, view)) = writer
            && !seq.replaying
        {
            return Err(ClusterError::Conflict(format!(
                "sink `{sink}` of job {other} writes view `{view}` of job {id}; cancel job {other} first"
            )));
        }
        let stored = seq.log(|| LogRecord::CancelJob { id: id.0, retract })?;
        if retract {
            seq.retracting += 1;
        }
        let (wait, applied) = self.wait_for_workers();
        seq.send(&Command::DropJob { id, retract, wait })?;
        seq.catalog.retain(|_, e| e.owner != Some(id));
        seq.push.retain(|_, owner| *owner != id);
        seq.running.retain(|(job, _), _| *job != id);
        seq.sinks.retain(|(job, _), _| *job != id);
        if let Some(job) = seq.jobs.get_mut(&id) {
            job.state = JobState::Cancelled;
        }
        Ok((applied, stored))
    }

    /// A wait id and the reply that comes once every worker has answered
    /// [`Response::Applied`] or [`Response::Ingested`] for it (with the latest of their
    /// frontiers).
    fn wait_for_workers(&self) -> (u64, oneshot::Receiver<Applied>) {
        self.wait_for(self.peers())
    }

    /// A wait id and the reply that comes once `workers` workers have answered for it.
    fn wait_for(&self, workers: usize) -> (u64, oneshot::Receiver<Applied>) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, applied) = oneshot::channel();
        let wait = ApplyWait { left: workers, reply: Some(reply), ..Default::default() };
        lock(&self.inner.shared.ingests).insert(id, wait);
        (id, applied)
    }

    /// Waits (at most 10 s) until every collection has passed `time`: the dataflows have
    /// processed every change at `time` and before. False when one had not after 10 s (it is
    /// named in the log, with what `waiting` was for).
    async fn passed(&self, time: Time, waiting: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if lock(&self.inner.shared.uppers).values().all(|upper| *upper > time) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                let behind: Vec<String> = lock(&self.inner.shared.uppers)
                    .iter()
                    .filter(|(_, upper)| **upper <= time)
                    .map(|(name, upper)| format!("{name} at {upper}"))
                    .collect();
                tracing::warn!(time, behind = behind.join(", "), "collections did not pass {waiting} in 10 s");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// [`Controller::passed`] for a restart, which goes on without waiting once a collection
    /// does not move on (false).
    pub(crate) async fn wait_passed(&self, time: Time) -> bool {
        self.passed(time, "a restart's timestamp (the restart goes on without waiting for them)").await
    }

    /// Rows a restart sends ahead of the dataflows: [`ClusterConfig::restart_rows_ahead`] per
    /// worker.
    pub(crate) fn restart_rows_ahead(&self) -> usize {
        self.inner.restart_rows_ahead.saturating_mul(self.peers()).max(1)
    }

    /// Waits (at most 10 s) until every collection has passed `upper`: a query then reads
    /// at `upper - 1` or later.
    async fn wait_visible(&self, upper: Time) {
        self.inner.last_write.fetch_max(upper.saturating_sub(1), Ordering::SeqCst);
        if let Some(time) = upper.checked_sub(1) {
            self.passed(time, "the time of a write").await;
        }
    }

    /// `CREATE MATERIALIZED VIEW name AS sql`: a job of one view.
    ///
    /// # Errors
    /// [`ClusterError::Conflict`] when the name is taken; [`ClusterError::Sql`] when it does
    /// not plan.
    #[tracing::instrument(name = "view create", skip_all, err(Display), fields(view.name = name, job.id = tracing::field::Empty))]
    pub fn create_view(&self, name: &str, sql: &str) -> Result<JobId, ClusterError> {
        let mut seq = lock(&self.inner.seq);
        if seq.catalog.contains_key(name) {
            return Err(ClusterError::Conflict(format!("a relation or view named `{name}` already exists")));
        }
        let views = vec![ViewSpec { name: name.to_owned(), sql: sql.to_owned() }];
        let inputs = Inputs { sources: Vec::new(), retractable: false, access: Default::default() };
        let logged = |id: JobId| LogRecord::CreateView { id: id.0, name: name.to_owned(), sql: sql.to_owned() };
        let (id, stored) = self.install(&mut seq, Some(name.to_owned()), JobKind::View, inputs, views, logged)?;
        drop(seq);
        tracing::Span::current().record("job.id", id.0);
        stored.map(|(log, at)| log.sync_now(at)).transpose()?;
        Ok(id)
    }

    /// `DROP MATERIALIZED VIEW name`: only views created in SQL (a job's views go with the
    /// job). Returns whether a view was dropped (`false` only with `if_exists`).
    ///
    /// # Errors
    /// [`ClusterError::UnknownCollection`]; [`ClusterError::Conflict`] for a built-in relation,
    /// a job's view, or a view another view reads.
    #[tracing::instrument(name = "view drop", skip_all, err(Display), fields(view.name = name))]
    pub async fn drop_view(&self, name: &str, if_exists: bool) -> Result<bool, ClusterError> {
        let id = {
            let seq = lock(&self.inner.seq);
            if crate::introspection::RELATIONS.contains(&name) {
                return Err(ClusterError::Conflict(format!(
                    "`{name}` is an introspection relation of the server; it cannot be dropped"
                )));
            }
            let Some(entry) = seq.catalog.get(name) else {
                return if if_exists { Ok(false) } else { Err(ClusterError::UnknownCollection(name.to_owned())) };
            };
            let Some(owner) = entry.owner else {
                return Err(ClusterError::Conflict(format!("`{name}` is built in; it cannot be dropped")));
            };
            if seq.jobs.get(&owner).is_some_and(|j| j.kind == JobKind::Job) {
                return Err(ClusterError::Conflict(format!(
                    "view `{name}` belongs to job {owner}; cancel the job to drop it"
                )));
            }
            owner
        };
        self.cancel_job(id, false).await.map(|()| true)
    }

    /// Every job (cancelled ones too), by id; SQL views are not jobs and are left out.
    pub fn jobs(&self) -> Vec<JobInfo> {
        self.refresh_failures();
        lock(&self.inner.seq).jobs.values().filter(|j| j.kind == JobKind::Job).cloned().collect()
    }

    /// Every job, SQL views and cancelled ones too, by id, redacted (as `aimatrix_jobs` lists
    /// them).
    pub fn all_jobs(&self) -> Vec<JobInfo> {
        self.refresh_failures();
        lock(&self.inner.seq).jobs.values().cloned().map(JobInfo::redacted).collect()
    }

    /// The subscriptions open (clients' and sinks'), by id, as `aimatrix_subscriptions` lists
    /// them.
    pub fn subscriptions_open(&self) -> Vec<SubscriptionOpen> {
        let open = lock(&self.inner.shared.subscriptions);
        let mut list: Vec<SubscriptionOpen> = open
            .iter()
            .map(|(id, s)| SubscriptionOpen {
                id: *id,
                collection: s.collection.clone(),
                client: s.client,
                as_of: s.as_of,
                progressed: s.emitted,
                queued_rows: s.queue.rows.load(Ordering::Relaxed),
                queued_bytes: s.queue.bytes.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by_key(|s| s.id);
        list
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<JobInfo> {
        self.refresh_failures();
        lock(&self.inner.seq).jobs.get(&id).cloned()
    }

    fn refresh_failures(&self) {
        let failures = std::mem::take(&mut *lock(&self.inner.shared.failures));
        if failures.is_empty() {
            return;
        }
        let mut seq = lock(&self.inner.seq);
        for (id, error) in failures {
            if id == JobId(0) {
                if !seq.instance_errors.contains(&error) {
                    seq.instance_errors.push(error);
                }
                continue;
            }
            if let Some(job) = seq.jobs.get_mut(&id) {
                if !job.errors.contains(&error) {
                    job.errors.push(error);
                }
                if job.state == JobState::Running {
                    job.state = JobState::Failed;
                }
            }
        }
    }

    /// A job with its figures: source counters and view sizes, peeked at one timestamp.
    ///
    /// # Errors
    /// [`ClusterError::UnknownJob`]; [`ClusterError::Stopped`].
    pub async fn job_status(&self, id: JobId) -> Result<JobStatus, ClusterError> {
        let info = self.job(id).ok_or_else(|| ClusterError::UnknownJob(id.to_string()))?;
        let mut names = vec![SOURCE_STATS.to_owned()];
        if info.state != JobState::Cancelled {
            names.extend(info.views.iter().map(|v| v.name.clone()));
        }
        // A following file source never ends: it is caught up when every worker has read it to
        // its current end (asked now, answered within 200 ms or taken as not caught up).
        let following = info.state != JobState::Cancelled && info.sources.iter().any(|s| s.follow);
        let follow_caught_up = following
            && tokio::time::timeout(Duration::from_millis(200), self.catch_up(id)).await.is_ok_and(|r| r.is_ok());
        let hold = self.read_hold(&names);
        let stats = self.peek(SOURCE_STATS, hold.time(), None, Vec::new(), None).await?;
        let mut source_stats = Vec::new();
        let mut files = Vec::new();
        for source in &info.sources {
            let row = stats.iter().find(|(r, _)| r.first() == Some(&Datum::Text(source.name.clone())));
            let figure = |i: usize| match row.and_then(|(r, _)| r.get(i)) {
                Some(Datum::Int(n)) => *n,
                _ => 0,
            };
            let p = (source.kind == SourceKind::File).then(|| {
                let mut p = match self.feed(id, &source.name) {
                    Some(feed) => feed.progress(),
                    None => self.inner.shared.file_progress(id, &source.name),
                };
                p.caught_up = if source.follow { follow_caught_up } else { self.caught_up(id, &source.name) };
                if info.state == JobState::Cancelled {
                    // Its reading stopped where it was: no rate, no time left to count down.
                    (p.rate_bytes_per_s, p.eta_ms) = (None, None);
                }
                p
            });
            files.extend(p);
            source_stats.push(SourceStatus {
                name: source.name.clone(),
                kind: source.kind,
                records: figure(1),
                decoded: figure(2),
                errors: figure(3),
                progress: p,
            });
        }
        let mut view_stats = Vec::new();
        if info.state != JobState::Cancelled {
            for view in &info.views {
                let counts = self.peek(&view.name, hold.time(), Some(Vec::new()), Vec::new(), None).await?;
                let slow = lock(&self.inner.shared.slow_subscribers).get(&view.name).copied().unwrap_or(0);
                view_stats.push(ViewStatus {
                    name: view.name.clone(),
                    rows: counts.iter().map(|(_, c)| *c as i64).sum(),
                    slow_subscribers_closed: slow,
                });
            }
        }
        let backfill = Backfill::of(&files);
        Ok(JobStatus { info, source_stats, view_stats, hydration: backfill.fraction(), backfill })
    }

    /// Whether every worker has read file source `source` of `job` to its end and every
    /// collection has passed the time of its last records.
    fn caught_up(&self, job: JobId, source: &str) -> bool {
        let done = match self.feed(job, source) {
            Some(feed) => feed.done().map(|upper| (self.peers(), upper)),
            None => lock(&self.inner.shared.done).get(&(job, source.to_owned())).copied(),
        };
        let Some((workers, upper)) = done else { return false };
        workers >= self.peers() && lock(&self.inner.shared.uppers).values().all(|u| *u >= upper)
    }

    /// Every collection SQL can read, with its schema, by name.
    pub fn catalog(&self) -> Vec<(String, SchemaRef)> {
        lock(&self.inner.seq).catalog.iter().map(|(n, e)| (n.clone(), e.schema.clone())).collect()
    }

    /// Every collection SQL can read, with its kind and the job that made it, by name.
    pub fn catalog_entries(&self) -> Vec<CatalogEntry> {
        // The built-in views: what `render::relations` lists after the built-in relations,
        // but for the ingestion counters (a relation the engine writes).
        let builtin_views: Vec<&'static str> = amx_dataflows::render::relations()
            .iter()
            .skip(amx_dataflows::render::BUILTIN_RELATIONS)
            .map(|d| d.name)
            .filter(|n| *n != amx_dataflows::render::SOURCE_STATS)
            .collect();
        let mut entries: Vec<CatalogEntry> = lock(&self.inner.seq)
            .catalog
            .iter()
            .map(|(name, e)| CatalogEntry {
                name: name.clone(),
                schema: e.schema.clone(),
                kind: match e.owner {
                    Some(_) if e.relation => CollectionKind::Relation,
                    Some(_) => CollectionKind::View,
                    None if builtin_views.contains(&name.as_str()) => CollectionKind::BuiltinView,
                    None => CollectionKind::Relation,
                },
                owner: e.owner,
            })
            .collect();
        for name in crate::introspection::RELATIONS {
            if let Some(schema) = crate::introspection::schema(name) {
                entries.push(CatalogEntry {
                    name: name.into(),
                    schema,
                    kind: CollectionKind::Introspection,
                    owner: None,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
    }

    /// The schema of one collection.
    pub fn schema(&self, name: &str) -> Option<SchemaRef> {
        lock(&self.inner.seq).catalog.get(name).map(|e| e.schema.clone())
    }

    /// Holds a time that every collection of `names` has passed (as worker 0 last saw),
    /// at or after the compaction frontier; peeks at it see one consistent state.
    pub fn read_hold(&self, names: &[String]) -> ReadHold {
        let mut seq = lock(&self.inner.seq);
        let time = self.read_time(&seq, names);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        seq.holds.insert(id, time);
        let owners = names.iter().filter_map(|n| Some((n.clone(), seq.catalog.get(n)?.owner))).collect();
        ReadHold { id, time, controller: Arc::downgrade(&self.inner), owners }
    }

    /// Whether collection `name` is still the one a read hold was taken on (`owner`, as
    /// [`ReadHold::owner`] gives it): a peek sent after its view was dropped, or dropped and
    /// made again, reads nothing or the new view's first rows, not the held state.
    ///
    /// # Errors
    /// [`ClusterError::Sql`] naming the collection, when it was dropped or replaced since.
    pub(crate) fn still_held(&self, name: &str, owner: Option<Option<JobId>>) -> Result<(), ClusterError> {
        let now = lock(&self.inner.seq).catalog.get(name).map(|e| e.owner);
        match owner {
            Some(held) if now != Some(held) => Err(ClusterError::Sql(format!(
                "`{name}` was dropped or replaced while the query read it; run the query again"
            ))),
            _ => Ok(()),
        }
    }

    /// A time that every collection of `names` has passed (as worker 0 last saw), at or after
    /// the compaction frontier and every acknowledged write.
    fn read_time(&self, seq: &Sequencer, names: &[String]) -> Time {
        let upper = read_upper(&lock(&self.inner.shared.uppers), names);
        // Never before an acknowledged write (ingest, cancel): a client reads what it wrote.
        upper.saturating_sub(1).max(seq.since).max(self.inner.last_write.load(Ordering::SeqCst))
    }

    /// Reads collection `name` as of `as_of` (held by a [`ReadHold`]) from every worker:
    /// its rows that pass `filter` (column position = value, every pair), projected to
    /// `projection` (column positions; `None`: all), with their multiplicities, sorted; with
    /// `limit`, at most that many rows from each worker (which rows is unspecified).
    ///
    /// # Errors
    /// [`ClusterError::UnknownCollection`]; [`ClusterError::Stopped`].
    pub async fn peek(
        &self,
        name: &str,
        as_of: Time,
        projection: Option<Vec<usize>>,
        filter: Vec<(usize, Datum)>,
        limit: Option<usize>,
    ) -> Result<Vec<(Row, Diff)>, ClusterError> {
        let collection = name.to_owned();
        let read = |id| Command::Peek { id, collection, as_of, projection, filter, limit };
        let mut rows = self.read_rows(name, None, read)?.await.map_err(|_| ClusterError::Stopped)?;
        // Sorted across workers, so that an answer does not depend on the cluster's shape.
        rows.sort();
        Ok(rows)
    }

    /// The next part of worker `worker`'s share of collection `name` as of `as_of` (held by a
    /// read hold): its rows after `after`, in the arrangements' order (see
    /// [`Command::PeekPart`]); none once the share is read.
    ///
    /// # Errors
    /// [`ClusterError::UnknownCollection`]; [`ClusterError::Stopped`].
    pub(crate) async fn peek_part(
        &self,
        name: &str,
        as_of: Time,
        worker: usize,
        after: Option<Row>,
    ) -> Result<Vec<(Row, Diff)>, ClusterError> {
        let collection = name.to_owned();
        let read = |id| Command::PeekPart { id, collection, as_of, after };
        self.read_rows(name, Some(worker), read)?.await.map_err(|_| ClusterError::Stopped)
    }

    /// Sends a read of collection `name`'s rows (`read`, given its id) to worker `to` (`None`:
    /// every worker), answered with [`Response::Peek`]s: the receiver gets their rows once
    /// every worker asked has answered.
    ///
    /// # Errors
    /// [`ClusterError::UnknownCollection`]; [`ClusterError::Stopped`].
    fn read_rows(
        &self,
        name: &str,
        to: Option<usize>,
        read: impl FnOnce(u64) -> Command,
    ) -> Result<oneshot::Receiver<Vec<(Row, Diff)>>, ClusterError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let seq = lock(&self.inner.seq);
        if !seq.catalog.contains_key(name) {
            return Err(ClusterError::UnknownCollection(name.to_owned()));
        }
        let remaining = if to.is_some() { 1 } else { self.peers() };
        lock(&self.inner.shared.peeks).insert(id, PeekWait { remaining, rows: Vec::new(), reply: Some(reply) });
        seq.send_to(&read(id), to)?;
        Ok(answer)
    }

    /// Subscribes to a collection: its contents at one time (in parts, read from the workers'
    /// arrangements as the subscriber takes them), then every change, as they happen.
    /// `client` says who subscribes (`http`, `pgwire`, `sink`; `aimatrix_subscriptions.client`).
    ///
    /// # Errors
    /// [`ClusterError::UnknownCollection`]; [`ClusterError::Stopped`].
    pub fn subscribe(&self, name: &str, client: &'static str) -> Result<Subscription, ClusterError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = tokio_mpsc::unbounded_channel();
        if crate::introspection::RELATIONS.contains(&name) {
            return Err(ClusterError::BadRequest(format!(
                "`{name}` is an introspection relation of the server, read from its memory when a query runs: \
                 it has no changes to subscribe to; query it instead"
            )));
        }
        let seq = lock(&self.inner.seq);
        let schema = seq
            .catalog
            .get(name)
            .map(|e| e.schema.clone())
            .ok_or_else(|| ClusterError::UnknownCollection(name.to_owned()))?;
        let queue = Arc::new(SubscriberQueue {
            rows: AtomicU64::new(0),
            max_rows: self.inner.max_queued_rows,
            bytes: AtomicU64::new(0),
            max_bytes: self.inner.max_queued_bytes,
            overflowed: Default::default(),
            notify: tokio::sync::Notify::new(),
        });
        // The snapshot's time: as a query's (see [`Controller::read_hold`]); the workers hold
        // their arrangements readable at it until they have read their share, and no
        // compaction past it is sequenced before this command.
        let as_of = self.read_time(&seq, std::slice::from_ref(&name.to_owned()));
        lock(&self.inner.shared.subscriptions).insert(
            id,
            SubscriptionMerge {
                as_of,
                snapshot_left: self.peers(),
                uppers: vec![0; self.peers()],
                pending: Vec::new(),
                pending_bytes: 0,
                emitted: None,
                events: events_tx,
                queue: queue.clone(),
                collection: name.to_owned(),
                client,
            },
        );
        seq.send(&Command::Subscribe { id, collection: name.to_owned(), as_of })?;
        drop(seq);
        Ok(Subscription { schema, events, queue, id, controller: self.clone() })
    }

    /// Pushes JSON lines into push source `source` of job `job`: each non-blank line is a
    /// record; the body is cut into one run of whole lines per worker, each worker decodes its
    /// run and answers with its rejects (line and reason); returns once every worker has put
    /// its records into its input and every collection has passed their time (read your
    /// writes; at most 10 s), with the time in the report.
    ///
    /// # Errors
    /// [`ClusterError::UnknownJob`]; [`ClusterError::UnknownSource`] when the job has no push
    /// source of that name (or was cancelled); [`ClusterError::Stopped`].
    pub async fn ingest(&self, job: JobId, source: &str, body: &str) -> Result<IngestReport, ClusterError> {
        self.ingest_keyed(job, source, body, None).await
    }

    /// [`Controller::ingest`], applied at most once per `key` (an `Idempotency-Key`): a push
    /// with a key one of the source's recent pushes had (before a restart too, with a data
    /// directory) is not applied again but answered as that one was, once it is. With a data
    /// directory, the answer comes once the push is in the durable log.
    ///
    /// Keys are remembered per source, the last [`IDEMPOTENCY_KEYS`] of them while their
    /// answers take at most [`IDEMPOTENCY_BYTES`].
    ///
    /// # Errors
    /// As [`Controller::ingest`]; [`ClusterError::Conflict`] when `key` was used for a
    /// different body on this source; [`ClusterError::Storage`] when the log cannot take it.
    pub async fn ingest_keyed(
        &self,
        job: JobId,
        source: &str,
        body: &str,
        key: Option<&str>,
    ) -> Result<IngestReport, ClusterError> {
        // Outside the sequencer's lock: a scan of the whole body.
        let (body, oversized) = cut_oversized(body, self.inner.max_record_bytes);
        let answer = self.submit_ingest(job, source, body, oversized, key.map(str::to_owned), Origin::Client)?;
        let answered = Self::answer(answer);
        tokio::pin!(answered);
        // After the first wait, the store's state is looked at every second.
        let mut wait = crate::storage::SYNC_TIMEOUT;
        loop {
            tokio::select! {
                result = &mut answered => return result,
                () = tokio::time::sleep(wait) => {
                    wait = Duration::from_secs(1);
                    // Still waiting: while the store fails, the client learns it (the push
                    // may yet be stored, and a retry with its key is answered as it is).
                    let log = lock(&self.inner.seq).log.clone();
                    if let Some(why) = log.as_ref().and_then(|l| l.failing()) {
                        return Err(ClusterError::Storage(format!(
                            "not acknowledged: the log's store is failing ({why}); the push is applied and acknowledged \
                             once the store takes it: send it again with the same Idempotency-Key to learn its outcome"
                        )));
                    }
                }
            }
        }
    }

    /// Waits for a push's answer.
    pub(crate) async fn answer(mut answer: IngestAnswer) -> Result<IngestReport, ClusterError> {
        match answer.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or(Err(ClusterError::Stopped)),
            Err(_) => Err(ClusterError::Stopped),
        }
    }

    /// Logs (with a data directory) and sends a push; the answer comes once every worker has
    /// it, it is durable and (a client's push) every collection has passed its time.
    fn submit_ingest(
        &self,
        job: JobId,
        source: &str,
        body: String,
        oversized: BTreeMap<u64, u64>,
        key: Option<String>,
        origin: Origin,
    ) -> Result<IngestAnswer, ClusterError> {
        let (visible, logged_at) = match origin {
            Origin::Client => (true, None),
            Origin::Replay(at) => (false, at),
        };
        let mut seq = lock(&self.inner.seq);
        let info = seq.jobs.get(&job).ok_or_else(|| ClusterError::UnknownJob(job.to_string()))?;
        let window = (job, source.to_owned());
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (&body, &oversized).hash(&mut hasher);
            hasher.finish()
        };
        if let Some(key) = &key
            && let Some((first, answer)) = seq.keys.get(&window).and_then(|w| w.answers.get(key))
        {
            if *first != hash {
                return Err(ClusterError::Conflict(format!(
                    "Idempotency-Key `{key}` was already used for a different body on source `{source}`; nothing \
                     was ingested (use a new key for new records)"
                )));
            }
            // A retry: answered as the first push with this key was (also once the job is
            // cancelled).
            return Ok(answer.clone());
        }
        if let Some(s) = info.sources.iter().find(|s| s.name == source && seq.reads(s)) {
            return Err(ClusterError::Conflict(format!(
                "source `{}` of job {job} reads {}, and takes no pushes",
                s.name,
                match s.kind {
                    SourceKind::Kafka => "a Kafka topic",
                    SourceKind::File => "files",
                    _ => "an object store",
                }
            )));
        }
        if seq.push.get(source) != Some(&job) {
            let known: Vec<&str> =
                info.sources.iter().filter(|s| s.kind == SourceKind::Push).map(|s| s.name.as_str()).collect();
            if info.state == JobState::Cancelled {
                return Err(ClusterError::Conflict(format!("job {job} is cancelled")));
            }
            return Err(ClusterError::UnknownSource(format!(
                "job {job} has no push source named `{source}` (its push sources: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )));
        }
        // Logged before it is sent, with its timestamp: what the workers apply is in the log.
        let at = seq.next_timestamp(logged_at);
        let record = LogRecord::Ingest {
            job: job.0,
            source: source.to_owned(),
            key: key.clone(),
            body,
            oversized: oversized.clone(),
            at: Some(at),
        };
        let (stored, LogRecord::Ingest { body, .. }) = seq.log_and_return(record)? else {
            unreachable!("the record handed back is the one logged")
        };
        // One worker decodes the whole push, chosen by a hash of the source and the push, so
        // that concurrent pushes spread over the workers and no body is copied to all of them.
        // Every worker decodes a part of the push (whole lines, in order), and only its part
        // is copied to it.
        let (id, applied) = self.wait_for(self.peers());
        let parts = split_lines(&body, self.peers())
            .into_iter()
            .map(|(first_line, part)| {
                let oversized: BTreeMap<u64, u64> = oversized
                    .range(first_line..first_line + part.lines().count() as u64)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                let source = source.to_owned();
                move |at| Command::Ingest { id, source, body: part, oversized, at, first_line }
            })
            .collect();
        seq.send_parts(at, parts)?;
        let (reply, answer) = tokio::sync::watch::channel(None);
        if let Some(key) = &key {
            let keys = seq.keys.entry(window.clone()).or_default();
            keys.order.push_back(key.clone());
            keys.answers.insert(key.clone(), (hash, answer.clone()));
            keys.forget_oldest();
        }
        let remembered = key;
        drop(seq);
        // The rest runs in a task of its own: a client that goes away does not leave a key
        // without its answer.
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.settle(applied, stored, visible).await;
            // The answer's size counts against its source's window from now on (under the
            // lock, with the answer, so that a key forgotten meanwhile is counted out too).
            let mut seq = lock(&this.inner.seq);
            if let (Some(key), Ok(report)) = (remembered, &result)
                && let Some(keys) = seq.keys.get_mut(&window)
                && keys.answers.contains_key(&key)
            {
                keys.bytes += report.bytes();
                let _ = reply.send(Some(result));
                keys.forget_oldest();
            } else {
                let _ = reply.send(Some(result));
            }
        });
        Ok(answer)
    }

    /// A batch's answer once its worker has applied it and it is durable (and, with `visible`,
    /// every collection has passed its time).
    async fn settle(
        &self,
        applied: oneshot::Receiver<Applied>,
        stored: Stored,
        visible: bool,
    ) -> Result<IngestReport, ClusterError> {
        let applied = applied.await.map_err(|_| ClusterError::Stopped)?;
        if let Some((log, at)) = stored {
            log.sync(at).await?;
        }
        if visible {
            // Read your writes: once every collection has passed the records' time, a query
            // (which reads at a time all its collections have passed) sees them.
            self.wait_visible(applied.upper).await;
        }
        Ok(IngestReport {
            accepted: applied.accepted,
            rejected: applied.rejected,
            error_rows: applied.error_rows,
            errors: applied.errors.into_iter().map(|(line, error)| IngestReject { line, error }).collect(),
            timestamp: applied.upper.saturating_sub(1),
        })
    }

    /// Logs (with a data directory) and sends a batch a source the server reads (Kafka, object
    /// store) read, with the source's position after it; the answer comes once its worker has
    /// applied it and it is durable. The positions are where the source resumes after a
    /// restart.
    ///
    /// # Errors
    /// [`ClusterError::UnknownSource`] when the job no longer has the source (cancelled);
    /// [`ClusterError::Storage`] when the log refuses it now (retry it);
    /// [`ClusterError::Stopped`].
    pub(crate) fn submit_records(
        &self,
        job: JobId,
        source: &str,
        records: Vec<amx_connectors::Record>,
        position: crate::sources::SourcePosition,
        logged_at: Option<Time>,
    ) -> Result<IngestAnswer, ClusterError> {
        let mut seq = lock(&self.inner.seq);
        if seq.push.get(source) != Some(&job) {
            return Err(ClusterError::UnknownSource(format!("job {job} has no running source `{source}`")));
        }
        let at = seq.next_timestamp(logged_at);
        let record =
            LogRecord::IngestRecords { job: job.0, source: source.to_owned(), records, position, at: Some(at) };
        let (stored, LogRecord::IngestRecords { records, position, .. }) = seq.log_and_return(record)? else {
            unreachable!("the record handed back is the one logged")
        };
        seq.positions.entry((job, source.to_owned())).or_default().advance(&position);
        let peers = self.peers();
        let (id, applied) = self.wait_for(peers);
        let size = records.len().div_ceil(peers).max(1);
        let mut records = records.into_iter();
        let parts = (0..peers)
            .map(|w| {
                let part: Vec<_> = records.by_ref().take(size).collect();
                let source = source.to_owned();
                let first = (w * size) as u64 + 1;
                move |at| Command::IngestRecords { id, source, records: part, at, first }
            })
            .collect();
        seq.send_parts(at, parts)?;
        drop(seq);
        let (reply, answer) = tokio::sync::watch::channel(None);
        let this = self.clone();
        tokio::spawn(async move {
            let _ = reply.send(Some(this.settle(applied, stored, false).await));
        });
        Ok(answer)
    }

    /// The current problem of a source the server reads or of a sink (`what`: ``source `NAME` ``
    /// or ``sink `NAME` ``): an unreachable broker or bucket, a missing topic. It replaces the
    /// last one in its job's errors, and `None` (working again) removes it; the job keeps
    /// running, and the source or sink retries.
    pub(crate) fn report_problem(&self, job: JobId, what: &str, problem: Option<&str>) {
        if let Some(info) = lock(&self.inner.seq).jobs.get_mut(&job) {
            let prefix = format!("{what}: ");
            info.errors.retain(|e| !e.starts_with(&prefix));
            if let Some(problem) = problem {
                info.errors.push(format!("{prefix}{problem}"));
            }
        }
    }

    /// Installs a logged job or view again as job `id` (`install` installs it, taking the next
    /// job id), off the runtime's threads: planning runs a runtime of its own.
    async fn replay_install(
        &self,
        id: u64,
        install: impl FnOnce(&Controller) -> Result<JobId, ClusterError> + Send + 'static,
    ) -> Result<(), ClusterError> {
        lock(&self.inner.seq).next_job = id;
        let this = self.clone();
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| install(&this)))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        let mut seq = lock(&self.inner.seq);
        seq.next_job = seq.next_job.max(id + 1);
        result.map(|_| ())
    }

    /// Applies a logged catalog change again: a job or view installed with its id, a job
    /// cancelled.
    async fn replay_catalog(
        &self,
        record: LogRecord,
        access: &amx_connectors::FileAccess,
        recovered: &mut Recovered,
    ) -> Result<(), ClusterError> {
        match record {
            LogRecord::InstallJob { id, job } => {
                recovered.jobs += 1;
                let job = Job { config: job, access: access.clone() };
                self.replay_install(id, move |this| this.install_job(&job)).await
            }
            LogRecord::CreateView { id, name, sql } => {
                recovered.jobs += 1;
                self.replay_install(id, move |this| this.create_view(&name, &sql)).await
            }
            LogRecord::CancelJob { id, retract } => {
                recovered.cancels += 1;
                self.cancel_job(JobId(id), retract).await
            }
            _ => Ok(()),
        }
    }

    /// Replays a data directory's log (see [`crate::storage`]): re-installs its jobs and views
    /// with their ids, applies its pushes, batches (with their `Idempotency-Key`s, and the
    /// positions of the sources the server reads) and cancellations, in their order; then the
    /// sources the server reads (file sources too) go on at their positions. Every later change is
    /// logged. `access` is what file sources may read (the server's `files.roots` now).
    /// Returns what was replayed.
    ///
    /// # Errors
    /// [`ClusterError::Storage`] when a logged change no longer applies (a job whose file
    /// source is now outside `files.roots`, or whose files are gone): the server must not
    /// start without it; [`ClusterError::Stopped`].
    #[tracing::instrument(name = "recover", skip_all, err(Display), fields(log = %log.location()))]
    pub async fn recover(
        &self,
        log: Arc<DurableLog>,
        mut records: crate::storage::LogRecords,
        access: amx_connectors::FileAccess,
    ) -> Result<Recovered, ClusterError> {
        let mut recovered = Recovered::default();
        let mut upper = 0;
        lock(&self.inner.seq).replaying = true;
        // A compacted log: its snapshot first, then the records after its cut.
        if let Some(snapshot) = records.take_snapshot() {
            let restored = self.restore(&snapshot, &access, &mut recovered).await?;
            upper = lock(&self.inner.seq).last_timestamp + 1;
            recovered.snapshot = Some(restored);
        }
        // Pushes are sent without waiting for each answer (the workers apply commands in
        // their order anyway); at most this many answers are outstanding.
        let mut outstanding: std::collections::VecDeque<(IngestAnswer, usize, usize)> =
            std::collections::VecDeque::new();
        let (mut outstanding_bytes, mut outstanding_records) = (0, 0);
        // Records sent and not yet known processed (once more are, the oldest is awaited until
        // every collection has passed its time), unless a collection does not move on.
        let mut ahead_records = self.restart_rows_ahead();
        for (index, record) in records.enumerate() {
            // A record that does not read (a bug, or another version): the start is refused.
            let record = record.map_err(|e| ClusterError::Storage(e.to_string()))?;
            let what = match &record {
                LogRecord::InstallJob { id, .. } => format!("job {id} submitted"),
                LogRecord::CreateView { id, name, .. } => format!("view `{name}` created as job {id}"),
                LogRecord::CancelJob { id, .. } => format!("job {id} cancelled"),
                LogRecord::Ingest { job, source, .. } => format!("a push to job {job}'s source `{source}`"),
                LogRecord::IngestRecords { job, source, .. } => format!("a batch of job {job}'s source `{source}`"),
                LogRecord::Compacted { generation } => format!("the mark of snapshot {generation}"),
            };
            let done = match record {
                record
                @ (LogRecord::InstallJob { .. } | LogRecord::CreateView { .. } | LogRecord::CancelJob { .. }) => {
                    self.replay_catalog(record, &access, &mut recovered).await
                }
                // (Only at a rewritten log's start, where the records begin after it.)
                LogRecord::Compacted { .. } => Ok(()),
                LogRecord::Ingest { job, source, key, body, oversized, at } => {
                    recovered.pushes += 1;
                    let bytes = body.len();
                    let lines = memchr::memchr_iter(b'\n', body.as_bytes()).count() + 1;
                    let submitted = self.submit_ingest(JobId(job), &source, body, oversized, key, Origin::Replay(at));
                    submitted.map(|answer| {
                        (outstanding_bytes, outstanding_records) =
                            (outstanding_bytes + bytes, outstanding_records + lines);
                        outstanding.push_back((answer, bytes, lines));
                    })
                }
                LogRecord::IngestRecords { job, source, records, position, at } => {
                    recovered.pushes += 1;
                    let bytes = records.iter().map(|r| r.text.len() + r.location.len()).sum();
                    let count = records.len();
                    let submitted = self.submit_records(JobId(job), &source, records, position, at);
                    submitted.map(|answer| {
                        (outstanding_bytes, outstanding_records) =
                            (outstanding_bytes + bytes, outstanding_records + count);
                        outstanding.push_back((answer, bytes, count));
                    })
                }
            };
            loop {
                let too_many = outstanding_records > ahead_records;
                if !(too_many || outstanding.len() > REPLAY_WINDOW || outstanding_bytes > REPLAY_WINDOW_BYTES) {
                    break;
                }
                let Some((answer, bytes, count)) = outstanding.pop_front() else { break };
                (outstanding_bytes, outstanding_records) = (outstanding_bytes - bytes, outstanding_records - count);
                let at = Self::answer(answer).await?.timestamp;
                upper = upper.max(at + 1);
                if too_many && !self.wait_passed(at).await {
                    ahead_records = usize::MAX;
                }
            }
            if let Err(e) = done {
                if matches!(e, ClusterError::Stopped) {
                    return Err(e);
                }
                // Skipping it could drop acknowledged pushes, or give its names and ids to
                // others: the start is refused instead.
                return Err(ClusterError::Storage(format!(
                    "{}: change {} of the log ({what}) no longer applies: {e}. Start with what it needs (the same \
                     --file-root, its files), or move the data directory aside to start empty",
                    log.location(),
                    index + 1,
                )));
            }
        }
        for (answer, ..) in outstanding {
            upper = upper.max(Self::answer(answer).await?.timestamp + 1);
        }
        // A timestamp closed now, at the wall clock (the times the server read at before it
        // stopped were, and were not logged), and every query after waits for it: the first
        // reads every restored row, and no read goes back in time.
        let closed = {
            let mut seq = lock(&self.inner.seq);
            seq.close_timestamp()?;
            seq.closed
        };
        self.wait_visible(upper.max(closed)).await;
        let mut seq = lock(&self.inner.seq);
        seq.log = Some(log);
        // The sources the server reads resume where the log's last batches leave them.
        seq.replaying = false;
        let running: Vec<JobId> = seq.jobs.values().filter(|j| j.state != JobState::Cancelled).map(|j| j.id).collect();
        for id in running {
            self.start_server_sources(&mut seq, id);
            self.start_sinks(&mut seq, id);
        }
        drop(seq);
        Ok(recovered)
    }

    /// Ends the following file sources of `job`: each reads what its files hold now and is
    /// then done (see [`Command::EndOfInput`]); [`Controller::files_caught_up`] tells when.
    ///
    /// # Errors
    /// [`ClusterError::UnknownJob`]; [`ClusterError::Stopped`].
    pub fn end_of_input(&self, job: JobId) -> Result<(), ClusterError> {
        let seq = lock(&self.inner.seq);
        if !seq.jobs.contains_key(&job) {
            return Err(ClusterError::UnknownJob(job.to_string()));
        }
        for ((_, _), feed) in lock(&self.inner.feeds).iter().filter(|((j, _), _)| *j == job) {
            feed.end_input();
        }
        seq.send(&Command::EndOfInput { job })
    }

    /// Whether every worker has read every file source of `job` to its end and every
    /// collection has passed the time of their last records: queries see all of them (true
    /// for a job without file sources; never for a following source before
    /// [`Controller::end_of_input`]).
    pub fn files_caught_up(&self, job: JobId) -> bool {
        let Some(info) = self.job(job) else { return false };
        info.sources.iter().filter(|s| s.kind == SourceKind::File).all(|s| self.caught_up(job, &s.name))
    }

    /// Catches up with the file sources of `job`: returns once every worker has read each
    /// of them to its current end after the request (what was appended before the call is
    /// included) and every collection has passed the time of what they read (at most 10 s
    /// after the workers answer), with that time. Following sources can be caught up with
    /// again and again; data that keeps coming delays the answer.
    ///
    /// # Errors
    /// [`ClusterError::UnknownJob`]; [`ClusterError::Stopped`].
    pub async fn catch_up(&self, job: JobId) -> Result<Time, ClusterError> {
        let (applied, feeds) = {
            let seq = lock(&self.inner.seq);
            if !seq.jobs.contains_key(&job) {
                return Err(ClusterError::UnknownJob(job.to_string()));
            }
            let (wait, applied) = self.wait_for_workers();
            seq.send(&Command::CatchUp { job, wait })?;
            // The file sources the server reads: each is asked, and answers once it has found
            // its files at their end after the request, with what it read before applied.
            let feeds: Vec<_> = lock(&self.inner.feeds)
                .iter()
                .filter(|((j, _), _)| *j == job)
                .map(|(_, feed)| (feed.request_catch_up(), feed.clone()))
                .collect();
            (applied, feeds)
        };
        let mut upper = applied.await.map_err(|_| ClusterError::Stopped)?.upper;
        for (request, feed) in feeds {
            loop {
                if let Some(reached) = feed.reached(request) {
                    upper = upper.max(reached);
                    break;
                }
                if self.inner.seq.is_poisoned() {
                    return Err(ClusterError::Stopped);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.wait_visible(upper).await;
        Ok(upper)
    }

    /// How far the workers (or the server) have read each file source of `job`, in the job's
    /// order.
    pub fn file_progress(&self, job: JobId) -> Vec<(String, SourceProgress)> {
        let Some(info) = self.job(job) else { return Vec::new() };
        info.sources
            .iter()
            .filter(|s| s.kind == SourceKind::File)
            .map(|s| {
                let p = match self.feed(job, &s.name) {
                    Some(feed) => feed.progress(),
                    None => self.inner.shared.file_progress(job, &s.name),
                };
                (s.name.clone(), p)
            })
            .collect()
    }

    /// What failed in the views maintained with the agent state ([`ClusterConfig::views`]).
    pub fn instance_errors(&self) -> Vec<String> {
        self.refresh_failures();
        lock(&self.inner.seq).instance_errors.clone()
    }

    /// Every collection's frontier, as worker 0 last published it: the collection is complete
    /// (every worker's share of every change) before that time (ms since the Unix epoch;
    /// `Time::MAX` for a collection that can no longer change).
    pub fn collection_uppers(&self) -> Vec<(String, Time)> {
        let uppers = lock(&self.inner.shared.uppers);
        let mut uppers: Vec<(String, Time)> = uppers.iter().map(|(n, t)| (n.clone(), *t)).collect();
        uppers.sort();
        uppers
    }

    /// Each worker's operators and arrangements, as it last reported them (about once a
    /// second; a worker that has not reported yet is missing), by worker index.
    pub fn worker_reports(&self) -> BTreeMap<usize, crate::protocol::WorkerReport> {
        lock(&self.inner.shared.reports).clone()
    }

    /// Whether every collection has passed time 0 (the workers are up and stepping).
    pub fn ready(&self) -> bool {
        let uppers = lock(&self.inner.shared.uppers);
        !uppers.is_empty() && uppers.values().all(|u| *u > 0)
    }
}

/// Closes a timestamp within `interval` of a worker's [`Response::AwaitingTimestamp`], and
/// every [`IDLE_TIMESTAMP_INTERVAL`] in any case (none while a log is replayed). Ends when
/// the controller is dropped.
fn timestamp_loop(inner: Weak<Inner>, interval: Duration) {
    let mut last = std::time::Instant::now();
    loop {
        std::thread::sleep(interval);
        let Some(inner) = inner.upgrade() else { return };
        if !inner.shared.awaiting.load(Ordering::SeqCst) && last.elapsed() < IDLE_TIMESTAMP_INTERVAL {
            continue;
        }
        let mut seq = lock(&inner.seq);
        if seq.replaying {
            continue;
        }
        inner.shared.awaiting.store(false, Ordering::SeqCst);
        if seq.close_timestamp().is_err() {
            return;
        }
        last = std::time::Instant::now();
    }
}

/// Once a second, allows compaction up to what every collection has passed and no read hold
/// still reads. Ends when the controller is dropped.
fn compaction_loop(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(inner) = inner.upgrade() else { return };
        let mut seq = lock(&inner.seq);
        let passed = lock(&inner.shared.uppers).values().copied().min().unwrap_or(0).saturating_sub(1);
        let held = seq.holds.values().copied().min().unwrap_or(Time::MAX);
        let since = passed.min(held);
        if since > seq.since {
            seq.since = since;
            if seq.send(&Command::AllowCompaction { since }).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file source's progress is every worker's share summed, done once every worker has
    /// said so, and kept apart per job: a cancelled job's source name taken again by another
    /// job does not lend it the old figures.
    #[test]
    fn file_progress_sums_every_workers_share_of_its_own_job() {
        let (_tx, rx) = mpsc::channel();
        let shared = Shared::new(rx, 3);
        let share = |bytes: u64, records: u64, done: bool| SourceProgress {
            bytes_read: bytes,
            bytes_total: 900,
            records_read: records,
            done,
            ..SourceProgress::default()
        };
        let report = |worker: usize, job: u64, p: SourceProgress| {
            shared.deliver_response(Response::Progress { worker, sources: vec![(JobId(job), "s".into(), p)] });
        };
        for worker in 0..3 {
            report(worker, 1, share(300, 10, true));
        }
        let old = shared.file_progress(JobId(1), "s");
        assert_eq!((old.bytes_read, old.records_read, old.done), (900, 30, true));
        // Job 2 reuses the name: nothing read yet, then two of three workers done.
        assert_eq!(shared.file_progress(JobId(2), "s"), SourceProgress::default());
        report(0, 2, share(100, 4, true));
        report(2, 2, share(250, 7, true));
        let partial = shared.file_progress(JobId(2), "s");
        assert_eq!((partial.bytes_read, partial.records_read, partial.done), (350, 11, false));
        report(1, 2, share(550, 19, true));
        let whole = shared.file_progress(JobId(2), "s");
        assert_eq!((whole.bytes_read, whole.bytes_total, whole.records_read, whole.done), (900, 900, 30, true));
    }

    /// Rates and times left, by hand: a source resumed at byte 500 that read to byte 2,000 in
    /// 2 s reads 750 B/s, and its 3,500 bytes left take 4,666.7 ms (4,667, rounded up); a job
    /// sums its sources' rates and waits for the slowest.
    #[test]
    fn backfill_rates_and_times_left() {
        let progress = |read: u64, total: u64, done: bool| SourceProgress {
            bytes_read: read,
            bytes_total: total,
            done,
            records_read: read / 100,
            ..SourceProgress::default()
        };
        let a = progress(2_000, 5_500, false).with_rate_over(Duration::from_secs(2), 500);
        assert_eq!((a.rate_bytes_per_s, a.eta_ms), (Some(750), Some(4_667)));
        // Too soon for a rate: no time left is known.
        let early = progress(100, 5_500, false).with_rate_over(Duration::from_millis(100), 0);
        assert_eq!((early.rate_bytes_per_s, early.eta_ms), (None, None));
        // Read to its end: nothing is being read.
        let done = progress(4_000, 4_000, true).with_rate_over(Duration::from_secs(8), 0);
        assert_eq!((done.rate_bytes_per_s, done.eta_ms), (None, Some(0)));
        // 1,000 B/s with 9,000 bytes left: 9 s.
        let b = progress(1_000, 10_000, false).with_rate_over(Duration::from_secs(1), 0);
        let job = Backfill::of([&a, &b, &done]);
        assert_eq!(
            job,
            Backfill {
                records_read: 20 + 10 + 40,
                bytes_read: 7_000,
                bytes_total: 19_500,
                rate_bytes_per_s: Some(1_750),
                eta_ms: Some(9_000),
            }
        );
        assert!((job.fraction() - 7_000.0 / 19_500.0).abs() < 1e-12);
        assert_eq!(Backfill::of([&a, &early]).eta_ms, None, "one source's time left unknown: the job's too");
        assert_eq!(Backfill::of([]), Backfill { eta_ms: Some(0), ..Backfill::default() });
        assert_eq!(Backfill::of([]).fraction(), 1.0);
    }

    /// A constant view's empty frontier (`Time::MAX`) never lifts a read of collections still
    /// in progress (a read at `Time::MAX - 1` waited forever: seen once in a dozen runs of
    /// `file_sources_read_only_under_the_configured_roots`, whose views are `SELECT 1`).
    #[test]
    fn a_complete_collection_does_not_lift_the_read_time() {
        let uppers = |pairs: &[(&str, Time)]| -> HashMap<String, Time> {
            pairs.iter().map(|(n, u)| (n.to_string(), *u)).collect()
        };
        let names = |n: &[&str]| -> Vec<String> { n.iter().map(|s| s.to_string()).collect() };
        let started = uppers(&[("knowledge_events", 0), ("constant", Time::MAX), ("documents", 500)]);
        assert_eq!(read_upper(&started, &names(&["knowledge_events"])), 500);
        assert_eq!(read_upper(&started, &[]), 500);
        let only = uppers(&[("knowledge_events", 0), ("constant", Time::MAX)]);
        assert_eq!(read_upper(&only, &names(&["knowledge_events"])), 0);
        let running = uppers(&[("knowledge_events", 600), ("constant", Time::MAX)]);
        assert_eq!(read_upper(&running, &names(&["knowledge_events", "constant"])), 600);
        assert_eq!(read_upper(&running, &names(&["constant"])), Time::MAX);
    }

    /// The exertion logic continues merges in progress and merges batches within the factor of
    /// the largest layer, and leaves small batches far below it alone. Layers are given largest
    /// first, as `(index, count, length)`.
    #[test]
    fn idle_merging_is_proportional_to_the_largest_batch() {
        let logic = exert_logic(16);
        // A merge in progress: continued.
        assert_eq!(logic(&[(20, 2, 1 << 20), (3, 1, 8)]), Some(1 << 20));
        // One batch alone: nothing to do.
        assert_eq!(logic(&[(20, 1, 1 << 20), (19, 0, 0)]), None);
        // A batch one layer below the largest: merged down.
        assert_eq!(logic(&[(20, 1, 1 << 20), (19, 1, 1 << 19)]), Some(1 << 19));
        // Four layers below (16× smaller): still within 16; five below: left for later.
        assert_eq!(logic(&[(20, 1, 1 << 20), (19, 0, 0), (18, 0, 0), (17, 0, 0), (16, 1, 1 << 16)]), Some(1 << 16));
        assert_eq!(logic(&[(20, 1, 1 << 20), (19, 0, 0), (18, 0, 0), (17, 0, 0), (16, 0, 0), (15, 1, 1 << 15)]), None);
        // Empty layers above the largest occupied one are skipped.
        assert_eq!(logic(&[(21, 0, 0), (20, 1, 1 << 20), (19, 1, 100)]), Some(100));
    }

    /// Every line in exactly one part, in order, numbered as in the whole body.
    #[test]
    fn a_push_is_split_into_runs_of_whole_lines() {
        for body in ["", "a", "a\n", "a\nb", "a\r\nb\r\n", "a\n\nb\nc\n\n", "1\n2\n3\n4\n5\n6\n7"] {
            let whole: Vec<(u64, &str)> = body.lines().enumerate().map(|(i, l)| (i as u64 + 1, l)).collect();
            for parts in 1..5 {
                let split = split_lines(body, parts);
                assert_eq!(split.len(), parts, "{body:?} in {parts}");
                assert_eq!(split.iter().map(|(_, p)| p.as_str()).collect::<String>(), body, "{body:?} in {parts}");
                let numbered: Vec<(u64, &str)> = split
                    .iter()
                    .flat_map(|(first, part)| part.lines().enumerate().map(move |(i, l)| (first + i as u64, l)))
                    .collect();
                assert_eq!(numbered, whole, "{body:?} in {parts}");
            }
        }
    }

    /// An answered push whose one reject has a message of `bytes` bytes.
    fn answered(bytes: usize) -> (IngestAnswer, u64) {
        let report = IngestReport {
            accepted: 0,
            rejected: 1,
            error_rows: 1,
            errors: vec![IngestReject { line: 1, error: "x".repeat(bytes) }],
            timestamp: 1,
        };
        let size = report.bytes();
        let (reply, answer) = tokio::sync::watch::channel(None);
        reply.send(Some(Ok(report))).expect("sent");
        (answer, size)
    }

    /// Past [`IDEMPOTENCY_BYTES`] the oldest keys are forgotten first, and the byte count
    /// follows; the newest key is kept however large its answer.
    #[test]
    fn key_windows_forget_the_oldest_past_their_bytes() {
        let mut window = KeyWindow::default();
        let mut sizes = Vec::new();
        for (key, bytes) in [("a", 6 << 20), ("b", 6 << 20), ("c", 6 << 20), ("d", 20 << 20)] {
            let (answer, size) = answered(bytes);
            window.order.push_back(key.to_owned());
            window.answers.insert(key.to_owned(), (0, answer));
            window.bytes += size;
            sizes.push(size);
            window.forget_oldest();
            if key == "c" {
                // 18 MiB and more: `a` goes.
                assert_eq!(window.order, ["b", "c"]);
                assert_eq!(window.bytes, sizes[1] + sizes[2]);
            }
        }
        assert_eq!(window.order, ["d"]);
        assert_eq!(window.bytes, sizes[3]);
        assert_eq!(window.answers.len(), 1);
    }
}
