//! Reads of the arrangements: peeks, a subscription's snapshot in parts and its changes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use amx_dataflows::packed::{PackedRef, PackedRow};
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
/// first row with that value (the rows that begin with it share the bytes of that value packed
/// alone, and are together: see [`RowTrace`]) instead of scanning.
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
    // `[value]` packed sorts before every row that starts with `value` (a prefix sorts first).
    let leading = filter.iter().find(|(c, _)| *c == 0).map(|(_, d)| PackedRow::pack([d]));
    if let Some(prefix) = &leading {
        cursor.seek_key(&storage, prefix.as_packed_ref());
    }
    let mut row: Row = Vec::new();
    while cursor.key_valid(&storage) && *limit > 0 {
        let packed: PackedRef<'_> = cursor.key(&storage);
        if let Some(prefix) = &leading
            && !packed.as_bytes().starts_with(prefix.as_bytes())
        {
            break;
        }
        row.clear();
        packed.unpack_into(&mut row);
        if !filter.iter().all(|(c, d)| row.get(*c) == Some(d)) {
            cursor.step_key(&storage);
            continue;
        }
        let count = count_at(&mut cursor, &storage, as_of);
        if count != 0 {
            let row = match projection {
                Some(columns) => columns.iter().map(|&c| row.get(c).cloned().unwrap_or(Datum::Null)).collect(),
                None => std::mem::take(&mut row),
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

/// The next part of a worker's share of a collection's contents at `as_of`: rows (in the
/// arrangements' order: by packed bytes, see [`RowTrace`]) after `after`, at most
/// [`SNAPSHOT_PART_ROWS`] of them and about [`SNAPSHOT_PART_BYTES`] bytes; and whether it is
/// the last part. The arrangements are read as one (rows in several of them are summed), from
/// their current batches, so merges between two parts change nothing: they keep the contents
/// at `as_of` while the subscription holds compaction at it.
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
        let after = PackedRow::pack(after);
        cursor.seek_key(&storage, after.as_packed_ref());
        if cursor.get_key(&storage) == Some(after.as_packed_ref()) {
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
            let row = cursor.key(&storage).unpack();
            bytes += crate::protocol::row_bytes(&row);
            rows.push((row, count));
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
                                while let Some(packed) = cursor.get_key(batch) {
                                    let row = packed.unpack();
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

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;

    use super::*;

    fn text(s: &str) -> Datum {
        Datum::Text(s.to_owned())
    }

    /// Rows whose first datums are prefixes of one another as text or as bytes (`a`, `ab`,
    /// `a` + more columns, texts of 254 and 255 bytes: both lengths' encodings), integers of
    /// 1 and 2 bytes, NULL, and a row twice.
    fn rows() -> Vec<Row> {
        let long = |n: usize| text(&"x".repeat(n));
        vec![
            vec![text("a")],
            vec![text("a"), Datum::Int(1)],
            vec![text("a"), Datum::Int(256)],
            vec![text("a"), Datum::Null],
            vec![text("ab")],
            vec![text("ab"), Datum::Int(1)],
            vec![text("")],
            vec![Datum::Int(1), text("a")],
            vec![Datum::Int(256), text("a")],
            vec![Datum::Int(-1)],
            vec![Datum::Null, text("a")],
            vec![long(254), Datum::Int(1)],
            vec![long(255), Datum::Int(2)],
            vec![long(255), Datum::Int(2)],
        ]
    }

    /// Arranges [`rows`] (the last one inserted twice) at time 0 on one worker and hands the
    /// trace, once it has passed time 0, to `read`.
    fn with_trace(read: impl FnOnce(&mut RowTrace) + Send + Sync + 'static) {
        timely::execute_directly(move |worker| {
            let probe = ProbeHandle::new();
            let (mut input, mut trace) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, rows) = scope.new_collection::<Row, Diff>();
                let arranged = super::super::arrange_rows(rows, "Arrange test");
                arranged.stream.clone().probe_with(&probe);
                (input, arranged.trace)
            });
            for row in rows() {
                input.insert(row);
            }
            input.advance_to(1);
            input.flush();
            worker.step_while(|| probe.less_than(&1));
            read(&mut trace);
        });
    }

    #[test]
    fn a_filter_on_the_first_column_finds_exactly_the_rows_that_begin_with_its_value() {
        with_trace(|trace| {
            let read = |trace: &mut RowTrace, filter: &[(usize, Datum)], projection: Option<&[usize]>| {
                let (mut out, mut limit) = (HashMap::new(), usize::MAX);
                read_at(trace, 0, projection, filter, &mut limit, &mut out);
                let mut rows: Vec<(Row, Diff)> = out.into_iter().collect();
                rows.sort();
                rows
            };
            // By hand from `rows()`: the four rows that begin with `a`, not `ab` nor the rest.
            let expected = vec![
                (vec![text("a")], 1),
                (vec![text("a"), Datum::Null], 1),
                (vec![text("a"), Datum::Int(1)], 1),
                (vec![text("a"), Datum::Int(256)], 1),
            ];
            assert_eq!(read(trace, &[(0, text("a"))], None), expected);
            assert_eq!(read(trace, &[(0, Datum::Int(1))], None), vec![(vec![Datum::Int(1), text("a")], 1)]);
            assert_eq!(read(trace, &[(0, Datum::Null)], None), vec![(vec![Datum::Null, text("a")], 1)]);
            let long = text(&"x".repeat(255));
            assert_eq!(read(trace, &[(0, long.clone())], None), vec![(vec![long, Datum::Int(2)], 2)]);
            assert_eq!(read(trace, &[(0, text("b"))], None), vec![]);
            // A filter on another column, and a projection.
            assert_eq!(
                read(trace, &[(1, Datum::Int(1))], Some(&[0])),
                vec![(vec![text("a")], 1), (vec![text("ab")], 1), (vec![text(&"x".repeat(254))], 1)]
            );
        });
    }

    #[test]
    fn snapshot_parts_after_each_row_hold_exactly_the_rows_after_it() {
        with_trace(|trace| {
            let mut traces = vec![(Owner::Builtin, trace.clone())];
            let (all, last) = snapshot_part(&mut traces, 0, None);
            assert!(last);
            let mut sorted = all.clone();
            sorted.sort();
            let mut expected: Vec<(Row, Diff)> = rows().into_iter().map(|r| (r, 1)).collect();
            expected.pop();
            expected.last_mut().expect("rows").1 = 2;
            expected.sort();
            assert_eq!(sorted, expected, "every row once, with its count");
            for (i, (row, _)) in all.iter().enumerate() {
                let (rest, last) = snapshot_part(&mut traces, 0, Some(row));
                assert!(last);
                assert_eq!(rest, all[i + 1..], "after {row:?}");
            }
        });
    }
}
