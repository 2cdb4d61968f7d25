//! The OTLP/HTTP trace receiver: `POST /v1/otlp/{job}/{source}/v1/traces`.
//!
//! An OpenTelemetry SDK or Collector exports to it unchanged: set
//! `OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:PORT/v1/otlp/JOB/SOURCE` (the SDK appends
//! `/v1/traces`), or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` to the whole URL. It follows the
//! OTLP/HTTP specification (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): a body of
//! `application/x-protobuf` (the binary `ExportTraceServiceRequest`) or `application/json`
//! (OTLP/JSON), optionally `Content-Encoding: gzip`; the answer is an
//! `ExportTraceServiceResponse` in the request's encoding, with a `partialSuccess` naming the
//! spans rejected (and the first reason) when some were; a refusal carries a JSON error body.
//!
//! The request goes to push source `source` of job `job`, whose format must be `otlp-json`
//! (see `amx_connectors::otlp` for how spans map to `spans` and `evaluations`), as one record:
//! the request in OTLP/JSON on one line. So the answer comes, as a push's, once the spans are
//! in the engine's input (and, with a data directory, durable); a rejected span is a row of
//! `ingest_errors` with its place in the request.

use std::io::Read as _;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

use amx_cluster::protocol::JobId;
use amx_connectors::otlp;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};

use crate::{ApiError, ApiResult, AppState, Body, api, body, idempotency_key, job_id, max_body_bytes};

/// The body's encoding, from its `Content-Type`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// Receives an OTLP/HTTP trace export (see the module documentation).
#[utoipa::path(post, path = "/v1/otlp/{job}/{source}/v1/traces",
    params(("job" = u64, Path, description = "job id", example = 1),
        ("source" = String, Path, description = "push source of format `otlp-json`", example = "otel"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key is not applied again (as for /v1/ingest)")),
    request_body(content = Option<String>, content_type = "application/x-protobuf",
        description = "an OTLP ExportTraceServiceRequest: protobuf (application/x-protobuf) or OTLP/JSON (application/json), optionally gzip (Content-Encoding: gzip)",
        example = "{\"resourceSpans\": []}"),
    responses((status = 200, description = "the spans are in the engine's input: an ExportTraceServiceResponse (its partialSuccess names the spans rejected), in the request's encoding", content_type = "application/x-protobuf"),
              (status = 400, description = "a body that is not an ExportTraceServiceRequest in its encoding (or nests values deeper than its OTLP/JSON form can be read back), a source whose format is not otlp-json, or a bad Idempotency-Key", body = api::ErrorBody),
              (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody),
              (status = 404, description = "no such job or push source", body = api::ErrorBody),
              (status = 409, description = "the job was cancelled, or the Idempotency-Key was used for a different body", body = api::ErrorBody),
              (status = 413, description = "a body (or its gzip-decompressed bytes) over http.max_body_bytes, or a request whose OTLP/JSON form is over cluster.max_record_bytes (send smaller batches)", body = api::ErrorBody),
              (status = 415, description = "a content type other than application/x-protobuf and application/json, or an encoding other than gzip", body = api::ErrorBody),
              (status = 503, description = "the cluster has stopped, or the data directory could not take the spans (nothing was ingested; retry)", body = api::ErrorBody)))]
pub(crate) async fn traces(
    State(state): State<AppState>,
    Path((job, source)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Body,
) -> ApiResult<Response> {
    let encoding = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(t) if media_type(t) == "application/x-protobuf" => Encoding::Protobuf,
        Some(t) if media_type(t) == "application/json" => Encoding::Json,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "OTLP/HTTP takes application/x-protobuf or application/json, not {}",
                    other.map_or_else(|| "a body without Content-Type".to_owned(), |t| format!("`{t}`"))
                ),
            ));
        }
    };
    let compressed = body(raw)?;
    let bytes = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::trim) {
        None => compressed,
        Some(e) if e.eq_ignore_ascii_case("identity") => compressed,
        Some(e) if e.eq_ignore_ascii_case("gzip") => gunzip(&compressed, state.controller.max_record_bytes())?,
        Some(e) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{e}` is not supported (gzip is)"),
            ));
        }
    };
    let job = job_id(&job)?;
    check_format(&state, job, &source)?;
    let request = match encoding {
        Encoding::Protobuf => {
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(bytes.as_ref())
                .map_err(|e| ApiError::bad_request(format!("not a protobuf ExportTraceServiceRequest: {e}")))?
        }
        Encoding::Json => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|e| ApiError::bad_request(format!("the JSON body is not UTF-8: {e}")))?;
            otlp::parse_request(text)
                .map_err(|e| ApiError::bad_request(format!("not an OTLP/JSON ExportTraceServiceRequest: {e}")))?
        }
    };
    let answer = export(&state, job, &source, &request, idempotency_key(&headers)?).await?;
    Ok(match encoding {
        Encoding::Protobuf => {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], Bytes::from(answer.encode_to_vec())).into_response()
        }
        // A full success is `{}` (no field set), as protobuf's JSON mapping writes it.
        Encoding::Json => {
            let text = match answer.partial_success {
                None => "{}".to_owned(),
                Some(_) => serde_json::to_string(&answer).unwrap_or_default(),
            };
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
    })
}

/// Refuses a request for source `source` of job `job` when its format is not `otlp-json`
/// (400). An unknown job or source passes: the push refuses it (404).
fn check_format(state: &AppState, job: JobId, source: &str) -> ApiResult<()> {
    if let Some(info) = state.controller.job(job)
        && let Some(config) = info.sources.iter().find(|s| s.name == source)
        && config.format != otlp::FORMAT
    {
        return Err(ApiError::bad_request(format!(
            "source `{source}` of job {job} reads format `{}`; the OTLP receiver feeds a push source of format `{}`",
            config.format,
            otlp::FORMAT
        )));
    }
    Ok(())
}

/// Pushes one decoded export to push source `source` of job `job` (format `otlp-json`) as one
/// record, its OTLP/JSON form, and answers once the spans are in the engine's input (durable,
/// with a data directory), with OTLP's partial success when the engine rejected some: each
/// rejected span is a row of `ingest_errors`. Shared by OTLP/HTTP and OTLP/gRPC.
///
/// # Errors
/// 413 when the request's OTLP/JSON form is over `cluster.max_record_bytes`; 400 when it
/// nests values deeper than the JSON reader reads back; and the push's own (404 no such job or
/// source, 409 a cancelled job or a reused idempotency key, 503 a stopped cluster or a data
/// directory that could not take it).
async fn export(
    state: &AppState,
    job: JobId,
    source: &str,
    request: &ExportTraceServiceRequest,
    key: Option<&str>,
) -> ApiResult<ExportTraceServiceResponse> {
    let line = otlp::to_json_line(request).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // What the engine could not take whole is refused here, not answered 200 and lost: a
    // request whose OTLP/JSON form is over the record limit (the client may split it), or does
    // not read back (values nested deeper than the JSON reader's 128 levels).
    let limit = state.controller.max_record_bytes();
    if line.len() as u64 > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request's {} spans take {} bytes as OTLP/JSON, over cluster.max_record_bytes ({limit}): send them in \
                 smaller batches",
                otlp::span_count(request),
                line.len()
            ),
        ));
    }
    if let Err(e) = otlp::parse_request(&line) {
        return Err(ApiError::bad_request(format!("the request cannot be ingested: {e}")));
    }
    // An export without spans pushes nothing, but is refused as a push is (no such job or
    // source, a cancelled job).
    let spans = otlp::span_count(request);
    let report = state.controller.ingest_keyed(job, source, if spans > 0 { &line } else { "" }, key).await?;
    // OTLP's partial success: the spans the engine rejected, each a row of `ingest_errors`
    // (the request is one record, so the first reason is its first rejected span's).
    let rejected = i64::try_from(report.error_rows).unwrap_or(i64::MAX);
    // (An ingest error's message is at most 1 KiB: `amx_dataflows::event::INGEST_ERROR_MESSAGE_MAX_BYTES`.)
    let first = report.errors.first().map(|e| format!("{} (each rejected span is a row of ingest_errors)", e.error));
    let partial_success = (rejected > 0)
        .then(|| ExportTracePartialSuccess { rejected_spans: rejected, error_message: first.unwrap_or_default() });
    Ok(ExportTraceServiceResponse { partial_success })
}

/// OTLP/gRPC's trace export method (`opentelemetry.proto.collector.trace.v1.TraceService`),
/// the path every OTLP/gRPC exporter posts to.
pub(crate) const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC metadata (request headers) that name the job of an OTLP/gRPC export (gRPC has no
/// path of its own to put it in): its id, as in `/v1/otlp/{job}/…`.
pub const JOB_METADATA: &str = "x-aimatrix-job";

/// The gRPC metadata that names the push source (format `otlp-json`) of an OTLP/gRPC export.
pub const SOURCE_METADATA: &str = "x-aimatrix-source";

/// The OTLP/gRPC trace receiver: the official `TraceService` (tonic's server, generated from
/// the OpenTelemetry protos), served at [`GRPC_EXPORT_PATH`] on the HTTP port over HTTP/2
/// (cleartext with prior knowledge, or TLS with ALPN `h2`), as OTLP/gRPC
/// (<https://opentelemetry.io/docs/specs/otlp/#otlpgrpc>) specifies. An SDK exports to it with
/// `OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:PORT` and the target in its headers:
/// `OTEL_EXPORTER_OTLP_HEADERS=x-aimatrix-job=JOB,x-aimatrix-source=SOURCE` (and
/// `authorization=Bearer%20TOKEN` on a server with users; an optional `idempotency-key`
/// as for `/v1/ingest`). Requests may be gzip-compressed (`grpc-encoding: gzip`); a message
/// is at most `http.max_body_bytes`, decompressed. The export is pushed as the OTLP/HTTP
/// route's is, and answered the same way: once the spans are in the engine's input, with a
/// partial success naming rejected spans. A refusal is a gRPC status ([`grpc_code`]).
#[derive(Clone)]
pub(crate) struct GrpcReceiver {
    state: AppState,
}

/// The receiver as a service to route, over `state`.
pub(crate) fn grpc_service(state: AppState) -> TraceServiceServer<GrpcReceiver> {
    let limit = state.max_body_bytes;
    TraceServiceServer::new(GrpcReceiver { state })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(limit)
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(reached) = request.extensions().get::<Reached>() {
            reached.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let metadata = request.metadata();
        let named = |name: &str| -> Result<String, tonic::Status> {
            if metadata.get_all(name).iter().count() > 1 {
                return Err(tonic::Status::invalid_argument(format!("the metadata `{name}` is given more than once")));
            }
            let value = metadata.get(name).ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "an OTLP/gRPC export names its job and push source in the metadata `{JOB_METADATA}` and \
                     `{SOURCE_METADATA}` (OTEL_EXPORTER_OTLP_HEADERS={JOB_METADATA}=JOB,{SOURCE_METADATA}=SOURCE); \
                     `{name}` is missing"
                ))
            })?;
            let text = value
                .to_str()
                .map_err(|_| tonic::Status::invalid_argument(format!("the metadata `{name}` is not visible ASCII")))?;
            Ok(text.trim().to_owned())
        };
        let (job, source) = (named(JOB_METADATA)?, named(SOURCE_METADATA)?);
        // gRPC metadata are HTTP/2 headers: the key is read as /v1/ingest reads its header.
        let headers = metadata.clone().into_headers();
        let key = idempotency_key(&headers).map_err(grpc_status)?;
        let job = job_id(&job).map_err(grpc_status)?;
        check_format(&self.state, job, &source).map_err(grpc_status)?;
        let answer = export(&self.state, job, &source, request.get_ref(), key).await.map_err(grpc_status)?;
        Ok(tonic::Response::new(answer))
    }
}

/// Set on a gRPC request by [`grpc_gate`] and raised by the receiver when tonic hands it the
/// decoded request: a gRPC error without it is tonic's own refusal of the message.
#[derive(Clone, Default)]
pub(crate) struct Reached(std::sync::Arc<std::sync::atomic::AtomicBool>);

/// What stands before the gRPC receiver, as the outermost layer of the router:
///
/// - OTLP/gRPC's path takes only gRPC over HTTP/2: another content type is refused with 415
///   (it is no gRPC client: OTLP/HTTP has its own route), HTTP/1.1 with 505, gRPC-Web as
///   `UNIMPLEMENTED`; a gRPC request for any other method is `UNIMPLEMENTED` whoever asks (the
///   routes are public: an exporter of metrics or logs pointed here learns that only traces
///   are received, not that it needs another role).
/// - A refusal of a gRPC request before it reaches the receiver (a foreign `Host`, a missing
///   token) is answered as gRPC does — HTTP 200 with `grpc-status` and `grpc-message`
///   (trailers only) — with the HTTP error's message, coded by [`grpc_code`], so the client
///   reports the server's reason, not a bare HTTP code.
/// - tonic's own refusals of the message (not protobuf, truncated, a compression it cannot
///   read, over `http.max_body_bytes`), which it codes `INTERNAL`, `OUT_OF_RANGE` or
///   `RESOURCE_EXHAUSTED` (codes OTLP exporters retry, though a retry cannot mend them), are
///   answered `INVALID_ARGUMENT`, as OTLP/HTTP answers the same requests 400 or 413.
pub(crate) async fn grpc_gate(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let grpc = content_type.starts_with("application/grpc");
    let export = request.uri().path() == GRPC_EXPORT_PATH;
    if export && !grpc {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{GRPC_EXPORT_PATH} is OTLP/gRPC's method: a gRPC request (Content-Type application/grpc, over \
                 HTTP/2); OTLP/HTTP is POST /v1/otlp/{{job}}/{{source}}/v1/traces"
            ),
        )
        .into_response();
    }
    if grpc && (!export || content_type.starts_with("application/grpc-web")) {
        let what = if export { "gRPC-Web is not served" } else { "no such gRPC method" };
        return tonic::Status::unimplemented(format!(
            "{what} ({}): this server receives OTLP traces over gRPC ({GRPC_EXPORT_PATH})",
            request.uri().path()
        ))
        .into_http::<axum::body::Body>();
    }
    if export && request.version() != axum::http::Version::HTTP_2 {
        return ApiError::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            format!("OTLP/gRPC runs over HTTP/2, not {:?}", request.version()),
        )
        .into_response();
    }
    let reached = Reached::default();
    if grpc {
        request.extensions_mut().insert(reached.clone());
    }
    let response = next.run(request).await;
    if !grpc {
        return response;
    }
    let status = response.status();
    if status != StatusCode::OK {
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
        let message = serde_json::from_slice::<api::ErrorBody>(&body).map_or_else(|_| status.to_string(), |b| b.error);
        return tonic::Status::new(grpc_code(status), message).into_http::<axum::body::Body>();
    }
    if reached.0.load(std::sync::atomic::Ordering::SeqCst) {
        return response;
    }
    match tonic::Status::from_header_map(response.headers()) {
        Some(refusal) if refusal.code() != tonic::Code::Ok => {
            let message = refusal.message();
            // tonic's decoder codes its two size limits (the message's declared length, and
            // its decompressed bytes) OUT_OF_RANGE and RESOURCE_EXHAUSTED, and everything else
            // it cannot read INTERNAL.
            let message = if matches!(refusal.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) {
                format!(
                    "the message is larger than http.max_body_bytes ({} bytes, decompressed): send smaller batches \
                     ({message})",
                    state.max_body_bytes
                )
            } else {
                format!("not an ExportTraceServiceRequest in gRPC's framing: {message}")
            };
            tonic::Status::invalid_argument(message).into_http::<axum::body::Body>()
        }
        _ => response,
    }
}

/// The gRPC status code for a refusal with HTTP status `status`, as OTLP/gRPC's exporters read
/// them (<https://opentelemetry.io/docs/specs/otlp/#failures>): what a retry cannot mend is
/// not retryable (`INVALID_ARGUMENT` for a request the engine cannot take, `NOT_FOUND`,
/// `FAILED_PRECONDITION` for a cancelled job or a reused idempotency key,
/// `UNAUTHENTICATED`, `PERMISSION_DENIED`), and a store or cluster that cannot take it now is
/// `UNAVAILABLE` (retried with backoff).
pub(crate) fn grpc_code(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 | 413 | 415 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        409 => tonic::Code::FailedPrecondition,
        429 | 503 => tonic::Code::Unavailable,
        408 | 504 => tonic::Code::DeadlineExceeded,
        500 => tonic::Code::Internal,
        _ => tonic::Code::Unknown,
    }
}

fn grpc_status(error: ApiError) -> tonic::Status {
    tonic::Status::new(grpc_code(error.status), error.message)
}

/// A `Content-Type`'s media type, lower case, without parameters.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// A gzip body, decompressed to at most `http.max_body_bytes` and `cluster.max_record_bytes`
/// (a larger one is refused, so a small body cannot expand past the limits).
fn gunzip(compressed: &[u8], record_limit: u64) -> ApiResult<Bytes> {
    // A request's OTLP/JSON form is at least as long as its protobuf: past the record limit it
    // is refused anyway, so no more is decompressed.
    let limit = max_body_bytes().min(usize::try_from(record_limit).unwrap_or(usize::MAX));
    let mut out = Vec::new();
    // Every member of a multi-member gzip stream (as `cat a.gz b.gz` makes).
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("the gzip body does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the decompressed body is larger than the limit of {limit} bytes (http.max_body_bytes, \
                 cluster.max_record_bytes)"
            ),
        ));
    }
    Ok(Bytes::from(out))
}
