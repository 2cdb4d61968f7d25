//! The command line as a user meets it: query labels, CSV separators, and the demo's second,
//! incremental round.

use std::process::Command;

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
