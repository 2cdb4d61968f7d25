//! Runs the whole dataflow to completion on a local timely cluster: for tests and benchmarks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::event::Event;
use std::cell::RefCell;
use std::rc::Rc;

use amx_operators::CollectionExt;
use timely::dataflow::{ProbeHandle, Scope};

use crate::render::{Inputs, VIEW_ERRORS, relations, render};
use crate::row::Row;
use crate::views::Coll;
use crate::{Diff, Time};

/// Changes gathered at the collector: `((relation index, row), time, diff)`; the relation
/// index is a position in [`relations`].
pub type ExportBuffer = Rc<RefCell<Vec<((usize, Row), Time, Diff)>>>;

/// Final contents of every relation and view, by name: row → multiplicity (zero rows removed);
/// the built-in views' error rows are under [`VIEW_ERRORS`].
pub type Contents = HashMap<&'static str, HashMap<Row, Diff>>;

/// Feeds `batches` (one epoch each) into the dataflow on `workers` threads and returns the
/// final contents of every relation and view. Event `i` of a batch is fed by worker
/// `i mod workers`, so the views' exchanges are exercised.
///
/// Panics if a worker panics (tests only).
pub fn run_batches(workers: usize, batches: Vec<Vec<(Event, Diff)>>) -> Contents {
    let batches = Arc::new(batches);
    type Changes = Vec<((usize, Row), Time, Diff)>;
    let result: Arc<Mutex<Changes>> = Arc::default();
    let sink = result.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let export = ExportBuffer::default();
        let (mut inputs, probe) = worker.dataflow::<Time, _, _>(|scope| render_and_export(scope, &export, 0));
        for (epoch, batch) in batches.iter().enumerate() {
            for (i, (event, diff)) in batch.iter().enumerate() {
                if i % peers == index {
                    inputs.update(event.clone(), *diff);
                }
            }
            inputs.advance_to(epoch as Time + 1);
            while probe.less_than(&(epoch as Time + 1)) {
                worker.step();
            }
        }
        drop(inputs);
        while worker.step() {}
        sink.lock().expect("no poisoned lock").extend(export.borrow_mut().drain(..));
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker succeeded"));

    let names: Vec<&'static str> = relations().iter().map(|d| d.name).chain([VIEW_ERRORS]).collect();
    let mut contents: Contents = names.iter().map(|name| (*name, HashMap::new())).collect();
    for ((rel, row), _time, diff) in result.lock().expect("no poisoned lock").drain(..) {
        let table = contents.get_mut(names[rel]).expect("known relation");
        *table.entry(row).or_insert(0) += diff;
    }
    for table in contents.values_mut() {
        table.retain(|_, c| *c != 0);
    }
    contents
}

/// Gathers the changes of `rows` to global worker `collector` and appends them there to
/// `buffer` tagged with relation `index`; `probe` then tells when they are complete.
pub fn export<'s>(rows: Coll<'s, Row>, index: usize, buffer: &ExportBuffer, collector: u64, probe: &ProbeHandle<Time>) {
    let buffer = buffer.clone();
    rows.map(move |row| (index, row))
        .gather_to(collector)
        .inspect_batch(move |_time, updates| buffer.borrow_mut().extend_from_slice(updates))
        .probe_with(probe);
}

/// Renders the relations and built-in views and exports all of them (see [`export`]), and the
/// built-in views' error rows as relation index `relations().len()` ([`VIEW_ERRORS`]).
pub fn render_and_export<'s>(
    scope: Scope<'s, Time>,
    buffer: &ExportBuffer,
    collector: u64,
) -> (Inputs, ProbeHandle<Time>) {
    let rendered = render(scope, &|_| true);
    let probe = ProbeHandle::new();
    let errors_index = relations().len();
    for (index, _name, rows) in rendered.relations {
        export(rows, index, buffer, collector, &probe);
    }
    if let Some(errors) = rendered.errors {
        export(errors, errors_index, buffer, collector, &probe);
    }
    (rendered.inputs, probe)
}
