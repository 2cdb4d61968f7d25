//! File sources of a durable server: read by the server (in process 0) rather than by every
//! worker, so that what they read is logged with where they are in each file (see [`super`]).
//!
//! Each batch is logged with the [`FileCursor`] of every file it advanced: bytes and lines
//! consumed, the file's identity (device, inode) and first bytes. A restart resumes each file
//! at its cursor, so a file is read once across restarts, and a view keeps the rows of a file
//! deleted or rotated away since. A file that is no longer the one its cursor describes
//! (replaced, truncated, rewritten) is read again from its start, as while running.
//!
//! Without a data directory (and in `aimatrix run`) the workers read file sources themselves,
//! each decoding its share of the records (`crate::worker`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amx_connectors::{FileCursor, FileReader, Record};
use amx_dataflows::Time;

use super::{BATCH_BYTES, BATCH_RECORDS, BatchSource, SourcePosition, SourceResume};
use crate::job::SourceConfig;
use crate::protocol::JobId;
use crate::protocol::SourceProgress;

/// How long a following source at its files' end waits before it looks again.
pub const FOLLOW_WAIT: Duration = Duration::from_millis(10);

/// What a file source the server reads shares with the controller: catch-up requests, end of
/// input, how far it is.
#[derive(Debug, Default)]
pub(crate) struct FileFeed {
    /// Catch-up requests made so far (a counter: [`FileFeed::request_catch_up`]).
    requested: AtomicU64,
    /// The latest request after which the source found its files at their end, everything it
    /// read before applied.
    reached: AtomicU64,
    /// Read what the files hold now, then stop ([`crate::Controller::end_of_input`]).
    ended: AtomicBool,
    /// The frontier after the last batch applied (ms since the Unix epoch, + 1).
    upper: AtomicU64,
    /// Bytes read and held, and whether it is done (read to its end, not following).
    progress: Mutex<SourceProgress>,
}

impl FileFeed {
    /// Asks the source to report when it has found its files at their end: returns the
    /// request's number, for [`FileFeed::reached`].
    pub(crate) fn request_catch_up(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether the source found its files at their end after request `request` (or is done),
    /// with everything read before applied; the frontier past it.
    pub(crate) fn reached(&self, request: u64) -> Option<Time> {
        let done = self.progress().done;
        (done || self.reached.load(Ordering::SeqCst) >= request).then(|| self.upper.load(Ordering::SeqCst))
    }

    /// The source reads what its files hold now and is then done.
    pub(crate) fn end_input(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// How far the source has read (`caught_up` is the controller's to fill in).
    pub(crate) fn progress(&self) -> SourceProgress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Done, with the frontier past its last records: `(true, upper)`.
    pub(crate) fn done(&self) -> Option<Time> {
        self.progress().done.then(|| self.upper.load(Ordering::SeqCst))
    }
}

/// A file source as the server reads it.
pub(crate) struct FileSource {
    reader: FileReader,
    follow: bool,
    feed: Arc<FileFeed>,
    /// Read to its end (not following): nothing more to do.
    done: bool,
    /// Found at its files' end after this catch-up request (and, when `finished`, for good):
    /// told once the batches before are applied ([`BatchSource::idle`]).
    at_end: Option<u64>,
    finished: bool,
    /// Its end is logged ([`SourcePosition::File::done`]).
    end_logged: bool,
    /// The files' total size, and when it was last summed ([`TOTAL_EVERY`]).
    total: (u64, Option<Instant>),
    /// When it was opened and the bytes it had read before (a resumed source's position),
    /// for its rate ([`SourceProgress::with_rate`]).
    started: (Instant, u64),
}

/// How often the files' total size is summed for the progress (a glob and a `stat` per file;
/// a following source polls every [`FOLLOW_WAIT`]).
const TOTAL_EVERY: Duration = Duration::from_millis(500);

/// Opens file source `source` of job `job` at `resume`'s cursors, reading what `access`
/// admits; `feed` is shared with the controller.
///
/// # Errors
/// An invalid glob.
pub(crate) fn open(
    job: JobId,
    source: &SourceConfig,
    resume: SourceResume,
    max_record_bytes: u64,
    access: amx_connectors::FileAccess,
    feed: Arc<FileFeed>,
) -> Result<FileSource, String> {
    let mut reader = FileReader::new(&source.path).map_err(|e| e.to_string())?;
    reader.set_max_poll_bytes(BATCH_BYTES as u64);
    reader.set_max_record_bytes(max_record_bytes.max(1));
    reader.set_access(access);
    reader.set_whole_other_files(source.decoder().is_ok_and(|d| d.reads_whole_files()));
    let (files, done) = (resume.files.len(), resume.files_done);
    // Done before the restart: what it read, read to its end, and nothing more.
    let read: u64 = resume.files.values().flatten().map(FileCursor::offset).sum();
    reader.resume(
        resume.files.into_iter().filter_map(|(path, cursor)| Some((PathBuf::from(path), cursor?))),
        resume.refused.into_iter().map(PathBuf::from),
    );
    tracing::info!(job = %job, source = %source.name, path = %source.path, files, "file source started");
    if done {
        let mut progress = feed.progress.lock().unwrap_or_else(|p| p.into_inner());
        *progress =
            SourceProgress { bytes_read: read, bytes_total: read, done: true, eta_ms: Some(0), ..Default::default() };
    }
    Ok(FileSource {
        reader,
        follow: source.follow,
        feed,
        done,
        at_end: None,
        finished: done,
        end_logged: done,
        total: (read, None),
        started: (Instant::now(), read),
    })
}

impl FileSource {
    /// Shows how far it has read (the total size summed again at most every
    /// [`TOTAL_EVERY`], and when it is done).
    fn publish(&mut self, done: bool) {
        if done || self.total.1.is_none_or(|at| at.elapsed() >= TOTAL_EVERY) {
            self.total = (self.reader.total_bytes(), Some(Instant::now()));
        }
        let mut progress = self.feed.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.bytes_read = self.reader.bytes_read();
        progress.bytes_total = self.total.0.max(progress.bytes_read);
        progress.records_read = self.reader.records_seen();
        progress.done = done;
        *progress = progress.with_rate(self.started.0, self.started.1);
    }
}

impl BatchSource for FileSource {
    fn read(&mut self, out: &mut Vec<Record>) -> Result<Option<SourcePosition>, String> {
        if self.done {
            std::thread::sleep(Duration::from_millis(200));
            return Ok(None);
        }
        // Read before polling: what the files held when the request was made is read by then.
        let request = self.feed.requested.load(Ordering::SeqCst);
        let finish = !self.follow || self.feed.ended.load(Ordering::SeqCst);
        let mut bytes = out.iter().map(|r| r.text.len()).sum::<usize>();
        loop {
            let (seen, read, before) = (self.reader.records_seen(), self.reader.bytes_read(), out.len());
            // A failure (an unreadable file) is reported and retried; what was read before it
            // stays in `out` and in the cursors.
            self.reader.poll(finish, out).map_err(|e| e.to_string())?;
            bytes += out[before..].iter().map(|r| r.text.len()).sum::<usize>();
            let moved = out.len() > before || self.reader.records_seen() != seen || self.reader.bytes_read() != read;
            if !moved || out.len() >= BATCH_RECORDS || bytes >= BATCH_BYTES {
                break;
            }
        }
        let (cursors, refused) = self.reader.take_cursors();
        if out.is_empty() && cursors.is_empty() && refused.is_empty() {
            // At the files' end: said once the batch in flight is applied (`idle`).
            self.at_end = Some(request);
            self.finished = finish;
            self.publish(false);
            if finish && !self.end_logged {
                // Logged, so that a restart reads nothing more either.
                self.end_logged = true;
                return Ok(Some(SourcePosition::File { files: Vec::new(), refused: Vec::new(), done: true }));
            }
            if !finish {
                std::thread::sleep(FOLLOW_WAIT);
            }
            return Ok(None);
        }
        self.publish(false);
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        Ok(Some(SourcePosition::File {
            files: cursors.into_iter().map(|(p, c)| (path(p), c)).collect(),
            refused: refused.into_iter().map(path).collect(),
            done: false,
        }))
    }

    fn applied(&mut self, _position: &SourcePosition, upper: Time) {
        self.feed.upper.fetch_max(upper, Ordering::SeqCst);
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn idle(&mut self) {
        if let Some(request) = self.at_end.take() {
            self.feed.reached.fetch_max(request, Ordering::SeqCst);
            if self.finished {
                self.done = true;
                self.publish(true);
            }
        }
    }
}

/// Folds a file source's cursors: the last one of each path.
pub(super) fn advance(resume: &mut SourceResume, files: &[(String, Option<FileCursor>)], refused: &[String]) {
    for (path, cursor) in files {
        resume.files.insert(path.clone(), cursor.clone());
    }
    resume.refused.extend(refused.iter().cloned());
}
