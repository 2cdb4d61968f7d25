//! Splitting files into records, with locations; tailing files for `--follow`.
//!
//! A file is split according to its shape (see [`FileReader`]):
//!
//! | shape | record | location |
//! | --- | --- | --- |
//! | JSON Lines | each non-empty line | `path:LINE` (1-based) |
//! | top-level JSON array | each element | `path:LINE#INDEX` (LINE where the element starts, INDEX 0-based) |
//! | one JSON document (e.g. pretty-printed) | the whole file | `path` |
//!
//! Text that is not valid UTF-8 is read lossily (invalid bytes become U+FFFD).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use crate::ConfigError;

/// One record of a file: the text a decoder decodes, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record is: `path:LINE` for a JSON Lines line, `path:LINE#INDEX` for element
    /// INDEX (0-based) of a top-level JSON array (LINE = the line where the element starts),
    /// `path` for a whole-file JSON document (`path:1` for a malformed top-level array).
    pub location: String,
    /// The record's text (for a line: without its line terminator).
    pub text: String,
}

impl Record {
    /// A record with the given location and text.
    pub fn new(location: impl Into<String>, text: impl Into<String>) -> Record {
        Record { location: location.into(), text: text.into() }
    }
}

/// What a file turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Not decided yet (empty, or the first line or document is still being written).
    Unknown,
    /// JSON Lines, tailed.
    Lines,
    /// A JSON array or one document, read once: nothing more to do.
    Done,
}

/// Per-file reading state.
#[derive(Debug)]
struct FileState {
    shape: Shape,
    /// Bytes consumed (for `Lines`: up to and including the last complete line).
    offset: u64,
    /// Lines consumed (for `Lines`).
    lines: u64,
}

/// Reads every file matching a glob (in path order), splitting each into [`Record`]s.
///
/// A file's shape is decided at the first poll that sees content in it:
///  - first non-whitespace byte `[`: a top-level JSON array, each element is a record
///    (a malformed array is ONE record with the whole text, at `path:1`, so that the
///    decoder reports the JSON error);
///  - else if the first non-empty line parses as JSON on its own: JSON Lines, every
///    non-empty line is a record (a trailing `\r` is stripped);
///  - else if the whole file parses as one JSON value: one record (e.g. a pretty-printed
///    Temporal history);
///  - else JSON Lines (so each bad line is reported at its own line).
///
/// [`FileReader::poll`] returns the records not returned before. JSON Lines files are tailed:
/// only complete lines (ending in `\n`) are consumed, a partial last line is kept for a later
/// poll, except when `finish` is true (end of input) where a final line without newline is a
/// record too. Arrays and single documents are read once. While not `finish`ing, deciding is
/// put off as long as the file is empty, its first line is incomplete, or it is an incomplete
/// JSON document (so a file that is being written is not misread). New files matching the
/// glob are picked up by later polls. A JSON Lines file that shrinks (truncated for reuse) is
/// read again from its start.
#[derive(Debug)]
pub struct FileReader {
    pattern: String,
    files: BTreeMap<PathBuf, FileState>,
    bytes_read: u64,
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
        Ok(FileReader { pattern: glob.to_owned(), files: BTreeMap::new(), bytes_read: 0 })
    }

    /// The glob this reader reads.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The regular files matching the glob now, sorted by path (directories and entries that
    /// cannot be read are left out).
    pub fn paths(&self) -> Vec<PathBuf> {
        let Ok(entries) = glob::glob(&self.pattern) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).filter(|p| p.is_file()).collect();
        paths.sort();
        paths
    }

    /// Appends to `out` the records not returned by earlier polls (see [`FileReader`]).
    ///
    /// `finish` = end of input (not following): a final line without newline is a record, and
    /// files whose shape is still undecided are decided.
    ///
    /// # Errors
    /// An I/O error, with the path in its message, when a matching file or directory cannot
    /// be read. Records of the files before it in path order have been appended to `out`.
    pub fn poll(&mut self, finish: bool, out: &mut Vec<Record>) -> io::Result<()> {
        let entries = glob::glob(&self.pattern).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(p) if p.is_dir() => {}
                Ok(p) => paths.push(p),
                Err(e) => {
                    let path = e.path().display().to_string();
                    let err: io::Error = e.into();
                    return Err(io::Error::new(err.kind(), format!("{path}: {err}")));
                }
            }
        }
        paths.sort();
        for path in paths {
            let state =
                self.files.entry(path.clone()).or_insert(FileState { shape: Shape::Unknown, offset: 0, lines: 0 });
            poll_file(&path, state, finish, out, &mut self.bytes_read)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Bytes of the files consumed so far (a partial last line is not counted).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The sum of the current sizes of the matching files (for a progress bar).
    pub fn total_bytes(&self) -> u64 {
        self.paths().iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum()
    }
}

/// Reads what is new in one file.
fn poll_file(
    path: &Path,
    state: &mut FileState,
    finish: bool,
    out: &mut Vec<Record>,
    bytes_read: &mut u64,
) -> io::Result<()> {
    match state.shape {
        Shape::Done => Ok(()),
        Shape::Unknown => {
            let data = match fs::read(path) {
                Ok(d) => d,
                // Matched by the glob but gone (e.g. rotated away): nothing to read now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let name = path.display().to_string();
            match classify(&data, finish) {
                Decision::Wait => Ok(()),
                Decision::Array => {
                    let text = String::from_utf8_lossy(&data);
                    match split_array(&text) {
                        Some(elements) => {
                            for (index, (line, element)) in elements.into_iter().enumerate() {
                                out.push(Record::new(format!("{name}:{line}#{index}"), element));
                            }
                        }
                        None => out.push(Record::new(format!("{name}:1"), text.into_owned())),
                    }
                    state.shape = Shape::Done;
                    *bytes_read += data.len() as u64;
                    Ok(())
                }
                Decision::Document => {
                    out.push(Record::new(name, String::from_utf8_lossy(&data).into_owned()));
                    state.shape = Shape::Done;
                    *bytes_read += data.len() as u64;
                    Ok(())
                }
                Decision::Lines => {
                    state.shape = Shape::Lines;
                    take_lines(&name, state, &data, finish, out, bytes_read);
                    Ok(())
                }
            }
        }
        Shape::Lines => {
            let mut file = match fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            if len < state.offset {
                // Truncated: start over.
                state.offset = 0;
                state.lines = 0;
            }
            if len == state.offset {
                return Ok(());
            }
            file.seek(SeekFrom::Start(state.offset))?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            take_lines(&path.display().to_string(), state, &data, finish, out, bytes_read);
            Ok(())
        }
    }
}

/// Splits `data` (the file from `state.offset` on) into line records.
fn take_lines(
    name: &str,
    state: &mut FileState,
    data: &[u8],
    finish: bool,
    out: &mut Vec<Record>,
    bytes_read: &mut u64,
) {
    let mut pos = 0;
    while pos < data.len() {
        let (line, next) = match data[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&data[pos..pos + i], pos + i + 1),
            None if finish => (&data[pos..], data.len()),
            None => break,
        };
        state.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(Record::new(format!("{name}:{}", state.lines), String::from_utf8_lossy(line).into_owned()));
        }
        pos = next;
    }
    state.offset += pos as u64;
    *bytes_read += pos as u64;
}

/// The shape decided for a file's content.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Wait,
    Array,
    Lines,
    Document,
}

/// Decides a file's shape from its whole current content (see [`FileReader`]).
fn classify(data: &[u8], finish: bool) -> Decision {
    let Some(start) = data.iter().position(|b| !b.is_ascii_whitespace()) else {
        return if finish { Decision::Lines } else { Decision::Wait };
    };
    let incomplete = |r: Result<IgnoredAny, serde_json::Error>| !finish && r.is_err_and(|e| e.is_eof());
    if data[start] == b'[' {
        if incomplete(serde_json::from_slice(data)) {
            return Decision::Wait;
        }
        return Decision::Array;
    }
    let first_line = match data[start..].iter().position(|&b| b == b'\n') {
        Some(i) => &data[start..start + i],
        None if finish => &data[start..],
        None => return Decision::Wait,
    };
    if serde_json::from_slice::<IgnoredAny>(first_line).is_ok() {
        return Decision::Lines;
    }
    let whole = serde_json::from_slice::<IgnoredAny>(data);
    if whole.is_ok() {
        Decision::Document
    } else if incomplete(whole) {
        Decision::Wait
    } else {
        Decision::Lines
    }
}

/// Splits a top-level JSON array into its elements: `(line where it starts, text)`.
/// `None` when `text` is not a well-formed JSON array.
fn split_array(text: &str) -> Option<Vec<(u64, String)>> {
    serde_json::from_str::<Vec<IgnoredAny>>(text).ok()?;
    let b = text.as_bytes();
    let open = b.iter().position(|&c| c == b'[')?;
    let mut line = 1 + b[..open].iter().filter(|&&c| c == b'\n').count() as u64;
    let mut i = open + 1;
    let mut elements = Vec::new();
    loop {
        // Skip whitespace before an element (or the closing bracket).
        while let Some(&c) = b.get(i) {
            if c == b'\n' {
                line += 1;
            }
            if !c.is_ascii_whitespace() {
                break;
            }
            i += 1;
        }
        match b.get(i) {
            None => return None,
            Some(b']') => return Some(elements),
            Some(_) => {}
        }
        let (start, start_line) = (i, line);
        let mut depth = 0usize;
        let mut in_string = false;
        while let Some(&c) = b.get(i) {
            if c == b'\n' {
                line += 1;
            }
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
                    b']' | b'}' if depth == 0 => break,
                    b']' | b'}' => depth -= 1,
                    b',' if depth == 0 => break,
                    _ => {}
                }
            }
            i += 1;
        }
        elements.push((start_line, text.get(start..i)?.trim_end().to_owned()));
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b']') => return Some(elements),
            _ => return None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("amx-connectors-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
        pub(crate) fn write(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            fs::write(&p, text).expect("write temp file");
            p.display().to_string()
        }
        pub(crate) fn append(&self, name: &str, text: &str) {
            let mut f = fs::OpenOptions::new().append(true).open(self.0.join(name)).expect("open");
            f.write_all(text.as_bytes()).expect("append");
        }
        pub(crate) fn glob(&self, pattern: &str) -> String {
            self.0.join(pattern).display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn poll(r: &mut FileReader, finish: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        r.poll(finish, &mut out).expect("poll");
        out.into_iter().map(|rec| (rec.location, rec.text)).collect()
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
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "[{\"a\": 1}, {\"a\" 2}]")]);
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
        assert_eq!(poll(&mut r, true), vec![rec(format!("{g}:1"), "[1,")]);
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

    #[test]
    fn truncated_file_is_reread() {
        let d = TempDir::new("trunc");
        let f = d.write("t.jsonl", "{\"a\":1}\n{\"a\":2}\n");
        let mut r = FileReader::new(&f).expect("glob");
        assert_eq!(poll(&mut r, false).len(), 2);
        d.write("t.jsonl", "{\"b\":1}\n");
        assert_eq!(poll(&mut r, false), vec![rec(format!("{f}:1"), "{\"b\":1}")]);
    }

    #[test]
    fn bad_glob_and_unreadable() {
        assert!(matches!(FileReader::new("a/[b"), Err(ConfigError::BadGlob { .. })));
        let d = TempDir::new("dir");
        fs::create_dir_all(d.0.join("sub.jsonl")).expect("mkdir");
        let mut r = FileReader::new(&d.glob("*.jsonl")).expect("glob");
        // A directory matching the glob is skipped.
        assert_eq!(poll(&mut r, true), vec![]);
        assert!(r.paths().is_empty());
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
        assert_eq!(classify(b"{\n\"a\":", true), Decision::Lines);
        assert_eq!(classify(b"{\nbad\n{\"a\":1}\n", false), Decision::Lines);
        assert_eq!(classify(b"  [1", false), Decision::Wait);
        assert_eq!(classify(b"  [1", true), Decision::Array);
    }
}
