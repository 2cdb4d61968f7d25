//! AIMatrix sources and source formats.
//!
//! A *source* reads files matching a glob ([`FileReader`]) and splits them into
//! [`Record`]s, each with a location (`path:LINE`, `path:LINE#INDEX` or `path`; see
//! [`record`]). A source
//! *format* (a [`Decoder`]) turns each record into rows of the canonical relations of
//! [`amx_dataflows::event`]: [`Event::Span`], [`Event::Evaluation`], [`Event::Workflow`],
//! [`Event::Knowledge`]. Whatever a decoder cannot read becomes an [`Event::Error`] (a row of
//! `ingest_errors`): decoding never fails as a whole and never panics.
//!
//! Formats, looked up by name with [`decoder`]:
//!
//! - `openai-chat` ([`openai_chat`]): conversations in the OpenAI chat message format
//!   (e.g. tau-bench trajectories) → `spans` (+ `evaluations` for a score field);
//! - `temporal-history` ([`temporal`]): Temporal workflow histories
//!   (`temporal workflow show --output json`) → `workflow_events`;
//! - `debezium` ([`debezium`]): Debezium change events (`before`, `after`, `op`) applied to
//!   one relation, mapped as `json` maps records;
//! - `github-actions` ([`github`]): GitHub webhook payloads for Actions and Checks
//!   (`workflow_run`, `workflow_job`, `check_suite`, `check_run`) → `workflow_events`;
//! - `llm-http` ([`llm_http`]): recorded model-API exchanges (VCR cassettes, HAR logs) of
//!   OpenAI Chat Completions and Responses and Google Gemini → `spans`;
//! - `json` ([`json`]): any JSON records mapped onto one relation by a declarative mapping.

use amx_dataflows::event::{Event, IngestError};

pub mod access;
pub mod debezium;
mod fields;
pub mod github;
pub mod json;
pub mod kafka;
pub mod llm_http;
pub mod openai_chat;
pub mod otlp;
pub mod record;
pub mod table;
pub mod temporal;
pub mod time;

mod options;

pub use access::{AccessError, FileAccess};
pub use record::{FileCursor, FileReader, Record};

/// A source format's decoder: turns one [`Record`] into events.
///
/// A record that carries an error ([`Record::error`], e.g. `invalid UTF-8 at byte N`) is not
/// decoded: it becomes one [`IngestError`] with that reason, the record's location and its
/// (lossy) text as raw text.
///
/// Decoding never panics and never fails as a whole: what the decoder cannot read becomes
/// [`Event::Error`] (an [`IngestError`] with the source name, the location of the bad part,
/// a clear reason, and the raw text truncated to 1 KiB by [`IngestError::new`]), and the
/// rest of the record is still decoded where that makes sense.
pub trait Decoder: Send + Sync {
    /// Decodes `record` of the source named `source`, appending the events to `out`.
    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>);

    /// Whether a file that is not JSON is one record to it (a YAML VCR cassette), rather
    /// than one per line: [`FileReader::set_whole_other_files`]. No by default.
    fn reads_whole_files(&self) -> bool {
        false
    }

    /// Whether it reads [`Record::metadata`] (a `json` mapping with `{ metadata = … }`): a
    /// source attaches metadata to its records only then.
    fn reads_metadata(&self) -> bool {
        false
    }
}

/// An error in a source's configuration (unknown format, bad option, bad mapping, bad glob),
/// found when the job is loaded, before any record is read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The format name is not one of [`formats`].
    #[error("unknown format `{name}` (known formats: {known})")]
    UnknownFormat {
        /// The name asked for.
        name: String,
        /// The known format names, comma-separated.
        known: String,
    },
    /// The options contain an option the format does not know (a typo, usually).
    #[error("unknown option `{option}` for format `{format}` (known options: {known})")]
    UnknownOption {
        /// The format.
        format: String,
        /// The unknown option.
        option: String,
        /// The format's options, comma-separated.
        known: String,
    },
    /// An option has a wrong type or value, a required option is missing, or the options
    /// are not a table (reported as option `options`).
    #[error("option `{option}`: {reason}")]
    BadOption {
        /// The option (e.g. `id_fields`).
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A column mapping of the `json` format is wrong (unknown column, bad spec, …).
    #[error("mapping of column `{column}`: {reason}")]
    BadMapping {
        /// The column as written in the mapping.
        column: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A source path pattern is not a valid glob.
    #[error("invalid glob `{pattern}`: {reason}")]
    BadGlob {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Names of all formats known to [`decoder`], in a stable order.
pub fn formats() -> &'static [&'static str] {
    &[
        openai_chat::FORMAT,
        temporal::FORMAT,
        github::FORMAT,
        json::FORMAT,
        otlp::FORMAT,
        debezium::FORMAT,
        llm_http::FORMAT,
    ]
}

/// Looks a format up by name (`openai-chat`, `temporal-history`, `github-actions`, `json`,
/// `otlp-json`, `debezium`, `llm-http`) and validates its
/// options. The `json` and `debezium` formats with `relation = "model_prices"` read the
/// price table's rows as a declared relation's ([`model_prices_table`]): each record upserts
/// its key, a Debezium delete (or a Kafka tombstone, with the key columns read from the
/// message's metadata) deletes it.
///
/// `options` is the source's `[sources.options]` TOML table converted to JSON; `Value::Null`
/// or an empty object when absent. Unknown options are rejected (so that a typo is not
/// silently ignored).
///
/// # Errors
/// [`ConfigError::UnknownFormat`] for an unknown name; [`ConfigError::UnknownOption`],
/// [`ConfigError::BadOption`] or [`ConfigError::BadMapping`] for bad options.
pub fn decoder(format: &str, options: &serde_json::Value) -> Result<Box<dyn Decoder>, ConfigError> {
    if matches!(format, json::FORMAT | debezium::FORMAT)
        && options.get("relation").and_then(serde_json::Value::as_str) == Some(amx_dataflows::prices::MODEL_PRICES)
    {
        let mut options = options.clone();
        if let Some(o) = options.as_object_mut() {
            o.remove("relation");
        }
        let table = model_prices_table();
        return if format == json::FORMAT {
            Ok(Box::new(json::JsonDecoder::for_table(&options, &table)?))
        } else {
            Ok(Box::new(debezium::Debezium::for_table(&options, &table)?))
        };
    }
    match format {
        openai_chat::FORMAT => Ok(Box::new(openai_chat::OpenAiChat::new(options)?)),
        temporal::FORMAT => Ok(Box::new(temporal::TemporalHistory::new(options)?)),
        github::FORMAT => Ok(Box::new(github::GitHubActions::new(options)?)),
        json::FORMAT => Ok(Box::new(json::JsonDecoder::new(options)?)),
        otlp::FORMAT => Ok(Box::new(otlp::OtlpJson::new(options)?)),
        debezium::FORMAT => Ok(Box::new(debezium::Debezium::new(options)?)),
        llm_http::FORMAT => Ok(Box::new(llm_http::LlmHttp::new(options)?)),
        _ => Err(ConfigError::UnknownFormat { name: format.to_owned(), known: formats().join(", ") }),
    }
}

/// `model_prices` ([`amx_dataflows::prices`]) as a declared relation: its columns and its key
/// `(provider, model, valid_from)`, as the `json` and `debezium` formats read it.
pub fn model_prices_table() -> table::TableConfig {
    let desc = amx_dataflows::prices::desc();
    table::TableConfig {
        name: desc.name.to_owned(),
        key: desc.key.iter().map(|k| (*k).to_owned()).collect(),
        columns: desc.columns.iter().map(|c| table::TableColumn { name: c.name.to_owned(), ty: c.ty }).collect(),
    }
}

/// The decoder of a source: [`decoder`], or, for a source that declares its relation
/// (`table`), the `json` or `debezium` format's decoder into it
/// ([`json::JsonDecoder::for_table`], [`debezium::Debezium::for_table`]).
///
/// # Errors
/// As [`decoder`]; [`ConfigError::BadOption`] (option `format`) for a declared relation in
/// another format than `json`.
pub fn source_decoder(
    format: &str,
    options: &serde_json::Value,
    table: Option<&table::TableConfig>,
) -> Result<Box<dyn Decoder>, ConfigError> {
    match table {
        None => decoder(format, options),
        Some(table) if format == json::FORMAT => Ok(Box::new(json::JsonDecoder::for_table(options, table)?)),
        Some(table) if format == debezium::FORMAT => Ok(Box::new(debezium::Debezium::for_table(options, table)?)),
        Some(table) => Err(ConfigError::BadOption {
            option: "format".into(),
            reason: format!(
                "a source that declares its relation (`{}`) reads JSON records: format = \"json\" or \"debezium\" \
                 (`{format}` feeds the canonical relations)",
                table.name
            ),
        }),
    }
}

/// Parses a record's text as JSON, or pushes an [`IngestError`] and returns `None`: the
/// record's own [`Record::error`] when it has one (e.g. `invalid UTF-8 at byte N`), else
/// serde_json's message (which includes the line and column). A leading byte order mark is
/// ignored.
pub(crate) fn parse_record(source: &str, record: &Record, out: &mut Vec<Event>) -> Option<serde_json::Value> {
    if let Some(reason) = &record.error {
        out.push(error(source, &record.location, reason.clone(), &record.text));
        return None;
    }
    let text = record.text.strip_prefix('\u{feff}').unwrap_or(&record.text);
    match serde_json::from_str(text) {
        Ok(v) => Some(v),
        Err(e) => {
            out.push(error(source, &record.location, format!("invalid JSON: {e}"), &record.text));
            None
        }
    }
}

/// Shorthand for an [`Event::Error`].
pub(crate) fn error(source: &str, location: &str, reason: impl Into<String>, raw: &str) -> Event {
    Event::Error(IngestError::new(source, location, reason, raw))
}

/// A JSON value as text: strings as they are, numbers and bools as JSON renders them,
/// objects and arrays as compact JSON; `None` for null.
pub(crate) fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The largest token count accepted (token counts must be in `0..=MAX_TOKENS`).
pub(crate) const MAX_TOKENS: i64 = 1_000_000_000;

/// A short rendering of a value for an error message (compact JSON, cut at 80 bytes).
pub(crate) fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() <= 80 {
        return s;
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What decoders' tests read out of the events they decode.
#[cfg(test)]
pub(crate) mod test_events {
    use amx_dataflows::event::{Event, Span};

    /// The spans, in order.
    pub(crate) fn spans(events: &[Event]) -> Vec<&Span> {
        events.iter().filter_map(|e| if let Event::Span(s) = e { Some(s) } else { None }).collect()
    }

    /// The ingest errors, as (location, reason), in order.
    pub(crate) fn errors(events: &[Event]) -> Vec<(&str, &str)> {
        events
            .iter()
            .filter_map(|e| if let Event::Error(e) = e { Some((e.location.as_str(), e.error.as_str())) } else { None })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `json` and `debezium` with `relation = "model_prices"` read the price table's rows:
    /// typed, upserting their key, a Debezium delete deleting it, a row without its key an
    /// ingest error.
    #[test]
    fn model_prices_are_read_as_a_keyed_relation() {
        use amx_dataflows::event::TableRow;
        use amx_dataflows::row::Datum;
        let decode = |format: &str, options: serde_json::Value, record: serde_json::Value| {
            let d = decoder(format, &options).expect("a decoder");
            let mut out = Vec::new();
            d.decode("prices", &Record::new("prices.jsonl:3", record.to_string()), &mut out);
            out
        };
        let key =
            vec![Datum::Text("openai".into()), Datum::Text("gpt-4o*".into()), Datum::Timestamp(1_733_011_200_000_000)];
        let price = json!({"provider": "openai", "model": "gpt-4o*", "valid_from": "2024-12-01T00:00:00Z",
                           "input_usd_per_mtok": 2, "output_usd_per_mtok": "8.5"});
        let mut row = key.clone();
        row.extend([Datum::float(Some(2.0)), Datum::Null, Datum::float(Some(8.5)), Datum::Null]);
        let upsert = TableRow { relation: "model_prices".into(), position: 0, key: key.clone(), row: Some(row) };
        assert_eq!(decode("json", json!({"relation": "model_prices"}), price.clone()), vec![Event::Table(upsert)]);
        let delete = TableRow { relation: "model_prices".into(), position: 0, key, row: None };
        let change = json!({"op": "d", "before": price, "after": null});
        assert_eq!(decode("debezium", json!({"relation": "model_prices"}), change), vec![Event::Table(delete)]);
        let out = decode("json", json!({"relation": "model_prices"}), json!({"provider": "openai"}));
        assert!(
            matches!(&out[..], [Event::Error(e)] if e.error == "missing key column `model` (/model); missing key column `valid_from` (/valid_from)" && e.location == "prices.jsonl:3"),
            "{out:?}"
        );
    }

    #[test]
    fn formats_are_listed_and_found() {
        assert_eq!(
            formats(),
            &["openai-chat", "temporal-history", "github-actions", "json", "otlp-json", "debezium", "llm-http"]
        );
        assert!(decoder("otlp-json", &json!({})).is_ok());
        assert!(decoder("openai-chat", &serde_json::Value::Null).is_ok());
        assert!(decoder("temporal-history", &json!({})).is_ok());
        assert!(
            decoder("json", &json!({"relation": "evaluations", "mapping": {"trace_id": "/t", "name": "/n"}})).is_ok()
        );
    }

    #[test]
    fn unknown_format_and_option() {
        let e = decoder("csv", &serde_json::Value::Null).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "unknown format `csv` (known formats: openai-chat, temporal-history, github-actions, json, otlp-json, debezium, llm-http)"
            )
        );
        let e = decoder("temporal-history", &json!({"runid": "x"})).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("unknown option `runid` for format `temporal-history` (known options: run_id)"));
        let e = decoder("openai-chat", &json!([1])).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("option `options`: must be a table, found [1]"));
    }

    /// Decodes the real sample files under `shared/data` (next to the workspace) and checks
    /// counts computed independently with Python over the raw files (run from `shared/data`).
    /// Skipped (with a message) where the directory does not exist.
    #[test]
    fn real_shared_data() {
        use amx_dataflows::event::SpanStatus;
        let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let data = std::path::Path::new(&root).join("../../shared/data");
        if !data.is_dir() {
            eprintln!("skipped: {} does not exist", data.display());
            return;
        }
        let read = |glob: &str, format: &str, options: serde_json::Value| {
            let mut reader = FileReader::new(&data.join(glob).display().to_string()).expect("glob");
            let mut records = Vec::new();
            reader.poll(true, &mut records).expect("read");
            assert_eq!(reader.bytes_read(), reader.total_bytes(), "{glob}");
            let d = decoder(format, &options).expect("options");
            let mut out = Vec::new();
            for r in &records {
                d.decode("real", r, &mut out);
            }
            let errors: Vec<_> = out.iter().filter(|e| matches!(e, Event::Error(_))).collect();
            assert!(errors.is_empty(), "{glob}: {errors:?}");
            (records, out)
        };

        // tau-bench: a JSON array of 24 conversations.
        let (records, out) = read(
            "agent/tau_bench_gpt-4o-airline_tasks0-5.json",
            "openai-chat",
            json!({"messages": "traj", "id_fields": ["task_id", "trial"], "score": "reward",
                   "provider": "openai", "request_model": "gpt-4o"}),
        );
        // python3 -c "import json;print(len(json.load(open('agent/tau_bench_gpt-4o-airline_tasks0-5.json'))))" → 24
        assert_eq!(records.len(), 24);
        assert!(records[0].location.ends_with("tau_bench_gpt-4o-airline_tasks0-5.json:1#0"));
        let spans: Vec<_> = out.iter().filter_map(|e| if let Event::Span(s) = e { Some(s) } else { None }).collect();
        // python3 -c "import json;d=json.load(open('agent/tau_bench_gpt-4o-airline_tasks0-5.json'));print(sum(m['role']=='assistant' for x in d for m in x['traj']))" → 350
        assert_eq!(spans.iter().filter(|s| s.is_llm_call()).count(), 350);
        // python3 -c "import json;d=json.load(open('agent/tau_bench_gpt-4o-airline_tasks0-5.json'));print(sum(len(m.get('tool_calls') or []) for x in d for m in x['traj'] if m['role']=='assistant'))" → 196
        assert_eq!(spans.iter().filter(|s| s.is_tool_call()).count(), 196);
        // Each tool message answers the latest unanswered call with its id (ids repeat here):
        // python3 -c "exec('import json,collections\nst=collections.Counter()\nfor x in json.load(open(\'agent/tau_bench_gpt-4o-airline_tasks0-5.json\')):\n p={};r={};n=0\n for m in x[\'traj\']:\n  for t in (m.get(\'tool_calls\') or []) if m[\'role\']==\'assistant\' else []: p.setdefault(t[\'id\'],[]).append(n);r[n]=\'unset\';n+=1\n  if m[\'role\']==\'tool\' and p.get(m[\'tool_call_id\']): r[p[m[\'tool_call_id\']].pop()]=\'error\' if m[\'content\'].strip().lower().startswith(\'error\') else \'ok\'\n st.update(r.values())\nprint(st)')"
        //   → Counter({'ok': 180, 'error': 16})
        let status = |st: SpanStatus| spans.iter().filter(|s| s.is_tool_call() && s.status == st).count();
        assert_eq!((status(SpanStatus::Error), status(SpanStatus::Ok), status(SpanStatus::Unset)), (16, 180, 0));
        let evals: Vec<_> =
            out.iter().filter_map(|e| if let Event::Evaluation(v) = e { Some(v) } else { None }).collect();
        assert_eq!(evals.len(), 24);
        // python3 -c "import json;print(sum(x['reward'] for x in json.load(open('agent/tau_bench_gpt-4o-airline_tasks0-5.json'))))" → 3.0
        assert_eq!(evals.iter().filter_map(|e| e.score).map(|s| s.0).sum::<f64>(), 3.0);
        assert!(evals.iter().any(|e| e.trace_id.to_string() == "1/1" && e.score.map(|s| s.0) == Some(1.0)));

        // Temporal: two pretty-printed histories, one record each.
        let (records, out) = read("workflow/temporal/*.json", "temporal-history", json!({}));
        assert_eq!(records.len(), 2);
        let rows: Vec<_> = out.iter().filter_map(|e| if let Event::Workflow(w) = e { Some(w) } else { None }).collect();
        let count = |run: &str, step_type: Option<&str>| {
            rows.iter().filter(|w| w.run_id == run && w.step_type.as_deref() == step_type).count()
        };
        // Activity rows (scheduled/started/completed/failed/timed out/canceled; not cancel requested):
        // python3 -c "import json,glob;[print(f, sum(e['eventType'].replace('EVENT_TYPE_','').replace('_','').lower() in ('activitytaskscheduled','activitytaskstarted','activitytaskcompleted','activitytaskfailed','activitytasktimedout','activitytaskcanceled') for e in json.load(open(f))['events'])) for f in sorted(glob.glob('workflow/temporal/*.json'))]"
        //   → cancel_fake_progress 3, otel_v2_smorgasbord 6
        // Child workflow rows and run-level rows:
        // python3 -c "import json,glob;[print(f, sum('CHILD' in e['eventType'].upper() for e in json.load(open(f))['events']), sum(e['eventType'].replace('EVENT_TYPE_','').replace('_','').lower() in ('workflowexecutionstarted','workflowexecutioncompleted','workflowexecutionfailed','workflowexecutiontimedout','workflowexecutioncanceled','workflowexecutionterminated','workflowexecutioncontinuedasnew') for e in json.load(open(f))['events'])) for f in sorted(glob.glob('workflow/temporal/*.json'))]"
        //   → cancel_fake_progress 0 2, otel_v2_smorgasbord 3 2
        // Run ids (originalExecutionRunId of the started event):
        // python3 -c "import json,glob;[print(json.load(open(f))['events'][0]['workflowExecutionStartedEventAttributes']['originalExecutionRunId']) for f in sorted(glob.glob('workflow/temporal/*.json'))]"
        let cancel = "bc761765-7fca-4d3e-89ff-0fa49379dc7a";
        let smorgasbord = "24c39852-41f1-45b4-af74-eb75e1a2719c";
        assert_eq!(
            (count(cancel, Some("activity")), count(cancel, Some("child_workflow")), count(cancel, None)),
            (3, 0, 2)
        );
        assert_eq!(
            (
                count(smorgasbord, Some("activity")),
                count(smorgasbord, Some("child_workflow")),
                count(smorgasbord, None)
            ),
            (6, 3, 2)
        );
        assert_eq!(rows.len(), 16);
        assert!(rows.iter().any(|w| w.run_id == cancel
            && w.workflow_name.as_deref() == Some("cancelFakeProgress")
            && w.step_name.as_deref() == Some("fakeProgress")
            && w.state == amx_dataflows::event::WorkflowState::Cancelled
            && w.attempt == Some(1)));

        // Wikimedia recent changes (JSON Lines) → knowledge_events with the recommended mapping.
        let (records, out) = read(
            "knowledge/wikimedia_recentchange_enwiki_2023-07-29_part1.ndjson",
            "json",
            json!({"relation": "knowledge_events", "mapping": {
                "collection": "/meta/domain",
                "document_id": "/title",
                "op": {"pointer": "/log_action", "map": {"delete": "delete"}, "default": "upsert"},
                "version": "/revision/new",
                "size_bytes": "/length/new",
                "event_time": {"pointer": "/timestamp", "unit": "s"},
                "actor": "/user",
                "is_bot": "/bot",
                "source_offset": "/meta/offset"}}),
        );
        // python3 -c "L=[l for l in open('knowledge/wikimedia_recentchange_enwiki_2023-07-29_part1.ndjson') if l.strip()];print(len(L))" → 70
        assert_eq!(records.len(), 70);
        let k: Vec<_> = out.iter().filter_map(|e| if let Event::Knowledge(k) = e { Some(k) } else { None }).collect();
        assert_eq!(k.len(), 70);
        // python3 -c "import json;L=[json.loads(l) for l in open('knowledge/wikimedia_recentchange_enwiki_2023-07-29_part1.ndjson') if l.strip()];print(sum(x['bot'] for x in L), sum(x['length']['new'] for x in L), len({x['title'] for x in L}), min(x['timestamp'] for x in L), max(x['timestamp'] for x in L), sum(x['type']=='log' for x in L))"
        //   → 1 1992561 62 1690617099 1690617215 0
        assert_eq!(k.iter().filter(|k| k.is_bot == Some(true)).count(), 1);
        assert_eq!(k.iter().filter_map(|k| k.size_bytes).sum::<i64>(), 1_992_561);
        assert_eq!(k.iter().map(|k| &k.document_id).collect::<std::collections::BTreeSet<_>>().len(), 62);
        assert_eq!(k.iter().filter_map(|k| k.event_time).min(), Some(1_690_617_099_000_000));
        assert_eq!(k.iter().filter_map(|k| k.event_time).max(), Some(1_690_617_215_000_000));
        assert!(
            k.iter().all(|k| k.op == amx_dataflows::event::KnowledgeOp::Upsert && k.collection == "en.wikipedia.org")
        );
    }

    #[test]
    fn every_decoder_reports_record_errors() {
        // `{"id":"` is 7 bytes (`{`, `"`, `i`, `d`, `"`, `:`, `"`): 0xFF is byte 7.
        let record = Record::from_bytes("f.jsonl:3", b"{\"id\":\"\xFF\"}");
        // In the order of `formats()`.
        let options = [
            json!({}),
            json!({}),
            json!({}),
            json!({"relation": "evaluations", "mapping": {"trace_id": "/id", "name": {"const": "n"}}}),
            json!({}),
            json!({"relation": "evaluations", "mapping": {"trace_id": "/id", "name": {"const": "n"}}}),
            json!({}),
        ];
        for (format, options) in formats().iter().zip(options) {
            let d = decoder(format, &options).expect("options");
            let mut out = Vec::new();
            d.decode("s", &record, &mut out);
            assert_eq!(
                out,
                vec![Event::Error(IngestError::new(
                    "s",
                    "f.jsonl:3",
                    "invalid UTF-8 at byte 7",
                    "{\"id\":\"\u{fffd}\"}"
                ))],
                "{format}"
            );
            // Any reader error, e.g. an unterminated array, is reported the same way.
            let mut out = Vec::new();
            d.decode("s", &Record::new("f.json:2", "").with_error("unterminated JSON array"), &mut out);
            assert_eq!(out, vec![Event::Error(IngestError::new("s", "f.json:2", "unterminated JSON array", ""))]);
        }
    }

    #[test]
    fn short_cuts_long_values() {
        assert_eq!(short(&json!("ab")), "\"ab\"");
        let long = json!("é".repeat(100));
        let s = short(&long);
        assert!(s.ends_with('…'));
        assert!(s.len() <= 80 + '…'.len_utf8());
    }
}
