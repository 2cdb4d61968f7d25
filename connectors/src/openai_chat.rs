//! Format `openai-chat`: conversations in the OpenAI chat message format → `spans`
//! (+ `evaluations`).
//!
//! A record is one conversation: a JSON object holding a message array (e.g. a tau-bench
//! result `{task_id, trial, reward, info, traj: [...]}`). Options (all optional):
//!
//! | option | default | meaning |
//! | --- | --- | --- |
//! | `messages` | `"messages"` | field holding the message array (`/…` = JSON pointer) |
//! | `id_fields` | `["id"]` | fields (or pointers) whose values, joined with `/`, form the trace id |
//! | `score` | none | field whose number (a JSON number or a string in JSON number syntax, e.g. `"0.5"`; bools as 1.0/0.0; `"NaN"`/`"inf"` are errors) becomes an evaluation of the trace |
//! | `score_name` | the score field's name | the evaluation's name |
//! | `provider` | none | `provider` of the chat spans |
//! | `request_model` | none | `request_model` of the chat spans (and their name `chat MODEL`) |
//! | `agent_name` | none | `agent_name` of all spans |
//!
//! Spans of a conversation with trace id T:
//! - each `assistant` message `i` is a `chat` span `m{i}` (status `ok`, `conversation_id` T,
//!   `response_model` = the message's `model`, tokens from its `usage`, `start_time` from its
//!   `timestamp` or `created` when present);
//! - each element `j` of its `tool_calls` is an `execute_tool` span `m{i}.t{j}` (parent
//!   `m{i}`), with status `error` (`error_type` `tool_error`) when the `tool` message that
//!   answers it reports an error, `ok` when it does not, `unset` when no message answers it.
//!   A `tool` message answers the latest earlier call with its `tool_call_id` that is not
//!   answered yet (call ids can repeat within a conversation: tau-bench's do).
//!
//! Token counts must be integers in `0..=1000000000` and times within the years 0001..=9999.
//!
//! A record that is not JSON, not an object, lacks an id field or a message array is one
//! ingest error. A malformed message is an ingest error at `LOCATION/messages/i`, and the
//! rest of the conversation is still decoded; so is a `tool` message without a
//! `tool_call_id`, or answering one that no earlier call has (`tool message answers unknown
//! tool_call_id `x``) or whose earlier calls are all answered already. A malformed element
//! `j` of an assistant message's `tool_calls` is an ingest error at
//! `LOCATION/messages/i/tool_calls/j`; the message's chat span and its other calls are kept.

use std::collections::HashMap;

use amx_dataflows::event::{Evaluation, Event, Span, SpanStatus, TraceId};
use ordered_float::OrderedFloat;
use serde_json::{Map, Value};

use crate::options::{FieldPath, Options, bad};
use crate::time::{TimeUnit, checked_string, from_number, parse_timestamp};
use crate::{ConfigError, Decoder, MAX_TOKENS, Record, error, parse_record, short, value_text};

/// A span of an assistant message, or a tool call of it that cannot be read: its index in
/// `tool_calls` and why.
type Part = Result<Span, (usize, String)>;

/// The format's name.
pub const FORMAT: &str = "openai-chat";

/// The `openai-chat` decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct OpenAiChat {
    messages: FieldPath,
    id_fields: Vec<FieldPath>,
    score: Option<FieldPath>,
    score_name: String,
    provider: Option<String>,
    request_model: Option<String>,
    agent_name: Option<String>,
}

impl OpenAiChat {
    /// Builds the decoder from the source's options (see the module docs).
    ///
    /// # Errors
    /// An unknown option, an option of the wrong type, an empty field name, an empty
    /// `id_fields`, or `score_name` without `score`.
    pub fn new(options: &Value) -> Result<OpenAiChat, ConfigError> {
        let mut o = Options::new(FORMAT, options)?;
        let messages = FieldPath::parse("messages", &o.string("messages")?.unwrap_or_else(|| "messages".into()))?;
        let id_fields = match o.strings("id_fields")? {
            None => vec![FieldPath::Key("id".into())],
            Some(v) if v.is_empty() => {
                return Err(bad("id_fields", "must name at least one field"));
            }
            Some(v) => v.iter().map(|f| FieldPath::parse("id_fields", f)).collect::<Result<_, _>>()?,
        };
        let score = o.string("score")?.map(|s| FieldPath::parse("score", &s)).transpose()?;
        let score_name = match (o.string("score_name")?, &score) {
            (Some(_), None) => return Err(bad("score_name", "needs the `score` option")),
            (Some(name), Some(_)) => name,
            (None, Some(field)) => field.name(),
            (None, None) => String::new(),
        };
        let provider = o.string("provider")?;
        let request_model = o.string("request_model")?;
        let agent_name = o.string("agent_name")?;
        o.finish()?;
        Ok(OpenAiChat { messages, id_fields, score, score_name, provider, request_model, agent_name })
    }

    /// The spans of assistant message `i` (its chat span first, then its tool calls, each of
    /// which may be unreadable), or why the message cannot be read.
    fn message_spans(&self, trace: &TraceId, conversation: &str, i: usize, m: &Value) -> Result<Vec<Part>, String> {
        let Some(m) = m.as_object() else {
            return Err(format!("message is not an object: {}", short(m)));
        };
        match m.get("role") {
            Some(Value::String(role)) if role == "assistant" => {}
            Some(Value::String(_)) => return Ok(Vec::new()),
            None | Some(Value::Null) => return Err("message has no `role`".into()),
            Some(other) => return Err(format!("`role` is not a string: {}", short(other))),
        }
        let mut chat = Span::new(trace.clone(), format!("m{i}"), "chat");
        if let Some(model) = &self.request_model {
            chat.name = format!("chat {model}");
        }
        chat.operation = Some("chat".into());
        chat.provider.clone_from(&self.provider);
        chat.request_model.clone_from(&self.request_model);
        chat.response_model = match m.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("`model` is not a string: {}", short(other))),
        };
        chat.agent_name.clone_from(&self.agent_name);
        chat.conversation_id = Some(conversation.to_owned());
        chat.status = SpanStatus::Ok;
        if let Some(usage) = m.get("usage").filter(|u| !u.is_null()) {
            if !usage.is_object() {
                return Err(format!("`usage` is not an object: {}", short(usage)));
            }
            let first = |paths: &[&str]| -> Result<Option<i64>, String> {
                for p in paths {
                    if let Some(n) = tokens(usage, p)? {
                        return Ok(Some(n));
                    }
                }
                Ok(None)
            };
            chat.input_tokens = first(&["/prompt_tokens", "/input_tokens"])?;
            chat.output_tokens = first(&["/completion_tokens", "/output_tokens"])?;
            chat.cache_read_input_tokens = first(&[
                "/prompt_tokens_details/cached_tokens",
                "/input_tokens_details/cached_tokens",
                "/cache_read_input_tokens",
            ])?;
            chat.reasoning_output_tokens =
                first(&["/completion_tokens_details/reasoning_tokens", "/output_tokens_details/reasoning_tokens"])?;
        }
        for field in ["timestamp", "created"] {
            if let Some(v) = m.get(field).filter(|v| !v.is_null()) {
                chat.start_time = Some(message_time(v).map_err(|e| format!("`{field}`: {e}"))?);
                break;
            }
        }
        let calls = match m.get("tool_calls") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(calls)) => calls.as_slice(),
            Some(other) => return Err(format!("`tool_calls` is not an array: {}", short(other))),
        };
        let mut parts = Vec::with_capacity(1 + calls.len());
        parts.push(Ok(chat));
        for (j, call) in calls.iter().enumerate() {
            parts.push(self.tool_span(trace, conversation, i, j, call).map_err(|e| (j, e)));
        }
        Ok(parts)
    }

    /// The `execute_tool` span of tool call `j` of message `i`.
    fn tool_span(&self, trace: &TraceId, conversation: &str, i: usize, j: usize, call: &Value) -> Result<Span, String> {
        let Some(call) = call.as_object() else {
            return Err(format!("not an object: {}", short(call)));
        };
        let function = match call.get("function") {
            Some(Value::Object(f)) => f,
            None | Some(Value::Null) => return Err("no `function`".into()),
            Some(other) => return Err(format!("`function` is not an object: {}", short(other))),
        };
        let name = match function.get("name") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => return Err("no `function.name`".into()),
            Some(other) => {
                return Err(format!("`function.name` is not a string: {}", short(other)));
            }
        };
        let id = match call.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("`id` is not a string: {}", short(other))),
        };
        let mut span = Span::new(trace.clone(), format!("m{i}.t{j}"), format!("execute_tool {name}"));
        span.parent_span_id = Some(format!("m{i}"));
        span.operation = Some("execute_tool".into());
        span.agent_name.clone_from(&self.agent_name);
        span.conversation_id = Some(conversation.to_owned());
        span.attributes = function.get("arguments").and_then(value_text).map(|args| {
            let mut attrs = Map::new();
            attrs.insert("gen_ai.tool.call.arguments".into(), Value::String(args));
            Value::Object(attrs).to_string()
        });
        span.tool_name = Some(name);
        span.tool_call_id = id;
        Ok(span)
    }
}

impl Decoder for OpenAiChat {
    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        let Some(v) = parse_record(source, record, out) else {
            return;
        };
        let whole = |reason: String| error(source, &record.location, reason, &record.text);
        if !v.is_object() {
            out.push(whole(format!("expected a JSON object (one conversation), found {}", short(&v))));
            return;
        }
        let mut parts = Vec::with_capacity(self.id_fields.len());
        for field in &self.id_fields {
            match field.get(&v).and_then(value_text) {
                Some(part) => parts.push(part),
                None => {
                    out.push(whole(format!("missing id field `{field}`")));
                    return;
                }
            }
        }
        let conversation = parts.join("/");
        let trace = TraceId::parse(&conversation);
        let messages = match self.messages.get(&v) {
            Some(Value::Array(m)) => m,
            None | Some(Value::Null) => {
                out.push(whole(format!("missing message array `{}`", self.messages)));
                return;
            }
            Some(other) => {
                out.push(whole(format!("`{}` is not an array: {}", self.messages, short(other))));
                return;
            }
        };
        // Unanswered tool calls: call id → indices of their spans in `out`, oldest first.
        // A `tool` message answers the latest unanswered call with its id (ids can be reused
        // within a conversation, e.g. by tau-bench's cached completions).
        let mut pending: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            let at = || format!("{}/messages/{i}", record.location);
            if let Some(msg) = m.as_object()
                && msg.get("role").and_then(Value::as_str) == Some("tool")
            {
                let id = match msg.get("tool_call_id") {
                    Some(Value::String(id)) => id,
                    None | Some(Value::Null) => {
                        out.push(error(source, &at(), "tool message has no `tool_call_id`", &m.to_string()));
                        continue;
                    }
                    Some(other) => {
                        let reason = format!("`tool_call_id` is not a string: {}", short(other));
                        out.push(error(source, &at(), reason, &m.to_string()));
                        continue;
                    }
                };
                match pending.get_mut(id).and_then(Vec::pop) {
                    Some(index) => {
                        if let Some(Event::Span(span)) = out.get_mut(index) {
                            if is_tool_error(msg) {
                                span.status = SpanStatus::Error;
                                span.error_type = Some("tool_error".into());
                            } else {
                                span.status = SpanStatus::Ok;
                            }
                        }
                    }
                    None => {
                        let reason = if pending.contains_key(id) {
                            format!("tool message answers tool_call_id `{id}`, whose earlier calls are all answered")
                        } else {
                            format!("tool message answers unknown tool_call_id `{id}`")
                        };
                        out.push(error(source, &at(), reason, &m.to_string()));
                    }
                }
                continue;
            }
            match self.message_spans(&trace, &conversation, i, m) {
                Ok(parts) => {
                    for part in parts {
                        match part {
                            Ok(span) => {
                                if let Some(id) = span.tool_call_id.clone() {
                                    pending.entry(id).or_default().push(out.len());
                                }
                                out.push(Event::Span(span));
                            }
                            Err((j, reason)) => {
                                let raw = m.pointer(&format!("/tool_calls/{j}")).map(Value::to_string);
                                let at = format!("{}/tool_calls/{j}", at());
                                out.push(error(source, &at, reason, &raw.unwrap_or_default()));
                            }
                        }
                    }
                }
                Err(reason) => out.push(error(source, &at(), reason, &m.to_string())),
            }
        }
        if let Some(field) = &self.score {
            let score = match field.get(&v) {
                None | Some(Value::Null) => return,
                Some(Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
                Some(Value::Number(n)) => n.as_f64().ok_or(()),
                // Only JSON's own number syntax: not `NaN`, `inf` or `-infinity`, which JSON has
                // no numbers for (Rust's float parser would take them).
                Some(Value::String(s)) => serde_json::from_str::<serde_json::Number>(s.trim())
                    .ok()
                    .and_then(|n| n.as_f64())
                    .filter(|f| f.is_finite())
                    .ok_or(()),
                Some(_) => Err(()),
            };
            match score {
                Ok(score) => out.push(Event::Evaluation(Evaluation {
                    trace_id: trace,
                    span_id: None,
                    name: self.score_name.clone(),
                    score: Some(OrderedFloat(score)),
                    label: None,
                })),
                Err(()) => out.push(whole(format!(
                    "score field `{field}` is not a number: {}",
                    field.get(&v).map(short).unwrap_or_default()
                ))),
            }
        }
    }
}

/// A token count at `pointer` in a `usage` object: an integer (or integral float, or integer
/// string) in `0..=MAX_TOKENS`; `None` when missing or null.
fn tokens(usage: &Value, pointer: &str) -> Result<Option<i64>, String> {
    let field = format!("usage{}", pointer.replace('/', "."));
    let not_int = |v: &Value| format!("{field} is not an integer: {}", short(v));
    let n = match usage.pointer(pointer) {
        None | Some(Value::Null) => return Ok(None),
        Some(v @ Value::Number(n)) => match n.as_i64() {
            Some(i) => i,
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
                _ => return Err(not_int(v)),
            },
        },
        Some(v @ Value::String(s)) => s.trim().parse().map_err(|_| not_int(v))?,
        Some(v) => return Err(not_int(v)),
    };
    if (0..=MAX_TOKENS).contains(&n) {
        Ok(Some(n))
    } else {
        Err(format!("{field}: token count {n} is out of range (0..={MAX_TOKENS})"))
    }
}

/// A message time: an RFC 3339 string, or an epoch number (or numeric string) whose unit is
/// guessed from its magnitude ([`TimeUnit::guess`]; OpenAI's `created` is in seconds); within
/// the years 0001..=9999.
fn message_time(v: &Value) -> Result<i64, String> {
    let number = match v {
        Value::Number(n) => n.clone(),
        Value::String(s) => {
            if let Some(t) = parse_timestamp(s) {
                return checked_string(t, v);
            }
            serde_json::from_str(s.trim()).map_err(|_| format!("cannot parse time {}", short(v)))?
        }
        other => return Err(format!("expected a time, found {}", short(other))),
    };
    let unit = TimeUnit::guess(number.as_f64().unwrap_or(0.0));
    from_number(&number, unit)
}

/// Whether a `tool` message reports an error: `is_error: true`, `status: "error"`, or content
/// (a string, or the text parts of a content array) that starts with "error" (any case)
/// after trimming.
pub(crate) fn is_tool_error(m: &Map<String, Value>) -> bool {
    if m.get("is_error").and_then(Value::as_bool) == Some(true) {
        return true;
    }
    if m.get("status").and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("error")) {
        return true;
    }
    let text = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        _ => String::new(),
    };
    text.trim_start().as_bytes().get(..5).is_some_and(|b| b.eq_ignore_ascii_case(b"error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::{errors, spans};
    use amx_dataflows::event::IngestError;
    use serde_json::json;

    fn decoder(options: Value) -> OpenAiChat {
        match OpenAiChat::new(&options) {
            Ok(d) => d,
            Err(e) => panic!("options rejected: {e}"),
        }
    }

    fn decode(d: &OpenAiChat, location: &str, record: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        d.decode("src", &Record::new(location, record.to_string()), &mut out);
        out
    }

    fn tau() -> OpenAiChat {
        decoder(json!({
            "messages": "traj", "id_fields": ["task_id", "trial"], "score": "reward",
            "provider": "openai", "request_model": "gpt-4o", "agent_name": "airline"
        }))
    }

    #[test]
    fn tau_bench_like_conversation() {
        let record = json!({
            "task_id": 7, "trial": 1, "reward": 0.0, "info": {},
            "traj": [
                {"role": "system", "content": "policy"},
                {"role": "user", "content": "cancel my flight"},
                {"role": "assistant", "content": null, "model": "gpt-4o-2024-08-06",
                 "usage": {"prompt_tokens": 120, "completion_tokens": 15, "total_tokens": 135,
                           "prompt_tokens_details": {"cached_tokens": 100},
                           "completion_tokens_details": {"reasoning_tokens": 4}},
                 "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "cancel_reservation", "arguments": "{\"reservation_id\":\"ZFA04Y\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_user_details", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_a", "name": "cancel_reservation",
                 "content": "  error: reservation not found"},
                {"role": "assistant", "content": "Sorry, I could not find it."}
            ]
        });
        let out = decode(&tau(), "tau.json:1#0", &record);
        assert_eq!(errors(&out), vec![]);
        let trace = TraceId::Text("7/1".into());

        let mut chat = Span::new(trace.clone(), "m2", "chat gpt-4o");
        chat.operation = Some("chat".into());
        chat.provider = Some("openai".into());
        chat.request_model = Some("gpt-4o".into());
        chat.response_model = Some("gpt-4o-2024-08-06".into());
        chat.agent_name = Some("airline".into());
        chat.conversation_id = Some("7/1".into());
        chat.input_tokens = Some(120);
        chat.output_tokens = Some(15);
        chat.cache_read_input_tokens = Some(100);
        chat.reasoning_output_tokens = Some(4);
        chat.status = SpanStatus::Ok;

        let mut failed = Span::new(trace.clone(), "m2.t0", "execute_tool cancel_reservation");
        failed.parent_span_id = Some("m2".into());
        failed.operation = Some("execute_tool".into());
        failed.agent_name = Some("airline".into());
        failed.conversation_id = Some("7/1".into());
        failed.tool_name = Some("cancel_reservation".into());
        failed.tool_call_id = Some("call_a".into());
        failed.status = SpanStatus::Error;
        failed.error_type = Some("tool_error".into());
        failed.attributes = Some(r#"{"gen_ai.tool.call.arguments":"{\"reservation_id\":\"ZFA04Y\"}"}"#.into());

        // No tool message answers call_b: unset.
        let mut unanswered = Span::new(trace.clone(), "m2.t1", "execute_tool get_user_details");
        unanswered.parent_span_id = Some("m2".into());
        unanswered.operation = Some("execute_tool".into());
        unanswered.agent_name = Some("airline".into());
        unanswered.conversation_id = Some("7/1".into());
        unanswered.tool_name = Some("get_user_details".into());
        unanswered.tool_call_id = Some("call_b".into());
        unanswered.attributes = Some(r#"{"gen_ai.tool.call.arguments":"{}"}"#.into());

        // Second turn: no usage, no model: NULL tokens and response model.
        let mut reply = Span::new(trace.clone(), "m4", "chat gpt-4o");
        reply.operation = Some("chat".into());
        reply.provider = Some("openai".into());
        reply.request_model = Some("gpt-4o".into());
        reply.agent_name = Some("airline".into());
        reply.conversation_id = Some("7/1".into());
        reply.status = SpanStatus::Ok;

        let eval = Evaluation {
            trace_id: trace,
            span_id: None,
            name: "reward".into(),
            score: Some(OrderedFloat(0.0)),
            label: None,
        };
        assert_eq!(
            out,
            vec![
                Event::Span(chat),
                Event::Span(failed),
                Event::Span(unanswered),
                Event::Span(reply),
                Event::Evaluation(eval)
            ]
        );
    }

    #[test]
    fn tool_results_ok_and_error_forms() {
        let record = json!({"id": "c1", "messages": [
            {"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "function": {"name": "f"}},
                {"id": "c", "function": {"name": "f"}},
                {"id": "d", "function": {"name": "f"}},
                {"id": "e", "function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "tool_call_id": "a", "content": "Flight booked; no errors"},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": " \nERROR"}, {"type": "text", "text": ": boom"}]},
            {"role": "tool", "tool_call_id": "c", "content": "done", "is_error": true},
            {"role": "tool", "tool_call_id": "d", "content": "done", "status": "error"},
            {"role": "tool", "tool_call_id": "e", "content": [{"type": "text", "text": "fine"}]}
        ]});
        let out = decode(&decoder(json!({})), "x:1", &record);
        let got: Vec<_> = spans(&out)
            .iter()
            .map(|s| (s.span_id.as_str(), s.status, s.error_type.as_deref(), s.attributes.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("m0", SpanStatus::Ok, None, None),
                ("m0.t0", SpanStatus::Ok, None, Some(r#"{"gen_ai.tool.call.arguments":"{}"}"#)),
                ("m0.t1", SpanStatus::Error, Some("tool_error"), None),
                ("m0.t2", SpanStatus::Error, Some("tool_error"), None),
                ("m0.t3", SpanStatus::Error, Some("tool_error"), None),
                // Non-string arguments are kept as their JSON text.
                ("m0.t4", SpanStatus::Ok, None, Some(r#"{"gen_ai.tool.call.arguments":"{\"x\":1}"}"#)),
            ]
        );
        // Default options: trace id from "id", name "chat", no provider/model.
        let chat = spans(&out)[0];
        assert_eq!((chat.trace_id.to_string(), chat.name.as_str()), ("c1".into(), "chat"));
        assert_eq!((chat.provider.as_deref(), chat.request_model.as_deref()), (None, None));
    }

    #[test]
    fn reused_call_ids_match_the_latest_unanswered_call() {
        let call = |id: &str| json!({"role": "assistant", "tool_calls": [{"id": id, "function": {"name": "f"}}]});
        let answer = |id: &str, content: &str| json!({"role": "tool", "tool_call_id": id, "content": content});
        let record = json!({"id": "c", "messages": [
            answer("x", "Error: before any call"),
            call("x"),
            answer("x", "Error: no such user"),
            call("x"),
            answer("x", "{\"user\": 1}"),
            call("x"),
            call("x"),
            answer("x", "error"),
        ]});
        let out = decode(&decoder(json!({})), "x:1", &record);
        let got: Vec<_> =
            spans(&out).iter().filter(|s| s.is_tool_call()).map(|s| (s.span_id.as_str(), s.status)).collect();
        assert_eq!(
            got,
            vec![
                ("m1.t0", SpanStatus::Error),
                ("m3.t0", SpanStatus::Ok),
                // Two calls in a row, one answer: it answers the later call.
                ("m5.t0", SpanStatus::Unset),
                ("m6.t0", SpanStatus::Error),
            ]
        );
        // The answer before any call is reported.
        assert_eq!(errors(&out), vec![("x:1/messages/0", "tool message answers unknown tool_call_id `x`")]);
    }

    #[test]
    fn responses_style_usage_and_timestamps() {
        let record = json!({"id": "0af7651916cd43dd8448eb211c80319c", "messages": [
            {"role": "assistant", "created": 1731368630,
             "usage": {"input_tokens": 44, "output_tokens": 288,
                       "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens_details": {"reasoning_tokens": 9}}},
            {"role": "assistant", "timestamp": "2024-11-11T23:43:50.5Z"},
            {"role": "assistant", "timestamp": 1731368630500_i64}
        ]});
        let out = decode(&decoder(json!({})), "x:1", &record);
        let s = spans(&out);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].trace_id, TraceId::Hex128(0x0af7651916cd43dd8448eb211c80319c));
        assert_eq!(
            (s[0].input_tokens, s[0].output_tokens, s[0].cache_read_input_tokens, s[0].reasoning_output_tokens),
            (Some(44), Some(288), Some(0), Some(9))
        );
        // 1731368630 s = 2024-11-11T23:43:50Z.
        assert_eq!(s[0].start_time, Some(1_731_368_630_000_000));
        assert_eq!(s[1].start_time, Some(1_731_368_630_500_000));
        assert_eq!(s[2].start_time, Some(1_731_368_630_500_000));
        assert_eq!(s[0].end_time, None);
    }

    #[test]
    fn scores() {
        let d = decoder(json!({"score": "/info/passed", "score_name": "pass"}));
        let out = decode(&d, "x:1", &json!({"id": "a", "messages": [], "info": {"passed": true}}));
        assert_eq!(
            out,
            vec![Event::Evaluation(Evaluation {
                trace_id: TraceId::Text("a".into()),
                span_id: None,
                name: "pass".into(),
                score: Some(OrderedFloat(1.0)),
                label: None,
            })]
        );
        // Default name: the field's name (last pointer token).
        let d = decoder(json!({"score": "/info/passed"}));
        let out = decode(&d, "x:1", &json!({"id": "a", "messages": [], "info": {"passed": 0.25}}));
        assert!(
            matches!(&out[..], [Event::Evaluation(e)] if e.name == "passed" && e.score == Some(OrderedFloat(0.25)))
        );
        // Missing or null: no evaluation.
        assert_eq!(decode(&d, "x:1", &json!({"id": "a", "messages": []})), vec![]);
        assert_eq!(decode(&d, "x:1", &json!({"id": "a", "messages": [], "info": {"passed": null}})), vec![]);
        // Not a number: an error for the score only.
        let out =
            decode(&d, "x:1", &json!({"id": "a", "messages": [{"role": "assistant"}], "info": {"passed": "yes"}}));
        assert_eq!(spans(&out).len(), 1);
        assert_eq!(errors(&out), vec![("x:1", "score field `/info/passed` is not a number: \"yes\"")]);
        // A string holding a JSON number is a number; JSON has no NaN or infinities, so the
        // strings Rust's float parser would also take are errors.
        let out = decode(&d, "x:1", &json!({"id": "a", "messages": [], "info": {"passed": " 0.5 "}}));
        assert!(matches!(&out[..], [Event::Evaluation(e)] if e.score == Some(OrderedFloat(0.5))), "{out:?}");
        for bad in ["NaN", "inf", "-infinity", "+Infinity", "1e400", "0x10"] {
            let out = decode(&d, "x:1", &json!({"id": "a", "messages": [], "info": {"passed": bad}}));
            let expected = format!("score field `/info/passed` is not a number: \"{bad}\"");
            assert_eq!(errors(&out), vec![("x:1", expected.as_str())], "{bad}");
        }
    }

    #[test]
    fn missing_id_field() {
        let record = json!({"task_id": 3, "reward": 1.0, "traj": [{"role": "assistant", "content": "hi"}]});
        let out = decode(&tau(), "tau.json:1#4", &record);
        let text = record.to_string();
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Event::Error(IngestError { source, location, error, raw })
            if source == "src" && location == "tau.json:1#4" && error == "missing id field `trial`" && *raw == text));
        // A null id is missing too.
        let out = decode(&tau(), "l", &json!({"task_id": 3, "trial": null, "traj": []}));
        assert_eq!(errors(&out), vec![("l", "missing id field `trial`")]);
    }

    #[test]
    fn malformed_messages_among_good_ones() {
        let record = json!({"task_id": 0, "trial": 2, "traj": [
            {"role": "user", "content": "hi"},
            5,
            {"role": "assistant", "tool_calls": "get_user"},
            {"role": "assistant", "tool_calls": [{"id": "x", "function": {"arguments": "{}"}}]},
            {"role": "assistant", "usage": {"prompt_tokens": 1.5}},
            {"content": "no role"},
            {"role": "assistant", "content": "ok"}
        ]});
        let out = decode(&tau(), "t.json:9#1", &record);
        assert_eq!(
            errors(&out),
            vec![
                ("t.json:9#1/messages/1", "message is not an object: 5"),
                ("t.json:9#1/messages/2", "`tool_calls` is not an array: \"get_user\""),
                // Only the call is an error: the chat span m3 is kept.
                ("t.json:9#1/messages/3/tool_calls/0", "no `function.name`"),
                ("t.json:9#1/messages/4", "usage.prompt_tokens is not an integer: 1.5"),
                ("t.json:9#1/messages/5", "message has no `role`"),
            ]
        );
        let ids: Vec<_> = spans(&out).iter().map(|s| (s.trace_id.to_string(), s.span_id.clone())).collect();
        assert_eq!(ids, vec![("0/2".to_owned(), "m3".to_owned()), ("0/2".to_owned(), "m6".to_owned())]);
        // The raw text of a message error is the message; of a call error, the call.
        assert!(matches!(&out[1], Event::Error(e) if e.raw == r#"{"role":"assistant","tool_calls":"get_user"}"#));
        assert!(matches!(&out[3], Event::Error(e) if e.raw == r#"{"function":{"arguments":"{}"},"id":"x"}"#));
    }

    #[test]
    fn unanswerable_tool_messages_and_bad_calls() {
        let tool = |id: Value, content: &str| json!({"role": "tool", "tool_call_id": id, "content": content});
        let record = json!({"id": "c", "messages": [
            tool(json!("ghost"), "ok"),
            {"role": "assistant", "tool_calls": [
                {"id": "a", "function": {"name": "f"}},
                5,
                {"id": "c", "function": {"name": "g"}}]},
            tool(json!("a"), "fine"),
            tool(json!("a"), "again"),
            {"role": "tool", "content": "who?"},
            tool(json!(7), "seven"),
            tool(json!("c"), "error: x")
        ]});
        let out = decode(&decoder(json!({})), "x:1", &record);
        let got: Vec<_> = out
            .iter()
            .map(|e| match e {
                Event::Span(s) => (s.span_id.clone(), format!("{:?}", s.status)),
                Event::Error(e) => (e.location.clone(), e.error.clone()),
                other => (String::new(), format!("{other:?}")),
            })
            .collect();
        let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            got,
            vec![
                p("x:1/messages/0", "tool message answers unknown tool_call_id `ghost`"),
                p("m1", "Ok"),
                p("m1.t0", "Ok"),
                p("x:1/messages/1/tool_calls/1", "not an object: 5"),
                p("m1.t2", "Error"),
                p("x:1/messages/3", "tool message answers tool_call_id `a`, whose earlier calls are all answered"),
                p("x:1/messages/4", "tool message has no `tool_call_id`"),
                p("x:1/messages/5", "`tool_call_id` is not a string: 7"),
            ]
        );
        assert!(matches!(&out[3], Event::Error(e) if e.raw == "5"));
        assert!(
            matches!(&out[0], Event::Error(e) if e.raw == r#"{"content":"ok","role":"tool","tool_call_id":"ghost"}"#)
        );
    }

    #[test]
    fn token_and_time_ranges() {
        let record = json!({"id": "c", "messages": [
            {"role": "assistant", "usage": {"prompt_tokens": -500}},
            {"role": "assistant", "usage": {"completion_tokens": 1_000_000_001}},
            {"role": "assistant", "usage": {"prompt_tokens": 0, "completion_tokens": 1_000_000_000}},
            // Below 1e11 the unit is seconds: -99999999999 s is about 3169 years before 1970.
            {"role": "assistant", "created": -99_999_999_999_i64},
            {"role": "assistant", "timestamp": "0001-01-01T00:00:00+01:00"},
            {"role": "assistant", "timestamp": "0001-01-01T00:00:00Z"}
        ]});
        let out = decode(&decoder(json!({})), "x:1", &record);
        assert_eq!(
            errors(&out),
            vec![
                ("x:1/messages/0", "usage.prompt_tokens: token count -500 is out of range (0..=1000000000)"),
                ("x:1/messages/1", "usage.completion_tokens: token count 1000000001 is out of range (0..=1000000000)"),
                ("x:1/messages/3", "`created`: time -99999999999 s is out of range (years 0001..=9999)"),
                (
                    "x:1/messages/4",
                    "`timestamp`: time \"0001-01-01T00:00:00+01:00\" is out of range (years 0001..=9999)"
                ),
            ]
        );
        let s = spans(&out);
        assert_eq!(
            s.iter().map(|s| (s.span_id.as_str(), s.input_tokens, s.output_tokens, s.start_time)).collect::<Vec<_>>(),
            // 0001-01-01T00:00:00Z = -62135596800 s (719162 days before 1970).
            vec![("m2", Some(0), Some(1_000_000_000), None), ("m5", None, None, Some(-62_135_596_800_000_000))]
        );
    }

    #[test]
    fn whole_record_errors() {
        let d = tau();
        let out = decode(&d, "l:1", &json!({"task_id": 0, "trial": 0}));
        assert_eq!(errors(&out), vec![("l:1", "missing message array `traj`")]);
        let out = decode(&d, "l:1", &json!({"task_id": 0, "trial": 0, "traj": {"role": "user"}}));
        assert_eq!(errors(&out), vec![("l:1", "`traj` is not an array: {\"role\":\"user\"}")]);
        let out = decode(&d, "l:1", &json!([1, 2]));
        assert_eq!(errors(&out), vec![("l:1", "expected a JSON object (one conversation), found [1,2]")]);
        let mut out = Vec::new();
        d.decode("src", &Record::new("l:2", "{\"task_id\": "), &mut out);
        assert_eq!(errors(&out), vec![("l:2", "invalid JSON: EOF while parsing a value at line 1 column 12")]);
    }

    #[test]
    fn option_errors() {
        let err = |o: Value| OpenAiChat::new(&o).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err(json!({"id_fields": []})), "option `id_fields`: must name at least one field");
        assert_eq!(err(json!({"id_fields": "id"})), "option `id_fields`: expected an array of strings, found \"id\"");
        assert_eq!(err(json!({"messages": ""})), "option `messages`: a field name or JSON pointer must not be empty");
        assert_eq!(err(json!({"score_name": "r"})), "option `score_name`: needs the `score` option");
        assert!(err(json!({"modle": "x"})).starts_with("unknown option `modle` for format `openai-chat`"));
    }
}
