//! The AIMatrix server: the HTTP API of a running cluster (axum, JSON, versioned under `/v1`).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/jobs` | a job file's TOML as the body (`application/toml`); installs it; `201 {"id": N}` |
//! | `GET /v1/jobs` | every job: id, name, state, sources, views, errors |
//! | `GET /v1/jobs/{id}` | one job, with per-source records, errors and bytes read, per-view rows, hydration |
//! | `DELETE /v1/jobs/{id}` | cancels it: sources stop, views dropped; what it ingested stays |
//! | `POST /v1/sql` | `{"sql": "…"}` (`application/json`, or the SQL as `application/sql`): a query, or `CREATE`/`DROP MATERIALIZED VIEW`; JSON rows, or an Arrow IPC stream with `Accept: application/vnd.apache.arrow.stream` |
//! | `POST /v1/ingest/{job}/{source}` | JSON lines (`application/x-ndjson`) into a push source; replies once they are in the engine's input, with counts and each reject's reason |
//! | `POST /v1/webhooks/github/{job}/{source}` | a GitHub webhook delivery (Actions and Checks events) into a push source of format `github-actions`, its `X-Hub-Signature-256` verified when the source has a secret ([`webhook`]) |
//! | `GET /v1/subscribe?view=NAME` | WebSocket: the snapshot, then every change, and progress as time advances |
//! | `GET /v1/catalog` | every relation and view with its columns |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of this API |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (every collection has passed time 0) |
//!
//! Every error is a 4xx or 5xx with a JSON body `{"error": "…"}` naming the problem: 400 for
//! malformed JSON, TOML (with line and column) or SQL (with its position), 403 for a foreign
//! `Host` or `Origin` ([`guard`]) or a file source outside the server's file roots, 404 for an
//! unknown job, source, view or route, 409 for a conflict with the catalog, 413 for a body over
//! `http.max_body_bytes`, 415 for a body without its documented content type, 503 when the
//! cluster has stopped or a query timed out.

pub mod api;
pub mod auth;
pub mod config;
mod console;
pub mod guard;
pub mod metrics;
mod otlp;
pub mod pgwire;
pub mod tls;
mod webhook;

use std::time::Duration;

use amx_cluster::controller::{JobInfo, JobStatus};
use amx_cluster::job::Job;
use amx_cluster::protocol::JobId;
use amx_cluster::{ClusterError, Controller, SqlAnswer, SubscribeEvent};
use amx_dataflows::row::Row;
use amx_dataflows::{Diff, Time};
use amx_sql::arrow::datatypes::SchemaRef;
use amx_sql::arrow::record_batch::RecordBatch;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use utoipa::OpenApi;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    controller: Controller,
    sql_timeout: Duration,
    max_body_bytes: usize,
    file_access: amx_connectors::FileAccess,
    guard: std::sync::Arc<guard::Guard>,
    metrics: std::sync::Arc<metrics::Metrics>,
    /// The configured users (`None`: authentication off).
    auth: Option<std::sync::Arc<auth::Authenticator>>,
    /// TLS for both servers (`None`: plain TCP).
    tls: Option<tls::Tls>,
}

impl AppState {
    /// The state over a running controller; queries wait at most `sql_timeout` for the views
    /// they read.
    pub fn new(controller: Controller, sql_timeout: Duration) -> AppState {
        AppState {
            controller,
            sql_timeout,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            file_access: amx_connectors::FileAccess::Under(Vec::new()),
            guard: std::sync::Arc::new(guard::Guard::new("127.0.0.1", &[], &[])),
            metrics: std::sync::Arc::new(metrics::Metrics::new()),
            auth: None,
            tls: None,
        }
    }

    /// Serves HTTPS and encrypted pgwire sessions only, with `tls` ([`tls`]; default: none,
    /// plain HTTP and pgwire).
    pub fn with_tls(mut self, tls: Option<tls::Tls>) -> AppState {
        self.tls = tls;
        self
    }

    /// Whether the servers speak TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Authenticates every request and pgwire session against `auth`'s users ([`auth`];
    /// default: none, no authentication).
    pub fn with_auth(mut self, auth: Option<auth::Authenticator>) -> AppState {
        self.auth = auth.map(std::sync::Arc::new);
        self
    }

    /// The server's metrics (`GET /metrics`).
    pub fn metrics(&self) -> std::sync::Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// Answers the `Host` names and `Origin`s `guard` allows (default: loopback names only).
    pub fn with_guard(mut self, guard: guard::Guard) -> AppState {
        self.guard = std::sync::Arc::new(guard);
        self
    }

    /// What the file sources of jobs submitted to this server may read.
    pub fn file_access(&self) -> amx_connectors::FileAccess {
        self.file_access.clone()
    }

    /// Lets jobs' file sources read files `access` admits (default: none, `files.roots`
    /// empty: every file source is refused with 403).
    pub fn with_file_access(mut self, access: amx_connectors::FileAccess) -> AppState {
        self.file_access = access;
        self
    }

    /// Accepts request bodies up to `bytes` (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn with_max_body_bytes(mut self, bytes: usize) -> AppState {
        self.max_body_bytes = bytes;
        self
    }
}

/// An API error: its status and message, answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        ApiError::new(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(api::ErrorBody { error: self.message })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A request body, or the JSON error for one that could not be read (too large: 413).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn body(body: Body) -> ApiResult<Bytes> {
    body.map_err(|r| {
        use std::error::Error as _;
        let mut cause = r.source();
        while let Some(e) = cause {
            if e.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body sent nothing for {} s", BODY_READ_TIMEOUT.as_secs()),
                );
            }
            cause = e.source();
        }
        let message = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than the limit of {} bytes (http.max_body_bytes)", max_body_bytes())
        } else {
            r.body_text()
        };
        ApiError::new(r.status(), message)
    })
}

/// The largest request body accepted, in bytes (`http.max_body_bytes`).
fn max_body_bytes() -> usize {
    MAX_BODY.load(std::sync::atomic::Ordering::Relaxed)
}

static MAX_BODY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_BODY_BYTES);

/// The default largest request body: 256 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 << 20;

/// The OpenAPI document (generated from the handlers' annotations and the answer types of
/// [`api`]). Every route also answers 403 (a foreign `Host` or `Origin`, [`guard`]) and, when
/// the cluster has stopped, 503; each lists them. With users configured ([`auth`]), every
/// route but the probes also answers 401 without a known bearer token, and 403 to a user whose
/// role is too small.
#[derive(OpenApi)]
#[openapi(
    info(title = "AIMatrix", description = "Jobs, SQL, ingestion and subscriptions of a running AIMatrix cluster."),
    paths(
        submit_job,
        list_jobs,
        show_job,
        cancel_job,
        run_sql,
        ingest,
        otlp::traces,
        webhook::github,
        subscribe,
        catalog,
        healthz,
        readyz,
        metrics_text,
        openapi
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Adds authentication to the OpenAPI document: a `bearer` security scheme, optional on
/// every route but the probes (a server without users needs none), and the 401 each such
/// route answers without a known token when users are configured ([`auth`]).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let unauthorized = utoipa::openapi::ResponseBuilder::new()
            .description("users are configured, and the request has no bearer token or one the server does not know")
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/healthz" || path == "/readyz" {
                continue;
            }
            for operation in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
                operation.responses.responses.insert("401".into(), unauthorized.clone().into());
                operation.security = Some(vec![
                    SecurityRequirement::default(),
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]);
            }
        }
    }
}

/// The router of the HTTP API over `state`.
pub fn router(state: AppState) -> Router {
    MAX_BODY.store(state.max_body_bytes, std::sync::atomic::Ordering::Relaxed);
    let limit = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(console::root))
        .route("/console", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job).delete(cancel_job))
        .route("/v1/sql", post(run_sql))
        .route("/v1/ingest/{job}/{source}", post(ingest))
        .route("/v1/otlp/{job}/{source}/v1/traces", post(otlp::traces))
        .route_service(otlp::GRPC_EXPORT_PATH, otlp::grpc_service(state.clone()))
        .route(
            "/v1/webhooks/github/{job}/{source}",
            post(webhook::github).layer(axum::extract::DefaultBodyLimit::max(limit.min(webhook::MAX_DELIVERY_BYTES))),
        )
        .route("/v1/subscribe", get(subscribe))
        .route("/v1/catalog", get(catalog))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route; see /v1/openapi.json") })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}; see /v1/openapi.json", uri.path()),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth_check))
        .layer(axum::middleware::from_fn_with_state(state.guard.clone(), guard::check))
        .layer(axum::middleware::from_fn_with_state(state.clone(), otlp::grpc_gate))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(state)
}

/// Runs a request inside a span named as the OpenTelemetry semantic conventions name an HTTP
/// server span (`{METHOD} {route}`, or `{METHOD}` for no route), with `http.request.method`,
/// `http.route`, `url.path` and `http.response.status_code`, and an error status on a 5xx
/// (exported over OTLP when the process is configured to: see the binary's `telemetry`).
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let method = request.method().clone();
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let name = route.as_deref().map_or_else(|| method.to_string(), |r| format!("{method} {r}"));
    let span = tracing::info_span!(
        "http request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The role a request needs ([`auth`]'s table); `None` for the probes, which need none, and
/// for GitHub webhook deliveries, which carry no token and are authenticated by their
/// signature instead (the handler refuses them on a server with users unless their source has
/// a secret: [`webhook`]). Reads
/// (`GET`) need `reader`, a push (also OTLP/gRPC's export) `writer`, and every other change `admin`: a route added later
/// without a line here is closed to all but admins, not open to readers. `POST /v1/sql` needs
/// `reader` here; its view statements need `admin`, checked once the statement is parsed.
fn needed_role(method: &axum::http::Method, path: &str) -> Option<auth::Role> {
    use axum::http::Method;
    match (method, path) {
        (_, "/healthz" | "/readyz") => None,
        // The console's page and assets: no data (what they show comes from the API).
        (&Method::GET | &Method::HEAD, "/" | "/console" | "/console/console.js" | "/console/console.css") => None,
        (&Method::POST, p) if p.starts_with("/v1/webhooks/github/") => None,
        (&Method::GET | &Method::HEAD, _) => Some(auth::Role::Reader),
        (&Method::POST, "/v1/sql") => Some(auth::Role::Reader),
        (&Method::POST, p) if p.starts_with("/v1/ingest/") || p.starts_with("/v1/otlp/") => Some(auth::Role::Writer),
        (&Method::POST, otlp::GRPC_EXPORT_PATH) => Some(auth::Role::Writer),
        _ => Some(auth::Role::Admin),
    }
}

/// `METHOD /path` of a request, as refusals name it.
fn route_of(request: &axum::extract::Request) -> String {
    format!("{} {}", request.method(), request.uri().path())
}

/// With users configured, authenticates a request by its bearer token (RFC 6750 §2.1) and
/// checks its user's role against the route's: 401 with `WWW-Authenticate` without a known
/// token, 403 with one whose role is too small. The user goes into the request's extensions
/// ([`auth::Principal`]) for handlers whose role depends on the body (`POST /v1/sql`).
async fn auth_check(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(authenticator) = &state.auth else { return next.run(request).await };
    let Some(needed) = needed_role(request.method(), request.uri().path()) else { return next.run(request).await };
    if request.headers().get_all(header::AUTHORIZATION).iter().count() > 1 {
        // Which one counts would depend on who reads them (a proxy may take the last).
        state.metrics.auth_refused(metrics::Interface::Http, "unauthenticated");
        return ApiError::bad_request("more than one Authorization header").into_response();
    }
    let header_token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    // A browser cannot set headers on a WebSocket: a subscription may carry its token as the
    // `access_token` query parameter instead (RFC 6750 §2.3), as the console's does.
    let query_token = || {
        (request.uri().path() == "/v1/subscribe" && request.headers().get(header::AUTHORIZATION).is_none())
            .then(|| {
                axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(request.uri()).ok()
            })
            .flatten()
            .and_then(|axum::extract::Query(mut q)| q.remove("access_token"))
    };
    let token = header_token.or_else(query_token);
    let token = token.as_deref();
    let Some(principal) = token.and_then(|t| authenticator.bearer(t)) else {
        state.metrics.auth_refused(metrics::Interface::Http, "unauthenticated");
        let (message, challenge) = match token {
            None => {
                ("this server needs a bearer token: send `Authorization: Bearer TOKEN`", "Bearer realm=\"aimatrix\"")
            }
            Some(_) => {
                ("the bearer token is not one this server knows", "Bearer realm=\"aimatrix\", error=\"invalid_token\"")
            }
        };
        tracing::info!(route = ?route_of(&request), "HTTP: a request without a known token refused (401)");
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static(challenge));
        return response;
    };
    if let Some(message) = principal.denied(needed, &route_of(&request)) {
        state.metrics.auth_refused(metrics::Interface::Http, "forbidden");
        tracing::info!(user = ?principal.name, route = ?route_of(&request), "HTTP: a request beyond its user's role refused (403)");
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    request.extensions_mut().insert(principal.clone());
    next.run(request).await
}

/// How long an HTTPS connection may take to send its first request after the TLS handshake.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive HTTPS connection may take to send a request's head before it is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request's body may go without sending a byte before the request is refused
/// (408) and its connection closed: a client that announces a body and stalls cannot hold a
/// connection and a handler.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes: HTTPS when `state` has TLS
/// ([`AppState::with_tls`]), else plain HTTP. Either way a connection that sends no complete
/// first request within [`FIRST_REQUEST_TIMEOUT`], or no next request head within
/// [`HEADER_READ_TIMEOUT`], is closed, and on shutdown connections get 10 s to finish.
/// Connections are `TCP_NODELAY`: an answer's last small write (an HTTP/2 response is
/// headers, data and trailers) is sent at once, not held by Nagle's algorithm until the
/// client's delayed acknowledgement of the one before.
///
/// # Errors
/// An I/O error of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let Some(tls) = state.tls.as_ref().map(|t| t.http.clone()) else {
        // Plain HTTP: axum-server too (axum::serve bounds neither wait), so that idle and
        // slowloris clients cannot pile up here either.
        let mut server = axum_server::from_tcp(listener.into_std()?)?
            .acceptor(axum_server::accept::NoDelayAcceptor::new())
            .handle(handle)
            .first_request_timeout(FIRST_REQUEST_TIMEOUT);
        server.http_builder().http1().header_read_timeout(HEADER_READ_TIMEOUT);
        return server.serve(router(state).into_make_service()).await;
    };
    // HTTPS: axum-server's rustls acceptor.
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    // A connection that sends no complete first request within 10 s after its handshake (which
    // axum-server bounds at 10 s), or no next request head within 30 s (hyper's own default,
    // which axum-server turns off), is closed: idle and slowloris clients cannot pile up.
    let acceptor =
        axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(axum_server::accept::NoDelayAcceptor::new());
    let mut server = axum_server::from_tcp(listener.into_std()?)?
        .acceptor(acceptor)
        .handle(handle)
        .first_request_timeout(FIRST_REQUEST_TIMEOUT);
    server.http_builder().http1().header_read_timeout(HEADER_READ_TIMEOUT);
    server.serve(router(state).into_make_service()).await
}

/// Answers the probes of a cluster process other than process 0 (which serves the whole API)
/// on `listener` until the process ends: `GET /healthz` and `GET /readyz`, both `200 ok`
/// once the process has joined the cluster (it has, when this is called), over HTTPS when
/// `tls` is given, as process 0 answers, so that one pod template probes every pod of a
/// StatefulSet; and `GET /metrics`, this process's own (`process_*`: CPU seconds, resident
/// and virtual memory in bytes, open files, start time), for a bearer token of any user when
/// `auth` has users (else 401), as process 0's. Nothing else is served: 404.
///
/// # Errors
/// The listener fails.
pub async fn serve_probes(
    listener: tokio::net::TcpListener,
    tls: Option<tls::Tls>,
    auth: Option<auth::Authenticator>,
) -> std::io::Result<()> {
    let auth = std::sync::Arc::new(auth);
    let registry = prometheus::Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    }
    let metrics = move |headers: axum::http::HeaderMap| {
        let (auth, registry) = (auth.clone(), registry.clone());
        async move {
            if let Some(auth) = auth.as_ref() {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if token.is_none_or(|t| auth.bearer(t.trim()).is_none()) {
                    let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"aimatrix\"")];
                    return (StatusCode::UNAUTHORIZED, challenge, "a bearer token is needed\n").into_response();
                }
            }
            let mut text = Vec::new();
            let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
    };
    let router =
        Router::new().route("/healthz", get(healthz)).route("/readyz", get(healthz)).route("/metrics", get(metrics));
    let Some(tls) = tls else { return axum::serve(listener, router).await };
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.http);
    let mut server =
        axum_server::from_tcp_rustls(listener.into_std()?, config)?.first_request_timeout(FIRST_REQUEST_TIMEOUT);
    server.http_builder().http1().header_read_timeout(HEADER_READ_TIMEOUT);
    server.serve(router.into_make_service()).await
}

/// Liveness: the server answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive", body = String, content_type = "text/plain"),
    (status = 403, description = "a foreign Host or Origin", body = api::ErrorBody)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: every collection has passed time 0.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready", body = String, content_type = "text/plain"),
    (status = 403, description = "a foreign Host or Origin", body = api::ErrorBody),
    (status = 503, description = "starting", body = String, content_type = "text/plain")))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.controller.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// The server's metrics, in Prometheus' text format ([`metrics`]).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "the metrics (Prometheus text format 0.0.4)", body = String, content_type = "text/plain"),
    (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody)))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.controller).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "the OpenAPI document", body = Object),
    (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody)))]
async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

/// Parses a job id from a path (an unknown id, not a malformed one: 404 either way).
fn job_id(text: &str) -> ApiResult<JobId> {
    text.parse::<u64>().map(JobId).map_err(|_| ClusterError::UnknownJob(text.to_owned()).into())
}

/// Installs a job (its TOML as the body).
#[utoipa::path(post, path = "/v1/jobs", request_body(content = String, content_type = "application/toml", description = "a job file"),
    responses((status = 201, description = "installed", body = api::JobCreated),
              (status = 400, description = "the job does not parse or plan", body = api::ErrorBody),
              (status = 403, description = "a file source (or an object-store source's local directory) outside the server's file roots (files.roots), an object-store sink's local directory outside its sink roots (files.sink_roots), or a foreign Host or Origin", body = api::ErrorBody),
              (status = 409, description = "a source or view name is in use", body = api::ErrorBody),
              (status = 413, description = "a body over http.max_body_bytes", body = api::ErrorBody),
              (status = 415, description = "a body that is not application/toml", body = api::ErrorBody),
              (status = 503, description = "the cluster has stopped, or planning took longer than sql.timeout_ms", body = api::ErrorBody)))]
async fn submit_job(State(state): State<AppState>, raw: Body) -> ApiResult<Response> {
    let body = body(raw)?;
    let text = std::str::from_utf8(&body).map_err(|e| ApiError::bad_request(format!("the job is not UTF-8: {e}")))?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut job = Job::parse(text, &cwd).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    job.access = state.file_access.clone();
    let controller = state.controller.clone();
    // The job's span is a child of the request's.
    let span = tracing::Span::current();
    let id = tokio::task::spawn_blocking(move || span.in_scope(|| controller.install_job(&job)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, axum::Json(api::JobCreated { id: id.0 })).into_response())
}

/// Every job.
#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, description = "the jobs", body = api::JobList),
    (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody)))]
async fn list_jobs(State(state): State<AppState>) -> axum::Json<api::JobList> {
    // Secrets in jobs' properties are not shown, even to admins (the job file has them).
    axum::Json(api::JobList { jobs: state.controller.jobs().into_iter().map(JobInfo::redacted).collect() })
}

/// One job with its figures.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = u64, Path, description = "job id", example = 1)),
    responses((status = 200, description = "the job", body = JobStatus),
              (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody),
              (status = 404, description = "no such job", body = api::ErrorBody),
              (status = 503, description = "the cluster has stopped, or its figures took longer than sql.timeout_ms", body = api::ErrorBody)))]
async fn show_job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::Json<JobStatus>> {
    let id = job_id(&id)?;
    let status = tokio::time::timeout(state.sql_timeout, state.controller.job_status(id))
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timed out reading the job's figures"))??;
    let status = JobStatus { info: status.info.redacted(), ..status };
    Ok(axum::Json(status))
}

/// A boolean query parameter: `true`/`1` or `false`/`0` (absent: false).
fn flag(params: &std::collections::HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match params.get(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!("?{name}= takes true or false (or 1 or 0), not `{v}`"))),
    }
}

/// Cancels a job: its sources stop and its views are dropped; what it ingested stays in the
/// shared relations, unless `?retract=true` (a job submitted with `retractable = true`): then
/// every event it ingested is retracted, at one timestamp, before the answer.
#[utoipa::path(delete, path = "/v1/jobs/{id}", params(("id" = u64, Path, description = "job id", example = 2),
        ("retract" = Option<bool>, Query, description = "also retract what the job ingested")),
    responses((status = 200, description = "cancelled", body = api::JobCancelled),
              (status = 400, description = "?retract= is neither true nor false", body = api::ErrorBody),
              (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody),
              (status = 404, description = "no such job", body = api::ErrorBody),
              (status = 409, description = "already cancelled, another job's view reads its views, or retract=true \
                  for a job submitted without retractable = true", body = api::ErrorBody),
              (status = 503, description = "the cluster has stopped", body = api::ErrorBody)))]
async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    let retract = flag(&params, "retract")?;
    state.controller.cancel_job(id, retract).await?;
    Ok(axum::Json(api::JobCancelled { id: id.0, state: "cancelled".into(), retracted: retract }).into_response())
}

/// Runs a SQL statement.
#[utoipa::path(post, path = "/v1/sql",
    request_body(description = "{\"sql\": \"…\"} as application/json, or the SQL as application/sql",
        content((api::SqlRequest = "application/json"), (String = "application/sql"))),
    responses((status = 200, description = "a query's rows (as JSON, or as an Arrow IPC stream with Accept: application/vnd.apache.arrow.stream), or what a view statement did",
                  content((api::SqlResult = "application/json"), (Vec<u8> = "application/vnd.apache.arrow.stream"))),
              (status = 400, description = "a SQL error, with its position; an answer or a query past sql.max_result_rows, sql.max_result_bytes or the SQL memory limits", body = api::ErrorBody),
              (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody),
              (status = 404, description = "DROP of a view that does not exist", body = api::ErrorBody),
              (status = 409, description = "CREATE of a name in use, DROP of a view another view reads or of a built-in view", body = api::ErrorBody),
              (status = 413, description = "a body over http.max_body_bytes", body = api::ErrorBody),
              (status = 415, description = "a body that is neither application/json nor application/sql", body = api::ErrorBody),
              (status = 503, description = "the query ran longer than sql.timeout_ms and was cancelled, or the cluster has stopped", body = api::ErrorBody)))]
async fn run_sql(
    State(state): State<AppState>,
    principal: Option<axum::Extension<auth::Principal>>,
    headers: HeaderMap,
    raw: Body,
) -> ApiResult<Response> {
    let body = body(raw)?;
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    // The guard has let only application/json and application/sql through.
    let sql = if content_type.starts_with("application/sql") {
        String::from_utf8(body.to_vec()).map_err(|e| ApiError::bad_request(format!("the SQL is not UTF-8: {e}")))?
    } else {
        let shape = || ApiError::bad_request("the body must be a JSON object {\"sql\": \"…\"}");
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be {{\"sql\": \"…\"}}: {e}")))?;
        if !value.is_object() {
            return Err(shape());
        }
        serde_json::from_value::<api::SqlRequest>(value)
            .map_err(|e| ApiError::bad_request(format!("the body must be {{\"sql\": \"…\"}}: {e}")))?
            .sql
    };
    // A query is held to sql.timeout_ms by the controller, which cancels it and says so; a
    // view statement (planned, then installed) to about the same time here. A client that goes away
    // drops this future, and with it the query.
    let backstop = state.sql_timeout + Duration::from_secs(2);
    let started = std::time::Instant::now();
    // With users configured, only an admin may change the catalog (the auth check let any
    // reader through to here).
    let refuse_views = match (&state.auth, principal) {
        (None, _) => None,
        (Some(_), Some(axum::Extension(p))) => p.denied(auth::Role::Admin, "CREATE or DROP MATERIALIZED VIEW"),
        (Some(_), None) => Some("permission denied: the request is not authenticated".into()),
    };
    let extras = amx_cluster::QueryExtras { refuse_views, ..Default::default() };
    let answer = tokio::time::timeout(backstop, state.controller.execute_sql_with(&sql, extras)).await;
    let ok = matches!(answer, Ok(Ok(_)));
    state.metrics.observe_query(metrics::Interface::Http, ok, started.elapsed());
    if let Ok(Err(ClusterError::Forbidden(message))) = &answer {
        state.metrics.auth_refused(metrics::Interface::Http, "forbidden");
        tracing::info!(%message, "HTTP: a statement beyond its user's role refused (403)");
    }
    let answer = answer.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the statement did not finish within sql.timeout_ms = {} ms", state.sql_timeout.as_millis()),
        )
    })??;
    let arrow = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(ARROW_STREAM));
    match answer {
        SqlAnswer::Rows { schema, batches, timestamp } => {
            if arrow {
                let bytes = arrow_stream(&schema, &batches)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], bytes).into_response());
            }
            json_answer(columns(&schema), timestamp, batches, state.controller.sql_limits().max_result_bytes)
        }
        SqlAnswer::Created { view, existed } => {
            Ok(axum::Json(api::SqlResult::Created(api::ViewCreated { created: view, existed })).into_response())
        }
        SqlAnswer::Dropped { view, existed } => {
            Ok(axum::Json(api::SqlResult::Dropped(api::ViewDropped { dropped: view, existed })).into_response())
        }
    }
}

/// Batches as an Arrow IPC stream.
fn arrow_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, amx_sql::arrow::error::ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

/// A schema's columns, as the API lists them.
fn columns(schema: &SchemaRef) -> Vec<api::Column> {
    schema
        .fields()
        .iter()
        .map(|f| api::Column { name: f.name().clone(), data_type: f.data_type().to_string() })
        .collect()
}

/// A batch's rows as JSON objects separated by commas (`{…},{…}`, sliced out of the JSON
/// array the writer makes, not copied); `None` for a batch without rows.
fn json_objects(batch: RecordBatch) -> Option<std::io::Result<Bytes>> {
    let text = match amx_sql::format_batches(&[batch], amx_sql::OutputFormat::Json) {
        Ok(text) => Bytes::from(text),
        // Not expected (every column type the engine has is written).
        Err(e) => return Some(Err(std::io::Error::other(format!("{e:#}")))),
    };
    let end = text.trim_ascii_end().len();
    if end <= 2 || text[0] != b'[' || text[end - 1] != b']' {
        return None;
    }
    Some(Ok(text.slice(1..end - 1)))
}

/// [`api::SqlRows`] as JSON, written batch by batch as the body is sent: the answer's JSON is
/// never built whole (its batches are, within `sql.max_result_bytes`).
///
/// JSON can be larger than the batches (a control character is six bytes escaped), so the
/// JSON is held to `limit` bytes too: when the first batch's rows already pass it the answer is
/// a 400 naming `sql.max_result_bytes`; when a later batch does, the status has been sent, and
/// the body ends with an error there, so the client's read fails (the connection is cut before
/// the end) rather than taking a partial answer for a whole one.
fn json_answer(
    columns: Vec<api::Column>,
    timestamp: Time,
    batches: Vec<RecordBatch>,
    limit: Option<u64>,
) -> ApiResult<Response> {
    let limit = limit.unwrap_or(u64::MAX);
    let too_large = move || format!("the answer's JSON is larger than sql.max_result_bytes = {limit} bytes");
    let columns = serde_json::to_string(&columns).unwrap_or_else(|_| "[]".into());
    let head = Bytes::from(format!("{{\"columns\":{columns},\"timestamp\":{timestamp},\"rows\":["));
    let mut batches = batches.into_iter().filter_map(json_objects);
    let first =
        batches.next().transpose().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut sent = head.len() as u64 + first.as_ref().map_or(0, |f| f.len() as u64);
    if sent > limit {
        return Err(ApiError::bad_request(format!("{}; select fewer rows or columns, or raise it", too_large())));
    }
    let rest = batches.flat_map(move |objects| -> Vec<std::io::Result<Bytes>> {
        let objects = match objects {
            Ok(objects) => objects,
            Err(e) => return vec![Err(e)],
        };
        sent += 1 + objects.len() as u64;
        if sent > limit {
            return vec![Err(std::io::Error::other(format!("{}; the answer was cut off", too_large())))];
        }
        vec![Ok(Bytes::from_static(b",")), Ok(objects)]
    });
    let chunks = std::iter::once(Ok(head))
        .chain(first.map(Ok))
        .chain(rest)
        .chain(std::iter::once(Ok(Bytes::from_static(b"]}"))));
    Ok(([(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(futures::stream::iter(chunks)))
        .into_response())
}

/// Batches as JSON row objects (NULL as null, timestamps as RFC 3339, NaN and infinities as
/// strings: the CLI's `--output json`).
fn json_rows(batches: &[RecordBatch]) -> ApiResult<Value> {
    let text = amx_sql::format_batches(batches, amx_sql::OutputFormat::Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    serde_json::from_str(&text).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Rows of a collection as JSON objects, in order.
fn rows_json(schema: &SchemaRef, rows: &[&Row]) -> ApiResult<Vec<Value>> {
    let batch = amx_sql::convert::rows_to_batch(rows, schema)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    match json_rows(&[batch])? {
        Value::Array(values) => Ok(values),
        _ => Ok(Vec::new()),
    }
}

/// Pushes JSON lines into a push source. With a data directory (`--data-dir`), the answer
/// comes once the records are durable. A push with an `Idempotency-Key` header is applied at
/// most once per source (across restarts with a data directory; over the source's last
/// 100,000 keys while their answers take at most 16 MiB): a retry with the same key is answered as the first push was; the same key
/// with a different body is refused (409).
#[utoipa::path(post, path = "/v1/ingest/{job}/{source}",
    params(("job" = u64, Path, description = "job id", example = 1),
        ("source" = String, Path, description = "push source name", example = "events"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key is not applied again")),
    request_body(content = Option<String>, content_type = "application/x-ndjson",
        description = "one JSON record per line (also as application/jsonl or application/json); an empty body ingests nothing",
        example = "{\"c\": \"docs\", \"id\": \"d1\", \"v\": 1, \"size\": 10, \"t\": 1700000000}"),
    responses((status = 200, description = "the records are in the engine's input", body = amx_cluster::controller::IngestReport),
              (status = 400, description = "the body is not UTF-8 (nothing is ingested; the error names the line), or a bad Idempotency-Key", body = api::ErrorBody),
              (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody),
              (status = 404, description = "no such job or push source", body = api::ErrorBody),
              (status = 409, description = "the job was cancelled, or the Idempotency-Key was used for a different body", body = api::ErrorBody),
              (status = 413, description = "a body over http.max_body_bytes", body = api::ErrorBody),
              (status = 415, description = "a compressed body (Content-Encoding), or one of another content type", body = api::ErrorBody),
              (status = 503, description = "the cluster has stopped, or the data directory could not take the records (nothing was ingested)", body = api::ErrorBody)))]
async fn ingest(
    State(state): State<AppState>,
    Path((job, source)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Body,
) -> ApiResult<Response> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        && !encoding.trim().eq_ignore_ascii_case("identity")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "compressed bodies (Content-Encoding: {encoding}) are not supported; send the JSON lines as they are"
            ),
        ));
    }
    let body = body(raw)?;
    let job = job_id(&job)?;
    // All or nothing: a body that is not text is refused whole, at the line that breaks it.
    let text = std::str::from_utf8(&body).map_err(|e| {
        let line = body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        ApiError::bad_request(format!("the body is not UTF-8: line {line}: {e}; nothing was ingested"))
    })?;
    let key = idempotency_key(&headers)?;
    let report = state.controller.ingest_keyed(job, &source, text, key).await?;
    Ok(axum::Json(report).into_response())
}

/// A push's `Idempotency-Key` header, if any.
///
/// # Errors
/// 400 when it is not 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255);
    key.map(Some).ok_or_else(|| {
        ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters; nothing was ingested")
    })
}

/// Subscribes to a view (WebSocket). Messages, one JSON object each:
/// `{"type": "snapshot", "timestamp": T, "rows": [{"row": {…}, "diff": n}, …], "last": bool}`
/// — the contents at `T`, in messages of at most [`CHUNK_ROWS`] rows (each row in one message
/// only), the last with `"last": true`, read from the arrangements as the client takes them (a
/// snapshot holds a few messages' worth of memory in the server, whatever the view's size) —
/// then `{"type": "update", "timestamp": t, "diff": d, "row": {…}}` per change and
/// `{"type": "progress", "timestamp": t}` when time advances (every change before `t` sent).
///
/// The server closes the socket when the view is dropped (or its job cancelled): code 1000;
/// and when the subscriber falls more than `subscribe.max_queued_rows` changes or
/// `subscribe.max_queued_bytes` bytes of them behind (it does
/// not read fast enough): code 1013 ("try again later"), with a reason saying so; the client
/// may subscribe again. Such closes are counted in the view's `slow_subscribers_closed`
/// (`GET /v1/jobs/{id}`).
#[utoipa::path(get, path = "/v1/subscribe", params(("view" = String, Query, description = "relation or view", example = "tool_usage")),
    responses((status = 101, description = "WebSocket"),
              (status = 400, description = "no ?view=, not a WebSocket upgrade, or an introspection relation (no changes to send)", body = api::ErrorBody),
              (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody),
              (status = 404, description = "no such view", body = api::ErrorBody),
              (status = 503, description = "subscribe.max_subscriptions subscriptions are open", body = api::ErrorBody)))]
async fn subscribe(
    State(state): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let view = params.get("view").ok_or_else(|| ApiError::bad_request("missing ?view=NAME"))?;
    if amx_cluster::introspection::RELATIONS.contains(&view.as_str()) {
        // Refused with the controller's reason (it has no changes to send).
        state.controller.subscribe(view, "http")?;
    }
    if state.controller.schema(view).is_none() {
        return Err(ClusterError::UnknownCollection(view.clone()).into());
    }
    let upgrade =
        upgrade.map_err(|r| ApiError::new(r.status(), format!("/v1/subscribe is a WebSocket: {}", r.body_text())))?;
    let open = state
        .metrics
        .client_subscription(metrics::Interface::Http)
        .map_err(|message| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message))?;
    let subscription = state.controller.subscribe(view, "http")?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        forward_subscription(socket, subscription).await;
        drop(open);
    }))
}

/// Rows per snapshot message, and per step of converting changes to JSON: what the server
/// holds as JSON for one subscriber at a time.
pub const CHUNK_ROWS: usize = 10_000;

/// Events taken from the queue at once (of which only the last progress is sent).
const COALESCE_EVENTS: usize = 16;

/// Why the cluster can no longer answer — a process of it was lost — once that is known.
static CLUSTER_LOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Wakes the subscriptions when [`CLUSTER_LOST`] is set.
static CLUSTER_LOST_NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Says that the cluster has lost a process (`reason` names it): every subscription is closed
/// with code [`CLOSE_CLUSTER_LOST`] and that reason. Called by the binary just before it exits
/// (see README, "Losing a process"); the first reason is kept.
pub fn cluster_lost(reason: &str) {
    let _ = CLUSTER_LOST.set(reason.chars().take(100).collect());
    CLUSTER_LOST_NOTIFY.notify_waiters();
}

/// The close code when the cluster lost a process and the server exits to be restarted: 1012,
/// "Service Restart" (IANA WebSocket Close Code registry).
pub const CLOSE_CLUSTER_LOST: u16 = 1012;

/// The close code for a subscriber that fell behind: 1013, "Try Again Later" (RFC 6455 §7.4,
/// IANA WebSocket Close Code registry).
pub const CLOSE_TOO_SLOW: u16 = 1013;

async fn forward_subscription(mut socket: WebSocket, mut subscription: amx_cluster::Subscription) {
    let schema = subscription.schema.clone();
    'forward: loop {
        if CLUSTER_LOST.get().is_some() {
            break 'forward;
        }
        tokio::select! {
            () = CLUSTER_LOST_NOTIFY.notified() => break 'forward,
            event = subscription.recv() => {
                let Some(event) = event else { break 'forward };
                // Coalesce: of several queued progress messages only the last is sent.
                let mut batch = vec![event];
                while batch.len() < COALESCE_EVENTS && let Some(more) = subscription.try_recv() {
                    batch.push(more);
                }
                let last_progress = batch.iter().rposition(|e| matches!(e, SubscribeEvent::Progress { .. }));
                for (i, event) in batch.into_iter().enumerate() {
                    if matches!(event, SubscribeEvent::Progress { .. }) && Some(i) != last_progress {
                        continue;
                    }
                    // A subscriber that does not read blocks the send; past its bound the
                    // subscription ends, and the connection with it.
                    tokio::select! {
                        sent = send_event(&mut socket, &schema, event) => if sent.is_err() {
                            return;
                        },
                        () = subscription.overflow() => break 'forward,
                        () = CLUSTER_LOST_NOTIFY.notified() => break 'forward,
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            }
        }
    }
    let close = if let Some(reason) = CLUSTER_LOST.get() {
        axum::extract::ws::CloseFrame { code: CLOSE_CLUSTER_LOST, reason: reason.clone().into() }
    } else if subscription.overflowed() {
        axum::extract::ws::CloseFrame {
            code: CLOSE_TOO_SLOW,
            reason: format!(
                "subscriber too slow: over {} changes or {} bytes unread (subscribe.max_queued_rows/_bytes); resubscribe",
                subscription.max_queued_rows(),
                subscription.max_queued_bytes()
            )
            .into(),
        }
    } else {
        // The view is gone (dropped, or its job cancelled): say so and close.
        axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "the view was dropped (or its job cancelled)".into(),
        }
    };
    // A client that reads nothing cannot take the close frame either: the connection is
    // dropped if it is not sent within a second.
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(close)))).await;
}

/// Sends one message.
async fn send(socket: &mut WebSocket, value: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(value.to_string().into())).await
}

/// Sends one subscription event's messages, converting [`CHUNK_ROWS`] rows at a time.
async fn send_event(socket: &mut WebSocket, schema: &SchemaRef, event: SubscribeEvent) -> Result<(), axum::Error> {
    match event {
        SubscribeEvent::Snapshot { timestamp, rows, last: last_part } => {
            let chunks = rows.len().div_ceil(CHUNK_ROWS).max(1);
            let mut rows = rows.into_iter();
            for chunk in 0..chunks {
                let part: Vec<(Row, Diff)> = rows.by_ref().take(CHUNK_ROWS).collect();
                let refs: Vec<&Row> = part.iter().map(|(r, _)| r).collect();
                let values = rows_json(schema, &refs).unwrap_or_default();
                let rows: Vec<Value> = values
                    .into_iter()
                    .zip(part.iter())
                    .map(|(row, (_, diff))| json!({ "row": row, "diff": diff }))
                    .collect();
                let last = last_part && chunk + 1 == chunks;
                send(socket, &json!({ "type": "snapshot", "timestamp": timestamp, "rows": rows, "last": last }))
                    .await?;
            }
        }
        SubscribeEvent::Changes(changes) => {
            for part in changes.chunks(CHUNK_ROWS) {
                let refs: Vec<&Row> = part.iter().map(|(r, _, _)| r).collect();
                let values = rows_json(schema, &refs).unwrap_or_default();
                for (row, (_, time, diff)) in values.into_iter().zip(part.iter()) {
                    send(socket, &json!({ "type": "update", "timestamp": time, "diff": diff, "row": row })).await?;
                }
            }
        }
        SubscribeEvent::Progress { upper } => send(socket, &json!({ "type": "progress", "timestamp": upper })).await?,
    }
    Ok(())
}

/// Every relation and view with its columns, and the introspection relations
/// (`aimatrix_jobs`, `aimatrix_frontiers`, `aimatrix_subscriptions`), by name.
#[utoipa::path(get, path = "/v1/catalog", responses((status = 200, description = "every relation and view", body = api::Catalog),
    (status = 403, description = "a foreign Host or Origin, or a user whose role is too small for the route", body = api::ErrorBody)))]
async fn catalog(State(state): State<AppState>) -> axum::Json<api::Catalog> {
    let relations = state
        .controller
        .catalog_entries()
        .into_iter()
        .map(|e| api::Relation { columns: columns(&e.schema), name: e.name })
        .collect();
    axum::Json(api::Catalog { relations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// `GET path` over a connection of its own, with a bearer token if given: the raw answer.
    fn get(address: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
        let mut socket = std::net::TcpStream::connect(address).expect("connects");
        let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(socket, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Connection: close\r\n\r\n")
            .expect("sent");
        let mut answer = String::new();
        socket.read_to_string(&mut answer).expect("read");
        answer
    }

    /// A process other than 0 answers its probes to anyone, its own metrics only for a user's
    /// token when users are configured, and nothing else.
    #[test]
    fn probes_answer_and_their_metrics_need_a_token() {
        let (token, hash) = auth::new_token();
        let user = auth::UserConfig { name: "r".into(), role: auth::Role::Reader, password: None, tokens: vec![hash] };
        let authenticator = auth::Authenticator::new(&auth::AuthConfig { users: vec![user] }).expect("valid");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bound");
        let address = listener.local_addr().expect("an address");
        runtime.spawn(serve_probes(listener, None, authenticator));
        let status = |path: &str, token: Option<&str>| get(address, path, token)[..12].to_owned();
        assert_eq!(status("/healthz", None), "HTTP/1.1 200");
        assert_eq!(status("/readyz", None), "HTTP/1.1 200");
        assert_eq!(status("/metrics", None), "HTTP/1.1 401");
        assert_eq!(status("/metrics", Some("amx_not_a_token")), "HTTP/1.1 401");
        assert_eq!(status("/v1/jobs", Some(&token)), "HTTP/1.1 404");
        let metrics = get(address, "/metrics", Some(&token));
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("\nprocess_resident_memory_bytes "), "{metrics}");
    }
}
