//! Hostile SQL on the command line (issue 6): long expressions are errors, not crashes; errors
//! say what is wrong once, where, and before the sources are read; quoted view names can be
//! read; JSON keeps NaN and infinities apart from NULL.

use std::process::Command;

fn aimatrix(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_aimatrix")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
}

/// A job reading two evaluations, with `extra` appended to the job file.
fn job(dir: &std::path::Path, extra: &str) -> String {
    std::fs::write(dir.join("e.jsonl"), "{\"t\":\"a\",\"n\":\"x\",\"s\":-1}\n{\"t\":\"b\",\"n\":\"x\",\"s\":4}\n")
        .unwrap();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[[sources]]\nname = \"ev\"\nformat = \"json\"\npath = \"e.jsonl\"\n[sources.options]\nrelation = \"evaluations\"\n[sources.options.mapping]\ntrace_id = \"/t\"\nname = \"/n\"\nscore = \"/s\"\n{extra}"
        ),
    )
    .unwrap();
    job.display().to_string()
}

fn run(job: &str, sql: &[&str]) -> (i32, String, String) {
    let mut args = vec!["run", job, "--quiet", "--output", "json"];
    for q in sql {
        args.extend(["--sql", q]);
    }
    aimatrix(&args)
}

#[test]
fn a_10000_term_expression_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let sql = format!("SELECT {} AS s", vec!["1"; 10_000].join("+"));
    // As a named job query (the same statement with --sql is `query 1` or `statement 1`).
    let named = job(dir.path(), &format!("[[queries]]\nname = \"long\"\nsql = \"{sql}\"\n"));
    let (code, out, err) = aimatrix(&["run", &named, "--quiet", "--output", "json"]);
    // The SQL echoed: its first 200 characters ("SELECT " and 193 of "1+1+…"), then "…".
    let echoed = format!("SELECT {}…", &"1+".repeat(97)[..193]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "error: query `long`: {echoed}: expression nested too deeply: more than 1000 levels (such as a chain of \
             more than 1000 operators; write a long OR of comparisons as `x IN (…)`)\n"
        )
    );
    // With --sql, and in a view too.
    let other = tempfile::tempdir().unwrap();
    let job = job(other.path(), "");
    let (code, _, err) = run(&job, &[&sql]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(": expression nested too deeply: more than 1000 levels"), "{err}");
    let view =
        format!("CREATE MATERIALIZED VIEW v AS SELECT {} AS s FROM evaluations", vec!["score"; 10_000].join(" + "));
    let (code, _, err) = run(&job, &[&view]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(": expression nested too deeply: more than 1000 levels"), "{err}");
}

#[test]
fn a_typo_is_reported_once_with_its_position_before_the_sources_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let plain = job(dir.path(), "");
    // One line each, nothing repeated, and no summary line: nothing was read.
    let (code, _, err) = run(&plain, &["SELECT nope FROM evaluations"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: query `query 1`: SELECT nope FROM evaluations: No field named nope at line 1, column 8. Did you \
         mean 'evaluations.name'? Valid fields are evaluations.trace_id, evaluations.span_id, evaluations.name, \
         evaluations.score, evaluations.label.\n"
    );
    let other = tempfile::tempdir().unwrap();
    let named = job(other.path(), "[[queries]]\nname = \"typo\"\nsql = \"SELEC 1\"\n");
    let (code, _, err) = aimatrix(&["run", &named, "--quiet"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: query `typo`: SELEC 1: syntax error: Expected: an SQL statement, found: SELEC at line 1, column 1\n"
    );
    // With --sql: the same message, and no Debug formatting (`ParserError("…")`).
    let (code, _, err) = run(&plain, &["SELEC 1"]);
    assert_eq!(code, 1);
    assert!(err.ends_with(": SELEC 1: syntax error: Expected: an SQL statement, found: SELEC at line 1, column 1\n"));
    assert_eq!(err.lines().count(), 1, "{err}");
    let (_, _, err) = run(&plain, &["SELECT count(*) FROM evaluations", "SELECT *\nFROM nothere"]);
    assert_eq!(
        err,
        "error: query `query 2`: SELECT * FROM nothere: table 'datafusion.public.nothere' not found at line 2, column 6\n"
    );
    // An error that only running finds comes after the sources were read; its message once.
    let (code, _, err) = run(&plain, &["SELECT 1 / (count(*) - 2) AS q FROM evaluations"]);
    assert_eq!(code, 1);
    let last = err.lines().last().unwrap();
    assert_eq!(last, "error: query `query 1`: SELECT 1 / (count(*) - 2) AS q FROM evaluations: Divide by zero error");
    assert!(err.starts_with("read 2 records"), "{err}");
}

#[test]
fn a_one_megabyte_statement_is_echoed_cut_to_200_characters() {
    let dir = tempfile::tempdir().unwrap();
    // A job-file query of 1 MB that does not parse.
    let sql = format!("SELEC {}", "x".repeat(1 << 20));
    let job = job(dir.path(), &format!("[[queries]]\nname = \"big\"\nsql = \"{sql}\"\n"));
    let (code, _, err) = aimatrix(&["run", &job, "--quiet"]);
    assert_eq!(code, 1);
    let echoed = format!("SELEC {}…", "x".repeat(194));
    assert_eq!(
        err,
        format!(
            "error: query `big`: {echoed}: syntax error: Expected: an SQL statement, found: SELEC at line 1, column 1\n"
        )
    );
}

#[test]
fn quoted_view_names_can_be_read_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "");
    let (code, out, err) = run(
        &job,
        &[
            "CREATE MATERIALIZED VIEW \"MyV\" AS SELECT trace_id FROM evaluations",
            "CREATE MATERIALIZED VIEW \"my view\" AS SELECT count(*) AS n FROM \"MyV\"",
            "CREATE MATERIALIZED VIEW datafusion.public.x AS SELECT max(score) AS m FROM evaluations",
            "SELECT trace_id FROM \"MyV\" ORDER BY trace_id",
            "SELECT n FROM \"my view\"",
            "SELECT m FROM public.x",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[{\"trace_id\":\"a\"},{\"trace_id\":\"b\"}]\n[{\"n\":2}]\n[{\"m\":4.0}]\n");
    let (code, _, err) = run(
        &job,
        &["CREATE MATERIALIZED VIEW \"MyV\" AS SELECT trace_id FROM evaluations", "SELECT trace_id FROM MyV"],
    );
    assert_eq!(code, 1);
    assert!(err.ends_with("table 'datafusion.public.myv' not found at line 1, column 22\n"), "{err}");
    let (code, out, err) = run(
        &job,
        &[
            "CREATE MATERIALIZED VIEW \"MyV\" AS SELECT trace_id FROM evaluations",
            "DROP MATERIALIZED VIEW \"MyV\"",
            "CREATE MATERIALIZED VIEW \"MyV\" AS SELECT name FROM evaluations",
            "SELECT DISTINCT name FROM \"MyV\"",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "[{\"name\":\"x\"}]\n"), "{err}");
    let (code, _, err) = run(&job, &["CREATE MATERIALIZED VIEW other.x AS SELECT 1 AS one"]);
    assert_eq!(code, 1);
    assert!(err.contains("materialized view `other.x`: views live in the schema datafusion.public"), "{err}");
}

#[test]
fn json_answers_keep_nan_and_infinities_apart_from_null() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "");
    // Scores -1 and 4: score / 0 is -inf for a and +inf for b.
    let (code, out, err) = run(
        &job,
        &[
            "SELECT trace_id, score / 0 AS q, CAST('NaN' AS DOUBLE) AS nan, CAST(NULL AS DOUBLE) AS z FROM evaluations ORDER BY trace_id",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "[{\"trace_id\":\"a\",\"q\":\"-Infinity\",\"nan\":\"NaN\",\"z\":null},{\"trace_id\":\"b\",\"q\":\"Infinity\",\"nan\":\"NaN\",\"z\":null}]\n"
    );
}
