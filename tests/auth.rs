//! Authentication and roles, end to end through the binary: users made with `aimatrix auth`,
//! every route of the OpenAPI document walked without credentials, with an unknown token and
//! with each role; pgwire sessions with SCRAM-SHA-256 through a PostgreSQL driver and psql;
//! the refusals counted in `/metrics`; no secret in the server's logs. What each request may do
//! is the README's table of roles, written out here, not read from the server.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aimatrix");

struct Server {
    child: Child,
    base: String,
    /// The pgwire port it reported listening on (`--pgwire 127.0.0.1:0`), if any.
    pg_port: Option<u16>,
    lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Everything the server has logged so far.
    fn log(&self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        self.lines.try_iter().map(|line| line + "\n").collect()
    }
}

/// `aimatrix serve --config CONFIG ARGS`, logging at debug level; waits for its HTTP address.
fn start(config: &std::path::Path, args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("AIMATRIX__HTTP__LISTEN")
        .env_remove("AIMATRIX__PGWIRE__LISTEN")
        .env("RUST_LOG", "debug,timely=info,differential_dataflow=info,hyper=info,h2=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aimatrix serve starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let (log_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
            let _ = tx.send(line.clone());
            let _ = log_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited before it listened: {status}");
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && let Some(at) = line.find("HTTP API on ")
        {
            let url = line[at + "HTTP API on ".len()..].split_whitespace().next().unwrap_or("").to_owned();
            return Server { child, base: url, pg_port: common::pgwire_port(&line), lines };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not say where it listens");
}

/// Runs `aimatrix auth ARGS` with `stdin`; its standard output.
fn auth(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("auth")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("aimatrix auth runs");
    child.stdin.take().expect("piped").write_all(stdin.as_bytes()).expect("written");
    let out = child.wait_with_output().expect("it ends");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A new token and its hash, from `aimatrix auth token`.
fn token() -> (String, String) {
    let out = auth(&["token"], "");
    let field =
        |name: &str| out.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).expect("printed");
    (field("token:"), field("sha256:"))
}

/// A request: its status, `WWW-Authenticate` and body.
fn call(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<(&str, &str)>) -> (u16, String, Value) {
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let url = format!("{base}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some((content_type, text)) => r.header("Content-Type", content_type).send(text.as_bytes()),
                None => r.send_empty(),
            }
        }
    }
    .expect("the server answers");
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, challenge, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

const JOB: &str = r#"name = "shop"
[[sources]]
name = "orders-in"
kind = "push"
format = "json"
[sources.relation]
name = "orders"
columns = [{ name = "order_id", type = "text" }, { name = "amount", type = "double" }]

[[sources]]
name = "otel-in"
kind = "push"
format = "otlp-json"

[[sources]]
name = "github-in"
kind = "push"
format = "github-actions"
[sources.webhook]
secret = "webhook secret"

[[sources]]
name = "github-open"
kind = "push"
format = "github-actions"
"#;

/// Jobs for the walk over the routes: the one whose paths it calls, and the one it submits.
const WALK_JOB: &str = r#"name = "walk"
[[sources]]
name = "clicks-in"
kind = "push"
format = "json"
[sources.relation]
name = "clicks"
columns = [{ name = "page", type = "text" }]
"#;
const EXTRA_JOB: &str = r#"name = "extra"
[[sources]]
name = "extra-in"
kind = "push"
format = "json"
[sources.relation]
name = "extras"
columns = [{ name = "x", type = "text" }]
"#;

/// GitHub webhook deliveries on a server with users: signed with the source's secret, they
/// are taken without a token; unsigned, or for a source without a secret, refused (401) even
/// with an admin's token. An unauthenticated delivery learns nothing of what the server holds:
/// an unsigned one, one for a source without a secret, for a job or a source that does not
/// exist, or for a source of another format is refused with the same 401 and the same message.
/// Returns the refusals, each counted in `aimatrix_auth_refused_total` as unauthenticated.
fn webhook_deliveries(base: &str, job: &str, admin_token: &str) -> u64 {
    let body = r#"{"zen": "Approachable is better than simple."}"#;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"webhook secret");
    let signature = format!(
        "sha256={}",
        ring::hmac::sign(&key, body.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let deliver = |source: &str, signature: Option<&str>, token: Option<&str>| {
        let mut r = agent
            .post(format!("{base}/v1/webhooks/github/{job}/{source}"))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "ping");
        if let Some(s) = signature {
            r = r.header("X-Hub-Signature-256", s);
        }
        if let Some(t) = token {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        let response = r.send(body.as_bytes()).expect("the server answers");
        let status = response.status().as_u16();
        (status, response.into_body().read_to_string().unwrap_or_default())
    };
    assert_eq!(
        deliver("github-in", Some(&signature), None),
        (200, r#"{"zen":"Approachable is better than simple."}"#.into())
    );
    let refused = deliver("github-in", None, Some(admin_token));
    assert_eq!(refused.0, 401, "{}", refused.1);
    assert!(refused.1.contains("the delivery does not verify"), "{}", refused.1);
    let wrong = format!("sha256={}", "0".repeat(64));
    for (source, signature) in [
        ("github-open", Some(signature.as_str())),
        ("github-in", Some(wrong.as_str())),
        ("no-such-source", Some(signature.as_str())),
        ("orders-in", Some(signature.as_str())),
    ] {
        assert_eq!(deliver(source, signature, Some(admin_token)), refused, "{source}");
    }
    let other_job = agent
        .post(format!("{base}/v1/webhooks/github/999/github-in"))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "ping")
        .header("X-Hub-Signature-256", &signature)
        .send(body.as_bytes())
        .expect("the server answers");
    assert_eq!(other_job.status().as_u16(), 401);
    assert_eq!(other_job.into_body().read_to_string().unwrap_or_default(), refused.1);
    6
}

/// The role each route of the OpenAPI document needs (README "Authentication"), route by
/// route: a route missing here fails the walk, so a new one gets a line and a decision.
fn needed(method: &str, path: &str) -> Option<&'static str> {
    match (method, path) {
        // Authenticated by the delivery's signature, not a token (see the walk).
        ("get", "/healthz" | "/readyz") | ("post", "/v1/webhooks/github/{job}/{source}") => None,
        ("post", "/v1/jobs") | ("delete", "/v1/jobs/{id}") => Some("admin"),
        ("post", "/v1/ingest/{job}/{source}" | "/v1/otlp/{job}/{source}/v1/traces") => Some("writer"),
        ("get", "/metrics" | "/v1/openapi.json" | "/v1/jobs" | "/v1/jobs/{id}" | "/v1/catalog" | "/v1/subscribe")
        | ("post", "/v1/sql") => Some("reader"),
        (method, path) => panic!("{method} {path}: a route the README's table of roles does not name"),
    }
}

#[test]
fn users_and_roles_guard_every_route_and_session() {
    let (reader_token, reader_hash) = token();
    let (writer_token, writer_hash) = token();
    let (admin_token, admin_hash) = token();
    let (reader_password, admin_password) = ("correct horse battery", "staple ünïcode 🔑");
    let reader_verifier = auth(&["password"], &format!("{reader_password}\n"));
    let admin_verifier = auth(&["password"], admin_password);
    for v in [&reader_verifier, &admin_verifier] {
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("aimatrix.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[auth.users]]
name = "reader"
role = "reader"
password = "{}"
tokens = ["{reader_hash}"]

[[auth.users]]
name = "writer"
role = "writer"
tokens = ["{writer_hash}"]

[[auth.users]]
name = "admin"
role = "admin"
password = "{}"
tokens = ["{admin_hash}"]
"#,
            reader_verifier.trim(),
            admin_verifier.trim()
        ),
    )
    .expect("config written");
    let mut unauthenticated = 0;
    // With users, any address may be listened on: 0.0.0.0 (every interface) is taken, and a
    // request for the `Host` a client used (here 0.0.0.0:PORT) is answered.
    let server = start(&config, &["--http", "0.0.0.0:0", "--pgwire", "127.0.0.1:0"]);
    let pg_port = server.pg_port.expect("pgwire listens");
    let base = server.base.clone();

    // Two Authorization headers: refused, whichever comes first.
    {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        let status = agent
            .get(format!("{base}/v1/jobs"))
            .header("Authorization", &format!("Bearer {admin_token}"))
            .header("Authorization", "Bearer amx_wrong")
            .call()
            .expect("an answer")
            .status()
            .as_u16();
        assert_eq!(status, 400);
        unauthenticated += 1;
    }

    // A job (admin) and a push into it (writer), then every route, from the OpenAPI document.
    let (status, _, body) = call(&base, "POST", "/v1/jobs", Some(&admin_token), Some(("application/toml", JOB)));
    assert_eq!(status, 201, "{body}");
    let job = body["id"].as_u64().expect("an id");
    let push = json!({"order_id": "o1", "amount": 2.5}).to_string();
    let ingest = format!("/v1/ingest/{job}/orders-in");
    let (status, _, body) = call(&base, "POST", &ingest, Some(&writer_token), Some(("application/x-ndjson", &push)));
    assert_eq!(status, 200, "{body}");

    let (status, _, body) = call(&base, "POST", "/v1/jobs", Some(&admin_token), Some(("application/toml", WALK_JOB)));
    assert_eq!(status, 201, "{body}");
    let walk = body["id"].as_u64().expect("an id").to_string();
    let click = json!({"page": "/"}).to_string();

    let (status, _, document) = call(&base, "GET", "/v1/openapi.json", Some(&reader_token), None);
    assert_eq!(status, 200);
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let tokens = [("reader", &reader_token), ("writer", &writer_token), ("admin", &admin_token)];
    let rank = |role: &str| ["reader", "writer", "admin"].iter().position(|r| *r == role).expect("a role");
    let (mut forbidden, mut routes) = (0, 0);
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            routes += 1;
            // An OTLP export goes to the first job's OTLP source (the walk cancels its own job
            // before it gets there).
            let (job, source) = if path.starts_with("/v1/otlp/") || path.starts_with("/v1/webhooks/") {
                (job.to_string(), "otel-in")
            } else {
                (walk.clone(), "clicks-in")
            };
            let concrete = path.replace("{id}", &walk).replace("{job}", &job).replace("{source}", source);
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/v1/jobs") => Some(("application/toml", EXTRA_JOB)),
                // An OTLP export without spans.
                ("post", p) if p.starts_with("/v1/otlp/") => Some(("application/json", "{}")),
                ("post", "/v1/sql") => Some(("application/json", r#"{"sql": "SELECT 1 AS one"}"#)),
                ("post", _) => Some(("application/x-ndjson", click.as_str())),
                _ => None,
            };
            let concrete = if path == "/v1/subscribe" { format!("{concrete}?view=orders") } else { concrete };
            let m = method.to_uppercase();
            if path.starts_with("/v1/webhooks/github/") {
                unauthenticated += webhook_deliveries(&base, &job, &admin_token);
                continue;
            }
            let Some(needed) = needed(method, path) else {
                // The probes need nothing (readiness may still be 503 on a busy machine).
                let (status, _, _) = call(&base, &m, &concrete, None, body);
                assert!([200, 503].contains(&status), "{m} {path}: {status}");
                continue;
            };
            assert!(operation["responses"]["401"].is_object(), "{m} {path} documents its 401");
            for token in [None, Some("amx_not-a-token"), Some(reader_hash.as_str())] {
                let (status, challenge, answer) = call(&base, &m, &concrete, token, body);
                assert_eq!(status, 401, "{m} {path} with {token:?}: {answer}");
                assert!(challenge.starts_with("Bearer realm=\"aimatrix\""), "{m} {path}: {challenge}");
                assert!(answer["error"].as_str().is_some_and(|e| e.contains("token")), "{answer}");
                unauthenticated += 1;
            }
            for (role, token) in tokens {
                // DELETE cancels the job: only the last (admin) call may.
                let (status, _, answer) = call(&base, &m, &concrete, Some(token), body);
                if rank(role) < rank(needed) {
                    assert_eq!(status, 403, "{m} {path} as {role}: {answer}");
                    let error = answer["error"].as_str().unwrap_or_default();
                    assert!(error.contains(&format!("needs role {needed}")) && error.contains(role), "{error}");
                    forbidden += 1;
                } else if path != "/v1/subscribe" {
                    // A WebSocket route answers a plain GET 4xx (no upgrade), never 401/403.
                    assert!(status < 300, "{m} {path} as {role}: {status} {answer}");
                } else {
                    assert!(![401, 403].contains(&status), "{m} {path} as {role}: {status} {answer}");
                }
            }
        }
    }
    assert!(routes >= 12, "{routes} routes");
    // A change on a path no route serves needs admin (closed by default), a read of one reader.
    for (method, token, status) in
        [("POST", &reader_token, 403), ("DELETE", &writer_token, 403), ("POST", &admin_token, 404)]
    {
        let (got, _, body) = call(&base, method, "/v1/nothing", Some(token), Some(("application/json", "{}")));
        assert_eq!(got, status, "{method} as {token}: {body}");
        if status == 403 {
            forbidden += 1;
        }
    }
    let (got, _, _) = call(&base, "GET", "/v1/nothing", Some(&reader_token), None);
    assert_eq!(got, 404);

    // The console's page and assets hold no data and need no token; what they show comes from
    // the API. A subscription may carry its token as `access_token` (a browser's WebSocket
    // cannot set the header): a wrong one is refused, a known one admitted (a plain GET, not an
    // upgrade: 4xx but neither 401 nor 403).
    for path in ["/console", "/console/console.js", "/console/console.css"] {
        let (status, _, _) = call(&base, "GET", path, None, None);
        assert_eq!(status, 200, "{path}");
    }
    let subscribe =
        |token: &str| call(&base, "GET", &format!("/v1/subscribe?view=orders&access_token={token}"), None, None);
    let (status, _, body) = subscribe("amx_not-a-token");
    assert_eq!(status, 401, "{body}");
    unauthenticated += 1;
    let (status, _, body) = subscribe(&reader_token);
    assert!(status >= 400 && ![401, 403].contains(&status), "{status} {body}");

    // A reader queries but may not change the catalog; an admin may.
    let sql = |token: &str, sql: &str| call(&base, "POST", "/v1/sql", Some(token), Some(("application/sql", sql)));
    let (status, _, body) = sql(&reader_token, "SELECT order_id, amount FROM orders");
    assert_eq!((status, &body["rows"]), (200, &json!([{"order_id": "o1", "amount": 2.5}])), "{body}");
    let create = "CREATE MATERIALIZED VIEW big AS SELECT order_id FROM orders WHERE amount > 1";
    for token in [&reader_token, &writer_token] {
        let (status, _, body) = sql(token, create);
        assert_eq!(status, 403, "{body}");
        forbidden += 1;
    }
    let (status, _, body) = sql(&admin_token, create);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = sql(&reader_token, "DROP MATERIALIZED VIEW big");
    assert_eq!(status, 403, "{body}");
    forbidden += 1;

    // Secrets in a job's Kafka properties are shown to nobody (the job file has them).
    let kafka_job = "name = \"k\"\n[[sources]]\nname = \"k-in\"\nkind = \"kafka\"\nformat = \"json\"\n\
                     [sources.kafka]\nbrokers = \"127.0.0.1:1\"\ntopic = \"t\"\n[sources.kafka.properties]\n\
                     \"sasl.username\" = \"svc\"\n\"sasl.password\" = \"SuperSecretKafkaPw\"\n\
                     \"ssl.key.password\" = \"AnotherSecret\"\n[sources.relation]\nname = \"kt\"\ncolumns = [{ name = \"x\", type = \"text\" }]\n";
    // (This build of librdkafka has no OpenSSL: it refuses `ssl.key.password`, quoting its
    // value, which the answer must not.)
    let (status, _, body) = call(&base, "POST", "/v1/jobs", Some(&admin_token), Some(("application/toml", kafka_job)));
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("AnotherSecret") && body.to_string().contains("ssl.key.password"), "{body}");
    let kafka_job = kafka_job.replace("\"ssl.key.password\" = \"AnotherSecret\"", "\"client.id\" = \"c\"");
    let (status, _, body) = call(&base, "POST", "/v1/jobs", Some(&admin_token), Some(("application/toml", &kafka_job)));
    assert_eq!(status, 201, "{body}");
    let kafka = body["id"].as_u64().expect("an id");
    for path in [format!("/v1/jobs/{kafka}"), "/v1/jobs".to_owned()] {
        let (status, _, body) = call(&base, "GET", &path, Some(&reader_token), None);
        let text = body.to_string();
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains("SuperSecretKafkaPw") && !text.contains("AnotherSecret"), "{text}");
        assert!(text.contains("\"sasl.username\":\"svc\"") && text.contains("<redacted>"), "{text}");
    }

    // The CLI sends AIMATRIX_TOKEN.
    let cli = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["sql", "--output", "csv", "--server", &base, "SELECT count(*) AS n FROM big"])
            .env_remove("AIMATRIX_TOKEN");
        if let Some(t) = token {
            command.env("AIMATRIX_TOKEN", t);
        }
        command.output().expect("aimatrix sql runs")
    };
    let out = cli(Some(&reader_token));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last(), Some("1"));
    let out = cli(None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));
    unauthenticated += 1;

    // pgwire: SCRAM-SHA-256 with the password the verifier was made from.
    let session = |user: &str, password: &str| {
        let mut config = postgres::Config::new();
        config.host("127.0.0.1").port(pg_port).user(user).password(password).dbname("aimatrix");
        config.connect_timeout(Duration::from_secs(10));
        config.connect(postgres::NoTls)
    };
    let code = |e: postgres::Error| e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| e.to_string());
    for (user, password) in [("reader", "wrong"), ("nobody", reader_password), ("writer", "anything"), ("reader", "")] {
        let error = session(user, password).err().map(code);
        assert_eq!(error.as_deref(), Some("28P01"), "{user}");
    }
    let mut reader = session("reader", reader_password).expect("the reader's session");
    let n: i64 = reader.query_one("SELECT count(*) FROM orders", &[]).expect("a query").get(0);
    assert_eq!(n, 1);
    let error = reader.batch_execute("DROP MATERIALIZED VIEW big").err().map(code);
    assert_eq!(error.as_deref(), Some("42501"));
    let error = reader.batch_execute("CREATE MATERIALIZED VIEW other AS SELECT 1 AS one").err().map(code);
    assert_eq!(error.as_deref(), Some("42501"));
    let mut admin = session("admin", admin_password).expect("the admin's session (a password SASLprep keeps as it is)");
    admin.batch_execute("DROP MATERIALIZED VIEW big").expect("an admin drops a view");
    // psql, with the password from PGPASSWORD.
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", "reader", "-d", "aimatrix", "-tAc"])
        .arg("SELECT amount FROM orders")
        .env("PGPASSWORD", reader_password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (Debian: apt-get install postgresql-client; scripts/build-deps.sh does)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2.5");
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", "reader", "-d", "aimatrix", "-tAc", "SELECT 1"])
        .env("PGPASSWORD", "wrong")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("password authentication failed for user \"reader\""), "{stderr}");

    // A connection that never logs in is closed (after 10 s), not left holding a session.
    {
        use std::io::Read;
        let mut silent = std::net::TcpStream::connect(("127.0.0.1", pg_port)).expect("a connection");
        silent.set_read_timeout(Some(Duration::from_secs(60))).expect("a timeout");
        let mut buffer = [0_u8; 16];
        assert!(matches!(silent.read(&mut buffer), Ok(0) | Err(_)), "the server closed it");
    }

    // Every refusal counted.
    let (status, _, metrics) = call(&base, "GET", "/metrics", Some(&reader_token), None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_owned();
    let counter = |labels: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("aimatrix_auth_refused_total{{{labels}}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(counter(r#"interface="http",reason="unauthenticated""#), unauthenticated);
    assert_eq!(counter(r#"interface="http",reason="forbidden""#), forbidden);
    assert_eq!(counter(r#"interface="pgwire",reason="unauthenticated""#), 5);
    assert_eq!(counter(r#"interface="pgwire",reason="forbidden""#), 2);

    // No secret in the logs: tokens, passwords, and the hashes a token is compared with.
    let log = server.log();
    assert!(log.contains("authentication failed"), "the refusals are logged");
    for secret in [&reader_token, &writer_token, &admin_token, &reader_hash, &writer_hash, &admin_hash] {
        assert!(!log.contains(secret.as_str()), "a token or its hash is in the log");
    }
    for secret in [reader_password, admin_password, reader_verifier.trim(), admin_verifier.trim()] {
        assert!(!log.contains(secret), "a password or its verifier is in the log");
    }
}

/// Without users the server stays on loopback: another address is refused at start-up, and
/// the message says how to configure users; a user with a clear-text password is refused
/// without printing it.
#[test]
fn without_users_only_loopback_and_bad_users_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("written");
    let out = Command::new(BIN)
        .args(["serve", "--pgwire", "", "--http", "0.0.0.0:0", "--config"])
        .arg(&empty)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("auth.users"), "{stderr}");
    let clear = dir.path().join("clear.toml");
    std::fs::write(&clear, "[[auth.users]]\nname = \"ann\"\nrole = \"admin\"\npassword = \"hunter2\"\n")
        .expect("written");
    let out = Command::new(BIN).args(["serve", "--pgwire", "", "--config"]).arg(&clear).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("aimatrix auth password") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// With a certificate, the HTTP port speaks only HTTPS and pgwire takes only encrypted
/// sessions: a client that trusts the CA gets its answers (ureq, the CLI's `sql` and
/// `subscribe` with `AIMATRIX_CA_CERT`, an OTLP/gRPC client over HTTP/2, psql with
/// `sslmode=verify-full`); plain HTTP and a
/// session without TLS are refused; a client that does not trust the CA refuses the server.
#[test]
fn tls_for_http_and_pgwire() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (ca, cert, key) = common::certificates(dir.path());
    let (token, hash) = token();
    let password = "tls and scram";
    let verifier = auth(&["password"], password);
    let config = dir.path().join("aimatrix.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\n[[auth.users]]\nname = \"ops\"\nrole = \"admin\"\npassword = \"{}\"\ntokens = [\"{hash}\"]\n",
            verifier.trim()
        ),
    )
    .expect("config written");
    let server = start(&config, &["--http", "127.0.0.1:0", "--pgwire", "127.0.0.1:0"]);
    let pg_port = server.pg_port.expect("pgwire listens");
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let https = server.base.replace("127.0.0.1", "localhost");
    let port = https.rsplit(':').next().expect("a port").to_owned();

    // HTTPS with the CA trusted.
    let ca_pem = std::fs::read(&ca).expect("the CA");
    let root = ureq::tls::Certificate::from_pem(&ca_pem).expect("a PEM certificate");
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![root])))
        .build();
    let agent =
        ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).tls_config(tls).build());
    let mut response = agent
        .post(format!("{https}/v1/sql"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/sql")
        .send("SELECT 41 + 1 AS answer")
        .expect("an HTTPS answer");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().expect("a body")).expect("JSON");
    assert_eq!(body["rows"], json!([{"answer": 42}]));
    // OTLP/gRPC over the same port (HTTP/2, ALPN h2): the receiver answers (no such job).
    let python = std::env::var("AIMATRIX_PYTHON").unwrap_or_else(|_| "/var/tmp/aimatrix-venv/bin/python".into());
    let script = r#"
import sys, grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts, trace_service_pb2_grpc as tsg
port, ca, token = sys.argv[1:4]
channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(open(ca, "rb").read()))
metadata = [("x-aimatrix-job", "99"), ("x-aimatrix-source", "otel"), ("authorization", "Bearer " + token)]
try:
    tsg.TraceServiceStub(channel).Export(ts.ExportTraceServiceRequest(), metadata=metadata, timeout=30)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#;
    let out = Command::new(&python)
        .args(["-c", script, &port, &ca.display().to_string(), &token])
        .output()
        .expect("python with grpcio runs (scripts/test.sh installs it)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "NOT_FOUND no job with id `99`",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the same port gets no answer; a client without the CA refuses the server.
    let plain = format!("http://localhost:{port}/healthz");
    assert!(ureq::get(&plain).call().is_err(), "plain HTTP answered");
    assert!(ureq::get(format!("{https}/healthz")).call().is_err(), "an untrusted certificate was accepted");

    // A client that completes the TLS handshake and never sends a request is closed (after
    // 10 s), not kept for ever.
    {
        use std::io::Read;
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(&ca_pem).expect("the CA's DER");
        roots.add(ca_der).expect("a root");
        #[allow(deprecated)] // ring, as the server's
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(client), name).expect("a connection");
        let mut socket =
            std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("a port"))).expect("TCP");
        socket.set_read_timeout(Some(Duration::from_secs(90))).expect("a timeout");
        while connection.is_handshaking() {
            connection.complete_io(&mut socket).expect("the handshake");
        }
        let mut stream = rustls::Stream::new(&mut connection, &mut socket);
        let mut buffer = [0_u8; 64];
        let read = stream.read(&mut buffer);
        assert!(!matches!(read, Ok(n) if n > 0), "the server sent something: {read:?}");
        assert!(
            !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
            "the idle connection was not closed within 90 s"
        );
    }

    // The CLI: sql, and a subscription over wss.
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--server", &https])
            .env("AIMATRIX_TOKEN", &token)
            .env("AIMATRIX_CA_CERT", &ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI runs")
    };
    let out = cli(&["sql", "--output", "csv", "SELECT 7 AS seven"]).wait_with_output().expect("it ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last(), Some("7"));
    let mut subscriber = cli(&["subscribe", "aimatrix_source_stats"]);
    let first = BufReader::new(subscriber.stdout.take().expect("piped")).lines().next();
    let _ = subscriber.kill();
    let stderr = {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut subscriber.stderr.take().expect("piped"), &mut text);
        text
    };
    let _ = subscriber.wait();
    let first = first.and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("\"type\""), "the subscription's first message: {first:?}; {stderr}");

    // pgwire: verify-full against the CA; a session without TLS is refused.
    let psql = |sslmode: &str| {
        Command::new("psql")
            .arg(format!(
                "host=localhost port={pg_port} user=ops dbname=aimatrix sslmode={sslmode} sslrootcert={}",
                ca.display()
            ))
            .args(["-tAc", "SELECT 40 + 2"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql runs")
    };
    let out = psql("verify-full");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = psql("disable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("only encrypted sessions"), "{stderr}");
}

/// psycopg 3 (PyPI; scripts/test.sh installs it in its venv and names the interpreter in
/// `AIMATRIX_PYTHON`), as Python users connect: SCRAM-SHA-256, server-side prepared statements
/// with typed parameters and typed values back, a named (server-side) cursor read in pages,
/// and a reader's view statement refused with psycopg's `InsufficientPrivilege` (42501).
#[test]
fn psycopg_logs_in_and_runs_prepared_statements() {
    let python = std::env::var("AIMATRIX_PYTHON").unwrap_or_else(|_| "/var/tmp/aimatrix-venv/bin/python".into());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (admin, reader) = ("admin pass", "reader pass");
    let (token, hash) = token();
    let config = dir.path().join("aimatrix.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.users]]\nname = \"ops\"\nrole = \"admin\"\npassword = \"{}\"\ntokens = [\"{hash}\"]\n\
             [[auth.users]]\nname = \"dash\"\nrole = \"reader\"\npassword = \"{}\"\n",
            auth(&["password"], admin).trim(),
            auth(&["password"], reader).trim()
        ),
    )
    .expect("config written");
    let server = start(&config, &["--http", "127.0.0.1:0", "--pgwire", "127.0.0.1:0"]);
    let pg_port = server.pg_port.expect("pgwire listens");
    // Rows to read: orders pushed over HTTP (the admin's token).
    let job = "name = \"shop\"\n[[sources]]\nname = \"in\"\nkind = \"push\"\nformat = \"json\"\n[sources.relation]\n\
               name = \"orders\"\ncolumns = [{ name = \"id\", type = \"bigint\" }, { name = \"label\", type = \"text\" }, \
               { name = \"amount\", type = \"double\" }, { name = \"paid\", type = \"boolean\" }, \
               { name = \"at\", type = \"timestamp\" }]\n[sources.options]\ntime_unit = \"s\"\n";
    let (status, _, body) = call(&server.base, "POST", "/v1/jobs", Some(&token), Some(("application/toml", job)));
    assert_eq!(status, 201, "{body}");
    let lines: Vec<String> = (1..=5)
        .map(|n| json!({"id": n, "label": format!("n{n}"), "amount": n as f64 / 4.0, "paid": n % 2 == 0, "at": 1_796_464_800 + n}).to_string())
        .collect();
    let path = format!("/v1/ingest/{}/in", body["id"]);
    let (status, _, body) =
        call(&server.base, "POST", &path, Some(&token), Some(("application/x-ndjson", &lines.join("\n"))));
    assert_eq!(status, 200, "{body}");
    let script = r#"
import datetime, sys, time, psycopg
from psycopg import errors
port, admin, reader = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with psycopg.connect(host="127.0.0.1", port=port, user="ops", password=admin, dbname="aimatrix") as c:
    c.autocommit = True
    c.execute("CREATE MATERIALIZED VIEW squares AS SELECT id, id * id AS sq FROM orders")
at = lambda n: datetime.datetime(2026, 12, 5, 10, 0, n, tzinfo=datetime.timezone.utc)  # timestamps are UTC (timestamptz)
with psycopg.connect(host="127.0.0.1", port=port, user="dash", password=reader, dbname="aimatrix") as c:
    c.autocommit = True
    rows = c.execute("SELECT id, label, amount, paid, at FROM orders WHERE id >= %s AND label <> %s ORDER BY id",
                     (2, "n3"), prepare=True).fetchall()
    assert rows == [(2, "n2", 0.5, True, at(2)), (4, "n4", 1.0, True, at(4)), (5, "n5", 1.25, False, at(5))], rows
    for _ in range(100):
        squares = c.execute("SELECT sq FROM squares WHERE id = %s", (4,), prepare=True).fetchall()
        if squares:
            break
        time.sleep(0.1)
    assert squares == [(16,)], squares
    # A named (server-side) cursor: DECLARE, a Describe of its portal, FETCH FORWARD n, CLOSE.
    with c.transaction():
        with c.cursor(name="paged") as cur:
            cur.execute("SELECT id, label FROM orders WHERE id > %s ORDER BY id", (1,))
            assert [d.name for d in cur.description] == ["id", "label"], cur.description
            first, rest = cur.fetchmany(2), cur.fetchall()
    assert first == [(2, "n2"), (3, "n3")] and rest == [(4, "n4"), (5, "n5")], (first, rest)
    try:
        c.execute("DROP MATERIALIZED VIEW squares")
        raise SystemExit("a reader dropped a view")
    except errors.InsufficientPrivilege:
        pass
try:
    psycopg.connect(host="127.0.0.1", port=port, user="dash", password="wrong", dbname="aimatrix")
    raise SystemExit("a wrong password logged in")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), e
print("ok")
"#;
    let out = Command::new(&python)
        .args(["-c", script, &pg_port.to_string(), admin, reader])
        .output()
        .expect("python with psycopg runs (scripts/test.sh installs it)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// OpenTelemetry's Python SDK (PyPI; scripts/test.sh installs it in its venv) exports over
/// OTLP/gRPC, its default, configured by the environment alone: the endpoint is the HTTP port,
/// the job and source and a writer's token go in `OTEL_EXPORTER_OTLP_HEADERS`, gzip on. The
/// spans it made are then rows of `spans` with the ids it gave them and the GenAI columns of
/// its attributes. With the generated stub: a span with a 1-byte trace id is answered with a
/// partial success naming it; a request without the job's metadata, for an unknown job, for a
/// source of another format, without a token, with a reader's token and for a method the
/// server does not have is refused with the gRPC status OTLP's exporters read (not retried).
/// Every expected value is what the script sent.
#[test]
fn an_opentelemetry_sdk_exports_spans_over_otlp_grpc() {
    let python = std::env::var("AIMATRIX_PYTHON").unwrap_or_else(|_| "/var/tmp/aimatrix-venv/bin/python".into());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ((admin, admin_hash), (writer, writer_hash), (reader, reader_hash)) = (token(), token(), token());
    let config = dir.path().join("aimatrix.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.users]]\nname = \"ops\"\nrole = \"admin\"\ntokens = [\"{admin_hash}\"]\n\
             [[auth.users]]\nname = \"agent\"\nrole = \"writer\"\ntokens = [\"{writer_hash}\"]\n\
             [[auth.users]]\nname = \"dash\"\nrole = \"reader\"\ntokens = [\"{reader_hash}\"]\n\
             [http]\nmax_body_bytes = 4000000\n"
        ),
    )
    .expect("config written");
    let server = start(&config, &["--http", "127.0.0.1:0"]);
    let submit = |job: &str| {
        let (status, _, body) = call(&server.base, "POST", "/v1/jobs", Some(&admin), Some(("application/toml", job)));
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().expect("an id")
    };
    let otel = submit("name = \"otel\"\n[[sources]]\nname = \"otel\"\nkind = \"push\"\nformat = \"otlp-json\"\n");
    let other = submit(
        "name = \"k\"\n[[sources]]\nname = \"k-in\"\nkind = \"push\"\nformat = \"json\"\n[sources.relation]\n\
         name = \"notes\"\ncolumns = [{ name = \"id\", type = \"bigint\" }]\n",
    );

    let script = r#"
import json, os, sys
import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts, trace_service_pb2_grpc as tsg
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.trace import Status, StatusCode, set_span_in_context

port, job, other, writer, reader = sys.argv[1:6]
out = {}

# The SDK as an instrumented agent runs it: everything from OTEL_EXPORTER_OTLP_* (gRPC).
results = []
class Recording(OTLPSpanExporter):
    def export(self, spans):
        result = super().export(spans)
        results.append(result == SpanExportResult.SUCCESS)
        return result
provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
provider.add_span_processor(SimpleSpanProcessor(Recording()))
tracer = provider.get_tracer("agent-sdk")
chat = tracer.start_span("chat gpt-4o", attributes={
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 85})
tool = tracer.start_span("execute_tool get_weather", context=set_span_in_context(chat), attributes={
    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "error.type": "timeout"})
tool.set_status(Status(StatusCode.ERROR, "the weather service timed out"))
tool.end()
chat.set_status(Status(StatusCode.OK))
chat.end()
provider.shutdown()
out["exported"] = results
out["trace_id"] = format(chat.get_span_context().trace_id, "032x")
out["chat_id"] = format(chat.get_span_context().span_id, "016x")
out["tool_id"] = format(tool.get_span_context().span_id, "016x")

# The generated stub, for the answers.
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
stub = tsg.TraceServiceStub(channel)
def span(trace_id, span_id, name):
    return trace_pb2.Span(trace_id=trace_id, span_id=span_id, name=name)
def request(*spans):
    return ts.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=list(spans))])])
def call(req, metadata, method=None):
    try:
        if method is None:
            answer = stub.Export(req, metadata=metadata, compression=grpc.Compression.Gzip, timeout=30)
        else:
            answer = channel.unary_unary(method)(b"", metadata=metadata, timeout=30)
            return {"code": "OK"}
        p = answer.partial_success
        return {"code": "OK", "rejected": p.rejected_spans, "message": p.error_message}
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details()}
target = lambda j, s: [("x-aimatrix-job", j), ("x-aimatrix-source", s)]
bearer = lambda t: [("authorization", "Bearer " + t)]
good = span(bytes(range(16)), bytes(range(8)), "embeddings")
out["partial"] = call(request(good, span(b"\x5b", bytes(8), "broken")), target(job, "otel") + bearer(writer))
out["no_target"] = call(request(good), bearer(writer))
out["unknown_job"] = call(request(good), target("99", "otel") + bearer(writer))
out["other_format"] = call(request(good), target(other, "k-in") + bearer(writer))
out["no_token"] = call(request(good), target(job, "otel"))
out["reader"] = call(request(good), target(job, "otel") + bearer(reader))
out["no_method"] = call(None, bearer(writer), "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
export_path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
def raw(data, metadata):
    try:
        channel.unary_unary(export_path)(data, metadata=metadata, timeout=30)
        return {"code": "OK"}
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details()}
out["garbage"] = raw(b"\xff\xff\xff\x07", target(job, "otel") + bearer(writer))
out["twice"] = call(request(good), target(job, "otel") + [("x-aimatrix-job", job)] + bearer(writer))
out["too_large"] = call(request(span(bytes(range(16)), bytes(range(8)), "x" * 5_000_000)), target(job, "otel") + bearer(writer))
# A span whose usage details are a huge bad value beside a good one: the answer stays small
# (the message quotes at most 1 KiB), so the client reads it and does not retry.
huge = trace_pb2.Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="huge usage",
    attributes=[{"key": "langfuse.observation.usage_details", "value": {"string_value": "[" * 2_000_000}}])
kept = span(bytes(range(1, 17)), bytes(range(2, 10)), "kept beside huge")
out["huge"] = call(request(huge, kept), target(job, "otel") + bearer(writer))
print(json.dumps(out))
"#;
    let port = server.base.rsplit(':').next().expect("a port").to_owned();
    let headers = format!("x-aimatrix-job={otel},x-aimatrix-source=otel,authorization=Bearer%20{writer}");
    let out = Command::new(&python)
        .args(["-c", script, &port, &otel.to_string(), &other.to_string(), &writer, &reader])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("OTEL_EXPORTER_OTLP_INSECURE", "true")
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .env("OTEL_EXPORTER_OTLP_HEADERS", headers)
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .expect("python with OpenTelemetry's SDK runs (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    assert_eq!(out["exported"], json!([true, true]), "{out}");
    assert_eq!(
        out["partial"],
        json!({"code": "OK", "rejected": 1,
               "message": "trace id has 1 bytes, not 16 (each rejected span is a row of ingest_errors)"})
    );
    let code = |name: &str| out[name]["code"].as_str().unwrap_or_default().to_owned();
    let message = |name: &str| out[name]["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code("no_target"), "INVALID_ARGUMENT");
    assert!(message("no_target").contains("`x-aimatrix-job` is missing"), "{out}");
    assert_eq!(code("unknown_job"), "NOT_FOUND", "{out}");
    assert_eq!(code("other_format"), "INVALID_ARGUMENT");
    assert!(message("other_format").contains("reads format `json`"), "{out}");
    assert_eq!(code("no_token"), "UNAUTHENTICATED");
    assert!(message("no_token").contains("bearer token"), "{out}");
    assert_eq!(code("reader"), "PERMISSION_DENIED", "{out}");
    assert_eq!(code("no_method"), "UNIMPLEMENTED", "{out}");
    // tonic's own refusals of the message, coded as what a retry cannot mend.
    assert_eq!(code("garbage"), "INVALID_ARGUMENT", "{out}");
    assert!(message("garbage").starts_with("not an ExportTraceServiceRequest"), "{out}");
    assert_eq!(code("twice"), "INVALID_ARGUMENT");
    assert!(message("twice").contains("given more than once"), "{out}");
    assert_eq!(code("too_large"), "INVALID_ARGUMENT");
    assert!(message("too_large").contains("http.max_body_bytes (4000000 bytes"), "{out}");
    assert_eq!((code("huge"), &out["huge"]["rejected"]), ("OK".to_owned(), &json!(1)), "{}", message("huge"));
    assert!(message("huge").len() < 1200 && message("huge").contains(" bytes)"), "{}", message("huge"));
    // Not gRPC: another content type (415), and HTTP/1.1 (505).
    let http1 = |content_type: &str| {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        let mut r = agent
            .post(format!("{}/opentelemetry.proto.collector.trace.v1.TraceService/Export", server.base))
            .header("Content-Type", content_type)
            .header("Authorization", &format!("Bearer {writer}"))
            .send(&[0_u8, 0, 0, 0, 0][..])
            .expect("an answer");
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
    };
    let (status, body) = http1("text/plain");
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("OTLP/gRPC's method"), "{body}");
    let (status, body) = http1("application/grpc");
    assert_eq!(status, 505, "{body}");

    // What the SDK sent, and the good span of the partial success: rows of `spans`.
    let sql = "SELECT trace_id, span_id, parent_span_id, name, operation, provider, request_model, input_tokens, \
               output_tokens, tool_name, status, error_type, json_get_str(attributes, 'service.name') AS service, \
               json_get_str(attributes, 'otel.scope.name') AS scope FROM spans ORDER BY name";
    let (trace_id, chat_id, tool_id) = (&out["trace_id"], &out["chat_id"], &out["tool_id"]);
    let want = json!([
        {"trace_id": trace_id, "span_id": chat_id, "parent_span_id": null, "name": "chat gpt-4o",
         "operation": "chat", "provider": "openai", "request_model": "gpt-4o", "input_tokens": 1200,
         "output_tokens": 85, "tool_name": null, "status": "ok", "error_type": null,
         "service": "support-agent", "scope": "agent-sdk"},
        {"trace_id": "000102030405060708090a0b0c0d0e0f", "span_id": "0001020304050607", "parent_span_id": null,
         "name": "embeddings", "operation": null, "provider": null, "request_model": null, "input_tokens": null,
         "output_tokens": null, "tool_name": null, "status": "unset", "error_type": null, "service": null,
         "scope": null},
        {"trace_id": trace_id, "span_id": tool_id, "parent_span_id": chat_id, "name": "execute_tool get_weather",
         "operation": "execute_tool", "provider": null, "request_model": null, "input_tokens": null,
         "output_tokens": null, "tool_name": "get_weather", "status": "error", "error_type": "timeout",
         "service": "support-agent", "scope": "agent-sdk"},
        {"trace_id": "0102030405060708090a0b0c0d0e0f10", "span_id": "0203040506070809", "parent_span_id": null,
         "name": "kept beside huge", "operation": null, "provider": null, "request_model": null,
         "input_tokens": null, "output_tokens": null, "tool_name": null, "status": "unset", "error_type": null,
         "service": null, "scope": null},
    ]);
    let body = json!({"sql": sql}).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, rows) = call(&server.base, "POST", "/v1/sql", Some(&reader), Some(("application/json", &body)));
        assert_eq!(status, 200, "{rows}");
        if rows["rows"] == want || Instant::now() > deadline {
            assert_eq!(rows["rows"], want);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The web console on a server with users, in a real headless browser
/// (`tests/console_browser.py` with a reader's token; see `serve::the_console_works_in_a_real_browser`):
/// the page asks for a token, refuses a wrong one, shows the data with a reader's, subscribes
/// with it as `access_token`, and shows why a reader may not submit a job.
#[test]
fn the_console_asks_for_a_token_and_keeps_to_its_role() {
    let (reader_token, reader_hash) = token();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("aimatrix.toml");
    let users = format!("[[auth.users]]\nname = \"reader\"\nrole = \"reader\"\ntokens = [\"{reader_hash}\"]\n");
    std::fs::write(&config, users).expect("config written");
    let server = start(&config, &["--http", "127.0.0.1:0", "--pgwire", ""]);
    common::console_browser_test(&server.base, "console-screenshots-users", &[&reader_token], &[]);
}
