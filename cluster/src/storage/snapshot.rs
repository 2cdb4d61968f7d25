//! Snapshots of a durable server's state, so that its log does not grow for ever and a
//! restart does not replay every push since the first (log compaction, as Kafka compacts a
//! topic and Materialize's persist folds a shard's batches into one at its `since`).
//!
//! A snapshot stands for a prefix of the log: the records before byte `cut_offset` of log
//! generation `cut_generation`. It holds what replaying that prefix would give:
//! - the catalog changes (jobs installed, views created, jobs cancelled) in their order, with
//!   their ids, replayed as the log's are;
//! - the contents of every input collection at the snapshot's timestamp `at`, consolidated
//!   (each distinct row once, with its multiplicity): the canonical relations (`spans`,
//!   `evaluations`, `workflow_events`, `knowledge_events`, `ingest_errors`) and the relations
//!   the running jobs' sources declare, one Parquet file each (the relation's columns and a
//!   BIGINT `aimatrix_diff`; snappy);
//! - the sources' counts (`aimatrix_source_stats`), the positions of the sources the server
//!   reads (where each resumes), and each push source's recent `Idempotency-Key`s with their
//!   answers.
//!
//! # Files
//! `DIR/snapshots/{generation}` (20 digits), written as `{generation}.tmp` and renamed once
//! every file in it and the directory are synced: `manifest` (a first line
//! `aimatrix-snapshot 1 {crc32 of the rest, 8 hex digits}`, then the [`Manifest`] as JSON) and
//! `{n}.parquet` per relation, each named in the manifest with its size and CRC-32 (IEEE, as
//! zlib's `crc32`).
//!
//! # The protocol
//! 1. The snapshot is written and renamed into place (a crash before leaves a `.tmp`
//!    directory, removed at the next start, and the log as it was).
//! 2. The log is rewritten to what follows the cut: a new file with the log's header and a
//!    first record [`LogRecord::Compacted`] naming the snapshot's generation, then the log's
//!    records after the cut (those appended meanwhile too), synced and renamed over `DIR/log`
//!    (and the directory synced). A crash before the rename leaves the old log, whose first
//!    record names the generation the snapshot was cut from: a restart restores the snapshot
//!    and replays that log from the cut.
//! 3. Older snapshots are removed.
//!
//! A restart takes the newest snapshot that reads (its manifest's and files' checksums hold)
//! and fits the log: the log's generation is the snapshot's (replayed whole) or the one it was
//! cut from (replayed from the cut). A damaged snapshot that the log no longer fits (the log
//! was rewritten after it) refuses the start, naming the file: the records it stands for are
//! nowhere else.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use amx_dataflows::row::Row;
use amx_dataflows::{Diff, Time};
use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::LogRecord;

/// The format version of a snapshot (its manifest's first line and `version`).
pub const SNAPSHOT_VERSION: u32 = 1;

/// The first word of a manifest.
const MAGIC: &str = "aimatrix-snapshot";

/// The directory of a data directory's snapshots.
pub const SNAPSHOTS: &str = "snapshots";

/// A snapshot's description (see the module documentation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Its generation: 1 for a data directory's first snapshot, then one more each time.
    pub generation: u64,
    /// The generation of the log it was cut from (0: a log never compacted).
    pub cut_generation: u64,
    /// Where it cut that log: in a data directory's log, the byte offset of the first record
    /// it does not cover; in an object-store log, the sequence number of the last record it
    /// covers.
    pub cut_offset: u64,
    /// Its timestamp (ms since the Unix epoch): the rows are the collections' contents then,
    /// and every record after the cut is later.
    pub at: Time,
    /// The catalog changes it covers, in their order.
    pub catalog: Vec<LogRecord>,
    /// The positions of the sources the server reads: `(job, source, where it resumes)`.
    pub positions: Vec<(u64, String, crate::sources::SourceResume)>,
    /// Per push source, its recent `Idempotency-Key`s, oldest first.
    pub keys: Vec<SourceKeys>,
    /// Per source: records read, rows decoded, ingest errors (`aimatrix_source_stats`).
    pub stats: Vec<(String, (isize, isize, isize))>,
    /// The collections' contents.
    pub files: Vec<DataFile>,
}

/// The recent `Idempotency-Key`s of one push source, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceKeys {
    /// The job.
    pub job: u64,
    /// The push source.
    pub source: String,
    /// `(key, hash of the push's body, its answer)`.
    pub keys: Vec<(String, u64, crate::controller::IngestReport)>,
}

/// One collection's contents in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataFile {
    /// The collection.
    pub relation: String,
    /// The `retractable` job whose sources ingested these rows (see [`Contents::job`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The file's name in the snapshot's directory.
    pub name: String,
    /// Distinct rows.
    pub rows: u64,
    /// The file's size (bytes).
    pub bytes: u64,
    /// Its CRC-32.
    pub crc32: u32,
}

/// One collection's contents to write, encoded ([`Encoder`]).
pub struct Contents {
    /// The collection.
    pub relation: String,
    /// The `retractable` job whose sources ingested these rows (kept apart, to be retracted
    /// when it is cancelled with `retract`); `None`: the rest of the collection.
    pub job: Option<u64>,
    /// Its distinct rows.
    pub rows: u64,
    /// Its Parquet file.
    pub parquet: Vec<u8>,
}

impl Contents {
    /// Rows with their multiplicities, encoded at once.
    ///
    /// # Errors
    /// Rows that do not fit `schema`.
    pub fn of(relation: &str, job: Option<u64>, schema: &SchemaRef, rows: &[(Row, Diff)]) -> Result<Contents, String> {
        let mut encoder = Encoder::new(schema)?;
        encoder.push(rows)?;
        encoder.finish(relation, job)
    }
}

/// Encodes a collection's rows, part after part, as a Parquet file (snappy): the schema's
/// columns and a BIGINT `aimatrix_diff`, a row group per part pushed (or per 65,536 rows).
/// Only the encoded bytes are held, not the rows.
pub struct Encoder {
    writer: parquet::arrow::ArrowWriter<Vec<u8>>,
    schema: SchemaRef,
    with_diff: SchemaRef,
    rows: u64,
}

impl Encoder {
    /// An encoder of rows of `schema`.
    ///
    /// # Errors
    /// A schema Parquet cannot hold.
    pub fn new(schema: &SchemaRef) -> Result<Encoder, String> {
        use parquet::basic::Compression;
        use parquet::file::properties::WriterProperties;
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("aimatrix_diff", DataType::Int64, false));
        let with_diff = Arc::new(Schema::new(fields));
        let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let writer = parquet::arrow::ArrowWriter::try_new(Vec::new(), with_diff.clone(), Some(properties))
            .map_err(|e| e.to_string())?;
        Ok(Encoder { writer, schema: schema.clone(), with_diff, rows: 0 })
    }

    /// Adds rows with their multiplicities.
    ///
    /// # Errors
    /// Rows that do not fit the schema.
    pub fn push(&mut self, rows: &[(Row, Diff)]) -> Result<(), String> {
        for chunk in rows.chunks(65_536) {
            let refs: Vec<&Row> = chunk.iter().map(|(row, _)| row).collect();
            let batch = amx_sql::convert::rows_to_batch(&refs, &self.schema).map_err(|e| e.to_string())?;
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(Int64Array::from(chunk.iter().map(|(_, d)| *d as i64).collect::<Vec<i64>>())));
            let batch = RecordBatch::try_new(self.with_diff.clone(), columns).map_err(|e| e.to_string())?;
            self.writer.write(&batch).map_err(|e| e.to_string())?;
            self.rows += chunk.len() as u64;
        }
        Ok(())
    }

    /// The file, as collection `relation`'s contents (of `job`, for a retractable job's).
    ///
    /// # Errors
    /// The file cannot be finished.
    pub fn finish(self, relation: &str, job: Option<u64>) -> Result<Contents, String> {
        let rows = self.rows;
        let parquet = self.writer.into_inner().map_err(|e| e.to_string())?;
        Ok(Contents { relation: relation.to_owned(), job, rows, parquet })
    }
}

/// Where a snapshot's files are.
#[derive(Clone, Debug)]
pub enum Place {
    /// A data directory's `snapshots/GENERATION`.
    Dir(PathBuf),
    /// An object-store log's `PREFIX/snapshots/GENERATION/`, read on the log's I/O runtime.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The snapshot's "directory".
        dir: ObjectPath,
        /// `s3://bucket/prefix/snapshots/GENERATION`, for messages.
        location: String,
        /// The log's I/O runtime.
        handle: tokio::runtime::Handle,
    },
}

/// A snapshot found at a start: where it is and what it says. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Where its files are.
    pub place: Place,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
}

impl Snapshot {
    /// Where it is, for messages.
    pub fn location(&self) -> String {
        match &self.place {
            Place::Dir(dir) => dir.display().to_string(),
            Place::Store { location, .. } => location.clone(),
        }
    }

    /// Reads collection `file`'s rows back, checking its size and CRC-32. Blocks (call it
    /// off an async runtime's threads).
    ///
    /// # Errors
    /// A file that cannot be read, or whose size, checksum or contents are not the
    /// manifest's, naming it.
    pub fn read(&self, file: &DataFile) -> Result<Vec<(Row, Diff)>, String> {
        let mut rows = Vec::new();
        self.read_parts(file, |part| {
            rows.extend(part);
            true
        })?;
        Ok(rows)
    }

    /// [`Snapshot::read`], handing the rows to `part` a Parquet batch (at most 8,192 rows) at
    /// a time, so that a restart holds one batch of rows, not the file's (the file's bytes are
    /// read and checked whole first: a damaged file gives no row); `part` answers whether to go
    /// on.
    ///
    /// # Errors
    /// As [`Snapshot::read`]; a row count other than the manifest's is found at the end.
    pub fn read_parts(&self, file: &DataFile, mut part: impl FnMut(Vec<(Row, Diff)>) -> bool) -> Result<(), String> {
        let name = format!("{}/{}", self.location(), file.name);
        let bytes = match &self.place {
            Place::Dir(dir) => std::fs::read(dir.join(&file.name)).map(bytes::Bytes::from).map_err(|e| e.to_string()),
            Place::Store { store, dir, handle, .. } => {
                let path = dir.clone().join(file.name.as_str());
                handle.block_on(async { store.get(&path).await?.bytes().await }).map_err(|e| e.to_string())
            }
        }
        .map_err(|e| format!("reading {name}: {e}"))?;
        if bytes.len() as u64 != file.bytes || crc32fast::hash(&bytes) != file.crc32 {
            return Err(format!(
                "{name} is damaged: {} bytes with CRC-32 {:08x}, where the manifest says {} bytes with {:08x}",
                bytes.len(),
                crc32fast::hash(&bytes),
                file.bytes,
                file.crc32
            ));
        }
        let mut count = 0u64;
        let mut stopped = false;
        read_rows(bytes, |rows| {
            count += rows.len() as u64;
            stopped = !part(rows);
            !stopped
        })
        .map_err(|e| format!("{name}: {e}"))?;
        if !stopped && count != file.rows {
            return Err(format!("{name}: {count} rows, where the manifest says {}", file.rows));
        }
        Ok(())
    }
}

/// The directory of snapshot `generation` under data directory `dir`.
fn snapshot_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(SNAPSHOTS).join(format!("{generation:020}"))
}

/// Writes snapshot `manifest.generation` of data directory `dir` with `relations`' contents
/// (each `(name, schema, rows with their multiplicities)`): the files, then the manifest
/// (its `files` filled in), each synced, and the directory renamed into place and synced
/// (see the module documentation). Returns its directory.
///
/// # Errors
/// A file that cannot be written or synced (disk full, permission denied), or rows that do not
/// fit their schema; what was written is removed.
pub fn write(dir: &Path, manifest: &mut Manifest, relations: Vec<Contents>) -> Result<PathBuf, String> {
    let done = snapshot_dir(dir, manifest.generation);
    let staged = done.with_extension("tmp");
    let result = write_staged(&staged, manifest, relations).and_then(|()| {
        std::fs::rename(&staged, &done)
            .map_err(|e| format!("renaming {} to {}: {e}", staged.display(), done.display()))?;
        sync_dir(&dir.join(SNAPSHOTS))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e);
    }
    Ok(done)
}

fn write_staged(staged: &Path, manifest: &mut Manifest, relations: Vec<Contents>) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(staged);
    std::fs::create_dir_all(staged).map_err(|e| format!("making {}: {e}", staged.display()))?;
    manifest.files.clear();
    for (n, Contents { relation, job, rows, parquet }) in relations.into_iter().enumerate() {
        let name = format!("{n}.parquet");
        write_synced(&staged.join(&name), &parquet)?;
        let crc32 = crc32fast::hash(&parquet);
        manifest.files.push(DataFile { relation, job, name, rows, bytes: parquet.len() as u64, crc32 });
    }
    write_synced(&staged.join("manifest"), &encode_manifest(manifest)?)?;
    sync_dir(staged)
}

/// A manifest's bytes: the first line (format, version, CRC-32 of the JSON), then the JSON.
fn encode_manifest(manifest: &mut Manifest) -> Result<Vec<u8>, String> {
    manifest.version = SNAPSHOT_VERSION;
    let json = serde_json::to_string(manifest).map_err(|e| e.to_string())?;
    Ok(format!("{MAGIC} {SNAPSHOT_VERSION} {:08x}\n{json}", crc32fast::hash(json.as_bytes())).into_bytes())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut file = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.sync_all().map_err(|e| format!("syncing {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// Reads a manifest, checking its first line and checksum.
///
/// # Errors
/// A manifest that cannot be read, of another format version, or damaged.
pub fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join("manifest");
    let text = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    decode_manifest(&text, &path.display().to_string())
}

/// A manifest from its bytes (`name` names it in messages).
fn decode_manifest(text: &[u8], name: &str) -> Result<Manifest, String> {
    let bad = |why: String| format!("{name} is damaged: {why}");
    let newline = text.iter().position(|b| *b == b'\n').ok_or_else(|| bad("no first line".into()))?;
    let head = std::str::from_utf8(&text[..newline]).map_err(|_| bad("its first line is not text".into()))?;
    let json = &text[newline + 1..];
    let mut words = head.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(bad(format!("it does not start with `{MAGIC}`")));
    }
    let version: u32 = words.next().and_then(|v| v.parse().ok()).ok_or_else(|| bad("no version".into()))?;
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "{name} is of snapshot format version {version}; this server reads version {SNAPSHOT_VERSION}"
        ));
    }
    let crc = words.next().and_then(|c| u32::from_str_radix(c, 16).ok()).ok_or_else(|| bad("no checksum".into()))?;
    if crc32fast::hash(json) != crc {
        return Err(bad(format!("CRC-32 {:08x}, where its first line says {crc:08x}", crc32fast::hash(json))));
    }
    serde_json::from_slice(json).map_err(|e| bad(format!("not a manifest ({e})")))
}

/// The snapshots of data directory `dir`, newest first (`.tmp` directories, left by a crash
/// while one was written, are removed).
///
/// # Errors
/// The directory cannot be read.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let root = dir.join(SNAPSHOTS);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", root.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            tracing::info!(path = %entry.path().display(), "removing a snapshot a crash left unfinished");
            let _ = std::fs::remove_dir_all(entry.path());
        } else if let Ok(generation) = name.parse::<u64>() {
            found.push((generation, entry.path()));
        }
    }
    found.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
    Ok(found)
}

/// Removes the snapshots of `dir` older than `generation`.
pub fn remove_older(dir: &Path, generation: u64) {
    for (older, path) in list(dir).unwrap_or_default().into_iter().filter(|(g, _)| *g < generation) {
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, generation = older, "could not remove an old snapshot");
        }
    }
}

/// Chooses the snapshot a start restores, for a log of generation `log_generation`: the
/// newest that reads and that the log fits — the log's own (the snapshot it was rewritten
/// after), or a newer one cut from it whose rewrite did not happen (see the module
/// documentation). `None` when there is none and the log was never compacted.
///
/// # Errors
/// The log's own snapshot is damaged or missing (its records before the cut are nowhere
/// else), naming it; a snapshot that reads but was cut from a log of another generation than
/// this one and newer than it (the log was rewritten after it, so this log is not that one:
/// damaged, cut short or replaced); a snapshot of another format version.
pub fn choose(dir: &Path, log_generation: u64) -> Result<Option<Snapshot>, String> {
    for (generation, path) in list(dir)? {
        if generation < log_generation {
            break;
        }
        match read_manifest(&path) {
            Ok(manifest) if manifest.generation != generation => {
                return Err(format!("{}: its manifest names another generation", path.display()));
            }
            Ok(manifest) if generation == log_generation || manifest.cut_generation == log_generation => {
                return Ok(Some(Snapshot { place: Place::Dir(path), manifest: Arc::new(manifest) }));
            }
            Ok(manifest) => {
                return Err(format!(
                    "{} was cut from the log of generation {}, but {} is of generation {log_generation}: the log was \
                     damaged, cut short or replaced after it; refusing to start without the records it held \
                     (restore the directory from a backup, or move it aside to start empty)",
                    path.display(),
                    manifest.cut_generation,
                    dir.join("log").display()
                ));
            }
            Err(e) if generation == log_generation => return Err(e),
            // A newer snapshot whose cut never took effect (the log was not rewritten after
            // it): the log still holds what it stands for.
            Err(e) => tracing::warn!(error = %e, "a damaged snapshot the log does not depend on: skipped"),
        }
    }
    if log_generation > 0 {
        return Err(format!(
            "the log depends on snapshot {log_generation}, which is not in {}",
            dir.join(SNAPSHOTS).display()
        ));
    }
    Ok(None)
}

/// The generation the next snapshot of data directory `dir` takes: one more than any there
/// (damaged or unused ones included, so none is ever written over).
pub fn next_generation(dir: &Path) -> Result<u64, String> {
    Ok(list(dir)?.first().map_or(1, |(g, _)| g + 1))
}

/// Removes snapshot `generation` of `dir` (one whose log rewrite failed: the log still holds
/// what it stands for).
pub fn remove(dir: &Path, generation: u64) {
    let path = snapshot_dir(dir, generation);
    if let Err(e) = std::fs::remove_dir_all(&path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove an unused snapshot");
    }
}

/// The snapshots of an object-store log under `prefix`: `PREFIX/snapshots/GENERATION/`,
/// each `{n}.parquet` and, written last (`If-None-Match: *`), `manifest`: a snapshot is
/// complete once its manifest is there (an object is written whole or not at all).
#[derive(Clone, Debug)]
pub struct StoreSnapshots {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The log's prefix.
    pub prefix: ObjectPath,
    /// `s3://bucket/prefix`, for messages.
    pub location: String,
    /// The log's I/O runtime.
    pub handle: tokio::runtime::Handle,
}

impl StoreSnapshots {
    fn dir(&self, generation: u64) -> ObjectPath {
        self.prefix.clone().join(SNAPSHOTS).join(format!("{generation:020}").as_str())
    }

    fn place(&self, generation: u64) -> Place {
        Place::Store {
            store: self.store.clone(),
            dir: self.dir(generation),
            location: format!("{}/{SNAPSHOTS}/{generation:020}", self.location.trim_end_matches('/')),
            handle: self.handle.clone(),
        }
    }

    /// Writes snapshot `manifest.generation` (see [`write`]): its files, then its manifest.
    /// Blocks (call it off an async runtime's threads).
    ///
    /// # Errors
    /// A `PUT` that fails (after `object_store`'s retries), a manifest already there.
    pub fn write(&self, manifest: &mut Manifest, relations: Vec<Contents>) -> Result<String, String> {
        let dir = self.dir(manifest.generation);
        let mut files = Vec::new();
        let mut puts = Vec::new();
        for (n, Contents { relation, job, rows, parquet }) in relations.into_iter().enumerate() {
            let name = format!("{n}.parquet");
            let crc32 = crc32fast::hash(&parquet);
            let bytes = parquet.len() as u64;
            files.push(DataFile { relation, job, name: name.clone(), rows, bytes, crc32 });
            puts.push((dir.clone().join(name.as_str()), parquet));
        }
        manifest.files = files;
        let text = encode_manifest(manifest)?;
        let location = match self.place(manifest.generation) {
            Place::Store { location, .. } => location,
            Place::Dir(_) => unreachable!("a store's place"),
        };
        self.handle.block_on(async {
            for (path, bytes) in puts {
                self.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| format!("writing {path}: {e}"))?;
            }
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            let path = dir.clone().join("manifest");
            self.store
                .put_opts(&path, PutPayload::from(text), options)
                .await
                .map_err(|e| format!("writing {path}: {e}"))?;
            Ok::<_, String>(())
        })?;
        Ok(location)
    }

    /// The generations under `snapshots/`, newest first.
    async fn generations(&self) -> Result<Vec<u64>, String> {
        let root = self.prefix.clone().join(SNAPSHOTS);
        let listing = self.store.list_with_delimiter(Some(&root)).await.map_err(|e| format!("listing {root}: {e}"))?;
        let mut found: Vec<u64> =
            listing.common_prefixes.iter().filter_map(|p| p.filename().and_then(|n| n.parse().ok())).collect();
        found.sort_by_key(|g| std::cmp::Reverse(*g));
        Ok(found)
    }

    /// The generation the next snapshot takes: one more than any under `snapshots/`
    /// (unfinished or damaged ones included, so that no manifest is ever in the way). Async:
    /// on the log's runtime.
    ///
    /// # Errors
    /// The store cannot be listed.
    pub async fn next_generation(&self) -> Result<u64, String> {
        Ok(self.generations().await?.first().map_or(1, |g| g + 1))
    }

    /// The newest complete snapshot whose manifest reads (a damaged one is skipped, with a
    /// warning: the log's segments decide whether the older one is enough). Async: called
    /// while the log opens, on its runtime.
    ///
    /// # Errors
    /// The store cannot be listed or read; a snapshot of another format version.
    pub async fn newest(&self) -> Result<Option<Snapshot>, String> {
        for generation in self.generations().await? {
            let path = self.dir(generation).join("manifest");
            let bytes = match self.store.get(&path).await {
                Ok(got) => got.bytes().await.map_err(|e| format!("reading {path}: {e}"))?,
                // A snapshot whose manifest was never written: unfinished.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(format!("reading {path}: {e}")),
            };
            let name = format!("{}/{path}", self.location.split('/').take(3).collect::<Vec<_>>().join("/"));
            match decode_manifest(&bytes, &name) {
                Ok(manifest) if manifest.generation == generation => {
                    return Ok(Some(Snapshot { place: self.place(generation), manifest: Arc::new(manifest) }));
                }
                Ok(_) => tracing::warn!(snapshot = %name, "a manifest of another generation: skipped"),
                Err(e) if e.contains("format version") => return Err(e),
                Err(e) => tracing::warn!(error = %e, "a damaged snapshot: skipped"),
            }
        }
        Ok(None)
    }

    /// Removes the snapshots older than `generation` (and unfinished ones). Async: on the
    /// log's runtime.
    pub async fn remove_older(&self, generation: u64) {
        let Ok(generations) = self.generations().await else { return };
        for older in generations.into_iter().filter(|g| *g < generation) {
            use futures::TryStreamExt;
            let dir = self.dir(older);
            let listed: Result<Vec<_>, _> = self.store.list(Some(&dir)).try_collect().await;
            for meta in listed.unwrap_or_default() {
                if let Err(e) = self.store.delete(&meta.location).await {
                    tracing::warn!(object = %meta.location, error = %e, "could not remove an old snapshot's object");
                }
            }
        }
    }
}

/// The rows of a file an [`Encoder`] wrote, a batch at a time, while `part` answers
/// true.
fn read_rows(bytes: bytes::Bytes, mut part: impl FnMut(Vec<(Row, Diff)>) -> bool) -> Result<(), String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| format!("not a Parquet file: {e}"))?;
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(batch.num_rows());
        let n = batch.num_columns();
        let diffs = (n >= 1)
            .then(|| batch.column(n - 1).as_any().downcast_ref::<Int64Array>())
            .flatten()
            .ok_or_else(|| "its last column is not aimatrix_diff (BIGINT)".to_owned())?;
        let rows =
            amx_sql::convert::arrays_to_rows(&batch.columns()[..n - 1], batch.num_rows()).map_err(|e| e.to_string())?;
        for (i, row) in rows.into_iter().enumerate() {
            let diff = Diff::try_from(diffs.value(i)).map_err(|_| "an aimatrix_diff past this machine's".to_owned())?;
            out.push((row, diff));
        }
        if !part(out) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use amx_dataflows::row::Datum;

    use super::*;

    fn manifest(generation: u64, cut_generation: u64) -> Manifest {
        Manifest {
            version: SNAPSHOT_VERSION,
            generation,
            cut_generation,
            cut_offset: 15,
            at: 1_000,
            catalog: vec![LogRecord::CreateView { id: 1, name: "v".into(), sql: "SELECT 1".into() }],
            positions: Vec::new(),
            keys: Vec::new(),
            stats: vec![("s".into(), (3, 2, 1))],
            files: Vec::new(),
        }
    }

    fn relation() -> Contents {
        let schema =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("n", DataType::Int64, true)]));
        let rows = vec![
            (vec![Datum::Text("a".into()), Datum::Int(1)], 2),
            (vec![Datum::Null, Datum::Null], 1),
            (vec![Datum::Text("b".into()), Datum::Int(-4)], -1),
        ];
        Contents::of("t", None, &schema, &rows).expect("encoded")
    }

    /// A snapshot reads back as written: its manifest and every collection's rows with their
    /// multiplicities.
    #[test]
    fn a_snapshot_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = manifest(1, 0);
        let rows = vec![
            (vec![Datum::Text("a".into()), Datum::Int(1)], 2),
            (vec![Datum::Null, Datum::Null], 1),
            (vec![Datum::Text("b".into()), Datum::Int(-4)], -1),
        ];
        write(dir.path(), &mut m, vec![relation()]).expect("written");
        let chosen = choose(dir.path(), 0).expect("reads").expect("one");
        assert_eq!(chosen.manifest.generation, 1);
        assert_eq!(chosen.manifest.stats, vec![("s".to_owned(), (3, 2, 1))]);
        assert_eq!(chosen.manifest.files.len(), 1);
        assert_eq!(chosen.read(&chosen.manifest.files[0]).expect("rows"), rows);
        // The log rewritten after it (generation 1) fits it too; a log of generation 2 needs
        // snapshot 2, which is missing.
        assert!(choose(dir.path(), 1).expect("reads").is_some());
        let err = choose(dir.path(), 2).expect_err("missing");
        assert!(err.contains("depends on snapshot 2"), "{err}");
    }

    /// A crash at each step: a `.tmp` left by a crash while writing is removed and the log
    /// replays whole; a newer snapshot whose log was never rewritten is used (the old log
    /// fits it); a damaged newer one the log does not depend on is skipped for the older one;
    /// a damaged one the log depends on refuses the start, naming the file.
    #[test]
    fn damage_and_crashes_at_each_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Crash while writing snapshot 1: only its `.tmp`.
        let staged = snapshot_dir(dir.path(), 1).with_extension("tmp");
        std::fs::create_dir_all(&staged).expect("tmp");
        std::fs::write(staged.join("0.parquet"), b"half").expect("half");
        assert!(choose(dir.path(), 0).expect("reads").is_none());
        assert!(!staged.exists(), "the unfinished snapshot is removed");

        // Snapshot 1 written, the log (generation 0) not yet rewritten: 1 is restored from
        // the cut.
        write(dir.path(), &mut manifest(1, 0), vec![relation()]).expect("1");
        assert_eq!(choose(dir.path(), 0).expect("reads").expect("1").manifest.generation, 1);
        // The log rewritten (generation 1), then snapshot 2 written and its data damaged
        // before the log was rewritten again: 2's manifest reads, but its file does not.
        let two = write(dir.path(), &mut manifest(2, 1), vec![relation()]).expect("2");
        let chosen = choose(dir.path(), 1).expect("reads").expect("2");
        let data = two.join(&chosen.manifest.files[0].name);
        let mut bytes = std::fs::read(&data).expect("read");
        bytes[10] ^= 0xff;
        std::fs::write(&data, bytes).expect("flip");
        let err = chosen.read(&chosen.manifest.files[0]).expect_err("damaged");
        assert!(err.contains("0.parquet is damaged"), "{err}");
        // Its manifest damaged: skipped for snapshot 1, which the log (generation 1) fits.
        let text = std::fs::read_to_string(two.join("manifest")).expect("manifest");
        std::fs::write(two.join("manifest"), text.replace("\"at\":1000", "\"at\":1001")).expect("flip");
        assert_eq!(choose(dir.path(), 1).expect("reads").expect("1").manifest.generation, 1);
        // The log rewritten to generation 2: it depends on the damaged snapshot 2.
        let err = choose(dir.path(), 2).expect_err("refused");
        assert!(err.contains("manifest is damaged") && err.contains("CRC-32"), "{err}");
        // Older snapshots are removed once a newer one is in effect.
        remove_older(dir.path(), 2);
        assert_eq!(list(dir.path()).expect("list").len(), 1);
    }

    /// Two snapshots cut from one log whose rewrites failed: the newer is restored, and the
    /// next takes a generation past both. A log that reads as older than a snapshot was cut
    /// from (its first record, naming its generation, damaged or cut off; the log replaced)
    /// refuses the start rather than start without what the snapshot held.
    #[test]
    fn snapshots_cut_from_one_log_and_a_log_older_than_its_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &mut manifest(2, 1), vec![relation()]).expect("2");
        write(dir.path(), &mut manifest(3, 1), vec![relation()]).expect("3");
        assert_eq!(choose(dir.path(), 1).expect("reads").expect("3").manifest.generation, 3);
        assert_eq!(next_generation(dir.path()).expect("next"), 4);
        let err = choose(dir.path(), 0).expect_err("refused");
        assert!(err.contains("cut from the log of generation 1") && err.contains("is of generation 0"), "{err}");
        remove(dir.path(), 3);
        assert_eq!(next_generation(dir.path()).expect("next"), 3);
    }

    /// A snapshot of another format version is refused with both versions named.
    #[test]
    fn another_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), &mut manifest(1, 0), Vec::new()).expect("1");
        let text = std::fs::read_to_string(path.join("manifest")).expect("manifest");
        std::fs::write(path.join("manifest"), text.replacen("aimatrix-snapshot 1 ", "aimatrix-snapshot 9 ", 1))
            .expect("edit");
        let err = choose(dir.path(), 1).expect_err("refused");
        assert!(err.contains("version 9") && err.contains("reads version 1"), "{err}");
    }
}
