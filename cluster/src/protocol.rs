//! The compute protocol: what the controller tells every worker, and what workers answer.
//!
//! Commands enter at process 0 and are sequenced by worker 0, which gives command `n` the
//! timestamp `n` in a timely dataflow that broadcasts it to every worker of every process (or
//! routes it to the one worker it is for: a part of a push, a subscription's credit); a worker applies
//! the commands whose timestamps the dataflow's frontier has passed, in timestamp order. So every worker builds the same dataflows, in the same order, from the same
//! bytes (a command travels as its JSON text, with a push's or batch's records beside it:
//! [`Wire`]), as Materialize's compute protocol does
//! (`src/compute/src/command_channel.rs`). Responses go the other way: every worker sends its
//! share to worker 0 through a second stream of the same dataflow, and worker 0 hands them to
//! the controller.

use amx_dataflows::row::Row;
use amx_dataflows::{Diff, Time};
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::SourceConfig;

/// A command on its way to worker 0: its encoded form, and the one worker it is for (`None`:
/// every worker).
pub type Envelope = (Wire, Option<usize>);

/// The controller's end of the link with the workers of process 0, the only thing a worker
/// knows of the controller: where commands come from, and where every worker's responses
/// (which worker 0 gathers) and worker 0's reports of frontiers go.
/// `None` for a worker of a process other than 0, and for a local run without a controller.
pub trait ControllerLink: Send + Sync {
    /// The commands, in the order the controller sent them: taken once, by worker 0, which is
    /// then woken when one arrives (it parks when idle); `None` when taken before.
    fn take_command_receiver(&self) -> Option<std::sync::mpsc::Receiver<Envelope>>;
    /// Every collection's frontier (ms since the Unix epoch), by name, as worker 0 last saw
    /// them.
    fn publish(&self, uppers: std::collections::HashMap<String, Time>);
    /// A response from any worker.
    fn deliver(&self, response: Response);
}

/// How far a file source has been read: by the server, when it reads the source (with a data
/// directory), else by the workers, each reading its pieces of the files (the figures of every
/// worker of every process, summed: each reports its own, [`Response::Progress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceProgress {
    /// Bytes read; a file read again from its start (truncated or replaced) counts again.
    pub bytes_read: u64,
    /// Bytes the source's files hold now.
    pub bytes_total: u64,
    /// Read to its end (by every worker, or by the server when it reads the source).
    pub done: bool,
    /// Every worker read it to the end (a following source: to its current end), and every
    /// collection has passed the time of its last records: queries see all of it.
    pub caught_up: bool,
    /// Records (lines, rows) read by the same readers as `bytes_read`, since this process began
    /// reading the source (a source resumed after a restart counts from its position).
    pub records_read: u64,
    /// The backfill rate (bytes/s): bytes read since this process began reading the source,
    /// over the seconds since (`None` in its first 200 ms, when the average means nothing,
    /// once it is done, and for a cancelled job's source: nothing is being read).
    pub rate_bytes_per_s: Option<u64>,
    /// The estimated time left to read to the end (ms): the bytes left at `rate_bytes_per_s`;
    /// 0 once done, `None` while no rate is known (or nothing is being read).
    pub eta_ms: Option<u64>,
}

impl SourceProgress {
    /// Sets `rate_bytes_per_s` and `eta_ms` from where the reader began in this process:
    /// `started`, when `bytes_read` was `bytes_at_start` (a resumed source's position).
    pub(crate) fn with_rate(self, started: std::time::Instant, bytes_at_start: u64) -> Self {
        self.with_rate_over(started.elapsed(), bytes_at_start)
    }

    /// [`SourceProgress::with_rate`], `elapsed` after the reader began.
    pub(crate) fn with_rate_over(mut self, elapsed: Duration, bytes_at_start: u64) -> Self {
        let elapsed = elapsed.as_secs_f64();
        self.rate_bytes_per_s = (elapsed >= 0.2 && !self.done)
            .then(|| (self.bytes_read.saturating_sub(bytes_at_start) as f64 / elapsed) as u64);
        self.with_eta()
    }

    /// Sets `eta_ms` from `rate_bytes_per_s`: the bytes left at that rate (0 once done).
    pub(crate) fn with_eta(mut self) -> Self {
        let left = self.bytes_total.saturating_sub(self.bytes_read);
        self.eta_ms = if self.done || left == 0 {
            Some(0)
        } else {
            self.rate_bytes_per_s.filter(|r| *r > 0).map(|r| (left as f64 / r as f64 * 1000.0).ceil() as u64)
        };
        self
    }
}

/// Bytes a row takes in memory, estimated: 48 for the row and its time and diff, 24 per
/// datum, and the bytes of its text.
pub(crate) fn row_bytes(row: &Row) -> u64 {
    let datum = |d: &amx_dataflows::row::Datum| match d {
        amx_dataflows::row::Datum::Text(t) => 24 + t.len() as u64,
        _ => 24,
    };
    48 + row.iter().map(datum).sum::<u64>()
}

/// A job's identifier: assigned by the controller, starting at 1, never reused while the
/// server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A materialized view to maintain: its name and its `SELECT`. Every worker plans it from
/// this text against the same catalog (the commands before it), so all plan it alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewSpec {
    /// The view's name as SQL resolves it (unquoted names in lower case).
    pub name: String,
    /// The `SELECT …` it maintains.
    pub sql: String,
}

/// This build of the cluster's protocol: the package's version and the version of the
/// commands' wire form. Sent with [`Command::CreateInstance`]; see [`check_build`].
pub const BUILD: &str = concat!("aimatrix ", env!("CARGO_PKG_VERSION"), ", protocol ", "2");

/// Whether a worker of this build may apply the commands of a controller of build `theirs`.
///
/// # Errors
/// The two builds differ: the message names both (the process must stop, as Materialize's
/// replicas halt on a protocol mismatch, rather than apply commands it reads otherwise).
pub fn check_build(theirs: &str) -> Result<(), String> {
    if theirs == BUILD {
        return Ok(());
    }
    Err(format!(
        "the cluster's controller (process 0) runs {}, this process {BUILD}: every process of a cluster must run the \
         same build",
        if theirs.is_empty() { "an older build" } else { theirs }
    ))
}

/// A command, applied by every worker in the order worker 0 sequenced it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// The first command (and only the first): renders the agent state. Every worker waits for
    /// it before it builds anything, so the agent state too is built from the controller's
    /// bytes, not from a process's own arguments (as Materialize's `CreateInstance`).
    CreateInstance {
        /// The controller's build ([`BUILD`]): a worker of another build stops its process
        /// (every process of a cluster must run the same build; their commands would not read
        /// the same).
        #[serde(default)]
        build: String,
        /// The canonical relations and built-in views to arrange (readable by SQL and by
        /// jobs' views); `None`: all of them. The ingestion counters and the view errors are
        /// always arranged. A built-in view is maintained only when it, or a view computed in the same
        /// pass, or `aimatrix_view_errors` is named or read by `views` (see
        /// `amx_dataflows::render::render`); with `None`, all are.
        collections: Option<Vec<String>>,
        /// Views rendered inside the agent state, straight over the relations (no arrangement
        /// of what they read); never dropped. `aimatrix run` puts its job's views here.
        views: Vec<ViewSpec>,
    },
    /// Starts a job: its sources (file sources are read by every worker, each decoding its
    /// share of the records; push sources wait for [`Command::Ingest`]), and its views, rendered
    /// in one dataflow that imports the arrangements it reads.
    InstallJob {
        /// The job.
        id: JobId,
        /// Its sources.
        sources: Vec<SourceConfig>,
        /// Its views, in definition order (a view reads only earlier ones).
        views: Vec<ViewSpec>,
        /// Keep the events its sources ingest, so that [`Command::DropJob`] can retract them.
        #[serde(default)]
        retractable: bool,
        /// Which files its file sources may read (a server's `files.roots`).
        #[serde(default)]
        access: amx_connectors::FileAccess,
        /// The server reads its file sources (a durable server): their records arrive as
        /// [`Command::IngestRecords`], as a Kafka source's do.
        #[serde(default)]
        files_by_server: bool,
    },
    /// Stops a job's sources and drops its views' dataflow and arrangements. What the job
    /// ingested stays in the shared agent state, unless `retract`.
    DropJob {
        /// The job.
        id: JobId,
        /// Also retract every event the job's sources ingested (a job installed `retractable`):
        /// each worker sets its share aside and holds its input time (answering with it) until
        /// [`Command::RetractJob`] says when to retract them.
        #[serde(default)]
        retract: bool,
        /// Wait id: each worker answers [`Response::Applied`] once it has dropped the job.
        wait: u64,
    },
    /// Ends a job's following file sources (see [`SourceConfig::follow`]): each reads what its
    /// files hold now, a last line without its newline included, and is then done
    /// ([`Response::SourceDone`]), as a file source that does not follow.
    EndOfInput {
        /// The job.
        job: JobId,
    },
    /// Asks for a catch-up with a job's file sources: each worker answers
    /// [`Response::Applied`] once it has read each of them to its current end after applying
    /// this (a poll found nothing more), or the source has ended or failed; what it read is then
    /// at times before `upper`. A following source is caught up with again and again: what
    /// was appended before the command was sent is read before the answer.
    CatchUp {
        /// The job.
        job: JobId,
        /// Wait id.
        wait: u64,
    },
    /// Retracts what a [`Command::DropJob`] with `retract` set aside: each worker moves its
    /// input to `at` and inserts its share of the job's events there with the opposite diff,
    /// then closes it (`at + 1`). `at` is a controller timestamp at least the latest input
    /// frontier the workers answered the drop with; as they held their time since, none has
    /// passed it, so every relation and view loses the job's records at this one timestamp.
    RetractJob {
        /// The job.
        id: JobId,
        /// The retraction's time.
        at: Time,
        /// Wait id: each worker answers [`Response::Applied`] once it has retracted.
        wait: u64,
    },
    /// Closes every epoch before `time`, a controller timestamp: each worker moves its input
    /// to `time` (unless it is already there, or holds its time for a retraction). The
    /// controller sends one within [`crate::controller::ClusterConfig::timestamp_interval`]
    /// of a worker's [`Response::AwaitingTimestamp`] (what a file source read becomes
    /// complete then), and one every 100 ms in any case, so that frontiers and `now()` move
    /// on without input. Workers never close
    /// an epoch at a time of their own: every worker of every process closes the same times.
    AdvanceTo {
        /// The new input time (ms since the Unix epoch).
        time: Time,
    },
    /// A part of the records pushed to a push source: whole lines of the request body, JSON
    /// lines (empty ones are no records but keep the numbering). The controller cuts a push
    /// into one run of lines per worker and sends each worker only its run; each decodes its
    /// records with the source's decoder (an ingest error becomes an
    /// [`amx_dataflows::event::Event::Error`] at `POST /v1/ingest/JOB/SOURCE:LINE`), and the
    /// agent state's exchange then moves each row to the worker that arranges it.
    Ingest {
        /// Wait id (the worker answers [`Response::Ingested`] once the records are in its
        /// input).
        id: u64,
        /// The source's name.
        source: String,
        /// The body.
        body: String,
        /// Lines (from 1) longer than the record limit, with their length in bytes: the body
        /// holds only their first bytes (the controller cut them, so that a huge line is not
        /// copied to every worker), and each is rejected as oversized.
        #[serde(default)]
        oversized: BTreeMap<u64, u64>,
        /// The controller's timestamp for the records: the worker's input moves to it first
        /// (unless it holds its time for a retraction), and to `at + 1` at the end of the
        /// round (the controller's timestamps are strictly increasing, and no worker is
        /// ever past the last one plus one). Every worker gets a part of the push at the same
        /// timestamp, so the push is applied at one timestamp everywhere.
        #[serde(default)]
        at: Time,
        /// The number (from 1) of the body's first line in the whole push.
        #[serde(default = "first_line")]
        first_line: u64,
    },
    /// A part of a batch of records a source the server reads read (a Kafka message's value
    /// at `kafka:TOPIC/PARTITION@OFFSET`, a line of an object), one part per worker: the
    /// worker decodes them with the source's decoder and answers [`Response::Ingested`]
    /// (rejects numbered in the whole batch, from 1).
    IngestRecords {
        /// Wait id.
        id: u64,
        /// The source's name.
        source: String,
        /// The records.
        records: Vec<amx_connectors::Record>,
        /// The controller's timestamp for the records (as [`Command::Ingest`]'s).
        #[serde(default)]
        at: Time,
        /// The number (from 1) of the first record in the whole batch.
        #[serde(default = "first_line")]
        first: u64,
    },
    /// A part of a durable server's snapshot, at a restart (see `crate::storage::snapshot`):
    /// rows of the canonical relations and of the relations sources declare, read back as
    /// events, and counts of the sources' records. The worker moves its input to `at` (as for
    /// [`Command::Ingest`]) and adds each event `diff` times (a keyed table's row as an upsert)
    /// and each source's counts to `aimatrix_source_stats`. Unlike a push, it does not close
    /// `at` on its own: a round has several parts at `at`, and the controller closes it (with
    /// the next round's timestamp, or [`Command::AdvanceTo`] at the restart's end), so that
    /// every row is at its round's timestamp.
    Restore {
        /// The events, each with its multiplicity.
        events: Vec<(amx_dataflows::event::Event, Diff)>,
        /// Per source: records read, rows decoded, ingest errors.
        #[serde(default)]
        stats: Vec<(String, (isize, isize, isize))>,
        /// The round's timestamp: the snapshot's, or later (a snapshot is restored in rounds,
        /// each at a timestamp of its own; see `ClusterConfig::restart_rows_ahead`).
        at: Time,
        /// The `retractable` job that ingested the events: the worker also keeps them for it,
        /// to retract when it is cancelled with `retract`.
        #[serde(default)]
        kept_for: Option<JobId>,
        /// Wait id: the worker answers [`Response::Applied`] once it has them in its input
        /// (the controller sends a snapshot a few parts ahead of the answers).
        #[serde(default)]
        wait: Option<u64>,
    },
    /// Reads the next part of this worker's share of collection `collection` as of `as_of`:
    /// its rows after `after` in the arrangements' order (by packed bytes, see
    /// [`crate::worker::RowTrace`]; from the first without), at most
    /// [`SNAPSHOT_PART_ROWS`] and about [`SNAPSHOT_PART_BYTES`], answered as [`Response::Peek`]
    /// once the arrangements have passed `as_of` (no rows: the share is read). A snapshot of
    /// the log reads a collection so, a part at a time, rather than whole.
    PeekPart {
        /// Peek id (answers name it).
        id: u64,
        /// The collection's name.
        collection: String,
        /// The time read (held by a read hold).
        as_of: Time,
        /// The last row of the part before.
        after: Option<Row>,
    },
    /// Reads the events each `retractable` job's sources fed on this worker (kept to retract
    /// them): each worker answers [`Response::Peek`] at once, with rows `[job BIGINT, relation
    /// TEXT, the event's row…]` and their multiplicities.
    ReadKept {
        /// Peek id (answers name it).
        id: u64,
    },
    /// Reads collection `collection` as of time `as_of`: each worker answers
    /// [`Response::Peek`] with its share once its arrangements have passed `as_of`.
    Peek {
        /// Peek id (answers name it).
        id: u64,
        /// The collection's name.
        collection: String,
        /// The time read; at least the compaction frontier ([`Command::AllowCompaction`]).
        as_of: Time,
        /// The columns to return, by position (`None`: all).
        projection: Option<Vec<usize>>,
        /// Only rows whose column `c` equals `d`, for every `(c, d)` (columns by position in
        /// the collection, before projection). On the first column this seeks in the
        /// arrangement (its rows are sorted) instead of scanning it.
        filter: Vec<(usize, amx_dataflows::row::Datum)>,
        /// At most this many rows (counting multiplicities) from each worker (`None`: all);
        /// given only when no other condition applies to the rows (SQL `LIMIT` alone).
        limit: Option<usize>,
    },
    /// Sends the contents of `collection` at `as_of`, in parts ([`Response::SubscribeSnapshot`],
    /// at most [`SUBSCRIBE_CREDIT`] parts ahead of the [`Command::SubscribeCredit`]s), and
    /// every change after `as_of` ([`Response::Subscribe`] batches). Each worker holds its
    /// arrangements readable at `as_of` until it has sent its share of the contents.
    Subscribe {
        /// Subscription id.
        id: u64,
        /// The collection's name.
        collection: String,
        /// The time of the snapshot; at least the compaction frontier.
        as_of: Time,
    },
    /// Worker `worker` may send one more part of subscription `id`'s snapshot: the subscriber
    /// has taken one. Sent to that worker only.
    SubscribeCredit {
        /// Subscription id.
        id: u64,
        /// The worker (global index).
        worker: usize,
    },
    /// Ends a subscription (drops its dataflow).
    Unsubscribe {
        /// Subscription id.
        id: u64,
    },
    /// Allows the arrangements to forget distinctions between times before `since`: no later
    /// peek reads before it.
    AllowCompaction {
        /// The new compaction frontier (never below an earlier one).
        since: Time,
    },
    /// Stops every worker.
    Shutdown,
}

/// The number of a first line or record when a command does not say (1).
/// A command as it travels to the workers: its JSON, with the bulk of a push or batch — the
/// body of [`Command::Ingest`], the texts of [`Command::IngestRecords`]'s records — kept
/// beside it in `texts`, so that megabytes of JSON lines are neither escaped into the
/// command's JSON nor parsed out of it again (and, within a process, never copied).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Wire {
    /// The command as JSON, its bulk texts left empty.
    pub json: String,
    /// The bulk texts, in order: the body of an `Ingest`; the text of each record of an
    /// `IngestRecords`; none for other commands.
    pub texts: Vec<String>,
}

impl Wire {
    /// `command` in its wire form.
    ///
    /// # Errors
    /// A command that does not serialize (a bug).
    pub fn encode(mut command: Command) -> Result<Wire, serde_json::Error> {
        let texts: Vec<String> = match &mut command {
            Command::Ingest { body, .. } => vec![std::mem::take(body)],
            Command::IngestRecords { records, .. } => records.iter_mut().map(|r| std::mem::take(&mut r.text)).collect(),
            _ => Vec::new(),
        };
        Ok(Wire { json: serde_json::to_string(&command)?, texts })
    }

    /// The command back, its bulk texts in their places.
    ///
    /// # Errors
    /// JSON that is no command, or texts that do not fit it (a bug, or another version).
    pub fn decode(self) -> Result<Command, String> {
        let mut command: Command = serde_json::from_str(&self.json).map_err(|e| e.to_string())?;
        let mut texts = self.texts;
        match &mut command {
            Command::Ingest { body, .. } if texts.len() == 1 => *body = texts.pop().expect("one text"),
            Command::IngestRecords { records, .. } if records.len() == texts.len() => {
                for (record, text) in records.iter_mut().zip(texts) {
                    record.text = text;
                }
            }
            Command::Ingest { .. } | Command::IngestRecords { .. } => {
                return Err(format!("a push or batch with {} texts beside it", texts.len()));
            }
            _ if texts.is_empty() => {}
            _ => return Err(format!("a command with {} texts beside it", texts.len())),
        }
        Ok(command)
    }
}

fn first_line() -> u64 {
    1
}

/// Rejected records an ingest reply lists (the first, by line); all of them are rows of
/// `ingest_errors`.
pub const MAX_REPORTED_REJECTS: usize = 1000;

/// Snapshot parts a worker sends for one subscription before it waits for a
/// [`Command::SubscribeCredit`]: with [`SNAPSHOT_PART_ROWS`] and [`SNAPSHOT_PART_BYTES`], the
/// bound of what a subscription's snapshot holds in the server at a time.
pub const SUBSCRIBE_CREDIT: usize = 2;

/// Rows in one snapshot part, at most.
pub const SNAPSHOT_PART_ROWS: usize = 10_000;

/// Bytes of one snapshot part, about (a part ends after the row that passes it; rows measured
/// as [`row_bytes`]).
pub const SNAPSHOT_PART_BYTES: u64 = 1 << 20;

/// How often each worker reports its operators and arrangements ([`Response::Introspection`]).
pub const INTROSPECTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One worker's operators and arrangements, as its logging streams tell them: the rows of
/// `aimatrix_dataflows`, `aimatrix_operators`, `aimatrix_operator_durations` and
/// `aimatrix_arrangements` for that worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Every operator alive on the worker (dataflows too: an operator whose address has one
    /// element is a dataflow), by timely's worker-unique id.
    pub operators: Vec<OperatorReport>,
    /// Every arrangement alive on the worker.
    pub arrangements: Vec<ArrangementReport>,
}

/// An operator, from timely's `timely` logging stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OperatorReport {
    /// Timely's worker-unique operator id.
    pub id: usize,
    /// Its address: the dataflow's index, then the operator's index in each nested scope.
    pub address: Vec<usize>,
    /// Its name (`Arrange spans`, `Map`, a dataflow's name: `agent state`, `job 3` …).
    pub name: String,
    /// Times it was scheduled.
    pub activations: u64,
    /// Time spent in it while scheduled (ns; a scope's time includes its operators').
    pub elapsed_ns: u64,
    /// Records it received on its inputs (timely's message events).
    pub records_received: u64,
    /// Its activations by how long each took: `(ns, count)`, `count` activations that took at
    /// most `ns` (a power of two) and more than half of it; in increasing `ns`, none empty.
    #[serde(default)]
    pub durations: Vec<(u64, u64)>,
}

/// An arrangement (a spine), from differential's `differential/arrange` logging stream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArrangementReport {
    /// The id of the operator that maintains it (see [`OperatorReport::id`]).
    pub operator: usize,
    /// Updates `(data, time, diff)` in its batches.
    pub records: i64,
    /// Batches it holds.
    pub batches: i64,
    /// The readable collection it holds, for the arrangements SQL reads.
    pub collection: Option<String>,
    /// Its size in bytes, estimated (the readable collections' arrangements only): its rows'
    /// mean size over a sample of each batch's rows, times its rows, plus each update's time and
    /// difference.
    pub bytes: Option<u64>,
}

/// A worker's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Response {
    /// Worker `worker` inserted records at its input time that wait for the controller to
    /// close it (what a file source read; a file source at its end; a catch-up answered): the
    /// controller closes a timestamp within its `timestamp_interval`.
    AwaitingTimestamp {
        /// The worker.
        worker: usize,
    },
    /// One worker's share of a peek: its rows (projected) and their multiplicities.
    Peek {
        /// Peek id.
        id: u64,
        /// The rows, each with a positive count.
        rows: Vec<(Row, Diff)>,
    },
    /// A part of one worker's share of a subscription's snapshot (its rows at the
    /// subscription's `as_of`, in row order, each row in one part only).
    SubscribeSnapshot {
        /// Subscription id.
        id: u64,
        /// The worker (global index).
        worker: usize,
        /// Rows and their counts (> 0): at most [`SNAPSHOT_PART_ROWS`] rows, and about
        /// [`SNAPSHOT_PART_BYTES`] bytes.
        rows: Vec<(Row, Diff)>,
        /// The worker's last part.
        done: bool,
    },
    /// One worker's changes of a subscribed collection, and its frontier: it has sent every
    /// change at a time before `upper`.
    Subscribe {
        /// Subscription id.
        id: u64,
        /// The worker (global index).
        worker: usize,
        /// Changes `(row, time, diff)`.
        updates: Vec<(Row, Time, Diff)>,
        /// The worker's frontier for this subscription (`Time::MAX`: closed).
        upper: Time,
    },
    /// A worker has applied a [`Command::DropJob`], [`Command::RetractJob`] or
    /// [`Command::CatchUp`]: what it changed (retracted counters and events, records read) is
    /// at times before `upper`. After a `DropJob` with `retract`, `upper` is one past the time
    /// the worker holds.
    Applied {
        /// Wait id.
        id: u64,
        /// The worker's input frontier after the records.
        upper: Time,
    },
    /// A worker has put its share of a [`Command::Ingest`] into its input, at times before
    /// `upper`.
    Ingested {
        /// Wait id.
        id: u64,
        /// The worker's input frontier after the records.
        upper: Time,
        /// Its records that decoded into rows.
        accepted: u64,
        /// Its records that did not.
        rejected: u64,
        /// Rows of `ingest_errors` its records made (a record may make several: each rejected
        /// span of an OTLP request).
        #[serde(default)]
        error_rows: u64,
        /// The first [`MAX_REPORTED_REJECTS`] of those: (line in the body from 1, the reason).
        errors: Vec<(u64, String)>,
    },
    /// A job's source failed on a worker (an I/O error reading it): that worker stopped
    /// reading it.
    SourceFailed {
        /// The job.
        job: JobId,
        /// The source.
        source: String,
        /// What went wrong.
        error: String,
    },
    /// A worker has read a file source to its end; its last records are at times before
    /// `upper`.
    SourceDone {
        /// The job.
        job: JobId,
        /// The source.
        source: String,
        /// The worker's input frontier after its last record.
        upper: Time,
    },
    /// A worker's operators and arrangements, from timely's and differential's logging
    /// streams (sent about once a second, see [`INTROSPECTION_INTERVAL`]).
    Introspection {
        /// The worker (global index).
        worker: usize,
        /// What its logging says now.
        report: WorkerReport,
    },
    /// How far worker `worker` has read its share of each of its file sources (its pieces of
    /// the files), by job and source name: sent when the figures moved (at most every 50 ms, at once
    /// when a source ended or reached its current end) and every second in any case (the
    /// rate, an average since the worker began reading, moves on its own). The controller
    /// sums the workers' shares.
    Progress {
        /// The worker (global index).
        worker: usize,
        /// Each file source's job, name and figures (`caught_up` is the controller's to
        /// say: false here).
        sources: Vec<(JobId, String, SourceProgress)>,
    },
    /// A job's views could not be rendered on a worker (a bug: the controller planned them).
    JobFailed {
        /// The job.
        job: JobId,
        /// What went wrong.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(command: &Command) -> String {
        serde_json::to_string(command).expect("JSON")
    }

    #[test]
    fn a_worker_refuses_another_builds_controller() {
        assert_eq!(check_build(BUILD), Ok(()));
        let why = check_build("aimatrix 0.0.1, protocol 1").expect_err("another build");
        assert!(why.contains("runs aimatrix 0.0.1, protocol 1, this process aimatrix "), "{why}");
        // A controller from before the build was sent sends none.
        let old = r#"{"CreateInstance":{"collections":null,"views":[]}}"#;
        let Ok(Command::CreateInstance { build, .. }) = (Wire { json: old.into(), texts: Vec::new() }).decode() else {
            panic!("an older CreateInstance reads");
        };
        assert!(check_build(&build).expect_err("no build").contains("runs an older build"));
        // What another build may send and this one cannot read is an error, not a command.
        let other = r#"{"Ingest":{"id":1,"source":"s","body":"","at":5,"first_line":1,"compressed":true}}"#;
        assert!((Wire { json: other.into(), texts: vec!["x".into()] }).decode().is_ok(), "unknown fields are ignored");
        let unknown = r#"{"Rebalance":{"to":3}}"#;
        assert!((Wire { json: unknown.into(), texts: Vec::new() }).decode().is_err());
    }

    #[test]
    fn a_wire_carries_bulk_texts_beside_the_json() {
        let mut record = amx_connectors::Record::new("f.jsonl:3", "{\"a\": \"\\\"q\\\"\"}");
        record.metadata = Some(Box::new(serde_json::json!({"key": "k"})));
        let commands = [
            Command::IngestRecords {
                id: 1,
                source: "s".into(),
                records: vec![record, amx_connectors::Record::new("f.jsonl:4", "")],
                at: 5,
                first: 3,
            },
            Command::Ingest {
                id: 2,
                source: "p".into(),
                body: "{\"x\":1}\n\n{\"x\":2}\n".into(),
                oversized: BTreeMap::from([(2, 99)]),
                at: 6,
                first_line: 1,
            },
            Command::AdvanceTo { time: 7 },
        ];
        for command in commands {
            let wire = Wire::encode(command.clone()).expect("encode");
            let bulk = matches!(command, Command::Ingest { .. } | Command::IngestRecords { .. });
            assert_eq!(wire.texts.is_empty(), !bulk);
            assert!(!bulk || !wire.json.contains("\\\"x\\\"") && !wire.json.contains("\\\"a\\\""), "{}", wire.json);
            assert_eq!(json(&wire.decode().expect("decode")), json(&command));
        }
        // Texts that do not fit the command: refused, not applied half.
        let mut wire = Wire::encode(Command::Ingest {
            id: 3,
            source: "p".into(),
            body: "{}".into(),
            oversized: BTreeMap::new(),
            at: 1,
            first_line: 1,
        })
        .expect("encode");
        wire.texts.push("more".into());
        assert!(wire.clone().decode().is_err());
        let advance = Wire { json: json(&Command::AdvanceTo { time: 1 }), texts: vec!["x".into()] };
        assert!(advance.decode().is_err());
    }
}
