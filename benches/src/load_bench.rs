//! `amx-load-bench`: many concurrent SQL clients against a running `aimatrix serve`, over
//! loopback, as clients reach it — HTTP (`POST /v1/sql`) and pgwire (a driver's prepared
//! statement) — while a client pushes events.
//!
//! ```text
//! cargo build --release -p aimatrix -p amx-benches
//! target/release/amx-load-bench [--binary target/release/aimatrix] [--keys N] [--workers W]
//!     [--rate EVENTS_PER_S] [--seconds S] [--http-clients C] [--pg-clients C]
//! ```
//! 1. Starts the server (`--binary`, on free ports), submits a job whose push source feeds
//!    `knowledge_events` and whose view `by_id` (`SELECT document_id, collection, size_bytes
//!    FROM knowledge_events`) arranges them, and pushes `N` events with distinct document ids
//!    (pushes of 10,000), until `by_id` holds them all.
//! 2. For `S` seconds: one client pushes new events at `EVENTS_PER_S` (a push every 10 ms,
//!    each awaited: the rate reached is reported), while `C` HTTP clients and `C` pgwire
//!    clients each run point queries one after another (`WHERE document_id = …`, a random
//!    loaded key, so every answer must be one row: any other answer is counted as an error).
//! 3. Reports, per interface, queries/s and latency p50/p99/max (ms), and stops the server.
//!
//! A benchmark, not a test: figures go in the README, never into an assertion.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amx_benches::{arg, percentile};
use rand::Rng;

fn line(i: usize) -> String {
    amx_benches::knowledge_line(&format!("d{i}"), i)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The server, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build(),
    )
}

/// POSTs `body` to `url`: the status and the body as text.
fn post(agent: &ureq::Agent, url: &str, content_type: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut response = agent.post(url).header("Content-Type", content_type).send(body)?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

/// The number of rows in an answer of `POST /v1/sql`.
fn rows(body: &str) -> Option<usize> {
    let answer: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(answer["rows"].as_array()?.len())
}

/// Latencies in ms of one interface's queries, and its errors.
#[derive(Default)]
struct Timings {
    latencies: Vec<f64>,
    errors: u64,
}

fn report(name: &str, mut timings: Vec<Timings>, seconds: f64) {
    let errors: u64 = timings.iter().map(|t| t.errors).sum();
    let mut all: Vec<f64> = timings.iter_mut().flat_map(|t| t.latencies.drain(..)).collect();
    all.sort_by(f64::total_cmp);
    println!(
        "{name}: {:.0} queries/s ({} queries, {errors} errors), latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        all.len() as f64 / seconds,
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
    );
}

fn main() -> anyhow::Result<()> {
    // As the engine's binary does (README, "Transparent huge pages").
    let _ = aimatrix::memory::disable_transparent_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .iter()
        .position(|a| a == "--binary")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/release/aimatrix".into());
    let keys = arg(&args, "--keys", 1_000_000)?;
    let workers = arg(&args, "--workers", 2)?;
    let rate = arg(&args, "--rate", 20_000)?;
    let seconds = arg(&args, "--seconds", 10)?;
    let http_clients = arg(&args, "--http-clients", 4)?;
    let pg_clients = arg(&args, "--pg-clients", 4)?;

    let (http_port, pg_port) = (free_port()?, free_port()?);
    let mut child = Command::new(&binary)
        .args(["serve", "--http", &format!("127.0.0.1:{http_port}"), "--pgwire", &format!("127.0.0.1:{pg_port}")])
        .args(["--workers", &workers.to_string()])
        .env_remove("AIMATRIX__HTTP__LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {binary}: {e} (build it: cargo build --release -p aimatrix)"))?;
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
        }
    });
    let _server = Server(child);
    let base = format!("http://127.0.0.1:{http_port}");
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{base}/readyz")).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        anyhow::ensure!(Instant::now() < deadline, "the server did not get ready in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1. Load.
    let (status, body) = post(&agent, &format!("{base}/v1/jobs"), "application/toml", amx_benches::KNOWLEDGE_JOB)?;
    anyhow::ensure!(status == 201, "submitting the job: {status} {body}");
    let job: serde_json::Value = serde_json::from_str(&body)?;
    let ingest = format!("{base}/v1/ingest/{}/events", job["id"]);
    let started = Instant::now();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
        let lines: Vec<String> = chunk.iter().map(|&i| line(i)).collect();
        let (status, body) = post(&agent, &ingest, "application/x-ndjson", &lines.join("\n"))?;
        anyhow::ensure!(status == 200, "a push: {status} {body}");
    }
    let count = r#"{"sql": "SELECT count(*) AS n FROM by_id"}"#;
    loop {
        let (status, body) = post(&agent, &format!("{base}/v1/sql"), "application/json", count)?;
        if status == 200 && body.contains(&format!(r#""n":{keys}"#)) {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "by_id did not fill: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let load = started.elapsed().as_secs_f64();
    println!("load: {keys} events in {load:.2} s ({:.0} events/s), {workers} workers", keys as f64 / load);

    // 2. Push and query.
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let pusher = {
        let (stop, pushed, ingest) = (stop.clone(), pushed.clone(), ingest.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let agent = self::agent();
            let per_push = (rate / 100).max(1);
            let mut next = keys;
            let mut tick = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let lines: Vec<String> = (next..next + per_push).map(line).collect();
                next += per_push;
                let (status, body) = post(&agent, &ingest, "application/x-ndjson", &lines.join("\n"))?;
                anyhow::ensure!(status == 200, "a push: {status} {body}");
                pushed.fetch_add(per_push as u64, Ordering::SeqCst);
                tick += Duration::from_millis(10);
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(())
        })
    };
    let run_for = Duration::from_secs(seconds as u64);
    let http: Vec<_> = (0..http_clients)
        .map(|_| {
            let (stop, url) = (stop.clone(), format!("{base}/v1/sql"));
            std::thread::spawn(move || {
                let agent = self::agent();
                let mut rng = rand::rng();
                let mut timings = Timings::default();
                while !stop.load(Ordering::SeqCst) {
                    let key = rng.random_range(0..keys);
                    let sql = format!(
                        r#"{{"sql": "SELECT collection, size_bytes FROM by_id WHERE document_id = 'd{key}'"}}"#
                    );
                    let t = Instant::now();
                    match post(&agent, &url, "application/json", &sql) {
                        Ok((200, body)) if rows(&body) == Some(1) => {
                            timings.latencies.push(t.elapsed().as_secs_f64() * 1e3)
                        }
                        _ => timings.errors += 1,
                    }
                }
                timings
            })
        })
        .collect();
    let pg: Vec<_> = (0..pg_clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<Timings> {
                let url = format!("host=127.0.0.1 port={pg_port} user=bench dbname=aimatrix");
                let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
                let statement = client.prepare("SELECT collection, size_bytes FROM by_id WHERE document_id = $1")?;
                let mut rng = rand::rng();
                let mut timings = Timings::default();
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("d{}", rng.random_range(0..keys));
                    let t = Instant::now();
                    match client.query(&statement, &[&key]) {
                        Ok(rows) if rows.len() == 1 => timings.latencies.push(t.elapsed().as_secs_f64() * 1e3),
                        _ => timings.errors += 1,
                    }
                }
                Ok(timings)
            })
        })
        .collect();
    let began = Instant::now();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::SeqCst);
    let http: Vec<Timings> = http.into_iter().map(|h| h.join().expect("an HTTP client")).collect();
    let pg: Vec<Timings> = pg.into_iter().map(|h| h.join().expect("a pgwire client")).collect::<anyhow::Result<_>>()?;
    let elapsed = began.elapsed().as_secs_f64();
    pusher.join().expect("the pusher")?;
    println!(
        "while pushing {:.0} events/s (asked {rate}), {http_clients} HTTP and {pg_clients} pgwire clients, point queries on {keys} keys:",
        pushed.load(Ordering::SeqCst) as f64 / elapsed
    );
    report("  http", http, elapsed);
    report("  pgwire", pg, elapsed);
    Ok(())
}
