//! Object-store sinks: a view's changes as Parquet files under a prefix of an S3-compatible
//! bucket, and a manifest naming the files that are complete.
//!
//! Under `s3://BUCKET/PREFIX/` the sink keeps:
//! - `data/{LOWER}-{UPPER}.parquet` (both 20-digit ms timestamps): a *set*, the view's changes
//!   at the timestamps `LOWER <= t < UPPER`, one row per change: the view's columns, then
//!   `aimatrix_timestamp` (Int64, ms since the Unix epoch) and `aimatrix_diff` (Int64: +n a
//!   row entered the view n times, -n it left), consolidated (no two rows of a set have the
//!   same row and timestamp; no diff is 0), as Materialize's `SUBSCRIBE` gives changes.
//! - `manifest.json` ([`Manifest`]): the sets that are complete, in order, and their `upper`.
//!   The view's contents as of `upper - 1` are the sum of the diffs of every row in the sets
//!   the manifest names. A reader reads the manifest, then those files, and nothing else.
//!
//! Each file is written whole with one `PUT` (S3 makes an object visible only once it is
//! complete), and only then the manifest, replaced with a conditional `PUT` (`If-Match` its
//! last version, or `If-None-Match` for the first): a reader never sees a half-written file,
//! and a second writer on the same prefix is detected, not interleaved. A file a crash left
//! unnamed is removed when the sink starts again.
//!
//! When it starts (and whenever it subscribes anew) the sink reads the manifest's sets back,
//! folds them into the contents they describe, and writes the difference between those and
//! the view's snapshot as one set at the snapshot's timestamp; then, every
//! `flush_interval_ms`, one set of the timestamps the view completed since. So a restart with a
//! data directory — also after `kill -9` — neither loses nor repeats a change (the changes made
//! while it was down arrive as one set). Once the manifest names more than
//! `compact_after_files` sets, they are read back and folded into one set at the last
//! `upper - 1` (each row with its count), named alone by a new manifest. The files it
//! replaces stay (listed as `replaced` in the manifest, with the time) for `keep_replaced_ms`,
//! so that a reader who read the manifest before can still read them, and are deleted after.
//! Between a start and a compaction the sink holds no copy of the view or of the lake: only
//! the changes not yet written.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amx_dataflows::row::Row;
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::{SinkConfig, Step, ViewFeed};
use crate::controller::now_ms;

/// The manifest's format version; a manifest of another is refused.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// The columns a set adds after the view's: a view with a column of either name is refused.
pub const META_COLUMNS: [&str; 2] = ["aimatrix_timestamp", "aimatrix_diff"];

/// An object-store sink's destination: the `[sinks.object_store]` table of a job file.
///
/// ```toml
/// [sinks.object_store]
/// url = "s3://lake/aimatrix/by_collection/"  # the sink's own prefix
/// flush_interval_ms = 1000                   # a set of files at most this often
/// compact_after_files = 64                   # fold the sets into one past this many
/// keep_replaced_ms = 600000                  # keep sets a compaction replaced this long
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreSinkConfig {
    /// `s3://BUCKET/PREFIX` (or `s3a://`): the sink owns everything under the prefix. The
    /// client is configured by the server's `AWS_*` environment variables, as for sources.
    pub url: String,
    /// How often a set is written (ms, 100 to 3,600,000; default 1,000): a set holds every
    /// timestamp the view completed since the last one. Nothing is written while the view does
    /// not change.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Past this many sets in the manifest (2 to 100,000; default 64), they are folded into one.
    #[serde(default = "default_compact_after_files")]
    pub compact_after_files: usize,
    /// How long the sets a compaction replaced are kept before they are deleted (ms, 0 to
    /// 86,400,000; default 600,000): a reader must have read the sets a manifest names within
    /// this long of reading the manifest.
    #[serde(default = "default_keep_replaced_ms")]
    pub keep_replaced_ms: u64,
}

fn default_keep_replaced_ms() -> u64 {
    600_000
}

fn default_flush_interval_ms() -> u64 {
    1_000
}

fn default_compact_after_files() -> usize {
    64
}

impl ObjectStoreSinkConfig {
    /// Checks the URL and the bounds (nothing is contacted).
    ///
    /// # Errors
    /// A URL that is not `s3://BUCKET/…` (without a query or credentials) or `file:///DIR`; a
    /// setting out of its range.
    pub fn check(&self) -> Result<(), String> {
        crate::storage::check_store_url(&self.url, "an object-store sink writes to s3://BUCKET/PREFIX or file:///DIR")?;
        if !(100..=3_600_000).contains(&self.flush_interval_ms) {
            return Err(format!("flush_interval_ms is {}: it must be 100 to 3600000", self.flush_interval_ms));
        }
        if !(2..=100_000).contains(&self.compact_after_files) {
            return Err(format!("compact_after_files is {}: it must be 2 to 100000", self.compact_after_files));
        }
        if self.keep_replaced_ms > 86_400_000 {
            return Err(format!("keep_replaced_ms is {}: it must be 0 to 86400000", self.keep_replaced_ms));
        }
        Ok(())
    }
}

/// `manifest.json`: the complete sets of an object-store sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// The sink that writes the prefix (`job N sink `NAME``); another sink finding it refuses
    /// to write there.
    #[serde(default)]
    pub writer: String,
    /// The view the sets are of.
    pub view: String,
    /// The view's columns (`name`, Arrow type as text), in order; each file has these, then
    /// `aimatrix_timestamp` and `aimatrix_diff`.
    pub columns: Vec<(String, String)>,
    /// Every change before this timestamp (ms) is in the sets; the sets cover `[lower, upper)`
    /// of the first to this, without gaps.
    pub upper: Time,
    /// The sets, in time order.
    pub files: Vec<ManifestFile>,
    /// Sets a compaction replaced, not deleted yet (see `keep_replaced_ms`): no longer part of
    /// the view's changes.
    #[serde(default)]
    pub replaced: Vec<ReplacedFile>,
}

/// A set a compaction replaced, kept for readers of an earlier manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedFile {
    /// Its key below the sink's prefix.
    pub key: String,
    /// When it was replaced (ms since the Unix epoch).
    pub replaced_at: u64,
}

/// One set: a Parquet file of the changes at `lower <= t < upper`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Its key below the sink's prefix (`data/….parquet`).
    pub key: String,
    /// The first timestamp it covers (ms).
    pub lower: Time,
    /// The timestamp after the last it covers (ms).
    pub upper: Time,
    /// Its rows (changes).
    pub rows: u64,
    /// Its size (bytes).
    pub bytes: u64,
}

/// A running object-store sink: the store, the manifest and the contents its sets describe.
pub(super) struct Sink {
    /// This sink, as [`Manifest::writer`] names it.
    writer: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// The store, when it is a local directory (see [`Sink::put_manifest`]).
    local: Option<crate::storage::OpenStore>,
    /// Where a local directory may be (the server's `files.sink_roots`; see [`Sink::check_local`]).
    access: amx_connectors::FileAccess,
    config: ObjectStoreSinkConfig,
    /// The manifest as last read or written, and its version (`None`: there is none yet).
    manifest: Option<(Manifest, UpdateVersion)>,
    /// The view's contents as the manifest's sets describe them (rows with counts ≠ 0), as
    /// read back, until the view's snapshot is reconciled with them. Empty after.
    read_back: HashMap<Row, Diff>,
}

impl Sink {
    /// Connects (a local directory: makes it, when missing, if `access` admits it), reads the
    /// manifest and its sets back, and removes the files no manifest names.
    ///
    /// # Errors
    /// A store that cannot be reached; a local directory outside `access`'s roots; a manifest
    /// of another format version or that does not parse; a set it names that is missing or is
    /// not the Parquet file described.
    pub(super) fn open(
        runtime: &tokio::runtime::Runtime,
        job: crate::protocol::JobId,
        sink: &SinkConfig,
        config: &ObjectStoreSinkConfig,
        access: &amx_connectors::FileAccess,
    ) -> Result<Sink, String> {
        let opened = crate::storage::open_store(&config.url, 10, access, true)?;
        let mut open = Sink {
            writer: format!("job {job} sink `{}`", sink.name),
            store: opened.store.clone(),
            prefix: opened.prefix.clone(),
            url: config.url.trim_end_matches('/').to_owned(),
            local: opened.local.is_some().then_some(opened),
            access: access.clone(),
            config: config.clone(),
            manifest: None,
            read_back: HashMap::new(),
        };
        runtime.block_on(open.read_back(&sink.view))?;
        Ok(open)
    }

    /// Before a local directory's files are read, written or deleted: the directory the URL
    /// names still resolves to the one opened, under the sink roots, and neither `data/` nor
    /// `manifest.json` in it is a symbolic link (which would lead writes and deletes elsewhere).
    ///
    /// # Errors
    /// Which of those no longer holds, naming the path.
    fn check_local(&self) -> Result<(), String> {
        let Some(dir) = self.local.as_ref().and_then(|l| l.dir.as_ref()) else { return Ok(()) };
        let named = match crate::storage::check_store_url(&self.url, "")? {
            crate::storage::StoreUrl::Local(named) => named,
            crate::storage::StoreUrl::S3 => return Ok(()),
        };
        let now = std::fs::canonicalize(&named).map_err(|e| format!("{}: {e}", named.display()))?;
        if now != *dir || !self.access.admits(&now) {
            return Err(format!(
                "{} no longer is the directory the sink opened under its sink roots ({}): it was moved or replaced",
                named.display(),
                dir.display()
            ));
        }
        for part in ["data", "manifest.json"] {
            let path = dir.join(part);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!(
                    "{} is a symbolic link: a sink writes only its own files and directories, under its sink roots",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    fn path(&self, key: &str) -> Path {
        key.split('/').fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// Reads the manifest and folds its sets into [`Sink::read_back`]; deletes the files under
    /// `data/` it does not name (left by a write a crash interrupted).
    async fn read_back(&mut self, view: &str) -> Result<(), String> {
        self.check_local()?;
        let manifest_path = self.path("manifest.json");
        let at = format!("{}/manifest.json", self.url);
        self.manifest = match self.store.get(&manifest_path).await {
            Ok(got) => {
                let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
                let bytes = got.bytes().await.map_err(|e| format!("reading {at}: {e}"))?;
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("{at}: {e}"))?;
                if manifest.format_version != MANIFEST_FORMAT_VERSION {
                    return Err(format!(
                        "{at} has format version {}; this server writes version {MANIFEST_FORMAT_VERSION}",
                        manifest.format_version
                    ));
                }
                if !manifest.writer.is_empty() && manifest.writer != self.writer {
                    return Err(format!(
                        "{at} is written by {}, not this {}: give each sink a prefix of its own",
                        manifest.writer, self.writer
                    ));
                }
                if manifest.view != view {
                    return Err(format!(
                        "{at} holds view `{}`, not `{view}`: give each sink a prefix of its own",
                        manifest.view
                    ));
                }
                check_manifest(&manifest).map_err(|e| format!("{at}: {e}"))?;
                Some((manifest, version))
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(format!("reading {at}: {e}")),
        };
        let files = self.manifest.as_ref().map(|(m, _)| m.files.clone()).unwrap_or_default();
        self.read_back = self.fold(&files).await?;
        // Sets no manifest names, older than keep_replaced_ms: written before a crash (no reader
        // has seen them). Younger ones may be another writer's, about to be named; sets a
        // compaction replaced wait for their time; other files are not the sink's.
        let replaced = self.manifest.as_ref().map(|(m, _)| m.replaced.clone()).unwrap_or_default();
        let named: BTreeSet<&str> =
            files.iter().map(|f| f.key.as_str()).chain(replaced.iter().map(|r| r.key.as_str())).collect();
        let listed = self.store.list_with_delimiter(Some(&self.path("data"))).await;
        let listed = listed.map_err(|e| format!("listing {}/data/: {e}", self.url))?;
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let keep = i64::try_from(self.config.keep_replaced_ms).unwrap_or(i64::MAX);
        for meta in listed.objects {
            let Some(name) = meta.location.filename() else { continue };
            let key = format!("data/{name}");
            let old = now.saturating_sub(meta.last_modified.timestamp_millis()) >= keep;
            if !named.contains(key.as_str())
                && old
                && is_set_name(name)
                && let Err(e) = self.store.delete(&meta.location).await
            {
                tracing::warn!(file = %meta.location, error = %e, "deleting a file no manifest names failed");
            }
        }
        Ok(())
    }

    /// The contents that `files` describe: every row's count summed over them (counts ≠ 0).
    ///
    /// # Errors
    /// A file that cannot be read, or is not a set.
    async fn fold(&self, files: &[ManifestFile]) -> Result<HashMap<Row, Diff>, String> {
        let mut contents = HashMap::new();
        for file in files {
            let location = format!("{}/{}", self.url, file.key);
            let got = self.store.get(&self.path(&file.key)).await.map_err(|e| format!("reading {location}: {e}"))?;
            let bytes = got.bytes().await.map_err(|e| format!("reading {location}: {e}"))?;
            for (row, _, diff) in read_set(bytes).map_err(|e| format!("{location}: {e}"))? {
                add(&mut contents, row, diff);
            }
        }
        Ok(contents)
    }

    /// Writes the changes of the view that `feed` reads until the subscription ends (`Ok`) or
    /// a write fails.
    pub(super) fn follow(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        mut feed: ViewFeed,
        config: &SinkConfig,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let schema = feed.schema();
        let columns = columns_of(&schema);
        if let Some((manifest, _)) = &self.manifest
            && manifest.columns != columns
        {
            return Err(format!(
                "{}/manifest.json was written for the columns {:?}; view `{}` has {:?}: give the sink a new prefix",
                self.url, manifest.columns, config.view, columns
            ));
        }
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut reconciled = false;
        // Complete changes not written yet; the view's frontier.
        let mut complete: Vec<(Row, Time, Diff)> = Vec::new();
        let mut frontier: Time = 0;
        let mut last_write = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            match feed.next(runtime) {
                None => return Ok(()),
                Some(Step::Idle) => {}
                Some(Step::Snapshot { timestamp, rows }) => {
                    // What the sets say the view is, against what it is: the difference, at the
                    // snapshot's time.
                    let mut differences: HashMap<Row, Diff> = HashMap::new();
                    for (row, diff) in rows {
                        add(&mut differences, row, diff);
                    }
                    for (row, diff) in std::mem::take(&mut self.read_back) {
                        add(&mut differences, row, -diff);
                    }
                    complete.extend(differences.into_iter().map(|(row, diff)| (row, timestamp, diff)));
                    frontier = timestamp.saturating_add(1);
                    reconciled = true;
                    self.write(runtime, &schema, &config.view, &mut complete, frontier)?;
                    last_write = Instant::now();
                }
                Some(Step::Complete { changes, upper }) => {
                    complete.extend(changes);
                    frontier = frontier.max(upper);
                }
            }
            if reconciled && !complete.is_empty() && last_write.elapsed() >= interval {
                self.write(runtime, &schema, &config.view, &mut complete, frontier)?;
                last_write = Instant::now();
            }
            if reconciled {
                runtime.block_on(self.delete_replaced())?;
            }
        }
        Ok(())
    }

    /// Writes `changes` (all before `frontier`) as one set, then the manifest naming it; folds
    /// the sets into one when there are too many. Nothing is written when they cancel out.
    fn write(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        schema: &SchemaRef,
        view: &str,
        changes: &mut Vec<(Row, Time, Diff)>,
        frontier: Time,
    ) -> Result<(), String> {
        let lower = self.manifest.as_ref().map_or(0, |(m, _)| m.upper);
        // A timestamp the sets already passed (the clock of a restarted server behind the
        // last one's) moves to their upper: the sets stay in time order.
        let mut set: Vec<(Row, Time, Diff)> = changes.drain(..).map(|(r, t, d)| (r, t.max(lower), d)).collect();
        set.sort_unstable_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        set = consolidate(set);
        if set.is_empty() {
            // An empty view: a manifest without sets still tells readers the sink is there.
            if self.manifest.is_none() {
                let manifest = Manifest {
                    format_version: MANIFEST_FORMAT_VERSION,
                    writer: self.writer.clone(),
                    view: view.to_owned(),
                    columns: columns_of(schema),
                    upper: frontier,
                    files: Vec::new(),
                    replaced: Vec::new(),
                };
                runtime.block_on(self.put_manifest(manifest))?;
            }
            return Ok(());
        }
        let upper = frontier.max(set.iter().map(|(_, t, _)| t.saturating_add(1)).max().unwrap_or(0));
        let file = runtime.block_on(self.put_set(schema, &set, lower, upper))?;
        let mut manifest = self.manifest.as_ref().map(|(m, _)| m.clone()).unwrap_or_else(|| Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            writer: self.writer.clone(),
            view: view.to_owned(),
            columns: columns_of(schema),
            upper: 0,
            files: Vec::new(),
            replaced: Vec::new(),
        });
        manifest.files.push(file);
        manifest.upper = upper;
        runtime.block_on(self.put_manifest(manifest))?;
        tracing::debug!(sink = %self.url, lower, upper, "object-store sink wrote a set");
        if self.manifest.as_ref().is_some_and(|(m, _)| m.files.len() > self.config.compact_after_files) {
            runtime.block_on(self.compact(schema))?;
        }
        Ok(())
    }

    /// Folds every set into one: the contents at `upper - 1`, each row with its count, read
    /// back from the sets.
    async fn compact(&mut self, schema: &SchemaRef) -> Result<(), String> {
        let Some((manifest, _)) = &self.manifest else { return Ok(()) };
        let mut manifest = manifest.clone();
        let (lower, upper) = (manifest.files.first().map_or(0, |f| f.lower), manifest.upper);
        let contents = self.fold(&manifest.files).await?;
        let mut rows: Vec<(Row, Time, Diff)> =
            contents.into_iter().map(|(row, diff)| (row, upper.saturating_sub(1), diff)).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let file = self.put_set(schema, &rows, lower, upper).await?;
        let replaced = std::mem::replace(&mut manifest.files, vec![file]);
        let replaced_at = now_ms();
        manifest.replaced.extend(replaced.into_iter().map(|f| ReplacedFile { key: f.key, replaced_at }));
        self.put_manifest(manifest).await
    }

    /// Deletes the replaced sets older than `keep_replaced_ms`, after a manifest that no longer
    /// lists them.
    async fn delete_replaced(&mut self) -> Result<(), String> {
        self.check_local()?;
        let Some((manifest, _)) = &self.manifest else { return Ok(()) };
        let now = now_ms();
        if manifest.replaced.iter().all(|r| now.saturating_sub(r.replaced_at) < self.config.keep_replaced_ms) {
            return Ok(());
        }
        let (expired, kept): (Vec<ReplacedFile>, Vec<ReplacedFile>) = manifest
            .replaced
            .iter()
            .cloned()
            .partition(|r| now.saturating_sub(r.replaced_at) >= self.config.keep_replaced_ms);
        if expired.is_empty() {
            return Ok(());
        }
        let mut manifest = manifest.clone();
        manifest.replaced = kept;
        self.put_manifest(manifest).await?;
        for old in expired {
            if let Err(e) = self.store.delete(&self.path(&old.key)).await {
                // Named by no manifest now: deleted at the sink's next start.
                tracing::warn!(file = %old.key, error = %e, "deleting a set a compaction replaced failed");
            }
        }
        Ok(())
    }

    /// Writes one set's Parquet file.
    async fn put_set(
        &self,
        schema: &SchemaRef,
        set: &[(Row, Time, Diff)],
        lower: Time,
        upper: Time,
    ) -> Result<ManifestFile, String> {
        self.check_local()?;
        let key = format!("data/{lower:020}-{upper:020}.parquet");
        let bytes = set_to_parquet(schema, set)?;
        let size = bytes.len() as u64;
        let path = self.path(&key);
        self.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| format!("writing {}/{key}: {e}", self.url))?;
        if let Some(file) = self.local.as_ref().and_then(|l| l.local_path(path.as_ref())) {
            // (object_store's local store renames a file into place without syncing it.)
            sync_file_and_directory(&file).map_err(|e| format!("syncing {}: {e}", file.display()))?;
        }
        Ok(ManifestFile { key, lower, upper, rows: set.len() as u64, bytes: size })
    }

    /// Replaces the manifest, if it is still the one this sink read or wrote last: in a
    /// bucket with a conditional `PUT`; in a local directory (whose store has no conditional
    /// replace) by comparing the file's version (inode, modification time and size) with the
    /// last one, then writing a new file beside it, syncing it, renaming it over the manifest
    /// and syncing the directory. (Locally the comparison and the rename are two steps: two
    /// servers writing one directory at the same moment are not told apart, which the
    /// manifest's `writer`, checked when a sink starts, otherwise refuses.)
    async fn put_manifest(&mut self, manifest: Manifest) -> Result<(), String> {
        let at = format!("{}/manifest.json", self.url);
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        if let Some(local) = &self.local {
            self.check_local()?;
            let path = self.path("manifest.json");
            let file = local.local_path(path.as_ref()).ok_or_else(|| format!("{at}: not a file name"))?;
            let now = match self.store.head(&path).await {
                Ok(meta) => meta.e_tag,
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(format!("reading {at}: {e}")),
            };
            if now != self.manifest.as_ref().and_then(|(_, v)| v.e_tag.clone()) {
                return Err(format!("{at} was changed by another writer: give each sink a prefix of its own"));
            }
            replace_file(&file, &body).map_err(|e| format!("writing {at}: {e}"))?;
            let meta = self.store.head(&path).await.map_err(|e| format!("reading {at}: {e}"))?;
            self.manifest = Some((manifest, UpdateVersion { e_tag: meta.e_tag, version: None }));
            return Ok(());
        }
        let mode = match &self.manifest {
            Some((_, version)) => PutMode::Update(version.clone()),
            None => PutMode::Create,
        };
        let options = PutOptions { mode, ..Default::default() };
        match self.store.put_opts(&self.path("manifest.json"), PutPayload::from(body), options).await {
            Ok(put) => {
                self.manifest = Some((manifest, UpdateVersion { e_tag: put.e_tag, version: put.version }));
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                // Read again (and reconciled) by the caller's next start.
                Err(format!("{at} was changed by another writer: give each sink a prefix of its own"))
            }
            Err(e) => Err(format!("writing {at}: {e}")),
        }
    }
}

/// Syncs file `path` and the directory that holds it, so that the file, as named, survives a
/// crash of the machine.
fn sync_file_and_directory(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Replaces file `path` with `body` atomically: written to a new file beside it, synced,
/// renamed over it, and the directory synced; a crash leaves the old file or the new one.
fn replace_file(path: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut staged = tempfile::NamedTempFile::new_in(dir)?;
    staged.write_all(body)?;
    staged.as_file().sync_all()?;
    staged.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether `name` is a set's file name: `{20 digits}-{20 digits}.parquet`.
fn is_set_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".parquet") else { return false };
    let bytes = stem.as_bytes();
    bytes.len() == 41 && bytes[20] == b'-' && bytes.iter().enumerate().all(|(i, b)| i == 20 || b.is_ascii_digit())
}

/// A manifest's sets must follow each other in time, up to its `upper`, within what a set's
/// BIGINT timestamps hold.
fn check_manifest(manifest: &Manifest) -> Result<(), String> {
    if manifest.upper > i64::MAX as u64 {
        return Err(format!("upper {} is past the largest timestamp a set holds", manifest.upper));
    }
    let mut at = manifest.files.first().map_or(manifest.upper, |f| f.lower);
    for file in &manifest.files {
        if file.lower != at || file.upper < file.lower {
            return Err(format!("set {} ({}..{}) does not follow the one before it", file.key, file.lower, file.upper));
        }
        at = file.upper;
    }
    if at != manifest.upper {
        return Err(format!("the sets end at {at}, not at its upper {}", manifest.upper));
    }
    Ok(())
}

/// The columns as the manifest names them.
fn columns_of(schema: &SchemaRef) -> Vec<(String, String)> {
    schema.fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect()
}

/// Adds `diff` to `row`'s count, dropping it at 0.
fn add(counts: &mut HashMap<Row, Diff>, row: Row, diff: Diff) {
    use std::collections::hash_map::Entry;
    match counts.entry(row) {
        Entry::Occupied(mut count) => {
            *count.get_mut() += diff;
            if *count.get() == 0 {
                count.remove();
            }
        }
        Entry::Vacant(count) => {
            if diff != 0 {
                count.insert(diff);
            }
        }
    }
}

/// Sums the diffs of equal `(row, time)` neighbours (sorted input) and drops zeros.
fn consolidate(sorted: Vec<(Row, Time, Diff)>) -> Vec<(Row, Time, Diff)> {
    let mut out: Vec<(Row, Time, Diff)> = Vec::with_capacity(sorted.len());
    for (row, time, diff) in sorted {
        match out.last_mut() {
            Some(last) if last.1 == time && last.0 == row => last.2 += diff,
            _ => out.push((row, time, diff)),
        }
    }
    out.retain(|(_, _, d)| *d != 0);
    out
}

/// A set as a Parquet file (snappy): the view's columns, `aimatrix_timestamp`, `aimatrix_diff`.
fn set_to_parquet(schema: &SchemaRef, set: &[(Row, Time, Diff)]) -> Result<Vec<u8>, String> {
    let rows: Vec<&Row> = set.iter().map(|(row, _, _)| row).collect();
    let view = amx_sql::convert::rows_to_batch(&rows, schema).map_err(|e| e.to_string())?;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("aimatrix_timestamp", DataType::Int64, false));
    fields.push(Field::new("aimatrix_diff", DataType::Int64, false));
    let mut columns: Vec<ArrayRef> = view.columns().to_vec();
    let times = set.iter().map(|(_, t, _)| i64::try_from(*t).map_err(|_| format!("timestamp {t} is past i64")));
    columns.push(Arc::new(Int64Array::from(times.collect::<Result<Vec<_>, _>>()?)));
    columns.push(Arc::new(Int64Array::from(set.iter().map(|(_, _, d)| *d as i64).collect::<Vec<i64>>())));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties)).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A set's rows back from its Parquet file.
fn read_set(bytes: bytes::Bytes) -> Result<Vec<(Row, Time, Diff)>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| format!("not a Parquet file: {e}"))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let n = batch.num_columns();
        let int64 = |i: usize| -> Result<&Int64Array, String> {
            (n >= 2)
                .then(|| batch.column(i).as_any().downcast_ref::<Int64Array>())
                .flatten()
                .ok_or_else(|| "the last two columns are not aimatrix_timestamp and aimatrix_diff (Int64)".to_owned())
        };
        let (times, diffs) = (int64(n.saturating_sub(2))?, int64(n.saturating_sub(1))?);
        let rows =
            amx_sql::convert::arrays_to_rows(&batch.columns()[..n - 2], batch.num_rows()).map_err(|e| e.to_string())?;
        for (i, row) in rows.into_iter().enumerate() {
            let time = Time::try_from(times.value(i)).map_err(|_| "a negative aimatrix_timestamp".to_owned())?;
            let diff = Diff::try_from(diffs.value(i)).map_err(|_| "an aimatrix_diff past this machine's".to_owned())?;
            out.push((row, time, diff));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use amx_dataflows::row::Datum;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("collection", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    #[test]
    fn a_set_reads_back_as_written() {
        let row = |c: &str, n: i64| -> Row { vec![Datum::Text(c.into()), Datum::Int(n)] };
        let set = vec![(row("a", 1), 10, 1), (row("a", 1), 12, -1), (row("b", 2), 12, 3)];
        let bytes = set_to_parquet(&schema(), &set).expect("written");
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(read_set(bytes::Bytes::from(bytes)).expect("read"), set);
        let err = read_set(bytes::Bytes::from_static(b"not parquet")).expect_err("refused");
        assert!(err.starts_with("not a Parquet file"), "{err}");
    }

    #[test]
    fn changes_consolidate_by_row_and_time() {
        let row = |c: &str| -> Row { vec![Datum::Text(c.into())] };
        let sorted = vec![(row("a"), 1, 1), (row("a"), 1, -1), (row("a"), 2, 2), (row("b"), 2, 1), (row("b"), 2, 1)];
        assert_eq!(consolidate(sorted), vec![(row("a"), 2, 2), (row("b"), 2, 2)]);
        let mut counts = HashMap::new();
        add(&mut counts, row("a"), 2);
        add(&mut counts, row("b"), 1);
        add(&mut counts, row("a"), -2);
        assert_eq!(counts, HashMap::from([(row("b"), 1)]));
    }

    #[test]
    fn manifests_are_checked_and_set_names_recognised() {
        let file = |lower: Time, upper: Time| ManifestFile {
            key: format!("data/{lower:020}-{upper:020}.parquet"),
            lower,
            upper,
            rows: 1,
            bytes: 1,
        };
        let manifest = |upper: Time, files: Vec<ManifestFile>| Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            writer: String::new(),
            view: "v".into(),
            columns: Vec::new(),
            upper,
            files,
            replaced: Vec::new(),
        };
        assert!(check_manifest(&manifest(30, vec![file(10, 20), file(20, 30)])).is_ok());
        assert!(check_manifest(&manifest(7, vec![])).is_ok());
        assert!(check_manifest(&manifest(30, vec![file(10, 20), file(21, 30)])).is_err());
        assert!(check_manifest(&manifest(31, vec![file(10, 30)])).is_err());
        assert!(check_manifest(&manifest(u64::MAX, vec![])).unwrap_err().contains("past the largest"));
        assert!(is_set_name(&file(1, 2).key["data/".len()..]));
        for name in ["manifest.json", "1-2.parquet", "00000000000000000001-0000000000000000000x.parquet"] {
            assert!(!is_set_name(name), "{name}");
        }
    }

    /// In a local directory (no conditional `PUT`), the manifest is replaced only over the
    /// version the sink last read or wrote; the directory is made only under the roots.
    #[test]
    fn a_local_manifest_is_replaced_only_over_its_last_version() {
        use amx_connectors::FileAccess;
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let config = ObjectStoreSinkConfig {
            url: format!("file://{}/lake/out/", dir.path().display()),
            flush_interval_ms: 1000,
            compact_after_files: 64,
            keep_replaced_ms: 0,
        };
        let sink = SinkConfig {
            name: "s".into(),
            view: "v".into(),
            key: Vec::new(),
            kafka: None,
            object_store: Some(config.clone()),
        };
        let job = crate::protocol::JobId(1);
        let manifest = |upper: Time| Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            writer: "job 1 sink `s`".into(),
            view: "v".into(),
            columns: Vec::new(),
            upper,
            files: Vec::new(),
            replaced: Vec::new(),
        };
        let file = dir.path().join("lake/out/manifest.json");
        let on_disk = || -> Manifest { serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("JSON") };

        let mut open = Sink::open(&runtime, job, &sink, &config, &FileAccess::Any).expect("opened");
        runtime.block_on(open.put_manifest(manifest(1))).expect("the first");
        runtime.block_on(open.put_manifest(manifest(2))).expect("the second");
        assert_eq!(on_disk(), manifest(2));
        // Another writer replaces it (another size, so another version whatever the clock).
        std::fs::write(&file, serde_json::to_vec(&manifest(3_000)).expect("JSON")).expect("write");
        let err = runtime.block_on(open.put_manifest(manifest(4))).expect_err("refused");
        assert!(err.contains("changed by another writer"), "{err}");
        assert_eq!(on_disk(), manifest(3_000));
        // Removed under it: refused too.
        std::fs::remove_file(&file).expect("rm");
        let err = runtime.block_on(open.put_manifest(manifest(4))).expect_err("refused");
        assert!(err.contains("changed by another writer"), "{err}");
        // Opened again, the sink starts from what is there.
        let mut open = Sink::open(&runtime, job, &sink, &config, &FileAccess::Any).expect("opened");
        runtime.block_on(open.put_manifest(manifest(5))).expect("over nothing");
        std::fs::write(&file, serde_json::to_vec(&manifest(6_000)).expect("JSON")).expect("write");
        let mut open = Sink::open(&runtime, job, &sink, &config, &FileAccess::Any).expect("opened");
        runtime.block_on(open.put_manifest(manifest(7_000))).expect("over the one read");
        assert_eq!(on_disk(), manifest(7_000));
        // No file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("lake/out"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["manifest.json"]);

        // Outside the roots: refused, and nothing is made.
        std::fs::create_dir(dir.path().join("root")).expect("mkdir");
        let access = FileAccess::under(&[dir.path().join("root")]).expect("roots");
        let err = Sink::open(&runtime, job, &sink, &config, &access).err().expect("refused");
        assert!(err.contains("not under the server's sink roots"), "{err}");
        let inside = ObjectStoreSinkConfig { url: format!("file://{}/root/a/b/", dir.path().display()), ..config };
        Sink::open(&runtime, job, &sink, &inside, &access).map(drop).expect("made under a root");
        assert!(dir.path().join("root/a/b").is_dir());
        // A link in the roots to a directory out of them leads nowhere.
        std::os::unix::fs::symlink(dir.path().join("lake"), dir.path().join("root/link")).expect("symlink");
        let linked = ObjectStoreSinkConfig { url: format!("file://{}/root/link/new/", dir.path().display()), ..inside };
        let err = Sink::open(&runtime, job, &sink, &linked, &access).err().expect("refused");
        assert!(err.contains("not under the server's sink roots"), "{err}");
        assert!(!dir.path().join("lake/new").exists());
    }

    #[test]
    fn settings_are_checked() {
        let config = |url: &str, flush: u64, files: usize| ObjectStoreSinkConfig {
            url: url.into(),
            flush_interval_ms: flush,
            compact_after_files: files,
            keep_replaced_ms: 600_000,
        };
        assert!(config("s3://lake/x/", 1000, 64).check().is_ok());
        assert!(config("file:///tmp/x", 1000, 64).check().is_ok());
        assert!(config("gs://lake/x", 1000, 64).check().unwrap_err().contains("s3://BUCKET/PREFIX or file:///DIR"));
        assert!(config("file://host/x", 1000, 64).check().unwrap_err().contains("an absolute path on this host"));
        assert!(config("file:///tmp/x?a=b", 1000, 64).check().unwrap_err().contains("no query"));
        assert!(config("s3://lake/x", 10, 64).check().unwrap_err().contains("flush_interval_ms"));
        assert!(config("s3://lake/x", 1000, 1).check().unwrap_err().contains("compact_after_files"));
    }
}
