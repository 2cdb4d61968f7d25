//! The process's tracing: log lines on stderr, and, when an OTLP endpoint is configured, the
//! engine's spans exported over OTLP/HTTP (protobuf) to an OpenTelemetry Collector, Jaeger or
//! Tempo.
//!
//! Configured as every OpenTelemetry SDK is, by the variables of the OpenTelemetry
//! specification (`docs/specs/otel/configuration/sdk-environment-variables.md` and the OTLP
//! exporter's `docs/specs/otel/protocol/exporter.md`):
//!
//! | variable | what |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the URL spans are posted to, as written (`http://collector:4318/v1/traces`) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | a base URL: `/v1/traces` is appended (`http://collector:4318`) |
//! | `OTEL_EXPORTER_OTLP_HEADERS` / `…_TRACES_HEADERS` | headers of every export (`authorization=Bearer …`), never logged |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` / `…_TRACES_TIMEOUT` | ms an export may take (default 10,000) |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource (`service.name` is `aimatrix` unless set) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | the batch span processor (ms between exports, default 5,000; spans queued, default 2,048, the rest dropped; spans per export, default 512) |
//! | `OTEL_SDK_DISABLED=true` | no export, whatever else is set |
//! | `AIMATRIX_OTLP_FILTER` | which spans are exported, as `RUST_LOG` says it (default `info`) |
//!
//! No endpoint set, nothing is exported (and no exporter thread runs). Only OTLP/HTTP with
//! protobuf bodies is spoken (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, the
//! specification's default); HTTPS uses the process's rustls with the system's roots.
//!
//! The spans (names and attributes follow the OpenTelemetry semantic conventions where they
//! have one: HTTP server spans, database client spans):
//! - `{METHOD} {route}` for every HTTP request (`http.request.method`, `http.route`,
//!   `url.path`, `http.response.status_code`; status error on a 5xx);
//! - `pgwire {OPERATION}` for every pgwire statement run, and `pgwire parse {OPERATION}` for the
//!   extended protocol's Parse, which plans it (`db.system.name` = `aimatrix`,
//!   `db.operation.name`, `db.query.text` without its literals' values, `db.response.status_code`
//!   on an error: the SQLSTATE);
//! - `job install` (a child of the request's span), `job cancel`, `view create`, `view drop`,
//!   `recover` for the job lifecycle (`job.id`, `job.name`, `view.name`).
//!
//! A failed export is logged on stderr (`Export.Failed…`, at warn and error).
//!
//! Spans still queued when the process stops are exported on the way out
//! ([`Telemetry`]'s drop), within the export timeout.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The variables that name an endpoint: set (not empty), spans are exported.
const ENDPOINT_VARIABLES: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The process's tracing, installed by [`init`]; dropping it exports the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last spans were not exported over OTLP: {e}");
        }
    }
}

/// Installs the process's tracing subscriber: log lines on stderr (filtered by `RUST_LOG`,
/// default `warn`), and the OTLP exporter when an endpoint variable is set (see the module).
///
/// # Errors
/// An OTLP exporter that cannot be built (an endpoint that is not a URL, a header that is not
/// one, `OTEL_EXPORTER_OTLP_PROTOCOL` other than `http/protobuf`), or a filter in
/// `AIMATRIX_OTLP_FILTER` that does not parse.
pub fn init() -> Result<Telemetry> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()));
    let provider = exporting().then(tracer_provider).transpose()?;
    let spans = match &provider {
        Some(provider) => {
            let filter = match std::env::var("AIMATRIX_OTLP_FILTER") {
                Ok(f) => EnvFilter::try_new(&f).with_context(|| format!("AIMATRIX_OTLP_FILTER `{f}`"))?,
                Err(_) => EnvFilter::new("info"),
            };
            // The exporter's own HTTP client is never traced (each export would make spans).
            let filter = filter
                .add_directive("reqwest=off".parse()?)
                .add_directive("hyper_util=off".parse()?)
                .add_directive("opentelemetry=off".parse()?)
                .add_directive("opentelemetry_sdk=off".parse()?)
                .add_directive("opentelemetry_otlp=off".parse()?)
                .add_directive("opentelemetry_http=off".parse()?);
            let tracer = provider.tracer("aimatrix");
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter))
        }
        None => None,
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    if provider.is_some() {
        tracing::info!("exporting spans over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// Whether an endpoint is set and the SDK is not disabled.
fn exporting() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && ENDPOINT_VARIABLES.iter().any(|v| std::env::var(v).is_ok_and(|e| !e.trim().is_empty()))
}

/// The tracer provider: a batch span processor over the OTLP/HTTP exporter, which reads its
/// endpoint, headers and timeout from the environment.
fn tracer_provider() -> Result<SdkTracerProvider> {
    if let Ok(protocol) =
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        && protocol.trim() != "http/protobuf"
    {
        anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL is `{protocol}`: aimatrix exports spans over `http/protobuf` only");
    }
    // reqwest's rustls takes the process's crypto provider (ring, as pgwire's and the object
    // store's); one installed before is kept.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("the OTLP span exporter (OTEL_EXPORTER_OTLP_* variables)")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    if !named {
        resource = resource.with_service_name("aimatrix");
    }
    let resource =
        resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
