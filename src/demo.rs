//! The demo workload: a deterministic generator of a realistic AI-agent platform workload.
//!
//! [`write_demo_data`] writes four JSON-lines files into a directory, one per input relation of
//! the event model (`amx_dataflows::event`), and [`demo_job_toml`] returns the job file that
//! ingests them with the `json` source format. The benchmark uses the same generator with
//! millions of events, so it formats JSON by hand into a reused buffer (no allocation per record):
//! a release build writes about 1.5 million records (≈ 0.9 GB) per second on 2 cores.
//!
//! # What the data contains
//!
//! Of [`DemoConfig::events`] records, 80 % are spans, 3 % evaluations, 10 % workflow events and
//! 7 % knowledge events. All four files cover the same stretch of time, starting at
//! 2025-01-01T00:00:00Z (about 40 minutes of platform activity per 100,000 events).
//!
//! - `spans.jsonl`: OpenTelemetry GenAI-style agent traces of 3–20 spans: one `invoke_agent`
//!   root per trace (no parent), then `chat` (≈ 60 %) and `execute_tool` (≈ 40 %) children, with
//!   an occasional `embeddings` lookup first. 50 agents with Zipf-like popularity, 11 chat models
//!   and 1 embedding model of 5 providers, 30 tools with their own latencies and error rates.
//!   64 traces are in flight at a time, interleaved; lines are in `start_time` order except ≈ 1 %
//!   of spans that arrive late (both times moved back by up to 5 s). Times are ISO-8601 UTC
//!   strings with microseconds. ≈ 3 % of spans have `status = "error"` with an `error_type`.
//! - `evaluations.jsonl`: `task_success` (score 0.0 / 1.0) and `helpfulness` (score in 0..1)
//!   results of traces whose spans have all been written already.
//! - `workflow_events.jsonl`: runs of 10 multi-step workflows (run-level events have no
//!   `step_id`), step retries with increasing `attempt`, runs that fail after 3 attempts, a few
//!   cancellations, ≈ 2 % of events out of order and a few runs still running at the end.
//!   `event_time` is an ISO-8601 UTC string with milliseconds.
//! - `knowledge_events.jsonl`: upserts and deletes of documents in 5 collections, with versions
//!   increasing per document, ≈ 30 % bot edits, `event_time` in epoch milliseconds (a JSON
//!   number) and ≈ 5 % of events out of order (a newer version earlier in the file).
//!
//! About one line in 20,000 of each file (at least one per file of 100 lines or more) is
//! deliberately malformed: an extra line after a valid record that is either that record cut
//! short or that record with a non-numeric value in a numeric column (`"input_tokens":"many"`).
//! The valid records alone form a consistent workload: malformed lines never replace one.
//!
//! # Determinism
//!
//! The same [`DemoConfig`] gives byte-identical files on the same platform with the same `rand`
//! version (the generator is `rand::rngs::SmallRng`, whose stream is not portable across
//! platforms or `rand` versions).

use amx_dataflows::event::WorkflowState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Size and seed of the demo workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoConfig {
    /// Valid records to write across all four files (records). The deliberately malformed
    /// lines come on top (about one per 20,000 records per file).
    pub events: usize,
    /// Seed of the pseudo-random generator: the same config gives byte-identical files.
    pub seed: u64,
}

impl Default for DemoConfig {
    /// 200,000 events, seed 42.
    fn default() -> DemoConfig {
        DemoConfig { events: 200_000, seed: 42 }
    }
}

/// What [`write_demo_data`] wrote: the directory and one entry per file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoData {
    /// The directory holding the files (absolute).
    pub dir: PathBuf,
    /// The files, in the order spans, evaluations, workflow_events, knowledge_events.
    pub files: Vec<DemoFile>,
}

impl DemoData {
    /// The file of the given relation (`"spans"`, `"evaluations"`, `"workflow_events"`,
    /// `"knowledge_events"`), if written.
    pub fn file(&self, name: &str) -> Option<&DemoFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Lines written across all files (records), malformed ones included.
    pub fn records(&self) -> usize {
        self.files.iter().map(|f| f.records).sum()
    }

    /// Deliberately malformed lines across all files (records).
    pub fn malformed(&self) -> usize {
        self.files.iter().map(|f| f.malformed).sum()
    }
}

/// One JSON-lines file of the demo workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoFile {
    /// The relation the file feeds and the name of its source in the job file: `"spans"`,
    /// `"evaluations"`, `"workflow_events"` or `"knowledge_events"`.
    pub name: &'static str,
    /// Absolute path of the file (`<dir>/<name>.jsonl`).
    pub path: PathBuf,
    /// Lines in the file (records), the malformed ones included.
    pub records: usize,
    /// How many of those lines are deliberately malformed (records); each should become one
    /// row of `ingest_errors`.
    pub malformed: usize,
}

impl DemoFile {
    /// Lines that decode into a row of the relation (records): `records - malformed`.
    pub fn valid(&self) -> usize {
        self.records - self.malformed
    }
}

/// Writes `spans.jsonl`, `evaluations.jsonl`, `workflow_events.jsonl` and
/// `knowledge_events.jsonl` into `dir` (created if missing; existing files are replaced).
///
/// `cfg.events` valid records are split 80 % / 3 % / 10 % / 7 % over the four files, plus about
/// one malformed line per 20,000 records per file. The module documentation describes the data.
///
/// # Errors
///
/// Any I/O error creating the directory or writing the files.
pub fn write_demo_data(dir: &Path, cfg: &DemoConfig) -> io::Result<DemoData> {
    fs::create_dir_all(dir)?;
    let dir = std::path::absolute(dir)?;
    let n = cfg.events as u128;
    let spans_target = (n * 80 / 100) as usize;
    let evals_target = (n * 3 / 100) as usize;
    let workflow_target = (n * 10 / 100) as usize;
    let knowledge_target = cfg.events - spans_target - evals_target - workflow_target;

    let mut seeder = SmallRng::seed_from_u64(cfg.seed);
    let mut span_rng = SmallRng::seed_from_u64(seeder.random());
    let mut eval_rng = SmallRng::seed_from_u64(seeder.random());
    let mut workflow_rng = SmallRng::seed_from_u64(seeder.random());
    let mut knowledge_rng = SmallRng::seed_from_u64(seeder.random());

    let mut spans = JsonlWriter::create(&dir, "spans", b"\"input_tokens\":", b"\"many\"")?;
    let mut evals = JsonlWriter::create(&dir, "evaluations", b"\"score\":", b"\"high\"")?;
    spans.schedule_first_malformed(&mut span_rng);
    evals.schedule_first_malformed(&mut eval_rng);
    let end_us = SpanGen::new(span_rng, eval_rng).run(&mut spans, &mut evals, spans_target, evals_target)?;
    // The other files cover the same stretch of time as the spans.
    let window_us = if end_us > BASE_US { end_us - BASE_US } else { cfg.events as i64 * 5_000 };

    let mut workflow = JsonlWriter::create(&dir, "workflow_events", b"\"event_seq\":", b"\"7th\"")?;
    workflow.schedule_first_malformed(&mut workflow_rng);
    write_workflow_events(&mut workflow, &mut workflow_rng, workflow_target, window_us)?;

    let mut knowledge = JsonlWriter::create(&dir, "knowledge_events", b"\"version\":", b"\"latest\"")?;
    knowledge.schedule_first_malformed(&mut knowledge_rng);
    write_knowledge_events(&mut knowledge, &mut knowledge_rng, knowledge_target, window_us)?;

    let files = vec![spans.finish()?, evals.finish()?, workflow.finish()?, knowledge.finish()?];
    Ok(DemoData { dir, files })
}

/// The job file for `data`: TOML text with `name = "demo"`, one `[[sources]]` per file
/// (`format = "json"`, `path` = the file's absolute path, `relation`, `time_unit = "ms"` and a
/// mapping of every column of the relation to its JSON pointer) and six example `[[queries]]`
/// over the built-in views.
///
/// Files whose `name` is not one of the four relations are left out.
pub fn demo_job_toml(data: &DemoData) -> String {
    let mut s = String::with_capacity(8 * 1024);
    s.push_str("# AIMatrix demo job: the files written by `aimatrix::demo::write_demo_data`.\n");
    s.push_str("name = \"demo\"\n");
    for file in &data.files {
        let Some(mapping) = mapping(file.name) else {
            continue;
        };
        let path = std::path::absolute(&file.path).unwrap_or_else(|_| file.path.clone());
        let _ = write!(
            s,
            "\n[[sources]]\nname = {}\nformat = \"json\"\npath = {}\n",
            toml_string(file.name),
            toml_string(&path.to_string_lossy()),
        );
        let _ = write!(
            s,
            "[sources.options]\nrelation = {}\n\
             time_unit = \"ms\" # unit of numeric times (knowledge event_time is epoch ms)\n\
             [sources.options.mapping]\n",
            toml_string(file.name),
        );
        for (column, pointer) in mapping {
            let _ = writeln!(s, "{column} = {}", toml_string(pointer));
        }
    }
    for (name, sql) in QUERIES {
        let _ = write!(s, "\n[[queries]]\nname = {}\nsql = {}\n", toml_string(name), toml_string(sql));
    }
    s
}

/// The example queries of the demo job: (name, DataFusion SQL over the built-in views).
const QUERIES: &[(&str, &str)] = &[
    (
        "slowest models",
        "SELECT provider, request_model, calls, round(latency_ms_p50, 1) AS latency_ms_p50, \
         round(latency_ms_p95, 1) AS latency_ms_p95 FROM model_usage ORDER BY latency_ms_p95 DESC LIMIT 5",
    ),
    (
        "agent error rates",
        "SELECT agent_name, count(*) AS traces, \
         round(CAST(sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS DOUBLE) / count(*), 3) AS error_rate, \
         round(avg(eval_score), 3) AS avg_eval_score FROM agent_traces GROUP BY agent_name \
         HAVING count(*) >= 20 ORDER BY error_rate DESC, agent_name LIMIT 10",
    ),
    (
        "least reliable tools",
        "SELECT tool_name, calls, errors, traces, round(CAST(errors AS DOUBLE) / calls, 3) AS error_rate \
         FROM tool_usage WHERE calls >= 20 ORDER BY error_rate DESC, tool_name LIMIT 5",
    ),
    (
        "workflow outcomes",
        "SELECT workflow_name, status, count(*) AS runs, sum(retries) AS retries \
         FROM workflow_runs GROUP BY workflow_name, status ORDER BY workflow_name, status",
    ),
    (
        "knowledge collections",
        "SELECT collection, documents, edits, bot_edits, size_bytes FROM collection_stats \
         ORDER BY collection",
    ),
    ("ingest errors by source", "SELECT source, count(*) AS errors FROM ingest_errors GROUP BY source ORDER BY source"),
];

/// Column → JSON pointer mapping of each relation's file (every column of the relation).
fn mapping(relation: &str) -> Option<&'static [(&'static str, &'static str)]> {
    const SPANS: &[(&str, &str)] = &[
        ("trace_id", "/trace_id"),
        ("span_id", "/span_id"),
        ("parent_span_id", "/parent_span_id"),
        ("name", "/name"),
        ("operation", "/operation"),
        ("provider", "/provider"),
        ("request_model", "/request_model"),
        ("response_model", "/response_model"),
        ("agent_name", "/agent_name"),
        ("conversation_id", "/conversation_id"),
        ("tool_name", "/tool_name"),
        ("tool_call_id", "/tool_call_id"),
        ("input_tokens", "/input_tokens"),
        ("output_tokens", "/output_tokens"),
        ("cache_read_input_tokens", "/cache_read_input_tokens"),
        ("reasoning_output_tokens", "/reasoning_output_tokens"),
        ("start_time", "/start_time"),
        ("end_time", "/end_time"),
        ("status", "/status"),
        ("error_type", "/error_type"),
        ("attributes", "/attributes"),
    ];
    const EVALUATIONS: &[(&str, &str)] = &[
        ("trace_id", "/trace_id"),
        ("span_id", "/span_id"),
        ("name", "/name"),
        ("score", "/score"),
        ("label", "/label"),
    ];
    const WORKFLOW_EVENTS: &[(&str, &str)] = &[
        ("run_id", "/run_id"),
        ("workflow_name", "/workflow_name"),
        ("step_id", "/step_id"),
        ("step_name", "/step_name"),
        ("step_type", "/step_type"),
        ("state", "/state"),
        ("raw_state", "/state"),
        ("attempt", "/attempt"),
        ("event_time", "/event_time"),
        ("event_seq", "/event_seq"),
        ("failure_message", "/failure_message"),
    ];
    const KNOWLEDGE_EVENTS: &[(&str, &str)] = &[
        ("collection", "/collection"),
        ("document_id", "/document_id"),
        ("op", "/op"),
        ("version", "/version"),
        ("size_bytes", "/size_bytes"),
        ("event_time", "/event_time"),
        ("actor", "/actor"),
        ("is_bot", "/is_bot"),
        ("source_offset", "/source_offset"),
    ];
    match relation {
        "spans" => Some(SPANS),
        "evaluations" => Some(EVALUATIONS),
        "workflow_events" => Some(WORKFLOW_EVENTS),
        "knowledge_events" => Some(KNOWLEDGE_EVENTS),
        _ => None,
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Output: a JSON-lines file with deliberately malformed lines.

/// 2025-01-01T00:00:00Z in microseconds since the Unix epoch.
const BASE_US: i64 = 1_735_689_600_000_000;
/// About one malformed line per this many valid records (records).
const MALFORMED_EVERY: usize = 20_000;
/// Buffered bytes written to the file at once.
const FLUSH_BYTES: usize = 1 << 20;

/// A JSON-lines file being written: records are formatted straight into `buf`, and after
/// scheduled records a corrupted copy of the record is added as an extra, malformed line.
struct JsonlWriter {
    name: &'static str,
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    line_start: usize,
    lines: usize,
    valid: usize,
    malformed: usize,
    next_malformed: usize,
    /// The key (with quotes and colon) whose value a "bad value" malformed line replaces.
    bad_key: &'static [u8],
    /// The replacement value: JSON text of the wrong type.
    bad_value: &'static [u8],
}

impl JsonlWriter {
    fn create(
        dir: &Path,
        name: &'static str,
        bad_key: &'static [u8],
        bad_value: &'static [u8],
    ) -> io::Result<JsonlWriter> {
        let path = dir.join(format!("{name}.jsonl"));
        let file = File::create(&path)?;
        Ok(JsonlWriter {
            name,
            path,
            file,
            buf: Vec::with_capacity(FLUSH_BYTES + 64 * 1024),
            line_start: 0,
            lines: 0,
            valid: 0,
            malformed: 0,
            next_malformed: usize::MAX,
            bad_key,
            bad_value,
        })
    }

    /// The first malformed line follows valid record 50..=90, so every file of 100 lines or more
    /// has one.
    fn schedule_first_malformed(&mut self, rng: &mut SmallRng) {
        self.next_malformed = rng.random_range(50..=90);
    }

    /// The buffer to format the next record into (without its newline).
    fn begin(&mut self) -> &mut Vec<u8> {
        self.line_start = self.buf.len();
        &mut self.buf
    }

    /// Ends the record begun with [`JsonlWriter::begin`], adds a malformed copy when one is due
    /// and flushes a full buffer.
    fn end(&mut self, rng: &mut SmallRng) -> io::Result<()> {
        self.buf.push(b'\n');
        self.lines += 1;
        self.valid += 1;
        if self.valid == self.next_malformed {
            self.push_malformed(rng);
            self.next_malformed += rng.random_range(MALFORMED_EVERY * 9 / 10..=MALFORMED_EVERY * 11 / 10);
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Adds a corrupted copy of the last record: cut short, or with `bad_key`'s value replaced by
    /// `bad_value`.
    fn push_malformed(&mut self, rng: &mut SmallRng) {
        let line = self.buf[self.line_start..self.buf.len() - 1].to_vec();
        let key_at = line.windows(self.bad_key.len()).position(|w| w == self.bad_key);
        match key_at {
            Some(at) if rng.random_bool(0.5) => {
                let value_at = at + self.bad_key.len();
                let value_end =
                    line[value_at..].iter().position(|&b| b == b',' || b == b'}').map_or(line.len(), |p| value_at + p);
                self.buf.extend_from_slice(&line[..value_at]);
                self.buf.extend_from_slice(self.bad_value);
                self.buf.extend_from_slice(&line[value_end..]);
            }
            _ => {
                let cut = rng.random_range(line.len() / 4..=line.len() * 3 / 4).max(1);
                self.buf.extend_from_slice(&line[..cut]);
            }
        }
        self.buf.push(b'\n');
        self.lines += 1;
        self.malformed += 1;
    }

    fn finish(mut self) -> io::Result<DemoFile> {
        self.file.write_all(&self.buf)?;
        self.file.flush()?;
        Ok(DemoFile { name: self.name, path: self.path, records: self.lines, malformed: self.malformed })
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers: JSON pieces appended to a byte buffer.

const HEX: &[u8; 16] = b"0123456789abcdef";
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The low `digits` hex digits of `v`, lower case.
fn push_hex(buf: &mut Vec<u8>, v: u128, digits: usize) {
    let mut tmp = [0u8; 32];
    for (i, slot) in tmp[..digits].iter_mut().enumerate() {
        *slot = HEX[((v >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    buf.extend_from_slice(&tmp[..digits]);
}

/// `v` in decimal.
fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// `v` in decimal, at least `width` digits (zero-padded); `v` must be < 10^20.
fn push_padded(buf: &mut Vec<u8>, v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    let mut rest = v;
    loop {
        i -= 1;
        tmp[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let start = i.min(tmp.len() - width.min(tmp.len()));
    buf.extend_from_slice(&tmp[start..]);
}

/// A JSON integer, or `null` when `v` is negative (the "unknown" marker of planned records).
fn push_opt_int(buf: &mut Vec<u8>, v: i64) {
    if v < 0 { buf.extend_from_slice(b"null") } else { push_u64(buf, v as u64) }
}

/// `s` as a JSON string (quoted and escaped).
fn push_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    push_escaped(buf, s);
    buf.push(b'"');
}

/// `s` escaped for the inside of a JSON string, without quotes.
fn push_escaped(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        buf.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b if b < 0x20 => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
            }
            b => buf.push(b),
        }
    }
}

/// (year, month, day) of a day number counted from 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A quoted ISO-8601 UTC time, `"2025-01-01T00:00:00.001099Z"`, of `us` (µs since the epoch)
/// with `frac_digits` (3 or 6) fractional digits.
fn push_iso(buf: &mut Vec<u8>, us: i64, frac_digits: usize) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000) as u64;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u64;
    buf.push(b'"');
    push_padded(buf, year.max(0) as u64, 4);
    buf.push(b'-');
    push_padded(buf, u64::from(month), 2);
    buf.push(b'-');
    push_padded(buf, u64::from(day), 2);
    buf.push(b'T');
    push_padded(buf, sod / 3600, 2);
    buf.push(b':');
    push_padded(buf, sod / 60 % 60, 2);
    buf.push(b':');
    push_padded(buf, sod % 60, 2);
    buf.push(b'.');
    if frac_digits == 3 {
        push_padded(buf, micros / 1000, 3);
    } else {
        push_padded(buf, micros, 6);
    }
    buf.extend_from_slice(b"Z\"");
}

// ---------------------------------------------------------------------------------------------
// Random helpers.

/// A standard normal sample (Box–Muller).
fn std_normal(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A log-normal sample with the given median and shape `sigma`.
fn lognormal(rng: &mut SmallRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * std_normal(rng)).exp()
}

/// An exponential sample with the given mean.
fn exponential(rng: &mut SmallRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// A weighted choice among indices: cumulative weights.
struct Cdf(Vec<f64>);

impl Cdf {
    fn new(weights: impl IntoIterator<Item = f64>) -> Cdf {
        let mut total = 0.0;
        Cdf(weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect())
    }

    fn pick(&self, rng: &mut SmallRng) -> usize {
        let x = rng.random::<f64>() * self.0.last().copied().unwrap_or(0.0);
        self.0.partition_point(|&c| c <= x).min(self.0.len() - 1)
    }
}

/// Zipf-like weights `1 / (k + 1)^s` for `n` ranks.
fn zipf(n: usize, s: f64) -> impl Iterator<Item = f64> {
    (0..n).map(move |k| 1.0 / ((k + 1) as f64).powf(s))
}

// ---------------------------------------------------------------------------------------------
// Spans and evaluations.

/// A model: provider, names, latency profile.
struct Model {
    provider: &'static str,
    name: &'static str,
    /// The dated snapshot reported as `response_model`.
    snapshot: &'static str,
    /// Time to first token (ms).
    ttft_ms: f64,
    /// Generation time per output token (ms).
    ms_per_token: f64,
    /// Popularity among chat models (0 for the embedding model).
    weight: f64,
}

impl Model {
    /// `server.address` of the provider's API.
    fn server(&self) -> &'static str {
        match self.provider {
            "openai" => "api.openai.com",
            "anthropic" => "api.anthropic.com",
            "gcp.vertex_ai" => "us-central1-aiplatform.googleapis.com",
            "mistral_ai" => "api.mistral.ai",
            _ => "api.cohere.com",
        }
    }
}

const fn m(
    provider: &'static str,
    name: &'static str,
    snapshot: &'static str,
    ttft_ms: f64,
    ms_per_token: f64,
    weight: f64,
) -> Model {
    Model { provider, name, snapshot, ttft_ms, ms_per_token, weight }
}

/// The 12 models; each belongs to one provider. [`EMBEDDING_MODEL`] is the embedding model,
/// [`REASONING_MODEL`] reports reasoning tokens.
#[rustfmt::skip]
const MODELS: [Model; 12] = [
    m("openai",        "gpt-4o",                 "gpt-4o-2024-08-06",           350.0, 12.0, 1.0),
    m("openai",        "gpt-4o-mini",            "gpt-4o-mini-2024-07-18",      250.0,  7.0, 0.9),
    m("openai",        "o3-mini",                "o3-mini-2025-01-31",          900.0,  9.0, 0.35),
    m("openai",        "text-embedding-3-small", "text-embedding-3-small",        0.0,  0.0, 0.0),
    m("anthropic",     "claude-3-5-sonnet",      "claude-3-5-sonnet-20241022",  600.0, 14.0, 0.8),
    m("anthropic",     "claude-3-5-haiku",       "claude-3-5-haiku-20241022",   400.0,  8.0, 0.5),
    m("anthropic",     "claude-3-opus",          "claude-3-opus-20240229",     1200.0, 28.0, 0.15),
    m("gcp.vertex_ai", "gemini-1.5-pro",         "gemini-1.5-pro-002",          700.0, 11.0, 0.4),
    m("gcp.vertex_ai", "gemini-1.5-flash",       "gemini-1.5-flash-002",        250.0,  5.0, 0.45),
    m("mistral_ai",    "mistral-large",          "mistral-large-2411",          500.0, 14.0, 0.25),
    m("mistral_ai",    "mistral-small",          "mistral-small-2409",          300.0,  8.0, 0.2),
    m("cohere",        "command-r-plus",         "command-r-plus-08-2024",      500.0, 15.0, 0.2),
];
const REASONING_MODEL: usize = 2;
const EMBEDDING_MODEL: usize = 3;

/// A tool: name, median latency (ms), probability of an error, `gen_ai.tool.type`.
struct Tool(&'static str, f64, f64, &'static str);

const TOOLS: [Tool; 30] = [
    Tool("search_knowledge_base", 80.0, 0.015, "datastore"),
    Tool("vector_search", 60.0, 0.0075, "datastore"),
    Tool("web_search", 900.0, 0.045, "extension"),
    Tool("fetch_url", 700.0, 0.18, "extension"),
    Tool("sql_query", 150.0, 0.075, "datastore"),
    Tool("code_interpreter", 2500.0, 0.105, "extension"),
    Tool("calculator", 3.0, 0.003, "function"),
    Tool("get_customer", 40.0, 0.015, "function"),
    Tool("lookup_order", 60.0, 0.0225, "function"),
    Tool("create_ticket", 250.0, 0.015, "function"),
    Tool("update_ticket", 200.0, 0.015, "function"),
    Tool("send_email", 400.0, 0.03, "function"),
    Tool("refund_payment", 900.0, 0.09, "function"),
    Tool("get_weather", 300.0, 0.03, "extension"),
    Tool("schedule_meeting", 500.0, 0.045, "function"),
    Tool("translate_text", 600.0, 0.015, "extension"),
    Tool("summarize_document", 1500.0, 0.03, "function"),
    Tool("read_file", 20.0, 0.015, "function"),
    Tool("write_file", 30.0, 0.0225, "function"),
    Tool("http_request", 500.0, 0.15, "extension"),
    Tool("slack_post_message", 300.0, 0.03, "extension"),
    Tool("github_create_issue", 700.0, 0.045, "extension"),
    Tool("jira_search", 400.0, 0.03, "extension"),
    Tool("crm_update_contact", 350.0, 0.03, "function"),
    Tool("calendar_lookup", 150.0, 0.015, "function"),
    Tool("image_generate", 6000.0, 0.06, "extension"),
    Tool("speech_to_text", 3000.0, 0.045, "extension"),
    Tool("python_sandbox", 1800.0, 0.135, "extension"),
    Tool("geocode_address", 120.0, 0.015, "function"),
    Tool("currency_convert", 50.0, 0.0075, "function"),
];

const AGENTS: [&str; 50] = [
    "support_triage",
    "billing_assistant",
    "refund_agent",
    "order_tracker",
    "research_assistant",
    "sql_analyst",
    "code_reviewer",
    "onboarding_guide",
    "sales_qualifier",
    "it_helpdesk",
    "email_drafter",
    "meeting_scheduler",
    "docs_writer",
    "web_researcher",
    "bug_triager",
    "incident_responder",
    "report_builder",
    "lead_enricher",
    "travel_planner",
    "hr_helpdesk",
    "contract_summarizer",
    "legal_reviewer",
    "test_writer",
    "data_cleaner",
    "log_analyzer",
    "oncall_assistant",
    "security_auditor",
    "compliance_checker",
    "invoice_processor",
    "expense_auditor",
    "translation_agent",
    "content_moderator",
    "social_media_writer",
    "seo_optimizer",
    "product_recommender",
    "shopping_assistant",
    "inventory_planner",
    "forecast_agent",
    "churn_predictor",
    "survey_analyzer",
    "feedback_summarizer",
    "kb_curator",
    "faq_bot",
    "math_tutor",
    "language_tutor",
    "health_intake",
    "claims_processor",
    "fraud_investigator",
    "devops_copilot",
    "recipe_helper",
];

const CHAT_ERRORS: [&str; 4] = ["rate_limit", "timeout", "server_error", "context_length_exceeded"];
const TOOL_ERRORS: [&str; 3] = ["tool_error", "timeout", "invalid_arguments"];
const TEMPERATURES: [&str; 5] = ["0", "0.2", "0.3", "0.7", "1"];
const MAX_TOKENS: [&str; 3] = ["1024", "2048", "4096"];

/// An agent's fixed profile (the same for every seed).
struct Agent {
    name: &'static str,
    model: usize,
    temperature: &'static str,
    max_tokens: &'static str,
    /// System prompt and tool definitions (tokens).
    system_tokens: i64,
    /// Whether traces start with an embeddings lookup now and then.
    rag: bool,
    tools: [usize; 5],
    /// Probability that an error-free trace passes `task_success`.
    success: f64,
}

fn agents() -> Vec<Agent> {
    // A fixed seed: profiles are part of the workload's definition, not of the sample.
    let mut rng = SmallRng::seed_from_u64(0x00a1_a7e1_0000_0001);
    let chat_models = Cdf::new(MODELS.iter().map(|m| m.weight));
    let tools = Cdf::new(zipf(TOOLS.len(), 0.6));
    AGENTS
        .iter()
        .map(|&name| {
            let mut own = [0usize; 5];
            for i in 0..own.len() {
                let mut t = tools.pick(&mut rng);
                while own[..i].contains(&t) {
                    t = rng.random_range(0..TOOLS.len());
                }
                own[i] = t;
            }
            Agent {
                name,
                model: chat_models.pick(&mut rng),
                temperature: TEMPERATURES[rng.random_range(0..TEMPERATURES.len())],
                max_tokens: MAX_TOKENS[rng.random_range(0..MAX_TOKENS.len())],
                system_tokens: rng.random_range(400..3000),
                rag: rng.random_bool(0.4),
                tools: own,
                success: rng.random_range(0.55..0.95),
            }
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    InvokeAgent,
    Chat,
    ExecuteTool,
    Embeddings,
}

/// A planned span. Token counts are -1 when unknown (written as `null`).
#[derive(Clone, Copy)]
struct PlannedSpan {
    op: Op,
    span_id: u64,
    model: usize,
    tool: usize,
    start_us: i64,
    end_us: i64,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    reasoning_tokens: i64,
    error_type: Option<&'static str>,
    /// For chat spans: the model asked for tool calls (`finish_reasons = ["tool_calls"]`).
    wants_tools: bool,
    tool_call_id: (u64, u64),
}

impl PlannedSpan {
    fn new(op: Op, span_id: u64, start_us: i64, end_us: i64) -> PlannedSpan {
        PlannedSpan {
            op,
            span_id,
            model: 0,
            tool: 0,
            start_us,
            end_us,
            input_tokens: -1,
            output_tokens: -1,
            cache_read_tokens: -1,
            reasoning_tokens: -1,
            error_type: None,
            wants_tools: false,
            tool_call_id: (0, 0),
        }
    }
}

/// A trace being written: all its spans are planned when it starts, then written in start order.
#[derive(Default)]
struct Trace {
    id: u128,
    agent: usize,
    conversation: u64,
    spans: Vec<PlannedSpan>,
    next: usize,
}

impl Trace {
    fn root(&self) -> &PlannedSpan {
        &self.spans[0]
    }
    fn next_start(&self) -> i64 {
        self.spans.get(self.next).map_or(i64::MAX, |s| s.start_us)
    }
}

/// Traces in flight at once.
const CONCURRENT_TRACES: usize = 64;
/// Traces finished but not yet evaluated that are kept as candidates for evaluations.
const EVAL_CANDIDATES: usize = 1024;

struct SpanGen {
    rng: SmallRng,
    eval_rng: SmallRng,
    agents: Vec<Agent>,
    agent_cdf: Cdf,
    chat_model_cdf: Cdf,
    tool_cdf: Cdf,
    agent_tool_cdf: Cdf,
    chat_error_cdf: Cdf,
    tool_error_cdf: Cdf,
    /// The last conversation of each agent, continued by some of its traces.
    last_conversation: Vec<u64>,
    traces: Vec<Trace>,
    /// Finished traces awaiting evaluation: (trace id, agent, root failed).
    finished: VecDeque<(u128, usize, bool)>,
}

impl SpanGen {
    fn new(rng: SmallRng, eval_rng: SmallRng) -> SpanGen {
        SpanGen {
            rng,
            eval_rng,
            agents: agents(),
            agent_cdf: Cdf::new(zipf(AGENTS.len(), 0.9)),
            chat_model_cdf: Cdf::new(MODELS.iter().map(|m| m.weight)),
            tool_cdf: Cdf::new(zipf(TOOLS.len(), 0.8)),
            agent_tool_cdf: Cdf::new(zipf(5, 1.0)),
            chat_error_cdf: Cdf::new([0.5, 0.25, 0.15, 0.10]),
            tool_error_cdf: Cdf::new([0.7, 0.2, 0.1]),
            last_conversation: vec![0; AGENTS.len()],
            traces: (0..CONCURRENT_TRACES).map(|_| Trace::default()).collect(),
            finished: VecDeque::with_capacity(EVAL_CANDIDATES),
        }
    }

    /// Writes `spans_target` spans and about `evals_target` evaluations; returns the largest
    /// span start time written (µs since the epoch), or `BASE_US` when none was.
    fn run(
        mut self,
        spans: &mut JsonlWriter,
        evals: &mut JsonlWriter,
        spans_target: usize,
        evals_target: usize,
    ) -> io::Result<i64> {
        for slot in 0..CONCURRENT_TRACES {
            let t0 = BASE_US + self.rng.random_range(0..5_000_000);
            self.plan_trace(slot, t0);
        }
        let evals_per_span = if spans_target == 0 { 0.0 } else { evals_target as f64 / spans_target as f64 };
        let mut eval_budget = 0.0;
        let mut evals_written = 0;
        let mut clock = BASE_US;
        for _ in 0..spans_target {
            let mut slot = 0;
            let mut best = i64::MAX;
            for (i, trace) in self.traces.iter().enumerate() {
                let start = trace.next_start();
                if start < best {
                    best = start;
                    slot = i;
                }
            }
            clock = clock.max(best);
            // ~1 % of spans arrive late: their times are moved back by up to 5 s.
            let shift_us = if self.rng.random_bool(0.01) { self.rng.random_range(1..=5_000_000) } else { 0 };
            let trace = &self.traces[slot];
            write_span(spans.begin(), trace, &trace.spans[trace.next], &self.agents[trace.agent], shift_us);
            spans.end(&mut self.rng)?;
            let trace = &mut self.traces[slot];
            trace.next += 1;
            if trace.next == trace.spans.len() {
                let root = trace.root();
                if self.finished.len() == EVAL_CANDIDATES {
                    self.finished.pop_front();
                }
                self.finished.push_back((trace.id, trace.agent, root.error_type.is_some()));
                let t0 = root.end_us + exponential(&mut self.rng, 400_000.0) as i64;
                self.plan_trace(slot, t0);
            }
            eval_budget += evals_per_span;
            while eval_budget >= 1.0 && evals_written < evals_target {
                let Some(done) = self.finished.pop_front() else {
                    break;
                };
                let n = self.write_evaluations(evals, done, evals_target - evals_written)?;
                evals_written += n;
                eval_budget -= n as f64;
            }
        }
        while evals_written < evals_target {
            let Some(done) = self.finished.pop_front() else {
                break;
            };
            evals_written += self.write_evaluations(evals, done, evals_target - evals_written)?;
        }
        Ok(clock)
    }

    /// Writes the evaluations of one finished trace (1 or 2 records, never more than `room`,
    /// which is at least 1); returns how many.
    fn write_evaluations(
        &mut self,
        evals: &mut JsonlWriter,
        (id, agent, failed): (u128, usize, bool),
        room: usize,
    ) -> io::Result<usize> {
        let rng = &mut self.eval_rng;
        let success_rate = self.agents[agent].success * if failed { 0.25 } else { 1.0 };
        let success = rng.random_bool(success_rate);
        write_evaluation(evals.begin(), id, "task_success", if success { 1000 } else { 0 }, success);
        evals.end(rng)?;
        if !rng.random_bool(0.4) || room < 2 {
            return Ok(1);
        }
        let mean = if success { 0.78 } else { 0.42 };
        let score = (mean + 0.14 * std_normal(rng)).clamp(0.0, 1.0);
        let milli = (score * 1000.0).round() as u64;
        write_evaluation(evals.begin(), id, "helpfulness", milli, milli >= 600);
        evals.end(rng)?;
        Ok(2)
    }

    /// Plans a new trace in `slot` whose root span starts at `t0` (µs since the epoch).
    fn plan_trace(&mut self, slot: usize, t0: i64) {
        let rng = &mut self.rng;
        let agent_idx = self.agent_cdf.pick(rng);
        let agent = &self.agents[agent_idx];
        let conversation = match self.last_conversation[agent_idx] {
            last if last != 0 && rng.random_bool(0.3) => last,
            _ => rng.random::<u64>().max(1),
        };
        self.last_conversation[agent_idx] = conversation;
        let trace = &mut self.traces[slot];
        trace.id = rng.random::<u128>().max(1);
        trace.agent = agent_idx;
        trace.conversation = conversation;
        trace.next = 0;
        trace.spans.clear();
        trace.spans.push(PlannedSpan::new(Op::InvokeAgent, rng.random::<u64>().max(1), t0, t0));

        let mut remaining: usize = rng.random_range(2..=19); // children: 3–20 spans with the root
        let mut t = t0 + rng.random_range(1_000..20_000);
        let mut context = agent.system_tokens + rng.random_range(20..400);
        let mut prev_context = 0;
        let mut chats = 0;
        let mut last_chat_error = None;
        let mut tool_error = false;

        if agent.rag && remaining >= 3 && rng.random_bool(0.35) {
            let lat = lognormal(rng, 120_000.0, 0.4) as i64;
            let mut s = PlannedSpan::new(Op::Embeddings, rng.random::<u64>().max(1), t, t + lat);
            s.model = EMBEDDING_MODEL;
            s.input_tokens = rng.random_range(8..400);
            context += rng.random_range(500..3000); // retrieved passages
            trace.spans.push(s);
            t += lat + rng.random_range(1_000..30_000);
            remaining -= 1;
        }
        while remaining > 0 {
            remaining -= 1;
            let model_idx = if rng.random_bool(0.85) { agent.model } else { self.chat_model_cdf.pick(rng) };
            let m = &MODELS[model_idx];
            let mut tools = match rng.random::<f64>() {
                u if u < 0.30 => 0,
                u if u < 0.80 => 1,
                _ => 2,
            };
            tools = tools.min(remaining.saturating_sub(1));
            let error = rng.random_bool(0.015).then(|| CHAT_ERRORS[self.chat_error_cdf.pick(rng)]);
            let mut s = PlannedSpan::new(Op::Chat, rng.random::<u64>().max(1), t, t);
            s.model = model_idx;
            let latency_us = if let Some(kind) = error {
                tools = 0;
                s.error_type = Some(kind);
                match kind {
                    "rate_limit" => lognormal(rng, 80_000.0, 0.5),
                    "timeout" => rng.random_range(30_000_000.0..60_000_000.0),
                    "context_length_exceeded" => lognormal(rng, 150_000.0, 0.3),
                    _ => lognormal(rng, 1_500_000.0, 0.6),
                }
            } else {
                s.wants_tools = tools > 0;
                s.input_tokens = if rng.random_bool(0.05) { -1 } else { context };
                s.output_tokens = if tools > 0 {
                    rng.random_range(15..=180)
                } else {
                    (lognormal(rng, 220.0, 0.7) as i64).clamp(1, 4096)
                };
                if chats > 0 && rng.random_bool(0.6) {
                    // OpenAI caches prompt prefixes of 1024+ tokens in 128-token blocks;
                    // Anthropic caches the marked system prompt.
                    s.cache_read_tokens = match m.provider {
                        "openai" if prev_context >= 1024 => prev_context / 128 * 128,
                        "anthropic" => agent.system_tokens,
                        _ => -1,
                    };
                }
                let mut generated = s.output_tokens;
                if model_idx == REASONING_MODEL {
                    s.reasoning_tokens = (lognormal(rng, 350.0, 0.8) as i64).clamp(0, 20_000);
                    generated += s.reasoning_tokens;
                }
                let mut ms = (m.ttft_ms + generated as f64 * m.ms_per_token) * lognormal(rng, 1.0, 0.3);
                if rng.random_bool(0.02) {
                    ms *= rng.random_range(3.0..10.0); // long tail: queueing, retries upstream
                }
                context += s.output_tokens;
                ms * 1000.0
            };
            s.end_us = t + (latency_us as i64).max(1_000);
            if tools > 0 {
                s.tool_call_id = (rng.random(), rng.random());
            }
            trace.spans.push(s);
            t = s.end_us + rng.random_range(2_000..40_000);
            prev_context = context;
            chats += 1;
            last_chat_error = error;

            // Tool calls requested by that chat; two of them run in parallel.
            let batch_start = t;
            let mut batch_end = t;
            for j in 0..tools {
                remaining -= 1;
                let tool_idx = if rng.random_bool(0.8) {
                    agent.tools[self.agent_tool_cdf.pick(rng)]
                } else {
                    self.tool_cdf.pick(rng)
                };
                let tool = &TOOLS[tool_idx];
                let start = batch_start + j as i64 * rng.random_range(100..2_000);
                let mut ms = lognormal(rng, tool.1, 0.8);
                if rng.random_bool(0.01) {
                    ms *= 5.0;
                }
                let mut s = PlannedSpan::new(Op::ExecuteTool, rng.random::<u64>().max(1), start, start);
                s.tool = tool_idx;
                s.tool_call_id = (rng.random(), rng.random());
                if rng.random_bool(tool.2) {
                    let kind = TOOL_ERRORS[self.tool_error_cdf.pick(rng)];
                    s.error_type = Some(kind);
                    tool_error = true;
                    if kind == "timeout" {
                        ms = 30_000.0 + rng.random_range(0.0..500.0);
                    } else if kind == "invalid_arguments" {
                        ms = ms.min(5.0);
                    }
                }
                s.end_us = start + ((ms * 1000.0) as i64).max(50);
                batch_end = batch_end.max(s.end_us);
                trace.spans.push(s);
                context += rng.random_range(30..1500); // the tool result joins the context
            }
            if tools > 0 {
                t = batch_end + rng.random_range(1_000..20_000);
            }
        }
        let root = &mut trace.spans[0];
        root.end_us = t + rng.random_range(500..10_000);
        root.error_type = match last_chat_error {
            Some(kind) => Some(kind),
            None if tool_error && rng.random_bool(0.3) => Some("tool_error"),
            None => None,
        };
    }
}

/// Formats one span record (no newline).
fn write_span(buf: &mut Vec<u8>, trace: &Trace, s: &PlannedSpan, agent: &Agent, shift_us: i64) {
    let model = &MODELS[s.model];
    let tool = &TOOLS[s.tool];
    buf.extend_from_slice(b"{\"trace_id\":\"");
    push_hex(buf, trace.id, 32);
    buf.extend_from_slice(b"\",\"span_id\":\"");
    push_hex(buf, u128::from(s.span_id), 16);
    buf.extend_from_slice(b"\",\"parent_span_id\":");
    if s.op == Op::InvokeAgent {
        buf.extend_from_slice(b"null");
    } else {
        buf.push(b'"');
        push_hex(buf, u128::from(trace.root().span_id), 16);
        buf.push(b'"');
    }
    let (operation, subject) = match s.op {
        Op::InvokeAgent => ("invoke_agent", agent.name),
        Op::Chat => ("chat", model.name),
        Op::ExecuteTool => ("execute_tool", tool.0),
        Op::Embeddings => ("embeddings", model.name),
    };
    buf.extend_from_slice(b",\"name\":\"");
    push_escaped(buf, operation);
    buf.push(b' ');
    push_escaped(buf, subject);
    buf.extend_from_slice(b"\",\"operation\":");
    push_str(buf, operation);
    let calls_model = matches!(s.op, Op::Chat | Op::Embeddings);
    buf.extend_from_slice(b",\"provider\":");
    if calls_model {
        push_str(buf, model.provider);
        buf.extend_from_slice(b",\"request_model\":");
        push_str(buf, model.name);
        buf.extend_from_slice(b",\"response_model\":");
        if s.error_type.is_some() { buf.extend_from_slice(b"null") } else { push_str(buf, model.snapshot) }
    } else {
        buf.extend_from_slice(b"null,\"request_model\":null,\"response_model\":null");
    }
    buf.extend_from_slice(b",\"agent_name\":");
    push_str(buf, agent.name);
    buf.extend_from_slice(b",\"conversation_id\":\"conv_");
    push_hex(buf, u128::from(trace.conversation), 16);
    buf.extend_from_slice(b"\",\"tool_name\":");
    if s.op == Op::ExecuteTool {
        push_str(buf, tool.0)
    } else {
        buf.extend_from_slice(b"null")
    }
    buf.extend_from_slice(b",\"tool_call_id\":");
    if s.op == Op::ExecuteTool {
        buf.extend_from_slice(b"\"call_");
        let (mut a, mut b) = s.tool_call_id;
        for i in 0..24 {
            let word = if i < 12 { &mut a } else { &mut b };
            buf.push(BASE62[(*word % 62) as usize]);
            *word /= 62;
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b",\"input_tokens\":");
    push_opt_int(buf, s.input_tokens);
    buf.extend_from_slice(b",\"output_tokens\":");
    push_opt_int(buf, s.output_tokens);
    buf.extend_from_slice(b",\"cache_read_input_tokens\":");
    push_opt_int(buf, s.cache_read_tokens);
    buf.extend_from_slice(b",\"reasoning_output_tokens\":");
    push_opt_int(buf, s.reasoning_tokens);
    buf.extend_from_slice(b",\"start_time\":");
    push_iso(buf, s.start_us - shift_us, 6);
    buf.extend_from_slice(b",\"end_time\":");
    push_iso(buf, s.end_us - shift_us, 6);
    match s.error_type {
        Some(kind) => {
            buf.extend_from_slice(b",\"status\":\"error\",\"error_type\":");
            push_str(buf, kind);
        }
        None => buf.extend_from_slice(b",\"status\":\"ok\",\"error_type\":null"),
    }
    buf.extend_from_slice(b",\"attributes\":{");
    match s.op {
        Op::InvokeAgent => {
            buf.extend_from_slice(b"\"gen_ai.agent.id\":\"agt_");
            push_padded(buf, trace.agent as u64, 2);
            buf.extend_from_slice(b"\",\"deployment.environment\":\"production\"");
        }
        Op::Chat => {
            buf.extend_from_slice(b"\"gen_ai.request.temperature\":");
            buf.extend_from_slice(agent.temperature.as_bytes());
            buf.extend_from_slice(b",\"gen_ai.request.max_tokens\":");
            buf.extend_from_slice(agent.max_tokens.as_bytes());
            if s.error_type.is_none() {
                buf.extend_from_slice(if s.wants_tools {
                    b",\"gen_ai.response.finish_reasons\":[\"tool_calls\"]"
                } else {
                    b",\"gen_ai.response.finish_reasons\":[\"stop\"]"
                });
            }
            buf.extend_from_slice(b",\"server.address\":");
            push_str(buf, model.server());
        }
        Op::ExecuteTool => {
            buf.extend_from_slice(b"\"gen_ai.tool.type\":");
            push_str(buf, tool.3);
        }
        Op::Embeddings => {
            buf.extend_from_slice(b"\"gen_ai.embeddings.dimension.count\":1536,\"server.address\":");
            push_str(buf, model.server());
        }
    }
    buf.extend_from_slice(b"}}");
}

/// Formats one evaluation record (no newline); `score_milli` is the score in thousandths.
fn write_evaluation(buf: &mut Vec<u8>, trace_id: u128, name: &str, score_milli: u64, pass: bool) {
    buf.extend_from_slice(b"{\"trace_id\":\"");
    push_hex(buf, trace_id, 32);
    buf.extend_from_slice(b"\",\"span_id\":null,\"name\":");
    push_str(buf, name);
    buf.extend_from_slice(b",\"score\":");
    match score_milli {
        0 => buf.extend_from_slice(b"0.0"),
        1000.. => buf.extend_from_slice(b"1.0"),
        milli => {
            buf.extend_from_slice(b"0.");
            push_padded(buf, milli, 3);
        }
    }
    buf.extend_from_slice(if pass { b",\"label\":\"pass\"}" } else { b",\"label\":\"fail\"}" });
}

// ---------------------------------------------------------------------------------------------
// Workflow events.

/// A workflow step: name, `step_type`, median duration (s), probability that an attempt fails.
struct Step(&'static str, &'static str, f64, f64);

/// A workflow: name, popularity, steps in order.
struct Workflow(&'static str, f64, &'static [Step]);

const ACTIVITY: &str = "activity";
const CHILD: &str = "child_workflow";

const WORKFLOWS: [Workflow; 10] = [
    Workflow(
        "answer_ticket",
        1.0,
        &[
            Step("classify_ticket", ACTIVITY, 1.2, 0.04),
            Step("retrieve_context", ACTIVITY, 0.8, 0.05),
            Step("draft_answer", CHILD, 12.0, 0.10),
            Step("review_answer", ACTIVITY, 3.0, 0.06),
            Step("send_reply", ACTIVITY, 0.6, 0.07),
        ],
    ),
    Workflow(
        "ingest_documents",
        0.7,
        &[
            Step("fetch_source", ACTIVITY, 4.0, 0.16),
            Step("parse_documents", ACTIVITY, 9.0, 0.12),
            Step("chunk_text", ACTIVITY, 2.0, 0.03),
            Step("embed_chunks", ACTIVITY, 20.0, 0.14),
            Step("upsert_index", ACTIVITY, 3.0, 0.06),
        ],
    ),
    Workflow(
        "summarize_meeting",
        0.45,
        &[
            Step("transcribe_audio", ACTIVITY, 45.0, 0.10),
            Step("summarize", ACTIVITY, 8.0, 0.06),
            Step("extract_action_items", ACTIVITY, 4.0, 0.05),
            Step("post_to_slack", ACTIVITY, 0.5, 0.08),
        ],
    ),
    Workflow(
        "triage_incident",
        0.35,
        &[
            Step("collect_logs", ACTIVITY, 6.0, 0.08),
            Step("analyze_logs", CHILD, 25.0, 0.12),
            Step("page_oncall", ACTIVITY, 1.0, 0.04),
            Step("open_incident", ACTIVITY, 1.5, 0.05),
        ],
    ),
    Workflow(
        "refresh_embeddings",
        0.3,
        &[
            Step("list_stale_documents", ACTIVITY, 2.0, 0.04),
            Step("embed_chunks", CHILD, 60.0, 0.14),
            Step("swap_index", ACTIVITY, 5.0, 0.07),
        ],
    ),
    Workflow(
        "generate_report",
        0.25,
        &[
            Step("query_metrics", ACTIVITY, 5.0, 0.07),
            Step("draft_report", ACTIVITY, 15.0, 0.08),
            Step("render_pdf", ACTIVITY, 4.0, 0.11),
            Step("email_report", ACTIVITY, 1.0, 0.06),
        ],
    ),
    Workflow(
        "onboard_customer",
        0.2,
        &[
            Step("create_account", ACTIVITY, 1.0, 0.05),
            Step("provision_workspace", CHILD, 40.0, 0.12),
            Step("seed_knowledge_base", ACTIVITY, 10.0, 0.07),
            Step("send_welcome_email", ACTIVITY, 0.8, 0.06),
        ],
    ),
    Workflow(
        "sync_crm",
        0.18,
        &[
            Step("fetch_contacts", ACTIVITY, 6.0, 0.10),
            Step("dedupe_contacts", ACTIVITY, 3.0, 0.03),
            Step("enrich_contacts", ACTIVITY, 12.0, 0.12),
            Step("write_crm", ACTIVITY, 4.0, 0.08),
        ],
    ),
    Workflow(
        "nightly_eval",
        0.1,
        &[
            Step("load_dataset", ACTIVITY, 8.0, 0.05),
            Step("run_agent_batch", CHILD, 240.0, 0.14),
            Step("score_outputs", ACTIVITY, 30.0, 0.06),
            Step("publish_report", ACTIVITY, 2.0, 0.04),
        ],
    ),
    Workflow(
        "fine_tune_model",
        0.05,
        &[
            Step("prepare_data", ACTIVITY, 60.0, 0.06),
            Step("upload_dataset", ACTIVITY, 30.0, 0.10),
            Step("train", CHILD, 600.0, 0.18),
            Step("evaluate_checkpoint", ACTIVITY, 120.0, 0.07),
            Step("deploy_model", ACTIVITY, 20.0, 0.06),
        ],
    ),
];

/// Messages of failed attempts (some with characters that need JSON escaping).
const FAILURES: [&str; 9] = [
    "upstream returned HTTP 503 Service Unavailable",
    "connection reset by peer",
    "rate limited by provider (429 Too Many Requests)",
    "failed to parse \"report.pdf\": unexpected end of stream",
    "worker exceeded its memory limit of 2048 MiB",
    "invalid JSON from model: expected ',' or '}' at line 1 column 88",
    "permission denied: s3://kb-ingest/raw/2025-01-01/",
    "deadline exceeded while calling the vector store",
    "file not found: C:\\data\\inbox\\batch-17.csv",
];

/// Attempts of a step before the run fails.
const MAX_ATTEMPTS: u8 = 3;

/// Why an attempt failed: a [`FAILURES`] index, or a timeout (s).
#[derive(Clone, Copy)]
enum Cause {
    Failure(usize),
    Timeout(u64),
}

#[derive(Clone, Copy)]
enum Message {
    None,
    /// A failed or timed-out attempt.
    Attempt(Cause),
    /// The run failed because `step` exhausted its attempts.
    Run {
        step: usize,
        cause: Cause,
    },
}

/// A planned workflow event. `step` is 0 for run-level events, else the step's index + 1.
#[derive(Clone, Copy)]
struct WfEvent {
    step: usize,
    state: WorkflowState,
    attempt: u8,
    time_us: i64,
    seq: u32,
    message: Message,
}

#[derive(Default)]
struct Run {
    id: u128,
    workflow: usize,
    events: Vec<WfEvent>,
    next: usize,
}

/// Writes `target` workflow events covering about `window_us` µs from `BASE_US`.
fn write_workflow_events(out: &mut JsonlWriter, rng: &mut SmallRng, target: usize, window_us: i64) -> io::Result<()> {
    let cdf = Cdf::new(WORKFLOWS.iter().map(|w| w.1));
    let total_weight: f64 = WORKFLOWS.iter().map(|w| w.1).sum();
    let mean_steps: f64 = WORKFLOWS.iter().map(|w| w.1 * w.2.len() as f64).sum::<f64>() / total_weight;
    let events_per_run = 2.0 + 3.3 * mean_steps;
    let interarrival_us = window_us as f64 / (target as f64 / events_per_run).max(1.0);

    let mut runs: Vec<Run> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    let mut next_arrival = BASE_US + exponential(rng, interarrival_us) as i64;
    // Runs are admitted until this many events are planned: the last few are left unfinished.
    let admit_limit = target + (4.0 * events_per_run) as usize;
    let mut planned = 0;
    let mut written = 0;
    while written < target {
        let head = heap.peek().map(|r| r.0.0);
        if planned < admit_limit && head.is_none_or(|h| next_arrival <= h) {
            let slot = free.pop().unwrap_or_else(|| {
                runs.push(Run::default());
                runs.len() - 1
            });
            let run = &mut runs[slot];
            let workflow = cdf.pick(rng);
            plan_run(run, rng, workflow, next_arrival);
            planned += run.events.len();
            heap.push(Reverse((run.events[0].time_us, slot)));
            next_arrival += exponential(rng, interarrival_us) as i64;
            continue;
        }
        let Some(Reverse((_, slot))) = heap.pop() else {
            break;
        };
        let run = &mut runs[slot];
        write_workflow_event(out.begin(), run, &run.events[run.next]);
        out.end(rng)?;
        written += 1;
        run.next += 1;
        match run.events.get(run.next) {
            Some(e) => heap.push(Reverse((e.time_us, slot))),
            None => free.push(slot),
        }
    }
    Ok(())
}

/// Plans all events of a run of workflow `workflow` starting at `t0` (µs since the epoch).
fn plan_run(run: &mut Run, rng: &mut SmallRng, workflow: usize, t0: i64) {
    let steps = WORKFLOWS[workflow].2;
    run.id = rng.random();
    run.workflow = workflow;
    run.next = 0;
    run.events.clear();
    let events = &mut run.events;
    let mut push = |step: usize, state: WorkflowState, attempt: u8, time_us: i64, message: Message| {
        let seq = events.len() as u32 + 1;
        events.push(WfEvent { step, state, attempt, time_us, seq, message });
    };
    let mut t = t0;
    push(0, WorkflowState::Running, 0, t, Message::None);
    // ~1.5 % of runs are cancelled during one of their steps.
    let cancel_at = rng.random_bool(0.015).then(|| rng.random_range(0..steps.len()));
    let mut failed = false;
    'steps: for (i, step) in steps.iter().enumerate() {
        t += rng.random_range(5_000..100_000);
        let persistent = rng.random_bool(0.012);
        for attempt in 1..=MAX_ATTEMPTS {
            push(i + 1, WorkflowState::Scheduled, attempt, t, Message::None);
            t += lognormal(rng, 60_000.0, 1.0) as i64 + 1_000;
            push(i + 1, WorkflowState::Running, attempt, t, Message::None);
            let duration_us = (lognormal(rng, step.2, 0.6) * 1e6) as i64 + 1_000;
            if cancel_at == Some(i) {
                t += rng.random_range(0..duration_us);
                push(i + 1, WorkflowState::Cancelled, attempt, t, Message::None);
                t += rng.random_range(2_000..50_000);
                push(0, WorkflowState::Cancelled, 0, t, Message::None);
                failed = true;
                break 'steps;
            }
            if !persistent && !rng.random_bool(step.3) {
                t += duration_us;
                push(i + 1, WorkflowState::Completed, attempt, t, Message::None);
                continue 'steps;
            }
            let (state, cause) = if rng.random_bool(0.3) {
                let timeout_s = ((step.2 * 3.0 / 10.0).ceil() as u64 * 10).clamp(10, 1800);
                t += timeout_s as i64 * 1_000_000 + rng.random_range(0..200_000);
                (WorkflowState::TimedOut, Cause::Timeout(timeout_s))
            } else {
                t += rng.random_range(duration_us / 10..=duration_us);
                (WorkflowState::Failed, Cause::Failure(rng.random_range(0..FAILURES.len())))
            };
            push(i + 1, state, attempt, t, Message::Attempt(cause));
            if attempt == MAX_ATTEMPTS {
                t += rng.random_range(2_000..50_000);
                push(0, WorkflowState::Failed, 0, t, Message::Run { step: i, cause });
                failed = true;
                break 'steps;
            }
            // Exponential backoff: 1 s, 2 s, … with ±20 % jitter.
            let backoff_us = 1_000_000i64 << (attempt - 1);
            t += backoff_us + rng.random_range(-backoff_us / 5..=backoff_us / 5);
        }
    }
    if !failed {
        t += rng.random_range(2_000..50_000);
        push(0, WorkflowState::Completed, 0, t, Message::None);
    }
    // ~2 % of events arrive after their successor (larger event_seq, later time).
    let mut i = 0;
    while i + 1 < events.len() {
        if rng.random_bool(0.02) {
            events.swap(i, i + 1);
            i += 1;
        }
        i += 1;
    }
}

/// Formats one workflow event record (no newline).
fn write_workflow_event(buf: &mut Vec<u8>, run: &Run, e: &WfEvent) {
    let workflow = &WORKFLOWS[run.workflow];
    buf.extend_from_slice(b"{\"run_id\":\"");
    let id = (run.id & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62); // UUID v4 bits
    push_hex(buf, id >> 96, 8);
    buf.push(b'-');
    push_hex(buf, id >> 80, 4);
    buf.push(b'-');
    push_hex(buf, id >> 64, 4);
    buf.push(b'-');
    push_hex(buf, id >> 48, 4);
    buf.push(b'-');
    push_hex(buf, id, 12);
    buf.extend_from_slice(b"\",\"workflow_name\":");
    push_str(buf, workflow.0);
    if e.step == 0 {
        buf.extend_from_slice(b",\"step_id\":null,\"step_name\":null,\"step_type\":null,\"state\":");
        push_str(buf, e.state.as_str());
        buf.extend_from_slice(b",\"attempt\":null");
    } else {
        let step = &workflow.2[e.step - 1];
        buf.extend_from_slice(b",\"step_id\":\"");
        push_u64(buf, e.step as u64);
        buf.extend_from_slice(b"\",\"step_name\":");
        push_str(buf, step.0);
        buf.extend_from_slice(b",\"step_type\":");
        push_str(buf, step.1);
        buf.extend_from_slice(b",\"state\":");
        push_str(buf, e.state.as_str());
        buf.extend_from_slice(b",\"attempt\":");
        push_u64(buf, u64::from(e.attempt));
    }
    buf.extend_from_slice(b",\"event_time\":");
    push_iso(buf, e.time_us, 3);
    buf.extend_from_slice(b",\"event_seq\":");
    push_u64(buf, u64::from(e.seq));
    buf.extend_from_slice(b",\"failure_message\":");
    let push_cause = |buf: &mut Vec<u8>, cause: Cause| match cause {
        Cause::Failure(i) => push_escaped(buf, FAILURES[i]),
        Cause::Timeout(secs) => {
            buf.extend_from_slice(b"StartToClose timeout of ");
            push_u64(buf, secs);
            buf.extend_from_slice(b"s exceeded");
        }
    };
    match e.message {
        Message::None => buf.extend_from_slice(b"null"),
        Message::Attempt(cause) => {
            buf.push(b'"');
            push_cause(buf, cause);
            buf.push(b'"');
        }
        Message::Run { step, cause } => {
            buf.extend_from_slice(b"\"step ");
            push_escaped(buf, workflow.2[step].0);
            buf.extend_from_slice(b" failed after ");
            push_u64(buf, u64::from(MAX_ATTEMPTS));
            buf.extend_from_slice(b" attempts: ");
            push_cause(buf, cause);
            buf.push(b'"');
        }
    }
    buf.push(b'}');
}

// ---------------------------------------------------------------------------------------------
// Knowledge events.

/// A collection: name, document id prefix, popularity, share of bot edits, median size (bytes).
struct Collection(&'static str, &'static str, f64, f64, f64);

const COLLECTIONS: [Collection; 5] = [
    Collection("support_kb", "article-", 0.35, 0.2, 6_000.0),
    Collection("product_docs", "page-", 0.25, 0.45, 14_000.0),
    Collection("engineering_wiki", "wiki-", 0.2, 0.1, 9_000.0),
    Collection("policies", "policy-", 0.05, 0.05, 20_000.0),
    Collection("release_notes", "release-", 0.15, 0.6, 3_000.0),
];

const HUMANS: [&str; 16] = [
    "alice.chen",
    "bruno.silva",
    "carla.romero",
    "dmitri.ivanov",
    "emma.walsh",
    "farah.khan",
    "george.okafor",
    "hana.sato",
    "ivan.petrov",
    "julia.meyer",
    "kofi.mensah",
    "lena.fischer",
    "marco.rossi",
    "nina.patel",
    "omar.haddad",
    "priya.nair",
];

const BOTS: [&str; 6] = [
    "kb-sync-bot",
    "docs-importer[bot]",
    "translation-bot",
    "link-checker-bot",
    "release-notes-bot",
    "agent:kb_curator",
];

#[derive(Clone, Copy)]
struct Doc {
    version: u32,
    size_bytes: i64,
    live: bool,
}

/// A planned knowledge event. `size_bytes` is -1 for deletes (written as `null`).
#[derive(Clone, Copy)]
struct KEvent {
    collection: usize,
    doc: usize,
    delete: bool,
    version: u32,
    size_bytes: i64,
    time_ms: i64,
    actor: &'static str,
    bot: bool,
}

/// Writes `target` knowledge events covering about `window_us` µs from `BASE_US`.
fn write_knowledge_events(out: &mut JsonlWriter, rng: &mut SmallRng, target: usize, window_us: i64) -> io::Result<()> {
    let cdf = Cdf::new(COLLECTIONS.iter().map(|c| c.2));
    let mut docs: Vec<Vec<Doc>> = COLLECTIONS.iter().map(|_| Vec::new()).collect();
    let gap_us = window_us as f64 / target.max(1) as f64;
    let mut clock_us = BASE_US as f64;
    // An event held back to arrive after a newer version of its document, and how many more
    // lines to write before it.
    let mut held: Option<(KEvent, u32)> = None;
    let mut forced: Option<(usize, usize)> = None;
    let mut written = 0;
    while written < target {
        if let Some((event, countdown)) = held
            && forced.is_none()
            && (countdown == 0 || written + 1 >= target)
        {
            let line = out.lines + 1;
            write_knowledge_event(out.begin(), &event, line);
            out.end(rng)?;
            written += 1;
            held = None;
            continue;
        }
        clock_us += exponential(rng, gap_us);
        let time_ms = (clock_us / 1000.0) as i64;
        let (collection, doc, delete) = match forced.take() {
            Some((c, d)) => (c, d, false),
            None => choose_knowledge_op(rng, &cdf, &docs, held.map(|(e, _)| (e.collection, e.doc))),
        };
        let coll = &COLLECTIONS[collection];
        let docs = &mut docs[collection];
        if doc == docs.len() {
            docs.push(Doc { version: 0, size_bytes: 0, live: false });
        }
        let d = &mut docs[doc];
        d.version += 1;
        if delete {
            d.live = false;
        } else {
            d.size_bytes = if d.live {
                ((d.size_bytes as f64 * (1.0 + 0.08 * std_normal(rng))) as i64 + rng.random_range(-200..400)).max(100)
            } else {
                (lognormal(rng, coll.4, 1.0) as i64).max(200)
            };
            d.live = true;
        }
        let bot = rng.random_bool(coll.3);
        let actor = if bot { BOTS[rng.random_range(0..BOTS.len())] } else { HUMANS[rng.random_range(0..HUMANS.len())] };
        let event = KEvent {
            collection,
            doc,
            delete,
            version: d.version,
            size_bytes: if delete { -1 } else { d.size_bytes },
            time_ms,
            actor,
            bot,
        };
        // ~5 % of events arrive after the next version of their document.
        if !delete && held.is_none() && written + 3 <= target && rng.random_bool(0.05) {
            held = Some((event, rng.random_range(0..=4)));
            forced = Some((collection, doc));
            continue;
        }
        let line = out.lines + 1;
        write_knowledge_event(out.begin(), &event, line);
        out.end(rng)?;
        written += 1;
        if let Some((_, countdown)) = held.as_mut() {
            *countdown = countdown.saturating_sub(1);
        }
    }
    Ok(())
}

/// Chooses the next (collection, document index, is delete): a new document (index = the
/// collection's length), an edit of an existing one (re-creating a deleted one now and then) or
/// a delete of a live document other than `held`.
fn choose_knowledge_op(
    rng: &mut SmallRng,
    cdf: &Cdf,
    docs: &[Vec<Doc>],
    held: Option<(usize, usize)>,
) -> (usize, usize, bool) {
    let collection = cdf.pick(rng);
    let existing = &docs[collection];
    let n = existing.len();
    let u = rng.random::<f64>();
    if n < 5 || u < 0.22 {
        return (collection, n, false);
    }
    // Hot documents: recent ones and a few old ones get most edits.
    let sample = |rng: &mut SmallRng| {
        let r = rng.random::<f64>();
        let k = (n as f64 * r * r * r) as usize;
        if rng.random_bool(0.5) { n - 1 - k.min(n - 1) } else { k.min(n - 1) }
    };
    if u < 0.22 + 0.085 {
        for _ in 0..8 {
            let doc = sample(rng);
            if existing[doc].live && held != Some((collection, doc)) {
                return (collection, doc, true);
            }
        }
    }
    for _ in 0..4 {
        let doc = sample(rng);
        if existing[doc].live || rng.random_bool(0.03) {
            return (collection, doc, false);
        }
    }
    (collection, n, false)
}

/// Formats one knowledge event record (no newline); `line` is its 1-based line number.
fn write_knowledge_event(buf: &mut Vec<u8>, e: &KEvent, line: usize) {
    let coll = &COLLECTIONS[e.collection];
    buf.extend_from_slice(b"{\"collection\":");
    push_str(buf, coll.0);
    buf.extend_from_slice(b",\"document_id\":\"");
    push_escaped(buf, coll.1);
    push_padded(buf, e.doc as u64 + 1, 5);
    buf.extend_from_slice(if e.delete {
        b"\",\"op\":\"delete\",\"version\":"
    } else {
        b"\",\"op\":\"upsert\",\"version\":"
    });
    push_u64(buf, u64::from(e.version));
    buf.extend_from_slice(b",\"size_bytes\":");
    push_opt_int(buf, e.size_bytes);
    buf.extend_from_slice(b",\"event_time\":");
    push_u64(buf, e.time_ms.max(0) as u64);
    buf.extend_from_slice(b",\"actor\":");
    push_str(buf, e.actor);
    buf.extend_from_slice(if e.bot {
        b",\"is_bot\":true,\"source_offset\":"
    } else {
        b",\"is_bot\":false,\"source_offset\":"
    });
    push_u64(buf, line as u64);
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::Value;

    use super::*;

    /// A scratch directory (removed when dropped) named after `tag`.
    fn scratch(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("aimatrix-demo-{tag}-")).tempdir().expect("a scratch directory")
    }

    /// The columns of each relation, as `amx_dataflows::event` declares them.
    const COLUMNS: &[(&str, &[&str])] = &[
        (
            "spans",
            &[
                "trace_id",
                "span_id",
                "parent_span_id",
                "name",
                "operation",
                "provider",
                "request_model",
                "response_model",
                "agent_name",
                "conversation_id",
                "tool_name",
                "tool_call_id",
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "reasoning_output_tokens",
                "start_time",
                "end_time",
                "status",
                "error_type",
                "attributes",
            ],
        ),
        ("evaluations", &["trace_id", "span_id", "name", "score", "label"]),
        (
            "workflow_events",
            &[
                "run_id",
                "workflow_name",
                "step_id",
                "step_name",
                "step_type",
                "state",
                "raw_state",
                "attempt",
                "event_time",
                "event_seq",
                "failure_message",
            ],
        ),
        (
            "knowledge_events",
            &[
                "collection",
                "document_id",
                "op",
                "version",
                "size_bytes",
                "event_time",
                "actor",
                "is_bot",
                "source_offset",
            ],
        ),
    ];

    const INT_COLUMNS: &[&str] = &[
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "reasoning_output_tokens",
        "attempt",
        "event_seq",
        "version",
        "size_bytes",
        "source_offset",
    ];

    fn iso(us: i64, digits: usize) -> String {
        let mut buf = Vec::new();
        push_iso(&mut buf, us, digits);
        String::from_utf8(buf).unwrap()
    }

    /// Microseconds since the epoch of `2025-01-01T00:00:00.001099Z`-style text (UTC).
    fn parse_iso_us(s: &str) -> i64 {
        let b = s.as_bytes();
        assert!(b.len() >= 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.', "not ISO: {s}");
        assert!(s.ends_with('Z'), "not UTC: {s}");
        let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
        let (y, m, d) = (num(0..4), num(5..7), num(8..10));
        // Days from civil (inverse of `civil_from_days`).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
        let frac = &s[20..s.len() - 1];
        let micros = frac.parse::<i64>().unwrap() * 10i64.pow(6 - frac.len() as u32);
        secs * 1_000_000 + micros
    }

    #[test]
    fn iso_times() {
        assert_eq!(iso(BASE_US + 1_099, 6), "\"2025-01-01T00:00:00.001099Z\"");
        assert_eq!(iso(BASE_US + 1_099, 3), "\"2025-01-01T00:00:00.001Z\"");
        assert_eq!(iso(1_709_164_800_000_000 + 3_723_000_001, 6), "\"2024-02-29T01:02:03.000001Z\"");
        assert_eq!(iso(951_782_400_000_000, 3), "\"2000-02-29T00:00:00.000Z\"");
        assert_eq!(iso(4_102_444_799_999_999, 6), "\"2099-12-31T23:59:59.999999Z\"");
        assert_eq!(iso(0, 6), "\"1970-01-01T00:00:00.000000Z\"");
        for us in [BASE_US, BASE_US + 86_399_999_999, 1_709_164_800_123_456, 951_782_400_000_000] {
            assert_eq!(parse_iso_us(iso(us, 6).trim_matches('"')), us);
        }
    }

    #[test]
    fn json_escaping() {
        let nasty = "a \"quoted\" C:\\path\nnew\tline\u{1}\u{1f} ünï";
        let mut buf = Vec::new();
        push_str(&mut buf, nasty);
        let back: String = serde_json::from_slice(&buf).unwrap();
        assert_eq!(back, nasty);
        for msg in FAILURES {
            let mut buf = Vec::new();
            push_str(&mut buf, msg);
            assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), msg);
        }
        let mut buf = Vec::new();
        push_padded(&mut buf, 7, 5);
        push_padded(&mut buf, 1_234_567, 5);
        push_u64(&mut buf, 0);
        push_u64(&mut buf, u64::MAX);
        assert_eq!(String::from_utf8(buf).unwrap(), "00007|1234567|0|18446744073709551615".replace('|', ""));
    }

    #[test]
    fn same_seed_same_bytes() {
        let (a, b, c) = (scratch("det-a"), scratch("det-b"), scratch("det-c"));
        let cfg = DemoConfig { events: 30_000, seed: 7 };
        let da = write_demo_data(a.path(), &cfg).unwrap();
        let db = write_demo_data(b.path(), &cfg).unwrap();
        let dc = write_demo_data(c.path(), &DemoConfig { seed: 8, ..cfg }).unwrap();
        assert_eq!(da.files.len(), 4);
        for ((fa, fb), fc) in da.files.iter().zip(&db.files).zip(&dc.files) {
            assert_eq!((fa.name, fa.records, fa.malformed), (fb.name, fb.records, fb.malformed));
            let (ba, bb, bc) = (fs::read(&fa.path).unwrap(), fs::read(&fb.path).unwrap(), fs::read(&fc.path).unwrap());
            assert!(ba == bb, "{} differs between runs with the same seed", fa.name);
            assert!(ba != bc, "{} is the same for seeds 7 and 8", fa.name);
        }
    }

    #[test]
    fn small_configs() {
        for events in [0, 1, 7, 150, 2_000] {
            let dir = scratch(&format!("small-{events}"));
            let data = write_demo_data(dir.path(), &DemoConfig { events, seed: 1 }).unwrap();
            assert_eq!(data.files.len(), 4);
            assert_eq!(data.records() - data.malformed(), events);
            for f in &data.files {
                let text = fs::read_to_string(&f.path).unwrap();
                assert_eq!(text.lines().count(), f.records, "{}", f.name);
                if f.valid() >= 100 {
                    assert!(f.malformed >= 1, "{} has {} records and no malformed line", f.name, f.records);
                }
            }
        }
    }

    /// The default demo size writes exactly the valid records it asks for, file by file: 80 %
    /// spans, 3 % evaluations, 10 % workflow events, the rest knowledge events (it once wrote
    /// one evaluation too many: a trace's second evaluation past the target).
    #[test]
    fn default_size_writes_exactly_its_targets() {
        let dir = scratch("default-size");
        let data = write_demo_data(dir.path(), &DemoConfig::default()).unwrap();
        let valid: Vec<(&str, usize)> = data.files.iter().map(|f| (f.name, f.valid())).collect();
        assert_eq!(
            valid,
            vec![("spans", 160_000), ("evaluations", 6_000), ("workflow_events", 20_000), ("knowledge_events", 14_000)]
        );
        for f in &data.files {
            let text = fs::read_to_string(&f.path).unwrap();
            assert_eq!(text.lines().count(), f.records, "{}", f.name);
        }
    }

    /// Decodes every line of `file` the way the job's mapping would: returns the valid records
    /// and checks that exactly `file.malformed` lines are not.
    fn decode(file: &DemoFile) -> Vec<Value> {
        let columns = COLUMNS.iter().find(|(n, _)| *n == file.name).unwrap().1;
        let mapping = mapping(file.name).unwrap();
        let text = fs::read_to_string(&file.path).unwrap();
        let mut good = Vec::new();
        let mut bad = 0;
        for (i, line) in text.lines().enumerate() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                bad += 1;
                continue;
            };
            let mut ok = true;
            for &(column, pointer) in mapping {
                let value = v.pointer(pointer);
                assert!(value.is_some(), "{}:{}: no {pointer}", file.name, i + 1);
                let value = value.unwrap();
                if INT_COLUMNS.contains(&column) && !(value.is_null() || value.is_i64()) {
                    ok = false;
                }
                if column == "score" && !value.is_f64() {
                    ok = false;
                }
            }
            if ok {
                assert_eq!(v.as_object().unwrap().len(), columns.len() - usize::from(file.name == "workflow_events"));
                good.push(v);
            } else {
                bad += 1;
            }
        }
        assert_eq!(bad, file.malformed, "{}: malformed lines", file.name);
        assert_eq!(good.len(), file.valid(), "{}: valid lines", file.name);
        good
    }

    fn share(n: usize, of: usize) -> f64 {
        n as f64 / of.max(1) as f64
    }

    #[test]
    fn workload_shape() {
        let dir = scratch("shape");
        let events = 60_000;
        let data = write_demo_data(dir.path(), &DemoConfig { events, seed: 42 }).unwrap();
        assert!(data.dir.is_absolute());
        let names: Vec<_> = data.files.iter().map(|f| f.name).collect();
        assert_eq!(names, ["spans", "evaluations", "workflow_events", "knowledge_events"]);
        for (f, expected) in data.files.iter().zip([0.80, 0.03, 0.10, 0.07]) {
            let got = share(f.valid(), events);
            assert!((got - expected).abs() < 0.002, "{}: {got} of the events, not {expected}", f.name);
            assert!(f.malformed >= 1 && f.malformed <= f.valid() / MALFORMED_EVERY + 2, "{}: {}", f.name, f.malformed);
            assert!(f.path.is_absolute() && f.path.starts_with(&data.dir));
        }

        // Spans.
        let spans = decode(data.file("spans").unwrap());
        let s = |v: &Value, k: &str| v[k].as_str().map(str::to_owned);
        let mut roots: HashMap<String, usize> = HashMap::new();
        let (mut chat, mut tool, mut errors, mut late, mut max_start) = (0, 0, 0, 0, i64::MIN);
        for v in &spans {
            let trace = s(v, "trace_id").unwrap();
            assert!(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert_eq!(s(v, "span_id").unwrap().len(), 16);
            let root = roots.entry(trace).or_default();
            let op = s(v, "operation").unwrap();
            match op.as_str() {
                "invoke_agent" => {
                    assert!(v["parent_span_id"].is_null());
                    *root += 1;
                }
                "chat" => chat += 1,
                "execute_tool" => {
                    tool += 1;
                    assert!(v["tool_name"].is_string() && v["tool_call_id"].is_string());
                }
                "embeddings" => {}
                other => panic!("operation {other}"),
            }
            assert_eq!(v["provider"].is_string(), op == "chat" || op == "embeddings");
            assert_eq!(v["tool_name"].is_string(), op == "execute_tool");
            let status = s(v, "status").unwrap();
            assert_eq!(status == "error", v["error_type"].is_string());
            errors += usize::from(status == "error");
            assert!(v["attributes"].is_object());
            let start = parse_iso_us(v["start_time"].as_str().unwrap());
            let end = parse_iso_us(v["end_time"].as_str().unwrap());
            assert!(end >= start);
            if start < max_start {
                late += 1;
            }
            max_start = max_start.max(start);
        }
        assert!(roots.values().all(|&n| n == 1), "every trace has one root span");
        let chat_share = share(chat, chat + tool);
        assert!((0.55..0.66).contains(&chat_share), "chat share {chat_share}");
        let error_share = share(errors, spans.len());
        assert!((0.02..0.04).contains(&error_share), "error share {error_share}");
        let late_share = share(late, spans.len());
        assert!((0.005..0.02).contains(&late_share), "late share {late_share}");

        // Evaluations refer to traces written before.
        let evals = decode(data.file("evaluations").unwrap());
        for v in &evals {
            assert!(roots.contains_key(v["trace_id"].as_str().unwrap()));
            let score = v["score"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&score));
            assert!(matches!(v["label"].as_str(), Some("pass" | "fail")));
        }

        // Workflow events.
        let workflow = decode(data.file("workflow_events").unwrap());
        let mut runs: HashMap<String, Vec<&Value>> = HashMap::new();
        for v in &workflow {
            parse_iso_us(v["event_time"].as_str().unwrap());
            runs.entry(s(v, "run_id").unwrap()).or_default().push(v);
        }
        let (mut failed, mut unfinished, mut reordered, mut retried) = (0, 0, 0, 0);
        let mut states = HashSet::new();
        for events in runs.values() {
            let mut max_seq = 0;
            for v in events {
                let seq = v["event_seq"].as_i64().unwrap();
                reordered += usize::from(seq < max_seq);
                max_seq = max_seq.max(seq);
                states.insert(s(v, "state").unwrap());
                retried += usize::from(v["attempt"].as_i64().unwrap_or(0) >= 2);
                let state = v["state"].as_str().unwrap();
                assert_eq!(v["failure_message"].is_string(), state == "FAILED" || state == "TIMED_OUT");
            }
            let run_states: Vec<_> =
                events.iter().filter(|v| v["step_id"].is_null()).map(|v| s(v, "state").unwrap()).collect();
            failed += usize::from(run_states.iter().any(|s| s == "FAILED"));
            unfinished += usize::from(!run_states.iter().any(|s| s != "RUNNING"));
        }
        assert_eq!(states.len(), 6, "{states:?}");
        assert!(failed >= 3 && unfinished >= 1 && retried >= 10, "{failed} {unfinished} {retried}");
        let reordered_share = share(reordered, workflow.len());
        assert!((0.005..0.04).contains(&reordered_share), "reordered {reordered_share}");

        // Knowledge events.
        let knowledge = decode(data.file("knowledge_events").unwrap());
        let mut latest: HashMap<(String, String), i64> = HashMap::new();
        let (mut deletes, mut bots, mut inversions) = (0, 0, 0);
        for (i, v) in knowledge.iter().enumerate() {
            assert!(v["event_time"].as_i64().unwrap() >= BASE_US / 1000);
            assert!(v["source_offset"].as_i64().unwrap() > i as i64);
            let key = (s(v, "collection").unwrap(), s(v, "document_id").unwrap());
            let version = v["version"].as_i64().unwrap();
            bots += usize::from(v["is_bot"].as_bool().unwrap());
            if v["op"] == "delete" {
                deletes += 1;
                assert!(latest.contains_key(&key), "delete of an unknown document {key:?}");
                assert!(v["size_bytes"].is_null());
            }
            let newest = latest.entry(key).or_insert(0);
            inversions += usize::from(version < *newest);
            *newest = (*newest).max(version);
        }
        let n = knowledge.len();
        assert!((0.05..0.11).contains(&share(deletes, n)), "deletes {deletes}/{n}");
        assert!((0.2..0.4).contains(&share(bots, n)), "bots {bots}/{n}");
        assert!((0.02..0.08).contains(&share(inversions, n)), "inversions {inversions}/{n}");
    }

    /// The files decode with the real `json` format configured by the job file: every valid
    /// line into one row, every malformed line into one ingest error.
    #[test]
    fn decodes_with_the_json_format() {
        use amx_connectors::{Record, decoder};
        use amx_dataflows::event::Event;

        let dir = scratch("decode");
        let data = write_demo_data(dir.path(), &DemoConfig { events: 30_000, seed: 5 }).unwrap();
        let job: toml::Table = toml::from_str(&demo_job_toml(&data)).unwrap();
        for (source, file) in job["sources"].as_array().unwrap().iter().zip(&data.files) {
            let options = serde_json::to_value(&source["options"]).unwrap();
            let decoder = decoder("json", &options).unwrap();
            let text = fs::read_to_string(&file.path).unwrap();
            let (mut rows, mut errors, mut out) = (0, 0, Vec::new());
            for (i, line) in text.lines().enumerate() {
                out.clear();
                let record = Record::new(format!("{}:{}", file.name, i + 1), line);
                decoder.decode(file.name, &record, &mut out);
                assert_eq!(out.len(), 1, "{}:{}", file.name, i + 1);
                match (&out[0], file.name) {
                    (Event::Error(_), _) => errors += 1,
                    (Event::Span(_), "spans")
                    | (Event::Evaluation(_), "evaluations")
                    | (Event::Workflow(_), "workflow_events")
                    | (Event::Knowledge(_), "knowledge_events") => rows += 1,
                    (other, name) => panic!("{name}: unexpected {other:?}"),
                }
            }
            assert_eq!((rows, errors), (file.valid(), file.malformed), "{}", file.name);
        }
    }

    #[test]
    fn job_toml_parses() {
        let dir = scratch("toml");
        let data = write_demo_data(dir.path(), &DemoConfig { events: 500, seed: 3 }).unwrap();
        let text = demo_job_toml(&data);
        let job: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(job["name"].as_str(), Some("demo"));
        let sources = job["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 4);
        for (source, file) in sources.iter().zip(&data.files) {
            assert_eq!(source["name"].as_str(), Some(file.name));
            assert_eq!(source["format"].as_str(), Some("json"));
            let path = Path::new(source["path"].as_str().unwrap());
            assert!(path.is_absolute() && path == file.path && path.exists());
            let options = source["options"].as_table().unwrap();
            assert_eq!(options["relation"].as_str(), Some(file.name));
            assert_eq!(options["time_unit"].as_str(), Some("ms"));
            let mapping = options["mapping"].as_table().unwrap();
            let columns = COLUMNS.iter().find(|(n, _)| *n == file.name).unwrap().1;
            let mut keys: Vec<&str> = mapping.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut expected = columns.to_vec();
            expected.sort_unstable();
            assert_eq!(keys, expected, "{}", file.name);
            assert!(mapping.values().all(|p| p.as_str().is_some_and(|p| p.starts_with('/'))));
        }
        let queries = job["queries"].as_array().unwrap();
        assert!((4..=6).contains(&queries.len()));
        for q in queries {
            assert!(!q["name"].as_str().unwrap().is_empty());
            assert!(q["sql"].as_str().unwrap().starts_with("SELECT "));
        }
        assert_eq!(queries[0]["sql"].as_str(), Some(QUERIES[0].1));

        // Paths that need escaping survive.
        let odd = DemoData {
            dir: PathBuf::from("/tmp/a \"b\"\\c"),
            files: vec![DemoFile {
                name: "spans",
                path: PathBuf::from("/tmp/a \"b\"\\c/spans.jsonl"),
                records: 0,
                malformed: 0,
            }],
        };
        let job: toml::Table = toml::from_str(&demo_job_toml(&odd)).unwrap();
        assert_eq!(job["sources"][0]["path"].as_str(), Some("/tmp/a \"b\"\\c/spans.jsonl"));
    }
}
