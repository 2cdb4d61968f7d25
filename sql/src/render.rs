//! Renders a [`Plan`] into differential operators over [`Row`] collections.
//!
//! - `Map` / `Filter` evaluate DataFusion physical expressions over Arrow batches built from
//!   each batch of updates (a retraction evaluates to the retraction of the same output, as
//!   the expressions are deterministic). A batch whose evaluation fails is re-evaluated row by
//!   row, so only the failing rows go to the view's errors. Expressions that compile to
//!   [`RowExpr`]s (column references, comparisons, `CASE`, integer arithmetic: exactly
//!   DataFusion's results) are evaluated on each row instead, without the Arrow round trip.
//! - `Reduce`, `TopK` and `Window` use `reduce`: only changed groups are recomputed.
//! - `Join` uses differential `join`; outer joins add the unmatched rows (an `antijoin` of
//!   the input against the distinct matched rows) padded with NULLs.
//! - Errors are data: every failing row becomes a row `(view, error)` of `aimatrix_view_errors`.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

use amx_dataflows::packed::PackedRow;
use amx_dataflows::row::{Datum, Row};
use amx_dataflows::{Diff, Time};
use amx_operators::float::ExactSum;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use differential_dataflow::input::Input;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::operators::{CountTotal, ThresholdTotal};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::OkErr;
use timely::dataflow::operators::generic::operator::Operator;

use crate::convert;
use crate::plan::{Agg, AggFunc, JoinKind, Order, PhysExpr, Plan, RankFunc, nulls};
use crate::row_expr::RowExpr;
use crate::views::ViewDef;

/// A collection of rows.
pub type Rows<'s> = VecCollection<'s, Time, Row, Diff>;

/// Rows a batch evaluation produced: a row, or an error message for one input row.
type Evaluated = Result<Row, String>;

/// Largest Arrow batch built for expression evaluation (rows).
const EVAL_BATCH_ROWS: usize = 8192;

/// A collection of `(key, row)` pairs: a join input keyed by its join columns (with their
/// hash: [`HashedRow`]), the rest of each row packed ([`PackedRow`]): the join's arrangement
/// holds every row of its input, and its merges copy them.
pub type Keyed<'s> = VecCollection<'s, Time, (HashedRow, PackedRow), Diff>;

/// A join input arranged by its key; shared by every join that needs the same data arranged
/// by the same key.
pub type KeyedArrangement<'s> = Arranged<'s, TraceAgent<ValSpine<HashedRow, PackedRow, Time, Diff>>>;

/// A row with its hash, computed once: the key of the arrangements of reductions, joins,
/// window partitions and `DISTINCT`.
///
/// Ordered by the hash first and then by the row, and hashed (for the exchange between
/// workers) as that hash: the sorts, merges and cursor seeks of an arrangement keyed by it
/// compare one integer where they compared rows datum by datum (text by text), and two keys
/// are compared as rows only when their hashes are equal. The hash is differential's own
/// ([`differential_dataflow::Hashable`], a fixed seed), the same in every process, and it
/// travels with the row, so every worker routes and orders a key alike. The order among keys
/// is the hashes', not the rows': nothing reads these arrangements' keys in order.
///
/// The row is packed ([`PackedRow`]): an arrangement's merges copy its bytes (inline for a
/// trace id) rather than allocating a `Vec` and a `String` per key, and compare them with one
/// `memcmp`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct HashedRow {
    hash: u64,
    row: PackedRow,
}

impl HashedRow {
    /// `row` with its hash (of its packed bytes).
    pub fn new(row: Row) -> HashedRow {
        HashedRow::pack(&row)
    }

    /// [`HashedRow::new`] of a row's datums, borrowed.
    pub fn pack(datums: &[Datum]) -> HashedRow {
        use differential_dataflow::Hashable;
        let row = PackedRow::pack(datums);
        HashedRow { hash: row.as_bytes().hashed(), row }
    }

    /// The row.
    pub fn row(&self) -> Row {
        self.row.unpack()
    }
}

impl std::hash::Hash for HashedRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Renders views into one timely scope, sharing what views have in common.
///
/// It holds the named collections views can read (relations, built-in views, views rendered
/// so far), the views' error rows, and the join arrangements built so far: a join input whose
/// plan and key are the same as an earlier join's (in this view or another) reuses that
/// arrangement instead of building a second copy of the same index.
pub struct Renderer<'s> {
    collections: HashMap<String, Rows<'s>>,
    errors: Vec<Rows<'s>>,
    keyed: HashMap<String, Keyed<'s>>,
    arrangements: HashMap<String, KeyedArrangement<'s>>,
    reused: usize,
    /// Projections of collections made by one fan-out operator ([`Renderer::share_projections`]),
    /// by (collection, column positions).
    projected: HashMap<(String, Vec<usize>), Rows<'s>>,
}

impl<'s> Renderer<'s> {
    /// A renderer over named collections (at least one: constants need its scope).
    pub fn new(collections: HashMap<String, Rows<'s>>) -> Renderer<'s> {
        Renderer {
            collections,
            errors: Vec::new(),
            keyed: HashMap::new(),
            arrangements: HashMap::new(),
            reused: 0,
            projected: HashMap::new(),
        }
    }

    /// Reads each collection that `views` project in two or more ways (a projection: a `Map`
    /// of column references straight over the collection, as a scan of the columns a view
    /// reads is planned) with one operator that makes every projection of each row at once
    /// ([`project_fanout`]); [`Renderer::render_view`] then uses its outputs.
    ///
    /// Without it, each projection is an operator of its own over the collection, and timely
    /// hands each of them its own copy of every batch: a deep clone of every row (a `Vec` and
    /// a `String` per text) for each reader but the last — 13% of the time of the peers
    /// workload, whose three views read `spans`. The fan-out copies only the columns each
    /// projection keeps, and moves each column into the last projection that keeps it.
    /// Collections that views will make themselves are left alone.
    pub fn share_projections(&mut self, views: &[ViewDef]) {
        let mut wanted: Vec<(String, Vec<Vec<usize>>)> = Vec::new();
        for view in views {
            projections(&view.plan, &mut |name, columns| match wanted.iter_mut().find(|(n, _)| n == name) {
                Some((_, all)) if !all.contains(&columns) => all.push(columns),
                Some(_) => {}
                None => wanted.push((name.to_owned(), vec![columns])),
            });
        }
        for (name, all) in wanted {
            let Some(rows) = self.collections.get(&name).filter(|_| all.len() >= 2) else { continue };
            let outputs = project_fanout(rows.clone(), &all, &name);
            for (columns, rows) in all.into_iter().zip(outputs) {
                self.projected.insert((name.clone(), columns), rows);
            }
        }
    }

    /// Renders a view and makes it readable by later views under its name.
    ///
    /// Errors: the plan reads a relation this renderer does not have.
    pub fn render_view(&mut self, view: &ViewDef) -> Result<Rows<'s>, String> {
        let rows = self.render(&view.plan, &view.name)?;
        self.collections.insert(view.name.clone(), rows.clone());
        Ok(rows)
    }

    /// Adds error rows `[view, error]` from elsewhere (the built-in views') to [`Renderer::errors`].
    pub fn add_errors(&mut self, errors: Rows<'s>) {
        self.errors.push(errors);
    }

    /// Every view's error rows `[view, error]` (None when no view can fail).
    pub fn errors(&mut self) -> Option<Rows<'s>> {
        let mut errors = std::mem::take(&mut self.errors).into_iter();
        let first = errors.next()?;
        Some(errors.fold(first, |a, b| a.concat(b)))
    }

    /// How many join inputs reused an existing arrangement.
    pub fn arrangements_reused(&self) -> usize {
        self.reused
    }

    /// Number of distinct join arrangements built.
    pub fn arrangements_built(&self) -> usize {
        self.arrangements.len()
    }

    /// Renders `plan` for view `view`.
    pub fn render(&mut self, plan: &Plan, view: &str) -> Result<Rows<'s>, String> {
        Ok(match plan {
            Plan::Get { name } => {
                self.collections.get(name).cloned().ok_or_else(|| format!("unknown relation `{name}`"))?
            }
            Plan::Constant { rows } => constant(&self.collections, rows.clone())?,
            Plan::Map { input, exprs, input_schema } => {
                if let (Plan::Get { name }, Some(columns)) = (input.as_ref(), columns_of(exprs))
                    && let Some(rows) = self.projected.get(&(name.clone(), columns))
                {
                    return Ok(rows.clone());
                }
                let input = self.render(input, view)?;
                let evaluated = evaluate(input, view, input_schema.clone(), exprs.clone(), false);
                split(evaluated, view, &mut self.errors)
            }
            Plan::Filter { input, predicate, input_schema } => {
                let input = self.render(input, view)?;
                let evaluated = evaluate(input, view, input_schema.clone(), vec![predicate.clone()], true);
                split(evaluated, view, &mut self.errors)
            }
            Plan::TemporalFilter { input, time, input_schema, interval_us, inclusive } => {
                let input = self.render(input, view)?;
                let evaluated =
                    temporal_filter(input, view, input_schema.clone(), time.clone(), *interval_us, *inclusive);
                split(evaluated, view, &mut self.errors)
            }
            Plan::Reduce { input, keys, aggs } => {
                let input = self.render(input, view)?;
                reduce(input, *keys, aggs.clone(), view, &self.collections, &mut self.errors)?
            }
            Plan::Distinct { input } => {
                self.render(input, view)?.map(HashedRow::new).distinct_total().map(|distinct| distinct.row())
            }
            Plan::Union { inputs: parts } => {
                let mut rendered = Vec::new();
                for p in parts {
                    rendered.push(self.render(p, view)?);
                }
                let mut rendered = rendered.into_iter();
                let first = rendered.next().ok_or("UNION without inputs")?;
                rendered.fold(first, |acc, next| acc.concat(next))
            }
            Plan::Join { left, right, left_arity, right_arity, kind, nulls_equal, filter } => {
                let (l, l_arranged) = self.keyed_input(left, *left_arity, *nulls_equal, view)?;
                let (r, r_arranged) = self.keyed_input(right, *right_arity, *nulls_equal, view)?;
                let matches = l_arranged.join_core(r_arranged, |k: &HashedRow, lv: &PackedRow, rv: &PackedRow| {
                    Some((k.clone(), lv.clone(), rv.clone()))
                });
                join(l, r, matches, *left_arity, *right_arity, *kind, filter.clone(), view, &mut self.errors)
            }
            Plan::TopK { input, arity, order, offset, limit } => {
                let input = self.render(input, view)?;
                top_k(input, *arity, order.clone(), *offset, *limit)
            }
            Plan::Window { input, arity, partitions, order, func } => {
                let input = self.render(input, view)?;
                window(input, *arity, *partitions, order.clone(), *func)
            }
        })
    }

    /// A join input keyed by its trailing key columns, and its arrangement (rows whose key
    /// has a NULL left out unless `nulls_equal`), both shared with earlier identical inputs.
    fn keyed_input(
        &mut self,
        plan: &Plan,
        arity: usize,
        nulls_equal: bool,
        view: &str,
    ) -> Result<(Keyed<'s>, KeyedArrangement<'s>), String> {
        let fingerprint = format!("{arity}/{plan:?}");
        let keyed = match self.keyed.get(&fingerprint) {
            Some(k) => k.clone(),
            None => {
                let rows = self.render(plan, view)?;
                let keyed = rows.map(move |row| {
                    let (vals, key) = row.split_at(arity);
                    (HashedRow::pack(key), PackedRow::pack(vals))
                });
                self.keyed.insert(fingerprint.clone(), keyed.clone());
                keyed
            }
        };
        let arrangement_key = format!("{nulls_equal}/{fingerprint}");
        let arranged = match self.arrangements.get(&arrangement_key) {
            Some(a) => {
                self.reused += 1;
                a.clone()
            }
            None => {
                let a = keyed
                    .clone()
                    .filter(move |(k, _): &(HashedRow, PackedRow)| nulls_equal || !k.row.contains_null())
                    .arrange_by_key_named(&format!("JoinArrange {view}"));
                self.arrangements.insert(arrangement_key, a.clone());
                a
            }
        };
        Ok((keyed, arranged))
    }
}

/// A constant collection, inserted once (by worker 0) so every row appears exactly once.
fn constant<'s>(inputs: &HashMap<String, Rows<'s>>, rows: Vec<Row>) -> Result<Rows<'s>, String> {
    let any = inputs.values().next().ok_or("a constant relation needs a scope")?;
    let scope = any.scope();
    let rows = if scope.index() == 0 { rows } else { Vec::new() };
    let (_handle, collection) = scope.new_collection_from(rows);
    Ok(collection)
}

/// The rows of `evaluated`, its errors pushed to `errors` as rows of `aimatrix_view_errors`
/// (`view`, `error`). One operator with two outputs: each update moves to one of them, where
/// two `flat_map`s over one stream would each receive a copy of every row.
fn split<'s>(evaluated: VecCollection<'s, Time, Evaluated, Diff>, view: &str, errors: &mut Vec<Rows<'s>>) -> Rows<'s> {
    let view = view.to_owned();
    let (ok, err) = evaluated.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |(result, time, diff)| match result {
        Ok(row) => Ok((row, time, diff)),
        Err(e) => Err((vec![Datum::Text(view.clone()), Datum::Text(e)], time, diff)),
    });
    errors.push(err.as_collection());
    ok.as_collection()
}

/// Evaluates `exprs` (or, with `is_filter`, the one predicate) over batches of updates.
fn evaluate<'s>(
    input: Rows<'s>,
    view: &str,
    schema: SchemaRef,
    exprs: Vec<PhysExpr>,
    is_filter: bool,
) -> VecCollection<'s, Time, Evaluated, Diff> {
    let name = format!("{} {view}", if is_filter { "Filter" } else { "Map" });
    // Expressions that compile to row expressions skip the Arrow round trip.
    let compiled = RowExpr::compile_all(&exprs, &schema).map(RowProgram::new);
    input
        .inner
        .unary::<CapacityContainerBuilder<Vec<(Evaluated, Time, Diff)>>, _, _, _>(Pipeline, &name, move |_, _| {
            move |input, output| {
                if let Some(compiled) = &compiled {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for (row, time, diff) in data.flat_map(|d| d.drain(..)) {
                            if let Some(result) = eval_row(row, compiled, is_filter) {
                                session.give((result, time, diff));
                            }
                        }
                    });
                    return;
                }
                input.for_each_stamp(|cap, data| {
                    let updates: Vec<(Row, Time, Diff)> = data.flat_map(|d| d.drain(..)).collect();
                    let mut session = output.session(&cap);
                    for chunk in updates.chunks(EVAL_BATCH_ROWS) {
                        let rows: Vec<&Row> = chunk.iter().map(|(r, _, _)| r).collect();
                        let results = eval_chunk(&rows, &schema, &exprs, is_filter);
                        for (result, (_, time, diff)) in results.into_iter().zip(chunk) {
                            if let Some(result) = result {
                                session.give((result, *time, *diff));
                            }
                        }
                    }
                });
            }
        })
        .as_collection()
}

/// The column positions `exprs` read, when every one is a plain column reference (the `Map`
/// is a projection).
fn columns_of(exprs: &[PhysExpr]) -> Option<Vec<usize>> {
    exprs
        .iter()
        .map(|e| {
            let any: &dyn datafusion::physical_expr::PhysicalExpr = e.as_ref();
            any.downcast_ref::<datafusion::physical_expr::expressions::Column>().map(|c| c.index())
        })
        .collect()
}

/// Calls `each` with (collection, columns) for every projection of a collection in `plan`: a
/// `Map` of column references straight over a `Get`.
fn projections(plan: &Plan, each: &mut impl FnMut(&str, Vec<usize>)) {
    match plan {
        Plan::Map { input, exprs, .. } => match (input.as_ref(), columns_of(exprs)) {
            (Plan::Get { name }, Some(columns)) => each(name, columns),
            (input, _) => projections(input, each),
        },
        Plan::Get { .. } | Plan::Constant { .. } => {}
        Plan::Filter { input, .. }
        | Plan::TemporalFilter { input, .. }
        | Plan::Reduce { input, .. }
        | Plan::Distinct { input }
        | Plan::TopK { input, .. }
        | Plan::Window { input, .. } => projections(input, each),
        Plan::Union { inputs } => inputs.iter().for_each(|p| projections(p, each)),
        Plan::Join { left, right, .. } => {
            projections(left, each);
            projections(right, each);
        }
    }
}

/// One operator that makes every projection in `projections` (column positions) of each row
/// of `rows`: one output per projection, in order. Each column is copied into all but the
/// last projection that keeps it and moved into that one; a row holds every column of its
/// collection, so no position is out of range (one that were would read as NULL).
fn project_fanout<'s>(rows: Rows<'s>, projections: &[Vec<usize>], name: &str) -> Vec<Rows<'s>> {
    use timely::container::{ContainerBuilder, PushInto};
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
    // For each projection's columns: whether it is the last projection to keep that column.
    let moves: Vec<Vec<bool>> = projections
        .iter()
        .enumerate()
        .map(|(i, columns)| {
            columns
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    !columns[j + 1..].contains(c) && !projections[i + 1..].iter().any(|later| later.contains(c))
                })
                .collect()
        })
        .collect();
    let projections = projections.to_vec();
    let mut builder = OperatorBuilder::new(format!("Project {name}"), rows.inner.scope());
    let mut input = builder.new_input(rows.inner, Pipeline);
    let mut outputs = Vec::with_capacity(projections.len());
    let mut streams = Vec::with_capacity(projections.len());
    for _ in &projections {
        let (output, stream) = builder.new_output::<Vec<(Row, Time, Diff)>>();
        outputs.push(output);
        streams.push(stream);
    }
    builder.build(move |_| {
        let mut builders: Vec<CapacityContainerBuilder<Vec<(Row, Time, Diff)>>> =
            projections.iter().map(|_| Default::default()).collect();
        move |_frontiers| {
            let mut handles: Vec<_> = outputs.iter_mut().map(|o| o.activate()).collect();
            input.for_each_stamp(|cap, data| {
                for (mut row, time, diff) in data.flat_map(|d| d.drain(..)) {
                    for ((columns, moves), built) in projections.iter().zip(&moves).zip(&mut builders) {
                        let projected: Row = columns
                            .iter()
                            .zip(moves)
                            .map(|(&c, &moved)| match row.get_mut(c) {
                                Some(d) if moved => std::mem::replace(d, Datum::Null),
                                Some(d) => d.clone(),
                                None => Datum::Null,
                            })
                            .collect();
                        built.push_into((projected, time, diff));
                    }
                    for (built, handle) in builders.iter_mut().zip(&mut handles) {
                        while let Some(container) = built.extract() {
                            handle.give(&cap, container);
                        }
                    }
                }
                for (built, handle) in builders.iter_mut().zip(&mut handles) {
                    while let Some(container) = built.finish() {
                        handle.give(&cap, container);
                    }
                }
            });
        }
    });
    streams.into_iter().map(|s| s.as_collection()).collect()
}

/// Emits each row at its time and its retraction at the time it ages out of
/// `time > now - interval` (see [`crate::temporal`]); rows whose time is NULL never pass.
fn temporal_filter<'s>(
    input: Rows<'s>,
    view: &str,
    schema: SchemaRef,
    time: PhysExpr,
    interval_us: i64,
    inclusive: bool,
) -> VecCollection<'s, Time, Evaluated, Diff> {
    let name = format!("TemporalFilter {view}");
    let compiled = RowExpr::compile_all(std::slice::from_ref(&time), &schema);
    input
        .inner
        .unary::<CapacityContainerBuilder<Vec<(Evaluated, Time, Diff)>>, _, _, _>(Pipeline, &name, move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let updates: Vec<(Row, Time, Diff)> = data.flat_map(|d| d.drain(..)).collect();
                    for chunk in updates.chunks(EVAL_BATCH_ROWS) {
                        let times = match &compiled {
                            Some(compiled) => chunk
                                .iter()
                                .map(|(r, _, _)| {
                                    Some(
                                        compiled[0]
                                            .eval(r)
                                            .map(|d| vec![d])
                                            .map_err(|e| format!("{e} (row {})", show(r))),
                                    )
                                })
                                .collect(),
                            None => {
                                let rows: Vec<&Row> = chunk.iter().map(|(r, _, _)| r).collect();
                                eval_chunk(&rows, &schema, std::slice::from_ref(&time), false)
                            }
                        };
                        for ((row, t, d), result) in chunk.iter().zip(times) {
                            match result {
                                Some(Ok(value)) => {
                                    let Some(Datum::Timestamp(us)) = value.first() else { continue };
                                    let expiry = crate::temporal::expiry_ms(*us, interval_us, inclusive);
                                    if expiry > *t {
                                        output.session(&cap).give((Ok(row.clone()), *t, *d));
                                        // The retraction is due when the clock reaches the expiry.
                                        let later = cap.delayed(&expiry, 0);
                                        output.session(&later).give((Ok(row.clone()), expiry, -*d));
                                    }
                                }
                                Some(Err(e)) => output.session(&cap).give((Err(e), *t, *d)),
                                None => {}
                            }
                        }
                    }
                });
            }
        })
        .as_collection()
}

/// Evaluates a chunk of rows in one Arrow batch; when that fails, row by row, so that only
/// the failing rows become errors.
fn eval_chunk(rows: &[&Row], schema: &SchemaRef, exprs: &[PhysExpr], is_filter: bool) -> Vec<Option<Evaluated>> {
    match eval_rows(rows, schema, exprs, is_filter) {
        Ok(results) => results,
        Err(_) => rows
            .iter()
            .map(|r| match eval_rows(&[r], schema, exprs, is_filter) {
                Ok(mut one) => one.pop().unwrap_or(None),
                Err(e) => Some(Err(format!("{e} (row {})", show(r)))),
            })
            .collect(),
    }
}

/// A `Map`'s or `Filter`'s row expressions, and which of a `Map`'s outputs take their column
/// out of the input row rather than copying it: a plain column reference to a column that no
/// other expression reads.
struct RowProgram {
    exprs: Vec<RowExpr>,
    moves: Vec<bool>,
}

impl RowProgram {
    fn new(exprs: Vec<RowExpr>) -> RowProgram {
        let mut reads = Vec::new();
        for e in &exprs {
            e.columns(&mut reads);
        }
        let moves = exprs
            .iter()
            .map(|e| matches!(e, RowExpr::Column(i) if reads.iter().filter(|r| *r == i).count() == 1))
            .collect();
        RowProgram { exprs, moves }
    }
}

/// [`eval_rows`] of one row by compiled row expressions: the same results, without Arrow. The
/// row is consumed: a filter passes it on as it is, a `Map` moves out the columns that only
/// one plain reference reads, and nothing is copied that an expression only looks at.
fn eval_row(mut row: Row, program: &RowProgram, is_filter: bool) -> Option<Evaluated> {
    let error = |e: String, row: &Row| Some(Err(format!("{e} (row {})", show(row))));
    if is_filter {
        let keep = program.exprs[0].eval_ref(&row).and_then(|d| match &*d {
            Datum::Bool(b) => Ok(*b),
            Datum::Null => Ok(false),
            d => Err(format!("a filter predicate that is not BOOLEAN: {d:?}")),
        });
        return match keep {
            Ok(true) => Some(Ok(row)),
            Ok(false) => None,
            Err(e) => error(e, &row),
        };
    }
    let mut out = Vec::with_capacity(program.exprs.len());
    for (expr, moved) in program.exprs.iter().zip(&program.moves) {
        match (moved, expr) {
            (true, RowExpr::Column(i)) if *i < row.len() => out.push(Datum::Null),
            _ => match expr.eval_ref(&row) {
                Ok(d) => out.push(d.into_owned()),
                Err(e) => return error(e, &row),
            },
        }
    }
    for ((expr, moved), slot) in program.exprs.iter().zip(&program.moves).zip(&mut out) {
        if let (true, RowExpr::Column(i)) = (moved, expr) {
            *slot = std::mem::replace(&mut row[*i], Datum::Null);
        }
    }
    Some(Ok(out))
}

/// A row as SQL-ish text: `(1, 'x', NULL)`.
pub fn show(row: &Row) -> String {
    let values: Vec<String> = row
        .iter()
        .map(|d| match d {
            Datum::Null => "NULL".to_owned(),
            Datum::Bool(b) => b.to_string(),
            Datum::Int(i) => i.to_string(),
            Datum::Float(f) => f.0.to_string(),
            Datum::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Datum::Timestamp(us) => format!("TIMESTAMP {us}µs"),
        })
        .collect();
    format!("({})", values.join(", "))
}

/// One result per row: `Some(Ok(row))` (a projected row or a kept row), `None` (filtered out).
fn eval_rows(
    rows: &[&Row],
    schema: &SchemaRef,
    exprs: &[PhysExpr],
    is_filter: bool,
) -> Result<Vec<Option<Evaluated>>, String> {
    let batch = convert::rows_to_batch(rows, schema).map_err(|e| e.to_string())?;
    let arrays = exprs
        .iter()
        .map(|e| crate::parse::evaluate(e, &batch).and_then(|v| v.into_array(rows.len())))
        .collect::<datafusion::error::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    if is_filter {
        let mask = arrays[0].as_boolean_opt().ok_or("a filter predicate that is not BOOLEAN")?;
        return Ok(rows
            .iter()
            .enumerate()
            .map(|(i, r)| (mask.is_valid(i) && mask.value(i)).then(|| Ok((*r).clone())))
            .collect());
    }
    let out = convert::arrays_to_rows(&arrays, rows.len()).map_err(|e| e.to_string())?;
    Ok(out.into_iter().map(|r| Some(Ok(r))).collect())
}

/// Aggregates one group; `Err` for an arithmetic error (integer overflow in `sum`).
///
/// Integer sums are exact in `i128` and an error only when the result leaves `BIGINT`; float
/// sums and means are exact sums rounded once ([`ExactSum`]), so they do not depend on the
/// order of the values; `min`/`max` follow PostgreSQL's order (NaN greatest, `-0.0 = 0.0`,
/// [`Datum`]'s order) and return canonical floats. [`crate::aggregates`] computes the same in
/// plain queries.
fn aggregate(aggs: &[Agg], vals: &[(&[Datum], Diff)]) -> Result<Row, String> {
    let mut out = Vec::with_capacity(aggs.len());
    for agg in aggs {
        // The (value, multiplicity) pairs of this aggregate's argument, NULLs dropped.
        let mut values: Vec<(&Datum, i64)> = vals
            .iter()
            .filter(|(r, n)| r[agg.arg] != Datum::Null && *n > 0)
            .map(|(r, n)| (&r[agg.arg], *n as i64))
            .collect();
        if agg.distinct {
            let set: BTreeSet<&Datum> = values.iter().map(|(d, _)| *d).collect();
            values = set.into_iter().map(|d| (d, 1)).collect();
        }
        let count: i64 = values.iter().map(|(_, n)| n).sum();
        let exact = || {
            let mut sum = ExactSum::new();
            values.iter().for_each(|(d, n)| sum.add(as_f64(d), *n));
            sum
        };
        let datum = match agg.func {
            AggFunc::Count => Datum::Int(count),
            AggFunc::Sum if values.is_empty() => Datum::Null,
            AggFunc::Sum => match values[0].0 {
                Datum::Int(_) => {
                    let mut acc: i128 = 0;
                    for (d, n) in &values {
                        let Datum::Int(v) = d else {
                            return Err(format!("sum over mixed values {d:?}"));
                        };
                        acc += i128::from(*v) * i128::from(*n);
                    }
                    let sum = i64::try_from(acc).map_err(|_| format!("integer overflow in sum (BIGINT): {acc}"))?;
                    if agg.output == DataType::Float64 { Datum::float(Some(sum as f64)) } else { Datum::Int(sum) }
                }
                _ => Datum::float(Some(exact().sum())),
            },
            AggFunc::Avg if values.is_empty() => Datum::Null,
            AggFunc::Avg => match values[0].0 {
                Datum::Int(_) => {
                    let total: i128 = values.iter().map(|(d, n)| as_i64(d) as i128 * *n as i128).sum();
                    Datum::float(Some(total as f64 / count as f64))
                }
                _ => Datum::float(Some(exact().mean(count as u64))),
            },
            AggFunc::Min => canonical_float(values.iter().map(|(d, _)| *d).min()),
            AggFunc::Max => canonical_float(values.iter().map(|(d, _)| *d).max()),
            AggFunc::BoolAnd if values.is_empty() => Datum::Null,
            AggFunc::BoolAnd => Datum::Bool(values.iter().all(|(d, _)| **d == Datum::Bool(true))),
            AggFunc::BoolOr if values.is_empty() => Datum::Null,
            AggFunc::BoolOr => Datum::Bool(values.iter().any(|(d, _)| **d == Datum::Bool(true))),
        };
        out.push(datum);
    }
    Ok(out)
}

/// A min/max result: floats canonical (`0.0` for either zero, one NaN), NULL for none.
fn canonical_float(d: Option<&Datum>) -> Datum {
    match d {
        Some(Datum::Float(f)) => Datum::float(Some(f.0)),
        Some(d) => d.clone(),
        None => Datum::Null,
    }
}

fn as_f64(d: &Datum) -> f64 {
    match d {
        Datum::Int(v) => *v as f64,
        Datum::Float(v) => v.0,
        _ => f64::NAN,
    }
}

fn as_i64(d: &Datum) -> i64 {
    match d {
        Datum::Int(v) => *v,
        _ => 0,
    }
}

/// Accumulators of invertible aggregates carried in a difference: slot 0 of `ints` counts the
/// group's rows; then per aggregate, `count` has one slot (non-NULL inputs) and `sum`/`avg` of
/// integers two (the sum, and the non-NULL count); `sum`/`avg` of doubles have their non-NULL
/// count in `ints` and their sum in `floats`: an exact sum ([`ExactSum`]), which subtracting
/// undoes exactly, rounded once at the end, as the batch engine's (`amx_sql::aggregates`) and
/// [`aggregate`]'s are. Integer sums are `i128`, so no intermediate overflows; a final sum
/// outside BIGINT is an error row.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Sums {
    ints: Vec<i128>,
    #[serde(with = "exact_sums")]
    floats: Vec<ExactSum>,
}

impl Sums {
    /// The value, canonical (float sums by their exact values): what equality and order
    /// compare.
    #[allow(clippy::type_complexity)]
    fn key(&self) -> (Vec<i128>, Vec<(i64, i64, i64, bool, u32, Vec<u64>)>) {
        let mut ints = self.ints.clone();
        while ints.last() == Some(&0) {
            ints.pop();
        }
        let mut floats: Vec<_> = self.floats.iter().map(ExactSum::canonical).collect();
        while floats.last().is_some_and(|f| *f == (0, 0, 0, false, 0, Vec::new())) {
            floats.pop();
        }
        (ints, floats)
    }
}

impl PartialEq for Sums {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Sums {}

impl PartialOrd for Sums {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sums {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// [`Sums::floats`] as bytes ([`ExactSum::to_bytes`]), for the exchange between processes.
mod exact_sums {
    use amx_operators::float::ExactSum;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(sums: &[ExactSum], s: S) -> Result<S::Ok, S::Error> {
        sums.iter().map(ExactSum::to_bytes).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ExactSum>, D::Error> {
        Vec::<Vec<u8>>::deserialize(d)?
            .iter()
            .map(|b| ExactSum::from_bytes(b).ok_or_else(|| serde::de::Error::custom("not an exact sum")))
            .collect()
    }
}

/// Whether `agg` (a sum or average) sums doubles in [`Sums::floats`].
fn sums_floats(agg: &Agg) -> bool {
    matches!(agg.func, AggFunc::Sum | AggFunc::Avg) && agg.input == DataType::Float64
}

impl Sums {
    /// The contribution of one row (`vals`: the reduce's value columns) with multiplicity
    /// `diff`.
    fn of(aggs: &[Agg], vals: &[Datum], diff: Diff) -> Sums {
        let mut sums = Sums::slots(aggs);
        sums.add(aggs, vals, diff);
        sums
    }

    /// Zero in every slot `aggs` use: the row count, then per aggregate its non-NULL count
    /// and, for an integer `sum`/`avg`, its sum; an exact sum per float `sum`/`avg`.
    fn slots(aggs: &[Agg]) -> Sums {
        let ints =
            1 + aggs.iter().map(|a| if sums_floats(a) || a.func == AggFunc::Count { 1 } else { 2 }).sum::<usize>();
        let floats = aggs.iter().filter(|a| sums_floats(a)).map(|_| ExactSum::new()).collect();
        Sums { ints: vec![0; ints], floats }
    }

    /// Adds the contribution of one row in place, allocating nothing: `self` has the slots of
    /// `aggs` ([`Sums::slots`]; the combiner's groups come from [`Sums::of`]).
    fn add(&mut self, aggs: &[Agg], vals: &[Datum], diff: Diff) {
        let n = diff as i128;
        let mut ints = self.ints.iter_mut();
        let mut floats = self.floats.iter_mut();
        let mut next = || ints.next().expect("a slot per aggregate");
        *next() += n;
        for agg in aggs {
            let datum = &vals[agg.arg];
            *next() += if *datum == Datum::Null { 0 } else { n };
            if sums_floats(agg) {
                let sum = floats.next().expect("a float slot per float sum");
                if let Datum::Float(f) = datum {
                    sum.add(f.0, diff as i64);
                }
            } else if agg.func != AggFunc::Count {
                *next() += if let Datum::Int(v) = datum { *v as i128 * n } else { 0 };
            }
        }
    }

    fn finish(&self, aggs: &[Agg]) -> Result<Row, String> {
        let mut slots = self.ints.iter().skip(1).copied();
        let mut next = || slots.next().unwrap_or(0);
        let mut floats = self.floats.iter();
        let mut out = Vec::with_capacity(aggs.len());
        for agg in aggs {
            let present = next();
            if sums_floats(agg) {
                out.push(match floats.next() {
                    Some(sum) if present > 0 && agg.func == AggFunc::Avg => {
                        Datum::float(Some(sum.mean(present as u64)))
                    }
                    Some(sum) if present > 0 => Datum::float(Some(sum.sum())),
                    _ => Datum::Null,
                });
                continue;
            }
            out.push(match agg.func {
                AggFunc::Count => Datum::Int(present as i64),
                _ if present == 0 => {
                    next();
                    Datum::Null
                }
                AggFunc::Avg => Datum::float(Some(next() as f64 / present as f64)),
                _ => {
                    let sum = next();
                    let sum = i64::try_from(sum).map_err(|_| format!("integer overflow in sum (BIGINT): {sum}"))?;
                    if agg.output == DataType::Float64 { Datum::float(Some(sum as f64)) } else { Datum::Int(sum) }
                }
            });
        }
        Ok(out)
    }
}

impl differential_dataflow::difference::IsZero for Sums {
    fn is_zero(&self) -> bool {
        self.ints.iter().all(|v| *v == 0) && self.floats.iter().all(ExactSum::is_zero)
    }
}

impl differential_dataflow::difference::Semigroup for Sums {
    fn plus_equals(&mut self, rhs: &Self) {
        if self.ints.len() < rhs.ints.len() {
            self.ints.resize(rhs.ints.len(), 0);
        }
        for (a, b) in self.ints.iter_mut().zip(&rhs.ints) {
            *a += b;
        }
        if self.floats.len() < rhs.floats.len() {
            self.floats.resize_with(rhs.floats.len(), ExactSum::new);
        }
        for (a, b) in self.floats.iter_mut().zip(&rhs.floats) {
            a.merge(b);
        }
    }
}

impl differential_dataflow::difference::Monoid for Sums {
    fn zero() -> Self {
        Sums::default()
    }
}

/// The groups' accumulators of invertible aggregates, as differences of their keys (the first
/// `keys` columns of each row): each worker first adds up, per key and time, the changes it
/// holds in each batch it receives (a combiner, as MapReduce's and Flink's local
/// pre-aggregation), so a key changed by many rows of a batch is one update, not one per row,
/// by the time it is exchanged, sorted and merged.
fn combine<'s>(input: Rows<'s>, keys: usize, aggs: Vec<Agg>, view: &str) -> VecCollection<'s, Time, HashedRow, Sums> {
    use differential_dataflow::difference::IsZero;
    use std::collections::hash_map::Entry;
    input
        .inner
        .unary::<CapacityContainerBuilder<Vec<(HashedRow, Time, Sums)>>, _, _, _>(
            Pipeline,
            &format!("Combine {view}"),
            move |_, _| {
                let mut groups: HashMap<(HashedRow, Time), Sums> = HashMap::new();
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        for (row, time, diff) in data.flat_map(|d| d.drain(..)) {
                            let (key, vals) = row.split_at(keys);
                            match groups.entry((HashedRow::pack(key), time)) {
                                Entry::Occupied(mut e) => e.get_mut().add(&aggs, vals, diff),
                                Entry::Vacant(e) => {
                                    e.insert(Sums::of(&aggs, vals, diff));
                                }
                            }
                        }
                        let mut session = output.session(&cap);
                        for ((key, time), sums) in groups.drain() {
                            if !sums.is_zero() {
                                session.give((key, time, sums));
                            }
                        }
                    });
                }
            },
        )
        .as_collection()
}

/// Whether `agg` is a `DISTINCT` aggregate that is invertible over the distinct values
/// (`count(DISTINCT x)`, and `sum`/`avg(DISTINCT x)` of integers).
fn distinct_invertible(agg: &Agg) -> bool {
    agg.distinct && Agg { distinct: false, ..agg.clone() }.invertible()
}

/// Groups whose aggregates are invertible, or invertible over distinct values
/// (`count(DISTINCT x)`): each `DISTINCT` aggregate counts or sums the distinct (key, value)
/// pairs (`distinct_total`), the others ride in differences ([`combine`]), and the parts are
/// put together per key (as Materialize collates the parts of a reduction of mixed kinds,
/// `ReducePlan::Collation`). A change then costs the pairs it changes, not a recomputation over
/// its whole group. `(key, aggregates in their order)`, or the first error of a part.
fn collate_distinct<'s>(
    input: Rows<'s>,
    keys: usize,
    aggs: Vec<Agg>,
    view: &str,
) -> VecCollection<'s, Time, (HashedRow, Result<Row, String>), Diff> {
    // The invertible aggregates, always (with none, their part still counts each group's rows,
    // so a group whose DISTINCT arguments are all NULL has its row).
    let plain: Vec<usize> = (0..aggs.len()).filter(|i| !aggs[*i].distinct).collect();
    let plain_aggs: Vec<Agg> = plain.iter().map(|i| aggs[*i].clone()).collect();
    let finish_aggs = plain_aggs.clone();
    let mut parts = vec![
        combine(input.clone(), keys, plain_aggs, view)
            .count_total()
            .map(move |(key, sums)| (key, (0usize, sums.finish(&finish_aggs)))),
    ];
    let mut slots = vec![plain];
    for (i, agg) in aggs.iter().enumerate().filter(|(_, a)| a.distinct) {
        let arg = keys + agg.arg;
        let pairs = input
            .clone()
            .flat_map(move |mut row| {
                let value = row.get(arg).cloned().filter(|v| *v != Datum::Null)?;
                row.truncate(keys);
                row.push(value);
                Some(HashedRow::new(row))
            })
            .distinct_total()
            .map(|pair| pair.row());
        let one = Agg { arg: 0, distinct: false, ..agg.clone() };
        let finish = vec![one.clone()];
        let tag = parts.len();
        parts.push(
            combine(pairs, keys, vec![one], view)
                .count_total()
                .map(move |(key, sums)| (key, (tag, sums.finish(&finish)))),
        );
        slots.push(vec![i]);
    }
    let scope = input.scope();
    let all = differential_dataflow::collection::concatenate(scope, parts);
    // A group's DISTINCT part is missing when all its arguments are NULL: count 0, else NULL.
    let defaults: Row =
        aggs.iter().map(|a| if a.func == AggFunc::Count { Datum::Int(0) } else { Datum::Null }).collect();
    all.reduce_named(&format!("Collate {view}"), move |_key, parts, out| {
        let mut row = defaults.clone();
        for ((tag, part), _) in parts {
            match part {
                Ok(values) => {
                    for (slot, value) in slots[*tag].iter().zip(values) {
                        row[*slot] = value.clone();
                    }
                }
                Err(e) => {
                    out.push((Err(e.clone()), 1));
                    return;
                }
            }
        }
        out.push((Ok(row), 1));
    })
}

fn reduce<'s>(
    input: Rows<'s>,
    keys: usize,
    aggs: Vec<Agg>,
    view: &str,
    inputs: &HashMap<String, Rows<'s>>,
    errors: &mut Vec<Rows<'s>>,
) -> Result<Rows<'s>, String> {
    let default_aggs = aggs.clone();
    let logic_aggs = aggs.clone();
    let grouped = if default_aggs.iter().all(Agg::invertible) {
        // Counts and integer sums ride in the difference: a change adds or subtracts its
        // contribution, nothing is recomputed.
        combine(input, keys, logic_aggs, view).count_total().map(move |(key, sums)| (key, sums.finish(&aggs)))
    } else if default_aggs.iter().all(|a| a.invertible() || distinct_invertible(a)) {
        collate_distinct(input, keys, aggs, view)
    } else {
        // The values packed too, and the aggregates while the reduce's output arrangement
        // holds them: its input arrangement holds every row of every group, and the merges
        // of both copy them.
        let split = input.map(move |row| {
            let (key, vals) = row.split_at(keys);
            (HashedRow::pack(key), PackedRow::pack(vals))
        });
        split
            .reduce_named(&format!("Reduce {view}"), move |_key, vals: &[(&PackedRow, Diff)], out| {
                // The group's values unpacked into one buffer, each a slice of it.
                let mut flat = Vec::new();
                let mut ends = Vec::with_capacity(vals.len());
                for (r, _) in vals {
                    r.unpack_into(&mut flat);
                    ends.push(flat.len());
                }
                let starts = std::iter::once(0).chain(ends.iter().copied());
                let rows: Vec<(&[Datum], Diff)> =
                    starts.zip(&ends).zip(vals).map(|((from, &to), (_, n))| (&flat[from..to], *n)).collect();
                out.push((aggregate(&logic_aggs, &rows).map(|r| PackedRow::pack(&r)), 1));
            })
            .map(|(key, result)| (key, result.map(|r| r.unpack())))
    };
    let view_name = view.to_owned();
    let (rows, failed) =
        grouped.inner.ok_err::<Vec<_>, _, Vec<_>, _, _>(move |((key, result), time, diff)| match result {
            Ok(vals) => {
                let mut row = key.row();
                row.extend(vals);
                Ok((row, time, diff))
            }
            Err(e) => Err((
                vec![Datum::Text(view_name.clone()), Datum::Text(format!("{e} (group {})", show(&key.row())))],
                time,
                diff,
            )),
        });
    errors.push(failed.as_collection());
    let rows = rows.as_collection();
    if keys > 0 {
        return Ok(rows);
    }
    // A global aggregate has one row even over no input: count 0, everything else NULL.
    let default: Row =
        default_aggs.iter().map(|a| if a.func == AggFunc::Count { Datum::Int(0) } else { Datum::Null }).collect();
    let defaults = constant(inputs, vec![default])?;
    let present = rows.clone().map(|_| ()).distinct_total();
    let missing = defaults.map(|r| ((), r)).antijoin(present).map(|((), r)| r);
    Ok(rows.concat(missing))
}

#[allow(clippy::too_many_arguments)]
fn join<'s>(
    l: Keyed<'s>,
    r: Keyed<'s>,
    matches: VecCollection<'s, Time, (HashedRow, PackedRow, PackedRow), Diff>,
    la: usize,
    ra: usize,
    kind: JoinKind,
    filter: Option<(PhysExpr, SchemaRef)>,
    view: &str,
    errors: &mut Vec<Rows<'s>>,
) -> Rows<'s> {
    let matches = match filter {
        None => matches,
        Some((predicate, schema)) => {
            // Evaluate the extra predicate over left ++ right; the key rides along behind.
            let width = la + ra;
            let joined = matches.map(|(k, lv, rv)| {
                let mut row = lv.unpack();
                rv.unpack_into(&mut row);
                k.row.unpack_into(&mut row);
                row
            });
            // The predicate's schema covers the first `width` columns; the key rides behind.
            let evaluated = evaluate(joined, view, schema, vec![predicate], true);
            split(evaluated, view, errors).map(move |row| {
                let (lv, rest) = row.split_at(la);
                let (rv, k) = rest.split_at(width - la);
                (HashedRow::pack(k), PackedRow::pack(lv), PackedRow::pack(rv))
            })
        }
    };
    let pad_right = move |lv: Row| {
        let mut row = lv;
        row.extend(nulls(ra));
        row
    };
    let pad_left = move |rv: Row| {
        let mut row = nulls(la);
        row.extend(rv);
        row
    };
    let matched_left = || matches.clone().map(|(k, lv, _)| (k, lv)).distinct_total();
    let matched_right = || matches.clone().map(|(k, _, rv)| (k, rv)).distinct_total();
    let unmatched_left = || l.clone().map(|kv| (kv, ())).antijoin(matched_left()).map(|((_, lv), ())| lv.unpack());
    let unmatched_right = || r.clone().map(|kv| (kv, ())).antijoin(matched_right()).map(|((_, rv), ())| rv.unpack());
    let inner = || {
        matches.clone().map(|(_, lv, rv)| {
            let mut row = lv.unpack();
            rv.unpack_into(&mut row);
            row
        })
    };
    match kind {
        JoinKind::Inner => inner(),
        JoinKind::Left => inner().concat(unmatched_left().map(pad_right)),
        JoinKind::Right => inner().concat(unmatched_right().map(pad_left)),
        JoinKind::Full => inner().concat(unmatched_left().map(pad_right)).concat(unmatched_right().map(pad_left)),
        JoinKind::LeftSemi => l.clone().map(|kv| (kv, ())).semijoin(matched_left()).map(|((_, lv), ())| lv.unpack()),
        JoinKind::LeftAnti => unmatched_left(),
    }
}

/// Compares two rows on their order columns (starting at `from`), then on everything.
fn compare(a: &Row, b: &Row, from: usize, order: &[Order]) -> Ordering {
    for (i, &(asc, nulls_first)) in order.iter().enumerate() {
        let (x, y) = (&a[from + i], &b[from + i]);
        let o = match (x, y) {
            (Datum::Null, Datum::Null) => Ordering::Equal,
            (Datum::Null, _) => {
                if nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (_, Datum::Null) => {
                if nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            _ => {
                if asc {
                    x.cmp(y)
                } else {
                    y.cmp(x)
                }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn top_k<'s>(input: Rows<'s>, arity: usize, order: Vec<Order>, offset: usize, limit: Option<usize>) -> Rows<'s> {
    input
        .map(|row| ((), row))
        .reduce_named("TopK", move |_key, vals, out| {
            let mut rows: Vec<(&Row, Diff)> = vals.iter().map(|(r, n)| (*r, *n)).filter(|(_, n)| *n > 0).collect();
            rows.sort_by(|a, b| compare(a.0, b.0, arity, &order).then_with(|| a.0.cmp(b.0)));
            let mut position = 0usize;
            let end = limit.map_or(usize::MAX, |l| offset.saturating_add(l));
            for (row, n) in rows {
                let n = n as usize;
                let (from, to) = (position.max(offset), (position + n).min(end));
                if to > from {
                    out.push((row[..arity].to_vec(), (to - from) as Diff));
                }
                position += n;
                if position >= end {
                    break;
                }
            }
        })
        .map(|((), row)| row)
}

fn window<'s>(input: Rows<'s>, arity: usize, partitions: usize, order: Vec<Order>, func: RankFunc) -> Rows<'s> {
    input
        .map(move |row| (HashedRow::pack(&row[arity..arity + partitions]), row))
        .reduce_named("Window", move |_key, vals, out| {
            let from = arity + partitions;
            let mut rows: Vec<(&Row, Diff)> = vals.iter().map(|(r, n)| (*r, *n)).filter(|(_, n)| *n > 0).collect();
            rows.sort_by(|a, b| compare(a.0, b.0, from, &order).then_with(|| a.0.cmp(b.0)));
            let (mut number, mut rank, mut dense) = (0i64, 0i64, 0i64);
            let mut previous: Option<&Row> = None;
            for (row, n) in rows {
                for _ in 0..n {
                    number += 1;
                    let tie = previous.is_some_and(|p| compare(p, row, from, &order) == Ordering::Equal);
                    if !tie {
                        rank = number;
                        dense += 1;
                    }
                    previous = Some(row);
                    let value = match func {
                        RankFunc::RowNumber => number,
                        RankFunc::Rank => rank,
                        RankFunc::DenseRank => dense,
                    };
                    let mut result = row[..arity].to_vec();
                    result.push(Datum::Int(value));
                    out.push((result, 1));
                }
            }
        })
        .map(|(_, row)| row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row_expr::Comparison;

    fn text(s: &str) -> Datum {
        Datum::Text(s.to_owned())
    }

    /// A `Map` moves out of its input row only a column that one plain reference reads; every
    /// output equals the expression evaluated on the untouched row.
    #[test]
    fn a_map_moves_only_columns_no_other_expression_reads() {
        use RowExpr::{Column, Compare, Literal};
        let exprs = vec![
            Column(0),
            Column(1),
            Column(1),
            Compare(Comparison::Eq, Box::new(Column(2)), Box::new(Literal(text("x")))),
            Column(2),
            Column(3),
        ];
        let program = RowProgram::new(exprs.clone());
        assert_eq!(program.moves, [true, false, false, false, false, true]);
        let row = vec![text("trace"), text("span"), text("x"), Datum::Int(7)];
        let expected: Row = exprs.iter().map(|e| e.eval(&row).unwrap()).collect();
        assert_eq!(expected, [text("trace"), text("span"), text("span"), Datum::Bool(true), text("x"), Datum::Int(7)]);
        assert_eq!(eval_row(row.clone(), &program, false), Some(Ok(expected)));
        // A column past the row's end is an error naming the whole row, not a moved-out hole.
        let short = vec![text("trace"), text("span"), text("x")];
        let Some(Err(e)) = eval_row(short, &program, false) else { panic!("no error") };
        assert_eq!(e, "no column 3 in a row of 3 (row ('trace', 'span', 'x'))");
    }

    /// Keys with one hash are still told apart by their rows (a collision never merges two
    /// groups), keys are ordered by hash before row, equal rows built apart get one hash, and a
    /// key hashes as its stored hash alone (the exchange does not walk the row again).
    #[test]
    fn hashed_rows_order_by_hash_then_row_and_never_merge_on_a_collision() {
        use std::hash::{BuildHasher, Hasher};
        let forged = |hash: u64, s: &str| HashedRow { hash, row: PackedRow::pack(&[text(s)]) };
        assert_ne!(forged(7, "a"), forged(7, "b"));
        assert!(forged(7, "a") < forged(7, "b"));
        assert!(forged(1, "z") < forged(2, "a"));
        let (a, b) =
            (HashedRow::new(vec![text("trace"), Datum::Int(1)]), HashedRow::new(vec![text("trace"), Datum::Int(1)]));
        assert_eq!(a, b);
        assert_ne!(a.hash, HashedRow::new(vec![text("trace"), Datum::Int(2)]).hash);
        let state = std::collections::hash_map::RandomState::new();
        let mut by_hash = state.build_hasher();
        by_hash.write_u64(a.hash);
        assert_eq!(state.hash_one(&a), by_hash.finish());
    }

    /// Adding a row's contribution in place ([`Sums::add`], the combiner's) is adding its
    /// [`Sums::of`]: counts, integer sums and exact float sums, NULLs counted out.
    #[test]
    fn sums_added_in_place_equal_sums_added() {
        use differential_dataflow::difference::Semigroup;
        let agg = |func, arg, input: DataType| Agg { func, arg, distinct: false, output: input.clone(), input };
        let aggs = vec![
            agg(AggFunc::Count, 0, DataType::Int64),
            agg(AggFunc::Sum, 0, DataType::Int64),
            agg(AggFunc::Avg, 1, DataType::Float64),
            agg(AggFunc::Sum, 1, DataType::Float64),
        ];
        let rows = [
            (vec![Datum::Int(5), Datum::float(Some(0.5))], 1),
            (vec![Datum::Null, Datum::float(Some(2.0))], 2),
            (vec![Datum::Int(-7), Datum::Null], -1),
            (vec![Datum::Int(1000), Datum::float(Some(-1.0))], 3),
        ];
        let mut added = Sums::of(&aggs, &rows[0].0, rows[0].1);
        let mut summed = added.clone();
        for (row, diff) in &rows[1..] {
            added.add(&aggs, row, *diff);
            summed.plus_equals(&Sums::of(&aggs, row, *diff));
        }
        assert_eq!(added, summed);
        // By hand: the first column is non-NULL with multiplicities 1 - 1 + 3 = 3 and sums to
        // 5 + 7 + 3000; the second is non-NULL with 1 + 2 + 3 = 6 and sums to 0.5 + 4 - 3 = 1.5.
        let expected = vec![Datum::Int(3), Datum::Int(3012), Datum::float(Some(0.25)), Datum::float(Some(1.5))];
        assert_eq!(added.finish(&aggs).unwrap(), expected);
    }

    /// A filter passes its row on whole, drops it on false or NULL, and reports a predicate
    /// that is not boolean with the row.
    #[test]
    fn a_filter_keeps_drops_or_reports() {
        let eq = |lit: Datum| {
            RowProgram::new(vec![RowExpr::Compare(
                Comparison::Eq,
                Box::new(RowExpr::Column(0)),
                Box::new(RowExpr::Literal(lit)),
            )])
        };
        let row = vec![text("execute_tool"), Datum::Int(1)];
        assert_eq!(eval_row(row.clone(), &eq(text("execute_tool")), true), Some(Ok(row.clone())));
        assert_eq!(eval_row(row.clone(), &eq(text("chat")), true), None);
        assert_eq!(eval_row(vec![Datum::Null, Datum::Int(1)], &eq(text("chat")), true), None);
        let not_boolean = RowProgram::new(vec![RowExpr::Column(1)]);
        assert_eq!(
            eval_row(row, &not_boolean, true),
            Some(Err("a filter predicate that is not BOOLEAN: Int(1) (row ('execute_tool', 1))".into()))
        );
    }
}
