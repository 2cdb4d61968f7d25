//! `amx-otlp-bench`: the OTLP receiver as an instrumented agent fleet reaches it — spans
//! exported in requests of `S` spans (an SDK's batch processor sends 512 by default), over
//! OTLP/HTTP with protobuf bodies, OTLP/HTTP with OTLP/JSON bodies, and OTLP/gRPC, by `C`
//! clients at once, each request awaited (acknowledged only once its spans are in the
//! engine's input).
//!
//! ```text
//! cargo build --release -p aimatrix -p amx-benches
//! target/release/amx-otlp-bench [--binary target/release/aimatrix] [--workers W]
//!     [--spans-per-request S] [--requests R] [--clients C] [--protocol http-protobuf|http-json|grpc]
//! ```
//! Starts the server (`--binary`, on a free port), submits a job with a push source of format
//! `otlp-json` (its spans feed the built-in span views: `agent_traces`, `tool_usage`,
//! `model_usage`), then for each protocol in turn (or the one `--protocol` names: compare
//! protocols each in a server of its own, since a later one finds the arrangements larger)
//! sends `R` requests of `S` spans (a chat span
//! with GenAI attributes and a tool call under it, alternating; ids unique across the run),
//! and reports spans/s (and per core of the machine), request latency p50/p99/max (ms) and
//! the server's resident memory; at the end it checks that `spans` holds every span sent.
//!
//! A benchmark, not a test: figures go in the README, never into an assertion.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amx_benches::{arg, percentile};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;

/// The server, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

/// Request `n` (from 0) of `spans` spans: pairs of a chat span and a tool call under it.
fn request(n: u64, spans: u64) -> ExportTraceServiceRequest {
    let text = |s: &str| any_value::Value::StringValue(s.into());
    let spans = (0..spans)
        .map(|i| {
            let id = n * spans + i;
            let trace = id / 2;
            let mut trace_id = vec![0xab; 8];
            trace_id.extend_from_slice(&(trace + 1).to_be_bytes());
            let span_id = (id + 1).to_be_bytes().to_vec();
            let start = 1_796_464_800_000_000_000 + id * 1_000_000;
            let (name, parent, attributes, status) = if id.is_multiple_of(2) {
                (
                    "chat gpt-4o",
                    Vec::new(),
                    vec![
                        kv("gen_ai.operation.name", text("chat")),
                        kv("gen_ai.provider.name", text("openai")),
                        kv("gen_ai.request.model", text(["gpt-4o", "gpt-4o-mini", "o3"][(trace % 3) as usize])),
                        kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(1000 + (id % 500) as i64)),
                        kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(50 + (id % 100) as i64)),
                        kv("gen_ai.agent.name", text(["support", "billing"][(trace % 2) as usize])),
                    ],
                    1,
                )
            } else {
                (
                    "execute_tool search",
                    id.to_be_bytes().to_vec(),
                    vec![
                        kv("gen_ai.operation.name", text("execute_tool")),
                        kv("gen_ai.tool.name", text(["search", "lookup", "refund"][(trace % 3) as usize])),
                    ],
                    if trace.is_multiple_of(10) { 2 } else { 1 },
                )
            };
            Span {
                trace_id,
                span_id,
                parent_span_id: parent,
                name: name.into(),
                kind: 3,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 250_000_000,
                attributes,
                status: Some(Status { code: status, message: String::new() }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", any_value::Value::StringValue("agents".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "amx-otlp-bench".into(), ..Default::default() }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The server's resident memory (MiB), from `/proc`.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned())))
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

fn main() -> anyhow::Result<()> {
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .iter()
        .position(|a| a == "--binary")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/release/aimatrix".into());
    let workers = arg(&args, "--workers", 2)?;
    let per_request = arg(&args, "--spans-per-request", 512)? as u64;
    let requests = arg(&args, "--requests", 200)? as u64;
    let clients = arg(&args, "--clients", 4)? as u64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(&binary)
        .args(["serve", "--http", &format!("127.0.0.1:{port}"), "--pgwire", ""])
        .args(["--workers", &workers.to_string()])
        .env_remove("AIMATRIX__HTTP__LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {binary}: {e} (build it: cargo build --release -p aimatrix)"))?;
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("[serve] {line}");
            }
        }
    });
    let _server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{base}/readyz")).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        anyhow::ensure!(Instant::now() < deadline, "the server did not get ready in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let job = "name = \"agents\"\n[[sources]]\nname = \"otel\"\nkind = \"push\"\nformat = \"otlp-json\"\n";
    let mut response = agent.post(format!("{base}/v1/jobs")).header("Content-Type", "application/toml").send(job)?;
    anyhow::ensure!(response.status().as_u16() == 201, "submitting the job: {}", response.body_mut().read_to_string()?);
    let id: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    let id = id["id"].as_u64().ok_or_else(|| anyhow::anyhow!("no job id"))?;
    let url = format!("{base}/v1/otlp/{id}/otel/v1/traces");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    println!(
        "{workers} workers, {cores} cores; {requests} requests of {per_request} spans per protocol, {clients} clients"
    );

    let mut next = 0_u64;
    let only = args.iter().position(|a| a == "--protocol").and_then(|i| args.get(i + 1)).map(String::as_str);
    let protocols =
        [("http-protobuf", Protocol::HttpProtobuf), ("http-json", Protocol::HttpJson), ("grpc", Protocol::Grpc)];
    anyhow::ensure!(
        only.is_none_or(|o| protocols.iter().any(|(name, _)| *name == o)),
        "--protocol is http-protobuf, http-json or grpc"
    );
    for protocol in protocols.into_iter().filter(|(name, _)| only.is_none_or(|o| o == *name)).map(|(_, p)| p) {
        // The requests are encoded before the clock starts: the bench measures the server.
        let bodies: Vec<ExportTraceServiceRequest> = (next..next + requests).map(|n| request(n, per_request)).collect();
        next += requests;
        let started = Instant::now();
        let mut latencies: Vec<f64> = match protocol {
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let json = matches!(protocol, Protocol::HttpJson);
                let content_type = if json { "application/json" } else { "application/x-protobuf" };
                let bodies = std::sync::Arc::new(bodies);
                let threads: Vec<_> = (0..clients)
                    .map(|c| {
                        let (bodies, url, agent) = (bodies.clone(), url.clone(), agent.clone());
                        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                            let mut latencies = Vec::new();
                            for request in bodies.iter().skip(c as usize).step_by(clients as usize) {
                                // Each request encoded as it is sent, as an exporter does (and
                                // as the gRPC client below does).
                                let t = Instant::now();
                                let body = if json { serde_json::to_vec(request)? } else { request.encode_to_vec() };
                                let mut r = agent.post(&url).header("Content-Type", content_type).send(&body[..])?;
                                let status = r.status().as_u16();
                                let answer = r.body_mut().read_to_vec()?;
                                anyhow::ensure!(status == 200, "{status} {}", String::from_utf8_lossy(&answer));
                                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                            }
                            Ok(latencies)
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in threads {
                    all.extend(t.join().map_err(|_| anyhow::anyhow!("a client panicked"))??);
                }
                all
            }
            Protocol::Grpc => runtime.block_on(async {
                let bodies = std::sync::Arc::new(bodies);
                let mut tasks = Vec::new();
                for c in 0..clients {
                    let bodies = bodies.clone();
                    let endpoint = base.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut client = TraceServiceClient::connect(endpoint).await?;
                        let mut latencies = Vec::new();
                        for body in bodies.iter().skip(c as usize).step_by(clients as usize) {
                            let mut request = tonic::Request::new(body.clone());
                            request.metadata_mut().insert("x-aimatrix-job", id.to_string().parse()?);
                            request.metadata_mut().insert("x-aimatrix-source", "otel".parse()?);
                            let t = Instant::now();
                            let answer = client.export(request).await?.into_inner();
                            anyhow::ensure!(answer.partial_success.is_none(), "rejected: {answer:?}");
                            latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok::<_, anyhow::Error>(latencies)
                    }));
                }
                let mut all = Vec::new();
                for task in tasks {
                    all.extend(task.await??);
                }
                Ok::<_, anyhow::Error>(all)
            })?,
        };
        let seconds = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let spans = (requests * per_request) as f64;
        println!(
            "{protocol:?}: {:.0} spans/s ({:.0} per core), request p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; server RSS {:.0} MiB",
            spans / seconds,
            spans / seconds / cores as f64,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
            rss_mib(pid),
        );
    }

    // Every span is there (each answer came once its spans were in the input).
    let want = next * per_request;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut r = agent
            .post(format!("{base}/v1/sql"))
            .header("Content-Type", "application/json")
            .send(r#"{"sql": "SELECT count(*) AS n FROM spans"}"#)?;
        let body = r.body_mut().read_to_string()?;
        if body.contains(&format!(r#""n":{want}"#)) {
            println!("spans holds all {want} spans sent");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "spans did not fill: {body} (want {want})");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
