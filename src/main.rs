//! `aimatrix`: the command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use aimatrix::demo::{DemoConfig, demo_job_toml, write_demo_data};
use aimatrix::job::Job;
use aimatrix::runtime::{RunOptions, run};
use amx_sql::OutputFormat;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// AIMatrix: incremental stream processing for AI-agent platforms.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest a job's sources into the dataflows, then answer its SQL.
    Run {
        /// The job file (TOML).
        job: PathBuf,
        /// A query to answer instead of the job's own; repeatable.
        #[arg(long = "sql", value_name = "SQL")]
        sql: Vec<String>,
        /// Keep reading data appended to the source files and print answers again when they change.
        #[arg(long)]
        follow: bool,
        /// With --follow: least time between two answers of a query (e.g. 500ms, 2s).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Generate a realistic agent/workflow/knowledge workload, ingest it and answer example queries.
    Demo {
        /// Records to generate (all streams together).
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Random seed (same seed, same data).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory for the generated data and job file (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A query to answer instead of the demo's own; repeatable.
        #[arg(long = "sql", value_name = "SQL")]
        sql: Vec<String>,
        /// Keep a server up instead (HTTP API on --http), fed by the demo generator without
        /// end: the --events records first, then --rate records a second, through push sources.
        #[arg(long)]
        serve: bool,
        /// With --serve: address of the HTTP API.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6876")]
        http: String,
        /// With --serve: records generated and pushed per second after the first batch.
        #[arg(long, default_value_t = 1_000)]
        rate: usize,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run a long-lived cluster with the HTTP API: jobs are submitted, queried and cancelled
    /// while it runs (see README "The server").
    Serve(ServeArgs),
    /// Submit, list, show and cancel jobs on a running server.
    Job {
        #[command(subcommand)]
        action: JobAction,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Run one SQL statement on a running server (a query, or CREATE/DROP MATERIALIZED VIEW).
    Sql {
        /// The statement.
        sql: String,
        /// Answer format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Check that a server answers (GET /healthz; with --ready, /readyz): exit 0 when it
    /// answers 200, else 1 with the reason (a container's health check).
    Health {
        /// Ask whether it is ready (started, its collections past time 0), not only alive.
        #[arg(long)]
        ready: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make credentials for `[[auth.users]]`: a hashed password, or a new token and its hash.
    Auth {
        #[command(subcommand)]
        action: AuthAction,
    },
    /// Print a view's contents, then every change as it happens (JSON lines), from a running server.
    Subscribe {
        /// The relation or view.
        view: String,
        /// Also print progress messages (time advanced, no change).
        #[arg(long)]
        progress: bool,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand)]
enum AuthAction {
    /// Read a password from standard input (its first line) and print its SCRAM-SHA-256
    /// verifier, for a user's `password` (PostgreSQL's format: 4,096 iterations, a random salt).
    Password,
    /// Print a new bearer token (give it to the client; it is not kept) and its SHA-256, for
    /// a user's `tokens`.
    Token,
}

#[derive(Subcommand)]
enum JobAction {
    /// Submit a job file; prints its id.
    Submit {
        /// The job file (TOML); relative source paths resolve against its directory.
        file: PathBuf,
        /// Return once every file source has been read and the views have caught up with it.
        #[arg(long)]
        wait: bool,
    },
    /// List the jobs.
    List,
    /// Show a job: state, sources (records, errors, bytes read), views (rows), hydration.
    Show {
        /// Job id.
        id: String,
        /// Print the server's answer as JSON (as `GET /v1/jobs/{id}` gives it) instead of the
        /// summary with its backfill bar.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: its sources stop and its views are dropped; what it ingested stays
    /// (unless --retract).
    Cancel {
        /// Job id.
        id: String,
        /// Also retract everything the job ingested from the shared relations and views (a
        /// job submitted with `retractable = true`).
        #[arg(long)]
        retract: bool,
    },
}

#[derive(Args)]
struct ServerArg {
    /// The server's URL.
    #[arg(long, global = true, env = "AIMATRIX_SERVER", default_value = aimatrix::client::DEFAULT_SERVER)]
    server: String,
    /// A bearer token, for a server with users configured (README "Authentication"). Prefer
    /// the environment variable: a flag shows in the process list
    #[arg(long, global = true, env = "AIMATRIX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For an https:// server: trust the certificate authorities in this PEM file (the
    /// server's own CA) instead of the public web's
    #[arg(long, global = true, env = "AIMATRIX_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML; every key is documented in the README). Environment variables
    /// `AIMATRIX__SECTION__KEY` override it, and these flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the HTTP API, host:port [default: 127.0.0.1:6876]
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// A directory whose files jobs submitted to this server may read (repeat for several;
    /// the config key files.roots) [default: none: file sources are refused]
    #[arg(long = "file-root", value_name = "DIR")]
    file_roots: Vec<PathBuf>,
    /// A directory under which jobs' object-store sinks may write (url = "file:///DIR/…";
    /// repeat for several; the config key files.sink_roots) [default: none: such sinks are
    /// refused]
    #[arg(long = "sink-root", value_name = "DIR")]
    sink_roots: Vec<PathBuf>,
    /// Keep jobs, views and acknowledged pushes in DIR and replay them at start-up, so that a
    /// restart (or a crash) loses nothing acknowledged (the config key storage.data_dir)
    /// [default: none: nothing is kept]
    #[arg(long, value_name = "DIR", conflicts_with = "data_url")]
    data_dir: Option<PathBuf>,
    /// Keep them in an object store instead: s3://bucket/prefix (the S3 client is configured
    /// by AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP;
    /// the config key storage.url). One server holds the log's lease: a restart after a
    /// crash waits up to 6 s for the old one's to expire
    #[arg(long, value_name = "URL")]
    data_url: Option<String>,
    /// Address of the PostgreSQL wire protocol (psql, drivers), host:port; "" turns it off
    /// [default: 127.0.0.1:6875]
    #[arg(long, value_name = "ADDR")]
    pgwire: Option<String>,
    /// Serve HTTPS and encrypted pgwire sessions only, with this certificate chain (PEM; the
    /// config key tls.cert) [default: none: plain HTTP and pgwire]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; the config key tls.key)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Worker threads per process [default: 1]
    #[arg(short = 'w', long)]
    workers: Option<usize>,
    /// Processes in the timely cluster [default: 1]
    #[arg(long)]
    processes: Option<usize>,
    /// This process's index in 0..processes [default: 0]
    #[arg(long)]
    process_index: Option<usize>,
    /// File listing one host:port per process (line i is process i).
    #[arg(long)]
    hosts: Option<PathBuf>,
}

#[derive(Args)]
struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// Processes in the timely cluster.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// This process's index in 0..processes.
    #[arg(long, default_value_t = 0)]
    process_index: usize,
    /// File listing one host:port per process (line i is process i).
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Answer format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Records per epoch (batch) across the cluster.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Bytes of each JSON-lines file read per poll (a tuning and testing knob).
    #[arg(long, default_value_t = aimatrix::runtime::POLL_BYTES, hide = true)]
    poll_bytes: u64,
    /// The largest record (JSON line, array element or document) in bytes; a longer one is an
    /// ingest error with its size and location, and reading goes on.
    #[arg(long, default_value_t = amx_connectors::record::DEFAULT_MAX_RECORD_BYTES, value_name = "BYTES")]
    max_record_bytes: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Csv,
}

impl Output {
    fn format(self) -> OutputFormat {
        match self {
            Output::Table => OutputFormat::Table,
            Output::Json => OutputFormat::Json,
            Output::Csv => OutputFormat::Csv,
        }
    }
}

/// `aimatrix serve`: starts this process's part of the cluster; process 0 also serves the
/// HTTP API until SIGINT or SIGTERM, then stops every process.
fn serve(args: ServeArgs) -> Result<()> {
    let mut flags = serde_json::Map::new();
    let mut cluster = serde_json::Map::new();
    if let Some(http) = &args.http {
        flags.insert("http".into(), serde_json::json!({ "listen": http }));
    }
    if let Some(pgwire) = &args.pgwire {
        flags.insert("pgwire".into(), serde_json::json!({ "listen": pgwire }));
    }
    if let Some(w) = args.workers {
        cluster.insert("workers".into(), w.into());
    }
    if let Some(p) = args.processes {
        cluster.insert("processes".into(), p.into());
    }
    if let Some(i) = args.process_index {
        cluster.insert("process_index".into(), i.into());
    }
    if let Some(hosts) = &args.hosts {
        let list = amx_cluster::net::read_hosts(hosts).with_context(|| format!("reading {}", hosts.display()))?;
        cluster.insert("hosts".into(), list.into());
    }
    if !cluster.is_empty() {
        flags.insert("cluster".into(), cluster.into());
    }
    let mut files = serde_json::Map::new();
    if !args.file_roots.is_empty() {
        files.insert("roots".into(), serde_json::json!(args.file_roots));
    }
    if !args.sink_roots.is_empty() {
        files.insert("sink_roots".into(), serde_json::json!(args.sink_roots));
    }
    if !files.is_empty() {
        flags.insert("files".into(), files.into());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        flags.insert("tls".into(), serde_json::json!({ "cert": cert, "key": key }));
    }
    if let Some(dir) = &args.data_dir {
        flags.insert("storage".into(), serde_json::json!({ "data_dir": dir }));
    }
    if let Some(url) = &args.data_url {
        flags.insert("storage".into(), serde_json::json!({ "url": url }));
    }
    let mut config = amx_server::config::ServeConfig::load(args.config.as_deref(), flags.into())
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    // A flag chooses where the log is over what the file or the environment says.
    if args.data_dir.is_some() {
        config.storage.url = None;
    }
    if args.data_url.is_some() {
        config.storage.data_dir = None;
    }
    config
        .cluster
        .resolve(|| {
            std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        })
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let access = amx_connectors::FileAccess::under(&config.files.roots).context("configuration: files.roots")?;
    let sink_access =
        amx_connectors::FileAccess::under(&config.files.sink_roots).context("configuration: files.sink_roots")?;
    let _ = PEERS.set(config.cluster.hosts.clone());
    // Users are checked before anything starts (a password given in clear text, a token
    // that is not a hash), so a mistake is not found at the first login.
    let authenticator =
        amx_server::auth::Authenticator::new(&config.auth).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let tls = amx_server::tls::Tls::load(&config.tls).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if config.cluster.process_index == 0 {
        config.check_listen().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        if authenticator.is_some() && tls.is_none() {
            tracing::warn!("users are configured without TLS ([tls]): bearer tokens cross the network in clear text");
        }
        match &authenticator {
            Some(_) => tracing::info!(
                users = config.auth.users.len(),
                "authentication on: bearer tokens (HTTP), SCRAM-SHA-256 (pgwire)"
            ),
            None => tracing::info!("authentication off (no [[auth.users]]): listening on loopback only"),
        }
    }
    // The data directory is locked and read before anything starts: a second server on it,
    // or a damaged log, is refused here.
    let stored = match (&config.storage.data_dir, &config.storage.url, config.cluster.process_index) {
        (Some(_), Some(_), _) => anyhow::bail!("configuration: storage.data_dir and storage.url both set: choose one"),
        (Some(dir), None, 0) => Some(amx_cluster::storage::DurableLog::open(dir).context("data directory")?),
        (None, Some(url), 0) => {
            Some(amx_cluster::storage::DurableLog::open_url(url, Default::default()).context("data URL")?)
        }
        _ => None,
    };
    let controller =
        amx_cluster::Controller::start(amx_cluster::ClusterConfig { sink_access, ..config.cluster_config() })?;
    if config.cluster.process_index != 0 {
        eprintln!(
            "serve: process {} of {} is up; process 0 serves the API",
            config.cluster.process_index, config.cluster.processes
        );
        // A StatefulSet's pod (its index from its name) answers probes on http.listen, so that
        // one pod template probes every pod; processes sharing a machine do not (they would
        // take process 0's address).
        if config.cluster.process_index_from_hostname {
            let listen = config.http.listen.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(&listen))
                .with_context(|| format!("listening on {listen} (probes)"))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            eprintln!("serve: probes on {scheme}://{}/healthz and /readyz", listener.local_addr()?);
            let tls = tls.clone();
            std::thread::Builder::new().name("amx-probes".into()).spawn(move || {
                if let Err(e) = runtime.block_on(amx_server::serve_probes(listener, tls, authenticator)) {
                    tracing::error!(error = %e, "the probes' listener failed");
                }
            })?;
        }
        return controller.join();
    }
    let runtime = server_runtime()?;
    let state = amx_server::AppState::new(controller.clone(), Duration::from_millis(config.sql.timeout_ms))
        .with_max_body_bytes(config.http.max_body_bytes)
        .with_file_access(access)
        .with_guard(config.guard())
        .with_auth(authenticator)
        .with_tls(tls);
    let scheme = if state.tls() { "https" } else { "http" };
    state.metrics().set_max_subscriptions(config.subscribe.max_subscriptions);
    let listen = config.http.listen.clone();
    let log = stored.as_ref().map(|(log, _)| log.clone());
    if let Some((log, records)) = stored {
        let started = std::time::Instant::now();
        let path = log.location();
        let recovered =
            runtime.block_on(controller.recover(log, records, state.file_access())).context("data directory")?;
        let snapshot = recovered.snapshot.as_ref().map_or_else(String::new, |s| {
            format!(" (after snapshot {} of {} rows, in {} rounds)", s.generation, s.rows, s.rounds)
        });
        eprintln!(
            "serve: replayed {path}{snapshot}: {} jobs and views, {} cancellations, {} pushes in {:.1} s",
            recovered.jobs,
            recovered.cancels,
            recovered.pushes,
            started.elapsed().as_secs_f64()
        );
        runtime.spawn(controller.clone().compact_when_grown(config.storage.compact_after_bytes));
    }
    let pg_listen = config.pgwire.listen.clone();
    let max_sessions = config.pgwire.max_sessions;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        let pg_listener = if pg_listen.is_empty() {
            None
        } else {
            Some(
                tokio::net::TcpListener::bind(&pg_listen)
                    .await
                    .with_context(|| format!("listening on {pg_listen} (pgwire)"))?,
            )
        };
        let pg_address = match &pg_listener {
            Some(l) => format!(
                "; pgwire on {} (psql -h {} -p {})",
                l.local_addr()?,
                l.local_addr()?.ip(),
                l.local_addr()?.port()
            ),
            None => String::new(),
        };
        eprintln!(
            "serve: {} worker{} in {} process{}; HTTP API on {scheme}://{address} (GET /v1/openapi.json){pg_address}; {}",
            config.cluster.workers * config.cluster.processes,
            if config.cluster.workers * config.cluster.processes == 1 { "" } else { "s" },
            config.cluster.processes,
            if config.cluster.processes == 1 { "" } else { "es" },
            match config.auth.users.len() {
                0 => "no authentication (no [[auth.users]]: loopback only)".to_owned(),
                n => format!("authentication on ({n} user{})", if n == 1 { "" } else { "s" }),
            },
        );
        // One shutdown signal for both listeners.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let pg = pg_listener.map(|l| {
            let state = state.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { amx_server::pgwire::serve(l, state, max_sessions, stop).await })
        });
        let served = amx_server::serve(listener, state, stopped(stop_rx)).await.context("serving HTTP");
        if let Some(pg) = pg {
            pg.abort();
        }
        served
    })?;
    eprintln!("serve: stopping");
    if let Some(log) = log {
        log.release();
    }
    controller.shutdown();
    controller.join()
}

/// `aimatrix demo --serve`: a server whose demo job has one push source per demo stream, fed
/// by the generator: `events` records at once, then `rate` records (another seed) each second,
/// until SIGINT or SIGTERM.
fn demo_serve(
    dir: &std::path::Path,
    events: usize,
    seed: u64,
    rate: usize,
    listen: &str,
    workers: usize,
) -> Result<()> {
    let mut config = amx_server::config::ServeConfig::default();
    config.http.listen = listen.to_owned();
    config.check_listen().map_err(|e| anyhow::anyhow!("--http: {e}"))?;
    std::fs::create_dir_all(dir)?;
    let first = write_demo_data(&dir.join("round-0"), &DemoConfig { events: 1, seed })?;
    let mut job = Job::parse(&demo_job_toml(&first), dir)?;
    for source in &mut job.config.sources {
        source.kind = amx_cluster::job::SourceKind::Push;
        source.path.clear();
    }
    // The server's default limits on queries and subscribers, as `serve` has them.
    let controller = amx_cluster::Controller::start(amx_cluster::ClusterConfig {
        workers,
        sql: config.sql_limits(),
        ..Default::default()
    })?;
    let id = controller.install_job(&job)?;
    let runtime = server_runtime()?;
    let state = amx_server::AppState::new(controller.clone(), Duration::from_millis(config.sql.timeout_ms))
        .with_guard(config.guard());
    let feeder = controller.clone();
    let dir = dir.to_owned();
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        eprintln!(
            "demo: serving the demo's live state on http://{address} (job {id}: push sources {}); try\n  \
             aimatrix sql --server http://{address} \"SELECT provider, request_model, calls, input_tokens, output_tokens FROM model_usage ORDER BY calls DESC LIMIT 5\"\n  \
             aimatrix subscribe --server http://{address} workflow_runs\nCtrl-C stops it.",
            job.config.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        let feed = tokio::spawn(async move {
            let fed: Result<()> = async move {
            for round in 0u64.. {
                let n = if round == 0 { events } else { rate };
                let round_dir = dir.join(format!("round-{round}"));
                let data = match write_demo_data(&round_dir, &DemoConfig { events: n.max(1), seed: seed.wrapping_add(round) }) {
                    Ok(d) => d,
                    Err(e) => return Err(anyhow::anyhow!("generating demo data: {e}")),
                };
                for file in &data.files {
                    let text = std::fs::read_to_string(&file.path)?;
                    feeder.ingest(id, file.name, &text).await.map_err(|e| anyhow::anyhow!("pushing {}: {e}", file.name))?;
                }
                let _ = std::fs::remove_dir_all(&round_dir);
                if round == 0 {
                    eprintln!("demo: {} records pushed; now {rate} more each second", data.records());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
            }
            .await;
            if let Err(e) = fed {
                eprintln!("error: the demo feed stopped: {e:#}");
            }
        });
        let served = amx_server::serve(listener, state, shutdown_signal()).await.context("serving HTTP");
        feed.abort();
        served
    });
    controller.shutdown();
    controller.join()?;
    result
}

/// The server's tokio runtime: SQL plans on its threads' large stacks (as `amx_sql::parse`
/// parses on them).
fn server_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("amx-http")
        .thread_stack_size(amx_sql::parse::SQL_THREAD_STACK_BYTES)
        .build()
        .context("starting the server runtime")
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM; requests still running 10 s later do not hold
/// the process (a query's planning cannot be interrupted).
async fn shutdown_signal() {
    signal().await;
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(10));
        eprintln!("serve: requests still running 10 s after the stop signal; exiting");
        std::process::exit(0);
    });
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// `--interval`: a duration as `humantime` reads it (`500ms`, `1s`, `2m`, `1m 30s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration `{s}`: {e} (use e.g. 500ms, 1s, 2m)"))
}

impl ClusterArgs {
    fn options(&self, sql: &[String], follow: bool, interval: Duration) -> RunOptions {
        RunOptions {
            workers: self.workers,
            processes: self.processes,
            process_index: self.process_index,
            hosts: self.hosts.clone(),
            follow,
            interval,
            output: self.output.format(),
            queries: sql.iter().map(|q| (String::new(), q.clone())).collect(),
            progress: !self.quiet,
            batch_records: self.batch,
            summary: true,
            poll_bytes: self.poll_bytes,
            max_record_bytes: self.max_record_bytes,
            echo_sql: false,
            on_caught_up: None,
        }
    }
}

/// The exit code of a process that lost the connection to another process of its cluster:
/// 75 (`EX_TEMPFAIL` of sysexits.h: a temporary failure; restart the cluster).
const EXIT_LOST_PEER: i32 = 75;

/// `host:port` of every process of this cluster, for the message when one is lost.
static PEERS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Set once a lost process has been reported: the panics that follow are its consequences.
static LOST_PEER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() {
    // Before any worker allocates (README, "Transparent huge pages").
    let huge_pages = aimatrix::memory::disable_transparent_huge_pages();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // A pgwire message the `pgwire` crate could not decode: its connection ends (the panic
        // is caught there), nothing else does.
        if amx_server::pgwire::decoding() {
            tracing::warn!(
                panic = message,
                "pgwire: a malformed message made the decoder panic; its connection is closed"
            );
            return;
        }
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        // Timely's communication threads (`timely:recv-N`, `timely:send-N`) panic with
        // "timely communication error: …" when the connection to process N breaks: another
        // process died or was killed. That is an expected failure, not a bug.
        let lost = message.starts_with("timely communication error") || thread.starts_with("timely:");
        if lost || LOST_PEER.load(std::sync::atomic::Ordering::SeqCst) {
            if LOST_PEER.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // Already reported; the process is about to exit.
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            let index = thread.rsplit('-').next().and_then(|i| i.parse::<usize>().ok());
            let peer = match index {
                Some(i) => {
                    let address = PEERS.get().and_then(|p| p.get(i)).map_or(String::new(), |a| format!(" at {a}"));
                    format!("cluster process {i}{address}")
                }
                None => "a cluster process".to_owned(),
            };
            eprintln!(
                "error: lost the connection to {peer} ({message}); it stopped or the network failed. This process \
                 exits with code {EXIT_LOST_PEER}: restart every process of the cluster"
            );
            amx_server::cluster_lost(&format!("lost {peer}; the cluster is restarting"));
            // Let the subscriptions' close frames go out.
            std::thread::sleep(Duration::from_millis(1500));
            std::process::exit(EXIT_LOST_PEER);
        }
        // A worker that cannot go on as the others do (another build's commands).
        if let Some(why) = message.strip_prefix(amx_cluster::worker::HALT) {
            eprintln!("error: {why}");
            std::process::exit(70);
        }
        // A panic in a worker thread must not leave the other workers waiting forever.
        default_hook(info);
        eprintln!("error: internal error (a bug in aimatrix; please report it with the input that caused it)");
        std::process::exit(70);
    }));
    if let Err(e) = real_main(huge_pages) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(huge_pages: aimatrix::memory::HugePages) -> Result<()> {
    // Dropped on the way out: the spans still queued are exported.
    let _telemetry = aimatrix::telemetry::init()?;
    match huge_pages {
        aimatrix::memory::HugePages::Failed(e) => {
            tracing::warn!(error = %e, "could not opt out of transparent huge pages; tails may be longer");
        }
        other => tracing::debug!(huge_pages = ?other, "transparent huge pages"),
    }
    let cli = Cli::parse();
    // Not locked for the whole run: timely's networking threads print on stdout while connecting.
    let mut stdout = std::io::stdout();
    match cli.command {
        Command::Run { job, sql, follow, interval, cluster } => {
            let job = Job::load(&job)?;
            run(&job, &cluster.options(&sql, follow, interval), &mut stdout)?;
        }
        Command::Serve(args) => serve(args)?,
        Command::Job { action, server } => {
            let client =
                aimatrix::client::Client::new(&server.server, server.token.as_deref(), server.ca_cert.as_deref())?;
            match action {
                JobAction::Submit { file, wait } => {
                    let id = client.submit(&file)?;
                    if wait {
                        client.wait_caught_up(id)?;
                    }
                    println!("{id}");
                }
                JobAction::List => client.list(&mut stdout)?,
                JobAction::Show { id, json } => client.show(&id, json, &mut stdout)?,
                JobAction::Cancel { id, retract } => {
                    client.cancel(&id, retract)?;
                    eprintln!("job {id} cancelled{}", if retract { ", what it ingested retracted" } else { "" });
                }
            }
        }
        Command::Sql { sql, output, server } => aimatrix::client::Client::new(
            &server.server,
            server.token.as_deref(),
            server.ca_cert.as_deref(),
        )?
        .sql(&sql, output.format(), &mut stdout)?,
        Command::Health { ready, server } => {
            aimatrix::client::Client::new(&server.server, server.token.as_deref(), server.ca_cert.as_deref())?
                .health(ready)?;
            println!("ok");
        }
        Command::Auth { action: AuthAction::Password } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                anyhow::bail!("give the password on standard input, e.g. `aimatrix auth password < file`");
            }
            println!("{}", amx_server::auth::hash_password(password));
        }
        Command::Auth { action: AuthAction::Token } => {
            let (token, hash) = amx_server::auth::new_token();
            println!("token:  {token}\nsha256: {hash}");
            eprintln!(
                "Give the token to the client (AIMATRIX_TOKEN, or `Authorization: Bearer TOKEN`); put its sha256 in the user's `tokens`."
            );
        }
        Command::Subscribe { view, progress, server } => {
            aimatrix::client::Client::new(&server.server, server.token.as_deref(), server.ca_cert.as_deref())?
                .subscribe(&view, progress, &mut stdout)?
        }
        Command::Demo { events, seed, dir, sql, serve, http, rate, cluster } => {
            let keep = dir.is_some();
            let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("aimatrix-demo-{}", std::process::id())));
            let result = if serve {
                demo_serve(&dir, events, seed, rate, &http, cluster.workers)
            } else {
                demo(&dir, events, seed, &sql, &cluster, &mut stdout)
            };
            if !keep {
                // The generated data is only kept when asked for (--dir).
                let _ = std::fs::remove_dir_all(&dir);
            }
            result?;
        }
    }
    Ok(())
}

/// The demo: writes `events` records and the job file into `dir`, ingests them and prints the
/// answers (each under its SQL); then appends a second round of data (a tenth as many records,
/// another seed) to the same files and prints the answers that changed, as the views absorb
/// it incrementally (a `--follow` run that ends once it has caught up with the second round).
fn demo(
    dir: &std::path::Path,
    events: usize,
    seed: u64,
    sql: &[String],
    cluster: &ClusterArgs,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let data = write_demo_data(dir, &DemoConfig { events, seed })
        .with_context(|| format!("writing demo data to {}", dir.display()))?;
    let more = (events / 10).max(1);
    let round2 = write_demo_data(&dir.join("round2"), &DemoConfig { events: more, seed: seed.wrapping_add(1) })
        .with_context(|| format!("writing demo data to {}", dir.display()))?;
    let job_path = dir.join("demo.toml");
    std::fs::write(&job_path, demo_job_toml(&data))?;
    eprintln!(
        "demo: {} records and {} deliberately malformed lines in {} (job file {})",
        data.records() - data.malformed(),
        data.malformed(),
        dir.display(),
        job_path.display()
    );
    let job = Job::load(&job_path)?;
    let mut opts = cluster.options(sql, true, Duration::from_secs(24 * 3600));
    opts.echo_sql = true;
    let rounds = std::sync::atomic::AtomicUsize::new(0);
    let appends: Vec<(PathBuf, PathBuf)> =
        round2.files.iter().filter_map(|f| data.file(f.name).map(|to| (f.path.clone(), to.path.clone()))).collect();
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let failure = failed.clone();
    opts.on_caught_up = Some(aimatrix::runtime::CaughtUp(std::sync::Arc::new(move || {
        if rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            return true;
        }
        eprintln!(
            "demo: appending {} more records to the same files; the views absorb them incrementally, and the answers that change are printed again:",
            round2.records()
        );
        for (from, to) in &appends {
            let appended = std::fs::read(from).and_then(|bytes| {
                use std::io::Write as _;
                std::fs::OpenOptions::new().append(true).open(to)?.write_all(&bytes)
            });
            if let Err(e) = appended {
                *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("appending {} to {}: {e}", from.display(), to.display()));
                return true;
            }
        }
        false
    })));
    run(&job, &opts, out)?;
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!(e);
    }
    Ok(())
}
