//! Format `debezium`: Debezium change events (a database's row changes, as Debezium's
//! connectors write them to Kafka) applied to one relation.
//!
//! A record is one change event's value in Debezium's JSON envelope (Debezium reference,
//! "Data change events": PostgreSQL, MySQL and the other connectors share it):
//! `{"before": {…}, "after": {…}, "source": {"ts_ms", "lsn", "db", "table", …}, "op": "c",
//! "ts_ms": …}`, bare or inside the JSON converter's schema wrapper `{"schema": {…},
//! "payload": {…}}` (`value.converter.schemas.enable = true`). The options are the `json`
//! format's ([`crate::json`]: `relation`, `mapping`, `time_unit`), or a declared relation
//! (`[sources.relation]`); the mapping's pointers read the row image, and
//! `{ metadata = "/debezium/…" }` reads the envelope: `/debezium/op`, `/debezium/ts_ms`,
//! `/debezium/source/ts_ms`, `/debezium/source/lsn`, `/debezium/source/table`, … (a Kafka
//! message's own metadata stays where the `json` format has it: `/topic`, `/offset`, …).
//!
//! What each `op` does (Materialize's `ENVELOPE DEBEZIUM` reads them the same way):
//! - `c` (insert), `r` (a snapshot read) and `u` (update): the `after` image is upserted — a row
//!   of a relation declared with a key replaces that key's row; a `knowledge_events` row is an
//!   `upsert` (its `op` column, when the mapping leaves it out); a relation without a key gets
//!   the row appended.
//! - `d` (delete): the `before` image's key is deleted (a keyed relation; `knowledge_events`:
//!   the row with `op = delete`). A delete into a relation without a key, or into `spans`,
//!   `evaluations` or `workflow_events`, is an ingest error: nothing says which row it takes
//!   back.
//! - The tombstone Debezium writes after a delete (a Kafka message with no value, for log
//!   compaction), bare or as a `null` payload, carries nothing the delete did not: it is
//!   skipped.
//! - `t` (truncate), `m` (a logical decoding message) and any other `op`, an event without
//!   one, and a `c`/`r`/`u` without `after` or `d` without `before` (a table with
//!   `REPLICA IDENTITY NOTHING`) are ingest errors at the record's location, as is whatever
//!   the image does not map (the `json` format's errors).
//!
//! An update that changes a row's key comes from Debezium as a delete of the old key and a
//! create of the new one (its default), so each is applied as above; a `u` whose `before`
//! image maps to another key (a connector set to send it so) also deletes that key.
//!
//! `knowledge_events` orders a document's events by `event_time`: where the mapping gives none
//! (a delete's `before` image holds only the key, as a PostgreSQL table with the default
//! `REPLICA IDENTITY` sends it), the row's `event_time` is the envelope's `source.ts_ms` (when
//! the database made the change), else its `ts_ms` (when the connector read it), in ms.

use amx_dataflows::event::{Event, KnowledgeOp};
use serde_json::{Map, Value};

use crate::json::{JsonDecoder, Relation};
use crate::table::TableConfig;
use crate::time::{TimeUnit, from_int, in_range};
use crate::{ConfigError, Decoder, Record, error, parse_record, short};

/// The format's name.
pub const FORMAT: &str = "debezium";

/// What a delete (`op` `d`) does to the rows decoded from its `before` image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deletes {
    /// `knowledge_events`: the row with `op = delete`.
    Knowledge,
    /// A declared relation with a key: the key is deleted.
    Key,
    /// Nothing can be taken back: the delete is an error naming the relation.
    Refused,
}

/// The `debezium` decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct Debezium {
    inner: JsonDecoder,
    relation: String,
    deletes: Deletes,
    /// Whether the mapping reads the envelope (`{ metadata = "/debezium/…" }`): only then is it
    /// copied into each record's metadata.
    reads_envelope: bool,
}

impl Debezium {
    /// Builds the decoder into a canonical relation from the `json` format's options; for
    /// `knowledge_events` an unmapped `op` is `upsert` (and `delete` for a delete event).
    ///
    /// # Errors
    /// As [`JsonDecoder::new`].
    pub fn new(options: &Value) -> Result<Debezium, ConfigError> {
        let relation = options.get("relation").and_then(Value::as_str).and_then(Relation::parse);
        let mut options = options.clone();
        if relation == Some(Relation::KnowledgeEvents)
            && let Some(object) = options.as_object_mut()
        {
            let mapping = object.entry("mapping").or_insert_with(|| Value::Object(Map::new()));
            if let Some(mapping) = mapping.as_object_mut() {
                mapping.entry("op").or_insert_with(|| serde_json::json!({ "const": "upsert" }));
            }
        }
        let inner = JsonDecoder::new_for(FORMAT, &options)?;
        let relation = inner.relation().map_or_else(String::new, |r| r.name().to_owned());
        let deletes =
            if inner.relation() == Some(Relation::KnowledgeEvents) { Deletes::Knowledge } else { Deletes::Refused };
        Ok(Debezium::with(inner, relation, deletes))
    }

    /// Builds the decoder into the relation `table` a source declared (see
    /// [`JsonDecoder::for_table`]).
    ///
    /// # Errors
    /// As [`JsonDecoder::for_table`].
    pub fn for_table(options: &Value, table: &TableConfig) -> Result<Debezium, ConfigError> {
        let inner = JsonDecoder::for_table_in(FORMAT, options, table)?;
        let deletes = if table.key.is_empty() { Deletes::Refused } else { Deletes::Key };
        Ok(Debezium::with(inner, table.name.clone(), deletes))
    }

    fn with(inner: JsonDecoder, relation: String, deletes: Deletes) -> Debezium {
        let reads_envelope = inner.metadata_pointers().any(crate::json::is_envelope);
        Debezium { inner, relation, deletes, reads_envelope }
    }

    /// The `op` of a change event's payload and the image it applies, or why it cannot be
    /// applied. `Ok(None)`: a tombstone, skipped.
    fn change(payload: &Value) -> Result<Option<(&str, &Value)>, String> {
        if payload.is_null() {
            return Ok(None);
        }
        if !payload.is_object() {
            return Err(format!("not a Debezium change event: {}", short(payload)));
        }
        let op = match payload.get("op") {
            Some(Value::String(op)) => op.as_str(),
            None | Some(Value::Null) => {
                return Err("not a Debezium change event: no `op` (c, r, u or d)".into());
            }
            Some(other) => return Err(format!("`op` is not a string: {}", short(other))),
        };
        let image = match op {
            "c" | "r" | "u" => "after",
            "d" => "before",
            "t" => {
                return Err("a truncate event (op t) is not applied: delete the rows with events of their own".into());
            }
            other => return Err(format!("unknown op {} (expected c, r, u or d)", short(&Value::String(other.into())))),
        };
        match payload.get(image) {
            Some(row @ Value::Object(_)) => Ok(Some((op, row))),
            None | Some(Value::Null) => Err(format!(
                "op {op} without {} image{}",
                if op == "d" { "a `before`" } else { "an `after`" },
                if op == "d" { " (a table with REPLICA IDENTITY NOTHING sends none)" } else { "" }
            )),
            Some(other) => Err(format!("`{image}` is not an object: {}", short(other))),
        }
    }
}

/// What a row replaces: a declared relation's key, or a document's `(collection, id)`.
fn identity(event: &Event) -> Option<Vec<amx_dataflows::row::Datum>> {
    use amx_dataflows::row::Datum;
    match event {
        Event::Table(t) => Some(t.key.clone()),
        Event::Knowledge(k) => Some(vec![Datum::Text(k.collection.clone()), Datum::Text(k.document_id.clone())]),
        _ => None,
    }
}

impl Debezium {
    /// The delete of what `event` (decoded from an update's `before` image) names, when the
    /// relation can delete; errors and other rows give nothing (the `before` image of an
    /// update is often partial).
    fn delete_of(&self, event: Event) -> Option<Event> {
        match (event, self.deletes) {
            (Event::Knowledge(mut k), Deletes::Knowledge) => {
                k.op = KnowledgeOp::Delete;
                Some(Event::Knowledge(k))
            }
            (Event::Table(mut t), Deletes::Key) => {
                t.row = None;
                Some(Event::Table(t))
            }
            _ => None,
        }
    }
}

impl Decoder for Debezium {
    fn reads_metadata(&self) -> bool {
        self.inner.reads_metadata()
    }

    fn decode(&self, source: &str, record: &Record, out: &mut Vec<Event>) {
        if record.is_tombstone() {
            return;
        }
        let Some(value) = parse_record(source, record, out) else {
            return;
        };
        // The JSON converter's schema wrapper, when it is on (`{"schema", "payload"}`; also a
        // `payload` alone, as some pipelines strip the schema).
        let payload = match &value {
            Value::Object(m) if m.contains_key("payload") && !m.contains_key("op") => &m["payload"],
            other => other,
        };
        let (op, image) = match Debezium::change(payload) {
            Ok(Some(change)) => change,
            Ok(None) => return,
            Err(reason) => {
                out.push(error(source, &record.location, reason, &record.text));
                return;
            }
        };
        // The envelope (all but the images) under `/debezium` of the metadata, beside what
        // the source itself attached, when the mapping reads it.
        let with_envelope;
        let metadata = if self.reads_envelope {
            let envelope: Map<String, Value> = payload
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "before" && *k != "after")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut metadata = match record.metadata.as_deref() {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            metadata.insert("debezium".into(), Value::Object(envelope));
            with_envelope = Value::Object(metadata);
            Some(&with_envelope)
        } else {
            record.metadata.as_deref()
        };
        // When the change happened, for rows whose mapping gives no time.
        let changed_at = [payload.pointer("/source/ts_ms"), payload.get("ts_ms")]
            .into_iter()
            .flatten()
            .find_map(|v| from_int(v.as_i64()?, TimeUnit::Millis).filter(|t| in_range(*t)));
        // An update from another key deletes that key (only a relation that deletes can tell).
        let mut moved = Vec::new();
        if op == "u"
            && self.deletes != Deletes::Refused
            && let Some(before @ Value::Object(_)) = payload.get("before")
        {
            let mut old = Vec::new();
            self.inner.decode_parsed(source, record, before, metadata, &mut old);
            moved.extend(old.into_iter().filter_map(|e| self.delete_of(e)));
        }
        let start = out.len();
        self.inner.decode_parsed(source, record, image, metadata, out);
        if !moved.is_empty() {
            // Not the key the update writes (then the key did not change).
            let written: Vec<_> = out[start..].iter().filter_map(identity).collect();
            moved.retain(|e| identity(e).is_none_or(|k| !written.contains(&k)));
            out.splice(start..start, moved);
        }
        for event in &mut out[start..] {
            if let Event::Knowledge(k) = event
                && k.event_time.is_none()
            {
                k.event_time = changed_at;
            }
        }
        if op != "d" {
            return;
        }
        for event in &mut out[start..] {
            match (event, self.deletes) {
                (Event::Knowledge(k), Deletes::Knowledge) => k.op = KnowledgeOp::Delete,
                (Event::Table(t), Deletes::Key) => t.row = None,
                (Event::Error(_), _) => {}
                (event, _) => {
                    let reason = format!(
                        "a delete (op d) takes a row back by its key, and `{}` has none (declare the relation with \
                         `key = [...]`)",
                        self.relation
                    );
                    *event = error(source, &record.location, reason, &record.text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amx_dataflows::event::{KnowledgeEvent, TableRow};
    use amx_dataflows::row::Datum;
    use serde_json::json;

    /// The `customers` table of Debezium's PostgreSQL connector documentation, as a declared
    /// relation keyed by `id`.
    fn customers() -> TableConfig {
        serde_json::from_value(json!({
            "name": "customers", "key": ["id"],
            "columns": [{"name": "id", "type": "bigint"}, {"name": "first_name", "type": "text"},
                        {"name": "last_name", "type": "text"}, {"name": "email", "type": "text"},
                        {"name": "changed_at", "type": "timestamp"}]
        }))
        .expect("a table")
    }

    fn decode(d: &Debezium, text: &str) -> Vec<Event> {
        let record = Record { location: "cdc.jsonl:1".into(), text: text.into(), error: None, metadata: None };
        let mut out = Vec::new();
        d.decode("cdc", &record, &mut out);
        out
    }

    /// The documented event shapes (Debezium's "PostgreSQL connector", "create", "update" and
    /// "delete" events of `customers`), bare and in the schema wrapper.
    fn event(op: &str, before: Value, after: Value) -> Value {
        json!({"before": before, "after": after, "op": op, "ts_ms": 1_559_033_904_863_i64,
               "source": {"version": "2.1.2.Final", "connector": "postgresql", "name": "PostgreSQL_server",
                          "ts_ms": 1_559_033_904_000_i64, "snapshot": "false", "db": "postgres",
                          "schema": "public", "table": "customers", "txId": 556, "lsn": 24_023_128}})
    }

    fn row(id: i64, first: &str) -> Value {
        json!({"id": id, "first_name": first, "last_name": "Walker", "email": "annek@noanswer.org"})
    }

    #[test]
    fn creates_updates_and_deletes_apply_to_a_keyed_relation() {
        let options = json!({"mapping": {"changed_at": {"metadata": "/debezium/source/ts_ms", "unit": "ms"}}});
        let d = Debezium::for_table(&options, &customers()).expect("options");
        // 1559033904000 ms = 2019-05-28T08:58:24Z.
        let changed = Datum::Timestamp(1_559_033_904_000_000);
        let upsert = |id: i64, first: &str| {
            Event::Table(TableRow {
                relation: "customers".into(),
                position: 0,
                key: vec![Datum::Int(id)],
                row: Some(vec![
                    Datum::Int(id),
                    Datum::Text(first.into()),
                    Datum::Text("Walker".into()),
                    Datum::Text("annek@noanswer.org".into()),
                    changed.clone(),
                ]),
            })
        };
        let created = event("c", Value::Null, row(1, "Anne"));
        assert_eq!(decode(&d, &created.to_string()), vec![upsert(1, "Anne")]);
        let wrapped = json!({"schema": {"type": "struct", "name": "PostgreSQL_server.inventory.customers.Envelope"},
                             "payload": event("u", row(1, "Anne"), row(1, "Anne Marie"))});
        assert_eq!(decode(&d, &wrapped.to_string()), vec![upsert(1, "Anne Marie")]);
        assert_eq!(decode(&d, &event("r", Value::Null, row(2, "Bo")).to_string()), vec![upsert(2, "Bo")]);
        // A `payload` without its schema.
        let bare = json!({"payload": event("c", Value::Null, row(4, "Di"))});
        assert_eq!(decode(&d, &bare.to_string()), vec![upsert(4, "Di")]);
        // An update that moves row 2 to key 3: key 2 is deleted, then 3 written.
        let moved = event("u", row(2, "Bo"), row(3, "Bo"));
        let delete = |id: i64| {
            Event::Table(TableRow { relation: "customers".into(), position: 0, key: vec![Datum::Int(id)], row: None })
        };
        assert_eq!(decode(&d, &moved.to_string()), vec![delete(2), upsert(3, "Bo")]);
        // REPLICA IDENTITY DEFAULT: a delete's `before` holds the key alone.
        let deleted = event("d", json!({"id": 1, "first_name": null, "last_name": null, "email": null}), Value::Null);
        assert_eq!(
            decode(&d, &deleted.to_string()),
            vec![Event::Table(TableRow {
                relation: "customers".into(),
                position: 0,
                key: vec![Datum::Int(1)],
                row: None
            })]
        );
        // The tombstones after a delete: skipped.
        assert_eq!(decode(&d, "null"), vec![]);
        assert_eq!(decode(&d, r#"{"schema": null, "payload": null}"#), vec![]);
        let tombstone = Record {
            location: "cdc:0:7".into(),
            text: String::new(),
            error: Some(crate::record::TOMBSTONE.into()),
            metadata: None,
        };
        let mut out = Vec::new();
        d.decode("cdc", &tombstone, &mut out);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn knowledge_events_upsert_and_delete_documents() {
        let options = json!({"relation": "knowledge_events", "mapping": {
            "collection": {"metadata": "/debezium/source/table"}, "document_id": "/id", "size_bytes": "/size",
            "event_time": {"metadata": "/debezium/ts_ms"}}});
        let d = Debezium::new(&options).expect("options");
        let doc = |op: KnowledgeOp, size: Option<i64>| {
            Event::Knowledge(KnowledgeEvent {
                collection: "customers".into(),
                document_id: "7".into(),
                op,
                version: None,
                size_bytes: size,
                event_time: Some(1_559_033_904_863_000),
                actor: None,
                is_bot: None,
                source_offset: None,
            })
        };
        let created = event("c", Value::Null, json!({"id": 7, "size": 120}));
        assert_eq!(decode(&d, &created.to_string()), vec![doc(KnowledgeOp::Upsert, Some(120))]);
        let deleted = event("d", json!({"id": 7, "size": 120}), Value::Null);
        assert_eq!(decode(&d, &deleted.to_string()), vec![doc(KnowledgeOp::Delete, Some(120))]);

        // Times from the image, else from the envelope: `source.ts_ms`, then `ts_ms`.
        let options = json!({"relation": "knowledge_events", "mapping": {
            "collection": {"const": "docs"}, "document_id": "/id", "event_time": "/at"}});
        let d = Debezium::new(&options).expect("options");
        let times = |text: String| -> Vec<(KnowledgeOp, Option<i64>)> {
            decode(&d, &text)
                .into_iter()
                .map(|e| match e {
                    Event::Knowledge(k) => (k.op, k.event_time),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let created = event("c", Value::Null, json!({"id": 7, "at": 1_700_000_000_000_i64}));
        assert_eq!(times(created.to_string()), vec![(KnowledgeOp::Upsert, Some(1_700_000_000_000_000))]);
        // A key-only `before` (REPLICA IDENTITY DEFAULT): the database's time of the delete.
        let deleted = event("d", json!({"id": 7}), Value::Null);
        assert_eq!(times(deleted.to_string()), vec![(KnowledgeOp::Delete, Some(1_559_033_904_000_000))]);
        let mut no_source = event("d", json!({"id": 7}), Value::Null);
        no_source.as_object_mut().expect("an object").remove("source");
        assert_eq!(times(no_source.to_string()), vec![(KnowledgeOp::Delete, Some(1_559_033_904_863_000))]);
        // An update of the same document: one upsert; of another id: the old one is deleted.
        let same = event("u", json!({"id": 7, "at": 1}), json!({"id": 7, "at": 2}));
        assert_eq!(times(same.to_string()), vec![(KnowledgeOp::Upsert, Some(2_000))]);
        let moved = event("u", json!({"id": 7, "at": 1}), json!({"id": 8, "at": 2}));
        assert_eq!(
            times(moved.to_string()),
            vec![(KnowledgeOp::Delete, Some(1_000)), (KnowledgeOp::Upsert, Some(2_000))]
        );
    }

    fn errors(out: &[Event]) -> Vec<String> {
        out.iter()
            .map(|e| match e {
                Event::Error(e) => format!("{}: {}", e.location, e.error),
                other => panic!("not an error: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn events_that_cannot_be_applied_are_errors() {
        let d = Debezium::for_table(&json!({}), &customers()).expect("options");
        let at = |s: &str| format!("cdc.jsonl:1: {s}");
        assert_eq!(
            errors(&decode(&d, &event("t", Value::Null, Value::Null).to_string())),
            vec![at("a truncate event (op t) is not applied: delete the rows with events of their own")]
        );
        assert_eq!(
            errors(&decode(&d, &event("x", Value::Null, row(1, "A")).to_string())),
            vec![at(r#"unknown op "x" (expected c, r, u or d)"#)]
        );
        assert_eq!(
            errors(&decode(&d, &event("d", Value::Null, Value::Null).to_string())),
            vec![at("op d without a `before` image (a table with REPLICA IDENTITY NOTHING sends none)")]
        );
        assert_eq!(
            errors(&decode(&d, &event("u", row(1, "A"), Value::Null).to_string())),
            vec![at("op u without an `after` image")]
        );
        assert_eq!(
            errors(&decode(&d, &event("c", Value::Null, json!([1])).to_string())),
            vec![at("`after` is not an object: [1]")]
        );
        assert_eq!(
            errors(&decode(&d, r#"{"id": 1, "first_name": "A"}"#)),
            vec![at("not a Debezium change event: no `op` (c, r, u or d)")]
        );
        // A key that is NULL in the image: the `json` format's error.
        let out = decode(&d, &event("c", Value::Null, json!({"first_name": "A"})).to_string());
        assert_eq!(out.len(), 1);
        assert!(errors(&out)[0].contains("id"), "{out:?}");

        // A delete into a relation without a key, or into a canonical relation without deletes.
        let mut unkeyed = customers();
        unkeyed.key.clear();
        let d = Debezium::for_table(&json!({}), &unkeyed).expect("options");
        let deleted = event("d", row(1, "A"), Value::Null).to_string();
        let refused = "a delete (op d) takes a row back by its key, and `customers` has none (declare the relation \
                       with `key = [...]`)";
        assert_eq!(errors(&decode(&d, &deleted)), vec![at(refused)]);
        let d = Debezium::new(
            &json!({"relation": "workflow_events", "mapping": {"run_id": "/id", "state": {"const": "COMPLETED"}}}),
        )
        .expect("options");
        assert_eq!(errors(&decode(&d, &deleted)), vec![at(&refused.replace("customers", "workflow_events"))]);
    }

    #[test]
    fn the_envelope_is_this_formats_metadata_and_option_errors_name_it() {
        let mapping = json!({"relation": "knowledge_events", "mapping": {
            "collection": {"metadata": "/debezium/source/table"}, "document_id": "/id"}});
        assert!(Debezium::new(&mapping).is_ok());
        // The `json` format has no envelope to read.
        let error = JsonDecoder::new(&mapping).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.starts_with("mapping of column `collection`: `metadata = \"/debezium/source/table\"`"),
            "{error}"
        );
        let error = Debezium::new(&json!({"relation": "knowledge_events", "envelope": "x"}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("unknown option `envelope` for format `debezium`"), "{error}");
    }
}
