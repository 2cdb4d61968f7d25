//! One worker's state between commands, and what it does with each (as Materialize's
//! `src/compute/src/compute_state.rs`: one `handle_*` per [`Command`]), and with each round of
//! the worker loop (`step_*`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amx_dataflows::event::Event;
use amx_dataflows::render::Inputs;
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::{Diff, Time};
use differential_dataflow::input::InputSession;
use differential_dataflow::trace::TraceReader;
use timely::dataflow::ProbeHandle;
use timely::progress::Antichain;

use super::logging::Logging;
use super::reads::{read_at, snapshot_part, subscribe, upper_of, upper_with};
use super::sources::{FileSource, PushSource, SourceCounts};
use super::{Collection, Owner, WorkerOptions, install_views, respond};
use crate::job::SourceConfig;
use crate::protocol::{
    Command, ControllerLink, INTROSPECTION_INTERVAL, JobId, Response, SUBSCRIBE_CREDIT, SourceProgress, ViewSpec,
};

/// A [`Command::CatchUp`] waiting on one worker: the job, the wait id, and the job's file
/// sources this worker has not yet found at their end since.
struct CatchUp {
    job: JobId,
    wait: u64,
    sources: Vec<String>,
}

/// A job on one worker.
struct JobState {
    /// The dataflow of its views, if it has any.
    dataflow: Option<usize>,
    /// A `retractable` job: every event this worker has fed from its sources (+1 each), to
    /// retract when it is dropped with `retract`.
    ingested: Option<Vec<Event>>,
    /// The relations its sources declare (their inputs are in `inputs.tables`).
    tables: Vec<String>,
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
    /// When it arrived; a peek still waiting after [`SLOW_PEEK`] is logged (once).
    arrived: Instant,
    logged: bool,
    /// A part of a paged read ([`Command::PeekPart`]): the rows after this one.
    part: Option<Option<Row>>,
}

/// How long a peek may wait for its time before the worker logs it (at `warn`, with the
/// frontiers it waits on).
const SLOW_PEEK: Duration = Duration::from_secs(10);

/// How often, at most, worker 0 publishes the collections' frontiers (to
/// [`crate::controller::Controller`]'s reads and waits): 1 ms.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(1);

/// How often, at most, a worker reports its file sources' progress while it moves
/// ([`Response::Progress`]).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

/// How often a worker reports its file sources' progress when it has not moved (its rate, an
/// average since the worker began reading, moves on its own).
const PROGRESS_REFRESH: Duration = Duration::from_secs(1);

/// Everything one worker keeps between commands: the agent state's inputs, the catalog of
/// arrangements, the jobs with their sources and dataflows, the pending peeks and the
/// subscriptions, and the input time.
pub(super) struct ComputeState {
    /// This worker's index, and the number of workers (of every process).
    index: usize,
    peers: usize,
    options: WorkerOptions,
    /// The controller's side (worker 0 of process 0 only).
    shared: Option<Arc<dyn ControllerLink>>,
    /// Responses, to worker 0 and from there to the controller.
    resp_in: InputSession<u64, Response, Diff>,
    /// The agent state's inputs.
    inputs: Inputs,
    /// Passed by the agent state's arrangements: how far they have caught up with `inputs`.
    agent_probe: ProbeHandle<Time>,
    /// The readable collections.
    catalog: BTreeMap<String, Collection>,
    files: Vec<FileSource>,
    pushes: HashMap<String, PushSource>,
    jobs: HashMap<JobId, JobState>,
    subscriptions: HashMap<u64, Subscription>,
    peeks: Vec<PendingPeek>,
    catch_ups: Vec<CatchUp>,
    /// Per source: (records, decoded rows, errors, declared) since the last epoch.
    pending_stats: HashMap<String, SourceCounts>,
    /// Per source: what this worker has added to `aimatrix_source_stats` (retracted when the
    /// source's job is cancelled, so a later source of the same name starts from zero).
    stat_totals: HashMap<String, SourceCounts>,
    /// The compaction frontier the controller allows.
    since: Time,
    /// The compaction frontier the arrangements have (`since`, held back by pending reads).
    compacted: Time,
    /// Events of jobs dropped with `retract`, set aside until their `RetractJob`; while any
    /// are, this worker's input time holds (so the controller's retraction time is ahead).
    retracting: HashMap<JobId, Vec<Event>>,
    /// The input time: the last controller timestamp this worker was given (or the one
    /// after it, once what was inserted there is closed). A worker never picks a time of its
    /// own, so every worker of every process closes the same timestamps.
    epoch: Time,
    /// A time this worker may close its input to without waiting for the controller: one
    /// past the timestamp of a push, batch or retraction it inserted (the controller's
    /// timestamps are strictly increasing, so none later is below it).
    closable: Time,
    /// The epoch at which the file sources were last read: they read at most one batch per
    /// epoch (back-pressure: the next once the dataflow has caught up with it).
    read_epoch: Option<Time>,
    last_publish: Instant,
    /// The collections' frontiers as last published, in the catalog's order.
    published: Vec<Time>,
    /// When this worker last reported its file sources' progress, and what it reported
    /// (without rates).
    last_progress: Instant,
    reported: Vec<(JobId, String, SourceProgress)>,
    /// A file source ended or reached its current end since the last report: report at once
    /// (if the figures moved).
    progress_now: bool,
    /// The worker's logging streams, folded (see [`Logging`]), unless turned off.
    logging: Option<Logging>,
    last_report: Instant,
}

impl ComputeState {
    /// A worker's state once its agent state is rendered: `catalog` holds the agent state's
    /// arrangements, `inputs` its inputs (at time 0 until the controller's first timestamp).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        index: usize,
        peers: usize,
        options: WorkerOptions,
        shared: Option<Arc<dyn ControllerLink>>,
        resp_in: InputSession<u64, Response, Diff>,
        inputs: Inputs,
        agent_probe: ProbeHandle<Time>,
        catalog: BTreeMap<String, Collection>,
        logging: Option<Logging>,
    ) -> ComputeState {
        ComputeState {
            index,
            peers,
            options,
            shared,
            resp_in,
            inputs,
            agent_probe,
            catalog,
            files: Vec::new(),
            pushes: HashMap::new(),
            jobs: HashMap::new(),
            subscriptions: HashMap::new(),
            peeks: Vec::new(),
            catch_ups: Vec::new(),
            pending_stats: HashMap::new(),
            stat_totals: HashMap::new(),
            since: 0,
            compacted: 0,
            retracting: HashMap::new(),
            epoch: 0,
            closable: 0,
            read_epoch: None,
            last_publish: Instant::now() - Duration::from_secs(1),
            published: Vec::new(),
            last_progress: Instant::now() - PROGRESS_REFRESH,
            reported: Vec::new(),
            progress_now: false,
            logging,
            last_report: Instant::now() - INTROSPECTION_INTERVAL,
        }
    }

    /// Sends a response (see [`respond`]).
    fn respond(&mut self, response: Response) {
        respond(&mut self.resp_in, response);
    }

    /// Applies one command; `Break` at [`Command::Shutdown`].
    pub(super) fn handle_command(&mut self, worker: &mut timely::worker::Worker, command: Command) -> ControlFlow<()> {
        match command {
            Command::InstallJob { id, sources, views, retractable, access, files_by_server } => {
                let access = (!files_by_server).then_some(access);
                self.handle_install_job(worker, id, sources, &views, retractable, access)
            }
            Command::DropJob { id, retract, wait } => self.handle_drop_job(worker, id, retract, wait),
            Command::CatchUp { job, wait } => self.handle_catch_up(job, wait),
            Command::EndOfInput { job } => self.handle_end_of_input(job),
            Command::CreateInstance { .. } => {
                tracing::error!(worker = self.index, "CreateInstance after the first command; skipped")
            }
            Command::RetractJob { id, at, wait } => self.handle_retract_job(id, at, wait),
            Command::AdvanceTo { time } => self.advance_to(time),
            Command::Ingest { id, source, body, oversized, at, first_line } => {
                self.advance_to(at);
                self.handle_ingest(id, &source, &body, first_line, &oversized);
                self.closable = self.closable.max(at + 1);
            }
            Command::IngestRecords { id, source, records, at, first } => {
                self.advance_to(at);
                self.handle_ingest_records(id, &source, records, first);
                self.closable = self.closable.max(at + 1);
            }
            Command::Restore { events, stats, at, kept_for, wait } => {
                self.advance_to(at);
                let mut keep = kept_for.and_then(|job| self.jobs.get_mut(&job)).and_then(|j| j.ingested.as_mut());
                for (event, diff) in events {
                    if let Some(keep) = keep.as_deref_mut() {
                        keep.extend(std::iter::repeat_n(event.clone(), diff.max(0) as usize));
                    }
                    self.inputs.update(event, diff);
                }
                for (source, (records, decoded, errors)) in stats {
                    let pending = self.pending_stats.entry(source).or_default();
                    *pending = (pending.0 + records, pending.1 + decoded, pending.2 + errors, pending.3);
                }
                // Not closed here: more parts of the round come at `at`, and the controller
                // closes it (the next round's timestamp, or `AdvanceTo` after the restart).
                if let Some(wait) = wait {
                    let upper = self.inputs.time() + 1;
                    self.respond(Response::Applied { id: wait, upper });
                }
            }
            Command::PeekPart { id, collection, as_of, after } => {
                let (arrived, logged, part) = (Instant::now(), false, Some(after));
                let (projection, filter, limit) = (None, Vec::new(), None);
                self.peeks.push(PendingPeek { id, collection, as_of, projection, filter, limit, arrived, logged, part })
            }
            Command::ReadKept { id } => {
                let mut counts: HashMap<Row, Diff> = HashMap::new();
                for (job, state) in &self.jobs {
                    for event in state.ingested.iter().flatten() {
                        if let Some((relation, row)) = event.to_relation_row() {
                            let mut kept = vec![Datum::Int(job.0 as i64), Datum::Text(relation.to_owned())];
                            kept.extend(row);
                            *counts.entry(kept).or_default() += 1;
                        }
                    }
                }
                self.respond(Response::Peek { id, rows: counts.into_iter().collect() });
            }
            Command::Peek { id, collection, as_of, projection, filter, limit } => {
                let (arrived, logged) = (Instant::now(), false);
                let part = None;
                self.peeks.push(PendingPeek { id, collection, as_of, projection, filter, limit, arrived, logged, part })
            }
            Command::Subscribe { id, collection, as_of } => self.handle_subscribe(worker, id, collection, as_of),
            Command::SubscribeCredit { id, worker: to } => self.handle_subscribe_credit(id, to),
            Command::Unsubscribe { id } => {
                if let Some(sub) = self.subscriptions.remove(&id) {
                    worker.drop_dataflow(sub.dataflow);
                }
            }
            Command::AllowCompaction { since } => self.since = self.since.max(since),
            Command::Shutdown => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    /// Moves the input time to `time` if it is later (a controller's timestamp), unless the
    /// worker holds its time for a retraction: the counters of what the sources fed in the
    /// epoch it closes go in first, at that epoch.
    fn advance_to(&mut self, time: Time) {
        if time > self.epoch && self.retracting.is_empty() {
            for (source, counts) in self.pending_stats.drain() {
                let total = self.stat_totals.entry(source.clone()).or_default();
                *total = (total.0 + counts.0, total.1 + counts.1, total.2 + counts.2, total.3 + counts.3);
                self.inputs.source_stats.update(source, counts);
            }
            self.epoch = time;
            self.inputs.advance_to(time);
        }
    }

    /// [`Command::InstallJob`]: opens the job's sources and renders its views. File sources
    /// read what `access` admits; without it the server reads them (their records arrive as
    /// pushes do).
    fn handle_install_job(
        &mut self,
        worker: &mut timely::worker::Worker,
        id: JobId,
        sources: Vec<SourceConfig>,
        views: &[ViewSpec],
        retractable: bool,
        access: Option<amx_connectors::FileAccess>,
    ) {
        // The relations the sources declare, and the views, in one dataflow; the sources feed
        // the relations' inputs from their first records on.
        let mut tables = Vec::new();
        let declares = sources.iter().any(|s| s.relation.is_some());
        let dataflow = if views.is_empty() && !declares {
            None
        } else {
            match install_views(worker, &mut self.catalog, id, &sources, views, self.inputs.time()) {
                Ok((df, inputs)) => {
                    for (name, input) in inputs {
                        tables.push(name.clone());
                        self.inputs.tables.insert(name, input);
                    }
                    Some(df)
                }
                Err(error) => {
                    self.respond(Response::JobFailed { job: id, error });
                    None
                }
            }
        };
        for source in sources {
            match super::sources::open(id, source, self.index, self.peers, &self.options, access.as_ref()) {
                Ok(opened) => {
                    // Worker 0 declares the source: it has its counters row before any record.
                    if self.index == 0 {
                        self.pending_stats.entry(opened.name().to_owned()).or_default().3 += 1;
                    }
                    match opened {
                        super::sources::Opened::File(file) => self.files.push(*file),
                        super::sources::Opened::Push(name, push) => {
                            self.pushes.insert(name, push);
                        }
                    }
                }
                Err((source, error)) => self.respond(Response::SourceFailed { job: id, source, error }),
            }
        }
        self.jobs.insert(id, JobState { dataflow, ingested: retractable.then(Vec::new), tables });
        // The job's new arrangements compact as far as the others.
        if self.compacted > 0 {
            self.compact_to(self.compacted);
        }
    }

    /// [`Command::DropJob`]: stops the job's sources, drops its dataflow and arrangements and
    /// retracts its sources' counters; with `retract`, sets its events aside (and holds the
    /// input time) until [`Command::RetractJob`].
    fn handle_drop_job(&mut self, worker: &mut timely::worker::Worker, id: JobId, retract: bool, wait: u64) {
        if retract {
            let ingested = self.jobs.get_mut(&id).and_then(|j| j.ingested.take()).unwrap_or_default();
            self.retracting.insert(id, ingested);
        }
        let names: Vec<String> = self
            .files
            .iter()
            .filter(|f| f.job == id)
            .map(|f| f.name.clone())
            .chain(self.pushes.iter().filter(|(_, p)| p.job == id).map(|(n, _)| n.clone()))
            .collect();
        for name in names {
            self.pending_stats.remove(&name);
            if let Some(t) = self.stat_totals.remove(&name) {
                self.inputs.source_stats.update(name, (-t.0, -t.1, -t.2, -t.3));
            }
        }
        self.files.retain(|f| f.job != id);
        self.pushes.retain(|_, p| p.job != id);
        // Its sources are gone: nothing more to catch up with.
        for c in self.catch_ups.iter_mut().filter(|c| c.job == id) {
            c.sources.clear();
        }
        for collection in self.catalog.values_mut() {
            collection.traces.retain(|(owner, _)| *owner != Owner::Job(id));
        }
        self.catalog.retain(|_, c| !c.traces.is_empty());
        if let Some(job) = self.jobs.remove(&id) {
            for table in &job.tables {
                self.inputs.tables.remove(table);
            }
            if let Some(df) = job.dataflow {
                worker.drop_dataflow(df);
            }
        }
        let upper = self.inputs.time() + 1;
        self.respond(Response::Applied { id: wait, upper });
    }

    /// [`Command::CatchUp`]: answered once this worker has found each of the job's file
    /// sources at its end.
    fn handle_catch_up(&mut self, job: JobId, wait: u64) {
        let sources = self.files.iter().filter(|f| f.job == job && !f.done).map(|f| f.name.clone()).collect();
        self.catch_ups.push(CatchUp { job, wait, sources });
    }

    /// [`Command::EndOfInput`]: the job's following file sources read to their end and stop.
    fn handle_end_of_input(&mut self, job: JobId) {
        for source in self.files.iter_mut().filter(|f| f.job == job) {
            source.follow = false;
        }
    }

    /// [`Command::RetractJob`]: retracts the events set aside at its drop, at time `at`.
    fn handle_retract_job(&mut self, id: JobId, at: Time, wait: u64) {
        if let Some(events) = self.retracting.remove(&id) {
            // Every worker held its time since the drop, and `at` (a controller timestamp) is
            // past the latest of them: all retract at `at`.
            if at > self.epoch {
                self.epoch = at;
                self.inputs.advance_to(at);
            } else if at < self.epoch {
                tracing::error!(worker = self.index, job = %id, at, epoch = self.epoch, "retraction time already passed");
            }
            tracing::debug!(worker = self.index, job = %id, events = events.len(), at = self.epoch, "retracting a job's events");
            for event in events {
                self.inputs.update(event, -1);
            }
            self.closable = self.closable.max(self.epoch + 1);
        }
        let upper = self.epoch + 1;
        self.respond(Response::Applied { id: wait, upper });
    }

    /// [`Command::Ingest`]: decodes a push into the inputs and answers with its outcome.
    fn handle_ingest(&mut self, id: u64, source: &str, body: &str, first_line: u64, oversized: &BTreeMap<u64, u64>) {
        let mut outcome = super::sources::PushOutcome::default();
        if let Some(push) = self.pushes.get_mut(source) {
            let keep = self.jobs.get_mut(&push.job).and_then(|j| j.ingested.as_mut());
            let stats = self.pending_stats.entry(source.to_owned()).or_default();
            let limit = self.options.max_record_bytes;
            outcome = push.decode(source, body, first_line, oversized, limit, stats, keep, &mut self.inputs);
        }
        let upper = self.inputs.time() + 1;
        let super::sources::PushOutcome { accepted, rejected, error_rows, errors } = outcome;
        self.respond(Response::Ingested { id, upper, accepted, rejected, error_rows, errors });
    }

    /// [`Command::IngestRecords`]: decodes a Kafka source's batch into the inputs and
    /// answers with its outcome.
    fn handle_ingest_records(&mut self, id: u64, source: &str, records: Vec<amx_connectors::Record>, first: u64) {
        let mut outcome = super::sources::PushOutcome::default();
        if let Some(push) = self.pushes.get_mut(source) {
            let keep = self.jobs.get_mut(&push.job).and_then(|j| j.ingested.as_mut());
            let stats = self.pending_stats.entry(source.to_owned()).or_default();
            let numbered = records.into_iter().enumerate().map(|(i, r)| (first + i as u64, r));
            outcome = push.decode_records(source, numbered, stats, keep, &mut self.inputs);
        }
        let upper = self.inputs.time() + 1;
        let super::sources::PushOutcome { accepted, rejected, error_rows, errors } = outcome;
        self.respond(Response::Ingested { id, upper, accepted, rejected, error_rows, errors });
    }

    /// [`Command::Subscribe`]: a dataflow for the changes; the snapshot is read in parts.
    fn handle_subscribe(&mut self, worker: &mut timely::worker::Worker, id: u64, collection: String, as_of: Time) {
        match subscribe(worker, &mut self.catalog, &collection, as_of) {
            Some((dataflow, buffer, probe)) => {
                let snapshot = Some(SnapshotRead { after: None, credit: SUBSCRIBE_CREDIT });
                let last_upper = None;
                let sub = Subscription { collection, as_of, snapshot, dataflow, buffer, probe, last_upper };
                self.subscriptions.insert(id, sub);
            }
            // No such collection (any more): closed at once.
            None => {
                let worker = self.index;
                self.respond(Response::SubscribeSnapshot { id, worker, rows: Vec::new(), done: true });
                self.respond(Response::Subscribe { id, worker, updates: Vec::new(), upper: Time::MAX });
            }
        }
    }

    /// [`Command::SubscribeCredit`]: one more snapshot part may be sent.
    fn handle_subscribe_credit(&mut self, id: u64, to: usize) {
        if to == self.index
            && let Some(read) = self.subscriptions.get_mut(&id).and_then(|s| s.snapshot.as_mut())
        {
            read.credit += 1;
        }
    }

    /// Closes the epoch of this round's pushes and batches; reads this worker's share of the
    /// file sources (one batch per epoch, once the dataflow has caught up with the previous
    /// epochs: back-pressure), at the current epoch, which the controller's next
    /// [`Command::AdvanceTo`] closes; answers the catch-ups that are complete. Returns whether
    /// records were fed.
    pub(super) fn step_sources(&mut self) -> bool {
        if self.closable > self.epoch {
            self.advance_to(self.closable);
        }
        let mut fed = false;
        // A file source was read to its end this round.
        let mut ended = false;
        // File sources found at their end by this round's polls.
        let mut at_end: Vec<(JobId, String)> = Vec::new();
        if self.read_epoch.is_none_or(|e| e < self.epoch) && !self.agent_probe.less_than(&self.epoch) {
            let batch_share = (self.options.batch_records / self.peers.max(1)).max(1);
            for source in self.files.iter_mut().filter(|f| !f.done) {
                let keep = self.jobs.get_mut(&source.job).and_then(|j| j.ingested.as_mut());
                let stats = self.pending_stats.entry(source.name.clone()).or_default();
                let polled = source.poll(batch_share, stats, keep, &mut self.inputs);
                fed |= polled.fed;
                if polled.at_end {
                    at_end.push((source.job, source.name.clone()));
                }
                if let Some(error) = polled.error {
                    let (job, source) = (source.job, source.name.clone());
                    respond(&mut self.resp_in, Response::SourceFailed { job, source, error });
                } else if source.done {
                    // What it read is in the current epoch: complete once the controller's
                    // next timestamp closes it.
                    ended = true;
                    let (job, source) = (source.job, source.name.clone());
                    respond(&mut self.resp_in, Response::SourceDone { job, source, upper: self.epoch + 1 });
                }
            }
            if fed {
                self.read_epoch = Some(self.epoch);
            }
            // Where it ended is reported now, not at the next interval.
            self.progress_now |= ended || !at_end.is_empty();
        }
        // What this round read is at time `epoch`: a catch-up whose sources are all at their
        // end is answered with `epoch + 1`.
        for (job, name) in &at_end {
            for c in self.catch_ups.iter_mut().filter(|c| c.job == *job) {
                c.sources.retain(|s| s != name);
            }
        }
        let upper = self.epoch + 1;
        let resp_in = &mut self.resp_in;
        let mut answered = false;
        self.catch_ups.retain(|c| {
            let sources_left = !c.sources.is_empty();
            if !sources_left {
                respond(resp_in, Response::Applied { id: c.wait, upper });
                answered = true;
            }
            sources_left
        });
        if fed || ended || answered {
            self.respond(Response::AwaitingTimestamp { worker: self.index });
        }
        fed
    }

    /// Answers the peeks whose time every arrangement they read has passed.
    pub(super) fn step_peeks(&mut self) {
        let mut i = 0;
        while i < self.peeks.len() {
            let peek = &self.peeks[i];
            let ready = match self.catalog.get_mut(&peek.collection) {
                Some(c) => c.traces.iter_mut().all(|(_, t)| upper_of(t) > peek.as_of),
                None => true,
            };
            if !ready {
                let peek = &mut self.peeks[i];
                if !peek.logged && peek.arrived.elapsed() >= SLOW_PEEK {
                    peek.logged = true;
                    let uppers: Vec<Time> = self
                        .catalog
                        .get_mut(&peek.collection)
                        .map(|c| c.traces.iter_mut().map(|(_, t)| upper_of(t)).collect())
                        .unwrap_or_default();
                    tracing::warn!(
                        worker = self.index, collection = %peek.collection, as_of = peek.as_of, ?uppers,
                        epoch = self.epoch, "a peek has waited {SLOW_PEEK:?} for its time"
                    );
                }
                i += 1;
                continue;
            }
            let peek = self.peeks.swap_remove(i);
            if let Some(after) = &peek.part {
                let rows = match self.catalog.get_mut(&peek.collection) {
                    Some(c) => snapshot_part(&mut c.traces, peek.as_of, after.as_ref()).0,
                    None => Vec::new(),
                };
                self.respond(Response::Peek { id: peek.id, rows });
                continue;
            }
            let mut rows = HashMap::new();
            if let Some(c) = self.catalog.get_mut(&peek.collection) {
                let mut limit = peek.limit.unwrap_or(usize::MAX);
                for (_, trace) in c.traces.iter_mut() {
                    read_at(trace, peek.as_of, peek.projection.as_deref(), &peek.filter, &mut limit, &mut rows);
                }
            }
            let mut rows: Vec<(Row, Diff)> = rows.into_iter().filter(|(_, c)| *c != 0).collect();
            rows.sort();
            tracing::debug!(worker = self.index, peek = peek.id, rows = rows.len(), "peek answered");
            self.respond(Response::Peek { id: peek.id, rows });
        }
    }

    /// Sends the next parts of the subscriptions' snapshots the subscribers are ready for,
    /// and forwards their changes, with this worker's frontier; drops the dataflows of the
    /// subscriptions whose collection was dropped.
    pub(super) fn step_subscriptions(&mut self, worker: &mut timely::worker::Worker) {
        let index = self.index;
        let mut closed = Vec::new();
        for (id, sub) in self.subscriptions.iter_mut() {
            if let Some(read) = sub.snapshot.as_mut() {
                let ready = match self.catalog.get_mut(&sub.collection) {
                    Some(c) => c.traces.iter_mut().all(|(_, t)| upper_of(t) > sub.as_of),
                    None => true,
                };
                let mut done = false;
                while ready && read.credit > 0 && !done {
                    let rows;
                    (rows, done) = match self.catalog.get_mut(&sub.collection) {
                        Some(c) => snapshot_part(&mut c.traces, sub.as_of, read.after.as_ref()),
                        // Dropped: the changes end the subscription.
                        None => (Vec::new(), true),
                    };
                    read.credit -= 1;
                    read.after = rows.last().map(|(row, _)| row.clone());
                    tracing::debug!(worker = index, subscription = id, rows = rows.len(), done, "snapshot part");
                    respond(&mut self.resp_in, Response::SubscribeSnapshot { id: *id, worker: index, rows, done });
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
                respond(&mut self.resp_in, Response::Subscribe { id: *id, worker: index, updates, upper });
            }
            if upper == Time::MAX {
                if sub.snapshot.take().is_some() {
                    // Dropped while its snapshot was read: the snapshot ends here.
                    let rows = Vec::new();
                    respond(
                        &mut self.resp_in,
                        Response::SubscribeSnapshot { id: *id, worker: index, rows, done: true },
                    );
                }
                closed.push(*id);
            }
        }
        for id in closed {
            if let Some(sub) = self.subscriptions.remove(&id) {
                worker.drop_dataflow(sub.dataflow);
            }
        }
    }

    /// Compaction: up to what the controller allows, but never past a pending peek's time or
    /// a snapshot being read.
    pub(super) fn step_compaction(&mut self) {
        let snapshots = self.subscriptions.values().filter(|s| s.snapshot.is_some()).map(|s| s.as_of);
        let hold = self.peeks.iter().map(|p| p.as_of).chain(snapshots).min().unwrap_or(Time::MAX);
        let allowed = self.since.min(hold);
        if allowed > self.compacted {
            self.compacted = allowed;
            self.compact_to(allowed);
        }
    }

    /// Sets every arrangement's logical compaction frontier to `since`.
    fn compact_to(&mut self, since: Time) {
        let frontier = Antichain::from_elem(since);
        for collection in self.catalog.values_mut() {
            for (_, trace) in collection.traces.iter_mut() {
                trace.set_logical_compaction(frontier.borrow());
            }
        }
    }

    /// Worker 0 publishes the collections' frontiers (at most once every
    /// [`PUBLISH_INTERVAL`]). Returns how long the worker may park at most before it
    /// steps again: `Some` when frontiers moved since the last publish but the interval is not
    /// over, so that they are published when it is, not when something else wakes the worker
    /// (which, idle, parks for up to [`super::PARK`]: a write was seen a park late).
    pub(super) fn step_publish(&mut self) -> Option<Duration> {
        let shared = self.shared.as_ref().filter(|_| self.index == 0)?;
        // A collection's frontier: the least of its arrangements'. Read at every turn of the
        // worker's loop, so into one reused buffer.
        let mut scratch = Antichain::new();
        let mut upper = |c: &mut super::Collection| {
            c.traces.iter_mut().map(|(_, t)| upper_with(t, &mut scratch)).min().unwrap_or(Time::MAX)
        };
        let since = self.last_publish.elapsed();
        if since < PUBLISH_INTERVAL {
            let moved = self.catalog.len() != self.published.len()
                || self.catalog.values_mut().zip(&self.published).any(|(c, published)| upper(c) != *published);
            return moved.then(|| PUBLISH_INTERVAL - since);
        }
        let uppers: Vec<Time> = self.catalog.values_mut().map(upper).collect();
        self.last_publish = Instant::now();
        let named = self.catalog.keys().cloned().zip(uppers.iter().copied()).collect::<HashMap<String, Time>>();
        shared.publish(named);
        self.published = uppers;
        None
    }

    /// Reports how far this worker has read its shares of its file sources
    /// ([`Response::Progress`]): when the figures moved, at most every [`PROGRESS_INTERVAL`]
    /// (at once after a source ended or reached its current end), and every
    /// [`PROGRESS_REFRESH`] in any case. Every worker of every process reports its own: the
    /// controller sums them.
    pub(super) fn step_progress(&mut self) {
        if self.files.is_empty() {
            return;
        }
        let since = self.last_progress.elapsed();
        if since < PROGRESS_INTERVAL && !self.progress_now {
            return;
        }
        self.progress_now = false;
        let sources: Vec<(JobId, String, SourceProgress)> =
            self.files.iter().map(|f| (f.job, f.name.clone(), f.progress())).collect();
        let now: Vec<(JobId, String, SourceProgress)> = sources
            .iter()
            .map(|(job, name, p)| (*job, name.clone(), SourceProgress { rate_bytes_per_s: None, eta_ms: None, ..*p }))
            .collect();
        if now == self.reported && since < PROGRESS_REFRESH {
            return;
        }
        self.reported = now;
        self.last_progress = Instant::now();
        self.respond(Response::Progress { worker: self.index, sources });
    }

    /// Every [`INTROSPECTION_INTERVAL`], reports what this worker's logging says
    /// ([`Response::Introspection`]).
    pub(super) fn step_introspection(&mut self) {
        let Some(logging) = &self.logging else { return };
        if self.last_report.elapsed() < INTROSPECTION_INTERVAL {
            return;
        }
        self.last_report = Instant::now();
        let report = logging.report(&mut self.catalog);
        self.respond(Response::Introspection { worker: self.index, report });
    }

    /// Drops every arrangement and input (at [`Command::Shutdown`]; the other workers do the
    /// same at the same command).
    pub(super) fn shutdown(self) {
        drop(self.inputs);
        drop(self.catalog);
    }
}
