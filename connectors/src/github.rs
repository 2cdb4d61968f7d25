//! Format `github-actions`: GitHub webhook payloads for Actions and Checks →
//! `workflow_events`.
//!
//! A record is one webhook payload, as GitHub delivers it (the body of a `POST`, or a file
//! holding one, e.g. the examples in octokit/webhooks `payload-examples/api.github.com/`).
//! Its kind is the object it carries, looked for in this order: `workflow_job`,
//! `workflow_run`, `check_run`, `check_suite` (GitHub's `X-GitHub-Event` header names the same
//! thing; the payload alone is enough). Field meanings follow GitHub's REST reference
//! ("Webhook events and payloads": `workflow_run`, `workflow_job`, `check_run`,
//! `check_suite`).
//!
//! Runs and steps (`workflow_events` columns):
//! - **`workflow_run`** → run-level rows of run `run_id` = `workflow_run.id` (as text);
//!   `workflow_name` = `workflow_run.name`, else `workflow.name`; `attempt` = `run_attempt`.
//! - **`workflow_job`** → a step of run `workflow_job.run_id` with `step_type` `job`,
//!   `step_id` = the job's `id`, `step_name` = its `name`, `workflow_name` =
//!   `workflow_name`, `attempt` = `run_attempt`; and, unless option `job_steps = false`, one
//!   step per element of `steps[]`: `step_type` `step`, `step_id` = `JOB_ID/NUMBER`,
//!   `step_name` = its `name`, the job's attempt. A failed job's `failure_message` names its
//!   failed steps (`failed steps: 8 "Run yarn run format-check"`).
//! - **`check_suite`** → run-level rows of run `check_suite/ID`, `workflow_name` = `app.name`.
//! - **`check_run`** → a step of run `check_suite/ID` (`check_run.check_suite.id`),
//!   `step_type` `check_run`, `step_id` = its `id`, `step_name` = its `name`, `workflow_name`
//!   = `app.name`; a failed check run's `failure_message` is `output.title`.
//!
//! States: `status` `requested`, `queued`, `waiting` or `pending` → SCHEDULED; `in_progress` →
//! RUNNING; `completed` → by `conclusion`: `success`, `neutral`, `skipped` → COMPLETED;
//! `failure`, `startup_failure`, `action_required` → FAILED; `cancelled`, `stale` → CANCELLED;
//! `timed_out` → TIMED_OUT. Any other status, or a completed one without a known conclusion,
//! is an ingest error.
//!
//! A payload is a snapshot: each run, job, step, suite or check run in it gives one row per
//! transition whose time it carries — SCHEDULED at `created_at` (runs, jobs and suites; a
//! queued step or check run, which has no such time, gives a SCHEDULED row without one), RUNNING
//! at `run_started_at` (runs) or `started_at` (jobs, steps, check runs) once it is in progress
//! or completed, and its final state at `updated_at` (runs, suites) or `completed_at` (jobs,
//! steps, check runs) once completed. `raw_state` is `queued`, `in_progress` or
//! `completed/CONCLUSION` accordingly (the payload's own `status` for a SCHEDULED row of what is
//! still waiting). Successive deliveries repeat the transitions they share, so
//! `workflow_events` holds a transition once per payload that shows it; `workflow_steps` and
//! `workflow_runs` are the same either way.
//!
//! Real payloads carry inconsistent times (a step that starts before its job, a step that
//! completes in the second it starts), so times do not order the transitions: `event_seq` is
//! a derived order, `4 × attempt + phase` (phase 0 scheduled, 1 running, 2 completed;
//! attempt 1 when the payload has none), under which the latest state of a job or run is its
//! latest phase of its latest attempt whatever the times say.
//!
//! Ids are JSON numbers or strings of digits. Times are RFC 3339 within years 0001..=9999;
//! `run_attempt` is an integer in 1..=1,000,000 ([`MAX_ATTEMPT`]). An
//! entity that cannot be read (bad status or conclusion, id or time of the wrong type) is an
//! ingest error at `LOCATION#KIND` (`LOCATION#workflow_job.steps[INDEX]` for a step, INDEX
//! 0-based), and the rest of the payload is still decoded (a job whose `steps` is not an array
//! is refused whole: its steps cannot be told apart); a payload with none of the four objects
//! is one ingest error.

use amx_dataflows::event::{Event, WorkflowEvent, WorkflowState};
use serde_json::Value;

use crate::options::{Options, bad};
use crate::time::{RANGE, in_range, parse_timestamp};
use crate::{ConfigError, Decoder, Record, error, parse_record, short};

/// The format's name.
pub const FORMAT: &str = "github-actions";

/// The payload kinds, in the order they are looked for.
pub const KINDS: [&str; 4] = ["workflow_job", "workflow_run", "check_run", "check_suite"];

/// The `github-actions` decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct GitHubActions {
    job_steps: bool,
}

impl GitHubActions {
    /// Builds the decoder from the source's options: `job_steps` (boolean, default `true`:
    /// a job's steps are steps of the run too).
    ///
    /// # Errors
    /// An unknown option, or a `job_steps` that is not a boolean.
    pub fn new(options: &Value) -> Result<GitHubActions, ConfigError> {
        let mut o = Options::new(FORMAT, options)?;
        let job_steps = match o.value("job_steps") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(bad("job_steps", format!("expected a boolean, found {}", short(other)))),
        };
        o.finish()?;
        Ok(GitHubActions { job_steps })
    }
}

/// Where an entity is in its life, from its `status` and `conclusion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started: the status word as written.
    Waiting,
    /// In progress.
    Running,
    /// Completed, in this terminal state.
    Done(WorkflowState),
}

/// The phase of `status` / `conclusion` (see the module docs), or why it cannot be read.
fn phase(entity: &Value) -> Result<Phase, String> {
    let status = match entity.get("status") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => return Err("no `status`".into()),
        Some(other) => return Err(format!("`status` is not a string: {}", short(other))),
    };
    match status {
        "requested" | "queued" | "waiting" | "pending" => Ok(Phase::Waiting),
        "in_progress" => Ok(Phase::Running),
        "completed" => {
            let conclusion = entity.get("conclusion").and_then(Value::as_str);
            let state = match conclusion {
                Some("success" | "neutral" | "skipped") => WorkflowState::Completed,
                Some("failure" | "startup_failure" | "action_required") => WorkflowState::Failed,
                Some("cancelled" | "stale") => WorkflowState::Cancelled,
                Some("timed_out") => WorkflowState::TimedOut,
                _ => {
                    let shown = entity.get("conclusion").map_or_else(|| "none".to_owned(), short);
                    return Err(format!("status `completed` with an unknown conclusion {shown}"));
                }
            };
            Ok(Phase::Done(state))
        }
        other => Err(format!("unknown status {}", short(&Value::String(other.to_owned())))),
    }
}

/// An id: a JSON number or a string of digits, as text. `Ok(None)` when missing or null.
fn id(v: Option<&Value>, what: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(s.clone())),
        Some(other) => Err(format!("bad {what} {}", short(other))),
    }
}

/// A required id (see [`id`]).
fn required_id(v: Option<&Value>, what: &str) -> Result<String, String> {
    id(v, what)?.ok_or_else(|| format!("no `{what}`"))
}

/// An RFC 3339 time at `field` of `entity`. `Ok(None)` when missing or null.
fn time(entity: &Value, field: &str) -> Result<Option<i64>, String> {
    match entity.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::String(s)) => {
            let t = parse_timestamp(s)
                .ok_or_else(|| format!("bad {field} {}: not an RFC 3339 time in the years 0001..=9999", short(v)))?;
            if !in_range(t) {
                return Err(format!("bad {field} {}: out of range ({RANGE})", short(v)));
            }
            Ok(Some(t))
        }
        Some(other) => Err(format!("bad {field} {}: not an RFC 3339 time", short(other))),
    }
}

/// A non-empty string at `pointer`.
fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The largest `run_attempt` taken (GitHub allows 50 re-runs of a run; the bound keeps
/// `event_seq` = 4 × attempt + phase far inside a `BIGINT`).
pub const MAX_ATTEMPT: i64 = 1_000_000;

/// `run_attempt`: an integer in `1..=MAX_ATTEMPT`. `Ok(None)` when missing or null.
fn attempt(entity: &Value) -> Result<Option<i64>, String> {
    match entity.get("run_attempt") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|a| (1..=MAX_ATTEMPT).contains(&a)) => Ok(n.as_i64()),
        Some(other) => Err(format!("bad run_attempt {} (an integer in 1..={MAX_ATTEMPT})", short(other))),
    }
}

/// What one run, suite, job, step or check run is, before it becomes rows.
struct Entity {
    run_id: String,
    workflow_name: Option<String>,
    /// `(step_id, step_name, step_type)`; None for a run or suite.
    step: Option<(String, Option<String>, &'static str)>,
    attempt: Option<i64>,
    phase: Phase,
    /// The payload's status word (for the SCHEDULED row of what is still waiting).
    status: String,
    conclusion: Option<String>,
    created: Option<i64>,
    started: Option<i64>,
    ended: Option<i64>,
    failure_message: Option<String>,
}

impl Entity {
    /// Reads the status, conclusion and times of `entity`; `created`, `started` and `ended`
    /// name the fields that hold its creation, start and end times (if it has them).
    fn read(
        entity: &Value,
        run_id: String,
        created: Option<&str>,
        started: Option<&str>,
        ended: &str,
    ) -> Result<Entity, String> {
        Ok(Entity {
            run_id,
            workflow_name: None,
            step: None,
            attempt: attempt(entity)?,
            phase: phase(entity)?,
            status: entity.get("status").and_then(Value::as_str).unwrap_or_default().to_owned(),
            conclusion: entity.get("conclusion").and_then(Value::as_str).map(str::to_owned),
            created: created.map(|f| time(entity, f)).transpose()?.flatten(),
            started: started.map(|f| time(entity, f)).transpose()?.flatten(),
            ended: time(entity, ended)?,
            failure_message: None,
        })
    }

    /// Its rows (see the module docs).
    fn rows(self, out: &mut Vec<Event>) {
        let base = 4 * self.attempt.unwrap_or(1);
        let (step_id, step_name, step_type) = match self.step {
            Some((id, name, ty)) => (Some(id), name, Some(ty.to_owned())),
            None => (None, None, None),
        };
        let row = |state: WorkflowState, raw_state: String, time: Option<i64>, phase: i64| WorkflowEvent {
            run_id: self.run_id.clone(),
            workflow_name: self.workflow_name.clone(),
            step_id: step_id.clone(),
            step_name: step_name.clone(),
            step_type: step_type.clone(),
            state,
            raw_state,
            attempt: self.attempt,
            event_time: time,
            event_seq: Some(base + phase),
            failure_message: None,
        };
        let waiting = self.phase == Phase::Waiting;
        if waiting || self.created.is_some() {
            let raw = if waiting { self.status.clone() } else { "queued".to_owned() };
            out.push(Event::Workflow(row(WorkflowState::Scheduled, raw, self.created, 0)));
        }
        if !waiting && (self.started.is_some() || self.phase == Phase::Running) {
            out.push(Event::Workflow(row(WorkflowState::Running, "in_progress".into(), self.started, 1)));
        }
        if let Phase::Done(state) = self.phase {
            let raw = format!("completed/{}", self.conclusion.as_deref().unwrap_or_default());
            let mut last = row(state, raw, self.ended, 2);
            last.failure_message = self.failure_message;
            out.push(Event::Workflow(last));
        }
    }
}

impl GitHubActions {
    /// A `workflow_run`: run-level rows.
    fn workflow_run(payload: &Value, run: &Value) -> Result<Entity, String> {
        let run_id = required_id(run.get("id"), "id")?;
        let mut e = Entity::read(run, run_id, Some("created_at"), Some("run_started_at"), "updated_at")?;
        e.workflow_name = text(run, "/name").or_else(|| text(payload, "/workflow/name"));
        Ok(e)
    }

    /// A `workflow_job`: the job's rows, then each step's (or the error of a step that cannot
    /// be read, at `location#workflow_job.steps[INDEX]`).
    fn workflow_job(&self, source: &str, location: &str, job: &Value, out: &mut Vec<Event>) -> Result<(), String> {
        let run_id = required_id(job.get("run_id"), "run_id")?;
        let job_id = required_id(job.get("id"), "id")?;
        let mut e = Entity::read(job, run_id.clone(), Some("created_at"), Some("started_at"), "completed_at")?;
        let workflow_name = text(job, "/workflow_name");
        e.workflow_name.clone_from(&workflow_name);
        e.step = Some((job_id.clone(), text(job, "/name"), "job"));
        let steps = match job.get("steps") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(steps)) => steps.as_slice(),
            Some(other) => return Err(format!("`steps` is not an array: {}", short(other))),
        };
        if matches!(e.phase, Phase::Done(WorkflowState::Failed)) {
            let failed: Vec<String> = steps
                .iter()
                .filter(|s| s.get("conclusion").and_then(Value::as_str) == Some("failure"))
                .map(|s| {
                    let number = id(s.get("number"), "number").ok().flatten().unwrap_or_else(|| "?".to_owned());
                    format!("{number} {}", Value::String(text(s, "/name").unwrap_or_default()))
                })
                .collect();
            if !failed.is_empty() {
                e.failure_message = Some(format!("failed steps: {}", failed.join(", ")));
            }
        }
        let job_attempt = e.attempt;
        e.rows(out);
        if !self.job_steps {
            return Ok(());
        }
        for (index, step) in steps.iter().enumerate() {
            let read = || -> Result<Entity, String> {
                if !step.is_object() {
                    return Err("step is not a JSON object".into());
                }
                let number = required_id(step.get("number"), "number")?;
                let mut s = Entity::read(step, run_id.clone(), None, Some("started_at"), "completed_at")?;
                s.workflow_name.clone_from(&workflow_name);
                s.step = Some((format!("{job_id}/{number}"), text(step, "/name"), "step"));
                s.attempt = job_attempt;
                Ok(s)
            };
            match read() {
                Ok(s) => s.rows(out),
                Err(reason) => {
                    let at = format!("{location}#workflow_job.steps[{index}]");
                    out.push(error(source, &at, reason, &step.to_string()));
                }
            }
        }
        Ok(())
    }

    /// A `check_suite`: run-level rows of run `check_suite/ID`.
    fn check_suite(suite: &Value) -> Result<Entity, String> {
        let run_id = format!("check_suite/{}", required_id(suite.get("id"), "id")?);
        let mut e = Entity::read(suite, run_id, Some("created_at"), None, "updated_at")?;
        e.workflow_name = text(suite, "/app/name");
        Ok(e)
    }

    /// A `check_run`: a step of run `check_suite/ID`.
    fn check_run(check: &Value) -> Result<Entity, String> {
        let suite = required_id(check.pointer("/check_suite/id"), "check_suite.id")?;
        let mut e = Entity::read(check, format!("check_suite/{suite}"), None, Some("started_at"), "completed_at")?;
        e.workflow_name = text(check, "/app/name").or_else(|| text(check, "/check_suite/app/name"));
        e.step = Some((required_id(check.get("id"), "id")?, text(check, "/name"), "check_run"));
        if matches!(e.phase, Phase::Done(WorkflowState::Failed | WorkflowState::TimedOut)) {
            e.failure_message = text(check, "/output/title");
        }
        Ok(e)
    }
}

impl Decoder for GitHubActions {
    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        let Some(payload) = parse_record(source, record, out) else {
            return;
        };
        let Some((kind, entity)) = KINDS.iter().find_map(|k| Some((*k, payload.get(*k).filter(|v| v.is_object())?)))
        else {
            let reason =
                format!("not a GitHub Actions or Checks webhook payload: expected an object `{}`", KINDS.join("`, `"));
            out.push(error(source, &record.location, reason, &record.text));
            return;
        };
        let result = match kind {
            "workflow_job" => self.workflow_job(source, &record.location, entity, out),
            "workflow_run" => GitHubActions::workflow_run(&payload, entity).map(|e| e.rows(out)),
            "check_run" => GitHubActions::check_run(entity).map(|e| e.rows(out)),
            _ => GitHubActions::check_suite(entity).map(|e| e.rows(out)),
        };
        if let Err(reason) = result {
            let at = format!("{}#{kind}", record.location);
            out.push(error(source, &at, reason, &entity.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2021-08-05T00:00:00Z in µs: 18844 days since 1970-01-01 (51 years of 365 days + 13
    /// leap days, 1972..=2020 = 18628, + 216 days to 5 August 2021 [31+28+31+30+31+30+31+4]).
    const DAY: i64 = 18_844 * 86_400 * 1_000_000;

    fn at(h: i64, m: i64, s: i64) -> Option<i64> {
        Some(DAY + ((h * 60 + m) * 60 + s) * 1_000_000)
    }

    fn decode(payload: &Value, options: &Value) -> Vec<Event> {
        let record = Record { location: "hook.json".into(), text: payload.to_string(), error: None, metadata: None };
        let mut out = Vec::new();
        GitHubActions::new(options).expect("options").decode("gh", &record, &mut out);
        out
    }

    /// `(step_id, state, raw_state, attempt, event_time, event_seq)` of each row.
    type Brief = (Option<String>, WorkflowState, String, Option<i64>, Option<i64>, Option<i64>);

    fn brief(out: &[Event]) -> Vec<Brief> {
        out.iter()
            .map(|e| match e {
                Event::Workflow(w) => {
                    (w.step_id.clone(), w.state, w.raw_state.clone(), w.attempt, w.event_time, w.event_seq)
                }
                other => panic!("not a workflow row: {other:?}"),
            })
            .collect()
    }

    fn job(status: &str, conclusion: Value, steps: Value) -> Value {
        json!({"action": status, "workflow_job": {
            "id": 29, "run_id": 7, "run_attempt": 2, "name": "test", "workflow_name": "CI",
            "status": status, "conclusion": conclusion,
            "created_at": "2021-08-05T10:00:00Z", "started_at": "2021-08-05T10:01:00Z",
            "completed_at": if status == "completed" { json!("2021-08-05T10:05:00Z") } else { Value::Null },
            "steps": steps}})
    }

    #[test]
    fn a_completed_job_gives_its_transitions_and_its_steps() {
        let steps = json!([
            {"name": "Set up job", "status": "completed", "conclusion": "success", "number": 1,
             "started_at": "2021-08-05T09:59:00.000Z", "completed_at": "2021-08-05T10:02:00.000Z"},
            // A number as a string of digits, as ids may be.
            {"name": "Lint", "status": "completed", "conclusion": "failure", "number": "2",
             "started_at": "2021-08-05T10:02:00.000Z", "completed_at": "2021-08-05T10:03:00.000Z"},
            {"name": "Post", "status": "completed", "conclusion": "skipped", "number": 9,
             "started_at": "2021-08-05T10:03:00.000Z", "completed_at": "2021-08-05T10:03:00.000Z"}
        ]);
        let out = decode(&job("completed", json!("failure"), steps), &json!({}));
        use WorkflowState::*;
        let s = |id: &str| Some(id.to_owned());
        // Attempt 2: event_seq 8 + phase. The first step starts before its job (10:01), as in
        // real payloads; its order still comes from its phases.
        assert_eq!(
            brief(&out),
            vec![
                (s("29"), Scheduled, "queued".into(), Some(2), at(10, 0, 0), Some(8)),
                (s("29"), Running, "in_progress".into(), Some(2), at(10, 1, 0), Some(9)),
                (s("29"), Failed, "completed/failure".into(), Some(2), at(10, 5, 0), Some(10)),
                (s("29/1"), Running, "in_progress".into(), Some(2), at(9, 59, 0), Some(9)),
                (s("29/1"), Completed, "completed/success".into(), Some(2), at(10, 2, 0), Some(10)),
                (s("29/2"), Running, "in_progress".into(), Some(2), at(10, 2, 0), Some(9)),
                (s("29/2"), Failed, "completed/failure".into(), Some(2), at(10, 3, 0), Some(10)),
                (s("29/9"), Running, "in_progress".into(), Some(2), at(10, 3, 0), Some(9)),
                (s("29/9"), Completed, "completed/skipped".into(), Some(2), at(10, 3, 0), Some(10)),
            ]
        );
        let Event::Workflow(job_row) = &out[2] else { panic!() };
        assert_eq!(job_row.run_id, "7");
        assert_eq!(job_row.workflow_name.as_deref(), Some("CI"));
        assert_eq!(job_row.step_type.as_deref(), Some("job"));
        assert_eq!(job_row.step_name.as_deref(), Some("test"));
        assert_eq!(job_row.failure_message.as_deref(), Some(r#"failed steps: 2 "Lint""#));
        let Event::Workflow(step_row) = &out[6] else { panic!() };
        assert_eq!((step_row.step_type.as_deref(), step_row.step_name.as_deref()), (Some("step"), Some("Lint")));
        assert_eq!(step_row.failure_message, None);

        // Without job steps: the job's three rows only.
        assert_eq!(decode(&job("completed", json!("failure"), json!([])), &json!({"job_steps": false})).len(), 3);
    }

    #[test]
    fn waiting_and_running_jobs_and_queued_steps() {
        use WorkflowState::*;
        let s = |id: &str| Some(id.to_owned());
        // A waiting job (an environment's approval): SCHEDULED at created_at, its own word.
        let out = decode(&job("waiting", Value::Null, json!([])), &json!({}));
        assert_eq!(brief(&out), vec![(s("29"), Scheduled, "waiting".into(), Some(2), at(10, 0, 0), Some(8))]);
        // In progress, with a queued step (no times): the step is SCHEDULED without a time.
        let steps = json!([{"name": "Build", "status": "queued", "conclusion": null, "number": 4,
                            "started_at": null, "completed_at": null}]);
        let out = decode(&job("in_progress", Value::Null, steps), &json!({}));
        assert_eq!(
            brief(&out),
            vec![
                (s("29"), Scheduled, "queued".into(), Some(2), at(10, 0, 0), Some(8)),
                (s("29"), Running, "in_progress".into(), Some(2), at(10, 1, 0), Some(9)),
                (s("29/4"), Scheduled, "queued".into(), Some(2), None, Some(8)),
            ]
        );
    }

    #[test]
    fn runs_suites_and_check_runs() {
        use WorkflowState::*;
        let run = json!({"action": "completed", "workflow": {"name": "Build"}, "workflow_run": {
            "id": 289782451, "name": "", "status": "completed", "conclusion": "cancelled", "run_attempt": 1,
            "created_at": "2021-08-05T10:00:00Z", "run_started_at": "2021-08-05T10:00:30Z",
            "updated_at": "2021-08-05T10:09:00Z"}});
        let out = decode(&run, &json!({}));
        assert_eq!(
            brief(&out),
            vec![
                (None, Scheduled, "queued".into(), Some(1), at(10, 0, 0), Some(4)),
                (None, Running, "in_progress".into(), Some(1), at(10, 0, 30), Some(5)),
                (None, Cancelled, "completed/cancelled".into(), Some(1), at(10, 9, 0), Some(6)),
            ]
        );
        let Event::Workflow(w) = &out[0] else { panic!() };
        // An empty run name falls back to the workflow's.
        assert_eq!((w.run_id.as_str(), w.workflow_name.as_deref()), ("289782451", Some("Build")));

        let check = json!({"action": "completed", "check_run": {
            "id": 128620228, "name": "linter", "status": "completed", "conclusion": "timed_out",
            "started_at": "2021-08-05T10:01:00Z", "completed_at": "2021-08-05T10:02:00Z",
            "output": {"title": "took too long"}, "app": {"name": "octocoders-linter"},
            "check_suite": {"id": "118578147"}}});
        let out = decode(&check, &json!({}));
        assert_eq!(
            brief(&out),
            vec![
                (Some("128620228".into()), Running, "in_progress".into(), None, at(10, 1, 0), Some(5)),
                (Some("128620228".into()), TimedOut, "completed/timed_out".into(), None, at(10, 2, 0), Some(6)),
            ]
        );
        let Event::Workflow(w) = &out[1] else { panic!() };
        assert_eq!(w.run_id, "check_suite/118578147");
        assert_eq!(w.step_type.as_deref(), Some("check_run"));
        assert_eq!(w.workflow_name.as_deref(), Some("octocoders-linter"));
        assert_eq!(w.failure_message.as_deref(), Some("took too long"));

        let suite = json!({"action": "requested", "check_suite": {"id": 118578147, "status": "queued",
            "conclusion": null, "created_at": "2021-08-05T10:00:00Z", "updated_at": "2021-08-05T10:00:00Z",
            "app": {"name": "GitHub Actions"}}});
        let out = decode(&suite, &json!({}));
        assert_eq!(brief(&out), vec![(None, Scheduled, "queued".into(), None, at(10, 0, 0), Some(4))]);
    }

    fn errors(out: &[Event]) -> Vec<(String, String)> {
        out.iter()
            .filter_map(|e| match e {
                Event::Error(e) => Some((e.location.clone(), e.error.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bad_payloads_and_bad_steps_are_errors_with_their_location() {
        // A bad step is reported at its index; the job and the other step still decode.
        let steps = json!([
            {"name": "a", "status": "done", "number": 1},
            {"name": "b", "status": "completed", "conclusion": "success", "number": 2,
             "started_at": "2021-08-05T10:02:00Z", "completed_at": "yesterday"},
            "not a step",
            {"name": "c", "status": "in_progress", "number": 3, "started_at": "2021-08-05T10:02:00Z"}
        ]);
        let out = decode(&job("in_progress", Value::Null, steps), &json!({}));
        assert_eq!(
            errors(&out),
            vec![
                ("hook.json#workflow_job.steps[0]".into(), r#"unknown status "done""#.into()),
                (
                    "hook.json#workflow_job.steps[1]".into(),
                    r#"bad completed_at "yesterday": not an RFC 3339 time in the years 0001..=9999"#.into()
                ),
                ("hook.json#workflow_job.steps[2]".into(), "step is not a JSON object".into()),
            ]
        );
        assert_eq!(out.iter().filter(|e| matches!(e, Event::Workflow(_))).count(), 3);

        // The whole entity cannot be read.
        let out = decode(&job("completed", json!("exploded"), json!([])), &json!({}));
        assert_eq!(
            errors(&out),
            vec![(
                "hook.json#workflow_job".into(),
                r#"status `completed` with an unknown conclusion "exploded""#.into()
            )]
        );
        let out = decode(&json!({"workflow_run": {"id": -3, "status": "queued"}}), &json!({}));
        assert_eq!(errors(&out), vec![("hook.json#workflow_run".into(), "bad id -3".into())]);
        for attempt in [json!(0), json!(1_000_001), json!(2_305_843_009_213_693_952_i64), json!(1.5)] {
            let out =
                decode(&json!({"workflow_run": {"id": 1, "status": "queued", "run_attempt": attempt}}), &json!({}));
            assert_eq!(
                errors(&out),
                vec![(
                    "hook.json#workflow_run".into(),
                    format!("bad run_attempt {attempt} (an integer in 1..=1000000)")
                )]
            );
        }
        // The largest attempt: event_seq 4,000,002 when completed.
        let run = json!({"workflow_run": {"id": 1, "status": "completed", "conclusion": "success",
                         "run_attempt": 1_000_000, "updated_at": "2021-08-05T10:00:00Z"}});
        assert_eq!(brief(&decode(&run, &json!({})))[0].5, Some(4_000_002));
        let out = decode(&json!({"zen": "Keep it logically awesome.", "hook_id": 1}), &json!({}));
        assert_eq!(
            errors(&out),
            vec![(
                "hook.json".into(),
                "not a GitHub Actions or Checks webhook payload: expected an object `workflow_job`, `workflow_run`, \
                 `check_run`, `check_suite`"
                    .into()
            )]
        );
        assert!(GitHubActions::new(&json!({"job_steps": "no"})).is_err());
        assert!(GitHubActions::new(&json!({"steps": false})).is_err());
    }
}
