//! The worker command loop: what every worker thread of every process runs.
//!
//! Each worker renders two dataflows when it starts: the *control* dataflow (commands
//! broadcast from worker 0, responses gathered to worker 0; see [`crate::protocol`]) and the
//! *agent state* (the canonical relations and the built-in views, every one arranged by its
//! rows, sharded over the workers by hash). Then it loops: worker 0 sequences the controller's
//! commands; every worker applies the commands the broadcast has delivered completely, in
//! sequence order; reads its share of the file sources; advances the inputs' timestamp; steps
//! the dataflows; answers the peeks its arrangements have passed; sends the parts of
//! subscriptions' snapshots their subscribers are ready for and forwards their changes; and
//! allows compaction up to what no pending peek or snapshot still reads.
//!
//! A job's views become one dataflow of their own that imports the arrangements it reads
//! (the built-in views' and earlier jobs'), renders the views with [`amx_sql::render`] and
//! arranges each; dropping the job drops that dataflow on every worker at the same point of
//! the command sequence, and with it the job's arrangements.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amx_connectors::{Decoder, FileReader, Record};
use amx_dataflows::event::Event;
use amx_dataflows::render::{SOURCE_STATS, VIEW_ERRORS, render};
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::datatypes::SchemaRef;
use amx_sql::render::{Renderer, Rows};
use amx_sql::views::ViewPlanner;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::implementations::KeySpine;
use differential_dataflow::trace::{Navigable, TraceReader};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::progress::Antichain;

use crate::controller::Shared;
use crate::job::SourceKind;
use crate::protocol::{
    Command, JobId, MAX_REPORTED_REJECTS, Response, SNAPSHOT_PART_BYTES, SNAPSHOT_PART_ROWS, SUBSCRIBE_CREDIT, ViewSpec,
};

/// A collection's arrangement: its rows as keys, sharded over the workers by hash.
pub type RowTrace = TraceAgent<KeySpine<Row, Time, Diff>>;

/// Worker 0's input of the control dataflow: `(sequence number, the worker it is for (`None`:
/// every worker), the command's JSON text)`, at time = sequence number.
type CommandInput = InputSession<u64, (u64, Option<usize>, String), Diff>;

/// Who made an arrangement (and drops it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The agent state (never dropped).
    Builtin,
    /// A job (or a view created in SQL, which is a job of one view).
    Job(JobId),
}

/// A readable collection: its schema and its arrangements (several for
/// `aimatrix_view_errors`, which every job's views add to; a peek reads their union).
struct Collection {
    schema: SchemaRef,
    traces: Vec<(Owner, RowTrace)>,
}

/// Tuning of the worker loop.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Bytes of each file read per poll (bounds the records in flight).
    pub poll_bytes: u64,
    /// The largest record, in bytes (a longer one is an ingest error).
    pub max_record_bytes: u64,
    /// Records per epoch across the cluster: a worker closes an epoch after decoding its
    /// share (`batch_records / workers`) of a file source's records.
    pub batch_records: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            poll_bytes: 1 << 20,
            max_record_bytes: amx_connectors::record::DEFAULT_MAX_RECORD_BYTES,
            batch_records: 50_000,
        }
    }
}

/// How long an idle worker waits before it advances time anyway (so that frontiers, and
/// `now()` in temporal views, move on without input).
const IDLE_TICK: Duration = Duration::from_millis(100);
/// How long a worker with nothing to do parks.
/// (The controller wakes worker 0 when it sends a command; timely wakes a worker when data
/// arrives for it.)
const PARK: Duration = Duration::from_millis(20);

/// A file source, as one worker reads it.
struct FileSource {
    job: JobId,
    name: String,
    reader: FileReader,
    decoder: Box<dyn Decoder>,
    /// Read to its end.
    done: bool,
    /// Following: keeps reading what is appended (see [`crate::job::SourceConfig::follow`]).
    follow: bool,
}

/// A [`Command::CatchUp`] waiting on one worker: the job, the wait id, and the job's file
/// sources this worker has not yet found at their end since.
struct CatchUp {
    job: JobId,
    wait: u64,
    sources: Vec<String>,
}

/// A push source on one worker: its job (records arrive as [`Command::Ingest`]).
struct PushSource {
    job: JobId,
    /// Decodes this worker's share of each push.
    decoder: Box<dyn Decoder>,
}

/// A job on one worker.
struct JobState {
    /// The dataflow of its views, if it has any.
    dataflow: Option<usize>,
    /// A `retractable` job: every event this worker has fed from its sources (+1 each), to
    /// retract when it is dropped with `retract`.
    ingested: Option<Vec<Event>>,
}

/// A subscription on one worker.
struct Subscription {
    /// The collection.
    collection: String,
    /// The snapshot's time: changes at later times are forwarded.
    as_of: Time,
    /// The part of the snapshot still to be read, while there is one.
    snapshot: Option<SnapshotRead>,
    /// The dataflow that copies the changes after `as_of` into `buffer`.
    dataflow: usize,
    buffer: Rc<RefCell<Vec<(Row, Time, Diff)>>>,
    probe: ProbeHandle<Time>,
    last_upper: Option<Time>,
}

/// Where a worker is in reading its share of a subscription's snapshot.
struct SnapshotRead {
    /// The last row sent (the next part starts after it).
    after: Option<Row>,
    /// Parts it may send before the subscriber has taken more.
    credit: usize,
}

/// A peek waiting for the arrangements to pass its time.
struct PendingPeek {
    id: u64,
    collection: String,
    as_of: Time,
    projection: Option<Vec<usize>>,
    filter: Vec<(usize, Datum)>,
    limit: Option<usize>,
}

/// The engine clock: milliseconds since the Unix epoch.
fn now_ms() -> Time {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Time)
}

/// The next epoch's timestamp: the wall clock in ms, and always later than `epoch`.
fn next_epoch(epoch: Time) -> Time {
    (epoch + 1).max(now_ms())
}

/// The first element of a frontier (`Time::MAX` when empty: closed).
fn first(frontier: &Antichain<Time>) -> Time {
    frontier.elements().first().copied().unwrap_or(Time::MAX)
}

/// Lets an arrangement merge its batches as soon as they arrive: its physical compaction
/// frontier goes to the empty antichain. Only times before the logical compaction frontier
/// (`since`) are then forgotten, and every read of the catalog's arrangements takes the
/// whole trace (`batches_through` the empty frontier) or imports it as a collection, so none
/// needs the batches kept apart. Otherwise the batches sealed in the ~1 s between two
/// [`Command::AllowCompaction`]s wait unmerged and are all introduced into the spine at the
/// next one: a round of merging that stalled a worker for up to 0.6 s.
fn merge_eagerly(trace: &mut RowTrace) {
    trace.set_physical_compaction(Antichain::new().borrow());
}

/// The frontier of an arrangement: it holds every update at times before it.
fn upper_of(trace: &mut RowTrace) -> Time {
    let mut upper = Antichain::new();
    trace.read_upper(&mut upper);
    first(&upper)
}

/// Adds the rows of `trace` as of `as_of` that pass `filter` (column = value, for each pair),
/// projected, to `out`, with their multiplicities. A filter on the first column seeks to the
/// first row with that value (rows are sorted, so they are together) instead of scanning.
fn read_at(
    trace: &mut RowTrace,
    as_of: Time,
    projection: Option<&[usize]>,
    filter: &[(usize, Datum)],
    limit: &mut usize,
    out: &mut HashMap<Row, Diff>,
) {
    let Some(batches) = trace.batches_through(Antichain::new().borrow()) else {
        return;
    };
    let (mut cursor, storage) = differential_dataflow::trace::cursor::cursor_list(batches);
    // `[value]` sorts before every row that starts with `value` (a prefix sorts first).
    let leading = filter.iter().find(|(c, _)| *c == 0).map(|(_, d)| d.clone());
    if let Some(value) = &leading {
        cursor.seek_key(&storage, &vec![value.clone()]);
    }
    while cursor.key_valid(&storage) && *limit > 0 {
        let row: &Row = cursor.key(&storage);
        if let Some(value) = &leading
            && row.first() != Some(value)
        {
            break;
        }
        if !filter.iter().all(|(c, d)| row.get(*c) == Some(d)) {
            cursor.step_key(&storage);
            continue;
        }
        let count = count_at(&mut cursor, &storage, as_of);
        if count != 0 {
            let row: &Row = cursor.key(&storage);
            let row = match projection {
                Some(columns) => columns.iter().map(|&c| row.get(c).cloned().unwrap_or(Datum::Null)).collect(),
                None => row.clone(),
            };
            *out.entry(row).or_insert(0) += count;
            *limit = limit.saturating_sub(count.max(0) as usize);
        }
        cursor.step_key(&storage);
    }
}

/// The count of the cursor's current row at `as_of` (its diffs at times up to `as_of`);
/// leaves the cursor past the row's values.
fn count_at<C>(cursor: &mut C, storage: &C::Storage, as_of: Time) -> Diff
where
    C: for<'a> Cursor<TimeGat<'a> = &'a Time, DiffGat<'a> = &'a Diff>,
{
    let mut count: Diff = 0;
    while cursor.val_valid(storage) {
        cursor.map_times(storage, |time, diff| {
            if *time <= as_of {
                count += *diff;
            }
        });
        cursor.step_val(storage);
    }
    count
}

/// The next part of a worker's share of a collection's contents at `as_of`: rows (in row
/// order) after `after`, at most [`SNAPSHOT_PART_ROWS`] of them and about
/// [`SNAPSHOT_PART_BYTES`] bytes; and whether it is the last part. The arrangements are read
/// as one (rows in several of them are summed), from their current batches, so merges between
/// two parts change nothing: they keep the contents at `as_of` while the subscription holds
/// compaction at it.
fn snapshot_part(traces: &mut [(Owner, RowTrace)], as_of: Time, after: Option<&Row>) -> (Vec<(Row, Diff)>, bool) {
    let mut batches = Vec::new();
    for (_, trace) in traces.iter_mut() {
        if let Some(mut b) = trace.batches_through(Antichain::new().borrow()) {
            batches.append(&mut b);
        }
    }
    let (mut cursor, storage) = differential_dataflow::trace::cursor::cursor_list(batches);
    if let Some(after) = after {
        cursor.seek_key(&storage, after);
        if cursor.get_key(&storage) == Some(after) {
            cursor.step_key(&storage);
        }
    }
    let (mut rows, mut bytes) = (Vec::new(), 0);
    while cursor.key_valid(&storage) {
        if rows.len() == SNAPSHOT_PART_ROWS || bytes >= SNAPSHOT_PART_BYTES {
            return (rows, false);
        }
        let count = count_at(&mut cursor, &storage, as_of);
        if count != 0 {
            let row: &Row = cursor.key(&storage);
            bytes += crate::controller::row_bytes(row);
            rows.push((row.clone(), count));
        }
        cursor.step_key(&storage);
    }
    (rows, true)
}

/// The catalog every worker starts with: the canonical relations, the built-in views, the
/// ingestion counters and the view errors, with their Arrow schemas.
pub fn builtin_schemas() -> Vec<(String, SchemaRef)> {
    let mut schemas: Vec<(String, SchemaRef)> =
        amx_dataflows::render::relations().iter().map(|d| (d.name.to_owned(), amx_sql::arrow_schema(d))).collect();
    schemas.push((VIEW_ERRORS.to_owned(), crate::view_errors_schema()));
    schemas
}

/// Runs one worker until [`Command::Shutdown`]. `shared` is the controller's side (`None` in
/// processes other than 0).
pub fn run_worker(worker: &mut timely::worker::Worker, shared: Option<Arc<Shared>>, options: &WorkerOptions) {
    let index = worker.index();
    let peers = worker.peers();

    // The control dataflow.
    let received: Rc<RefCell<Vec<(u64, String)>>> = Rc::default();
    let deliver = shared.clone();
    let sink = received.clone();
    let (cmd_in, mut resp_in, cmd_probe) = worker.dataflow_named::<u64, _, _>("control", move |scope| {
        let (cmd_in, commands) = scope.new_collection::<(u64, Option<usize>, String), Diff>();
        let probe = ProbeHandle::new();
        // A copy for every worker, or for the one it is for.
        commands
            .inner
            .flat_map(move |((seq, to, text), time, diff)| {
                let workers = match to {
                    Some(w) => w..w + 1,
                    None => 0..peers,
                };
                workers.map(move |w| (w, seq, text.clone(), time, diff))
            })
            .exchange(|(w, ..)| *w as u64)
            .inspect(move |(_, seq, text, _time, diff)| {
                if *diff > 0 {
                    sink.borrow_mut().push((*seq, text.clone()));
                }
            })
            .probe_with(&probe);
        let (resp_in, responses) = scope.new_collection::<Response, Diff>();
        responses.inner.exchange(|_| 0u64).inspect(move |(response, _time, _diff)| {
            if let Some(shared) = &deliver {
                shared.deliver(response.clone());
            }
        });
        (cmd_in, resp_in, probe)
    });
    // Only worker 0 sequences commands; the others close their command input at once.
    let mut cmd_in: Option<CommandInput> = (index == 0).then_some(cmd_in);
    let commands = if index == 0 { shared.as_ref().and_then(|s| s.take_command_receiver()) } else { None };
    let mut next_seq: u64 = 0;

    // Nothing else is built before the first command, which says what the agent state holds.
    let (collections, instance_views) = loop {
        sequence(commands.as_ref(), cmd_in.as_mut(), &mut next_seq);
        let mut ready = take_ready(&received, &cmd_probe);
        if ready.is_empty() {
            worker.step_or_park(Some(PARK));
            continue;
        }
        let (_, text) = ready.remove(0);
        // The later ones are applied by the loop below, in order.
        received.borrow_mut().extend(ready);
        match serde_json::from_str::<Command>(&text) {
            Ok(Command::CreateInstance { collections, views }) => break (collections, views),
            Ok(Command::Shutdown) => return,
            Ok(_) | Err(_) => tracing::error!(worker = index, "the first command is not CreateInstance; skipped"),
        }
    };

    // The agent state.
    let arranged =
        |name: &str| name == SOURCE_STATS || collections.as_ref().is_none_or(|c| c.iter().any(|n| n == name));
    let mut planned = Vec::new();
    if !instance_views.is_empty() {
        match plan_views(&builtin_schemas(), &instance_views) {
            Ok(defs) => planned = defs,
            Err(error) => respond(&mut resp_in, Response::JobFailed { job: JobId(0), error }),
        }
    }
    let view_reads: Vec<String> = planned.iter().flat_map(|d| d.reads.iter().cloned()).collect();
    let (mut inputs, agent_probe, builtin, failed) = worker.dataflow_named::<Time, _, _>("agent state", |scope| {
        let rendered = render(scope, &|name| arranged(name) || view_reads.iter().any(|r| r == name));
        let probe = ProbeHandle::new();
        let mut traces = Vec::new();
        let mut rows: HashMap<String, Rows<'_>> = HashMap::new();
        for (_index, name, relation) in rendered.relations {
            if arranged(name) {
                let trace = relation.clone().arrange_by_self_named(&format!("Arrange {name}"));
                trace.stream.clone().probe_with(&probe);
                traces.push((name.to_owned(), None, trace.trace));
            }
            rows.insert(name.to_owned(), relation);
        }
        // The instance's views, straight over the relations' rows; their error rows join the
        // built-in views' ones.
        let mut renderer = Renderer::new(rows);
        renderer.add_errors(rendered.errors);
        let mut failed = Vec::new();
        for def in &planned {
            match renderer.render_view(def) {
                Ok(view) => {
                    let trace = view.arrange_by_self_named(&format!("Arrange {}", def.name));
                    trace.stream.clone().probe_with(&probe);
                    traces.push((def.name.clone(), Some(def.schema.clone()), trace.trace));
                }
                Err(e) => failed.push(format!("view `{}`: {e}", def.name)),
            }
        }
        if let Some(errors) = renderer.errors() {
            let trace = errors.arrange_by_self_named("Arrange view errors");
            trace.stream.clone().probe_with(&probe);
            traces.push((VIEW_ERRORS.to_owned(), None, trace.trace));
        }
        (rendered.inputs, probe, traces, failed)
    });
    for error in failed {
        respond(&mut resp_in, Response::JobFailed { job: JobId(0), error });
    }
    let schemas: HashMap<String, SchemaRef> = builtin_schemas().into_iter().collect();
    let mut catalog: BTreeMap<String, Collection> = BTreeMap::new();
    for (name, schema, mut trace) in builtin {
        let Some(schema) = schema.or_else(|| schemas.get(&name).cloned()) else { continue };
        merge_eagerly(&mut trace);
        catalog.insert(name, Collection { schema, traces: vec![(Owner::Builtin, trace)] });
    }

    let mut files: Vec<FileSource> = Vec::new();
    let mut pushes: HashMap<String, PushSource> = HashMap::new();
    let mut jobs: HashMap<JobId, JobState> = HashMap::new();
    let mut subscriptions: HashMap<u64, Subscription> = HashMap::new();
    let mut peeks: Vec<PendingPeek> = Vec::new();
    let mut catch_ups: Vec<CatchUp> = Vec::new();
    // Per source: (records, decoded rows, errors, declared) since the last epoch.
    let mut pending_stats: HashMap<String, (isize, isize, isize, isize)> = HashMap::new();
    // Per source: what this worker has added to `aimatrix_source_stats` (retracted when the
    // source's job is cancelled, so a later source of the same name starts from zero).
    let mut stat_totals: HashMap<String, (isize, isize, isize, isize)> = HashMap::new();
    let mut since: Time = 0;
    let mut compacted: Time = 0;
    // Events of jobs dropped with `retract`, set aside until their `RetractJob`; while any
    // are, this worker's input time holds (so the controller's retraction time is ahead).
    let mut retracting: HashMap<JobId, Vec<Event>> = HashMap::new();
    let mut epoch: Time = next_epoch(0);
    inputs.advance_to(epoch);
    let mut last_advance = Instant::now();
    let mut last_publish = Instant::now() - Duration::from_secs(1);
    let mut records: Vec<Record> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let batch_share = (options.batch_records / peers).max(1);

    'run: loop {
        // 1. Worker 0 sequences the controller's commands: command n at time n.
        sequence(commands.as_ref(), cmd_in.as_mut(), &mut next_seq);

        // 2. Apply every command the broadcast has delivered completely, in sequence order.
        let ready = take_ready(&received, &cmd_probe);
        // A command changed the inputs (a retraction): time moves on at once.
        let mut changed = false;
        for (seq, text) in ready {
            tracing::debug!(worker = index, seq, "applying command");
            let command: Command = match serde_json::from_str(&text) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(seq, error = %e, "undecodable command; skipped");
                    continue;
                }
            };
            match command {
                Command::InstallJob { id, sources, views, retractable, access } => {
                    for source in sources {
                        let decoder = match amx_connectors::decoder(&source.format, &source.options_json()) {
                            Ok(d) => d,
                            Err(e) => {
                                respond(
                                    &mut resp_in,
                                    Response::SourceFailed { job: id, source: source.name, error: e.to_string() },
                                );
                                continue;
                            }
                        };
                        // Worker 0 declares the source: it has its counters row before any record.
                        if index == 0 {
                            pending_stats.entry(source.name.clone()).or_default().3 += 1;
                        }
                        match source.kind {
                            SourceKind::File => match FileReader::new(&source.path) {
                                Ok(mut reader) => {
                                    reader.set_max_poll_bytes(options.poll_bytes.max(1));
                                    reader.set_share(index as u64, peers as u64);
                                    reader.set_max_record_bytes(options.max_record_bytes.max(1));
                                    reader.set_access(access.clone());
                                    files.push(FileSource {
                                        job: id,
                                        name: source.name,
                                        reader,
                                        decoder,
                                        done: false,
                                        follow: source.follow,
                                    });
                                }
                                Err(e) => respond(
                                    &mut resp_in,
                                    Response::SourceFailed { job: id, source: source.name, error: e.to_string() },
                                ),
                            },
                            SourceKind::Push => {
                                pushes.insert(source.name, PushSource { job: id, decoder });
                            }
                        }
                    }
                    let dataflow = if views.is_empty() {
                        None
                    } else {
                        match install_views(worker, &mut catalog, id, &views) {
                            Ok(df) => Some(df),
                            Err(error) => {
                                respond(&mut resp_in, Response::JobFailed { job: id, error });
                                None
                            }
                        }
                    };
                    jobs.insert(id, JobState { dataflow, ingested: retractable.then(Vec::new) });
                    // The job's new arrangements compact as far as the others.
                    if compacted > 0 {
                        let frontier = Antichain::from_elem(compacted);
                        for collection in catalog.values_mut() {
                            for (_, trace) in collection.traces.iter_mut() {
                                trace.set_logical_compaction(frontier.borrow());
                            }
                        }
                    }
                }
                Command::DropJob { id, retract, wait } => {
                    // Its events wait for `RetractJob`, and time holds until then.
                    if retract {
                        let ingested = jobs.get_mut(&id).and_then(|j| j.ingested.take()).unwrap_or_default();
                        retracting.insert(id, ingested);
                    }
                    let names: Vec<String> = files
                        .iter()
                        .filter(|f| f.job == id)
                        .map(|f| f.name.clone())
                        .chain(pushes.iter().filter(|(_, p)| p.job == id).map(|(n, _)| n.clone()))
                        .collect();
                    for name in names {
                        pending_stats.remove(&name);
                        if let Some(t) = stat_totals.remove(&name) {
                            inputs.source_stats.update(name, (-t.0, -t.1, -t.2, -t.3));
                        }
                    }
                    files.retain(|f| f.job != id);
                    pushes.retain(|_, p| p.job != id);
                    // Its sources are gone: nothing more to catch up with.
                    for c in catch_ups.iter_mut().filter(|c| c.job == id) {
                        c.sources.clear();
                    }
                    for collection in catalog.values_mut() {
                        collection.traces.retain(|(owner, _)| *owner != Owner::Job(id));
                    }
                    catalog.retain(|_, c| !c.traces.is_empty());
                    if let Some(JobState { dataflow: Some(df), .. }) = jobs.remove(&id) {
                        worker.drop_dataflow(df);
                    }
                    respond(&mut resp_in, Response::Applied { id: wait, upper: inputs.time() + 1 });
                }
                Command::CatchUp { job, wait } => {
                    let sources = files.iter().filter(|f| f.job == job && !f.done).map(|f| f.name.clone()).collect();
                    catch_ups.push(CatchUp { job, wait, sources });
                }
                Command::EndOfInput { job } => {
                    for source in files.iter_mut().filter(|f| f.job == job) {
                        source.follow = false;
                    }
                }
                Command::CreateInstance { .. } => {
                    tracing::error!(worker = index, seq, "CreateInstance after the first command; skipped")
                }
                Command::RetractJob { id, at, wait } => {
                    if let Some(events) = retracting.remove(&id) {
                        // Every worker held its time since the drop, and `at` is past the
                        // latest of them: all retract at `at`.
                        if at > epoch {
                            epoch = at;
                            inputs.advance_to(epoch);
                        } else if at < epoch {
                            tracing::error!(worker = index, job = %id, at, epoch, "retraction time already passed");
                        }
                        tracing::debug!(worker = index, job = %id, events = events.len(), at = epoch, "retracting a job's events");
                        for event in events {
                            inputs.update(event, -1);
                        }
                        changed = true;
                    }
                    respond(&mut resp_in, Response::Applied { id: wait, upper: epoch + 1 });
                }
                Command::Ingest { id, source, body, oversized } => {
                    let (mut accepted, mut rejected, mut errors) = (0, 0, Vec::new());
                    if let Some(push) = pushes.get(&source) {
                        let mut keep = jobs.get_mut(&push.job).and_then(|j| j.ingested.as_mut());
                        let stats = pending_stats.entry(source.clone()).or_default();
                        let records = body
                            .lines()
                            .enumerate()
                            .filter(|(i, line)| !line.trim().is_empty() || oversized.contains_key(&(*i as u64 + 1)));
                        for (line, text) in records {
                            let line = line as u64 + 1;
                            let location = format!("POST /v1/ingest/{}/{source}:{line}", push.job);
                            let limit = options.max_record_bytes.max(1);
                            let record = match oversized.get(&line) {
                                Some(&size) => {
                                    amx_connectors::record::oversized_record(location, size, text.as_bytes(), limit)
                                }
                                None => amx_connectors::record::record_within(location, text.as_bytes(), limit),
                            };
                            push.decoder.decode(&source, &record, &mut events);
                            stats.0 += 1;
                            let mut error = None;
                            for event in events.drain(..) {
                                if let Event::Error(e) = &event {
                                    stats.2 += 1;
                                    error.get_or_insert_with(|| e.error.clone());
                                } else {
                                    stats.1 += 1;
                                }
                                if let Some(keep) = keep.as_deref_mut() {
                                    keep.push(event.clone());
                                }
                                inputs.update(event, 1);
                            }
                            match error {
                                Some(error) => {
                                    rejected += 1;
                                    if errors.len() < MAX_REPORTED_REJECTS {
                                        errors.push((line, error));
                                    }
                                }
                                None => accepted += 1,
                            }
                        }
                    }
                    let upper = inputs.time() + 1;
                    respond(&mut resp_in, Response::Ingested { id, upper, accepted, rejected, errors });
                }
                Command::Peek { id, collection, as_of, projection, filter, limit } => {
                    peeks.push(PendingPeek { id, collection, as_of, projection, filter, limit })
                }
                Command::Subscribe { id, collection, as_of } => {
                    match subscribe(worker, &mut catalog, &collection, as_of) {
                        Some((dataflow, buffer, probe)) => {
                            let snapshot = Some(SnapshotRead { after: None, credit: SUBSCRIBE_CREDIT });
                            let last_upper = None;
                            let sub = Subscription { collection, as_of, snapshot, dataflow, buffer, probe, last_upper };
                            subscriptions.insert(id, sub);
                        }
                        // No such collection (any more): closed at once.
                        None => {
                            let rows = Vec::new();
                            respond(&mut resp_in, Response::SubscribeSnapshot { id, worker: index, rows, done: true });
                            let updates = Vec::new();
                            respond(&mut resp_in, Response::Subscribe { id, worker: index, updates, upper: Time::MAX });
                        }
                    }
                }
                Command::SubscribeCredit { id, worker: to } => {
                    if to == index
                        && let Some(read) = subscriptions.get_mut(&id).and_then(|s| s.snapshot.as_mut())
                    {
                        read.credit += 1;
                    }
                }
                Command::Unsubscribe { id } => {
                    if let Some(sub) = subscriptions.remove(&id) {
                        worker.drop_dataflow(sub.dataflow);
                    }
                }
                Command::AllowCompaction { since: s } => since = since.max(s),
                Command::Shutdown => break 'run,
            }
        }

        // 3. Read this worker's share of the file sources, once the dataflow has caught up
        //    with the previous epoch (back-pressure).
        let mut fed = false;
        // A file source was read to its end this round.
        let mut ended = false;
        // File sources found at their end by this round's polls.
        let mut at_end: Vec<(JobId, String)> = Vec::new();
        if !agent_probe.less_than(&epoch) {
            for source in files.iter_mut().filter(|f| !f.done) {
                let mut decoded = 0usize;
                while decoded < batch_share {
                    records.clear();
                    let (seen, bytes) = (source.reader.records_seen(), source.reader.bytes_read());
                    // A following source reads a last line only once its newline is there.
                    if let Err(e) = source.reader.poll(!source.follow, &mut records) {
                        source.done = true;
                        at_end.push((source.job, source.name.clone()));
                        respond(
                            &mut resp_in,
                            Response::SourceFailed {
                                job: source.job,
                                source: source.name.clone(),
                                error: e.to_string(),
                            },
                        );
                        break;
                    }
                    if records.is_empty() && source.reader.records_seen() == seen && source.reader.bytes_read() == bytes
                    {
                        at_end.push((source.job, source.name.clone()));
                        if source.follow {
                            // At the current end: look again later.
                            break;
                        }
                        source.done = true;
                        // What it read is in the current epoch: complete once time passes it
                        // (which it does at once, below).
                        ended = true;
                        let (job, source) = (source.job, source.name.clone());
                        respond(&mut resp_in, Response::SourceDone { job, source, upper: epoch + 1 });
                        break;
                    }
                    fed = true;
                    let mut keep = jobs.get_mut(&source.job).and_then(|j| j.ingested.as_mut());
                    let stats = pending_stats.entry(source.name.clone()).or_default();
                    for record in records.drain(..) {
                        decoded += 1;
                        stats.0 += 1;
                        source.decoder.decode(&source.name, &record, &mut events);
                        for event in events.drain(..) {
                            if matches!(event, Event::Error(_)) {
                                stats.2 += 1;
                            } else {
                                stats.1 += 1;
                            }
                            if let Some(keep) = keep.as_deref_mut() {
                                keep.push(event.clone());
                            }
                            inputs.update(event, 1);
                        }
                    }
                }
            }
        }
        // What this round read is at time `epoch`: a catch-up whose sources are all at their end
        // is answered with `epoch + 1`, and time moves on at once so that it is soon visible.
        for (job, name) in &at_end {
            for c in catch_ups.iter_mut().filter(|c| c.job == *job) {
                c.sources.retain(|s| s != name);
            }
        }
        let mut answered = false;
        catch_ups.retain(|c| {
            let sources_left = !c.sources.is_empty();
            if !sources_left {
                respond(&mut resp_in, Response::Applied { id: c.wait, upper: epoch + 1 });
                answered = true;
            }
            sources_left
        });
        let holding = !retracting.is_empty();
        if !holding
            && (fed || ended || answered || changed || !pending_stats.is_empty() || last_advance.elapsed() >= IDLE_TICK)
        {
            for (source, counts) in pending_stats.drain() {
                let total = stat_totals.entry(source.clone()).or_default();
                *total = (total.0 + counts.0, total.1 + counts.1, total.2 + counts.2, total.3 + counts.3);
                inputs.source_stats.update(source, counts);
            }
            epoch = next_epoch(epoch);
            inputs.advance_to(epoch);
            last_advance = Instant::now();
        }

        // 4. Run the dataflows.
        if fed {
            worker.step();
        } else {
            worker.step_or_park(Some(PARK));
        }

        // 5. Answer the peeks whose time every arrangement they read has passed.
        let mut i = 0;
        while i < peeks.len() {
            let peek = &peeks[i];
            let ready = match catalog.get_mut(&peek.collection) {
                Some(c) => c.traces.iter_mut().all(|(_, t)| upper_of(t) > peek.as_of),
                None => true,
            };
            if !ready {
                i += 1;
                continue;
            }
            let peek = peeks.swap_remove(i);
            let mut rows = HashMap::new();
            if let Some(c) = catalog.get_mut(&peek.collection) {
                let mut limit = peek.limit.unwrap_or(usize::MAX);
                for (_, trace) in c.traces.iter_mut() {
                    read_at(trace, peek.as_of, peek.projection.as_deref(), &peek.filter, &mut limit, &mut rows);
                }
            }
            let mut rows: Vec<(Row, Diff)> = rows.into_iter().filter(|(_, c)| *c != 0).collect();
            rows.sort();
            tracing::debug!(worker = index, peek = peek.id, rows = rows.len(), "peek answered");
            respond(&mut resp_in, Response::Peek { id: peek.id, rows });
        }

        // 6. Send the next parts of the subscriptions' snapshots the subscribers are ready
        //    for, and forward their changes, with this worker's frontier.
        let mut closed = Vec::new();
        for (id, sub) in subscriptions.iter_mut() {
            if let Some(read) = sub.snapshot.as_mut() {
                let ready = match catalog.get_mut(&sub.collection) {
                    Some(c) => c.traces.iter_mut().all(|(_, t)| upper_of(t) > sub.as_of),
                    None => true,
                };
                let mut done = false;
                while ready && read.credit > 0 && !done {
                    let rows;
                    (rows, done) = match catalog.get_mut(&sub.collection) {
                        Some(c) => snapshot_part(&mut c.traces, sub.as_of, read.after.as_ref()),
                        // Dropped: the changes end the subscription.
                        None => (Vec::new(), true),
                    };
                    read.credit -= 1;
                    read.after = rows.last().map(|(row, _)| row.clone());
                    tracing::debug!(worker = index, subscription = id, rows = rows.len(), done, "snapshot part");
                    respond(&mut resp_in, Response::SubscribeSnapshot { id: *id, worker: index, rows, done });
                }
                if done {
                    sub.snapshot = None;
                }
            }
            let upper = sub.probe.with_frontier(|f| f.first().copied().unwrap_or(Time::MAX));
            let updates = std::mem::take(&mut *sub.buffer.borrow_mut());
            // Every frontier advance is reported: the controller releases changes only once
            // every worker has passed their time.
            if !updates.is_empty() || sub.last_upper != Some(upper) {
                sub.last_upper = Some(upper);
                respond(&mut resp_in, Response::Subscribe { id: *id, worker: index, updates, upper });
            }
            if upper == Time::MAX {
                if sub.snapshot.take().is_some() {
                    // Dropped while its snapshot was read: the snapshot ends here.
                    let rows = Vec::new();
                    respond(&mut resp_in, Response::SubscribeSnapshot { id: *id, worker: index, rows, done: true });
                }
                closed.push(*id);
            }
        }
        // A subscription whose collection was dropped has ended: drop its dataflow.
        for id in closed {
            if let Some(sub) = subscriptions.remove(&id) {
                worker.drop_dataflow(sub.dataflow);
            }
        }

        // 7. Compaction: up to `since`, but never past a pending peek's time.
        let snapshots = subscriptions.values().filter(|s| s.snapshot.is_some()).map(|s| s.as_of);
        let hold = peeks.iter().map(|p| p.as_of).chain(snapshots).min().unwrap_or(Time::MAX);
        let allowed = since.min(hold);
        if allowed > compacted {
            compacted = allowed;
            let frontier = Antichain::from_elem(allowed);
            for collection in catalog.values_mut() {
                for (_, trace) in collection.traces.iter_mut() {
                    trace.set_logical_compaction(frontier.borrow());
                }
            }
        }

        // 8. Worker 0 publishes the collections' frontiers and the sources' progress.
        if let Some(shared) = &shared
            && index == 0
            && last_publish.elapsed() >= Duration::from_millis(1)
        {
            last_publish = Instant::now();
            let uppers: HashMap<String, Time> = catalog
                .iter_mut()
                .map(|(name, c)| {
                    (name.clone(), c.traces.iter_mut().map(|(_, t)| upper_of(t)).min().unwrap_or(Time::MAX))
                })
                .collect();
            let progress = files
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        crate::controller::SourceProgress {
                            bytes_read: f.reader.bytes_read(),
                            bytes_total: f.reader.total_bytes(),
                            done: f.done,
                            caught_up: false,
                        },
                    )
                })
                .collect();
            shared.publish(uppers, progress);
        }
    }
    // Shut down: drop every dataflow (the others do the same at the same command).
    drop(cmd_in);
    drop(inputs);
    catalog.clear();
    for df in worker.installed_dataflows() {
        worker.drop_dataflow(df);
    }
}

/// Worker 0 sequences the controller's commands waiting in `commands`: command `n` enters the
/// control dataflow at time `n` (other workers have neither).
fn sequence(
    commands: Option<&std::sync::mpsc::Receiver<crate::controller::Envelope>>,
    input: Option<&mut CommandInput>,
    next_seq: &mut u64,
) {
    let (Some(rx), Some(input)) = (commands, input) else { return };
    let mut any = false;
    while let Ok((text, to)) = rx.try_recv() {
        input.update((*next_seq, to, text), 1);
        *next_seq += 1;
        input.advance_to(*next_seq);
        any = true;
    }
    if any {
        input.flush();
    }
}

/// The commands the broadcast has delivered completely (every command before them too), in
/// sequence order.
fn take_ready(received: &RefCell<Vec<(u64, String)>>, probe: &ProbeHandle<u64>) -> Vec<(u64, String)> {
    let mut received = received.borrow_mut();
    received.sort();
    let n = received.iter().take_while(|(seq, _)| !probe.less_equal(seq)).count();
    received.drain(..n).collect()
}

/// Plans `views` in order against the collections `schemas` (a view may read the earlier
/// ones). The controller plans with it before it sends a view, and every worker again from
/// the same text, so all plan alike.
///
/// Errors: the first view that does not plan, as `view `NAME`: MESSAGE` (with its position).
pub(crate) fn plan_views(
    schemas: &[(String, SchemaRef)],
    views: &[ViewSpec],
) -> Result<Vec<amx_sql::views::ViewDef>, String> {
    if views.is_empty() {
        return Ok(Vec::new());
    }
    let mut planner = ViewPlanner::new(schemas).map_err(|e| e.to_string())?;
    let mut defs = Vec::new();
    for view in views {
        let def = planner
            .create_in(&view.name, &view.sql, &view.sql)
            .map_err(|e| format!("view `{}`: {}", view.name, amx_sql::error::message(&e)))?;
        defs.push(def.clone());
    }
    Ok(defs)
}

/// Sends a response to worker 0 (and from there to the controller). The input then moves to
/// the next time: that closes the batch, and only a closed batch is sent over the network to
/// another process (an open one waits in timely's send buffers).
fn respond(resp_in: &mut InputSession<u64, Response, Diff>, response: Response) {
    resp_in.update(response, 1);
    let next = *resp_in.time() + 1;
    resp_in.advance_to(next);
    resp_in.flush();
}

/// Renders a job's views in a new dataflow that imports the arrangements they read, and adds
/// their arrangements (and their error rows') to the catalog. Returns the dataflow's index.
fn install_views(
    worker: &mut timely::worker::Worker,
    catalog: &mut BTreeMap<String, Collection>,
    job: JobId,
    views: &[ViewSpec],
) -> Result<usize, String> {
    let schemas: Vec<(String, SchemaRef)> = catalog.iter().map(|(n, c)| (n.clone(), c.schema.clone())).collect();
    let defs = plan_views(&schemas, views)?;
    // What the views read from outside the job; at least one collection (constants need a scope).
    let mut reads: Vec<String> = defs
        .iter()
        .flat_map(|d| d.reads.iter().cloned())
        .filter(|r| !views.iter().any(|v| &v.name == r) && catalog.contains_key(r))
        .collect();
    reads.sort();
    reads.dedup();
    if reads.is_empty() {
        reads.push("spans".to_owned());
    }
    let dataflow = worker.next_dataflow_index();
    let built = worker.dataflow_named::<Time, _, _>(&format!("job {job}"), |scope| {
        let mut collections: HashMap<String, Rows<'_>> = HashMap::new();
        for name in &reads {
            let collection = catalog.get_mut(name).expect("checked above");
            let mut rows: Option<Rows<'_>> = None;
            for (_, trace) in collection.traces.iter_mut() {
                let imported = trace.import_named(scope, &format!("Import {name}")).as_collection(|row, _| row.clone());
                rows = Some(match rows {
                    None => imported,
                    Some(r) => r.concat(imported),
                });
            }
            if let Some(rows) = rows {
                collections.insert(name.clone(), rows);
            }
        }
        let mut renderer = Renderer::new(collections);
        let mut arranged = Vec::new();
        for def in &defs {
            let rows = renderer.render_view(def).map_err(|e| format!("view `{}`: {e}", def.name))?;
            arranged.push((
                def.name.clone(),
                def.schema.clone(),
                rows.arrange_by_self_named(&format!("Arrange {}", def.name)).trace,
            ));
        }
        let errors = renderer.errors().map(|e| e.arrange_by_self_named("Arrange view errors").trace);
        Ok::<_, String>((arranged, errors))
    });
    let (arranged, errors) = match built {
        Ok(b) => b,
        Err(e) => {
            worker.drop_dataflow(dataflow);
            return Err(e);
        }
    };
    for (name, schema, mut trace) in arranged {
        merge_eagerly(&mut trace);
        catalog.insert(name, Collection { schema, traces: vec![(Owner::Job(job), trace)] });
    }
    if let Some(mut trace) = errors
        && let Some(c) = catalog.get_mut(VIEW_ERRORS)
    {
        merge_eagerly(&mut trace);
        c.traces.push((Owner::Job(job), trace));
    }
    Ok(dataflow)
}

/// A subscription's dataflow: imports the collection's arrangements and copies their changes
/// at times after `as_of` (those at or before it are the snapshot, read from the arrangements
/// by [`snapshot_part`]) into a buffer; the probe tells how far the buffer is complete. The
/// arrangements' history is walked once in their batches, never copied.
#[allow(clippy::type_complexity)]
fn subscribe(
    worker: &mut timely::worker::Worker,
    catalog: &mut BTreeMap<String, Collection>,
    collection: &str,
    as_of: Time,
) -> Option<(usize, Rc<RefCell<Vec<(Row, Time, Diff)>>>, ProbeHandle<Time>)> {
    let entry = catalog.get_mut(collection)?;
    let dataflow = worker.next_dataflow_index();
    let buffer: Rc<RefCell<Vec<(Row, Time, Diff)>>> = Rc::default();
    let probe = ProbeHandle::new();
    worker.dataflow_named::<Time, _, _>(&format!("subscribe {collection}"), |scope| {
        for (_, trace) in entry.traces.iter_mut() {
            let sink = buffer.clone();
            trace
                .import_named(scope, &format!("Import {collection}"))
                .stream
                .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Changes", move |_, _| {
                    move |input, _output| {
                        input.for_each(|_time, data| {
                            let mut sink = sink.borrow_mut();
                            for span in data.iter() {
                                let Some(batch) = span.inner.as_ref() else { continue };
                                let mut cursor = batch.cursor();
                                while let Some(row) = cursor.get_key(batch) {
                                    while cursor.val_valid(batch) {
                                        cursor.map_times(batch, |time, diff| {
                                            if *time > as_of {
                                                sink.push((row.clone(), *time, *diff));
                                            }
                                        });
                                        cursor.step_val(batch);
                                    }
                                    cursor.step_key(batch);
                                }
                            }
                        });
                    }
                })
                .probe_with(&probe);
        }
    });
    Some((dataflow, buffer, probe))
}
