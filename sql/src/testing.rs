//! Runs SQL views over tables of rows on a local timely cluster: for tests and benchmarks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use amx_dataflows::row::Row;
use amx_dataflows::{Diff, Time};
use amx_operators::CollectionExt;
use arrow::datatypes::SchemaRef;
use differential_dataflow::input::Input;

use crate::render::{Renderer, Rows};
use crate::views::ViewDef;

/// Contents of a collection: row → multiplicity.
pub type Contents = HashMap<Row, Diff>;

/// One change to a table: `(table index, row, diff)`.
pub type Change = (usize, Row, Diff);

/// Views' contents and the error rows (`[view, error]`) after one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// One entry per view, in order.
    pub views: Vec<Contents>,
    /// `aimatrix_view_errors` rows.
    pub errors: Contents,
}

/// Feeds `batches` (one epoch each) of changes to `tables` into the `views` on `workers`
/// threads; returns the contents after every batch. Change `i` of a batch is fed by worker
/// `i mod workers`.
///
/// Panics if a view fails to render or a worker panics (tests only).
pub fn run_views(
    workers: usize,
    tables: &[(String, SchemaRef)],
    views: &[ViewDef],
    batches: Vec<Vec<Change>>,
) -> Vec<Step> {
    let timed = batches.into_iter().enumerate().map(|(i, b)| (i as Time, b)).collect();
    run_views_at(workers, tables, views, timed)
}

/// As [`run_views`], with each batch at an explicit, increasing timestamp (for views whose
/// results depend on the clock, such as temporal filters: the timestamp is the engine's
/// `now()` in milliseconds). Step `i` holds the contents at the time of batch `i`.
pub fn run_views_at(
    workers: usize,
    tables: &[(String, SchemaRef)],
    views: &[ViewDef],
    batches: Vec<(Time, Vec<Change>)>,
) -> Vec<Step> {
    let times: Vec<Time> = batches.iter().map(|(t, _)| *t).collect();
    let names: Vec<String> = tables.iter().map(|(n, _)| n.clone()).collect();
    let views = views.to_vec();
    let batches = Arc::new(batches);
    type Captured = Vec<((usize, Row), Time, Diff)>;
    let captured: Arc<Mutex<Captured>> = Arc::default();
    let sink = captured.clone();
    let nviews = views.len();
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let buffer: std::rc::Rc<std::cell::RefCell<Captured>> = Default::default();
        let (mut inputs, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let mut handles = Vec::new();
            let mut collections: HashMap<String, Rows<'_>> = HashMap::new();
            for name in &names {
                let (handle, rows) = scope.new_collection::<Row, Diff>();
                handles.push(handle);
                collections.insert(name.clone(), rows);
            }
            let probe = timely::dataflow::ProbeHandle::new();
            let mut renderer = Renderer::new(collections);
            for (i, view) in views.iter().enumerate() {
                let rows = renderer.render_view(view).expect("view renders");
                let b = buffer.clone();
                rows.map(move |r| (i, r))
                    .gather_to(0)
                    .inspect_batch(move |_, d| b.borrow_mut().extend_from_slice(d))
                    .probe_with(&probe);
            }
            let b = buffer.clone();
            if let Some(errors) = renderer.errors() {
                errors
                    .map(move |r| (nviews, r))
                    .gather_to(0)
                    .inspect_batch(move |_, d| b.borrow_mut().extend_from_slice(d))
                    .probe_with(&probe);
            }
            (handles, probe)
        });
        for (time, batch) in batches.iter() {
            for input in &mut inputs {
                if input.time() < time {
                    input.advance_to(*time);
                }
            }
            for (i, (table, row, diff)) in batch.iter().enumerate() {
                if i % peers == index {
                    inputs[*table].update(row.clone(), *diff);
                }
            }
            let next = *time + 1;
            for input in &mut inputs {
                input.advance_to(next);
                input.flush();
            }
            while probe.less_than(&next) {
                worker.step();
            }
        }
        drop(inputs);
        while worker.step() {}
        sink.lock().expect("unpoisoned").extend(buffer.borrow_mut().drain(..));
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker succeeded"));

    let updates = std::mem::take(&mut *captured.lock().expect("unpoisoned"));
    times
        .iter()
        .map(|&step| {
            let mut out = Step { views: vec![Contents::new(); nviews], errors: Contents::new() };
            for ((i, row), time, diff) in &updates {
                if *time <= step {
                    let target = if *i == nviews { &mut out.errors } else { &mut out.views[*i] };
                    *target.entry(row.clone()).or_insert(0) += diff;
                }
            }
            out.views.iter_mut().chain(std::iter::once(&mut out.errors)).for_each(|c| c.retain(|_, n| *n != 0));
            out
        })
        .collect()
}
