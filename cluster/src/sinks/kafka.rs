//! Kafka sinks: a view's contents kept in a Kafka topic, in upsert form.
//!
//! The sink's thread (see [`super`]) subscribes to the view and keeps, per key (the sink's
//! `key` columns), the view's row. At the start, and again whenever it subscribes anew, it
//! reads the topic back to its end (the last value per key: what the topic says the view is)
//! and writes only the keys whose value differs; then, at each timestamp the view completes,
//! the keys that changed. A message's key is the JSON object of the key columns, its value the
//! JSON object of the row, and a key that left the view gets a tombstone (a message without a
//! value), as Kafka's compacted topics and Materialize's and Feldera's upsert sinks do.
//!
//! Each write is one Kafka transaction. A restarted sink first initialises its transactions
//! (the same `transactional.id`), which fences the killed one's producer and aborts what it had
//! sent and not committed, then reads the topic back `read_committed`: so a restart with a data
//! directory — also after `kill -9` — neither loses nor repeats a change. (Without one the views
//! restart empty, and the sink deletes every key, as the view says.)

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amx_connectors::kafka::scrub_secrets;
use amx_dataflows::row::Row;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Envelope, KafkaSinkConfig, SinkConfig, Step, ViewFeed, rows_json};

/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The sink producer's context: remembers the first message the broker did not take.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
        }
    }
}

/// A sink's producer and what it knows the topic holds.
pub(super) struct Sink {
    producer: BaseProducer<Deliveries>,
    consumer_config: ClientConfig,
    topic: String,
    /// The topic's contents as read back and written since: the last row per key (its JSON
    /// text; for the Debezium envelope, its last event's `after`).
    written: HashMap<Vec<u8>, Vec<u8>>,
    envelope: Envelope,
}

impl Sink {
    /// The row a message's value says its key has (`None`: none), by the sink's envelope.
    fn row_of(&self, value: &[u8], at: &str) -> Result<Option<Vec<u8>>, String> {
        match self.envelope {
            Envelope::Upsert => Ok(Some(value.to_vec())),
            Envelope::Debezium => {
                let event: serde_json::Value =
                    serde_json::from_slice(value).map_err(|e| format!("{at} is not a Debezium event: {e}"))?;
                match event.get("after") {
                    Some(serde_json::Value::Null) => Ok(None),
                    Some(after) => Ok(Some(after.to_string().into_bytes())),
                    None => Err(format!("{at} is a Debezium event without `after`")),
                }
            }
        }
    }

    /// Sends `wanted` (keys and their rows, `None`: gone) in the open transaction and commits it.
    fn send_all(&self, wanted: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), String> {
        for (key, value) in wanted {
            match self.envelope {
                Envelope::Upsert => self.send(key, value.as_deref())?,
                Envelope::Debezium => {
                    let before = self.written.get(key).map(Vec::as_slice);
                    self.send(key, Some(&debezium_event(before, value.as_deref())))?;
                    if value.is_none() {
                        self.send(key, None)?;
                    }
                }
            }
        }
        self.producer
            .commit_transaction(Duration::from_secs(60))
            .map_err(|e| format!("writing to `{}`: {e}", self.topic))?;
        // A message the broker refused: what the topic holds is not known any more; the caller
        // reads it back and writes again.
        if let Some(e) = self.producer.context().failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(format!("writing to `{}`: {e}", self.topic));
        }
        Ok(())
    }

    /// Queues one message (`None`: a tombstone), waiting while the producer's queue is full.
    fn send(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(format!("writing to `{}`: {e}", self.topic)),
            }
        }
    }

    /// Connects, and reads the topic back.
    pub(super) fn open(
        job: crate::protocol::JobId,
        config: &SinkConfig,
        kafka: &KafkaSinkConfig,
    ) -> Result<Sink, String> {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &kafka.brokers);
        for (key, value) in &kafka.properties {
            client.set(key, value);
        }
        let mut consumer_config = client.clone();
        consumer_config
            .set("group.id", format!("aimatrix-sink-{}", config.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        // Transactional: a restarted sink's `init_transactions` (same id) fences the one before
        // it and aborts what that one had sent and not committed, so the read-back that follows
        // (read_committed) sees exactly the committed writes.
        let mut producer_config = client.clone();
        if !kafka.properties.contains_key("transactional.id") {
            producer_config.set("transactional.id", format!("aimatrix-sink-{job}-{}", config.name));
        }
        let producer: BaseProducer<Deliveries> = producer_config
            .set("enable.idempotence", "true")
            .create_with_context(Deliveries::default())
            .map_err(|e| format!("producer: {}", scrub_secrets(&e.to_string(), &kafka.properties)))?;
        producer
            .init_transactions(REQUEST_TIMEOUT * 3)
            .map_err(|e| format!("producer: {}", scrub_secrets(&e.to_string(), &kafka.properties)))?;
        let mut sink = Sink {
            producer,
            consumer_config,
            topic: kafka.topic.clone(),
            written: HashMap::new(),
            envelope: kafka.envelope,
        };
        sink.read_back()?;
        Ok(sink)
    }

    /// Reads the topic from its beginning to its current end: the last value per key.
    fn read_back(&mut self) -> Result<(), String> {
        let topic = &self.topic;
        let consumer: BaseConsumer = self.consumer_config.create().map_err(|e| format!("consumer: {e}"))?;
        let metadata =
            consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(|e| format!("topic `{topic}`: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(format!("topic `{topic}` not found (create it first)"));
        }
        let mut list = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for &p in &partitions {
            let (low, high) =
                consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT).map_err(|e| format!("topic `{topic}`: {e}"))?;
            if high > low {
                ends.insert(p, high);
                list.add_partition_offset(topic, p, Offset::Offset(low)).map_err(|e| e.to_string())?;
            }
        }
        self.written.clear();
        if ends.is_empty() {
            return Ok(());
        }
        consumer.assign(&list).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(format!("reading topic `{topic}` back took more than 300 s"));
            }
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.map_err(|e| format!("reading topic `{topic}` back: {e}"))?;
                if let Some(key) = message.key() {
                    let at = format!("kafka:{topic}/{}@{}", message.partition(), message.offset());
                    match message.payload().map(|value| self.row_of(value, &at)).transpose()? {
                        Some(Some(row)) => self.written.insert(key.to_vec(), row),
                        Some(None) | None => self.written.remove(key),
                    };
                }
            }
            // A partition is read once the position reaches its end: the last offsets may be
            // transaction markers (the sink writes in transactions), which are not delivered.
            let positions = consumer.position().map_err(|e| format!("reading topic `{topic}` back: {e}"))?;
            for element in positions.elements() {
                if let Offset::Offset(at) = element.offset()
                    && ends.get(&element.partition()).is_some_and(|end| at >= *end)
                {
                    ends.remove(&element.partition());
                }
            }
        }
        Ok(())
    }

    /// Keeps the topic equal to the view that `feed` reads until the subscription ends (`Ok`)
    /// or writing fails.
    pub(super) fn follow(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        mut feed: ViewFeed,
        config: &SinkConfig,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let schema = feed.schema();
        let key_columns: Vec<usize> = if config.key.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            let mut columns = Vec::new();
            for name in &config.key {
                columns
                    .push(schema.index_of(name).map_err(|_| format!("view `{}` has no column `{name}`", config.view))?);
            }
            columns
        };
        let key_of = |row: &Row| -> Row { key_columns.iter().map(|&c| row[c].clone()).collect() };
        // The view's rows by key.
        let mut current: HashMap<Row, Row> = HashMap::new();
        let mut reconciled = false;
        while !stop.load(Ordering::SeqCst) {
            match feed.next(runtime) {
                None => return Ok(()),
                Some(Step::Idle) => {}
                Some(Step::Snapshot { rows, .. }) => {
                    current.extend(rows.into_iter().map(|(row, _)| (key_of(&row), row)));
                    // The first write: every key whose value the topic does not have, and a
                    // tombstone for every key it has that the view does not.
                    let keys: BTreeSet<Row> = current.keys().cloned().collect();
                    self.write(&schema, &key_columns, &current, &keys, true)?;
                    reconciled = true;
                }
                Some(Step::Complete { changes, .. }) => {
                    // Retractions first, then insertions.
                    let mut dirty: BTreeSet<Row> = BTreeSet::new();
                    for (row, _, _) in changes.iter().filter(|(_, _, d)| *d < 0) {
                        let key = key_of(row);
                        if current.get(&key) == Some(row) {
                            current.remove(&key);
                        }
                        dirty.insert(key);
                    }
                    for (row, _, _) in changes.into_iter().filter(|(_, _, d)| *d > 0) {
                        let key = key_of(&row);
                        current.insert(key.clone(), row);
                        dirty.insert(key);
                    }
                    if reconciled && !dirty.is_empty() {
                        self.write(&schema, &key_columns, &current, &dirty, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the topic's value of each key in `keys` the view's (its row's JSON, or a
    /// tombstone), writing only those that differ. With `whole` (`keys` are every key of the
    /// view), the keys the topic holds that the view does not have get tombstones too.
    fn write(
        &mut self,
        schema: &amx_sql::arrow::datatypes::SchemaRef,
        key_columns: &[usize],
        current: &HashMap<Row, Row>,
        keys: &BTreeSet<Row>,
        whole: bool,
    ) -> Result<(), String> {
        let key_schema = Arc::new(schema.project(key_columns).map_err(|e| e.to_string())?);
        let key_refs: Vec<&Row> = keys.iter().collect();
        let key_json = rows_json(&key_schema, &key_refs)?;
        let present: Vec<&Row> = keys.iter().filter_map(|k| current.get(k)).collect();
        let mut values = rows_json(schema, &present)?.into_iter();
        let mut wanted: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (key, key_value) in keys.iter().zip(key_json) {
            let value = current.get(key).and_then(|_| values.next()).map(|v| v.to_string().into_bytes());
            wanted.push((key_value.to_string().into_bytes(), value));
        }
        if whole {
            // Keys in the topic that the view does not have: deleted.
            let have: std::collections::HashSet<&Vec<u8>> = wanted.iter().map(|(k, _)| k).collect();
            let gone: Vec<Vec<u8>> = self.written.keys().filter(|k| !have.contains(k)).cloned().collect();
            wanted.extend(gone.into_iter().map(|k| (k, None)));
        }
        wanted.retain(|(key, value)| {
            self.written.get(key) != value.as_ref() && (value.is_some() || self.written.contains_key(key))
        });
        let sent = wanted.len();
        if sent > 0 {
            // One transaction: committed whole, or (failed, or the server killed) aborted.
            self.producer.begin_transaction().map_err(|e| format!("writing to `{}`: {e}", self.topic))?;
            if let Err(e) = self.send_all(&wanted) {
                let _ = self.producer.abort_transaction(REQUEST_TIMEOUT);
                return Err(e);
            }
            for (key, value) in wanted {
                match value {
                    Some(v) => self.written.insert(key, v),
                    None => self.written.remove(&key),
                };
            }
            tracing::debug!(topic = %self.topic, messages = sent, "sink wrote");
        }
        Ok(())
    }
}

/// Debezium's change event of a key whose row goes from `before` to `after` (JSON texts;
/// `None`: the key is not in the view).
fn debezium_event(before: Option<&[u8]>, after: Option<&[u8]>) -> Vec<u8> {
    let op = match (before, after) {
        (None, _) => "c",
        (Some(_), Some(_)) => "u",
        (Some(_), None) => "d",
    };
    let mut event = Vec::with_capacity(40 + before.map_or(4, <[u8]>::len) + after.map_or(4, <[u8]>::len));
    event.extend_from_slice(b"{\"before\":");
    event.extend_from_slice(before.unwrap_or(b"null"));
    event.extend_from_slice(b",\"after\":");
    event.extend_from_slice(after.unwrap_or(b"null"));
    event.extend_from_slice(format!(",\"op\":\"{op}\"}}").as_bytes());
    event
}
