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
//! What a worker keeps between commands, and what it does with each, is a
//! [`compute_state::ComputeState`] (one `handle_*` per command, one `step_*` per part of a
//! round); its sources are in [`sources`], its reads of the arrangements in [`reads`].
//!
//! A job's views become one dataflow of their own that imports the arrangements it reads
//! (the built-in views' and earlier jobs'), renders the views with [`amx_sql::render`] and
//! arranges each; dropping the job drops that dataflow on every worker at the same point of
//! the command sequence, and with it the job's arrangements.

mod compute_state;
mod logging;
mod reads;
mod sources;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use amx_dataflows::packed::{PackedKeyBatcher, PackedKeySpine, PackedRow};
use amx_dataflows::render::{SOURCE_STATS, TableInput, VIEW_ERRORS, render, render_table};
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::datatypes::SchemaRef;
use amx_sql::render::{Renderer, Rows};
use amx_sql::views::ViewPlanner;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::TraceReader;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::progress::Antichain;

use crate::protocol::{Command, ControllerLink, JobId, Response, ViewSpec, Wire};
use compute_state::ComputeState;

/// A collection's arrangement: its rows, packed ([`PackedRow`]), as keys kept end to end in
/// one buffer per batch ([`amx_dataflows::packed::PackedRows`]), sharded over the workers by
/// hash. Ordered by the packed bytes, not by [`amx_dataflows::row::Row`]'s order:
/// the rows that begin with one datum are still together (a datum's bytes say where it ends,
/// so they share the prefix that is that datum packed alone, and a prefix sorts first), which
/// is what a peek's seek by the first column needs.
pub type RowTrace = TraceAgent<PackedKeySpine>;

/// Arranges a collection's rows for the catalog ([`RowTrace`]), each packed. A merge of
/// packed rows copies their bytes into one buffer, where a merge of `Vec<Datum>` rows cloned
/// every row and every text in it.
fn arrange_rows<'s>(rows: Rows<'s>, name: &str) -> Arranged<'s, RowTrace> {
    rows.map(|row| (PackedRow::pack(&row), ()))
        .arrange_named::<PackedKeyBatcher, PackedKeySpine>(name, PackedKeyBatcher::new)
}

/// Worker 0's input of the control dataflow: `(sequence number, the worker it is for (`None`:
/// every worker), the command's JSON text)`, at time = sequence number.
type CommandInput = InputSession<u64, (u64, Option<usize>, Wire), Diff>;

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
    /// Folds timely's and differential's logging streams into the introspection relations
    /// (`aimatrix_dataflows`, `aimatrix_operators`, `aimatrix_operator_durations`,
    /// `aimatrix_arrangements`) and the `aimatrix_arrangement_*` metrics. Default true;
    /// `aimatrix run`, which serves no queries of them, turns it off.
    pub introspection: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            poll_bytes: 1 << 20,
            max_record_bytes: amx_connectors::record::DEFAULT_MAX_RECORD_BYTES,
            batch_records: 50_000,
            introspection: true,
        }
    }
}

/// How long a worker with nothing to do parks.
/// (The controller wakes worker 0 when it sends a command; timely wakes a worker when data
/// arrives for it.)
pub(super) const PARK: Duration = Duration::from_millis(20);

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
pub fn run_worker(
    worker: &mut timely::worker::Worker,
    shared: Option<Arc<dyn ControllerLink>>,
    options: &WorkerOptions,
) {
    let index = worker.index();
    let peers = worker.peers();
    // Before any dataflow: timely hands out loggers when operators are built.
    let logging = options.introspection.then(|| logging::Logging::install(worker));

    // The control dataflow.
    let received: Rc<RefCell<Vec<(u64, Wire)>>> = Rc::default();
    let deliver = shared.clone();
    let sink = received.clone();
    let (cmd_in, mut resp_in, cmd_probe) = worker.dataflow_named::<u64, _, _>("control", move |scope| {
        let (cmd_in, commands) = scope.new_collection::<(u64, Option<usize>, Wire), Diff>();
        let probe = ProbeHandle::new();
        // A copy for every worker, or, moved, to the one it is for.
        commands
            .inner
            .flat_map(move |((seq, to, wire), time, diff)| {
                let copies: Vec<(usize, Wire)> = match to {
                    Some(w) => vec![(w, wire)],
                    None => (0..peers).map(|w| (w, wire.clone())).collect(),
                };
                copies.into_iter().map(move |(w, wire)| (w, seq, wire, time, diff))
            })
            .exchange(|(w, ..)| *w as u64)
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "DeliverCommands", move |_, _| {
                move |input, _output| {
                    input.for_each(|_time, data| {
                        let mut sink = sink.borrow_mut();
                        for (_, seq, wire, _time, diff) in data.drain(..) {
                            if diff > 0 {
                                sink.push((seq, wire));
                            }
                        }
                    });
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
        let (_, wire) = ready.remove(0);
        // The later ones are applied by the loop below, in order.
        received.borrow_mut().extend(ready);
        match wire.decode() {
            Ok(Command::CreateInstance { build, collections, views }) => {
                if let Err(why) = crate::protocol::check_build(&build) {
                    halt(index, &why);
                }
                break (collections, views);
            }
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
    let (inputs, agent_probe, builtin, failed) = worker.dataflow_named::<Time, _, _>("agent state", |scope| {
        let rendered = render(scope, &|name| arranged(name) || view_reads.iter().any(|r| r == name));
        let probe = ProbeHandle::new();
        let mut traces = Vec::new();
        let mut rows: HashMap<String, Rows<'_>> = HashMap::new();
        for (_index, name, relation) in rendered.relations {
            if arranged(name) {
                let trace = arrange_rows(relation.clone(), &format!("Arrange {name}"));
                trace.stream.clone().probe_with(&probe);
                traces.push((name.to_owned(), None, trace.trace));
            }
            rows.insert(name.to_owned(), relation);
        }
        // The instance's views, straight over the relations' rows; their error rows join the
        // built-in views' ones.
        let mut renderer = Renderer::new(rows);
        if let Some(errors) = rendered.errors {
            renderer.add_errors(errors);
        }
        renderer.share_projections(&planned);
        let mut failed = Vec::new();
        for def in &planned {
            match renderer.render_view(def) {
                Ok(view) => {
                    let trace = arrange_rows(view, &format!("Arrange {}", def.name));
                    trace.stream.clone().probe_with(&probe);
                    traces.push((def.name.clone(), Some(def.schema.clone()), trace.trace));
                }
                Err(e) => failed.push(format!("view `{}`: {e}", def.name)),
            }
        }
        if let Some(errors) = renderer.errors() {
            let trace = arrange_rows(errors, "Arrange view errors");
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

    let mut state =
        ComputeState::new(index, peers, options.clone(), shared, resp_in, inputs, agent_probe, catalog, logging);
    let mut park = PARK;
    'run: loop {
        // 1. Worker 0 sequences the controller's commands: command n at time n.
        sequence(commands.as_ref(), cmd_in.as_mut(), &mut next_seq);

        // 2. Apply every command the control dataflow has delivered completely, in sequence
        //    order; answer at once the peeks among them whose time has passed, rather than
        //    after the dataflows' next step (which under load can take milliseconds).
        let ready = take_ready(&received, &cmd_probe);
        let applied = !ready.is_empty();
        for (seq, wire) in ready {
            tracing::debug!(worker = index, seq, "applying command");
            let command: Command = match wire.decode() {
                Ok(c) => c,
                // Skipping it would leave this worker's state apart from the others'.
                Err(e) => halt(index, &format!("command {seq} from the controller does not read as a command ({e})")),
            };
            if state.handle_command(worker, command).is_break() {
                break 'run;
            }
        }
        if applied {
            state.step_peeks();
        }

        // 3. Read this worker's share of the file sources; close the epoch.
        let fed = state.step_sources();

        // 4. Run the dataflows.
        if fed {
            worker.step();
        } else {
            worker.step_or_park(Some(park));
        }

        // 5.–9. Answer the peeks, serve the subscriptions, compact, publish the frontiers and
        //    (every second) what the logging streams say.
        state.step_peeks();
        state.step_subscriptions(worker);
        state.step_compaction();
        park = state.step_publish().unwrap_or(PARK);
        state.step_progress();
        state.step_introspection();
    }
    // Shut down: drop every dataflow (the others do the same at the same command).
    drop(cmd_in);
    state.shutdown();
    for df in worker.installed_dataflows() {
        worker.drop_dataflow(df);
    }
}

/// Worker 0 sequences the controller's commands waiting in `commands`: command `n` enters the
/// control dataflow at time `n` (other workers have neither).
fn sequence(
    commands: Option<&std::sync::mpsc::Receiver<crate::protocol::Envelope>>,
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
/// How the panic of [`halt`] begins: a process's panic hook reports such a panic as the
/// condition it names, not as a bug.
pub const HALT: &str = "halt: ";

/// Stops worker `index` on a command it cannot apply as the other workers do: it panics, which
/// stops the process (`aimatrix serve` exits with code 70 at a worker's panic) rather than let
/// its state drift from theirs. A durable server's restart then recovers from the log.
fn halt(index: usize, why: &str) -> ! {
    tracing::error!(worker = index, "{why}; this process stops");
    panic!("{HALT}worker {index}: {why}")
}

fn take_ready(received: &RefCell<Vec<(u64, Wire)>>, probe: &ProbeHandle<u64>) -> Vec<(u64, Wire)> {
    let mut received = received.borrow_mut();
    received.sort_by_key(|(seq, _)| *seq);
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

/// What [`install_views`] built: the dataflow's index and the inputs of the relations the
/// job's sources declare, by name.
type Installed = (usize, Vec<(String, TableInput)>);

/// Renders a job's dataflow: the inputs of the relations its sources declare (`sources` with
/// a `relation`; their inputs start at `time`), and its views, which import the arrangements
/// they read; adds the relations' and the views' arrangements (and the views' error rows') to
/// the catalog.
fn install_views(
    worker: &mut timely::worker::Worker,
    catalog: &mut BTreeMap<String, Collection>,
    job: JobId,
    sources: &[crate::job::SourceConfig],
    views: &[ViewSpec],
    time: Time,
) -> Result<Installed, String> {
    let tables: Vec<(&amx_connectors::table::TableConfig, SchemaRef)> =
        sources.iter().filter_map(|s| Some((s.relation.as_ref()?, s.relation_schema()?.1))).collect();
    let schemas: Vec<(String, SchemaRef)> = catalog
        .iter()
        .map(|(n, c)| (n.clone(), c.schema.clone()))
        .chain(tables.iter().map(|(t, schema)| (t.name.clone(), schema.clone())))
        .collect();
    let defs = plan_views(&schemas, views)?;
    // What the views read from outside the job; at least one collection (constants need a
    // scope): any, when they read none (`run` arranges only what its queries read).
    let mut reads: Vec<String> = defs
        .iter()
        .flat_map(|d| d.reads.iter().cloned())
        .filter(|r| !views.iter().any(|v| &v.name == r) && catalog.contains_key(r))
        .collect();
    reads.sort();
    reads.dedup();
    if reads.is_empty()
        && tables.is_empty()
        && let Some(any) = catalog.keys().next()
    {
        reads.push(any.clone());
    }
    let dataflow = worker.next_dataflow_index();
    let built = worker.dataflow_named::<Time, _, _>(&format!("job {job}"), |scope| {
        let mut collections: HashMap<String, Rows<'_>> = HashMap::new();
        let mut inputs = Vec::new();
        let mut arranged = Vec::new();
        for (table, schema) in &tables {
            let (input, rows) = render_table(scope, &table.name, !table.key.is_empty(), time);
            let trace = arrange_rows(rows.clone(), &format!("Arrange {}", table.name)).trace;
            arranged.push((table.name.clone(), schema.clone(), trace));
            collections.insert(table.name.clone(), rows);
            inputs.push((table.name.clone(), input));
        }
        for name in &reads {
            let collection = catalog.get_mut(name).expect("checked above");
            let mut rows: Option<Rows<'_>> = None;
            for (_, trace) in collection.traces.iter_mut() {
                let imported =
                    trace.import_named(scope, &format!("Import {name}")).as_collection(|row, _| row.unpack());
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
        renderer.share_projections(&defs);
        for def in &defs {
            let rows = renderer.render_view(def).map_err(|e| format!("view `{}`: {e}", def.name))?;
            arranged.push((
                def.name.clone(),
                def.schema.clone(),
                arrange_rows(rows, &format!("Arrange {}", def.name)).trace,
            ));
        }
        let errors = renderer.errors().map(|e| arrange_rows(e, "Arrange view errors").trace);
        Ok::<_, String>((arranged, errors, inputs))
    });
    let (arranged, errors, inputs) = match built {
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
    Ok((dataflow, inputs))
}
