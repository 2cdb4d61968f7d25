//! Sources a server reads itself, in process 0: Kafka topics ([`kafka`]), objects under a
//! prefix of an object store ([`object`]) and, with a durable log, files ([`file`]).
//!
//! One thread per source reads a batch of records ([`BatchSource::read`]) and hands it to the
//! controller with the source's position after it ([`SourcePosition`]). The controller logs
//! both in one record of the durable log (with a data directory) and sends the records to the
//! workers to decode, one part each, as a push. The next batch is read once the last one is applied and
//! durable. A restart replays the log, which gives every source back its position
//! ([`SourceResume`]), and each source resumes there: each record is applied once, also across
//! `kill -9` (Materialize, Feldera and Arroyo keep their sources' positions with the data the
//! same way, rather than in the external system).

pub mod file;
pub mod kafka;
pub mod object;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amx_connectors::Record;
use amx_connectors::kafka::KafkaPositions;
use serde::{Deserialize, Serialize};

use crate::controller::{ClusterError, Controller, Inner};
use crate::job::{SourceConfig, SourceKind};
use crate::protocol::JobId;

/// Records in one batch, at most.
pub const BATCH_RECORDS: usize = 10_000;

/// Bytes of records in one batch, about (a batch ends after the record that passes it).
pub const BATCH_BYTES: usize = 4 << 20;

/// Where a source is after a batch, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourcePosition {
    /// A Kafka source: (partition, the offset of the next message to read) for every
    /// partition read so far.
    Kafka {
        /// By partition.
        offsets: Vec<(i32, i64)>,
    },
    /// An object-store source: the object the batch came from and how far it is read.
    Object {
        /// The object's key.
        key: String,
        /// Lines of it read (the next batch of it starts after them).
        lines: u64,
        /// Read to its end: never read again.
        done: bool,
    },
    /// A file source: where it is in each file the batch advanced (`None`: a path it no
    /// longer reads under that name), and the paths it found outside the file roots (reported
    /// once).
    File {
        /// By path (a name that is not UTF-8 is kept lossily, and read again after a restart).
        files: Vec<(String, Option<amx_connectors::FileCursor>)>,
        /// Paths refused by the file roots, reported.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<String>,
        /// A source that does not follow, read to its end: it reads nothing more, also after
        /// a restart.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        done: bool,
    },
}

/// Where a source resumes: every position its batches reached, folded
/// ([`SourceResume::advance`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceResume {
    /// Kafka: the next offset per partition.
    pub kafka: KafkaPositions,
    /// Object store: the objects read to their end.
    pub objects_done: BTreeSet<String>,
    /// Object store: the object being read, and the lines of it read.
    pub object_reading: Option<(String, u64)>,
    /// File: the last cursor of each path.
    pub files: std::collections::BTreeMap<String, Option<amx_connectors::FileCursor>>,
    /// File: paths refused by the file roots, reported.
    pub refused: BTreeSet<String>,
    /// File: read to its end (a source that does not follow).
    pub files_done: bool,
}

impl SourceResume {
    /// Folds in the position after one more batch.
    pub fn advance(&mut self, position: &SourcePosition) {
        match position {
            SourcePosition::Kafka { offsets } => self.kafka.extend(offsets.iter().copied()),
            SourcePosition::Object { key, lines, done } => {
                if *done {
                    self.objects_done.insert(key.clone());
                    self.object_reading = None;
                } else {
                    self.object_reading = Some((key.clone(), *lines));
                }
            }
            SourcePosition::File { files, refused, done } => {
                file::advance(self, files, refused);
                self.files_done |= *done;
            }
        }
    }
}

/// A source the server reads in batches.
pub(crate) trait BatchSource: Send {
    /// Appends the next records (at most [`BATCH_RECORDS`], about [`BATCH_BYTES`]) to `out`,
    /// waiting a little when there are none; returns the position after them, or a problem
    /// reading (reported in the job's errors and retried at the next call).
    fn read(&mut self, out: &mut Vec<Record>) -> Result<Option<SourcePosition>, String>;

    /// The batch that ended at `position` is applied (and durable, with a data directory),
    /// and the collections' frontier is `upper` once it is visible: a Kafka source advertises
    /// it to its consumer group. Nothing by default.
    fn applied(&mut self, position: &SourcePosition, upper: amx_dataflows::Time) {
        let _ = (position, upper);
    }

    /// Whether the next batch may be read while the last one is applied (one batch in flight,
    /// so that reading and decoding overlap). No by default: the next batch is read once the
    /// last one is applied and durable.
    fn pipelined(&self) -> bool {
        false
    }

    /// [`BatchSource::read`] found nothing new, and every batch submitted before is applied
    /// (and durable). Nothing by default.
    fn idle(&mut self) {}
}

/// Waits for the batch in flight, if any, to be applied, and tells `reader`.
fn settle(
    runtime: &tokio::runtime::Handle,
    in_flight: &mut Option<(crate::controller::IngestAnswer, SourcePosition)>,
    reader: &mut Box<dyn BatchSource>,
    job: JobId,
    name: &str,
) {
    if let Some((answer, position)) = in_flight.take() {
        match runtime.block_on(Controller::answer(answer)) {
            Ok(report) => reader.applied(&position, report.timestamp + 1),
            Err(e) => tracing::warn!(job = %job, source = %name, error = %e, "source batch"),
        }
    }
}

/// A running source: stopped (its thread ends at its next batch) when dropped.
pub(crate) struct RunningSource {
    stop: Arc<AtomicBool>,
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Whether the server reads this kind of source itself (rather than workers or pushes):
/// Kafka and object-store sources always, file sources when `files` (a server with a durable
/// log, which logs what they read with their cursors).
pub(crate) fn read_by_server(kind: SourceKind, files: bool) -> bool {
    matches!(kind, SourceKind::Kafka | SourceKind::ObjectStore) || (files && kind == SourceKind::File)
}

/// What opening a source the server reads takes besides the source and its position.
pub(crate) struct OpenContext {
    /// The largest record, in bytes.
    pub(crate) max_record_bytes: u64,
    /// Which files a file source may read (the server's `files.roots`).
    pub(crate) access: amx_connectors::FileAccess,
    /// A file source's catch-up requests and progress, shared with the controller.
    pub(crate) feed: Arc<file::FileFeed>,
}

/// Opens source `source` of job `job` (a Kafka, object-store or file source) at `resume`;
/// nothing is fetched yet. A job is only logged once its sources open.
///
/// # Errors
/// [`ClusterError::InvalidJob`] when the source cannot be opened (a property librdkafka
/// refuses, a bad URL, a bad glob).
pub(crate) fn open(
    job: JobId,
    source: &SourceConfig,
    resume: SourceResume,
    context: OpenContext,
) -> Result<Box<dyn BatchSource>, ClusterError> {
    let invalid = |e: String| ClusterError::InvalidJob(format!("source `{}`: {e}", source.name));
    let OpenContext { max_record_bytes, access, feed } = context;
    Ok(match source.kind {
        SourceKind::Kafka => Box::new(kafka::open(job, source, resume, max_record_bytes).map_err(invalid)?),
        SourceKind::ObjectStore => Box::new(object::open(source, resume, max_record_bytes, &access).map_err(invalid)?),
        SourceKind::File => Box::new(file::open(job, source, resume, max_record_bytes, access, feed).map_err(invalid)?),
        SourceKind::Push => return Err(invalid("not read by the server".into())),
    })
}

/// Starts reading an opened source `name` of job `job` on a thread of its own.
///
/// # Errors
/// [`ClusterError::BadRequest`] without a tokio runtime here (the controller answers in its
/// tasks), or when the thread cannot start.
pub(crate) fn spawn(
    controller: &Controller,
    job: JobId,
    name: &str,
    reader: Box<dyn BatchSource>,
) -> Result<RunningSource, ClusterError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| ClusterError::BadRequest("a Kafka or object-store source needs the server's runtime".into()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let inner = Arc::downgrade(&controller.inner);
    let owned = name.to_owned();
    std::thread::Builder::new()
        .name(format!("amx-source-{name}"))
        .spawn(move || run(inner, runtime, job, owned, reader, &stopped))
        .map_err(|e| ClusterError::BadRequest(format!("starting source `{name}`: {e}")))?;
    Ok(RunningSource { stop })
}

/// A source's thread: reads batches and submits them until stopped, the job is gone or the
/// controller is.
fn run(
    inner: Weak<Inner>,
    runtime: tokio::runtime::Handle,
    job: JobId,
    name: String,
    mut reader: Box<dyn BatchSource>,
    stop: &AtomicBool,
) {
    // The controller answers in tasks of the server's runtime.
    let _runtime = runtime.enter();
    let controller = |inner: &Weak<Inner>| inner.upgrade().map(|inner| Controller { inner });
    let mut batch = Vec::new();
    let mut last_problem = None;
    let mut in_flight = None;
    while !stop.load(Ordering::SeqCst) {
        let position = match reader.read(&mut batch) {
            Ok(position) => {
                // Reading again: the problem is over.
                if last_problem.take().is_some()
                    && let Some(c) = controller(&inner)
                {
                    c.report_problem(job, &format!("source `{name}`"), None);
                }
                position
            }
            Err(problem) => {
                if last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(job = %job, source = %name, %problem, "source");
                    let Some(c) = controller(&inner) else { return };
                    c.report_problem(job, &format!("source `{name}`"), Some(&problem));
                    last_problem = Some(problem);
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let Some(position) = position else {
            settle(&runtime, &mut in_flight, &mut reader, job, &name);
            reader.idle();
            continue;
        };
        let records = std::mem::take(&mut batch);
        // Submitted once: a refusal (the log's store failing) is retried with the same records.
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(c) = controller(&inner) else { return };
            match c.submit_records(job, &name, records.clone(), position.clone(), None) {
                Ok(answer) => {
                    // The next batch waits for this one to be applied and durable, or (a
                    // pipelined source) is read meanwhile and waits for it at its submission.
                    drop(c);
                    settle(&runtime, &mut in_flight, &mut reader, job, &name);
                    in_flight = Some((answer, position));
                    if !reader.pipelined() {
                        settle(&runtime, &mut in_flight, &mut reader, job, &name);
                    }
                    break;
                }
                Err(ClusterError::Storage(why)) if !stop.load(Ordering::SeqCst) => {
                    tracing::warn!(job = %job, source = %name, %why, "source batch refused by the log; retrying");
                    drop(c);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                // The job was cancelled, or the server stops.
                Err(_) => return,
            }
        }
    }
}
