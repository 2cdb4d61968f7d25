//! End-to-end through the `aimatrix` binary: the same job on one process with one worker, one
//! process with three workers, and a two-process timely cluster on loopback (two workers
//! each) gives identical answers.

use crate::common;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use aimatrix::demo::{DemoConfig, demo_job_toml, write_demo_data};

const QUERIES: &[&str] = &[
    "SELECT * FROM agent_traces ORDER BY trace_id",
    "SELECT * FROM tool_usage ORDER BY tool_name NULLS FIRST",
    "SELECT * FROM model_usage ORDER BY provider NULLS FIRST, request_model NULLS FIRST",
    "SELECT * FROM workflow_runs ORDER BY run_id",
    "SELECT * FROM workflow_steps ORDER BY run_id, step_id",
    "SELECT * FROM documents ORDER BY collection, document_id",
    "SELECT * FROM collection_stats ORDER BY collection",
    "SELECT source, location, error FROM ingest_errors ORDER BY source, location",
    "SELECT count(*) AS n FROM spans",
    // A maintained view with an anti join and a left join over built-in views, and the same
    // queries answered in batch: their answers must be equal.
    "CREATE MATERIALIZED VIEW clean AS SELECT t.trace_id FROM agent_traces t \
     WHERE NOT EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND s.status = 'error')",
    "CREATE MATERIALIZED VIEW pairs AS SELECT t.trace_id, u.calls FROM agent_traces t \
     LEFT JOIN tool_usage u ON t.agent_name = u.tool_name",
    "SELECT (SELECT count(*) FROM clean) AS clean, (SELECT count(*) FROM pairs) AS pairs",
    "SELECT (SELECT count(*) FROM agent_traces t WHERE NOT EXISTS (SELECT 1 FROM spans s \
     WHERE s.trace_id = t.trace_id AND s.status = 'error')) AS clean, (SELECT count(*) FROM agent_traces) AS pairs",
];

/// Answer lines expected: one per query (view definitions print nothing).
fn answers() -> usize {
    QUERIES.iter().filter(|q| !q.starts_with("CREATE")).count()
}

fn aimatrix(job: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aimatrix"));
    cmd.arg("run").arg(job).args(["--output", "json", "--quiet"]);
    for q in QUERIES {
        cmd.args(["--sql", q]);
    }
    cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn ok(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn one_worker_many_workers_and_two_processes_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = write_demo_data(dir.path(), &DemoConfig { events: 6_000, seed: 7 }).expect("demo data");
    let job = dir.path().join("job.toml");
    std::fs::write(&job, demo_job_toml(&data)).expect("job file");

    let single = ok(aimatrix(&job, &["--workers", "1"]).output().expect("run"), "1 worker");
    assert_eq!(single.lines().count(), answers(), "one JSON line per query:\n{single}");
    // The answers are not trivially empty: every built-in view has rows.
    for line in single.lines() {
        assert!(line.len() > 10, "answered {line}");
    }
    // The maintained views equal the batch answers (the left join keeps every trace).
    let lines: Vec<&str> = single.lines().collect();
    assert_eq!(lines[answers() - 2], lines[answers() - 1], "maintained views differ from batch answers");

    let threads = ok(aimatrix(&job, &["--workers", "3", "--batch", "500"]).output().expect("run"), "3 workers");
    assert_eq!(threads, single, "3 workers in small batches disagree with 1 worker");
    // Many small reads: workers finish reading at different times; none may end the run early.
    let polls = ok(
        aimatrix(&job, &["--workers", "2", "--batch", "300", "--poll-bytes", "2048"]).output().expect("run"),
        "2 workers, small reads",
    );
    assert_eq!(polls, single, "2 workers reading in small pieces disagree with 1 worker");

    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", common::free_port(), common::free_port()))
        .expect("hosts");
    let hosts = hosts.to_string_lossy().into_owned();
    let spawn = |index: &str| {
        aimatrix(&job, &["--workers", "2", "--processes", "2", "--process-index", index, "--hosts", &hosts])
            .spawn()
            .expect("spawn")
    };
    // Process 1 first: it retries connecting to process 0 until that one listens.
    let p1 = spawn("1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p0 = spawn("0");
    let out0 = ok(p0.wait_with_output().expect("process 0"), "process 0");
    let out1 = ok(p1.wait_with_output().expect("process 1"), "process 1");
    // Stdout holds the answers and nothing else: connection progress goes to stderr.
    assert_eq!(out0, single, "the two-process cluster disagrees with one process");
    // Only process 0 answers; process 1 only computes.
    assert_eq!(out1, "", "process 1 printed on stdout");
}
