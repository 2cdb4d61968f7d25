//! The server's configuration: a TOML file, overridden by `AIMATRIX__…` environment
//! variables, overridden by command-line flags.
//!
//! ```toml
//! [http]
//! listen = "127.0.0.1:6876"    # address of the HTTP API (host:port; loopback only unless [[auth.users]] are configured)
//! max_body_bytes = 268435456   # the largest request body (a job, SQL, records to ingest)
//! allowed_hosts = []           # Host names answered besides localhost, 127.0.0.1, [::1], listen's
//! allowed_origins = []         # Origins (scheme://host[:port]) whose pages may call the API
//!
//! [pgwire]
//! listen = "127.0.0.1:6875"    # address of the PostgreSQL wire protocol (psql, drivers; loopback only unless [[auth.users]]); "" turns it off
//! max_sessions = 256           # connections open at once; one more: 53300 "sorry, too many clients already"
//!
//! [cluster]
//! workers = 1                  # worker threads per process
//! processes = 1                # processes in the timely cluster
//! process_index = 0            # this process (0 runs the controller and the HTTP API)
//! hosts = []                   # host:port of every process, in process order (processes > 1)
//! hosts_pattern = ""           # or host:port with {i} for the index: "aimatrix-{i}.aimatrix-peers:2101"
//! process_index_from_hostname = false  # process_index from the host name's last -N (StatefulSet pod aimatrix-2: 2)
//! listen = ""                  # address this process's cluster port binds ("": its own hosts entry), e.g. "0.0.0.0:2101"
//! batch_records = 50000        # records per epoch across the cluster
//! max_record_bytes = 67108864  # the largest record; a longer one is an ingest error
//! timestamp_interval_ms = 10   # 1–100: at most this long from a file source's read to its timestamp closing
//! introspection = true         # aimatrix_dataflows, _operators, _arrangements and the arrangement metrics
//!
//! [sql]
//! timeout_ms = 60000           # how long a query may take (it is cancelled then)
//! max_result_rows = 1000000    # rows of an answer
//! max_result_bytes = 134217728 # bytes of an answer (Arrow memory)
//! query_memory_bytes = 0       # memory one query may reserve (0: an eighth of physical memory)
//! memory_bytes = 0             # memory all queries may reserve together (0: a quarter)
//!
//! [subscribe]
//! max_queued_rows = 200000     # changes a subscriber may leave unread before it is closed (1013)
//! max_queued_bytes = 67108864  # and their bytes (as held in memory, estimated)
//! max_subscriptions = 1024     # client subscriptions open at once (HTTP and pgwire)
//!
//! [files]
//! roots = []                   # directories whose files jobs submitted over HTTP may read
//! sink_roots = []              # directories jobs' object-store sinks may write (file:///DIR)
//!
//! [[auth.users]]               # users; none (the default): no authentication, loopback only
//! name = "dashboards"
//! role = "reader"              # reader | writer | admin
//! password = "SCRAM-SHA-256$4096:…"   # pgwire password, hashed (`aimatrix auth password`)
//! tokens = ["9f86d081…"]       # HTTP bearer tokens, as SHA-256 in hex (`aimatrix auth token`)
//!
//! [tls]                        # both or neither; none (the default): plain HTTP and pgwire
//! cert = "/etc/aimatrix/server.crt"   # certificate chain, PEM (--tls-cert)
//! key = "/etc/aimatrix/server.key"    # its private key, PEM (--tls-key)
//!
//! [storage]
//! data_dir = ""                # where jobs, views and pushes are kept across restarts ("": nowhere)
//! url = ""                     # or in an object store: "s3://bucket/prefix" (AWS_* variables configure it)
//! compact_after_bytes = 268435456   # fold the log into a snapshot whenever it holds this much past the last one (0: never)
//! restart_rows_ahead = 10000   # rows per worker a restart sends ahead of what the dataflows have processed (0: no bound)
//! ```
//!
//! An environment variable names a key by its path, with `__` between the parts:
//! `AIMATRIX__HTTP__LISTEN=0.0.0.0:6876`, `AIMATRIX__CLUSTER__WORKERS=4`. Merged with
//! `figment` (defaults, then the file, then the environment, then flags).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `aimatrix serve` is configured by.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The HTTP API.
    pub http: HttpConfig,
    /// The PostgreSQL wire protocol.
    pub pgwire: PgWireConfig,
    /// The timely cluster.
    pub cluster: ClusterSection,
    /// SQL.
    pub sql: SqlConfig,
    /// Files that jobs submitted over HTTP may read.
    pub files: FilesConfig,
    /// Subscriptions.
    pub subscribe: SubscribeConfig,
    /// What is kept across restarts.
    pub storage: StorageConfig,
    /// Who may use the server ([`crate::auth`]).
    pub auth: crate::auth::AuthConfig,
    /// TLS for HTTP and pgwire ([`crate::tls`]).
    pub tls: crate::tls::TlsConfig,
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The data directory (`--data-dir`): the durable log of jobs, views and acknowledged
    /// pushes, replayed at start-up (see `amx_cluster::storage`). Only process 0 uses it.
    /// Default: none (nothing is kept across a restart).
    pub data_dir: Option<std::path::PathBuf>,
    /// The same log in an object store instead (`--data-url`): `s3://bucket/prefix`, with
    /// the S3 client configured by the `AWS_*` environment variables (`AWS_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`), or
    /// `file:///dir` (as `data_dir`). Default: none. At most one of `data_dir` and `url`.
    pub url: Option<String>,
    /// Compact the log into a snapshot whenever what follows the last snapshot (what a
    /// restart replays) holds this many bytes (default 256 MiB; 0: never), a data
    /// directory's log and an object-store log (`url`) alike. See
    /// `amx_cluster::storage::snapshot`.
    pub compact_after_bytes: u64,
    /// Rows (records of the log, rows of a snapshot) per worker that a restart sends ahead
    /// of what the dataflows have processed (default 10,000; 0: no bound, everything at once):
    /// what bounds the restart's memory. A snapshot of N rows is restored in N / (this ×
    /// workers) rounds of a few ms each (about 6 ms measured), so a small value is slow. See
    /// `amx_cluster::ClusterConfig::restart_rows_ahead`.
    pub restart_rows_ahead: u64,
}

/// The default [`StorageConfig::compact_after_bytes`]: 256 MiB.
pub const DEFAULT_COMPACT_AFTER_BYTES: u64 = 256 << 20;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: None,
            url: None,
            compact_after_bytes: DEFAULT_COMPACT_AFTER_BYTES,
            restart_rows_ahead: amx_cluster::DEFAULT_RESTART_ROWS_AHEAD as u64,
        }
    }
}

/// `[subscribe]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscribeConfig {
    /// Changes a subscriber may leave unread (queued on the server) before its WebSocket is
    /// closed with code 1013 (default 200,000 rows, about 50 MB); the snapshot is not counted.
    pub max_queued_rows: u64,
    /// Bytes of those changes (as the server holds them, estimated) a subscriber may leave
    /// unread before it is closed the same way (default 64 MiB).
    pub max_queued_bytes: u64,
    /// Subscriptions clients may have open at once, over HTTP and pgwire together (default
    /// 1,024, at least 1; sinks' are not counted): one more is refused (HTTP 503, pgwire
    /// `53000`).
    pub max_subscriptions: usize,
}

impl Default for SubscribeConfig {
    fn default() -> Self {
        SubscribeConfig {
            max_queued_rows: amx_cluster::controller::DEFAULT_MAX_QUEUED_ROWS,
            max_queued_bytes: amx_cluster::controller::DEFAULT_MAX_QUEUED_BYTES,
            max_subscriptions: crate::metrics::DEFAULT_MAX_SUBSCRIPTIONS,
        }
    }
}

/// `[files]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Directories whose files (at any depth) the file sources of jobs submitted to the server
    /// may read; each must exist, and is resolved (symbolic links included) at start-up.
    /// Default: none, so file sources are refused (403) and only push sources can be used.
    /// `aimatrix run` is not limited by it.
    pub roots: Vec<std::path::PathBuf>,
    /// Directories under which (at any depth) the object-store sinks of jobs submitted to the
    /// server may write local directories (`url = "file:///DIR"`); each must exist, and is
    /// resolved at start-up. A sink's directory is made when missing. Default: none, so such
    /// sinks are refused (403); sinks to `s3://` are not limited by it. Kept apart from
    /// `roots` so that reading a directory never grants writing it.
    pub sink_roots: Vec<std::path::PathBuf>,
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on, `host:port` (default `127.0.0.1:6876`: this machine only).
    pub listen: String,
    /// The largest request body accepted, in bytes (default 256 MiB); a larger one is
    /// answered 413.
    pub max_body_bytes: usize,
    /// `Host` names answered besides the listen address's host, `localhost`, `127.0.0.1` and
    /// `[::1]` (any port); a request to another is answered 403 (DNS rebinding). Default none.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose web pages may call the API besides the
    /// `http`/`https` origins of the allowed hosts; a request with another `Origin` is
    /// answered 403. Default none.
    pub allowed_origins: Vec<String>,
}

/// Checks that `listen` (the value of setting `key`) resolves to loopback addresses only.
fn check_loopback(key: &str, listen: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addresses: Vec<std::net::SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| format!("{key} = `{listen}` is not an address to listen on (host:port): {e}"))?
        .collect();
    if addresses.is_empty() || addresses.iter().any(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{key} = `{listen}` is not a loopback address: with no users configured ([[auth.users]]) nothing is \
             authenticated, so the server listens only on this machine (127.0.0.1, [::1] or localhost); configure \
             users (README \"Authentication\"), or reach it through an SSH tunnel"
        ));
    }
    Ok(())
}

/// `[pgwire]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgWireConfig {
    /// Address to listen on, `host:port` (default `127.0.0.1:6875`); empty: no pgwire.
    pub listen: String,
    /// Connections open at once (default 256, at least 1): one more is refused with `53300`
    /// `sorry, too many clients already`, as PostgreSQL refuses past `max_connections`.
    pub max_sessions: usize,
}

impl Default for PgWireConfig {
    fn default() -> Self {
        PgWireConfig { listen: crate::pgwire::DEFAULT_LISTEN.into(), max_sessions: crate::pgwire::DEFAULT_MAX_SESSIONS }
    }
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Worker threads per process (default 1).
    pub workers: usize,
    /// Processes in the cluster (default 1).
    pub processes: usize,
    /// This process's index in `0..processes` (default 0).
    pub process_index: usize,
    /// `host:port` of every process, in process order; needed when `processes > 1` (or
    /// `hosts_pattern`).
    pub hosts: Vec<String>,
    /// The processes' `host:port` as one pattern, `{i}` standing for the process index: when
    /// set, `hosts` is the pattern for `i` in `0..processes` (the pods of a StatefulSet behind
    /// a headless Service: `aimatrix-{i}.aimatrix-peers.NAMESPACE.svc.cluster.local:2101`).
    /// Default "": `hosts` as given.
    pub hosts_pattern: String,
    /// Takes `process_index` from this machine's host name, the number after its last `-`, as
    /// a StatefulSet names its pods (`aimatrix-2` is process 2). The name is the `HOSTNAME`
    /// variable when set (a container's is its pod's name), else the kernel's. Default false.
    pub process_index_from_hostname: bool,
    /// The address this process's cluster port binds to (as timely takes it: `host:port`, or
    /// several separated by spaces). Default "": its own entry of `hosts`. A pod binds
    /// `0.0.0.0:PORT`, so that it listens before its DNS name resolves.
    pub listen: String,
    /// Records per epoch across the cluster (default 50,000).
    pub batch_records: usize,
    /// Bytes of each file read per poll (default 1 MiB).
    pub poll_bytes: u64,
    /// The largest record in bytes (default 64 MiB).
    pub max_record_bytes: u64,
    /// At most how long, in ms (1 to 100; others are refused), what a file source read waits
    /// for the controller to close its timestamp (default 10; see
    /// [`amx_cluster::ClusterConfig::timestamp_interval`]).
    pub timestamp_interval_ms: u64,
    /// Each worker folds timely's and differential's logging streams into
    /// `aimatrix_dataflows`, `aimatrix_operators`, `aimatrix_operator_durations`,
    /// `aimatrix_arrangements` and the `aimatrix_arrangement_*` metrics (default true; false:
    /// those relations are empty).
    pub introspection: bool,
}

/// `[sql]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// How long a statement may take, in ms, waiting for a query slot and for the views it
    /// reads included; a query past it is cancelled and answered 503. Default 60,000.
    pub timeout_ms: u64,
    /// Rows an answer may have; a query past it fails (400). Default 1,000,000.
    pub max_result_rows: u64,
    /// Bytes (Arrow memory) an answer may have; a query past it fails (400). Default 128 MiB.
    pub max_result_bytes: u64,
    /// Bytes DataFusion's operators may reserve for one query (hash tables, sorts); a query
    /// past it fails (400). Default 0: an eighth of the machine's physical memory.
    pub query_memory_bytes: u64,
    /// Bytes all running queries may reserve together; a query that would pass it fails (400).
    /// Default 0: a quarter of the machine's physical memory.
    pub memory_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:6876".into(),
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        let worker = amx_cluster::worker::WorkerOptions::default();
        ClusterSection {
            workers: 1,
            processes: 1,
            process_index: 0,
            hosts: Vec::new(),
            hosts_pattern: String::new(),
            process_index_from_hostname: false,
            listen: String::new(),
            batch_records: worker.batch_records,
            poll_bytes: worker.poll_bytes,
            max_record_bytes: worker.max_record_bytes,
            timestamp_interval_ms: amx_cluster::controller::DEFAULT_TIMESTAMP_INTERVAL.as_millis() as u64,
            introspection: worker.introspection,
        }
    }
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            timeout_ms: 60_000,
            max_result_rows: 1_000_000,
            max_result_bytes: 128 << 20,
            query_memory_bytes: 0,
            memory_bytes: 0,
        }
    }
}

impl ClusterSection {
    /// Applies `hosts_pattern`, `process_index_from_hostname` (with the host name `hostname`
    /// gives) and `listen`: afterwards `hosts` lists every process's address (this process's
    /// own entry being what it binds to) and `process_index` is this process's.
    ///
    /// # Errors
    /// A pattern without `{i}` or beside a `hosts` list; a host name without a number after
    /// its last `-`, or none; an index not below `processes`.
    pub fn resolve(&mut self, hostname: impl FnOnce() -> Option<String>) -> Result<(), String> {
        if !self.hosts_pattern.is_empty() {
            if !self.hosts_pattern.contains("{i}") {
                return Err(format!(
                    "cluster.hosts_pattern = {:?} has no {{i}} where the process index goes",
                    self.hosts_pattern
                ));
            }
            if !self.hosts.is_empty() {
                return Err("cluster.hosts and cluster.hosts_pattern are both set: give one".into());
            }
            self.hosts = (0..self.processes).map(|i| self.hosts_pattern.replace("{i}", &i.to_string())).collect();
        }
        if self.process_index_from_hostname {
            let name = hostname().filter(|n| !n.trim().is_empty()).ok_or(
                "cluster.process_index_from_hostname: this machine has no host name (set HOSTNAME)".to_owned(),
            )?;
            let name = name.trim();
            self.process_index = name.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).ok_or_else(|| {
                format!(
                    "cluster.process_index_from_hostname: host name {name:?} does not end in -N (a StatefulSet's \
                         pods are NAME-0, NAME-1, …)"
                )
            })?;
        }
        if self.process_index >= self.processes {
            return Err(format!(
                "process index {} is not below cluster.processes = {}",
                self.process_index, self.processes
            ));
        }
        if !self.listen.trim().is_empty() {
            if self.processes > 1 && self.hosts.len() != self.processes {
                return Err(format!(
                    "cluster.listen needs the address of every process: {} hosts for {} processes",
                    self.hosts.len(),
                    self.processes
                ));
            }
            if let Some(own) = self.hosts.get_mut(self.process_index) {
                own.clone_from(&self.listen);
            }
        }
        Ok(())
    }
}

impl ServeConfig {
    /// Defaults, then `file` (if given), then the `AIMATRIX__` environment, then `flags`
    /// (a partial config: only the keys given on the command line).
    ///
    /// # Errors
    /// An unreadable or invalid file, an unknown key, or a value of the wrong type; the
    /// message names the key and where it came from.
    pub fn load(file: Option<&Path>, flags: serde_json::Value) -> Result<ServeConfig, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!("config file {} does not exist", file.display()))));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("AIMATRIX__").split("__")).merge(Serialized::defaults(flags));
        let mut config: ServeConfig = figment.extract().map_err(|e| Box::new(without_secrets(e)))?;
        // "" is unset, as the file's documentation says (not the working directory).
        config.storage.data_dir = config.storage.data_dir.filter(|d| !d.as_os_str().is_empty());
        config.storage.url = config.storage.url.filter(|u| !u.trim().is_empty());
        let interval = config.cluster.timestamp_interval_ms;
        if !(1..=100).contains(&interval) {
            return Err(Box::new(figment::Error::from(format!(
                "cluster.timestamp_interval_ms = {interval}: give 1 to 100 (ms; the controller closes a timestamp \
                 every 100 ms anyway)"
            ))));
        }
        Ok(config)
    }

    /// The request guard of `[http]` ([`crate::guard`]); with users configured, it answers
    /// any `Host`.
    pub fn guard(&self) -> crate::guard::Guard {
        let guard = crate::guard::Guard::new(
            listen_host(&self.http.listen),
            &self.http.allowed_hosts,
            &self.http.allowed_origins,
        );
        if self.auth.users.is_empty() { guard } else { guard.answering_any_host() }
    }

    /// Checks that `http.listen` and `pgwire.listen` are loopback addresses when no user is
    /// configured: a server without authentication must not be reachable from other
    /// machines. With `[[auth.users]]`, any address is taken.
    ///
    /// # Errors
    /// Without users: an address that does not resolve, or resolves to one that is not
    /// loopback (the message names the setting).
    pub fn check_listen(&self) -> Result<(), String> {
        if !self.auth.users.is_empty() {
            return Ok(());
        }
        check_loopback("http.listen", &self.http.listen)?;
        if !self.pgwire.listen.is_empty() {
            check_loopback("pgwire.listen", &self.pgwire.listen)?;
        }
        Ok(())
    }

    /// The cluster's configuration.
    pub fn cluster_config(&self) -> amx_cluster::ClusterConfig {
        amx_cluster::ClusterConfig {
            workers: self.cluster.workers,
            processes: self.cluster.processes,
            process_index: self.cluster.process_index,
            addresses: self.cluster.hosts.clone(),
            worker: amx_cluster::worker::WorkerOptions {
                poll_bytes: self.cluster.poll_bytes,
                max_record_bytes: self.cluster.max_record_bytes,
                batch_records: self.cluster.batch_records,
                introspection: self.cluster.introspection,
            },
            sql: self.sql_limits(),
            max_queued_rows: self.subscribe.max_queued_rows.max(1),
            max_queued_bytes: self.subscribe.max_queued_bytes.max(1),
            timestamp_interval: std::time::Duration::from_millis(self.cluster.timestamp_interval_ms.max(1)),
            restart_rows_ahead: match self.storage.restart_rows_ahead {
                0 => usize::MAX,
                rows => usize::try_from(rows).unwrap_or(usize::MAX),
            },
            ..Default::default()
        }
    }

    /// What one query may take, from `[sql]` (memory defaults sized to this machine).
    pub fn sql_limits(&self) -> amx_cluster::SqlLimits {
        let physical = amx_cluster::limits::physical_memory_bytes();
        let or = |bytes: u64, default: u64| if bytes == 0 { default } else { bytes };
        amx_cluster::SqlLimits {
            timeout: Some(std::time::Duration::from_millis(self.sql.timeout_ms)),
            max_result_rows: Some(self.sql.max_result_rows),
            max_result_bytes: Some(self.sql.max_result_bytes),
            query_memory_bytes: Some(or(self.sql.query_memory_bytes, physical / 8)),
            memory_bytes: Some(or(self.sql.memory_bytes, physical / 4)),
        }
    }
}

/// `error`, without the values of `[auth]` keys (a clear-text password or token written by
/// mistake), and without source lines that name a password or a token (a TOML syntax error
/// quotes its line): each such error says where and what was expected, not the value.
fn without_secrets(error: figment::Error) -> figment::Error {
    use figment::error::Kind;
    let secret_line = |line: &str| {
        let lower = line.to_ascii_lowercase();
        let quoted =
            line.trim_start().split_once('|').is_some_and(|(n, _)| n.trim().bytes().all(|b| b.is_ascii_digit()));
        quoted && (lower.contains("password") || lower.contains("token"))
    };
    let touches = error.clone().into_iter().any(|e| {
        e.path.first().is_some_and(|p| p == "auth") || matches!(&e.kind, Kind::Message(m) if m.lines().any(secret_line))
    });
    if !touches {
        return error;
    }
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            match &e.kind {
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected)
                    if e.path.first().is_some_and(|p| p == "auth") =>
                {
                    format!("{key}: not {expected} (the value is not shown: it may be a secret)")
                }
                Kind::Message(m) => m
                    .lines()
                    .map(|l| if secret_line(l) { "  | (a line naming a password or token: not shown)" } else { l })
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => e.to_string(),
            }
        })
        .collect();
    figment::Error::from(messages.join("; "))
}

/// The host part of a `host:port` listen address (`[::1]:6876` → `[::1]`).
fn listen_host(listen: &str) -> &str {
    match listen.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `""` for a storage key means unset (as the file's documentation says), not a log in
    /// the working directory.
    #[test]
    fn empty_storage_keys_are_unset() {
        let flags = serde_json::json!({ "storage": { "data_dir": "", "url": " " } });
        let config = ServeConfig::load(None, flags).expect("loads");
        assert_eq!((config.storage.data_dir, config.storage.url), (None, None));
        let flags = serde_json::json!({ "storage": { "data_dir": "/var/lib/aimatrix" } });
        let config = ServeConfig::load(None, flags).expect("loads");
        assert_eq!(config.storage.data_dir, Some(std::path::PathBuf::from("/var/lib/aimatrix")));
    }

    /// A StatefulSet's pod finds its index in its name and its peers in the pattern; its own
    /// entry is what it binds to.
    #[test]
    fn a_pod_derives_its_index_and_peers() {
        let section = |pattern: &str, from_hostname: bool, listen: &str| ClusterSection {
            processes: 3,
            hosts_pattern: pattern.into(),
            process_index_from_hostname: from_hostname,
            listen: listen.into(),
            ..Default::default()
        };
        let mut pod = section("aimatrix-{i}.aimatrix-peers.ns.svc.cluster.local:2101", true, "0.0.0.0:2101");
        pod.resolve(|| Some("aimatrix-2\n".into())).expect("resolves");
        assert_eq!(pod.process_index, 2);
        assert_eq!(
            pod.hosts,
            [
                "aimatrix-0.aimatrix-peers.ns.svc.cluster.local:2101",
                "aimatrix-1.aimatrix-peers.ns.svc.cluster.local:2101",
                "0.0.0.0:2101"
            ]
        );
        // A name with dashes of its own: the last part counts.
        let mut pod = section("h-{i}:1", true, "");
        pod.resolve(|| Some("my-ai-matrix-0".into())).expect("resolves");
        assert_eq!((pod.process_index, pod.hosts[0].as_str()), (0, "h-0:1"));
        for (mut bad, hostname, says) in [
            (section("aimatrix-{i}:2101", true, ""), Some("aimatrix-3"), "not below cluster.processes = 3"),
            (section("aimatrix-{i}:2101", true, ""), Some("aimatrix"), "does not end in -N"),
            (section("aimatrix-{i}:2101", true, ""), Some("aimatrix-x"), "does not end in -N"),
            (section("aimatrix-{i}:2101", true, ""), None, "no host name"),
            (section("aimatrix:2101", false, ""), None, "no {i}"),
            (ClusterSection { hosts: vec!["a:1".into()], ..section("a-{i}:1", false, "") }, None, "both set"),
            (section("", false, "0.0.0.0:1"), None, "0 hosts for 3 processes"),
        ] {
            let err = bad.resolve(|| hostname.map(String::from)).expect_err("refused");
            assert!(err.contains(says), "{err}");
        }
        // Without a pattern or a name, as given.
        let mut plain = ClusterSection { hosts: vec!["a:1".into(), "b:2".into()], processes: 2, ..Default::default() };
        plain.resolve(|| unreachable!("the host name is not read")).expect("resolves");
        assert_eq!((plain.process_index, plain.hosts.len()), (0, 2));
    }

    /// A mistake in `[auth]` is refused without the value: it may be a clear-text secret.
    #[test]
    fn auth_mistakes_do_not_echo_secrets() {
        let dir = tempfile::tempdir().expect("a directory");
        for (text, wants) in [
            ("tokens = \"amx_SECRET1\"", "auth.users.0.tokens: not a sequence"),
            ("password = 123456789", "auth.users.0.password: not a string"),
            ("password = \"amx_SECRET1", "TOML parse error at line 4"),
        ] {
            let file = dir.path().join("c.toml");
            std::fs::write(&file, format!("[[auth.users]]\nname = \"a\"\nrole = \"admin\"\n{text}\n"))
                .expect("written");
            let error = ServeConfig::load(Some(&file), serde_json::json!({})).expect_err("refused").to_string();
            assert!(error.contains(wants), "{error}");
            assert!(!error.contains("SECRET1") && !error.contains("123456789"), "{error}");
        }
    }

    /// `cluster.timestamp_interval_ms` is 1 to 100; others are refused, naming the key.
    #[test]
    fn restart_rows_ahead_zero_is_no_bound() {
        for (rows, cluster) in [(0_u64, usize::MAX), (1, 1), (25_000, 25_000)] {
            let flags = serde_json::json!({ "storage": { "restart_rows_ahead": rows } });
            let config = ServeConfig::load(None, flags).expect("loads");
            assert_eq!(config.cluster_config().restart_rows_ahead, cluster, "{rows}");
        }
        let config = ServeConfig::load(None, serde_json::json!({})).expect("loads");
        assert_eq!(config.cluster_config().restart_rows_ahead, amx_cluster::DEFAULT_RESTART_ROWS_AHEAD);
    }

    #[test]
    fn the_timestamp_interval_is_bounded() {
        for (ms, ok) in [(0_u64, false), (1, true), (100, true), (101, false), (u64::MAX, false)] {
            let flags = serde_json::json!({ "cluster": { "timestamp_interval_ms": ms } });
            match ServeConfig::load(None, flags) {
                Ok(_) => assert!(ok, "{ms} taken"),
                Err(e) => assert!(!ok && e.to_string().contains("cluster.timestamp_interval_ms"), "{ms}: {e}"),
            }
        }
    }
}
