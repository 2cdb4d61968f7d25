//! The command line as a user meets it: query labels, CSV separators, and the demo's second,
//! incremental round.

use std::process::Command;

use crate::common;

fn aimatrix(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_aimatrix")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
}

/// A job with one small evaluations source (two records).
fn job(dir: &std::path::Path) -> String {
    std::fs::write(dir.join("e.jsonl"), "{\"t\":\"a\",\"n\":\"x\",\"s\":1}\n{\"t\":\"b\",\"n\":\"x\",\"s\":3}\n")
        .unwrap();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        "[[sources]]\nname = \"ev\"\nformat = \"json\"\npath = \"e.jsonl\"\n[sources.options]\nrelation = \"evaluations\"\n[sources.options.mapping]\ntrace_id = \"/t\"\nname = \"/n\"\nscore = \"/s\"\n",
    )
    .unwrap();
    job.display().to_string()
}

#[test]
fn queries_are_numbered_among_queries_and_csv_answers_are_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let (code, out, err) = aimatrix(&[
        "run",
        &job,
        "--quiet",
        "--output",
        "csv",
        "--sql",
        "CREATE MATERIALIZED VIEW v AS SELECT name, sum(score) AS total FROM evaluations GROUP BY name",
        "--sql",
        "SELECT * FROM v",
        "--sql",
        "SELECT count(*) AS n FROM evaluations",
    ]);
    assert_eq!(code, 0, "{err}");
    // 1 + 3 = 4; two records.
    assert_eq!(out, "-- query 1\nname,total\nx,4.0\n-- query 2\nn\n2\n");
    // One query: plain CSV.
    let (_, out, _) =
        aimatrix(&["run", &job, "--quiet", "--output", "csv", "--sql", "SELECT count(*) AS n FROM evaluations"]);
    assert_eq!(out, "n\n2\n");
    // The summary names one source in the singular.
    assert!(err.contains("from 1 source:"), "{err}");
}

/// Valid records of a demo file: lines that parse as JSON objects with every value of a
/// numeric column a number (the malformed lines are cut short or carry a string there).
fn valid_knowledge_edits(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["version"].is_u64() || v["version"].is_null())
        })
        .count()
}

#[test]
fn the_demo_shows_its_sql_and_a_second_incremental_round() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let (code, out, err) =
        aimatrix(&["demo", "--events", "2000", "--dir", data.to_str().unwrap(), "--quiet", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("more records to the same files"), "{err}");
    let answers: Vec<serde_json::Value> =
        out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let edits =
        |a: &serde_json::Value| a["rows"].as_array().unwrap().iter().map(|r| r["edits"].as_i64().unwrap()).sum::<i64>();
    let knowledge: Vec<i64> = answers.iter().filter(|a| a["query"] == "knowledge collections").map(edits).collect();
    // Every valid knowledge event is an edit: the final answer counts those of the whole file,
    // the first those of the file less the second round appended to it.
    let total = valid_knowledge_edits(&data.join("knowledge_events.jsonl")) as i64;
    let second = valid_knowledge_edits(&data.join("round2/knowledge_events.jsonl")) as i64;
    assert!(second > 0);
    assert_eq!(knowledge, vec![total - second, total], "{out}");
    // Table output shows each query's SQL above its answer.
    let (code, out, _) = aimatrix(&["demo", "--events", "500", "--quiet"]);
    assert_eq!(code, 0);
    assert!(out.contains("-- knowledge collections\nSELECT collection, documents, edits, bot_edits, size_bytes FROM collection_stats ORDER BY collection;\n"), "{out}");
}

#[test]
fn a_huge_interval_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let (code, _, err) = aimatrix(&["run", &job, "--interval", "99999999999999999999s", "--sql", "SELECT 1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad duration"), "{err}");
}

#[test]
fn job_file_queries_are_numbered_among_queries() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let mut text = std::fs::read_to_string(&job).unwrap();
    text.push_str(
        "\n[[queries]]\nsql = \"CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n FROM evaluations\"\n\
         [[queries]]\nsql = \"SELECT n FROM v\"\n[[queries]]\nsql = \"SELECT 7 AS seven\"\n",
    );
    std::fs::write(&job, text).unwrap();
    let (code, out, err) = aimatrix(&["run", &job, "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("-- query 1\n"), "{out}");
    assert!(out.contains("-- query 2\n") && !out.contains("-- query 3"), "{out}");
}

#[test]
fn follow_goes_on_after_a_query_fails() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .args(["run", &job, "--follow", "--interval", "100ms", "--output", "json", "--quiet"])
        .args(["--sql", "SELECT count(*) AS n FROM evaluations"])
        .args(["--sql", "SELECT 10 / (count(*) - 3) AS r FROM evaluations"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::stdout_lines(&mut child);
    let wait_for = |want: &str| {
        common::wait_for(&rx, want);
    };
    // Two records: 10 / (2 - 3) = -10.
    wait_for(r#"{"r":-10}"#);
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("e.jsonl")).unwrap();
    // Three records: division by zero, reported; the count is still answered.
    writeln!(f, "{{\"t\":\"c\",\"n\":\"x\",\"s\":1}}").unwrap();
    wait_for(r#"{"n":3}"#);
    // Four records: both answer again, 10 / (4 - 3) = 10.
    writeln!(f, "{{\"t\":\"d\",\"n\":\"x\",\"s\":1}}").unwrap();
    wait_for(r#"{"r":10}"#);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: query `query 2`") && err.contains("Divide by zero"), "{err}");
}

#[test]
fn nesting_within_the_documented_limit_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    // 200 levels each (the README allows 256): 200 parentheses around 1; 200 CASEs whose
    // innermost THEN is 1 (1 > 0 holds at every level); 200 NOTs (even) of true.
    let parens = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    let cases = format!("{}1{}", "CASE WHEN 1 > 0 THEN ".repeat(200), " ELSE 0 END".repeat(200));
    let nots = format!("{}true", "NOT ".repeat(200));
    let sql = format!("SELECT {parens} AS p, {cases} AS c, {nots} AS n");
    let (code, out, err) = aimatrix(&["run", &job, "--quiet", "--output", "json", "--sql", &sql]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[{\"p\":1,\"c\":1,\"n\":true}]\n");
}

/// `CREATE MATERIALIZED VIEW IF NOT EXISTS` over a name in use creates nothing and is no
/// error (the name keeps its meaning); without `IF NOT EXISTS` it is refused.
#[test]
fn create_if_not_exists_keeps_the_existing_name() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let (code, out, err) = aimatrix(&[
        "run",
        &job,
        "--quiet",
        "--output",
        "json",
        "--sql",
        "CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n FROM evaluations",
        "--sql",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS v AS SELECT 0 AS n",
        "--sql",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS evaluations AS SELECT 0 AS n",
        "--sql",
        "SELECT n FROM v",
        "--sql",
        "SELECT count(*) AS e FROM evaluations",
    ]);
    assert_eq!(code, 0, "{err}");
    // Two records in e.jsonl: both answers count them.
    assert_eq!(out, "[{\"n\":2}]\n[{\"e\":2}]\n");
    let (code, _, err) =
        aimatrix(&["run", &job, "--quiet", "--sql", "CREATE MATERIALIZED VIEW evaluations AS SELECT 0 AS n"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    // A built-in view is not dropped, IF EXISTS or not (as a server answers).
    let (code, _, err) = aimatrix(&["run", &job, "--quiet", "--sql", "DROP MATERIALIZED VIEW IF EXISTS documents"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`documents` is built in; it cannot be dropped"), "{err}");
}

/// `run` with a file source that declares a keyed relation: the later line of a key wins, a
/// line without the key is an ingest error at its line, and a job view and a
/// `CREATE MATERIALIZED VIEW` read the relation (2 workers: the lines are split between them).
#[test]
fn run_reads_a_relation_a_source_declares() {
    let dir = tempfile::tempdir().unwrap();
    let lines = ["{\"id\":\"a\",\"n\":1}", "{\"id\":\"b\",\"n\":2}", "{\"n\":3}", "{\"id\":\"a\",\"n\":5}"];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        r#"[[sources]]
name = "in"
format = "json"
path = "in.jsonl"
[sources.relation]
name = "things"
key = ["id"]
columns = [{ name = "id", type = "text" }, { name = "n", type = "bigint" }]

[views]
total = "SELECT sum(n) AS s, count(*) AS c FROM things"
"#,
    )
    .unwrap();
    let job = job.display().to_string();
    let (code, out, err) = aimatrix(&[
        "run",
        &job,
        "--quiet",
        "--workers",
        "2",
        "--output",
        "csv",
        "--sql",
        "CREATE MATERIALIZED VIEW big AS SELECT id FROM things WHERE n > 2",
        "--sql",
        "SELECT id, n FROM things ORDER BY id",
        "--sql",
        "SELECT s, c FROM total",
        "--sql",
        "SELECT * FROM big",
        "--sql",
        "SELECT error FROM ingest_errors",
    ]);
    assert_eq!(code, 0, "{err}");
    // a: 1 then 5; b: 2; the third line has no id. 5 + 2 = 7 over 2 keys; only a's 5 > 2.
    assert_eq!(
        out,
        "-- query 1\nid,n\na,5\nb,2\n-- query 2\ns,c\n7,2\n-- query 3\nid\na\n-- query 4\nerror\nmissing key column `id` \
         (/id)\n"
    );
}

/// `run` applies a file of Debezium change events (a PostgreSQL table's inserts, updates,
/// snapshot reads and deletes, with and without the JSON converter's schema wrapper, and the
/// tombstone after a delete) to a keyed relation and to `knowledge_events`; the final rows are
/// worked out by hand from the events, and a truncate is an ingest error.
#[test]
fn run_applies_debezium_change_events() {
    let dir = tempfile::tempdir().unwrap();
    let event = |op: &str, before: &str, after: &str, ts_ms: u64| {
        format!(
            r#"{{"before":{before},"after":{after},"op":"{op}","ts_ms":{ts_ms},"source":{{"connector":"postgresql","db":"shop","schema":"public","table":"docs","lsn":{ts_ms}}}}}"#
        )
    };
    let doc = |id: u32, title: &str, size: u32| format!(r#"{{"id":{id},"title":"{title}","size":{size}}}"#);
    let lines = [
        event("r", "null", &doc(1, "intro", 100), 1_000),
        event("c", "null", &doc(2, "setup", 200), 2_000),
        format!(
            r#"{{"schema":{{"type":"struct"}},"payload":{}}}"#,
            event("u", &doc(1, "intro", 100), &doc(1, "intro v2", 150), 3_000)
        ),
        event("c", "null", &doc(3, "faq", 300), 4_000),
        // A key-only `before`, as PostgreSQL's default REPLICA IDENTITY sends it.
        event("d", r#"{"id":2}"#, "null", 5_000),
        "null".to_owned(),
        event("t", "null", "null", 6_000),
    ];
    std::fs::write(dir.path().join("cdc.jsonl"), lines.join("\n") + "\n").unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        r#"[[sources]]
name = "docs-table"
format = "debezium"
path = "cdc.jsonl"
[sources.relation]
name = "docs"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "title", type = "text" }, { name = "size", type = "bigint" },
           { name = "changed_at", type = "timestamp" }]
[sources.options.mapping]
changed_at = { metadata = "/debezium/ts_ms", unit = "ms" }

[[sources]]
name = "docs-knowledge"
format = "debezium"
path = "cdc.jsonl"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = { metadata = "/debezium/source/table" }
document_id = "/id"
size_bytes = "/size"
"#,
    )
    .unwrap();
    let job = job.display().to_string();
    let (code, out, err) = aimatrix(&[
        "run",
        &job,
        "--quiet",
        "--workers",
        "2",
        "--output",
        "csv",
        "--sql",
        "SELECT id, title, size, changed_at FROM docs ORDER BY id",
        "--sql",
        "SELECT collection, document_id, size_bytes FROM documents ORDER BY document_id",
        "--sql",
        "SELECT source, error FROM ingest_errors ORDER BY source",
    ]);
    assert_eq!(code, 0, "{err}");
    // 1: read, then updated to "intro v2" (150) at 3,000 ms; 2: created, then deleted (the
    // documents' times are the events' ts_ms: the delete at 5,000 ms comes after the create);
    // 3: created at 4,000 ms. The tombstone is skipped; the truncate is an error in each source.
    let truncate = "a truncate event (op t) is not applied: delete the rows with events of their own";
    assert_eq!(
        out,
        format!(
            "-- query 1\nid,title,size,changed_at\n1,intro v2,150,1970-01-01T00:00:03Z\n3,faq,300,1970-01-01T00:00:04Z\n\
             -- query 2\ncollection,document_id,size_bytes\ndocs,1,150\ndocs,3,300\n\
             -- query 3\nsource,error\ndocs-knowledge,{truncate}\ndocs-table,{truncate}\n"
        )
    );
}

/// `run` reads a file of OTLP/JSON exports (one `ExportTraceServiceRequest` per line, as the
/// OpenTelemetry Collector's file exporter writes them): two requests of spans, a third line
/// that is not a request; the spans and the ingest error are what the lines say.
#[test]
fn run_reads_otlp_json_export_files() {
    let dir = tempfile::tempdir().unwrap();
    let span = |trace: &str, id: &str, model: &str, tokens: u32| {
        format!(
            r#"{{"traceId":"{trace}","spanId":"{id}","name":"chat {model}","attributes":[{{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}},{{"key":"gen_ai.request.model","value":{{"stringValue":"{model}"}}}},{{"key":"gen_ai.usage.input_tokens","value":{{"intValue":"{tokens}"}}}}]}}"#
        )
    };
    let request =
        |spans: Vec<String>| format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#, spans.join(","));
    let trace = "5b8efff798038103d269b633813fc60c";
    let lines = [
        request(vec![span(trace, "0000000000000001", "gpt-4o", 100), span(trace, "0000000000000002", "o3", 7)]),
        request(vec![span(trace, "0000000000000003", "gpt-4o", 20)]),
        "{\"resourceSpans\": 1}".to_owned(),
    ];
    std::fs::write(dir.path().join("traces.jsonl"), lines.join("\n") + "\n").unwrap();
    let job = dir.path().join("otlp.toml");
    std::fs::write(&job, "[[sources]]\nname = \"otel\"\nformat = \"otlp-json\"\npath = \"traces.jsonl\"\n").unwrap();
    let job = job.display().to_string();
    let sql = "SELECT request_model, count(*) AS spans, sum(input_tokens) AS tokens FROM spans GROUP BY request_model \
               ORDER BY request_model";
    let (code, out, err) = aimatrix(&["run", &job, "--quiet", "--output", "csv", "--sql", sql]);
    assert_eq!(code, 0, "{err}");
    // gpt-4o: 100 + 20 in two spans; o3: 7.
    assert_eq!(out, "request_model,spans,tokens\ngpt-4o,2,120\no3,1,7\n");
    let (code, out, err) =
        aimatrix(&["run", &job, "--quiet", "--output", "csv", "--sql", "SELECT source, location FROM ingest_errors"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("source,location\notel,") && out.trim_end().ends_with("traces.jsonl:3"), "{out}");
}
