//! `GET /metrics`: the server's metrics in Prometheus' text exposition format (version 0.0.4,
//! written by the `prometheus` crate), for Prometheus and Grafana.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `aimatrix_source_records_total` | counter | `source` | records read (lines, messages, rows), as `aimatrix_source_stats.records` |
//! | `aimatrix_source_decoded_total` | counter | `source` | rows decoded into the relations (`aimatrix_source_stats.decoded`) |
//! | `aimatrix_source_errors_total` | counter | `source` | rows of `ingest_errors` (`aimatrix_source_stats.errors`) |
//! | `aimatrix_frontier_lag_ms` | gauge | `collection` | ms between the wall clock and the collection's frontier (how far its complete times trail now) |
//! | `aimatrix_jobs` | gauge | `state` | jobs by state (as `GET /v1/jobs` lists them; views created in SQL are not jobs there): `running`, `failed`, `cancelled` |
//! | `aimatrix_query_duration_seconds` | histogram | `interface` (`http`, `pgwire`), `outcome` (`ok`, `error`) | SQL statements, from receipt to answer |
//! | `aimatrix_subscriptions` | gauge | `interface` (`http`, `pgwire`) | subscriptions open |
//! | `aimatrix_subscriptions_refused_total` | counter | | client subscriptions refused past `subscribe.max_subscriptions` |
//! | `aimatrix_pgwire_sessions` | gauge | | pgwire connections open |
//! | `aimatrix_pgwire_sessions_refused_total` | counter | | pgwire connections refused past `pgwire.max_sessions` |
//! | `aimatrix_auth_refused_total` | counter | `interface` (`http`, `pgwire`), `reason` (`unauthenticated`, `forbidden`) | requests and sessions refused: no or wrong credentials (401, `28P01`; a GitHub webhook delivery that does not verify, on a server with users), or a role too small (403) |
//! | `process_*` | | | the process's CPU seconds, resident and virtual memory (bytes), open files, start time (the `prometheus` crate's process collector, Linux) |
//!
//! The source counters and the jobs are read when scraped (the counters from the ingestion
//! counters relation, at one timestamp); a source's counters go when its job is cancelled.

use std::time::Duration;

use amx_cluster::{Controller, SqlAnswer};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The metrics a server keeps between scrapes (see the module docs).
pub struct Metrics {
    registry: Registry,
    queries: HistogramVec,
    subscriptions: IntGaugeVec,
    sessions: IntGauge,
    refused: IntCounter,
    /// Client subscriptions open (both interfaces), and how many may be.
    clients: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_clients: std::sync::atomic::AtomicUsize,
    clients_refused: IntCounter,
    auth_refused: IntCounterVec,
}

/// Which front end a statement or subscription came through.
#[derive(Clone, Copy, Debug)]
pub enum Interface {
    /// The HTTP API.
    Http,
    /// The PostgreSQL wire protocol.
    Pgwire,
}

impl Interface {
    fn label(self) -> &'static str {
        match self {
            Interface::Http => "http",
            Interface::Pgwire => "pgwire",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics, with the process collector registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Buckets from 1 ms to 60 s (sql.timeout_ms's default).
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let queries = HistogramVec::new(
            HistogramOpts::new("aimatrix_query_duration_seconds", "SQL statements, from receipt to answer (s)")
                .buckets(buckets),
            &["interface", "outcome"],
        )
        .expect("a valid histogram");
        let subscriptions =
            IntGaugeVec::new(Opts::new("aimatrix_subscriptions", "subscriptions open"), &["interface"]).expect("valid");
        let sessions = IntGauge::new("aimatrix_pgwire_sessions", "pgwire connections open").expect("valid");
        let refused = IntCounter::new(
            "aimatrix_pgwire_sessions_refused_total",
            "pgwire connections refused past pgwire.max_sessions",
        )
        .expect("valid");
        let clients_refused = IntCounter::new(
            "aimatrix_subscriptions_refused_total",
            "client subscriptions refused past subscribe.max_subscriptions",
        )
        .expect("valid");
        let auth_refused = IntCounterVec::new(
            Opts::new("aimatrix_auth_refused_total", "requests and sessions refused for their credentials or role"),
            &["interface", "reason"],
        )
        .expect("valid");
        for collector in [
            Box::new(auth_refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queries.clone()),
            Box::new(subscriptions.clone()),
            Box::new(sessions.clone()),
            Box::new(refused.clone()),
            Box::new(clients_refused.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        // Every labelled series exists from the start, at 0, so that a dashboard's rate() and
        // sum() see the first event and an absent series means a missing metric (Prometheus'
        // instrumentation practices, "Avoid missing metrics").
        for interface in [Interface::Http, Interface::Pgwire] {
            subscriptions.with_label_values(&[interface.label()]);
            for outcome in ["ok", "error"] {
                queries.with_label_values(&[interface.label(), outcome]);
            }
            for reason in ["unauthenticated", "forbidden"] {
                auth_refused.with_label_values(&[interface.label(), reason]);
            }
        }
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Metrics {
            registry,
            queries,
            subscriptions,
            sessions,
            refused,
            clients: Default::default(),
            max_clients: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_SUBSCRIPTIONS),
            clients_refused,
            auth_refused,
        }
    }

    /// Counts a request or session refused: `reason` is `unauthenticated` (no or wrong
    /// credentials) or `forbidden` (a role too small).
    pub fn auth_refused(&self, interface: Interface, reason: &str) {
        self.auth_refused.with_label_values(&[interface.label(), reason]).inc();
    }

    /// Records a statement's duration and outcome.
    pub fn observe_query(&self, interface: Interface, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.queries.with_label_values(&[interface.label(), outcome]).observe(elapsed.as_secs_f64());
    }

    /// Counts a subscription open until the guard is dropped.
    pub fn subscription(&self, interface: Interface) -> Open {
        Open::new(self.subscriptions.with_label_values(&[interface.label()]))
    }

    /// A client's subscription (over HTTP or pgwire), counted open until the guard is dropped,
    /// if fewer than `subscribe.max_subscriptions` are open (sinks' subscriptions are not
    /// counted).
    ///
    /// # Errors
    /// As many are open as may be: the message to answer (it is counted in
    /// `aimatrix_subscriptions_refused_total`).
    pub fn client_subscription(&self, interface: Interface) -> Result<Open, String> {
        use std::sync::atomic::Ordering;
        let max = self.max_clients.load(Ordering::Relaxed);
        if self.clients.fetch_add(1, Ordering::SeqCst) >= max {
            self.clients.fetch_sub(1, Ordering::SeqCst);
            self.clients_refused.inc();
            return Err(format!(
                "{max} subscriptions are open, as many as subscribe.max_subscriptions allows; close one, or raise it"
            ));
        }
        let mut open = self.subscription(interface);
        open.1 = Some(self.clients.clone());
        Ok(open)
    }

    /// Lets `max` client subscriptions be open at once (at least 1; default
    /// [`DEFAULT_MAX_SUBSCRIPTIONS`]).
    pub fn set_max_subscriptions(&self, max: usize) {
        self.max_clients.store(max.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a pgwire connection open until the guard is dropped.
    pub fn session(&self) -> Open {
        Open::new(self.sessions.clone())
    }

    /// Counts a pgwire connection refused past `pgwire.max_sessions`.
    pub fn session_refused(&self) {
        self.refused.inc();
    }

    /// Every metric, in the text exposition format.
    ///
    /// # Errors
    /// None in practice: a failed read of the ingestion counters leaves their metrics out
    /// (and is logged).
    pub async fn render(&self, controller: &Controller) -> String {
        let scraped = Registry::new();
        let labelled = |name: &str, help: &str, label: &str| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid");
            scraped.register(Box::new(gauge.clone())).expect("registered once");
            gauge
        };
        // Counters whose totals the engine keeps: made afresh at each scrape, at the totals.
        let counter = |name: &str, help: &str| {
            let counter = IntCounterVec::new(Opts::new(name, help), &["source"]).expect("valid");
            scraped.register(Box::new(counter.clone())).expect("registered once");
            counter
        };
        let records = counter("aimatrix_source_records_total", "records read per source");
        let decoded = counter("aimatrix_source_decoded_total", "rows decoded into the relations per source");
        let errors = counter("aimatrix_source_errors_total", "rows of ingest_errors per source");
        let sql = "SELECT source, records, decoded, errors FROM aimatrix_source_stats";
        match controller.execute_sql(sql).await {
            Ok(SqlAnswer::Rows { batches, .. }) => {
                use amx_sql::arrow::array::{Array, AsArray};
                use amx_sql::arrow::datatypes::Int64Type;
                for batch in &batches {
                    let sources = batch.column(0).as_string::<i32>();
                    let columns = [(1, &records), (2, &decoded), (3, &errors)];
                    for row in 0..batch.num_rows() {
                        for (column, counter) in columns {
                            let values = batch.column(column).as_primitive::<Int64Type>();
                            if !values.is_null(row) {
                                let total = u64::try_from(values.value(row)).unwrap_or(0);
                                counter.with_label_values(&[sources.value(row)]).inc_by(total);
                            }
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "metrics: reading aimatrix_source_stats"),
        }
        let lag = labelled("aimatrix_frontier_lag_ms", "ms between now and the collection's frontier", "collection");
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for (collection, upper) in controller.collection_uppers() {
            // A constant collection's frontier is past every time: no lag.
            let upper = i64::try_from(upper).unwrap_or(i64::MAX);
            lag.with_label_values(&[collection.as_str()]).set((now - upper).max(0));
        }
        let records = labelled(
            "aimatrix_arrangement_records",
            "updates held in the collection's arrangements, all workers",
            "collection",
        );
        let batches = labelled(
            "aimatrix_arrangement_batches",
            "batches of the collection's arrangements, all workers",
            "collection",
        );
        let bytes = labelled(
            "aimatrix_arrangement_bytes",
            "the collection's arrangements' size in bytes, estimated (see aimatrix_arrangements), all workers",
            "collection",
        );
        for report in controller.worker_reports().values() {
            for arrangement in &report.arrangements {
                let Some(collection) = arrangement.collection.as_deref() else { continue };
                records.with_label_values(&[collection]).add(arrangement.records);
                batches.with_label_values(&[collection]).add(arrangement.batches);
                bytes
                    .with_label_values(&[collection])
                    .add(arrangement.bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)));
            }
        }
        if let Some(log) = controller.log_stats() {
            let gauge = |name: &str, help: &str, value: u64| {
                let gauge = IntGauge::new(name, help).expect("valid");
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
                scraped.register(Box::new(gauge)).expect("registered once");
            };
            gauge("aimatrix_log_bytes", "bytes of the durable log after its newest snapshot", log.bytes);
            gauge("aimatrix_log_snapshot_generation", "the newest snapshot's generation (0: none)", log.generation);
            let counter = |name: &str, help: &str, value: u64| {
                let counter = prometheus::IntCounter::new(name, help).expect("valid");
                counter.inc_by(value);
                scraped.register(Box::new(counter)).expect("registered once");
            };
            counter("aimatrix_log_compactions_total", "snapshots of the log taken by this process", log.compactions);
            counter(
                "aimatrix_log_compaction_failures_total",
                "compactions of the log that failed in this process (tried again later)",
                log.failures,
            );
        }
        let point = prometheus::IntCounter::new(
            "aimatrix_sql_point_queries_total",
            "queries answered by one peek of a collection, without DataFusion (SELECT columns FROM collection \
             WHERE column = literal AND …)",
        )
        .expect("valid");
        point.inc_by(controller.point_queries());
        scraped.register(Box::new(point)).expect("registered once");
        let jobs = labelled("aimatrix_jobs", "jobs by state", "state");
        for state in ["running", "failed", "cancelled"] {
            jobs.with_label_values(&[state]).set(0);
        }
        for job in controller.jobs() {
            let state = serde_json::to_value(job.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            if let Some(state) = state {
                jobs.with_label_values(&[state.as_str()]).inc();
            }
        }
        let mut families = self.registry.gather();
        families.extend(scraped.gather());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics: encoding");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The default of `subscribe.max_subscriptions`.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;

/// Holds a gauge one higher (and a count of open client subscriptions) until dropped.
pub struct Open(IntGauge, Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

impl Open {
    fn new(gauge: IntGauge) -> Open {
        gauge.inc();
        Open(gauge, None)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(count) = &self.1 {
            count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.0.dec();
    }
}
