//! Format `llm-http`: recorded model-API exchanges — VCR cassettes and HAR logs → `spans`.
//!
//! A record is one of:
//! - a **VCR cassette** (`{"interactions": [{"request": …, "response": …}, …]}`), in YAML as
//!   vcrpy and the OpenTelemetry GenAI instrumentations' tests record them, or in JSON;
//! - a **HAR log** (`{"log": {"entries": [{"request": …, "response": …}, …]}}`, HAR 1.2 as
//!   browsers and proxies export it);
//! - **one exchange** of either (a VCR interaction or a HAR entry on its own), e.g. one per
//!   line of a JSON Lines file, per pushed line or per Kafka message.
//!
//! A file source with this format reads a file that is not JSON (a YAML cassette) as one
//! record; JSON files are split as always (JSON Lines by line, a top-level array by element,
//! one pretty-printed document whole). A cassette is read once, when the source first sees it:
//! write it under another name and rename it into the source's glob when complete. One
//! rewritten in place (vcrpy's `new_episodes`) is not read again, and one renamed over an old
//! one is a new file, read whole again (its spans then count twice): record new exchanges into
//! a new file.
//!
//! Exchanges with a model API become spans; any other exchange (a HAR log of a web page holds
//! many, and a `GET`, such as listing stored completions, calls no model) is skipped. The API is
//! told by a `POST`'s URL path:
//!
//! | path | API | operation |
//! | --- | --- | --- |
//! | ends in `/chat/completions` | OpenAI Chat Completions (and OpenAI-compatible servers) | `chat` |
//! | ends in `/responses` | OpenAI Responses | `chat` |
//! | `…/models/MODEL:generateContent`, `…:streamGenerateContent` (also `tunedModels/`) | Google Gemini API, Vertex AI | `generate_content` |
//!
//! Each exchange `k` (0-based, in the record's order, skipped exchanges counted) is a span
//! `x{k}`. A record is one trace: its `trace_id` is the record's first response id (OpenAI's
//! `chatcmpl-…` or `resp_…`, Gemini's `responseId`), else its location and a hash of its text
//! (`path#…`, `POST /v1/ingest/JOB/SOURCE:LINE#…`: lines of different pushes share numbers).
//! A record of one exchange (a line, a pushed line, a Kafka message) is a trace of its own, so a
//! tool call's result in a later record does not close its span. Its columns:
//!
//! | column | from |
//! | --- | --- |
//! | `name` | `{operation} {request_model}` (the GenAI conventions' span name) |
//! | `provider` | option `provider`, else the host: `api.openai.com` → `openai`, `*.openai.azure.com` → `azure.ai.openai`, `generativelanguage.googleapis.com` → `gcp.gemini`, `*aiplatform.googleapis.com` → `gcp.vertex_ai` (the conventions' `gen_ai.provider.name` values); NULL for another host |
//! | `request_model` | the request body's `model` (OpenAI), the URL's `models/MODEL` (Gemini) |
//! | `response_model` | the response's `model` (OpenAI), `modelVersion` (Gemini) |
//! | `input_tokens` | `usage.prompt_tokens` (Chat), `usage.input_tokens` (Responses), `usageMetadata.promptTokenCount + toolUsePromptTokenCount` (Gemini); cached tokens included, as every one of them counts them |
//! | `output_tokens` | `usage.completion_tokens` (Chat), `usage.output_tokens` (Responses) — reasoning tokens included; `candidatesTokenCount + thoughtsTokenCount` (Gemini, which counts thoughts apart and bills them as output) |
//! | `cache_read_input_tokens` | `prompt_tokens_details.cached_tokens`, `input_tokens_details.cached_tokens`, `cachedContentTokenCount` |
//! | `reasoning_output_tokens` | `completion_tokens_details.reasoning_tokens`, `output_tokens_details.reasoning_tokens`, `thoughtsTokenCount` |
//! | `start_time` | HAR `startedDateTime`; else the response's `created` / `created_at` (s) or `createTime`; else its `Date` header |
//! | `end_time` | HAR `startedDateTime + time`; else the response's `completed_at` (s); else its `Date` header (when not before the start) |
//! | `status`, `error_type` | `error` with the provider's code (OpenAI `error.code`, else `error.type`; Gemini `error.status`; else the HTTP status code) for an HTTP status ≥ 400, an `error` object answered with 200, or an error event in a stream; `no_response` for HAR's status 0 (aborted, blocked); Gemini's `promptFeedback.blockReason` (`SAFETY`, …) for a blocked prompt; `incomplete_stream` for a stream that ends before its last event (`data: [DONE]`, `response.completed`, a `finishReason`) — what it sent before is kept, an event it ends inside is dropped (WHATWG's event-stream rules); the response's `error.code` for a Responses `status: "failed"`; else `ok` |
//! | `attributes` | `gen_ai.response.id`, `gen_ai.response.finish_reasons`, `gen_ai.request.stream`, `gen_ai.request.temperature`/`top_p`/`max_tokens` when the request sets them, `http.response.status_code`, `server.address`, `error.message` |
//!
//! Streams (server-sent events, `text/event-stream`, or Gemini's `streamGenerateContent`
//! without `alt=sse`, a JSON array) are folded: tool-call argument deltas concatenated (a delta
//! names its call by `index`; without one, a delta with an `id` starts a call), the usage of
//! the chunk that carries it (Chat with `stream_options.include_usage`, Responses'
//! `response.completed`, Gemini's last `usageMetadata`). A VCR body kept as YAML `!!binary`
//! with a `Content-Encoding` of `gzip` or `deflate` (vcrpy without `decode_compressed_response`)
//! is decompressed.
//!
//! Each tool call the model asks for (Chat `tool_calls`, Responses `function_call` items,
//! Gemini `functionCall` parts) is a child span `x{k}.t{j}` (`execute_tool {name}`, with
//! `tool_name`, `tool_call_id` and `gen_ai.tool.call.arguments`), starting when the response
//! ended. When a later request of the same record carries its result (a Chat `tool` message
//! with its `tool_call_id`, a Responses `function_call_output` with its `call_id`, a Gemini
//! `functionResponse` with its id, or else the earliest waiting call of its name), the tool
//! span ends when that request started, with status `ok` — `error` (`error_type`
//! `tool_error`) when the result reports one: a Chat `tool` message as the `openai-chat` format
//! decides it (`is_error: true`, `status: "error"`, text starting with "error"); a Responses
//! output that starts with "error" or is a JSON object with an `error` (or `is_error: true`);
//! a Gemini response with an `error` field. Else it stays `unset`.
//!
//! A record that is neither YAML nor JSON, or none of the shapes above, is one ingest error
//! at its location. An exchange that cannot be read (no URL, no status, a response body that is
//! not the API's JSON or fields of the wrong type, a token count out of `0..=1000000000`,
//! more cached than input or more reasoning than output tokens) is an ingest error at
//! `LOCATION/interactions/k` (`LOCATION/log/entries/k`), and the record's other exchanges are
//! still decoded.

use amx_dataflows::event::{Event, Span, SpanStatus, TraceId};
use base64::Engine;
use serde_json::{Map, Value};

use crate::options::Options;
use crate::time::{in_range, parse_timestamp};
use crate::{ConfigError, Decoder, MAX_TOKENS, Record, error, short};
use amx_dataflows::event::TimestampUs;

/// The format's name.
pub const FORMAT: &str = "llm-http";

/// The `llm-http` decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct LlmHttp {
    provider: Option<String>,
    agent_name: Option<String>,
}

impl LlmHttp {
    /// Builds the decoder from the source's options: `provider` (the spans' provider, in
    /// place of the one the host names) and `agent_name` (of every span), both optional.
    ///
    /// # Errors
    /// An unknown option, or an option that is not a string.
    pub fn new(options: &Value) -> Result<LlmHttp, ConfigError> {
        let mut o = Options::new(FORMAT, options)?;
        let provider = o.string("provider")?;
        let agent_name = o.string("agent_name")?;
        o.finish()?;
        Ok(LlmHttp { provider, agent_name })
    }
}

/// Which model API an exchange calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
    Gemini,
}

/// One recorded exchange, read out of its container.
#[derive(Debug, Default)]
struct Exchange {
    method: String,
    url: String,
    request_body: Option<String>,
    status: Option<i64>,
    response_body: Option<String>,
    content_type: Option<String>,
    /// HAR: when the request started, and when the response ended.
    started: Option<TimestampUs>,
    ended: Option<TimestampUs>,
    /// The response's `Date` header.
    date: Option<TimestampUs>,
}

/// A tool call the model asked for.
#[derive(Debug, Default, Clone)]
struct Call {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// What a response says, folded over a stream's events.
#[derive(Debug, Default)]
struct Reply {
    id: Option<String>,
    model: Option<String>,
    finish_reasons: Vec<String>,
    input: Option<i64>,
    output: Option<i64>,
    cached: Option<i64>,
    reasoning: Option<i64>,
    calls: Vec<Call>,
    created: Option<TimestampUs>,
    completed: Option<TimestampUs>,
    /// The stream reached its last event (always, for a whole response).
    complete: bool,
    /// The provider's error code and message.
    error: Option<(String, Option<String>)>,
}

impl Decoder for LlmHttp {
    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        if let Some(reason) = &record.error {
            out.push(error(source, &record.location, reason.clone(), &record.text));
            return;
        }
        let whole = |reason: String| error(source, &record.location, reason, &record.text);
        let value = match parse_text(&record.text) {
            Ok(v) => v,
            Err(e) => return out.push(whole(e)),
        };
        let (pointer, exchanges): (&str, Vec<&Value>) = if let Some(list) = value.get("interactions") {
            match list.as_array() {
                Some(items) => ("/interactions", items.iter().collect()),
                None => return out.push(whole(format!("`interactions` is not an array: {}", short(list)))),
            }
        } else if let Some(log) = value.get("log") {
            match log.get("entries").and_then(Value::as_array) {
                Some(items) => ("/log/entries", items.iter().collect()),
                None => return out.push(whole("a HAR log without a `log.entries` array".into())),
            }
        } else if value.get("request").is_some() && value.get("response").is_some() {
            ("", vec![&value])
        } else {
            return out.push(whole(format!(
                "expected a VCR cassette (`interactions`), a HAR log (`log.entries`) or one exchange (`request` \
                 and `response`), found {}",
                short(&value)
            )));
        };
        // Named once the exchanges are read (see `trace_name`); set on every span then.
        let trace = TraceId::Text(String::new());
        let first = out.len();
        let mut response_id = None;
        // Tool spans waiting for their result: (index in `out`, call id, tool name).
        let mut pending: Vec<(usize, Option<String>, String)> = Vec::new();
        for (k, item) in exchanges.into_iter().enumerate() {
            let at =
                if pointer.is_empty() { record.location.clone() } else { format!("{}{pointer}/{k}", record.location) };
            let exchange = match read_exchange(item) {
                Ok(e) => e,
                Err(reason) => {
                    out.push(error(source, &at, reason, &item.to_string()));
                    continue;
                }
            };
            // Model calls are POSTs (a GET of `/v1/chat/completions` lists stored completions).
            let Some(api) = api_of(&exchange.url).filter(|_| exchange.method.eq_ignore_ascii_case("POST")) else {
                continue;
            };
            let request = exchange.request_body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok());
            let spans = self.spans(&trace, k, api, &exchange, request.as_ref());
            if let Some(request) = &request {
                // The results of earlier tool calls, sent when this exchange started.
                let sent =
                    spans.as_ref().ok().and_then(|(s, _)| s[0].start_time).or(exchange.started).or(exchange.date);
                answer_tools(api, request, sent, &mut pending, out);
            }
            match spans {
                Ok((spans, id)) => {
                    if response_id.is_none() {
                        response_id = id;
                    }
                    for span in spans {
                        if span.operation.as_deref() == Some("execute_tool") {
                            let name = span.tool_name.clone().unwrap_or_default();
                            pending.push((out.len(), span.tool_call_id.clone(), name));
                        }
                        out.push(Event::Span(span));
                    }
                }
                Err(reason) => out.push(error(source, &at, reason, &item.to_string())),
            }
        }
        let trace = TraceId::parse(&trace_name(response_id, record));
        for event in &mut out[first..] {
            if let Event::Span(span) = event {
                span.trace_id = trace.clone();
            }
        }
    }

    fn reads_whole_files(&self) -> bool {
        true
    }
}

impl LlmHttp {
    /// The spans of exchange `k`: its model call, then its tool calls.
    fn spans(
        &self,
        trace: &TraceId,
        k: usize,
        api: Api,
        exchange: &Exchange,
        request: Option<&Value>,
    ) -> Result<(Vec<Span>, Option<String>), String> {
        let status = exchange.status.ok_or("the response has no status code (`response.status`)")?;
        let body = exchange.response_body.as_deref().unwrap_or("");
        let reply = if status == 0 {
            // HAR 1.2: 0 for a request that got no response (aborted, blocked).
            Reply { error: Some(("no_response".into(), None)), complete: true, ..Reply::default() }
        } else if status >= 400 {
            error_reply(body, status)
        } else if body.trim().is_empty() {
            return Err(format!("the response (HTTP {status}) has no body"));
        } else {
            let stream = exchange.content_type.as_deref().is_some_and(|c| c.contains("text/event-stream"))
                || is_event_stream(body);
            match (api, stream) {
                (_, true) => fold_stream(api, &sse_data(body))?,
                // `streamGenerateContent` without `alt=sse`: a JSON array of responses, which a
                // dropped connection cuts short.
                (Api::Gemini, false) if body.trim_start().starts_with('[') => {
                    let (chunks, complete) = array_elements(body)?;
                    let mut reply = fold_stream(api, &chunks)?;
                    reply.complete &= complete;
                    reply
                }
                (_, false) => match serde_json::from_str::<Value>(body) {
                    Ok(v) => whole_reply(api, &v)?,
                    Err(e) => return Err(format!("the response body is not JSON: {e}")),
                },
            }
        };
        let operation = if api == Api::Gemini { "generate_content" } else { "chat" };
        let request_model = match api {
            Api::Gemini => gemini_model(&exchange.url),
            _ => request.and_then(|r| r.get("model")).and_then(Value::as_str).map(str::to_owned),
        };
        let id = format!("x{k}");
        let mut span = Span::new(
            trace.clone(),
            id.clone(),
            request_model.as_ref().map_or_else(|| operation.to_owned(), |m| format!("{operation} {m}")),
        );
        span.operation = Some(operation.into());
        span.provider = self.provider.clone().or_else(|| provider_of(&exchange.url));
        span.request_model = request_model;
        span.response_model.clone_from(&reply.model);
        span.agent_name.clone_from(&self.agent_name);
        span.input_tokens = reply.input;
        span.output_tokens = reply.output;
        span.cache_read_input_tokens = reply.cached;
        span.reasoning_output_tokens = reply.reasoning;
        span.start_time = exchange.started.or(reply.created).or(exchange.date);
        span.end_time =
            exchange.ended.or(reply.completed).or(exchange.date.filter(|d| span.start_time.is_none_or(|s| *d >= s)));
        let mut attributes = Map::new();
        if let Some(id) = &reply.id {
            attributes.insert("gen_ai.response.id".into(), Value::String(id.clone()));
        }
        if !reply.finish_reasons.is_empty() {
            attributes.insert("gen_ai.response.finish_reasons".into(), reply.finish_reasons.clone().into());
        }
        if let Some(request) = request {
            let stream = api == Api::Gemini && exchange.url.contains(":streamGenerateContent")
                || request.get("stream").and_then(Value::as_bool) == Some(true);
            attributes.insert("gen_ai.request.stream".into(), Value::Bool(stream));
            let config = request.get("generationConfig").unwrap_or(request);
            for (field, name) in [
                ("temperature", "gen_ai.request.temperature"),
                ("top_p", "gen_ai.request.top_p"),
                ("topP", "gen_ai.request.top_p"),
                ("max_tokens", "gen_ai.request.max_tokens"),
                ("max_completion_tokens", "gen_ai.request.max_tokens"),
                ("max_output_tokens", "gen_ai.request.max_tokens"),
                ("maxOutputTokens", "gen_ai.request.max_tokens"),
            ] {
                if let Some(v) = config.get(field).filter(|v| v.is_number()) {
                    attributes.insert(name.into(), v.clone());
                }
            }
        }
        attributes.insert("http.response.status_code".into(), status.into());
        if let Some(host) = host_of(&exchange.url) {
            attributes.insert("server.address".into(), Value::String(host.to_owned()));
        }
        span.status = SpanStatus::Ok;
        if let Some((code, message)) = &reply.error {
            span.status = SpanStatus::Error;
            span.error_type = Some(code.clone());
            if let Some(message) = message {
                attributes.insert("error.message".into(), Value::String(message.clone()));
            }
        } else if !reply.complete {
            span.status = SpanStatus::Error;
            span.error_type = Some("incomplete_stream".into());
        }
        span.attributes = Some(Value::Object(attributes).to_string());
        let mut spans = vec![span];
        for (j, call) in reply.calls.iter().enumerate() {
            let mut tool = Span::new(trace.clone(), format!("{id}.t{j}"), format!("execute_tool {}", call.name));
            tool.parent_span_id = Some(id.clone());
            tool.operation = Some("execute_tool".into());
            tool.agent_name.clone_from(&self.agent_name);
            tool.tool_name = Some(call.name.clone());
            tool.tool_call_id.clone_from(&call.id);
            tool.start_time = spans[0].end_time;
            let mut attrs = Map::new();
            attrs.insert("gen_ai.tool.call.arguments".into(), Value::String(call.arguments.clone()));
            tool.attributes = Some(Value::Object(attrs).to_string());
            spans.push(tool);
        }
        Ok((spans, reply.id))
    }
}

/// The trace of a record's spans: its first exchange's response id (`chatcmpl-…`,
/// `resp_…`, Gemini's `responseId`), which no other record shares; else its location and a
/// hash of its text (a push's lines are numbered from 1 in every push).
fn trace_name(response_id: Option<String>, record: &Record) -> String {
    response_id.unwrap_or_else(|| {
        // FNV-1a, 64 bits: stable across builds and platforms.
        let hash = record
            .text
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{}#{hash:016x}", record.location)
    })
}

/// The elements of a JSON array `body` that are complete, and whether the array is (a stream
/// cut short ends inside an element or before its `]`).
fn array_elements(body: &str) -> Result<(Vec<String>, bool), String> {
    let mut rest = body.trim_start().strip_prefix('[').unwrap_or(body);
    let mut elements = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok((elements, false));
        }
        if let Some(after) = rest.strip_prefix(']') {
            if !after.trim().is_empty() {
                return Err("the response body has text after its JSON array".into());
            }
            return Ok((elements, true));
        }
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                elements.push(v.to_string());
                rest = rest[stream.byte_offset()..].trim_start();
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            Some(Err(e)) if e.is_eof() => return Ok((elements, false)),
            Some(Err(e)) => return Err(format!("the response body is not a JSON array of responses: {e}")),
            None => return Ok((elements, false)),
        }
    }
}

/// Parses a record's text: JSON when it starts as JSON, else YAML.
fn parse_text(text: &str) -> Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with(['{', '[']) {
        return serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"));
    }
    serde_norway::from_str(text).map_err(|e| format!("neither JSON nor YAML: {e}"))
}

/// Reads a VCR interaction or a HAR entry.
fn read_exchange(item: &Value) -> Result<Exchange, String> {
    let request = item.get("request").filter(|r| r.is_object()).ok_or("no `request` object")?;
    let response = item.get("response").filter(|r| r.is_object()).ok_or("no `response` object")?;
    let mut e = Exchange::default();
    if let Some(uri) = request.get("uri") {
        // VCR: `uri`, `body` (a string, null or `{string: …}`), headers as a map of lists.
        e.url = uri.as_str().ok_or_else(|| format!("`request.uri` is not a string: {}", short(uri)))?.to_owned();
        e.method = request.get("method").and_then(Value::as_str).unwrap_or("POST").to_owned();
        e.request_body = vcr_body(request.get("body"))?;
        let status = response.get("status");
        e.status = status.and_then(|s| s.get("code").or(Some(s))).and_then(status_code);
        e.response_body = vcr_body(response.get("body"))?;
        // vcrpy keeps a body that is not UTF-8 (a compressed one, when the cassette does not
        // decode it) as YAML `!!binary`: base64 text here.
        if let Some(encoding) = vcr_header(response, "content-encoding")
            && let Some(body) = &e.response_body
            && !encoding.eq_ignore_ascii_case("identity")
            && serde_json::from_str::<serde::de::IgnoredAny>(body).is_err()
            && !is_event_stream(body)
        {
            e.response_body = Some(decompress(body, &encoding)?);
        }
        e.content_type = vcr_header(response, "content-type");
        e.date = vcr_header(response, "date").and_then(|d| http_date(&d));
    } else if let Some(url) = request.get("url") {
        // HAR 1.2: `url`, `postData.text`, `content.text` (base64 when `encoding` says so),
        // headers as a list of `{name, value}`, `startedDateTime` and `time` (ms).
        e.url = url.as_str().ok_or_else(|| format!("`request.url` is not a string: {}", short(url)))?.to_owned();
        e.method = request.get("method").and_then(Value::as_str).unwrap_or("POST").to_owned();
        e.request_body = request.pointer("/postData/text").and_then(Value::as_str).map(str::to_owned);
        e.status = response.get("status").and_then(status_code);
        let content = response.get("content");
        let text = content.and_then(|c| c.get("text")).and_then(Value::as_str);
        e.response_body = match (text, content.and_then(|c| c.get("encoding")).and_then(Value::as_str)) {
            (Some(t), Some("base64")) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(t.trim())
                    .map_err(|err| format!("`response.content.text` is not base64: {err}"))?;
                Some(String::from_utf8(bytes).map_err(|_| "the response body is not UTF-8 text")?)
            }
            (t, _) => t.map(str::to_owned),
        };
        e.content_type = content
            .and_then(|c| c.get("mimeType"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| har_header(response, "content-type"));
        e.date = har_header(response, "date").and_then(|d| http_date(&d));
        if let Some(started) = item.get("startedDateTime") {
            let t = started.as_str().and_then(parse_timestamp).filter(|t| in_range(*t));
            e.started = Some(t.ok_or_else(|| format!("`startedDateTime` is not a date-time: {}", short(started)))?);
            // `time`: the entry's total time in ms (HAR 1.2 §entries), fractional.
            if let Some(ms) = item.get("time").and_then(Value::as_f64).filter(|ms| (0.0..1e12).contains(ms)) {
                e.ended = e.started.map(|s| s + (ms * 1000.0).round() as i64);
            }
        }
    } else {
        return Err("the request has neither `uri` (VCR) nor `url` (HAR)".into());
    }
    Ok(e)
}

/// A VCR body: a string, `{string: …}`, or null.
fn vcr_body(body: Option<&Value>) -> Result<Option<String>, String> {
    match body {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("string") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("a body whose `string` is not text: {}", short(other))),
        },
        Some(other) => Err(format!("a body that is not text: {}", short(other))),
    }
}

/// Whether a body reads as server-sent events: its first line is a `data:` or `event:` field, or
/// a comment (`:`).
fn is_event_stream(body: &str) -> bool {
    let start = body.trim_start();
    start.starts_with("data:") || start.starts_with("event:") || start.starts_with(':')
}

/// An HTTP status code: an integer, or one as text (`"500"`); none outside `0..1000`.
fn status_code(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())).filter(|c| (0..1000).contains(c))
}

/// A compressed body kept as base64 (`!!binary`): decoded and decompressed (`gzip`,
/// `deflate`), as UTF-8 text.
fn decompress(body: &str, encoding: &str) -> Result<String, String> {
    use std::io::Read;
    let compact: String = body.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("a `{encoding}` response body that is not base64 (YAML `!!binary`): {e}"))?;
    let mut text = String::new();
    let read = match encoding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text),
        "deflate" => flate2::read::ZlibDecoder::new(&bytes[..]).read_to_string(&mut text),
        other => {
            return Err(format!(
                "a response body in content encoding `{other}`, which is not read (gzip and deflate are)"
            ));
        }
    };
    read.map_err(|e| format!("the `{encoding}` response body does not decompress to UTF-8 text: {e}"))?;
    Ok(text)
}

/// A VCR header (names compared case-insensitively; a list's first value).
fn vcr_header(message: &Value, name: &str) -> Option<String> {
    let headers = message.get("headers")?.as_object()?;
    let (_, v) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list.first()?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A HAR header (names compared case-insensitively).
fn har_header(message: &Value, name: &str) -> Option<String> {
    let headers = message.get("headers")?.as_array()?;
    headers
        .iter()
        .find(|h| h.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(name)))?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}

/// An HTTP date (`Mon, 11 Nov 2024 23:43:50 GMT`, RFC 9110 §5.6.7) in µs.
fn http_date(s: &str) -> Option<TimestampUs> {
    chrono::DateTime::parse_from_rfc2822(s.trim()).ok().map(|t| t.timestamp_micros()).filter(|t| in_range(*t))
}

/// The API a URL calls, or `None` for an exchange with no model API.
fn api_of(url: &str) -> Option<Api> {
    let path = url.split(['?', '#']).next().unwrap_or(url).trim_end_matches('/');
    if path.ends_with("/chat/completions") {
        Some(Api::Chat)
    } else if path.ends_with("/responses") {
        Some(Api::Responses)
    } else if (path.contains("/models/") || path.contains("/tunedModels/"))
        && (path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent"))
    {
        Some(Api::Gemini)
    } else {
        None
    }
}

/// The host of a URL (without user info and port).
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(v6) => &host[..v6.find(']').map_or(host.len(), |i| i + 2)],
        None => host.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// The provider a URL's host names (see the module docs).
fn provider_of(url: &str) -> Option<String> {
    let host = host_of(url)?.to_ascii_lowercase();
    let name = if host == "api.openai.com" {
        "openai"
    } else if host.ends_with(".openai.azure.com") {
        "azure.ai.openai"
    } else if host == "generativelanguage.googleapis.com" {
        "gcp.gemini"
    } else if host.ends_with("aiplatform.googleapis.com") {
        "gcp.vertex_ai"
    } else {
        return None;
    };
    Some(name.to_owned())
}

/// The model a Gemini URL names: `…/models/MODEL:generateContent`.
fn gemini_model(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    // `models/NAME` or a tuned model's `tunedModels/NAME`.
    let (_, tail) = path.rsplit_once("/models/").or_else(|| path.rsplit_once("/tunedModels/"))?;
    let model = tail.split(':').next()?;
    (!model.is_empty()).then(|| model.to_owned())
}

/// The data of each server-sent event of `body` (the WHATWG event-stream rules: `data:`
/// lines, one optional space after the colon, several joined by `\n`, an event ended by a
/// blank line, one the body ends inside dropped; comments and other fields ignored).
fn sse_data(body: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in body.lines() {
        if line.is_empty() {
            events.extend(data.take());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    // An event the body ends inside (no blank line after it: the connection dropped) is not
    // dispatched (WHATWG HTML, "Interpreting an event stream").
    drop(data);
    events
}

/// The reply of an HTTP error: the provider's error code (OpenAI `error.code`, else
/// `error.type`; Gemini `error.status`), else the status code.
fn error_reply(body: &str, status: i64) -> Reply {
    let v = serde_json::from_str::<Value>(body).ok();
    // Gemini wraps some errors in an array.
    let e = v.as_ref().map(|v| v.pointer("/0/error").or_else(|| v.get("error"))).unwrap_or_default();
    let code = e.and_then(|e| {
        ["code", "type", "status"].iter().find_map(|f| e.get(*f).and_then(Value::as_str)).map(str::to_owned)
    });
    let code = match (e.and_then(|e| e.get("status")).and_then(Value::as_str), code) {
        // Gemini: `code` is the HTTP status as a number, `status` the gRPC name.
        (Some(status), _) if e.and_then(|e| e.get("code")).is_some_and(Value::is_number) => status.to_owned(),
        (_, Some(code)) => code,
        (_, None) => status.to_string(),
    };
    let message = e.and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_owned);
    Reply { error: Some((code, message)), complete: true, ..Reply::default() }
}

/// A whole (not streamed) response.
fn whole_reply(api: Api, v: &Value) -> Result<Reply, String> {
    let mut reply = Reply { complete: true, ..Reply::default() };
    // An error answered with 200 (some OpenAI-compatible servers and proxies do).
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        let code = ["code", "type", "status"].iter().find_map(|f| e.get(*f).and_then(Value::as_str)).unwrap_or("error");
        let message = e.get("message").and_then(Value::as_str).map(str::to_owned);
        reply.error = Some((code.to_owned(), message));
        return Ok(reply);
    }
    match api {
        Api::Chat => chat_chunk(&mut reply, v, false)?,
        Api::Responses => responses_object(&mut reply, v)?,
        Api::Gemini => gemini_chunk(&mut reply, v)?,
    }
    Ok(reply)
}

/// A stream's events, folded.
fn fold_stream(api: Api, events: &[String]) -> Result<Reply, String> {
    let mut reply = Reply::default();
    for (i, data) in events.iter().enumerate() {
        if api == Api::Chat && data.trim() == "[DONE]" {
            reply.complete = true;
            continue;
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| format!("event {i} of the stream is not JSON: {e}: {data:.80}"))?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            // An error event mid-stream (OpenAI sends `{"error": {…}}`).
            let code = ["code", "type", "status"]
                .iter()
                .find_map(|f| e.get(*f).and_then(Value::as_str))
                .unwrap_or("stream_error")
                .to_owned();
            let message = e.get("message").and_then(Value::as_str).map(str::to_owned);
            reply.error = Some((code, message));
            reply.complete = true;
            continue;
        }
        match api {
            Api::Chat => chat_chunk(&mut reply, &v, true)?,
            Api::Gemini => {
                gemini_chunk(&mut reply, &v)?;
                reply.complete |= !reply.finish_reasons.is_empty();
            }
            Api::Responses => match v.get("type").and_then(Value::as_str) {
                Some("response.completed" | "response.incomplete" | "response.failed") => {
                    responses_object(&mut reply, v.get("response").unwrap_or(&Value::Null))?;
                    reply.complete = true;
                }
                Some("response.created" | "response.in_progress") => {
                    if let Some(r) = v.get("response") {
                        reply.id = r.get("id").and_then(Value::as_str).map(str::to_owned).or(reply.id.take());
                        reply.model = r.get("model").and_then(Value::as_str).map(str::to_owned).or(reply.model.take());
                        reply.created = seconds(r.get("created_at"))?.or(reply.created);
                    }
                }
                _ => {}
            },
        }
    }
    Ok(reply)
}

/// Folds a Chat Completions response (`delta`: a stream chunk) into `reply`.
fn chat_chunk(reply: &mut Reply, v: &Value, delta: bool) -> Result<(), String> {
    if !v.is_object() {
        return Err(format!("a Chat Completions response that is not an object: {}", short(v)));
    }
    text_field(&mut reply.id, v, "id")?;
    text_field(&mut reply.model, v, "model")?;
    if reply.created.is_none() {
        reply.created = seconds(v.get("created"))?;
    }
    let choices = match v.get("choices") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(c)) => c.as_slice(),
        Some(other) => return Err(format!("`choices` is not an array: {}", short(other))),
    };
    for choice in choices {
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            reply.finish_reasons.push(reason.to_owned());
        }
        let message = choice.get(if delta { "delta" } else { "message" });
        let calls = message.and_then(|m| m.get("tool_calls")).and_then(Value::as_array);
        let first = reply.calls.len();
        for (j, call) in calls.into_iter().flatten().enumerate() {
            // A delta names its call by `index` (the first delta of a call has its id and
            // name, the others more of its arguments); without one, a delta with an `id`
            // starts a call and one without continues the last. A whole message lists them.
            let slot = match (delta, call.get("index")) {
                (false, _) => first + j,
                (true, Some(i)) => i
                    .as_u64()
                    .ok_or_else(|| format!("a tool call delta whose `index` is not a whole number: {}", short(i)))?
                    as usize,
                (true, None) if call.get("id").is_some_and(|id| !id.is_null()) => reply.calls.len(),
                (true, None) => reply.calls.len().saturating_sub(1),
            };
            if slot > reply.calls.len() + 1024 {
                return Err(format!("a tool call index out of range: {}", short(call)));
            }
            if reply.calls.len() <= slot {
                reply.calls.resize(slot + 1, Call::default());
            }
            let c = &mut reply.calls[slot];
            take_text(&mut c.id, call.get("id"));
            if let Some(f) = call.get("function") {
                if let Some(name) = f.get("name").and_then(Value::as_str) {
                    c.name.push_str(name);
                }
                match f.get("arguments") {
                    Some(Value::String(a)) => c.arguments.push_str(a),
                    Some(v @ Value::Object(_)) => c.arguments.push_str(&v.to_string()),
                    _ => {}
                }
            }
        }
    }
    if let Some(usage) = usage_object(v, "usage")? {
        reply.input = tokens(usage, "/prompt_tokens")?;
        reply.output = tokens(usage, "/completion_tokens")?;
        reply.cached = tokens(usage, "/prompt_tokens_details/cached_tokens")?;
        reply.reasoning = tokens(usage, "/completion_tokens_details/reasoning_tokens")?;
        reply.check_parts()?;
    }
    Ok(())
}

/// The usage object at `field` of `v`: `None` when absent or null.
fn usage_object<'v>(v: &'v Value, field: &str) -> Result<Option<&'v Value>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(u @ Value::Object(_)) => Ok(Some(u)),
        Some(other) => Err(format!("`{field}` is not an object: {}", short(other))),
    }
}

/// Sets `slot` from text field `field` of `v` (kept when absent or null).
fn text_field(slot: &mut Option<String>, v: &Value, field: &str) -> Result<(), String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            *slot = Some(s.clone());
            Ok(())
        }
        Some(other) => Err(format!("`{field}` is not a string: {}", short(other))),
    }
}

impl Reply {
    /// Cached tokens are part of the input, reasoning tokens part of the output: more of them
    /// than of those is a usage object no provider writes.
    fn check_parts(&self) -> Result<(), String> {
        for (part, of, what) in
            [(self.cached, self.input, "cached input"), (self.reasoning, self.output, "reasoning output")]
        {
            if let (Some(part), Some(of)) = (part, of)
                && part > of
            {
                return Err(format!("{part} {what} tokens are more than the {of} they are part of"));
            }
        }
        Ok(())
    }
}

/// Reads a Responses API response object into `reply`.
fn responses_object(reply: &mut Reply, v: &Value) -> Result<(), String> {
    if !v.is_object() {
        return Err(format!("a Responses API response that is not an object: {}", short(v)));
    }
    text_field(&mut reply.id, v, "id")?;
    text_field(&mut reply.model, v, "model")?;
    reply.created = seconds(v.get("created_at"))?.or(reply.created);
    reply.completed = seconds(v.get("completed_at"))?;
    match v.get("status").and_then(Value::as_str) {
        Some("failed") => {
            let e = v.get("error");
            let code = e.and_then(|e| e.get("code")).and_then(Value::as_str).unwrap_or("failed").to_owned();
            let message = e.and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_owned);
            reply.error = Some((code, message));
        }
        Some("incomplete") => {
            let reason = v.pointer("/incomplete_details/reason").and_then(Value::as_str).unwrap_or("incomplete");
            reply.finish_reasons.push(reason.to_owned());
        }
        Some(status) => reply.finish_reasons.push(status.to_owned()),
        None => {}
    }
    for item in v.get("output").and_then(Value::as_array).into_iter().flatten() {
        if item.get("type").and_then(Value::as_str) == Some("function_call") {
            reply.calls.push(Call {
                id: item.get("call_id").and_then(Value::as_str).map(str::to_owned),
                name: item.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                arguments: item.get("arguments").and_then(Value::as_str).unwrap_or_default().to_owned(),
            });
        }
    }
    if let Some(usage) = usage_object(v, "usage")? {
        reply.input = tokens(usage, "/input_tokens")?;
        reply.output = tokens(usage, "/output_tokens")?;
        reply.cached = tokens(usage, "/input_tokens_details/cached_tokens")?;
        reply.reasoning = tokens(usage, "/output_tokens_details/reasoning_tokens")?;
        reply.check_parts()?;
    }
    Ok(())
}

/// Folds a Gemini `GenerateContentResponse` (whole, or one chunk of a stream) into `reply`.
fn gemini_chunk(reply: &mut Reply, v: &Value) -> Result<(), String> {
    if !v.is_object() {
        return Err(format!("a Gemini response that is not an object: {}", short(v)));
    }
    text_field(&mut reply.id, v, "responseId")?;
    text_field(&mut reply.model, v, "modelVersion")?;
    // A prompt the model refused to take (`promptFeedback.blockReason`: `SAFETY`, …).
    if let Some(reason) = v.pointer("/promptFeedback/blockReason").and_then(Value::as_str) {
        reply.error = Some((reason.to_owned(), Some("the prompt was blocked".into())));
        reply.complete = true;
    }
    if reply.created.is_none()
        && let Some(t) = v.get("createTime")
    {
        let t = t.as_str().and_then(parse_timestamp).filter(|t| in_range(*t));
        reply.created = Some(t.ok_or("`createTime` is not a date-time")?);
    }
    for candidate in v.get("candidates").and_then(Value::as_array).into_iter().flatten() {
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            reply.finish_reasons.push(reason.to_owned());
        }
        for part in candidate.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
            if let Some(call) = part.get("functionCall") {
                reply.calls.push(Call {
                    id: call.get("id").and_then(Value::as_str).map(str::to_owned),
                    name: call.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    arguments: call.get("args").map(Value::to_string).unwrap_or_default(),
                });
            }
        }
    }
    // Each chunk's `usageMetadata` counts the whole response so far: the last one counts.
    if let Some(usage) = usage_object(v, "usageMetadata")? {
        let prompt = tokens(usage, "/promptTokenCount")?;
        let tool_prompt = tokens(usage, "/toolUsePromptTokenCount")?;
        let candidates = tokens(usage, "/candidatesTokenCount")?;
        let thoughts = tokens(usage, "/thoughtsTokenCount")?;
        let sum = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        reply.input = sum(prompt, tool_prompt);
        reply.output = sum(candidates, thoughts);
        reply.cached = tokens(usage, "/cachedContentTokenCount")?;
        reply.reasoning = thoughts;
        reply.check_parts()?;
    }
    Ok(())
}

/// Sets `slot` from a string value, keeping what it has when the value is absent.
fn take_text(slot: &mut Option<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        *slot = Some(s.to_owned());
    }
}

/// A time in whole seconds since the epoch (OpenAI's `created`, `created_at`,
/// `completed_at`), in µs.
fn seconds(v: Option<&Value>) -> Result<Option<TimestampUs>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let t = v.as_i64().and_then(|s| s.checked_mul(1_000_000)).filter(|t| in_range(*t));
            t.map(Some).ok_or_else(|| format!("a time that is not whole seconds since the epoch: {}", short(v)))
        }
    }
}

/// A token count at `pointer` in a usage object: an integer in `0..=MAX_TOKENS`; `None` when
/// missing or null.
fn tokens(usage: &Value, pointer: &str) -> Result<Option<i64>, String> {
    match usage.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        // An integral float (`12.0`) counts as its integer, as JSON does not tell them apart.
        Some(v) => {
            match v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64)) {
                Some(n) if (0..=MAX_TOKENS).contains(&n) => Ok(Some(n)),
                _ => Err(format!(
                    "usage{}: a token count must be an integer in 0..={MAX_TOKENS}, found {}",
                    pointer.replace('/', "."),
                    short(v)
                )),
            }
        }
    }
}

/// Marks the tool spans whose results `request` (a request of API `api`, sent at `at`)
/// carries: `ok`, or `error` when the result reports one; they end at `at`.
fn answer_tools(
    api: Api,
    request: &Value,
    at: Option<TimestampUs>,
    pending: &mut Vec<(usize, Option<String>, String)>,
    out: &mut [Event],
) {
    // (call id, tool name, whether the result is an error)
    let mut results: Vec<(Option<String>, Option<String>, bool)> = Vec::new();
    match api {
        Api::Chat => {
            for m in request.get("messages").and_then(Value::as_array).into_iter().flatten() {
                if let Some(m) = m.as_object()
                    && m.get("role").and_then(Value::as_str) == Some("tool")
                {
                    let id = m.get("tool_call_id").and_then(Value::as_str).map(str::to_owned);
                    results.push((id, None, crate::openai_chat::is_tool_error(m)));
                }
            }
        }
        Api::Responses => {
            for item in request.get("input").and_then(Value::as_array).into_iter().flatten() {
                if item.get("type").and_then(Value::as_str) == Some("function_call_output") {
                    let id = item.get("call_id").and_then(Value::as_str).map(str::to_owned);
                    let output = item.get("output").and_then(Value::as_str).unwrap_or_default();
                    // Text that starts with "error", or a JSON object with an `error` (or
                    // `is_error: true`), as a Gemini function response reports one.
                    let object = serde_json::from_str::<Value>(output).ok().filter(Value::is_object);
                    let failed =
                        output.trim_start().as_bytes().get(..5).is_some_and(|b| b.eq_ignore_ascii_case(b"error"))
                            || object.is_some_and(|o| {
                                o.get("error").is_some_and(|e| !e.is_null() && e != &Value::Bool(false))
                                    || o.get("is_error") == Some(&Value::Bool(true))
                            });
                    results.push((id, None, failed));
                }
            }
        }
        Api::Gemini => {
            for content in request.get("contents").and_then(Value::as_array).into_iter().flatten() {
                for part in content.get("parts").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(r) = part.get("functionResponse") {
                        let id = r.get("id").and_then(Value::as_str).map(str::to_owned);
                        let name = r.get("name").and_then(Value::as_str).map(str::to_owned);
                        let failed = r.pointer("/response/error").is_some_and(|e| !e.is_null());
                        results.push((id, name, failed));
                    }
                }
            }
        }
    }
    for (id, name, failed) in results {
        // The latest waiting call with the id (ids can repeat); without one, the earliest
        // waiting call with the name (Gemini answers calls in their order).
        let found = match &id {
            Some(id) => pending.iter().rposition(|(_, call_id, _)| call_id.as_ref() == Some(id)),
            None => pending.iter().position(|(_, _, call_name)| name.as_ref() == Some(call_name)),
        };
        let Some(found) = found else { continue };
        let (index, _, _) = pending.remove(found);
        if let Some(Event::Span(span)) = out.get_mut(index) {
            span.status = if failed { SpanStatus::Error } else { SpanStatus::Ok };
            span.error_type = failed.then(|| "tool_error".to_owned());
            span.end_time = at.filter(|at| span.start_time.is_none_or(|s| *at >= s)).or(span.end_time);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::{errors, spans};
    use serde_json::json;

    fn decode(record: &Record) -> Vec<Event> {
        let mut out = Vec::new();
        LlmHttp::new(&json!({})).expect("options").decode("s", record, &mut out);
        out
    }

    fn attr(span: &Span, name: &str) -> Value {
        let attrs: Value = serde_json::from_str(span.attributes.as_deref().unwrap_or("{}")).expect("JSON");
        attrs.get(name).cloned().unwrap_or(Value::Null)
    }

    const S: i64 = 1_000_000;

    /// The OpenAI instrumentation's cassettes under `shared/data/agent/openai_cassettes`, read
    /// as a file source reads them (whole YAML files), against values read from the files with
    /// PyYAML (run in that directory):
    ///
    /// ```text
    /// python3 -c "import yaml,json,glob,email.utils
    /// for f in sorted(glob.glob('*.yaml')):
    ///   it=yaml.safe_load(open(f))['interactions'][0]; r=it['response']; b=r['body']['string']
    ///   print(f, r['status']['code'], [v for h,v in r['headers'].items() if h.lower()=='date'][0][0],
    ///         b if not b.startswith('data:') else [l for l in b.splitlines() if 'usage\":{' in l or 'tool_calls' in l])"
    /// ```
    /// (stream deltas concatenated by hand: `{"location": "Seattle, WA"}` and
    /// `{"location": "San Francisco, CA"}`).
    #[test]
    fn real_openai_cassettes() {
        let root = env!("CARGO_MANIFEST_DIR");
        let dir = std::path::Path::new(root).join("../../shared/data/agent/openai_cassettes");
        if !dir.is_dir() {
            eprintln!("skipped: {} does not exist", dir.display());
            return;
        }
        let mut reader = crate::FileReader::new(&dir.join("*.yaml").display().to_string()).expect("glob");
        reader.set_whole_other_files(LlmHttp::new(&json!({})).expect("options").reads_whole_files());
        let mut records = Vec::new();
        reader.poll(true, &mut records).expect("read");
        assert_eq!(records.len(), 6);
        let by_file = |name: &str| {
            let r = records.iter().find(|r| r.location.ends_with(name)).expect("a record");
            let out = decode(r);
            assert!(errors(&out).is_empty(), "{name}: {:?}", errors(&out));
            out
        };

        let out = by_file("test_chat_completion_with_content.yaml");
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!(
            (s.span_id.as_str(), s.name.as_str(), s.operation.as_deref()),
            ("x0", "chat gpt-4o-mini", Some("chat"))
        );
        assert_eq!((s.provider.as_deref(), s.request_model.as_deref()), (Some("openai"), Some("gpt-4o-mini")));
        assert_eq!(s.response_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(
            (s.input_tokens, s.output_tokens, s.cache_read_input_tokens, s.reasoning_output_tokens),
            (Some(12), Some(5), Some(0), Some(0))
        );
        // `created` 1731368630; `Date: Mon, 11 Nov 2024 23:43:50 GMT` is the same second.
        assert_eq!((s.start_time, s.end_time), (Some(1_731_368_630 * S), Some(1_731_368_630 * S)));
        // The trace: the record's first response id.
        assert_eq!(
            (s.status, s.trace_id.to_string()),
            (SpanStatus::Ok, "chatcmpl-ASYMQRl3A3DXL9FWCK9tnGRcKIO7q".into())
        );
        assert_eq!(attr(s, "gen_ai.response.id"), json!("chatcmpl-ASYMQRl3A3DXL9FWCK9tnGRcKIO7q"));
        assert_eq!(attr(s, "gen_ai.response.finish_reasons"), json!(["stop"]));
        assert_eq!(
            (attr(s, "gen_ai.request.stream"), attr(s, "http.response.status_code")),
            (json!(false), json!(200))
        );

        let out = by_file("test_chat_completion_404.yaml");
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.status, s.error_type.as_deref()), (SpanStatus::Error, Some("model_not_found")));
        assert_eq!(
            (s.request_model.as_deref(), s.response_model.as_deref()),
            (Some("this-model-does-not-exist"), None)
        );
        assert_eq!((s.input_tokens, s.start_time), (None, Some(1_731_368_632 * S)));
        assert_eq!(attr(s, "http.response.status_code"), json!(404));
        assert!(
            attr(s, "error.message").as_str().is_some_and(|m| m.starts_with("The model `this-model-does-not-exist`"))
        );

        let out = by_file("test_chat_completion_multiple_tools_streaming_with_content.yaml");
        let [s, t0, t1] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.input_tokens, s.output_tokens, s.cache_read_input_tokens), (Some(75), Some(51), Some(0)));
        assert_eq!((s.status, s.response_model.as_deref()), (SpanStatus::Ok, Some("gpt-4o-mini-2024-07-18")));
        // `created` 1731368641, `Date: … 23:44:03 GMT` = 1731368643.
        assert_eq!((s.start_time, s.end_time), (Some(1_731_368_641 * S), Some(1_731_368_643 * S)));
        assert_eq!(attr(s, "gen_ai.response.finish_reasons"), json!(["tool_calls"]));
        assert_eq!(attr(s, "gen_ai.request.stream"), json!(true));
        for (t, j, id, city) in [
            (t0, 0, "call_fHCjJqt9Pysde6vcJcvbXGBx", "Seattle, WA"),
            (t1, 1, "call_3J9foSw3CUb48lrqIXoTky6U", "San Francisco, CA"),
        ] {
            assert_eq!((t.span_id.clone(), t.parent_span_id.as_deref()), (format!("x0.t{j}"), Some("x0")));
            assert_eq!(
                (t.name.as_str(), t.operation.as_deref()),
                ("execute_tool get_current_weather", Some("execute_tool"))
            );
            assert_eq!((t.tool_name.as_deref(), t.tool_call_id.as_deref()), (Some("get_current_weather"), Some(id)));
            assert_eq!(attr(t, "gen_ai.tool.call.arguments"), json!(format!("{{\"location\": \"{city}\"}}")));
            assert_eq!((t.status, t.start_time), (SpanStatus::Unset, Some(1_731_368_643 * S)));
        }

        // Ends with `data: [DONE]`, no usage (no `stream_options.include_usage`).
        let out = by_file("test_chat_completion_streaming_not_complete.yaml");
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.status, s.input_tokens, s.response_model.as_deref()), (SpanStatus::Ok, None, Some("gpt-4-0613")));

        let out = by_file("test_responses_create_reports_reasoning_tokens__content_mode0.yaml");
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.name.as_str(), s.response_model.as_deref()), ("chat gpt-5.4", Some("gpt-5.4-2026-03-05")));
        assert_eq!(
            (s.input_tokens, s.output_tokens, s.cache_read_input_tokens, s.reasoning_output_tokens),
            (Some(44), Some(288), Some(0), Some(9))
        );
        // `created_at` 1776481282, `completed_at` 1776481288.
        assert_eq!((s.start_time, s.end_time), (Some(1_776_481_282 * S), Some(1_776_481_288 * S)));
        assert_eq!(attr(s, "gen_ai.request.max_tokens"), json!(300));

        let out = by_file("test_responses_create_aggregates_cache_tokens__content_mode0.yaml");
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.input_tokens, s.output_tokens), (Some(22), Some(6)));
        assert_eq!((s.start_time, s.end_time), (Some(1_776_481_264 * S), Some(1_776_481_265 * S)));
    }

    /// A chat cassette of two exchanges: the second request carries the results of the first
    /// response's tool calls (one an error), which ends the tool spans and sets their status.
    #[test]
    fn tool_results_in_a_later_request_close_the_tool_spans() {
        let first = json!({
            "request": {"uri": "https://api.openai.com/v1/chat/completions", "method": "POST",
                        "body": json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}]}).to_string()},
            "response": {"status": {"code": 200, "message": "OK"},
                         "headers": {"Date": ["Tue, 03 Jun 2025 08:00:02 GMT"]},
                         "body": {"string": json!({"id": "c1", "model": "gpt-4o-2024-08-06", "created": 1_748_937_600,
                            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
                                {"id": "a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                                {"id": "b", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]}}],
                            "usage": {"prompt_tokens": 50, "completion_tokens": 20,
                                      "prompt_tokens_details": {"cached_tokens": 32}}}).to_string()}}
        });
        let second = json!({
            "request": {"uri": "https://api.openai.com/v1/chat/completions", "method": "POST",
                        "body": json!({"model": "gpt-4o", "messages": [
                            {"role": "tool", "tool_call_id": "a", "content": "12C"},
                            {"role": "tool", "tool_call_id": "b", "content": "Error: no station"}]}).to_string()},
            "response": {"status": {"code": 200}, "headers": {"date": "Tue, 03 Jun 2025 08:00:09 GMT"},
                         "body": {"string": json!({"id": "c2", "model": "gpt-4o-2024-08-06", "created": 1_748_937_605,
                            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}).to_string()}}
        });
        let yaml = serde_norway::to_string(&json!({"interactions": [first, second], "version": 1})).expect("YAML");
        let out = decode(&Record::new("c.yaml", yaml));
        assert!(errors(&out).is_empty(), "{out:?}");
        let [x0, a, b, x1] = &spans(&out)[..] else { panic!("{out:?}") };
        // 2025-06-03T08:00:00Z = 1748937600 (python3: datetime(2025,6,3,8,tzinfo=timezone.utc).timestamp()).
        assert_eq!((x0.start_time, x0.end_time), (Some(1_748_937_600 * S), Some(1_748_937_602 * S)));
        assert_eq!(
            (x0.input_tokens, x0.cache_read_input_tokens, x0.reasoning_output_tokens),
            (Some(50), Some(32), None)
        );
        assert_eq!((a.status, a.error_type.as_deref()), (SpanStatus::Ok, None));
        assert_eq!((b.status, b.error_type.as_deref()), (SpanStatus::Error, Some("tool_error")));
        // From the first response's end to the second request, whose start is its `created`
        // (no HAR time): 08:00:02 → 08:00:05.
        assert_eq!((a.start_time, a.end_time), (Some(1_748_937_602 * S), Some(1_748_937_605 * S)));
        assert_eq!((x1.span_id.as_str(), x1.start_time), ("x1", Some(1_748_937_605 * S)));
    }

    /// A HAR log by hand: a page load (skipped), Gemini whole and streamed (its function call
    /// answered by name), a rate-limited Responses call, and a Chat stream cut short.
    #[test]
    fn har_log_with_gemini_errors_and_a_cut_stream() {
        let gemini = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash";
        let stream = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"It is \"}],\"role\":\"model\"}}],\
                      \"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r2\"}\r\n\r\n\
                      data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"21C.\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\
                      \"usageMetadata\":{\"promptTokenCount\":130,\"candidatesTokenCount\":12,\"totalTokenCount\":142},\
                      \"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r2\"}\r\n\r\n";
        let har = json!({"log": {"version": "1.2", "entries": [
            {"startedDateTime": "2025-06-01T09:59:59.000Z", "time": 12,
             "request": {"method": "GET", "url": "https://example.com/index.html", "headers": []},
             "response": {"status": 200, "headers": [], "content": {"mimeType": "text/html", "text": "<html/>"}}},
            {"startedDateTime": "2025-06-01T10:00:00.000Z", "time": 1500.5,
             "request": {"method": "POST", "url": format!("{gemini}:generateContent"), "headers": [],
                         "postData": {"mimeType": "application/json", "text": json!({"contents": [{"role": "user", "parts": [{"text": "Paris?"}]}],
                            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 256}}).to_string()}},
             "response": {"status": 200, "headers": [{"name": "Content-Type", "value": "application/json"}],
                          "content": {"mimeType": "application/json", "text": json!({
                            "candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                                            "finishReason": "STOP"}],
                            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "thoughtsTokenCount": 30,
                                              "cachedContentTokenCount": 40, "totalTokenCount": 150},
                            "modelVersion": "gemini-2.5-flash", "responseId": "r1"}).to_string()}}},
            {"startedDateTime": "2025-06-01T10:00:05Z", "time": 800,
             "request": {"method": "POST", "url": format!("{gemini}:streamGenerateContent?alt=sse"), "headers": [],
                         "postData": {"text": json!({"contents": [
                            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}]}).to_string()}},
             "response": {"status": 200, "headers": [],
                          "content": {"mimeType": "text/event-stream", "encoding": "base64",
                                      "text": base64::engine::general_purpose::STANDARD.encode(stream)}}},
            {"startedDateTime": "2025-06-01T10:00:07Z", "time": 90,
             "request": {"method": "POST", "url": "https://api.openai.com/v1/responses", "headers": [],
                         "postData": {"text": "{\"model\": \"gpt-4.1\", \"input\": \"hi\"}"}},
             "response": {"status": 429, "headers": [], "content": {"text":
                json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}).to_string()}}},
            {"startedDateTime": "2025-06-01T10:00:09Z", "time": 3000,
             "request": {"method": "POST", "url": "https://api.openai.com/v1/chat/completions", "headers": [],
                         "postData": {"text": "{\"model\": \"gpt-4o-mini\", \"stream\": true}"}},
             "response": {"status": 200, "headers": [], "content": {"mimeType": "text/event-stream", "text":
                "data: {\"id\":\"c9\",\"model\":\"gpt-4o-mini-2024-07-18\",\"created\":1748772009,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"}}}
        ]}});
        let out = decode(&Record::new("session.har", har.to_string()));
        assert!(errors(&out).is_empty(), "{out:?}");
        let [x1, tool, x2, x3, x4] = &spans(&out)[..] else { panic!("{out:?}") };
        // python3: datetime(2025,6,1,10,tzinfo=timezone.utc).timestamp() → 1748772000.
        let t0 = 1_748_772_000 * S;
        assert_eq!((x1.span_id.as_str(), x1.name.as_str()), ("x1", "generate_content gemini-2.5-flash"));
        assert_eq!((x1.provider.as_deref(), x1.operation.as_deref()), (Some("gcp.gemini"), Some("generate_content")));
        // Gemini counts thoughts apart from candidates: output = 20 + 30.
        assert_eq!(
            (x1.input_tokens, x1.output_tokens, x1.cache_read_input_tokens, x1.reasoning_output_tokens),
            (Some(100), Some(50), Some(40), Some(30))
        );
        assert_eq!((x1.start_time, x1.end_time), (Some(t0), Some(t0 + 1_500_500)));
        assert_eq!(
            (attr(x1, "gen_ai.request.temperature"), attr(x1, "gen_ai.request.max_tokens")),
            (json!(0.2), json!(256))
        );
        assert_eq!(
            (attr(x1, "gen_ai.response.id"), attr(x1, "gen_ai.response.finish_reasons")),
            (json!("r1"), json!(["STOP"]))
        );
        assert_eq!(
            (tool.span_id.as_str(), tool.tool_name.as_deref(), tool.tool_call_id.as_deref()),
            ("x1.t0", Some("get_weather"), None)
        );
        assert_eq!(attr(tool, "gen_ai.tool.call.arguments"), json!("{\"city\":\"Paris\"}"));
        assert_eq!(
            (tool.status, tool.start_time, tool.end_time),
            (SpanStatus::Ok, Some(t0 + 1_500_500), Some(t0 + 5 * S))
        );
        assert_eq!(
            (x2.input_tokens, x2.output_tokens, x2.cache_read_input_tokens, x2.reasoning_output_tokens),
            (Some(130), Some(12), None, None)
        );
        assert_eq!((x2.status, x2.start_time, x2.end_time), (SpanStatus::Ok, Some(t0 + 5 * S), Some(t0 + 5_800_000)));
        assert_eq!(attr(x2, "gen_ai.request.stream"), json!(true));
        assert_eq!(
            (x3.status, x3.error_type.as_deref(), x3.request_model.as_deref()),
            (SpanStatus::Error, Some("rate_limit_exceeded"), Some("gpt-4.1"))
        );
        assert_eq!(
            (attr(x3, "error.message"), attr(x3, "http.response.status_code")),
            (json!("Rate limit reached"), json!(429))
        );
        assert_eq!((x4.status, x4.error_type.as_deref()), (SpanStatus::Error, Some("incomplete_stream")));
        assert_eq!(x4.response_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    }

    /// One exchange per record (a JSON line); Gemini errors; Vertex AI's host and path.
    #[test]
    fn single_exchanges_and_gemini_errors() {
        let vertex = "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent";
        let line = json!({"request": {"uri": vertex, "method": "POST", "body": "{\"contents\": []}"},
                          "response": {"status": {"code": 400}, "body": {"string":
                            "{\"error\": {\"code\": 400, \"message\": \"Invalid JSON payload\", \"status\": \"INVALID_ARGUMENT\"}}"}}});
        let out = decode(&Record::new("x.jsonl:3", line.to_string()));
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        // No response id: the trace is the location and a hash of the text.
        assert!(s.trace_id.to_string().starts_with("x.jsonl:3#"), "{}", s.trace_id);
        assert_eq!(s.span_id.as_str(), "x0");
        assert_eq!(
            (s.provider.as_deref(), s.request_model.as_deref()),
            (Some("gcp.vertex_ai"), Some("gemini-2.0-flash"))
        );
        assert_eq!((s.status, s.error_type.as_deref()), (SpanStatus::Error, Some("INVALID_ARGUMENT")));
        // An error without a body: the status code.
        let bare = json!({"request": {"uri": "http://localhost:8000/v1/chat/completions", "body": null},
                          "response": {"status": {"code": 503}, "body": {"string": ""}}});
        let out = decode(&Record::new("y.jsonl:1", bare.to_string()));
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.provider.as_deref(), s.error_type.as_deref(), s.name.as_str()), (None, Some("503"), "chat"));
        // `provider` option: in place of the host's.
        let mut out = Vec::new();
        LlmHttp::new(&json!({"provider": "vllm", "agent_name": "bot"})).expect("options").decode(
            "s",
            &Record::new("y.jsonl:1", bare.to_string()),
            &mut out,
        );
        let [s] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!((s.provider.as_deref(), s.agent_name.as_deref()), (Some("vllm"), Some("bot")));
    }

    /// Bad input: each bad exchange is an error at its own location, the good ones around it
    /// are kept; a record of no known shape, or not YAML/JSON, is one error.
    #[test]
    fn bad_exchanges_are_errors_at_their_location() {
        let good = json!({"request": {"uri": "https://api.openai.com/v1/chat/completions", "body": "{\"model\":\"m\"}"},
                          "response": {"status": {"code": 200}, "body": {"string": "{\"id\":\"c\",\"choices\":[]}"}}});
        let not_json = json!({"request": {"uri": "https://api.openai.com/v1/chat/completions"},
                              "response": {"status": {"code": 200}, "body": {"string": "<html>oops"}}});
        let tokens = json!({"request": {"uri": "https://api.openai.com/v1/responses"},
                            "response": {"status": {"code": 200}, "body": {"string": "{\"usage\":{\"input_tokens\":-1}}"}}});
        let no_response = json!({"request": {"uri": "https://api.openai.com/v1/responses"}});
        let cassette = json!({"interactions": [good, not_json, tokens, no_response, good]});
        let out = decode(&Record::new("c.json", cassette.to_string()));
        assert_eq!(spans(&out).iter().map(|s| s.span_id.as_str()).collect::<Vec<_>>(), ["x0", "x4"]);
        let errs = errors(&out);
        assert_eq!(
            errs.iter().map(|e| e.0).collect::<Vec<_>>(),
            ["c.json/interactions/1", "c.json/interactions/2", "c.json/interactions/3"]
        );
        assert!(errs[0].1.starts_with("the response body is not JSON"), "{errs:?}");
        assert_eq!(errs[1].1, "usage.input_tokens: a token count must be an integer in 0..=1000000000, found -1");
        assert_eq!(errs[2].1, "no `response` object");

        for (text, want) in [
            ("interactions: [unclosed", "neither JSON nor YAML"),
            ("{\"interactions\": 3}", "`interactions` is not an array: 3"),
            ("{\"log\": {}}", "a HAR log without a `log.entries` array"),
            ("just text", "expected a VCR cassette (`interactions`), a HAR log (`log.entries`) or one exchange"),
            ("{\"a\": ", "invalid JSON"),
        ] {
            let out = decode(&Record::new("f.yaml", text));
            assert!(matches!(&errors(&out)[..], [("f.yaml", e)] if e.starts_with(want)), "{text}: {out:?}");
        }
        // A stream event that is not JSON; a HAR body that is not base64.
        let cut = json!({"request": {"uri": "https://api.openai.com/v1/chat/completions"},
                         "response": {"status": {"code": 200}, "body": {"string": "data: {\"id\":\n\n"}}});
        let out = decode(&Record::new("l:1", cut.to_string()));
        assert!(
            matches!(&errors(&out)[..], [("l:1", e)] if e.starts_with("event 0 of the stream is not JSON")),
            "{out:?}"
        );
        let b64 = json!({"request": {"url": "https://api.openai.com/v1/responses"},
                         "response": {"status": 200, "content": {"encoding": "base64", "text": "!!"}}});
        let out = decode(&Record::new("l:2", b64.to_string()));
        assert!(
            matches!(&errors(&out)[..], [("l:2", e)] if e.starts_with("`response.content.text` is not base64")),
            "{out:?}"
        );
    }

    /// A cassette (YAML and JSON) with a tool call and a streamed exchange.
    fn sample_cassette() -> Value {
        let chat = json!({"id": "c1", "model": "gpt-4o", "created": 1_748_937_600,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"tool_calls": [
                {"id": "a", "function": {"name": "weather", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}});
        let stream = "data: {\"id\":\"c2\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        json!({"interactions": [
            {"request": {"uri": "https://api.openai.com/v1/chat/completions", "body": "{\"model\":\"gpt-4o\"}"},
             "response": {"status": {"code": 200}, "headers": {"Date": ["Tue, 03 Jun 2025 08:00:02 GMT"]},
                          "body": {"string": chat.to_string()}}},
            {"request": {"uri": "https://api.openai.com/v1/chat/completions",
                         "body": "{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"a\",\"content\":\"ok\"}]}"},
             "response": {"status": {"code": 200}, "body": {"string": stream}}}]})
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// A cassette cut anywhere, or with any byte replaced, in YAML or JSON: decoding never
        /// panics, and never yields nothing (each record is spans or an ingest error).
        #[test]
        fn damaged_cassettes_decode_to_spans_or_errors(
            yaml in proptest::prelude::any::<bool>(),
            cut in 0.0f64..1.0,
            flip in proptest::option::of((0.0f64..1.0, proptest::prelude::any::<u8>())),
        ) {
            let v = sample_cassette();
            let text = if yaml { serde_norway::to_string(&v).expect("YAML") } else { v.to_string() };
            let mut bytes = text.into_bytes();
            bytes.truncate((bytes.len() as f64 * cut) as usize);
            if let Some((at, b)) = flip
                && !bytes.is_empty()
            {
                let i = ((bytes.len() - 1) as f64 * at) as usize;
                bytes[i] = b;
            }
            let out = decode(&Record::from_bytes("c.yaml", &bytes));
            // Nothing only when no exchange names a model API any more (its URL damaged or cut).
            let text = String::from_utf8_lossy(&bytes);
            let intact = text.matches("https://api.openai.com/v1/chat/completions").count();
            proptest::prop_assert!(!out.is_empty() || intact < 2, "{}", text);
        }
    }

    #[test]
    fn the_sample_cassette_decodes_whole() {
        for text in [serde_norway::to_string(&sample_cassette()).expect("YAML"), sample_cassette().to_string()] {
            let out = decode(&Record::new("c", text));
            let got: Vec<_> = spans(&out).iter().map(|s| (s.span_id.clone(), s.status)).collect();
            assert_eq!(
                got,
                [("x0".into(), SpanStatus::Ok), ("x0.t0".into(), SpanStatus::Ok), ("x1".into(), SpanStatus::Ok)],
                "{out:?}"
            );
        }
    }

    fn exchange(url: &str, request: Value, status: Value, body: &str) -> Value {
        json!({"request": {"uri": url, "method": "POST", "body": request.to_string()},
               "response": {"status": {"code": status}, "body": {"string": body}}})
    }

    const CHAT: &str = "https://api.openai.com/v1/chat/completions";

    /// What a new user's trial found: each case decoded as the module docs say.
    #[test]
    fn streams_cut_short_calls_without_index_and_odd_bodies() {
        let one = |v: Value| decode(&Record::new("p:1", v.to_string()));
        // Two pushes' first lines share a location: their traces differ (response id, else hash).
        let a = one(exchange(CHAT, json!({}), json!(404), "{\"error\":{\"code\":\"a\"}}"));
        let b = one(exchange(CHAT, json!({}), json!(404), "{\"error\":{\"code\":\"b\"}}"));
        assert_ne!(spans(&a)[0].trace_id, spans(&b)[0].trace_id);
        // A stream cut inside an event: what came before it, as an incomplete stream.
        let cut = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[\
                   {\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\ndata: {\"id\":\"c\",\"cho";
        let out = one(exchange(CHAT, json!({"stream": true}), json!(200), cut));
        let [s, t] = &spans(&out)[..] else { panic!("{out:?}") };
        assert_eq!(
            (s.status, s.error_type.as_deref(), s.trace_id.to_string()),
            (SpanStatus::Error, Some("incomplete_stream"), "c".into())
        );
        assert_eq!(t.tool_name.as_deref(), Some("f"));
        // Gemini's JSON-array stream: whole, then cut.
        let gemini = "https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent";
        let whole = "[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]},\n{\"candidates\":[{\"finishReason\":\"STOP\"}],\
                     \"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2}}]";
        let out = one(exchange(gemini, json!({}), json!(200), whole));
        assert_eq!((spans(&out)[0].status, spans(&out)[0].output_tokens), (SpanStatus::Ok, Some(2)));
        let out = one(exchange(gemini, json!({}), json!(200), &whole[..whole.len() - 30]));
        assert_eq!(spans(&out)[0].error_type.as_deref(), Some("incomplete_stream"), "{out:?}");
        // Deltas without `index`: an `id` starts a call.
        let deltas = "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"}\"}}]}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n\
                      data: [DONE]\n\n";
        let out = one(exchange(CHAT, json!({}), json!(200), deltas));
        let calls: Vec<_> = spans(&out)[1..]
            .iter()
            .map(|t| (t.tool_call_id.clone().unwrap(), t.name.clone(), attr(t, "gen_ai.tool.call.arguments")))
            .collect();
        assert_eq!(
            calls,
            [("a".into(), "execute_tool f".into(), json!("{}")), ("b".into(), "execute_tool g".into(), json!("{}"))]
        );
        let bad = deltas.replace("{\"id\":\"a\",", "{\"index\":\"0\",\"id\":\"a\",");
        let out = one(exchange(CHAT, json!({}), json!(200), &bad));
        assert!(
            matches!(&errors(&out)[..], [(_, e)] if e.starts_with("a tool call delta whose `index` is not a whole number")),
            "{out:?}"
        );
        // Two Gemini calls of one name, answered in order: error, then ok.
        let gem = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent";
        let calls = json!({"candidates": [{"finishReason": "STOP", "content": {"parts": [
            {"functionCall": {"name": "f", "args": {"c": "x"}}}, {"functionCall": {"name": "f", "args": {"c": "y"}}}]}}]});
        let answers = json!({"contents": [{"parts": [
            {"functionResponse": {"name": "f", "response": {"error": "down"}}},
            {"functionResponse": {"name": "f", "response": {"ok": 1}}}]}]});
        let done = json!({"candidates": [{"finishReason": "STOP"}]});
        let cassette = json!({"interactions": [exchange(gem, json!({}), json!(200), &calls.to_string()),
                                               exchange(gem, answers, json!(200), &done.to_string())]});
        let out = one(cassette);
        let tools: Vec<_> = spans(&out)
            .iter()
            .filter(|s| s.tool_name.is_some())
            .map(|s| (attr(s, "gen_ai.tool.call.arguments"), s.status))
            .collect();
        assert_eq!(tools, [(json!("{\"c\":\"x\"}"), SpanStatus::Error), (json!("{\"c\":\"y\"}"), SpanStatus::Ok)]);
        // A gzip body kept as YAML `!!binary` (vcrpy, without decode_compressed_response).
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(
            &mut gz,
            br#"{"id":"z","model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}"#,
        )
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let yaml = format!(
            "interactions:\n- request:\n    method: POST\n    uri: {CHAT}\n    body: '{{}}'\n  response:\n    status: {{code: 200}}\n    headers:\n      Content-Encoding: [gzip]\n    body:\n      string: !!binary |\n        {b64}\n"
        );
        let out = decode(&Record::new("z.yaml", yaml));
        assert_eq!(
            (spans(&out)[0].input_tokens, spans(&out)[0].trace_id.to_string()),
            (Some(7), "z".into()),
            "{out:?}"
        );
        // IPv6 hosts; a GET is no model call; HAR status 0 (no response); an error with 200.
        let har = json!({"log": {"entries": [
            {"request": {"method": "POST", "url": "http://[::1]:8080/v1/chat/completions", "postData": {"text": "{}"}},
             "response": {"status": 200, "content": {"text": "{\"id\":\"v6\",\"choices\":[]}"}}},
            {"request": {"method": "GET", "url": CHAT}, "response": {"status": 200, "content": {"text": "{\"data\":[]}"}}},
            {"request": {"method": "POST", "url": CHAT, "postData": {"text": "{}"}}, "response": {"status": 0, "content": {}}},
            {"request": {"method": "POST", "url": CHAT, "postData": {"text": "{}"}},
             "response": {"status": "200", "content": {"text": "{\"error\":{\"type\":\"server_error\",\"message\":\"boom\"}}"}}}]}});
        let out = one(har);
        let got: Vec<_> = spans(&out).iter().map(|s| (s.span_id.as_str(), s.status, s.error_type.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("x0", SpanStatus::Ok, None),
                ("x2", SpanStatus::Error, Some("no_response")),
                ("x3", SpanStatus::Error, Some("server_error"))
            ]
        );
        assert_eq!(attr(spans(&out)[0], "server.address"), json!("[::1]"));
        // Wrong types and impossible counts are errors, not NULLs.
        for (body, want) in [
            (json!({"usage": "lots"}), "`usage` is not an object: \"lots\""),
            (json!({"model": 42}), "`model` is not a string: 42"),
            (json!({"choices": {}}), "`choices` is not an array: {}"),
            (
                json!({"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}}}),
                "50 cached input tokens are more than the 10 they are part of",
            ),
        ] {
            let out = one(exchange(CHAT, json!({}), json!(200), &body.to_string()));
            assert!(matches!(&errors(&out)[..], [(_, e)] if e == &want), "{want}: {out:?}");
        }
        // An integral float is its integer; a tuned Gemini model is a model.
        let out = one(exchange(CHAT, json!({}), json!(200), "{\"usage\":{\"prompt_tokens\":12.0}}"));
        assert_eq!(spans(&out)[0].input_tokens, Some(12), "{out:?}");
        let tuned = "https://generativelanguage.googleapis.com/v1beta/tunedModels/my-model-7:generateContent";
        let out = one(exchange(tuned, json!({}), json!(200), "{\"candidates\":[{\"finishReason\":\"STOP\"}]}"));
        assert_eq!(spans(&out)[0].request_model.as_deref(), Some("my-model-7"), "{out:?}");
    }

    /// A deflate body kept as `!!binary`: zlib's base64 starts with `eJ`, which must not be
    /// taken for an `event:` stream.
    #[test]
    fn deflate_bodies_are_decompressed() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(
            &mut z,
            br#"{"id":"d","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#,
        )
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
        assert!(b64.starts_with("eJ"), "{b64}");
        let yaml = format!(
            "interactions:\n- request:\n    uri: {CHAT}\n    body: '{{}}'\n  response:\n    status: {{code: 200}}\n    \
             headers:\n      content-encoding: [deflate]\n    body:\n      string: !!binary |\n        {b64}\n"
        );
        let out = decode(&Record::new("d.yaml", yaml));
        assert_eq!((spans(&out)[0].input_tokens, spans(&out)[0].output_tokens), (Some(4), Some(2)), "{out:?}");
    }

    #[test]
    fn server_sent_events_follow_the_event_stream_rules() {
        // `d` is not dispatched: the body ends inside its event.
        assert_eq!(sse_data("data: a\ndata:b\n\n: comment\nevent: x\ndata: c\r\n\r\ndata: d"), ["a\nb", "c"]);
        assert_eq!(host_of("https://user@API.openai.com:443/v1?x"), Some("API.openai.com"));
        assert_eq!(
            gemini_model("https://h/v1beta/models/gemini-pro:streamGenerateContent?alt=sse").as_deref(),
            Some("gemini-pro")
        );
        assert_eq!(api_of("https://api.openai.com/v1/embeddings"), None);
        assert!(LlmHttp::new(&json!({"model": "x"})).is_err());
    }
}
