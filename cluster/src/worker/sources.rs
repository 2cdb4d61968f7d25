//! A job's sources as one worker reads them: file sources (each worker decodes its share of
//! the records) and push, Kafka and object-store sources (each worker decodes the part of each
//! push, or of each batch such a source read in process 0, it is sent).

use std::collections::BTreeMap;

use amx_connectors::{Decoder, FileReader, Record};
use amx_dataflows::event::Event;
use amx_dataflows::render::Inputs;

use super::WorkerOptions;
use crate::job::{SourceConfig, SourceKind};
use crate::protocol::SourceProgress;
use crate::protocol::{JobId, MAX_REPORTED_REJECTS};

/// A source's counters since the last epoch, or in total: (records, decoded rows, errors,
/// declared), as `aimatrix_source_stats` adds them.
pub(super) type SourceCounts = (isize, isize, isize, isize);

/// A file source, as one worker reads it.
pub(super) struct FileSource {
    pub(super) job: JobId,
    pub(super) name: String,
    reader: FileReader,
    decoder: Box<dyn Decoder>,
    /// Read to its end (or failed).
    pub(super) done: bool,
    /// Following: keeps reading what is appended (see [`crate::job::SourceConfig::follow`]).
    pub(super) follow: bool,
    /// Records polled and not yet decoded (kept to reuse its allocation).
    records: Vec<Record>,
    /// Events of one record (kept to reuse its allocation).
    events: Vec<Event>,
    /// When it was opened, for its rate ([`SourceProgress::with_rate`]).
    started: std::time::Instant,
}

/// A push source on one worker: its job (records arrive as [`crate::protocol::Command::Ingest`]).
pub(super) struct PushSource {
    pub(super) job: JobId,
    /// Decodes the pushes sent to this worker.
    decoder: Box<dyn Decoder>,
}

/// A source opened on one worker.
pub(super) enum Opened {
    File(Box<FileSource>),
    /// A push source, with its name.
    Push(String, PushSource),
}

impl Opened {
    /// The source's name.
    pub(super) fn name(&self) -> &str {
        match self {
            Opened::File(f) => &f.name,
            Opened::Push(name, _) => name,
        }
    }
}

/// Opens source `source` of job `job` on worker `index` of `peers`; a file source reads what
/// `access` admits, or is read by the server (its batches arrive as pushes) without it.
///
/// # Errors
/// The source's name and why it cannot be read: its format options do not build a decoder,
/// or its glob is invalid.
pub(super) fn open(
    job: JobId,
    source: SourceConfig,
    index: usize,
    peers: usize,
    options: &WorkerOptions,
    access: Option<&amx_connectors::FileAccess>,
) -> Result<Opened, (String, String)> {
    let decoder = match source.decoder() {
        Ok(d) => d,
        Err(e) => return Err((source.name, e.to_string())),
    };
    match (source.kind, access) {
        (SourceKind::File, Some(access)) => match FileReader::new(&source.path) {
            Ok(mut reader) => {
                reader.set_max_poll_bytes(options.poll_bytes.max(1));
                reader.set_share(index as u64, peers as u64);
                reader.set_max_record_bytes(options.max_record_bytes.max(1));
                reader.set_access(access.clone());
                reader.set_whole_other_files(decoder.reads_whole_files());
                Ok(Opened::File(Box::new(FileSource {
                    job,
                    name: source.name,
                    reader,
                    decoder,
                    done: false,
                    follow: source.follow,
                    records: Vec::new(),
                    events: Vec::new(),
                    started: std::time::Instant::now(),
                })))
            }
            Err(e) => Err((source.name, e.to_string())),
        },
        // A Kafka source's batches arrive as pushes do (read by the controller), and so do a
        // file source's when the server reads it.
        _ => Ok(Opened::Push(source.name, PushSource { job, decoder })),
    }
}

/// What one [`FileSource::poll`] did.
#[derive(Debug, Default)]
pub(super) struct Polled {
    /// Records were fed into the inputs.
    pub(super) fed: bool,
    /// The source was found at its (current) end, or failed.
    pub(super) at_end: bool,
    /// Reading failed (the source is then done).
    pub(super) error: Option<String>,
}

impl FileSource {
    /// Reads and decodes records until `batch` of them are decoded or the files are at
    /// their end; feeds the events into `inputs` (and `keep`, for a retractable job) and
    /// counts them in `stats`. A source that does not follow is done at its end.
    pub(super) fn poll(
        &mut self,
        batch: usize,
        stats: &mut SourceCounts,
        mut keep: Option<&mut Vec<Event>>,
        inputs: &mut Inputs,
    ) -> Polled {
        let mut polled = Polled::default();
        let mut decoded = 0usize;
        while decoded < batch {
            self.records.clear();
            let (seen, position) = (self.reader.records_seen(), self.reader.position());
            // A following source reads a last line only once its newline is there.
            if let Err(e) = self.reader.poll(!self.follow, &mut self.records) {
                self.done = true;
                polled.at_end = true;
                polled.error = Some(e.to_string());
                return polled;
            }
            if self.records.is_empty() && self.reader.records_seen() == seen && self.reader.position() == position {
                polled.at_end = true;
                // A following source is at its current end: it looks again later.
                self.done = !self.follow;
                return polled;
            }
            polled.fed = true;
            for record in self.records.drain(..) {
                decoded += 1;
                stats.0 += 1;
                self.decoder.decode(&self.name, &record, &mut self.events);
                let position = record.position().unwrap_or(0);
                for mut event in self.events.drain(..) {
                    if let Event::Error(e) = &mut event {
                        // Its line, where the reader (splitting the file with the other
                        // workers) gave its byte offset.
                        self.reader.resolve_location(&mut e.location);
                        stats.2 += 1;
                    } else {
                        stats.1 += 1;
                    }
                    feed(event, position, keep.as_deref_mut(), inputs);
                }
            }
        }
        polled
    }

    /// How far this worker has read the source.
    pub(super) fn progress(&self) -> SourceProgress {
        SourceProgress {
            bytes_read: self.reader.bytes_read(),
            bytes_total: self.reader.total_bytes(),
            done: self.done,
            caught_up: false,
            records_read: self.reader.records_seen(),
            rate_bytes_per_s: None,
            eta_ms: None,
        }
        .with_rate(self.started, 0)
    }
}

/// What a push did: its records that decoded into rows, those that did not, and the first
/// [`MAX_REPORTED_REJECTS`] of those (line from 1, reason).
#[derive(Debug, Default)]
pub(super) struct PushOutcome {
    pub(super) accepted: u64,
    pub(super) rejected: u64,
    /// Rows of `ingest_errors` the records made (a record may make several).
    pub(super) error_rows: u64,
    pub(super) errors: Vec<(u64, String)>,
}

impl PushSource {
    /// Decodes a part of a push to source `source` (JSON lines, the first numbered
    /// `first_line`; blank ones are no records but keep the numbering; lines in `oversized` are
    /// rejected as longer than `max_record_bytes`) into
    /// `inputs` (and `keep`, for a retractable job), counting in `stats`. An ingest error
    /// becomes an [`Event::Error`] at `POST /v1/ingest/JOB/SOURCE:LINE`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
        &mut self,
        source: &str,
        body: &str,
        first_line: u64,
        oversized: &BTreeMap<u64, u64>,
        max_record_bytes: u64,
        stats: &mut SourceCounts,
        keep: Option<&mut Vec<Event>>,
        inputs: &mut Inputs,
    ) -> PushOutcome {
        let limit = max_record_bytes.max(1);
        let job = self.job;
        let records = body
            .lines()
            .enumerate()
            .map(|(i, text)| (first_line + i as u64, text))
            .filter(|(line, text)| !text.trim().is_empty() || oversized.contains_key(line))
            .map(|(line, text)| {
                let location = format!("POST /v1/ingest/{job}/{source}:{line}");
                let record = match oversized.get(&line) {
                    Some(&size) => amx_connectors::record::oversized_record(location, size, text.as_bytes(), limit),
                    None => amx_connectors::record::record_within(location, text.as_bytes(), limit),
                };
                (line, record)
            });
        self.decode_records(source, records, stats, keep, inputs)
    }

    /// Decodes `records` (each with its number, for the rejects) of source `source` into
    /// `inputs` (and `keep`, for a retractable job), counting in `stats`.
    pub(super) fn decode_records(
        &mut self,
        source: &str,
        records: impl Iterator<Item = (u64, Record)>,
        stats: &mut SourceCounts,
        mut keep: Option<&mut Vec<Event>>,
        inputs: &mut Inputs,
    ) -> PushOutcome {
        let mut outcome = PushOutcome::default();
        let mut events = Vec::new();
        for (number, record) in records {
            self.decoder.decode(source, &record, &mut events);
            stats.0 += 1;
            let mut error = None;
            for event in events.drain(..) {
                if let Event::Error(e) = &event {
                    stats.2 += 1;
                    outcome.error_rows += 1;
                    error.get_or_insert_with(|| e.error.clone());
                } else {
                    stats.1 += 1;
                }
                feed(event, number, keep.as_deref_mut(), inputs);
            }
            match error {
                Some(error) => {
                    outcome.rejected += 1;
                    if outcome.errors.len() < MAX_REPORTED_REJECTS {
                        outcome.errors.push((number, error));
                    }
                }
                None => outcome.accepted += 1,
            }
        }
        outcome
    }
}

/// Feeds a decoded event into `inputs` (and `keep`, for a retractable job). A change to a
/// relation the source declares is stamped with the record's `position` (a line or record
/// number: the later of two upserts of one key at one timestamp wins) and is not kept: the
/// relation belongs to the job and goes with it.
fn feed(mut event: Event, position: u64, keep: Option<&mut Vec<Event>>, inputs: &mut Inputs) {
    match &mut event {
        Event::Table(change) => change.position = position,
        _ => {
            if let Some(keep) = keep {
                keep.push(event.clone());
            }
        }
    }
    inputs.update(event, 1);
}
