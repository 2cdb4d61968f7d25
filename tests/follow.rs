//! `aimatrix run --follow`: appended lines (a malformed one, and a line written in two parts)
//! update the live views and the answers are printed again.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common;

const JOB: &str = r#"
[[sources]]
name = "kb"
format = "json"
path = "kb.jsonl"
[sources.options]
relation = "knowledge_events"
time_unit = "s"
[sources.options.mapping]
collection = "/c"
document_id = "/d"
op = "/op"
version = "/v"
event_time = "/t"
"#;

fn line(c: &str, d: &str, op: &str, v: i64, t: i64) -> String {
    format!("{{\"c\":\"{c}\",\"d\":\"{d}\",\"op\":\"{op}\",\"v\":{v},\"t\":{t}}}\n")
}

#[test]
fn follow_picks_up_appended_lines_and_reanswers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.toml"), JOB).unwrap();
    let data = dir.path().join("kb.jsonl");
    std::fs::write(&data, line("kb", "a", "upsert", 1, 10) + &line("kb", "b", "upsert", 1, 11)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .arg("run")
        .arg(dir.path().join("job.toml"))
        .args(["--follow", "--interval", "100ms", "--output", "json", "--quiet"])
        .args(["--sql", "SELECT collection, documents, edits FROM collection_stats ORDER BY collection"])
        .args(["--sql", "SELECT count(*) AS errors FROM ingest_errors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::stdout_lines(&mut child);

    // Two documents, two edits.
    common::wait_for(&rx, r#""documents":2,"edits":2"#);

    // Append: a delete of a, a malformed line, and the first half of a line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&data).unwrap();
    let third = line("kb", "c", "upsert", 1, 12);
    let (head, tail) = third.split_at(10);
    write!(f, "{}{{not json\n{head}", line("kb", "a", "delete", 2, 20)).unwrap();
    f.flush().unwrap();
    // a deleted: 1 document (b), 3 edits; the malformed line is an ingest error.
    let seen = common::wait_for(&rx, r#""documents":1,"edits":3"#);
    let errors = common::wait_for(&rx, r#"{"errors":1}"#);
    assert!(!seen.contains(r#""edits":4"#), "the partial line was read before it was complete:\n{seen}");

    // Complete the partial line: c arrives.
    write!(f, "{tail}").unwrap();
    f.flush().unwrap();
    common::wait_for(&rx, r#""documents":2,"edits":4"#);
    let _ = child.kill();
    let _ = child.wait();
    assert!(errors.contains(r#""query":"query 2""#), "follow answers name their query: {errors}");
}
