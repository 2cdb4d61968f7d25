//! Splitting files into records, with locations; tailing files for `--follow`.
//!
//! A file is split according to its shape (see [`FileReader`] for how the shape is decided):
//!
//! | shape | record | location |
//! | --- | --- | --- |
//! | JSON Lines | each non-empty line | `path:LINE` (1-based) |
//! | top-level JSON array | each element | `path:LINE#INDEX` (LINE where the element starts, INDEX 0-based) |
//! | top-level JSON array | a part that is no element (see below) | `path:LINE` (LINE where the part starts) |
//! | one JSON document (e.g. pretty-printed) | the whole file | `path` |
//!
//! Readers that split the work ([`FileReader::set_share`]) read each JSON-lines file by
//! pieces, each piece by one reader, and do not count the lines of the others' pieces: their
//! records' locations carry the line's byte offset instead, which
//! [`FileReader::resolve_location`] turns into `path:LINE` when a location is shown (only an
//! ingest error's is).
//!
//! A leading UTF-8 byte order mark (`EF BB BF`) is skipped. A record whose bytes are not valid
//! UTF-8 is still returned (its text read lossily, invalid bytes as U+FFFD) but carries the
//! error `invalid UTF-8 at byte N` ([`Record::error`]; N = 0-based offset in the record), which
//! every decoder reports as an ingest error instead of decoding the record.
//!
//! A top-level JSON array is read element by element, so one broken element does not lose the
//! others: a broken element (one that is not a JSON value followed by `,` or `]`) is a record
//! of its own at `path:LINE#INDEX` (the decoder reports its JSON error), extending to the next
//! `,` or `]` at the array's nesting level (found by scanning with string, escape and bracket
//! tracking), where reading resumes with element INDEX+1. When no such `,` or `]` follows
//! (unbalanced brackets, an unterminated string), the broken element extends to the end of the
//! file. Parts that are no element are records at `path:LINE` carrying an error: the end of a
//! file that stops before the closing `]` (`unterminated JSON array: …`, empty text) and text
//! after the closing `]`. An empty element (`[1,,2]`, `[1,]`) is a record carrying the error
//! `empty array element`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use crate::ConfigError;

/// The UTF-8 byte order mark, skipped at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record of a file: the text a decoder decodes, and where it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Where the record is: `path:LINE` for a JSON Lines line, `path:LINE#INDEX` for element
    /// INDEX (0-based) of a top-level JSON array (LINE = the line where the element starts),
    /// `path:LINE` for a part of a top-level array that is no element, `path` for a whole-file
    /// JSON document.
    pub location: String,
    /// The record's text (for a line: without its line terminator). Read lossily when the
    /// bytes are not valid UTF-8 (then [`Record::error`] says so).
    pub text: String,
    /// A problem the reader found with the record itself (`invalid UTF-8 at byte N`,
    /// `unterminated JSON array: …`, …). When set, a decoder does not decode the record but
    /// reports this as an ingest error at [`Record::location`] with [`Record::text`] as raw text.
    pub error: Option<String>,
    /// What the source knows about the record besides its text, as a JSON object that the
    /// `json` format's mappings read with `{ metadata = "/POINTER" }`: for a Kafka message
    /// `{"topic", "partition", "offset", "timestamp", "key", "headers"}` (see
    /// [`crate::kafka::KafkaReader`]); `None` for file lines and pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<serde_json::Value>>,
}

impl Record {
    /// A record with the given location and text (and no error).
    pub fn new(location: impl Into<String>, text: impl Into<String>) -> Record {
        Record { location: location.into(), text: text.into(), error: None, metadata: None }
    }

    /// The record with `metadata` (see [`Record::metadata`]).
    #[must_use]
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Record {
        self.metadata = Some(Box::new(metadata));
        self
    }

    /// A record from raw bytes: when they are not valid UTF-8, the text is read lossily and the
    /// record carries the error `invalid UTF-8 at byte N` (N = 0-based offset of the first
    /// invalid byte in `bytes`).
    pub fn from_bytes(location: impl Into<String>, bytes: &[u8]) -> Record {
        match std::str::from_utf8(bytes) {
            Ok(text) => Record::new(location, text),
            Err(e) => Record {
                location: location.into(),
                text: String::from_utf8_lossy(bytes).into_owned(),
                error: Some(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
                metadata: None,
            },
        }
    }

    /// Where the record is in its file, as one number that orders the records of the file:
    /// `LINE × 2²⁰ + INDEX` from [`Record::location`] (`path:LINE`, or `path:LINE#INDEX` for
    /// an element of an array; INDEX capped at 2²⁰ − 1), or the line's byte offset when a
    /// reader that splits the file read it (see [`FileReader::resolve_location`]); `None` for a
    /// location without a line.
    pub fn position(&self) -> Option<u64> {
        let (_, tail) = self.location.rsplit_once(':')?;
        // A line read by a reader that splits the file by pieces: ordered by its byte offset
        // (every reader of the file marks its lines so).
        if let Some(offset) = tail.strip_prefix(OFFSET_MARK).and_then(|t| t.strip_suffix(OFFSET_MARK)) {
            return offset.parse().ok();
        }
        let (line, index) = tail.split_once('#').unwrap_or((tail, "0"));
        let (line, index): (u64, u64) = (line.parse().ok()?, index.parse().ok()?);
        Some(line.saturating_mul(1 << 20).saturating_add(index.min((1 << 20) - 1)))
    }

    /// Whether the record is a Kafka tombstone: a message with a key and no value (see
    /// [`TOMBSTONE`]).
    pub fn is_tombstone(&self) -> bool {
        self.error.as_deref() == Some(TOMBSTONE)
    }

    /// The record with the error `reason` (see [`Record::error`]).
    #[must_use]
    pub fn with_error(mut self, reason: impl Into<String>) -> Record {
        self.error = Some(reason.into());
        self
    }
}

/// The error of a record that is a Kafka message with no value (a *tombstone*): a decoder
/// reports it as an ingest error, except the `json` decoder of a relation with a key, for
/// which it deletes the key (see [`crate::table`]).
pub const TOMBSTONE: &str = "the message has no value (a tombstone); nothing to decode";

/// What a file turned out to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Shape {
    /// Not decided yet (empty, or the first line or document is still being written).
    #[default]
    Unknown,
    /// JSON Lines, tailed.
    Lines,
    /// A JSON array or one document, read once: nothing more to do.
    Done,
}

/// Per-file reading state: what a [`FileCursor`] carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FileState {
    shape: Shape,
    /// Bytes consumed (for `Lines`: up to and including the last complete line, plus the bytes
    /// of an oversized line skipped so far).
    offset: u64,
    /// Lines consumed (for `Lines`).
    lines: u64,
    /// The file's identity (device, inode) when it was first read.
    identity: Option<(u64, u64)>,
    /// The first bytes of the file (at most [`HEAD_BYTES`] of what was consumed): a file whose
    /// start no longer reads the same was rewritten and is read again from its start.
    head: Vec<u8>,
    /// A JSON-lines line longer than the maximum record size, being skipped.
    oversized: Option<Oversized>,
    /// Bytes seen past `offset` at the last poll that reached the file's end (an unfinished
    /// last line, or a start not yet decided): reported as lost if the file is replaced,
    /// truncated or deleted before they are consumed.
    pending_bytes: u64,
    /// The first bytes of those (at most [`RAW_BYTES`]), for the report's raw text.
    pending_head: Vec<u8>,
    /// Bytes of the lines this reader took, when it splits the file with others by pieces
    /// (`offset` then also passes the others' pieces).
    #[serde(default, skip_serializing_if = "is_zero")]
    consumed: u64,
    /// Times the file was found replaced, truncated or rewritten and read again from its start
    /// (by this reader: not kept in a cursor).
    #[serde(skip)]
    resets: u64,
}

/// Whether `n` is 0 (for `skip_serializing_if`).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A line longer than the maximum record size: skipped to its end, then reported once.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Oversized {
    /// Its line number (1-based; not counted by a reader that splits the file by pieces).
    line: u64,
    /// The byte offset of its start.
    #[serde(default)]
    start: u64,
    /// Its length so far, in bytes.
    bytes: u64,
    /// Its first bytes (at most [`RAW_BYTES`]), for the error's raw text.
    head: Vec<u8>,
    /// Whether its last byte so far is `\r` (no part of the record when a newline follows).
    ends_in_cr: bool,
}

impl Oversized {
    /// An oversized line, line `line` of its file, starting at byte `start`, before any of it
    /// is skipped.
    fn at(line: u64, start: u64) -> Oversized {
        Oversized { line, start, bytes: 0, head: Vec::new(), ends_in_cr: false }
    }
}

/// Bytes of a file's start kept to recognise a rewritten file (see [`FileState::head`]).
const HEAD_BYTES: usize = 64;

/// Bytes of an oversized record kept as its error's raw text.
pub const RAW_BYTES: usize = 1024;

/// Default maximum size of one record, in bytes (64 MiB): see [`FileReader::set_max_record_bytes`].
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 64 << 20;

/// Reads every file matching a glob (in path order), splitting each into [`Record`]s.
///
/// Only regular files are read (symbolic links are followed): directories matching the glob
/// are skipped, and any other match (a FIFO, socket or device: reading it could block forever)
/// is never opened: the reader with share index 0 returns, once per path, a record at the path
/// carrying the error `not a regular file (a FIFO); only regular files can be read` (`a
/// socket`, `a character device`, …), and the other files are read. A file the glob matches
/// under several names (a symbolic link beside its target, hard links) is read once, under
/// one of them (the name that is no symbolic link, else the one it is being read under, else
/// the first in path order). A file whose name is not UTF-8 cannot be matched by the glob
/// (a limit of the `glob` crate); when its name, read lossily, matches the pattern's last
/// component, the reader with share index 0 returns, once, a record at its path carrying the
/// error `not read: the file's name is not valid UTF-8 (rename it to read it)`.
///
/// A file's shape is decided at the first poll that sees content in it (after a UTF-8 byte
/// order mark, which is skipped):
///
/// - first non-whitespace byte `[`: a top-level JSON array, split into its elements, unless
///   it is JSON Lines. In order:
///   1. the whole text parses as one JSON array: an array;
///   2. the whole text is the beginning of a JSON array, cut short (not a single error before
///      the end, e.g. `[{"a": 1},` or `[\n  {`): wait while not `finish`ing (it is being
///      written), else an array (its missing `]` is reported);
///   3. the first non-empty line parses as a JSON value on its own (e.g. `[1,2]` followed by
///      more lines): JSON Lines;
///   4. there are further complete non-empty lines and more than half of them parse as JSON
///      values on their own (e.g. a `[INFO] exporter started` banner followed by JSON lines):
///      JSON Lines. (Lines of a pretty-printed or one-element-per-line array hardly ever
///      parse on their own: they end in `,` or are brackets or `"key": value` pairs.)
///   5. otherwise the brackets decide, scanning with string and escape tracking: when the
///      `[` is closed and only whitespace follows, a (broken) array, split element by element
///      (see the [module docs](crate::record)); when text follows the closing `]` (e.g.
///      `[INFO] exporter started`), JSON Lines; when the `[` is not closed yet, wait while
///      not `finish`ing, else a (broken) array.
///
///   Complete lines are lines ending in `\n` (and, when `finish`ing, the last line too).
/// - else if the first non-empty line parses as JSON on its own: JSON Lines, every non-empty
///   line is a record (a trailing `\r` is stripped);
/// - else if the whole file parses as one JSON value: one record (e.g. a pretty-printed
///   Temporal history);
/// - else JSON Lines (so each bad line is reported at its own line), or, with
///   [`FileReader::set_whole_other_files`], one record (e.g. a YAML VCR cassette).
///
/// [`FileReader::poll`] returns the records not returned before. JSON Lines files are tailed:
/// only complete lines (ending in `\n`) are consumed, a partial last line is kept for a later
/// poll, except when `finish` is true (end of input) where a final line without newline is a
/// record too. Arrays and single documents are read once. While not `finish`ing, deciding is
/// put off as long as the file is empty, its first line is incomplete, or it is an incomplete
/// JSON document or array (so a file that is being written is not misread). A file that is
/// one complete JSON array when first seen is an array even if more lines are appended later
/// (JSON Lines whose first line is an array must not be read before their second line is
/// written). New files matching the glob are picked up by later polls. A JSON Lines file that
/// shrinks (truncated for reuse) is read again from its start.
///
/// An unfinished last line a poll saw (no newline yet) that can no longer be read — its file
/// was replaced, truncated, rewritten or deleted before the line ended — is not dropped in
/// silence: the reader with share index 0 (of a JSON-lines file split by pieces: the reader
/// that held the line, at `path:byte OFFSET`, its lines not counted) returns a record at its
/// location carrying the error `an unfinished last line of N bytes was lost: …` (its first
/// 1 KiB as text). Such a
/// record is not counted by [`FileReader::records_seen`] nor split between readers.
#[derive(Debug)]
pub struct FileReader {
    pattern: String,
    files: BTreeMap<PathBuf, FileState>,
    /// Bytes consumed of the files matching at the last poll (see [`FileReader::bytes_read`]).
    bytes_read: u64,
    /// Where the reader is in those files, summed (see [`FileReader::position`]).
    position: u64,
    /// Per file: where [`FileReader::resolve_location`] last counted.
    line_marks: BTreeMap<PathBuf, LineMark>,
    max_poll_bytes: u64,
    max_record_bytes: u64,
    share: Share,
    /// Which files may be read; a matching file outside it is reported once and skipped.
    access: crate::FileAccess,
    /// Matching files refused by `access`, already reported.
    refused: std::collections::BTreeSet<PathBuf>,
    /// Files whose reading state changed (or was forgotten) since [`FileReader::take_cursors`].
    changed: std::collections::BTreeSet<PathBuf>,
    /// [`FileReader::set_whole_other_files`].
    whole_other: bool,
}

/// Where [`FileReader::resolve_location`] last counted a file's lines: the file's identity then,
/// a byte offset, and the newlines before it.
#[derive(Clone, Copy, Debug)]
struct LineMark {
    identity: Option<(u64, u64)>,
    offset: u64,
    lines: u64,
}

/// Where a [`FileReader`] is in one file, as [`FileReader::take_cursors`] gives it and
/// [`FileReader::resume`] takes it back: the bytes and lines consumed, the file's identity
/// (device, inode) and first bytes (so a file replaced or rewritten since is read again from
/// its start), its shape, and a partly read last line or oversized line. Serializable, to be
/// kept with the records read up to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileCursor(FileState);

impl FileCursor {
    /// Bytes of the file consumed (the next read starts there).
    pub fn offset(&self) -> u64 {
        self.0.offset
    }

    /// Lines of the file consumed (JSON Lines).
    pub fn lines(&self) -> u64 {
        self.0.lines
    }
}

/// Which records a reader returns: record `i` (counted over all files, in order) is returned
/// when `i mod peers == index`. The others are counted but never copied out of the file.
#[derive(Clone, Copy, Debug)]
struct Share {
    index: u64,
    peers: u64,
    seen: u64,
}

impl Share {
    /// Counts one record; whether it is this reader's.
    fn take(&mut self) -> bool {
        let mine = self.seen % self.peers == self.index;
        self.seen += 1;
        mine
    }

    /// Whether JSON-lines files are split by pieces between the readers (there are several).
    fn splits(&self) -> bool {
        self.peers > 1
    }

    /// Whether piece `piece` (0-based) of a JSON-lines file is this reader's.
    fn owns(&self, piece: u64) -> bool {
        piece % self.peers == self.index
    }

    /// The start of the first piece at or after piece `piece` that is this reader's
    /// (`u64::MAX` past the largest offset).
    fn next_owned(&self, piece: u64, size: u64) -> u64 {
        let ahead = (self.index + self.peers - piece % self.peers) % self.peers;
        piece.saturating_add(ahead).saturating_mul(size)
    }
}

/// Marks a byte offset in place of a line number in a record's location (see
/// [`FileReader::resolve_location`]).
const OFFSET_MARK: char = '\u{1}';

/// The location of the line of file `name` that is line `line` (1-based) and starts at byte
/// `start`: `name:LINE`, or, read by a reader that does not count lines (`split`), `name:`
/// followed by the offset between two [`OFFSET_MARK`]s.
fn line_location(name: &str, line: u64, start: u64, split: bool) -> String {
    if split { format!("{name}:{OFFSET_MARK}{start}{OFFSET_MARK}") } else { format!("{name}:{line}") }
}

impl FileReader {
    /// A reader of the files matching `glob` (e.g. `data/*.jsonl`).
    ///
    /// A glob that matches nothing is not an error (files may appear later in follow mode);
    /// see [`FileReader::paths`].
    ///
    /// # Errors
    /// [`ConfigError::BadGlob`] when `glob` is not a valid pattern.
    pub fn new(glob: &str) -> Result<FileReader, ConfigError> {
        glob::Pattern::new(glob)
            .map_err(|e| ConfigError::BadGlob { pattern: glob.to_owned(), reason: e.to_string() })?;
        Ok(FileReader {
            pattern: glob.to_owned(),
            files: BTreeMap::new(),
            bytes_read: 0,
            position: 0,
            line_marks: BTreeMap::new(),
            max_poll_bytes: u64::MAX,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            share: Share { index: 0, peers: 1, seen: 0 },
            access: crate::FileAccess::Any,
            refused: Default::default(),
            changed: Default::default(),
            whole_other: false,
        })
    }

    /// Reads only the files `access` admits (default: any). A file the glob matches that it
    /// does not admit (its canonical path is under no root: a symbolic link out of a root, or
    /// a dangling one) is never opened; when the link itself lies in a directory under a root,
    /// the reader with share index 0 returns, once per path, a record at the path carrying the
    /// error `not read: it does not resolve to a file under the server's file roots
    /// (files.roots)` (the same whether or not the link's target exists). Entries of a
    /// directory linked from a root to elsewhere are skipped without a word (their names are
    /// not the job's to see).
    pub fn set_access(&mut self, access: crate::FileAccess) {
        self.access = access;
    }

    /// The glob this reader reads.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The regular files matching the glob now, sorted by path (directories, other non-regular
    /// files and entries that cannot be read are left out).
    pub fn paths(&self) -> Vec<PathBuf> {
        let Ok(entries) = glob::glob(&self.pattern) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> =
            entries.filter_map(Result::ok).filter(|p| p.is_file() && self.access.admits(p)).collect();
        paths.sort();
        self.read_once(paths)
    }

    /// `paths` (sorted) with one path kept per file: names of one file (a symbolic link to a
    /// file the glob also matches, hard links) would read it twice. Kept: the path that is no
    /// symbolic link, else the one whose reading state is that file's (it is being read under
    /// that name), else the first in path order; so every reader of the same glob keeps the
    /// same path as long as the names do not change between their polls.
    fn read_once(&self, paths: Vec<PathBuf>) -> Vec<PathBuf> {
        let ids: Vec<Option<(u64, u64)>> =
            paths.iter().map(|p| fs::metadata(p).ok().as_ref().and_then(identity)).collect();
        let mut names: std::collections::HashMap<(u64, u64), Vec<usize>> = std::collections::HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                names.entry(*id).or_default().push(i);
            }
        }
        if names.values().all(|n| n.len() == 1) {
            return paths;
        }
        let mut keep = vec![true; paths.len()];
        for (id, group) in names.into_iter().filter(|(_, g)| g.len() > 1) {
            let is_link = |&i: &usize| fs::symlink_metadata(&paths[i]).is_ok_and(|m| m.file_type().is_symlink());
            let reading = |&i: &usize| self.files.get(&paths[i]).is_some_and(|s| s.identity == Some(id));
            let kept = group.iter().copied().min_by_key(|i| (is_link(i), !reading(i), *i)).expect("a group has a path");
            for i in group.into_iter().filter(|&i| i != kept) {
                keep[i] = false;
            }
        }
        paths.into_iter().zip(keep).filter_map(|(p, k)| k.then_some(p)).collect()
    }

    /// Files the glob would match but for their names, which are not UTF-8 (the `glob` crate
    /// skips such names): matched here by their lossy names (U+FFFD for each bad byte)
    /// against the pattern's last component, in the directories its other components give.
    /// (Directories with such names are still skipped.)
    fn unreadable_names(&self) -> Vec<PathBuf> {
        let pattern = Path::new(&self.pattern);
        // A literal name (no wildcard) is matched by no lossy name: nothing to list.
        let Some(name) = pattern.file_name().and_then(|n| n.to_str()).filter(|n| n.contains(['*', '?', '['])) else {
            return Vec::new();
        };
        let Ok(name) = glob::Pattern::new(name) else {
            return Vec::new();
        };
        let parent = match pattern.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dirs: Vec<PathBuf> = match parent.to_str() {
            Some(p) if p.contains(['*', '?', '[']) => match glob::glob(p) {
                Ok(entries) => entries.filter_map(Result::ok).filter(|d| d.is_dir()).collect(),
                Err(_) => Vec::new(),
            },
            _ => vec![parent],
        };
        let mut found = Vec::new();
        for dir in dirs.iter().filter(|d| self.access.admits(d)) {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            for entry in entries.filter_map(Result::ok) {
                let file = entry.file_name();
                if file.to_str().is_none() && name.matches(&file.to_string_lossy()) {
                    found.push(dir.join(file));
                }
            }
        }
        found
    }

    /// Appends to `out` the records not returned by earlier polls (see [`FileReader`]).
    ///
    /// `finish` = end of input (not following): a final line without newline is a record, and
    /// files whose shape is still undecided are decided.
    ///
    /// # Errors
    /// An I/O error, with the path in its message, when a matching file or directory cannot
    /// be read; records of the files before it in path order have been appended to `out`.
    pub fn poll(&mut self, finish: bool, out: &mut Vec<Record>) -> io::Result<()> {
        let entries = glob::glob(&self.pattern).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut paths = Vec::new();
        for entry in entries {
            if let Ok(p) = &entry
                && fs::symlink_metadata(p).is_ok()
                && !self.access.admits(p)
            {
                // Reported only when the link itself lies under a root: the names inside a
                // directory linked from a root are none of the job's business.
                let inside = p.parent().is_some_and(|dir| self.access.admits(dir));
                if self.refused.insert(p.clone()) && self.share.index == 0 && inside {
                    self.changed.insert(p.clone());
                    out.push(Record::new(p.display().to_string(), String::new()).with_error(
                        "not read: it does not resolve to a file under the server's file roots (files.roots)",
                    ));
                }
                continue;
            }
            match entry {
                Ok(p) => match fs::metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.is_file() => paths.push(p),
                    Ok(m) => {
                        if self.refused.insert(p.clone()) && self.share.index == 0 {
                            self.changed.insert(p.clone());
                            let why = format!(
                                "not a regular file ({}); only regular files can be read",
                                file_kind(&m.file_type())
                            );
                            out.push(Record::new(p.display().to_string(), String::new()).with_error(why));
                        }
                    }
                    // Gone since the glob listed it, or a dangling symbolic link: nothing to
                    // read now.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
                },
                Err(e) => {
                    let path = e.path().display().to_string();
                    let err: io::Error = e.into();
                    return Err(io::Error::new(err.kind(), format!("{path}: {err}")));
                }
            }
        }
        if self.share.index == 0 {
            for path in self.unreadable_names() {
                // Kept by its lossy name, as a cursor logs it (so a resumed reader knows it).
                let path = PathBuf::from(path.to_string_lossy().into_owned());
                if self.refused.insert(path.clone()) {
                    self.changed.insert(path.clone());
                    let why = "not read: the file's name is not valid UTF-8 (rename it to read it)";
                    out.push(Record::new(path.display().to_string(), String::new()).with_error(why));
                }
            }
        }
        paths.sort();
        let paths = self.read_once(paths);
        self.follow_renames(&paths, out);
        let mut result = Ok(());
        for path in &paths {
            let known = self.files.contains_key(path);
            let state = self.files.entry(path.clone()).or_default();
            let before = state.clone();
            let limits = Limits {
                poll_bytes: self.max_poll_bytes,
                record_bytes: self.max_record_bytes,
                access: &self.access,
                whole_other: self.whole_other,
            };
            let polled = poll_file(path, state, finish, limits, &mut self.share, out);
            if *state != before || !known {
                self.changed.insert(path.clone());
            }
            if state.resets != before.resets {
                // Read again from its start (replaced, truncated or rewritten): its lines are
                // counted anew.
                self.line_marks.remove(path);
            }
            match polled {
                Ok(()) => {}
                // Swapped for a link out of the roots between the check and the open: that
                // file is not read (reported once), the others are.
                Err(e) if crate::access::is_outside_roots(&e) => {
                    if self.refused.insert(path.clone()) && self.share.index == 0 {
                        self.changed.insert(path.clone());
                        out.push(Record::new(path.display().to_string(), String::new()).with_error(e.to_string()));
                    }
                }
                Err(e) => {
                    result = Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
                    break;
                }
            }
        }
        if result.is_ok() {
            // A file read before that is gone (deleted, or renamed to a name the glob does
            // not match) takes its unfinished last line with it.
            for (path, state) in self.files.iter_mut().filter(|(p, _)| paths.binary_search(p).is_err()) {
                if let Some(lost) = lost_tail(path, state, "its file was deleted or renamed away", self.share) {
                    self.changed.insert(path.clone());
                    out.push(lost);
                }
            }
        }
        let states = || paths.iter().filter_map(|p| self.files.get(p));
        self.position = states().map(|state| state.offset).sum();
        self.bytes_read = if self.share.splits() {
            states().map(|state| if state.shape == Shape::Lines { state.consumed } else { state.offset }).sum()
        } else {
            self.position
        };
        result
    }

    /// Files read before that now have another name the glob matches (renamed by log
    /// rotation, whatever the names' order: `app.jsonl` → `app-1.jsonl` or `app.jsonl.1`, or a
    /// numbered chain `x-1` → `x-2`, `x` → `x-1`): each reading state whose file (device, inode)
    /// is no longer at its path but at another matching path moves there, so no file is read
    /// twice. A state left at a path that now holds a moved file belongs to a file that is gone:
    /// its unfinished last line is reported lost.
    fn follow_renames(&mut self, paths: &[PathBuf], out: &mut Vec<Record>) {
        let here: BTreeMap<&PathBuf, (u64, u64)> =
            paths.iter().filter_map(|p| Some((p, fs::metadata(p).ok().as_ref().and_then(identity)?))).collect();
        let at: std::collections::HashMap<(u64, u64), &PathBuf> = here.iter().map(|(p, id)| (*id, *p)).collect();
        let moves: Vec<(PathBuf, PathBuf)> = self
            .files
            .iter()
            .filter_map(|(old, state)| {
                let id = state.identity?;
                if here.get(old) == Some(&id) {
                    return None;
                }
                let new = at.get(&id)?;
                (*new != old).then(|| (old.clone(), (*new).clone()))
            })
            .collect();
        let moved: Vec<(PathBuf, FileState)> =
            moves.iter().filter_map(|(old, new)| Some((new.clone(), self.files.remove(old)?))).collect();
        for (old, _) in &moves {
            self.changed.insert(old.clone());
        }
        for (new, state) in moved {
            if let Some(mut gone) = self.files.insert(new.clone(), state)
                && let Some(lost) = lost_tail(&new, &mut gone, "its file was deleted or renamed away", self.share)
            {
                out.push(lost);
            }
            self.changed.insert(new);
        }
    }

    /// Where this reader is in each file whose reading state changed since the last call
    /// (`None`: the reader no longer knows the path, e.g. a rotated file it now reads under
    /// its new name), and the paths refused by the file roots since then. Kept with the records
    /// read up to them, they let a new reader go on where this one is
    /// ([`FileReader::resume`]).
    pub fn take_cursors(&mut self) -> (Vec<(PathBuf, Option<FileCursor>)>, Vec<PathBuf>) {
        let mut cursors = Vec::new();
        let mut refused = Vec::new();
        for path in std::mem::take(&mut self.changed) {
            if self.refused.contains(&path) {
                refused.push(path.clone());
            }
            match self.files.get(&path) {
                Some(state) => cursors.push((path, Some(FileCursor(state.clone())))),
                None if !self.refused.contains(&path) => cursors.push((path, None)),
                None => {}
            }
        }
        (cursors, refused)
    }

    /// Goes on where another reader of the same glob was: `cursors` (folded from its
    /// [`FileReader::take_cursors`], the last cursor of each path) and the paths it reported as
    /// refused (not reported again). A file that is no longer the one the cursor describes (its
    /// identity or first bytes changed, or it is shorter) is read again from its start, as
    /// [`FileReader::poll`] treats a file replaced between two polls.
    pub fn resume(
        &mut self,
        cursors: impl IntoIterator<Item = (PathBuf, FileCursor)>,
        refused: impl IntoIterator<Item = PathBuf>,
    ) {
        for (path, FileCursor(state)) in cursors {
            self.files.insert(path, state);
        }
        self.refused.extend(refused);
    }

    /// Reads at most `bytes` of each JSON-lines file per poll (whole lines; default: no
    /// limit), so a large file is ingested in bounded batches rather than held in memory at
    /// once. Array and single-document files are always read whole.
    pub fn set_max_poll_bytes(&mut self, bytes: u64) {
        self.max_poll_bytes = bytes.max(1);
    }

    /// The largest record read, in bytes (default [`DEFAULT_MAX_RECORD_BYTES`], 64 MiB): a
    /// JSON-lines line, array element or whole-file document longer than this is not decoded
    /// but returned as a record carrying the error `record of N bytes exceeds the maximum record
    /// size of M bytes (--max-record-bytes of run, cluster.max_record_bytes of serve)`, with its first 1 KiB as text; reading goes on with
    /// the next record. An oversized line is skipped without holding it in memory.
    pub fn set_max_record_bytes(&mut self, bytes: u64) {
        self.max_record_bytes = bytes.max(1);
    }

    /// Reads a file that is not JSON — neither JSON Lines, a JSON array nor one JSON document
    /// (the last rule of [`FileReader`]: e.g. a YAML file) — as one record at `path`, read
    /// once, rather than line by line (default: by line). For formats whose records are whole
    /// files ([`crate::Decoder::reads_whole_files`]).
    pub fn set_whole_other_files(&mut self, whole: bool) {
        self.whole_other = whole;
    }

    /// Splits the files between `peers` readers of the same glob, this one being number
    /// `index` (0-based), so that no reader copies what another reads. Default: every record
    /// (`0`, `1`). A JSON-lines file is cut into pieces of [`FileReader::set_max_poll_bytes`]
    /// bytes (every reader must set the same), piece `k` being reader `k mod peers`'s; a line is
    /// read by the reader whose piece holds its first byte. Such a reader does not count the
    /// lines of other pieces: its records' locations carry their byte offset, for
    /// [`FileReader::resolve_location`] (their [`Record::position`] is that offset, the same at
    /// every reader), and an unfinished line that is lost is reported by the reader that held
    /// it. Of other files (JSON arrays, whole documents), every `peers`-th record is returned,
    /// starting with record `index` (counted over those files in order): each reader still
    /// reads all their bytes.
    pub fn set_share(&mut self, index: u64, peers: u64) {
        self.share = Share { index, peers: peers.max(1), seen: self.share.seen };
    }

    /// Records found so far, including those left to other readers by [`FileReader::set_share`]
    /// in files that are not split by pieces (in those that are: this reader's).
    pub fn records_seen(&self) -> u64 {
        self.share.seen
    }

    /// Bytes consumed, at the last poll, of the files the glob matched then: comparable with
    /// [`FileReader::total_bytes`] for progress (a partial last line is not counted; a file
    /// replaced or truncated counts from its new start, a deleted one no longer counts). A
    /// reader that splits JSON-lines files by pieces counts the bytes of the lines it took:
    /// its peers' figures add up to the whole.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// How far the reader is in the files the glob matched at the last poll, summed (bytes):
    /// it grows whenever a poll moved on, also past other readers' pieces
    /// ([`FileReader::set_share`]), and stays when a poll found nothing new.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Turns a location made by a reader that splits JSON-lines files by pieces — the path,
    /// then the line's byte offset between marks, then whatever a decoder appended — into
    /// `path:LINE…` (the line's 1-based number), counting the newlines before the offset in
    /// the file; a location without the mark is left as it is. Counting goes on from where the
    /// last call for that file stopped (locations come in file order), so a reader counts each
    /// byte of a file at most once as long as that holds. When the file cannot be read (gone
    /// since), the location says `path:byte OFFSET`.
    pub fn resolve_location(&mut self, location: &mut String) {
        let Some(mark) = location.find(&format!(":{OFFSET_MARK}")) else { return };
        let digits = mark + 1 + OFFSET_MARK.len_utf8();
        let Some(len) = location[digits..].find(OFFSET_MARK) else { return };
        let Ok(offset) = location[digits..digits + len].parse::<u64>() else { return };
        let path = location[..mark].to_owned();
        // The glob matches only names that are UTF-8, which a path displays as it is.
        let shown = match self.files.get_key_value(Path::new(&path)).map(|(p, _)| p.clone()) {
            Some(file) => match self.lines_before(&file, offset) {
                Ok(lines) => (lines + 1).to_string(),
                Err(_) => format!("byte {offset}"),
            },
            None => format!("byte {offset}"),
        };
        location.replace_range(mark + 1..digits + len + OFFSET_MARK.len_utf8(), &shown);
    }

    /// The newlines in `path` before byte `offset`, counted on from the last count of it.
    fn lines_before(&mut self, path: &Path, offset: u64) -> io::Result<u64> {
        let identity = self.files.get(path).and_then(|s| s.identity);
        let (mut at, mut lines) = match self.line_marks.get(path) {
            Some(mark) if mark.identity == identity && mark.offset <= offset => (mark.offset, mark.lines),
            _ => (0, 0),
        };
        let mut file = self.access.open(path)?;
        file.seek(SeekFrom::Start(at))?;
        let mut buf = vec![0u8; (offset - at).min(1 << 20) as usize];
        while at < offset {
            let want = (offset - at).min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
            at += n as u64;
        }
        self.line_marks.insert(path.to_path_buf(), LineMark { identity, offset: at, lines });
        Ok(lines)
    }

    /// The sum of the current sizes of the matching files (for a progress bar).
    pub fn total_bytes(&self) -> u64 {
        self.paths().iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum()
    }
}

/// What a file that is neither a regular file nor a directory is, for an error message.
fn file_kind(t: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    let _ = t;
    "not a file or directory"
}

/// How much a poll reads: bytes of a JSON-lines file per poll, and the largest record; and
/// which files it may open.
#[derive(Clone, Copy, Debug)]
struct Limits<'a> {
    poll_bytes: u64,
    record_bytes: u64,
    access: &'a crate::FileAccess,
    /// [`FileReader::set_whole_other_files`].
    whole_other: bool,
}

/// The identity of a file: (device, inode) on Unix; nothing elsewhere (then a replaced file
/// is recognised by its start alone).
fn identity(meta: &fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// At most `len` bytes of the file from `offset` on.
fn bytes_at(path: &Path, offset: u64, len: usize, access: &crate::FileAccess) -> io::Result<Vec<u8>> {
    let mut file = access.open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether the file still starts with `head` (its first bytes as consumed earlier).
fn starts_with(path: &Path, head: &[u8], access: &crate::FileAccess) -> io::Result<bool> {
    if head.is_empty() {
        return Ok(true);
    }
    let mut start = Vec::with_capacity(head.len());
    access.open(path)?.take(head.len() as u64).read_to_end(&mut start)?;
    Ok(start == head)
}

/// Reads what is new in one file.
///
/// First checks that it is still the file read before: a file with another identity
/// (deleted and re-created, or renamed over: log rotation), one that is shorter than what was
/// consumed (truncated), or one whose first bytes changed (rewritten in place) is a new file,
/// read again from its start (its shape decided anew).
fn poll_file(
    path: &Path,
    state: &mut FileState,
    finish: bool,
    limits: Limits<'_>,
    share: &mut Share,
    out: &mut Vec<Record>,
) -> io::Result<()> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        // Matched by the glob but gone (e.g. rotated away): nothing to read now.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // A file whose size is 0 but that has content is not a regular file's data: a procfs or
    // sysfs pseudo-file (`/proc/self/status`). Its size says nothing about what was read, so
    // following it would read it again on every poll.
    if meta.len() == 0 {
        let mut first = [0u8; 1];
        if limits.access.open(path)?.read(&mut first)? > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "reports a size of 0 but has content (a procfs or sysfs pseudo-file); only regular files can be read",
            ));
        }
    }
    let id = identity(&meta);
    let replaced = (state.identity.is_some() && state.identity != id)
        || meta.len() < state.offset
        || match starts_with(path, &state.head, limits.access) {
            Ok(same) => !same,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
    // An unfinished line that was not continued but overwritten (the consumed part intact).
    let tail_changed = !replaced
        && state.pending_bytes > 0
        && match bytes_at(path, state.offset, state.pending_head.len(), limits.access) {
            Ok(now) => now != state.pending_head,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
    if (replaced || tail_changed)
        && let Some(lost) = lost_tail(path, state, "its file was replaced, truncated or rewritten", *share)
    {
        out.push(lost);
    }
    if replaced {
        *state = FileState { resets: state.resets + 1, ..FileState::default() };
    }
    state.identity = id;
    let result = poll_current(path, state, finish, limits, share, out);
    if state.head.len() < HEAD_BYTES && state.offset > state.head.len() as u64 {
        // Remember the start of what was consumed (once it is 64 bytes, it stays).
        let mut head = Vec::with_capacity(HEAD_BYTES);
        if let Ok(f) = limits.access.open(path) {
            f.take(state.offset.min(HEAD_BYTES as u64)).read_to_end(&mut head)?;
            state.head = head;
        }
    }
    result
}

/// The record reporting what `state` had seen of an unfinished last line (or of a skipped
/// oversized one) that can no longer be read, `why`; `None` when there is none, or when this
/// reader is not share index 0 (one reader reports it) and does not split the file by pieces.
/// Forgets it either way.
fn lost_tail(path: &Path, state: &mut FileState, why: &str, share: Share) -> Option<Record> {
    let (bytes, head, start) = match state.oversized.take() {
        Some(over) => (over.bytes + state.pending_bytes, over.head, over.start),
        None => (state.pending_bytes, std::mem::take(&mut state.pending_head), state.offset),
    };
    state.pending_bytes = 0;
    state.pending_head.clear();
    // A reader that splits the file by pieces holds only the lines of its own pieces: the one
    // that saw the unfinished line reports it.
    let mine = share.index == 0 || (share.splits() && state.shape == Shape::Lines);
    if bytes == 0 || !mine {
        return None;
    }
    // A reader that splits the file has not counted its lines, and the file that held them is
    // gone: the line is where its first byte was.
    let location = if share.splits() {
        format!("{}:byte {start}", path.display())
    } else {
        format!("{}:{}", path.display(), state.lines + 1)
    };
    Some(Record::new(location, String::from_utf8_lossy(&head).into_owned()).with_error(format!(
        "an unfinished last line of {bytes} bytes (no newline yet) was lost: {why} before the line was ended"
    )))
}

/// Notes the bytes past `state.offset` a poll saw at the end of the file (`rest`, of which it
/// holds the first ones) for [`lost_tail`].
fn note_pending(state: &mut FileState, rest: &[u8]) {
    state.pending_bytes = rest.len() as u64;
    state.pending_head.clear();
    state.pending_head.extend_from_slice(&rest[..rest.len().min(RAW_BYTES)]);
}

/// A record of `bytes` at `location`, or, when longer than `limit` bytes, a record carrying
/// the error `record of N bytes exceeds the maximum record size of M bytes
/// (--max-record-bytes of run, cluster.max_record_bytes of serve)` (with its first 1 KiB as text), as the file reader makes them; for
/// records that arrive otherwise (pushed over HTTP).
pub fn record_within(location: String, bytes: &[u8], limit: u64) -> Record {
    if bytes.len() as u64 > limit {
        oversized_record(location, bytes.len() as u64, &bytes[..bytes.len().min(RAW_BYTES)], limit)
    } else {
        Record::from_bytes(location, bytes)
    }
}

/// The record reporting a record of `size` bytes (starting with `head`) past `limit`.
/// The record of an oversized one: at `location`, `size` bytes of which `head` are the first
/// (its raw text: at most [`RAW_BYTES`] are kept), carrying the error `record of N bytes exceeds
/// the maximum record size of M bytes (…)`.
pub fn oversized_record(location: String, size: u64, head: &[u8], limit: u64) -> Record {
    let head = &head[..head.len().min(RAW_BYTES)];
    Record::new(location, String::from_utf8_lossy(head).into_owned()).with_error(format!(
        "record of {size} bytes exceeds the maximum record size of {limit} bytes (--max-record-bytes of run, cluster.max_record_bytes of serve)"
    ))
}

/// Reads what is new in a file known to be the one read before.
#[allow(clippy::too_many_arguments)]
fn poll_current(
    path: &Path,
    state: &mut FileState,
    finish: bool,
    limits: Limits<'_>,
    share: &mut Share,
    out: &mut Vec<Record>,
) -> io::Result<()> {
    if state.shape == Shape::Unknown && starts_as_json_lines(path, limits.access)? {
        // Decided from the first line alone: no need to read the whole file now.
        state.shape = Shape::Lines;
    }
    if state.shape == Shape::Unknown {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let name = path.display().to_string();
        let body = data.strip_prefix(BOM).unwrap_or(&data);
        // Text that is not JSON: one record for a reader of whole files, else lines.
        let decision = match classify(body, finish) {
            Decision::Other if limits.whole_other => Decision::Document,
            Decision::Other => Decision::Lines,
            decision => decision,
        };
        match decision {
            Decision::Wait => {
                note_pending(state, &data);
                return Ok(());
            }
            Decision::Array => {
                for piece in split_array(body) {
                    let location = match piece.index {
                        Some(index) => format!("{name}:{}#{index}", piece.line),
                        None => format!("{name}:{}", piece.line),
                    };
                    if !share.take() {
                        continue;
                    }
                    let record = record_within(location, &body[piece.start..piece.end], limits.record_bytes);
                    out.push(match piece.error {
                        Some(reason) if record.error.is_none() => record.with_error(reason),
                        _ => record,
                    });
                }
                state.shape = Shape::Done;
                state.offset = data.len() as u64;
                note_pending(state, &[]);
                return Ok(());
            }
            Decision::Document => {
                if share.take() {
                    out.push(record_within(name, body, limits.record_bytes));
                }
                state.shape = Shape::Done;
                state.offset = data.len() as u64;
                note_pending(state, &[]);
                return Ok(());
            }
            // Read as lines below, in bounded pieces.
            Decision::Lines | Decision::Other => state.shape = Shape::Lines,
        }
    }
    if state.shape == Shape::Done {
        return Ok(());
    }
    read_lines(path, state, finish, limits, share, out)
}

/// Reads the JSON-lines file from `state.offset` on: pieces of at most `limits.poll_bytes`,
/// whole lines only, except that a poll goes on reading until it has consumed at least one
/// line (so a line longer than a piece is read whole, and one longer than the maximum record
/// size is skipped to its end and reported) or has reached the end of the file.
fn read_lines(
    path: &Path,
    state: &mut FileState,
    finish: bool,
    limits: Limits<'_>,
    share: &mut Share,
    out: &mut Vec<Record>,
) -> io::Result<()> {
    let name = path.display().to_string();
    let mut file = match limits.access.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if share.splits() {
        return read_pieces(&name, &mut file, len, state, finish, limits, share, out);
    }
    file.seek(SeekFrom::Start(state.offset))?;
    let piece = limits.poll_bytes.max(1);
    // `data` holds the unconsumed bytes read so far, from `state.offset` on; sized for the
    // first piece (at most 64 MiB), so reading it does not grow (and copy) the buffer step by step.
    let first = piece.min(len.saturating_sub(state.offset)).min(64 << 20) as usize;
    let mut data = Vec::with_capacity(first);
    let mut pos = state.offset;
    loop {
        let before = data.len();
        (&mut file).take(piece).read_to_end(&mut data)?;
        pos += (data.len() - before) as u64;
        let at_end = pos >= len || data.len() == before;
        let lines_before = state.lines;
        let mut used = 0;
        if state.oversized.is_some() {
            used = skip_oversized(&name, state, &data, finish && at_end, limits.record_bytes, share, out);
        }
        if state.oversized.is_none() {
            let lines = Lines { base: state.offset + used as u64, stop: usize::MAX, finish: finish && at_end };
            used += take_lines(&name, state, &data[used..], lines, limits.record_bytes, share, out);
            let rest = &data[used..];
            if state.oversized.is_none() && unfinished_len(rest) > limits.record_bytes {
                // An unfinished line already past the limit: skip it from here on.
                state.oversized = Some(Oversized::at(state.lines + 1, state.offset + used as u64));
                used += skip_oversized(&name, state, &data[used..], finish && at_end, limits.record_bytes, share, out);
            }
        }
        state.offset += used as u64;
        data.drain(..used);
        if at_end {
            note_pending(state, &data);
            return Ok(());
        }
        if state.lines > lines_before {
            // More to read: what was seen past the offset is read on by the next poll.
            note_pending(state, &[]);
            return Ok(());
        }
    }
}

/// Reads the lines of a JSON-lines file that start in this reader's pieces (`limits.poll_bytes`
/// bytes each; piece `k` is reader `k mod peers`'s: see [`FileReader::set_share`]), from
/// `state.offset` on, to the end of the current piece: a line is read by the reader whose piece
/// holds its first byte, to its end wherever that is; the others' pieces are passed without
/// reading them, except for the bytes that find where the first line of a piece begins and
/// those read past a piece's end (4 KiB at first) to end the line that crosses it.
/// Each call reads at most one piece (and the end of the line that crosses its end), or none
/// when there is nothing of this reader's to read yet.
#[allow(clippy::too_many_arguments)]
fn read_pieces(
    name: &str,
    file: &mut fs::File,
    len: u64,
    state: &mut FileState,
    finish: bool,
    limits: Limits<'_>,
    share: &mut Share,
    out: &mut Vec<Record>,
) -> io::Result<()> {
    /// Bytes read at a time past the end of a piece, to end the line that crosses it.
    const CROSSING: u64 = 4 << 10;
    let piece = limits.poll_bytes.max(1);
    // Not amid a line of this reader's (an oversized one being skipped): go to the first line
    // that starts in a piece of its.
    if state.oversized.is_none() && !share.owns(state.offset / piece) {
        match first_line_in_pieces(file, state.offset, len, piece, share)? {
            Some(start) => state.offset = start,
            None => {
                // Nothing of its own (what it saw before the shape was decided is not its).
                note_pending(state, &[]);
                return Ok(());
            }
        }
        note_pending(state, &[]);
    }
    // The first byte past the piece (of the oversized line being skipped, if one is: the
    // offset is then amid it, maybe in another reader's piece): lines that start there are
    // another reader's.
    let anchor = state.oversized.as_ref().map_or(state.offset, |over| over.start);
    let boundary = (anchor / piece + 1).saturating_mul(piece);
    file.seek(SeekFrom::Start(state.offset))?;
    let mut data = Vec::with_capacity(boundary.saturating_sub(state.offset).min(piece).min(64 << 20) as usize);
    let mut pos = state.offset;
    // Past the boundary, in growing steps (a line that crosses it is read to its end, and data
    // read already is scanned again at each step).
    let mut crossing = CROSSING;
    loop {
        let want = if state.oversized.is_some() {
            piece.max(CROSSING)
        } else if pos < boundary {
            boundary - pos
        } else {
            crossing = crossing.saturating_mul(2);
            crossing / 2
        };
        let before = data.len();
        (&mut *file).take(want).read_to_end(&mut data)?;
        pos += (data.len() - before) as u64;
        let at_end = pos >= len || data.len() == before;
        let mut used = 0;
        if state.oversized.is_some() {
            used = skip_oversized(name, state, &data, finish && at_end, limits.record_bytes, share, out);
        }
        let mut ours = true;
        if state.oversized.is_none() {
            let base = state.offset + used as u64;
            // Lines that start at or past the boundary are not taken.
            let stop = boundary.saturating_sub(base).min(usize::MAX as u64) as usize;
            let lines = Lines { base, stop, finish: finish && at_end };
            used += take_lines(name, state, &data[used..], lines, limits.record_bytes, share, out);
            ours = state.offset + (used as u64) < boundary;
            let rest = &data[used..];
            if ours && unfinished_len(rest) > limits.record_bytes {
                // An unfinished line of this reader's already past the limit: skip it from here on.
                state.oversized = Some(Oversized::at(state.lines + 1, state.offset + used as u64));
                used += skip_oversized(name, state, &data[used..], finish && at_end, limits.record_bytes, share, out);
                ours = true;
            }
        }
        state.offset += used as u64;
        state.consumed += used as u64;
        data.drain(..used);
        if !ours || (state.oversized.is_none() && state.offset >= boundary) {
            // The piece is read: the next poll goes on at the next one of this reader's.
            note_pending(state, &[]);
            return Ok(());
        }
        if at_end {
            note_pending(state, &data);
            return Ok(());
        }
    }
}

/// Where the first line that starts in a piece of this reader's begins, at or after offset
/// `from` (in another reader's piece) of a file of `len` bytes: the byte after the first
/// newline at or after the piece's start minus one (so a piece that starts a line starts with
/// it); a piece in which no line starts (one line crosses it whole) is passed. `None` when there
/// is none yet: the file ends before it.
fn first_line_in_pieces(
    file: &mut fs::File,
    from: u64,
    len: u64,
    piece: u64,
    share: &Share,
) -> io::Result<Option<u64>> {
    let mut next = share.next_owned(from / piece, piece);
    let mut buf = Vec::new();
    loop {
        if next >= len {
            return Ok(None);
        }
        let end = next.saturating_add(piece);
        // Read from the byte before the piece, in growing steps: a line is usually short.
        let mut at = next - 1;
        let mut step = 4096u64;
        let found = loop {
            let want = step.min(end - 1 - at);
            if want == 0 {
                break None;
            }
            file.seek(SeekFrom::Start(at))?;
            buf.clear();
            (&mut *file).take(want).read_to_end(&mut buf)?;
            if let Some(i) = memchr::memchr(b'\n', &buf) {
                break Some(at + i as u64 + 1);
            }
            at += buf.len() as u64;
            if (buf.len() as u64) < want {
                // The end of the file, within the piece: no line starts in it yet (with
                // `finish`: none will).
                return Ok(None);
            }
            step = step.saturating_mul(2);
        };
        match found {
            Some(start) => return Ok(Some(start)),
            // No newline up to the piece's last byte but one: a line crosses the piece whole.
            None => next = share.next_owned(end / piece, piece),
        }
    }
}

/// Skips the oversized line `state.oversized` over `data` (bytes after what was skipped so
/// far): at its newline (or, with `finish`, the end of `data`) the record reporting it is
/// emitted and the line counted. Returns the bytes consumed.
fn skip_oversized(
    name: &str,
    state: &mut FileState,
    data: &[u8],
    finish: bool,
    limit: u64,
    share: &mut Share,
    out: &mut Vec<Record>,
) -> usize {
    let Some(over) = state.oversized.as_mut() else { return 0 };
    let (len, used, done) = match memchr::memchr(b'\n', data) {
        Some(i) => (i, i + 1, true),
        None => (data.len(), data.len(), finish),
    };
    over.bytes += len as u64;
    let keep = (RAW_BYTES - over.head.len()).min(len);
    over.head.extend_from_slice(&data[..keep]);
    if len > 0 {
        over.ends_in_cr = data[len - 1] == b'\r';
    }
    if done {
        let mut over = state.oversized.take().expect("checked above");
        state.lines = over.line;
        // A `\r` before the newline is no part of the record.
        let mut size = over.bytes;
        if over.ends_in_cr && len < data.len() {
            size -= 1;
            if over.head.len() as u64 > size {
                over.head.pop();
            }
        }
        if share.splits() && state.shape == Shape::Lines {
            share.seen += 1;
            out.push(oversized_record(line_location(name, over.line, over.start, true), size, &over.head, limit));
        } else if share.take() {
            out.push(oversized_record(format!("{name}:{}", over.line), size, &over.head, limit));
        }
    }
    used
}

/// Whether a file is JSON lines judging by its start alone: its first non-whitespace byte is
/// not `[` and its first line is complete and parses (rule 3 of [`FileReader`]).
fn starts_as_json_lines(path: &Path, access: &crate::FileAccess) -> io::Result<bool> {
    const PREFIX_BYTES: u64 = 1 << 20;
    let file = match access.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut prefix = Vec::new();
    file.take(PREFIX_BYTES).read_to_end(&mut prefix)?;
    let body = prefix.strip_prefix(BOM).unwrap_or(&prefix);
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else { return Ok(false) };
    if body[start] == b'[' {
        return Ok(false);
    }
    Ok(match memchr::memchr(b'\n', &body[start..]) {
        Some(i) => parses(&body[start..start + i]),
        None => false,
    })
}

/// Where [`take_lines`] reads: the offset in the file of its data's first byte (`base`), where
/// in the data no more lines start that it may take (`stop`), and whether the data's end is
/// the end of input (`finish`: a last line without newline is a line).
#[derive(Clone, Copy, Debug)]
struct Lines {
    base: u64,
    stop: usize,
    finish: bool,
}

/// Splits `data` (unconsumed bytes of the file, from `state.offset` on) into line records,
/// up to the first line that starts at or past `lines.stop`; returns the bytes consumed
/// (complete lines; with `lines.finish`, all). At the file's start, a UTF-8 byte order mark
/// is skipped. A line longer than `limit` becomes a record carrying the oversized-record
/// error. A reader that splits the file by pieces takes every line (the caller gave it only
/// the lines of its piece) and marks each with its byte offset, not its number.
fn take_lines(
    name: &str,
    state: &mut FileState,
    data: &[u8],
    lines: Lines,
    limit: u64,
    share: &mut Share,
    out: &mut Vec<Record>,
) -> usize {
    let split = share.splits();
    let bom = if lines.base == 0 && data.starts_with(BOM) { BOM.len() } else { 0 };
    let mut pos = bom;
    // The first line starts at the file's first byte, before its byte order mark.
    while pos < data.len() && (if pos == bom { 0 } else { pos }) < lines.stop {
        let (line, next) = match memchr::memchr(b'\n', &data[pos..]) {
            Some(i) => (&data[pos..pos + i], pos + i + 1),
            None if lines.finish => (&data[pos..], data.len()),
            None => break,
        };
        state.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if is_blank(line) {
            pos = next;
            continue;
        }
        let mine = if split {
            share.seen += 1;
            true
        } else {
            share.take()
        };
        if mine {
            out.push(record_within(line_location(name, state.lines, lines.base + pos as u64, split), line, limit));
        }
        pos = next;
    }
    if split && pos == bom && bom > 0 && !lines.finish {
        // The mark alone: it goes with the first line (whose start, byte 0, makes it this
        // reader's), not before it, which would leave the line at a byte of another's piece.
        return 0;
    }
    pos
}

/// The length of an unfinished line so far, as a record: a `\r` it ends with is no part of it
/// if a newline follows.
fn unfinished_len(rest: &[u8]) -> u64 {
    rest.strip_suffix(b"\r").unwrap_or(rest).len() as u64
}

/// Whether `b` is empty or only ASCII whitespace.
fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// Whether `b` parses as one JSON value (surrounding whitespace allowed).
fn parses(b: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(b).is_ok()
}

/// The shape decided for a file's content.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Wait,
    Array,
    Lines,
    Document,
    /// Not JSON at all: lines, or one record when the reader reads such files whole.
    Other,
}

/// Decides a file's shape from its whole current content, without a byte order mark (see
/// [`FileReader`]).
fn classify(data: &[u8], finish: bool) -> Decision {
    let Some(start) = data.iter().position(|b| !b.is_ascii_whitespace()) else {
        return if finish { Decision::Lines } else { Decision::Wait };
    };
    if data[start] == b'[' {
        return classify_bracket(data, start, finish);
    }
    let incomplete = |r: Result<IgnoredAny, serde_json::Error>| !finish && r.is_err_and(|e| e.is_eof());
    let first_line = match memchr::memchr(b'\n', &data[start..]) {
        Some(i) => &data[start..start + i],
        None if finish => &data[start..],
        None => return Decision::Wait,
    };
    if parses(first_line) {
        return Decision::Lines;
    }
    let whole = serde_json::from_slice::<IgnoredAny>(data);
    if whole.is_ok() {
        Decision::Document
    } else if incomplete(whole) {
        Decision::Wait
    } else {
        Decision::Other
    }
}

/// Decides the shape of a file whose first non-whitespace byte (at `open`) is `[`: steps 1-5
/// of [`FileReader`].
fn classify_bracket(data: &[u8], open: usize, finish: bool) -> Decision {
    // 1, 2: the whole text as one JSON value.
    match serde_json::from_slice::<IgnoredAny>(data) {
        Ok(_) => return Decision::Array,
        Err(e) if e.is_eof() => return if finish { Decision::Array } else { Decision::Wait },
        Err(_) => {}
    }
    // 3, 4: the complete non-empty lines.
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if !finish {
        // The last piece is not terminated by `\n` (empty when the text ends with one).
        lines.pop();
    }
    let mut lines = lines.into_iter().map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !is_blank(l));
    if let Some(first) = lines.next() {
        if parses(first) {
            return Decision::Lines;
        }
        let (mut total, mut good) = (0usize, 0usize);
        for line in lines {
            total += 1;
            good += usize::from(parses(line));
        }
        if total > 0 && 2 * good > total {
            return Decision::Lines;
        }
    }
    // 5: the brackets.
    match array_end(data, open) {
        Some(close) if is_blank(&data[close + 1..]) => Decision::Array,
        Some(_) => Decision::Lines,
        None if finish => Decision::Array,
        None => Decision::Wait,
    }
}

/// The first `,` or `]` at nesting depth 0 at or after `from` (which must be outside any
/// string), skipping strings (with their escapes) and bracketed parts; `None` when the text
/// ends first. A `}` at depth 0 is ignored.
fn find_separator(b: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = from;
    while let Some(&c) = b.get(i) {
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_string = true,
                b'[' | b'{' => depth += 1,
                b',' | b']' if depth == 0 => return Some(i),
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// The position of the `]` closing the array opened at `open`, by [`find_separator`];
/// `None` when it is not closed.
fn array_end(b: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        let sep = find_separator(b, i)?;
        if b[sep] == b']' {
            return Some(sep);
        }
        i = sep + 1;
    }
}

/// The first position at or after `i` that is not ASCII whitespace (or the end).
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// `end` moved back over ASCII whitespace, not before `start`.
fn trim_end(b: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && b[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    end
}

/// The end of the JSON value starting at `start`, when one parses there.
fn parse_value(b: &[u8], start: usize) -> Option<usize> {
    let mut values = serde_json::Deserializer::from_slice(&b[start..]).into_iter::<IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => Some(start + values.byte_offset()),
        _ => None,
    }
}

/// A part of a top-level JSON array file that becomes one record.
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    /// Byte range in the file (without byte order mark).
    start: usize,
    end: usize,
    /// The line where the part starts (1-based).
    line: u64,
    /// The element index; `None` for a part that is no element.
    index: Option<usize>,
    /// The error the record carries (see [`Record::error`]).
    error: Option<String>,
}

/// The message of the record at the end of an array that stops before its closing `]`.
const UNTERMINATED: &str = "unterminated JSON array: the file ends before its closing `]`";

/// Splits a file whose first non-whitespace byte is `[` into its elements (and the parts that
/// are no element), element by element, resynchronising after a broken element (see the
/// [module docs](crate::record)).
fn split_array(b: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    // Line numbers, counted incrementally (positions asked for only increase).
    let (mut counted, mut line) = (0usize, 1u64);
    let mut line_at = |pos: usize| {
        line += b[counted..pos].iter().filter(|&&c| c == b'\n').count() as u64;
        counted = pos;
        line
    };
    let open = skip_ws(b, 0);
    let mut i = skip_ws(b, (open + 1).min(b.len()));
    let mut index = 0;
    // `i` is at an element, or at `]` (only for an empty array).
    let close = if b.get(i) == Some(&b']') {
        i
    } else {
        loop {
            i = skip_ws(b, i);
            if i >= b.len() {
                pieces.push(Piece {
                    start: i,
                    end: i,
                    line: line_at(b.len()),
                    index: None,
                    error: Some(UNTERMINATED.into()),
                });
                return pieces;
            }
            let start = i;
            let line = line_at(start);
            // A good element: a value followed by `,`, `]` or the end of the file.
            let good = parse_value(b, start).filter(|&end| matches!(b.get(skip_ws(b, end)), None | Some(b',' | b']')));
            let (end, next) = match good {
                Some(end) => (end, skip_ws(b, end)),
                None => match find_separator(b, start) {
                    Some(sep) => (trim_end(b, start, sep), sep),
                    None => (trim_end(b, start, b.len()), b.len()),
                },
            };
            let error = (end == start && next < b.len()).then(|| "empty array element".to_owned());
            pieces.push(Piece { start, end, line, index: Some(index), error });
            index += 1;
            match b.get(next) {
                Some(b',') => i = next + 1,
                Some(_) => break next,
                // A good last element without `]`: report the missing bracket. After a broken
                // element that reaches the end, the decoder's error says enough.
                None if good.is_some() => i = next,
                None => return pieces,
            }
        }
    };
    let rest = skip_ws(b, close + 1);
    if rest < b.len() {
        pieces.push(Piece {
            start: rest,
            end: trim_end(b, rest, b.len()),
            line: line_at(rest),
            index: None,
            error: Some("unexpected text after the closing `]` of the JSON array".into()),
        });
    }
    pieces
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A fresh empty directory under the system temp dir (`tempfile`), removed on drop, with
    /// the helpers the tests write files through.
    pub(crate) struct TempDir(tempfile::TempDir);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            TempDir(
                tempfile::Builder::new().prefix(&format!("amx-connectors-{tag}-")).tempdir().expect("create temp dir"),
            )
        }
        pub(crate) fn path(&self) -> &std::path::Path {
            self.0.path()
        }
        pub(crate) fn write(&self, name: &str, text: &str) -> String {
            let p = self.path().join(name);
            fs::write(&p, text).expect("write temp file");
            p.display().to_string()
        }
        pub(crate) fn append(&self, name: &str, text: &str) {
            let mut f = fs::OpenOptions::new().append(true).open(self.path().join(name)).expect("open");
            f.write_all(text.as_bytes()).expect("append");
        }
        pub(crate) fn glob(&self, pattern: &str) -> String {
            self.path().join(pattern).display().to_string()
        }
    }

    fn poll(r: &mut FileReader, finish: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        r.poll(finish, &mut out).expect("poll");
        assert!(out.iter().all(|rec| rec.error.is_none()), "{out:?}");
        out.into_iter().map(|rec| (rec.location, rec.text)).collect()
    }

    /// Like [`poll`], with the records' errors.
    fn poll_err(r: &mut FileReader, finish: bool) -> Vec<(String, String, Option<String>)> {
        let mut out = Vec::new();
        r.poll(finish, &mut out).expect("poll");
        out.into_iter().map(|rec| (rec.location, rec.text, rec.error)).collect()
    }

    fn rec_err(loc: String, text: &str, error: Option<&str>) -> (String, String, Option<String>) {
        (loc, text.to_owned(), error.map(str::to_owned))
    }

    #[test]
    fn readers_with_shares_split_the_records() {
        let dir = TempDir::new("share");
        // An array's elements are split by record: 0, 2 to the first reader, 1 to the second.
        let array = dir.write("a.json", "[1,\n2,\n3]");
        let mut even = FileReader::new(&dir.glob("a.json")).unwrap();
        even.set_share(0, 2);
        let mut odd = FileReader::new(&dir.glob("a.json")).unwrap();
        odd.set_share(1, 2);
        let loc = |l: usize, i: usize, t: &str| (format!("{array}:{l}#{i}"), t.to_owned());
        assert_eq!(poll(&mut even, true), vec![loc(1, 0, "1"), loc(3, 2, "3")]);
        assert_eq!(poll(&mut odd, true), vec![loc(2, 1, "2")]);
        assert_eq!((even.records_seen(), odd.records_seen()), (3, 3));
    }

    /// Polls `r` until it moves no more, each poll's locations resolved as the worker does.
    fn drain_resolved(r: &mut FileReader, finish: bool) -> Vec<(String, String, Option<String>)> {
        let mut all = Vec::new();
        loop {
            let before = (r.position(), r.records_seen());
            let mut out = Vec::new();
            r.poll(finish, &mut out).expect("poll");
            for mut rec in out {
                r.resolve_location(&mut rec.location);
                all.push((rec.location, rec.text, rec.error));
            }
            if (r.position(), r.records_seen()) == before {
                return all;
            }
        }
    }

    #[test]
    fn readers_with_shares_split_json_lines_by_pieces() {
        let dir = TempDir::new("pieces");
        // Bytes: "1\n" 0-1, "2\n" 2-3, "\n" 4, "3\n" 5-6, "4\n" 7-8, "5\n" 9-10. Pieces of 3 bytes:
        // [0,3) lines 1-2, [3,6) line 4 (line 3 is blank), [6,9) line 5, [9,12) line 6.
        let path = dir.write("s.jsonl", "1\n2\n\n3\n4\n5\n");
        let reader = |index| {
            let mut r = FileReader::new(&dir.glob("*.jsonl")).unwrap();
            r.set_share(index, 2);
            r.set_max_poll_bytes(3);
            r
        };
        let (mut even, mut odd) = (reader(0), reader(1));
        // Unresolved, a location carries the line's byte offset, and orders by it.
        let mut out = Vec::new();
        odd.poll(true, &mut out).expect("poll");
        assert_eq!(out[0].location, format!("{path}:\u{1}5\u{1}"));
        assert_eq!(out[0].position(), Some(5));
        let loc = |l: usize, t: &str| (format!("{path}:{l}"), t.to_owned(), None);
        assert_eq!(drain_resolved(&mut even, true), vec![loc(1, "1"), loc(2, "2"), loc(5, "4")]);
        let mut odd = reader(1);
        assert_eq!(drain_resolved(&mut odd, true), vec![loc(4, "3"), loc(6, "5")]);
        assert_eq!((even.records_seen(), odd.records_seen()), (3, 2));
        // Each counts the bytes of its own lines (the blank one at byte 4 is the second's):
        // together, the file.
        assert_eq!((even.bytes_read(), odd.bytes_read()), (6, 5));
        // A decoder's suffix is kept.
        let mut located = format!("{path}:\u{1}9\u{1}/messages/2");
        odd.resolve_location(&mut located);
        assert_eq!(located, format!("{path}:6/messages/2"));
    }

    /// Every record of `glob` read by `peers` readers splitting it by pieces of `piece` bytes
    /// (records longer than `limit` are errors), sorted.
    fn read_split(glob: &str, peers: u64, piece: u64, limit: u64) -> Vec<(String, String, Option<String>)> {
        let mut got = Vec::new();
        for index in 0..peers {
            let mut r = FileReader::new(glob).unwrap();
            r.set_share(index, peers);
            r.set_max_poll_bytes(piece);
            r.set_max_record_bytes(limit);
            got.extend(drain_resolved(&mut r, true));
        }
        got.sort();
        got
    }

    #[test]
    fn a_byte_order_mark_belongs_to_the_first_line_whatever_the_pieces() {
        let dir = TempDir::new("bom");
        let path = dir.write("b.jsonl", "\u{feff}{\"a\":1}\n{\"b\":2}\n");
        let want = vec![
            (format!("{path}:1"), "{\"a\":1}".to_owned(), None),
            (format!("{path}:2"), "{\"b\":2}".to_owned(), None),
        ];
        assert_split_reads(&dir.glob("*.jsonl"), 1..=4, 1..=6, 100, &want);
    }

    /// [`read_split`] of `glob` by every number of readers in `peers` and every piece size in
    /// `pieces`, with record limit `limit`, gives `want`.
    fn assert_split_reads(
        glob: &str,
        peers: std::ops::RangeInclusive<u64>,
        pieces: std::ops::RangeInclusive<u64>,
        limit: u64,
        want: &[(String, String, Option<String>)],
    ) {
        for peers in peers {
            for piece in pieces.clone() {
                assert_eq!(read_split(glob, peers, piece, limit), want, "{peers} readers, pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_crlf_line_of_the_largest_size_is_a_record_wherever_a_read_ends() {
        let dir = TempDir::new("crlf");
        // Line 2 is 34 bytes, then `\r\n`: exactly the limit.
        let long = "{\"t\":\"a\",\"n\":\"n\",\"l\":\"xxxxxxxxxx\"}";
        assert_eq!(long.len(), 34);
        let path = dir.write("c.jsonl", &format!("{{\"z\":1}}\n{long}\r\n{{\"b\":2}}\n"));
        let want = vec![
            (format!("{path}:1"), "{\"z\":1}".to_owned(), None),
            (format!("{path}:2"), long.to_owned(), None),
            (format!("{path}:3"), "{\"b\":2}".to_owned(), None),
        ];
        assert_split_reads(&dir.glob("*.jsonl"), 1..=3, 1..=48, 34, &want);
    }

    #[test]
    fn a_followed_oversized_line_ending_in_another_readers_piece_is_its_readers_alone() {
        let dir = TempDir::new("overfollow");
        let path = dir.write("o.jsonl", "{\"z\":1}\n");
        let readers = |peers: u64| -> Vec<FileReader> {
            (0..peers)
                .map(|i| {
                    let mut r = FileReader::new(&dir.glob("*.jsonl")).unwrap();
                    r.set_share(i, peers);
                    r.set_max_poll_bytes(16);
                    r.set_max_record_bytes(34);
                    r
                })
                .collect()
        };
        for peers in 2..=3 {
            dir.write("o.jsonl", "{\"z\":1}\n");
            let mut rs = readers(peers);
            let mut got = Vec::new();
            for r in &mut rs {
                got.extend(drain_resolved(r, false));
            }
            // An unfinished line past the limit (skipped as it is written), ended later in
            // another reader's piece, then two more lines.
            let big = format!("{{\"t\":\"{}\"}}", "q".repeat(200));
            dir.append("o.jsonl", &big);
            for r in &mut rs {
                got.extend(drain_resolved(r, false));
            }
            dir.append("o.jsonl", "\n{\"c\":1}\nbad4\n");
            for r in &mut rs {
                got.extend(drain_resolved(r, false));
            }
            for r in &mut rs {
                got.extend(drain_resolved(r, true));
            }
            got.sort();
            let too_long = "record of 208 bytes exceeds the maximum record size of 34 bytes (--max-record-bytes of run, \
                            cluster.max_record_bytes of serve)";
            let want = vec![
                (format!("{path}:1"), "{\"z\":1}".to_owned(), None),
                (format!("{path}:2"), big[..RAW_BYTES.min(big.len())].to_owned(), Some(too_long.to_owned())),
                (format!("{path}:3"), "{\"c\":1}".to_owned(), None),
                (format!("{path}:4"), "bad4".to_owned(), None),
            ];
            assert_eq!(got, want, "{peers} readers");
        }
    }

    #[test]
    fn a_line_that_crosses_pieces_is_read_by_the_reader_of_its_start() {
        let dir = TempDir::new("crossing");
        // A 30-byte line from byte 2 crosses pieces 0-7 (4 bytes each); the next starts at 33.
        let long = format!("{{\"p\":\"{}\"}}", "x".repeat(22));
        let text = format!("1\n{long}\n2\n3\n{}", "4");
        let path = dir.write("c.jsonl", &text);
        let mut got = Vec::new();
        for index in 0..3 {
            let mut r = FileReader::new(&dir.glob("*.jsonl")).unwrap();
            r.set_share(index, 3);
            r.set_max_poll_bytes(4);
            r.set_max_record_bytes(20);
            for rec in drain_resolved(&mut r, true) {
                got.push((index, rec));
            }
        }
        got.sort_by(|a, b| a.1.cmp(&b.1));
        let too_long = "record of 30 bytes exceeds the maximum record size of 20 bytes (--max-record-bytes of run, \
                        cluster.max_record_bytes of serve)";
        let at = |l: usize| format!("{path}:{l}");
        // Line 2 starts in piece 0 (reader 0); line 3 at byte 33 (piece 8: reader 2), line 4 at
        // 35 (piece 8), line 5 at 37 (piece 9: reader 0), ended by the end of input.
        assert_eq!(
            got,
            vec![
                (0, (at(1), "1".to_owned(), None)),
                (0, (at(2), long.clone(), Some(too_long.to_owned()))),
                (2, (at(3), "2".to_owned(), None)),
                (2, (at(4), "3".to_owned(), None)),
                (0, (at(5), "4".to_owned(), None)),
            ]
        );
    }

    #[test]
    fn json_lines_are_read_in_bounded_pieces() {
        let dir = TempDir::new("bounded");
        // Three 8-byte lines; the last has no newline.
        let path = dir.write("b.jsonl", "{\"a\":1}\n{\"a\":2}\n{\"a\":3}");
        let mut r = FileReader::new(&dir.glob("*.jsonl")).unwrap();
        r.set_max_poll_bytes(12);
        // 12 bytes hold line 1 and 4 bytes of line 2: one record per poll, even with finish
        // (a line cut by the limit is not the file's last line).
        assert_eq!(poll(&mut r, true), vec![(format!("{path}:1"), "{\"a\":1}".to_owned())]);
        assert_eq!(poll(&mut r, true), vec![(format!("{path}:2"), "{\"a\":2}".to_owned())]);
        // The rest (7 bytes, the true end of the file) is the final line.
        assert_eq!(poll(&mut r, true), vec![(format!("{path}:3"), "{\"a\":3}".to_owned())]);
        assert!(poll(&mut r, true).is_empty());
        assert_eq!(r.bytes_read(), 23);
    }

    fn rec(loc: String, text: &str) -> (String, String) {
        (loc, text.to_owned())
    }

    #[test]
    fn jsonl_tailing_with_partial_last_line() {
        let d = TempDir::new("tail");
        let f = d.write("a.jsonl", "{\"a\":1}\r\n\n{\"a\":2}\n{\"a\":");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert_eq!(r.paths(), vec![PathBuf::from(&f)]);
        // The partial third record (line 4) is not returned yet.
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "{\"a\":1}"), rec(format!("{f}:3"), "{\"a\":2}")]);
        // "{\"a\":1}\r\n" (9) + "\n" (1) + "{\"a\":2}\n" (8) = 18 bytes consumed of 23.
        assert_eq!(r.bytes_read(), 18);
        assert_eq!(r.total_bytes(), 23);
        assert_eq!(poll(&mut r, false), vec![]);
        d.append("a.jsonl", "3}\n{\"a\":4}");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:4"), "{\"a\":3}")]);
        // At the end of input, a last line without newline is a record too.
        assert_eq!(poll(&mut r, true), vec![rec(format!("{f}:5"), "{\"a\":4}")]);
        assert_eq!(r.bytes_read(), 33);
        assert_eq!(poll(&mut r, true), vec![]);
    }

    #[test]
    fn jsonl_bad_lines_stay_lines() {
        let d = TempDir::new("badlines");
        let f = d.write("b.jsonl", "not json\n{\"a\":1}\n");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert_eq!(poll(&mut r, true), vec![rec(format!("{f}:1"), "not json"), rec(format!("{f}:2"), "{\"a\":1}")]);
    }

    #[test]
    fn json_array_elements_with_lines() {
        let d = TempDir::new("array");
        let text = "\n[\n  {\"id\": 1,\n   \"s\": \"a,]}\\\"\"},\n  [1, 2], 3,\n  {\"id\": 4}\n]\n";
        let f = d.write("x.json", text);
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(
            poll(&mut r, false),
            vec![
                rec(format!("{f}:3#0"), "{\"id\": 1,\n   \"s\": \"a,]}\\\"\"}"),
                rec(format!("{f}:5#1"), "[1, 2]"),
                rec(format!("{f}:5#2"), "3"),
                rec(format!("{f}:6#3"), "{\"id\": 4}"),
            ]
        );
        assert_eq!(r.bytes_read(), text.len() as u64);
        // Read once.
        d.append("x.json", " ");
        assert_eq!(poll(&mut r, true), vec![]);
    }

    #[test]
    fn empty_and_malformed_arrays() {
        let d = TempDir::new("badarray");
        let e = d.write("e.json", "[ ]");
        let f = d.write("f.json", "[{\"a\": 1}, {\"a\" 2}]");
        let mut r = FileReader::new(&d.glob("*.json")).expect("glob");
        // The good element survives; the broken one is a record of its own (the decoder
        // reports its JSON error).
        assert_eq!(
            poll(&mut r, false),
            vec![rec(format!("{f}:1#0"), "{\"a\": 1}"), rec(format!("{f}:1#1"), "{\"a\" 2}")]
        );
        assert_eq!(poll(&mut r, true), vec![]);
        assert!(r.paths().contains(&PathBuf::from(e)));
    }

    #[test]
    fn incomplete_array_waits_unless_finishing() {
        let d = TempDir::new("partialarray");
        let f = d.write("p.json", "[{\"a\": 1},");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(poll(&mut r, false), vec![]);
        d.append("p.json", " {\"a\": 2}]");
        assert_eq!(
            poll(&mut r, false),
            vec![rec(format!("{f}:1#0"), "{\"a\": 1}"), rec(format!("{f}:1#1"), "{\"a\": 2}")]
        );
        let g = d.write("q.json", "[1,");
        let mut r = FileReader::new(&g).expect("glob");
        // At the end of input: element 0, then the missing `]` as an error record.
        assert_eq!(
            poll_err(&mut r, true),
            vec![rec_err(format!("{g}:1#0"), "1", None), rec_err(format!("{g}:1"), "", Some(UNTERMINATED))]
        );
    }

    #[test]
    fn pretty_printed_single_document() {
        let d = TempDir::new("doc");
        let text = "{\n  \"events\": [\n    {\"eventId\": \"1\"}\n  ]\n}\n";
        let f = d.write("h.json", text);
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(poll(&mut r, false), vec![rec(f.clone(), text)]);
        assert_eq!(poll(&mut r, false), vec![]);
        // Being written: an incomplete document waits (not finishing) rather than being
        // misread as lines.
        let g = d.write("g.json", "{\n  \"events\": [\n");
        let mut r = FileReader::new(&g).expect("glob");
        assert_eq!(poll(&mut r, false), vec![]);
        d.append("g.json", "]}");
        assert_eq!(poll(&mut r, false), vec![rec(g, "{\n  \"events\": [\n]}")]);
    }

    /// With `set_whole_other_files`, a file that is not JSON (a YAML cassette) is one record,
    /// read once; JSON files are split as always.
    #[test]
    fn files_that_are_not_json_can_be_whole_records() {
        let d = TempDir::new("whole");
        let yaml = "interactions:\n- request:\n    uri: https://x\n";
        let y = d.write("a.yaml", yaml);
        let j = d.write("b.jsonl", "{\"a\":1}\n{\"a\":2}\n");
        let mut r = FileReader::new(&d.glob("*")).expect("glob");
        r.set_whole_other_files(true);
        assert_eq!(
            poll(&mut r, false),
            vec![rec(y.clone(), yaml), rec(format!("{j}:1"), "{\"a\":1}"), rec(format!("{j}:2"), "{\"a\":2}")]
        );
        d.append("a.yaml", "version: 1\n");
        assert_eq!(poll(&mut r, false), vec![]);
        // Without it: line by line.
        let mut r = FileReader::new(&y).expect("glob");
        assert_eq!(poll(&mut r, true).len(), 4);
    }

    #[test]
    fn new_file_appears() {
        let d = TempDir::new("newfile");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert!(r.paths().is_empty());
        assert_eq!(poll(&mut r, false), vec![]);
        let b = d.write("b.jsonl", "{\"b\":1}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{b}:1"), "{\"b\":1}")]);
        let a = d.write("a.jsonl", "{\"a\":1}\n");
        d.append("b.jsonl", "{\"b\":2}\n");
        // Files are read in path order.
        assert_eq!(poll(&mut r, false), vec![rec(format!("{a}:1"), "{\"a\":1}"), rec(format!("{b}:2"), "{\"b\":2}")]);
        // An empty file waits; a file with only whitespace yields nothing.
        let c = d.write("c.jsonl", "");
        assert_eq!(poll(&mut r, false), vec![]);
        d.append("c.jsonl", "{\"c\":1}");
        assert_eq!(poll(&mut r, false), vec![]);
        assert_eq!(poll(&mut r, true), vec![rec(format!("{c}:1"), "{\"c\":1}")]);
    }

    /// Polls until a poll consumes nothing more (as the runtime does), collecting the records.
    fn drain(r: &mut FileReader, finish: bool) -> Vec<(String, String, Option<String>)> {
        let mut all = Vec::new();
        loop {
            let before = (r.bytes_read(), r.records_seen());
            all.extend(poll_err(r, finish));
            if (r.bytes_read(), r.records_seen()) == before {
                return all;
            }
        }
    }

    #[test]
    fn line_longer_than_a_poll_piece_is_read_whole() {
        let d = TempDir::new("longline");
        // Pieces of 16 bytes; line 2 is 100 bytes (`{"l":"` + 92 × a + `"}`), then 50 short lines.
        let long = format!("{{\"l\":\"{}\"}}", "a".repeat(92));
        assert_eq!(long.len(), 100);
        let mut text = format!("{{\"n\":0}}\n{long}\n");
        for i in 1..=50 {
            text.push_str(&format!("{{\"n\":{i}}}\n"));
        }
        let f = d.write("l.jsonl", &text);
        let mut r = FileReader::new(&f).expect("glob");
        r.set_max_poll_bytes(16);
        let got = drain(&mut r, true);
        assert_eq!(got.len(), 52, "{got:?}");
        assert_eq!(got[0], rec_err(format!("{f}:1"), "{\"n\":0}", None));
        assert_eq!(got[1], rec_err(format!("{f}:2"), &long, None));
        assert_eq!(got[51], rec_err(format!("{f}:52"), "{\"n\":50}", None));
        assert_eq!(r.bytes_read(), text.len() as u64);
    }

    #[test]
    fn oversized_line_is_an_error_and_reading_goes_on() {
        let d = TempDir::new("oversized");
        let long = "x".repeat(100);
        let f = d.write("o.jsonl", &format!("1\n{long}\r\n3\n"));
        let mut r = FileReader::new(&f).expect("glob");
        r.set_max_poll_bytes(8);
        r.set_max_record_bytes(30);
        let error = |size: u64| {
            Some(format!(
                "record of {size} bytes exceeds the maximum record size of 30 bytes (--max-record-bytes of run, cluster.max_record_bytes of serve)"
            ))
        };
        assert_eq!(
            drain(&mut r, false),
            vec![
                rec_err(format!("{f}:1"), "1", None),
                (format!("{f}:2"), long.clone(), error(100)),
                rec_err(format!("{f}:3"), "3", None),
            ]
        );
        // An oversized line being written: nothing until its newline, then one error with its
        // whole size (40 + 35 = 75 bytes), and the lines after it.
        d.append("o.jsonl", &"y".repeat(40));
        assert_eq!(drain(&mut r, false), vec![]);
        d.append("o.jsonl", &format!("{}\n5\n", "z".repeat(35)));
        assert_eq!(
            drain(&mut r, false),
            vec![
                (format!("{f}:4"), format!("{}{}", "y".repeat(40), "z".repeat(35)), error(75)),
                rec_err(format!("{f}:5"), "5", None)
            ]
        );
        // At the end of input an unterminated oversized last line is reported too.
        d.append("o.jsonl", &"w".repeat(31));
        assert_eq!(drain(&mut r, true), vec![(format!("{f}:6"), "w".repeat(31), error(31))]);
        // The kept text is at most 1 KiB.
        let g = d.write("g.jsonl", &format!("{}\n", "v".repeat(5000)));
        let mut r = FileReader::new(&g).expect("glob");
        r.set_max_record_bytes(30);
        assert_eq!(drain(&mut r, true), vec![(format!("{g}:1"), "v".repeat(1024), error(5000))]);
        // Array elements and whole documents have the same limit.
        let a = d.write("a.json", &format!("[1, \"{long}\", 3]"));
        let mut r = FileReader::new(&a).expect("glob");
        r.set_max_record_bytes(30);
        assert_eq!(
            drain(&mut r, true),
            vec![
                rec_err(format!("{a}:1#0"), "1", None),
                (format!("{a}:1#1"), format!("\"{long}\""), error(102)),
                rec_err(format!("{a}:1#2"), "3", None),
            ]
        );
    }

    #[test]
    fn replaced_file_is_read_from_its_start() {
        let d = TempDir::new("replaced");
        let f = d.write("r.jsonl", "{\"t\":\"a\"}\n{\"t\":\"b\"}\n");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(poll(&mut r, false).len(), 2);
        // Deleted and re-created (log rotation) with more content than was read: all of it,
        // from line 1, and no made-up records.
        fs::remove_file(d.path().join("r.jsonl")).expect("rm");
        let new = "{\"t\":\"p\",\"n\":\"xxxxxxxxxx\"}\n{\"t\":\"q\",\"n\":\"xxxxxxxxxx\"}\n{\"t\":\"r\",\"n\":\"xxxxxxxxxx\"}\n";
        d.write("r.jsonl", new);
        let lines: Vec<_> = new.lines().enumerate().map(|(i, l)| rec(format!("{f}:{}", i + 1), l)).collect();
        assert_eq!(poll(&mut r, false), lines);
        assert_eq!(poll(&mut r, false), vec![]);
        // Rewritten in place (same inode), longer than before, with another start.
        let again = "{\"t\":\"s\"}\n{\"t\":\"u\",\"n\":\"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\"}\n{\"t\":\"v\"}\n{\"t\":\"w\"}\n";
        assert!(again.len() > new.len());
        fs::write(d.path().join("r.jsonl"), again).expect("rewrite");
        let lines: Vec<_> = again.lines().enumerate().map(|(i, l)| rec(format!("{f}:{}", i + 1), l)).collect();
        assert_eq!(poll(&mut r, false), lines);
        // Renamed over (a new inode), even with the same start: a new file.
        let tmp = d.write("next.tmp", "{\"t\":\"s\"}\n");
        fs::rename(&tmp, d.path().join("r.jsonl")).expect("rename");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "{\"t\":\"s\"}")]);
        // Appending still tails.
        d.append("r.jsonl", "{\"t\":\"z\"}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:2"), "{\"t\":\"z\"}")]);
    }

    #[test]
    fn a_file_renamed_to_another_matching_name_is_not_read_twice() {
        let d = TempDir::new("rotate");
        let f = d.write("app.jsonl", "{\"t\":\"a1\"}\n{\"t\":\"a2\"}\n");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert_eq!(poll(&mut r, false).len(), 2);
        // Date-named rotation: the file moves to app-1.jsonl (same inode) and a new app.jsonl
        // starts. Only the new file's line is new.
        fs::rename(d.path().join("app.jsonl"), d.path().join("app-1.jsonl")).expect("rename");
        d.write("app.jsonl", "{\"t\":\"b1\"}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "{\"t\":\"b1\"}")]);
        // Lines appended to the rotated file later are still tailed, under its new name.
        d.append("app-1.jsonl", "{\"t\":\"a3\"}\n");
        let moved = d.path().join("app-1.jsonl").display().to_string();
        assert_eq!(poll(&mut r, false), vec![rec(format!("{moved}:3"), "{\"t\":\"a3\"}")]);
    }

    /// Rotations whose new names sort after the live file's (`events.jsonl` →
    /// `events_1.jsonl`), a numbered chain (`x-1` → `x-2`, `x` → `x-1`) and "delete the
    /// oldest, then rename": only the lines written since are read, at their lines.
    #[test]
    fn rotated_files_are_not_read_twice_whatever_their_names() {
        let d = TempDir::new("rotate-order");
        let line = |n: u32| format!("{{\"n\":{n}}}\n");
        let lines = |ns: std::ops::Range<u32>| ns.map(line).collect::<String>();
        let texts = |r: &mut FileReader| -> Vec<String> { poll(r, false).into_iter().map(|(_, t)| t).collect() };
        let want = |ns: std::ops::Range<u32>| ns.map(|n| format!("{{\"n\":{n}}}")).collect::<Vec<_>>();
        d.write("events.jsonl", &lines(0..3));
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert_eq!(texts(&mut r), want(0..3));
        fs::rename(d.path().join("events.jsonl"), d.path().join("events_1.jsonl")).expect("rename");
        d.write("events.jsonl", &lines(3..5));
        d.append("events_1.jsonl", &lines(5..6));
        let mut got = texts(&mut r);
        got.sort();
        assert_eq!(got, want(3..6));
        // A numbered chain: events_1 → events_2, events → events_1, a new events.
        fs::rename(d.path().join("events_1.jsonl"), d.path().join("events_2.jsonl")).expect("rename");
        fs::rename(d.path().join("events.jsonl"), d.path().join("events_1.jsonl")).expect("rename");
        d.write("events.jsonl", &lines(6..7));
        assert_eq!(texts(&mut r), want(6..7));
        // Delete the oldest, then rename over it.
        fs::remove_file(d.path().join("events_2.jsonl")).expect("delete");
        fs::rename(d.path().join("events_1.jsonl"), d.path().join("events_2.jsonl")).expect("rename");
        fs::rename(d.path().join("events.jsonl"), d.path().join("events_1.jsonl")).expect("rename");
        d.write("events.jsonl", &lines(7..8));
        d.append("events_2.jsonl", &lines(8..9));
        let mut got = texts(&mut r);
        got.sort();
        assert_eq!(got, want(7..9));
        let moved = d.path().join("events_2.jsonl").display().to_string();
        d.append("events_2.jsonl", &lines(9..10));
        assert_eq!(poll(&mut r, false), vec![rec(format!("{moved}:4"), line(9).trim_end())]);
    }

    /// One step of the follow property test.
    #[derive(Clone, Debug)]
    enum Step {
        /// Append whole lines (`{"n":ID,"p":"…"}`, padding lengths given), then maybe a part
        /// of a line without its newline.
        Append(Vec<usize>, Option<usize>),
        /// Replace the file with a new one (a new generation) holding these lines; `in_place`
        /// rewrites the same file, else it is deleted and created anew.
        Replace(Vec<usize>, bool),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (proptest::collection::vec(0usize..90, 0..5), proptest::option::of(0usize..130))
                .prop_map(|(l, p)| Step::Append(l, p)),
            1 => (proptest::collection::vec(0usize..90, 0..4), any::<bool>()).prop_map(|(l, b)| Step::Replace(l, b)),
        ]
    }

    /// The records limit of the follow property tests, in bytes.
    const PROP_LIMIT: u64 = 60;

    /// What the follow property tests wrote to their file, and the records it must give.
    struct Written {
        d: TempDir,
        path: PathBuf,
        name: String,
        /// The current generation's text.
        text: String,
        generation: usize,
        next_id: usize,
        /// The records of the generations before the current one.
        expected: Vec<(String, String, Option<String>)>,
    }

    impl Written {
        fn new(tag: &str) -> Written {
            let d = TempDir::new(tag);
            let path = d.path().join("f.jsonl");
            let name = path.display().to_string();
            Written { d, path, name, text: String::new(), generation: 0, next_id: 0, expected: Vec::new() }
        }

        fn line(&mut self, pad: usize) -> String {
            self.next_id += 1;
            format!("{{\"n\":{},\"p\":\"{}\"}}", self.next_id, "x".repeat(pad))
        }

        /// The records of `text`'s lines (with `finish`, its unfinished last one too).
        fn records_of(&self, text: &str, finish: bool) -> Vec<(String, String, Option<String>)> {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let last = lines.pop().unwrap_or("");
            if finish && !last.is_empty() {
                lines.push(last);
            }
            let name = &self.name;
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let loc = format!("{name}:{}", i + 1);
                    if l.len() as u64 > PROP_LIMIT {
                        (loc, l[..l.len().min(RAW_BYTES)].to_owned(), Some(format!(
                            "record of {} bytes exceeds the maximum record size of {PROP_LIMIT} bytes (--max-record-bytes of run, cluster.max_record_bytes of serve)", l.len())))
                    } else {
                        (loc, (*l).to_owned(), None)
                    }
                })
                .collect()
        }

        /// Applies `step` to the file; a replacement's unfinished last line is expected lost, at
        /// its line or (`split`: read by readers that split the file) its first byte.
        fn apply(&mut self, step: Step, split: bool) {
            match step {
                Step::Append(lines, part) => {
                    let mut add = String::new();
                    for pad in lines {
                        add.push_str(&self.line(pad));
                        add.push('\n');
                    }
                    if let Some(n) = part {
                        add.push_str(&"y".repeat(n));
                    }
                    if !self.path.exists() {
                        fs::write(&self.path, "").expect("create");
                    }
                    self.d.append("f.jsonl", &add);
                    self.text.push_str(&add);
                }
                Step::Replace(lines, in_place) => {
                    let done = self.records_of(&self.text, false);
                    self.expected.extend(done);
                    // An unfinished last line goes with the old generation: reported lost.
                    let (complete, partial) = self.text.rsplit_once('\n').unwrap_or(("", &self.text));
                    if !partial.is_empty() {
                        let at = if split {
                            let start = if self.text.contains('\n') { complete.len() + 1 } else { 0 };
                            format!("byte {start}")
                        } else {
                            (if self.text.contains('\n') { complete.split('\n').count() } else { 0 } + 1).to_string()
                        };
                        self.expected.push((
                            format!("{}:{at}", self.name),
                            partial[..partial.len().min(RAW_BYTES)].to_owned(),
                            Some(format!(
                                "an unfinished last line of {} bytes (no newline yet) was lost: its file was replaced, \
                             truncated or rewritten before the line was ended",
                                partial.len()
                            )),
                        ));
                    }
                    self.generation += 1;
                    // Each generation starts with its own first line.
                    self.text = format!("{{\"generation\":{}}}\n", self.generation);
                    for pad in lines {
                        let line = self.line(pad);
                        self.text.push_str(&line);
                        self.text.push('\n');
                    }
                    if !in_place {
                        let _ = fs::remove_file(&self.path);
                    }
                    fs::write(&self.path, &self.text).expect("replace");
                }
            }
        }

        /// Every record expected once the file is read to its end.
        fn finish(mut self) -> Vec<(String, String, Option<String>)> {
            let last = self.records_of(&self.text, true);
            self.expected.extend(last);
            self.expected
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random line lengths (including lines longer than a read piece and than the record
        /// limit), appends with partial lines, and replacements under follow: the records read
        /// are exactly the lines written, each at its line, oversized ones as errors. After
        /// some steps the reader is replaced by a new one resumed from the cursors the old one
        /// gave (through their JSON form, as a log keeps them): nothing is read twice or lost.
        #[test]
        fn follow_reads_every_line_written(
            steps in proptest::collection::vec(step(), 1..12),
            piece in 1u64..40,
            restarts in proptest::collection::vec(proptest::prelude::any::<bool>(), 12),
        ) {
            let mut w = Written::new("prop");
            let name = w.name.clone();
            let reader = || {
                let mut r = FileReader::new(&name).expect("glob");
                r.set_max_poll_bytes(piece);
                r.set_max_record_bytes(PROP_LIMIT);
                r
            };
            let mut r = reader();
            let mut cursors: BTreeMap<PathBuf, Option<FileCursor>> = BTreeMap::new();
            let mut got = Vec::new();
            for (i, s) in steps.into_iter().enumerate() {
                w.apply(s, false);
                got.extend(drain(&mut r, false));
                let json = serde_json::to_string(&r.take_cursors()).expect("cursors serialize");
                let (taken, _): (Vec<(PathBuf, Option<FileCursor>)>, Vec<PathBuf>) =
                    serde_json::from_str(&json).expect("cursors deserialize");
                cursors.extend(taken);
                if restarts[i] {
                    r = reader();
                    r.resume(cursors.iter().filter_map(|(p, c)| Some((p.clone(), c.clone()?))), Vec::new());
                }
            }
            got.extend(drain(&mut r, true));
            proptest::prop_assert_eq!(got, w.finish());
        }

        /// Readers that split a followed file by pieces, under the same steps: every line written
        /// is read by exactly one reader, at its line (resolved as the worker does), oversized
        /// ones as errors; an unfinished line lost with its file is reported once.
        #[test]
        fn split_readers_read_every_line_written_once(
            steps in proptest::collection::vec(step(), 1..12),
            piece in 1u64..40,
            peers in 2u64..4,
        ) {
            let mut w = Written::new("splitprop");
            let mut readers: Vec<FileReader> = (0..peers).map(|i| {
                let mut r = FileReader::new(&w.name).expect("glob");
                r.set_max_poll_bytes(piece);
                r.set_max_record_bytes(PROP_LIMIT);
                r.set_share(i, peers);
                r
            }).collect();
            let mut got = Vec::new();
            for s in steps {
                w.apply(s, true);
                for r in &mut readers {
                    got.extend(drain_resolved(r, false));
                }
            }
            for r in &mut readers {
                got.extend(drain_resolved(r, true));
            }
            let mut expected = w.finish();
            got.sort();
            expected.sort();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn pseudo_file_is_refused() {
        // procfs reports a size of 0 for files that have content.
        let path = Path::new("/proc/self/status");
        if !path.exists() {
            return;
        }
        let mut reader = FileReader::new("/proc/self/status").expect("reader");
        let mut out = Vec::new();
        let err = reader.poll(false, &mut out).expect_err("a pseudo-file is refused");
        assert!(err.to_string().contains("pseudo-file"), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn truncated_file_is_reread() {
        let d = TempDir::new("trunc");
        let f = d.write("t.jsonl", "{\"a\":1}\n{\"a\":2}\n");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(poll(&mut r, false).len(), 2);
        assert_eq!((r.bytes_read(), r.total_bytes()), (16, 16));
        d.write("t.jsonl", "{\"b\":1}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "{\"b\":1}")]);
        // Progress counts the new file from its start: 8 of 8 bytes, not 24 of 8.
        assert_eq!((r.bytes_read(), r.total_bytes()), (8, 8));
    }

    #[test]
    fn an_unfinished_line_lost_with_its_file_is_reported() {
        let d = TempDir::new("lost");
        let f = d.write("a.jsonl", "{\"a\":1}\n{\"a\":");
        let g = d.write("b.jsonl", "{\"b\":1}\n");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "{\"a\":1}"), rec(format!("{g}:1"), "{\"b\":1}")]);
        // Deleted before its second line was ended: that line is reported, once.
        fs::remove_file(d.path().join("a.jsonl")).expect("rm");
        let lost = "an unfinished last line of 5 bytes (no newline yet) was lost: its file was deleted or renamed \
                    away before the line was ended";
        assert_eq!(poll_err(&mut r, false), vec![(format!("{f}:2"), "{\"a\":".to_owned(), Some(lost.to_owned()))]);
        assert_eq!(poll_err(&mut r, false), vec![]);
        assert_eq!((r.bytes_read(), r.total_bytes()), (8, 8));
        // Its unfinished line overwritten in place (the complete one intact): reported, and
        // reading goes on from the new bytes.
        d.append("b.jsonl", "{\"b\":");
        assert_eq!(poll(&mut r, false), vec![]);
        fs::write(d.path().join("b.jsonl"), "{\"b\":1}\n{\"c\":3}\n").expect("rewrite");
        let rewritten = "an unfinished last line of 5 bytes (no newline yet) was lost: its file was replaced, truncated \
                         or rewritten before the line was ended";
        assert_eq!(
            poll_err(&mut r, false),
            vec![
                (format!("{g}:2"), "{\"b\":".to_owned(), Some(rewritten.to_owned())),
                (format!("{g}:2"), "{\"c\":3}".to_owned(), None)
            ]
        );
        // A line that goes on being written is no loss.
        d.append("b.jsonl", "{\"d\":");
        assert_eq!(poll(&mut r, false), vec![]);
        d.append("b.jsonl", "4}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{g}:3"), "{\"d\":4}")]);
        // Only one of several readers sharing the files reports a loss.
        let mut other = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        other.set_share(1, 2);
        let _ = poll(&mut other, false);
        d.append("b.jsonl", "{\"e\":");
        let _ = poll(&mut other, false);
        fs::remove_file(d.path().join("b.jsonl")).expect("rm");
        assert_eq!(poll_err(&mut other, false), vec![]);
    }

    #[test]
    fn bad_glob_and_unreadable() {
        assert!(matches!(FileReader::new("a/[b"), Err(ConfigError::BadGlob { .. })));
        let d = TempDir::new("dir");
        fs::create_dir_all(d.path().join("sub.jsonl")).expect("mkdir");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        // A directory matching the glob is skipped.
        assert_eq!(poll(&mut r, true), vec![]);
        assert!(r.paths().is_empty());
    }

    #[test]
    fn bracket_first_line_can_be_json_lines() {
        let d = TempDir::new("bracketlines");
        // A log banner before JSON lines: lines 2 and 3 parse on their own (2 of 2).
        let a = d.write("a.jsonl", "[INFO] exporter started\n{\"a\":1}\n{\"a\":2}\n");
        // A first line that is a JSON array on its own.
        let b = d.write("b.jsonl", "[1,2]\n{\"a\":1}\n");
        // A banner, then 2 good lines of 3: still a majority.
        let c = d.write("c.jsonl", "[WARN] x\n{\"a\":1}\nnot json\n{\"a\":2}\n");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        assert_eq!(
            poll(&mut r, false),
            vec![
                rec(format!("{a}:1"), "[INFO] exporter started"),
                rec(format!("{a}:2"), "{\"a\":1}"),
                rec(format!("{a}:3"), "{\"a\":2}"),
                rec(format!("{b}:1"), "[1,2]"),
                rec(format!("{b}:2"), "{\"a\":1}"),
                rec(format!("{c}:1"), "[WARN] x"),
                rec(format!("{c}:2"), "{\"a\":1}"),
                rec(format!("{c}:3"), "not json"),
                rec(format!("{c}:4"), "{\"a\":2}"),
            ]
        );
        // Following a file that so far holds only the banner: text follows its `]`, so it
        // is no array; the lines written later are tailed.
        let e = d.write("e.jsonl", "[INFO] exporter started\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{e}:1"), "[INFO] exporter started")]);
        d.append("e.jsonl", "{\"a\":1}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{e}:2"), "{\"a\":1}")]);
    }

    #[test]
    fn broken_pretty_array_stays_an_array() {
        let d = TempDir::new("prettybroken");
        // Lines on their own: `[` no, `{"a": 1},` no, `{"a" 2},` no, `{"a": 3}` yes, `]` no:
        // 1 of 4, no majority; the `[` is closed at the end: a (broken) array.
        let f = d.write("x.json", "[\n  {\"a\": 1},\n  {\"a\" 2},\n  {\"a\": 3}\n]\n");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(
            poll(&mut r, false),
            vec![
                rec(format!("{f}:2#0"), "{\"a\": 1}"),
                rec(format!("{f}:3#1"), "{\"a\" 2}"),
                rec(format!("{f}:4#2"), "{\"a\": 3}"),
            ]
        );
    }

    #[test]
    fn broken_elements_resynchronise() {
        let d = TempDir::new("resync");
        // Element 1 is broken (`oops`) and holds `,]` and an escaped quote in a string, which
        // must not end it; element 3 is `tru`.
        let f = d.write("r.json", "[{\"a\":1},\n {\"s\": \"x,]\\\"\" oops},\n 7,\n tru,\n [1, [2]]\n]");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(
            poll(&mut r, false),
            vec![
                rec(format!("{f}:1#0"), "{\"a\":1}"),
                rec(format!("{f}:2#1"), "{\"s\": \"x,]\\\"\" oops}"),
                rec(format!("{f}:3#2"), "7"),
                rec(format!("{f}:4#3"), "tru"),
                rec(format!("{f}:5#4"), "[1, [2]]"),
            ]
        );
        // A missing `,`: the two values are one broken element.
        let g = d.write("g.json", "[1 2, 3]");
        let mut r = FileReader::new(&g).expect("glob");
        assert_eq!(poll(&mut r, true), vec![rec(format!("{g}:1#0"), "1 2"), rec(format!("{g}:1#1"), "3")]);
        // Empty elements.
        let e = d.write("e.json", "[1,,2,]");
        let mut r = FileReader::new(&e).expect("glob");
        assert_eq!(
            poll_err(&mut r, true),
            vec![
                rec_err(format!("{e}:1#0"), "1", None),
                rec_err(format!("{e}:1#1"), "", Some("empty array element")),
                rec_err(format!("{e}:1#2"), "2", None),
                rec_err(format!("{e}:1#3"), "", Some("empty array element")),
            ]
        );
    }

    #[test]
    fn unbalanced_array_keeps_the_rest() {
        let d = TempDir::new("unbalanced");
        // `[2}` leaves a bracket open: no `,` or `]` at the array's level follows element 1,
        // so element 1 runs to the end of the file. Its `[` is never closed: while following
        // the file waits (it could still be being written).
        let f = d.write("u.json", "[{\"a\":1}, {\"b\": [2}, {\"c\":3}]");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(poll(&mut r, false), vec![]);
        assert_eq!(
            poll(&mut r, true),
            vec![rec(format!("{f}:1#0"), "{\"a\":1}"), rec(format!("{f}:1#1"), "{\"b\": [2}, {\"c\":3}]")]
        );
        // Only `[`: the missing `]` is reported at line 2, where the file ends.
        let g = d.write("g.json", "[\n");
        let mut r = FileReader::new(&g).expect("glob");
        assert_eq!(poll(&mut r, false), vec![]);
        assert_eq!(poll_err(&mut r, true), vec![rec_err(format!("{g}:2"), "", Some(UNTERMINATED))]);
    }

    #[test]
    fn split_array_pieces() {
        let piece = |start, end, line, index, error: Option<&str>| Piece {
            start,
            end,
            line,
            index,
            error: error.map(str::to_owned),
        };
        // Text after the closing bracket (classify never makes this an array; split_array
        // still keeps it): `[1] x` → element "1" at 1..2, then "x" at 4..5.
        assert_eq!(
            split_array(b"[1] x"),
            vec![
                piece(1, 2, 1, Some(0), None),
                piece(4, 5, 1, None, Some("unexpected text after the closing `]` of the JSON array"))
            ]
        );
        assert_eq!(split_array(b" [ ]"), vec![]);
        // Not reached through classify, but must not panic or go out of bounds.
        assert_eq!(split_array(b""), vec![piece(0, 0, 1, None, Some(UNTERMINATED))]);
        // `[\n1\n` (at the end of input): element at 2..3 on line 2, then the end at 4, line 3.
        assert_eq!(
            split_array(b"[\n1\n"),
            vec![piece(2, 3, 2, Some(0), None), piece(4, 4, 3, None, Some(UNTERMINATED))]
        );
    }

    #[test]
    fn non_regular_files_are_reported_once_and_the_others_read() {
        let d = TempDir::new("nonregular");
        d.write("a.jsonl", "{\"a\":1}\n");
        let sock = d.path().join("s.jsonl");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        let mut out = Vec::new();
        r.poll(true, &mut out).expect("the regular file is read");
        let a = d.path().join("a.jsonl").display().to_string();
        let got: Vec<_> = out.iter().map(|r| (r.location.clone(), r.text.clone(), r.error.clone())).collect();
        assert_eq!(
            got,
            vec![
                (
                    sock.display().to_string(),
                    String::new(),
                    Some("not a regular file (a socket); only regular files can be read".to_owned())
                ),
                (a.clone() + ":1", "{\"a\":1}".to_owned(), None),
            ]
        );
        assert_eq!(r.paths(), vec![d.path().join("a.jsonl")]);
        // Reported once; what is appended to the regular file is read.
        d.append("a.jsonl", "{\"a\":2}\n");
        out.clear();
        r.poll(true, &mut out).expect("poll");
        assert_eq!(out.iter().map(|r| r.location.clone()).collect::<Vec<_>>(), vec![a + ":2"]);
        // A character device.
        let mut r = FileReader::new("/dev/null").expect("glob");
        out.clear();
        r.poll(false, &mut out).expect("poll");
        assert_eq!(
            out.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
            vec![Some("not a regular file (a character device); only regular files can be read".to_owned())]
        );
        // A FIFO (reading it would block until a writer opens it), where mkfifo exists.
        let fifo = d.path().join("f.fifo");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            let mut r = FileReader::new(&d.glob("*.fifo")).expect("glob");
            out.clear();
            r.poll(false, &mut out).expect("poll");
            let got: Vec<_> = out.iter().map(|r| (r.location.clone(), r.error.clone())).collect();
            let why = "not a regular file (a FIFO); only regular files can be read".to_owned();
            assert_eq!(got, vec![(fifo.display().to_string(), Some(why))]);
        } else {
            eprintln!("mkfifo not available: FIFO case skipped");
        }
    }

    #[test]
    fn a_file_under_several_names_is_read_once() {
        let d = TempDir::new("links");
        d.write("b.jsonl", "{\"a\":1}\n{\"a\":2}\n");
        // A symbolic link that sorts before its target, and a hard link after it.
        std::os::unix::fs::symlink(d.path().join("b.jsonl"), d.path().join("a.jsonl")).expect("symlink");
        fs::hard_link(d.path().join("b.jsonl"), d.path().join("c.jsonl")).expect("hard link");
        d.write("d.jsonl", "{\"d\":1}\n");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        let mut out = Vec::new();
        r.poll(false, &mut out).expect("poll");
        let at = |name: &str, line: u64| format!("{}:{line}", d.path().join(name).display());
        let got: Vec<String> = out.iter().map(|r| r.location.clone()).collect();
        // b and c are one inode: the first name in path order that is no link.
        assert_eq!(got, vec![at("b.jsonl", 1), at("b.jsonl", 2), at("d.jsonl", 1)]);
        assert_eq!(r.paths(), vec![d.path().join("b.jsonl"), d.path().join("d.jsonl")]);
        assert_eq!(r.bytes_read(), r.total_bytes(), "progress counts the file once");
        // Appended through another name: read once, under the name it is read by.
        d.append("c.jsonl", "{\"a\":3}\n");
        out.clear();
        r.poll(false, &mut out).expect("poll");
        assert_eq!(out.iter().map(|r| r.location.clone()).collect::<Vec<_>>(), vec![at("b.jsonl", 3)]);
        // The name it is read by removed: it goes on under the hard link that is left.
        fs::remove_file(d.path().join("b.jsonl")).expect("rm");
        d.append("c.jsonl", "{\"a\":4}\n");
        out.clear();
        r.poll(false, &mut out).expect("poll");
        assert_eq!(out.iter().map(|r| r.location.clone()).collect::<Vec<_>>(), vec![at("c.jsonl", 4)]);
    }

    #[test]
    fn a_file_whose_name_is_not_utf8_is_reported_once() {
        use std::os::unix::ffi::OsStrExt;
        let d = TempDir::new("nonutf8");
        d.write("ok.jsonl", "{\"a\":1}\n");
        let bad = d.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.jsonl"));
        fs::write(&bad, "{\"a\":2}\n").expect("write");
        fs::write(d.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), "x\n").expect("write");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        let mut out = Vec::new();
        r.poll(false, &mut out).expect("poll");
        let got: Vec<_> = out.iter().map(|r| (r.location.clone(), r.error.clone())).collect();
        let why = "not read: the file's name is not valid UTF-8 (rename it to read it)".to_owned();
        assert_eq!(
            got,
            vec![(bad.display().to_string(), Some(why)), (format!("{}:1", d.path().join("ok.jsonl").display()), None),]
        );
        assert!(bad.display().to_string().ends_with("caf\u{fffd}.jsonl"));
        out.clear();
        r.poll(false, &mut out).expect("poll");
        assert!(out.is_empty(), "reported once: {out:?}");
        // Also by a reader that goes on from this one's cursors (logged as text).
        let (cursors, refused) = r.take_cursors();
        let logged = |p: PathBuf| PathBuf::from(p.to_string_lossy().into_owned());
        let mut resumed = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        resumed.resume(cursors.into_iter().filter_map(|(p, c)| Some((logged(p), c?))), refused.into_iter().map(logged));
        out.clear();
        resumed.poll(false, &mut out).expect("poll");
        assert!(out.is_empty(), "reported once: {out:?}");
        // A reader with another share index leaves the report to index 0.
        let mut other = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        other.set_share(1, 2);
        out.clear();
        other.poll(false, &mut out).expect("poll");
        assert!(out.iter().all(|r| r.error.is_none()), "{out:?}");
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let d = TempDir::new("bom");
        let a = d.write("a.jsonl", "\u{feff}{\"a\":1}\n{\"a\":2}\n");
        let mut r = FileReader::new(&a).expect("glob");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{a}:1"), "{\"a\":1}"), rec(format!("{a}:2"), "{\"a\":2}")]);
        // 3 bytes of BOM + 8 + 8.
        assert_eq!(r.bytes_read(), 19);
        let b = d.write("b.json", "\u{feff}[1]");
        let mut r = FileReader::new(&b).expect("glob");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{b}:1#0"), "1")]);
        // A pretty-printed Temporal history: one document, decoded without errors.
        let doc = "{\n  \"events\": [\n    {\"eventId\": \"1\", \"eventType\": \"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED\"}\n  ]\n}\n";
        let h = d.write("h.json", &format!("\u{feff}{doc}"));
        let mut r = FileReader::new(&h).expect("glob");
        let mut records = Vec::new();
        r.poll(true, &mut records).expect("poll");
        assert_eq!(records, vec![Record::new(h.clone(), doc)]);
        let mut events = Vec::new();
        let decoder = crate::decoder("temporal-history", &serde_json::Value::Null).expect("decoder");
        decoder.decode("t", &records[0], &mut events);
        assert!(
            matches!(&events[..], [amx_dataflows::event::Event::Workflow(w)] if w.run_id == h && w.event_seq == Some(1)),
            "{events:?}"
        );
    }

    #[test]
    fn invalid_utf8_is_a_record_error() {
        let d = TempDir::new("utf8");
        let p = d.path().join("a.jsonl");
        // Line 1: `{"a":"x` is bytes 0..7, the invalid byte 0xFF is byte 7.
        fs::write(&p, b"{\"a\":\"x\xFFy\"}\n{\"a\":1}\n").expect("write");
        let a = p.display().to_string();
        let mut r = FileReader::new(&a).expect("glob");
        assert_eq!(
            poll_err(&mut r, false),
            vec![
                rec_err(format!("{a}:1"), "{\"a\":\"x\u{fffd}y\"}", Some("invalid UTF-8 at byte 7")),
                rec_err(format!("{a}:2"), "{\"a\":1}", None),
            ]
        );
        // An array element: `"` then 0xC3 without continuation byte, at byte 1 of the element.
        let p = d.path().join("b.json");
        fs::write(&p, b"[1, \"\xC3(\"]").expect("write");
        let b = p.display().to_string();
        let mut r = FileReader::new(&b).expect("glob");
        assert_eq!(
            poll_err(&mut r, false),
            vec![
                rec_err(format!("{b}:1#0"), "1", None),
                rec_err(format!("{b}:1#1"), "\"\u{fffd}(\"", Some("invalid UTF-8 at byte 1")),
            ]
        );
        // A whole document: `{`, `\n`, `"a"`, `:`, ` `, `"` are bytes 0..8; 0xFF is byte 8.
        let p = d.path().join("c.json");
        fs::write(&p, b"{\n\"a\": \"\xFF\"\n}").expect("write");
        let c = p.display().to_string();
        let mut r = FileReader::new(&c).expect("glob");
        assert_eq!(
            poll_err(&mut r, true),
            vec![rec_err(c.clone(), "{\n\"a\": \"\u{fffd}\"\n}", Some("invalid UTF-8 at byte 8"))]
        );
    }

    #[test]
    fn classify_shapes() {
        assert_eq!(classify(b"", false), Decision::Wait);
        assert_eq!(classify(b" \n", true), Decision::Lines);
        assert_eq!(classify(b"{\"a\":1}", false), Decision::Wait);
        assert_eq!(classify(b"{\"a\":1}", true), Decision::Lines);
        assert_eq!(classify(b"{\"a\":1}\n{", false), Decision::Lines);
        assert_eq!(classify(b"{\n\"a\":1}", false), Decision::Document);
        assert_eq!(classify(b"{\n\"a\":", false), Decision::Wait);
        assert_eq!(classify(b"{\n\"a\":", true), Decision::Other);
        assert_eq!(classify(b"{\nbad\n{\"a\":1}\n", false), Decision::Other);
        assert_eq!(classify(b"interactions:\n- request:\n", false), Decision::Other);
        assert_eq!(classify(b"  [1", false), Decision::Wait);
        assert_eq!(classify(b"  [1", true), Decision::Array);
        // One complete array: an array (even if it were the first line of JSON Lines).
        assert_eq!(classify(b"[1,2]\n", false), Decision::Array);
        assert_eq!(classify(b"[1,2]\n[3]\n", false), Decision::Lines);
        // An array being written, element per line: wait (`{"a":1}` alone would parse).
        assert_eq!(classify(b"[\n{\"a\":1}\n", false), Decision::Wait);
        assert_eq!(classify(b"[INFO] up\n", false), Decision::Lines);
        assert_eq!(classify(b"[INFO] up", false), Decision::Lines);
        assert_eq!(classify(b"[main\n", false), Decision::Wait);
        assert_eq!(classify(b"[main\n{\"a\":1}\n", false), Decision::Lines);
        assert_eq!(classify(b"[{\"a\" 1}]", false), Decision::Array);
        assert_eq!(classify(b"[1] [2]", true), Decision::Lines);
    }
}
