//! Object-store sources: every object under a prefix of an S3-compatible bucket, then each new
//! object as it appears, as JSON lines (one record per non-blank line, at
//! `s3://BUCKET/KEY:LINE`) or CSV (one record per row after the header, as a JSON object of
//! the row's fields by the header's names, at `s3://BUCKET/KEY:LINE`, the line where the row
//! starts), or Parquet (one record per row, as the JSON object of its columns, at
//! `s3://BUCKET/KEY#ROW`, from 1). Objects are read in key order, each once: the log keeps
//! which objects are read and how far the one being read is (see [`super`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amx_connectors::Record;
use amx_connectors::record::record_within;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::{BATCH_BYTES, BATCH_RECORDS, BatchSource, SourcePosition, SourceResume};
use crate::job::SourceConfig;

/// How often the prefix is listed for new objects.
pub const LIST_INTERVAL: Duration = Duration::from_secs(1);

/// An object-store source's settings: the `[sources.object_store]` table of a job file.
///
/// ```toml
/// [sources.object_store]
/// url = "s3://landing/agents/"      # every object under this prefix
/// pattern = "*.jsonl"               # optional: only keys (below the prefix) matching this glob
/// file_format = "jsonl"             # jsonl (default) | csv | parquet
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `s3://BUCKET/PREFIX` (or `s3a://`); the client is configured by the `AWS_*` environment
    /// variables of the server (`AWS_ENDPOINT`, `AWS_REGION`, credentials, `AWS_ALLOW_HTTP`).
    pub url: String,
    /// A glob the key below the prefix must match (`*` does not cross `/`); default: every
    /// object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// How an object's bytes split into records (default [`FileFormat::Jsonl`]).
    #[serde(default)]
    pub file_format: FileFormat,
}

/// How an object-store source splits an object into records (the source's `format` then
/// decodes each record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// JSON Lines: each non-blank line is a record (a `\r` before the `\n` is dropped).
    #[default]
    Jsonl,
    /// CSV (RFC 4180: `,`-separated, `"`-quoted, quotes doubled inside, fields may span
    /// lines): the first row names the fields; each later row is a record, the JSON object of
    /// its fields by those names, as strings (an empty field: null). A row with another number
    /// of fields than the header is an ingest error at its line. Map it with the `json`
    /// format: integers, numbers, booleans and times convert from strings.
    Csv,
    /// Apache Parquet (any compression this build reads: snappy, gzip, lz4; not zstd or
    /// brotli): each row is a record, the JSON object of its columns as `arrow-json` writes
    /// them (nulls included; integers and floats as numbers, strings, booleans, lists and
    /// structs as JSON, timestamps as RFC 3339 strings in UTC, dates as `YYYY-MM-DD`), at
    /// `s3://BUCKET/KEY#ROW` (from 1). An object that is not Parquet, or a row group that does
    /// not decode, is one ingest error (the rows before it are read).
    Parquet,
}

impl ObjectStoreConfig {
    /// Checks the URL and the pattern (nothing is fetched).
    ///
    /// # Errors
    /// A URL that is not `s3://BUCKET/…` (without a query or credentials) or `file:///DIR`; a
    /// bad glob.
    pub fn check(&self) -> Result<(), String> {
        crate::storage::check_store_url(&self.url, "an object-store source reads s3://BUCKET/PREFIX or file:///DIR")?;
        if let Some(p) = &self.pattern {
            glob::Pattern::new(p).map_err(|e| format!("pattern `{p}`: {e}"))?;
        }
        Ok(())
    }
}

/// The object being read: its key, its bytes (JSON lines), where its next line starts and its
/// lines read; CSV and Parquet: its rows, as records, and the rows read (the bytes dropped).
struct Reading {
    key: String,
    data: bytes::Bytes,
    at: usize,
    lines: u64,
    rows: Option<std::vec::IntoIter<Record>>,
}

/// An object-store source's reader.
pub(crate) struct ObjectSource {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// `s3://BUCKET` or `file:///DIR`: a record's location is `{root}/{key}:{line}`.
    root: String,
    /// The directory (canonical), when the store is a local one: its files are listed by a
    /// walk of their own ([`ObjectSource::list_local`]) and opened as a file source opens files.
    local: Option<std::path::PathBuf>,
    /// Files of a local directory whose names are no key (not UTF-8): their key as read
    /// (invalid bytes replaced) and why; each is read as one ingest error.
    bad_names: std::collections::BTreeMap<String, String>,
    /// Which local files may be read (the server's `files.roots`).
    access: amx_connectors::FileAccess,
    pattern: Option<glob::Pattern>,
    /// The source's own runtime for its requests (the server's may shut down under it).
    runtime: tokio::runtime::Runtime,
    done: BTreeSet<String>,
    /// From the log: the object that was being read, and its lines read.
    resume: Option<(String, u64)>,
    /// Objects listed and not read yet, in key order.
    queue: BTreeSet<String>,
    listed: Option<Instant>,
    reading: Option<Reading>,
    max_record_bytes: u64,
    file_format: FileFormat,
}

/// Opens object-store source `source` at `resume`; the files of a local directory are read
/// only where `access` admits them.
///
/// # Errors
/// A source without `[sources.object_store]`, a bad URL or pattern, a client that cannot be
/// built, a local directory that is missing or outside `access`'s roots.
pub(crate) fn open(
    source: &SourceConfig,
    resume: SourceResume,
    max_record_bytes: u64,
    access: &amx_connectors::FileAccess,
) -> Result<ObjectSource, String> {
    let config = source.object_store.as_ref().ok_or("an object-store source needs a `[sources.object_store]` table")?;
    config.check()?;
    let opened = crate::storage::open_store(&config.url, 10, access, false)?;
    let (store, prefix, root) = (opened.store.clone(), opened.prefix.clone(), opened.root.clone());
    let local = opened.dir;
    let pattern = config.pattern.as_deref().map(glob::Pattern::new).transpose().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("the source's I/O runtime: {e}"))?;
    Ok(ObjectSource {
        store,
        prefix,
        root,
        local,
        bad_names: Default::default(),
        access: access.clone(),
        pattern,
        runtime,
        done: resume.objects_done,
        resume: resume.object_reading,
        queue: BTreeSet::new(),
        listed: None,
        reading: None,
        max_record_bytes: max_record_bytes.max(1),
        file_format: config.file_format,
    })
}

impl ObjectSource {
    /// The files below local directory `dir`, as keys (their paths below it, `/`-separated),
    /// as [`ObjectSource::list`] wants them. Directories are descended, but a symbolic link
    /// to one is not followed (no loop, no tree out of the roots is walked); a link to a file is
    /// listed (the caller reads it only where its canonical path lies under the roots, as a file
    /// source does); skipped are names starting with `.` or `_` (hidden files, a writer's staging files,
    /// `_SUCCESS` markers: as Spark's and Flink's file sources skip them), and what is not a
    /// file (a FIFO, a socket). A subdirectory that cannot be read is skipped with a warning; a
    /// name that is not UTF-8 is kept in [`ObjectSource::bad_names`] and read as one error.
    fn list_local(&mut self, dir: &std::path::Path) -> Vec<String> {
        let hidden = |name: &std::ffi::OsStr| name.as_encoded_bytes().first().is_some_and(|b| matches!(b, b'.' | b'_'));
        let walk = walkdir::WalkDir::new(dir).min_depth(1).follow_links(false).sort_by_file_name();
        let mut keys = Vec::new();
        for entry in walk.into_iter().filter_entry(|e| !hidden(e.file_name())) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(directory = %dir.display(), error = %e, "a part of the directory cannot be listed; skipped");
                    continue;
                }
            };
            let kind = entry.file_type();
            let is_file = kind.is_file() || (kind.is_symlink() && entry.path().metadata().is_ok_and(|m| m.is_file()));
            if !is_file {
                continue;
            }
            let Ok(below) = entry.path().strip_prefix(dir) else { continue };
            let parts: Vec<&std::ffi::OsStr> = below.iter().collect();
            let key = match parts.iter().map(|p| p.to_str()).collect::<Option<Vec<&str>>>() {
                Some(parts) => parts.join("/"),
                None if !self.access.admits(entry.path()) => continue,
                None => {
                    let key = parts.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/");
                    if !self.done.contains(&key) {
                        let why = "the file's name is not UTF-8: rename it to read it".to_owned();
                        self.bad_names.insert(key.clone(), why);
                    }
                    key
                }
            };
            keys.push(key);
        }
        keys
    }

    /// The objects under the prefix not read yet (and matching the pattern), in key order.
    fn list(&mut self) -> Result<(), String> {
        if let Some(dir) = self.local.clone() {
            let keys: Vec<String> = self
                .list_local(&dir)
                .into_iter()
                .filter(|key| !self.done.contains(key) && !self.queue.contains(key))
                .filter(|key| {
                    self.pattern.as_ref().is_none_or(|p| {
                        p.matches_with(
                            key,
                            glob::MatchOptions { require_literal_separator: true, ..Default::default() },
                        )
                    })
                })
                // (Checked once the key is new: a link out of the roots is checked again at
                // each listing, files already read are not.)
                .filter(|key| self.bad_names.contains_key(key) || self.access.admits(&dir.join(key)))
                .collect();
            self.queue.extend(keys);
            return Ok(());
        }
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let listed: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|e| format!("listing {}/{}: {e}", self.root, self.prefix))?;
        let keys: Vec<String> = listed
            .into_iter()
            .map(|meta| meta.location.to_string())
            .filter(|key| !self.done.contains(key) && !self.queue.contains(key))
            .filter(|key| {
                let below = key.strip_prefix(self.prefix.as_ref()).unwrap_or(key).trim_start_matches('/');
                self.pattern.as_ref().is_none_or(|p| {
                    p.matches_with(below, glob::MatchOptions { require_literal_separator: true, ..Default::default() })
                })
            })
            .collect();
        self.queue.extend(keys);
        Ok(())
    }

    /// The bytes of object `key` (`None`: deleted since it was listed). A local directory's
    /// file is opened through `access` (see [`amx_connectors::FileAccess::open`]).
    fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, String> {
        let failed = |e: &dyn std::fmt::Display| format!("reading {}/{key}: {e}", self.root);
        if let Some(dir) = &self.local {
            let path = dir.join(key);
            let mut data = Vec::new();
            return match self.access.open(&path).and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut data)) {
                Ok(_) => Ok(Some(data.into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(failed(&e)),
            };
        }
        let store = self.store.clone();
        let path = Path::from(key);
        match self.runtime.block_on(async move { store.get(&path).await?.bytes().await }) {
            Ok(data) => Ok(Some(data)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    /// Fetches the next object to read (`None`: deleted since it was listed).
    fn fetch(&mut self, key: String) -> Result<Option<Reading>, String> {
        if let Some(why) = self.bad_names.remove(&key) {
            let error = Record::new(format!("{}/{key}", self.root), String::new()).with_error(why);
            let rows = Some(vec![error].into_iter());
            return Ok(Some(Reading { key, data: bytes::Bytes::new(), at: 0, lines: 0, rows }));
        }
        let data = match self.get(&key) {
            Ok(Some(data)) => data,
            Ok(None) => {
                tracing::warn!(object = %format!("{}/{key}", self.root), "deleted before it was read; skipped");
                return Ok(None);
            }
            // A local file that cannot be read (no permission, a link swapped out of the roots,
            // a directory now) will not be read by trying again: it is one ingest error, and
            // the files after it are read. (A bucket's failures are retried: they pass.)
            Err(problem) if self.local.is_some() => {
                let error = Record::new(format!("{}/{key}", self.root), String::new()).with_error(problem);
                let rows = Some(vec![error].into_iter());
                return Ok(Some(Reading { key, data: bytes::Bytes::new(), at: 0, lines: 0, rows }));
            }
            Err(problem) => return Err(problem),
        };
        let mut reading = Reading { key, data, at: 0, lines: 0, rows: None };
        let location = format!("{}/{}", self.root, reading.key);
        let rows = match self.file_format {
            FileFormat::Jsonl => None,
            FileFormat::Csv => Some(csv_records(&location, &reading.data, self.max_record_bytes)),
            FileFormat::Parquet => Some(parquet_records(&location, reading.data.clone(), self.max_record_bytes)),
        };
        if let Some(rows) = rows {
            // The rows are all that is read from here on: the bytes are not kept beside them.
            reading.data = bytes::Bytes::new();
            reading.rows = Some(rows.into_iter());
        }
        // Resumed: the lines (CSV: rows) read before the restart are skipped.
        if let Some((key, lines)) = self.resume.take_if(|(k, _)| *k == reading.key) {
            debug_assert_eq!(key, reading.key);
            if let Some(rows) = reading.rows.as_mut() {
                reading.lines = rows.by_ref().take(lines as usize).count() as u64;
            }
            while reading.lines < lines && reading.at < reading.data.len() {
                let end = line_end(&reading.data, reading.at);
                reading.at = (end + 1).min(reading.data.len());
                reading.lines += 1;
            }
        }
        Ok(Some(reading))
    }
}

/// The rows of CSV object `data` (at `location`, `s3://BUCKET/KEY`) after its header, as
/// records at `LOCATION:LINE` (see [`FileFormat::Csv`]); a row longer than `max_record_bytes`,
/// not UTF-8 or with a field count other than the header's is a record with that error. A
/// header that does not read makes one error record at line 1.
fn csv_records(location: &str, data: &[u8], max_record_bytes: u64) -> Vec<Record> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(data);
    let headers = match reader.byte_headers() {
        Ok(h) => h.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect::<Vec<_>>(),
        Err(e) => {
            return vec![
                Record::new(format!("{location}:1"), String::new()).with_error(format!("the CSV header: {e}")),
            ];
        }
    };
    let mut rows = Vec::new();
    let mut row = csv::ByteRecord::new();
    // Lines are counted here from byte offsets (after a header that ends in `\r\n`, the csv
    // crate puts the first row at the `\n`, and on line 1): (byte, its line). A row never
    // starts with a line terminator, so those are skipped first.
    let mut counted = (0usize, 1u64);
    let mut line_at = |byte: u64| {
        let mut byte = (byte as usize).min(data.len());
        while byte < data.len() && matches!(data[byte], b'\r' | b'\n') {
            byte += 1;
        }
        if byte >= counted.0 {
            counted.1 += memchr::memchr_iter(b'\n', &data[counted.0..byte]).count() as u64;
            counted.0 = byte;
        }
        counted.1
    };
    loop {
        let line = line_at(reader.position().byte());
        let at = format!("{location}:{line}");
        match reader.read_byte_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // (Reading byte records from memory, with `flexible`, this does not happen:
                // ragged rows and bad UTF-8 are checked below.) The rest is not read.
                rows.push(Record::new(at, String::new()).with_error(format!("CSV: {e}")));
                break;
            }
        }
        let line = row.position().map_or(line, |p| line_at(p.byte()));
        let at = format!("{location}:{line}");
        let raw = || row.iter().map(|f| String::from_utf8_lossy(f)).collect::<Vec<_>>().join(",");
        if row.len() != headers.len() {
            let reason = format!("the row has {} fields, the header {}", row.len(), headers.len());
            rows.push(Record::new(at, raw()).with_error(reason));
            continue;
        }
        let mut object = serde_json::Map::with_capacity(headers.len());
        let mut bad = None;
        for (i, (name, field)) in headers.iter().zip(row.iter()).enumerate() {
            let value = match std::str::from_utf8(field) {
                Ok("") => serde_json::Value::Null,
                Ok(text) => serde_json::Value::String(text.to_owned()),
                Err(e) => {
                    bad.get_or_insert(format!("invalid UTF-8 in field {} at byte {}", i + 1, e.valid_up_to()));
                    serde_json::Value::Null
                }
            };
            object.insert(name.clone(), value);
        }
        let text = serde_json::Value::Object(object).to_string();
        rows.push(match bad {
            Some(reason) => Record::new(at, raw()).with_error(reason),
            None => record_within(at, text.as_bytes(), max_record_bytes),
        });
    }
    rows
}

/// The rows of Parquet object `data` (at `location`) as records at `LOCATION#ROW` (see
/// [`FileFormat::Parquet`]).
fn parquet_records(location: &str, data: bytes::Bytes, max_record_bytes: u64) -> Vec<Record> {
    use arrow::json::writer::{LineDelimited, WriterBuilder};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = match ParquetRecordBatchReaderBuilder::try_new(data).and_then(|b| b.with_batch_size(4096).build()) {
        Ok(reader) => reader,
        Err(e) => return vec![Record::new(location, String::new()).with_error(format!("not a Parquet file: {e}"))],
    };
    let mut rows = Vec::new();
    for batch in reader {
        let failed = |rows: &Vec<Record>, e: String| {
            Record::new(format!("{location}#{}", rows.len() + 1), String::new()).with_error(format!("Parquet: {e}"))
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                rows.push(failed(&rows, e.to_string()));
                break;
            }
        };
        let mut lines = Vec::new();
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.fZ".to_owned())
            .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.f%:z".to_owned())
            .build::<_, LineDelimited>(&mut lines);
        if let Err(e) = writer.write(&batch).and_then(|()| writer.finish()) {
            rows.push(failed(&rows, e.to_string()));
            break;
        }
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let at = format!("{location}#{}", rows.len() + 1);
            rows.push(record_within(at, line, max_record_bytes));
        }
    }
    rows
}

/// Fills in the columns of the relation that Parquet object-store source `source` declares
/// without columns (`[sources.relation]` with a name, and a key if any): they are those of the
/// first Parquet object under the prefix (in key order, matching the pattern), as
/// [`column_type`] maps their Arrow types. A column whose name is not a lower-case SQL
/// identifier is renamed (lower case; any other character `_`; `_` before a leading digit;
/// `_2`, `_3`… after a name taken) and read from the field of its Parquet name through
/// `[sources.options.mapping]`. The job as logged holds the columns found, so a restart reads
/// the same relation whatever objects arrive later. A source that declares its columns is
/// left as it is.
///
/// # Errors
/// The source is not a Parquet object-store source (only Parquet carries a schema), no object
/// is there yet, the first one is no Parquet file or cannot be read.
pub(crate) fn take_parquet_schema(
    source: &mut SourceConfig,
    access: &amx_connectors::FileAccess,
) -> Result<(), String> {
    use amx_connectors::table::TableColumn;
    let Some(table) = source.relation.as_ref().filter(|t| t.columns.is_empty()) else { return Ok(()) };
    let name = table.name.clone();
    let parquet = source.object_store.as_ref().is_some_and(|o| o.file_format == FileFormat::Parquet);
    if source.kind != crate::job::SourceKind::ObjectStore || !parquet {
        return Err(format!(
            "relation `{name}` declares no columns: only an object-store source of Parquet objects (file_format = \
             \"parquet\") takes its columns from its data"
        ));
    }
    let mut reader = open(source, SourceResume::default(), u64::MAX, access)?;
    reader.list()?;
    let Some(first) = reader.queue.first().cloned() else {
        return Err(format!(
            "relation `{name}` declares no columns and there is no Parquet object under {}/{} yet to take them from: \
             declare the columns, or submit the job once an object is there",
            reader.root, reader.prefix
        ));
    };
    let data = reader.get(&first)?.ok_or_else(|| format!("{}/{first} was deleted while it was read", reader.root))?;
    let schema = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| format!("{}/{first} is not a Parquet file: {e}", reader.root))?
        .schema()
        .clone();
    let mut columns: Vec<TableColumn> = Vec::new();
    let mut renamed = Vec::new();
    for field in schema.fields() {
        let mut column = sql_name(field.name());
        let base = column.clone();
        let mut n = 1;
        while columns.iter().any(|c| c.name == column) {
            n += 1;
            column = format!("{base}_{n}");
        }
        if column != *field.name() {
            renamed.push((column.clone(), field.name().clone()));
        }
        columns.push(TableColumn { name: column, ty: column_type(field.data_type()) });
    }
    tracing::info!(
        source = %source.name, relation = %name, object = %format!("{}/{first}", reader.root),
        columns = %columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        "columns taken from a Parquet object"
    );
    if !renamed.is_empty() {
        let mapping = source.options.entry("mapping").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(mapping) = mapping else {
            return Err("option `mapping`: expected a table (column → spec)".into());
        };
        for (column, field) in renamed {
            let pointer = format!("/{}", field.replace('~', "~0").replace('/', "~1"));
            mapping.entry(column).or_insert(toml::Value::String(pointer));
        }
    }
    if let Some(table) = source.relation.as_mut() {
        table.columns = columns;
    }
    Ok(())
}

/// The SQL type of a Parquet (Arrow) column, as its values reach the `json` decoder (see
/// [`FileFormat::Parquet`]): booleans `boolean`; integers `bigint`; floats and decimals
/// `double`; timestamps `timestamp`; strings, dates, times, binary, lists, structs and maps
/// `text` (their JSON text).
pub(crate) fn column_type(ty: &arrow::datatypes::DataType) -> amx_dataflows::row::ColumnType {
    use amx_dataflows::row::ColumnType;
    use arrow::datatypes::DataType as A;
    match ty {
        A::Boolean => ColumnType::Bool,
        A::Int8 | A::Int16 | A::Int32 | A::Int64 | A::UInt8 | A::UInt16 | A::UInt32 | A::UInt64 => ColumnType::Int,
        A::Float16
        | A::Float32
        | A::Float64
        | A::Decimal32(..)
        | A::Decimal64(..)
        | A::Decimal128(..)
        | A::Decimal256(..) => ColumnType::Float,
        A::Timestamp(..) => ColumnType::Timestamp,
        A::Dictionary(_, value) => column_type(value),
        _ => ColumnType::Text,
    }
}

/// `name` as a lower-case SQL identifier (see [`take_parquet_schema`]).
fn sql_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out.truncate(63);
    out
}

/// The index of the `\n` ending the line that starts at `from` (the data's length when the
/// last line has none).
fn line_end(data: &[u8], from: usize) -> usize {
    memchr::memchr(b'\n', &data[from..]).map_or(data.len(), |i| from + i)
}

impl BatchSource for ObjectSource {
    fn read(&mut self, out: &mut Vec<Record>) -> Result<Option<SourcePosition>, String> {
        if self.reading.is_none() {
            if self.queue.is_empty() {
                if self.listed.is_some_and(|t| t.elapsed() < LIST_INTERVAL) {
                    std::thread::sleep(Duration::from_millis(50));
                    return Ok(None);
                }
                self.listed = Some(Instant::now());
                self.list()?;
            }
            // The object a restart was in the middle of comes first; then key order.
            let resumed = self.resume.as_ref().and_then(|(key, _)| self.queue.take(key));
            let Some(key) = resumed.or_else(|| self.queue.pop_first()) else { return Ok(None) };
            match self.fetch(key.clone()) {
                Ok(reading) => self.reading = reading,
                Err(problem) => {
                    // Tried again at a later read.
                    self.queue.insert(key);
                    return Err(problem);
                }
            }
        }
        let Some(reading) = self.reading.as_mut() else { return Ok(None) };
        let mut bytes = 0;
        if let Some(rows) = reading.rows.as_mut() {
            for record in rows.by_ref() {
                reading.lines += 1;
                bytes += record.text.len();
                out.push(record);
                if out.len() >= BATCH_RECORDS || bytes >= BATCH_BYTES {
                    break;
                }
            }
            let done = rows.len() == 0;
            let position = SourcePosition::Object { key: reading.key.clone(), lines: reading.lines, done };
            if done {
                self.done.insert(reading.key.clone());
                self.reading = None;
            }
            return Ok(Some(position));
        }
        while reading.at < reading.data.len() && out.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
            let end = line_end(&reading.data, reading.at);
            let mut line = &reading.data[reading.at..end];
            reading.at = (end + 1).min(reading.data.len());
            reading.lines += 1;
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            bytes += line.len();
            let location = format!("{}/{}:{}", self.root, reading.key, reading.lines);
            out.push(record_within(location, line, self.max_record_bytes));
        }
        let done = reading.at >= reading.data.len();
        let position = SourcePosition::Object { key: reading.key.clone(), lines: reading.lines, done };
        if done {
            self.done.insert(reading.key.clone());
            self.reading = None;
        }
        Ok(Some(position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local file that cannot be read when its turn comes (here: replaced by a directory
    /// after it was listed) is one ingest error at its location, and the next file is read.
    #[test]
    fn an_unreadable_local_file_is_one_error_and_the_rest_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        std::fs::write(root.join("a.jsonl"), "{\"n\": 1}\n").expect("write");
        std::fs::write(root.join("b.jsonl"), "{\"n\": 2}\n{\"n\": 3}\n").expect("write");
        let text = format!(
            "name = \"j\"\n[[sources]]\nname = \"files\"\nkind = \"object-store\"\nformat = \"json\"\n\
             [sources.object_store]\nurl = \"file://{}/\"\n[sources.options]\nrelation = \"knowledge_events\"\n\
             [sources.options.mapping]\ncollection = \"/c\"\ndocument_id = \"/n\"\n\
             op = {{ pointer = \"/op\", default = \"upsert\" }}\nversion = \"/v\"\nsize_bytes = \"/size\"\n\
             event_time = {{ pointer = \"/t\", unit = \"s\" }}\n",
            root.display()
        );
        let job = crate::job::Job::parse(&text, std::path::Path::new("/")).expect("a job");
        let access = amx_connectors::FileAccess::under(std::slice::from_ref(&root)).expect("roots");
        let mut source = open(&job.config.sources[0], SourceResume::default(), 1 << 20, &access).expect("opened");
        source.list().expect("listed");
        std::fs::remove_file(root.join("a.jsonl")).expect("rm");
        std::fs::create_dir(root.join("a.jsonl")).expect("mkdir");
        let mut records = Vec::new();
        while source.reading.is_some() || !source.queue.is_empty() {
            source.read(&mut records).expect("read");
        }
        let seen: Vec<(String, String, Option<bool>)> = records
            .iter()
            .map(|r| (r.location.clone(), r.text.clone(), r.error.as_ref().map(|e| e.contains("reading file://"))))
            .collect();
        let at = |key: &str| format!("file://{}/{key}", root.display());
        assert_eq!(
            seen,
            [
                (at("a.jsonl"), String::new(), Some(true)),
                (format!("{}:1", at("b.jsonl")), "{\"n\": 2}".to_owned(), None),
                (format!("{}:2", at("b.jsonl")), "{\"n\": 3}".to_owned(), None),
            ]
        );
    }

    /// A Parquet object (snappy) with a null, a float, a UTC timestamp and a boolean: each
    /// row a JSON object at `#ROW`, values written here by hand; bytes that are not Parquet are
    /// one error.
    #[test]
    fn parquet_rows_become_json_objects() {
        use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        use arrow::record_batch::RecordBatch;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("size", DataType::Int64, true),
            Field::new("score", DataType::Float64, false),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("ok", DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["d1", "d2"])),
                Arc::new(Int64Array::from(vec![Some(10), None])),
                Arc::new(Float64Array::from(vec![0.5, 2.0])),
                // 2023-11-14T22:13:20Z and 1.5 s later.
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_700_000_000_000_000, 1_700_000_001_500_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(BooleanArray::from(vec![true, false])),
            ],
        )
        .expect("a batch");
        let mut data = Vec::new();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut data, schema, Some(props)).expect("a writer");
        writer.write(&batch).expect("written");
        writer.close().expect("closed");
        let rows = parquet_records("s3://b/k.parquet", bytes::Bytes::from(data), 1 << 20);
        let got: Vec<(String, serde_json::Value)> =
            rows.into_iter().map(|r| (r.location, serde_json::from_str(&r.text).expect("JSON"))).collect();
        assert_eq!(
            got,
            vec![
                (
                    "s3://b/k.parquet#1".into(),
                    serde_json::json!({"id": "d1", "size": 10, "score": 0.5, "at": "2023-11-14T22:13:20+00:00", "ok": true})
                ),
                (
                    "s3://b/k.parquet#2".into(),
                    serde_json::json!({"id": "d2", "size": null, "score": 2.0, "at": "2023-11-14T22:13:21.500+00:00", "ok": false})
                ),
            ]
        );
        let bad = parquet_records("s3://b/x.parquet", bytes::Bytes::from_static(b"id,size\n"), 1 << 20);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].location, "s3://b/x.parquet");
        assert!(bad[0].error.as_deref().is_some_and(|e| e.starts_with("not a Parquet file")), "{:?}", bad[0].error);
    }

    /// Rows as JSON objects by the header's names at the line each starts; a quoted field may
    /// hold commas, quotes and newlines; an empty field is null; a ragged row and a field that
    /// is not UTF-8 are errors at their lines, and the rows after them are read.
    #[test]
    fn csv_rows_become_json_objects_at_their_lines() {
        let data = b"id,size,note\r\nd1,10,plain\nd2,,\"two\nlines, \"\"quoted\"\"\"\nd3,30\nd4,40,caf\xe9\nd5,50,last";
        let rows = csv_records("s3://b/k.csv", data, 1 << 20);
        let got: Vec<(String, String, Option<String>)> =
            rows.into_iter().map(|r| (r.location, r.text, r.error)).collect();
        assert_eq!(
            got,
            vec![
                ("s3://b/k.csv:2".into(), r#"{"id":"d1","note":"plain","size":"10"}"#.into(), None),
                ("s3://b/k.csv:3".into(), r#"{"id":"d2","note":"two\nlines, \"quoted\"","size":null}"#.into(), None),
                ("s3://b/k.csv:5".into(), "d3,30".into(), Some("the row has 2 fields, the header 3".into())),
                (
                    "s3://b/k.csv:6".into(),
                    "d4,40,caf\u{fffd}".into(),
                    Some("invalid UTF-8 in field 3 at byte 3".into())
                ),
                ("s3://b/k.csv:7".into(), r#"{"id":"d5","note":"last","size":"50"}"#.into(), None),
            ]
        );
    }
}
