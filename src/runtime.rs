//! `aimatrix run`: a client of an in-process cluster ([`amx_cluster`]).
//!
//! `run` starts this process's part of a timely cluster. Process 0 runs the controller: the
//! job's views (its `[views]` and the `CREATE MATERIALIZED VIEW`s among the statements) are
//! maintained with the agent state, rendered straight over the relations
//! ([`amx_cluster::protocol::Command::CreateInstance`]); only the relations and built-in views
//! that queries read are arranged; the job's file sources are read by every worker,
//! each decoding its share of the records, so the answer does not depend on the cluster's
//! shape. Once every worker has read every source to its end and every arrangement has passed
//! the time of the last records, the queries are answered by SQL over the workers'
//! arrangements at one timestamp ([`Controller::execute_sql`]), and the cluster stops. The
//! other processes only compute: their workers apply process 0's commands.
//!
//! With `follow`, the sources keep reading what is appended to their files; each time every
//! worker has caught up with them the answers that changed are printed again.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amx_cluster::job::SourceKind;
use amx_cluster::protocol::{JobId, ViewSpec};
use amx_cluster::sql::check_query;
use amx_cluster::worker::{WorkerOptions, builtin_schemas};
use amx_cluster::{ClusterConfig, Controller, SqlAnswer};
use amx_connectors::FileReader;
use amx_sql::arrow::record_batch::RecordBatch;
use amx_sql::error::{excerpt, to_anyhow};
use amx_sql::views::{ViewDef, ViewPlanner, ViewStatement, parse_statement};
use amx_sql::{OutputFormat, format_batches};
use anyhow::{Context, Result, anyhow, bail};

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

/// Errors of the agent state's views or of the job (a source that failed), as one error.
fn failure(controller: &Controller, job: Option<JobId>) -> Option<anyhow::Error> {
    let mut errors = controller.instance_errors();
    if let Some(info) = job.and_then(|id| controller.job(id)) {
        errors.extend(info.errors);
    }
    (!errors.is_empty()).then(|| anyhow!(errors.join("; ")))
}

/// The cluster's shape for `opts`: the processes' addresses from the hosts file.
fn cluster_config(opts: &RunOptions) -> Result<ClusterConfig> {
    if opts.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let mut addresses = Vec::new();
    if opts.processes > 1 {
        if opts.process_index >= opts.processes {
            bail!("--process-index {} is not below --processes {}", opts.process_index, opts.processes);
        }
        let hosts = opts.hosts.as_ref().ok_or_else(|| anyhow!("--hosts FILE is required with --processes > 1"))?;
        addresses = amx_cluster::net::read_hosts(hosts).with_context(|| format!("reading {}", hosts.display()))?;
        if addresses.len() < opts.processes {
            bail!("{} lists {} hosts; --processes is {}", hosts.display(), addresses.len(), opts.processes);
        }
        addresses.truncate(opts.processes);
    }
    Ok(ClusterConfig {
        workers: opts.workers,
        processes: opts.processes.max(1),
        process_index: opts.process_index,
        addresses,
        worker: WorkerOptions {
            poll_bytes: opts.poll_bytes.max(1),
            max_record_bytes: opts.max_record_bytes.max(1),
            batch_records: opts.batch_records.max(1),
            introspection: false,
        },
        ..Default::default()
    })
}

/// Runs `job` on a timely cluster as `opts` says, writing answers to `out` (process 0 only).
///
/// Without `follow`, returns after every source was read to its end and every query answered.
/// Errors: a bad cluster configuration, a view or query that does not plan (before anything
/// is read), an unreadable source, a failing query.
pub fn run(job: &Job, opts: &RunOptions, out: &mut dyn Write) -> Result<RunSummary> {
    let mut config = cluster_config(opts)?;
    if opts.process_index != 0 {
        // Workers of other processes only compute, as process 0's commands say.
        let controller = Controller::start(config)?;
        controller.join()?;
        return Ok(RunSummary::default());
    }
    let statements: Vec<(String, String)> = if opts.queries.is_empty() {
        job.config.queries.iter().map(|q| (q.name.clone().unwrap_or_default(), q.sql.clone())).collect()
    } else {
        opts.queries.clone()
    };
    let (views, queries) = plan_views(job, &statements)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("amx-run")
        .thread_stack_size(amx_sql::parse::SQL_THREAD_STACK_BYTES)
        .enable_all()
        .build()
        .context("starting the SQL runtime")?;
    // Queries are planned now, against the (still empty) collections: a typo in one is
    // reported before the sources are read, not after.
    let mut catalog = schemas(job);
    catalog.extend(views.iter().map(|v| (v.name.clone(), v.schema.clone())));
    for (name, sql) in &queries {
        // On a large stack, as every statement is planned (see `amx_sql::parse`).
        amx_sql::on_sql_stack(|| runtime.block_on(check_query(&catalog, sql)))
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("query `{name}`: {}", excerpt(sql)))?;
    }
    // Only what queries read is arranged (and the ingestion counters); the views read the
    // relations' rows inside the dataflow.
    let mut needed = std::collections::BTreeSet::new();
    for (name, sql) in &queries {
        needed.extend(amx_sql::referenced_tables(sql).with_context(|| format!("query `{name}`: {}", excerpt(sql)))?);
    }
    config.collections = Some(needed.into_iter().collect());
    // The views are the agent state's, rendered over the relations' rows; unless a source
    // declares a relation of its own, which comes with the job: then the views are the job's.
    let declares = job.config.sources.iter().any(|s| s.relation.is_some());
    if !declares {
        config.views = views.iter().map(|v| ViewSpec { name: v.name.clone(), sql: v.sql.clone() }).collect();
    }
    if let Some(sink) = job.config.sinks.first() {
        bail!(
            "sink `{}`: sinks are kept by a running server (`aimatrix serve`, then POST the job to /v1/jobs); `run` \
             prints its queries' answers",
            sink.name
        );
    }
    for source in &job.config.sources {
        if matches!(source.kind, SourceKind::Kafka | SourceKind::ObjectStore) {
            bail!(
                "source `{}` reads Kafka or an object store: such sources are read by a running server (`aimatrix serve`, then POST \
                 the job to /v1/jobs); `run` reads files",
                source.name
            );
        }
        if source.kind == SourceKind::Push {
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

    let controller = Controller::start(config)?;
    let started = Instant::now();
    // The job's sources; its views are the agent state's.
    let job_id = if job.config.sources.is_empty() {
        None
    } else {
        let mut sources = job.clone();
        sources.config.views = Default::default();
        if declares {
            for view in &views {
                sources.config.views.insert(view.name.clone(), toml::Value::String(view.sql.clone()));
            }
        }
        sources.config.queries = Vec::new();
        // Never cancelled: nothing to keep for a retraction.
        sources.config.retractable = false;
        for source in &mut sources.config.sources {
            source.follow |= opts.follow;
        }
        Some(controller.install_job(&sources).map_err(|e| anyhow!(e))?)
    };

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
    let print = Printer {
        controller: &controller,
        runtime: &runtime,
        queries: &queries,
        format: opts.output,
        echo_sql: opts.echo_sql,
    };
    let bytes_read = |controller: &Controller, job: JobId| {
        controller.file_progress(job).iter().map(|(_, p)| p.bytes_read).sum::<u64>()
    };
    if let Some(id) = job_id {
        // Following: the answers are printed each time the workers have caught up with the
        // files, and at most once per interval while they catch up, when something was read.
        // A catch-up answers with the bytes worker 0 had read when it was asked: the answers
        // printed after it include at least those.
        let catch_up = |delay: Duration| {
            let controller = controller.clone();
            runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                let read = bytes_read(&controller, id);
                controller.catch_up(id).await.map(|_| read)
            })
        };
        let mut request = opts.follow.then(|| catch_up(Duration::ZERO));
        let mut last_print = Instant::now();
        // Bytes read when the answers were last printed after a catch-up, and while catching up.
        let mut settled: Option<u64> = None;
        let mut printed_at: Option<u64> = None;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            if let Some(e) = failure(&controller, Some(id)) {
                bail!(e);
            }
            if let Some(bar) = &bar {
                let progress = controller.file_progress(id);
                bar.set_length(progress.iter().map(|(_, p)| p.bytes_total).sum());
                bar.set_position(progress.iter().map(|(_, p)| p.bytes_read).sum());
            }
            let Some(pending) = &request else {
                if controller.files_caught_up(id) {
                    break;
                }
                continue;
            };
            let read = bytes_read(&controller, id);
            let caught_up = pending.is_finished();
            if !caught_up {
                if last_print.elapsed() >= opts.interval && settled != Some(read) && printed_at != Some(read) {
                    match &bar {
                        Some(bar) => bar.suspend(|| print.answer(&mut printed, true, out))?,
                        None => print.answer(&mut printed, true, out)?,
                    }
                    last_print = Instant::now();
                    printed_at = Some(read);
                }
                continue;
            }
            let Some(done) = request.take() else { continue };
            let read = runtime.block_on(done).map_err(|e| anyhow!(e))?.map_err(|e| anyhow!(e))?;
            if settled == Some(read) {
                // Nothing new since the last catch-up: look again a little later.
                request = Some(catch_up(Duration::from_millis(50)));
                continue;
            }
            match &bar {
                Some(bar) => bar.suspend(|| print.answer(&mut printed, true, out))?,
                None => print.answer(&mut printed, true, out)?,
            }
            last_print = Instant::now();
            settled = Some(read);
            match &opts.on_caught_up {
                // Asked to end: read what is there now, as at the end of input.
                Some(hook) if (hook.0)() => controller.end_of_input(id).map_err(|e| anyhow!(e))?,
                _ => request = Some(catch_up(Duration::ZERO)),
            }
        }
    } else if let Some(e) = failure(&controller, None) {
        bail!(e);
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut summary = RunSummary::default();
    if let Some(id) = job_id {
        let status = runtime.block_on(controller.job_status(id)).map_err(|e| anyhow!(e))?;
        for source in &status.source_stats {
            summary.records += source.records.max(0) as u64;
            summary.decoded += source.decoded;
            summary.errors += source.errors;
            summary.bytes += source.progress.map_or(0, |p| p.bytes_read);
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
    print.answer(&mut printed, opts.follow, out)?;
    controller.shutdown();
    controller.join()?;
    Ok(summary)
}

/// How answers are printed.
struct Printer<'a> {
    controller: &'a Controller,
    runtime: &'a tokio::runtime::Runtime,
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
    fn answer(&self, printed: &mut [Option<String>], only_changed: bool, out: &mut dyn Write) -> Result<()> {
        // Every query of one round reads the same state: one timestamp for all.
        let mut tables = Vec::new();
        for (_, sql) in self.queries {
            tables.extend(amx_sql::referenced_tables(sql).unwrap_or_default());
        }
        let hold = self.controller.read_hold(&tables);
        for (i, (name, sql)) in self.queries.iter().enumerate() {
            // On a large stack, as every statement is planned (see `amx_sql::parse`).
            let answer = amx_sql::on_sql_stack(|| self.runtime.block_on(self.controller.query_at(sql, &hold)))
                .map_err(|e| anyhow!(e))
                .and_then(|answer| match answer {
                    SqlAnswer::Rows { schema, mut batches, .. } => {
                        // An empty answer still has its columns (for table and CSV headers).
                        if batches.is_empty() {
                            batches.push(RecordBatch::new_empty(schema));
                        }
                        format_batches(&batches, self.format)
                    }
                    _ => bail!("not a query"),
                })
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

/// The collections a job's views and queries may read: the built-in ones, and the relations
/// its sources declare.
fn schemas(job: &Job) -> Vec<(String, amx_sql::arrow::datatypes::SchemaRef)> {
    let mut schemas = builtin_schemas();
    schemas.extend(job.config.sources.iter().filter_map(amx_cluster::job::SourceConfig::relation_schema));
    schemas
}

/// Refuses a relation a source declares with the name of a built-in relation or view.
fn check_declared(job: &Job) -> Result<()> {
    let builtin = builtin_schemas();
    for source in &job.config.sources {
        if let Some(table) = &source.relation
            && builtin.iter().any(|(name, _)| *name == table.name)
        {
            bail!(
                "source `{}`: relation `{}` is built in; declare the source's relation under another name",
                source.name,
                table.name
            );
        }
    }
    Ok(())
}

/// Plans the job's `[views]`, then the statements: `CREATE MATERIALIZED VIEW` adds a view,
/// `DROP MATERIALIZED VIEW` removes one, anything else is a query to answer.
///
/// Errors: a view that fails to plan or is refused (the message names the construct and where
/// it is), or a SQL syntax error in a statement.
pub fn plan_views(job: &Job, statements: &[(String, String)]) -> Result<(Vec<ViewDef>, Vec<NamedQuery>)> {
    // Every relation, built-in view and `aimatrix_view_errors` (no view may take its name),
    // and the relations the job's sources declare.
    check_declared(job)?;
    let mut planner = ViewPlanner::new(&schemas(job))?;
    for (name, sql) in &job.config.views {
        let sql = sql.as_str().unwrap_or_default();
        planner.create(name, sql).map_err(to_anyhow).with_context(|| format!("view `{name}`"))?;
    }
    let mut queries = Vec::new();
    for (i, (name, sql)) in statements.iter().enumerate() {
        let what = if name.is_empty() { format!("statement {}", i + 1) } else { format!("query `{name}`") };
        match parse_statement(sql).map_err(to_anyhow).with_context(|| format!("{what}: {}", excerpt(sql)))? {
            ViewStatement::Create { name: view, if_not_exists: true, .. }
                if planner.views().iter().any(|v| v.name == view)
                    || builtin_schemas().iter().any(|(n, _)| *n == view) => {}
            ViewStatement::Create { name: view, query, .. } => {
                planner.create_in(&view, &query, sql).map_err(to_anyhow).with_context(|| format!("view `{view}`"))?;
            }
            ViewStatement::Drop { name: view, .. } if builtin_schemas().iter().any(|(n, _)| *n == view) => {
                bail!("{what}: `{view}` is built in; it cannot be dropped")
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
