//! The Kafka source's reader: every partition of one topic, from the positions a restart
//! recorded or from a start position, as [`Record`]s at `kafka:TOPIC/PARTITION@OFFSET`.
//!
//! The reader assigns the partitions itself (no consumer-group rebalancing): the engine keeps
//! the positions — for each partition the offset of the next message to read — in its own
//! log, bound to the records read up to them (as Materialize's and Feldera's Kafka sources
//! do), so a restart resumes exactly where the durable records end. Partitions are found from
//! the topic's metadata at the start and again every [`DISCOVERY_INTERVAL`]; a partition added
//! later is read from its beginning (none of its messages can be older than the source).
//!
//! Built on librdkafka through `rdkafka` (its `BaseConsumer`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::record::{Record, record_within};

/// How often the reader looks for new partitions of its topic.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// How long a metadata or offset request may take before the reader tries again later.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A Kafka source's settings: the `[sources.kafka]` table of a job file.
///
/// ```toml
/// [sources.kafka]
/// brokers = "127.0.0.1:9092"        # bootstrap.servers
/// topic = "agent-events"
/// start = "earliest"                # earliest | latest | offset:N | timestamp:MS
/// [sources.kafka.properties]        # any other librdkafka consumer property
/// "security.protocol" = "SASL_SSL"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The brokers to bootstrap from (`host:port`, comma-separated): librdkafka's
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic; every partition of it is read.
    pub topic: String,
    /// Where a partition with no recorded position starts (see [`KafkaStart`]); default
    /// `earliest`.
    #[serde(default)]
    pub start: KafkaStart,
    /// Further librdkafka consumer properties (security, timeouts, …), passed as given, after
    /// the reader's own: `bootstrap.servers` (from `brokers`), `group.id`,
    /// `enable.auto.commit = false`, `enable.partition.eof = false` and
    /// `auto.offset.reset = earliest`; a property given here wins.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Where a partition starts when the engine has no position for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaStart {
    /// Its first message still held (`earliest`).
    #[default]
    Earliest,
    /// The messages produced after the source started (`latest`).
    Latest,
    /// The message at this offset, in every partition (`offset:N`); an offset past a
    /// partition's end starts at its end (the next message produced), one below its oldest
    /// message held at that one.
    Offset(i64),
    /// The first message whose timestamp is at or after this many ms since the Unix epoch, in
    /// every partition (`timestamp:MS`), as Kafka looks offsets up by time; partitions with
    /// none start at their end (and then read every message produced after, whatever its
    /// timestamp).
    Timestamp(i64),
}

impl std::str::FromStr for KafkaStart {
    type Err = String;

    fn from_str(s: &str) -> Result<KafkaStart, String> {
        let number = |n: &str, what: &str| {
            n.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("`{s}`: {what} must be a whole number from 0 to {}", i64::MAX))
        };
        match s.split_once(':') {
            None if s == "earliest" => Ok(KafkaStart::Earliest),
            None if s == "latest" => Ok(KafkaStart::Latest),
            Some(("offset", n)) => number(n, "the offset").map(KafkaStart::Offset),
            Some(("timestamp", n)) => number(n, "the timestamp (ms since the Unix epoch)").map(KafkaStart::Timestamp),
            _ => Err(format!("`{s}`: expected earliest, latest, offset:N or timestamp:MS")),
        }
    }
}

impl std::fmt::Display for KafkaStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaStart::Earliest => f.write_str("earliest"),
            KafkaStart::Latest => f.write_str("latest"),
            KafkaStart::Offset(n) => write!(f, "offset:{n}"),
            KafkaStart::Timestamp(ms) => write!(f, "timestamp:{ms}"),
        }
    }
}

impl Serialize for KafkaStart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KafkaStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KafkaStart, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// For each partition, the offset of the next message to read.
pub type KafkaPositions = BTreeMap<i32, i64>;

/// A message read: its partition and offset, and the record it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its value as a record at `kafka:TOPIC/PARTITION@OFFSET`: a value that is not UTF-8, is
    /// longer than the maximum record size, or is missing (a tombstone) is a record carrying
    /// that error.
    pub record: Record,
}

/// A message's metadata (see [`KafkaReader::with_metadata`]).
fn metadata(topic: &str, message: &rdkafka::message::BorrowedMessage<'_>) -> serde_json::Value {
    use rdkafka::message::Headers;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut headers = serde_json::Map::new();
    if let Some(list) = message.headers() {
        for header in list.iter() {
            headers.insert(header.key.to_owned(), header.value.map(text).into());
        }
    }
    serde_json::json!({
        "topic": topic,
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis(),
        "key": message.key().map(text),
        "headers": headers,
    })
}

/// Whether a librdkafka property holds a secret: its name has `password`, `secret`, `jaas`,
/// `token`, `key.pem` or `oauthbearer.config` in it (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, …). Such values are shown to nobody.
pub fn is_secret_property(name: &str) -> bool {
    const SECRET: [&str; 6] = ["password", "secret", "jaas", "token", "key.pem", "oauthbearer.config"];
    let name = name.to_ascii_lowercase();
    SECRET.iter().any(|s| name.contains(s))
}

/// `message` (a librdkafka error, which may quote a property's value) with the values of the
/// secret properties among `properties` replaced by `<redacted>`.
pub fn scrub_secrets(message: &str, properties: &BTreeMap<String, String>) -> String {
    let mut message = message.to_owned();
    for (name, value) in properties {
        if is_secret_property(name) && !value.is_empty() {
            message = message.replace(value.as_str(), "<redacted>");
        }
    }
    message
}

/// Why the reader could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// librdkafka refused the configuration (a bad property).
    #[error("Kafka consumer configuration: {0}")]
    Config(String),
}

/// Reads every partition of one topic (see the [module docs](self)).
pub struct KafkaReader {
    consumer: BaseConsumer,
    config: KafkaConfig,
    /// The next offset to read, per partition assigned (or to be assigned).
    positions: KafkaPositions,
    /// Partitions assigned to the consumer.
    assigned: std::collections::BTreeSet<i32>,
    /// When partitions were last looked for.
    discovered: Option<Instant>,
    /// The first partitions are assigned (later ones start at their beginning).
    started: bool,
    /// Partitions were assigned at resolved start offsets (see [`KafkaReader::take_assigned`]).
    announce: bool,
    max_record_bytes: u64,
    /// Attach each message's metadata to its record ([`KafkaReader::with_metadata`]).
    metadata: bool,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader").field("config", &self.config).field("positions", &self.positions).finish()
    }
}

impl KafkaReader {
    /// A reader of `config`'s topic that resumes each partition in `resume` at its offset;
    /// the others start at `config.start`. `group` is the `group.id` it advertises its
    /// progress to ([`KafkaReader::commit`]). Records longer than `max_record_bytes` are errors.
    ///
    /// Nothing is fetched yet: an unreachable broker or a missing topic shows at
    /// [`KafkaReader::poll`] (as a problem, retried).
    ///
    /// # Errors
    /// [`KafkaSourceError::Config`] when librdkafka refuses a property.
    pub fn new(
        config: &KafkaConfig,
        group: &str,
        resume: KafkaPositions,
        max_record_bytes: u64,
    ) -> Result<KafkaReader, KafkaSourceError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A position whose messages expired meanwhile (retention) goes on at the oldest one
            // held, not at the end.
            .set("auto.offset.reset", "earliest");
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        let consumer: BaseConsumer =
            client.create().map_err(|e| KafkaSourceError::Config(scrub_secrets(&e.to_string(), &config.properties)))?;
        Ok(KafkaReader {
            consumer,
            config: config.clone(),
            positions: resume,
            assigned: Default::default(),
            discovered: None,
            started: false,
            announce: false,
            max_record_bytes: max_record_bytes.max(1),
            metadata: false,
        })
    }

    /// The reader, attaching to each record ([`Record::metadata`]) its message's metadata
    /// when `metadata`: `{"topic": TEXT, "partition": INT, "offset": INT, "timestamp": INT
    /// (ms since the Unix epoch, the message's create or log-append time; null when the
    /// broker gives none), "key": TEXT (null without a key), "headers": {NAME: TEXT}}`. Keys
    /// and header values are read as UTF-8 (invalid bytes as U+FFFD); a header without a
    /// value is null, and of headers of the same name the last one is kept.
    #[must_use]
    pub fn with_metadata(mut self, metadata: bool) -> KafkaReader {
        self.metadata = metadata;
        self
    }

    /// For each partition read so far (or resumed), the offset of the next message.
    pub fn positions(&self) -> &KafkaPositions {
        &self.positions
    }

    /// Waits at most `wait` for a first message, then takes what else has already arrived
    /// (without waiting again), until `max_records` records or about `max_bytes` bytes, and
    /// appends them to `out` in the order they came (in offset order within a partition). So a
    /// lone message is handed over at once, and batches grow by themselves while the engine is
    /// busy with the last one (librdkafka fetches meanwhile).
    /// Returns a problem reading (an unreachable broker, a missing topic), at every poll while
    /// it lasts (the reader retries by itself); `None` when it reads.
    pub fn poll(
        &mut self,
        wait: Duration,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<KafkaRecord>,
    ) -> Option<String> {
        let deadline = Instant::now() + wait;
        if self.discovered.is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL) {
            self.discovered = Some(Instant::now());
            if let Err(problem) = self.discover() {
                return Some(problem);
            }
        }
        if self.assigned.is_empty() {
            std::thread::sleep(wait);
            return Some(format!("topic `{}` has no partitions (yet)", self.config.topic));
        }
        let mut bytes = 0;
        let mut problem = None;
        let already = out.len();
        while out.len() < max_records && bytes < max_bytes {
            let left =
                if out.len() > already { Duration::ZERO } else { deadline.saturating_duration_since(Instant::now()) };
            match self.consumer.poll(left) {
                None => break,
                Some(Err(e)) => {
                    problem = Some(e.to_string());
                    break;
                }
                Some(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    if self.positions.get(&partition).is_some_and(|next| offset < *next) {
                        // Before the position (a seek that landed early): read already.
                        continue;
                    }
                    let location = format!("kafka:{}/{partition}@{offset}", self.config.topic);
                    let mut record = match message.payload() {
                        Some(value) => record_within(location, value, self.max_record_bytes),
                        None => Record::new(location, String::new()).with_error(crate::record::TOMBSTONE),
                    };
                    if self.metadata {
                        record = record.with_metadata(metadata(&self.config.topic, &message));
                    }
                    bytes += record.text.len();
                    self.positions.insert(partition, offset + 1);
                    out.push(KafkaRecord { partition, offset, record });
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        problem
    }

    /// Assigns the topic's partitions not yet assigned, each at its position, or (the first
    /// time) at the start position, or (a partition added later) at its beginning. A start
    /// position is resolved to an offset first (`latest` to the partition's high watermark,
    /// `earliest` to its low one, a timestamp to the first offset at or after it) and becomes
    /// the partition's position, so that a restart before any message was read starts at the
    /// same offset (see [`KafkaReader::take_assigned`]).
    fn discover(&mut self) -> Result<(), String> {
        let topic = self.config.topic.clone();
        let metadata = self
            .consumer
            .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("metadata of topic `{topic}`: {e}"))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!("topic `{topic}` not found"));
        };
        if let Some(e) = found.error() {
            return Err(format!("topic `{topic}`: {}", rdkafka::error::RDKafkaErrorCode::from(e)));
        }
        let first = !self.started;
        let new: Vec<i32> = found.partitions().iter().map(|p| p.id()).filter(|p| !self.assigned.contains(p)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for &partition in &new {
            let offset = match self.positions.get(&partition) {
                Some(next) => *next,
                None => {
                    let start = if first { self.config.start } else { KafkaStart::Earliest };
                    let offset = self.resolve(partition, start)?;
                    self.positions.insert(partition, offset);
                    self.announce = true;
                    offset
                }
            };
            list.add_partition_offset(&topic, partition, Offset::Offset(offset)).map_err(|e| e.to_string())?;
        }
        self.consumer.incremental_assign(&list).map_err(|e| format!("assigning topic `{topic}`: {e}"))?;
        self.assigned.extend(new);
        self.started = true;
        Ok(())
    }

    /// The offset `start` means in `partition` now.
    fn resolve(&self, partition: i32, start: KafkaStart) -> Result<i64, String> {
        let topic = &self.config.topic;
        let watermarks = || {
            self.consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .map_err(|e| format!("offsets of `{topic}` partition {partition}: {e}"))
        };
        match start {
            KafkaStart::Earliest => Ok(watermarks()?.0),
            KafkaStart::Latest => Ok(watermarks()?.1),
            // Clamped to what the partition holds: below it, the oldest message held; past
            // it, the next message produced.
            KafkaStart::Offset(n) => {
                let (low, high) = watermarks()?;
                Ok(n.clamp(low, high))
            }
            KafkaStart::Timestamp(ms) => {
                let mut by_time = TopicPartitionList::new();
                by_time.add_partition_offset(topic, partition, Offset::Offset(ms)).map_err(|e| e.to_string())?;
                let offsets = self
                    .consumer
                    .offsets_for_times(by_time, REQUEST_TIMEOUT)
                    .map_err(|e| format!("offsets of `{topic}` partition {partition} at {start}: {e}"))?;
                match offsets.elements().first().map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => Ok(n),
                    // No message at or after the time: the partition's end.
                    _ => Ok(watermarks()?.1),
                }
            }
        }
    }

    /// Whether partitions were assigned at resolved start offsets since the last call: their
    /// positions should be made durable even before a message is read.
    pub fn take_assigned(&mut self) -> bool {
        std::mem::take(&mut self.announce)
    }

    /// Commits `offsets` (partition, the offset of the next message) to the reader's consumer
    /// group, asynchronously, for tools that watch a group's lag (`kafka-consumer-groups.sh
    /// --describe`, Burrow, Kafka UI). The engine never reads them back: its own log holds the
    /// positions, so a failed commit only delays what the group shows until the next.
    ///
    /// # Errors
    /// librdkafka's, when it cannot queue the commit.
    pub fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), String> {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            list.add_partition_offset(&self.config.topic, partition, Offset::Offset(offset))
                .map_err(|e| e.to_string())?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&list, rdkafka::consumer::CommitMode::Async).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_and_print_back() {
        for (text, start) in [
            ("earliest", KafkaStart::Earliest),
            ("latest", KafkaStart::Latest),
            ("offset:42", KafkaStart::Offset(42)),
            ("timestamp:1700000000000", KafkaStart::Timestamp(1_700_000_000_000)),
        ] {
            assert_eq!(text.parse::<KafkaStart>(), Ok(start));
            assert_eq!(start.to_string(), text);
        }
        for bad in ["", "first", "offset:", "offset:-1", "offset:x", "timestamp:1.5", "Earliest"] {
            let error = bad.parse::<KafkaStart>().expect_err(bad);
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn the_kafka_table_is_checked() {
        let config: KafkaConfig = toml::from_str("brokers = \"b:9092\"\ntopic = \"t\"\nstart = \"offset:7\"").unwrap();
        assert_eq!(config.start, KafkaStart::Offset(7));
        assert!(config.properties.is_empty());
        let unknown = toml::from_str::<KafkaConfig>("brokers = \"b\"\ntopic = \"t\"\ntopics = \"u\"").unwrap_err();
        assert!(unknown.to_string().contains("unknown field `topics`"), "{unknown}");
        let bad = toml::from_str::<KafkaConfig>("brokers = \"b\"\ntopic = \"t\"\nstart = \"beginning\"").unwrap_err();
        assert!(bad.to_string().contains("expected earliest, latest"), "{bad}");
    }
}
