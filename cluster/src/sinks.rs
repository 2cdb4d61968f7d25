//! Sinks: a view's contents kept outside the engine — in a Kafka topic, in upsert form
//! ([`kafka`]), or as Parquet files of its changes in an object store, with a manifest naming
//! the complete ones ([`object`]).
//!
//! One thread per sink in process 0 subscribes to the view. When it starts, and again whenever
//! it subscribes anew, it reads back what the destination already holds and writes only what
//! differs from the view's snapshot; then, as the view completes timestamps, their changes. So
//! a restart with a data directory — also after `kill -9` — neither loses nor repeats a change.

mod kafka;
pub mod object;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amx_dataflows::row::Row;
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::object::ObjectStoreSinkConfig;
use crate::controller::{ClusterError, Controller, Inner, SubscribeEvent, Subscription};
use crate::protocol::JobId;

/// A sink: where a view's contents go (`[[sinks]]` in a job file).
///
/// ```toml
/// [[sinks]]
/// name = "collections-out"
/// view = "by_collection"            # a view of this job (or any relation or view)
/// key = ["collection"]              # the columns that identify a row (the message key)
/// [sinks.kafka]
/// brokers = "127.0.0.1:9092"
/// topic = "collections"
/// [sinks.kafka.properties]          # optional librdkafka producer properties
/// "compression.type" = "zstd"
///
/// [[sinks]]
/// name = "collections-lake"
/// view = "by_collection"
/// [sinks.object_store]              # Parquet files of the view's changes
/// url = "s3://lake/aimatrix/by_collection/"
/// ```
///
/// A sink has exactly one of `kafka` and `object_store`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink's name, unique within the job.
    pub name: String,
    /// The view (or relation) whose contents it keeps.
    pub view: String,
    /// Kafka sinks: the columns of a row's key, in order: the view has at most one row per
    /// key (a second row with the same key replaces the first in the topic). Empty: every
    /// column. Object-store sinks take none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// A Kafka sink's topic and brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub kafka: Option<KafkaSinkConfig>,
    /// An object-store sink's bucket and prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub object_store: Option<ObjectStoreSinkConfig>,
}

impl SinkConfig {
    /// Checks that the sink names exactly one destination, and that destination's settings
    /// (nothing is contacted).
    ///
    /// # Errors
    /// Neither or both of `kafka` and `object_store`; a Kafka sink without brokers or topic; an
    /// object-store sink with a bad URL, a setting out of range, or `key`.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.name;
        match (&self.kafka, &self.object_store) {
            (Some(kafka), None) => {
                if kafka.topic.is_empty() || kafka.brokers.is_empty() {
                    return Err(format!("sink `{name}`: `[sinks.kafka]` needs `brokers` and `topic`"));
                }
            }
            (None, Some(store)) => {
                if !self.key.is_empty() {
                    return Err(format!(
                        "sink `{name}`: `key` names a Kafka message's key; an object-store sink writes every row \
                         with its change, and takes none"
                    ));
                }
                store.check().map_err(|e| format!("sink `{name}`: {e}"))?;
            }
            (None, None) => {
                return Err(format!("sink `{name}` needs a destination: `[sinks.kafka]` or `[sinks.object_store]`"));
            }
            (Some(_), Some(_)) => {
                return Err(format!("sink `{name}` has both `[sinks.kafka]` and `[sinks.object_store]`: one per sink"));
            }
        }
        Ok(())
    }
}

/// A Kafka sink's topic: `[sinks.kafka]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic (created beforehand, or by the broker's auto-creation).
    pub topic: String,
    /// Further librdkafka producer (and read-back consumer) properties, as given. The sink
    /// sets `enable.idempotence = true` itself.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    /// How a change is written (default [`Envelope::Upsert`]).
    #[serde(default)]
    pub envelope: Envelope,
}

/// How a Kafka sink writes a key's change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The value is the row (a JSON object); a key that leaves the view gets a tombstone (a
    /// message without a value), as Kafka's compacted topics and Materialize's `ENVELOPE
    /// UPSERT` expect.
    #[default]
    Upsert,
    /// The value is Debezium's change event (`io.debezium` JSON, without its schema part):
    /// `{"before": ROW|null, "after": ROW|null, "op": "c"|"u"|"d"}` — `c` a key that enters
    /// the view, `u` one whose row changes, `d` one that leaves it, which is followed by a
    /// tombstone, as Debezium's `tombstones.on.delete` writes it. Flink's `debezium-json`
    /// format, Materialize's `ENVELOPE DEBEZIUM` and Debezium's sink connectors read it.
    Debezium,
}

/// A running sink: stopped when dropped.
pub(crate) struct RunningSink {
    stop: Arc<AtomicBool>,
}

impl Drop for RunningSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts sink `sink` of job `job`.
///
/// # Errors
/// [`ClusterError::BadRequest`] when its runtime or thread cannot start.
pub(crate) fn start(controller: &Controller, job: JobId, sink: &SinkConfig) -> Result<RunningSink, ClusterError> {
    // The sink's own runtime for its waits (the server's may shut down under it).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::BadRequest(format!("starting sink: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let inner = Arc::downgrade(&controller.inner);
    let sink = sink.clone();
    std::thread::Builder::new()
        .name(format!("amx-sink-{}", sink.name))
        .spawn(move || run(&inner, &runtime, job, &sink, &stopped))
        .map_err(|e| ClusterError::BadRequest(format!("starting sink: {e}")))?;
    Ok(RunningSink { stop })
}

/// The sink's thread: (re)subscribes, reconciles and writes until stopped or the job is gone.
fn run(inner: &Weak<Inner>, runtime: &tokio::runtime::Runtime, job: JobId, sink: &SinkConfig, stop: &AtomicBool) {
    let controller = || inner.upgrade().map(|inner| Controller { inner });
    let what = format!("sink `{}`", sink.name);
    let mut last_problem = None;
    while !stop.load(Ordering::SeqCst) {
        // The destination is there and read back: an earlier problem is over.
        let recovered = |last_problem: &mut Option<String>| {
            if last_problem.take().is_some()
                && let Some(c) = controller()
            {
                c.report_problem(job, &what, None);
            }
        };
        // The destination is opened (and read back) first, then the view subscribed to, so its
        // changes do not queue up while a large topic or lake is read back.
        let subscribe = || -> Result<ViewFeed, String> {
            let c = controller().ok_or("the server is stopping")?;
            ViewFeed::subscribe(&c, &sink.view)
        };
        let outcome = match (&sink.kafka, &sink.object_store) {
            (Some(config), _) => kafka::Sink::open(job, sink, config).and_then(|mut open| {
                let feed = subscribe()?;
                recovered(&mut last_problem);
                open.follow(runtime, feed, sink, stop)
            }),
            (None, Some(config)) => {
                let Some(access) = controller().map(|c| c.inner.sink_access.clone()) else { return };
                object::Sink::open(runtime, job, sink, config, &access).and_then(|mut open| {
                    let feed = subscribe()?;
                    recovered(&mut last_problem);
                    open.follow(runtime, feed, sink, stop)
                })
            }
            (None, None) => return,
        };
        let problem = outcome.err();
        if let Some(problem) = problem
            && last_problem.as_ref() != Some(&problem)
        {
            tracing::warn!(job = %job, sink = %sink.name, %problem, "sink");
            let Some(c) = controller() else { return };
            c.report_problem(job, &what, Some(&problem));
            last_problem = Some(problem);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How long a sink waits for its view's next event before it looks at its clock and its stop.
const FEED_WAIT: Duration = Duration::from_millis(200);

/// What a sink takes from its view, one step at a time ([`ViewFeed::next`]).
enum Step {
    /// Nothing came within [`FEED_WAIT`].
    Idle,
    /// The view's whole contents as of `timestamp` (ms): rows with their counts (> 0).
    Snapshot { timestamp: Time, rows: Vec<(Row, Diff)> },
    /// Every change before `upper` (ms) not given yet, in time order; none at `upper` or later
    /// will come.
    Complete { changes: Vec<(Row, Time, Diff)>, upper: Time },
}

/// A sink's subscription to its view: the snapshot gathered from its parts, and the changes
/// held back until the view's frontier passes them, so a sink writes whole timestamps only.
struct ViewFeed {
    subscription: Subscription,
    snapshot: Vec<(Row, Diff)>,
    pending: Vec<(Row, Time, Diff)>,
}

impl ViewFeed {
    /// Subscribes to `view`.
    ///
    /// # Errors
    /// An unknown view, or a controller that stopped.
    fn subscribe(controller: &Controller, view: &str) -> Result<ViewFeed, String> {
        let subscription = controller.subscribe(view, "sink").map_err(|e| e.to_string())?;
        Ok(ViewFeed { subscription, snapshot: Vec::new(), pending: Vec::new() })
    }

    /// The view's columns.
    fn schema(&self) -> SchemaRef {
        self.subscription.schema.clone()
    }

    /// The next step, waiting at most [`FEED_WAIT`]; `None` once the subscription has ended
    /// (the view was dropped, or the sink fell behind: the caller subscribes anew).
    fn next(&mut self, runtime: &tokio::runtime::Runtime) -> Option<Step> {
        let event = runtime.block_on(async { tokio::time::timeout(FEED_WAIT, self.subscription.recv()).await });
        match event {
            Err(_) => Some(Step::Idle),
            Ok(None) => None,
            Ok(Some(SubscribeEvent::Snapshot { timestamp, rows, last })) => {
                self.snapshot.extend(rows);
                Some(if last {
                    Step::Snapshot { timestamp, rows: std::mem::take(&mut self.snapshot) }
                } else {
                    Step::Idle
                })
            }
            Ok(Some(SubscribeEvent::Changes(changes))) => {
                self.pending.extend(changes);
                Some(Step::Idle)
            }
            Ok(Some(SubscribeEvent::Progress { upper })) => {
                let (changes, later) = self.pending.drain(..).partition(|(_, t, _)| *t < upper);
                self.pending = later;
                Some(Step::Complete { changes, upper })
            }
        }
    }
}

/// Rows as JSON objects (as the HTTP API gives them), in order.
fn rows_json(schema: &amx_sql::arrow::datatypes::SchemaRef, rows: &[&Row]) -> Result<Vec<Value>, String> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let batch = amx_sql::convert::rows_to_batch(rows, schema).map_err(|e| e.to_string())?;
    let text = amx_sql::format_batches(&[batch], amx_sql::OutputFormat::Json).map_err(|e| e.to_string())?;
    match serde_json::from_str(&text).map_err(|e| e.to_string())? {
        Value::Array(values) => Ok(values),
        _ => Ok(Vec::new()),
    }
}
