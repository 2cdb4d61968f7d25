//! Reads of the arrangements: peeks, a subscription's snapshot in parts and its changes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use amx_dataflows::row::{Datum, Row};
use amx_dataflows::{Diff, Time};
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::{Navigable, TraceReader};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::operator::Operator;
use timely::progress::Antichain;

use super::{Collection, Owner, RowTrace};
use crate::protocol::{SNAPSHOT_PART_BYTES, SNAPSHOT_PART_ROWS};

/// The first element of a frontier (`Time::MAX` when empty: closed).
fn first(frontier: &Antichain<Time>) -> Time {
    frontier.elements().first().copied().unwrap_or(Time::MAX)
}

/// The frontier of an arrangement: it holds every update at times before it.
pub(super) fn upper_of(trace: &mut RowTrace) -> Time {
    upper_with(trace, &mut Antichain::new())
}

/// [`upper_of`], reading the frontier into `scratch` (reused: no allocation once it holds one).
pub(super) fn upper_with(trace: &mut RowTrace, scratch: &mut Antichain<Time>) -> Time {
    trace.read_upper(scratch);
    first(scratch)
}

/// Adds the rows of `trace` as of `as_of` that pass `filter` (column = value, for each pair),
/// projected, to `out`, with their multiplicities. A filter on the first column seeks to the
/// first row with that value (rows are sorted, so they are together) instead of scanning.
pub(super) fn read_at(
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
pub(super) fn snapshot_part(
    traces: &mut [(Owner, RowTrace)],
    as_of: Time,
    after: Option<&Row>,
) -> (Vec<(Row, Diff)>, bool) {
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
            bytes += crate::protocol::row_bytes(row);
            rows.push((row.clone(), count));
        }
        cursor.step_key(&storage);
    }
    (rows, true)
}

/// A subscription's dataflow: imports the collection's arrangements and copies their changes
/// at times after `as_of` (those at or before it are the snapshot, read from the arrangements
/// by [`snapshot_part`]) into a buffer; the probe tells how far the buffer is complete. The
/// arrangements' history is walked once in their batches, never copied.
#[allow(clippy::type_complexity)]
pub(super) fn subscribe(
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
