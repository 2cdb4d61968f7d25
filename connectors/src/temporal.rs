//! Format `temporal-history`: Temporal workflow histories → `workflow_events`.
//!
//! A record is one history as exported by `temporal workflow show --output json`:
//! `{"events": [...]}` (usually a whole pretty-printed file). Both spellings of event types
//! are read: the current `EVENT_TYPE_ACTIVITY_TASK_STARTED` and the older
//! `ActivityTaskStarted`; attributes are under `activityTaskStartedEventAttributes` in both.
//! 64-bit integers (`eventId`, `scheduledEventId`, `attempt`) may be strings or numbers;
//! `eventTime` is RFC 3339, within the years 0001..=9999; an `attempt` must be at least 1.
//!
//! Option: `run_id` (a constant run id). Otherwise the run id is the started event's
//! `originalExecutionRunId`, else its `firstExecutionRunId`, else the record's location.
//! `workflow_name` (the started event's `workflowType.name`) is set on every row of the run.
//!
//! Rows (`raw_state` = the event type as written, `event_seq` = `eventId`):
//! - run level (`step_id` NULL): `WORKFLOW_EXECUTION_STARTED` → RUNNING, `_COMPLETED` and
//!   `_CONTINUED_AS_NEW` → COMPLETED, `_FAILED` → FAILED (`failure.message`), `_TIMED_OUT` →
//!   TIMED_OUT, `_CANCELED` → CANCELLED, `_TERMINATED` → TERMINATED (`reason`); `attempt` is the
//!   run's attempt from the started event;
//! - activities (`step_type` `activity`, `step_id` = the scheduled event's id, `step_name` =
//!   `activityType.name`): SCHEDULED, STARTED (→ RUNNING, `attempt` from the event,
//!   `lastFailure.message`), COMPLETED, FAILED, TIMED_OUT, CANCELED; later events carry the
//!   attempt of the step's latest started event. `ACTIVITY_TASK_CANCEL_REQUESTED` is skipped;
//! - child workflows (`step_type` `child_workflow`, `step_id` = the initiated event's id,
//!   `step_name` = `workflowType.name`): `START_CHILD_WORKFLOW_EXECUTION_INITIATED` →
//!   SCHEDULED, `_FAILED` → FAILED (`cause`), `CHILD_WORKFLOW_EXECUTION_STARTED` → RUNNING,
//!   `_COMPLETED`, `_FAILED`, `_CANCELED`, `_TIMED_OUT`, `_TERMINATED` accordingly.
//!
//! Other events (workflow tasks, timers, signals, markers, …) are not rows. An event that is
//! not a JSON object, has no `eventType`, has a bad id, time or attempt, or refers to an
//! unknown step is an ingest error at `LOCATION#events[INDEX] (eventId ID)` (INDEX = 0-based
//! position in the `events` array; ` (eventId ID)` only when the event has an `eventId`
//! string or number, written as it is), and the rest of the history is still decoded. A
//! record without an `events` array is one ingest error.

use std::collections::HashMap;

use amx_dataflows::event::{Event, WorkflowEvent, WorkflowState};
use serde_json::Value;

use crate::options::Options;
use crate::time::{RANGE, in_range, parse_timestamp};
use crate::{ConfigError, Decoder, Record, error, parse_record, short};

/// The format's name.
pub const FORMAT: &str = "temporal-history";

/// The `temporal-history` decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct TemporalHistory {
    run_id: Option<String>,
}

impl TemporalHistory {
    /// Builds the decoder from the source's options (`run_id`, optional).
    ///
    /// # Errors
    /// An unknown option, or a `run_id` that is not a string.
    pub fn new(options: &Value) -> Result<TemporalHistory, ConfigError> {
        let mut o = Options::new(FORMAT, options)?;
        let run_id = o.string("run_id")?;
        o.finish()?;
        Ok(TemporalHistory { run_id })
    }
}

/// A step (activity or child workflow) seen in the history.
struct Step {
    id: String,
    name: Option<String>,
    /// Attempt of the latest started event.
    attempt: Option<i64>,
}

/// The kinds of steps, each with its own id space.
#[derive(Clone, Copy)]
enum Kind {
    Activity,
    Child,
}

impl Kind {
    fn step_type(self) -> &'static str {
        match self {
            Kind::Activity => "activity",
            Kind::Child => "child_workflow",
        }
    }
    /// The attribute that refers to the step's first event.
    fn reference(self) -> &'static str {
        match self {
            Kind::Activity => "scheduledEventId",
            Kind::Child => "initiatedEventId",
        }
    }
}

/// What one event does.
enum Action {
    /// Not a row.
    Skip,
    /// A run-level row.
    Run(WorkflowState, Option<&'static str>),
    /// A new step (scheduled / initiated); the name is at the pointer.
    NewStep(Kind, &'static str),
    /// A started step: attempt from the event (activities), failure at the pointer.
    Started(Kind, Option<&'static str>),
    /// Another transition of a step, with the failure message at the pointer.
    Step(Kind, WorkflowState, Option<&'static str>),
}

/// The action of a normalised event type (`ACTIVITY_TASK_STARTED`).
fn action(event_type: &str) -> Action {
    use Action::*;
    use Kind::*;
    use WorkflowState as S;
    match event_type {
        "WORKFLOW_EXECUTION_STARTED" => Run(S::Running, None),
        "WORKFLOW_EXECUTION_COMPLETED" => Run(S::Completed, None),
        "WORKFLOW_EXECUTION_CONTINUED_AS_NEW" => Run(S::Completed, Some("/failure/message")),
        "WORKFLOW_EXECUTION_FAILED" => Run(S::Failed, Some("/failure/message")),
        "WORKFLOW_EXECUTION_TIMED_OUT" => Run(S::TimedOut, None),
        "WORKFLOW_EXECUTION_CANCELED" => Run(S::Cancelled, None),
        "WORKFLOW_EXECUTION_TERMINATED" => Run(S::Terminated, Some("/reason")),
        "ACTIVITY_TASK_SCHEDULED" => NewStep(Activity, "/activityType/name"),
        "ACTIVITY_TASK_STARTED" => Started(Activity, Some("/lastFailure/message")),
        "ACTIVITY_TASK_COMPLETED" => Step(Activity, S::Completed, None),
        "ACTIVITY_TASK_FAILED" => Step(Activity, S::Failed, Some("/failure/message")),
        "ACTIVITY_TASK_TIMED_OUT" => Step(Activity, S::TimedOut, Some("/failure/message")),
        "ACTIVITY_TASK_CANCELED" => Step(Activity, S::Cancelled, None),
        "START_CHILD_WORKFLOW_EXECUTION_INITIATED" => NewStep(Child, "/workflowType/name"),
        "START_CHILD_WORKFLOW_EXECUTION_FAILED" => Step(Child, S::Failed, Some("/cause")),
        "CHILD_WORKFLOW_EXECUTION_STARTED" => Started(Child, None),
        "CHILD_WORKFLOW_EXECUTION_COMPLETED" => Step(Child, S::Completed, None),
        "CHILD_WORKFLOW_EXECUTION_FAILED" => Step(Child, S::Failed, Some("/failure/message")),
        "CHILD_WORKFLOW_EXECUTION_CANCELED" => Step(Child, S::Cancelled, None),
        "CHILD_WORKFLOW_EXECUTION_TIMED_OUT" => Step(Child, S::TimedOut, None),
        "CHILD_WORKFLOW_EXECUTION_TERMINATED" => Step(Child, S::Terminated, None),
        _ => Skip,
    }
}

/// `EVENT_TYPE_ACTIVITY_TASK_STARTED` and `ActivityTaskStarted` → `ACTIVITY_TASK_STARTED`.
fn normalize(event_type: &str) -> String {
    if let Some(rest) = event_type.strip_prefix("EVENT_TYPE_") {
        return rest.to_owned();
    }
    if !event_type.bytes().any(|b| b.is_ascii_lowercase()) {
        return event_type.to_owned();
    }
    let mut out = String::with_capacity(event_type.len() + 8);
    for (i, c) in event_type.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The attributes object of an event of normalised type `t`: `ACTIVITY_TASK_STARTED` →
/// `activityTaskStartedEventAttributes` (else any `…EventAttributes` key); `Null` if none.
fn attributes<'v>(event: &'v Value, t: &str) -> &'v Value {
    let mut key = String::with_capacity(t.len() + 16);
    for (i, word) in t.split('_').enumerate() {
        let lower = word.to_ascii_lowercase();
        if i == 0 {
            key.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                key.push(first.to_ascii_uppercase());
                key.push_str(chars.as_str());
            }
        }
    }
    key.push_str("EventAttributes");
    let Some(obj) = event.as_object() else {
        return &Value::Null;
    };
    obj.get(&key)
        .or_else(|| obj.iter().find(|(k, _)| k.ends_with("EventAttributes")).map(|(_, v)| v))
        .unwrap_or(&Value::Null)
}

/// A proto-JSON int64: a number or a string of digits. `Ok(None)` when missing or null.
fn int(v: Option<&Value>, what: &str) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| format!("bad {what} {n}")),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| format!("bad {what} {}", short(&Value::String(s.clone()))))
        }
        Some(other) => Err(format!("bad {what} {}", short(other))),
    }
}

/// An attempt number: a proto-JSON int64 (see [`int`]) of at least 1. `Ok(None)` when missing
/// or null.
fn attempt(v: Option<&Value>) -> Result<Option<i64>, String> {
    match int(v, "attempt")? {
        Some(n) if n < 1 => Err(format!("bad attempt {n} (must be at least 1)")),
        other => Ok(other),
    }
}

/// A non-empty string at `pointer`.
fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Decoding state of one history.
struct Run {
    run_id: String,
    workflow_name: Option<String>,
    attempt: Option<i64>,
    activities: HashMap<i64, Step>,
    children: HashMap<i64, Step>,
}

impl Run {
    /// The row of one event (None when the event is not a row), or why it cannot be read.
    fn event(&mut self, e: &Value) -> Result<Option<WorkflowEvent>, String> {
        if !e.is_object() {
            return Err("event is not a JSON object".into());
        }
        let raw = match e.get("eventType") {
            Some(Value::String(s)) => s.as_str(),
            None | Some(Value::Null) => return Err("event has no `eventType`".into()),
            Some(other) => return Err(format!("`eventType` is not a string: {}", short(other))),
        };
        let t = normalize(raw);
        let act = action(&t);
        if matches!(act, Action::Skip) {
            return Ok(None);
        }
        let seq = int(e.get("eventId"), "eventId")?;
        let event_time = match e.get("eventTime") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let shown = || short(&Value::String(s.clone()));
                let t = parse_timestamp(s).ok_or_else(|| format!("bad eventTime {}", shown()))?;
                if !in_range(t) {
                    return Err(format!("bad eventTime {}: out of range ({RANGE})", shown()));
                }
                Some(t)
            }
            Some(other) => return Err(format!("bad eventTime {}", short(other))),
        };
        let attrs = attributes(e, &t);
        let mut row = WorkflowEvent {
            run_id: self.run_id.clone(),
            workflow_name: self.workflow_name.clone(),
            step_id: None,
            step_name: None,
            step_type: None,
            state: WorkflowState::Running,
            raw_state: raw.to_owned(),
            attempt: None,
            event_time,
            event_seq: seq,
            failure_message: None,
        };
        match act {
            Action::Skip => return Ok(None),
            Action::Run(state, failure) => {
                if t == "WORKFLOW_EXECUTION_STARTED" {
                    attempt(attrs.get("attempt"))?;
                }
                row.state = state;
                row.attempt = self.attempt;
                row.failure_message = failure.and_then(|p| text(attrs, p));
            }
            Action::NewStep(kind, name) => {
                let seq = seq.ok_or("event has no `eventId`")?;
                let step = Step { id: seq.to_string(), name: text(attrs, name), attempt: None };
                row.state = WorkflowState::Scheduled;
                row.step_type = Some(kind.step_type().into());
                row.step_id = Some(step.id.clone());
                row.step_name.clone_from(&step.name);
                self.steps(kind).insert(seq, step);
            }
            Action::Started(kind, failure) => {
                let attempt = match kind {
                    Kind::Activity => attempt(attrs.get("attempt"))?,
                    Kind::Child => None,
                };
                let step = self.step(kind, attrs)?;
                step.attempt = attempt;
                row.state = WorkflowState::Running;
                row.attempt = attempt;
                row.failure_message = failure.and_then(|p| text(attrs, p));
                fill(&mut row, kind, step);
            }
            Action::Step(kind, state, failure) => {
                let step = self.step(kind, attrs)?;
                row.state = state;
                row.attempt = step.attempt;
                row.failure_message = failure.and_then(|p| text(attrs, p));
                fill(&mut row, kind, step);
            }
        }
        Ok(Some(row))
    }

    fn steps(&mut self, kind: Kind) -> &mut HashMap<i64, Step> {
        match kind {
            Kind::Activity => &mut self.activities,
            Kind::Child => &mut self.children,
        }
    }

    /// The step an event refers to (by `scheduledEventId` / `initiatedEventId`).
    fn step(&mut self, kind: Kind, attrs: &Value) -> Result<&mut Step, String> {
        let field = kind.reference();
        let id = int(attrs.get(field), field)?.ok_or_else(|| format!("event has no `{field}`"))?;
        self.steps(kind).get_mut(&id).ok_or_else(|| format!("unknown {field} {id}"))
    }
}

/// Sets the step columns of a row.
fn fill(row: &mut WorkflowEvent, kind: Kind, step: &Step) {
    row.step_type = Some(kind.step_type().into());
    row.step_id = Some(step.id.clone());
    row.step_name.clone_from(&step.name);
}

impl Decoder for TemporalHistory {
    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        let Some(v) = parse_record(source, record, out) else {
            return;
        };
        let Some(events) = v.get("events").and_then(Value::as_array) else {
            out.push(error(
                source,
                &record.location,
                "expected a Temporal history: an object with an `events` array",
                &record.text,
            ));
            return;
        };
        let started = events
            .iter()
            .find(|e| {
                e.get("eventType").and_then(Value::as_str).map(normalize).as_deref()
                    == Some("WORKFLOW_EXECUTION_STARTED")
            })
            .map(|e| attributes(e, "WORKFLOW_EXECUTION_STARTED"))
            .unwrap_or(&Value::Null);
        let run_id = self
            .run_id
            .clone()
            .or_else(|| text(started, "/originalExecutionRunId"))
            .or_else(|| text(started, "/firstExecutionRunId"))
            .unwrap_or_else(|| record.location.clone());
        let mut run = Run {
            run_id,
            workflow_name: text(started, "/workflowType/name"),
            // A bad attempt is reported at the started event.
            attempt: attempt(started.get("attempt")).ok().flatten(),
            activities: HashMap::new(),
            children: HashMap::new(),
        };
        for (index, e) in events.iter().enumerate() {
            match run.event(e) {
                Ok(Some(row)) => out.push(Event::Workflow(row)),
                Ok(None) => {}
                Err(reason) => {
                    let id = match e.get("eventId") {
                        Some(Value::String(s)) => format!(" (eventId {s})"),
                        Some(Value::Number(n)) => format!(" (eventId {n})"),
                        _ => String::new(),
                    };
                    let location = format!("{}#events[{index}]{id}", record.location);
                    out.push(error(source, &location, reason, &e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2024-01-01T00:00:00Z: 54 years of 365 days + 13 leap days (1972..=2020) = 19723 days.
    const T0: i64 = 19_723 * 86_400 * 1_000_000;

    fn at(seq: i64) -> String {
        format!("2024-01-01T00:00:{seq:02}Z")
    }

    /// A history with a retried activity (attempt 3), a failed activity, a child workflow and
    /// completion; `new_names` picks the event type spelling, `string_ids` the id encoding.
    fn history(new_names: bool, string_ids: bool) -> Value {
        let ty = |old: &str, new: &str| {
            if new_names { format!("EVENT_TYPE_{new}") } else { old.to_owned() }
        };
        let id = |n: i64| {
            if string_ids { json!(n.to_string()) } else { json!(n) }
        };
        json!({"events": [
            {"eventId": id(1), "eventTime": at(1), "eventType": ty("WorkflowExecutionStarted", "WORKFLOW_EXECUTION_STARTED"),
             "workflowExecutionStartedEventAttributes": {"workflowType": {"name": "order"},
                "originalExecutionRunId": "run-1", "firstExecutionRunId": "run-0", "attempt": 1}},
            {"eventId": id(2), "eventTime": at(2), "eventType": ty("WorkflowTaskScheduled", "WORKFLOW_TASK_SCHEDULED"),
             "workflowTaskScheduledEventAttributes": {"attempt": 1}},
            {"eventId": id(5), "eventTime": at(5), "eventType": ty("ActivityTaskScheduled", "ACTIVITY_TASK_SCHEDULED"),
             "activityTaskScheduledEventAttributes": {"activityId": "1", "activityType": {"name": "charge"}}},
            {"eventId": id(6), "eventTime": at(6), "eventType": ty("ActivityTaskScheduled", "ACTIVITY_TASK_SCHEDULED"),
             "activityTaskScheduledEventAttributes": {"activityId": "2", "activityType": {"name": "ship"}}},
            {"eventId": id(7), "eventTime": at(7), "eventType": ty("StartChildWorkflowExecutionInitiated", "START_CHILD_WORKFLOW_EXECUTION_INITIATED"),
             "startChildWorkflowExecutionInitiatedEventAttributes": {"workflowType": {"name": "notify"}}},
            {"eventId": id(8), "eventTime": at(8), "eventType": ty("ActivityTaskStarted", "ACTIVITY_TASK_STARTED"),
             "activityTaskStartedEventAttributes": {"scheduledEventId": id(5), "attempt": id(3),
                "lastFailure": {"message": "card declined"}}},
            {"eventId": id(9), "eventTime": at(9), "eventType": ty("ActivityTaskCompleted", "ACTIVITY_TASK_COMPLETED"),
             "activityTaskCompletedEventAttributes": {"scheduledEventId": id(5), "startedEventId": id(8)}},
            {"eventId": id(10), "eventTime": at(10), "eventType": ty("ActivityTaskStarted", "ACTIVITY_TASK_STARTED"),
             "activityTaskStartedEventAttributes": {"scheduledEventId": id(6), "attempt": 1}},
            {"eventId": id(11), "eventTime": at(11), "eventType": ty("ActivityTaskFailed", "ACTIVITY_TASK_FAILED"),
             "activityTaskFailedEventAttributes": {"scheduledEventId": id(6), "failure": {"message": "warehouse closed"}}},
            {"eventId": id(12), "eventTime": at(12), "eventType": ty("ChildWorkflowExecutionStarted", "CHILD_WORKFLOW_EXECUTION_STARTED"),
             "childWorkflowExecutionStartedEventAttributes": {"initiatedEventId": id(7), "workflowType": {"name": "notify"}}},
            {"eventId": id(13), "eventTime": at(13), "eventType": ty("ChildWorkflowExecutionCompleted", "CHILD_WORKFLOW_EXECUTION_COMPLETED"),
             "childWorkflowExecutionCompletedEventAttributes": {"initiatedEventId": id(7)}},
            {"eventId": id(14), "eventTime": at(14), "eventType": ty("TimerStarted", "TIMER_STARTED"),
             "timerStartedEventAttributes": {"timerId": "t"}},
            {"eventId": id(15), "eventTime": at(15), "eventType": ty("WorkflowExecutionCompleted", "WORKFLOW_EXECUTION_COMPLETED"),
             "workflowExecutionCompletedEventAttributes": {}}
        ]})
    }

    type Expected = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        WorkflowState,
        Option<i64>,
        i64,
        Option<&'static str>,
    );

    /// (step_id, step_name, step_type, state, attempt, event id, failure), in history order.
    const EXPECTED: [Expected; 11] = {
        use WorkflowState as S;
        [
            (None, None, None, S::Running, Some(1), 1, None),
            (Some("5"), Some("charge"), Some("activity"), S::Scheduled, None, 5, None),
            (Some("6"), Some("ship"), Some("activity"), S::Scheduled, None, 6, None),
            (Some("7"), Some("notify"), Some("child_workflow"), S::Scheduled, None, 7, None),
            (Some("5"), Some("charge"), Some("activity"), S::Running, Some(3), 8, Some("card declined")),
            (Some("5"), Some("charge"), Some("activity"), S::Completed, Some(3), 9, None),
            (Some("6"), Some("ship"), Some("activity"), S::Running, Some(1), 10, None),
            (Some("6"), Some("ship"), Some("activity"), S::Failed, Some(1), 11, Some("warehouse closed")),
            (Some("7"), Some("notify"), Some("child_workflow"), S::Running, None, 12, None),
            (Some("7"), Some("notify"), Some("child_workflow"), S::Completed, None, 13, None),
            (None, None, None, S::Completed, Some(1), 15, None),
        ]
    };

    /// The raw event type of the expected row `i` in either spelling.
    const RAW: [(&str, &str); 11] = [
        ("WorkflowExecutionStarted", "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"),
        ("ActivityTaskScheduled", "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"),
        ("ActivityTaskScheduled", "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"),
        ("StartChildWorkflowExecutionInitiated", "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED"),
        ("ActivityTaskStarted", "EVENT_TYPE_ACTIVITY_TASK_STARTED"),
        ("ActivityTaskCompleted", "EVENT_TYPE_ACTIVITY_TASK_COMPLETED"),
        ("ActivityTaskStarted", "EVENT_TYPE_ACTIVITY_TASK_STARTED"),
        ("ActivityTaskFailed", "EVENT_TYPE_ACTIVITY_TASK_FAILED"),
        ("ChildWorkflowExecutionStarted", "EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED"),
        ("ChildWorkflowExecutionCompleted", "EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED"),
        ("WorkflowExecutionCompleted", "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"),
    ];

    fn decode(d: &TemporalHistory, location: &str, v: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        d.decode("temporal", &Record::new(location, serde_json::to_string_pretty(v).unwrap_or_default()), &mut out);
        out
    }

    fn decoder(options: Value) -> TemporalHistory {
        match TemporalHistory::new(&options) {
            Ok(d) => d,
            Err(e) => panic!("options rejected: {e}"),
        }
    }

    #[test]
    fn both_spellings_decode_alike() {
        for (new_names, string_ids) in [(true, true), (false, false), (false, true)] {
            let out = decode(&decoder(Value::Null), "h.json", &history(new_names, string_ids));
            let expected: Vec<Event> = EXPECTED
                .iter()
                .zip(RAW)
                .map(|(&(step_id, step_name, step_type, state, attempt, seq, failure), (old, new))| {
                    Event::Workflow(WorkflowEvent {
                        run_id: "run-1".into(),
                        workflow_name: Some("order".into()),
                        step_id: step_id.map(Into::into),
                        step_name: step_name.map(Into::into),
                        step_type: step_type.map(Into::into),
                        state,
                        raw_state: (if new_names { new } else { old }).into(),
                        attempt,
                        event_time: Some(T0 + seq * 1_000_000),
                        event_seq: Some(seq),
                        failure_message: failure.map(Into::into),
                    })
                })
                .collect();
            assert_eq!(out, expected, "new_names={new_names} string_ids={string_ids}");
        }
    }

    #[test]
    fn run_id_choice() {
        let mut h = history(true, true);
        let rid = |out: &[Event]| match out.first() {
            Some(Event::Workflow(w)) => w.run_id.clone(),
            _ => String::new(),
        };
        assert_eq!(rid(&decode(&decoder(json!({"run_id": "mine"})), "h.json", &h)), "mine");
        if let Some(a) = h.pointer_mut("/events/0/workflowExecutionStartedEventAttributes/originalExecutionRunId") {
            *a = json!("");
        }
        assert_eq!(rid(&decode(&decoder(Value::Null), "h.json", &h)), "run-0");
        if let Some(events) = h.pointer_mut("/events").and_then(Value::as_array_mut) {
            events.remove(0);
        }
        let out = decode(&decoder(Value::Null), "h.json", &h);
        assert_eq!(rid(&out), "h.json");
        assert!(matches!(out.first(), Some(Event::Workflow(w)) if w.workflow_name.is_none() && w.attempt.is_none()));
    }

    #[test]
    fn run_level_terminal_states() {
        let d = decoder(json!({"run_id": "r"}));
        let cases = [
            (
                "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED",
                json!({"failure": {"message": "boom"}}),
                WorkflowState::Failed,
                Some("boom"),
            ),
            ("WorkflowExecutionTimedOut", json!({"retryState": "x"}), WorkflowState::TimedOut, None),
            ("EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED", json!({}), WorkflowState::Cancelled, None),
            ("WorkflowExecutionTerminated", json!({"reason": "by ops"}), WorkflowState::Terminated, Some("by ops")),
            ("EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW", json!({}), WorkflowState::Completed, None),
        ];
        for (ty, attrs, state, failure) in cases {
            let t = normalize(ty);
            let mut key = String::new();
            for (i, w) in t.split('_').enumerate() {
                let w = w.to_ascii_lowercase();
                if i == 0 {
                    key += &w;
                } else {
                    key += &w[..1].to_ascii_uppercase();
                    key += &w[1..];
                }
            }
            key += "EventAttributes";
            let mut event = json!({"eventId": "3", "eventType": ty});
            event[&key] = attrs;
            let h = json!({ "events": [event] });
            let out = decode(&d, "h", &h);
            assert!(
                matches!(&out[..], [Event::Workflow(w)] if w.state == state && w.failure_message.as_deref() == failure
                    && w.raw_state == ty && w.step_id.is_none() && w.event_time.is_none() && w.event_seq == Some(3)),
                "{ty}: {out:?}"
            );
        }
    }

    #[test]
    fn bad_events_are_errors_and_the_rest_decodes() {
        let h = json!({"events": [
            {"eventId": "1", "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
             "workflowExecutionStartedEventAttributes": {"workflowType": {"name": "w"}, "originalExecutionRunId": "r"}},
            {"eventId": "2", "eventTime": "2024-01-01T00:00:02Z"},
            {"eventId": "3", "eventType": "EVENT_TYPE_ACTIVITY_TASK_COMPLETED",
             "activityTaskCompletedEventAttributes": {"scheduledEventId": "99"}},
            {"eventType": "ActivityTaskScheduled", "activityTaskScheduledEventAttributes": {"activityType": {"name": "a"}}},
            {"eventId": "5", "eventType": "ActivityTaskScheduled", "eventTime": "yesterday"},
            {"eventId": "6", "eventType": "ActivityTaskStarted", "activityTaskStartedEventAttributes": {}},
            {"eventId": "7", "eventType": "ActivityTaskCancelRequested", "activityTaskCancelRequestedEventAttributes": {"scheduledEventId": "98"}},
            {"eventId": "8", "eventType": "ChildWorkflowExecutionStarted", "childWorkflowExecutionStartedEventAttributes": {"initiatedEventId": "1"}},
            {"eventId": "9", "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"}
        ]});
        let out = decode(&decoder(Value::Null), "h.json", &h);
        let got: Vec<(String, String)> = out
            .iter()
            .map(|e| match e {
                Event::Workflow(w) => ("row".into(), w.raw_state.clone()),
                Event::Error(e) => (e.location.clone(), e.error.clone()),
                other => ("other".into(), format!("{other:?}")),
            })
            .collect();
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            got,
            vec![
                s("row", "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"),
                s("h.json#events[1] (eventId 2)", "event has no `eventType`"),
                s("h.json#events[2] (eventId 3)", "unknown scheduledEventId 99"),
                // No eventId: the index alone (it used to read `#event 3` like the one above).
                s("h.json#events[3]", "event has no `eventId`"),
                s("h.json#events[4] (eventId 5)", "bad eventTime \"yesterday\""),
                s("h.json#events[5] (eventId 6)", "event has no `scheduledEventId`"),
                s("h.json#events[7] (eventId 8)", "unknown initiatedEventId 1"),
                s("row", "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"),
            ]
        );
        // The raw text of an event error is the event.
        assert!(matches!(&out[1], Event::Error(e) if e.raw == r#"{"eventId":"2","eventTime":"2024-01-01T00:00:02Z"}"#));
    }

    #[test]
    fn attempts_times_and_non_objects() {
        let h = json!({"events": [
            {"eventId": 1, "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED",
             "workflowExecutionStartedEventAttributes": {"originalExecutionRunId": "r", "attempt": 0}},
            5,
            {"eventId": "3", "eventType": "ActivityTaskScheduled",
             "activityTaskScheduledEventAttributes": {"activityType": {"name": "a"}}},
            {"eventId": "4", "eventType": "ActivityTaskStarted",
             "activityTaskStartedEventAttributes": {"scheduledEventId": "3", "attempt": "0"}},
            {"eventId": "5", "eventType": "ActivityTaskStarted",
             "activityTaskStartedEventAttributes": {"scheduledEventId": "3", "attempt": 2}},
            {"eventId": 6, "eventType": "ActivityTaskCompleted", "eventTime": "0001-01-01T00:00:00+01:00",
             "activityTaskCompletedEventAttributes": {"scheduledEventId": "3"}},
            {"eventId": 7, "eventType": "ActivityTaskCompleted", "eventTime": "0001-01-01T00:00:00Z",
             "activityTaskCompletedEventAttributes": {"scheduledEventId": "3"}}
        ]});
        let out = decode(&decoder(Value::Null), "h.json:2#0", &h);
        let got: Vec<(String, String)> = out
            .iter()
            .map(|e| match e {
                Event::Workflow(w) => (format!("row {:?}", w.event_seq), format!("{:?} {:?}", w.attempt, w.event_time)),
                Event::Error(e) => (e.location.clone(), e.error.clone()),
                other => ("other".into(), format!("{other:?}")),
            })
            .collect();
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            got,
            vec![
                s("h.json:2#0#events[0] (eventId 1)", "bad attempt 0 (must be at least 1)"),
                s("h.json:2#0#events[1]", "event is not a JSON object"),
                // The run's attempt is unknown (NULL) since the started event's is bad.
                s("row Some(3)", "None None"),
                s("h.json:2#0#events[3] (eventId 4)", "bad attempt 0 (must be at least 1)"),
                s("row Some(5)", "Some(2) None"),
                s(
                    "h.json:2#0#events[5] (eventId 6)",
                    "bad eventTime \"0001-01-01T00:00:00+01:00\": out of range (years 0001..=9999)"
                ),
                // 0001-01-01T00:00:00Z = -62135596800 s.
                s("row Some(7)", "Some(2) Some(-62135596800000000)"),
            ]
        );
    }

    #[test]
    fn not_a_history() {
        let d = decoder(Value::Null);
        let out = decode(&d, "x.json", &json!({"history": []}));
        assert!(matches!(&out[..], [Event::Error(e)] if e.location == "x.json"
            && e.error == "expected a Temporal history: an object with an `events` array"));
        let mut out = Vec::new();
        d.decode("t", &Record::new("y.json:1", "{\"events\": [}"), &mut out);
        assert!(
            matches!(&out[..], [Event::Error(e)] if e.location == "y.json:1" && e.error.starts_with("invalid JSON: "))
        );
        assert!(TemporalHistory::new(&json!({"run_id": 5})).is_err());
    }

    #[test]
    fn normalize_names() {
        assert_eq!(normalize("EVENT_TYPE_ACTIVITY_TASK_STARTED"), "ACTIVITY_TASK_STARTED");
        assert_eq!(normalize("ActivityTaskStarted"), "ACTIVITY_TASK_STARTED");
        assert_eq!(normalize("WorkflowExecutionContinuedAsNew"), "WORKFLOW_EXECUTION_CONTINUED_AS_NEW");
        assert_eq!(normalize("ACTIVITY_TASK_STARTED"), "ACTIVITY_TASK_STARTED");
    }
}
