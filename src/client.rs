//! The command-line client of a running server (`aimatrix job|sql|subscribe --server URL`):
//! HTTP with `ureq`, the WebSocket with `tungstenite`.

use std::io::Write;
use std::path::Path;

use amx_sql::OutputFormat;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::job::Job;

/// The default server, `http://127.0.0.1:6876` (`aimatrix serve`'s default listen address).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:6876";

/// A client of one server.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Bearer TOKEN`, sent with every request when the server authenticates.
    authorization: Option<String>,
    /// The certificate authorities trusted over TLS (`None`: the public web's).
    roots: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
}

/// The certificates of a PEM file.
fn ca_certificates(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--ca-cert {}", path.display()))?;
    if certs.is_empty() {
        bail!("--ca-cert {}: no certificate in it (PEM `BEGIN CERTIFICATE`)", path.display());
    }
    Ok(certs)
}

impl Client {
    /// A client of the server at `base` (`http://host:port`, or `https://…` for a server with
    /// TLS), sending `token` as a bearer token with every request (a server with users
    /// configured needs one). Over HTTPS it trusts the certificate authorities in the PEM file
    /// `ca_cert` (a server's own CA, `--ca-cert`), or else the public web's (Mozilla's roots,
    /// `webpki-roots`).
    ///
    /// # Errors
    /// `ca_cert` cannot be read or holds no certificate.
    pub fn new(base: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Client> {
        let roots = match ca_cert {
            Some(path) => Some(ca_certificates(path)?),
            None => None,
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = &roots {
            let certs = roots.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder().http_status_as_error(false).tls_config(tls.build()).build();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            authorization: token.map(|t| format!("Bearer {}", t.trim())),
            roots,
        })
    }

    /// Sends a request; returns the body of a 2xx answer, or the server's error as an error.
    fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>, accept: Option<&str>) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let auth = self.authorization.as_deref();
        let response = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = accept {
                    r = r.header("Accept", a);
                }
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self.agent.post(&url);
                if let Some(a) = accept {
                    r = r.header("Accept", a);
                }
                if let Some(a) = auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some((content_type, bytes)) => r.header("Content-Type", content_type).send(bytes),
                    None => r.send_empty(),
                }
            }
        }
        .with_context(|| format!("cannot reach the server at {} (is `aimatrix serve` running?)", self.base))?;
        let status = response.status();
        let bytes = response.into_body().read_to_vec().context("reading the server's answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(bytes)
    }

    fn json(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Value> {
        let bytes = self.call(method, path, body, None)?;
        serde_json::from_slice(&bytes).context("the server's answer is not JSON")
    }

    /// `aimatrix job submit FILE`: relative paths resolve against the job file's directory
    /// here, before the job is sent. Returns the job's id.
    pub fn submit(&self, path: &Path) -> Result<u64> {
        let job = Job::load(path)?;
        let text = toml::to_string(&job.config).context("encoding the job")?;
        let answer = self.json("POST", "/v1/jobs", Some(("application/toml", text.as_bytes())))?;
        answer.get("id").and_then(Value::as_u64).ok_or_else(|| anyhow!("the server answered no job id: {answer}"))
    }

    /// `aimatrix job submit --wait`: waits until every file source of job `id` is read and
    /// caught up with (`caught_up` in `GET /v1/jobs/{id}`).
    ///
    /// Errors: the job failed (its errors), or the server cannot be reached.
    pub fn wait_caught_up(&self, id: u64) -> Result<()> {
        loop {
            let job = self.json("GET", &format!("/v1/jobs/{id}"), None)?;
            if let Some(errors) = job.get("errors").and_then(Value::as_array)
                && !errors.is_empty()
            {
                bail!("job {id} failed: {}", Value::Array(errors.clone()));
            }
            let sources = job.get("source_stats").and_then(Value::as_array).cloned().unwrap_or_default();
            let caught_up = sources.iter().all(|s| {
                s.get("progress").is_none_or(Value::is_null)
                    || s["progress"].get("caught_up").and_then(Value::as_bool) == Some(true)
            });
            if caught_up {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `aimatrix job list`: one line per job.
    pub fn list(&self, out: &mut dyn Write) -> Result<()> {
        let answer = self.json("GET", "/v1/jobs", None)?;
        writeln!(out, "{:>4}  {:<10}  {:<24}  {:>7}  {:>5}", "id", "state", "name", "sources", "views")?;
        for job in answer.get("jobs").and_then(Value::as_array).into_iter().flatten() {
            let count = |k: &str| job.get(k).and_then(Value::as_array).map_or(0, Vec::len);
            writeln!(
                out,
                "{:>4}  {:<10}  {:<24}  {:>7}  {:>5}",
                job.get("id").and_then(Value::as_u64).unwrap_or(0),
                job.get("state").and_then(Value::as_str).unwrap_or("?"),
                job.get("name").and_then(Value::as_str).unwrap_or("-"),
                count("sources"),
                count("views"),
            )?;
        }
        Ok(())
    }

    /// `aimatrix health [--ready]`: `GET /healthz` (with `ready`, `/readyz`: the server has
    /// started and every collection passed time 0). A container's health check.
    ///
    /// # Errors
    /// The server cannot be reached, or answers other than 200.
    pub fn health(&self, ready: bool) -> Result<()> {
        self.call("GET", if ready { "/readyz" } else { "/healthz" }, None, None).map(drop)
    }

    /// `aimatrix job show ID`: the job as the server reports it: with `json`, its answer
    /// (indented); otherwise a summary ([`show_job`]).
    pub fn show(&self, id: &str, json: bool, out: &mut dyn Write) -> Result<()> {
        let answer = self.json("GET", &format!("/v1/jobs/{id}"), None)?;
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
        } else {
            write!(out, "{}", show_job(&answer))?;
        }
        Ok(())
    }

    /// `aimatrix job cancel ID [--retract]`.
    pub fn cancel(&self, id: &str, retract: bool) -> Result<()> {
        let query = if retract { "?retract=true" } else { "" };
        self.json("DELETE", &format!("/v1/jobs/{id}{query}"), None).map(drop)
    }

    /// `aimatrix sql SQL`: the answer in `format` (read as an Arrow IPC stream).
    pub fn sql(&self, sql: &str, format: OutputFormat, out: &mut dyn Write) -> Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({ "sql": sql }))?;
        let bytes = self.call("POST", "/v1/sql", Some(("application/json", &body)), Some(amx_server::ARROW_STREAM))?;
        if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
            // A view statement answers JSON.
            writeln!(out, "{answer}")?;
            return Ok(());
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .context("reading the answer (Arrow IPC)")?;
        let schema = reader.schema();
        let mut batches = reader.collect::<Result<Vec<_>, _>>()?;
        if batches.is_empty() {
            batches.push(arrow::record_batch::RecordBatch::new_empty(schema));
        }
        let text = amx_sql::format_batches(&batches, format)?;
        write!(out, "{text}")?;
        if format == OutputFormat::Table {
            writeln!(out)?;
        }
        Ok(())
    }

    /// `aimatrix subscribe VIEW`: prints every message (snapshot, updates, progress) as a JSON
    /// line as it arrives, until the server closes the subscription; `progress` messages only
    /// with `with_progress`.
    pub fn subscribe(&self, view: &str, with_progress: bool, out: &mut dyn Write) -> Result<()> {
        let ws = self.base.replacen("http", "ws", 1);
        let url = format!("{ws}/v1/subscribe?view={}", encode(view));
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url.as_str())
            .with_context(|| format!("cannot subscribe at {url}"))?;
        if let Some(a) = &self.authorization {
            request.headers_mut().insert("Authorization", a.parse().context("the token is not a valid header value")?);
        }
        // wss: rustls with the same roots as HTTPS.
        let mut store = rustls::RootCertStore::empty();
        match &self.roots {
            Some(roots) => {
                for cert in roots {
                    store.add(cert.clone()).context("--ca-cert: a certificate rustls cannot use")?;
                }
            }
            None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        #[allow(deprecated)] // ring: a lean build (aws-lc-rs needs cmake); the server uses ring too
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS")?
            .with_root_certificates(store)
            .with_no_client_auth();
        let connector = tungstenite::Connector::Rustls(std::sync::Arc::new(tls));
        let host = request.uri().host().unwrap_or("localhost").trim_matches(['[', ']']).to_owned();
        let port = request.uri().port_u16().unwrap_or(if ws.starts_with("wss") { 443 } else { 80 });
        let stream = std::net::TcpStream::connect((host.as_str(), port))
            .with_context(|| format!("cannot reach the server at {} (is `aimatrix serve` running?)", self.base))?;
        let (mut socket, _) =
            tungstenite::client_tls_with_config(request, stream, None, Some(connector)).map_err(|e| match e {
                tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
                    let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_else(|| body.into_owned());
                    anyhow!("{message} (HTTP {})", response.status().as_u16())
                }
                tungstenite::HandshakeError::Failure(e) => anyhow!("cannot subscribe at {url}: {e}"),
                tungstenite::HandshakeError::Interrupted(_) => anyhow!("cannot subscribe at {url}: interrupted"),
            })?;
        loop {
            match socket.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let is_progress = serde_json::from_str::<Value>(text.as_str())
                        .is_ok_and(|v| v.get("type").and_then(Value::as_str) == Some("progress"));
                    if is_progress && !with_progress {
                        continue;
                    }
                    writeln!(out, "{}", text.as_str())?;
                    out.flush()?;
                }
                Ok(tungstenite::Message::Close(_)) => return Ok(()),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
                Err(e) => bail!("subscription ended: {e}"),
            }
        }
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters kept).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Width of a backfill bar, in characters between its brackets.
const BAR_WIDTH: usize = 30;

/// A job as `GET /v1/jobs/{id}` answers it (`JobStatus`), for a person: its state; per source
/// its records, rows decoded and errors, and for a file source its backfill as a bar with the
/// bytes read of the total, the rate and the time left; per view its rows; the job's backfill
/// summed; its errors. Fields the answer lacks are shown as `?`.
pub fn show_job(job: &Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let int = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let count = |v: &Value, k: &str| int(v, k).map_or_else(|| "?".to_owned(), |n| n.to_string());
    let mut out = String::new();
    let name = job.get("name").and_then(Value::as_str).map(|n| format!(" `{n}`")).unwrap_or_default();
    let _ = writeln!(out, "job {}{name} ({}): {}", count(job, "id"), text(job, "kind"), text(job, "state"));
    let sources = job.get("source_stats").and_then(Value::as_array).cloned().unwrap_or_default();
    if !sources.is_empty() {
        let width = sources.iter().map(|s| text(s, "name").len()).max().unwrap_or(0).max(6);
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {:>10}  {:>10}  {:>8}  backfill",
            "source", "kind", "records", "decoded", "errors"
        );
        for s in &sources {
            let progress = s.get("progress").filter(|p| !p.is_null()).map(backfill_line).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<width$}  {:<6}  {:>10}  {:>10}  {:>8}  {progress}",
                text(s, "name"),
                text(s, "kind"),
                count(s, "records"),
                count(s, "decoded"),
                count(s, "errors"),
            );
        }
    }
    let views = job.get("view_stats").and_then(Value::as_array).cloned().unwrap_or_default();
    if !views.is_empty() {
        let width = views.iter().map(|v| text(v, "name").len()).max().unwrap_or(0).max(4);
        let _ = writeln!(out, "{:<width$}  {:>10}", "view", "rows");
        for v in &views {
            let _ = writeln!(out, "{:<width$}  {:>10}", text(v, "name"), count(v, "rows"));
        }
    }
    if let Some(backfill) = job.get("backfill").filter(|b| int(b, "bytes_total").is_some_and(|t| t > 0)) {
        let records = count(backfill, "records_read");
        let _ = writeln!(out, "backfill: {} ({records} records)", backfill_line(backfill));
    }
    for e in job.get("errors").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(out, "error: {}", e.as_str().unwrap_or("?"));
    }
    out
}

/// One backfill (a source's `progress`, or a job's `backfill`) as
/// `[=====>     ]  42%  12.0 MiB of 28.6 MiB  4.00 MiB/s  4 seconds left` (`done` once read
/// to the end; `caught up` once queries see all of it).
fn backfill_line(p: &Value) -> String {
    use indicatif::{HumanBytes, HumanDuration};
    let int = |k: &str| p.get(k).and_then(Value::as_u64);
    let (read, total) = (int("bytes_read").unwrap_or(0), int("bytes_total").unwrap_or(0));
    let fraction = if total == 0 { 1.0 } else { (read as f64 / total as f64).min(1.0) };
    let filled = (fraction * BAR_WIDTH as f64).floor() as usize;
    let bar = match filled {
        BAR_WIDTH => "=".repeat(BAR_WIDTH),
        n => format!("{}>{}", "=".repeat(n), " ".repeat(BAR_WIDTH - n - 1)),
    };
    let mut line = format!("[{bar}] {:>3.0}%  {} of {}", fraction * 100.0, HumanBytes(read), HumanBytes(total));
    if let Some(rate) = int("rate_bytes_per_s") {
        line.push_str(&format!("  {}/s", HumanBytes(rate)));
    }
    let flag = |k: &str| p.get(k).and_then(Value::as_bool) == Some(true);
    match int("eta_ms") {
        _ if flag("caught_up") => line.push_str("  caught up"),
        _ if flag("done") => line.push_str("  done"),
        Some(0) => {}
        Some(ms) => line.push_str(&format!("  {} left", HumanDuration(std::time::Duration::from_millis(ms)))),
        None => {}
    }
    line
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::show_job;

    /// A file source a quarter read (1 MiB of 4 MiB at 1 MiB/s: 3 s left) and a push source:
    /// the bar is 7 of 30 characters full (30 × 0.25, rounded down), then the arrow.
    #[test]
    fn a_job_shows_its_backfill_as_a_bar() {
        let progress = json!({ "bytes_read": 1_048_576, "bytes_total": 4_194_304, "done": false, "caught_up": false,
                               "records_read": 9_000, "rate_bytes_per_s": 1_048_576, "eta_ms": 3_000 });
        let job = json!({
            "id": 3, "name": "files", "kind": "job", "state": "running", "errors": ["a: permission denied"],
            "source_stats": [
                { "name": "logs", "kind": "file", "records": 9_000, "decoded": 8_990, "errors": 10, "progress": progress },
                { "name": "in", "kind": "push", "records": 5, "decoded": 5, "errors": 0, "progress": null },
            ],
            "view_stats": [{ "name": "by_c", "rows": 12 }],
            "hydration": 0.25,
            "backfill": progress,
        });
        let bar =
            format!("[{}>{}]  25%  1.00 MiB of 4.00 MiB  1.00 MiB/s  3 seconds left", "=".repeat(7), " ".repeat(22));
        let want = format!(
            "job 3 `files` (job): running\n\
             source  kind       records     decoded    errors  backfill\n\
             logs    file          9000        8990        10  {bar}\n\
             in      push             5           5         0  \n\
             view        rows\n\
             by_c          12\n\
             backfill: {bar} (9000 records)\n\
             error: a: permission denied\n"
        );
        assert_eq!(show_job(&job), want);

        let done = json!({ "bytes_read": 10, "bytes_total": 10, "done": true, "caught_up": true, "eta_ms": 0 });
        let job = json!({ "id": 4, "kind": "job", "state": "running",
                          "source_stats": [{ "name": "f", "kind": "file", "records": 1, "decoded": 1, "errors": 0, "progress": done }] });
        let line = show_job(&job).lines().nth(2).expect("the source's line").to_owned();
        assert!(line.ends_with(&format!("[{}] 100%  10 B of 10 B  caught up", "=".repeat(30))), "{line}");
    }
}
