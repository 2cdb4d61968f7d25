//! Kafka sinks: a view's contents kept in a Kafka topic, in upsert form.
//!
//! The sink's thread (see [`super`]) subscribes to the view. At the start, and again whenever
//! it subscribes anew, it reads the topic back to its end (the last value per key: what the
//! topic says the view is), compares it with the view's snapshot and writes only the keys
//! whose value differs; then it lets the read-back go, and at each timestamp the view
//! completes writes the keys that changed, each key's new row (and, for the Debezium envelope,
//! its old one) taken from the view's changes themselves. So, once started, a sink holds no
//! copy of the view or of the topic: only the changes of the timestamps not yet complete. A
//! message's key is the JSON object of the key columns (the sink's `key`), its value the JSON
//! object of the row, and a key that left the view gets a tombstone (a message without a
//! value), as Kafka's compacted topics and Materialize's and Feldera's upsert sinks do.
//!
//! Each write is one Kafka transaction. A restarted sink first initialises its transactions
//! (the same `transactional.id`), which fences the killed one's producer and aborts what it had
//! sent and not committed, then reads the topic back `read_committed`: so a restart with a data
//! directory — also after `kill -9` — neither loses nor repeats a change. (Without one the views
//! restart empty, and the sink deletes every key, as the view says.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amx_connectors::kafka::scrub_secrets;
use amx_dataflows::Diff;
use amx_dataflows::row::Row;
use amx_sql::arrow::datatypes::SchemaRef;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Envelope, KafkaSinkConfig, SinkConfig, Step, ViewFeed, rows_json};

/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a transaction's messages may take to be delivered and committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

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

/// A sink's producer, and what the topic held when it was read back.
pub(super) struct Sink {
    producer: BaseProducer<Deliveries>,
    consumer_config: ClientConfig,
    topic: String,
    /// The topic's contents as read back, until the view's snapshot is reconciled with them:
    /// the last row per key (the key's and the row's JSON texts; for the Debezium envelope,
    /// its last event's `after`). Empty after.
    read_back: HashMap<Vec<u8>, Vec<u8>>,
    envelope: Envelope,
}

/// One key's message(s): its row goes from `before` to `after` (JSON texts; `None`: the key is
/// not in the view).
struct KeyChange {
    key: Vec<u8>,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
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

    /// Sends `changes` in the open transaction and commits it.
    fn send_all(&self, changes: &[KeyChange]) -> Result<(), String> {
        for KeyChange { key, before, after } in changes {
            match self.envelope {
                Envelope::Upsert => self.send(key, after.as_deref())?,
                Envelope::Debezium => {
                    self.send(key, Some(&debezium_event(before.as_deref(), after.as_deref())))?;
                    if after.is_none() {
                        self.send(key, None)?;
                    }
                }
            }
        }
        // The deliveries are awaited here, a millisecond at a time: `commit_transaction` flushes
        // first, and rdkafka's flush (0.39) polls in steps of 100 ms that each last their
        // whole 100 ms, so every commit took 100 ms at least.
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(format!("writing to `{}`: messages undelivered after {COMMIT_TIMEOUT:?}", self.topic));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        self.producer
            .commit_transaction(deadline.saturating_duration_since(Instant::now()))
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
                    // Short polls: rdkafka's poll lasts its whole timeout, deliveries or not.
                    self.producer.poll(Duration::from_millis(5));
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
            read_back: HashMap::new(),
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
        self.read_back.clear();
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
                        Some(Some(row)) => self.read_back.insert(key.to_vec(), row),
                        Some(None) | None => self.read_back.remove(key),
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
        let key_schema = Arc::new(schema.project(&key_columns).map_err(|e| e.to_string())?);
        let mut reconciled = false;
        while !stop.load(Ordering::SeqCst) {
            match feed.next(runtime) {
                None => return Ok(()),
                Some(Step::Idle) => {}
                Some(Step::Snapshot { rows, .. }) => {
                    // The view's row per key (of two rows with one key, which breaks the sink's
                    // `key`, the greater).
                    let mut current: BTreeMap<Row, Row> = BTreeMap::new();
                    for (row, _) in rows {
                        let key = key_of(&row);
                        if current.get(&key).is_none_or(|held| row > *held) {
                            current.insert(key, row);
                        }
                    }
                    self.reconcile(&schema, &key_schema, current)?;
                    reconciled = true;
                }
                Some(Step::Complete { changes, .. }) => {
                    if !reconciled {
                        return Err(format!("view `{}` sent changes before its snapshot", config.view));
                    }
                    let by_key = key_changes(changes, key_of);
                    if !by_key.is_empty() {
                        self.apply(&schema, &key_schema, &by_key)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the topic hold the view's snapshot `current` (its row per key): writes each key
    /// whose value the read-back topic does not have, and a tombstone for each key the topic
    /// has that the view does not; then lets the read-back go.
    fn reconcile(
        &mut self,
        schema: &SchemaRef,
        key_schema: &SchemaRef,
        current: BTreeMap<Row, Row>,
    ) -> Result<(), String> {
        let keys: Vec<&Row> = current.keys().collect();
        let rows: Vec<&Row> = current.values().collect();
        let keys_json = rows_json(key_schema, &keys)?;
        let rows_json = rows_json(schema, &rows)?;
        drop(current);
        let mut changes = Vec::new();
        for (key, row) in keys_json.into_iter().zip(rows_json) {
            let (key, after) = (key.to_string().into_bytes(), row.to_string().into_bytes());
            let before = self.read_back.remove(&key);
            if before.as_ref() != Some(&after) {
                changes.push(KeyChange { key, before, after: Some(after) });
            }
        }
        // What is left of the read-back: keys the view does not have.
        let gone = std::mem::take(&mut self.read_back);
        changes.extend(gone.into_iter().map(|(key, before)| KeyChange { key, before: Some(before), after: None }));
        self.commit(changes)
    }

    /// Writes the keys that the completed timestamps changed: each key's row before and after
    /// them (`None`: not in the view).
    fn apply(
        &mut self,
        schema: &SchemaRef,
        key_schema: &SchemaRef,
        by_key: &BTreeMap<Row, (Option<Row>, Option<Row>)>,
    ) -> Result<(), String> {
        let keys: Vec<&Row> = by_key.keys().collect();
        let mut keys_json = rows_json(key_schema, &keys)?.into_iter();
        let afters: Vec<&Row> = by_key.values().filter_map(|(_, after)| after.as_ref()).collect();
        let mut afters_json = rows_json(schema, &afters)?.into_iter();
        // The upsert envelope writes no `before`.
        let befores: Vec<&Row> = match self.envelope {
            Envelope::Upsert => Vec::new(),
            Envelope::Debezium => by_key.values().filter_map(|(before, _)| before.as_ref()).collect(),
        };
        let mut befores_json = rows_json(schema, &befores)?.into_iter();
        let text = |value: serde_json::Value| value.to_string().into_bytes();
        let mut changes = Vec::with_capacity(by_key.len());
        for (before, after) in by_key.values() {
            let key = keys_json.next().map(text).unwrap_or_default();
            let after = after.as_ref().and_then(|_| afters_json.next()).map(text);
            let before = match self.envelope {
                Envelope::Upsert => None,
                Envelope::Debezium => before.as_ref().and_then(|_| befores_json.next()).map(text),
            };
            // Two rows with one JSON text (e.g. the same key and values in other types): no change.
            if after.is_some() && before == after {
                continue;
            }
            changes.push(KeyChange { key, before, after });
        }
        self.commit(changes)
    }

    /// Writes `changes` in one transaction: committed whole, or (failed, or the server killed)
    /// aborted.
    fn commit(&mut self, changes: Vec<KeyChange>) -> Result<(), String> {
        if changes.is_empty() {
            return Ok(());
        }
        self.producer.begin_transaction().map_err(|e| format!("writing to `{}`: {e}", self.topic))?;
        if let Err(e) = self.send_all(&changes) {
            let _ = self.producer.abort_transaction(REQUEST_TIMEOUT);
            return Err(e);
        }
        tracing::debug!(topic = %self.topic, keys = changes.len(), "sink wrote");
        Ok(())
    }
}

/// Each key's row before the completed timestamps of `changes` and after them (`None`: the key
/// is not in the view), from the rows' net changes over them: a row whose changes cancel out is
/// no change, and a key whose rows all cancel out is not in the answer. Of two rows on one
/// side of a key (a view that breaks the sink's `key`), the greater.
fn key_changes(
    changes: Vec<(Row, amx_dataflows::Time, Diff)>,
    key_of: impl Fn(&Row) -> Row,
) -> BTreeMap<Row, (Option<Row>, Option<Row>)> {
    let mut net: HashMap<Row, Diff> = HashMap::new();
    for (row, _, diff) in changes {
        *net.entry(row).or_insert(0) += diff;
    }
    let mut by_key: BTreeMap<Row, (Option<Row>, Option<Row>)> = BTreeMap::new();
    for (row, diff) in net.into_iter().filter(|(_, d)| *d != 0) {
        let (before, after) = by_key.entry(key_of(&row)).or_default();
        let side = if diff < 0 { before } else { after };
        if side.as_ref().is_none_or(|held| row > *held) {
            *side = Some(row);
        }
    }
    by_key
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

#[cfg(test)]
mod tests {
    use amx_dataflows::row::Datum;

    use super::*;

    fn row(key: &str, n: i64) -> Row {
        vec![Datum::Text(key.into()), Datum::Int(n)]
    }

    fn key(key: &str) -> Row {
        vec![Datum::Text(key.into())]
    }

    /// The changes of three timestamps, folded by hand: `a` goes 1 → 2 → 3 (before 1, after 3);
    /// `b` leaves; `c` enters; `d` goes 1 → 2 → 1 (no change); `e` enters and leaves again (no
    /// change); `f` leaves once — from the changes alone that is a key leaving, also where the
    /// view held the row twice (duplicate rows break the sink's key, as the README says).
    #[test]
    fn changes_fold_to_each_keys_row_before_and_after() {
        let changes = vec![
            (row("a", 1), 1, -1),
            (row("a", 2), 1, 1),
            (row("b", 1), 1, -1),
            (row("d", 1), 1, -1),
            (row("d", 2), 1, 1),
            (row("e", 1), 1, 1),
            (row("f", 1), 1, -1),
            (row("a", 2), 2, -1),
            (row("a", 3), 2, 1),
            (row("c", 1), 2, 1),
            (row("d", 2), 3, -1),
            (row("d", 1), 3, 1),
            (row("e", 1), 3, -1),
        ];
        let by_key = key_changes(changes, |r: &Row| r[..1].to_vec());
        let want: BTreeMap<Row, (Option<Row>, Option<Row>)> = [
            (key("a"), (Some(row("a", 1)), Some(row("a", 3)))),
            (key("b"), (Some(row("b", 1)), None)),
            (key("c"), (None, Some(row("c", 1)))),
            (key("f"), (Some(row("f", 1)), None)),
        ]
        .into_iter()
        .collect();
        assert_eq!(by_key, want);
    }

    /// Two rows entering under one key (a view that breaks the sink's key): the greater is the
    /// key's row, whatever the order they come in.
    #[test]
    fn of_two_rows_under_one_key_the_greater_is_kept() {
        for changes in [vec![(row("a", 1), 1, 1), (row("a", 2), 1, 1)], vec![(row("a", 2), 1, 1), (row("a", 1), 1, 1)]]
        {
            let by_key = key_changes(changes, |r: &Row| r[..1].to_vec());
            assert_eq!(by_key.get(&key("a")), Some(&(None, Some(row("a", 2)))));
        }
    }
}
