//! Job files: named sources, SQL views and the SQL to answer, in TOML.
//!
//! ```toml
//! name = "wikipedia"
//!
//! [[sources]]
//! name = "wiki"                      # appears in ingest_errors.source
//! kind = "file"                      # file (the default) | push (fed by POST /v1/ingest) | kafka | object-store
//! format = "json"                    # openai-chat | temporal-history | json | otlp-json
//! path = "data/*.ndjson"             # file sources: a glob, relative to the job file's directory
//! follow = false                     # file sources: keep reading what is appended (tail -f)
//! [sources.options]                  # format options (see README.md)
//! relation = "knowledge_events"
//!
//! [[sources]]
//! name = "events"
//! kind = "kafka"                     # every partition of a topic (see amx_connectors::kafka)
//! format = "json"
//! [sources.kafka]
//! brokers = "127.0.0.1:9092"
//! topic = "agent-events"
//! start = "earliest"                 # earliest | latest | offset:N | timestamp:MS
//! [sources.options]
//! relation = "knowledge_events"
//!
//! [[queries]]
//! name = "collections"
//! sql = "SELECT * FROM collection_stats ORDER BY collection"
//! ```

use std::path::{Path, PathBuf};

use amx_connectors::FileAccess;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A parsed job file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Job name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Sources, read in this order.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Materialized views defined in SQL, `name = "SELECT …"`, maintained incrementally and
    /// queried like the built-in views; a view may read earlier views (file order).
    #[serde(default)]
    pub views: toml::Table,
    /// Queries answered at the end (or on every change with `--follow`).
    #[serde(default)]
    pub queries: Vec<QueryConfig>,
    /// On a server: where views' contents are kept outside (Kafka topics, in upsert form; see
    /// [`crate::sinks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<crate::sinks::SinkConfig>,
    /// On a server: keep what this job's sources ingest, so that cancelling it with
    /// `retract=true` (`DELETE /v1/jobs/{id}?retract=true`, `aimatrix job cancel --retract`)
    /// takes it back out of the shared agent state. Each worker then keeps its share of the
    /// job's decoded events (ingest errors included) until the job is cancelled: memory about
    /// the size of those events once more. Default false; `aimatrix run` ignores it.
    #[serde(default)]
    pub retractable: bool,
}

/// Where a source's records come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Files matching `path` (a glob), read to their end (and, following, as they grow).
    #[default]
    File,
    /// Records pushed to the server as JSON lines (`POST /v1/ingest/{job}/{source}`); only a
    /// running server (`aimatrix serve`) has push sources.
    Push,
    /// The messages of every partition of a Kafka topic (`[sources.kafka]`), one record per
    /// message value; only a running server (`aimatrix serve`) reads them. With a data
    /// directory, the records read are in the durable log with each partition's offset, and a
    /// restart resumes there: each message is applied once.
    Kafka,
    /// Every object under a prefix of an S3-compatible bucket (`[sources.object_store]`), then
    /// each new one, as JSON lines; only a running server reads them. With a data directory,
    /// each object is read once across restarts.
    ObjectStore,
}

/// One source: a glob of files, or a push endpoint, in one format.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name, unique within the job (and, on a server, among the running jobs' sources);
    /// used in `ingest_errors.source` and `aimatrix_source_stats.source`.
    pub name: String,
    /// Where records come from: `file` (the default) or `push`.
    #[serde(default)]
    pub kind: SourceKind,
    /// Format name: `openai-chat`, `temporal-history`, `github-actions`, `json` or `otlp-json`.
    pub format: String,
    /// File sources: a file path or glob; relative paths resolve against the job file's
    /// directory (on a server: against the server's working directory). Push sources have none.
    #[serde(default)]
    pub path: String,
    /// File sources: keep reading what is appended to the files, and files that come to
    /// match the glob, as `tail -f` does (a last line is read once its newline is there); the
    /// source never ends. `false` (the default): read the files to their end once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// Format options (each format documents its own).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: toml::Table,
    /// Kafka sources: the brokers, the topic and where to start (see
    /// [`amx_connectors::kafka::KafkaConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub kafka: Option<amx_connectors::kafka::KafkaConfig>,
    /// Object-store sources: the bucket and prefix, and which keys (see
    /// [`crate::sources::object::ObjectStoreConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub object_store: Option<crate::sources::object::ObjectStoreConfig>,
    /// The relation the source feeds, when it declares its own (`[sources.relation]`: name,
    /// typed columns, optional key; see [`amx_connectors::table`]) rather than feeding the
    /// canonical relations. Its records are then JSON (format `json`), each column read from
    /// the field of its name unless `[sources.options.mapping]` says otherwise. The relation
    /// belongs to the job: SQL reads it from the job's install until the job is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub relation: Option<amx_connectors::table::TableConfig>,
    /// Push sources of format `github-actions`: how deliveries to
    /// `POST /v1/webhooks/github/{job}/{source}` are verified (`[sources.webhook]`, see
    /// [`WebhookConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
}

/// `[sources.webhook]`: the secret a webhook's deliveries are signed with. GitHub signs each
/// delivery's body with HMAC-SHA256 under the webhook's secret and sends it as
/// `X-Hub-Signature-256: sha256=HEX` (GitHub's "Validating webhook deliveries"); a delivery
/// whose signature does not verify is refused. Give exactly one of the two.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The secret itself (shown as `<redacted>` wherever the job is listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The name of an environment variable of the server that holds the secret, read at each
    /// delivery (a delivery is refused with 503 while it is unset or empty), so the secret
    /// never sits in the job file or the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

impl WebhookConfig {
    /// The secret: [`WebhookConfig::secret`], or the value of [`WebhookConfig::secret_env`].
    ///
    /// # Errors
    /// The environment variable is unset, empty or not UTF-8 (the message names it).
    pub fn resolve(&self) -> Result<String, String> {
        match (&self.secret, &self.secret_env) {
            (Some(secret), _) => Ok(secret.clone()),
            (None, Some(name)) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(value),
                _ => Err(format!("the webhook secret's environment variable `{name}` is not set on the server")),
            },
            (None, None) => Err("[sources.webhook] gives no secret".into()),
        }
    }
}

/// One query.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Name shown above the answer.
    #[serde(default)]
    pub name: Option<String>,
    /// The SQL (DataFusion dialect).
    pub sql: String,
}

/// A loaded job: its config with paths resolved and every source's format options validated.
#[derive(Clone, Debug)]
pub struct Job {
    /// The config as written, with `path`s made absolute.
    pub config: JobConfig,
    /// Which files its file sources may read: [`FileAccess::Any`] as parsed; a server sets
    /// its `files.roots` before installing a job submitted over the network.
    pub access: FileAccess,
}

impl Job {
    /// Parses TOML text; relative source paths resolve against `base_dir`.
    ///
    /// Errors: TOML syntax or unknown keys (with line and column), duplicate source names, a
    /// file source without `path` or a push source with one, an unknown format or invalid
    /// format options (each message names the source).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Job> {
        let mut config: JobConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!(toml_error(text, &e)))?;
        let mut names = std::collections::HashSet::new();
        let mut tables = std::collections::HashSet::new();
        for source in &mut config.sources {
            if source.name.trim().is_empty() {
                bail!("a source needs a name (`name = \"…\"`)");
            }
            if !names.insert(source.name.clone()) {
                bail!("duplicate source name `{}`", source.name);
            }
            match source.kind {
                SourceKind::File if source.path.is_empty() => {
                    bail!("source `{}`: a file source needs a `path` (a file or a glob)", source.name)
                }
                SourceKind::File => {
                    let path = PathBuf::from(&source.path);
                    if path.is_relative() {
                        source.path = base_dir.join(path).to_string_lossy().into_owned();
                    }
                }
                SourceKind::Push if source.follow => {
                    bail!("source `{}`: `follow` is for file sources (a push source always takes records)", source.name)
                }
                SourceKind::Push if !source.path.is_empty() => {
                    bail!("source `{}`: a push source has no `path` (records arrive by POST /v1/ingest)", source.name)
                }
                SourceKind::Push => {}
                SourceKind::Kafka if source.follow || !source.path.is_empty() => {
                    bail!("source `{}`: a Kafka source has no `path` or `follow` (it reads its topic)", source.name)
                }
                SourceKind::Kafka
                    if source
                        .kafka
                        .as_ref()
                        .is_none_or(|k| k.brokers.trim().is_empty() || k.topic.trim().is_empty()) =>
                {
                    bail!(
                        "source `{}`: a Kafka source needs a `[sources.kafka]` table with `brokers` and `topic`",
                        source.name
                    )
                }
                SourceKind::Kafka => {}
                SourceKind::ObjectStore if source.follow || !source.path.is_empty() => bail!(
                    "source `{}`: an object-store source has no `path` or `follow` (it reads its prefix, and new \
                     objects as they appear)",
                    source.name
                ),
                SourceKind::ObjectStore => match &source.object_store {
                    None => bail!(
                        "source `{}`: an object-store source needs a `[sources.object_store]` table (url)",
                        source.name
                    ),
                    Some(config) => config.check().map_err(|e| anyhow::anyhow!("source `{}`: {e}", source.name))?,
                },
            }
            if source.kind != SourceKind::Kafka && source.kafka.is_some() {
                bail!("source `{}`: `[sources.kafka]` is for sources of kind = \"kafka\"", source.name);
            }
            if source.kind != SourceKind::ObjectStore && source.object_store.is_some() {
                bail!("source `{}`: `[sources.object_store]` is for sources of kind = \"object-store\"", source.name);
            }
            if let Some(webhook) = &source.webhook {
                if source.kind != SourceKind::Push || source.format != amx_connectors::github::FORMAT {
                    bail!(
                        "source `{}`: `[sources.webhook]` is for push sources of format \"{}\"",
                        source.name,
                        amx_connectors::github::FORMAT
                    );
                }
                let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
                if blank(&webhook.secret) == blank(&webhook.secret_env) {
                    bail!(
                        "source `{}`: `[sources.webhook]` needs exactly one of `secret` and `secret_env`, not empty",
                        source.name
                    );
                }
            }
            if let Some(table) = &source.relation {
                table.check().map_err(|e| anyhow::anyhow!("source `{}`: [sources.relation]: {e}", source.name))?;
                if !tables.insert(table.name.clone()) {
                    bail!(
                        "source `{}`: relation `{}` is declared by another source of the job",
                        source.name,
                        table.name
                    );
                }
                let parquet = source
                    .object_store
                    .as_ref()
                    .is_some_and(|o| o.file_format == crate::sources::object::FileFormat::Parquet);
                if table.columns.is_empty() && !parquet {
                    bail!(
                        "source `{}`: relation `{}` declares no columns (only an object-store source of Parquet \
                         objects takes its columns from its data)",
                        source.name,
                        table.name
                    );
                }
                if table.columns.is_empty() {
                    // Its columns, and so its decoder, come when a server installs it.
                    continue;
                }
            }
            let decoder = source.decoder().with_context(|| format!("source `{}`", source.name))?;
            if decoder.reads_metadata() && source.kind != SourceKind::Kafka {
                bail!(
                    "source `{}`: `{{ metadata = … }}` reads a Kafka message's metadata; this source is not kind = \
                     \"kafka\" (its records have none)",
                    source.name
                );
            }
        }
        let mut sink_names = std::collections::HashSet::new();
        for sink in &mut config.sinks {
            // Names as SQL resolves them (unquoted: lower case), as the views' own.
            sink.view = sink.view.to_ascii_lowercase();
            if sink.name.trim().is_empty() {
                bail!("a sink needs a name (`name = \"…\"`)");
            }
            if !sink_names.insert(sink.name.clone()) {
                bail!("duplicate sink name `{}`", sink.name);
            }
            sink.check().map_err(|e| anyhow::anyhow!(e))?;
        }
        for (name, sql) in &config.views {
            if !sql.is_str() {
                bail!("view `{name}` must be a SQL string (name = \"SELECT …\")");
            }
            if tables.contains(&name.to_ascii_lowercase()) {
                bail!("view `{name}` has the name of a relation a source of the job declares");
            }
        }
        Ok(Job { config, access: FileAccess::Any })
    }

    /// Reads and parses a job file.
    pub fn load(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // Relative source paths resolve against the job file's directory, and are then made
        // canonical as far as they exist, so that the job means the same wherever it is sent
        // (a server refuses a path with `..`).
        let absolute = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        let mut job = Job::parse(&text, base).with_context(|| format!("in {}", path.display()))?;
        for source in job.config.sources.iter_mut().filter(|s| s.kind == SourceKind::File) {
            source.path = canonical_prefix(Path::new(&source.path)).to_string_lossy().into_owned();
        }
        Ok(job)
    }
}

/// `path` (absolute) with its longest existing literal prefix — the components before the
/// first holding a glob character — made canonical (symbolic links and `..` resolved); the
/// rest as written. `path` itself when nothing of it resolves.
fn canonical_prefix(path: &Path) -> PathBuf {
    let components: Vec<_> = path.components().collect();
    let literal = components.iter().take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '['])).count();
    for end in (1..=literal).rev() {
        let prefix: PathBuf = components[..end].iter().collect();
        if let Ok(real) = std::fs::canonicalize(&prefix) {
            return components[end..].iter().fold(real, |p, c| p.join(c));
        }
    }
    path.to_owned()
}

impl SourceConfig {
    /// The format options as JSON (what `amx_connectors::decoder` takes).
    pub fn options_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.options).unwrap_or(serde_json::Value::Null)
    }

    /// The source's decoder: its format with its options, into the relation it declares if it
    /// declares one ([`amx_connectors::source_decoder`]).
    ///
    /// # Errors
    /// An unknown format, bad options, or a declared relation in another format than `json`.
    pub fn decoder(&self) -> Result<Box<dyn amx_connectors::Decoder>, amx_connectors::ConfigError> {
        amx_connectors::source_decoder(&self.format, &self.options_json(), self.relation.as_ref())
    }

    /// The Arrow schema of the relation the source declares, if it declares one.
    pub fn relation_schema(&self) -> Option<(String, amx_sql::arrow::datatypes::SchemaRef)> {
        use amx_sql::arrow::datatypes::{Field, Schema};
        let table = self.relation.as_ref()?;
        let fields: Vec<Field> =
            table.columns.iter().map(|c| Field::new(&c.name, amx_sql::arrow_type(c.ty), true)).collect();
        Some((table.name.clone(), std::sync::Arc::new(Schema::new(fields))))
    }
}

/// A job file's TOML error without the line it quotes: `invalid job file: line L, column C:
/// MESSAGE`. (toml's own text shows the line, which may hold a secret, such as a Kafka
/// password, in the answer to the client and in the logs.)
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid job file: line {line}, column {column}: {message}")
        }
        None => format!("invalid job file: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TOML mistake is reported by line and column, without quoting the line (a secret).
    #[test]
    fn toml_errors_do_not_quote_the_line() {
        let text = "name = \"k\"\n[[sources]]\nname = \"in\"\nkind = \"kafka\"\n[sources.kafka]\n\
                    properties = { \"sasl.password\" = \"hunter2\" x }\n";
        let err = format!("{:#}", Job::parse(text, Path::new("/")).expect_err("refused"));
        assert!(err.starts_with("invalid job file: line 6, column "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// `{ metadata = … }` is refused in a source that is not Kafka (its records have none),
    /// and taken in a Kafka one.
    #[test]
    fn metadata_mappings_are_for_kafka_sources() {
        let job = |kind: &str| {
            format!(
                r#"name = "m"
[[sources]]
name = "in"
kind = "{kind}"
format = "json"
[sources.kafka]
brokers = "127.0.0.1:9"
topic = "t"
[sources.options]
relation = "knowledge_events"
[sources.options.mapping]
collection = "/c"
document_id = {{ metadata = "/key" }}
op = {{ const = "upsert" }}
"#
            )
        };
        let push = job("push").replace("[sources.kafka]\nbrokers = \"127.0.0.1:9\"\ntopic = \"t\"\n", "");
        let error = Job::parse(&push, Path::new(".")).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(error.contains("source `in`: `{ metadata = … }` reads a Kafka message's metadata"), "{error}");
        assert!(Job::parse(&job("kafka"), Path::new(".")).is_ok());
    }

    #[test]
    fn webhook_secrets_are_for_github_push_sources_and_one_at_a_time() {
        let job = |kind: &str, format: &str, webhook: &str| {
            format!(
                "name = \"k\"\n[[sources]]\nname = \"gh\"\nkind = \"{kind}\"\nformat = \"{format}\"\npath = \"\"\n[sources.webhook]\n{webhook}\n"
            )
        };
        let error =
            |text: String| Job::parse(&text, Path::new(".")).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(Job::parse(&job("push", "github-actions", "secret = \"s\""), Path::new(".")).is_ok());
        assert!(Job::parse(&job("push", "github-actions", "secret_env = \"GH\""), Path::new(".")).is_ok());
        let one = "source `gh`: `[sources.webhook]` needs exactly one of `secret` and `secret_env`, not empty";
        assert_eq!(error(job("push", "github-actions", "secret = \"s\"\nsecret_env = \"GH\"")), one);
        assert_eq!(error(job("push", "github-actions", "secret = \" \"")), one);
        assert_eq!(error(job("push", "github-actions", "")), one);
        let misplaced = "source `gh`: `[sources.webhook]` is for push sources of format \"github-actions\"";
        assert_eq!(error(job("push", "json", "secret = \"s\"")), misplaced);
        assert!(error(job("push", "github-actions", "token = \"s\"")).contains("unknown field `token`"));
    }
}
