//! The durable log of a server's state (`aimatrix serve --data-dir DIR`): every change to the
//! catalog (a job installed, a view created, a job cancelled) and every acknowledged push, in
//! the order the controller applied them. A restart replays it, so jobs, views and pushed
//! records survive a crash or a restart.
//!
//! Two places hold it, behind [`DurableLog`]: a local directory ([`FileLog`], described
//! below) and an object store (`--data-url s3://bucket/prefix`: [`ObjectLog`], with the same
//! framing in immutable segments; see its module).
//!
//! # Files
//! `DIR/LOCK` is locked (`flock`, exclusive) by the one server that writes `DIR`; a second one
//! refuses to start. `DIR/log` is the log: a header line `aimatrix-log 2\n` (the format
//! version), then records, each framed as
//!
//! | bytes | what |
//! |---|---|
//! | 4 | payload length `n`, little-endian `u32` |
//! | 4 | CRC-32 of those 4 length bytes, little-endian |
//! | 4 | CRC-32 of the payload, little-endian |
//! | n | the payload: one [`LogRecord`] |
//!
//! (CRC-32 as IEEE 802.3 and zlib's `crc32`.) The length has a checksum of its own, so that a
//! damaged length is told from a record the crash cut short.
//!
//! A payload is the record as JSON, or, for a push or a batch of records, its *bulk* — the
//! push's body, the text of each record — beside the JSON rather than escaped into it:
//!
//! | bytes | what |
//! |---|---|
//! | 1 | `0x01` (a JSON payload starts with `{`) |
//! | 4 | length `j` of the JSON, little-endian `u32` |
//! | j | the record as JSON, its bulk texts empty |
//! | … | each bulk text, in order (the body; each record's text): its length as a little-endian `u32`, then its UTF-8 bytes |
//!
//! (A file source's batch of 1M JSON lines took 447 MB as JSON, its quotes escaped; a version 1
//! log, all JSON, is read and then written on as version 2.)
//!
//! # Durability
//! A record is appended (`write`) under the controller's sequencer lock, so the log's order is
//! the order of application; [`DurableLog::sync`] then makes it durable with `fdatasync`, and
//! only after that is the request answered. Syncs are shared (group commit): one `fdatasync`
//! covers every record appended before it started, so concurrent pushes wait for one
//! `fdatasync` rather than one each.
//!
//! # Bad days
//! - A record cut short, or with a wrong payload checksum, **at the end** of the log, and zero
//!   bytes to the end of the file (space allocated for a write that never reached the disk),
//!   are a write the crash interrupted, never acknowledged: cut off (the log truncated to the
//!   last whole record) and reported at `warn`.
//! - A bad record **followed by good ones** is damage to acknowledged data: the server refuses
//!   to start, naming the file and the byte offset, rather than answer without it.
//! - A failed `write` (disk full, permission denied) is undone (the log truncated to its last
//!   whole record) and the request answered 503; a failed `fdatasync` leaves the log's state
//!   unknown (Linux may have dropped the dirty pages), so every later write is refused with
//!   503 until the server is restarted (which reads what is on disk).
//! - A log written by another format version is refused with a message naming both; a record
//!   whose checksums hold but which is no record (a bug, or another version) is refused when
//!   the replay reaches it, naming its offset.
//!
//! # Restart
//! [`DurableLog::open`] checks the whole log's frames first, then hands out its records one at
//! a time: a replay holds one record in memory, whatever the log's size.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::job::JobConfig;

mod object;
pub use object::{LEASE, ObjectLog, ObjectLogOptions, ObjectRecords, SYNC_TIMEOUT};
pub mod snapshot;

/// The first line of a log: its format and version.
const HEADER: &[u8] = b"aimatrix-log 2\n";

/// The first line of a log of format version 1 (every payload JSON): read, and written on as
/// version 2 (its header rewritten first; the lines are the same length).
const HEADER_V1: &[u8] = b"aimatrix-log 1\n";

/// The first byte of a payload with its bulk beside the JSON (see the module documentation).
const BULK: u8 = 0x01;

/// Bytes of a record's frame before its payload: length, its CRC, the payload's CRC.
const FRAME: usize = 12;

/// A change to the server's state, as logged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    /// A job submitted (its file, paths resolved) and installed as job `id`.
    InstallJob {
        /// The job id it was given.
        id: u64,
        /// The job.
        job: JobConfig,
    },
    /// `CREATE MATERIALIZED VIEW name AS sql`, installed as job `id`.
    CreateView {
        /// The job id it was given.
        id: u64,
        /// The view's name.
        name: String,
        /// Its query.
        sql: String,
    },
    /// Job `id` cancelled (a view dropped), with its events retracted when `retract`.
    CancelJob {
        /// The job.
        id: u64,
        /// Whether what it ingested was retracted.
        retract: bool,
    },
    /// Records pushed to push source `source` of job `job`: the request body as received.
    Ingest {
        /// The job.
        job: u64,
        /// The push source.
        source: String,
        /// The request's `Idempotency-Key`, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The JSON lines (lines over `cluster.max_record_bytes` cut to their first bytes).
        body: String,
        /// The lines (from 1) that were cut, with their lengths in bytes.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        oversized: BTreeMap<u64, u64>,
        /// Its timestamp (ms since the Unix epoch), which a replay gives it again (logs
        /// written before timestamps were logged have none: a replay gives a new one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<amx_dataflows::Time>,
    },
    /// A batch of records a source the server reads (Kafka, object store) read, and where the
    /// source is after it (where it resumes).
    IngestRecords {
        /// The job.
        job: u64,
        /// The source.
        source: String,
        /// The records (`kafka:TOPIC/PARTITION@OFFSET`), as read.
        records: Vec<amx_connectors::Record>,
        /// Where the source is after them.
        position: crate::sources::SourcePosition,
        /// Its timestamp, as [`LogRecord::Ingest`]'s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<amx_dataflows::Time>,
    },
    /// The first record of a log rewritten after snapshot `generation` (see [`snapshot`]):
    /// what came before the cut is in that snapshot.
    Compacted {
        /// The snapshot's generation.
        generation: u64,
    },
}

/// Where an object-store source reads or an object-store sink writes, as its URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    /// `s3://BUCKET/PREFIX` (or `s3a://`): an S3-compatible bucket.
    S3,
    /// `file:///DIR`: a local directory, absolute, as written (percent-decoded, `.` and `..`
    /// segments resolved as URLs resolve them).
    Local(PathBuf),
}

/// Checks that `url` is `s3://BUCKET/…` (or `s3a://`) without a query or credentials, or
/// `file:///DIR` (an absolute local path, no host but `localhost`, no query or fragment), as a
/// job's object-store source or sink takes it; `scheme` says what is wanted when the scheme
/// is another.
///
/// # Errors
/// Which of those it is not, naming the URL.
pub(crate) fn check_store_url(url: &str, scheme: &str) -> Result<StoreUrl, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    if parsed.scheme() == "file" {
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("`{url}`: a file:// URL takes no query or fragment"));
        }
        let dir = parsed
            .to_file_path()
            .map_err(|()| format!("`{url}`: a file:// URL names an absolute path on this host (file:///DIR)"))?;
        return Ok(StoreUrl::Local(dir));
    }
    if !matches!(parsed.scheme(), "s3" | "s3a") {
        return Err(format!("`{url}`: {scheme}"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}`: no bucket"));
    }
    if parsed.query().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}`: no query or credentials in the URL (the AWS_* variables set them)"));
    }
    Ok(StoreUrl::S3)
}

/// An object-store source's or sink's store, opened ([`open_store`]).
pub(crate) struct OpenStore {
    /// The store.
    pub store: Arc<dyn object_store::ObjectStore>,
    /// The prefix the URL names inside it (empty for a local directory: the store is rooted
    /// there).
    pub prefix: object_store::path::Path,
    /// What a key's location is written under, `{root}/{key}`: `s3://BUCKET`, or
    /// `file:///DIR` (the directory's canonical path).
    pub root: String,
    /// The local directory's store (`None`: a bucket), for the file-system paths of its keys.
    pub local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// The local directory, canonical (`None`: a bucket).
    pub dir: Option<PathBuf>,
}

impl OpenStore {
    /// The file-system path of key `key` of a local directory's store (`None`: a bucket, or a
    /// key that names no path).
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        let local = self.local.as_ref()?;
        let key = object_store::path::Path::parse(key).ok()?;
        local.path_to_filesystem(&key).ok()
    }
}

/// Opens the store of `url` (checked by [`check_store_url`]): an S3 client (as [`s3_store`],
/// with `retries`), or a local directory whose canonical path `access` admits. A sink's
/// directory (`create`) is made when missing, once the deepest part of it that exists lies
/// under a root (so nothing is made outside the roots through a symbolic link); a source's
/// must exist.
///
/// # Errors
/// A bad URL; a directory outside `access`'s roots (canonically: a symbolic link out of them
/// counts as outside); a directory that is missing (a source's) or cannot be made or read.
pub(crate) fn open_store(
    url: &str,
    retries: usize,
    access: &amx_connectors::FileAccess,
    create: bool,
) -> Result<OpenStore, String> {
    match check_store_url(url, "an object-store URL is s3://BUCKET/PREFIX or file:///DIR")? {
        StoreUrl::S3 => {
            let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
            let (store, prefix, _) = s3_store(&parsed, retries)?;
            let root = format!("s3://{}", parsed.host_str().unwrap_or_default());
            Ok(OpenStore { store: Arc::new(store), prefix, root, local: None, dir: None })
        }
        StoreUrl::Local(dir) => {
            let roots = if create { "sink roots (files.sink_roots)" } else { "file roots (files.roots)" };
            let outside = || format!("`{url}` is not under the server's {roots}");
            if create && !dir.exists() {
                let existing = dir.ancestors().find(|a| a.exists()).ok_or_else(outside)?;
                if !access.admits(existing) {
                    return Err(outside());
                }
                std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
            }
            let canonical = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if !access.admits(&canonical) {
                return Err(outside());
            }
            if !canonical.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            let local = object_store::local::LocalFileSystem::new_with_prefix(&canonical)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let root = url::Url::from_directory_path(&canonical)
                .map_or_else(|()| format!("file://{}", canonical.display()), |u| u.to_string())
                .trim_end_matches('/')
                .to_owned();
            let local = Arc::new(local);
            Ok(OpenStore {
                store: local.clone(),
                prefix: object_store::path::Path::default(),
                root,
                local: Some(local),
                dir: Some(canonical),
            })
        }
    }
}

/// The S3-compatible store, the prefix and the location (`s3://bucket/prefix`) of an `s3://`
/// (or `s3a://`) URL. The client is configured by the `AWS_*` environment variables
/// (`AmazonS3Builder::from_env`), with `retries` retries within 5 s inside each request, a 2 s
/// connect timeout and a 10 s request timeout.
///
/// # Errors
/// A URL without a bucket, with a query or credentials, an `AWS_ENDPOINT` over http without
/// `AWS_ALLOW_HTTP=true`, or a client that cannot be built.
pub(crate) fn s3_store(
    url: &url::Url,
    retries: usize,
) -> Result<(object_store::aws::AmazonS3, object_store::path::Path, String), String> {
    let bucket = url.host_str().ok_or_else(|| "no bucket".to_owned())?;
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("an s3:// URL takes no query or credentials (the AWS_* variables configure the client)".into());
    }
    let endpoint = std::env::var("AWS_ENDPOINT").or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
    let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if let Ok(endpoint) = endpoint
        && endpoint.starts_with("http://")
        && !allow_http
    {
        return Err(format!("AWS_ENDPOINT is {endpoint}, without TLS: set AWS_ALLOW_HTTP=true to allow it"));
    }
    // reqwest's rustls needs a process-wide crypto provider (ring, which object_store already
    // builds); one installed before is kept.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let retry = object_store::RetryConfig {
        max_retries: retries,
        retry_timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
    use object_store::aws::AmazonS3ConfigKey::Client;
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_retry(retry)
        .with_config(Client(ConnectTimeout), "2s")
        .with_config(Client(Timeout), "10s")
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| e.to_string())?;
    // The URL's path is percent-encoded; object_store encodes a key's parts itself.
    let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
    let prefix = object_store::path::Path::from(path.trim_matches('/'));
    let location = format!("s3://{bucket}/{prefix}");
    Ok((store, prefix, location))
}

/// Why the log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another server holds the data directory.
    #[error("{0} is in use by another aimatrix server (it holds {0}/LOCK); stop it or choose another --data-dir")]
    Locked(String),
    /// A record in the middle of the log is damaged, or a record whose checksums hold is no
    /// record (written by a bug, or another version).
    #[error(
        "{file}: the record at byte {offset} is damaged ({why}); refusing to start without acknowledged data (restore the directory from a backup, or move it aside to start empty)"
    )]
    Corrupt {
        /// The log file.
        file: String,
        /// The damaged record's offset in bytes.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The log was written by another format version.
    #[error("{file} was written in another format ({found:?}); this aimatrix reads {expected:?}")]
    Version {
        /// The log file.
        file: String,
        /// Its first line.
        found: String,
        /// The first line this version writes.
        expected: String,
    },
    /// A snapshot that cannot be restored or written (see [`snapshot`]).
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// Another server holds an object-store log's lease.
    #[error(
        "{location} is in use by another aimatrix server ({holder} holds its lease, {location}/LOCK); stop it or choose another --data-url"
    )]
    LeaseHeld {
        /// The log.
        location: String,
        /// Who holds the lease (`host:pid:nanos`), or how it was lost.
        holder: String,
    },
    /// This server writes no more to its object-store log (it lost the lease, or is
    /// stopping) until a restart.
    #[error(
        "{0}: this server writes no more to the log; restart it (a push that got this answer may or may not be stored: send it again with its Idempotency-Key after the restart)"
    )]
    LeaseLost(String),
    /// An earlier `fdatasync` failed: nothing more is written until a restart.
    #[error("the data directory's log could not be synced to disk ({0}); writes are refused until the server restarts")]
    Failed(String),
    /// The object store is failing (the write is retried); nothing was acknowledged.
    #[error("the log's object store does not take writes now ({0}); try again later")]
    Unavailable(String),
    /// An I/O error, with what was being done.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The durable log of a server, in a local directory ([`FileLog`]) or an object store
/// ([`ObjectLog`]). Cheap to share behind an `Arc`.
#[derive(Debug)]
pub enum DurableLog {
    /// `--data-dir DIR`.
    File(FileLog),
    /// `--data-url s3://bucket/prefix`.
    Object(ObjectLog),
}

/// The records of a [`DurableLog`], oldest first, read one at a time.
#[derive(Debug)]
pub enum LogRecords {
    /// From a [`FileLog`].
    File(Box<FileRecords>),
    /// From an [`ObjectLog`].
    Object(ObjectRecords),
}

impl LogRecords {
    /// The snapshot a restart restores before the records, if the log was compacted (only a
    /// file log is; taken: asked again, `None`).
    pub fn take_snapshot(&mut self) -> Option<snapshot::Snapshot> {
        match self {
            LogRecords::File(r) => r.take_snapshot(),
            LogRecords::Object(r) => r.take_snapshot(),
        }
    }
}

impl Iterator for LogRecords {
    type Item = Result<LogRecord, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            LogRecords::File(r) => r.next(),
            LogRecords::Object(r) => r.next(),
        }
    }
}

impl DurableLog {
    /// Opens the log of data directory `dir` (see [`FileLog::open`]).
    ///
    /// # Errors
    /// As [`FileLog::open`].
    pub fn open(dir: &Path) -> Result<(Arc<DurableLog>, LogRecords), StorageError> {
        let (log, records) = FileLog::open(dir)?;
        Ok((Arc::new(DurableLog::File(log)), LogRecords::File(Box::new(records))))
    }

    /// Opens the log at `url`: `s3://bucket/prefix` (the S3 client configured from the
    /// environment as `object_store`'s `AmazonS3Builder::from_env` reads it:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for an
    /// S3-compatible store, `AWS_ALLOW_HTTP=true` for one without TLS), or `file:///dir` (as
    /// [`DurableLog::open`]). See [`ObjectLog::open`].
    ///
    /// # Errors
    /// [`StorageError::Io`] for a URL of another scheme or a store that cannot be reached; as
    /// [`ObjectLog::open`].
    pub fn open_url(url: &str, options: ObjectLogOptions) -> Result<(Arc<DurableLog>, LogRecords), StorageError> {
        let bad = |why: String| StorageError::Io(format!("opening {url}"), std::io::Error::other(why));
        let parsed =
            url::Url::parse(url).map_err(|e| bad(format!("not a URL ({e}): s3://bucket/prefix or file:///dir")))?;
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| bad("not a local path".into()))?;
                Self::open(&dir)
            }
            "s3" | "s3a" => {
                let (store, prefix, location) = s3_store(&parsed, 3).map_err(bad)?;
                let (log, records) = ObjectLog::open(Arc::new(store), prefix, location, options)?;
                Ok((Arc::new(DurableLog::Object(log)), LogRecords::Object(records)))
            }
            other => Err(bad(format!("a data URL is s3://bucket/prefix or file:///dir, not {other}://"))),
        }
    }

    /// Appends a record (not yet durable: see [`DurableLog::sync`]); returns its sequence
    /// number. The record is borrowed mutably only so that its bulk texts (a push's body, a
    /// batch's record texts) can be taken out while its JSON is written; they are put back.
    ///
    /// # Errors
    /// As [`FileLog::append`] or [`ObjectLog::append`].
    pub fn append(&self, record: &mut LogRecord) -> Result<u64, StorageError> {
        match self {
            DurableLog::File(log) => log.append(record),
            DurableLog::Object(log) => log.append(record),
        }
    }

    /// Waits until record `seq` (and every one before it) is durable (group commit).
    ///
    /// # Errors
    /// As [`FileLog::sync`] or [`ObjectLog::sync`].
    pub async fn sync(&self, seq: u64) -> Result<(), StorageError> {
        match self {
            DurableLog::File(log) => log.sync(seq).await,
            DurableLog::Object(log) => log.sync(seq).await,
        }
    }

    /// Makes record `seq` durable, blocking the calling thread.
    ///
    /// # Errors
    /// As [`FileLog::sync_now`] or [`ObjectLog::sync_now`].
    pub fn sync_now(&self, seq: u64) -> Result<(), StorageError> {
        match self {
            DurableLog::File(log) => log.sync_now(seq),
            DurableLog::Object(log) => log.sync_now(seq),
        }
    }

    /// Why the object store is failing to take the log's writes, while it is (never for a
    /// file log, whose failures are answered at once).
    pub fn failing(&self) -> Option<String> {
        match self {
            DurableLog::File(_) => None,
            DurableLog::Object(log) => log.failing(),
        }
    }

    /// Stops writing at a clean stop: an object-store log gives its lease back (a file log's
    /// lock goes with the process).
    pub fn release(&self) {
        if let DurableLog::Object(log) = self {
            log.release();
        }
    }

    /// The file log, when the log is one.
    pub fn file(&self) -> Option<&FileLog> {
        match self {
            DurableLog::File(log) => Some(log),
            DurableLog::Object(_) => None,
        }
    }

    /// Where a snapshot of everything appended so far cuts the log: the generation of the
    /// snapshot in effect (0: none) and a file log's length in bytes, or an object-store log's
    /// last sequence number (see [`snapshot::Manifest`]). Taken under the controller's
    /// sequencer lock, it is also the end of every change the controller has applied.
    pub fn cut(&self) -> (u64, u64) {
        match self {
            DurableLog::File(log) => log.cut(),
            DurableLog::Object(log) => log.cut(),
        }
    }

    /// The generation the next snapshot takes: past every snapshot there is (damaged or unused
    /// ones included), so that none is written over.
    pub fn next_generation(&self) -> u64 {
        match self {
            DurableLog::File(log) => lock(&log.state).next_generation,
            DurableLog::Object(log) => log.next_generation(),
        }
    }

    /// The sequence number of the last record appended.
    pub fn appended(&self) -> u64 {
        match self {
            DurableLog::File(log) => lock(&log.state).appended,
            DurableLog::Object(log) => log.cut().1,
        }
    }

    /// Bytes the log holds after the snapshot in effect.
    pub fn len(&self) -> u64 {
        match self {
            DurableLog::File(log) => log.len(),
            DurableLog::Object(log) => log.len(),
        }
    }

    /// Whether the log holds no record after the snapshot in effect.
    pub fn is_empty(&self) -> bool {
        match self {
            DurableLog::File(log) => log.is_empty(),
            DurableLog::Object(log) => log.is_empty(),
        }
    }

    /// Writes snapshot `manifest` (its cut from [`DurableLog::cut`]) with `contents`, then
    /// cuts the log after it (a file log rewritten to what follows the cut; an object-store
    /// log's covered segments deleted) and removes older snapshots (see [`snapshot`]).
    /// Blocks. Returns the snapshot's bytes and the log's bytes after.
    ///
    /// # Errors
    /// A write that fails (nothing is lost: the log stays as it was, or the snapshot stands
    /// for what was cut).
    pub fn compact(
        &self,
        manifest: &mut snapshot::Manifest,
        contents: Vec<snapshot::Contents>,
    ) -> Result<(u64, u64), String> {
        let generation = manifest.generation;
        match self {
            DurableLog::File(log) => {
                let dir = log.path().parent().map(Path::to_path_buf).unwrap_or_default();
                snapshot::write(&dir, manifest, contents)?;
                {
                    let mut state = lock(&log.state);
                    state.next_generation = state.next_generation.max(generation + 1);
                }
                let bytes = manifest.files.iter().map(|f| f.bytes).sum();
                match log.rewrite(manifest.cut_generation, manifest.cut_offset, generation) {
                    Ok(after) => {
                        snapshot::remove_older(&dir, generation);
                        Ok((bytes, after))
                    }
                    Err(e) => {
                        // The log still holds everything: the snapshot is not needed (and
                        // not left to pile up while the disk refuses).
                        snapshot::remove(&dir, generation);
                        Err(e.to_string())
                    }
                }
            }
            DurableLog::Object(log) => {
                log.snapshots().write(manifest, contents)?;
                log.snapshot_written(generation);
                let bytes = manifest.files.iter().map(|f| f.bytes).sum();
                let after = log.cut_after_snapshot(manifest.cut_offset, generation).map_err(|e| e.to_string())?;
                Ok((bytes, after))
            }
        }
    }

    /// Where the log is (a file path, or `s3://bucket/prefix`).
    pub fn location(&self) -> String {
        match self {
            DurableLog::File(log) => log.path().display().to_string(),
            DurableLog::Object(log) => log.location().to_owned(),
        }
    }
}

/// The durable log in a local data directory (see the module documentation).
#[derive(Debug)]
pub struct FileLog {
    path: PathBuf,
    state: Mutex<LogState>,
    /// Wakes [`DurableLog::sync`] waiters when a sync ends.
    synced: tokio::sync::Notify,
    /// Holds `DIR/LOCK` locked while the log lives.
    _lock: File,
}

#[derive(Debug)]
struct LogState {
    file: File,
    /// Bytes of whole records (and the header): where the next record goes.
    len: u64,
    /// Records appended since the log was opened (the next one's sequence number is
    /// `appended + 1`).
    appended: u64,
    /// Records known durable.
    durable: u64,
    /// A sync is running.
    syncing: bool,
    /// Why the log no longer takes writes.
    failed: Option<String>,
    /// The log's generation: 0 until it is first rewritten after a snapshot, then the
    /// snapshot's ([`LogRecord::Compacted`]).
    generation: u64,
    /// Where its first record after the header and [`LogRecord::Compacted`] is.
    start: u64,
    /// The generation the next snapshot takes (past every one in the directory).
    next_generation: u64,
}

fn lock(m: &Mutex<LogState>) -> MutexGuard<'_, LogState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileLog {
    /// Opens (creating it if needed) the log of data directory `dir`: locks the directory,
    /// checks every record's frame and checksums, and cuts off an interrupted last one.
    /// Returns the log and its records, oldest first, read one at a time (a restart holds
    /// one record in memory, not the log).
    ///
    /// # Errors
    /// [`StorageError::Locked`] when another server holds `dir`; [`StorageError::Corrupt`],
    /// [`StorageError::Version`]; [`StorageError::Io`] when `dir` cannot be created or read.
    pub fn open(dir: &Path) -> Result<(FileLog, FileRecords), StorageError> {
        let io = |what: String| move |e| StorageError::Io(what, e);
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::Locked(dir.display().to_string())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(format!("locking {}", lock_path.display()))(e)),
        }
        let path = dir.join("log");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let name = path.display().to_string();
        let size = file.metadata().map_err(io(format!("reading {}", path.display())))?.len();
        let len = scan(&mut file, size, &name).map_err(|e| match e {
            Scan::Io(e) => StorageError::Io(format!("reading {name}"), e),
            Scan::Bad(e) => e,
        })?;
        if len < size {
            tracing::warn!(
                log = %name,
                at = len,
                cut = size - len,
                "the log ends in a record a crash interrupted (never acknowledged): cut off"
            );
            file.set_len(len).map_err(io(format!("truncating {}", path.display())))?;
            file.sync_all().map_err(io(format!("syncing {}", path.display())))?;
        }
        // A version 1 log is written on as version 2: its header first (the same length, in
        // one write, synced before any record of version 2 is appended).
        if len > 0 {
            let mut head = vec![0u8; HEADER_V1.len()];
            file.seek(SeekFrom::Start(0)).map_err(io(format!("seeking in {}", path.display())))?;
            file.read_exact(&mut head).map_err(io(format!("reading {}", path.display())))?;
            if head == HEADER_V1 {
                file.seek(SeekFrom::Start(0)).map_err(io(format!("seeking in {}", path.display())))?;
                file.write_all(HEADER).map_err(io(format!("writing {}", path.display())))?;
                file.sync_all().map_err(io(format!("syncing {}", path.display())))?;
                tracing::info!(log = %name, "a log of format version 1: written on as version 2");
            }
        }
        // A new log (or one whose header a crash cut short): the header first.
        let len = if len == 0 {
            file.seek(SeekFrom::Start(0)).map_err(io(format!("seeking in {}", path.display())))?;
            file.write_all(HEADER).map_err(io(format!("writing {}", path.display())))?;
            file.sync_all().map_err(io(format!("syncing {}", path.display())))?;
            // The new file's name is durable too.
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", dir.display())))?;
            HEADER.len() as u64
        } else {
            len
        };
        file.seek(SeekFrom::Start(len)).map_err(io(format!("seeking in {}", path.display())))?;
        // A handle of its own: reading moves its offset, not the writer's.
        let mut reader = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        reader.seek(SeekFrom::Start(HEADER.len() as u64)).map_err(io(format!("seeking in {}", path.display())))?;
        let mut records = FileRecords {
            reader: std::io::BufReader::with_capacity(1 << 20, reader),
            at: HEADER.len() as u64,
            end: len,
            file: name,
            count: 0,
            snapshot: None,
        };
        // A log rewritten after a snapshot starts with its generation; the snapshot a start
        // restores decides where the replay begins (see [`snapshot`]).
        let (generation, after_marker) = first_generation(&path, len)?;
        let snapshot = snapshot::choose(dir, generation).map_err(StorageError::Snapshot)?;
        let start = match &snapshot {
            Some(s) if s.manifest.generation == generation => after_marker,
            Some(s) => {
                let cut = s.manifest.cut_offset;
                if cut < after_marker || cut > len {
                    return Err(StorageError::Snapshot(format!(
                        "{}: snapshot {} was cut at byte {cut} of the log, which has {len}",
                        s.location(),
                        s.manifest.generation
                    )));
                }
                cut
            }
            None => after_marker,
        };
        if start > HEADER.len() as u64 {
            records.reader.seek(SeekFrom::Start(start)).map_err(io(format!("seeking in {}", path.display())))?;
            records.at = start;
        }
        records.snapshot = snapshot;
        let state = LogState {
            file,
            len,
            appended: 0,
            durable: 0,
            syncing: false,
            failed: None,
            generation,
            start: after_marker,
            next_generation: snapshot::next_generation(dir).map_err(StorageError::Snapshot)?,
        };
        let log = FileLog { path, state: Mutex::new(state), synced: tokio::sync::Notify::new(), _lock: lock_file };
        // A snapshot cut from this log whose rewrite a crash (or a failing disk) interrupted:
        // the rewrite is done now (the records are still read from the old file, which this
        // reader holds open), so that the log follows its snapshot again.
        if let Some(s) = &records.snapshot
            && s.manifest.generation != generation
        {
            let (cut, to) = (s.manifest.cut_offset, s.manifest.generation);
            match log.rewrite(generation, cut, to) {
                Ok(_) => snapshot::remove_older(dir, to),
                Err(e) => {
                    tracing::warn!(log = %log.path.display(), error = %e, "rewriting the log after its snapshot failed; tried again at the next compaction")
                }
            }
        }
        Ok((log, records))
    }

    /// Appends a record (written, not yet durable: see [`DurableLog::sync`]); returns its
    /// sequence number (from 1). The record comes back as it was (see [`DurableLog::append`]).
    ///
    /// # Errors
    /// [`StorageError::Io`] when the write fails (the log is cut back to its last whole
    /// record); [`StorageError::Failed`] after a failed sync.
    pub fn append(&self, record: &mut LogRecord) -> Result<u64, StorageError> {
        let frame = encode(record)
            .map_err(|e| StorageError::Io(format!("writing {}", self.path.display()), std::io::Error::other(e)))?;
        let mut state = lock(&self.state);
        if let Some(why) = &state.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        if let Err(e) = state.file.write_all(&frame) {
            // Undo a partial write, so that the next record follows a whole one.
            let len = state.len;
            let undone = state.file.set_len(len).and_then(|()| state.file.seek(SeekFrom::Start(len)).map(|_| ()));
            if let Err(undo) = undone {
                state.failed = Some(format!("{e}; then, cutting the log back: {undo}"));
            }
            return Err(StorageError::Io(format!("writing {}", self.path.display()), e));
        }
        state.len += frame.len() as u64;
        state.appended += 1;
        Ok(state.appended)
    }

    /// Waits until record `seq` (and every one before it) is durable: one `fdatasync` serves
    /// every waiter whose record was appended before it started.
    ///
    /// # Errors
    /// [`StorageError::Failed`] when a sync fails (then every later one fails too).
    pub async fn sync(&self, seq: u64) -> Result<(), StorageError> {
        loop {
            let notified = self.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (file, target) = {
                let mut state = lock(&self.state);
                if let Some(why) = &state.failed {
                    return Err(StorageError::Failed(why.clone()));
                }
                if state.durable >= seq {
                    return Ok(());
                }
                if state.syncing {
                    (None, 0)
                } else {
                    state.syncing = true;
                    let file = state.file.try_clone();
                    (Some(file), state.appended)
                }
            };
            let Some(file) = file else {
                notified.await;
                continue;
            };
            let result = match file {
                Ok(file) => tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
                Err(e) => Err(e),
            };
            let mut state = lock(&self.state);
            state.syncing = false;
            match result {
                Ok(()) => state.durable = state.durable.max(target),
                Err(e) => {
                    tracing::error!(log = %self.path.display(), error = %e, "syncing the log failed; writes are refused until a restart");
                    state.failed = Some(e.to_string());
                }
            }
            drop(state);
            self.synced.notify_waiters();
        }
    }

    /// Makes record `seq` durable now, in the calling thread (for changes to the catalog,
    /// which are rare: pushes share syncs through [`DurableLog::sync`]).
    ///
    /// # Errors
    /// [`StorageError::Failed`] when the sync fails (then every later one fails too).
    pub fn sync_now(&self, seq: u64) -> Result<(), StorageError> {
        let (file, target) = {
            let state = lock(&self.state);
            if let Some(why) = &state.failed {
                return Err(StorageError::Failed(why.clone()));
            }
            if state.durable >= seq {
                return Ok(());
            }
            (state.file.try_clone(), state.appended)
        };
        let result = file.and_then(|f| f.sync_data());
        let mut state = lock(&self.state);
        match result {
            Ok(()) => {
                state.durable = state.durable.max(target);
                Ok(())
            }
            Err(e) => {
                state.failed = Some(e.to_string());
                Err(StorageError::Failed(e.to_string()))
            }
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's generation and its length in bytes (of whole records): where a snapshot of
    /// everything appended so far cuts it. Taken under the controller's sequencer lock, it
    /// is also the end of every change the controller has applied.
    pub fn cut(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.generation, state.len)
    }

    /// The log's size now (bytes).
    pub fn len(&self) -> u64 {
        lock(&self.state).len
    }

    /// Whether the log holds no record (after the mark of the snapshot it follows).
    pub fn is_empty(&self) -> bool {
        let state = lock(&self.state);
        state.len <= state.start
    }

    /// Rewrites the log to what follows byte `cut` (a record's start, from [`FileLog::cut`]
    /// of the same generation), after snapshot `generation` (written and synced) that stands
    /// for what precedes it: a new file of the header, [`LogRecord::Compacted`] and the
    /// records after the cut (the ones appended meanwhile too: the last of them are copied
    /// under the lock that appends wait on), synced and renamed over the log, the directory
    /// synced. Appends go on in the new file; sequence numbers and syncs are unchanged (the
    /// new file holds, synced, every record appended before the rename). Returns the bytes
    /// the log has after it.
    ///
    /// # Errors
    /// A read or write that fails (the old log stays in place, whole: nothing is lost, and the
    /// next compaction tries again); the log's generation is not the one cut.
    pub fn rewrite(&self, cut_generation: u64, cut: u64, generation: u64) -> Result<u64, StorageError> {
        let io = |what: String| move |e| StorageError::Io(what, e);
        let staged = self.path.with_extension("new");
        let mut out = File::create(&staged).map_err(io(format!("creating {}", staged.display())))?;
        let mut marker = LogRecord::Compacted { generation };
        let frame = encode(&mut marker).map_err(|e| StorageError::Io("encoding".into(), std::io::Error::other(e)))?;
        out.write_all(HEADER)
            .and_then(|()| out.write_all(&frame))
            .map_err(io(format!("writing {}", staged.display())))?;
        let mut source = File::open(&self.path).map_err(io(format!("opening {}", self.path.display())))?;
        // What was appended up to now, without the lock (the records before `len` are whole
        // and never change)…
        let copied = lock(&self.state).len;
        copy_range(&mut source, cut, copied, &mut out).map_err(io(format!("copying {}", self.path.display())))?;
        // …then the rest under it, and the swap.
        let mut state = lock(&self.state);
        if state.generation != cut_generation {
            let _ = std::fs::remove_file(&staged);
            return Err(StorageError::Snapshot(format!(
                "the log is of generation {}, not {cut_generation}: not rewritten",
                state.generation
            )));
        }
        let end = state.len;
        let result = copy_range(&mut source, copied, end, &mut out)
            .and_then(|()| out.sync_all())
            .and_then(|()| std::fs::rename(&staged, &self.path))
            .and_then(|()| self.path.parent().map_or(Ok(()), |dir| File::open(dir).and_then(|d| d.sync_all())));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&staged);
            return Err(StorageError::Io(format!("rewriting {}", self.path.display()), e));
        }
        let len = (HEADER.len() + frame.len()) as u64 + (end - cut);
        out.seek(SeekFrom::Start(len)).map_err(io(format!("seeking in {}", self.path.display())))?;
        state.file = out;
        state.len = len;
        state.start = (HEADER.len() + frame.len()) as u64;
        state.generation = generation;
        // Every record appended so far is in the synced new file.
        state.durable = state.appended;
        Ok(len)
    }
}

/// Copies bytes `from..to` of `source` to the end of `out`.
fn copy_range(source: &mut File, from: u64, to: u64, out: &mut File) -> std::io::Result<()> {
    if to <= from {
        return Ok(());
    }
    source.seek(SeekFrom::Start(from))?;
    let copied = std::io::copy(&mut (&*source).take(to - from), out)?;
    if copied != to - from {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the log ended early"));
    }
    Ok(())
}

/// The generation of the log at `path` (whose whole records end at `len`) and the offset of
/// its first record after [`LogRecord::Compacted`]: `(0, header)` for a log never rewritten.
fn first_generation(path: &Path, len: u64) -> Result<(u64, u64), StorageError> {
    let start = HEADER.len() as u64;
    if len <= start {
        return Ok((0, start));
    }
    let io = |e| StorageError::Io(format!("reading {}", path.display()), e);
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut frame = [0u8; FRAME];
    file.read_exact(&mut frame).map_err(io)?;
    let n = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    // A marker is a few dozen bytes of JSON; anything longer is another record.
    if n > 256 {
        return Ok((0, start));
    }
    let mut payload = vec![0; n];
    file.read_exact(&mut payload).map_err(io)?;
    match decode(&payload) {
        Ok(LogRecord::Compacted { generation }) => Ok((generation, start + (FRAME + n) as u64)),
        _ => Ok((0, start)),
    }
}

/// The records of a file log, oldest first, read one at a time ([`FileLog::open`] has checked
/// their frames and checksums).
#[derive(Debug)]
pub struct FileRecords {
    reader: std::io::BufReader<File>,
    /// The offset of the next record, and the end of the whole ones.
    at: u64,
    end: u64,
    file: String,
    /// Records read so far.
    count: u64,
    /// The snapshot to restore before the records (see [`snapshot`]).
    snapshot: Option<snapshot::Snapshot>,
}

impl FileRecords {
    /// The snapshot a restart restores before these records, if the log was compacted
    /// (taken: asked again, `None`).
    pub fn take_snapshot(&mut self) -> Option<snapshot::Snapshot> {
        self.snapshot.take()
    }
}

impl Iterator for FileRecords {
    /// A record, or [`StorageError::Corrupt`] for one whose payload is not a record (checksum
    /// and all: written by a bug, or another version), [`StorageError::Io`] for a failed read.
    type Item = Result<LogRecord, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let offset = self.at;
        let mut frame = [0u8; FRAME];
        let read = self.reader.read_exact(&mut frame).and_then(|()| {
            let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            let mut payload = vec![0; len];
            self.reader.read_exact(&mut payload).map(|()| payload)
        });
        let payload = match read {
            Ok(payload) => payload,
            Err(e) => {
                self.at = self.end;
                return Some(Err(StorageError::Io(format!("reading {}", self.file), e)));
            }
        };
        self.at += (FRAME + payload.len()) as u64;
        self.count += 1;
        Some(decode(&payload).map_err(|why| {
            self.at = self.end;
            StorageError::Corrupt { file: self.file.clone(), offset, why }
        }))
    }
}

/// The bulk texts of a record: the body of a push, the text of each record of a batch.
fn bulk(record: &mut LogRecord) -> Vec<&mut String> {
    match record {
        LogRecord::Ingest { body, .. } => vec![body],
        LogRecord::IngestRecords { records, .. } => records.iter_mut().map(|r| &mut r.text).collect(),
        _ => Vec::new(),
    }
}

/// A record's frame (see the module documentation). The record's bulk texts are taken out
/// while its JSON is written, and put back.
///
/// # Errors
/// A payload or a text over 4 GiB.
fn encode(record: &mut LogRecord) -> Result<Vec<u8>, String> {
    let too_long = |n: usize| format!("a record of {n} bytes (at most 4 GiB)");
    let texts: Vec<String> = bulk(record).into_iter().map(std::mem::take).collect();
    let json = serde_json::to_vec(&*record).expect("a log record serializes");
    for (slot, text) in bulk(record).into_iter().zip(texts) {
        *slot = text;
    }
    let texts = bulk(record);
    let mut payload = Vec::new();
    if texts.is_empty() {
        payload = json;
    } else {
        let size = 5 + json.len() + texts.iter().map(|t| 4 + t.len()).sum::<usize>();
        payload.reserve_exact(size);
        payload.push(BULK);
        payload.extend_from_slice(&u32::try_from(json.len()).map_err(|_| too_long(size))?.to_le_bytes());
        payload.extend_from_slice(&json);
        for text in texts {
            payload.extend_from_slice(&u32::try_from(text.len()).map_err(|_| too_long(size))?.to_le_bytes());
            payload.extend_from_slice(text.as_bytes());
        }
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_long(payload.len()))?;
    let mut frame = Vec::with_capacity(payload.len() + FRAME);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// A payload's record (its checksum already checked).
///
/// # Errors
/// Why it is no record (`not a record: …`): written by a bug, or another version.
fn decode(payload: &[u8]) -> Result<LogRecord, String> {
    let bad = |why: &str| format!("not a record: {why}");
    if payload.first() != Some(&BULK) {
        return serde_json::from_slice(payload).map_err(|e| bad(&e.to_string()));
    }
    let mut rest = &payload[1..];
    let mut take = |n: usize| -> Result<&[u8], String> {
        let (taken, left) = rest.split_at_checked(n).ok_or_else(|| bad("a bulk payload cut short"))?;
        rest = left;
        Ok(taken)
    };
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let json_len = word(take(4)?);
    let mut record: LogRecord = serde_json::from_slice(take(json_len)?).map_err(|e| bad(&e.to_string()))?;
    let slots = bulk(&mut record);
    let wanted = slots.len();
    for slot in slots {
        let len = word(take(4)?);
        *slot = String::from_utf8(take(len)?.to_vec()).map_err(|_| bad("a bulk text that is not UTF-8"))?;
    }
    if wanted == 0 || !rest.is_empty() {
        return Err(bad("bulk texts that do not fit the record"));
    }
    Ok(record)
}

/// Why [`scan`] stopped: a read failed, or the log is bad.
enum Scan {
    Io(std::io::Error),
    Bad(StorageError),
}

impl From<std::io::Error> for Scan {
    fn from(e: std::io::Error) -> Self {
        Scan::Io(e)
    }
}

/// Checks a log of `size` bytes from its start, one record at a time: its header, each
/// frame's length checksum and payload checksum. Returns the length of the whole records
/// (less than `size` when the last is cut short, or zeros fill the end: interrupted writes;
/// 0 for a new log or one whose header is cut short).
fn scan(file: &mut File, size: u64, name: &str) -> Result<u64, Scan> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &*file);
    let mut head = vec![0u8; HEADER.len().min(size as usize)];
    reader.read_exact(&mut head)?;
    if head != HEADER && head != HEADER_V1 {
        // A new log, or a header cut short by a crash while the log was created (by this
        // version or the one before).
        if (size as usize) < HEADER.len() && (HEADER.starts_with(&head) || HEADER_V1.starts_with(&head)) {
            return Ok(0);
        }
        let found = head.split(|b| *b == b'\n').next().unwrap_or_default();
        return Err(Scan::Bad(StorageError::Version {
            file: name.to_owned(),
            found: String::from_utf8_lossy(found)
                .chars()
                .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
                .collect(),
            expected: String::from_utf8_lossy(&HEADER[..HEADER.len() - 1]).into_owned(),
        }));
    }
    let mut at = HEADER.len() as u64;
    let damaged = |at: u64, why: &str| {
        Scan::Bad(StorageError::Corrupt {
            file: name.to_owned(),
            offset: at,
            why: format!("{why}, and records follow it"),
        })
    };
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let mut payload = Vec::new();
    while at < size {
        let rest = size - at;
        let mut frame = [0u8; FRAME];
        let head = &mut frame[..rest.min(FRAME as u64) as usize];
        reader.read_exact(head)?;
        if head.iter().all(|b| *b == 0) {
            // Zeros to the end: space allocated for a write that never reached the disk.
            if zeros_to_end(&mut reader)? {
                return Ok(at);
            }
            return Err(damaged(at, "its length field does not match its checksum"));
        }
        if rest < FRAME as u64 {
            // A frame cut short in its header.
            return Ok(at);
        }
        let (len, len_crc, crc) = (word(&frame[..4]), word(&frame[4..8]), word(&frame[8..]));
        if crc32fast::hash(&len.to_le_bytes()) != len_crc {
            return Err(damaged(at, "its length field does not match its checksum"));
        }
        let end = at + FRAME as u64 + u64::from(len);
        if end > size {
            // The length is right: the payload was cut short.
            return Ok(at);
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            if end == size {
                return Ok(at);
            }
            return Err(damaged(at, "checksum mismatch"));
        }
        at = end;
    }
    Ok(at)
}

/// Whether what is left to read is all zeros.
fn zeros_to_end(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buf = [0u8; 1 << 16];
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|b| *b != 0) => return Ok(false),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push of one record, with key `k{n}`.
    pub(super) fn ingest(n: usize) -> LogRecord {
        LogRecord::Ingest {
            job: 1,
            source: "in".into(),
            key: Some(format!("k{n}")),
            body: format!("{{\"n\":{n}}}\n"),
            oversized: BTreeMap::new(),
            at: Some(n as u64 + 1),
        }
    }

    fn json(records: &[LogRecord]) -> serde_json::Value {
        serde_json::to_value(records).expect("JSON")
    }

    /// Opens the log in `dir` and reads all its records.
    fn read_all(dir: &Path) -> Result<(Arc<DurableLog>, Vec<LogRecord>), StorageError> {
        let (log, records) = DurableLog::open(dir)?;
        Ok((log, records.collect::<Result<Vec<_>, _>>()?))
    }

    fn append_all(dir: &Path, records: &[LogRecord]) {
        let (log, _) = read_all(dir).expect("open");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for record in records {
            let seq = log.append(&mut record.clone()).expect("append");
            runtime.block_on(log.sync(seq)).expect("sync");
        }
    }

    /// A log in `dir` of three records: them, the log's path and its bytes.
    fn three_records(dir: &Path) -> (Vec<LogRecord>, PathBuf, Vec<u8>) {
        let records: Vec<LogRecord> = (0..3).map(ingest).collect();
        append_all(dir, &records);
        let path = dir.join("log");
        let whole = std::fs::read(&path).expect("read");
        (records, path, whole)
    }

    #[test]
    fn records_come_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records: Vec<LogRecord> = (0..5).map(ingest).collect();
        append_all(dir.path(), &records[..3]);
        append_all(dir.path(), &records[3..]);
        let (_, read) = read_all(dir.path()).expect("open");
        assert_eq!(json(&read), json(&records));
    }

    /// A batch whose texts need escaping in JSON (quotes, backslashes, a newline, non-ASCII),
    /// with an empty text, an error and metadata.
    fn batch() -> LogRecord {
        let mut kafka = amx_connectors::Record::new("kafka:t/0@7", "{\"k\": \"v \\\" \u{e9}\"}\nsecond line");
        kafka.metadata = Some(Box::new(serde_json::json!({"topic": "t", "partition": 0, "offset": 7})));
        LogRecord::IngestRecords {
            job: 2,
            source: "topic".into(),
            records: vec![
                kafka,
                amx_connectors::Record::new("kafka:t/0@8", ""),
                amx_connectors::Record::new("kafka:t/0@9", "\u{fffd}x").with_error("invalid UTF-8 at byte 0"),
            ],
            position: crate::sources::SourcePosition::Kafka { offsets: vec![(0, 10)] },
            at: Some(42),
        }
    }

    #[test]
    fn bulk_texts_travel_beside_the_json_unescaped() {
        for record in [batch(), ingest(7)] {
            let mut encoded = record.clone();
            let frame = encode(&mut encoded).expect("encode");
            assert_eq!(json(&[encoded]), json(std::slice::from_ref(&record)), "put back after encoding");
            let payload = &frame[FRAME..];
            assert_eq!(payload[0], BULK);
            let texts: Vec<String> = match &record {
                LogRecord::Ingest { body, .. } => vec![body.clone()],
                LogRecord::IngestRecords { records, .. } => records.iter().map(|r| r.text.clone()).collect(),
                _ => unreachable!(),
            };
            for text in texts.iter().filter(|t| !t.is_empty()) {
                assert!(payload.windows(text.len()).any(|w| w == text.as_bytes()), "{text:?} as it is");
            }
            let decoded = decode(payload).expect("decode");
            assert_eq!(json(&[decoded]), json(&[record]));
            // Cut short anywhere in the bulk, or with a byte too many: not a record.
            for cut in [payload.len() - 1, payload.len() - 3, 6] {
                let err = decode(&payload[..cut]).expect_err("cut");
                assert!(err.starts_with("not a record"), "{err}");
            }
            let err = decode(&[payload, b"x"].concat()).expect_err("longer");
            assert!(err.starts_with("not a record"), "{err}");
        }
        // Other records stay JSON.
        let mut cancel = LogRecord::CancelJob { id: 3, retract: true };
        let frame = encode(&mut cancel).expect("encode");
        assert_eq!(&frame[FRAME..], br#"{"kind":"cancel_job","id":3,"retract":true}"#);
    }

    /// A log of format version 1 (every payload JSON, as this server wrote before) is read,
    /// and written on as version 2.
    #[test]
    fn a_version_1_log_is_read_and_written_on_as_version_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old: Vec<LogRecord> = vec![ingest(1), batch()];
        let mut bytes = HEADER_V1.to_vec();
        for record in &old {
            let payload = serde_json::to_vec(record).expect("JSON");
            let len = (payload.len() as u32).to_le_bytes();
            bytes.extend_from_slice(&len);
            bytes.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        std::fs::write(dir.path().join("log"), &bytes).expect("write");
        append_all(dir.path(), &[ingest(2)]);
        let written = std::fs::read(dir.path().join("log")).expect("read");
        assert!(written.starts_with(HEADER), "the header says version 2 now");
        assert_eq!(&written[HEADER.len()..bytes.len()], &bytes[HEADER.len()..], "the old records as they were");
        let (_, read) = read_all(dir.path()).expect("open");
        assert_eq!(json(&read), json(&[ingest(1), batch(), ingest(2)]));
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_first, _) = DurableLog::open(dir.path()).expect("open");
        let second = DurableLog::open(dir.path()).expect_err("locked");
        assert!(matches!(second, StorageError::Locked(_)), "{second}");
    }

    /// A crash in the middle of a record's write leaves part of it: each cut is dropped, the
    /// records before it kept, and the log takes new records after them.
    #[test]
    fn an_interrupted_last_record_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (records, path, whole) = three_records(dir.path());
        let last = {
            // Where the third record starts.
            let mut at = HEADER.len();
            for _ in 0..2 {
                at += FRAME + u32::from_le_bytes(whole[at..at + 4].try_into().expect("4")) as usize;
            }
            at
        };
        for cut in [last + 1, last + 5, last + 9, last + 13, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).expect("write");
            let (log, read) = read_all(dir.path()).expect("open");
            assert_eq!(json(&read), json(&records[..2]), "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).expect("meta").len(), last as u64);
            drop(log);
        }
        // Flipped bytes in the last record: a torn write too.
        let mut flipped = whole.clone();
        flipped[whole.len() - 2] ^= 0xff;
        std::fs::write(&path, &flipped).expect("write");
        let (log, read) = read_all(dir.path()).expect("open");
        assert_eq!(json(&read), json(&records[..2]));
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let seq = log.append(&mut records[2].clone()).expect("append");
        runtime.block_on(log.sync(seq)).expect("sync");
        drop(log);
        assert_eq!(json(&read_all(dir.path()).expect("open").1), json(&records));
    }

    /// Damage before the last record is acknowledged data lost: refused, naming where.
    #[test]
    fn damage_in_the_middle_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        append_all(dir.path(), &(0..3).map(ingest).collect::<Vec<_>>());
        let path = dir.path().join("log");
        let mut bytes = std::fs::read(&path).expect("read");
        let first_payload = HEADER.len() + FRAME;
        bytes[first_payload + 3] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write");
        let err = DurableLog::open(dir.path()).expect_err("refused");
        let StorageError::Corrupt { offset, .. } = &err else { panic!("{err}") };
        assert_eq!(*offset, HEADER.len() as u64);
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    /// A damaged length in the middle is damage, not a cut-short last record; zeros to the
    /// end of the file are an interrupted write.
    #[test]
    fn damaged_lengths_are_refused_and_zero_tails_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (records, path, whole) = three_records(dir.path());
        for length in [u32::MAX - 15, 1 << 20] {
            let mut bytes = whole.clone();
            bytes[HEADER.len()..HEADER.len() + 4].copy_from_slice(&length.to_le_bytes());
            std::fs::write(&path, &bytes).expect("write");
            let err = DurableLog::open(dir.path()).expect_err("refused");
            assert!(matches!(err, StorageError::Corrupt { offset, .. } if offset == HEADER.len() as u64), "{err}");
        }
        let mut zeros = whole.clone();
        zeros.extend(std::iter::repeat_n(0u8, 4096));
        std::fs::write(&path, &zeros).expect("write");
        let (_, read) = read_all(dir.path()).expect("open");
        assert_eq!(json(&read), json(&records));
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), whole.len() as u64);
    }

    /// A header cut short (a crash while the log was created) starts an empty log, which
    /// then takes records and reads back like any other.
    #[test]
    fn a_header_cut_short_starts_an_empty_log() {
        // Cut short while this version created it, or while the one before did.
        for head in [&HEADER[..5], &HEADER_V1[..HEADER_V1.len() - 1]] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("log"), head).expect("write");
            let records: Vec<LogRecord> = (0..2).map(ingest).collect();
            append_all(dir.path(), &records);
            let (_, read) = read_all(dir.path()).expect("open");
            assert_eq!(json(&read), json(&records));
            assert!(std::fs::read(dir.path().join("log")).expect("read").starts_with(HEADER));
        }
    }

    /// A payload whose checksums hold but which is no record (a bug, or another version) is
    /// refused when it is read, naming where it is.
    #[test]
    fn a_payload_that_is_no_record_is_refused_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        append_all(dir.path(), &[ingest(0)]);
        let path = dir.path().join("log");
        let at = std::fs::metadata(&path).expect("meta").len();
        let payload = br#"{"kind":"compacted"}"#;
        let len = payload.len() as u32;
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        std::fs::OpenOptions::new().append(true).open(&path).expect("open").write_all(&frame).expect("write");
        let (_, mut records) = DurableLog::open(dir.path()).expect("open");
        assert!(records.next().expect("first").is_ok());
        let err = records.next().expect("second").expect_err("refused");
        assert!(matches!(&err, StorageError::Corrupt { offset, .. } if *offset == at), "{err}");
        assert!(records.next().is_none());
    }

    #[test]
    fn another_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("log"), b"aimatrix-log 3\n").expect("write");
        let err = DurableLog::open(dir.path()).expect_err("refused");
        assert!(err.to_string().contains("aimatrix-log 3") && err.to_string().contains("aimatrix-log 2"), "{err}");
    }

    /// Many appends waiting at once share syncs, and all are durable when they return.
    #[test]
    fn concurrent_syncs_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = DurableLog::open(dir.path()).expect("open");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
        runtime.block_on(async {
            let tasks: Vec<_> = (0..50)
                .map(|n| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let seq = log.append(&mut ingest(n)).expect("append");
                        log.sync(seq).await.expect("sync");
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        });
        drop(log);
        let (_, read) = read_all(dir.path()).expect("open");
        assert_eq!(read.len(), 50);
    }

    /// A snapshot and the log rewrite, with a crash at each step (done by hand here: the
    /// controller's part, reading the workers, is tested end to end): after the snapshot but
    /// before the rewrite, a restart restores it and replays the old log from the cut; after
    /// the rewrite, the new log (its records after the cut, those appended meanwhile too, and
    /// appends after it) follows the snapshot; a second compaction cuts the rewritten log.
    #[test]
    fn a_log_is_cut_after_a_snapshot_at_each_step() {
        use snapshot::{Manifest, SNAPSHOT_VERSION};
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = |generation: u64, cut_generation: u64, cut_offset: u64| Manifest {
            version: SNAPSHOT_VERSION,
            generation,
            cut_generation,
            cut_offset,
            at: 2,
            catalog: Vec::new(),
            positions: Vec::new(),
            keys: Vec::new(),
            stats: Vec::new(),
            files: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (log, _) = DurableLog::open(dir.path()).expect("open");
        for n in 0..2 {
            let seq = log.append(&mut ingest(n)).expect("append");
            runtime.block_on(log.sync(seq)).expect("sync");
        }
        let (generation, cut) = log.file().expect("file").cut();
        assert_eq!(generation, 0);
        // Appended after the cut, before the snapshot is written.
        let seq = log.append(&mut ingest(2)).expect("append");
        runtime.block_on(log.sync(seq)).expect("sync");
        snapshot::write(dir.path(), &mut manifest(1, 0, cut), Vec::new()).expect("snapshot");
        drop(log);

        // Crash before the rewrite: snapshot 1, then the old log's records after the cut; the
        // start does the rewrite (a log of generation 1: its mark, then record 2).
        let (log, mut records) = DurableLog::open(dir.path()).expect("open");
        assert_eq!(records.take_snapshot().expect("snapshot").manifest.generation, 1);
        let rest: Vec<LogRecord> = records.collect::<Result<_, _>>().expect("records");
        assert_eq!(json(&rest), json(&[ingest(2)]));
        let file = log.file().expect("file");
        let mark = frame_len(&LogRecord::Compacted { generation: 1 });
        assert_eq!(file.cut(), (1, HEADER.len() as u64 + mark + frame_len(&ingest(2))));
        assert_eq!(log.next_generation(), 2);

        // One more append: the log holds records 2 and 3.
        let seq = log.append(&mut ingest(3)).expect("append");
        runtime.block_on(log.sync(seq)).expect("sync");
        drop(log);
        let (log, mut records) = DurableLog::open(dir.path()).expect("open");
        assert_eq!(records.take_snapshot().expect("snapshot").manifest.generation, 1);
        let rest: Vec<LogRecord> = records.collect::<Result<_, _>>().expect("records");
        assert_eq!(json(&rest), json(&[ingest(2), ingest(3)]));

        // A second snapshot cuts the rewritten log after record 2: record 3 follows it.
        let file = log.file().expect("file");
        let (generation, end) = file.cut();
        let cut2 = end - frame_len(&ingest(3));
        snapshot::write(dir.path(), &mut manifest(2, generation, cut2), Vec::new()).expect("snapshot 2");
        file.rewrite(generation, cut2, 2).expect("rewritten");
        snapshot::remove_older(dir.path(), 2);
        drop(log);
        let (_, mut records) = DurableLog::open(dir.path()).expect("open");
        assert_eq!(records.take_snapshot().expect("snapshot").manifest.generation, 2);
        let rest: Vec<LogRecord> = records.collect::<Result<_, _>>().expect("records");
        assert_eq!(json(&rest), json(&[ingest(3)]));

        // A log cut at its end holds no record: only its mark (nothing more to compact).
        let (log, _) = DurableLog::open(dir.path()).expect("open");
        let file = log.file().expect("file");
        assert!(!log.is_empty());
        let (generation, end) = file.cut();
        snapshot::write(dir.path(), &mut manifest(3, generation, end), Vec::new()).expect("snapshot 3");
        file.rewrite(generation, end, 3).expect("rewritten");
        assert!(log.is_empty());
        drop(log);
        let (log, mut records) = DurableLog::open(dir.path()).expect("open");
        assert!(log.is_empty() && records.take_snapshot().is_some() && records.next().is_none());
        drop(log);

        // The log's snapshot gone: the start is refused, naming it.
        std::fs::remove_dir_all(dir.path().join("snapshots")).expect("remove");
        let err = DurableLog::open(dir.path()).expect_err("refused");
        assert!(err.to_string().contains("depends on snapshot 3"), "{err}");
    }

    /// A compacted log whose first record (the mark of its snapshot) a crash or damage cut
    /// off is never taken for an empty log: the start is refused (it would start without the
    /// snapshot's records), whether the log is cut to its header, emptied or deleted.
    #[test]
    fn a_compacted_log_cut_short_refuses_the_start() {
        use snapshot::{Manifest, SNAPSHOT_VERSION};
        for (n, damage) in ["header", "empty", "deleted"].into_iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            // Two compactions: snapshot 2 cut from the log of generation 1.
            for generation in 1..=2 {
                let (log, _) = DurableLog::open(dir.path()).expect("open");
                let seq = log.append(&mut ingest(n)).expect("append");
                runtime.block_on(log.sync(seq)).expect("sync");
                let (cut_generation, cut) = log.cut();
                let mut manifest = Manifest {
                    version: SNAPSHOT_VERSION,
                    generation,
                    cut_generation,
                    cut_offset: cut,
                    at: 1,
                    catalog: Vec::new(),
                    positions: Vec::new(),
                    keys: Vec::new(),
                    stats: Vec::new(),
                    files: Vec::new(),
                };
                log.compact(&mut manifest, Vec::new()).expect("compacted");
            }
            let path = dir.path().join("log");
            match damage {
                "header" => std::fs::write(&path, HEADER).expect("cut"),
                "empty" => std::fs::write(&path, b"").expect("empty"),
                _ => std::fs::remove_file(&path).expect("delete"),
            }
            let err = DurableLog::open(dir.path()).expect_err("refused").to_string();
            assert!(err.contains("was cut from the log of generation 1"), "{damage}: {err}");
        }
    }

    /// Bytes a record takes in the log.
    fn frame_len(record: &LogRecord) -> u64 {
        encode(&mut record.clone()).expect("encode").len() as u64
    }
}
