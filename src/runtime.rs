//! The cluster runtime: runs a job's sources through the dataflows on a timely cluster and
//! answers SQL over the collected state.
//!
//! Every worker (of every process) renders the same dataflow ([`amx_dataflows::render`]) and
//! reads every source; record `i` of a source is decoded by worker `i mod peers`, so decoding
//! is spread over all workers and the record order (hence the answer) does not depend on the
//! cluster's shape. After each batch of at most `batch_records` records the workers advance
//! their inputs to the next epoch. Worker 0 is the collector: it receives every change of
//! every relation and view, and forwards the changes below the dataflow's frontier to the
//! coordinator (the main thread of process 0), which keeps the [`State`] and runs SQL on it.
//! The state therefore always reflects whole epochs: a consistent snapshot.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use amx_connectors::{FileReader, Record};
use amx_dataflows::event::Event;
use amx_dataflows::render::{ExportBuffer, SOURCE_STATS, export, relations, render};
use amx_dataflows::row::{Column, ColumnType, Datum, RelationDesc, Row};
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use amx_sql::error::{excerpt, to_anyhow};
use amx_sql::views::{ViewDef, ViewPlanner, ViewStatement, parse_statement};
use amx_sql::{OutputFormat, SqlEngine, State, arrow_schema, format_batches};
use anyhow::{Context, Result, anyhow, bail};
use timely::dataflow::ProbeHandle;

use crate::job::Job;

/// How to run a job.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads per process (≥ 1).
    pub workers: usize,
    /// Processes in the cluster (≥ 1).
    pub processes: usize,
    /// This process's index in `0..processes`.
    pub process_index: usize,
    /// File with one `host:port` line per process (required when `processes > 1`).
    pub hosts: Option<PathBuf>,
    /// Keep reading appended data and re-answer queries when they change.
    pub follow: bool,
    /// With `follow`: the least time between two answers of the same query.
    pub interval: Duration,
    /// Output format of answers.
    pub output: OutputFormat,
    /// Statements `(name, sql)` to run instead of the job's queries (empty: the job's own):
    /// queries, and `CREATE`/`DROP MATERIALIZED VIEW`. An empty name is `query N`, N counting
    /// the queries only.
    pub queries: Vec<(String, String)>,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
    /// Records per epoch (per batch) across the cluster.
    pub batch_records: usize,
    /// Print the summary line on stderr.
    pub summary: bool,
    /// Bytes of each JSON-lines file read per poll (bounds the records in flight).
    pub poll_bytes: u64,
    /// The largest record, in bytes: a longer line, array element or document is an ingest
    /// error (`record of N bytes exceeds the maximum record size …`) and reading goes on.
    pub max_record_bytes: u64,
    /// Print each query's SQL above its answer (table output).
    pub echo_sql: bool,
    /// With `follow`: called on the coordinator each time the sources have been read to their
    /// current end and the answers to that point have been printed (see [`CaughtUp`]).
    pub on_caught_up: Option<CaughtUp>,
}

/// A hook for `--follow` runs: called with no arguments after the cluster has caught up with
/// the sources (worker 0 found nothing new to read, and every change before that point has
/// been applied and the changed answers printed). Returning `true` ends the run as at the end
/// of input: what the sources hold then is read, the answers that changed are printed, and
/// [`run`] returns.
#[derive(Clone)]
pub struct CaughtUp(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for CaughtUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaughtUp(..)")
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            processes: 1,
            process_index: 0,
            hosts: None,
            follow: false,
            interval: Duration::from_secs(1),
            output: OutputFormat::Table,
            queries: Vec::new(),
            progress: true,
            batch_records: 100_000,
            summary: true,
            poll_bytes: POLL_BYTES,
            max_record_bytes: amx_connectors::record::DEFAULT_MAX_RECORD_BYTES,
            echo_sql: false,
            on_caught_up: None,
        }
    }
}

/// What a run ingested.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records read from all sources.
    pub records: u64,
    /// Rows decoded into `spans`, `evaluations`, `workflow_events` and `knowledge_events`.
    pub decoded: i64,
    /// Rows of `ingest_errors`.
    pub errors: i64,
    /// Bytes read from all sources.
    pub bytes: u64,
}

/// Default bytes of each JSON-lines file read per poll: bounds the memory held by records in flight.
pub const POLL_BYTES: u64 = 16 << 20;

/// The engine clock: milliseconds since the Unix epoch.
fn now_ms() -> Time {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Time)
}

/// The timestamp of the next epoch: the wall clock in ms, and always later than `epoch`.
/// Timestamps are the engine's `now()` for temporal filters in views.
fn next_epoch(epoch: Time) -> Time {
    (epoch + 1).max(now_ms())
}

/// Messages from worker 0 to the coordinator.
enum Msg {
    /// Changes at times `< upper`, and the new frontier `upper`.
    Changes(Vec<((usize, Row), Time, Diff)>, Time),
    /// Ingestion progress: (bytes read, bytes known).
    Progress(u64, u64),
    /// Worker 0 finished; records and bytes it read.
    Finished(u64, u64),
    /// A worker failed (an I/O error reading a source).
    Failed(String),
    /// Following: worker 0 read its sources to their current end; its data is at times below
    /// this one.
    CaughtUp(Time),
}

/// The timely configuration for `opts`.
fn timely_config(opts: &RunOptions) -> Result<timely::Config> {
    if opts.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let communication = if opts.processes <= 1 {
        if opts.workers == 1 {
            timely::CommunicationConfig::Thread
        } else {
            timely::CommunicationConfig::Process(opts.workers)
        }
    } else {
        if opts.process_index >= opts.processes {
            bail!("--process-index {} is not below --processes {}", opts.process_index, opts.processes);
        }
        let hosts = opts.hosts.as_ref().ok_or_else(|| anyhow!("--hosts FILE is required with --processes > 1"))?;
        let text = std::fs::read_to_string(hosts).with_context(|| format!("reading {}", hosts.display()))?;
        let addresses: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
        if addresses.len() < opts.processes {
            bail!("{} lists {} hosts; --processes is {}", hosts.display(), addresses.len(), opts.processes);
        }
        timely::CommunicationConfig::Cluster {
            threads: opts.workers,
            process: opts.process_index,
            addresses: addresses[..opts.processes].to_vec(),
            report: false,
            zerocopy: false,
        }
    };
    Ok(timely::Config { communication, worker: timely::WorkerConfig::default() })
}

/// Forwards the collected changes below the probe's frontier to the coordinator.
fn forward(export: &ExportBuffer, probe: &ProbeHandle<Time>, last_upper: &mut Time, tx: &mpsc::Sender<Msg>) {
    forward_until(export, probe, last_upper, tx, Time::MAX);
}

/// As [`forward`], never beyond `limit` (changes at later times stay behind).
fn forward_until(
    export: &ExportBuffer,
    probe: &ProbeHandle<Time>,
    last_upper: &mut Time,
    tx: &mpsc::Sender<Msg>,
    limit: Time,
) {
    let upper = probe.with_frontier(|f| f.first().copied().unwrap_or(Time::MAX)).min(limit);
    if upper <= *last_upper {
        return;
    }
    let mut buffer = export.borrow_mut();
    let (ready, pending): (Vec<_>, Vec<_>) = buffer.drain(..).partition(|(_, t, _)| *t < upper);
    *buffer = pending;
    drop(buffer);
    *last_upper = upper;
    let _ = tx.send(Msg::Changes(ready, upper));
}

/// Runs `job` on a timely cluster as `opts` says, writing answers to `out` (process 0 only).
///
/// Without `follow`, returns after every source was read to its end and every query answered.
/// Errors: a bad cluster configuration, an unreadable source, a failing query.
pub fn run(job: &Job, opts: &RunOptions, out: &mut dyn Write) -> Result<RunSummary> {
    let config = timely_config(opts)?;
    let statements: Vec<(String, String)> = if opts.queries.is_empty() {
        job.config.queries.iter().map(|q| (q.name.clone().unwrap_or_default(), q.sql.clone())).collect()
    } else {
        opts.queries.clone()
    };
    let (views, queries) = plan_views(job, &statements)?;
    let (descs, schemas) = catalog(&views);
    // Plain queries are planned now, against the (still empty) relations: a typo in one is
    // reported before the sources are read, not after.
    let engine = SqlEngine::new()?;
    let mut state = State::with_schemas(descs, schemas);
    for (name, sql) in &queries {
        engine.check(&state, sql).with_context(|| format!("query `{name}`: {}", excerpt(sql)))?;
    }
    // The relations the queries read: only those are collected at the coordinator.
    let mut needed = std::collections::HashSet::new();
    for (name, sql) in &queries {
        needed.extend(amx_sql::referenced_tables(sql).with_context(|| format!("query `{name}`: {}", excerpt(sql)))?);
    }
    let needed = Arc::new(needed);
    let view_reads: Arc<std::collections::HashSet<String>> =
        Arc::new(views.iter().flat_map(|v| v.reads.iter().cloned()).collect());
    for source in &job.config.sources {
        if source.kind == amx_cluster::job::SourceKind::Push {
            bail!(
                "source `{}` is a push source: push sources are fed over HTTP by a running server (`aimatrix serve`, \
                 then POST the job to /v1/jobs and records to /v1/ingest/{{job}}/{}); `run` reads files",
                source.name,
                source.name
            );
        }
        let reader = FileReader::new(&source.path).with_context(|| format!("source `{}`", source.name))?;
        if std::path::Path::new(&source.path).is_dir() {
            bail!(
                "source `{}`: `{}` is a directory; give a file or a glob of files (e.g. `{}/*.jsonl`)",
                source.name,
                source.path,
                source.path.trim_end_matches('/')
            );
        }
        if reader.paths().is_empty() {
            if !opts.follow {
                bail!("source `{}`: no file matches `{}`", source.name, source.path);
            }
            tracing::warn!(source = %source.name, path = %source.path, "no file matches yet; waiting for files to appear");
        }
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    let sources = job.config.sources.clone();
    let follow = opts.follow;
    // Set by the coordinator to end a follow run as at the end of input (see `CaughtUp`).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_workers = stop.clone();
    let batch_records = opts.batch_records.max(1);
    let poll_bytes = opts.poll_bytes.max(1);
    let max_record_bytes = opts.max_record_bytes.max(1);
    let is_coordinator = opts.process_index == 0;
    let body = move |worker: &mut timely::worker::Worker| {
        let index = worker.index();
        let peers = worker.peers();
        let tx = tx.clone();
        let export_buffer = ExportBuffer::default();
        let collected = export_buffer.clone();
        let done_seen: std::rc::Rc<std::cell::RefCell<Vec<(u64, Time)>>> = Default::default();
        let announcements = done_seen.clone();
        let views = views.clone();
        let needed = needed.clone();
        let view_reads = view_reads.clone();
        let rendered = worker.dataflow::<Time, _, _>(move |scope| {
            // Rows only for what queries and views read (and the ingestion counters).
            let wanted = |name: &str| needed.contains(name) || name == SOURCE_STATS || view_reads.contains(name);
            let rendered = render(scope, &wanted);
            let probe = ProbeHandle::new();
            let mut collections: HashMap<String, amx_sql::render::Rows<'_>> = HashMap::new();
            let base = relations().len();
            for (index, name, rows) in rendered.relations {
                collections.insert(name.to_owned(), rows.clone());
                // Only what queries read (and the ingestion counters) is collected; SQL views
                // read their inputs inside the dataflow.
                if needed.contains(name) || name == SOURCE_STATS {
                    export(rows, index, &export_buffer, 0, &probe);
                }
            }
            let mut renderer = amx_sql::render::Renderer::new(collections);
            // The built-in views' error rows (sums beyond BIGINT) join the SQL views' ones.
            renderer.add_errors(rendered.errors);
            for (k, view) in views.iter().enumerate() {
                let rows = renderer.render_view(view).map_err(|e| format!("view `{}`: {e}", view.name))?;
                export(rows, base + k, &export_buffer, 0, &probe);
            }
            if let Some(errors) = renderer.errors() {
                export(errors, base + views.len(), &export_buffer, 0, &probe);
            }
            // End-of-input announcements `(worker, end time)`, broadcast to every worker, so all
            // workers agree on when every one of them has read everything.
            let (done_in, done) = differential_dataflow::input::Input::new_collection::<(u64, Time), Diff>(&scope);
            let seen = done_seen.clone();
            {
                use timely::dataflow::operators::Inspect;
                use timely::dataflow::operators::vec::Broadcast;
                done.inner.broadcast().inspect(move |(announcement, _time, diff)| {
                    if *diff > 0 {
                        seen.borrow_mut().push(*announcement);
                    }
                });
            }
            Ok::<_, String>((rendered.inputs, probe, done_in))
        });
        let (mut inputs, probe, mut done_in) = match rendered {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Msg::Failed(e));
                return;
            }
        };
        let mut last_upper: Time = 0;

        struct Source {
            name: String,
            reader: FileReader,
            decoder: Box<dyn amx_connectors::Decoder>,
            next_record: u64,
            /// Counts since the last epoch: (records, decoded rows, errors, declared) decoded by
            /// this worker (see [`amx_dataflows::render::SourceCounts`]).
            pending: (isize, isize, isize, isize),
        }
        /// Adds the sources' pending counts to `aimatrix_source_stats` (before an epoch closes).
        fn flush_stats(inputs: &mut amx_dataflows::render::Inputs, readers: &mut [Source]) {
            for src in readers.iter_mut() {
                if src.pending != (0, 0, 0, 0) {
                    inputs.source_stats.update(src.name.clone(), std::mem::take(&mut src.pending));
                }
            }
        }
        let mut readers = Vec::new();
        for s in &sources {
            // Validated by Job::parse, so these only fail if the files changed underneath.
            match (FileReader::new(&s.path), amx_connectors::decoder(&s.format, &s.options_json())) {
                (Ok(mut reader), Ok(decoder)) => {
                    reader.set_max_poll_bytes(poll_bytes);
                    reader.set_share(index as u64, peers as u64);
                    reader.set_max_record_bytes(max_record_bytes);
                    // Worker 0 declares the source, so it has a row before it has read anything.
                    let declared = isize::from(index == 0);
                    readers.push(Source {
                        name: s.name.clone(),
                        reader,
                        decoder,
                        next_record: 0,
                        pending: (0, 0, 0, declared),
                    })
                }
                (Err(e), _) => {
                    let _ = tx.send(Msg::Failed(format!("source `{}`: {e}", s.name)));
                    return;
                }
                (_, Err(e)) => {
                    let _ = tx.send(Msg::Failed(format!("source `{}`: {e}", s.name)));
                    return;
                }
            }
        }

        let mut records: Vec<Record> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        let mut epoch: Time = 0;
        let mut in_batch = 0usize;
        // Records this worker decodes per epoch: its share of `batch_records`.
        let batch_share = (batch_records / peers).max(1);
        let mut follow = follow;
        // Following: whether data was read since the last `CaughtUp` (or none was sent yet).
        let mut fresh = true;
        loop {
            if follow && stop_workers.load(std::sync::atomic::Ordering::SeqCst) {
                // Asked to end: read what is there now, as at the end of input.
                follow = false;
            }
            let mut new_records = 0u64;
            let mut new_bytes = 0u64;
            for src in &mut readers {
                records.clear();
                let before = src.reader.records_seen();
                let bytes_before = src.reader.bytes_read();
                if let Err(e) = src.reader.poll(!follow, &mut records) {
                    let _ = tx.send(Msg::Failed(format!("source `{}`: {e}", src.name)));
                    return;
                }
                // The reader returns only this worker's share of the records it found.
                let seen = src.reader.records_seen() - before;
                new_bytes += src.reader.bytes_read() - bytes_before;
                src.next_record += seen;
                new_records += seen;
                for record in records.drain(..) {
                    in_batch += 1;
                    src.decoder.decode(&src.name, &record, &mut events);
                    src.pending.0 += 1;
                    for event in events.drain(..) {
                        if matches!(event, Event::Error(_)) {
                            src.pending.2 += 1;
                        } else {
                            src.pending.1 += 1;
                        }
                        inputs.update(event, 1);
                    }
                    if in_batch >= batch_share {
                        // Close the epoch and let the dataflow catch up (back-pressure).
                        in_batch = 0;
                        epoch = next_epoch(epoch);
                        if src.pending != (0, 0, 0, 0) {
                            inputs.source_stats.update(src.name.clone(), std::mem::take(&mut src.pending));
                        }
                        inputs.advance_to(epoch);
                        while probe.less_than(&epoch) {
                            worker.step();
                            if index == 0 {
                                forward(&collected, &probe, &mut last_upper, &tx);
                            }
                        }
                    }
                }
            }
            if index == 0 {
                let read: u64 = readers.iter().map(|s| s.reader.bytes_read()).sum();
                let total: u64 = readers.iter().map(|s| s.reader.total_bytes()).sum();
                let _ = tx.send(Msg::Progress(read, total));
            }
            if new_records > 0 || in_batch > 0 || follow {
                in_batch = 0;
                epoch = next_epoch(epoch);
                flush_stats(&mut inputs, &mut readers);
                inputs.advance_to(epoch);
            }
            worker.step();
            if index == 0 {
                forward(&collected, &probe, &mut last_upper, &tx);
            }
            if !follow {
                // Sources are read in bounded pieces: go on until a round reads nothing new (a
                // piece may hold only blank lines: bytes read count as progress too).
                if new_records == 0 && new_bytes == 0 {
                    break;
                }
                continue;
            }
            if new_records > 0 || new_bytes > 0 {
                fresh = true;
            }
            if new_records == 0 && new_bytes == 0 && fresh {
                fresh = false;
                if index == 0 {
                    let _ = tx.send(Msg::CaughtUp(epoch));
                }
            }
            if new_records == 0 {
                // Nothing new: keep the dataflow moving, then look again.
                let idle_until = Instant::now() + Duration::from_millis(100);
                while Instant::now() < idle_until {
                    if !worker.step_or_park(Some(Duration::from_millis(10))) {
                        break;
                    }
                    if index == 0 {
                        forward(&collected, &probe, &mut last_upper, &tx);
                    }
                }
            }
        }
        // End of input. Announce it with this worker's end time, and keep the clock moving (other
        // workers may still be reading and wait for time to pass) until every worker has
        // announced. The answers are the state at the latest end time: it holds every record,
        // and changes the dataflow scheduled for later times (temporal filters' retractions)
        // are not collected.
        let my_end = next_epoch(epoch);
        flush_stats(&mut inputs, &mut readers);
        inputs.advance_to(my_end);
        done_in.update((index as u64, my_end), 1);
        done_in.flush();
        while announcements.borrow().len() < peers {
            let now = next_epoch(inputs.time());
            inputs.advance_to(now);
            worker.step_or_park(Some(Duration::from_millis(1)));
            if index == 0 {
                forward_until(&collected, &probe, &mut last_upper, &tx, my_end);
            }
        }
        let final_time = announcements.borrow().iter().map(|(_, t)| *t).max().unwrap_or(my_end);
        while probe.less_than(&final_time) {
            worker.step();
            if index == 0 {
                forward_until(&collected, &probe, &mut last_upper, &tx, final_time);
            }
        }
        if index == 0 {
            forward_until(&collected, &probe, &mut last_upper, &tx, final_time);
            let records: u64 = readers.iter().map(|s| s.next_record).sum();
            let bytes: u64 = readers.iter().map(|s| s.reader.bytes_read()).sum();
            let _ = tx.send(Msg::Finished(records, bytes));
        }
        drop(done_in);
        drop(inputs);
        while worker.step() {}
    };
    let guards = match config.communication {
        // Connected by `cluster` (progress on stderr, not timely's lines on stdout).
        timely::CommunicationConfig::Cluster { threads, process, addresses, .. } => {
            let (builders, others) = amx_cluster::net::allocators(&addresses, process, threads)
                .map_err(|e| anyhow!("connecting the timely cluster: {e}"))?;
            timely::execute::execute_from(builders, others, config.worker, body)
        }
        _ => timely::execute(config, body),
    }
    .map_err(|e| anyhow!("starting the timely cluster: {e}"))?;

    let mut summary = RunSummary::default();
    if !is_coordinator {
        // Workers of other processes only compute; process 0 answers.
        for r in guards.join() {
            r.map_err(|e| anyhow!("worker failed: {e}"))?;
        }
        return Ok(summary);
    }

    let bar = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} ingesting [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let mut printed: Vec<Option<String>> = vec![None; queries.len()];
    let mut changed_since_print = false;
    // Following, answers are printed when the sources have been caught up with, and at most
    // once per interval while catching up.
    let mut last_print = Instant::now();
    let mut caught_up: Option<Time> = None;
    let print = Printer { engine: &engine, queries: &queries, format: opts.output, echo_sql: opts.echo_sql };
    let started = Instant::now();
    let mut failure = None;
    loop {
        let msg = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            Some(Msg::Changes(changes, upper)) => {
                changed_since_print |= !changes.is_empty();
                if let Err(e) = state.apply(changes, upper) {
                    // The workers may never finish (--follow): do not wait for them.
                    std::mem::forget(guards);
                    return Err(e.context("internal error"));
                }
            }
            Some(Msg::Progress(read, total)) => {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(read);
                }
            }
            Some(Msg::Finished(records, bytes)) => {
                summary.records = records;
                summary.bytes = bytes;
                break;
            }
            Some(Msg::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Some(Msg::CaughtUp(time)) => caught_up = Some(time),
            None => {}
        }
        let caught_up_now = caught_up.is_some_and(|t| state.upper() >= t);
        if opts.follow && changed_since_print && (caught_up_now || last_print.elapsed() >= opts.interval) {
            changed_since_print = false;
            last_print = Instant::now();
            if let Some(bar) = &bar {
                bar.suspend(|| print.answer(&mut state, &mut printed, true, out))?;
            } else {
                print.answer(&mut state, &mut printed, true, out)?;
            }
        }
        if caught_up_now {
            caught_up = None;
            if let Some(hook) = &opts.on_caught_up
                && (hook.0)()
            {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        bail!(e);
    }
    for r in guards.join() {
        r.map_err(|e| anyhow!("worker failed: {e}"))?;
    }
    for row in state.rows(SOURCE_STATS).map(|t| t.keys().collect::<Vec<_>>()).unwrap_or_default() {
        if let [_, _, Datum::Int(decoded), Datum::Int(errors)] = row.as_slice() {
            summary.decoded += decoded;
            summary.errors += errors;
        }
    }
    if opts.summary {
        let sources = job.config.sources.len();
        eprintln!(
            "read {} records ({} bytes) from {} source{}: {} rows decoded, {} errors (SELECT * FROM ingest_errors) in {:.2} s",
            summary.records,
            summary.bytes,
            sources,
            if sources == 1 { "" } else { "s" },
            summary.decoded,
            summary.errors,
            started.elapsed().as_secs_f64()
        );
    }
    // A follow run that was asked to end prints only what changed since its last answers.
    print.answer(&mut state, &mut printed, opts.follow, out)?;
    Ok(summary)
}

/// How answers are printed.
struct Printer<'a> {
    engine: &'a SqlEngine,
    queries: &'a [(String, String)],
    format: OutputFormat,
    echo_sql: bool,
}

impl Printer<'_> {
    /// Answers every query; with `only_changed`, prints only answers that differ from the
    /// last printed.
    ///
    /// Table output puts `-- NAME` (and with `echo_sql` the SQL) above each answer; CSV does
    /// so when there is more than one query, or only changed answers are printed (`--follow`);
    /// JSON prints one line per answer, `{"query": NAME, "rows": [...]}` when only changed
    /// answers are printed.
    fn answer(
        &self,
        state: &mut State,
        printed: &mut [Option<String>],
        only_changed: bool,
        out: &mut dyn Write,
    ) -> Result<()> {
        for (i, (name, sql)) in self.queries.iter().enumerate() {
            let answer = self
                .engine
                .query(state, sql)
                .and_then(|batches| format_batches(&batches, self.format))
                .with_context(|| format!("query `{name}`: {}", excerpt(sql)));
            let text = match answer {
                Ok(text) => text,
                // Following, a query that fails now (a division by zero in the current data,
                // say) is reported on stderr, once per distinct error, and the other queries
                // go on; it is answered again when the data changes.
                Err(e) if only_changed => {
                    let error = format!("error: {e:#}");
                    if printed[i].as_deref() != Some(error.as_str()) {
                        eprintln!("{error}");
                        printed[i] = Some(error);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if only_changed && printed[i].as_deref() == Some(text.as_str()) {
                continue;
            }
            match self.format {
                OutputFormat::Table => {
                    writeln!(out, "-- {name}")?;
                    if self.echo_sql {
                        writeln!(out, "{};", sql.trim().trim_end_matches(';'))?;
                    }
                    writeln!(out, "{text}")?;
                }
                // With --follow only changed answers are printed, so each says which query it answers.
                OutputFormat::Json if only_changed => {
                    writeln!(out, "{{\"query\":{},\"rows\":{}}}", serde_json::to_string(name)?, text.trim_end())?;
                }
                OutputFormat::Csv if only_changed || self.queries.len() > 1 => {
                    writeln!(out, "-- {name}")?;
                    out.write_all(text.as_bytes())?;
                }
                _ => out.write_all(text.as_bytes())?,
            }
            out.flush()?;
            printed[i] = Some(text);
        }
        Ok(())
    }
}

/// A query to answer: `(name, sql)`.
pub type NamedQuery = (String, String);

/// Name of the relation holding rows that failed in SQL views: `(view TEXT, error TEXT)`.
pub const VIEW_ERRORS: &str = "aimatrix_view_errors";

/// Plans the job's `[views]`, then the statements: `CREATE MATERIALIZED VIEW` adds a view,
/// `DROP MATERIALIZED VIEW` removes one, anything else is a query to answer.
///
/// Errors: a view that fails to plan or is refused (the message names the construct and where
/// it is), or a SQL syntax error in a statement.
pub fn plan_views(job: &Job, statements: &[(String, String)]) -> Result<(Vec<ViewDef>, Vec<NamedQuery>)> {
    let mut base: Vec<(String, SchemaRef)> = relations().iter().map(|d| (d.name.to_owned(), arrow_schema(d))).collect();
    // Reserved: no view may take the name of the view-errors relation.
    base.push((VIEW_ERRORS.to_owned(), view_errors_schema()));
    let mut planner = ViewPlanner::new(&base)?;
    for (name, sql) in &job.config.views {
        let sql = sql.as_str().unwrap_or_default();
        planner.create(name, sql).map_err(to_anyhow).with_context(|| format!("view `{name}`"))?;
    }
    let mut queries = Vec::new();
    for (i, (name, sql)) in statements.iter().enumerate() {
        let what = if name.is_empty() { format!("statement {}", i + 1) } else { format!("query `{name}`") };
        match parse_statement(sql).map_err(to_anyhow).with_context(|| format!("{what}: {}", excerpt(sql)))? {
            ViewStatement::Create { name: view, query } => {
                planner.create_in(&view, &query, sql).map_err(to_anyhow).with_context(|| format!("view `{view}`"))?;
            }
            ViewStatement::Drop { name: view, if_exists } => {
                planner.drop(&view, if_exists).map_err(to_anyhow).with_context(|| format!("view `{view}`"))?
            }
            ViewStatement::Other => {
                // Unnamed (command-line) queries are numbered among the queries only.
                let name = if name.is_empty() { format!("query {}", queries.len() + 1) } else { name.clone() };
                queries.push((name, sql.clone()))
            }
        }
    }
    Ok((planner.views().to_vec(), queries))
}

/// Every relation SQL can read and its Arrow schema: the canonical relations and built-in
/// views, the SQL views, and `aimatrix_view_errors`, in export order.
fn catalog(views: &[ViewDef]) -> (Vec<RelationDesc>, Vec<SchemaRef>) {
    let mut descs = relations();
    let mut schemas: Vec<SchemaRef> = descs.iter().map(arrow_schema).collect();
    for view in views {
        let columns = view
            .schema
            .fields()
            .iter()
            .map(|f| Column { name: leak(f.name()), ty: column_type(f.data_type()) })
            .collect();
        descs.push(RelationDesc { name: leak(&view.name), columns, key: Vec::new() });
        schemas.push(view.schema.clone());
    }
    let errors = RelationDesc {
        name: VIEW_ERRORS,
        columns: vec![Column { name: "view", ty: ColumnType::Text }, Column { name: "error", ty: ColumnType::Text }],
        key: Vec::new(),
    };
    schemas.push(view_errors_schema());
    descs.push(errors);
    (descs, schemas)
}

/// The Arrow schema of `aimatrix_view_errors`.
fn view_errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("view", DataType::Utf8, true), Field::new("error", DataType::Utf8, true)]))
}

/// Relation and column names live for the whole run; views are planned once per run.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn column_type(ty: &DataType) -> ColumnType {
    match ty {
        DataType::Boolean => ColumnType::Bool,
        DataType::Float32 | DataType::Float64 => ColumnType::Float,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
        DataType::Timestamp(_, _) => ColumnType::Timestamp,
        _ => ColumnType::Int,
    }
}
