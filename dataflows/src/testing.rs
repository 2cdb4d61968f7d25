//! Runs the whole dataflow to completion on a local timely cluster: for tests and benchmarks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::event::Event;
use crate::render::{ExportBuffer, VIEW_ERRORS, relations, render_and_export};
use crate::row::Row;
use crate::{Diff, Time};

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
