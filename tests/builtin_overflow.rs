//! A built-in view's sum beyond BIGINT through the binary (issue 6): the value is NULL and the
//! overflow is a row of `aimatrix_view_errors`, not a wrapped number. Expected values by hand.

use std::process::Command;

#[test]
fn collection_stats_overflow_is_null_and_an_aimatrix_view_errors_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("k.jsonl");
    std::fs::write(&data, "{\"d\":\"a\",\"sz\":9223372036854775807,\"t\":1}\n{\"d\":\"b\",\"sz\":1,\"t\":2}\n")
        .unwrap();
    let job = dir.path().join("k.toml");
    let text = format!(
        r#"
[[sources]]
name = "k"
format = "json"
path = "{}"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = {{ const = "c" }}
document_id = "/d"
op = {{ const = "upsert" }}
size_bytes = "/sz"
event_time = {{ pointer = "/t", unit = "s" }}
"#,
        data.display()
    );
    std::fs::write(&job, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aimatrix"))
        .arg("run")
        .arg(&job)
        .args(["--output", "json", "--quiet"])
        .args(["--sql", "SELECT collection, documents, size_bytes FROM collection_stats"])
        .args(["--sql", "SELECT \"view\", error FROM aimatrix_view_errors"])
        .output()
        .unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> =
        String::from_utf8(out.stdout).unwrap().lines().filter(|l| l.starts_with('[')).map(String::from).collect();
    // 9223372036854775807 + 1 = 9223372036854775808 does not fit a BIGINT.
    assert_eq!(
        lines,
        [
            r#"[{"collection":"c","documents":2,"size_bytes":null}]"#,
            r#"[{"view":"collection_stats","error":"integer overflow in size_bytes (BIGINT): 9223372036854775808 (key ('c'))"}]"#,
        ]
    );
}
