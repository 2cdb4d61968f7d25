//! Bad and tricky input through the binary (issue 6): lines longer than a read piece and than
//! the record limit, a replaced file under `--follow`, a directory as a source path, and a
//! source that read nothing. Expected values are counted by hand from the files written here.

use std::process::{Command, Output, Stdio};

use crate::common;

/// A job reading `data.jsonl` as evaluations (`t` = trace id, `n` = name, `l` = label).
fn job(dir: &std::path::Path, path: &str) -> std::path::PathBuf {
    let job = dir.join("job.toml");
    let text = format!(
        r#"
[[sources]]
name = "ev"
format = "json"
path = "{path}"
[sources.options]
relation = "evaluations"
[sources.options.mapping]
trace_id = "/t"
name = "/n"
label = "/l"
"#
    );
    std::fs::write(&job, text).unwrap();
    job
}

fn run(job: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .arg("run")
        .arg(job)
        .args(["--output", "json", "--quiet"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}: {}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Line 1 small, line 2 of 5,000 bytes, lines 3..=1002 small; read in pieces of 1 KiB (the
/// hidden `--poll-bytes`), as the default 16 MiB pieces are for a 17 MiB line.
fn long_line_file(dir: &std::path::Path) -> String {
    let mut text = String::from("{\"t\":\"before\",\"n\":\"x\"}\n");
    let pad = 5000 - "{\"t\":\"big\",\"n\":\"x\",\"l\":\"\"}".len();
    let long = format!("{{\"t\":\"big\",\"n\":\"x\",\"l\":\"{}\"}}", "a".repeat(pad));
    assert_eq!(long.len(), 5000);
    text.push_str(&long);
    text.push('\n');
    for i in 0..1000 {
        text.push_str(&format!("{{\"t\":\"after{i}\",\"n\":\"x\"}}\n"));
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_line_longer_than_a_read_piece_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = long_line_file(dir.path());
    let job = job(dir.path(), &data);
    let out = stdout(&run(
        &job,
        &[
            "--poll-bytes",
            "1024",
            "--sql",
            "SELECT count(*) AS n, max(length(label)) AS longest FROM evaluations",
            "--sql",
            "SELECT records, decoded, errors FROM aimatrix_source_stats",
        ],
    ));
    // 1002 lines, all decoded; the label of line 2 is 5000 bytes less the 26 of
    // `{"t":"big","n":"x","l":""}`: 4974.
    assert_eq!(out, "[{\"n\":1002,\"longest\":4974}]\n[{\"records\":1002,\"decoded\":1002,\"errors\":0}]\n");
}

#[test]
fn a_record_past_the_limit_is_an_ingest_error_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = long_line_file(dir.path());
    let job = job(dir.path(), &data);
    let out = stdout(&run(
        &job,
        &[
            "--poll-bytes",
            "1024",
            "--max-record-bytes",
            "4096",
            "--sql",
            "SELECT count(*) AS n FROM evaluations",
            "--sql",
            "SELECT location, error, length(raw) AS raw_bytes FROM ingest_errors",
        ],
    ));
    let expected = format!(
        "[{{\"n\":1001}}]\n[{{\"location\":\"{data}:2\",\"error\":\"record of 5000 bytes exceeds the maximum record size of 4096 bytes (--max-record-bytes of run, cluster.max_record_bytes of serve)\",\"raw_bytes\":1024}}]\n"
    );
    assert_eq!(out, expected);
}

#[test]
fn ingest_errors_read_by_any_worker_name_their_lines() {
    // 3 workers split the file by pieces of 64 bytes (a few lines each): most bad lines are
    // read by a worker that has not counted the lines before its piece. Every 7th line is not
    // JSON, every 11th is blank (no record), line 150 is past the record limit (300 bytes).
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let (mut bad, mut good) = (Vec::new(), 0);
    for line in 1..=400 {
        if line % 11 == 0 {
            text.push_str("  \n");
        } else if line == 150 {
            text.push_str(&format!("{{\"t\":\"long\",\"n\":\"x\",\"l\":\"{}\"}}\n", "a".repeat(400)));
            bad.push(line);
        } else if line % 7 == 0 {
            text.push_str(&format!("not json {line}\n"));
            bad.push(line);
        } else {
            text.push_str(&format!("{{\"t\":\"t{line}\",\"n\":\"x\"}}\n"));
            good += 1;
        }
    }
    let path = dir.path().join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    let data = path.display().to_string();
    let job = job(dir.path(), &data);
    let out = stdout(&run(
        &job,
        &[
            "--workers",
            "3",
            "--poll-bytes",
            "64",
            "--max-record-bytes",
            "300",
            "--sql",
            "SELECT count(*) AS n FROM evaluations",
            "--sql",
            "SELECT location FROM ingest_errors",
        ],
    ));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("[{{\"n\":{good}}}]").as_str()));
    let rows: Vec<serde_json::Value> = serde_json::from_str(lines.next().unwrap()).unwrap();
    let mut got: Vec<String> = rows.iter().map(|r| r["location"].as_str().unwrap().to_owned()).collect();
    got.sort();
    let mut want: Vec<String> = bad.iter().map(|l| format!("{data}:{l}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_directory_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("adir");
    std::fs::create_dir(&sub).unwrap();
    let job = job(dir.path(), "adir");
    let o = run(&job, &["--sql", "SELECT 1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let expected = format!(
        "error: source `ev`: `{0}` is a directory; give a file or a glob of files (e.g. `{0}/*.jsonl`)",
        sub.display()
    );
    assert_eq!(err.trim_end(), expected);
}

#[test]
fn a_source_that_read_nothing_has_a_row_of_zeros() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.jsonl"), "\n\n").unwrap();
    let job = job(dir.path(), "data.jsonl");
    let out = stdout(&run(&job, &["--sql", "SELECT * FROM aimatrix_source_stats"]));
    assert_eq!(out, "[{\"source\":\"ev\",\"records\":0,\"decoded\":0,\"errors\":0}]\n");
}

#[test]
fn follow_reads_a_replaced_file_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"t\":\"a\",\"n\":\"x\"}\n{\"t\":\"b\",\"n\":\"x\"}\n").unwrap();
    let job = job(dir.path(), "data.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .arg("run")
        .arg(&job)
        .args(["--follow", "--interval", "100ms", "--output", "json", "--quiet"])
        .args(["--sql", "SELECT string_agg(trace_id, ',' ORDER BY trace_id) AS ids FROM evaluations"])
        .args(["--sql", "SELECT count(*) AS errors FROM ingest_errors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::stdout_lines(&mut child);
    let wait_for = |want: &str| common::wait_for(&rx, want);
    wait_for(r#""ids":"a,b""#);
    // Log rotation: deleted and re-created, longer than what was read.
    std::fs::remove_file(&data).unwrap();
    let new =
        "{\"t\":\"p\",\"n\":\"xxxxxxxxxx\"}\n{\"t\":\"q\",\"n\":\"xxxxxxxxxx\"}\n{\"t\":\"r\",\"n\":\"xxxxxxxxxx\"}\n";
    std::fs::write(&data, new).unwrap();
    let seen = wait_for(r#""ids":"a,b,p,q,r""#);
    let _ = child.kill();
    let _ = child.wait();
    // No made-up record from reading the new file at the old offset.
    assert!(!seen.contains(r#"{"errors":1}"#), "{seen}");
}
