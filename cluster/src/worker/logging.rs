//! A worker's own logging streams — timely's `timely` (operators, channels, messages,
//! scheduling) and differential's `differential/arrange` (batches, merges, drops) — folded
//! into what the introspection relations `aimatrix_dataflows`, `aimatrix_operators`,
//! `aimatrix_operator_durations` and `aimatrix_arrangements` show, as Materialize builds its
//! `mz_introspection` relations from the same streams
//! (`src/compute/src/logging/{timely,differential}.rs`).
//!
//! The loggers are installed before the worker builds any dataflow (timely hands loggers out
//! when an operator is built) and fold every event into counters at once: nothing is kept per
//! event. Differential's batch, merge and drop events balance (its `DifferentialEvent`
//! documentation): an arrangement holds the updates of the batches it was given, minus those
//! of the batches a completed merge replaced, plus the merged batch's, minus those of the
//! batches dropped with it. A dropped dataflow logs one `Shutdown` (for the dataflow, not for
//! each operator): its operators, channels and arrangements go with it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use amx_dataflows::Time;
use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use differential_dataflow::trace::TraceReader;
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

use super::{Collection, RowTrace};
use crate::protocol::{ArrangementReport, OperatorReport, WorkerReport};

/// An operator, as its logging tells it.
#[derive(Debug)]
struct Operator {
    address: Vec<usize>,
    name: String,
    activations: u64,
    elapsed: Duration,
    /// When it was last scheduled, until it stops.
    started: Option<Duration>,
    records_received: u64,
    /// Its activations by how long each took: the count of those of at most `ns` (a power of
    /// two) and more than half that, by `ns` ([`duration_bucket`]).
    durations: BTreeMap<u64, u64>,
}

/// The bucket of an activation of `elapsed`: the least power of two (ns) that is at least as
/// long, as Materialize's `mz_compute_operator_durations_histogram` buckets them.
fn duration_bucket(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1).checked_next_power_of_two().unwrap_or(1 << 63)
}

/// An arrangement's batches and updates.
#[derive(Debug, Default)]
struct Arrangement {
    records: i64,
    batches: i64,
}

/// Where a channel delivers.
#[derive(Debug)]
enum Target {
    /// An operator, by id.
    Operator(usize),
    /// An operator not announced yet when the channel was, by address.
    Address(Vec<usize>),
    /// Its scope's outputs.
    Boundary,
}

/// What the logging streams said so far.
#[derive(Debug, Default)]
struct LogState {
    operators: HashMap<usize, Operator>,
    by_address: HashMap<Vec<usize>, usize>,
    /// Channel id → its dataflow's index and the operator it delivers to.
    channels: HashMap<usize, (usize, Target)>,
    arrangements: HashMap<usize, Arrangement>,
}

impl LogState {
    fn timely(&mut self, time: Duration, event: TimelyEvent) {
        match event {
            TimelyEvent::Operates(e) => {
                self.by_address.insert(e.addr.clone(), e.id);
                let operator = Operator {
                    address: e.addr,
                    name: e.name,
                    activations: 0,
                    elapsed: Duration::ZERO,
                    started: None,
                    records_received: 0,
                    durations: BTreeMap::new(),
                };
                self.operators.insert(e.id, operator);
            }
            TimelyEvent::Channels(e) => {
                let dataflow = e.scope_addr.first().copied().unwrap_or(usize::MAX);
                // Index 0 of a scope is the scope itself (its inputs and outputs).
                let target = (e.target.0 != 0).then(|| {
                    let mut address = e.scope_addr;
                    address.push(e.target.0);
                    address
                });
                self.channels.insert(e.id, (dataflow, target.map_or(Target::Boundary, Target::Address)));
            }
            TimelyEvent::Messages(e) if !e.is_send => {
                let Some((_, target)) = self.channels.get_mut(&e.channel) else { return };
                // A channel is announced before the operator it feeds: resolved at its first
                // message.
                if let Target::Address(address) = target
                    && let Some(id) = self.by_address.get(address)
                {
                    *target = Target::Operator(*id);
                }
                if let Target::Operator(id) = target
                    && let Some(operator) = self.operators.get_mut(id)
                {
                    operator.records_received += u64::try_from(e.record_count).unwrap_or(0);
                }
            }
            TimelyEvent::Schedule(e) => {
                if let Some(operator) = self.operators.get_mut(&e.id) {
                    match e.start_stop {
                        StartStop::Start => operator.started = Some(time),
                        StartStop::Stop => {
                            if let Some(start) = operator.started.take() {
                                let elapsed = time.saturating_sub(start);
                                operator.elapsed += elapsed;
                                operator.activations += 1;
                                *operator.durations.entry(duration_bucket(elapsed)).or_default() += 1;
                            }
                        }
                    }
                }
            }
            TimelyEvent::Shutdown(e) => self.shutdown(e.id),
            _ => {}
        }
    }

    /// Forgets operator `id`, and, when it is a dataflow, every operator, channel and
    /// arrangement in it.
    fn shutdown(&mut self, id: usize) {
        let Some(operator) = self.operators.remove(&id) else { return };
        self.by_address.remove(&operator.address);
        self.arrangements.remove(&id);
        if let [dataflow] = operator.address[..] {
            let gone: Vec<usize> = self
                .operators
                .iter()
                .filter(|(_, o)| o.address.first() == Some(&dataflow))
                .map(|(id, _)| *id)
                .collect();
            for id in &gone {
                if let Some(operator) = self.operators.remove(id) {
                    self.by_address.remove(&operator.address);
                }
                self.arrangements.remove(id);
            }
            self.channels.retain(|_, (d, _)| *d != dataflow);
        }
    }

    fn differential(&mut self, event: DifferentialEvent) {
        // Events of an operator already gone (its spine dropped after its dataflow) are not
        // counted again.
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (operator, records, batches) = match event {
            DifferentialEvent::Batch(e) => (e.operator, count(e.length), 1),
            DifferentialEvent::Merge(e) => match e.complete {
                Some(merged) => (e.operator, count(merged) - count(e.length1) - count(e.length2), -1),
                None => return,
            },
            DifferentialEvent::Drop(e) => (e.operator, -count(e.length), -1),
            _ => return,
        };
        if self.operators.contains_key(&operator) {
            let arrangement = self.arrangements.entry(operator).or_default();
            arrangement.records += records;
            arrangement.batches += batches;
        }
    }
}

/// A worker's logging: installed with [`Logging::install`], read with [`Logging::report`].
pub(super) struct Logging {
    state: Rc<RefCell<LogState>>,
}

impl Logging {
    /// Installs the loggers on `worker`; call it before the worker builds any dataflow.
    pub(super) fn install(worker: &mut timely::worker::Worker) -> Logging {
        let state: Rc<RefCell<LogState>> = Rc::default();
        if let Some(mut registry) = worker.log_register() {
            let timely = state.clone();
            registry.insert::<TimelyEventBuilder, _>("timely", move |_, events| {
                if let Some(events) = events {
                    let mut state = timely.borrow_mut();
                    for (time, event) in events.drain(..) {
                        state.timely(time, event);
                    }
                }
            });
            let differential = state.clone();
            registry.insert::<DifferentialEventBuilder, _>("differential/arrange", move |_, events| {
                if let Some(events) = events {
                    let mut state = differential.borrow_mut();
                    for (_, event) in events.drain(..) {
                        state.differential(event);
                    }
                }
            });
        }
        Logging { state }
    }

    /// The worker's operators and arrangements now; the arrangements of `catalog`'s
    /// collections are named and their bytes estimated.
    pub(super) fn report(&self, catalog: &mut BTreeMap<String, Collection>) -> WorkerReport {
        let mut named: HashMap<usize, (String, u64)> = HashMap::new();
        for (name, collection) in catalog.iter_mut() {
            for (_, trace) in collection.traces.iter_mut() {
                named.insert(trace.operator().global_id, (name.clone(), estimated_bytes(trace)));
            }
        }
        let state = self.state.borrow();
        let operators = state
            .operators
            .iter()
            .map(|(id, o)| OperatorReport {
                id: *id,
                address: o.address.clone(),
                name: o.name.clone(),
                activations: o.activations,
                elapsed_ns: u64::try_from(o.elapsed.as_nanos()).unwrap_or(u64::MAX),
                records_received: o.records_received,
                durations: o.durations.iter().map(|(ns, n)| (*ns, *n)).collect(),
            })
            .collect();
        let mut arrangements: Vec<ArrangementReport> = state
            .arrangements
            .iter()
            .map(|(operator, a)| {
                let (collection, bytes) = named.remove(operator).unzip();
                ArrangementReport { operator: *operator, records: a.records, batches: a.batches, collection, bytes }
            })
            .collect();
        // The catalog's arrangements that have not had a batch yet.
        arrangements.extend(named.into_iter().map(|(operator, (collection, bytes))| ArrangementReport {
            operator,
            records: 0,
            batches: 0,
            collection: Some(collection),
            bytes: Some(bytes),
        }));
        WorkerReport { operators, arrangements }
    }
}

/// `trace`'s bytes: per batch, what its rows' container holds allocated (their bytes and
/// offsets: [`amx_dataflows::packed::PackedRows::allocated_bytes`]), plus a time and a
/// difference per update.
fn estimated_bytes(trace: &mut RowTrace) -> u64 {
    let per_update = (std::mem::size_of::<Time>() + std::mem::size_of::<amx_dataflows::Diff>()) as u64;
    let mut bytes = 0u64;
    trace.map_spans(|span| {
        let Some(batch) = &span.inner else { return };
        bytes += batch.storage.keys.allocated_bytes() as u64 + per_update * batch.updates as u64;
    });
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::logging::{BatchEvent, DropEvent, MergeEvent};
    use timely::logging::{OperatesEvent, ScheduleEvent, ShutdownEvent};

    fn operates(state: &mut LogState, id: usize, addr: &[usize], name: &str) {
        state.timely(
            Duration::ZERO,
            TimelyEvent::Operates(OperatesEvent { id, addr: addr.to_vec(), name: name.into() }),
        );
    }

    /// Batches, merges and drops balance as differential documents: the counts follow by hand.
    #[test]
    fn an_arrangement_counts_what_its_batches_hold() {
        let mut state = LogState::default();
        operates(&mut state, 1, &[0], "job 1");
        operates(&mut state, 2, &[0, 1], "Arrange v");
        for length in [10, 5, 0] {
            state.differential(DifferentialEvent::Batch(BatchEvent { operator: 2, length }));
        }
        // A merge that starts changes nothing; one that completes replaces two batches by one
        // (10 + 5 updates consolidated into 12).
        let merge = |complete| MergeEvent { operator: 2, scale: 1, length1: 10, length2: 5, complete };
        state.differential(DifferentialEvent::Merge(merge(None)));
        assert_eq!((state.arrangements[&2].records, state.arrangements[&2].batches), (15, 3));
        state.differential(DifferentialEvent::Merge(merge(Some(12))));
        assert_eq!((state.arrangements[&2].records, state.arrangements[&2].batches), (12, 2));
        state.differential(DifferentialEvent::Drop(DropEvent { operator: 2, length: 0 }));
        assert_eq!((state.arrangements[&2].records, state.arrangements[&2].batches), (12, 1));
        // An event of an operator nobody announced is not counted.
        state.differential(DifferentialEvent::Batch(BatchEvent { operator: 9, length: 3 }));
        assert!(!state.arrangements.contains_key(&9));
    }

    /// A channel announced before the operator it feeds counts, once that operator is known,
    /// the records received on it; the sends and a scope's own outputs are not counted.
    #[test]
    fn records_received_are_counted_per_target_operator() {
        use timely::logging::{ChannelsEvent, MessagesEvent};
        let mut state = LogState::default();
        operates(&mut state, 1, &[0], "job 1");
        let channel =
            |id, target| ChannelsEvent { id, scope_addr: vec![0], source: (1, 0), target, typ: String::new() };
        state.timely(Duration::ZERO, TimelyEvent::Channels(channel(7, (2, 0))));
        state.timely(Duration::ZERO, TimelyEvent::Channels(channel(8, (0, 0))));
        operates(&mut state, 2, &[0, 2], "Arrange v");
        let message = |channel, is_send, record_count| {
            TimelyEvent::Messages(MessagesEvent { is_send, channel, source: 0, target: 0, seq_no: 0, record_count })
        };
        for event in [message(7, true, 5), message(7, false, 5), message(7, false, 3), message(8, false, 4)] {
            state.timely(Duration::ZERO, event);
        }
        assert_eq!(state.operators[&2].records_received, 8);
        assert_eq!(state.operators[&1].records_received, 0);
    }

    /// Scheduling adds up the time between a start and its stop; a dropped dataflow takes its
    /// operators and arrangements with it, and their later events are ignored.
    #[test]
    fn a_dropped_dataflow_takes_its_operators_along() {
        let mut state = LogState::default();
        operates(&mut state, 1, &[0], "agent state");
        operates(&mut state, 2, &[1], "job 1");
        operates(&mut state, 3, &[1, 1], "Arrange v");
        let schedule = |start_stop| TimelyEvent::Schedule(ScheduleEvent { id: 3, start_stop });
        state.timely(Duration::from_micros(100), schedule(StartStop::Start));
        state.timely(Duration::from_micros(350), schedule(StartStop::Stop));
        state.timely(Duration::from_micros(400), schedule(StartStop::Start));
        state.timely(Duration::from_micros(410), schedule(StartStop::Stop));
        assert_eq!(state.operators[&3].activations, 2);
        assert_eq!(state.operators[&3].elapsed, Duration::from_micros(260));
        // 250 µs falls in (131,072, 262,144] ns, 10 µs in (8,192, 16,384].
        assert_eq!(state.operators[&3].durations, BTreeMap::from([(16_384, 1), (262_144, 1)]));
        let bucket = |ns| duration_bucket(Duration::from_nanos(ns));
        assert_eq!([bucket(0), bucket(1), bucket(1_024), bucket(1_025)], [1, 1, 1_024, 2_048]);
        assert_eq!(bucket(u64::MAX), 1 << 63);
        state.differential(DifferentialEvent::Batch(BatchEvent { operator: 3, length: 4 }));
        state.timely(Duration::from_micros(500), TimelyEvent::Shutdown(ShutdownEvent { id: 2 }));
        assert_eq!(state.operators.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert!(state.arrangements.is_empty());
        state.differential(DifferentialEvent::Drop(DropEvent { operator: 3, length: 4 }));
        assert!(state.arrangements.is_empty());
    }
}
