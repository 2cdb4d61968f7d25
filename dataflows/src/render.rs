//! Renders the canonical relations and the built-in views into a timely scope.
//!
//! Every worker renders the same dataflow. Each worker feeds the records it decoded into its
//! [`Inputs`]; the views exchange them by key. [`render`] hands back each relation and view as
//! a collection of [`Row`]s, which the server arranges (and `crate::testing` gathers to one
//! worker, for tests).

use std::collections::HashMap;

use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::Scope;

use crate::event::{Evaluation, Event, IngestError, KnowledgeEvent, Span, TableRow, WorkflowEvent};
use crate::row::{RelationDesc, Row, ToRow};
use crate::views::{self, Coll};
use crate::{Diff, Time};

/// Every relation SQL can read, in export order: the five canonical relations, `model_prices`
/// ([`BUILTIN_RELATIONS`] in all), then the views.
pub fn relations() -> Vec<RelationDesc> {
    vec![
        Span::desc(),
        Evaluation::desc(),
        WorkflowEvent::desc(),
        KnowledgeEvent::desc(),
        IngestError::desc(),
        crate::prices::desc(),
        views::AgentTrace::desc(),
        views::ToolUsage::desc(),
        views::ModelUsage::desc(),
        views::SpanCost::desc(),
        views::AgentCostDay::desc(),
        views::WorkflowRun::desc(),
        views::WorkflowStep::desc(),
        views::Document::desc(),
        views::CollectionStats::desc(),
        source_stats_desc(),
    ]
}

/// How many of [`relations`] are relations (the rest are views): the five canonical ones and
/// `model_prices`.
pub const BUILTIN_RELATIONS: usize = 6;

/// Name of the per-source ingestion counters relation.
pub const SOURCE_STATS: &str = "aimatrix_source_stats";

/// `aimatrix_source_stats`: per source, `records` read, rows `decoded` into the canonical
/// relations, and ingest `errors` (rows of `ingest_errors`), all BIGINT, summed over workers.
pub fn source_stats_desc() -> RelationDesc {
    use crate::row::ColumnType::{Int, Text};
    crate::row::desc(
        SOURCE_STATS,
        &["source"],
        &[("source", Text), ("records", Int), ("decoded", Int), ("errors", Int)],
    )
}

/// Name of the relation of rows that failed in views, `[view TEXT, error TEXT]`: the built-in
/// views' [`Rendered::errors`] and the SQL views' errors.
pub const VIEW_ERRORS: &str = "aimatrix_view_errors";

/// Counter increments of one source: `(records, decoded rows, errors, declared)`. `declared`
/// is 1 once per source (added by one worker when the source is set up), so that a source that
/// has read nothing yet still has its row, with zeros.
pub type SourceCounts = (isize, isize, isize, isize);

/// Input sessions of the canonical relations.
pub struct Inputs {
    /// `spans`.
    pub spans: InputSession<Time, Span, Diff>,
    /// `evaluations`.
    pub evaluations: InputSession<Time, Evaluation, Diff>,
    /// `workflow_events`.
    pub workflow_events: InputSession<Time, WorkflowEvent, Diff>,
    /// `knowledge_events`.
    pub knowledge_events: InputSession<Time, KnowledgeEvent, Diff>,
    /// `ingest_errors`.
    pub ingest_errors: InputSession<Time, IngestError, Diff>,
    /// Ingestion counters per source name, carried in the difference (see [`SOURCE_STATS`]).
    pub source_stats: InputSession<Time, String, SourceCounts>,
    /// The inputs of `model_prices` and of the relations sources declared, by name (see
    /// [`render_table`]); each declared one belongs to the dataflow of the job that declared it.
    pub tables: HashMap<String, TableInput>,
}

/// The input of a relation a source declared (see [`TableRow`]).
pub enum TableInput {
    /// A table without a key: every row is appended.
    Append(InputSession<Time, Row, Diff>),
    /// A table with a key: `(key, (position, row or None for a delete))`, each replacing what
    /// the key had (see [`render_table`]).
    Upsert(InputSession<Time, (Row, UpsertValue), Diff>),
}

/// What an upsert sets a key to: the record's position (which orders two upserts of one key
/// at the same timestamp) and its row, `None` for a delete.
pub type UpsertValue = (u64, Option<Row>);

impl TableInput {
    fn advance_to(&mut self, time: Time) {
        match self {
            TableInput::Append(s) => s.advance_to(time),
            TableInput::Upsert(s) => s.advance_to(time),
        }
    }

    fn flush(&mut self) {
        match self {
            TableInput::Append(s) => s.flush(),
            TableInput::Upsert(s) => s.flush(),
        }
    }

    /// Applies one change. Rows of an append-only table are added `diff` times; a keyed
    /// table's changes are upserts (`diff` is not used: an upsert is not retracted).
    fn update(&mut self, change: TableRow, diff: Diff) {
        match self {
            TableInput::Append(s) => {
                if let Some(row) = change.row {
                    s.update(row, diff)
                }
            }
            TableInput::Upsert(s) => s.update((change.key, (change.position, change.row)), 1),
        }
    }
}

/// Renders the input of a relation a source declared into `scope`, at input time `time`:
/// its input and its rows. With `keyed`, each change is an upsert (as Materialize's
/// `ENVELOPE UPSERT` and Kafka's compacted topics): the row replaces the key's current row,
/// and a delete removes it; of two changes of one key at the same timestamp the one at the
/// later position wins. The upserts are arranged by key (differential's
/// `arrange_from_upsert`, which keeps each key's latest value, sharded by the key's hash); a
/// deleted key keeps a small entry there (its last position) so that a later tie is still
/// ordered.
pub fn render_table<'s>(scope: Scope<'s, Time>, name: &str, keyed: bool, time: Time) -> (TableInput, Coll<'s, Row>) {
    use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
    use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
    use timely::dataflow::operators::vec::Map;
    if keyed {
        let (mut input, changes) = scope.new_collection::<(Row, UpsertValue), Diff>();
        input.advance_to(time);
        // Every value is `Some`: a delete is a value whose row is `None`, so that it takes
        // part in the ordering of ties by position (the operator prefers `Some` to `None`).
        let upserts = changes.inner.map(|((key, value), time, _diff)| (key, Some(value), time));
        let arranged = arrange_from_upsert::<
            ValBuilder<Row, UpsertValue, Time, Diff>,
            ValSpine<Row, UpsertValue, Time, Diff>,
            _,
            _,
        >(upserts, &format!("Upsert {name}"));
        let rows = arranged.as_collection(|_key, (_position, row)| row.clone()).flat_map(|row| row);
        (TableInput::Upsert(input), rows)
    } else {
        let (mut input, rows) = scope.new_collection::<Row, Diff>();
        input.advance_to(time);
        (TableInput::Append(input), rows)
    }
}

impl Inputs {
    /// Adds `diff` copies of a decoded event (negative: retracts) at the current time.
    pub fn update(&mut self, event: Event, diff: Diff) {
        match event {
            Event::Span(s) => self.spans.update(s, diff),
            Event::Evaluation(e) => self.evaluations.update(e, diff),
            Event::Workflow(w) => self.workflow_events.update(w, diff),
            Event::Knowledge(k) => self.knowledge_events.update(k, diff),
            Event::Error(e) => self.ingest_errors.update(e, diff),
            // (No input: its job was dropped in the meantime.)
            Event::Table(change) => {
                if let Some(table) = self.tables.get_mut(&change.relation) {
                    table.update(change, diff)
                }
            }
        }
    }

    /// Promises no more changes before `time` (closes the current batch) and flushes.
    pub fn advance_to(&mut self, time: Time) {
        self.spans.advance_to(time);
        self.evaluations.advance_to(time);
        self.workflow_events.advance_to(time);
        self.knowledge_events.advance_to(time);
        self.ingest_errors.advance_to(time);
        self.source_stats.advance_to(time);
        for table in self.tables.values_mut() {
            table.advance_to(time);
        }
        self.flush();
    }

    /// Sends buffered changes into the dataflow.
    pub fn flush(&mut self) {
        self.spans.flush();
        self.evaluations.flush();
        self.workflow_events.flush();
        self.knowledge_events.flush();
        self.ingest_errors.flush();
        self.source_stats.flush();
        for table in self.tables.values_mut() {
            table.flush();
        }
    }

    /// The current input time (all sessions share it).
    pub fn time(&self) -> Time {
        *self.spans.time()
    }
}

/// What [`render`] built: the input sessions and every relation and view as rows.
pub struct Rendered<'s> {
    /// Input sessions of the canonical relations.
    pub inputs: Inputs,
    /// The wanted relations and views as rows: `(index in [`relations`], name, rows)`.
    pub relations: Vec<(usize, &'static str, Coll<'s, Row>)>,
    /// The error rows `[view, error]` of the built-in views that were built (they belong in
    /// [`VIEW_ERRORS`] with the SQL views' errors); `None` when none was.
    pub errors: Option<Coll<'s, Row>>,
}

/// Renders the canonical relations, `model_prices` (a keyed table, see [`render_table`],
/// holding the shipped prices at time 0: [`crate::prices::default_rows`], fed by worker 0)
/// and the built-in views into `scope`. Only the relations
/// and views for which `wanted(name)` holds are converted to rows (the conversion is not
/// free). A built-in view is maintained only when it, a view computed in the same pass
/// (`agent_traces`, `tool_usage`, `model_usage`, `span_costs` and `cost_by_agent_day`;
/// `workflow_runs` and `workflow_steps`;
/// `documents` and `collection_stats`) or [`VIEW_ERRORS`] is wanted: a server wants them all
/// (any query may read them later), `aimatrix run` only what its views and queries read.
pub fn render<'s>(scope: Scope<'s, Time>, wanted: &dyn Fn(&str) -> bool) -> Rendered<'s> {
    let (spans_in, spans) = scope.new_collection::<Span, Diff>();
    let (evals_in, evaluations) = scope.new_collection::<Evaluation, Diff>();
    let (wf_in, workflow_events) = scope.new_collection::<WorkflowEvent, Diff>();
    let (kn_in, knowledge_events) = scope.new_collection::<KnowledgeEvent, Diff>();
    let (err_in, ingest_errors) = scope.new_collection::<IngestError, Diff>();
    let (stats_in, source_stats) = scope.new_collection::<String, SourceCounts>();
    let (mut prices_in, model_prices) = render_table(scope, crate::prices::MODEL_PRICES, true, 0);
    if scope.index() == 0 {
        for row in crate::prices::default_rows() {
            let key = row[..3].to_vec();
            let change =
                TableRow { relation: crate::prices::MODEL_PRICES.to_owned(), position: 0, key, row: Some(row) };
            prices_in.update(change, 1);
        }
    }
    use differential_dataflow::operators::CountTotal;
    let source_stats = source_stats.count_total().map(|(source, (records, decoded, errors, _declared))| {
        vec![
            crate::row::Datum::Text(source),
            crate::row::Datum::Int(records as i64),
            crate::row::Datum::Int(decoded as i64),
            crate::row::Datum::Int(errors as i64),
        ]
    });

    let mut relations = Vec::new();
    let names: Vec<&'static str> = self::relations().into_iter().map(|d| d.name).collect();
    macro_rules! add {
        ($index:expr, $rows:expr) => {
            if wanted(names[$index]) {
                relations.push(($index, names[$index], $rows));
            }
        };
    }
    // The order matches `relations()`.
    add!(0, spans.clone().map(Span::into_row));
    add!(1, evaluations.clone().map(|r| r.to_row()));
    add!(2, workflow_events.clone().map(|r| r.to_row()));
    add!(3, knowledge_events.clone().map(|r| r.to_row()));
    add!(4, ingest_errors.map(|r| r.to_row()));
    add!(5, model_prices.clone());
    // Each pass of built-in views, when something reads one of its views or their errors.
    let pass = |indices: &[usize]| wanted(VIEW_ERRORS) || indices.iter().any(|&i| wanted(names[i]));
    let mut errors: Vec<views::Errors<'s>> = Vec::new();
    if pass(&[6, 7, 8, 9, 10]) {
        // `span_costs` and `cost_by_agent_day` cost more than the other three: only when wanted.
        let optional = (wanted(VIEW_ERRORS) || wanted(names[9]), wanted(VIEW_ERRORS) || wanted(names[10]));
        let v = views::span_views(spans.clone(), evaluations.clone(), model_prices, optional);
        add!(6, v.agent_traces.map(|r| r.to_row()));
        add!(7, v.tool_usage.map(|r| r.to_row()));
        add!(8, v.model_usage.map(|r| r.to_row()));
        if let Some(span_costs) = v.span_costs {
            add!(9, span_costs.map(|r| r.to_row()));
        }
        if let Some(days) = v.cost_by_agent_day {
            add!(10, days.map(|r| r.to_row()));
        }
        errors.push(v.errors);
    }
    if pass(&[11, 12]) {
        let (workflow_steps, workflow_runs, e) = views::workflows(workflow_events.clone());
        add!(11, workflow_runs.map(|r| r.to_row()));
        add!(12, workflow_steps.map(|r| r.to_row()));
        errors.push(e);
    }
    if pass(&[13, 14]) {
        let (documents, collection_stats, e) = views::knowledge(knowledge_events.clone());
        add!(13, documents.map(|r| r.to_row()));
        add!(14, collection_stats.map(|r| r.to_row()));
        errors.push(e);
    }
    add!(15, source_stats);
    let errors = errors.into_iter().reduce(|all, e| all.concat(e));
    debug_assert_eq!(names.len(), 16);
    let mut tables = HashMap::new();
    tables.insert(crate::prices::MODEL_PRICES.to_owned(), prices_in);
    let inputs = Inputs {
        spans: spans_in,
        evaluations: evals_in,
        workflow_events: wf_in,
        knowledge_events: kn_in,
        ingest_errors: err_in,
        source_stats: stats_in,
        tables,
    };
    Rendered { inputs, relations, errors }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relations [`render`] converts to rows when `wanted` names these, and whether it
    /// built any pass of built-in views (they bring error rows).
    fn rendered(wanted: &'static [&'static str]) -> (Vec<&'static str>, bool) {
        timely::execute_directly(move |worker| {
            worker.dataflow::<Time, _, _>(|scope| {
                let r = render(scope, &|name| wanted.contains(&name));
                (r.relations.iter().map(|(_, name, _)| *name).collect(), r.errors.is_some())
            })
        })
    }

    /// `aimatrix run` wants only what its views and queries read: a built-in view nothing
    /// reads is not built at all, one that is read brings its pass (and its error rows).
    #[test]
    fn only_the_built_in_views_wanted_are_built() {
        assert_eq!(rendered(&["spans"]), (vec!["spans"], false));
        assert_eq!(rendered(&["spans", "ingest_errors"]), (vec!["spans", "ingest_errors"], false));
        assert_eq!(rendered(&["tool_usage"]), (vec!["tool_usage"], true));
        assert_eq!(rendered(&["documents", "workflow_runs"]), (vec!["workflow_runs", "documents"], true));
        assert_eq!(rendered(&[VIEW_ERRORS]), (vec![], true));
    }
}
