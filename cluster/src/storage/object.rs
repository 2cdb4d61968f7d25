//! The durable log in an object store (`aimatrix serve --data-url s3://bucket/prefix`): the
//! same records as the file log, written as immutable *segments* through the `object_store`
//! crate, so that a server whose disk is gone (a rescheduled pod) resumes from the bucket.
//!
//! # Objects under the prefix
//! - `log/{first:020}-{last:020}.seg`: records `first..=last` (sequence numbers from 1, kept
//!   across restarts), as the header line `aimatrix-log 2\n` (segments of version 1 are read too) and the records' frames (the file
//!   log's framing, with its checksums). Each group commit is one `PUT` (`If-None-Match: *`,
//!   so a segment is never overwritten); an object store writes an object whole or not at
//!   all, so unlike a file a segment is never cut short: any bad byte in one, or records
//!   other than its name says, is damage, and the start is refused naming the object. Only
//!   the direct children of `log/` are segments (a log under a longer prefix is another
//!   log).
//! - `LOCK`: the lease of the one server that writes the log, as JSON
//!   `{"holder": "host:pid:nanos", "expires_at_ms": …, "durable": …}` (Unix ms, the holder's
//!   clock; `durable` the last record it knew written, so that a start finding the log
//!   ending earlier refuses: its last segments are missing; a lease given back expires at 0),
//!   renewed every [`RENEW`] with a conditional `PUT` (`If-Match` its last ETag). A server
//!   that finds a lease not yet expired waits until its expiry and looks again: a renewed
//!   lease means a live holder (the start is refused); an unchanged one is taken over
//!   (conditionally, so of two servers starting at once one wins). A holder that finds its
//!   lease taken stops writing for good; one that finds the version changed but its own name
//!   in it (a renewal that timed out but landed) goes on. Before it writes a segment, a
//!   holder makes sure its lease has at least one renewal period left on its own monotonic
//!   clock, counted from when the last renewal was sent (renewing first otherwise), so a
//!   server paused past its lease (SIGSTOP, a long GC-like stall) finds it lost rather than
//!   write after another took over. What this cannot exclude without a store-side fence: a
//!   pause of more than the lease *between* that check and the `PUT` itself; then one of
//!   the two servers finds the other's segment in the way (`If-None-Match`) and stops
//!   writing. Holders' clocks must agree within about the lease ([`LEASE`]).
//!
//! Runs of small segments are merged in the background ([`compact`]): the merged segment
//! `{first}-{last}.seg` is written before the ones it covers are deleted, and a start-up
//! replays the longest segments that chain from record 1 ([`cover`]), deleting the covered.
//!
//! # Bad days
//! A failing `PUT` (the store down, slow, refusing) is retried with backoff (100 ms doubling
//! to 5 s), forever, with the same bytes and name, so the log keeps its order; meanwhile new
//! records are refused ([`StorageError::Unavailable`], answered 503) and the requests
//! waiting on the failing segment get no answer until it is written. Once the store takes
//! it, writes resume. Nothing acknowledged is lost: a request is answered 200 only after its
//! segment's `PUT` succeeded.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{FRAME, HEADER, HEADER_V1, LogRecord, StorageError, decode, encode};

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the holder renews its lease.
pub const RENEW: Duration = Duration::from_secs(1);
/// How long a change to the catalog waits for its segment before it is answered 503.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of records waiting for their segment beyond which new ones are refused.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// How often the compaction looks for small segments to merge.
const COMPACT_EVERY: Duration = Duration::from_secs(2);
/// Segments that make a run worth merging.
const COMPACT_RUN: usize = 16;
/// The largest merged segment, in bytes.
const COMPACT_BYTES: u64 = 16 << 20;
/// Segments fetched ahead of the replay.
const PREFETCH: usize = 2;

/// The lease, as stored in `LOCK`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    holder: String,
    expires_at_ms: u64,
    /// The last record its holder knew written (so a start that finds the log ending
    /// before it knows segments are missing, the last ones included).
    #[serde(default)]
    durable: u64,
}

use crate::controller::now_ms;

/// Tuning of an [`ObjectLog`] (tests shorten the lease).
#[derive(Clone, Debug)]
pub struct ObjectLogOptions {
    /// How long a lease lasts without renewal ([`LEASE`]).
    pub lease: Duration,
    /// How often it is renewed ([`RENEW`]).
    pub renew: Duration,
}

impl Default for ObjectLogOptions {
    fn default() -> Self {
        ObjectLogOptions { lease: LEASE, renew: RENEW }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Frames appended and not yet in a segment being written.
    pending: Vec<u8>,
    /// The sequence number of the first of them.
    pending_first: u64,
    /// The last sequence number given out.
    appended: u64,
    /// The last sequence number in a written segment.
    durable: u64,
    /// Why the segment being written is failing (cleared once it is written).
    failing: Option<String>,
    /// Why the log takes no more writes (its lease is lost).
    failed: Option<String>,
    /// The written segments, in order (what a restart would replay).
    segments: Vec<Segment>,
    /// The lease's version in the store, as this server last wrote it.
    lease_version: Option<UpdateVersion>,
    /// The last record the lease's previous holder knew written.
    known_end: u64,
    /// Until when (this machine's monotonic clock) the lease is surely this server's: the
    /// last successful renewal's sending time plus the lease's length.
    lease_until: Option<Instant>,
    /// The generation of the snapshot in effect (0: none): the records up to `snapshot_cut`
    /// are in it (see [`super::snapshot`]).
    generation: u64,
    /// The last record the snapshot in effect stands for (0: none).
    snapshot_cut: u64,
    /// The generation the next snapshot takes (past every one under `snapshots/`).
    next_generation: u64,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    holder: String,
    options: ObjectLogOptions,
    state: Mutex<State>,
    /// Wakes the flusher.
    wake: tokio::sync::Notify,
    /// Wakes async waiters when a segment is written or the log fails.
    synced: tokio::sync::Notify,
    /// Wakes blocking waiters likewise.
    synced_blocking: Condvar,
    /// Held by a merge of segments and by a cut after a snapshot, so that they do not
    /// remove segments under each other.
    removing: tokio::sync::Mutex<()>,
}

/// An error with its sources (object_store's own message leaves out the HTTP client's cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn path(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    fn segment(&self, first: u64, last: u64) -> Path {
        self.path("log").join(format!("{first:020}-{last:020}.seg").as_str())
    }

    fn io(&self, what: &str, e: impl std::error::Error) -> StorageError {
        StorageError::Io(format!("{what} {}", self.location), std::io::Error::other(chain(&e)))
    }

    fn fail(&self, why: String) {
        tracing::error!(log = %self.location, %why, "the log takes no more writes until the server restarts");
        lock(&self.state).failed = Some(why);
        self.synced.notify_waiters();
        self.synced_blocking.notify_all();
    }
}

/// The durable log in an object store (see the module documentation). Its I/O runs on a
/// runtime of its own, so it works from any context.
#[derive(Debug)]
pub struct ObjectLog {
    shared: Arc<Shared>,
    /// The I/O runtime.
    handle: tokio::runtime::Handle,
    /// Ends the I/O thread when the log is dropped.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The I/O thread (joined when the log is dropped, so nothing of it runs after).
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The records of an object-store log, oldest first: the segments are fetched ahead (at
/// most two), each checked whole, and their records handed out one at a time.
pub struct ObjectRecords {
    segments: std::sync::mpsc::Receiver<Result<Vec<LogRecord>, StorageError>>,
    current: VecDeque<LogRecord>,
    done: bool,
    /// The snapshot to restore before the records, if the log was compacted.
    snapshot: Option<super::snapshot::Snapshot>,
}

impl ObjectRecords {
    /// The snapshot a restart restores before these records, if the log was compacted
    /// (taken: asked again, `None`).
    pub fn take_snapshot(&mut self) -> Option<super::snapshot::Snapshot> {
        self.snapshot.take()
    }
}

impl std::fmt::Debug for ObjectRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRecords").field("buffered", &self.current.len()).finish()
    }
}

impl Iterator for ObjectRecords {
    type Item = Result<LogRecord, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.current.pop_front() {
                return Some(Ok(record));
            }
            if self.done {
                return None;
            }
            match self.segments.recv() {
                Ok(Ok(records)) => self.current = records.into(),
                Ok(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Err(_) => self.done = true,
            }
        }
    }
}

/// Reads a segment whole: its header, every frame's checksums, and that it holds exactly
/// the records its name says (`first..=last`).
fn decode_segment(bytes: &[u8], name: &str, first: u64, last: u64) -> Result<Vec<LogRecord>, StorageError> {
    let corrupt = |offset: usize, why: &str| StorageError::Corrupt {
        file: name.to_owned(),
        offset: offset as u64,
        why: why.to_owned(),
    };
    if !bytes.starts_with(HEADER) && !bytes.starts_with(HEADER_V1) {
        let found = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        return Err(StorageError::Version {
            file: name.to_owned(),
            found: String::from_utf8_lossy(&found[..found.len().min(64)])
                .chars()
                .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
                .collect(),
            expected: String::from_utf8_lossy(&HEADER[..HEADER.len() - 1]).into_owned(),
        });
    }
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let mut at = HEADER.len();
    let mut records = Vec::new();
    while at < bytes.len() {
        let Some(frame) = bytes.get(at..at + FRAME) else {
            return Err(corrupt(at, "a frame cut short"));
        };
        let (len, len_crc, crc) = (word(&frame[..4]), word(&frame[4..8]), word(&frame[8..]));
        if crc32fast::hash(&len.to_le_bytes()) != len_crc {
            return Err(corrupt(at, "its length field does not match its checksum"));
        }
        let Some(payload) = bytes.get(at + FRAME..at + FRAME + len as usize) else {
            return Err(corrupt(at, "a payload cut short"));
        };
        if crc32fast::hash(payload) != crc {
            return Err(corrupt(at, "checksum mismatch"));
        }
        let record = decode(payload).map_err(|why| corrupt(at, &why))?;
        records.push(record);
        at += FRAME + len as usize;
    }
    let expected = last - first + 1;
    if records.len() as u64 != expected {
        return Err(corrupt(
            bytes.len(),
            &format!("it holds {} records, but its name says {expected} ({first}..={last})", records.len()),
        ));
    }
    Ok(records)
}

/// A written segment: records `first..=last`, `bytes` long.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    first: u64,
    last: u64,
    bytes: u64,
    path: Path,
}

/// The segments to replay from record `from` (1, or the one after a snapshot's cut), in
/// order, from those listed under `log/`, and the ones a longer segment or the snapshot
/// covers (leftovers of a merge or a cut, to delete). A chosen segment may begin before
/// `from` or overlap the one before it: its records before the next one wanted are skipped
/// when read. A gap is damage.
fn cover(mut segments: Vec<Segment>, location: &str, from: u64) -> Result<(Vec<Segment>, Vec<Path>), StorageError> {
    segments.sort_by(|a, b| a.first.cmp(&b.first).then(b.last.cmp(&a.last)));
    let mut next = from;
    let mut chosen = Vec::new();
    let mut covered = Vec::new();
    for segment in segments {
        if segment.last < next {
            covered.push(segment.path);
            continue;
        }
        if segment.first > next {
            return Err(StorageError::Corrupt {
                file: segment.path.to_string(),
                offset: 0,
                why: format!(
                    "it holds records {}..={} but the log of {location} has records only up to {}: a segment is missing",
                    segment.first,
                    segment.last,
                    next - 1
                ),
            });
        }
        next = segment.last + 1;
        chosen.push(segment);
    }
    Ok((chosen, covered))
}

impl Drop for ObjectLog {
    fn drop(&mut self) {
        // Ends the I/O runtime and waits for it: no renewal lands after the log is gone.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ObjectLog {
    /// Opens the log under `prefix` in `store` (`location` names it in messages): takes the
    /// lease (waiting up to the lease's length for a holder that stopped renewing), lists
    /// the segments, and returns the log and its records, fetched while the replay reads
    /// them.
    ///
    /// # Errors
    /// [`StorageError::LeaseHeld`] when a live server holds the lease; [`StorageError::Corrupt`]
    /// for a missing segment; [`StorageError::Io`] when the store cannot be reached (each
    /// request retried by `object_store` first).
    pub fn open(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        location: String,
        options: ObjectLogOptions,
    ) -> Result<(ObjectLog, ObjectRecords), StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("aimatrix-object-store")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io("starting the object store's I/O thread".into(), e))?;
        let holder = format!(
            "{}:{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        );
        let shared = Arc::new(Shared {
            store,
            prefix,
            location,
            holder,
            options,
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            synced: tokio::sync::Notify::new(),
            synced_blocking: Condvar::new(),
            removing: tokio::sync::Mutex::new(()),
        });
        let snapshots = super::snapshot::StoreSnapshots {
            store: shared.store.clone(),
            prefix: shared.prefix.clone(),
            location: shared.location.clone(),
            handle: runtime.handle().clone(),
        };
        let opened = runtime.block_on(async {
            let etag = acquire(&shared).await?;
            let listed = async {
                let snapshot = snapshots.newest().await.map_err(StorageError::Snapshot)?;
                let next = snapshots.next_generation().await.map_err(StorageError::Snapshot)?;
                lock(&shared.state).next_generation = next;
                let cut = snapshot.as_ref().map_or(0, |s| s.manifest.cut_offset);
                let (segments, covered) = cover(list_segments(&shared).await?, &shared.location, cut + 1)?;
                Ok::<_, StorageError>((segments, covered, snapshot))
            }
            .await;
            let known_end = lock(&shared.state).known_end;
            let listed = listed.and_then(|(segments, covered, snapshot)| {
                let cut = snapshot.as_ref().map_or(0, |s| s.manifest.cut_offset);
                let end = segments.last().map_or(cut, |s| s.last).max(cut);
                if end < known_end {
                    return Err(StorageError::Corrupt {
                        file: shared.path("log").to_string(),
                        offset: 0,
                        why: format!(
                            "the log's lease says records up to {known_end} were written, but its segments end at \
                             record {end}: the last segments are missing"
                        ),
                    });
                }
                Ok((segments, covered, snapshot))
            });
            match listed {
                Ok((segments, covered, snapshot)) => Ok((etag, segments, covered, snapshot)),
                Err(e) => {
                    // A refused start gives the lease back (keeping the log's end): the next
                    // try need not wait.
                    let _ = put_lease_until(&shared, PutMode::Overwrite, 0).await;
                    Err(e)
                }
            }
        });
        let (etag, segments, covered, snapshot) = opened?;
        let cut = snapshot.as_ref().map_or(0, |s| s.manifest.cut_offset);
        let last = segments.last().map_or(cut, |s| s.last).max(cut);
        {
            let mut state = lock(&shared.state);
            state.generation = snapshot.as_ref().map_or(0, |s| s.manifest.generation);
            state.snapshot_cut = cut;
            state.appended = last;
            state.durable = last;
            state.pending_first = last + 1;
            state.segments = segments.clone();
            state.lease_version = Some(etag.0);
            state.lease_until = Some(etag.1 + shared.options.lease);
        }
        let handle = runtime.handle().clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let io = shared.clone();
        let thread = std::thread::Builder::new()
            .name("aimatrix-object-log".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let fetch = io.clone();
                    tokio::spawn(async move {
                        // The next record wanted: a segment's records before it (covered by
                        // the snapshot, or by the segment before) are skipped.
                        let mut next = cut + 1;
                        for Segment { path, first, last, .. } in segments {
                            let read = match fetch.store.get(&path).await {
                                Ok(got) => got.bytes().await.map_err(|e| fetch.io("reading", e)),
                                Err(e) => Err(fetch.io("reading", e)),
                            };
                            let mut decoded = read.and_then(|bytes| decode_segment(&bytes, path.as_ref(), first, last));
                            if let Ok(records) = &mut decoded {
                                records.drain(..(next.saturating_sub(first) as usize).min(records.len()));
                            }
                            next = next.max(last + 1);
                            let failed = decoded.is_err();
                            // A blocking send: the replay reads on another thread.
                            let sent = tokio::task::block_in_place(|| tx.send(decoded));
                            if sent.is_err() || failed {
                                break;
                            }
                        }
                    });
                    tokio::spawn(renew(io.clone()));
                    tokio::spawn(compact(io.clone(), covered));
                    tokio::spawn(flush(io));
                    let _ = stopped.await;
                });
                // Bounded: a replay reader that stopped reading holds the prefetch's send.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| StorageError::Io("starting the object store's I/O thread".into(), e))?;
        let records = ObjectRecords { segments: rx, current: VecDeque::new(), done: false, snapshot };
        Ok((ObjectLog { shared, handle, stop: Some(stop), thread: Some(thread) }, records))
    }

    /// Appends a record (not yet durable: see [`ObjectLog::sync`]); returns its sequence
    /// number. The record comes back as it was (see [`super::DurableLog::append`]).
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] while a segment is failing to be written (or too many
    /// bytes wait for one); [`StorageError::LeaseLost`] once the lease is lost.
    pub fn append(&self, record: &mut LogRecord) -> Result<u64, StorageError> {
        let frame = encode(record).map_err(|e| self.shared.io("writing to", std::io::Error::other(e)))?;
        let mut state = lock(&self.shared.state);
        if let Some(why) = &state.failed {
            return Err(StorageError::LeaseLost(format!("{} ({why})", self.shared.location)));
        }
        if let Some(why) = &state.failing {
            return Err(StorageError::Unavailable(format!("{}: {why}", self.shared.location)));
        }
        if state.pending.len() + frame.len() > MAX_PENDING_BYTES && !state.pending.is_empty() {
            return Err(StorageError::Unavailable(format!(
                "{}: {} bytes wait to be written",
                self.shared.location,
                state.pending.len()
            )));
        }
        if state.pending.is_empty() {
            state.pending_first = state.appended + 1;
        }
        state.pending.extend_from_slice(&frame);
        state.appended += 1;
        let seq = state.appended;
        drop(state);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Waits until record `seq` (and every one before it) is in a written segment; many
    /// records share one segment (group commit). While the store fails, this waits for it.
    ///
    /// # Errors
    /// [`StorageError::LeaseLost`] once the lease is lost.
    pub async fn sync(&self, seq: u64) -> Result<(), StorageError> {
        loop {
            let notified = self.shared.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = lock(&self.shared.state);
                if state.durable >= seq {
                    return Ok(());
                }
                if let Some(why) = &state.failed {
                    return Err(StorageError::LeaseLost(format!("{} ({why})", self.shared.location)));
                }
            }
            notified.await;
        }
    }

    /// [`ObjectLog::sync`] from a thread that may block, waiting at most [`SYNC_TIMEOUT`].
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the segment is not written in time (it may still be
    /// later); [`StorageError::LeaseLost`] once the lease is lost.
    pub fn sync_now(&self, seq: u64) -> Result<(), StorageError> {
        let state = lock(&self.shared.state);
        let (state, timeout) = self
            .shared
            .synced_blocking
            .wait_timeout_while(state, SYNC_TIMEOUT, |s| s.durable < seq && s.failed.is_none())
            .unwrap_or_else(|p| p.into_inner());
        if state.durable >= seq {
            return Ok(());
        }
        if let Some(why) = &state.failed {
            return Err(StorageError::LeaseLost(format!("{} ({why})", self.shared.location)));
        }
        debug_assert!(timeout.timed_out());
        Err(StorageError::Unavailable(format!(
            "{}: not written within {} s ({})",
            self.shared.location,
            SYNC_TIMEOUT.as_secs(),
            state.failing.as_deref().unwrap_or("the store is slow")
        )))
    }

    /// Stops writing and gives the lease back (a clean stop: the next server need not wait
    /// for it to expire). Records not yet written are not written (none was acknowledged).
    /// Blocks until the store answered (or failed to).
    pub fn release(&self) {
        lock(&self.shared.state).failed = Some("the server is stopping".into());
        self.shared.wake.notify_one();
        let shared = self.shared.clone();
        let handle = self.handle.clone();
        let released = std::thread::spawn(move || {
            handle.block_on(async {
                match read_lease(&shared).await? {
                    Some((lease, version)) if lease.holder == shared.holder => {
                        // Expired at once, with the log's end kept for the next holder.
                        put_lease_until(&shared, PutMode::Update(version), 0)
                            .await
                            .map(|_| ())
                            .map_err(|e| shared.io("releasing", e))
                    }
                    _ => Ok(()),
                }
            })
        })
        .join();
        match released {
            Ok(Ok(())) => tracing::info!(log = %self.shared.location, "the log's lease is given back"),
            Ok(Err(e)) => {
                tracing::warn!(log = %self.shared.location, error = %e, "giving the log's lease back failed (the next server waits for it to expire)")
            }
            Err(_) => tracing::warn!(log = %self.shared.location, "giving the log's lease back failed"),
        }
    }

    /// Why the segment being written is failing, if it is.
    pub fn failing(&self) -> Option<String> {
        lock(&self.shared.state).failing.clone()
    }

    /// The log's location (`s3://bucket/prefix`).
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// The snapshots beside the log.
    pub fn snapshots(&self) -> super::snapshot::StoreSnapshots {
        super::snapshot::StoreSnapshots {
            store: self.shared.store.clone(),
            prefix: self.shared.prefix.clone(),
            location: self.shared.location.clone(),
            handle: self.handle.clone(),
        }
    }

    /// The generation the next snapshot takes.
    pub fn next_generation(&self) -> u64 {
        lock(&self.shared.state).next_generation
    }

    /// Snapshot `generation` is written: the next takes a later one (also when the cut
    /// after it fails).
    pub fn snapshot_written(&self, generation: u64) {
        let mut state = lock(&self.shared.state);
        state.next_generation = state.next_generation.max(generation + 1);
    }

    /// The generation of the snapshot in effect and the last record given out: where a
    /// snapshot of everything appended so far cuts the log.
    pub fn cut(&self) -> (u64, u64) {
        let state = lock(&self.shared.state);
        (state.generation, state.appended)
    }

    /// Bytes of the log after the snapshot in effect: its segments and the records waiting
    /// for one.
    pub fn len(&self) -> u64 {
        let state = lock(&self.shared.state);
        state.segments.iter().map(|s| s.bytes).sum::<u64>() + state.pending.len() as u64
    }

    /// Whether the log holds no record after the snapshot in effect.
    pub fn is_empty(&self) -> bool {
        let state = lock(&self.shared.state);
        state.appended <= state.snapshot_cut
    }

    /// After snapshot `generation` (written) that stands for the records up to `cut`: deletes
    /// the segments it covers whole (one that straddles the cut stays; a restart skips its
    /// records up to the cut) and the older snapshots. Blocks. Returns the log's bytes after.
    ///
    /// # Errors
    /// [`StorageError::LeaseLost`] when the lease is no longer this server's (nothing is
    /// deleted). A failed delete is only logged: a restart skips a covered segment and
    /// deletes it.
    pub fn cut_after_snapshot(&self, cut: u64, generation: u64) -> Result<u64, StorageError> {
        let shared = self.shared.clone();
        self.handle.block_on(async move {
            let _removing = shared.removing.lock().await;
            if let Err(Retry(why) | Fatal(why)) = hold_lease(&shared).await {
                return Err(StorageError::LeaseLost(format!("{} ({why})", shared.location)));
            }
            let covered: Vec<Segment> = {
                let mut state = lock(&shared.state);
                state.generation = generation;
                state.next_generation = state.next_generation.max(generation + 1);
                state.snapshot_cut = cut;
                let (covered, kept) = std::mem::take(&mut state.segments).into_iter().partition(|s| s.last <= cut);
                state.segments = kept;
                covered
            };
            for segment in covered {
                if let Err(e) = shared.store.delete(&segment.path).await {
                    tracing::warn!(segment = %segment.path, error = %chain(&e), "deleting a segment a snapshot covers failed (it is skipped at restart)");
                }
            }
            let snapshots = super::snapshot::StoreSnapshots {
                store: shared.store.clone(),
                prefix: shared.prefix.clone(),
                location: shared.location.clone(),
                handle: tokio::runtime::Handle::current(),
            };
            snapshots.remove_older(generation).await;
            let state = lock(&shared.state);
            Ok(state.segments.iter().map(|s| s.bytes).sum::<u64>() + state.pending.len() as u64)
        })
    }
}

/// The segments under `log/` (only its direct children: a log under a longer prefix is
/// another log).
async fn list_segments(shared: &Shared) -> Result<Vec<Segment>, StorageError> {
    let listing = shared.store.list_with_delimiter(Some(&shared.path("log"))).await;
    let listing = listing.map_err(|e| shared.io("listing", e))?;
    let mut listed = Vec::new();
    for meta in listing.objects {
        let name = meta.location.filename().unwrap_or_default().to_owned();
        let range = name.strip_suffix(".seg").and_then(|n| n.split_once('-'));
        match range.and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))) {
            Some((first, last)) if first >= 1 && first <= last => {
                listed.push(Segment { first, last, bytes: meta.size, path: meta.location })
            }
            _ => tracing::warn!(object = %meta.location, "not a segment of the log; ignored"),
        }
    }
    Ok(listed)
}

/// Reads `LOCK`: the lease and its version, if there is one.
async fn read_lease(shared: &Shared) -> Result<Option<(Lease, UpdateVersion)>, StorageError> {
    match shared.store.get(&shared.path("LOCK")).await {
        Ok(got) => {
            let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
            let bytes = got.bytes().await.map_err(|e| shared.io("reading the lease of", e))?;
            let lease = serde_json::from_slice(&bytes).map_err(|e| shared.io("reading the lease of", e))?;
            Ok(Some((lease, version)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(shared.io("reading the lease of", e)),
    }
}

/// Writes our lease with `mode`: its new ETag.
async fn put_lease(shared: &Shared, mode: PutMode) -> Result<UpdateVersion, object_store::Error> {
    put_lease_until(shared, mode, now_ms() + shared.options.lease.as_millis() as u64).await
}

/// Writes our lease, expiring at `expires_at_ms` (0: given back), with the log's end.
async fn put_lease_until(
    shared: &Shared,
    mode: PutMode,
    expires_at_ms: u64,
) -> Result<UpdateVersion, object_store::Error> {
    let durable = {
        let state = lock(&shared.state);
        state.durable.max(state.known_end)
    };
    let lease = Lease { holder: shared.holder.clone(), expires_at_ms, durable };
    let body = serde_json::to_vec(&lease).expect("a lease serializes");
    let put = shared
        .store
        .put_opts(&shared.path("LOCK"), PutPayload::from(body), PutOptions { mode, ..Default::default() })
        .await?;
    Ok(UpdateVersion { e_tag: put.e_tag, version: put.version })
}

/// Takes the lease (see the module documentation): its version, and when the request that
/// took it was sent.
async fn acquire(shared: &Shared) -> Result<(UpdateVersion, Instant), StorageError> {
    let locked = |lease: &Lease| StorageError::LeaseHeld {
        location: shared.location.clone(),
        holder: format!("{}, which renews it,", lease.holder),
    };
    let sent = Instant::now();
    let taken = |e: object_store::Error| match e {
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StorageError::LeaseHeld {
                location: shared.location.clone(),
                holder: "a server that started at the same time".into(),
            }
        }
        e => shared.io("taking the lease of", e),
    };
    let Some((lease, version)) = read_lease(shared).await? else {
        return put_lease(shared, PutMode::Create).await.map(|v| (v, sent)).map_err(taken);
    };
    lock(&shared.state).known_end = lease.durable;
    let now = now_ms();
    if lease.expires_at_ms > now {
        // Held: a live holder renews it before it expires.
        let wait = Duration::from_millis(lease.expires_at_ms - now).min(shared.options.lease) + shared.options.renew;
        tracing::warn!(log = %shared.location, holder = %lease.holder, wait_ms = wait.as_millis() as u64, "the log's lease is held (a server that crashed, or one that runs); waiting to see whether its holder renews it");
        tokio::time::sleep(wait).await;
        let sent = Instant::now();
        match read_lease(shared).await? {
            None => return put_lease(shared, PutMode::Create).await.map(|v| (v, sent)).map_err(taken),
            Some((again, v)) if again != lease || v.e_tag != version.e_tag => {
                if again.expires_at_ms > now_ms() {
                    return Err(locked(&again));
                }
                // Given back meanwhile (a clean stop): taken over below.
                lock(&shared.state).known_end = again.durable;
                tracing::warn!(log = %shared.location, holder = %again.holder, "taking over the lease its holder gave back");
                let sent = Instant::now();
                return put_lease(shared, PutMode::Update(v)).await.map(|v| (v, sent)).map_err(taken);
            }
            Some(_) => {}
        }
    }
    tracing::warn!(log = %shared.location, holder = %lease.holder, "taking over the lease of a server that stopped renewing it");
    let sent = Instant::now();
    put_lease(shared, PutMode::Update(version)).await.map(|v| (v, sent)).map_err(taken)
}

/// Why a renewal failed.
enum Renewal {
    /// The store failed (or our own earlier renewal landed unanswered): try again.
    Failed(String),
    /// Another server holds the lease.
    Lost(String),
}

/// Renews the lease once (conditionally on the version this server last wrote).
async fn renew_once(shared: &Shared) -> Result<(), Renewal> {
    let Some(version) = lock(&shared.state).lease_version.clone() else {
        return Err(Renewal::Lost("no lease".into()));
    };
    let sent = Instant::now();
    match put_lease(shared, PutMode::Update(version)).await {
        Ok(version) => {
            let mut state = lock(&shared.state);
            state.lease_version = Some(version);
            state.lease_until = Some(sent + shared.options.lease);
            Ok(())
        }
        Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
            // Changed since this server wrote it: by another server, or by a renewal of
            // this one that timed out but landed (then the lease still names this server).
            match read_lease(shared).await {
                Ok(Some((lease, version))) if lease.holder == shared.holder => {
                    lock(&shared.state).lease_version = Some(version);
                    Err(Renewal::Failed("the lease changed under an unanswered renewal; renewing again".into()))
                }
                Ok(Some((lease, _))) => Err(Renewal::Lost(format!("{} holds it", lease.holder))),
                Ok(None) => Err(Renewal::Lost("its LOCK was deleted".into())),
                Err(e) => Err(Renewal::Failed(e.to_string())),
            }
        }
        Err(e) => Err(Renewal::Failed(chain(&e))),
    }
}

/// Makes sure the lease is this server's for at least one more renewal period before a
/// segment is written (renewing it first if not), so that a server that was paused past
/// its lease does not write after another took over.
async fn hold_lease(shared: &Shared) -> Result<(), PutError> {
    let until = lock(&shared.state).lease_until;
    if until.is_some_and(|until| until > Instant::now() + shared.options.renew) {
        return Ok(());
    }
    match renew_once(shared).await {
        Ok(()) => Ok(()),
        Err(Renewal::Failed(why)) => Err(Retry(format!("renewing the lease before a write: {why}"))),
        Err(Renewal::Lost(why)) => Err(Fatal(format!("lost the lease ({why})"))),
    }
}

/// Renews the lease every `renew`; a lease found taken fails the log.
async fn renew(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.options.renew).await;
        if lock(&shared.state).failed.is_some() {
            return;
        }
        match renew_once(&shared).await {
            Ok(()) => {}
            Err(Renewal::Lost(why)) => {
                shared.fail(format!("lost the lease ({why})"));
                return;
            }
            // The store is failing: the flusher reports it; the next renewal tries again.
            Err(Renewal::Failed(why)) => {
                tracing::warn!(log = %shared.location, error = %why, "renewing the log's lease failed")
            }
        }
    }
}

/// Writes the pending records as segments, one at a time, in order.
async fn flush(shared: Arc<Shared>) {
    loop {
        let notified = shared.wake.notified();
        let taken = {
            let mut state = lock(&shared.state);
            if state.failed.is_some() {
                return;
            }
            let frames = std::mem::take(&mut state.pending);
            (!frames.is_empty()).then_some((state.pending_first, state.appended, frames))
        };
        let Some((first, last, frames)) = taken else {
            notified.await;
            continue;
        };
        let path = shared.segment(first, last);
        let mut body = Vec::with_capacity(HEADER.len() + frames.len());
        body.extend_from_slice(HEADER);
        body.extend_from_slice(&frames);
        let body = Bytes::from(body);
        let mut backoff = Duration::from_millis(100);
        loop {
            let put = match hold_lease(&shared).await {
                Ok(()) => put_segment(&shared, &path, body.clone()).await,
                Err(e) => Err(e),
            };
            match put {
                Ok(()) => {
                    let mut state = lock(&shared.state);
                    state.durable = last;
                    let bytes = body.len() as u64;
                    state.segments.push(Segment { first, last, bytes, path: path.clone() });
                    if state.failing.take().is_some() {
                        tracing::warn!(log = %shared.location, "the store takes writes again");
                    }
                    break;
                }
                Err(Fatal(why)) => {
                    shared.fail(why);
                    return;
                }
                Err(Retry(why)) => {
                    tracing::warn!(log = %shared.location, segment = %path, error = %why, retry_ms = backoff.as_millis() as u64, "writing a segment failed; retrying");
                    lock(&shared.state).failing = Some(why);
                    shared.synced_blocking.notify_all();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        shared.synced.notify_waiters();
        shared.synced_blocking.notify_all();
    }
}

/// Picks the next run of segments to merge into one: at least [`COMPACT_RUN`] consecutive
/// segments, each under [`COMPACT_BYTES`] / 4, together at most [`COMPACT_BYTES`] (the
/// first such run; `None` when there is none). Segments are left as they are once they are
/// large, so each record is rewritten a few times at most.
fn next_run(segments: &[Segment]) -> Option<std::ops::Range<usize>> {
    let mut start = 0;
    let mut bytes = 0;
    for (i, segment) in segments.iter().enumerate() {
        if segment.bytes >= COMPACT_BYTES / 4 || bytes + segment.bytes > COMPACT_BYTES {
            if i - start >= COMPACT_RUN {
                return Some(start..i);
            }
            (start, bytes) = if segment.bytes >= COMPACT_BYTES / 4 { (i + 1, 0) } else { (i, segment.bytes) };
            continue;
        }
        bytes += segment.bytes;
    }
    (segments.len() - start >= COMPACT_RUN).then_some(start..segments.len())
}

/// Merges runs of small segments into one (group commits under light load write many small
/// ones, and a restart lists and reads each): the merged segment is written first, and the
/// ones it covers are deleted only once it is in the store, so a crash at any step leaves a
/// log that replays the same records ([`cover`] skips covered leftovers; `leftovers` are
/// those found at start-up, deleted first).
async fn compact(shared: Arc<Shared>, leftovers: Vec<Path>) {
    for path in leftovers {
        if let Err(e) = shared.store.delete(&path).await {
            tracing::warn!(segment = %path, error = %chain(&e), "deleting a segment a compaction covered failed");
        }
    }
    loop {
        tokio::time::sleep(COMPACT_EVERY).await;
        let run = {
            let state = lock(&shared.state);
            if state.failed.is_some() {
                return;
            }
            next_run(&state.segments).map(|range| state.segments[range].to_vec())
        };
        let Some(run) = run else { continue };
        let _removing = shared.removing.lock().await;
        // A cut after a snapshot may have removed some of them meanwhile.
        if !run.iter().all(|r| lock(&shared.state).segments.contains(r)) {
            continue;
        }
        let (first, last) = (run[0].first, run[run.len() - 1].last);
        let mut body = HEADER.to_vec();
        let mut read = Ok(());
        for segment in &run {
            match shared.store.get(&segment.path).await {
                Ok(got) => match got.bytes().await {
                    // Each segment's frames are checked as they are merged: damage is not copied.
                    Ok(bytes) => match decode_segment(&bytes, segment.path.as_ref(), segment.first, segment.last) {
                        Ok(_) => body.extend_from_slice(&bytes[HEADER.len()..]),
                        Err(e) => read = Err(e.to_string()),
                    },
                    Err(e) => read = Err(chain(&e)),
                },
                Err(e) => read = Err(chain(&e)),
            }
            if read.is_err() {
                break;
            }
        }
        if let Err(e) = read {
            tracing::warn!(log = %shared.location, error = %e, "compacting segments: reading one failed; trying later");
            continue;
        }
        let merged = shared.segment(first, last);
        let bytes = body.len() as u64;
        // Only a holder of the lease compacts (a paused one that lost it must not delete).
        let put = match hold_lease(&shared).await {
            Ok(()) => put_segment(&shared, &merged, Bytes::from(body)).await,
            Err(e) => Err(e),
        };
        match put {
            Ok(()) => {}
            Err(Retry(e) | Fatal(e)) => {
                tracing::warn!(log = %shared.location, error = %e, "compacting segments: writing the merged one failed; trying later");
                continue;
            }
        }
        {
            let mut state = lock(&shared.state);
            // (Merges and cuts take turns: the run is still there.)
            if let Some(at) = state.segments.iter().position(|s| s.first == first) {
                let end = (at + run.len()).min(state.segments.len());
                state.segments.splice(at..end, [Segment { first, last, bytes, path: merged.clone() }]);
            }
        }
        tracing::debug!(log = %shared.location, first, last, segments = run.len(), bytes, "segments merged");
        for segment in run {
            if let Err(e) = shared.store.delete(&segment.path).await {
                tracing::warn!(segment = %segment.path, error = %chain(&e), "deleting a merged segment failed (it is skipped at restart)");
            }
        }
    }
}

/// Why a segment's write failed: try again, or never.
enum PutError {
    Retry(String),
    Fatal(String),
}
use PutError::{Fatal, Retry};

/// Writes a segment, never over another: a segment already there with the same bytes is an
/// earlier try of this one that succeeded unanswered.
async fn put_segment(shared: &Shared, path: &Path, body: Bytes) -> Result<(), PutError> {
    let options = PutOptions { mode: PutMode::Create, ..Default::default() };
    match shared.store.put_opts(path, PutPayload::from(body.clone()), options).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => match shared.store.get(path).await {
            Ok(got) => match got.bytes().await {
                Ok(there) if there == body => Ok(()),
                Ok(_) => Err(Fatal(format!("{path} was written by another server: this one stops writing"))),
                Err(e) => Err(Retry(chain(&e))),
            },
            Err(e) => Err(Retry(chain(&e))),
        },
        Err(e) => Err(Retry(chain(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ingest;
    use super::*;
    use futures::StreamExt;
    use object_store::memory::InMemory;

    fn quick() -> ObjectLogOptions {
        ObjectLogOptions { lease: Duration::from_millis(300), renew: Duration::from_millis(50) }
    }

    fn open(store: &Arc<InMemory>) -> Result<(ObjectLog, Vec<String>), StorageError> {
        let (log, records) = ObjectLog::open(store.clone(), Path::from("p"), "memory://p".into(), quick())?;
        let records = records.map(|r| r.map(|r| serde_json::to_string(&r).expect("JSON"))).collect::<Result<_, _>>()?;
        Ok((log, records))
    }

    fn write(log: &ObjectLog, records: &[LogRecord]) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let seqs: Vec<u64> = records.iter().map(|r| log.append(&mut r.clone()).expect("append")).collect();
        runtime.block_on(log.sync(*seqs.last().expect("one"))).expect("sync");
    }

    /// An object's bytes.
    fn get(store: &InMemory, path: &str) -> Bytes {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async { store.get(&Path::from(path)).await.expect("get").bytes().await.expect("bytes") })
    }

    /// A log of three records, one per segment (each write waits for its segment), left as
    /// a crash leaves it; returns the second segment's name.
    fn three_segments(store: &Arc<InMemory>) -> &'static str {
        let (log, _) = open(store).expect("open");
        for n in 0..3 {
            write(&log, &[ingest(n)]);
        }
        drop(log);
        "p/log/00000000000000000002-00000000000000000002.seg"
    }

    fn json(records: &[LogRecord]) -> Vec<String> {
        records.iter().map(|r| serde_json::to_string(r).expect("JSON")).collect()
    }

    #[test]
    fn records_come_back_in_order_after_a_restart() {
        let store = Arc::new(InMemory::new());
        let records: Vec<LogRecord> = (0..7).map(ingest).collect();
        let (log, read) = open(&store).expect("open");
        assert!(read.is_empty());
        write(&log, &records[..3]);
        write(&log, &records[3..5]);
        // A crash (the lease is not given back): the next server waits it out.
        drop(log);
        let (log, read) = open(&store).expect("reopen");
        assert_eq!(read, json(&records[..5]));
        write(&log, &records[5..]);
        log.sync_now(7).expect("durable");
        drop(log);
        let (_log, read) = open(&store).expect("reopen");
        assert_eq!(read, json(&records));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let store = Arc::new(InMemory::new());
        let slow = ObjectLogOptions { lease: Duration::from_secs(60), renew: Duration::from_secs(1) };
        let (log, _) =
            ObjectLog::open(store.clone(), Path::from("p"), "memory://p".into(), slow.clone()).expect("open");
        write(&log, &[ingest(0)]);
        log.release();
        drop(log);
        // Given back: expired, with the log's end kept (a start takes an expired lease at
        // once; one still running would be waited out for the minute).
        let lease: Lease = serde_json::from_slice(&get(&store, "p/LOCK")).expect("a lease");
        assert_eq!((lease.expires_at_ms, lease.durable), (0, 1));
        let (_log, records) =
            ObjectLog::open(store.clone(), Path::from("p"), "memory://p".into(), slow).expect("reopen");
        assert_eq!(records.count(), 1);
    }

    #[test]
    fn a_live_holder_keeps_its_lease() {
        let store = Arc::new(InMemory::new());
        let (_first, _) = open(&store).expect("open");
        let second = open(&store).expect_err("held");
        assert!(matches!(second, StorageError::LeaseHeld { .. }), "{second}");
    }

    #[test]
    fn a_damaged_or_missing_segment_refuses_the_start() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(InMemory::new());
        let second = Path::from(three_segments(&store));
        let bytes = get(&store, second.as_ref());
        // A flipped byte in the payload.
        let mut bad = bytes.to_vec();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        runtime.block_on(store.put(&second, PutPayload::from(bad))).expect("put");
        let err = open(&store).expect_err("damaged");
        assert!(matches!(&err, StorageError::Corrupt { file, .. } if file.ends_with("2.seg")), "{err}");
        // Gone.
        runtime.block_on(store.delete(&second)).expect("delete");
        let err = open(&store).expect_err("gap");
        assert!(err.to_string().contains("a segment is missing"), "{err}");
    }

    /// An in-memory store whose `PUT`s fail while `down`.
    #[derive(Debug)]
    struct Flaky {
        inner: InMemory,
        down: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Flaky({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Flaky {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(object_store::Error::Generic { store: "flaky", source: "503 Slow Down".into() });
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A store that fails for a while: the waiting record is written once it recovers, new
    /// ones are refused meanwhile, and nothing is lost or written twice.
    #[test]
    fn a_failing_store_refuses_new_records_until_it_recovers() {
        use std::sync::atomic::Ordering::SeqCst;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(Flaky { inner: InMemory::new(), down: false.into() });
        let open = |store: &Arc<Flaky>| {
            let (log, records) = ObjectLog::open(store.clone(), Path::from("p"), "flaky://p".into(), quick())?;
            let read: Vec<String> =
                records.map(|r| r.map(|r| serde_json::to_string(&r).expect("JSON"))).collect::<Result<_, _>>()?;
            Ok::<_, StorageError>((log, read))
        };
        let (log, _) = open(&store).expect("open");
        write(&log, &[ingest(0)]);
        store.down.store(true, SeqCst);
        let waiting = log.append(&mut ingest(1)).expect("taken before the failure is known");
        let synced = runtime
            .block_on(async { tokio::time::timeout(Duration::from_millis(500), log.sync(waiting)).await.is_ok() });
        assert!(!synced, "acknowledged while the store fails");
        assert!(log.failing().is_some());
        let refused = log.append(&mut ingest(2)).expect_err("refused while failing");
        assert!(matches!(refused, StorageError::Unavailable(_)), "{refused}");
        store.down.store(false, SeqCst);
        runtime.block_on(log.sync(waiting)).expect("written once the store is back");
        assert!(log.failing().is_none());
        write(&log, &[ingest(3)]);
        drop(log);
        let (_log, read) = open(&store).expect("reopen");
        assert_eq!(read, json(&[ingest(0), ingest(1), ingest(3)]));
    }

    fn segment(first: u64, last: u64, bytes: u64) -> Segment {
        Segment { first, last, bytes, path: Path::from(format!("log/{first:020}-{last:020}.seg")) }
    }

    /// A segment whose frames are all sound but which holds fewer or more records than its
    /// name says (a frame dropped, or one twice) refuses the start: the loss is not silent.
    #[test]
    fn a_segment_with_other_records_than_its_name_says_refuses_the_start() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(InMemory::new());
        let two = Path::from(three_segments(&store));
        let bytes = get(&store, two.as_ref());
        // Its frame dropped, and its frame twice: checksums all sound.
        for bad in [HEADER.to_vec(), [&bytes[..], &bytes[HEADER.len()..]].concat()] {
            runtime.block_on(store.put(&two, PutPayload::from(bad))).expect("put");
            let err = open(&store).expect_err("refused");
            assert!(err.to_string().contains("but its name says 1"), "{err}");
        }
    }

    /// The last segment deleted whole: the lease remembers where the log ended, so the start
    /// is refused (again on the next try), not made without the last pushes.
    #[test]
    fn missing_last_segments_refuse_the_start() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(InMemory::new());
        let (log, _) = open(&store).expect("open");
        for n in 0..3 {
            write(&log, &[ingest(n)]);
        }
        // The lease given back carries the log's end.
        log.release();
        drop(log);
        runtime
            .block_on(store.delete(&Path::from("p/log/00000000000000000003-00000000000000000003.seg")))
            .expect("delete");
        for _ in 0..2 {
            let err = open(&store).expect_err("refused");
            assert!(err.to_string().contains("records up to 3 were written"), "{err}");
        }
    }

    /// Only the direct children of `PREFIX/log/` are the log: a log under a longer prefix
    /// (`PREFIX/log` as a prefix of its own) is another log, neither replayed nor deleted.
    #[test]
    fn a_log_under_a_longer_prefix_is_another_log() {
        let store = Arc::new(InMemory::new());
        let open_at = |prefix: &str| {
            let (log, records) =
                ObjectLog::open(store.clone(), Path::from(prefix), format!("memory://{prefix}"), quick())?;
            let read: Vec<String> =
                records.map(|r| r.map(|r| serde_json::to_string(&r).expect("JSON"))).collect::<Result<_, _>>()?;
            Ok::<_, StorageError>((log, read))
        };
        let (inner, _) = open_at("p/log").expect("inner");
        write(&inner, &[ingest(0), ingest(1)]);
        let (outer, read) = open_at("p").expect("outer");
        assert!(read.is_empty(), "{read:?}");
        write(&outer, &[ingest(5)]);
        drop((inner, outer));
        let (_inner, read) = open_at("p/log").expect("inner again");
        assert_eq!(read, json(&[ingest(0), ingest(1)]));
        let (_outer, read) = open_at("p").expect("outer again");
        assert_eq!(read, json(&[ingest(5)]));
    }

    /// A renewal that timed out but landed changes the lease's version under this server:
    /// it finds its own name there and goes on, rather than stop writing.
    #[test]
    fn a_renewal_that_landed_unanswered_keeps_the_lease() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(InMemory::new());
        let (log, _) = open(&store).expect("open");
        let lock_path = Path::from("p/LOCK");
        let bytes = get(&store, lock_path.as_ref());
        // The same lease written again: a new version, as an unanswered renewal leaves it.
        runtime.block_on(store.put(&lock_path, PutPayload::from(bytes))).expect("put");
        std::thread::sleep(Duration::from_millis(300));
        write(&log, &[ingest(0)]);
        assert!(log.failing().is_none());
    }

    /// A server whose lease another server took writes nothing more: its next push is
    /// refused, and no segment of it reaches the store.
    #[test]
    fn a_server_that_lost_its_lease_writes_nothing() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(InMemory::new());
        let slow = ObjectLogOptions { lease: Duration::from_secs(60), renew: Duration::from_secs(30) };
        let (log, _) = ObjectLog::open(store.clone(), Path::from("p"), "memory://p".into(), slow).expect("open");
        write(&log, &[ingest(0)]);
        // Another server took the lease over (as after a pause longer than the lease); this
        // one believes it holds it for another minute, but renews before each write when
        // less than a renewal period is left: force that by taking its time away.
        let other = Lease { holder: "other:1:1".into(), expires_at_ms: now_ms() + 60_000, durable: 1 };
        let body = serde_json::to_vec(&other).expect("JSON");
        runtime.block_on(store.put(&Path::from("p/LOCK"), PutPayload::from(body))).expect("put");
        lock(&log.shared.state).lease_until = Some(Instant::now());
        let seq = log.append(&mut ingest(1)).expect("taken");
        let err = runtime.block_on(log.sync(seq)).expect_err("lost");
        assert!(matches!(err, StorageError::LeaseLost(_)), "{err}");
        let segments =
            runtime.block_on(async { store.list(Some(&Path::from("p/log"))).collect::<Vec<_>>().await.len() });
        assert_eq!(segments, 1, "only the segment written while it held the lease");
    }

    /// A snapshot cuts the log: the segments it covers whole are deleted, one that straddles
    /// its cut stays, and a restart restores the snapshot and replays only the records after
    /// the cut, numbering new ones after the last; a segment covered by the snapshot and
    /// left behind (a delete that failed) is skipped; without the snapshot's objects, the
    /// start is refused (the records it stands for are gone).
    #[test]
    fn a_snapshot_cuts_the_log_and_a_restart_starts_after_it() {
        use super::super::snapshot::{Manifest, SNAPSHOT_VERSION};
        let store = Arc::new(InMemory::new());
        let records: Vec<LogRecord> = (0..6).map(ingest).collect();
        let (log, _) = open(&store).expect("open");
        write(&log, &records[..2]);
        write(&log, &records[2..3]);
        log.append(&mut records[3].clone()).expect("append");
        assert_eq!(log.cut(), (0, 4));
        // Record 5 may share a segment with record 4: the cut at 4 then straddles it.
        write(&log, &records[4..5]);
        let mut manifest = Manifest {
            version: SNAPSHOT_VERSION,
            generation: 1,
            cut_generation: 0,
            cut_offset: 4,
            at: 4,
            catalog: Vec::new(),
            positions: Vec::new(),
            keys: Vec::new(),
            stats: vec![("s".into(), (4, 4, 0))],
            files: Vec::new(),
        };
        log.snapshots().write(&mut manifest, Vec::new()).expect("snapshot");
        log.cut_after_snapshot(4, 1).expect("cut");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let listed = |prefix: &str| -> Vec<String> {
            runtime.block_on(async {
                store.list(Some(&Path::from(prefix))).map(|m| m.expect("meta").location.to_string()).collect().await
            })
        };
        let segments = listed("p/log");
        assert!(!segments.iter().any(|s| s.ends_with("0001-00000000000000000002.seg")), "{segments:?}");
        assert!(!segments.iter().any(|s| s.ends_with("0003-00000000000000000003.seg")), "{segments:?}");
        write(&log, &records[5..6]);
        drop(log);

        let reopen = || ObjectLog::open(store.clone(), Path::from("p"), "memory://p".into(), quick());
        let (log, mut read) = reopen().expect("reopen");
        let snapshot = read.take_snapshot().expect("a snapshot");
        assert_eq!((snapshot.manifest.generation, snapshot.manifest.stats.clone()), (1, vec![("s".into(), (4, 4, 0))]));
        let rest: Vec<String> = read.map(|r| serde_json::to_string(&r.expect("record")).expect("JSON")).collect();
        assert_eq!(rest, json(&records[4..]));
        assert_eq!(log.cut(), (1, 6));
        drop(log);

        // A covered segment left behind is skipped (and deleted).
        let body = [HEADER, &frame(&records[0])].concat();
        runtime
            .block_on(store.put(&Path::from("p/log/00000000000000000001-00000000000000000001.seg"), body.into()))
            .expect("put");
        let (log, read) = reopen().expect("reopen");
        assert_eq!(read.collect::<Result<Vec<_>, _>>().expect("records").len(), 2);
        drop(log);

        // The snapshot gone: the log starts at a record after 1, and the start is refused.
        for path in listed("p/snapshots") {
            runtime.block_on(store.delete(&Path::from(path))).expect("delete");
        }
        let err = reopen().map(|_| ()).expect_err("refused");
        assert!(err.to_string().contains("a segment is missing"), "{err}");
    }

    /// A record's frame.
    fn frame(record: &LogRecord) -> Vec<u8> {
        encode(&mut record.clone()).expect("encode")
    }

    #[test]
    fn a_compacted_segment_covers_the_ones_it_replaced() {
        let p = |a, b| segment(a, b, 1);
        let (chosen, covered) = cover(vec![p(1, 1), p(2, 3), p(1, 3), p(4, 4)], "x", 1).expect("cover");
        assert_eq!(chosen, vec![p(1, 3), p(4, 4)]);
        assert_eq!(covered, vec![p(1, 1).path, p(2, 3).path]);
        assert!(cover(vec![p(1, 2), p(4, 4)], "x", 1).is_err());
    }

    #[test]
    fn runs_of_small_segments_are_picked_and_large_ones_left() {
        let small = |n| segment(n, n, 1000);
        let large = |n| segment(n, n, COMPACT_BYTES / 2);
        let mut segments: Vec<Segment> = (1..=10).map(small).collect();
        assert_eq!(next_run(&segments), None, "too few");
        segments.push(large(11));
        segments.extend((12..=40).map(small));
        // The ten before the large one are too few; the 29 after it are a run.
        assert_eq!(next_run(&segments), Some(11..40));
        // A run stops where it would pass COMPACT_BYTES.
        let sized: Vec<Segment> = (1..=40).map(|n| segment(n, n, COMPACT_BYTES / 5)).collect();
        assert_eq!(next_run(&sized), None, "at most five fit, fewer than a run");
    }

    /// Many small segments are merged into one; a restart reads the same records, and a
    /// compaction cut short (the merged segment written, the old ones not yet deleted) is
    /// finished at the next start.
    #[test]
    fn small_segments_are_merged_without_changing_the_log() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(InMemory::new());
        let count = |store: &Arc<InMemory>| {
            runtime.block_on(async { store.list(Some(&Path::from("p/log"))).collect::<Vec<_>>().await.len() })
        };
        let records: Vec<LogRecord> = (0..40).map(ingest).collect();
        let (log, _) = open(&store).expect("open");
        for record in &records {
            write(&log, std::slice::from_ref(record));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while count(&store) >= 40 - COMPACT_RUN {
            assert!(std::time::Instant::now() < deadline, "never compacted: {} segments", count(&store));
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(log);
        let (log, read) = open(&store).expect("reopen");
        assert_eq!(read, json(&records));
        let records: Vec<LogRecord> = (0..42).map(ingest).collect();
        write(&log, &records[40..41]);
        write(&log, &records[41..]);
        drop(log);
        // A compaction cut short: a merged segment beside the ones it covers.
        let (_, segments) = runtime.block_on(async {
            let listed: Vec<_> = store.list(Some(&Path::from("p/log"))).collect().await;
            let mut all = Vec::new();
            for meta in listed {
                let meta = meta.expect("meta");
                all.push(meta.location);
            }
            all.sort();
            ((), all)
        });
        let last = get(&store, segments[segments.len() - 1].as_ref());
        let before = get(&store, segments[segments.len() - 2].as_ref());
        let name = |p: &Path| p.filename().expect("name").to_owned();
        let first = name(&segments[segments.len() - 2]).split('-').next().expect("first").to_owned();
        let end = name(&segments[segments.len() - 1]).split('-').nth(1).expect("last").to_owned();
        let mut merged = before.to_vec();
        merged.extend_from_slice(&last[HEADER.len()..]);
        runtime
            .block_on(store.put(&Path::from(format!("p/log/{first}-{end}")), PutPayload::from(merged)))
            .expect("put");
        let segments_before = count(&store);
        let (_log, read) = open(&store).expect("reopen");
        assert_eq!(read, json(&records), "the covered segments are skipped");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count(&store) != segments_before - 2 {
            assert!(std::time::Instant::now() < deadline, "the covered segments were not deleted");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
