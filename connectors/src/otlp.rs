//! Format `otlp-json`: OpenTelemetry traces → `spans` (+ `evaluations`).
//!
//! A record is one `ExportTraceServiceRequest` in OTLP/JSON (the OTLP specification's JSON
//! encoding of the protobuf message: lowerCamelCase field names, trace and span ids as hex,
//! 64-bit integers as decimal strings or numbers, enums as integers), as the OpenTelemetry
//! Collector's file exporter writes them, one per line, and as the server's OTLP/HTTP receiver
//! (`POST /v1/otlp/{job}/{source}/v1/traces`) hands its requests — protobuf or JSON — to a push
//! source. The messages are the official ones (the `opentelemetry-proto` crate). No options.
//!
//! Every span of every `resourceSpans[i].scopeSpans[j].spans[k]` becomes a `spans` row:
//!
//! | column | from |
//! | --- | --- |
//! | `trace_id`, `span_id`, `parent_span_id` | the ids, as lower-case hex (an empty parent: NULL) |
//! | `name` | `name` |
//! | `start_time`, `end_time` | `startTimeUnixNano`, `endTimeUnixNano` in µs (0: NULL) |
//! | `status` | `status.code`: 0 `unset`, 1 `ok`, 2 `error` |
//! | the GenAI columns | the attributes below, the first one present |
//! | `attributes` | a JSON object of every other attribute of the span, then the resource's (a span's own wins), `otel.scope.name` and `otel.scope.version` (the names the OpenTelemetry specification gives them in non-OTLP exporters), `otel.span.kind` (`internal`, `server`, `client`, `producer`, `consumer`; absent when unspecified), `otel.status_description`, and the span's events and links as `otel.events` and `otel.links` (arrays of `{name, time_unix_nano, attributes}` and `{trace_id, span_id, attributes}`) |
//!
//! GenAI attributes across the conventions in use, in order of precedence — the OpenTelemetry
//! GenAI semantic conventions (<https://opentelemetry.io/docs/specs/semconv/gen-ai/>), their
//! deprecated names (which OpenLLMetry/Traceloop still emit), then OpenInference's (Arize
//! Phoenix, <https://github.com/Arize-ai/openinference/blob/main/spec/semantic_conventions.md>),
//! then Langfuse's own (`langfuse.observation.*`, as its SDKs and its OTel endpoint name them,
//! <https://langfuse.com/docs/opentelemetry/get-started>):
//!
//! | column | attributes |
//! | --- | --- |
//! | `operation` | `gen_ai.operation.name`; else `openinference.span.kind` `LLM` → `chat`, `EMBEDDING` → `embeddings`, `TOOL` → `execute_tool`, `AGENT` → `invoke_agent`; else `langfuse.observation.type` `generation` → `chat`, `embedding` → `embeddings`, `tool` → `execute_tool`, `agent` → `invoke_agent` |
//! | `provider` | `gen_ai.provider.name`, `gen_ai.system`, `llm.provider`, `llm.system` |
//! | `request_model` | `gen_ai.request.model`, `llm.model_name`, `langfuse.observation.model.name` |
//! | `response_model` | `gen_ai.response.model` |
//! | `agent_name` | `gen_ai.agent.name` |
//! | `conversation_id` | `gen_ai.conversation.id`, `session.id`, `langfuse.session.id` |
//! | `tool_name` | `gen_ai.tool.name`, `tool.name` |
//! | `tool_call_id` | `gen_ai.tool.call.id`, `tool_call.id` |
//! | `input_tokens` | `gen_ai.usage.input_tokens`, `gen_ai.usage.prompt_tokens`, `llm.token_count.prompt` |
//! | `output_tokens` | `gen_ai.usage.output_tokens`, `gen_ai.usage.completion_tokens`, `llm.token_count.completion` |
//! | `cache_read_input_tokens` | `gen_ai.usage.cache_read.input_tokens`, `llm.token_count.prompt_details.cache_read` |
//! | `reasoning_output_tokens` | `gen_ai.usage.reasoning.output_tokens`, `llm.token_count.completion_details.reasoning` |
//! | the four token columns, when none of the above gives them | `langfuse.observation.usage_details` (its table: `langfuse_usage`) |
//! | `status` | also `error` when the span's status is unset and `langfuse.observation.level` is `ERROR` |
//! | `error_type` | when `status` is `error`: `error.type`, else the first `exception` event's `exception.type`, else `_OTHER` (the conventions' fallback) |
//!
//! Token counts are taken as the conventions define them (input tokens include cached ones;
//! output tokens include reasoning ones; Langfuse's disjoint usage types are summed to match)
//! and must be integers in `0..=1000000000` (an integral double is taken). A span event named `gen_ai.evaluation.result` becomes an
//! `evaluations` row of the span: `gen_ai.evaluation.name`, `gen_ai.evaluation.score.value`,
//! `gen_ai.evaluation.score.label`; a malformed one (no name, a score that is no number) is an
//! ingest error at `…/spans/k/events/n`, and the span is kept.
//!
//! A record that is not an `ExportTraceServiceRequest` in OTLP/JSON is one ingest error (the
//! request is read whole: an id that is not hex or an `intValue` that is no 64-bit integer
//! fails it). A span whose trace id is not 16 bytes or span id not 8 bytes (or all zero; an
//! all-zero parent is a root), or whose GenAI attribute has a value of the wrong kind (a token
//! count that is no integer in range, a text column given an array or object), is an ingest
//! error at `LOCATION/resourceSpans/i/scopeSpans/j/spans/k`; the request's other spans are
//! kept. A text column takes a number or bool as its JSON text; an empty string is NULL; of
//! several names of one column the first present is the column, the others stay in
//! `attributes`.

use amx_dataflows::event::{Evaluation, Event, Span, SpanStatus, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use ordered_float::OrderedFloat;
use serde_json::{Map, Value};

use crate::options::Options;
use crate::{ConfigError, Decoder, MAX_TOKENS, Record, error};

/// The format's name.
pub const FORMAT: &str = "otlp-json";

/// The `otlp-json` decoder (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct OtlpJson;

impl OtlpJson {
    /// The decoder; it takes no options.
    ///
    /// # Errors
    /// [`ConfigError::UnknownOption`] for any option.
    pub fn new(options: &Value) -> Result<OtlpJson, ConfigError> {
        Options::new(FORMAT, options)?.finish()?;
        Ok(OtlpJson)
    }
}

/// `request` in OTLP/JSON, on one line: the record the OTLP/HTTP receiver pushes for a
/// protobuf request.
///
/// # Errors
/// None in practice (serde_json's error, should a value not serialize).
pub fn to_json_line(request: &ExportTraceServiceRequest) -> Result<String, serde_json::Error> {
    serde_json::to_string(request)
}

/// A JSON request read as OTLP/JSON, for the receiver to check before it pushes it.
///
/// # Errors
/// serde_json's message, with its line and column.
pub fn parse_request(text: &str) -> Result<ExportTraceServiceRequest, serde_json::Error> {
    serde_json::from_str(text)
}

/// Spans in `request`.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
}

impl Decoder for OtlpJson {
    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        if let Some(reason) = &record.error {
            out.push(error(source, &record.location, reason.clone(), &record.text));
            return;
        }
        let text = record.text.strip_prefix('\u{feff}').unwrap_or(&record.text);
        let request = match parse_request(text) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("not an OTLP/JSON ExportTraceServiceRequest: {e}");
                out.push(error(source, &record.location, reason, &record.text));
                return;
            }
        };
        for (i, resource_spans) in request.resource_spans.iter().enumerate() {
            let resource: &[KeyValue] = resource_spans.resource.as_ref().map_or(&[], |r| &r.attributes);
            for (j, scope_spans) in resource_spans.scope_spans.iter().enumerate() {
                let scope = scope_spans.scope.as_ref();
                for (k, span) in scope_spans.spans.iter().enumerate() {
                    let location = format!("{}/resourceSpans/{i}/scopeSpans/{j}/spans/{k}", record.location);
                    let scope = scope.map(|s| (s.name.as_str(), s.version.as_str()));
                    let mut bad_events = Vec::new();
                    match decode_span(span, resource, scope, &mut bad_events, out) {
                        Ok(()) => {}
                        Err(reason) => {
                            let raw = serde_json::to_string(span).unwrap_or_default();
                            out.push(error(source, &location, reason, &raw));
                        }
                    }
                    for (n, reason) in bad_events {
                        let raw = serde_json::to_string(&span.events[n]).unwrap_or_default();
                        out.push(error(source, &format!("{location}/events/{n}"), reason, &raw));
                    }
                }
            }
        }
    }
}

/// An OTLP `AnyValue` as JSON, by the OTLP/JSON rules: bytes as base64 (protobuf's JSON
/// mapping), non-finite doubles as the strings `NaN`, `Infinity`, `-Infinity`.
fn any_json(value: Option<&AnyValue>) -> Value {
    use base64::Engine as _;
    let Some(value) = value.and_then(|v| v.value.as_ref()) else { return Value::Null };
    match value {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::BoolValue(b) => Value::Bool(*b),
        any_value::Value::IntValue(i) => Value::from(*i),
        any_value::Value::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or_else(
            || {
                Value::String(
                    if d.is_nan() {
                        "NaN"
                    } else if *d > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    }
                    .into(),
                )
            },
            Value::Number,
        ),
        any_value::Value::ArrayValue(a) => Value::Array(a.values.iter().map(|v| any_json(Some(v))).collect()),
        any_value::Value::KvlistValue(l) => Value::Object(attributes_json(&l.values)),
        any_value::Value::BytesValue(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        // A reference into a profile's string table: profiles only; nothing to resolve here.
        any_value::Value::StringValueStrindex(_) => Value::Null,
    }
}

/// Key-values as a JSON object (a repeated key: the last one).
fn attributes_json(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes.iter().map(|kv| (kv.key.clone(), any_json(kv.value.as_ref()))).collect()
}

/// An id as lower-case hex, checked to be `len` bytes and not all zero (OTLP's validity rule).
fn id_hex(bytes: &[u8], len: usize, what: &str) -> Result<String, String> {
    if bytes.len() != len {
        return Err(format!("{what} has {} bytes, not {len}", bytes.len()));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(format!("{what} is all zero (invalid)"));
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A span's attributes, taken out one convention at a time.
struct Attributes(Map<String, Value>);

impl Attributes {
    /// The first of `names` present (not null, not `""`), taken out of the attributes: the
    /// column's value. The others stay in `attributes`.
    fn take(&mut self, names: &[&str]) -> Option<(String, Value)> {
        let name = names.iter().find(|n| self.0.get(**n).is_some_and(|v| !v.is_null() && v.as_str() != Some("")))?;
        self.0.remove(*name).map(|value| (name.to_string(), value))
    }

    /// [`Attributes::take`] as text (a number or bool as its JSON text).
    fn text(&mut self, names: &[&str]) -> Result<Option<String>, String> {
        match self.take(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s)),
            Some((_, value @ (Value::Bool(_) | Value::Number(_)))) => Ok(Some(value.to_string())),
            Some((name, other)) => Err(format!("attribute `{name}` is {other}, not a string")),
        }
    }

    /// [`Attributes::take`] as a token count ([`token_count`]).
    fn tokens(&mut self, names: &[&str]) -> Result<Option<i64>, String> {
        let Some((name, value)) = self.take(names) else { return Ok(None) };
        token_count(&value)
            .map(Some)
            .ok_or_else(|| format!("attribute `{name}` is {value}, not a token count (0..={MAX_TOKENS})"))
    }
}

/// A token count: an integer (or an integral double) in `0..=MAX_TOKENS`.
fn token_count(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
        .filter(|n| (0..=MAX_TOKENS).contains(n))
}

/// Langfuse's observation types (`langfuse.observation.type`) as GenAI operation names.
fn langfuse_operation(observation: &str) -> Option<&'static str> {
    match observation {
        "generation" => Some("chat"),
        "embedding" => Some("embeddings"),
        "tool" => Some("execute_tool"),
        "agent" => Some("invoke_agent"),
        _ => None,
    }
}

/// The token columns a span's `langfuse.observation.usage_details` gives.
#[derive(Debug, Default, PartialEq, Eq)]
struct LangfuseUsage {
    input: Option<i64>,
    output: Option<i64>,
    cache_read: Option<i64>,
    reasoning: Option<i64>,
}

/// Reads `langfuse.observation.usage_details` (a JSON object of token counts by usage type,
/// which Langfuse's SDKs write as a JSON string, or an OTLP key-value list) into the token
/// columns; the attribute itself stays in `attributes`. Langfuse's usage types are disjoint
/// (its `total` is their sum: `input` excludes cached input tokens, `output` excludes
/// reasoning tokens — Langfuse's OTel ingestion splits `gen_ai.usage.output_tokens` so), while
/// the columns follow the GenAI conventions (input includes cached, output includes
/// reasoning), so:
///
/// | column | usage types |
/// | --- | --- |
/// | `cache_read_input_tokens` | `input_cached_tokens`, `cache_read_input_tokens`, `input_cache_read` (the first present) |
/// | `input_tokens` | `input` + the cache read above + `cache_creation_input_tokens` or `input_cache_creation` |
/// | `reasoning_output_tokens` | `output_reasoning_tokens`, `output_reasoning`, `reasoning` |
/// | `output_tokens` | `output` + the reasoning above |
///
/// A sum is NULL when none of its parts is present. Other usage types (`total`, audio, …)
/// are only kept in `attributes`.
///
/// # Errors
/// A value that is not an object (or a string holding one), or a count of one of the types
/// above that is not an integer in `0..=MAX_TOKENS` (nor is the sum).
fn langfuse_usage(attributes: &Attributes) -> Result<Option<LangfuseUsage>, String> {
    const NAME: &str = "langfuse.observation.usage_details";
    let parsed;
    let details = match attributes.0.get(NAME) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(details)) => details,
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Value>(text).ok();
            match &parsed {
                Some(Value::Object(details)) => details,
                _ => return Err(format!("attribute `{NAME}` is not a JSON object of token counts: {text}")),
            }
        }
        Some(other) => return Err(format!("attribute `{NAME}` is {other}, not an object of token counts")),
    };
    let count = |names: &[&str]| -> Result<Option<i64>, String> {
        let Some((name, value)) = names.iter().find_map(|n| details.get(*n).filter(|v| !v.is_null()).map(|v| (n, v)))
        else {
            return Ok(None);
        };
        token_count(value)
            .map(Some)
            .ok_or_else(|| format!("`{name}` of attribute `{NAME}` is {value}, not a token count (0..={MAX_TOKENS})"))
    };
    let sum = |parts: &[Option<i64>], column: &str| -> Result<Option<i64>, String> {
        if parts.iter().all(Option::is_none) {
            return Ok(None);
        }
        let total: i64 = parts.iter().flatten().sum();
        if total > MAX_TOKENS {
            return Err(format!("attribute `{NAME}` sums to {total} {column}, over {MAX_TOKENS}"));
        }
        Ok(Some(total))
    };
    let cache_read = count(&["input_cached_tokens", "cache_read_input_tokens", "input_cache_read"])?;
    let cache_creation = count(&["cache_creation_input_tokens", "input_cache_creation"])?;
    let reasoning = count(&["output_reasoning_tokens", "output_reasoning", "reasoning"])?;
    Ok(Some(LangfuseUsage {
        input: sum(&[count(&["input"])?, cache_read, cache_creation], "input tokens")?,
        output: sum(&[count(&["output"])?, reasoning], "output tokens")?,
        cache_read,
        reasoning,
    }))
}

/// OpenInference's span kinds as GenAI operation names.
fn openinference_operation(kind: &str) -> Option<&'static str> {
    match kind.to_ascii_uppercase().as_str() {
        "LLM" => Some("chat"),
        "EMBEDDING" => Some("embeddings"),
        "TOOL" => Some("execute_tool"),
        "AGENT" => Some("invoke_agent"),
        _ => None,
    }
}

/// Nanoseconds since the Unix epoch as µs (0: unknown).
fn micros(nanos: u64) -> Option<i64> {
    (nanos != 0).then_some((nanos / 1_000) as i64)
}

/// The evaluation a `gen_ai.evaluation.result` event of span `span_id` holds, or why it
/// cannot be read (no `gen_ai.evaluation.name`, a score that is no number).
fn evaluation(attributes: &Map<String, Value>, trace_id: &TraceId, span_id: &str) -> Result<Evaluation, String> {
    let text = |key: &str| attributes.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let name =
        text("gen_ai.evaluation.name").ok_or("event `gen_ai.evaluation.result` has no `gen_ai.evaluation.name`")?;
    let score = match attributes.get("gen_ai.evaluation.score.value") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| format!("`gen_ai.evaluation.score.value` is {v}, not a number"))?),
    };
    Ok(Evaluation {
        trace_id: trace_id.clone(),
        span_id: Some(span_id.to_owned()),
        name,
        score: score.map(OrderedFloat),
        label: text("gen_ai.evaluation.score.label"),
    })
}

/// One span's row (and its evaluations; the indexes of malformed evaluation events and why go
/// to `bad_events`), or why it cannot be read.
fn decode_span(
    span: &OtlpSpan,
    resource: &[KeyValue],
    scope: Option<(&str, &str)>,
    bad_events: &mut Vec<(usize, String)>,
    out: &mut Vec<Event>,
) -> Result<(), String> {
    let trace_hex = id_hex(&span.trace_id, 16, "trace id")?;
    let span_id = id_hex(&span.span_id, 8, "span id")?;
    // No parent, or an all-zero one (an invalid id, which some exporters write for a root):
    // a root span.
    let parent_span_id = if span.parent_span_id.iter().all(|b| *b == 0) {
        None
    } else {
        Some(id_hex(&span.parent_span_id, 8, "parent span id")?)
    };
    let trace_id = TraceId::parse(&trace_hex);
    let mut attributes = Attributes(attributes_json(&span.attributes));
    let kind = attributes.text(&["openinference.span.kind"])?;
    let observation = attributes.text(&["langfuse.observation.type"])?;
    let operation = match attributes.text(&["gen_ai.operation.name"])? {
        Some(op) => Some(op),
        None => kind
            .as_deref()
            .and_then(openinference_operation)
            .or_else(|| observation.as_deref().and_then(langfuse_operation))
            .map(str::to_owned),
    };
    if let (Some(kind), None) = (&kind, kind.as_deref().and_then(openinference_operation)) {
        // A kind with no GenAI operation (CHAIN, RETRIEVER, …) is kept.
        attributes.0.insert("openinference.span.kind".into(), Value::String(kind.clone()));
    }
    if let (Some(observation), None) = (&observation, observation.as_deref().and_then(langfuse_operation)) {
        // So is a Langfuse observation type with none (span, event, chain, retriever, …).
        attributes.0.insert("langfuse.observation.type".into(), Value::String(observation.clone()));
    }
    let mut row = Span::new(trace_id.clone(), span_id.clone(), span.name.clone());
    row.parent_span_id = parent_span_id;
    row.operation = operation;
    row.provider = attributes.text(&["gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"])?;
    row.request_model =
        attributes.text(&["gen_ai.request.model", "llm.model_name", "langfuse.observation.model.name"])?;
    row.response_model = attributes.text(&["gen_ai.response.model"])?;
    row.agent_name = attributes.text(&["gen_ai.agent.name"])?;
    row.conversation_id = attributes.text(&["gen_ai.conversation.id", "session.id", "langfuse.session.id"])?;
    row.tool_name = attributes.text(&["gen_ai.tool.name", "tool.name"])?;
    row.tool_call_id = attributes.text(&["gen_ai.tool.call.id", "tool_call.id"])?;
    row.input_tokens =
        attributes.tokens(&["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"])?;
    row.output_tokens = attributes.tokens(&[
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ])?;
    row.cache_read_input_tokens =
        attributes.tokens(&["gen_ai.usage.cache_read.input_tokens", "llm.token_count.prompt_details.cache_read"])?;
    row.reasoning_output_tokens =
        attributes.tokens(&["gen_ai.usage.reasoning.output_tokens", "llm.token_count.completion_details.reasoning"])?;
    // Langfuse's usage details, for the token columns no attribute above gave.
    if let Some(usage) = langfuse_usage(&attributes)? {
        row.input_tokens = row.input_tokens.or(usage.input);
        row.output_tokens = row.output_tokens.or(usage.output);
        row.cache_read_input_tokens = row.cache_read_input_tokens.or(usage.cache_read);
        row.reasoning_output_tokens = row.reasoning_output_tokens.or(usage.reasoning);
    }
    let error_type = attributes.text(&["error.type"])?;
    row.start_time = micros(span.start_time_unix_nano);
    row.end_time = micros(span.end_time_unix_nano);
    let status = span.status.as_ref();
    row.status = match status.map_or(0, |s| s.code) {
        1 => SpanStatus::Ok,
        2 => SpanStatus::Error,
        // Langfuse marks a failed observation by its level, not the span's status.
        _ if attributes.0.get("langfuse.observation.level").and_then(Value::as_str) == Some("ERROR") => {
            SpanStatus::Error
        }
        _ => SpanStatus::Unset,
    };
    if row.status == SpanStatus::Error {
        let exception = span.events.iter().find(|e| e.name == "exception").and_then(|e| {
            e.attributes.iter().find(|kv| kv.key == "exception.type").and_then(|kv| match any_json(kv.value.as_ref()) {
                Value::String(s) => Some(s),
                _ => None,
            })
        });
        row.error_type = Some(error_type.or(exception).unwrap_or_else(|| "_OTHER".to_owned()));
    } else if let Some(error_type) = error_type {
        attributes.0.insert("error.type".into(), Value::String(error_type));
    }
    let mut rest = attributes.0;
    for kv in resource {
        rest.entry(kv.key.clone()).or_insert_with(|| any_json(kv.value.as_ref()));
    }
    if let Some((name, version)) = scope {
        if !name.is_empty() {
            rest.insert("otel.scope.name".into(), Value::String(name.to_owned()));
        }
        if !version.is_empty() {
            rest.insert("otel.scope.version".into(), Value::String(version.to_owned()));
        }
    }
    // The span's kind, by its name in the OTLP enum (`SPAN_KIND_CLIENT` → `client`).
    const KINDS: [&str; 5] = ["internal", "server", "client", "producer", "consumer"];
    if let Some(kind) = usize::try_from(span.kind - 1).ok().and_then(|i| KINDS.get(i)) {
        rest.insert("otel.span.kind".into(), Value::String((*kind).to_owned()));
    }
    if let Some(message) = status.map(|s| s.message.as_str()).filter(|m| !m.is_empty()) {
        rest.insert("otel.status_description".into(), Value::String(message.to_owned()));
    }
    let mut evaluations = Vec::new();
    let mut events = Vec::new();
    for (n, event) in span.events.iter().enumerate() {
        let event_attributes = attributes_json(&event.attributes);
        if event.name == "gen_ai.evaluation.result" {
            // A malformed evaluation is an error of its own; the span is kept.
            match evaluation(&event_attributes, &trace_id, &span_id) {
                Ok(e) => evaluations.push(e),
                Err(reason) => bad_events.push((n, reason)),
            }
        }
        let mut e = Map::new();
        e.insert("name".into(), Value::String(event.name.clone()));
        e.insert("time_unix_nano".into(), Value::String(event.time_unix_nano.to_string()));
        e.insert("attributes".into(), Value::Object(event_attributes));
        events.push(Value::Object(e));
    }
    if !events.is_empty() {
        rest.insert("otel.events".into(), Value::Array(events));
    }
    if !span.links.is_empty() {
        let links = span
            .links
            .iter()
            .map(|link| {
                let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
                let mut l = Map::new();
                l.insert("trace_id".into(), Value::String(hex(&link.trace_id)));
                l.insert("span_id".into(), Value::String(hex(&link.span_id)));
                l.insert("attributes".into(), Value::Object(attributes_json(&link.attributes)));
                Value::Object(l)
            })
            .collect();
        rest.insert("otel.links".into(), Value::Array(links));
    }
    row.attributes = (!rest.is_empty()).then(|| Value::Object(rest).to_string());
    out.push(Event::Span(row));
    out.extend(evaluations.into_iter().map(Event::Evaluation));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::spans;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event as SpanEvent;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use serde_json::json;

    fn decode(text: &str) -> Vec<Event> {
        let mut out = Vec::new();
        OtlpJson::new(&Value::Null).expect("no options").decode(
            "otel",
            &Record::new("push:1", text.to_owned()),
            &mut out,
        );
        out
    }

    fn attributes(span: &Span) -> Value {
        serde_json::from_str(span.attributes.as_deref().unwrap_or("{}")).expect("JSON")
    }

    /// OTLP/JSON as the specification writes it (ids in hex, 64-bit integers as strings, enums
    /// as integers): a chat span in the current GenAI names, a tool call in the deprecated
    /// ones, a failed span with an exception and an evaluation, an OpenInference LLM span, and
    /// a span with a short trace id. Every value expected here is read off the request by hand.
    #[test]
    fn a_request_in_otlp_json_becomes_spans_evaluations_and_an_error() {
        let request = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "support-agent"}},
            {"key": "deployment.environment", "value": {"stringValue": "prod"}}]},
        "scopeSpans": [{
            "scope": {"name": "opentelemetry.instrumentation.openai_v2", "version": "2.1b0"},
            "spans": [
                {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                 "name": "chat gpt-4o", "kind": 3,
                 "startTimeUnixNano": "1733000000123456789", "endTimeUnixNano": "1733000001500000000",
                 "attributes": [
                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                    {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
                    {"key": "gen_ai.system", "value": {"stringValue": "kept in attributes: the current name wins"}},
                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                    {"key": "gen_ai.response.model", "value": {"stringValue": "gpt-4o-2024-08-06"}},
                    {"key": "gen_ai.conversation.id", "value": {"stringValue": "conv-7"}},
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1200"}},
                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 85}},
                    {"key": "gen_ai.usage.cache_read.input_tokens", "value": {"intValue": "1024"}},
                    {"key": "server.address", "value": {"stringValue": "api.openai.com"}},
                    {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.2}}],
                 "status": {"code": 1}},
                {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "0102030405060708",
                 "parentSpanId": "eee19b7ec3c1b174", "name": "execute_tool get_weather",
                 "attributes": [
                    {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                    {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                    {"key": "gen_ai.tool.name", "value": {"stringValue": "get_weather"}},
                    {"key": "gen_ai.tool.call.id", "value": {"stringValue": "call_1"}},
                    {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "7"}},
                    {"key": "gen_ai.usage.completion_tokens", "value": {"doubleValue": 3.0}}]},
                {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "1111111111111111",
                 "parentSpanId": "eee19b7ec3c1b174", "name": "invoke_agent planner",
                 "attributes": [{"key": "gen_ai.agent.name", "value": {"stringValue": "planner"}}],
                 "events": [
                    {"timeUnixNano": "1733000002000000000", "name": "exception", "attributes": [
                        {"key": "exception.type", "value": {"stringValue": "TimeoutError"}}]},
                    {"timeUnixNano": "1733000003000000000", "name": "gen_ai.evaluation.result", "attributes": [
                        {"key": "gen_ai.evaluation.name", "value": {"stringValue": "relevance"}},
                        {"key": "gen_ai.evaluation.score.value", "value": {"doubleValue": 0.25}},
                        {"key": "gen_ai.evaluation.score.label", "value": {"stringValue": "poor"}}]},
                    {"timeUnixNano": "1733000004000000000", "name": "gen_ai.evaluation.result", "attributes": [
                        {"key": "gen_ai.evaluation.name", "value": {"stringValue": "tone"}},
                        {"key": "gen_ai.evaluation.score.value", "value": {"stringValue": "high"}}]}],
                 "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331"}],
                 "status": {"code": 2, "message": "deadline exceeded"}},
                {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "2222222222222222",
                 "parentSpanId": "0000000000000000", "name": "ChatCompletion",
                 "attributes": [
                    {"key": "gen_ai.operation.name", "value": {"stringValue": ""}},
                    {"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
                    {"key": "llm.provider", "value": {"stringValue": "anthropic"}},
                    {"key": "llm.model_name", "value": {"stringValue": "claude-sonnet-4"}},
                    {"key": "session.id", "value": {"stringValue": "s-1"}},
                    {"key": "llm.token_count.prompt", "value": {"intValue": "40"}},
                    {"key": "llm.token_count.completion", "value": {"intValue": "12"}},
                    {"key": "llm.token_count.completion_details.reasoning", "value": {"intValue": "5"}}]},
                {"traceId": "0af7651916cd43dd", "spanId": "3333333333333333", "name": "short trace id"},
                {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "4444444444444444", "name": "bad tokens",
                 "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "-3"}}]}
            ]}]}]});
        let events = decode(&request.to_string());
        let spans = spans(&events);
        assert_eq!(spans.len(), 4, "{events:?}");

        let chat = spans[0];
        assert_eq!(chat.trace_id, TraceId::Hex128(0x5b8efff798038103d269b633813fc60c));
        assert_eq!((chat.span_id.as_str(), chat.parent_span_id.as_deref()), ("eee19b7ec3c1b174", None));
        assert_eq!(chat.name, "chat gpt-4o");
        assert_eq!(chat.operation.as_deref(), Some("chat"));
        assert_eq!(chat.provider.as_deref(), Some("openai"));
        assert_eq!(chat.request_model.as_deref(), Some("gpt-4o"));
        assert_eq!(chat.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(chat.conversation_id.as_deref(), Some("conv-7"));
        assert_eq!(
            (chat.input_tokens, chat.output_tokens, chat.cache_read_input_tokens),
            (Some(1200), Some(85), Some(1024))
        );
        assert_eq!(chat.reasoning_output_tokens, None);
        // 1733000000123456789 ns → 1733000000123456 µs (truncated), 1733000001500000000 ns.
        assert_eq!((chat.start_time, chat.end_time), (Some(1_733_000_000_123_456), Some(1_733_000_001_500_000)));
        assert_eq!((chat.status, chat.error_type.as_deref()), (SpanStatus::Ok, None));
        assert_eq!(
            attributes(chat),
            json!({"server.address": "api.openai.com", "gen_ai.request.temperature": 0.2,
                   "gen_ai.system": "kept in attributes: the current name wins", "otel.span.kind": "client",
                   "service.name": "support-agent", "deployment.environment": "prod",
                   "otel.scope.name": "opentelemetry.instrumentation.openai_v2", "otel.scope.version": "2.1b0"})
        );

        let tool = spans[1];
        assert_eq!(tool.parent_span_id.as_deref(), Some("eee19b7ec3c1b174"));
        assert_eq!(tool.provider.as_deref(), Some("openai"));
        assert_eq!((tool.tool_name.as_deref(), tool.tool_call_id.as_deref()), (Some("get_weather"), Some("call_1")));
        assert_eq!((tool.input_tokens, tool.output_tokens), (Some(7), Some(3)));
        assert_eq!((tool.start_time, tool.status), (None, SpanStatus::Unset));

        let failed = spans[2];
        assert_eq!(failed.agent_name.as_deref(), Some("planner"));
        assert_eq!((failed.status, failed.error_type.as_deref()), (SpanStatus::Error, Some("TimeoutError")));
        let failed_attributes = attributes(failed);
        assert_eq!(failed_attributes["otel.status_description"], "deadline exceeded");
        assert_eq!(failed_attributes["otel.events"][0]["name"], "exception");
        assert_eq!(failed_attributes["otel.events"][1]["time_unix_nano"], "1733000003000000000");
        assert_eq!(
            failed_attributes["otel.links"],
            json!([{"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331", "attributes": {}}])
        );
        let evaluations: Vec<&Evaluation> =
            events.iter().filter_map(|e| if let Event::Evaluation(v) = e { Some(v) } else { None }).collect();
        assert_eq!(
            evaluations,
            vec![&Evaluation {
                trace_id: TraceId::Hex128(0x5b8efff798038103d269b633813fc60c),
                span_id: Some("1111111111111111".into()),
                name: "relevance".into(),
                score: Some(OrderedFloat(0.25)),
                label: Some("poor".into()),
            }]
        );

        let phoenix = spans[3];
        // An all-zero parent is a root; an empty operation name is no name (OpenInference's
        // kind gives it).
        assert_eq!((phoenix.parent_span_id.as_deref(), phoenix.operation.as_deref()), (None, Some("chat")));
        assert_eq!(phoenix.provider.as_deref(), Some("anthropic"));
        assert_eq!(phoenix.request_model.as_deref(), Some("claude-sonnet-4"));
        assert_eq!(phoenix.conversation_id.as_deref(), Some("s-1"));
        assert_eq!(
            (phoenix.input_tokens, phoenix.output_tokens, phoenix.reasoning_output_tokens),
            (Some(40), Some(12), Some(5))
        );

        let errors: Vec<(&str, &str)> = events
            .iter()
            .filter_map(|e| if let Event::Error(x) = e { Some((x.location.as_str(), x.error.as_str())) } else { None })
            .collect();
        assert_eq!(
            errors,
            vec![
                // The malformed evaluation: an error of its own; its span and the other
                // evaluation are kept (above).
                (
                    "push:1/resourceSpans/0/scopeSpans/0/spans/2/events/2",
                    "`gen_ai.evaluation.score.value` is \"high\", not a number"
                ),
                ("push:1/resourceSpans/0/scopeSpans/0/spans/4", "trace id has 8 bytes, not 16"),
                (
                    "push:1/resourceSpans/0/scopeSpans/0/spans/5",
                    "attribute `gen_ai.usage.input_tokens` is -3, not a token count (0..=1000000000)"
                ),
            ]
        );
    }

    /// A request built from the protobuf messages, written as the receiver writes it
    /// ([`to_json_line`]), decodes to what it holds: the JSON path and the protobuf path agree.
    #[test]
    fn a_protobuf_request_written_as_json_reads_back() {
        let kv = |key: &str, value: any_value::Value| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        };
        let span = OtlpSpan {
            trace_id: (1..=16).collect(),
            span_id: (1..=8).collect(),
            name: "embeddings text-embedding-3-small".into(),
            start_time_unix_nano: 2_000_000,
            end_time_unix_nano: 5_000_999,
            attributes: vec![
                kv("gen_ai.operation.name", any_value::Value::StringValue("embeddings".into())),
                kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(9)),
                kv("payload", any_value::Value::BytesValue(vec![0xff, 0x00])),
                kv(
                    "dims",
                    any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                        values: vec![AnyValue { value: Some(any_value::Value::IntValue(3)) }],
                    }),
                ),
            ],
            events: vec![SpanEvent { name: "retry".into(), time_unix_nano: 4, ..Default::default() }],
            status: Some(Status { code: 2, message: String::new() }),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource::default()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "test".into(), ..Default::default() }),
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(span_count(&request), 1);
        let line = to_json_line(&request).expect("JSON");
        assert!(!line.contains('\n'));
        let events = decode(&line);
        let spans = spans(&events);
        assert_eq!(spans.len(), 1, "{events:?}");
        let span = spans[0];
        assert_eq!(span.trace_id, TraceId::Hex128(0x0102030405060708090a0b0c0d0e0f10));
        assert_eq!(span.span_id, "0102030405060708");
        assert_eq!((span.start_time, span.end_time), (Some(2_000), Some(5_000)));
        assert_eq!((span.operation.as_deref(), span.input_tokens), (Some("embeddings"), Some(9)));
        assert_eq!((span.status, span.error_type.as_deref()), (SpanStatus::Error, Some("_OTHER")));
        let attributes = attributes(span);
        // Bytes in base64 (0xff 0x00 → "/wA="), arrays as arrays.
        assert_eq!((&attributes["payload"], &attributes["dims"]), (&json!("/wA="), &json!([3])));
        assert_eq!(attributes["otel.scope.name"], "test");
    }

    /// Langfuse's attributes, as its Python SDK (v3) writes a generation and a failed tool
    /// observation: the usage details as a JSON string, disjoint by type (input without its
    /// cached tokens, output without its reasoning tokens), summed into the GenAI columns; a
    /// key-value list works too; the GenAI names win over Langfuse's; a usage detail that is
    /// no token count fails its span only. Expected values worked out by hand from the
    /// attributes: input 1000 + cached 200 = 1200, output 60 + reasoning 25 = 85.
    #[test]
    fn langfuse_observations_map_to_the_genai_columns() {
        let request = json!({"resourceSpans": [{"scopeSpans": [{"scope": {"name": "langfuse-sdk"}, "spans": [
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "generation",
             "attributes": [
                {"key": "langfuse.observation.type", "value": {"stringValue": "generation"}},
                {"key": "langfuse.observation.model.name", "value": {"stringValue": "gpt-4o"}},
                {"key": "langfuse.session.id", "value": {"stringValue": "session-9"}},
                {"key": "langfuse.observation.usage_details", "value": {"stringValue":
                    "{\"input\": 1000, \"input_cached_tokens\": 200, \"output\": 60, \"output_reasoning_tokens\": 25, \"total\": 1285}"}}]},
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203332", "name": "lookup",
             "parentSpanId": "b7ad6b7169203331",
             "attributes": [
                {"key": "langfuse.observation.type", "value": {"stringValue": "tool"}},
                {"key": "langfuse.observation.level", "value": {"stringValue": "ERROR"}},
                {"key": "langfuse.observation.status_message", "value": {"stringValue": "timeout"}}]},
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203333", "name": "both",
             "attributes": [
                {"key": "langfuse.observation.type", "value": {"stringValue": "span"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "7"}},
                {"key": "langfuse.observation.usage_details", "value": {"kvlistValue": {"values": [
                    {"key": "input", "value": {"intValue": "3"}},
                    {"key": "cache_read_input_tokens", "value": {"intValue": "2"}},
                    {"key": "output", "value": {"doubleValue": 4.0}}]}}}]},
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203334", "name": "bad",
             "attributes": [
                {"key": "langfuse.observation.usage_details", "value": {"stringValue": "{\"output\": \"many\"}"}}]},
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203335", "name": "not json",
             "attributes": [
                {"key": "langfuse.observation.usage_details", "value": {"stringValue": "input=3"}}]}
        ]}]}]});
        let events = decode(&request.to_string());
        let spans = spans(&events);
        assert_eq!(spans.len(), 3, "{events:?}");
        let (generation, tool, both) = (spans[0], spans[1], spans[2]);
        assert_eq!(generation.operation.as_deref(), Some("chat"));
        assert_eq!(generation.request_model.as_deref(), Some("gpt-4o"));
        assert_eq!(generation.conversation_id.as_deref(), Some("session-9"));
        assert_eq!(
            (
                generation.input_tokens,
                generation.output_tokens,
                generation.cache_read_input_tokens,
                generation.reasoning_output_tokens
            ),
            (Some(1200), Some(85), Some(200), Some(25))
        );
        // The usage details stay in `attributes` (its `total` and any other type are only there).
        assert!(
            attributes(generation)["langfuse.observation.usage_details"].as_str().is_some_and(|t| t.contains("1285"))
        );
        assert_eq!((tool.operation.as_deref(), tool.status), (Some("execute_tool"), SpanStatus::Error));
        assert_eq!(tool.error_type.as_deref(), Some("_OTHER"));
        assert_eq!(attributes(tool)["langfuse.observation.status_message"], "timeout");
        // `span` has no GenAI operation and is kept; gen_ai.usage.input_tokens wins over the
        // details (3 + 2), which give the columns it does not.
        assert_eq!(both.operation, None);
        assert_eq!(attributes(both)["langfuse.observation.type"], "span");
        assert_eq!(
            (both.input_tokens, both.output_tokens, both.cache_read_input_tokens, both.reasoning_output_tokens),
            (Some(7), Some(4), Some(2), None)
        );
        let errors: Vec<_> = events
            .iter()
            .filter_map(|e| if let Event::Error(e) = e { Some((e.location.as_str(), e.error.as_str())) } else { None })
            .collect();
        assert_eq!(
            errors,
            vec![
                (
                    "push:1/resourceSpans/0/scopeSpans/0/spans/3",
                    "`output` of attribute `langfuse.observation.usage_details` is \"many\", not a token count \
                     (0..=1000000000)"
                ),
                (
                    "push:1/resourceSpans/0/scopeSpans/0/spans/4",
                    "attribute `langfuse.observation.usage_details` is not a JSON object of token counts: input=3"
                ),
            ]
        );
    }

    /// A record that is no request is one ingest error at its location; so is an option.
    #[test]
    fn what_is_not_a_request_is_one_error() {
        for text in ["not json", "[1, 2]", r#"{"resourceSpans": 7}"#] {
            let events = decode(text);
            assert_eq!(events.len(), 1, "{text}");
            let Event::Error(e) = &events[0] else { panic!("{events:?}") };
            assert_eq!(e.location, "push:1");
            assert!(e.error.starts_with("not an OTLP/JSON ExportTraceServiceRequest: "), "{}", e.error);
        }
        // An empty request has no spans and no error.
        assert!(decode("{}").is_empty());
        assert!(OtlpJson::new(&json!({"messages": "x"})).is_err());
    }
}
