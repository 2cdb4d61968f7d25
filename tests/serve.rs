//! `aimatrix serve` end to end, through the binary, with real clients: HTTP (ureq) and a
//! WebSocket (tungstenite). Expected answers are computed here from the records the test
//! pushes, not by the engine.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A server process (or one process of a cluster), killed when dropped.
struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
    /// What it prints on stderr, line by line.
    stderr: std::sync::Mutex<mpsc::Receiver<String>>,
    /// What it printed on stderr before it said where it listens.
    started: Vec<String>,
    /// The pgwire port it reported listening on (`--pgwire 127.0.0.1:0`), if any.
    pg_port: Option<u16>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `aimatrix serve ARGS`; for process 0 waits for its HTTP address (it listens on a
/// port of its own choosing: `--http 127.0.0.1:0`).
fn start(args: &[String], controller: bool) -> Server {
    start_with_env(args, controller, &[])
}

/// [`start`] with HTTP and pgwire on ports the server picks: the server and its pgwire port.
fn start_with_pgwire() -> (Server, u16) {
    let args: Vec<String> = ["--http", "127.0.0.1:0", "--pgwire", "127.0.0.1:0"].map(String::from).into();
    let server = start(&args, true);
    let pg_port = server.pg_port.expect("pgwire listens");
    (server, pg_port)
}

/// [`start`], with these environment variables (configuration overrides) set.
fn start_with_env(args: &[String], controller: bool, env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .arg("serve")
        .args(args)
        .env_remove("AIMATRIX__HTTP__LISTEN")
        // No pgwire (tests run servers side by side) unless `args` ask for it.
        .env("AIMATRIX__PGWIRE__LISTEN", "")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aimatrix serve starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
            let _ = tx.send(line);
        }
    });
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    if !controller {
        let stderr = std::sync::Mutex::new(rx);
        return Server { child, base: String::new(), agent, stderr, started: Vec::new(), pg_port: None };
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut started = Vec::new();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before it listened: {status}");
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(at) = line.find("HTTP API on http://") {
                let address =
                    line[at + "HTTP API on http://".len()..].split_whitespace().next().unwrap_or("").to_owned();
                let stderr = std::sync::Mutex::new(rx);
                let pg_port = common::pgwire_port(&line);
                return Server { child, base: format!("http://{address}"), agent, stderr, started, pg_port };
            }
            started.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not say where it listens");
}

impl Server {
    /// Calls a route with its documented content type (TOML jobs, JSON SQL, JSON lines to
    /// ingest).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let content_type = if path.starts_with("/v1/jobs") {
            "application/toml"
        } else if path.starts_with("/v1/ingest") {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        self.call_with(method, path, body, &[("Content-Type", content_type)])
    }

    /// Calls a route with these headers.
    fn call_with(&self, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            (_, b) => {
                let mut r = self.agent.post(&url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                match b {
                    Some(b) => r.send(b.as_bytes()),
                    None => r.send_empty(),
                }
            }
        }
        .expect("the server answers");
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A query's rows (panics on an error answer).
    fn sql(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.call("POST", "/v1/sql", Some(&json!({ "sql": sql }).to_string()));
        assert_eq!(status, 200, "{sql}: {body}");
        body["rows"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `sql` until its rows equal `want` (at most 60 s); returns the last rows seen.
    fn sql_until(&self, sql: &str, want: &[Value]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = self.sql(sql);
            if rows == want || Instant::now() > deadline {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `GET /metrics` until it has the line `line` (at most 30 s; then fails, showing
    /// the last answer).
    fn metric_until(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, text) = self.call("GET", "/metrics", None);
            assert_eq!(status, 200);
            if text.as_str().is_some_and(|t| t.lines().any(|l| l == line)) {
                return;
            }
            assert!(Instant::now() < deadline, "no `{line}` in /metrics: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Job `id`'s `errors` (as JSON text) once it has any, or after 60 s (then `[]`): what a
    /// sink or source that failed after the job was accepted reports.
    fn job_errors(&self, id: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, status) = self.call("GET", &format!("/v1/jobs/{id}"), None);
            if status["errors"].as_array().is_some_and(|e| !e.is_empty()) || Instant::now() > deadline {
                return status["errors"].to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn submit(&self, toml: &str) -> u64 {
        let (status, body) = self.call("POST", "/v1/jobs", Some(toml));
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("an id")
    }

    fn push(&self, job: u64, source: &str, lines: &[String]) -> Value {
        let (status, body) = self.call("POST", &format!("/v1/ingest/{job}/{source}"), Some(&lines.join("\n")));
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A job with one push source of knowledge events (`c` → collection, `id` → document_id,
/// `size` → size_bytes, `t` → event_time in s) and one view.
fn push_job(name: &str, source: &str, view: &str, view_sql: &str) -> String {
    format!(
        r#"name = "{name}"
[[sources]]
name = "{source}"
kind = "push"
format = "json"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/c"
document_id = "/id"
op = {{ pointer = "/op", default = "upsert" }}
version = "/v"
size_bytes = "/size"
event_time = {{ pointer = "/t", unit = "s" }}

[views]
{view} = "{view_sql}"
"#
    )
}

/// Records `(collection, document, version, size)` as the JSON lines the push jobs map.
fn lines(records: &[(String, String, i64, i64)]) -> Vec<String> {
    records
        .iter()
        .map(|(c, id, v, size)| json!({ "c": c, "id": id, "v": v, "size": size, "t": 1_700_000_000 + v }).to_string())
        .collect()
}

/// `batch`'s records for collection prefix `prefix`: deterministic, several per document.
fn records(prefix: &str, batch: i64) -> Vec<(String, String, i64, i64)> {
    (0..40)
        .map(|i| {
            let v = batch * 100 + i;
            (format!("{prefix}-{}", i % 3), format!("doc-{}", i % 7), v, (v * 37) % 1000 + 1)
        })
        .collect()
}

/// `SELECT collection, count(*) AS n, sum(size_bytes) AS bytes … GROUP BY collection ORDER BY
/// collection`, computed here.
fn sizes(records: &[(String, String, i64, i64)]) -> Vec<Value> {
    let mut by: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (c, _, _, size) in records {
        let e = by.entry(c).or_default();
        e.0 += 1;
        e.1 += size;
    }
    by.into_iter().map(|(c, (n, bytes))| json!({ "bytes": bytes, "collection": c, "n": n })).collect()
}

const SIZES_A: &str = "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events \
                       WHERE collection LIKE 'a-%' GROUP BY collection";
const SIZES_B: &str = "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events \
                       WHERE collection LIKE 'b-%' GROUP BY collection";

/// Reads one subscription message and folds it into the multiset `state` (rows as JSON text →
/// count); returns a progress message's timestamp (0 for other messages).
fn fold_subscription(
    socket: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    state: &mut HashMap<String, i64>,
) -> i64 {
    let message = socket.read().expect("a message");
    let tungstenite::Message::Text(text) = message else { return 0 };
    let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
    match v["type"].as_str() {
        Some("snapshot") => {
            for r in v["rows"].as_array().expect("rows") {
                *state.entry(r["row"].to_string()).or_default() += r["diff"].as_i64().expect("diff");
            }
        }
        Some("update") => *state.entry(v["row"].to_string()).or_default() += v["diff"].as_i64().expect("diff"),
        Some("progress") => return v["timestamp"].as_i64().expect("timestamp"),
        other => panic!("unexpected message type {other:?}: {v}"),
    }
    state.retain(|_, c| *c != 0);
    0
}

#[test]
fn jobs_installed_and_cancelled_at_run_time() {
    let server = start(&["--http".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()], true);
    let a = server.submit(&push_job("a", "a-in", "a_sizes", SIZES_A));
    let b = server.submit(&push_job("b", "b-in", "b_sizes", SIZES_B));
    assert_ne!(a, b);

    // A subscription to job A's view from the start.
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let (mut socket, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=a_sizes")).expect("subscribe");

    let mut sent_a = Vec::new();
    let mut sent_b = Vec::new();
    for batch in 0..3 {
        let ra = records("a", batch);
        let rb = records("b", batch);
        let report = server.push(a, "a-in", &lines(&ra));
        assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(40), Some(0)), "{report}");
        server.push(b, "b-in", &lines(&rb));
        sent_a.extend(ra);
        sent_b.extend(rb);
        // Read your writes: a query after the reply sees the records (no waiting).
        let n = server.sql("SELECT count(*) AS n FROM knowledge_events WHERE collection LIKE 'a-%'");
        assert_eq!(n, vec![json!({ "n": sent_a.len() })], "batch {batch}");
    }
    let (mut b_socket, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=b_sizes")).expect("subscribe to b");
    // Malformed records are rejected with their line and reason, and land in ingest_errors.
    let mut bad = lines(&records("a", 3));
    bad.insert(5, "{not json".into());
    bad.insert(9, r#"{"c": "a-0", "id": "doc-1", "size": "large", "v": 1, "t": 1}"#.into());
    let report = server.push(a, "a-in", &bad);
    assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(40), Some(2)), "{report}");
    assert_eq!(report["errors"][0]["line"].as_u64(), Some(6), "{report}");
    assert_eq!(report["errors"][1]["line"].as_u64(), Some(10), "{report}");
    sent_a.extend(records("a", 3));

    // Cancel B while A keeps ingesting.
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{b}"), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.call("GET", &format!("/v1/jobs/{b}"), None);
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")), "{body}");
    let (status, body) = server.call("POST", &format!("/v1/ingest/{b}/b-in"), Some("{}"));
    assert_eq!(status, 409, "{body}");
    // A subscription to a cancelled job's view ends with a close frame.
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = loop {
        match b_socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| f.reason.to_string()),
            Ok(_) if Instant::now() < deadline => continue,
            other => panic!("the subscription to b_sizes did not close: {other:?}"),
        }
    };
    assert!(closed.is_some_and(|r| r.contains("dropped")));
    // A new job may take the cancelled job's source name; its counters start from zero.
    let b2 = server.submit(&push_job("b again", "b-in", "b2_sizes", SIZES_B));
    let (_, shown) = server.call("GET", &format!("/v1/jobs/{b2}"), None);
    assert_eq!(shown["source_stats"][0]["records"], json!(0), "{shown}");
    server.call("DELETE", &format!("/v1/jobs/{b2}"), None);
    let (status, body) = server.call("POST", "/v1/sql", Some(r#"{"sql": "SELECT * FROM b_sizes"}"#));
    assert_eq!(status, 400, "a cancelled job's view is gone: {body}");
    for batch in 4..7 {
        let ra = records("a", batch);
        server.push(a, "a-in", &lines(&ra));
        sent_a.extend(ra);
    }

    // The survivor's view equals the batch recomputation; what B ingested stays.
    let want_a = sizes(&sent_a);
    let view = "SELECT * FROM a_sizes ORDER BY collection";
    assert_eq!(server.sql_until(view, &want_a), want_a);
    let want_b = sizes(&sent_b);
    assert_eq!(server.sql_until(&format!("{SIZES_B} ORDER BY collection"), &want_b), want_b);
    let errors = server.sql("SELECT source, location FROM ingest_errors ORDER BY location");
    assert_eq!(
        errors,
        vec![
            json!({ "location": format!("POST /v1/ingest/{a}/a-in:10"), "source": "a-in" }),
            json!({ "location": format!("POST /v1/ingest/{a}/a-in:6"), "source": "a-in" }),
        ]
    );

    // A view created at run time over the running job equals its batch answer.
    let (status, body) = server.call(
        "POST",
        "/v1/sql",
        Some(r#"{"sql": "CREATE MATERIALIZED VIEW doc_versions AS SELECT collection, document_id, max(version) AS v FROM knowledge_events GROUP BY collection, document_id"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let mut latest: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (c, id, v, _) in sent_a.iter().chain(&sent_b) {
        let e = latest.entry((c.clone(), id.clone())).or_insert(*v);
        *e = (*e).max(*v);
    }
    let want: Vec<Value> =
        latest.iter().map(|((c, id), v)| json!({ "collection": c, "document_id": id, "v": v })).collect();
    let q = "SELECT collection, document_id, v FROM doc_versions ORDER BY collection, document_id";
    assert_eq!(server.sql_until(q, &want), want);
    // Equality filters are evaluated in the peek (a seek on the first column): same answers.
    let point: Vec<Value> =
        want.iter().filter(|r| r["collection"] == "a-1" && r["document_id"] == "doc-3").cloned().collect();
    assert_eq!(point.len(), 1);
    let q = "SELECT collection, document_id, v FROM doc_versions WHERE collection = 'a-1' AND document_id = 'doc-3'";
    assert_eq!(server.sql(q), point);
    let by_doc: Vec<Value> = want.iter().filter(|r| r["document_id"] == "doc-3").cloned().collect();
    let q = "SELECT collection, document_id, v FROM doc_versions WHERE 'doc-3' = document_id ORDER BY collection";
    assert_eq!(server.sql(q), by_doc);
    // A bare LIMIT is pushed into the peek; with ORDER BY it is not (the first rows in order).
    assert_eq!(server.sql("SELECT count(*) AS n FROM (SELECT * FROM doc_versions LIMIT 3) t"), vec![json!({ "n": 3 })]);
    let q = "SELECT collection, document_id, v FROM doc_versions ORDER BY collection DESC, document_id DESC LIMIT 2";
    let mut last_two: Vec<Value> = want.iter().rev().take(2).cloned().collect();
    last_two.truncate(2);
    assert_eq!(server.sql(q), last_two);
    let q = "SELECT count(*) AS n FROM doc_versions WHERE collection = 'no-such' OR v > 0";
    assert_eq!(server.sql(q), vec![json!({ "n": want.len() })]);

    // The subscription's folded changes equal the final view.
    let mut folded = HashMap::new();
    let want_rows: HashMap<String, i64> = want_a.iter().map(|r| (r.to_string(), 1)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while folded != want_rows && Instant::now() < deadline {
        fold_subscription(&mut socket, &mut folded);
    }
    assert_eq!(folded, want_rows);

    // The job list shows both, with their states; bad input gets 4xx with a JSON error.
    let (_, jobs) = server.call("GET", "/v1/jobs", None);
    let states: Vec<(u64, String)> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| (j["id"].as_u64().unwrap_or(0), j["state"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(states, vec![(a, "running".to_owned()), (b, "cancelled".to_owned()), (b2, "cancelled".to_owned())]);
    // This server has no file roots: every file source is refused, existing or not.
    let missing = push_job("missing", "m-in", "m_v", "SELECT 1 AS x")
        .replace("kind = \"push\"", "path = \"/nonexistent/dir/*.jsonl\"");
    for (method, path, body, want) in [
        ("POST", "/v1/jobs", Some("name = [unclosed"), 400),
        ("POST", "/v1/sql", Some(r#"{"sql": "SELEC 1"}"#), 400),
        ("POST", "/v1/sql", Some("{not json"), 400),
        ("GET", "/v1/jobs/999", None, 404),
        ("GET", "/v1/jobs/not-a-number", None, 404),
        ("POST", &format!("/v1/ingest/{a}/no-such-source"), Some("{}"), 404),
        ("POST", "/v1/sql", Some(r#"["SELECT 1"]"#), 400),
        ("GET", "/v1/sql", None, 405),
        ("POST", "/v1/jobs", Some(""), 400),
        ("POST", "/v1/jobs", Some(&missing), 403),
        ("POST", "/v1/jobs", Some(&push_job("clash", "c-in", "a_sizes", "SELECT 1 AS x")), 409),
        ("POST", "/v1/jobs", Some(&push_job("clash", "a-in", "c_sizes", "SELECT 1 AS x")), 409),
        ("GET", "/v1/subscribe?view=no_such_view", None, 404),
        ("GET", "/v1/subscribe?view=a_sizes", None, 400),
    ] {
        let (status, answer) = server.call(method, path, body);
        assert_eq!(status, want, "{method} {path}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {answer}");
    }
    let (status, body) = server.call("POST", "/v1/jobs", Some("name = [unclosed"));
    assert!(status == 400 && body["error"].as_str().is_some_and(|e| e.contains("line 1")), "{body}");
}

/// The same job, submitted at run time, answers alike on 1 process × 1 worker and on a
/// 2-process × 2-worker cluster, where its file is read in 512-byte pieces by all four
/// workers and the job's progress counts every line and byte of it once (each worker's share,
/// of either process).
#[test]
fn two_processes_answer_as_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("events.jsonl");
    let mut all = Vec::new();
    for batch in 0..25 {
        all.extend(records("c", batch));
    }
    std::fs::write(&data, lines(&all).join("\n") + "\n").expect("write data");
    let job = push_job(
        "file",
        "events",
        "by_doc",
        "SELECT document_id, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY document_id",
    )
    .replace("kind = \"push\"", &format!("path = {:?}", data.to_string_lossy()));
    let queries = [
        "SELECT * FROM by_doc ORDER BY document_id",
        "SELECT collection, documents, edits, size_bytes FROM collection_stats ORDER BY collection",
        "SELECT count(*) AS n FROM knowledge_events",
    ];

    let root = dir.path().to_string_lossy().into_owned();
    let one = start(&["--http".into(), "127.0.0.1:0".into(), "--file-root".into(), root.clone()], true);
    let id = one.submit(&job);
    let want_n = vec![json!({ "n": all.len() })];
    assert_eq!(one.sql_until(queries[2], &want_n), want_n);
    let expected: Vec<Vec<Value>> = queries.iter().map(|q| one.sql(q)).collect();
    assert_eq!(one.call("GET", &format!("/v1/jobs/{id}"), None).1["source_stats"][0]["records"], json!(all.len()));

    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", common::free_port(), common::free_port()))
        .expect("hosts");
    let cluster = |i: usize| -> Vec<String> {
        let mut args: Vec<String> = ["--workers", "2", "--processes", "2", "--process-index", &i.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--hosts".into(), hosts.to_string_lossy().into_owned()]);
        if i == 0 {
            args.extend(["--http".into(), "127.0.0.1:0".into(), "--file-root".into(), root.clone()]);
        }
        args
    };
    let pieces = [("AIMATRIX__CLUSTER__POLL_BYTES", "512")];
    let _p1 = start_with_env(&cluster(1), false, &pieces);
    let p0 = start_with_env(&cluster(0), true, &pieces);
    let id = p0.submit(&job);
    assert_eq!(p0.sql_until(queries[2], &want_n), want_n);
    for (q, want) in queries.iter().zip(&expected) {
        assert_eq!(&p0.sql(q), want, "{q}");
    }
    let bytes = std::fs::metadata(&data).expect("data").len();
    assert!(bytes > 4 * 512, "every worker has pieces: {bytes} bytes");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = p0.call("GET", &format!("/v1/jobs/{id}"), None);
        assert_eq!(status, 200, "{body}");
        let (progress, backfill) = (&body["source_stats"][0]["progress"], &body["backfill"]);
        if progress["done"] == true && backfill["records_read"] == all.len() && backfill["bytes_read"] == bytes {
            assert_eq!(backfill["bytes_total"], bytes, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never counted whole: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job's file source with `follow = true` reads what is appended to its file (a last line
/// only once complete); `GET /v1/jobs/{id}` says `caught_up` when the workers are at the
/// current end, and the view then equals the sizes computed here from everything written.
#[test]
fn a_following_file_source_reads_what_is_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("events.jsonl");
    let first = records("f", 0);
    std::fs::write(&data, lines(&first).join("\n") + "\n").expect("write data");
    let job = push_job(
        "follow",
        "tail",
        "follow_sizes",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    )
    .replace("kind = \"push\"", &format!("path = {:?}\nfollow = true", data.to_string_lossy()));
    let root = dir.path().to_string_lossy().into_owned();
    let server = start(&["--http", "127.0.0.1:0", "--workers", "2", "--file-root", &root].map(String::from), true);
    let id = server.submit(&job);
    let caught_up = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let (_, job) = server.call("GET", &format!("/v1/jobs/{id}"), None);
            if job["source_stats"][0]["progress"]["caught_up"] == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the following source never caught up");
    };
    caught_up();
    let query = "SELECT * FROM follow_sizes ORDER BY collection";
    assert_eq!(server.sql(query), sizes(&first));

    // Append a batch, and the first half of one more line.
    let second = records("f", 1);
    let extra = lines(&records("f", 2)[..1]).remove(0);
    let (head, tail) = extra.split_at(10);
    let mut f = std::fs::OpenOptions::new().append(true).open(&data).expect("open");
    use std::io::Write;
    write!(f, "{}\n{head}", lines(&second).join("\n")).expect("append");
    f.flush().expect("flush");
    let mut both = first.clone();
    both.extend(second);
    caught_up();
    assert_eq!(server.sql(query), sizes(&both), "the partial line is not read before its newline");

    // Complete the line.
    writeln!(f, "{tail}").expect("append");
    f.flush().expect("flush");
    both.extend(records("f", 2)[..1].iter().cloned());
    assert_eq!(server.sql_until(query, &sizes(&both)), sizes(&both));
    assert_eq!(server.call("GET", &format!("/v1/jobs/{id}"), None).1["state"], json!("running"));

    // IF NOT EXISTS over the job's view: nothing created, the view unchanged.
    let create = json!({ "sql": "CREATE MATERIALIZED VIEW IF NOT EXISTS follow_sizes AS SELECT 1 AS x" });
    let (status, body) = server.call("POST", "/v1/sql", Some(&create.to_string()));
    assert_eq!((status, body), (200, json!({ "created": "follow_sizes", "existed": true })));
    assert_eq!(server.sql(query), sizes(&both));
}

/// `DELETE /v1/jobs/{id}?retract=true` takes everything a `retractable` job ingested back out
/// of the shared relations and of every view over them, at one timestamp; another job's data
/// stays, and a job submitted without `retractable` refuses the retraction.
#[test]
fn a_retractable_job_cancelled_with_retract_takes_its_records_back() {
    let server = start(&["--http".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()], true);
    let a_job =
        push_job("a", "a-in", "a_sizes", SIZES_A).replacen("name = \"a\"\n", "name = \"a\"\nretractable = true\n", 1);
    let a = server.submit(&a_job);
    let b = server.submit(&push_job("b", "b-in", "b_sizes", SIZES_B));
    // A view of neither job, over both jobs' records.
    let all = "CREATE MATERIALIZED VIEW all_sizes AS SELECT collection, count(*) AS n, sum(size_bytes) AS bytes \
               FROM knowledge_events GROUP BY collection";
    let (status, body) = server.call("POST", "/v1/sql", Some(&json!({ "sql": all }).to_string()));
    assert_eq!(status, 200, "{body}");

    let (mut sent_a, mut sent_b) = (Vec::new(), Vec::new());
    for batch in 0..3 {
        let (ra, rb) = (records("a", batch), records("b", batch));
        let mut pushed = lines(&ra);
        pushed.push("{not json".into());
        let report = server.push(a, "a-in", &pushed);
        assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(40), Some(1)), "{report}");
        server.push(b, "b-in", &lines(&rb));
        sent_a.extend(ra);
        sent_b.extend(rb);
    }
    let mut b_bad = lines(&records("b", 9));
    b_bad.truncate(2);
    b_bad.push("{also not json".into());
    server.push(b, "b-in", &b_bad);
    sent_b.extend(records("b", 9).into_iter().take(2));
    let both: Vec<_> = sent_a.iter().chain(&sent_b).cloned().collect();
    let view = "SELECT * FROM all_sizes ORDER BY collection";
    assert_eq!(server.sql_until(view, &sizes(&both)), sizes(&both));

    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let (mut socket, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=all_sizes")).expect("subscribe");
    let mut folded = HashMap::new();
    let want_both: HashMap<String, i64> = sizes(&both).iter().map(|r| (r.to_string(), 1)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while folded != want_both && Instant::now() < deadline {
        fold_subscription(&mut socket, &mut folded);
    }
    assert_eq!(folded, want_both);

    // B was not submitted retractable: its data cannot be taken back, and it keeps running.
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{b}?retract=true"), None);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("retractable = true")), "{body}");
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{a}?retract=maybe"), None);
    assert_eq!(status, 400, "{body}");

    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{a}?retract=true"), None);
    assert_eq!((status, &body["retracted"]), (200, &json!(true)), "{body}");
    // At once (the answer waits for it): A's records and ingest errors are gone everywhere.
    assert_eq!(server.sql(&format!("{SIZES_A} ORDER BY collection")), Vec::<Value>::new());
    assert_eq!(server.sql(view), sizes(&sent_b));
    let errors = server.sql("SELECT source, count(*) AS n FROM ingest_errors GROUP BY source");
    assert_eq!(errors, vec![json!({ "n": 1, "source": "b-in" })]);
    let docs = server.sql("SELECT count(*) AS n FROM documents WHERE collection LIKE 'a-%'");
    assert_eq!(docs, vec![json!({ "n": 0 })]);

    // The subscription saw the retraction as changes at one timestamp.
    let mut stamps = std::collections::BTreeSet::new();
    let want_b: HashMap<String, i64> = sizes(&sent_b).iter().map(|r| (r.to_string(), 1)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while folded != want_b && Instant::now() < deadline {
        let message = socket.read().expect("a message");
        let tungstenite::Message::Text(text) = message else { continue };
        let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
        if v["type"] == "update" {
            stamps.insert(v["timestamp"].as_i64().expect("timestamp"));
            *folded.entry(v["row"].to_string()).or_default() += v["diff"].as_i64().expect("diff");
            folded.retain(|_, c| *c != 0);
        }
    }
    assert_eq!(folded, want_b);
    assert_eq!(stamps.len(), 1, "the retraction happened at one timestamp: {stamps:?}");

    // B still ingests.
    let rb = records("b", 5);
    server.push(b, "b-in", &lines(&rb));
    sent_b.extend(rb);
    assert_eq!(server.sql_until(view, &sizes(&sent_b)), sizes(&sent_b));
}

/// A pushed record longer than `cluster.max_record_bytes` is rejected with its size, as a file
/// source's would be; the reply counts every reject but lists only the first 1,000 by line,
/// while `ingest_errors` holds all of them.
#[test]
fn a_push_past_the_record_limit_is_rejected_and_the_reply_lists_the_first_1000_rejects() {
    let server = start_with_env(
        &["--http".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()],
        true,
        &[("AIMATRIX__CLUSTER__MAX_RECORD_BYTES", "200")],
    );
    let job =
        server.submit(&push_job("limits", "in", "limit_sizes", "SELECT collection, size_bytes FROM knowledge_events"));
    let good = r#"{"c": "lim", "id": "doc-1", "size": 7, "v": 1, "t": 1}"#.to_owned();
    let long = format!(r#"{{"c": "lim", "id": "doc-2", "size": 8, "v": 1, "t": 1, "pad": "{}"}}"#, "q".repeat(300));
    let mut body = vec![good, long.clone()];
    // 1,500 lines that are not JSON, on lines 3 to 1502.
    body.extend((0..1500).map(|i| format!("not json {i}")));
    let report = server.push(job, "in", &body);
    assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(1), Some(1501)), "{report}");
    // A JSON line is one record: one ingest_errors row per rejected line, over both workers.
    assert_eq!(report["error_rows"].as_u64(), Some(1501), "{report}");
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1000);
    assert_eq!(errors[0]["line"].as_u64(), Some(2));
    let reason = errors[0]["error"].as_str().unwrap_or("");
    assert!(
        reason.contains(&format!("record of {} bytes exceeds the maximum record size of 200 bytes", long.len())),
        "{reason}"
    );
    let lines: Vec<u64> = errors.iter().filter_map(|e| e["line"].as_u64()).collect();
    assert_eq!(lines, (2..1002).collect::<Vec<u64>>());
    assert_eq!(server.sql("SELECT count(*) AS n FROM ingest_errors"), vec![json!({ "n": 1501 })]);
    assert_eq!(server.sql("SELECT size_bytes FROM limit_sizes"), vec![json!({ "size_bytes": 7 })]);

    // A body that is not UTF-8 is refused whole, at its line; a compressed one with 415.
    let url = format!("{}/v1/ingest/{job}/in", server.base);
    let bad = b"{\"c\": \"lim\", \"id\": \"doc-3\"}\n{\"c\": \"\xff\"}\n".to_vec();
    let response =
        server.agent.post(&url).header("Content-Type", "application/x-ndjson").send(&bad[..]).expect("an answer");
    assert_eq!(response.status().as_u16(), 400);
    let text = response.into_body().read_to_string().expect("a body");
    assert!(text.contains("not UTF-8: line 2") && text.contains("nothing was ingested"), "{text}");
    let response =
        server.agent.post(&url).header("Content-Encoding", "gzip").header("Content-Type", "application/x-ndjson");
    let response = response.send(&b"\x1f\x8b"[..]).expect("an answer");
    assert_eq!(response.status().as_u16(), 415);
    assert_eq!(server.sql("SELECT size_bytes FROM limit_sizes"), vec![json!({ "size_bytes": 7 })]);
}

/// A job submitted over HTTP reads files only under the server's `files.roots`: a path outside
/// (absolute, with `..`, through a symbolic link or a linked directory, or a glob above a root)
/// is refused with 403 whether or not it exists, with the same message, and nothing of the
/// file comes back through `ingest_errors`; a server without roots refuses every file source.
#[test]
fn file_sources_read_only_under_the_configured_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    const SECRET: &str = "TOP-SECRET-LINE";
    let secret = outside.join("secret.jsonl");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    std::fs::write(root.join("in.jsonl"), lines(&records("r", 0)).join("\n") + "\n").expect("in");
    std::os::unix::fs::symlink(&secret, root.join("link.jsonl")).expect("symlink");
    std::os::unix::fs::symlink(&outside, root.join("linkdir")).expect("symlink dir");
    std::os::unix::fs::symlink(outside.join("missing.jsonl"), root.join("dangling.jsonl")).expect("dangling");
    let job = |name: &str, path: &str| {
        push_job(name, &format!("{name}-in"), &format!("{name}_v"), "SELECT 1 AS x")
            .replace("kind = \"push\"", &format!("path = {path:?}"))
    };
    let root_text = root.to_string_lossy().into_owned();
    let server = start(&["--http", "127.0.0.1:0", "--file-root", &root_text].map(String::from), true);

    // Outside the roots: 403, the same answer for a file that exists and one that does not.
    let root_s = root.display();
    let refused = [
        secret.display().to_string(),
        outside.join("missing.jsonl").display().to_string(),
        "/etc/passwd".to_owned(),
        format!("{root_s}/../outside/secret.jsonl"),
        format!("{root_s}/../outside/missing.jsonl"),
        format!("{}/*/secret.jsonl", dir.path().display()),
        format!("{root_s}/**/*.jsonl"),
        "../../../../etc/passwd".to_owned(),
    ];
    let mut messages = Vec::new();
    for (i, path) in refused.iter().enumerate() {
        let (status, body) = server.call("POST", "/v1/jobs", Some(&job(&format!("o{i}"), path)));
        assert_eq!(status, 403, "{path}: {body}");
        let message = body["error"].as_str().expect("an error").replace(path.as_str(), "PATH");
        assert!(message.contains("files.roots") || message.contains("[files] roots"), "{message}");
        if path.starts_with('/') {
            // (The job's name alone could also be part of the random temporary directory's.)
            messages.push(message.replace(&format!("`o{i}-in`"), "`NAME-in`"));
        }
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "the answers differ: {messages:#?}");

    // A link out of the root matches no file (as a missing file under the root does): 400.
    // A directory reached through a link is not named as one either.
    for path in
        [root.join("link.jsonl"), root.join("linkdir/secret.jsonl"), root.join("none.jsonl"), root.join("linkdir")]
    {
        let (status, body) = server.call("POST", "/v1/jobs", Some(&job("l", &path.to_string_lossy())));
        assert_eq!(status, 400, "{}: {body}", path.display());
        assert!(body["error"].as_str().is_some_and(|e| e.contains("no file matches")), "{body}");
    }

    // A glob under the root reads the file inside; the links are reported, not read.
    let id = server.submit(&job("g", &format!("{root_s}/*.jsonl")));
    let want = vec![json!({ "n": 40 })];
    assert_eq!(server.sql_until("SELECT count(*) AS n FROM knowledge_events", &want), want);
    let not_read = "not read: it does not resolve to a file under the server's file roots (files.roots)";
    let want_errors = [
        json!({ "location": format!("{root_s}/dangling.jsonl"), "error": not_read }),
        json!({ "location": format!("{root_s}/link.jsonl"), "error": not_read }),
    ];
    let query = "SELECT location, error FROM ingest_errors WHERE source = 'g-in' ORDER BY location";
    assert_eq!(server.sql_until(query, &want_errors), want_errors);
    let raw = server.sql("SELECT raw FROM ingest_errors");
    assert!(!Value::Array(raw).to_string().contains(SECRET));

    // A directory linked from the root: its entries are neither read nor named.
    let linked =
        job("d", &format!("{root_s}/*/*.jsonl")).replace("[sources.options]", "follow = true\n[sources.options]");
    let linked_id = server.submit(&linked);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (_, status) = server.call("GET", &format!("/v1/jobs/{linked_id}"), None);
        if status["source_stats"][0]["progress"]["caught_up"] == json!(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = server.sql("SELECT location FROM ingest_errors WHERE source = 'd-in'");
    assert_eq!(seen, Vec::<Value>::new());
    assert_eq!(server.call("GET", &format!("/v1/jobs/{id}"), None).0, 200);

    // No roots configured: every file source is refused, and the answer names the setting.
    let closed = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let (status, body) = closed.call("POST", "/v1/jobs", Some(&job("c", &root.join("in.jsonl").to_string_lossy())));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("[files] roots")), "{body}");
}

/// Sends one raw HTTP/1.1 request (the exact headers given, nothing added) and returns the
/// status and the body.
fn raw_request(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A web page cannot drive the server: every route refuses a foreign `Host` (DNS rebinding)
/// and a foreign `Origin` with 403, and bodies without their documented content type (the
/// CORS-safelisted ones a page can send without asking) with 415; same-origin pages and
/// clients that send no `Origin` are answered. A non-loopback listen address is refused at
/// start-up.
/// Plain HTTP bounds its waits as HTTPS does: a connection that sends nothing, or stops in
/// the middle of its first request's head, is closed (within FIRST_REQUEST_TIMEOUT, 10 s;
/// waited for up to 90 s), and a request whose body stops coming is answered 408 (after
/// BODY_READ_TIMEOUT, 10 s), so idle and slowloris clients cannot hold the server's
/// connections; a whole request on another connection is answered meanwhile.
#[test]
fn idle_and_slow_plain_http_connections_are_closed() {
    use std::io::{Read, Write};
    let server = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let address = server.base.trim_start_matches("http://").to_owned();
    let idle = std::net::TcpStream::connect(&address).expect("connects");
    let mut slow = std::net::TcpStream::connect(&address).expect("connects");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").expect("half a head");
    // A whole head announcing 100 bytes of body, then one byte, then nothing.
    let mut stalled = std::net::TcpStream::connect(&address).expect("connects");
    stalled
        .write_all(
            b"POST /v1/ingest/1/in HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .expect("a head and a byte");
    let (status, _) = server.call("GET", "/healthz", None);
    assert_eq!(status, 200);
    for (what, mut socket) in [("idle", idle), ("slow", slow), ("stalled", stalled)] {
        socket.set_read_timeout(Some(Duration::from_secs(90))).expect("a timeout");
        let mut buffer = [0_u8; 256];
        let read = socket.read(&mut buffer);
        // Closed: end of stream, or a reset; never a timeout (the connection left open).
        let closed = match &read {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        };
        let sent = match &read {
            Ok(n) => String::from_utf8_lossy(&buffer[..*n]).into_owned(),
            Err(e) => e.to_string(),
        };
        // (hyper may answer the cut-off head with 408 before it closes; the stalled body is
        // answered 408 after BODY_READ_TIMEOUT, 10 s.)
        assert!(closed || sent.starts_with("HTTP/1.1 408"), "the {what} connection: {sent}");
    }
}

#[test]
fn browsers_and_foreign_hosts_are_refused() {
    let server = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let job = push_job("web", "web-in", "web_v", "SELECT count(*) AS n FROM knowledge_events");
    let id = server.submit(&job);
    let local = server.base.trim_start_matches("http://").to_owned();
    let routes: Vec<(&str, String, &str, &str)> = vec![
        ("GET", "/healthz".into(), "", ""),
        ("GET", "/readyz".into(), "", ""),
        ("GET", "/v1/openapi.json".into(), "", ""),
        ("GET", "/v1/catalog".into(), "", ""),
        ("GET", "/v1/jobs".into(), "", ""),
        ("GET", format!("/v1/jobs/{id}"), "", ""),
        ("POST", "/v1/jobs".into(), "application/toml", "name = \"x\""),
        ("POST", "/v1/sql".into(), "application/json", r#"{"sql": "SELECT 1"}"#),
        ("POST", format!("/v1/ingest/{id}/web-in"), "application/x-ndjson", "{}"),
        ("GET", "/v1/subscribe?view=web_v".into(), "", ""),
        ("DELETE", "/v1/jobs/999".into(), "", ""),
        ("GET", "/no/such/route".into(), "", ""),
    ];
    for (method, path, content_type, body) in &routes {
        let with = |extra: &[(&str, &str)]| {
            let mut headers: Vec<(&str, &str)> = extra.to_vec();
            if !content_type.is_empty() {
                headers.push(("Content-Type", content_type));
            }
            raw_request(&server.base, method, path, &headers, body)
        };
        // A second Host, or a second Origin, is checked as well as the first.
        let (status, answer) = with(&[("Host", &local), ("Host", "attacker.example")]);
        assert!(status == 403 && answer.contains("http.allowed_hosts"), "{method} {path} two Hosts: {status} {answer}");
        let (status, answer) =
            with(&[("Host", &local), ("Origin", &server.base), ("Origin", "http://attacker.example")]);
        assert!(
            status == 403 && answer.contains("http.allowed_origins"),
            "{method} {path} two Origins: {status} {answer}"
        );
        let (status, answer) = with(&[("Host", "attacker.example:6876")]);
        assert!(
            status == 403 && answer.contains("http.allowed_hosts"),
            "{method} {path} foreign Host: {status} {answer}"
        );
        for origin in ["http://attacker.example", "null"] {
            let (status, answer) = with(&[("Host", &local), ("Origin", origin)]);
            assert!(
                status == 403 && answer.contains("http.allowed_origins"),
                "{method} {path} Origin {origin}: {status} {answer}"
            );
        }
        // The server's own origin is allowed: whatever the route answers, it is not the guard's 403.
        let (status, answer) = with(&[("Host", &local), ("Origin", &server.base)]);
        assert!(status != 403 && status != 415, "{method} {path} same origin: {status} {answer}");
    }
    // An absolute-form request URI names its host too.
    let (status, answer) = raw_request(&server.base, "GET", "http://attacker.example/v1/jobs", &[("Host", &local)], "");
    assert!(status == 403 && answer.contains("http.allowed_hosts"), "absolute-form URI: {status} {answer}");
    // Bodies a page can send without a preflight, or none at all: 415, and nothing happens.
    let before = server.sql("SELECT count(*) AS n FROM knowledge_events");
    for (path, body) in [
        ("/v1/jobs".to_owned(), push_job("simple", "simple-in", "simple_v", "SELECT 1 AS x")),
        ("/v1/sql".to_owned(), r#"{"sql": "CREATE MATERIALIZED VIEW simple_w AS SELECT 1 AS x"}"#.to_owned()),
        (format!("/v1/ingest/{id}/web-in"), r#"{"c": "s", "id": "d", "v": 1, "size": 1, "t": 1}"#.to_owned()),
    ] {
        for content_type in
            [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data"), None]
        {
            let mut headers = vec![("Host", local.as_str())];
            if let Some(t) = content_type {
                headers.push(("Content-Type", t));
            }
            let (status, answer) = raw_request(&server.base, "POST", &path, &headers, &body);
            assert!(status == 415 && answer.contains("Content-Type"), "{path} as {content_type:?}: {status} {answer}");
        }
    }
    let (_, jobs) = server.call("GET", "/v1/jobs", None);
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(server.call("GET", "/v1/subscribe?view=simple_w", None).0, 404);
    assert_eq!(server.sql("SELECT count(*) AS n FROM knowledge_events"), before);
    // SQL as application/sql is documented and answered.
    let (status, answer) = raw_request(
        &server.base,
        "POST",
        "/v1/sql",
        &[("Host", &local), ("Content-Type", "application/sql; charset=utf-8")],
        "SELECT 41 + 1 AS x",
    );
    assert!(status == 200 && answer.contains("42"), "{status} {answer}");

    // Listening beyond loopback needs authentication, which the server does not have yet.
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
            .args(["serve", "--http", listen])
            .env_remove("AIMATRIX__HTTP__LISTEN")
            .env("AIMATRIX__PGWIRE__LISTEN", "")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("http.listen") && stderr.contains("loopback"), "{stderr}");
        // pgwire too.
        let out = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
            .args(["serve", "--http", "127.0.0.1:0", "--pgwire", listen])
            .env_remove("AIMATRIX__HTTP__LISTEN")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("pgwire.listen") && stderr.contains("loopback"), "{stderr}");
    }
}

/// Peak resident memory of a process, in bytes (`VmHWM` of `/proc/PID/status`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("a number") * 1024
}

/// One query cannot take the server's memory: an answer past `sql.max_result_rows` or
/// `sql.max_result_bytes` fails naming the limit (the server stays small), and an operator
/// past `sql.query_memory_bytes` fails naming that; what is within the limits is answered.
#[test]
fn a_query_is_held_to_the_memory_and_answer_limits() {
    let server = start_with_env(
        &["--http".into(), "127.0.0.1:0".into()],
        true,
        &[
            ("AIMATRIX__SQL__MAX_RESULT_ROWS", "100000"),
            ("AIMATRIX__SQL__MAX_RESULT_BYTES", "8000000"),
            ("AIMATRIX__SQL__QUERY_MEMORY_BYTES", "4000000"),
        ],
    );
    let limited = |sql: &str, setting: &str| {
        let (status, body) = server.call("POST", "/v1/sql", Some(&json!({ "sql": sql }).to_string()));
        let message = body["error"].as_str().unwrap_or_default();
        assert!(status == 400 && message.contains(setting) && message.contains("raise"), "{sql}: {status} {body}");
    };
    // Without the limit this grows the server by about 1 GB/s until the kernel kills it.
    limited("SELECT * FROM generate_series(1, 100000000000)", "sql.max_result_rows");
    // 8 columns of text: 60,000 rows pass the byte limit before the row limit.
    limited(
        "SELECT v, 'a fairly long text value to fill the answer up' AS a, 'another one of those' AS b, \
         'and one more' AS c, 'and one more' AS d, 'and one more' AS e, 'and one more' AS f, 'last' AS g \
         FROM generate_series(1, 90000) AS t(v)",
        "sql.max_result_bytes",
    );
    // A hash aggregate of 2M groups needs far more than 4 MB (the key is scrambled, so that
    // the aggregate cannot stream over generate_series's order).
    limited(
        "SELECT (v * 7919) % 2000003 AS k, count(*) AS c FROM generate_series(1, 2000000) AS t(v) \
         GROUP BY (v * 7919) % 2000003 ORDER BY c DESC, k LIMIT 1",
        "sql.query_memory_bytes",
    );
    // 3 MB of Arrow but 18 MB of JSON (a control character is escaped as \u0001): a 400.
    limited("SELECT repeat(chr(1), 3000000) AS s", "sql.max_result_bytes");
    // 3 batches of 150-byte values, 3 MB of Arrow: the first batch's 7.4 MB of JSON is sent,
    // the second passes 8 MB, and the answer is cut off there, so the client's read fails
    // instead of taking part of the answer for all of it.
    let response = server
        .agent
        .post(format!("{}/v1/sql", server.base))
        .header("Content-Type", "application/json")
        .send(json!({ "sql": "SELECT repeat(chr(1), 150) AS s FROM generate_series(1, 20000)" }).to_string().as_bytes())
        .expect("an answer starts");
    assert_eq!(response.status().as_u16(), 200);
    let cut = response.into_body().with_config().limit(100 << 20).read_to_string();
    assert!(cut.as_ref().map_or(true, |text| serde_json::from_str::<Value>(text).is_err()), "answered whole");
    // Several batches are joined into one JSON array (8192 rows a batch), each row as computed.
    let rows = server.sql("SELECT v, v * v AS sq FROM generate_series(1, 20000) AS t(v) WHERE v % 1999 = 0");
    let want: Vec<Value> = (1..=20000i64).filter(|v| v % 1999 == 0).map(|v| json!({ "v": v, "sq": v * v })).collect();
    assert_eq!(rows, want);
    // A scalar function that makes a 1 GB value: refused before it allocates.
    limited("SELECT length(repeat('x', 1000000000)) AS n", "sql.query_memory_bytes");
    // Within the limits: answered, and exactly (Σ 1..n = n(n+1)/2).
    let rows = server.sql("SELECT count(*) AS n, sum(v) AS s FROM generate_series(1, 3000000) AS t(v)");
    assert_eq!(rows, vec![json!({ "n": 3_000_000, "s": 3_000_000i64 * 3_000_001 / 2 })]);
    let rows = server.sql("SELECT v FROM generate_series(1, 100000) AS t(v) WHERE v % 25000 = 0");
    assert_eq!(rows, vec![json!({"v": 25000}), json!({"v": 50000}), json!({"v": 75000}), json!({"v": 100000})]);
    // A collection read in batches cut from one: 50,000 ids of 30 characters are 1.7 MB of
    // Arrow (offsets included), within the 8 MB; counted per batch with the buffers they share,
    // they passed it (7 batches × 1.7 MB).
    let job = server.submit(&push_job("ids", "ids-in", "ids_n", "SELECT count(*) AS n FROM knowledge_events"));
    let lines: Vec<String> =
        (0..50_000).map(|i| json!({ "c": "c", "id": format!("document-{i:021}"), "size": 1 }).to_string()).collect();
    server.push(job, "ids-in", &lines);
    server.sql_until("SELECT n FROM ids_n", &[json!({ "n": 50_000 })]);
    let rows = server.sql("SELECT count(*) AS n FROM (SELECT document_id FROM knowledge_events) AS t");
    assert_eq!(rows, vec![json!({ "n": 50_000 })]);
    let (status, body) =
        server.call("POST", "/v1/sql", Some(&json!({ "sql": "SELECT document_id FROM knowledge_events" }).to_string()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(50_000));
    let peak = peak_rss(server.child.id());
    assert!(peak < 1 << 30, "the server peaked at {peak} bytes");
}

/// A query past `sql.timeout_ms` is cancelled and frees its slot at once (four of them used
/// to hold all four slots long after their 503), and so is one whose client goes away.
#[test]
fn timed_out_and_abandoned_queries_are_cancelled() {
    const HEAVY: &str = "SELECT count(*) AS n FROM generate_series(1, 20000000000)";
    let server =
        start_with_env(&["--http".into(), "127.0.0.1:0".into()], true, &[("AIMATRIX__SQL__TIMEOUT_MS", "1500")]);
    // A source that never ends, and a cross join that makes thousands of batches of each of
    // its input batches (DataFusion yields only at its sources).
    const CROSS: &str =
        "SELECT count(*) AS n FROM generate_series(1, 100000) AS a CROSS JOIN generate_series(1, 100000) AS b";
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let server = &server;
        let calls: Vec<_> = [HEAVY, CROSS, HEAVY, CROSS]
            .into_iter()
            .map(|q| scope.spawn(move || server.call("POST", "/v1/sql", Some(&json!({ "sql": q }).to_string()))))
            .collect();
        calls.into_iter().map(|c| c.join().expect("a thread")).collect()
    });
    for (status, body) in answers {
        let message = body["error"].as_str().unwrap_or_default();
        assert!(status == 503 && message.contains("sql.timeout_ms") && message.contains("cancelled"), "{body}");
    }
    // The slots are free: a small query is run, not refused for want of one.
    assert_eq!(server.sql("SELECT 1 AS one"), vec![json!({ "one": 1 })]);

    // Clients that go away: with a 10-minute timeout their queries would hold every slot for
    // that long, and the next query would wait for one.
    let patient =
        start_with_env(&["--http".into(), "127.0.0.1:0".into()], true, &[("AIMATRIX__SQL__TIMEOUT_MS", "600000")]);
    let address = patient.base.trim_start_matches("http://").to_owned();
    for i in 0..6 {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        let body = json!({ "sql": if i % 2 == 0 { HEAVY } else { CROSS } }).to_string();
        let request = format!(
            "POST /v1/sql HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        std::thread::sleep(Duration::from_millis(300));
        drop(stream);
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build(),
    );
    let answer = agent
        .post(format!("{}/v1/sql", patient.base))
        .header("Content-Type", "application/json")
        .send(json!({ "sql": "SELECT 2 AS two" }).to_string().as_bytes())
        .expect("answered while the abandoned queries would still run");
    assert_eq!(answer.status().as_u16(), 200);
}

/// `n` knowledge records with distinct documents (`doc-{first}`…), as the push jobs map them.
fn distinct_records(first: usize, n: usize) -> Vec<String> {
    (first..first + n)
        .map(|i| json!({ "c": "s", "id": format!("doc-{i}"), "v": 1, "size": i, "t": 1 }).to_string())
        .collect()
}

/// A large snapshot arrives in messages of at most 10,000 rows (the last marked), which fold
/// into the view; a subscriber that stops reading is cut off once it is more than
/// `subscribe.max_queued_rows` changes (or `subscribe.max_queued_bytes` of them) behind
/// (counted in the job's status), instead of growing the server, and a new subscription works.
#[test]
fn subscriptions_are_chunked_and_slow_subscribers_are_cut_off() {
    slow_subscriber_cut_off(("AIMATRIX__SUBSCRIBE__MAX_QUEUED_ROWS", "2000"));
}

/// As above, the bound in bytes (about 110 bytes a change here: 2,000 changes).
#[test]
fn slow_subscribers_are_cut_off_by_bytes_too() {
    slow_subscriber_cut_off(("AIMATRIX__SUBSCRIBE__MAX_QUEUED_BYTES", "220000"));
}

fn slow_subscriber_cut_off(bound: (&str, &str)) {
    let server = start_with_env(&["--http".into(), "127.0.0.1:0".into()], true, &[bound]);
    let job = push_job("subs", "subs-in", "all_docs", "SELECT document_id, size_bytes FROM knowledge_events");
    let id = server.submit(&job);
    for first in (0..25_000).step_by(5_000) {
        server.push(id, "subs-in", &distinct_records(first, 5_000));
    }
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let url = format!("ws://127.0.0.1:{port}/v1/subscribe?view=all_docs");

    // The snapshot: 25,000 rows in 3 messages, sizes summing to Σ 0..25,000.
    let (mut socket, _) = tungstenite::connect(&url).expect("subscribe");
    let (mut messages, mut rows, mut sum) = (Vec::new(), 0, 0i64);
    loop {
        let tungstenite::Message::Text(text) = socket.read().expect("a message") else { continue };
        let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
        assert_eq!(v["type"], "snapshot", "{v}");
        let part = v["rows"].as_array().expect("rows");
        messages.push(part.len());
        rows += part.len();
        sum += part.iter().map(|r| r["row"]["size_bytes"].as_i64().expect("size")).sum::<i64>();
        if v["last"] == json!(true) {
            break;
        }
    }
    assert!(messages.iter().all(|n| *n <= 10_000), "{messages:?}");
    assert_eq!((rows, sum), (25_000, 25_000 * 24_999 / 2));

    // Now the subscriber reads nothing while 120,000 changes arrive.
    for first in (25_000..145_000).step_by(10_000) {
        server.push(id, "subs-in", &distinct_records(first, 10_000));
    }
    let closed =
        || server.call("GET", &format!("/v1/jobs/{id}"), None).1["view_stats"][0]["slow_subscribers_closed"].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while closed() != json!(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(closed(), json!(1));
    // Reading again: what was in flight, then the end of the connection (with a 1013 close
    // frame when it fitted in the buffers).
    read_timeout(&mut socket);
    let mut updates = 0;
    let end = loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(_)) => updates += 1,
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| (u16::from(f.code), f.reason.to_string())),
            Ok(_) => {}
            Err(e) => {
                assert!(
                    !matches!(&e, tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock),
                    "{e}"
                );
                break None;
            }
        }
    };
    assert!(updates < 120_000, "every change was delivered: the subscriber was not cut off");
    if let Some((code, reason)) = end {
        assert!(code == 1013 && reason.contains("subscribe.max_queued_rows"), "{code} {reason}");
    }
    // Subscribing again gets the whole view.
    let (mut again, _) = tungstenite::connect(&url).expect("subscribe again");
    read_timeout(&mut again);
    let mut state = HashMap::new();
    let mut snapshot_rows = 0;
    while snapshot_rows < 145_000 {
        let before = state.len();
        fold_subscription(&mut again, &mut state);
        snapshot_rows += state.len() - before;
    }
    assert_eq!(state.len(), 145_000);
}

/// A subscription's snapshot is read from the arrangements as the client takes it: a client
/// that reads one message and then nothing for a while leaves the server a few parts (of about
/// 1 MiB) bigger, not the size of the view; once it reads on, it gets every row once.
#[test]
fn a_subscription_snapshot_is_read_as_the_client_takes_it() {
    let server = start(&["--http", "127.0.0.1:0", "--workers", "2"].map(String::from), true);
    let job = push_job("big", "big-in", "big_docs", "SELECT document_id, size_bytes FROM knowledge_events");
    let id = server.submit(&job);
    // 80,000 rows of about 1 KB: an 80 MB view.
    let pad = "x".repeat(1_000);
    let (n, per_push) = (80_000usize, 2_000usize);
    for first in (0..n).step_by(per_push) {
        let records: Vec<String> = (first..first + per_push)
            .map(|i| json!({ "c": "s", "id": format!("doc-{i}-{pad}"), "v": 1, "size": i, "t": 1 }).to_string())
            .collect();
        server.push(id, "big-in", &records);
    }
    let want = vec![json!({ "n": n })];
    assert_eq!(server.sql_until("SELECT count(*) AS n FROM big_docs", &want), want);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS").to_owned();
        line.split_whitespace().nth(1).expect("kB").parse::<u64>().expect("a number") * 1024
    };
    let before = rss();

    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let (mut socket, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=big_docs")).expect("subscribe");
    read_timeout(&mut socket);
    let (mut rows, mut sum, mut seen) = (0usize, 0i64, std::collections::HashSet::new());
    let mut read = |socket: &mut tungstenite::WebSocket<_>| -> bool {
        let tungstenite::Message::Text(text) = socket.read().expect("a message") else { return false };
        let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
        assert_eq!(v["type"], "snapshot", "the snapshot comes first");
        for r in v["rows"].as_array().expect("rows") {
            assert_eq!(r["diff"], json!(1), "{r}");
            let size = r["row"]["size_bytes"].as_i64().expect("size");
            assert!(seen.insert(size), "row {size} sent twice");
            sum += size;
            rows += 1;
        }
        v["last"] == json!(true)
    };
    let mut last = read(&mut socket);
    // The client reads nothing for 3 s; a server that built the whole snapshot would now hold
    // it (80 MB and more).
    std::thread::sleep(Duration::from_secs(3));
    let grown = rss().saturating_sub(before);
    eprintln!("server RSS {} MiB, +{} MiB with the subscriber not reading", before >> 20, grown >> 20);
    assert!(grown < 32 << 20, "the server grew by {} MiB while the subscriber read nothing", grown >> 20);
    while !last {
        last = read(&mut socket);
    }
    assert_eq!((rows, sum), (n, (n * (n - 1) / 2) as i64));
}

/// Reads on `socket` fail after 60 s instead of waiting for ever.
fn read_timeout(socket: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>) {
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_mut() {
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("a read timeout");
    }
}

/// `aimatrix job submit` resolves a job file's relative paths against the job file's own
/// directory, wherever the client and the server run (`..` included).
#[test]
fn job_submit_resolves_relative_paths_in_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("jobs")).expect("jobs");
    std::fs::create_dir_all(dir.path().join("data")).expect("data");
    let records = records("rel", 0);
    std::fs::write(dir.path().join("data/events.jsonl"), lines(&records).join("\n") + "\n").expect("data");
    let job = push_job("rel", "rel-in", "rel_v", "SELECT count(*) AS n FROM knowledge_events")
        .replace("kind = \"push\"", "path = \"../data/*.jsonl\"");
    std::fs::write(dir.path().join("jobs/job.toml"), job).expect("job");
    let root = dir.path().to_string_lossy().into_owned();
    let server = start(&["--http", "127.0.0.1:0", "--file-root", &root].map(String::from), true);
    let out = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .args(["job", "submit", "--wait", "jobs/job.toml", "--server", &server.base])
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = vec![json!({ "n": records.len() })];
    assert_eq!(server.sql_until("SELECT * FROM rel_v", &want), want);
}

/// Losing a process of the cluster is an expected failure: the survivor says which process it
/// lost (and its address), closes its subscriptions with code 1012 and a reason, and exits with
/// code 75 for an orchestrator to restart the cluster; not "internal error" and code 70.
#[test]
fn losing_a_cluster_process_is_reported_and_exits_75() {
    for killed in [1usize, 0] {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts");
        let ports = [common::free_port(), common::free_port()];
        std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("hosts");
        let args = |i: usize| -> Vec<String> {
            let mut args: Vec<String> =
                ["--processes", "2", "--process-index", &i.to_string(), "--hosts", &hosts.to_string_lossy()]
                    .map(String::from)
                    .to_vec();
            if i == 0 {
                args.extend(["--http".into(), "127.0.0.1:0".into()]);
            }
            args
        };
        let mut p1 = start(&args(1), false);
        let mut p0 = start(&args(0), true);
        let id = p0.submit(&push_job("lose", "lose-in", "lose_v", "SELECT document_id FROM knowledge_events"));
        p0.push(id, "lose-in", &distinct_records(0, 10));
        let port = p0.base.rsplit(':').next().expect("port").to_owned();
        let (mut socket, _) =
            tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=lose_v")).expect("subscribe");
        read_timeout(&mut socket);
        let mut state = HashMap::new();
        while state.len() < 10 {
            fold_subscription(&mut socket, &mut state);
        }
        let (victim, survivor) = if killed == 1 { (&mut p1, &mut p0) } else { (&mut p0, &mut p1) };
        victim.child.kill().expect("kill -9");
        let status = survivor.child.wait().expect("the survivor exits");
        assert_eq!(status.code(), Some(75), "killed process {killed}");
        let said: Vec<String> = survivor.stderr.lock().expect("stderr").iter().collect();
        let want = format!("lost the connection to cluster process {killed} at 127.0.0.1:{}", ports[killed]);
        assert!(said.iter().any(|l| l.contains(&want)), "{said:#?}");
        assert!(!said.iter().any(|l| l.contains("internal error")), "{said:#?}");
        if killed == 1 {
            // The subscriber is told why, with a close frame.
            let close = loop {
                match socket.read() {
                    Ok(tungstenite::Message::Close(frame)) => break frame,
                    Ok(_) => {}
                    Err(e) => panic!("no close frame: {e}"),
                }
            };
            let frame = close.expect("a close frame with a code");
            assert_eq!(u16::from(frame.code), 1012);
            assert!(frame.reason.contains("lost cluster process 1"), "{}", frame.reason);
        }
    }
}

/// A huge line past the record limit is rejected without being copied to every worker: the
/// server grows by little more than the body itself (it grew by 6.5× a 200 MB line).
#[test]
fn a_huge_line_is_rejected_without_copies() {
    let server = start_with_env(
        &["--http".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()],
        true,
        &[("AIMATRIX__CLUSTER__MAX_RECORD_BYTES", "1000000")],
    );
    let job =
        server.submit(&push_job("huge", "in", "huge_sizes", "SELECT collection, size_bytes FROM knowledge_events"));
    server.push(job, "in", &[r#"{"c": "h", "id": "d0", "size": 1, "v": 1, "t": 1}"#.to_owned()]);
    let before = peak_rss(server.child.id());
    const SIZE: usize = 120 << 20;
    let mut huge = String::with_capacity(SIZE + 100);
    huge.push_str(r#"{"c": "h", "id": "d1", "size": 2, "v": 1, "t": 1, "pad": ""#);
    huge.extend(std::iter::repeat_n('x', SIZE));
    huge.push_str("\"}");
    let body = [r#"{"c": "h", "id": "d2", "size": 3, "v": 1, "t": 1}"#.to_owned(), huge.clone()];
    let report = server.push(job, "in", &body);
    assert_eq!((report["accepted"].as_u64(), report["rejected"].as_u64()), (Some(1), Some(1)), "{report}");
    let reason = report["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("record of {} bytes exceeds", huge.len())), "{reason}");
    let raw = server.sql("SELECT location, octet_length(raw) AS raw_bytes FROM ingest_errors");
    assert_eq!(raw, vec![json!({ "location": format!("POST /v1/ingest/{job}/in:2"), "raw_bytes": 1024 })]);
    let grown = peak_rss(server.child.id()).saturating_sub(before);
    eprintln!("the server grew by {grown} bytes for a {SIZE}-byte line");
    assert!(grown < 3 * SIZE as u64, "the server grew by {grown} bytes for a {SIZE}-byte line");
    let sizes = server.sql("SELECT size_bytes FROM huge_sizes ORDER BY size_bytes");
    assert_eq!(sizes, vec![json!({ "size_bytes": 1 }), json!({ "size_bytes": 3 })]);
}

/// Pushes `lines` with an `Idempotency-Key`; `None` when the server gave no answer (it died).
fn push_keyed(server: &Server, job: u64, source: &str, key: &str, lines: &[String]) -> Option<Value> {
    let (status, body) = try_push_keyed(server, job, source, key, lines)?;
    assert_eq!(status, 200, "{body}");
    Some(body)
}

/// The durable-state promise under `kill -9`: a server with a push source and a followed file
/// source, a job view and a SQL view over both, is killed at random moments while a client
/// pushes (with `Idempotency-Key`s) and lines are appended to the file, and restarted on the
/// same data directory each time; pushes that got no answer are sent again with the same key.
/// At the end every view equals what the acknowledged pushes and the file's lines make,
/// computed here: nothing lost, nothing twice. A second server on the same directory is
/// refused. Each restart replays the log with at most 40 records per worker not yet through
/// the dataflows (`storage.restart_rows_ahead`), so that it waits for them again and again.
#[test]
fn kill_9_and_restart_loses_nothing_acknowledged() {
    kill_9_rounds(&[("AIMATRIX__STORAGE__RESTART_ROWS_AHEAD", "40")]);
}

/// The same with the log compacted into a snapshot whenever it has grown at all (checked 4
/// times a second), so that the kills land before, during and after snapshots and log
/// rewrites: still nothing lost, nothing twice, and the restarts restore a snapshot (in
/// rounds of 50 rows per worker, each at a timestamp of its own).
#[test]
fn kill_9_with_log_compaction_loses_nothing_acknowledged() {
    let data = kill_9_rounds(&[
        ("AIMATRIX__STORAGE__COMPACT_AFTER_BYTES", "1"),
        ("AIMATRIX__STORAGE__RESTART_ROWS_AHEAD", "50"),
    ]);
    let snapshots: Vec<String> = std::fs::read_dir(data.path().join("data/snapshots"))
        .expect("a snapshot was taken")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(snapshots.iter().any(|n| n.parse::<u64>().is_ok()), "{snapshots:?}");
}

/// [`kill_9_and_restart_loses_nothing_acknowledged`]'s rounds, with `env` set for every
/// server; returns the directory (of `data` and `files`).
fn kill_9_rounds(env: &[(&str, &str)]) -> tempfile::TempDir {
    let start = |args: &[String], controller: bool| start_with_env(args, controller, env);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files");
    let file = files.join("events.jsonl");
    std::fs::write(&file, "").expect("file");
    let args: Vec<String> = ["--http", "127.0.0.1:0", "--workers", "2", "--data-dir", &data.to_string_lossy()]
        .into_iter()
        .chain(["--file-root", &files.to_string_lossy()])
        .map(String::from)
        .collect();
    let job = push_job("durable", "pushed", "by_collection", "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection")
        .replace("[views]", &format!(
            "[[sources]]\nname = \"appended\"\nformat = \"json\"\npath = \"{}\"\nfollow = true\n[sources.options]\nrelation = \"knowledge_events\"\n[sources.options.mapping]\ncollection = \"/c\"\ndocument_id = \"/id\"\nop = {{ const = \"upsert\" }}\nversion = \"/v\"\nsize_bytes = \"/size\"\nevent_time = {{ pointer = \"/t\", unit = \"s\" }}\n\n[views]",
            file.display()
        ));

    // What was acknowledged (pushed) and written (to the file): (count, sum of sizes).
    let (mut pushed, mut appended) = ((0i64, 0i64), (0i64, 0i64));
    // Acknowledged records of size ≥ 50 (the SQL view's rows).
    let mut big = 0i64;
    let mut id = None;
    let mut pending: Option<(String, Vec<String>, i64, i64)> = None;
    // A push of `n` records has sizes 0, 10, …, 10 (n − 1): n − 5 of them ≥ 50.
    let big_of = |n: i64| (n - 5).max(0);
    let (mut batch, mut line) = (0usize, 0usize);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for round in 0..12 {
        let server = start(&args, true);
        if round == 0 {
            id = Some(server.submit(&job));
            let (status, body) = server.call(
                "POST",
                "/v1/sql",
                Some(&json!({ "sql": "CREATE MATERIALIZED VIEW big AS SELECT document_id, size_bytes FROM knowledge_events WHERE size_bytes >= 50" }).to_string()),
            );
            assert_eq!(status, 200, "{body}");
        } else if round == 1 {
            let second = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
                .arg("serve")
                .args(&args)
                .env("AIMATRIX__PGWIRE__LISTEN", "")
                .output()
                .expect("runs");
            let stderr = String::from_utf8_lossy(&second.stderr);
            assert!(!second.status.success() && stderr.contains("in use by another aimatrix server"), "{stderr}");
        }
        let id = id.expect("the job");
        // The push that got no answer, again with its key.
        if let Some((key, lines, n, sum)) = pending.take() {
            push_keyed(&server, id, "pushed", &key, &lines).expect("the retry is answered");
            pushed = (pushed.0 + n, pushed.1 + sum);
            big += big_of(n);
        }
        let pid = server.child.id();
        let delay = Duration::from_millis(200 + random(1200));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        loop {
            // A few lines appended to the file…
            let mut text = String::new();
            for _ in 0..1 + random(5) {
                let size = (line % 100) as i64;
                text += &json!({ "c": "f", "id": format!("f{line}"), "v": 1, "size": size, "t": 1 }).to_string();
                text += "\n";
                appended = (appended.0 + 1, appended.1 + size);
                big += i64::from(size >= 50);
                line += 1;
            }
            std::io::Write::write_all(
                &mut std::fs::OpenOptions::new().append(true).open(&file).expect("append"),
                text.as_bytes(),
            )
            .expect("append");
            // …and a push of a few records.
            let n = 1 + random(20) as usize;
            let lines: Vec<String> = (0..n)
                .map(|i| json!({ "c": "p", "id": format!("p{batch}-{i}"), "v": 1, "size": i * 10, "t": 1 }).to_string())
                .collect();
            let sum: i64 = (0..n as i64).map(|i| i * 10).sum();
            let key = format!("batch-{batch}");
            batch += 1;
            match push_keyed(&server, id, "pushed", &key, &lines) {
                Some(_) => {
                    pushed = (pushed.0 + n as i64, pushed.1 + sum);
                    big += big_of(n as i64);
                }
                None => {
                    pending = Some((key, lines, n as i64, sum));
                    break;
                }
            }
        }
        killer.join().expect("killer");
    }

    let server = start(&args, true);
    let id = id.expect("the job");
    if let Some((key, lines, n, sum)) = pending.take() {
        push_keyed(&server, id, "pushed", &key, &lines).expect("the retry is answered");
        pushed = (pushed.0 + n, pushed.1 + sum);
        big += big_of(n);
    }
    assert!(pushed.0 > 0 && appended.0 > 0);
    let want = vec![
        json!({ "collection": "f", "n": appended.0, "bytes": appended.1 }),
        json!({ "collection": "p", "n": pushed.0, "bytes": pushed.1 }),
    ];
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    assert_eq!(server.sql_until(sql, &want), want);
    // The SQL view, against the same records counted here: sizes of at least 50.
    let want = vec![json!({ "n": big })];
    assert_eq!(server.sql_until("SELECT count(*) AS n FROM big", &want), want);
    drop(server);
    dir
}

/// A job file whose source reads `path` (JSON lines of knowledge events `{"c", "id", "size"}`)
/// into `knowledge_events`, with a view counting them by collection.
fn file_job(name: &str, source: &str, path: &str, follow: bool, view: &str) -> String {
    format!(
        r#"name = "{name}"
[[sources]]
name = "{source}"
format = "json"
path = "{path}"
follow = {follow}
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/c"
document_id = "/id"
op = {{ const = "upsert" }}
version = {{ const = 1 }}
size_bytes = "/size"
event_time = {{ const = 0 }}

[views]
{view} = "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection"
"#
    )
}

/// `n` knowledge events of collection `c` as JSON lines, sizes `first`, `first + 1`, ….
fn event_lines(c: &str, first: i64, n: i64) -> String {
    (first..first + n).map(|i| format!("{}\n", json!({ "c": c, "id": format!("{c}{i}"), "size": i }))).collect()
}

/// Without a data directory, 3 workers split a file source by pieces (of 256 bytes here: the
/// file's 300 lines of about 40 bytes make 47 of them): the view counts every line once, and
/// the job's backfill is the workers' shares summed — the file's 300 records and its bytes.
#[test]
fn a_file_source_split_over_workers_is_counted_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = event_lines("s", 0, 300);
    std::fs::write(dir.path().join("s.jsonl"), &text).expect("write");
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--workers", "3", "--file-root", &dir.path().display().to_string()]
            .map(String::from)
            .into();
    let server = start_with_env(&args, true, &[("AIMATRIX__CLUSTER__POLL_BYTES", "256")]);
    let path = dir.path().join("s.jsonl").display().to_string();
    assert_eq!(server.submit(&file_job("split", "lines", &path, false, "split_by_c")), 1);
    // 0 + 1 + … + 299 = 44,850.
    let want = vec![json!({ "collection": "s", "n": 300, "bytes": 44_850 })];
    assert_eq!(server.sql_until("SELECT collection, n, bytes FROM split_by_c", &want), want);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.call("GET", "/v1/jobs/1", None);
        assert_eq!(status, 200, "{body}");
        let backfill = &body["backfill"];
        if body["source_stats"][0]["progress"]["caught_up"] == true && backfill["records_read"] == 300 {
            assert_eq!(backfill["bytes_read"], text.len(), "{body}");
            assert_eq!(backfill["bytes_total"], text.len(), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never counted whole: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A durable server reads file sources itself and logs what it read with its cursor in each
/// file: after `kill -9`, a file rotated to another name goes on at its cursor (its lines
/// before it are not read again, the ones appended after it are read), a deleted file's rows
/// stay, a new file is read, and a source that does not follow, read to its end, reads
/// nothing more (also what was appended to its file meanwhile). Expected counts and sums are computed here from the lines written.
#[test]
fn file_sources_resume_at_their_cursors_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, files) = (dir.path().join("data"), dir.path().join("files"));
    std::fs::create_dir_all(&files).expect("files");
    let args: Vec<String> =
        durable_args(&data).into_iter().chain(["--file-root".into(), files.display().to_string()]).collect();
    let write = |name: &str, text: &str| std::fs::write(files.join(name), text).expect("write");
    write("a.jsonl", &event_lines("a", 0, 3));
    write("b.jsonl", &event_lines("b", 0, 2));
    write("once.ndjson", &event_lines("once", 0, 4));
    let followed = file_job("followed", "tail", &files.join("*.jsonl").display().to_string(), true, "by_c");
    let once = file_job("once", "whole", &files.join("once.ndjson").display().to_string(), false, "once_by_c");
    let once = once.replace(
        "knowledge_events GROUP BY collection",
        "knowledge_events WHERE collection = 'once' GROUP BY collection",
    );
    let sql = "SELECT collection, n, bytes FROM by_c ORDER BY collection";
    let row = |c: &str, n: i64, bytes: i64| json!({ "collection": c, "n": n, "bytes": bytes });
    {
        let server = start(&args, true);
        assert_eq!(server.submit(&followed), 1);
        assert_eq!(server.submit(&once), 2);
        let want = vec![row("a", 3, 3), row("b", 2, 1), row("once", 4, 6)];
        assert_eq!(server.sql_until(sql, &want), want);
        // The source that does not follow is read to its end and caught up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = server.call("GET", "/v1/jobs/2", None);
            assert_eq!(status, 200, "{body}");
            let progress = &body["source_stats"][0]["progress"];
            if progress["caught_up"] == true {
                assert_eq!(progress["done"], true, "{body}");
                assert_eq!(progress["bytes_read"], progress["bytes_total"], "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "never caught up: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its backfill, in `aimatrix_jobs` too: the 4 lines and their bytes, all read (and no
        // rate once read: nothing is being read, and an average would only fall).
        let bytes = event_lines("once", 0, 4).len();
        let backfill = "SELECT records_read, bytes_read, bytes_total, hydration, rate_bytes_per_s, eta_ms FROM aimatrix_jobs WHERE id = 2";
        let want = json!({ "records_read": 4, "bytes_read": bytes, "bytes_total": bytes, "hydration": 1.0, "eta_ms": 0,
                    "rate_bytes_per_s": null });
        assert_eq!(server.sql(backfill), vec![want]);
        let (_, body) = server.call("GET", "/v1/jobs/2", None);
        assert_eq!(body["backfill"]["bytes_read"], bytes, "{body}");
        assert_eq!(body["backfill"]["records_read"], 4, "{body}");
        // The server reads the files: they take no pushes.
        let (status, body) = server.call("POST", "/v1/ingest/1/tail", Some("{}"));
        assert_eq!(status, 409, "{body}");
        // `kill -9` (Server's drop).
    }
    // While it is down: a line appended to a.jsonl, which is then rotated to a-1.jsonl; b.jsonl
    // deleted; c.jsonl written; lines appended to the file the finished source read (it read
    // to its end: nothing more, also after a restart).
    let mut a = std::fs::OpenOptions::new().append(true).open(files.join("a.jsonl")).expect("a");
    std::io::Write::write_all(&mut a, event_lines("a", 3, 1).as_bytes()).expect("append");
    std::fs::rename(files.join("a.jsonl"), files.join("a-1.jsonl")).expect("rotate");
    std::fs::remove_file(files.join("b.jsonl")).expect("delete");
    let mut once = std::fs::OpenOptions::new().append(true).open(files.join("once.ndjson")).expect("once");
    std::io::Write::write_all(&mut once, event_lines("once", 4, 2).as_bytes()).expect("append");
    write("c.jsonl", &event_lines("c", 10, 2));
    let server = start(&args, true);
    let want = vec![row("a", 4, 6), row("b", 2, 1), row("c", 2, 21), row("once", 4, 6)];
    assert_eq!(server.sql_until(sql, &want), want);
    assert_eq!(server.sql("SELECT n FROM once_by_c"), vec![json!({ "n": 4 })]);
    // Appended after the restart, under the rotated name: read once.
    let mut a = std::fs::OpenOptions::new().append(true).open(files.join("a-1.jsonl")).expect("a-1");
    std::io::Write::write_all(&mut a, event_lines("a", 4, 2).as_bytes()).expect("append");
    let want = vec![row("a", 6, 15), row("b", 2, 1), row("c", 2, 21), row("once", 4, 6)];
    assert_eq!(server.sql_until(sql, &want), want);
    assert_eq!(server.sql("SELECT count(*) AS n FROM ingest_errors"), vec![json!({ "n": 0 })]);
}

/// A restart on a data directory brings back jobs (with their ids and states), views created
/// in SQL, pushes, and a cancellation with `retract` (its records stay retracted); new jobs get
/// new ids.
#[test]
fn restart_replays_jobs_views_and_retractions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--data-dir", &dir.path().to_string_lossy()].map(String::from).to_vec();
    let sql = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let a = push_job("a", "a-in", "a_view", sql).replacen("name = \"a\"\n", "name = \"a\"\nretractable = true\n", 1);
    let b = push_job("b", "b-in", "b_view", sql);
    {
        let server = start(&args, true);
        assert_eq!(server.submit(&a), 1);
        assert_eq!(server.submit(&b), 2);
        server.push(1, "a-in", &distinct_records(0, 3).iter().map(|r| r.replace("\"s\"", "\"a\"")).collect::<Vec<_>>());
        server.push(
            2,
            "b-in",
            &distinct_records(10, 2).iter().map(|r| r.replace("\"s\"", "\"b\"")).collect::<Vec<_>>(),
        );
        let (status, body) = server.call("DELETE", "/v1/jobs/1?retract=true", None);
        assert_eq!(status, 200, "{body}");
        let view = json!({ "sql": "CREATE MATERIALIZED VIEW docs AS SELECT document_id FROM knowledge_events" });
        assert_eq!(server.call("POST", "/v1/sql", Some(&view.to_string())).0, 200);
    }
    let server = start(&args, true);
    let want = vec![json!({ "collection": "b", "n": 2 })];
    assert_eq!(server.sql_until("SELECT * FROM b_view ORDER BY collection", &want), want);
    assert_eq!(server.sql("SELECT count(*) AS n FROM docs"), vec![json!({ "n": 2 })]);
    assert_eq!(server.call("GET", "/v1/jobs/1", None).1["state"], "cancelled");
    assert_eq!(server.call("GET", "/v1/jobs/2", None).1["state"], "running");
    let c = push_job("c", "c-in", "c_view", sql);
    assert_eq!(server.submit(&c), 4, "ids 1–3 are taken (3: the view)");
    // A key is applied once; reused for another body it is refused.
    let records = distinct_records(20, 2);
    let first = push_keyed(&server, 4, "c-in", "k1", &records).expect("answered");
    assert_eq!(push_keyed(&server, 4, "c-in", "k1", &records).expect("answered"), first);
    let url = format!("{}/v1/ingest/4/c-in", server.base);
    let other = server.agent.post(&url).header("Content-Type", "application/x-ndjson").header("Idempotency-Key", "k1");
    let other = other.send(distinct_records(30, 1)[0].as_bytes()).expect("answered");
    assert_eq!(other.status().as_u16(), 409);
    // Two records, once (distinct_records are in collection `s`).
    assert_eq!(server.sql("SELECT n FROM c_view WHERE collection = 's'"), vec![json!({ "n": 2 })]);
}

/// A snapshot keeps what a `retractable` job ingested apart from the rest, so that after a
/// restart from it a cancellation with `retract` still takes exactly that job's records out:
/// job `a` (retractable) pushes 3 records, job `b` 25,000 (so that each of the 2 workers'
/// shares is read in several parts of at most 10,000 rows, and restored in several Parquet
/// batches), the log is compacted (a snapshot file names job 1), the server is killed and
/// restarted, `a` is cancelled with `retract`, and only `b`'s 25,000 records remain — also
/// after one more restart, which replays the cancellation after the snapshot. The snapshot is
/// restored in rounds of 1,000 rows per worker (`storage.restart_rows_ahead`). Counts and sums
/// are the records pushed here.
#[test]
fn a_snapshot_keeps_a_retractable_jobs_records_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--workers", "2", "--data-dir", &data.to_string_lossy()].map(String::from).to_vec();
    let env = [("AIMATRIX__STORAGE__COMPACT_AFTER_BYTES", "1")];
    let sql = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let a = push_job("a", "a-in", "a_view", sql).replacen("name = \"a\"\n", "name = \"a\"\nretractable = true\n", 1);
    let b = push_job("b", "b-in", "b_view", sql);
    let of = |c: &str, records: Vec<String>| -> Vec<String> {
        records.iter().map(|r| r.replace("\"s\"", &format!("\"{c}\""))).collect()
    };
    {
        let server = start_with_env(&args, true, &env);
        assert_eq!(server.submit(&a), 1);
        assert_eq!(server.submit(&b), 2);
        server.push(1, "a-in", &of("a", distinct_records(0, 3)));
        for part in 0..5 {
            server.push(2, "b-in", &of("b", distinct_records(10 + part * 5_000, 5_000)));
        }
        // A snapshot taken after both pushes: it has a file of job 1's records.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let manifests: Vec<String> = std::fs::read_dir(data.join("snapshots"))
                .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("manifest")).ok()).collect())
                .unwrap_or_default();
            if manifests.iter().any(|m| m.contains("\"job\":1") && m.contains("[\"b-in\",[25000,")) {
                break;
            }
            assert!(Instant::now() < deadline, "no snapshot with job 1's records: {manifests:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The compactions in /metrics.
        let (status, metrics) = server.call("GET", "/metrics", None);
        assert_eq!(status, 200);
        let text = metrics.as_str().unwrap_or_default().to_owned();
        let value = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse::<u64>().ok())
        };
        assert!(value("aimatrix_log_compactions_total") >= Some(1), "{text}");
        assert!(value("aimatrix_log_snapshot_generation") >= Some(1), "{text}");
        assert_eq!(value("aimatrix_log_compaction_failures_total"), Some(0), "{text}");
        assert!(value("aimatrix_log_bytes").is_some(), "{text}");
    }
    // Sizes 10 … 25,009 (distinct_records gives record i size i): their sum by hand.
    let b_bytes: i64 = (10..25_010).sum();
    let counts = "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events \
                  GROUP BY collection ORDER BY collection";
    let both = vec![
        json!({ "collection": "a", "n": 3, "bytes": 3 }),
        json!({ "collection": "b", "n": 25_000, "bytes": b_bytes }),
    ];
    let only_b = vec![json!({ "collection": "b", "n": 25_000, "bytes": b_bytes })];
    let rounds = [("AIMATRIX__STORAGE__RESTART_ROWS_AHEAD", "1000")];
    {
        let server = start_with_env(&args, true, &rounds);
        // Once it listens, the first query reads every restored row (a read at the snapshot's
        // timestamp missed the rows of parts a worker took after it had closed that time).
        assert_eq!(server.sql(counts), both);
        // 25,003 rows and the counters, 2,000 a round (1,000 for each of the 2 workers).
        let replayed = server.started.iter().find(|l| l.starts_with("serve: replayed")).expect("the replay's line");
        let n: u64 = replayed
            .split(" rounds)")
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{replayed}"));
        assert!((13..=14).contains(&n), "{replayed}");
        let (status, body) = server.call("DELETE", "/v1/jobs/1?retract=true", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(server.sql_until(counts, &only_b), only_b);
    }
    let server = start_with_env(&args, true, &rounds);
    assert_eq!(server.sql_until(counts, &only_b), only_b);
    assert_eq!(server.sql("SELECT * FROM b_view"), vec![json!({ "collection": "b", "n": 25_000 })]);
}

/// A push is applied at one timestamp on every worker (each decodes its own part of it): a
/// subscriber to a view over pushed records sees each push's changes all at the timestamp
/// the push's answer names, never an intermediate count, and nothing at any other time. The
/// expected changes are counted here from the records. Timestamps keep increasing across a
/// restart (the log keeps them).
#[test]
fn a_push_is_applied_at_one_timestamp_on_every_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ["--http", "127.0.0.1:0", "--workers", "2", "--data-dir", &dir.path().to_string_lossy()]
        .map(String::from)
        .to_vec();
    let sql = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let counts = |records: &[(String, String, i64, i64)]| -> BTreeMap<String, i64> {
        let mut by = BTreeMap::new();
        for (c, ..) in records {
            *by.entry(c.clone()).or_default() += 1;
        }
        by
    };
    let mut last_timestamp = 0;
    {
        let server = start(&args, true);
        let id = server.submit(&push_job("one", "in", "counts", sql));
        let port = server.base.rsplit(':').next().expect("port").to_owned();
        let (mut socket, _) =
            tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=counts")).expect("subscribe");
        // Per push: its timestamp, and the changes it makes (each collection's count replaced).
        let mut want: BTreeMap<i64, Vec<(Value, i64)>> = BTreeMap::new();
        let mut sent = Vec::new();
        for batch in 0..12 {
            let before = counts(&sent);
            // 40 records over 3 collections, each collection in both workers' halves.
            let batch_records = records("a", batch);
            sent.extend(batch_records.iter().cloned());
            let answer = server.push(id, "in", &lines(&batch_records));
            let at = answer["timestamp"].as_i64().expect("timestamp");
            assert!(at > last_timestamp, "timestamps increase: {at} after {last_timestamp}");
            last_timestamp = at;
            let mut changes = Vec::new();
            for (c, n) in &before {
                changes.push((json!({ "collection": c, "n": n }), -1));
            }
            for (c, n) in counts(&sent) {
                changes.push((json!({ "collection": c, "n": n }), 1));
            }
            want.insert(at, changes);
        }
        // Every change until the subscription has passed the last push's timestamp.
        let mut got: BTreeMap<i64, Vec<(Value, i64)>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "the subscription did not pass {last_timestamp}: {got:?}");
            let tungstenite::Message::Text(text) = socket.read().expect("a message") else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
            match v["type"].as_str() {
                Some("snapshot") => assert!(v["rows"].as_array().is_some_and(|r| r.is_empty()), "{v}"),
                Some("update") => got
                    .entry(v["timestamp"].as_i64().expect("timestamp"))
                    .or_default()
                    .push((v["row"].clone(), v["diff"].as_i64().expect("diff"))),
                Some("progress") if v["timestamp"].as_i64().expect("timestamp") > last_timestamp => break,
                _ => {}
            }
        }
        let sorted = |m: BTreeMap<i64, Vec<(Value, i64)>>| -> Vec<(i64, Vec<String>)> {
            m.into_iter()
                .map(|(t, mut c)| {
                    let mut c: Vec<String> = c.drain(..).map(|(row, diff)| format!("{diff} {row}")).collect();
                    c.sort();
                    (t, c)
                })
                .collect()
        };
        assert_eq!(sorted(got), sorted(want));
    }
    // Restarted on the same data directory: the replay keeps the logged timestamps, and new
    // pushes get later ones.
    let server = start(&args, true);
    let want = vec![json!({ "n": 12 * 40 })];
    assert_eq!(server.sql_until("SELECT sum(n) AS n FROM counts", &want), want);
    let answer = server.push(1, "in", &lines(&records("a", 12)));
    let at = answer["timestamp"].as_i64().expect("timestamp");
    assert!(at > last_timestamp, "after the restart {at}, before it {last_timestamp}");
}

/// The durable-state promise in a cluster of 2 processes × 2 workers: either process is
/// killed (`kill -9`) at a random moment while a client pushes; the other exits (code 75);
/// both are restarted with the same commands; unanswered pushes are sent again with their
/// keys. The log is compacted whenever it has grown (snapshots read from all 4 workers). At
/// the end the view equals what the acknowledged pushes make, computed here.
#[test]
fn kill_9_of_either_cluster_process_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    let ports = [common::free_port(), common::free_port()];
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).expect("hosts");
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let args = |i: usize| -> Vec<String> {
        let mut args: Vec<String> = [
            "--processes",
            "2",
            "--workers",
            "2",
            "--process-index",
            &i.to_string(),
            "--hosts",
            &hosts.to_string_lossy(),
        ]
        .map(String::from)
        .to_vec();
        if i == 0 {
            args.extend(["--http", "127.0.0.1:0", "--data-dir", &data].map(String::from));
        }
        args
    };
    let job = push_job(
        "pair",
        "pair-in",
        "pair_v",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    );
    let (mut pushed, mut bytes, mut batch) = (0i64, 0i64, 0usize);
    let mut pending: Option<(String, Vec<String>, i64, i64)> = None;
    let mut id = None;
    for round in 0..6 {
        let mut p1 = start(&args(1), false);
        let mut p0 = start_with_env(
            &args(0),
            true,
            &[("AIMATRIX__STORAGE__COMPACT_AFTER_BYTES", "1"), ("AIMATRIX__STORAGE__RESTART_ROWS_AHEAD", "100")],
        );
        if round == 0 {
            id = Some(p0.submit(&job));
        }
        let id = id.expect("the job");
        if let Some((key, lines, n, sum)) = pending.take() {
            push_keyed(&p0, id, "pair-in", &key, &lines).expect("the retry is answered");
            (pushed, bytes) = (pushed + n, bytes + sum);
        }
        // Process 1 on even rounds, process 0 on odd ones, after 0.2–1 s of pushes.
        let victim = if round % 2 == 0 { p1.child.id() } else { p0.child.id() };
        let delay = Duration::from_millis(200 + 160 * round as u64);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &victim.to_string()]).status();
        });
        loop {
            let n = 1 + batch % 7;
            let lines: Vec<String> = (0..n)
                .map(|i| json!({ "c": "p", "id": format!("p{batch}-{i}"), "v": 1, "size": i + 1, "t": 1 }).to_string())
                .collect();
            let sum = (1..=n as i64).sum::<i64>();
            let key = format!("batch-{batch}");
            batch += 1;
            match push_keyed(&p0, id, "pair-in", &key, &lines) {
                Some(_) => (pushed, bytes) = (pushed + n as i64, bytes + sum),
                None => {
                    pending = Some((key, lines, n as i64, sum));
                    break;
                }
            }
        }
        killer.join().expect("killer");
        // The survivor exits on its own: a lost peer (75).
        let survivor = if round % 2 == 0 { &mut p0 } else { &mut p1 };
        assert_eq!(survivor.child.wait().expect("exits").code(), Some(75), "round {round}");
    }
    let _p1 = start(&args(1), false);
    let p0 = start(&args(0), true);
    let id = id.expect("the job");
    if let Some((key, lines, n, sum)) = pending.take() {
        push_keyed(&p0, id, "pair-in", &key, &lines).expect("the retry is answered");
        (pushed, bytes) = (pushed + n, bytes + sum);
    }
    assert!(pushed > 0);
    let want = vec![json!({ "collection": "p", "n": pushed, "bytes": bytes })];
    assert_eq!(p0.sql_until("SELECT * FROM pair_v", &want), want);
}

/// An S3-compatible server for a test: moto's (`moto_server`, from PyPI; `scripts/test.sh`
/// installs it and names it in `AIMATRIX_MOTO_SERVER`), on a port of its own, with a bucket.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Its endpoint, `http://127.0.0.1:PORT`.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes object `path` (`BUCKET/KEY`) with `body`.
    fn put(&self, path: &str, body: &[u8]) {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        let response = agent.put(&format!("{}/{path}", self.endpoint())).send(body).expect("moto answers");
        assert_eq!(response.status().as_u16(), 200, "PUT {path}");
    }
}

impl Moto {
    /// An S3 client of bucket `bucket` (signed requests, as a reader of the bucket sends them:
    /// moto keeps the objects the server writes private).
    fn client(&self, bucket: &str) -> (object_store::aws::AmazonS3, tokio::runtime::Runtime) {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("an S3 client");
        (store, tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
    }

    /// Reads object `key` of `bucket`: `None` when there is none.
    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let (store, runtime) = self.client(bucket);
        runtime.block_on(async {
            match store.get(&object_store::path::Path::from(key)).await {
                Ok(got) => Some(got.bytes().await.expect("body").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {bucket}/{key}: {e}"),
            }
        })
    }

    /// The keys under `prefix` in `bucket`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let (store, runtime) = self.client(bucket);
        let listed: Vec<object_store::ObjectMeta> = runtime
            .block_on(store.list(Some(&object_store::path::Path::from(prefix))).try_collect())
            .expect("a listing");
        listed.into_iter().map(|m| m.location.to_string()).collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's S3 client settings for moto at `endpoint` (http, any credentials).
fn s3_env(endpoint: &str) -> [(&'static str, &str); 5] {
    [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
}

fn start_moto(bucket: &str) -> Moto {
    let program =
        std::env::var("AIMATRIX_MOTO_SERVER").unwrap_or_else(|_| "/var/tmp/aimatrix-venv/bin/moto_server".into());
    let port = common::free_port();
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts (scripts/test.sh installs moto[server] from PyPI): {e}"));
    let moto = Moto { child, port };
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = agent.put(&format!("http://127.0.0.1:{port}/{bucket}")).send_empty() {
            assert_eq!(response.status().as_u16(), 200, "creating the bucket");
            return moto;
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP proxy in front of a port that can fail: while `down`, it drops every connection
/// (new ones at once, open ones at their next byte), as a store that is unreachable does.
struct FaultProxy {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn fault_proxy(to: u16) -> FaultProxy {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = down.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if flag.load(SeqCst) {
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else { continue };
            for (mut from, mut into) in
                [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
            {
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                    let mut buf = [0u8; 1 << 16];
                    loop {
                        if flag.load(SeqCst) {
                            break;
                        }
                        match std::io::Read::read(&mut from, &mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if std::io::Write::write_all(&mut into, &buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    FaultProxy { port, down }
}

/// Pushes `lines` with an `Idempotency-Key`: the status and body (`None`: no answer).
fn try_push_keyed(server: &Server, job: u64, source: &str, key: &str, lines: &[String]) -> Option<(u16, Value)> {
    let url = format!("{}/v1/ingest/{job}/{source}", server.base);
    let response = server
        .agent
        .post(&url)
        .header("Content-Type", "application/x-ndjson")
        .header("Idempotency-Key", key)
        .send(lines.join("\n").as_bytes())
        .ok()?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// The durable log in an S3-compatible store (moto's server, over HTTP, behind a proxy that
/// can fail): pushes are acknowledged once their segment is in the bucket; while the store
/// is unreachable a push is answered 503 and new ones are refused; once it is back, the
/// waiting push is stored (its retry, with its key, is answered 200 and not applied twice);
/// after `kill -9` a new server takes the lease over and replays the bucket. The log is
/// compacted every second it has grown (so also while the store is down: those tries fail
/// and are made again): before the kill a snapshot is in the bucket, and the restart restores
/// it and replays what follows. The view equals the acknowledged pushes, counted here.
#[test]
fn an_s3_log_survives_a_failing_store_and_kill_9() {
    use std::sync::atomic::Ordering::SeqCst;
    let moto = start_moto("amx");
    let proxy = fault_proxy(moto.port);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut env = s3_env(&endpoint).to_vec();
    env.push(("AIMATRIX__STORAGE__COMPACT_AFTER_BYTES", "1"));
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--data-url", "s3://amx/server-1"].into_iter().map(String::from).collect();
    let job = push_job(
        "s3",
        "pushed",
        "by_collection",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    );
    let batch = |b: usize, n: usize| -> Vec<String> {
        (0..n).map(|i| json!({ "c": "p", "id": format!("p{b}-{i}"), "v": 1, "size": i, "t": 1 }).to_string()).collect()
    };
    // (count, sum of sizes) of the acknowledged pushes.
    let mut acknowledged = (0i64, 0i64);
    let mut count = |n: usize| acknowledged = (acknowledged.0 + n as i64, acknowledged.1 + (0..n as i64).sum::<i64>());

    let server = start_with_env(&args, true, &env);
    let id = server.submit(&job);
    for b in 0..3 {
        let (status, body) = try_push_keyed(&server, id, "pushed", &format!("k{b}"), &batch(b, 4 + b)).expect("answer");
        assert_eq!(status, 200, "{body}");
        count(4 + b);
    }
    // The store goes away: the next push is not acknowledged, and later ones are refused.
    proxy.down.store(true, SeqCst);
    let (status, body) = try_push_keyed(&server, id, "pushed", "k3", &batch(3, 7)).expect("answer");
    assert_eq!(status, 503, "{body}");
    let (status, body) = try_push_keyed(&server, id, "pushed", "k4", &batch(4, 8)).expect("answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("does not take writes now"), "{body}");
    // Back: the retry of the waiting push is answered as the push is, once stored (not twice).
    proxy.down.store(false, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = try_push_keyed(&server, id, "pushed", "k3", &batch(3, 7)).expect("answer");
        if status == 200 {
            assert_eq!(body["accepted"], json!(7), "{body}");
            count(7);
            break;
        }
        assert!(Instant::now() < deadline, "the store never took the push again: {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = try_push_keyed(&server, id, "pushed", "k4", &batch(4, 8)).expect("answer");
    assert_eq!(status, 200, "{body}");
    count(8);
    let want = vec![json!({ "collection": "p", "n": acknowledged.0, "bytes": acknowledged.1 })];
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    assert_eq!(server.sql_until(sql, &want), want);

    // A snapshot of it all in the bucket (a manifest is written last).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !moto.keys("amx", "server-1/snapshots/").iter().any(|k| k.ends_with("/manifest")) {
        assert!(Instant::now() < deadline, "no snapshot: {:?}", moto.keys("amx", "server-1/"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = try_push_keyed(&server, id, "pushed", "k5", &batch(5, 3)).expect("answer");
    assert_eq!(status, 200, "{body}");
    // (3 records, of sizes 0, 1 and 2.)
    let want = vec![json!({ "collection": "p", "n": acknowledged.0 + 3, "bytes": acknowledged.1 + 3 })];

    // kill -9, and the same command again: it takes the lease over and replays the bucket.
    let pid = server.child.id();
    Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    drop(server);
    let server = start_with_env(&args, true, &env);
    assert_eq!(server.sql_until(sql, &want), want);
    let (status, body) = try_push_keyed(&server, id, "pushed", "k4", &batch(4, 8)).expect("answer");
    assert_eq!(status, 200, "a retry after the restart is answered as the push was: {body}");
    assert_eq!(server.sql(sql), want, "and not applied again");
}

/// Event `i` of the pipeline tests, as JSON: collection `c{i mod 4}`, document `d{i}`, size
/// `i mod 100`.
fn pipeline_event(i: usize) -> String {
    json!({ "c": format!("c{}", i % 4), "id": format!("d{i}"), "v": 1, "size": i % 100, "t": 1 }).to_string()
}

/// What `by_collection` (count and sum of sizes per collection) holds once events `0..n` of
/// [`pipeline_event`] are in, computed here.
fn by_collection_of(n: usize) -> Vec<Value> {
    let mut by: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let e = by.entry(format!("c{}", i % 4)).or_default();
        *e = (e.0 + 1, e.1 + (i % 100) as i64);
    }
    by.into_iter().map(|(c, (n, bytes))| json!({ "collection": c, "n": n, "bytes": bytes })).collect()
}

/// `serve` arguments: any port, 2 workers, a data directory.
fn durable_args(data: &std::path::Path) -> Vec<String> {
    ["--http", "127.0.0.1:0", "--workers", "2", "--data-dir", &data.to_string_lossy()]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Produces `values` to `topic`, value `i` to partition `i mod partitions`, and waits until
/// the broker has them all.
fn produce(brokers: &str, topic: &str, partitions: i32, values: &[String]) {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("a producer");
    for (i, value) in values.iter().enumerate() {
        let partition = i as i32 % partitions;
        let record = BaseRecord::<(), str>::to(topic).payload(value.as_str()).partition(partition);
        producer.send(record).map_err(|(e, _)| e).expect("produced");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// A job reading every partition of a Kafka topic (as `knowledge_events`), with a view of
/// counts and sizes by collection.
fn kafka_job(brokers: &str, topic: &str) -> String {
    format!(
        r#"name = "kafka"
[[sources]]
name = "events"
kind = "kafka"
format = "json"
[sources.kafka]
brokers = "{brokers}"
topic = "{topic}"
[sources.kafka.properties]
"reconnect.backoff.max.ms" = "200"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/c"
document_id = "/id"
op = {{ const = "upsert" }}
version = "/v"
size_bytes = "/size"
event_time = {{ pointer = "/t", unit = "s" }}

[views]
by_collection = "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection"
"#
    )
}

/// A Kafka source (librdkafka's mock cluster, spoken to over the Kafka protocol) reads every
/// partition of its topic; a message that is not JSON is an ingest error at its partition and
/// offset; the server is killed with `kill -9` again and again while messages keep coming, and
/// at the end every message produced is in the view exactly once (counts and sums computed
/// here); pushing to a Kafka source is refused.
#[test]
fn a_kafka_source_applies_each_message_once_across_kill_9() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock Kafka cluster");
    let brokers = cluster.bootstrap_servers();
    let (topic, partitions) = ("agent-events", 3);
    cluster.create_topic(topic, partitions, 1).expect("topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args = durable_args(&data);
    let (message, want) = (pipeline_event, by_collection_of);
    let sql = "SELECT * FROM by_collection ORDER BY collection";

    // The first message of partition 0 is not JSON.
    produce(&brokers, topic, 1, &["not json".to_owned()]);
    let mut produced = 0;
    let first: Vec<String> = (0..300).map(message).collect();
    produce(&brokers, topic, partitions, &first);
    produced += first.len();

    let server = start(&args, true);
    let id = server.submit(&kafka_job(&brokers, topic));
    assert_eq!(server.sql_until(sql, &want(produced)), want(produced));
    let errors = server.sql("SELECT source, location, error FROM ingest_errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["location"], json!(format!("kafka:{topic}/0@0")), "{errors:?}");
    assert_eq!(errors[0]["source"], json!("events"));
    let (status, body) = server.call("POST", &format!("/v1/ingest/{id}/events"), Some(&message(0)));
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("reads a Kafka topic"), "{body}");
    // A job whose source does not open is refused and leaves nothing behind: no job, no
    // name taken, nothing in the log (the restarts below would fail on it).
    let bad = kafka_job(&brokers, topic)
        .replace("name = \"events\"", "name = \"bad\"")
        .replace("\"reconnect.backoff.max.ms\" = \"200\"", "\"no.such.property\" = \"x\"")
        .replace("by_collection =", "by_collection_bad =");
    let (status, body) = server.call("POST", "/v1/jobs", Some(&bad));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("no.such.property"), "{body}");
    let (_, jobs) = server.call("GET", "/v1/jobs", None);
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");

    // Killed while it reads what keeps coming; restarted with the same command.
    let mut server = Some(server);
    for round in 0..4 {
        let batch: Vec<String> = (produced..produced + 500).map(message).collect();
        let (brokers2, batch2) = (brokers.clone(), batch.clone());
        let producer = std::thread::spawn(move || {
            for chunk in batch2.chunks(50) {
                produce(&brokers2, topic, partitions, chunk);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_millis(100 + 150 * round));
        let pid = server.take().expect("running").child.id();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        producer.join().expect("producer");
        produced += batch.len();
        let restarted = start(&args, true);
        assert_eq!(restarted.sql_until(sql, &want(produced)), want(produced), "after kill {round}");
        server = Some(restarted);
    }
    let server = server.expect("running");
    let errors = server.sql("SELECT location FROM ingest_errors");
    assert_eq!(errors, vec![json!({ "location": format!("kafka:{topic}/0@0") })]);

    // The applied offsets are advertised to the source's consumer group (for lag monitors):
    // every message, the bad one included, is consumed.
    let committed = || -> i64 {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("aimatrix-job-{id}-events"))
            .create()
            .expect("a consumer");
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let offsets = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
        offsets.elements().iter().map(|e| e.offset().to_raw().unwrap_or(0).max(0)).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed() != produced as i64 + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(committed(), produced as i64 + 1);
}

/// CSV objects (`file_format = "csv"`): each row after the header is a record, a JSON object
/// of its fields by the header's names, mapped with the `json` format (integers, numbers and
/// times from strings); a ragged row is an ingest error at its line; a restart from the log
/// reads nothing again. Sums computed here from the rows written.
#[test]
fn an_object_store_source_reads_csv_objects() {
    let moto = start_moto("landing");
    let endpoint = moto.endpoint();
    let env = s3_env(&endpoint);
    let put = |key: &str, body: &str| moto.put(&format!("landing/{key}"), body.as_bytes());
    let job = push_job(
        "csv",
        "rows",
        "by_collection",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    )
    .replace("kind = \"push\"", "kind = \"object-store\"")
    .replace(
        "[sources.options]",
        "[sources.object_store]\nurl = \"s3://landing/csv/\"\nfile_format = \"csv\"\n[sources.options]",
    );
    // Header `c,id,v,size,t`; a quoted title with a comma; an empty size (NULL); a ragged row.
    put(
        "csv/a.csv",
        "c,id,v,size,t\r\nkb,\"doc, one\",1,100,1700000000\r\nkb,doc-2,1,,1700000001\r\nwiki,doc-3,2,30\r\nwiki,doc-4,1,40,1700000003\r\n",
    );
    put("csv/b.csv", "t,size,id,c,v\n1700000004,5,doc-5,kb,1\n");
    let want =
        vec![json!({ "collection": "kb", "n": 3, "bytes": 105 }), json!({ "collection": "wiki", "n": 1, "bytes": 40 })];
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    let dir = tempfile::tempdir().expect("tempdir");
    let args = durable_args(&dir.path().join("data"));
    {
        let server = start_with_env(&args, true, &env);
        server.submit(&job);
        assert_eq!(server.sql_until(sql, &want), want);
        let rows = server.sql("SELECT document_id, size_bytes FROM knowledge_events WHERE document_id LIKE 'doc,%' OR size_bytes IS NULL ORDER BY document_id");
        assert_eq!(
            rows,
            vec![
                json!({ "document_id": "doc, one", "size_bytes": 100 }),
                json!({ "document_id": "doc-2", "size_bytes": null })
            ]
        );
        let errors = server.sql("SELECT location, error FROM ingest_errors");
        assert_eq!(
            errors,
            vec![json!({ "location": "s3://landing/csv/a.csv:4", "error": "the row has 4 fields, the header 5" })]
        );
    }
    let server = start_with_env(&args, true, &env);
    assert_eq!(server.sql_until(sql, &want), want, "after a restart");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.sql(sql), want, "nothing read twice");
}

/// Parquet objects (`file_format = "parquet"`): each row is a record, the JSON object of its
/// columns (a timestamp column as RFC 3339), mapped with the `json` format. The file is
/// written here with the parquet crate; the expected counts and sums are from its rows.
#[test]
fn an_object_store_source_reads_parquet_objects() {
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let moto = start_moto("lake");
    let endpoint = moto.endpoint();
    let env = s3_env(&endpoint);
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("collection", DataType::Utf8, false),
        Field::new("doc", DataType::Utf8, false),
        Field::new("bytes", DataType::Int64, true),
        Field::new("seen", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("Is Bot", DataType::Boolean, false),
    ]));
    // 1,000 rows: collection `c{i mod 3}`, size i (NULL for every 100th), seen 1.7e12 + i ms.
    let n = 1_000_i64;
    let batch = arrow::record_batch::RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(StringArray::from((0..n).map(|i| format!("c{}", i % 3)).collect::<Vec<_>>())),
            std::sync::Arc::new(StringArray::from((0..n).map(|i| format!("doc-{i}")).collect::<Vec<_>>())),
            std::sync::Arc::new(Int64Array::from((0..n).map(|i| (i % 100 != 0).then_some(i)).collect::<Vec<_>>())),
            std::sync::Arc::new(
                TimestampMillisecondArray::from((0..n).map(|i| 1_700_000_000_000 + i).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            std::sync::Arc::new(arrow::array::BooleanArray::from((0..n).map(|i| i % 4 == 0).collect::<Vec<_>>())),
        ],
    )
    .expect("a batch");
    let mut data = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut data, schema, None).expect("a writer");
    writer.write(&batch).expect("written");
    writer.close().expect("closed");
    moto.put("lake/docs/part-0.parquet", &data);
    let job = r#"name = "lake"
[[sources]]
name = "parts"
kind = "object-store"
format = "json"
[sources.object_store]
url = "s3://lake/docs/"
file_format = "parquet"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/collection"
document_id = "/doc"
op = { const = "upsert" }
size_bytes = "/bytes"
event_time = "/seen"

[views]
by_collection = "SELECT collection, count(*) AS n, count(size_bytes) AS sized, sum(size_bytes) AS bytes, max(event_time) AS last FROM knowledge_events GROUP BY collection"
"#;
    let want: Vec<Value> = (0..3)
        .map(|c| {
            let rows: Vec<i64> = (0..n).filter(|i| i % 3 == c).collect();
            let sized: Vec<i64> = rows.iter().copied().filter(|i| i % 100 != 0).collect();
            let last = rows.iter().max().copied().unwrap_or_default();
            json!({
                "collection": format!("c{c}"),
                "n": rows.len(),
                "sized": sized.len(),
                "bytes": sized.iter().sum::<i64>(),
                // 2023-11-14T22:13:20Z + `last` ms.
                "last": format!("2023-11-14T22:13:2{}.{:03}Z", last / 1000, last % 1000),
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_env(&durable_args(&dir.path().join("data")), true, &env);
    server.submit(job);
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    assert_eq!(server.sql_until(sql, &want), want);
    assert_eq!(server.sql("SELECT count(*) AS n FROM ingest_errors"), vec![json!({ "n": 0 })]);

    // A relation declared without columns takes the object's: `Is Bot` becomes `is_bot`.
    let table_job = r#"name = "lake-table"
[[sources]]
name = "parts-table"
kind = "object-store"
format = "json"
[sources.object_store]
url = "s3://lake/docs/"
file_format = "parquet"
[sources.relation]
name = "parts"
key = ["doc"]
"#;
    server.submit(table_job);
    let sql = "SELECT count(*) AS n, count(bytes) AS sized, sum(bytes) AS bytes, max(seen) AS last, \
               sum(CASE WHEN is_bot THEN 1 ELSE 0 END) AS bots, count(DISTINCT collection) AS collections FROM parts";
    // Sizes 0..1000 without the multiples of 100; every 4th row a bot; the last at +999 ms.
    let sized: Vec<i64> = (0..n).filter(|i| i % 100 != 0).collect();
    let want = vec![json!({
        "n": n, "sized": sized.len(), "bytes": sized.iter().sum::<i64>(), "last": "2023-11-14T22:13:20.999Z",
        "bots": n / 4, "collections": 3,
    })];
    assert_eq!(server.sql_until(sql, &want), want);
    let row = server.sql("SELECT * FROM parts WHERE doc = 'doc-7'");
    assert_eq!(
        row,
        vec![
            json!({"collection": "c1", "doc": "doc-7", "bytes": 7, "seen": "2023-11-14T22:13:20.007Z", "is_bot": false})
        ]
    );
    // Without objects there is nothing to take the columns from; other sources must declare them.
    let (status, body) = server.call(
        "POST",
        "/v1/jobs",
        Some(&table_job.replace("lake/docs/", "lake/empty/").replace("\"parts", "\"p2")),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("no Parquet object under s3://lake/empty"), "{body}");
    let jsonl = table_job.replace("parquet", "jsonl").replace("\"parts", "\"p3");
    let (status, body) = server.call("POST", "/v1/jobs", Some(&jsonl));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("declares no columns"), "{body}");
}

/// A Kafka message's key, headers, offset and timestamp map onto columns (`{ metadata = … }`),
/// and a restart from the log gives the same rows (the metadata is logged with each record).
/// Expected rows are written here from what was produced: message `i` to partition `i mod 2`
/// (so at offset `i / 2`), key `doc-i`, header `user` = `u-i` (none for `i = 3`), created at
/// 1,700,000,000,000 + 1,000·i ms (2023-11-14T22:13:20Z + i s).
#[test]
fn kafka_message_metadata_maps_to_columns() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer};
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock Kafka cluster");
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("docs", 2, 1).expect("topic");
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("a producer");
    for i in 0..6_i64 {
        let (key, value) = (format!("doc-{i}"), json!({ "c": "kb", "size": 10 * i }).to_string());
        let user = format!("u-{i}");
        let mut headers = OwnedHeaders::new().insert(Header { key: "trace", value: Some("x") });
        if i != 3 {
            headers = headers.insert(Header { key: "user", value: Some(user.as_str()) });
        }
        let record = BaseRecord::to("docs")
            .key(key.as_str())
            .payload(value.as_str())
            .partition((i % 2) as i32)
            .timestamp(1_700_000_000_000 + 1_000 * i)
            .headers(headers);
        producer.send(record).map_err(|(e, _)| e).expect("produced");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");

    let job = kafka_job(&brokers, "docs").replace(
        r#"collection = "/c"
document_id = "/id"
op = { const = "upsert" }
version = "/v"
size_bytes = "/size"
event_time = { pointer = "/t", unit = "s" }"#,
        r#"collection = "/c"
document_id = { metadata = "/key" }
op = { const = "upsert" }
version = { metadata = "/partition" }
size_bytes = "/size"
event_time = { metadata = "/timestamp", unit = "ms" }
actor = { metadata = "/headers/user" }
source_offset = { metadata = "/offset" }"#,
    );
    assert!(job.contains("metadata = \"/key\""), "the mapping was replaced");
    let want: Vec<Value> = (0..6_i64)
        .map(|i| {
            json!({
                "document_id": format!("doc-{i}"),
                "version": i % 2,
                "source_offset": i / 2,
                "size_bytes": 10 * i,
                "actor": if i == 3 { Value::Null } else { json!(format!("u-{i}")) },
                "event_time": format!("2023-11-14T22:13:2{i}Z"),
            })
        })
        .collect();
    let sql = "SELECT document_id, version, source_offset, size_bytes, actor, event_time FROM knowledge_events \
               ORDER BY document_id";
    let dir = tempfile::tempdir().expect("tempdir");
    let args = durable_args(&dir.path().join("data"));
    {
        let server = start(&args, true);
        server.submit(&job);
        assert_eq!(server.sql_until(sql, &want), want);
    }
    let server = start(&args, true);
    assert_eq!(server.sql_until(sql, &want), want, "after a restart");
}

/// An object-store source (`kind = "object-store"`) against moto's S3 server: the objects
/// under the prefix that match the pattern, then new ones as they appear, each line once;
/// a bad line is an ingest error at `s3://BUCKET/KEY:LINE`; `kill -9` while objects (some
/// longer than one batch) keep arriving loses and repeats nothing (counts and sums computed
/// here).
#[test]
fn an_object_store_source_reads_each_object_once_across_kill_9() {
    let moto = start_moto("landing");
    let endpoint = moto.endpoint();
    let env = s3_env(&endpoint);
    let put = |key: &str, body: &str| moto.put(&format!("landing/{key}"), body.as_bytes());
    let (line, want) = (pipeline_event, by_collection_of);
    let object = |from: usize, n: usize| (from..from + n).map(line).collect::<Vec<_>>().join("\n") + "\n";
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args = durable_args(&data);
    let job = push_job(
        "landing",
        "objects",
        "by_collection",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    )
    .replace("kind = \"push\"", "kind = \"object-store\"")
    .replace(
        "[sources.options]",
        "[sources.object_store]\nurl = \"s3://landing/agents/\"\npattern = \"*.jsonl\"\n[sources.options]",
    );

    let mut lines = 0;
    // A bad second line and a blank one (no record); a key the pattern does not match, and
    // one below a further `/` (`*` does not cross it): neither is read.
    put("agents/a.jsonl", &format!("{}\nnot json\n\n{}\n", line(0), line(1)));
    lines += 2;
    put("agents/readme.txt", "not a record\n");
    put("agents/deeper/b.jsonl", &line(999));
    put("agents/c.jsonl", &object(lines, 500));
    lines += 500;
    let server = start_with_env(&args, true, &env);
    let id = server.submit(&job);
    assert_eq!(server.sql_until(sql, &want(lines)), want(lines));
    let errors = server.sql("SELECT location FROM ingest_errors");
    assert_eq!(errors, vec![json!({ "location": "s3://landing/agents/a.jsonl:2" })]);
    let (status, body) = server.call("POST", &format!("/v1/ingest/{id}/objects"), Some(&line(0)));
    assert_eq!(status, 409, "{body}");

    let mut server = Some(server);
    for round in 0..4 {
        // Objects of 12,000 lines: more than one batch each.
        for k in 0..2 {
            put(&format!("agents/r{round}-{k}.jsonl"), &object(lines, 12_000));
            lines += 12_000;
        }
        std::thread::sleep(Duration::from_millis(100 + 200 * round as u64));
        let pid = server.take().expect("running").child.id();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let restarted = start_with_env(&args, true, &env);
        assert_eq!(restarted.sql_until(sql, &want(lines)), want(lines), "after kill {round}");
        server = Some(restarted);
    }
    let server = server.expect("running");
    let errors = server.sql("SELECT location FROM ingest_errors");
    assert_eq!(errors, vec![json!({ "location": "s3://landing/agents/a.jsonl:2" })]);
}

/// `start = "latest"` reads only what is produced after the source starts, and its start
/// offsets are made durable at once: messages produced while the server is down (killed before
/// it read any) are read after the restart, not skipped.
#[test]
fn a_kafka_source_from_latest_keeps_its_start_across_kill_9() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock Kafka cluster");
    let brokers = cluster.bootstrap_servers();
    let (topic, partitions) = ("late", 2);
    cluster.create_topic(topic, partitions, 1).expect("topic");
    let message = |i: usize| json!({ "c": "c", "id": format!("d{i}"), "v": 1, "size": i, "t": 1 }).to_string();
    produce(&brokers, topic, partitions, &(0..10).map(message).collect::<Vec<_>>());
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--data-dir", &data.to_string_lossy()].into_iter().map(String::from).collect();
    let server = start(&args, true);
    let job = kafka_job(&brokers, topic)
        .replace("[sources.kafka.properties]", "start = \"latest\"\n[sources.kafka.properties]");
    server.submit(&job);
    // The resolved start offsets are logged as a batch without records (`ingest_records`).
    let deadline = Instant::now() + Duration::from_secs(30);
    let logged = || std::fs::read(data.join("log")).is_ok_and(|log| log.windows(14).any(|w| w == b"ingest_records"));
    while !logged() {
        assert!(Instant::now() < deadline, "the start offsets were not logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server); // kill -9
    produce(&brokers, topic, partitions, &(10..13).map(message).collect::<Vec<_>>());
    let server = start(&args, true);
    let sql = "SELECT * FROM by_collection";
    let want = vec![json!({ "collection": "c", "n": 3, "bytes": 10 + 11 + 12 })];
    assert_eq!(server.sql_until(sql, &want), want);
}

/// A topic read to its end: the last value per key (tombstones remove the key) and the
/// number of messages.
/// Every message of `topic`, partition by partition, each in offset order: its key and its
/// value as JSON (`None`: a tombstone).
fn topic_messages(brokers: &str, topic: &str) -> Vec<(String, Option<Value>)> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("isolation.level", "read_committed")
        .create()
        .expect("a consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut list = rdkafka::TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
        if high > low {
            ends.insert(p.id(), high);
            list.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(low)).expect("offset");
        }
    }
    let mut by_partition: BTreeMap<i32, Vec<(String, Option<Value>)>> = BTreeMap::new();
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&list).expect("assign");
    // The sinks write in transactions: the last offsets may be commit markers, which are not
    // delivered; a partition is read once the consumer's position reaches its end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic}: {ends:?} left");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("no error");
            let key = String::from_utf8(message.key().expect("a key").to_vec()).expect("UTF-8");
            let value = message.payload().map(|value| serde_json::from_slice(value).expect("JSON"));
            by_partition.entry(message.partition()).or_default().push((key, value));
        }
        let positions = consumer.position().expect("positions");
        for element in positions.elements() {
            if let rdkafka::Offset::Offset(at) = element.offset()
                && ends.get(&element.partition()).is_some_and(|end| at >= *end)
            {
                ends.remove(&element.partition());
            }
        }
    }
    by_partition.into_values().flatten().collect()
}

/// `topic`'s last value per key (a tombstone removes the key) and its number of messages.
fn read_topic(brokers: &str, topic: &str) -> (BTreeMap<String, Value>, usize) {
    let messages = topic_messages(brokers, topic);
    let mut state = BTreeMap::new();
    for (key, value) in &messages {
        match value {
            Some(value) => state.insert(key.clone(), value.clone()),
            None => state.remove(key),
        };
    }
    (state, messages.len())
}

/// A Kafka sink keeps a view's contents in a topic in upsert form (key: the key columns as a
/// JSON object; value: the row; a tombstone when the key leaves the view); a restart after
/// `kill -9` writes nothing the topic already has, and the changes after it are written once.
#[test]
fn a_kafka_sink_keeps_a_view_in_a_topic_across_kill_9() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock Kafka cluster");
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("small", 2, 1).expect("topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args = durable_args(&data);
    let job = push_job(
        "sink",
        "pushed",
        "small",
        "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection HAVING count(*) < 3",
    ) + &format!(
        "\n[[sinks]]\nname = \"out\"\nview = \"Small\"\nkey = [\"collection\"]\n[sinks.kafka]\nbrokers = \"{brokers}\"\ntopic = \"small\"\n"
    );
    let record = |c: &str, i: usize| json!({ "c": c, "id": format!("{c}{i}"), "v": 1, "size": 1, "t": 1 }).to_string();
    let wait_topic = |want: &BTreeMap<String, Value>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (state, messages) = read_topic(&brokers, "small");
            if &state == want || Instant::now() > deadline {
                return (state, messages);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let entry = |c: &str, n: i64| (json!({ "collection": c }).to_string(), json!({ "collection": c, "n": n }));

    let server = start(&args, true);
    // A key column the view does not have is refused at once.
    let (status, body) =
        server.call("POST", "/v1/jobs", Some(&job.replace("key = [\"collection\"]", "key = [\"nope\"]")));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("no column `nope`"), "{body}");
    let id = server.submit(&job);
    server.push(id, "pushed", &[record("p", 0), record("q", 0), record("q", 1)]);
    let want: BTreeMap<String, Value> = [entry("p", 1), entry("q", 2)].into_iter().collect();
    let (state, messages) = wait_topic(&want);
    assert_eq!(state, want);
    // One message per key: the push is applied at one timestamp.
    assert_eq!(messages, 2, "one message per key");

    // Killed and restarted: the topic already has the view; nothing is written again.
    drop(server);
    let server = start(&args, true);
    let rows = server.sql_until("SELECT count(*) AS n FROM small", &[json!({ "n": 2 })]);
    assert_eq!(rows, vec![json!({ "n": 2 })]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read_topic(&brokers, "small"), (want, 2));

    // `p` changes, `q` leaves the view (a tombstone), `r` arrives: three messages.
    server.push(id, "pushed", &[record("p", 1), record("q", 2), record("r", 0)]);
    let want: BTreeMap<String, Value> = [entry("p", 2), entry("r", 1)].into_iter().collect();
    let (state, messages) = wait_topic(&want);
    assert_eq!(state, want);
    assert_eq!(messages, 5);
}

/// A change as an object-store sink writes it: the row (a JSON object of the view's columns),
/// `aimatrix_timestamp` and `aimatrix_diff`.
type Change = (Value, i64, i64);

/// An object-store sink's output under `s3://lake/PREFIX/`, read as a client would: the
/// manifest, then each set it names (Parquet, read here with the parquet crate and written out
/// as JSON by arrow-json). Returns the manifest and every change, set by set; `None` before
/// there is a manifest, or when a set it names is gone (a compaction replaced it long enough
/// ago: read again).
fn read_sink(moto: &Moto, prefix: &str) -> Option<(Value, Vec<Vec<Change>>)> {
    read_sink_from(|key| moto.get("lake", &format!("{prefix}/{key}")))
}

/// An object-store sink's output in a local directory, as [`read_sink`] reads a bucket's.
fn read_local_sink(dir: &std::path::Path) -> Option<(Value, Vec<Vec<Change>>)> {
    read_sink_from(|key| std::fs::read(dir.join(key)).ok())
}

/// An object-store sink's output, its files (below the sink's prefix) read with `get`.
fn read_sink_from(get: impl Fn(&str) -> Option<Vec<u8>>) -> Option<(Value, Vec<Vec<Change>>)> {
    let manifest: Value = serde_json::from_slice(&get("manifest.json")?).expect("manifest JSON");
    let mut sets = Vec::new();
    for file in manifest["files"].as_array().expect("files") {
        let key = file["key"].as_str().expect("key");
        let bytes = get(key)?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .expect("Parquet")
            .build()
            .expect("reader");
        let mut set = Vec::new();
        for batch in reader {
            let batch = batch.expect("batch");
            let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names[names.len() - 2..], ["aimatrix_timestamp", "aimatrix_diff"]);
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            writer.write(&batch).expect("JSON");
            writer.finish().expect("JSON");
            let rows: Vec<Value> = serde_json::from_slice(&writer.into_inner()).expect("JSON rows");
            for mut row in rows {
                let object = row.as_object_mut().expect("an object");
                let time = object.remove("aimatrix_timestamp").and_then(|t| t.as_i64()).expect("a timestamp");
                let diff = object.remove("aimatrix_diff").and_then(|d| d.as_i64()).expect("a diff");
                assert!(
                    file["lower"].as_i64().expect("lower") <= time && time < file["upper"].as_i64().expect("upper"),
                    "{key}: a change at {time} outside the set's bounds"
                );
                set.push((row, time, diff));
            }
        }
        assert_eq!(file["rows"].as_u64(), Some(set.len() as u64), "{key}");
        sets.push(set);
    }
    // The sets follow each other without gaps, up to the manifest's upper.
    let files = manifest["files"].as_array().expect("files");
    for pair in files.windows(2) {
        assert_eq!(pair[0]["upper"], pair[1]["lower"], "{manifest}");
    }
    if let Some(last) = files.last() {
        assert_eq!(last["upper"], manifest["upper"]);
    }
    Some((manifest, sets))
}

/// The contents the sets describe: each row (as JSON text) with the sum of its diffs (≠ 0).
fn fold_sets(sets: &[Vec<Change>]) -> BTreeMap<String, i64> {
    let mut contents = BTreeMap::new();
    for (row, _, d) in sets.iter().flatten() {
        *contents.entry(row.to_string()).or_insert(0) += d;
    }
    contents.retain(|_, d| *d != 0);
    contents
}

/// Rows as [`fold_sets`] gives them, each once.
fn once(rows: &[Value]) -> BTreeMap<String, i64> {
    rows.iter().map(|r| (r.to_string(), 1)).collect()
}

#[test]
fn an_object_store_sink_writes_a_views_changes_as_parquet_across_kill_9() {
    let moto = start_moto("lake");
    let endpoint = moto.endpoint();
    let env = s3_env(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let args = durable_args(&dir.path().join("data"));
    let job = push_job(
        "lake",
        "pushed",
        "by_collection",
        "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection",
    ) + "\n[[sinks]]\nname = \"lake\"\nview = \"by_collection\"\n[sinks.object_store]\nurl = \"s3://lake/out/\"\n\
         flush_interval_ms = 100\ncompact_after_files = 4\nkeep_replaced_ms = 1000\n";
    let record = |c: &str, i: usize| json!({ "c": c, "id": format!("{c}{i}"), "v": 1, "size": 1, "t": 1 }).to_string();
    let wait_sink = |want: &BTreeMap<String, i64>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let read = read_sink(&moto, "out");
            if let Some((_, sets)) = &read
                && (&fold_sets(sets) == want || Instant::now() > deadline)
            {
                return read.expect("read");
            }
            assert!(Instant::now() < deadline, "no manifest after 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let contents = |rows: &[(&str, i64)]| -> BTreeMap<String, i64> {
        once(&rows.iter().map(|(c, n)| json!({ "collection": c, "n": n })).collect::<Vec<_>>())
    };

    let server = start_with_env(&args, true, &env);
    // Refused at submit: a key (an object-store sink has none), two destinations, a bound.
    for (bad, says) in [
        (job.replace("[sinks.object_store]", "key = [\"collection\"]\n[sinks.object_store]"), "takes none"),
        (
            job.replace("[sinks.object_store]", "[sinks.kafka]\nbrokers = \"b\"\ntopic = \"t\"\n[sinks.object_store]"),
            "both",
        ),
        (job.replace("flush_interval_ms = 100", "flush_interval_ms = 5"), "flush_interval_ms"),
        (job.replace("s3://lake/out/", "http://lake/out/"), "s3://BUCKET/PREFIX or file:///DIR"),
        (job.replace("s3://lake/out/", "file://elsewhere/out/"), "an absolute path on this host"),
        (job.replace("count(*) AS n FROM", "count(*) AS aimatrix_diff FROM"), "rename it"),
    ] {
        let (status, body) = server.call("POST", "/v1/jobs", Some(&bad));
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(says), "{body}");
    }
    let id = server.submit(&job);
    server.push(id, "pushed", &[record("p", 0), record("q", 0), record("q", 1)]);
    let (_, sets) = wait_sink(&contents(&[("p", 1), ("q", 2)]));
    assert_eq!(fold_sets(&sets), contents(&[("p", 1), ("q", 2)]));

    // One push changes `p` and `q`: four changes, all at the push's one timestamp.
    server.push(id, "pushed", &[record("p", 1), record("q", 2)]);
    let (_, sets) = wait_sink(&contents(&[("p", 2), ("q", 3)]));
    let last = sets.last().expect("a set");
    let mut changes: Vec<(String, i64, i64)> = last
        .iter()
        .map(|(row, _, d)| (row["collection"].as_str().expect("text").to_owned(), row["n"].as_i64().expect("n"), *d))
        .collect();
    changes.sort();
    let want = [("p", 1, -1), ("p", 2, 1), ("q", 2, -1), ("q", 3, 1)].map(|(c, n, d)| (c.to_owned(), n, d));
    assert_eq!(changes, want);
    assert!(last.iter().all(|(_, t, _)| *t == last[0].1), "one timestamp: {last:?}");

    // Killed with a stray file in data/ (a set whose manifest a crash lost): the restart deletes
    // it, and writes nothing, since the sets already describe the view.
    let (manifest, _) = read_sink(&moto, "out").expect("manifest");
    moto.put("lake/out/data/00000000000000000001-00000000000000000002.parquet", b"PAR1 torn");
    // Younger than keep_replaced_ms, it could be another writer's set about to be named.
    std::thread::sleep(Duration::from_millis(1100));
    let pid = server.child.id();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    drop(server);
    let server = start_with_env(&args, true, &env);
    server.sql_until("SELECT count(*) AS n FROM by_collection", &[json!({ "n": 2 })]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.keys("lake", "out/data").len() != manifest["files"].as_array().expect("files").len() {
        assert!(Instant::now() < deadline, "the stray file stays: {:?}", moto.keys("lake", "out/data"));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_sink(&moto, "out").expect("manifest").0, manifest, "nothing written again");

    // More sets than compact_after_files: folded into one set of the contents.
    let mut want = vec![("p", 2), ("q", 3)];
    for round in 0..4 {
        let c = ["r", "s", "t", "u"][round];
        server.push(id, "pushed", &[record(c, 0)]);
        want.push((c, 1));
        wait_sink(&contents(&want));
    }
    let (manifest, sets) = wait_sink(&contents(&want));
    // Six sets: the fifth made five, folded into one; the sixth follows it. The five replaced
    // are kept a second for readers of the earlier manifest, then deleted.
    assert_eq!(manifest["files"].as_array().expect("files").len(), 2, "{manifest}");
    assert_eq!(fold_sets(&sets), contents(&want));
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.keys("lake", "out/data").len() != manifest["files"].as_array().expect("files").len() {
        assert!(Instant::now() < deadline, "replaced sets stay: {:?}", moto.keys("lake", "out/data"));
        std::thread::sleep(Duration::from_millis(100));
    }

    // A second sink on the prefix (a job of only a sink, of another job's view) is refused by
    // the manifest's writer, and touches nothing.
    let second = "name = \"second\"\n[[sinks]]\nname = \"lake2\"\nview = \"by_collection\"\n[sinks.object_store]\n\
                  url = \"s3://lake/out/\"\n";
    let second_id = server.submit(second);
    let errors = server.job_errors(second_id);
    assert!(errors.contains(&format!("is written by job {id} sink `lake`")), "{errors}");
    server.push(id, "pushed", &[record("v", 0)]);
    want.push(("v", 1));
    let (manifest, _) = wait_sink(&contents(&want));
    assert_eq!(manifest["writer"], json!(format!("job {id} sink `lake`")));
    // The view a sink of another job writes is not dropped under it.
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains(&format!("sink `lake2` of job {second_id}")), "{body}");
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{second_id}"), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{body}");
}

/// Two processes started as deploy/k8s/aimatrix.yaml's StatefulSet starts its pods: its
/// ConfigMap's settings (read from the manifest), only the host name differing (`aimatrix-0`,
/// `aimatrix-1`); each takes its index from it and its peers from `cluster.hosts_pattern`. On
/// one machine the pods' DNS names become loopback addresses (pods have distinct IPs, all on
/// one port) and the listen addresses ephemeral ones. They answer as one process does, and
/// process 1 answers its probes.
#[test]
fn statefulset_pods_derive_their_index_and_peers() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/aimatrix.yaml"))
        .expect("the manifest");
    // The ConfigMap's `data`: `  KEY: "VALUE"` lines up to the next document.
    let config_map = &manifest[manifest.find("kind: ConfigMap").expect("a ConfigMap")..];
    let config_map = &config_map[..config_map.find("\n---").expect("one document")];
    let mut settings: BTreeMap<String, String> = config_map
        .lines()
        .filter_map(|line| line.strip_prefix("  ")?.split_once(": "))
        .filter(|(key, _)| key.starts_with("AIMATRIX__"))
        .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
        .collect();
    assert_eq!(settings["AIMATRIX__CLUSTER__PROCESSES"], "2");
    assert_eq!(settings["AIMATRIX__CLUSTER__PROCESS_INDEX_FROM_HOSTNAME"], "true");
    let port = common::free_port();
    let pattern = settings.get_mut("AIMATRIX__CLUSTER__HOSTS_PATTERN").expect("a hosts pattern");
    assert_eq!(pattern, "aimatrix-{i}.aimatrix-peers:2101");
    *pattern = format!("127.1.{{i}}.1:{port}");
    let pattern = pattern.clone();
    for (key, on_one_machine) in [
        ("AIMATRIX__CLUSTER__LISTEN", ""),
        ("AIMATRIX__HTTP__LISTEN", "127.0.0.1:0"),
        ("AIMATRIX__PGWIRE__LISTEN", ""),
        ("AIMATRIX__STORAGE__URL", ""),
    ] {
        *settings.get_mut(key).unwrap_or_else(|| panic!("{key} in the ConfigMap")) = on_one_machine.to_owned();
    }
    let pod = |ordinal: usize| -> Server {
        let hostname = format!("aimatrix-{ordinal}");
        let mut env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("HOSTNAME", &hostname));
        let mut server = start_with_env(&[], false, &env);
        if ordinal == 0 {
            // (start_with_env reads the address from the line that names it.)
            let deadline = Instant::now() + Duration::from_secs(120);
            while server.base.is_empty() {
                let line = server.stderr.lock().expect("stderr").recv_timeout(Duration::from_millis(200));
                if let Ok(line) = line
                    && let Some(at) = line.find("HTTP API on http://")
                {
                    let address = line[at + "HTTP API on http://".len()..].split_whitespace().next().unwrap_or("");
                    server.base = format!("http://{address}");
                }
                assert!(Instant::now() < deadline, "process 0 did not say where it listens");
            }
        }
        server
    };
    let p1 = pod(1);
    let p0 = pod(0);
    let single = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let job = push_job(
        "pods",
        "pods-in",
        "by_collection",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    );
    let lines: Vec<String> = (0..2_000).map(pipeline_event).collect();
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    let mut answers = Vec::new();
    for server in [&p0, &single] {
        let id = server.submit(&job);
        for chunk in lines.chunks(500) {
            server.push(id, "pods-in", chunk);
        }
        answers.push(server.sql_until(sql, &by_collection_of(lines.len())));
    }
    assert_eq!(answers[0], by_collection_of(lines.len()));
    assert_eq!(answers[0], answers[1]);

    // Process 1 answers its probes, and nothing else.
    let deadline = Instant::now() + Duration::from_secs(60);
    let probes = loop {
        let line = p1.stderr.lock().expect("stderr").recv_timeout(Duration::from_millis(200));
        if let Ok(line) = line
            && let Some(at) = line.find("probes on http://")
        {
            break line[at + "probes on ".len()..].split('/').take(3).collect::<Vec<_>>().join("/");
        }
        assert!(Instant::now() < deadline, "process 1 did not say where it answers probes");
    };
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200), ("/v1/jobs", 404)] {
        let response = agent.get(&format!("{probes}{path}")).call().expect("answered");
        assert_eq!(response.status().as_u16(), want, "{path}");
    }
    // `aimatrix health`, the image's HEALTHCHECK: exit 0 on a 200, 1 otherwise.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    for (server, ready, healthy) in [(&probes, false, true), (&probes, true, true), (&closed, false, false)] {
        let mut health = Command::new(env!("CARGO_BIN_EXE_aimatrix"));
        health.args(["health", "--server", server]);
        if ready {
            health.arg("--ready");
        }
        let out = health.output().expect("runs");
        assert_eq!(out.status.success(), healthy, "{server} {ready}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(if healthy { 0 } else { 1 }));
    }
    // With TLS, every pod answers its probes over HTTPS, as process 0 serves its API (one pod
    // template, one probe scheme): two more processes, checked with `aimatrix health`.
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = common::certificates(dir.path());
    let tls_pattern = format!("127.1.{{i}}.2:{}", common::free_port());
    let tls_pod = |ordinal: usize| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aimatrix"));
        command
            .arg("serve")
            .envs(settings.iter())
            .env("AIMATRIX__CLUSTER__HOSTS_PATTERN", &tls_pattern)
            .env("AIMATRIX__TLS__CERT", &cert)
            .env("AIMATRIX__TLS__KEY", &key)
            .env("HOSTNAME", format!("aimatrix-{ordinal}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tls {ordinal}] {line}");
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let mut pods = [tls_pod(1), tls_pod(0)];
    let urls: Vec<String> = pods
        .iter()
        .map(|(_, rx)| {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
                    && let Some(at) = line.find("https://")
                {
                    break line[at..].split(['/', ' ', ';']).take(3).collect::<Vec<_>>().join("/");
                }
                assert!(Instant::now() < deadline, "no https address");
            }
        })
        .collect();
    for url in &urls {
        // (Process 0 is ready once every collection has passed time 0.)
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
                .args(["health", "--ready", "--server", url, "--ca-cert"])
                .arg(&ca)
                .output()
                .expect("runs");
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (child, _) in &mut pods {
        let _ = child.kill();
        let _ = child.wait();
    }
    // A pod whose name has no index is refused at start, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .arg("serve")
        .envs(settings.iter())
        .env("AIMATRIX__CLUSTER__HOSTS_PATTERN", &pattern)
        .env("HOSTNAME", "aimatrix")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("\"aimatrix\" does not end in -N"), "{stderr}");
}

/// The introspection relations: `aimatrix_jobs` lists jobs and SQL views with their state,
/// `aimatrix_frontiers` each collection's frontier (past the timestamp of a push once its rows
/// are visible), `aimatrix_subscriptions` the subscriptions open; the catalog lists them.
#[test]
fn introspection_relations_show_jobs_frontiers_and_subscriptions() {
    let server = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let count = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let kept = server.submit(&push_job("kept", "kept-in", "kept_v", count));
    let gone = server.submit(&push_job("gone", "gone-in", "gone_v", count));
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{gone}"), None);
    assert_eq!(status, 200, "{body}");
    server.sql("CREATE MATERIALIZED VIEW big_collections AS SELECT collection FROM kept_v WHERE n > 1");
    let pushed = server.push(kept, "kept-in", &[pipeline_event(0), pipeline_event(4)]);
    server.sql_until("SELECT n FROM kept_v", &[json!({ "n": 2 })]);

    let jobs = server.sql("SELECT id, name, kind, state, sources, views, sinks, errors FROM aimatrix_jobs ORDER BY id");
    let job = |id: u64, name: &str, kind: &str, state: &str, sources: &str, views: &str| {
        json!({ "id": id, "name": name, "kind": kind, "state": state, "sources": sources, "views": views,
                "sinks": "", "errors": null })
    };
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert_eq!(jobs[0], job(kept, "kept", "job", "running", "kept-in", "kept_v"));
    assert_eq!(jobs[1], job(gone, "gone", "job", "cancelled", "gone-in", "gone_v"));
    assert_eq!(jobs[2]["kind"], "view");
    assert_eq!(jobs[2]["views"], "big_collections");
    assert_eq!(jobs[2]["state"], "running");

    let frontier = server.sql("SELECT frontier, lag_ms FROM aimatrix_frontiers WHERE collection = 'kept_v'");
    assert_eq!(frontier.len(), 1, "{frontier:?}");
    let at = pushed["timestamp"].as_i64().expect("the push's timestamp");
    assert!(frontier[0]["frontier"].as_i64().expect("frontier") > at, "{frontier:?} vs {at}");
    assert!(frontier[0]["lag_ms"].as_i64().expect("lag") >= 0);
    let frontiers = server.sql("SELECT count(*) AS n FROM aimatrix_frontiers WHERE collection IN ('spans', 'gone_v')");
    assert_eq!(frontiers, vec![json!({ "n": 1 })], "spans is maintained, gone_v dropped");

    let open = "SELECT collection, client, progressed IS NOT NULL AS caught_up FROM aimatrix_subscriptions";
    assert_eq!(server.sql(open), Vec::<Value>::new());
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let (mut socket, _) =
        tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=kept_v")).expect("subscribe");
    let _ = socket.read().expect("the snapshot");
    let want = [json!({ "collection": "kept_v", "client": "http", "caught_up": true })];
    assert_eq!(server.sql_until(open, &want).len(), 1);
    socket.close(None).expect("close");
    drop(socket);
    assert_eq!(server.sql_until(open, &[]), Vec::<Value>::new());

    // Listed in the catalog; a view cannot read them (they are not the dataflows' collections).
    let (_, catalog) = server.call("GET", "/v1/catalog", None);
    let names: Vec<&str> =
        catalog["relations"].as_array().expect("relations").iter().filter_map(|r| r["name"].as_str()).collect();
    for name in ["aimatrix_jobs", "aimatrix_frontiers", "aimatrix_subscriptions"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let (status, body) = server.call(
        "POST",
        "/v1/sql",
        Some(&json!({ "sql": "CREATE MATERIALIZED VIEW job_states AS SELECT state FROM aimatrix_jobs" }).to_string()),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("an introspection relation"), "{body}");
    let (status, body) = server.call(
        "POST",
        "/v1/sql",
        Some(&json!({ "sql": "CREATE MATERIALIZED VIEW aimatrix_jobs AS SELECT 1 AS one" }).to_string()),
    );
    assert_eq!(status, 409, "{body}");
    // It exists, as far as IF NOT EXISTS goes; it cannot be dropped, nor subscribed to.
    let (status, body) = server.call(
        "POST",
        "/v1/sql",
        Some(&json!({ "sql": "CREATE MATERIALIZED VIEW IF NOT EXISTS aimatrix_jobs AS SELECT 1 AS one" }).to_string()),
    );
    assert_eq!((status, &body["existed"]), (200, &json!(true)), "{body}");
    let (status, body) =
        server.call("POST", "/v1/sql", Some(&json!({ "sql": "DROP MATERIALIZED VIEW aimatrix_jobs" }).to_string()));
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("an introspection relation of the server; it cannot be dropped"), "{body}");
    let (status, body) = server.call("GET", "/v1/subscribe?view=aimatrix_jobs", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("has no changes to subscribe to"), "{body}");
}

/// A job submitted at run time whose views read one relation in three ways (two of them the
/// same columns) gets each view's columns from one fan-out over the relation's imported
/// arrangement: every view's rows are the pushed records projected and filtered here.
#[test]
fn run_time_views_that_project_one_relation_differently_get_their_columns() {
    let server = start(&["--http".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()], true);
    let mut job = push_job("shapes", "shapes-in", "ids", "SELECT document_id, version FROM knowledge_events");
    job.push_str("sizes = \"SELECT collection, size_bytes FROM knowledge_events WHERE size_bytes > 300\"\n");
    job.push_str("versions = \"SELECT version, document_id FROM knowledge_events WHERE version < 5\"\n");
    let id = server.submit(&job);
    let pushed: Vec<(String, String, i64, i64)> =
        (0..12).map(|i| (format!("c-{}", i % 2), format!("d-{}", i % 5), i, i * 70)).collect();
    server.push(id, "shapes-in", &lines(&pushed));
    let sorted = |mut rows: Vec<Value>| {
        rows.sort_by_key(|r| r.to_string());
        rows
    };
    let want_ids = sorted(pushed.iter().map(|(_, d, v, _)| json!({ "document_id": d, "version": v })).collect());
    let want_sizes = sorted(
        pushed.iter().filter(|p| p.3 > 300).map(|(c, _, _, s)| json!({ "collection": c, "size_bytes": s })).collect(),
    );
    let want_versions = sorted(
        pushed.iter().filter(|p| p.2 < 5).map(|(_, d, v, _)| json!({ "version": v, "document_id": d })).collect(),
    );
    for (view, want) in [("ids", want_ids), ("sizes", want_sizes), ("versions", want_versions)] {
        assert!(!want.is_empty());
        let sql = format!("SELECT * FROM {view}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = sorted(server.sql(&sql));
        while got != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            got = sorted(server.sql(&sql));
        }
        assert_eq!(got, want, "{view}");
    }
}

/// Point queries (`SELECT columns FROM collection WHERE column = literal AND …`) are answered
/// by one peek, without DataFusion: their rows are the pushed records that match, worked out
/// here (duplicates twice, NULLs as null), and their columns and rows are exactly those of
/// DataFusion's plan of the same query (forced by parentheses around the condition, which
/// the point path leaves to DataFusion); `/metrics` counts the point queries, and only them.
#[test]
fn point_queries_are_answered_by_a_peek_as_datafusion_answers_them() {
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--pgwire", "127.0.0.1:0", "--workers", "2"].map(String::from).into();
    let server = start(&args, true);
    let view = "SELECT document_id, collection, version, size_bytes FROM knowledge_events";
    let id = server.submit(&push_job("points", "points-in", "docs_by_id", view));
    // (collection, document, version, size): documents of 3 collections, one duplicated
    // record, sizes missing on some, a quote in an id.
    type Doc = (String, String, i64, Option<i64>);
    let mut records: Vec<Doc> = (0..60)
        .map(|i| (format!("p-{}", i % 3), format!("doc-{}", i % 11), i, (i % 4 != 0).then_some(i * 10)))
        .collect();
    records.push(records[7].clone());
    records.push(("p-0".into(), "it's".into(), 99, None));
    let lines: Vec<String> = records
        .iter()
        .map(|(c, d, v, size)| json!({ "c": c, "id": d, "v": v, "size": size, "t": 1_700_000_000 }).to_string())
        .collect();
    server.push(id, "points-in", &lines);

    let row = |(c, d, v, size): &Doc| json!({ "collection": c, "document_id": d, "version": v, "size_bytes": size });
    let sorted = |mut rows: Vec<Value>| {
        rows.sort_by_key(|r| r.to_string());
        rows
    };
    let expected = |keep: &dyn Fn(&Doc) -> bool, columns: &[&str]| {
        sorted(
            records
                .iter()
                .filter(|r| keep(r))
                .map(|r| {
                    let all = row(r);
                    Value::Object(columns.iter().map(|c| (c.to_string(), all[*c].clone())).collect())
                })
                .collect(),
        )
    };
    let all = ["document_id", "collection", "version", "size_bytes"];
    let cases: Vec<(&str, &str, Vec<Value>)> = vec![
        ("SELECT * FROM docs_by_id WHERE", "document_id = 'doc-7'", expected(&|r| r.1 == "doc-7", &all)),
        (
            "SELECT size_bytes, collection FROM docs_by_id WHERE",
            "collection = 'p-1' AND version = 4",
            expected(&|r| r.0 == "p-1" && r.2 == 4, &["size_bytes", "collection"]),
        ),
        (
            "select VERSION, Document_Id from DOCS_BY_ID where",
            "'p-2' = COLLECTION and document_id = 'doc-2'",
            expected(&|r| r.0 == "p-2" && r.1 == "doc-2", &["version", "document_id"]),
        ),
        ("SELECT * FROM docs_by_id WHERE", "document_id = 'it''s'", expected(&|r| r.1 == "it's", &all)),
        ("SELECT * FROM docs_by_id WHERE", "document_id = 'none'", Vec::new()),
        ("SELECT collection FROM docs_by_id WHERE", "version = 1 AND version = 2", Vec::new()),
    ];
    for (select, condition, want) in &cases {
        let point = format!("{select} {condition}");
        let (status, fast) = server.call("POST", "/v1/sql", Some(&json!({ "sql": point }).to_string()));
        assert_eq!(status, 200, "{point}: {fast}");
        let planned = format!("{select} ({condition})");
        let (status, slow) = server.call("POST", "/v1/sql", Some(&json!({ "sql": planned }).to_string()));
        assert_eq!(status, 200, "{planned}: {slow}");
        let rows = |answer: &Value| sorted(answer["rows"].as_array().cloned().unwrap_or_default());
        assert_eq!(rows(&fast), *want, "{point}");
        assert_eq!(rows(&slow), *want, "{planned}");
        assert_eq!(fast["columns"], slow["columns"], "{point}");
    }
    // A canonical relation too, all of its columns.
    let point = "SELECT * FROM knowledge_events WHERE document_id = 'doc-7' AND collection = 'p-1'";
    let (_, fast) = server.call("POST", "/v1/sql", Some(&json!({ "sql": point }).to_string()));
    let planned = "SELECT * FROM knowledge_events WHERE (document_id = 'doc-7' AND collection = 'p-1')";
    let (_, slow) = server.call("POST", "/v1/sql", Some(&json!({ "sql": planned }).to_string()));
    assert_eq!(fast["columns"], slow["columns"]);
    assert_eq!(
        fast["rows"].as_array().map(Vec::len),
        Some(records.iter().filter(|r| r.1 == "doc-7" && r.0 == "p-1").count())
    );
    assert_eq!(fast["rows"], slow["rows"]);

    // A prepared statement over pgwire: its parameters are the values.
    let pg_port = server.pg_port.expect("pgwire listens");
    let mut client = postgres::Client::connect(
        &format!("host=127.0.0.1 port={pg_port} user=reader dbname=aimatrix"),
        postgres::NoTls,
    )
    .expect("a pgwire connection");
    let statement = client
        .prepare("SELECT version, size_bytes FROM docs_by_id WHERE document_id = $1 AND collection = $2")
        .expect("prepared");
    let mut got: Vec<(i64, Option<i64>)> =
        client.query(&statement, &[&"doc-7", &"p-1"]).expect("query").iter().map(|r| (r.get(0), r.get(1))).collect();
    got.sort();
    let mut want: Vec<(i64, Option<i64>)> =
        records.iter().filter(|r| r.1 == "doc-7" && r.0 == "p-1").map(|r| (r.2, r.3)).collect();
    want.sort();
    assert_eq!(got, want);
    let ids: Vec<String> = client
        .query("SELECT document_id FROM docs_by_id WHERE version = $1", &[&4_i64])
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec!["doc-4".to_owned()]);
    server.metric_until(&format!("aimatrix_sql_point_queries_total {}", cases.len() + 3));
}

/// The relations built from timely's and differential's logging: `aimatrix_arrangements`
/// holds, summed over the workers, exactly the updates the pushes put into `knowledge_events`
/// (50 distinct rows, one update each), and its arrange operator received those 50 records
/// (its activations by length, `aimatrix_operator_durations`, add up to its activations);
/// `aimatrix_dataflows` names the agent state and the job's dataflow, which goes when the job
/// is cancelled; `/metrics` has the same counts.
#[test]
fn logging_relations_count_arrangements_operators_and_dataflows() {
    let server = start(&["--http".into(), "127.0.0.1:0".into(), "--workers".into(), "2".into()], true);
    let count = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let id = server.submit(&push_job("logged", "logged-in", "logged_v", count));
    let events: Vec<String> = (0..50).map(pipeline_event).collect();
    server.push(id, "logged-in", &events[..20]);
    server.push(id, "logged-in", &events[20..]);
    let want: Vec<Value> =
        (0..4).map(|c| json!({ "collection": format!("c{c}"), "n": if c < 2 { 13 } else { 12 } })).collect();
    assert_eq!(server.sql_until("SELECT collection, n FROM logged_v ORDER BY collection", &want), want);

    // Reports arrive about once a second: poll.
    let arranged = "SELECT sum(records) AS records, sum(bytes) > 0 AS sized, count(DISTINCT worker) AS workers \
                    FROM aimatrix_arrangements WHERE collection = 'knowledge_events'";
    let want = [json!({ "records": 50, "sized": true, "workers": 2 })];
    assert_eq!(server.sql_until(arranged, &want), want);
    let received = "SELECT sum(records_received) AS n, min(activations) > 0 AS scheduled \
                    FROM aimatrix_operators WHERE name = 'Arrange knowledge_events'";
    assert_eq!(
        server.sql_until(received, &[json!({ "n": 50, "scheduled": true })]),
        [json!({ "n": 50, "scheduled": true })]
    );
    // Its activations by length add up to its activations, on each worker.
    let histogram = "SELECT count(*) AS workers FROM aimatrix_operators o JOIN (SELECT worker, id, \
                     sum(activations) AS n, min(duration_ns) AS shortest FROM aimatrix_operator_durations \
                     GROUP BY worker, id) d ON o.worker = d.worker AND o.id = d.id \
                     WHERE o.name = 'Arrange knowledge_events' AND o.activations = d.n AND d.shortest >= 1";
    assert_eq!(server.sql_until(histogram, &[json!({ "workers": 2 })]), [json!({ "workers": 2 })]);

    let dataflows = format!(
        "SELECT name, count(*) AS workers, min(operators) > 0 AS operated FROM aimatrix_dataflows \
         WHERE name IN ('agent state', 'job {id}') GROUP BY name ORDER BY name"
    );
    let both = [
        json!({ "name": "agent state", "workers": 2, "operated": true }),
        json!({ "name": format!("job {id}"), "workers": 2, "operated": true }),
    ];
    assert_eq!(server.sql_until(&dataflows, &both), both);
    // The job's view's arrangement is in its dataflow, with the view's rows.
    let job_arrangements = format!(
        "SELECT sum(a.records) >= 4 AS held FROM aimatrix_arrangements a JOIN aimatrix_dataflows d \
         ON a.worker = d.worker AND a.dataflow_id = d.id WHERE d.name = 'job {id}' AND a.collection = 'logged_v'"
    );
    assert_eq!(server.sql_until(&job_arrangements, &[json!({ "held": true })]), [json!({ "held": true })]);

    let (status, text) = server.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = text.as_str().expect("text").to_owned();
    assert!(text.lines().any(|l| l == "aimatrix_arrangement_records{collection=\"knowledge_events\"} 50"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("aimatrix_arrangement_bytes{collection=\"logged_v\"} ")), "{text}");

    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.sql_until(&dataflows, &both[..1]), both[..1]);
}

/// deploy/grafana/aimatrix.json reads only metrics the server exports: every metric name in
/// its panels' queries is a series of `GET /metrics` once a job has pushed records and a query
/// has run (a misspelt name would draw an empty panel).
#[test]
fn the_grafana_dashboard_reads_metrics_the_server_exports() {
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/aimatrix.json"))
        .expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("a query").to_owned())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let server = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let job = push_job(
        "metered",
        "metered-in",
        "metered_v",
        "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection",
    );
    let id = server.submit(&job);
    server.push(id, "metered-in", &[pipeline_event(0), "not json".into()]);
    server.sql_until("SELECT n FROM metered_v", &[json!({ "n": 1 })]);
    let (status, text) = server.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = text.as_str().expect("text").to_owned();
    let series: std::collections::BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let mut names = 0;
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for name in words.filter(|w| w.starts_with("aimatrix_") || w.starts_with("process_")) {
            assert!(series.contains(name), "`{name}` (in `{expr}`) is not exported:\n{text}");
            names += 1;
        }
    }
    assert!(names >= 15);
}

/// Local directories as object stores (`file:///DIR`): a source reads every file under its
/// directory once, also across `kill -9`, and only under the server's file roots (a symbolic
/// link out of them is not followed); a sink writes its Parquet sets and manifest into a
/// directory under the server's sink roots, and a directory outside them is refused.
#[test]
fn local_directories_are_object_stores_under_the_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    let (landing, outside, lake) = (root.join("landing"), root.join("outside"), root.join("lake"));
    for d in [&landing, &outside, &lake] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let (line, want) = (pipeline_event, by_collection_of);
    let object = |from: usize, n: usize| (from..from + n).map(line).collect::<Vec<_>>().join("\n") + "\n";
    let url = |p: &std::path::Path| format!("file://{}/", p.display());
    // A file is complete when it appears in the directory: written beside it, then renamed in.
    let place = |name: &str, body: &str| {
        std::fs::write(root.join("staged"), body).expect("write");
        std::fs::rename(root.join("staged"), landing.join(name)).expect("rename");
    };
    let mut args = durable_args(&root.join("data"));
    args.extend(["--file-root".into(), landing.display().to_string()]);
    args.extend(["--sink-root".into(), lake.display().to_string()]);
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    let job = push_job(
        "local",
        "files",
        "by_collection",
        "SELECT collection, count(*) AS n, sum(size_bytes) AS bytes FROM knowledge_events GROUP BY collection",
    )
    .replace("kind = \"push\"", "kind = \"object-store\"")
    .replace(
        "[sources.options]",
        &format!("[sources.object_store]\nurl = \"{}\"\npattern = \"*.jsonl\"\n[sources.options]", url(&landing)),
    ) + &format!(
        "\n[[sinks]]\nname = \"lake\"\nview = \"by_collection\"\n[sinks.object_store]\nurl = \"{}\"\n\
         flush_interval_ms = 100\n",
        url(&lake.join("by_collection"))
    );

    let mut lines = 0;
    place("a.jsonl", &format!("{}\nnot json\n{}\n", line(0), line(1)));
    lines += 2;
    std::fs::write(landing.join("readme.txt"), "not a record\n").expect("write");
    // A link out of the roots: its file is not read (the pattern matches its name).
    std::fs::write(outside.join("secret.jsonl"), object(10_000, 7)).expect("write");
    std::os::unix::fs::symlink(outside.join("secret.jsonl"), landing.join("link.jsonl")).expect("symlink");
    // Neither a link to a directory out of the roots nor a loop is walked; hidden and marker
    // files are skipped (as a writer's staging files); a name that is not UTF-8 is one error.
    std::fs::create_dir(outside.join("deep")).expect("mkdir");
    std::fs::write(outside.join("deep/more.jsonl"), object(20_000, 3)).expect("write");
    std::os::unix::fs::symlink(&outside, landing.join("out")).expect("symlink");
    std::os::unix::fs::symlink(&landing, landing.join("loop")).expect("symlink");
    std::fs::write(landing.join(".staged.jsonl"), object(30_000, 5)).expect("write");
    std::fs::write(landing.join("_SUCCESS.jsonl"), object(40_000, 5)).expect("write");
    let bad_name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"bad\xff.jsonl");
    std::fs::write(landing.join(bad_name), object(50_000, 5)).expect("write");
    let server = start(&args, true);
    for (bad, status, says) in [
        (job.replace(&url(&landing), &url(&outside)), 403, "not under the server's file roots"),
        (job.replace(&url(&lake.join("by_collection")), &url(&outside)), 403, "not under the server's sink roots"),
        (job.replace(&url(&landing), "file:///tmp/../.."), 403, "not under the server's file roots"),
        (job.replace(&url(&landing), "file://elsewhere/in/"), 400, "an absolute path on this host"),
    ] {
        let (got, body) = server.call("POST", "/v1/jobs", Some(&bad));
        assert_eq!(got, status, "{body}");
        assert!(body.to_string().contains(says), "{body}");
    }
    let id = server.submit(&job);
    assert_eq!(server.sql_until(sql, &want(lines)), want(lines));
    let errors = server.sql("SELECT location, error FROM ingest_errors ORDER BY location");
    let locations: Vec<&str> = errors.iter().map(|e| e["location"].as_str().expect("text")).collect();
    let expected =
        [format!("file://{}/a.jsonl:2", landing.display()), format!("file://{}/bad\u{fffd}.jsonl", landing.display())];
    assert_eq!(locations, expected, "{errors:?}");
    assert!(errors[1]["error"].as_str().is_some_and(|e| e.contains("not UTF-8")), "{errors:?}");
    let wait_sink = |lines: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let read = read_local_sink(&lake.join("by_collection")).map(|(_, sets)| fold_sets(&sets));
            if read.as_ref() == Some(&once(&want(lines))) {
                return;
            }
            assert!(Instant::now() < deadline, "the sink holds {read:?}, not {:?}", once(&want(lines)));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_sink(lines);

    // Files written while the server runs and while it is killed, each read once.
    let mut server = Some(server);
    for round in 0..3 {
        place(&format!("r{round}.jsonl"), &object(lines, 12_000));
        lines += 12_000;
        std::thread::sleep(Duration::from_millis(100 + 200 * round as u64));
        let pid = server.take().expect("running").child.id();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        place(&format!("s{round}.jsonl"), &object(lines, 100));
        lines += 100;
        let restarted = start(&args, true);
        assert_eq!(restarted.sql_until(sql, &want(lines)), want(lines), "after kill {round}");
        wait_sink(lines);
        server = Some(restarted);
    }
    let server = server.expect("running");
    assert_eq!(server.sql("SELECT location FROM ingest_errors").len(), 2);

    // A sink whose data/ is a link out of the sink roots writes nothing there and says why.
    let elsewhere = outside.join("sets");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::create_dir(lake.join("linked")).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, lake.join("linked/data")).expect("symlink");
    let sink_only = format!(
        "name = \"linked\"\n[[sinks]]\nname = \"linked\"\nview = \"by_collection\"\n[sinks.object_store]\n\
         url = \"{}\"\nflush_interval_ms = 100\n",
        url(&lake.join("linked"))
    );
    let linked = server.submit(&sink_only);
    let errors = server.job_errors(linked);
    assert!(errors.contains("is a symbolic link"), "{errors}");
    assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0, "nothing written out of the roots");
    let (status, body) = server.call("GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"], json!([]), "{body}");
}

/// With `envelope = "debezium"`, each change of a key is one Debezium event (`before`, `after`,
/// `op`), a delete followed by a tombstone; a restart after `kill -9` reads the events back and
/// writes nothing the topic already has; and a Kafka source of format `debezium` applies the
/// topic's events to a keyed relation that ends equal to the view.
#[test]
fn a_kafka_sink_writes_debezium_change_events() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock Kafka cluster");
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("changes", 1, 1).expect("topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let args = durable_args(&dir.path().join("data"));
    let job = push_job(
        "debezium",
        "pushed",
        "small",
        "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection HAVING count(*) < 3",
    ) + &format!(
        "\n[[sinks]]\nname = \"out\"\nview = \"small\"\nkey = [\"collection\"]\n[sinks.kafka]\nbrokers = \"{brokers}\"\ntopic = \"changes\"\nenvelope = \"debezium\"\n"
    );
    let record = |c: &str, i: usize| json!({ "c": c, "id": format!("{c}{i}"), "v": 1, "size": 1, "t": 1 }).to_string();
    let key = |c: &str| json!({ "collection": c }).to_string();
    let row = |c: &str, n: i64| json!({ "collection": c, "n": n });
    let wait_messages = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = topic_messages(&brokers, "changes");
            if messages.len() >= n || Instant::now() > deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let server = start(&args, true);
    let (status, body) = server.call("POST", "/v1/jobs", Some(&job.replace("\"debezium\"\n", "\"avro\"\n")));
    assert_eq!(status, 400, "{body}");
    let id = server.submit(&job);
    server.push(id, "pushed", &[record("p", 0), record("q", 0)]);
    let mut want = vec![
        (key("p"), Some(json!({ "before": null, "after": row("p", 1), "op": "c" }))),
        (key("q"), Some(json!({ "before": null, "after": row("q", 1), "op": "c" }))),
    ];
    let mut got = wait_messages(2);
    // One push: its two events in either order.
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);

    // `p` changes (an update), `q` leaves the view (a delete, then a tombstone).
    server.push(id, "pushed", &[record("p", 1), record("q", 1), record("q", 2)]);
    want.push((key("p"), Some(json!({ "before": row("p", 1), "after": row("p", 2), "op": "u" }))));
    want.push((key("q"), Some(json!({ "before": row("q", 1), "after": null, "op": "d" }))));
    want.push((key("q"), None));
    let got = wait_messages(5);
    assert_eq!(got[..2].len(), 2);
    let mut later = got[2..].to_vec();
    later.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(later, want[2..]);

    // Killed and restarted: the events are read back; nothing is written again.
    let pid = server.child.id();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    drop(server);
    let server = start(&args, true);
    server.sql_until("SELECT count(*) AS n FROM small", &[json!({ "n": 1 })]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(topic_messages(&brokers, "changes").len(), 5, "nothing written again");
    server.push(id, "pushed", &[record("r", 0)]);
    let got = wait_messages(6);
    assert_eq!(got[5], (key("r"), Some(json!({ "before": null, "after": row("r", 1), "op": "c" }))));

    // The events read back as a change stream (format `debezium`) into a relation keyed like the
    // sink: it holds what the view holds, p = 2 (created, then updated) and r = 1, and q, deleted
    // (its tombstone skipped), is gone.
    let mirror = format!(
        "name = \"mirror\"\n[[sources]]\nname = \"cdc\"\nkind = \"kafka\"\nformat = \"debezium\"\n[sources.kafka]\n\
         brokers = \"{brokers}\"\ntopic = \"changes\"\n[sources.relation]\nname = \"mirrored\"\nkey = [\"collection\"]\n\
         columns = [{{ name = \"collection\", type = \"text\" }}, {{ name = \"n\", type = \"bigint\" }}]\n"
    );
    server.submit(&mirror);
    let want = [json!({ "collection": "p", "n": 2 }), json!({ "collection": "r", "n": 1 })];
    let query = "SELECT collection, n FROM mirrored ORDER BY collection";
    assert_eq!(server.sql_until(query, &want), want);
    assert_eq!(server.sql("SELECT collection, n FROM small ORDER BY collection"), want);
    assert_eq!(server.sql("SELECT count(*) AS n FROM ingest_errors"), [json!({ "n": 0 })]);
}

/// A real single-node Apache Kafka broker (`../shared/services/kafka-broker.sh`: Kafka 4.1 in
/// KRaft mode, its jars fetched once from Maven Central), stopped when dropped.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl Broker {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/services/kafka-broker.sh")
    }

    fn start() -> Broker {
        let broker = Broker {
            dir: tempfile::tempdir().expect("tempdir"),
            port: common::free_port(),
            controller_port: common::free_port(),
        };
        broker.up();
        broker
    }

    /// Starts it (again: the data in its directory is kept).
    fn up(&self) {
        let output = Command::new("bash")
            .arg(Self::script())
            .args(["start", &self.port.to_string()])
            .arg(self.dir.path())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .output()
            .expect("kafka-broker.sh runs");
        assert!(
            output.status.success(),
            "kafka-broker.sh start: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
        );
    }

    /// Stops it (TERM, then KILL).
    fn down(&self) {
        let _ = Command::new("bash").arg(Self::script()).arg("stop").arg(self.dir.path()).output();
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions.
    fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", self.brokers()).create().expect("an admin client");
        let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(admin.create_topics(&topics, &options)).expect("create topics");
        for result in results {
            result.expect("topic created");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// The pipeline end to end against a real Kafka broker and an S3 server, killed again and
/// again: a Kafka topic → `knowledge_events` and a SQL view → an upsert Kafka sink and a
/// Parquet sink. Messages keep being produced while the server is killed with `kill -9` at
/// random moments 20 times (during source batches, log writes, sink writes and compactions) and
/// restarted with the same command; the broker itself is stopped and started again midway. At
/// the end the view, the sink topic folded by key and the Parquet sets folded by row all equal
/// the recomputation of every message produced: nothing lost, nothing twice.
#[test]
fn a_kafka_pipeline_survives_kill_9_and_a_broker_restart() {
    use rand::{Rng, SeedableRng};
    let broker = Broker::start();
    let brokers = broker.brokers();
    let (topic, partitions) = ("events", 3);
    broker.create_topic(topic, partitions);
    broker.create_topic("by-collection", 2);
    let moto = start_moto("lake");
    let endpoint = moto.endpoint();
    let env = s3_env(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let args = durable_args(&dir.path().join("data"));
    let job = kafka_job(&brokers, topic)
        + &format!(
            r#"
[[sinks]]
name = "topic"
view = "by_collection"
key = ["collection"]
[sinks.kafka]
brokers = "{brokers}"
topic = "by-collection"
[sinks.kafka.properties]
"reconnect.backoff.max.ms" = "200"

[[sinks]]
name = "lake"
view = "by_collection"
[sinks.object_store]
url = "s3://lake/by_collection/"
flush_interval_ms = 200
compact_after_files = 8
keep_replaced_ms = 0
"#
        );
    let (message, want) = (pipeline_event, by_collection_of);
    let sql = "SELECT * FROM by_collection ORDER BY collection";
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);

    let mut produced = 300;
    produce(&brokers, topic, partitions, &(0..produced).map(message).collect::<Vec<_>>());
    let server = start_with_env(&args, true, &env);
    server.submit(&job);
    let mut server = Some(server);
    for round in 0..20 {
        let batch: Vec<String> = (produced..produced + 200).map(message).collect();
        let producer = {
            let brokers = brokers.clone();
            std::thread::spawn(move || {
                for chunk in batch.chunks(25) {
                    produce(&brokers, topic, partitions, chunk);
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        let pid = server.take().expect("running").child.id();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        producer.join().expect("producer");
        produced += 200;
        if round == 10 {
            // The broker goes away while the server starts again, and comes back.
            broker.down();
            let restarted = start_with_env(&args, true, &env);
            std::thread::sleep(Duration::from_secs(2));
            broker.up();
            server = Some(restarted);
        } else {
            server = Some(start_with_env(&args, true, &env));
        }
    }
    let server = server.expect("running");
    let rows = want(produced);
    assert_eq!(server.sql_until(sql, &rows), rows, "the view (seed {seed})");

    let topic_want: BTreeMap<String, Value> =
        rows.iter().map(|r| (json!({ "collection": r["collection"] }).to_string(), r.clone())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut state = read_topic(&brokers, "by-collection").0;
    while state != topic_want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        state = read_topic(&brokers, "by-collection").0;
    }
    assert_eq!(state, topic_want, "the sink topic folded by key (seed {seed})");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sets = None;
    while Instant::now() < deadline {
        sets = read_sink(&moto, "by_collection").map(|(_, sets)| fold_sets(&sets));
        if sets.as_ref() == Some(&once(&rows)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sets, Some(once(&rows)), "the Parquet sets folded (seed {seed})");
}

/// A job whose push sources declare relations of their own (`[sources.relation]`): `orders`
/// (typed columns, key `order_id`, `customer` read through a mapping) and `visits` (no key),
/// and a view over `orders`.
const SHOP_JOB: &str = r#"name = "shop"
[[sources]]
name = "orders-in"
kind = "push"
format = "json"
[sources.relation]
name = "orders"
key = ["order_id"]
columns = [
  { name = "order_id", type = "text" },
  { name = "customer", type = "text" },
  { name = "amount", type = "double" },
  { name = "placed_at", type = "timestamp" },
]
[sources.options]
time_unit = "s"
[sources.options.mapping]
customer = "/who/name"

[[sources]]
name = "visits-in"
kind = "push"
format = "json"
[sources.relation]
name = "visits"
columns = [{ name = "customer", type = "text" }, { name = "page", type = "text" }]

[views]
by_customer = "SELECT customer, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY customer"
"#;

/// Relations of any schema: sources declare their own relations (`SHOP_JOB`); a keyed one
/// holds one row per key (an upsert replaces it, and of two lines of one push with the same
/// key — decoded by two workers — the later wins); a record that does not fit the declared
/// types, or lacks its key, is in `ingest_errors` at its line; SQL views over the relations
/// (in the job, and in another job joining them with each other and with the agent state)
/// are maintained; the name of a declared relation is taken (a second declaration, or one of a
/// built-in relation's name, is refused); the declaring job cannot be cancelled while another
/// job's view reads its relation; all of it comes back after a restart. Every expected value
/// is worked out by hand from the records pushed.
#[test]
fn sources_declare_relations_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = durable_args(&dir.path().join("data"));
    let orders_sql = "SELECT order_id, customer, amount, placed_at FROM orders ORDER BY order_id";
    let want_orders = vec![
        json!({"order_id": "o1", "customer": "ann", "amount": 12.5, "placed_at": "1970-01-01T00:02:00Z"}),
        json!({"order_id": "o2", "customer": "bob", "amount": 7.25, "placed_at": null}),
    ];
    let by_customer_sql = "SELECT customer, orders, total FROM by_customer ORDER BY customer";
    let want_by_customer = vec![
        json!({"customer": "ann", "orders": 1, "total": 12.5}),
        json!({"customer": "bob", "orders": 1, "total": 7.25}),
    ];
    let loyal_sql = "SELECT customer, visits, docs FROM loyal ORDER BY customer";
    let want_loyal =
        vec![json!({"customer": "ann", "visits": 2, "docs": 0}), json!({"customer": "bob", "visits": 1, "docs": 0})];
    let errors_sql = "SELECT location, error FROM ingest_errors WHERE source = 'orders-in' ORDER BY location";
    let (shop, reader);
    {
        let server = start(&args, true);
        shop = server.submit(SHOP_JOB);
        let orders = |lines: &[Value]| lines.iter().map(Value::to_string).collect::<Vec<_>>();
        // Two workers: lines 1–2 go to one, 3–4 to the other, at one timestamp; line 3
        // replaces line 2's o2 (though its row is the smaller: position decides, not value).
        let reply = server.push(
            shop,
            "orders-in",
            &orders(&[
                json!({"order_id": "o1", "who": {"name": "ann"}, "amount": 10, "placed_at": 60}),
                json!({"order_id": "o2", "who": {"name": "bob"}, "amount": 9.5}),
                json!({"order_id": "o2", "who": {"name": "bob"}, "amount": 7.25}),
                json!({"order_id": "o3", "who": {"name": "ann"}, "amount": "lots"}),
            ]),
        );
        assert_eq!((reply["accepted"].as_u64(), reply["rejected"].as_u64()), (Some(3), Some(1)), "{reply}");
        let reply = server.push(
            shop,
            "orders-in",
            &orders(&[
                json!({"order_id": "o1", "who": {"name": "ann"}, "amount": "12.5", "placed_at": 120}),
                json!({"who": {"name": "cy"}, "amount": 1}),
            ]),
        );
        assert_eq!((reply["accepted"].as_u64(), reply["rejected"].as_u64()), (Some(1), Some(1)), "{reply}");
        let visits = [("ann", "/a"), ("ann", "/b"), ("bob", "/a")];
        let visits: Vec<String> = visits.iter().map(|(c, p)| json!({"customer": c, "page": p}).to_string()).collect();
        server.push(shop, "visits-in", &visits);

        assert_eq!(server.sql_until(orders_sql, &want_orders), want_orders);
        assert_eq!(server.sql_until(by_customer_sql, &want_by_customer), want_by_customer);
        let errors = server.sql(errors_sql);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0]["location"], json!(format!("POST /v1/ingest/{shop}/orders-in:2")));
        assert_eq!(errors[0]["error"], json!("missing key column `order_id` (/order_id)"));
        assert_eq!(errors[1]["location"], json!(format!("POST /v1/ingest/{shop}/orders-in:4")));
        assert_eq!(errors[1]["error"], json!("column `amount`: expected a number, found \"lots\""));

        // Another job's view joins the two declared relations and the agent state.
        reader = server.submit(
            r#"name = "loyalty"
[views]
loyal = "SELECT o.customer, count(*) AS visits, count(d.document_id) AS docs FROM orders o JOIN visits v ON v.customer = o.customer LEFT JOIN documents d ON d.document_id = o.customer GROUP BY o.customer"
"#,
        );
        assert_eq!(server.sql_until(loyal_sql, &want_loyal), want_loyal);

        // The names are taken; the declaring job is protected while `loyal` reads it.
        let clash = SHOP_JOB
            .replace("name = \"orders-in\"", "name = \"orders-2\"")
            .replace("name = \"visits-in\"", "name = \"visits-2\"");
        let (status, body) =
            server.call("POST", "/v1/jobs", Some(&clash.replace("[views]\nby_customer", "[views]\nby_customer_2")));
        assert_eq!(status, 409, "{body}");
        assert!(body.to_string().contains("`orders` already exists"), "{body}");
        let builtin = SHOP_JOB.replace("name = \"orders\"", "name = \"spans\"").replace("FROM orders", "FROM spans");
        let (status, body) =
            server.call("POST", "/v1/jobs", Some(&builtin.replace("orders-in", "o-in").replace("visits-in", "v-in")));
        assert_eq!(status, 409, "{body}");
        let (status, body) = server.call("DELETE", &format!("/v1/jobs/{shop}"), None);
        assert_eq!(status, 409, "{body}");
        assert!(body.to_string().contains("reads a view or relation of job"), "{body}");
    }
    let server = start(&args, true);
    assert_eq!(server.sql_until(orders_sql, &want_orders), want_orders, "after a restart");
    assert_eq!(server.sql_until(by_customer_sql, &want_by_customer), want_by_customer, "after a restart");
    assert_eq!(server.sql_until(loyal_sql, &want_loyal), want_loyal, "after a restart");
    assert_eq!(server.sql(errors_sql).len(), 2, "after a restart");
    // Cancelling the reader, then the declaring job, drops the relations.
    for job in [reader, shop] {
        let (status, body) = server.call("DELETE", &format!("/v1/jobs/{job}"), None);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.call("POST", "/v1/sql", Some(&json!({ "sql": orders_sql }).to_string()));
    assert_ne!(status, 200, "{body}");
}

/// A Kafka source that declares a keyed relation whose key is the message key: each message
/// upserts its key, a tombstone (a message with no value) deletes it, and a message that is no
/// JSON is an ingest error at its partition and offset.
#[test]
fn a_kafka_tombstone_deletes_a_key_of_a_declared_relation() {
    use rdkafka::producer::{BaseRecord, Producer};
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock Kafka cluster");
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("profiles", 1, 1).expect("topic");
    let producer: rdkafka::producer::BaseProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("a producer");
    let messages: [(&str, Option<&str>); 7] = [
        ("u1", Some(r#"{"plan": "free", "seats": 1}"#)),
        ("u2", Some(r#"{"plan": "pro", "seats": 5}"#)),
        ("u3", Some(r#"{"plan": "free", "seats": 1}"#)),
        ("u1", Some(r#"{"plan": "team", "seats": 3}"#)),
        ("u2", None),
        ("u3", Some("not json")),
        ("u4", None),
    ];
    for (key, value) in messages {
        let record = BaseRecord::<str, str>::to("profiles").key(key).partition(0);
        let record = match value {
            Some(v) => record.payload(v),
            None => record,
        };
        producer.send(record).map_err(|(e, _)| e).expect("produced");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    let job = format!(
        r#"name = "profiles"
[[sources]]
name = "profiles-in"
kind = "kafka"
format = "json"
[sources.kafka]
brokers = "{brokers}"
topic = "profiles"
[sources.relation]
name = "profiles"
key = ["user_id"]
columns = [{{ name = "user_id", type = "text" }}, {{ name = "plan", type = "text" }}, {{ name = "seats", type = "bigint" }}]
[sources.options.mapping]
user_id = {{ metadata = "/key" }}
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&durable_args(&dir.path().join("data")), true);
    server.submit(&job);
    // u1 upserted twice (the later wins), u2 deleted by its tombstone, u3's bad message leaves
    // its earlier row, u4's tombstone deletes nothing.
    let want = vec![
        json!({"user_id": "u1", "plan": "team", "seats": 3}),
        json!({"user_id": "u3", "plan": "free", "seats": 1}),
    ];
    let sql = "SELECT user_id, plan, seats FROM profiles ORDER BY user_id";
    assert_eq!(server.sql_until(sql, &want), want);
    let errors = server.sql("SELECT location FROM ingest_errors WHERE source = 'profiles-in'");
    assert_eq!(errors, vec![json!({"location": "kafka:profiles/0@5"})]);
}

/// The pgwire front end (`serve --pgwire ADDR`) as clients use it: a driver (rust-postgres,
/// over the extended query protocol) runs a prepared statement with a parameter and reads
/// typed values (text, double, timestamptz, bigint), runs the simple protocol, creates a
/// materialized view, follows `COPY (SUBSCRIBE TO …) TO STDOUT` (a change pushed after it
/// started comes as a retraction and an insertion, with `aimatrix_diff`), and psql's `\d`
/// describes a view with PostgreSQL type names. Expected values are the `SHOP_JOB` records
/// worked out by hand.
#[test]
fn sql_clients_query_over_pgwire() {
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--workers", "2", "--pgwire", "127.0.0.1:0"].map(String::from).into();
    let server = start(&args, true);
    let pg_port = server.pg_port.expect("pgwire listens");
    let shop = server.submit(SHOP_JOB);
    let lines = |values: &[Value]| values.iter().map(Value::to_string).collect::<Vec<_>>();
    server.push(
        shop,
        "orders-in",
        &lines(&[
            json!({"order_id": "o1", "who": {"name": "ann"}, "amount": 12.5, "placed_at": 120}),
            json!({"order_id": "o2", "who": {"name": "bob"}, "amount": 7.25}),
            json!({"order_id": "o3", "who": {"name": "ann"}, "amount": 1.5, "placed_at": 60}),
        ]),
    );
    let want = vec![
        json!({"customer": "ann", "orders": 2, "total": 14.0}),
        json!({"customer": "bob", "orders": 1, "total": 7.25}),
    ];
    assert_eq!(server.sql_until("SELECT * FROM by_customer ORDER BY customer", &want), want);

    let connect = move || {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={pg_port} user=reader dbname=aimatrix"),
            postgres::NoTls,
        )
        .expect("a pgwire connection")
    };
    let mut client = connect();
    // Extended protocol: a prepared statement, a text parameter, typed values.
    let statement = client
        .prepare("SELECT order_id, amount, placed_at FROM orders WHERE customer = $1 ORDER BY order_id")
        .expect("prepared");
    let rows = client.query(&statement, &[&"ann"]).expect("query");
    let got: Vec<(String, f64, Option<std::time::SystemTime>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let at = |s: u64| Some(std::time::UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(got, vec![("o1".to_owned(), 12.5, at(120)), ("o3".to_owned(), 1.5, at(60))]);
    let n: i64 = client.query_one("SELECT count(*) FROM orders WHERE amount > $1", &[&5.0_f64]).expect("count").get(0);
    assert_eq!(n, 2);
    // A parameter the client types itself (psycopg sends a Python float as float8, a bool as
    // boolean) is taken only at its value and as its kind: 2.0 for the BIGINT `orders` is 2,
    // but 1.5 is no BIGINT (it was taken as 1, matching bob), and a boolean is neither text
    // nor a number.
    let typed = client
        .prepare_typed("SELECT customer FROM by_customer WHERE orders = $1", &[postgres::types::Type::FLOAT8])
        .expect("prepared");
    let rows = client.query(&typed, &[&2.0_f64]).expect("2.0 is 2");
    assert_eq!(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(), ["ann"]);
    let mismatch = Some(&postgres::error::SqlState::DATATYPE_MISMATCH);
    let err = client.query(&typed, &[&1.5_f64]).expect_err("1.5 is no BIGINT");
    assert_eq!(err.code(), mismatch, "{err:?}");
    let by_bool = client
        .prepare_typed("SELECT count(*) FROM orders WHERE customer = $1", &[postgres::types::Type::BOOL])
        .expect("prepared");
    let err = client.query(&by_bool, &[&true]).expect_err("a boolean is no text");
    assert_eq!(err.code(), mismatch, "{err:?}");
    // Nor a number: `orders = true` is no `orders = 1`. And -0.0 is 0 (no customer has 0).
    let bool_for_bigint = client
        .prepare_typed("SELECT customer FROM by_customer WHERE orders = $1", &[postgres::types::Type::BOOL])
        .expect("prepared");
    let err = client.query(&bool_for_bigint, &[&true]).expect_err("a boolean is no BIGINT");
    assert_eq!(err.code(), mismatch, "{err:?}");
    assert!(client.query(&typed, &[&-0.0_f64]).expect("-0.0 is 0").is_empty());
    // A parameter the query does not type takes the type the client gives it, else text (it
    // was refused, the plan's column type having changed since Describe).
    let echo = client.prepare_typed("SELECT $1, $2 = $3", &[postgres::types::Type::INT8]).expect("prepared");
    let row = client.query_one(&echo, &[&5_i64, &"a", &"a"]).expect("SELECT $1");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (5, true));
    let echo = client.query_one("SELECT $1 AS v", &[&"x"]).expect("SELECT $1 untyped");
    assert_eq!(echo.get::<_, String>("v"), "x");
    // Simple protocol, and a view created over pgwire.
    client
        .batch_execute("CREATE MATERIALIZED VIEW big_orders AS SELECT order_id FROM orders WHERE amount > 5")
        .expect("created");
    let mut big = Vec::new();
    for _ in 0..600 {
        big = client
            .simple_query("SELECT order_id FROM big_orders ORDER BY order_id")
            .expect("simple query")
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        if big.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(big, ["o1", "o2"]);

    // COPY (SUBSCRIBE …): the snapshot, then bob's second order as a change of his row.
    let (tx, rx) = mpsc::channel::<String>();
    let (cancel_tx, cancel_rx) = mpsc::channel();
    let (ended_tx, ended_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut client = connect();
        let _ = cancel_tx.send(client.cancel_token());
        let reader = client.copy_out("COPY (SUBSCRIBE TO by_customer) TO STDOUT").expect("COPY OUT");
        let mut reader = std::io::BufReader::new(reader);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(line.trim_end().to_owned()).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = ended_tx.send(format!("{e:?}"));
                    break;
                }
            }
        }
    });
    let cancel = cancel_rx.recv_timeout(Duration::from_secs(30)).expect("a cancel token");
    // Columns: aimatrix_timestamp, aimatrix_diff, customer, orders, total (tab-separated).
    type Folded = BTreeMap<(String, String, String), i64>;
    let mut folded = Folded::new();
    let mut take = |rx: &mpsc::Receiver<String>, until: &dyn Fn(&Folded) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !until(&folded) && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let f: Vec<&str> = line.split('\t').collect();
                assert_eq!(f.len(), 5, "{line}");
                // (float8 as text: "14" or "14.0", as the encoder writes it.)
                let total = f[4].parse::<f64>().expect("a double").to_string();
                let key = (f[2].to_owned(), f[3].to_owned(), total);
                *folded.entry(key).or_default() += f[1].parse::<i64>().expect("a diff");
                folded.retain(|_, n| *n != 0);
            }
        }
        folded.clone()
    };
    let row = |c: &str, n: &str, t: &str| (c.to_owned(), n.to_owned(), t.to_owned());
    let snapshot = BTreeMap::from([(row("ann", "2", "14"), 1), (row("bob", "1", "7.25"), 1)]);
    assert_eq!(take(&rx, &|f| *f == snapshot), snapshot);
    server.push(shop, "orders-in", &lines(&[json!({"order_id": "o4", "who": {"name": "bob"}, "amount": 2.75})]));
    let changed = BTreeMap::from([(row("ann", "2", "14"), 1), (row("bob", "2", "10"), 1)]);
    assert_eq!(take(&rx, &|f| *f == changed), changed);

    // GET /metrics: the sources' counters (4 records pushed to orders-in, all decoded; none to
    // visits-in), the two pgwire sessions and the one pgwire subscription open, the one job (the
    // view created over pgwire is no job), the statements.
    let (status, text) = server.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    let value =
        |line: &str| text.lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit(' ').next()).map(str::to_owned);
    for (metric, want) in [
        ("aimatrix_source_records_total{source=\"orders-in\"}", "4"),
        ("aimatrix_source_decoded_total{source=\"orders-in\"}", "4"),
        ("aimatrix_source_errors_total{source=\"orders-in\"}", "0"),
        ("aimatrix_source_records_total{source=\"visits-in\"}", "0"),
        ("aimatrix_pgwire_sessions", "2"),
        ("aimatrix_subscriptions{interface=\"pgwire\"}", "1"),
        ("aimatrix_jobs{state=\"running\"}", "1"),
    ] {
        assert_eq!(value(metric).as_deref(), Some(want), "{metric} in\n{text}");
    }
    let count = |interface: &str| {
        value(&format!("aimatrix_query_duration_seconds_count{{interface=\"{interface}\",outcome=\"ok\"}}"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("pgwire") >= 4 && count("http") >= 1, "{text}");
    assert!(value("aimatrix_frontier_lag_ms{collection=\"orders\"}").is_some(), "{text}");
    assert!(value("process_resident_memory_bytes").is_some_and(|v| v.parse::<f64>().is_ok_and(|b| b > 1e6)), "{text}");

    // A cancel request (psql's Ctrl-C) ends the COPY (SUBSCRIBE) with 57014.
    cancel.cancel_query(postgres::NoTls).expect("cancel sent");
    let ended = ended_rx.recv_timeout(Duration::from_secs(30)).expect("the COPY ends");
    assert!(ended.contains("canceling statement due to user request"), "{ended}");

    // SQLSTATE codes, as PostgreSQL's.
    let code = |client: &mut postgres::Client, sql: &str| {
        client.simple_query(sql).err().and_then(|e| e.code().map(|c| c.code().to_owned())).unwrap_or_default()
    };
    assert_eq!(code(&mut client, "SELECT * FROM nope"), "42P01");
    assert_eq!(code(&mut client, "SELECT nope FROM orders"), "42703");
    assert_eq!(code(&mut client, "SELECT 1 / 0"), "22012");
    // SET statement_timeout, in PostgreSQL's units: a longer query is cancelled with 57014 and
    // PostgreSQL's message; the session goes on; 0 leaves the server's sql.timeout_ms.
    let first = |client: &mut postgres::Client, sql: &str| {
        client.simple_query(sql).expect(sql).into_iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    };
    assert_eq!(code(&mut client, "SET statement_timeout = 'soon'"), "22023");
    assert_eq!(code(&mut client, "SET statement_timeout = '-5s'"), "22023", "negative, as PostgreSQL refuses it");
    client.batch_execute("SET statement_timeout = '150ms'").expect("set");
    let slow = "SELECT count(*) FROM range(100000000000)";
    let error = client.simple_query(slow).expect_err("cancelled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    let message = error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert_eq!(message, "canceling statement due to statement timeout");
    assert_eq!(first(&mut client, "SELECT 41 + 1").as_deref(), Some("42"));
    client.batch_execute("SET statement_timeout = 0").expect("set");
    assert_eq!(first(&mut client, "SHOW statement_timeout").as_deref(), Some("0"));
    // A prepared statement whose view was replaced with other columns is refused.
    client.batch_execute("CREATE MATERIALIZED VIEW shape AS SELECT order_id FROM orders").expect("created");
    let stale = client.prepare("SELECT * FROM shape").expect("prepared");
    client.batch_execute("DROP MATERIALIZED VIEW shape").expect("dropped");
    client.batch_execute("CREATE MATERIALIZED VIEW shape AS SELECT amount FROM orders").expect("created again");
    let error = client.query(&stale, &[]).err().and_then(|e| e.code().map(|c| c.code().to_owned()));
    assert_eq!(error.as_deref(), Some("0A000"));

    // psql's \d, with PostgreSQL's type names (scripts/build-deps.sh installs psql).
    {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", "reader", "-d", "aimatrix", "-c", "\\d orders"])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql runs (Debian: apt-get install postgresql-client; scripts/build-deps.sh does)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        for (column, ty) in
            [("order_id", "text"), ("customer", "text"), ("amount", "double precision"), ("placed_at", "timestamp")]
        {
            assert!(text.lines().any(|l| l.contains(column) && l.contains(ty)), "{column} {ty}: {text}");
        }
    }
}

/// Bad bytes on the pgwire port leave the server healthy: 300 connections, generated (proptest),
/// each a startup (a valid one, an SSL or cancel request, or random bytes) followed by frames
/// of any message type with a right, short, long, negative or huge length and random payload
/// (Parse, Bind, Execute and Describe with missing or bad fields among them), then EOF. After
/// them a driver still queries, no session is left open, and nothing panicked.
#[test]
fn malformed_pgwire_messages_leave_the_server_healthy() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::io::{Read, Write};

    let (server, pg_port) = start_with_pgwire();

    fn startup() -> Vec<u8> {
        let mut body = 196_608i32.to_be_bytes().to_vec(); // protocol 3.0
        body.extend_from_slice(b"user\0reader\0database\0aimatrix\0\0");
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }
    let opening = prop_oneof![
        4 => Just(startup()),
        1 => Just([8i32.to_be_bytes(), 80_877_103i32.to_be_bytes()].concat()), // SSLRequest
        1 => any::<[u8; 8]>().prop_map(|key| [16i32.to_be_bytes().as_slice(), &80_877_102i32.to_be_bytes(), &key].concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ];
    let tag = prop_oneof![proptest::sample::select(b"QPBEDSHCXcdfFp".to_vec()), any::<u8>(),];
    // A declared length: right (None), or one that does not fit the payload.
    let length = prop_oneof![4 => Just(None), 1 => prop_oneof![Just(-1i32), Just(0), Just(3), Just(i32::MAX), 5..70i32].prop_map(Some)];
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        // Statement-shaped: a name, a query, then random parameter fields.
        (proptest::collection::vec(any::<u8>(), 0..8), "[ -~]{0,30}", proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(name, query, rest)| [name.as_slice(), b"\0", query.as_bytes(), b"\0", &rest].concat()),
    ];
    let frame = (tag, length, payload).prop_map(|(tag, length, payload)| {
        let length = length.unwrap_or(payload.len() as i32 + 4);
        [[tag].as_slice(), &length.to_be_bytes(), &payload].concat()
    });
    let case = (opening, proptest::collection::vec(frame, 0..6));
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&case, |(opening, frames)| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", pg_port)).expect("connects");
            stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
            // The server may close first: writes may fail.
            let _ = stream.write_all(&opening);
            for frame in &frames {
                let _ = stream.write_all(frame);
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // The server answers or closes; it never hangs on a connection whose client is done.
            let mut answer = Vec::new();
            let read = stream.read_to_end(&mut answer);
            prop_assert!(
                !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
                "no answer and no close after 20 s: {opening:?} {frames:?}"
            );
            Ok(())
        })
        .expect("every connection ends");

    let url = format!("host=127.0.0.1 port={pg_port} user=reader dbname=aimatrix connect_timeout=10");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("a session after the bad ones");
    assert_eq!(client.query_one("SELECT 40 + 2", &[]).expect("query").get::<_, i64>(0), 42);
    drop(client);
    server.metric_until("aimatrix_pgwire_sessions 0");
    let log: Vec<String> = server.stderr.lock().expect("log").try_iter().collect();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:?}");
}

/// A raw pgwire session for the tests that send what drivers never would.
struct RawSession(std::net::TcpStream);

impl RawSession {
    /// Connects and logs in (no authentication configured).
    fn connect(port: u16) -> RawSession {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut body = 196_608i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0reader\0database\0aimatrix\0\0");
        stream.write_all(&[((body.len() + 4) as i32).to_be_bytes().as_slice(), &body].concat()).expect("startup");
        let mut session = RawSession(stream);
        session.until(b'Z');
        session
    }

    /// Sends a message of type `tag`.
    fn send(&mut self, tag: u8, body: &[u8]) {
        use std::io::Write;
        let message = [[tag].as_slice(), &((body.len() + 4) as i32).to_be_bytes(), body].concat();
        self.0.write_all(&message).expect("sent");
    }

    /// The messages received up to and including the first of type `tag`: (type, body).
    fn until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        use std::io::Read;
        let mut messages = Vec::new();
        loop {
            let mut head = [0u8; 5];
            self.0.read_exact(&mut head).expect("a message");
            let length = i32::from_be_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
            let mut body = vec![0u8; length - 4];
            self.0.read_exact(&mut body).expect("its body");
            messages.push((head[0], body));
            if head[0] == tag {
                return messages;
            }
        }
    }
}

/// Well-formed messages with values no driver sends: an `Execute` with a row limit of -1
/// (PostgreSQL: no limit; the pgwire crate reserved room for `usize::MAX` rows and the server
/// stopped) and `SELECT $4294967296` (the parameters' types were a vector of that many
/// entries: the server took all the memory there was) are answered, and the server goes on.
#[test]
fn pgwire_row_limits_and_parameter_numbers_out_of_range_are_answered() {
    let (server, pg_port) = start_with_pgwire();
    let mut session = RawSession::connect(pg_port);
    let execute = |limit: i32| [b"\0".as_slice(), &limit.to_be_bytes()].concat();
    session.send(b'P', b"\0SELECT 7 AS seven\0\0\0");
    session.send(b'B', b"\0\0\0\0\0\0\0\0");
    session.send(b'E', &execute(-1));
    session.send(b'E', &execute(-1));
    session.send(b'S', b"");
    let answer = session.until(b'Z');
    let tags: Vec<u8> = answer.iter().map(|(tag, _)| *tag).collect();
    // ParseComplete, BindComplete, the row, its CommandComplete, then the finished portal's
    // empty CommandComplete, ReadyForQuery.
    assert_eq!(tags, b"12DCCZ".to_vec(), "{answer:?}");
    assert_eq!(&answer[2].1[6..], b"7", "{answer:?}");

    session.send(b'P', b"\0SELECT $4294967296\0\0\0");
    session.send(b'S', b"");
    let answer = session.until(b'Z');
    let error = answer.iter().find(|(tag, _)| *tag == b'E').expect("an error");
    let text = String::from_utf8_lossy(&error.1);
    assert!(text.contains("at most 65535 parameters"), "{text}");
    // Past what a 64-bit number holds, too.
    session.send(b'P', b"\0SELECT $18446744073709551616\0\0\0");
    session.send(b'S', b"");
    let answer = session.until(b'Z');
    assert!(answer.iter().any(|(tag, body)| *tag == b'E' && String::from_utf8_lossy(body).contains("at most 65535")));
    // The session and the server go on.
    session.send(b'Q', b"SELECT 40 + 2\0");
    let answer = session.until(b'Z');
    assert!(answer.iter().any(|(tag, body)| *tag == b'D' && body.ends_with(b"42")), "{answer:?}");
    assert_eq!(server.sql("SELECT 1 AS one"), vec![json!({ "one": 1 })]);
}

/// A `COPY (SUBSCRIBE …)` client that goes away while the view is quiet (nothing to write)
/// ends its subscription, its dataflow and its session within seconds, as a WebSocket
/// subscriber's do; it stayed until the view changed twice.
#[test]
fn a_copy_subscriber_that_hangs_up_on_a_quiet_view_is_noticed() {
    let (server, pg_port) = start_with_pgwire();
    let open = "SELECT count(*) AS n FROM aimatrix_subscriptions WHERE client = 'pgwire'";
    for query in [&b"COPY (SUBSCRIBE TO collection_stats) TO STDOUT\0"[..], b"SUBSCRIBE TO collection_stats\0"] {
        let mut session = RawSession::connect(pg_port);
        session.send(b'Q', query);
        // A COPY starts with its CopyOutResponse; a bare SUBSCRIBE with a notice.
        session.until(if query.starts_with(b"COPY") { b'H' } else { b'N' });
        assert_eq!(server.sql_until(open, &[json!({ "n": 1 })]), [json!({ "n": 1 })]);
        drop(session);
        assert_eq!(server.sql_until(open, &[json!({ "n": 0 })]), [json!({ "n": 0 })], "after {query:?}");
    }
    server.metric_until("aimatrix_pgwire_sessions 0");
}

/// Columns without an alias are named as PostgreSQL names them (`?column?` for a constant or
/// an operator, a function's name for its call, a cast's type), in both protocols; aliases and
/// column references keep their names.
#[test]
fn pgwire_names_unnamed_columns_as_postgresql_does() {
    let (server, pg_port) = start_with_pgwire();
    let url = format!("host=127.0.0.1 port={pg_port} user=reader dbname=aimatrix connect_timeout=10");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("a pgwire session");
    let sql = "SELECT 1, 40 + 2, count(*), sum(input_tokens) AS tokens, CAST(max(input_tokens) AS TEXT), min(name) \
               FROM spans";
    // The names psql shows for this query on PostgreSQL 16.
    let want = ["?column?", "?column?", "count", "tokens", "max", "min"];
    let prepared = client.prepare(sql).expect("prepared");
    let names: Vec<&str> = prepared.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, want, "extended protocol");
    let messages = client.simple_query(sql).expect("simple query");
    let row = messages
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, want, "simple protocol");
    assert_eq!((row.get(0), row.get(1), row.get(2)), (Some("1"), Some("42"), Some("0")));
    let named = client.query("SELECT name, 2 * 3 FROM spans UNION ALL SELECT 'x', 6", &[]).expect("union");
    let names: Vec<&str> = named[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["name", "?column?"]);
    drop(server);
}

/// The values of a `DataRow` body, as text (`None`: NULL).
fn data_row_values(body: &[u8]) -> Vec<Option<String>> {
    let columns = i16::from_be_bytes([body[0], body[1]]) as usize;
    let (mut values, mut at) = (Vec::new(), 2);
    for _ in 0..columns {
        let length = i32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        at += 4;
        if length < 0 {
            values.push(None);
        } else {
            values.push(Some(String::from_utf8_lossy(&body[at..at + length as usize]).into_owned()));
            at += length as usize;
        }
    }
    values
}

/// A bare `SUBSCRIBE` over the simple protocol sends each change as it happens — the notice,
/// the row description, the snapshot's row, then the two rows of one push (the old count
/// retracted, the new one inserted) — not once some kilobytes of rows have gathered: a client
/// that reads every message (this one) sees each change at once.
#[test]
fn a_bare_subscribe_sends_each_change_as_it_comes() {
    let (server, pg_port) = start_with_pgwire();
    let count = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let id = server.submit(&push_job("streamed", "streamed-in", "streamed_v", count));
    server.push(id, "streamed-in", &[pipeline_event(0)]);
    server.sql_until("SELECT n FROM streamed_v", &[json!({ "n": 1 })]);
    let mut session = RawSession::connect(pg_port);
    session.send(b'Q', b"SUBSCRIBE TO streamed_v\0");
    let head = session.until(b'T');
    assert_eq!(head.iter().map(|(tag, _)| *tag).collect::<Vec<_>>(), b"NT".to_vec(), "{head:?}");
    let snapshot = session.until(b'D');
    let row = data_row_values(&snapshot.last().expect("a row").1);
    assert_eq!(row[1..], [Some("1".to_owned()), Some("c0".to_owned()), Some("1".to_owned())], "diff, collection, n");
    // Event 4 is of collection c0 too: its count goes from 1 to 2.
    server.push(id, "streamed-in", &[pipeline_event(4)]);
    let mut changes: Vec<Vec<Option<String>>> =
        (0..2).map(|_| data_row_values(&session.until(b'D').last().expect("a row").1)[1..].to_vec()).collect();
    changes.sort();
    let text = |v: &[&str]| v.iter().map(|s| Some((*s).to_owned())).collect::<Vec<_>>();
    assert_eq!(changes, vec![text(&["-1", "c0", "1"]), text(&["1", "c0", "2"])]);
}

/// `pgwire.max_sessions`: a connection past it is refused with PostgreSQL's `53300 sorry, too
/// many clients already` (also for psql, which asks for SSL first) and counted in the
/// metrics; once a session closes, a new one is served. `subscribe.max_subscriptions`: a
/// subscription past it is refused (pgwire `53000`, HTTP 503), over either interface.
#[test]
fn pgwire_sessions_and_subscriptions_past_their_limits_are_refused() {
    let args: Vec<String> = ["--http", "127.0.0.1:0", "--pgwire", "127.0.0.1:0"].map(String::from).into();
    let server = start_with_env(
        &args,
        true,
        &[("AIMATRIX__PGWIRE__MAX_SESSIONS", "1"), ("AIMATRIX__SUBSCRIBE__MAX_SUBSCRIPTIONS", "1")],
    );
    let pg_port = server.pg_port.expect("pgwire listens");
    let url = format!("host=127.0.0.1 port={pg_port} user=reader dbname=aimatrix connect_timeout=10");
    let mut first = postgres::Client::connect(&url, postgres::NoTls).expect("the first session");
    assert_eq!(first.query_one("SELECT 40 + 2", &[]).expect("query").get::<_, i64>(0), 42);
    // One subscription (a cursor), then none more: not a second cursor, not a WebSocket.
    first.batch_execute("BEGIN; DECLARE c1 CURSOR FOR SUBSCRIBE spans").expect("the first subscription");
    let error = first.batch_execute("DECLARE c2 CURSOR FOR SUBSCRIBE spans").expect_err("a second is refused");
    let db = error.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "53000");
    assert_eq!(
        db.message(),
        "1 subscriptions are open, as many as subscribe.max_subscriptions allows; close one, or raise it"
    );
    first.batch_execute("ROLLBACK").expect("rolled back");
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    first.batch_execute("BEGIN; DECLARE c1 CURSOR FOR SUBSCRIBE spans").expect("a subscription again");
    match tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=spans")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a WebSocket past the limit: {other:?}"),
    }
    first.batch_execute("COMMIT").expect("cursor closed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let _socket = loop {
        match tungstenite::connect(format!("ws://127.0.0.1:{port}/v1/subscribe?view=spans")) {
            Ok((socket, _)) => break socket,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(&e, tungstenite::Error::Http(r) if r.status() == 503), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no subscription after the cursor closed: {e}"),
        }
    };
    let refused = postgres::Client::connect(&url, postgres::NoTls).err().expect("a second session is refused");
    let db = refused.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.message(), "sorry, too many clients already (pgwire.max_sessions = 1)");
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", "reader", "-d", "aimatrix", "-c", "SELECT 1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (Debian: apt-get install postgresql-client; scripts/build-deps.sh does)");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sorry, too many clients already"), "{stderr}");
    // The first session is unharmed; once it closes, another is served.
    assert_eq!(first.query_one("SELECT 1 + 1", &[]).expect("query").get::<_, i64>(0), 2);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = loop {
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("53300"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no session after the first closed: {e}"),
        }
    };
    assert_eq!(next.query_one("SELECT 3", &[]).expect("query").get::<_, i64>(0), 3);
    let (status, text) = server.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("aimatrix_pgwire_sessions_refused_total "))
        .and_then(|v| v.parse().ok())
        .expect("the refusals counter");
    assert!(refused >= 2, "{text}");
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("aimatrix_subscriptions_refused_total "))
        .and_then(|v| v.parse().ok())
        .expect("the subscriptions' refusals counter");
    assert!(refused >= 2, "{text}");
}

/// A span as an OTLP receiver got it: its name, ids, status and attributes (values as text),
/// and its resource's `service.name`.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    name: String,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// `Server`, `Internal`, … (the protobuf enum's names).
    kind: String,
    /// `Error`, `Ok`, `Unset`.
    status: String,
    attributes: BTreeMap<String, String>,
    service: String,
}

/// An OTLP/HTTP receiver, as an OpenTelemetry Collector's `otlp` receiver listens on
/// `:4318`: it decodes each `POST /v1/traces` body as the protocol's
/// `ExportTraceServiceRequest` (the official messages, `opentelemetry-proto`) and answers with
/// an empty `ExportTraceServiceResponse`.
struct OtlpReceiver {
    port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    _runtime: tokio::runtime::Runtime,
}

impl OtlpReceiver {
    fn start() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        use prost::Message;
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let kept = spans.clone();
        let receive = move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an ExportTraceServiceRequest");
                let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                {
                    Some(Any::StringValue(s)) => s.clone(),
                    Some(Any::IntValue(i)) => i.to_string(),
                    Some(Any::BoolValue(b)) => b.to_string(),
                    Some(Any::DoubleValue(d)) => d.to_string(),
                    other => format!("{other:?}"),
                };
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .map(|kv| text(&kv.value))
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        let kind = opentelemetry_proto::tonic::trace::v1::span::SpanKind::try_from(span.kind)
                            .map_or_else(|_| "?".to_owned(), |k| format!("{k:?}"));
                        let status = span.status.as_ref().map_or(0, |s| s.code);
                        let status = opentelemetry_proto::tonic::trace::v1::status::StatusCode::try_from(status)
                            .map_or_else(|_| "?".to_owned(), |c| format!("{c:?}"));
                        kept.lock().expect("spans").push(ReceivedSpan {
                            name: span.name,
                            span_id: span.span_id,
                            parent_span_id: span.parent_span_id,
                            kind,
                            status,
                            attributes: span.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect(),
                            service: service.clone(),
                        });
                    }
                }
                ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
            }
        };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive));
        runtime.spawn(async move { axum::serve(listener, app).await });
        OtlpReceiver { port, spans, _runtime: runtime }
    }

    /// Waits (at most 30 s) for a span of this name whose attributes include `with`.
    fn span(&self, name: &str, with: &[(&str, &str)]) -> ReceivedSpan {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans.lock().expect("spans").clone();
            let found = spans.iter().find(|s| {
                s.name == name && with.iter().all(|(k, v)| s.attributes.get(*k).map(String::as_str) == Some(*v))
            });
            if let Some(span) = found {
                return span.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no span `{name}` with {with:?}; got {:#?}",
                spans.iter().map(|s| (&s.name, &s.attributes)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the server exports its spans over OTLP/HTTP: one per
/// HTTP request (named `{METHOD} {route}`, with its status), one per pgwire statement (its text
/// without the values of its literals; the SQLSTATE of an error), and the job lifecycle's
/// (install as a child of the request that submitted it, cancel), under the service name set.
#[test]
fn spans_are_exported_over_otlp() {
    let receiver = OtlpReceiver::start();
    let args: Vec<String> = ["--http", "127.0.0.1:0", "--pgwire", "127.0.0.1:0"].map(String::from).into();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let server = start_with_env(
        &args,
        true,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "aimatrix-under-test"),
        ],
    );
    let pg_port = server.pg_port.expect("pgwire listens");
    let count = "SELECT collection, count(*) AS n FROM knowledge_events GROUP BY collection";
    let id = server.submit(&push_job("traced", "traced-in", "traced_v", count));
    let (status, _) = server.call("GET", "/v1/no-such-route", None);
    assert_eq!(status, 404);

    let url = format!("host=127.0.0.1 port={pg_port} user=reader dbname=aimatrix connect_timeout=10");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("a pgwire session");
    let rows = client.query("SELECT count(*) FROM spans WHERE name = 'sk-live-secret' AND input_tokens > 12", &[]);
    assert_eq!(rows.expect("query")[0].get::<_, i64>(0), 0);
    let error = client.query("SELECT * FROM no_such_relation", &[]).expect_err("an unknown relation");
    let sqlstate = error.code().expect("a SQLSTATE").code().to_owned();
    let (status, body) = server.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(status, 200, "{body}");

    let id_text = id.to_string();
    let post = receiver.span("POST /v1/jobs", &[("http.request.method", "POST"), ("http.response.status_code", "201")]);
    assert_eq!((post.kind.as_str(), post.service.as_str()), ("Server", "aimatrix-under-test"));
    assert_eq!(post.attributes.get("http.route").map(String::as_str), Some("/v1/jobs"));
    let install = receiver.span("job install", &[("job.id", &id_text), ("job.name", "traced")]);
    assert_eq!(install.parent_span_id, post.span_id, "the install is a step of the request that asked for it");
    let missing = receiver.span("GET", &[("url.path", "/v1/no-such-route"), ("http.response.status_code", "404")]);
    assert!(!missing.attributes.contains_key("http.route"), "{missing:?}");
    assert_eq!(missing.status, "Unset", "a 4xx is the client's error, not the server's");

    let select = receiver.span("pgwire SELECT", &[("db.system.name", "aimatrix"), ("db.operation.name", "SELECT")]);
    assert_eq!(
        select.attributes.get("db.query.text").map(String::as_str),
        Some("SELECT count(*) FROM spans WHERE name = ? AND input_tokens > ?")
    );
    // The extended protocol's Parse plans the statement: the unknown relation fails there.
    let failed = receiver.span("pgwire parse SELECT", &[("db.response.status_code", &sqlstate)]);
    assert_eq!(failed.attributes.get("db.query.text").map(String::as_str), Some("SELECT * FROM no_such_relation"));
    assert_eq!(failed.status, "Error");
    receiver.span("job cancel", &[("job.id", &id_text), ("job.retract", "false")]);
    let leaked =
        receiver.spans.lock().expect("spans").iter().any(|s| s.attributes.values().any(|v| v.contains("sk-live")));
    assert!(!leaked, "a literal's value reached a span");
}

/// Posts `body` to a route with these headers; the status and the body's bytes.
fn post_bytes(server: &Server, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut request = server.agent.post(format!("{}{path}", server.base));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send(body).expect("answered");
    let status = response.status().as_u16();
    (status, response.into_body().read_to_vec().expect("a body"))
}

/// The OTLP/HTTP receiver takes what an OpenTelemetry SDK exports, unchanged: the Rust SDK's
/// OTLP exporter (protobuf over HTTP, batch processor) sends a chat span and a failed tool
/// call under it to `/v1/otlp/1/otel` + `/v1/traces`, and `spans` holds both with the ids the
/// SDK gave them and the GenAI columns from their attributes. An OTLP/JSON request, gzipped,
/// with one span whose trace id is one byte, is answered with a partial success naming it, and
/// the span is a row of `ingest_errors` at its place in the request while the other is kept.
/// A body of another type, a protobuf that does not decode, and a source of another format
/// are refused. Every expected value is what the test sent.
#[test]
fn an_opentelemetry_sdk_exports_spans_to_the_otlp_receiver() {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig as _;
    let server = start(&["--http".into(), "127.0.0.1:0".into()], true);
    let job = "name = \"otel\"\n[[sources]]\nname = \"otel\"\nkind = \"push\"\nformat = \"otlp-json\"\n\n[views]\n\
               tokens = \"SELECT request_model, sum(input_tokens) AS input FROM spans GROUP BY request_model\"\n";
    assert_eq!(server.submit(job), 1);
    let sql = "SELECT count(*) AS n FROM knowledge_events";
    assert_eq!(server.submit(&push_job("k", "k-in", "k_view", sql)), 2);

    // The SDK, as an instrumented agent runs it.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/otlp/1/otel/v1/traces", server.base))
        .build()
        .expect("an exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("support-agent").build())
        .build();
    let tracer = provider.tracer("agent-sdk");
    let chat = tracer.build(opentelemetry::trace::SpanBuilder::from_name("chat gpt-4o").with_attributes(vec![
        opentelemetry::KeyValue::new("gen_ai.operation.name", "chat"),
        opentelemetry::KeyValue::new("gen_ai.provider.name", "openai"),
        opentelemetry::KeyValue::new("gen_ai.request.model", "gpt-4o"),
        opentelemetry::KeyValue::new("gen_ai.usage.input_tokens", 1200i64),
        opentelemetry::KeyValue::new("gen_ai.usage.output_tokens", 85i64),
    ]));
    let (trace_id, chat_id) = (chat.span_context().trace_id().to_string(), chat.span_context().span_id().to_string());
    let cx = opentelemetry::Context::current_with_span(chat);
    let mut tool = tracer.build_with_context(
        opentelemetry::trace::SpanBuilder::from_name("execute_tool get_weather").with_attributes(vec![
            opentelemetry::KeyValue::new("gen_ai.operation.name", "execute_tool"),
            opentelemetry::KeyValue::new("gen_ai.tool.name", "get_weather"),
            opentelemetry::KeyValue::new("error.type", "timeout"),
        ]),
        &cx,
    );
    tool.set_status(opentelemetry::trace::Status::error("the weather service timed out"));
    let tool_id = tool.span_context().span_id().to_string();
    tool.end();
    cx.span().set_status(opentelemetry::trace::Status::Ok);
    cx.span().end();
    provider.force_flush().expect("exported");
    provider.shutdown().expect("shut down");

    let sql = "SELECT trace_id, span_id, parent_span_id, name, operation, provider, request_model, input_tokens, \
               output_tokens, tool_name, status, error_type, json_get_str(attributes, 'service.name') AS service, \
               json_get_str(attributes, 'otel.scope.name') AS scope, \
               json_get_str(attributes, 'otel.status_description') AS description FROM spans ORDER BY name";
    let want = vec![
        json!({"trace_id": trace_id, "span_id": chat_id, "parent_span_id": null, "name": "chat gpt-4o",
               "operation": "chat", "provider": "openai", "request_model": "gpt-4o", "input_tokens": 1200,
               "output_tokens": 85, "tool_name": null, "status": "ok", "error_type": null,
               "service": "support-agent", "scope": "agent-sdk", "description": null}),
        json!({"trace_id": trace_id, "span_id": tool_id, "parent_span_id": chat_id, "name": "execute_tool get_weather",
               "operation": "execute_tool", "provider": null, "request_model": null, "input_tokens": null,
               "output_tokens": null, "tool_name": "get_weather", "status": "error", "error_type": "timeout",
               "service": "support-agent", "scope": "agent-sdk", "description": "the weather service timed out"}),
    ];
    assert_eq!(server.sql_until(sql, &want), want);
    let by_model =
        vec![json!({"request_model": null, "input": null}), json!({"request_model": "gpt-4o", "input": 1200})];
    assert_eq!(server.sql_until("SELECT * FROM tokens ORDER BY request_model NULLS FIRST", &by_model), by_model);

    // OTLP/JSON, gzipped, one span good and one with a 1-byte trace id.
    let request = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "embeddings",
         "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "embeddings"}},
                        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "9"}}]},
        {"traceId": "5b", "spanId": "0102030405060708", "name": "broken"},
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "abcdef", "name": "short span id"}]}]}]});
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, request.to_string().as_bytes()).expect("compressed");
    let gzipped = gzip.finish().expect("compressed");
    let json_headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")];
    let (status, answer) = post_bytes(&server, "/v1/otlp/1/otel/v1/traces", &gzipped, &json_headers);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    // Two spans rejected (one record: the engine counts its ingest_errors rows).
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 2, "{answer}");
    assert_eq!(
        answer["partialSuccess"]["errorMessage"],
        "trace id has 1 bytes, not 16 (each rejected span is a row of ingest_errors)"
    );
    let want = vec![json!({"name": "embeddings", "input_tokens": 9})];
    assert_eq!(server.sql_until("SELECT name, input_tokens FROM spans WHERE operation = 'embeddings'", &want), want);
    let errors = server.sql("SELECT source, location, error FROM ingest_errors ORDER BY location");
    assert_eq!(
        errors,
        vec![
            json!({"source": "otel", "location": "POST /v1/ingest/1/otel:1/resourceSpans/0/scopeSpans/0/spans/1",
                   "error": "trace id has 1 bytes, not 16"}),
            json!({"source": "otel", "location": "POST /v1/ingest/1/otel:1/resourceSpans/0/scopeSpans/0/spans/2",
                   "error": "span id has 3 bytes, not 8"}),
        ]
    );

    // Refusals.
    let (status, _) = post_bytes(&server, "/v1/otlp/1/otel/v1/traces", b"{}", &[("Content-Type", "text/plain")]);
    assert_eq!(status, 415);
    let protobuf = [("Content-Type", "application/x-protobuf")];
    let (status, body) = post_bytes(&server, "/v1/otlp/1/otel/v1/traces", &[0xff, 0xff, 0xff], &protobuf);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, body) = post_bytes(&server, "/v1/otlp/2/k-in/v1/traces", b"", &protobuf);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("reads format `json`"), "{}", String::from_utf8_lossy(&body));
    // An empty export (no spans) is answered, with nothing to ingest.
    let (status, body) = post_bytes(&server, "/v1/otlp/1/otel/v1/traces", b"", &protobuf);
    assert_eq!((status, body), (200, Vec::new()));

    // Values nested past what the request's OTLP/JSON form reads back: refused whole (400),
    // not answered 200 and lost.
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
    use prost::Message as _;
    let mut nested = AnyValue { value: Some(any_value::Value::StringValue("leaf".into())) };
    // (31 levels: within protobuf's 100, past the JSON reader's 128 as `kvlistValue.values[].value`.)
    for _ in 0..31 {
        let kv = KeyValue { key: "k".into(), value: Some(nested), ..Default::default() };
        nested = AnyValue { value: Some(any_value::Value::KvlistValue(KeyValueList { values: vec![kv] })) };
    }
    let span = |name: &str, attributes: Vec<KeyValue>| opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![7; 16],
        span_id: vec![9; 8],
        name: name.into(),
        attributes,
        ..Default::default()
    };
    let request = |spans| opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    };
    let deep = request(vec![
        span("fine", Vec::new()),
        span("deep", vec![KeyValue { key: "deep".into(), value: Some(nested), ..Default::default() }]),
    ]);
    let (status, body) = post_bytes(&server, "/v1/otlp/1/otel/v1/traces", &deep.encode_to_vec(), &protobuf);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("cannot be ingested"), "{}", String::from_utf8_lossy(&body));
    assert_eq!(server.sql("SELECT count(*) AS n FROM spans WHERE name IN ('fine', 'deep')"), vec![json!({"n": 0})]);

    // A retry with the same Idempotency-Key is answered again and applied once.
    let once = request(vec![span("once", Vec::new())]).encode_to_vec();
    let keyed = [("Content-Type", "application/x-protobuf"), ("Idempotency-Key", "export-1")];
    for _ in 0..2 {
        let (status, body) = post_bytes(&server, "/v1/otlp/1/otel/v1/traces", &once, &keyed);
        assert_eq!((status, body), (200, Vec::new()));
    }
    let want = vec![json!({"n": 1})];
    assert_eq!(server.sql_until("SELECT count(*) AS n FROM spans WHERE name = 'once'", &want), want);
    drop(server);

    // A request whose OTLP/JSON form is over cluster.max_record_bytes: 413, so that the client
    // sends smaller batches (a 200 would have it drop them).
    let small = start_with_env(
        &["--http".into(), "127.0.0.1:0".into()],
        true,
        &[("AIMATRIX__CLUSTER__MAX_RECORD_BYTES", "1000")],
    );
    assert_eq!(small.submit(job), 1);
    let big = request(vec![span(
        "big",
        vec![KeyValue {
            key: "prompt".into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue("x".repeat(2_000))) }),
            ..Default::default()
        }],
    )]);
    let (status, body) = post_bytes(&small, "/v1/otlp/1/otel/v1/traces", &big.encode_to_vec(), &protobuf);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("smaller batches"));
    let (status, _) = post_bytes(&small, "/v1/otlp/1/otel/v1/traces", &once, &protobuf);
    assert_eq!(status, 200);
}

/// A GitHub webhook delivery's `X-Hub-Signature-256` for `body` under `secret`.
fn github_signature(secret: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// GitHub webhooks into a push source of format `github-actions`: a signed delivery is
/// ingested and the workflow views follow it (the states worked out by hand from the payloads
/// below), a redelivery (same `X-GitHub-Delivery`) is applied once, a delivery with a wrong or
/// missing signature is refused (401) and ingests nothing, `ping` and events that are not
/// ingested are answered, a form-encoded body is refused (415), a bad step is a row of
/// `ingest_errors` at its place, the secret can come from the server's environment
/// (`secret_env`), and the job's listing shows the inline secret as `<redacted>`.
#[test]
fn github_webhook_deliveries_are_verified_and_ingested() {
    let args: Vec<String> = ["--http", "127.0.0.1:0"].map(String::from).into();
    let server = start_with_env(&args, true, &[("AMX_TEST_GITHUB_SECRET", "from the environment")]);
    let job = server.submit(
        r#"name = "github"
[[sources]]
name = "gh"
kind = "push"
format = "github-actions"
[sources.webhook]
secret = "It's a Secret to Everybody"

[[sources]]
name = "gh-env"
kind = "push"
format = "github-actions"
[sources.webhook]
secret_env = "AMX_TEST_GITHUB_SECRET"
"#,
    );
    let deliver = |source: &str, secret: &str, event: &str, delivery: &str, body: &str| {
        let signature = github_signature(secret, body);
        server.call_with(
            "POST",
            &format!("/v1/webhooks/github/{job}/{source}"),
            Some(body),
            &[
                ("Content-Type", "application/json"),
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &signature),
            ],
        )
    };
    let secret = "It's a Secret to Everybody";

    // The run is queued, then its job completes with a failed step; pretty-printed, as GitHub
    // sends it.
    let run = serde_json::to_string_pretty(&json!({"action": "requested", "workflow_run": {
        "id": 30433642, "name": "Build", "status": "queued", "conclusion": null, "run_attempt": 1,
        "created_at": "2024-05-01T12:00:00Z", "run_started_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z"}}))
    .expect("json");
    let (status, body) = deliver("gh", secret, "workflow_run", "d-1", &run);
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let job_payload = json!({"action": "completed", "workflow_job": {
    "id": 399444496, "run_id": 30433642, "run_attempt": 1, "name": "test", "workflow_name": "Build",
    "status": "completed", "conclusion": "failure", "created_at": "2024-05-01T12:00:01Z",
    "started_at": "2024-05-01T12:00:05Z", "completed_at": "2024-05-01T12:01:00Z",
    "steps": [
        {"name": "Set up job", "status": "completed", "conclusion": "success", "number": 1,
         "started_at": "2024-05-01T12:00:05Z", "completed_at": "2024-05-01T12:00:07Z"},
        {"name": "Run tests", "status": "completed", "conclusion": "failure", "number": 2,
         "started_at": "2024-05-01T12:00:07Z", "completed_at": "2024-05-01T12:00:59Z"},
        {"name": "Broken", "status": "exploded", "number": 3}
    ]}})
    .to_string();
    let (status, body) = deliver("gh", secret, "workflow_job", "d-2", &job_payload);
    assert_eq!(status, 200, "{body}");
    // One record, counted as rejected for its bad step (an error row); its other rows are in.
    assert_eq!(
        (&body["accepted"], &body["rejected"], &body["error_rows"]),
        (&json!(0), &json!(1), &json!(1)),
        "{body}"
    );

    let steps = "SELECT step_id, step_type, state, started_at, ended_at FROM workflow_steps ORDER BY step_id";
    let want_steps = [
        json!({"step_id": "399444496", "step_type": "job", "state": "FAILED",
               "started_at": "2024-05-01T12:00:05Z", "ended_at": "2024-05-01T12:01:00Z"}),
        json!({"step_id": "399444496/1", "step_type": "step", "state": "COMPLETED",
               "started_at": "2024-05-01T12:00:05Z", "ended_at": "2024-05-01T12:00:07Z"}),
        json!({"step_id": "399444496/2", "step_type": "step", "state": "FAILED",
               "started_at": "2024-05-01T12:00:07Z", "ended_at": "2024-05-01T12:00:59Z"}),
    ];
    assert_eq!(server.sql_until(steps, &want_steps), want_steps);
    let runs = "SELECT run_id, workflow_name, status, steps, steps_completed, steps_failed FROM workflow_runs";
    let want_run = |status: &str| {
        json!({"run_id": "30433642", "workflow_name": "Build", "status": status, "steps": 3,
               "steps_completed": 1, "steps_failed": 2})
    };
    assert_eq!(server.sql_until(runs, &[want_run("SCHEDULED")]), vec![want_run("SCHEDULED")]);
    let errors = server.sql("SELECT source, location, error FROM ingest_errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["source"], "gh");
    assert!(errors[0]["location"].as_str().is_some_and(|l| l.ends_with("#workflow_job.steps[2]")), "{errors:?}");
    assert_eq!(errors[0]["error"], r#"unknown status "exploded""#);

    // A redelivery (GitHub's "Redeliver": the same GUID) is applied once.
    let count = "SELECT count(*) AS n FROM workflow_events";
    let before = server.sql(count);
    let (status, body) = deliver("gh", secret, "workflow_job", "d-2", &job_payload);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.sql(count), before);

    // Refused and not ingested: a wrong secret, no signature, a form-encoded body.
    let completed = json!({"action": "completed", "workflow_run": {
        "id": 30433642, "name": "Build", "status": "completed", "conclusion": "success", "run_attempt": 1,
        "created_at": "2024-05-01T12:00:00Z", "run_started_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:01:01Z"}})
    .to_string();
    let (status, body) = deliver("gh", "not the secret", "workflow_run", "d-3", &completed);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("does not match")), "{body}");
    let path = format!("/v1/webhooks/github/{job}/gh");
    let (status, body) = server.call_with(
        "POST",
        &path,
        Some(&completed),
        &[("Content-Type", "application/json"), ("X-GitHub-Event", "workflow_run")],
    );
    assert_eq!(status, 401, "{body}");
    let form = format!("payload={completed}");
    let signature = github_signature(secret, &form);
    let (status, _) = server.call_with(
        "POST",
        &path,
        Some(&form),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-GitHub-Event", "workflow_run"),
            ("X-Hub-Signature-256", &signature),
        ],
    );
    assert_eq!(status, 415);
    // Over GitHub's 25 MB cap: refused once 25 MiB are read (and before its signature).
    {
        use std::io::{Read, Write};
        let address = server.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("a connection");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a timeout");
        let head = format!(
            "POST /v1/webhooks/github/{job}/gh HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             X-GitHub-Event: workflow_run\r\nContent-Length: {}\r\n\r\n",
            (25 << 20) + 1
        );
        stream.write_all(head.as_bytes()).expect("sent");
        // The body; the server may answer and close before the last bytes are taken.
        let _ = stream.write_all(&vec![b' '; (25 << 20) + 1]);
        let mut answer = vec![0; 4096];
        let n = stream.read(&mut answer).expect("an answer");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("a delivery is at most 26214400 bytes"), "{answer}");
    }
    assert_eq!(server.sql(count), before);
    assert_eq!(server.sql(runs), vec![want_run("SCHEDULED")]);

    // A ping and an event that is not ingested are answered; the run completes once signed.
    let (status, body) = deliver("gh", secret, "ping", "d-4", r#"{"zen": "Design for failure.", "hook_id": 7}"#);
    assert_eq!((status, body), (200, json!({"zen": "Design for failure."})));
    let (status, body) = deliver("gh", secret, "push", "d-5", r#"{"ref": "refs/heads/main"}"#);
    assert_eq!((status, body), (200, json!({"ignored": "push"})));
    assert_eq!(server.sql(count), before);
    let (status, body) = deliver("gh", secret, "workflow_run", "d-6", &completed);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.sql_until(runs, &[want_run("COMPLETED")]), vec![want_run("COMPLETED")]);

    // The secret from the server's environment.
    let suite = json!({"action": "requested", "check_suite": {"id": 5, "status": "queued",
        "created_at": "2024-05-01T13:00:00Z", "updated_at": "2024-05-01T13:00:00Z", "app": {"name": "CI"}}})
    .to_string();
    let (status, _) = deliver("gh-env", secret, "check_suite", "d-7", &suite);
    assert_eq!(status, 401);
    let (status, body) = deliver("gh-env", "from the environment", "check_suite", "d-7", &suite);
    assert_eq!(status, 200, "{body}");
    let suite_run = [json!({"run_id": "check_suite/5", "workflow_name": "CI", "status": "SCHEDULED"})];
    let query = "SELECT run_id, workflow_name, status FROM workflow_runs WHERE run_id = 'check_suite/5'";
    assert_eq!(server.sql_until(query, &suite_run), suite_run);

    // Not a github-actions push source; the listing hides the inline secret.
    let (status, body) = server.call("GET", &format!("/v1/jobs/{job}"), None);
    assert_eq!(status, 200);
    assert_eq!(body["sources"][0]["webhook"], json!({"secret": "<redacted>"}), "{body}");
    assert_eq!(body["sources"][1]["webhook"], json!({"secret_env": "AMX_TEST_GITHUB_SECRET"}), "{body}");
    let (status, body) = deliver("nope", secret, "workflow_run", "d-8", &completed);
    assert_eq!(status, 404, "{body}");
}

/// A job whose push sources feed spans (`spans`), `model_prices` rows (`prices`, JSON: each
/// upserts its key) and Debezium changes of `model_prices` (`price-changes`).
const COST_JOB: &str = r#"name = "costs"
[[sources]]
name = "spans"
kind = "push"
format = "json"
[sources.options]
relation = "spans"
[sources.options.mapping]
trace_id = "/trace"
span_id = "/span"
operation = { const = "chat" }
provider = "/provider"
request_model = "/model"
response_model = "/response_model"
agent_name = "/agent"
input_tokens = "/in"
cache_read_input_tokens = "/cached"
output_tokens = "/out"
reasoning_output_tokens = "/reasoning"
start_time = "/start"

[[sources]]
name = "prices"
kind = "push"
format = "json"
[sources.options]
relation = "model_prices"

[[sources]]
name = "price-changes"
kind = "push"
format = "debezium"
[sources.options]
relation = "model_prices"
"#;

/// Model calls are priced by `model_prices`; a price pushed at run time re-prices the calls it
/// applies to (also before it was pushed: from its `valid_from`), a shipped price deleted by a
/// Debezium change leaves its calls unpriced, and all of it is as it was after a restart from
/// the data directory (the log compacted into a snapshot first). Every cost below is worked out
/// by hand from the shipped list prices (`dataflows/data/model_prices.csv`) and the token counts
/// pushed.
#[test]
fn model_prices_re_price_history_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args: Vec<String> =
        ["--http", "127.0.0.1:0", "--workers", "2", "--data-dir", &data.to_string_lossy()].map(String::from).to_vec();
    let env = [("AIMATRIX__STORAGE__COMPACT_AFTER_BYTES", "1")];
    let spans = [
        json!({"trace": "t1", "span": "s1", "provider": "openai", "model": "gpt-4o", "response_model": "gpt-4o-2024-08-06",
               "agent": "support", "in": 1000, "cached": 400, "out": 200, "reasoning": 50, "start": "2024-11-30T10:00:00Z"}),
        json!({"trace": "t1", "span": "s2", "provider": "openai", "model": "gpt-4o-mini", "in": 2000, "out": 100,
               "start": "2024-12-02T10:00:00Z"}),
        json!({"trace": "t2", "span": "s3", "provider": "anthropic", "model": "claude-sonnet-4-20250514", "agent": "research",
               "in": 10000, "cached": 8000, "out": 500, "start": "2024-12-03T00:00:00Z"}),
        json!({"trace": "t2", "span": "s4", "provider": "custom", "model": "my-model", "in": 5, "start": "2024-12-03T00:00:01Z"}),
    ]
    .map(|s| s.to_string());
    let traces = "SELECT trace_id, cost_usd FROM agent_traces ORDER BY trace_id";
    let span_costs = "SELECT span_id, price_provider, price_model, cost_usd FROM span_costs ORDER BY span_id";
    let models = "SELECT provider, request_model, cost_usd FROM model_usage ORDER BY provider, request_model";
    let days =
        "SELECT agent_name, CAST(day AS VARCHAR) AS day, traces, cost_usd FROM cost_by_agent_day ORDER BY agent_name";
    // At the shipped prices (USD per 1M tokens: gpt-4o* 2.50 / cached 1.25 / 10.00, gpt-4o-mini*
    // 0.15 / 0.60, claude-sonnet-4* 3.00 / cached 0.30 / 15.00):
    // s1 600 · 2.5e-6 + 400 · 1.25e-6 + (150 + 50 reasoning) · 1e-5 = 0.004;
    // s2 2000 · 0.15e-6 + 100 · 0.6e-6 = 0.00036; s3 2000 · 3e-6 + 8000 · 0.3e-6 + 500 · 1.5e-5
    // = 0.0159; s4's model has no price. t1 = 0.00436, t2 = 0.0159.
    let shipped_spans = vec![
        json!({"span_id": "s1", "price_provider": "*", "price_model": "gpt-4o*", "cost_usd": 0.004}),
        json!({"span_id": "s2", "price_provider": "*", "price_model": "gpt-4o-mini*", "cost_usd": 0.00036}),
        json!({"span_id": "s3", "price_provider": "*", "price_model": "claude-sonnet-4*", "cost_usd": 0.0159}),
    ];
    let shipped_traces =
        vec![json!({"trace_id": "t1", "cost_usd": 0.00436}), json!({"trace_id": "t2", "cost_usd": 0.0159})];
    // openai's own gpt-4o* price from 2024-11-01 (1.00 in, cached NULL = 1.00, 4.00 out,
    // reasoning NULL = 4.00) re-prices s1: 1000 · 1e-6 + 200 · 4e-6 = 0.0018; s2 keeps the longer
    // pattern gpt-4o-mini*. Then claude-sonnet-4* is deleted: s3 and t2 have no cost.
    let repriced_traces =
        vec![json!({"trace_id": "t1", "cost_usd": 0.00216}), json!({"trace_id": "t2", "cost_usd": null})];
    let repriced_spans = vec![
        json!({"span_id": "s1", "price_provider": "openai", "price_model": "gpt-4o*", "cost_usd": 0.0018}),
        json!({"span_id": "s2", "price_provider": "*", "price_model": "gpt-4o-mini*", "cost_usd": 0.00036}),
    ];
    let repriced_models = vec![
        json!({"provider": "anthropic", "request_model": "claude-sonnet-4-20250514", "cost_usd": null}),
        json!({"provider": "custom", "request_model": "my-model", "cost_usd": null}),
        json!({"provider": "openai", "request_model": "gpt-4o", "cost_usd": 0.0018}),
        json!({"provider": "openai", "request_model": "gpt-4o-mini", "cost_usd": 0.00036}),
    ];
    // t1 (support) started on 2024-11-30, t2 (research) on 2024-12-03.
    let repriced_days = vec![
        json!({"agent_name": "research", "day": "2024-12-03T00:00:00Z", "traces": 1, "cost_usd": null}),
        json!({"agent_name": "support", "day": "2024-11-30T00:00:00Z", "traces": 1, "cost_usd": 0.00216}),
    ];
    // The shipped rows, one changed (added) and one deleted: as many as the file has.
    let shipped_rows = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/data/model_prices.csv"))
        .expect("the shipped prices")
        .lines()
        .filter(|l| l.starts_with("*,"))
        .count();
    let price_rows =
        "SELECT count(*) AS n, count(*) FILTER (WHERE model = 'claude-sonnet-4*') AS sonnet FROM model_prices";
    {
        let server = start_with_env(&args, true, &env);
        let job = server.submit(COST_JOB);
        server.push(job, "spans", &spans);
        assert_eq!(server.sql_until(traces, &shipped_traces), shipped_traces);
        assert_eq!(server.sql(span_costs), shipped_spans);
        let price = json!({"provider": "openai", "model": "gpt-4o*", "valid_from": "2024-11-01T00:00:00Z",
                           "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 4.0});
        server.push(job, "prices", &[price.to_string()]);
        let delete = json!({"op": "d", "after": null, "source": {"ts_ms": 0},
                            "before": {"provider": "*", "model": "claude-sonnet-4*", "valid_from": "1970-01-01T00:00:00Z"}});
        server.push(job, "price-changes", &[delete.to_string()]);
        assert_eq!(server.sql_until(traces, &repriced_traces), repriced_traces);
        assert_eq!(server.sql(span_costs), repriced_spans);
        assert_eq!(server.sql(models), repriced_models);
        assert_eq!(server.sql(days), repriced_days);
        assert_eq!(server.sql(price_rows), vec![json!({"n": shipped_rows, "sonnet": 0})]);
        // A snapshot taken after the last push (its counters include the delete's source).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let manifests: Vec<String> = std::fs::read_dir(data.join("snapshots"))
                .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("manifest")).ok()).collect())
                .unwrap_or_default();
            if manifests.iter().any(|m| m.contains("[\"price-changes\",[1,")) {
                break;
            }
            assert!(Instant::now() < deadline, "no snapshot after the delete: {manifests:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let server = start_with_env(&args, true, &env);
    // Restored from the snapshot alone: the price table as it was, not the shipped one again.
    let replayed = server.started.iter().find(|l| l.starts_with("serve: replayed")).expect("the replay's line");
    assert!(replayed.contains("(after snapshot") && replayed.contains(" 0 pushes"), "{replayed}");
    assert_eq!(server.sql_until(traces, &repriced_traces), repriced_traces);
    assert_eq!(server.sql(span_costs), repriced_spans);
    assert_eq!(server.sql(models), repriced_models);
    assert_eq!(server.sql(days), repriced_days);
    assert_eq!(server.sql(price_rows), vec![json!({"n": shipped_rows, "sonnet": 0})]);
}

/// The web console in a real headless browser: `tests/console_browser.py` drives Debian's
/// chromium through chromedriver with Selenium (scripts/test.sh installs them) against a
/// server with two workers — submits a job (a bad one first), pushes records, runs queries (a
/// failing one too), watches a view change live and one dropped, browses ingest errors, cancels
/// the job; axe-core checks every panel; the browser's log must hold no errors but the
/// refusals it provoked. Screenshots land in the target's test directory
/// (`console-screenshots/`).
#[test]
fn the_console_works_in_a_real_browser() {
    let args: Vec<String> = ["--http", "127.0.0.1:0", "--workers", "2"].map(String::from).into();
    let server = start(&args, true);
    // Last, the script kills the server, to see the page say so.
    let pid = server.child.id().to_string();
    common::console_browser_test(&server.base, "console-screenshots", &[], &[("AIMATRIX_SERVER_PID", pid)]);
}
