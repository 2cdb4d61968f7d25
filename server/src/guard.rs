//! What the server checks of every request before a handler sees it: the `Host` it was sent
//! to, the `Origin` of the page that sent it, and the content type of its body.
//!
//! A browser lets any web page send requests to `127.0.0.1`, so a server on loopback is
//! reachable from every page its user opens. Two attacks follow, and these checks close them:
//!
//! - **DNS rebinding**: a page from `attacker.example` makes its own name resolve to
//!   `127.0.0.1` and then reads the answers as same-origin. The browser still sends
//!   `Host: attacker.example`: only `Host` names in the allow-list are answered
//!   (`http.allowed_hosts`, plus the listen address, `localhost`, `127.0.0.1` and `[::1]`);
//!   any other gets 403. (Same defence as Jupyter's `allow_remote_access` and the Ethereum
//!   node's `--http.vhosts`.)
//! - **Cross-site requests**: a page may send a "simple" request (CORS, WHATWG Fetch §3.2.3:
//!   method GET/HEAD/POST with a `Content-Type` of `text/plain`,
//!   `application/x-www-form-urlencoded` or `multipart/form-data`, or none) without asking
//!   first, and a WebSocket with no CORS at all. Browsers always send `Origin` with these, so a
//!   request whose `Origin` is not allowed is refused (403), on every route: allowed are the
//!   `http`/`https` origins of the allowed hosts (any port) and `http.allowed_origins`
//!   (exact `scheme://host[:port]`). Bodies must have their documented content types (none of
//!   them CORS-safelisted), else 415: jobs `application/toml`, SQL `application/json` or
//!   `application/sql`, ingested records `application/x-ndjson`, `application/jsonl` or
//!   `application/json`.
//!
//! Clients that are not browsers (curl, the CLI, drivers) send no `Origin` and the documented
//! content types, and are not affected.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// The `Host` names and `Origin`s the server answers.
#[derive(Clone, Debug)]
pub struct Guard {
    /// Host names (lower case, IPv6 in brackets, no port).
    hosts: Vec<String>,
    /// Extra origins, exactly (`scheme://host[:port]`, lower case).
    origins: Vec<String>,
    /// Answer every `Host` ([`Guard::answering_any_host`]).
    any_host: bool,
}

impl Guard {
    /// Answers `Host` names `listen_host` (the host part of the listen address), `localhost`,
    /// `127.0.0.1`, `[::1]` and `extra_hosts`; `Origin`s of those hosts and `extra_origins`.
    pub fn new(listen_host: &str, extra_hosts: &[String], extra_origins: &[String]) -> Guard {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].iter().map(|h| h.to_string()).collect();
        for host in std::iter::once(listen_host).chain(extra_hosts.iter().map(String::as_str)) {
            let host = normalize_host(host);
            if !host.is_empty() && !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        let origins = extra_origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        Guard { hosts, origins, any_host: false }
    }

    /// Answers every `Host` name: for a server that authenticates its requests, where DNS
    /// rebinding gains a page nothing (a browser sends no bearer token on its own), and which
    /// clients reach by names the server cannot know (a Kubernetes Service, a load balancer).
    /// `Origin`s are still checked.
    pub fn answering_any_host(mut self) -> Guard {
        self.any_host = true;
        self
    }

    /// Whether a `Host` header value (`name[:port]`) names an allowed host.
    pub fn host_allowed(&self, value: &str) -> bool {
        self.any_host || self.hosts.contains(&normalize_host(strip_port(value)))
    }

    /// Whether an `Origin` header value is allowed (`null` never is).
    pub fn origin_allowed(&self, value: &str) -> bool {
        let origin = value.trim().to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        (scheme == "http" || scheme == "https")
            && !rest.contains('/')
            && self.hosts.contains(&normalize_host(strip_port(rest)))
    }
}

/// `[::1]:6876` → `[::1]`, `localhost:6876` → `localhost`, `::1` → `::1` (a bare IPv6 address).
fn strip_port(value: &str) -> &str {
    let value = value.trim();
    if let Some(end) = value.find(']') {
        return &value[..=end];
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
}

/// Lower case, a trailing dot dropped, a bare IPv6 address put in brackets; an unspecified
/// address (`0.0.0.0`, `[::]`) names no host.
fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    if host == "0.0.0.0" || host == "[::]" { String::new() } else { host }
}

/// The content types a route's body may have (`None`: any, the route takes no body).
fn body_types(method: &Method, path: &str) -> Option<&'static [&'static str]> {
    if *method != Method::POST {
        return None;
    }
    if path == "/v1/jobs" {
        Some(&["application/toml"])
    } else if path == "/v1/sql" {
        Some(&["application/json", "application/sql"])
    } else if path.starts_with("/v1/ingest/") {
        Some(&["application/x-ndjson", "application/jsonl", "application/json"])
    } else {
        None
    }
}

/// The media type of a `Content-Type` value, without parameters, lower case.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// The middleware: refuses a foreign `Host` or `Origin` (403) and a body of the wrong content
/// type (415), each with a JSON error naming the setting or the types expected.
pub async fn check(State(guard): State<std::sync::Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    // Every Host header, and the authority of an absolute-form URI (HTTP/1.1 requires Host;
    // browsers always send one): each must be allowed.
    let mut hosts = headers
        .get_all(header::HOST)
        .iter()
        .map(|h| h.to_str().unwrap_or("\u{0}").to_owned())
        .chain(request.uri().authority().map(|a| a.to_string()));
    if let Some(host) = hosts.find(|h| !guard.host_allowed(h)) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host `{}` is not one this server answers to (a guard against DNS rebinding); allowed: {}; add a name \
                 to http.allowed_hosts to allow it",
                host.chars().take(200).collect::<String>(),
                guard.hosts.join(", ")
            ),
        )
        .into_response();
    }
    for origin in headers.get_all(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("\u{0}");
        if !guard.origin_allowed(text) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from the web page at Origin `{}` are refused (a guard against cross-site requests); \
                     add it to http.allowed_origins to allow it",
                    text.chars().take(200).collect::<String>()
                ),
            )
            .into_response();
        }
    }
    if let Some(types) = body_types(request.method(), request.uri().path()) {
        let given = media_type(headers);
        if !given.as_deref().is_some_and(|t| types.contains(&t)) {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} takes a body of Content-Type {}, not {}",
                    request.uri().path(),
                    types.join(" or "),
                    given.map_or_else(|| "none".to_owned(), |t| format!("`{t}`")),
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        let guard = Guard::new("127.0.0.1", &["aimatrix.internal".into()], &["https://console.example".into()]);
        for ok in ["127.0.0.1:6876", "localhost", "LOCALHOST:1", "[::1]:6876", "aimatrix.internal:80", "localhost."] {
            assert!(guard.host_allowed(ok), "{ok}");
        }
        for refused in ["attacker.example:6876", "127.0.0.1.attacker.example", "0.0.0.0:6876", "", "localhost.evil"] {
            assert!(!guard.host_allowed(refused), "{refused}");
        }
        for ok in ["http://127.0.0.1:6876", "https://localhost", "http://[::1]:9", "https://console.example"] {
            assert!(guard.origin_allowed(ok), "{ok}");
        }
        for refused in ["null", "http://attacker.example", "file://", "ftp://localhost", "https://console.example:8443"]
        {
            assert!(!guard.origin_allowed(refused), "{refused}");
        }
        // A server listening on every address still answers only the names it is given.
        let any = Guard::new("0.0.0.0", &[], &[]);
        assert!(!any.host_allowed("0.0.0.0:6876") && any.host_allowed("127.0.0.1:6876"));
        assert!(Guard::new("::1", &[], &[]).host_allowed("[::1]:1"));
    }
}
