//! Relations that a source declares (`[sources.relation]` in a job file): a name, typed
//! columns and an optional key, as Materialize's `CREATE TABLE` / `CREATE SOURCE … (columns)`
//! and RisingWave's sources declare theirs.
//!
//! ```toml
//! [[sources]]
//! name = "orders-in"
//! kind = "kafka"
//! format = "json"                       # a declared relation is read from JSON records
//! [sources.relation]
//! name = "orders"                       # the relation SQL reads
//! key = ["order_id"]                    # optional: upserts by key (see below)
//! columns = [
//!   { name = "order_id", type = "text" },
//!   { name = "amount", type = "double" },
//!   { name = "placed_at", type = "timestamp" },
//! ]
//! [sources.options.mapping]             # optional: where a column is read from
//! order_id = { metadata = "/key" }      # (default: the record's field of the column's name)
//! ```
//!
//! Types (as SQL writes them; any case): `text` (also `varchar`, `string`), `bigint` (also
//! `int`, `integer`), `double` (also `float`, `real`), `boolean` (also `bool`), `timestamp`
//! (also `timestamptz`; UTC, microseconds). Every column is nullable, except key columns: a
//! record whose key column is NULL is an ingest error.
//!
//! Without a key, every record appends a row. With a key, the relation holds one row per key:
//! a record *upserts* (replaces the key's row), and a Kafka tombstone (a message with a key and
//! no value) deletes the key when the key columns are read from the message's metadata
//! (`{ metadata = "/key" }`) — Materialize's `ENVELOPE UPSERT`, a compacted Kafka topic's
//! meaning.

use amx_dataflows::row::ColumnType;
use serde::{Deserialize, Serialize};

/// A relation a source declares (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The relation's name as SQL reads it: lower case letters, digits and `_`, not starting
    /// with a digit (unquoted SQL names are lower case).
    pub name: String,
    /// The key columns (optional): with a key the relation holds one row per key (upserts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// The columns, in order. Left out (or empty) for an object-store source of Parquet
    /// objects: the columns of its first object.
    #[serde(default)]
    pub columns: Vec<TableColumn>,
}

/// One declared column: its name and SQL type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableColumn {
    /// The column's name (the same rules as the relation's).
    pub name: String,
    /// Its type, as SQL writes it (see the module docs).
    #[serde(rename = "type", with = "sql_type")]
    pub ty: ColumnType,
}

impl TableConfig {
    /// Checks the declaration. A relation without columns passes (a Parquet source takes them
    /// from its objects; its key is checked once they are there).
    ///
    /// # Errors
    /// A name that is not a lower-case SQL identifier or is the catalog's (`pg_…`,
    /// `aimatrix_…`, `information_schema`), a column declared twice, a key column that is not
    /// a column, or one named twice in the key.
    pub fn check(&self) -> Result<(), String> {
        identifier(&self.name).map_err(|e| format!("relation name `{}`: {e}", self.name))?;
        if self.name.starts_with("pg_") || self.name.starts_with("aimatrix_") || self.name == "information_schema" {
            return Err(format!(
                "relation name `{}`: names starting with pg_ or aimatrix_, and information_schema, are the catalog's",
                self.name
            ));
        }
        if self.columns.is_empty() {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        for column in &self.columns {
            identifier(&column.name).map_err(|e| format!("column name `{}`: {e}", column.name))?;
            if !seen.insert(column.name.as_str()) {
                return Err(format!("relation `{}`: column `{}` is declared twice", self.name, column.name));
            }
        }
        let mut keyed = std::collections::HashSet::new();
        for key in &self.key {
            if !seen.contains(key.as_str()) {
                return Err(format!("relation `{}`: key column `{key}` is not one of its columns", self.name));
            }
            if !keyed.insert(key.as_str()) {
                return Err(format!("relation `{}`: key column `{key}` is named twice", self.name));
            }
        }
        Ok(())
    }

    /// The positions of the key columns among the columns.
    pub fn key_indices(&self) -> Vec<usize> {
        self.key.iter().filter_map(|k| self.columns.iter().position(|c| &c.name == k)).collect()
    }
}

/// Whether `name` is a lower-case SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes (as
/// PostgreSQL's `NAMEDATALEN`).
fn identifier(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err("empty"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => Err("must start with a lower-case letter or `_`"),
        _ if name.len() > 63 => Err("longer than 63 bytes"),
        _ if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => {
            Err("only lower-case letters, digits and `_`")
        }
        _ => Ok(()),
    }
}

/// A column type as SQL writes it (see the module docs).
mod sql_type {
    use amx_dataflows::row::ColumnType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ty: &ColumnType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match ty {
            ColumnType::Bool => "boolean",
            ColumnType::Int => "bigint",
            ColumnType::Float => "double",
            ColumnType::Text => "text",
            ColumnType::Timestamp => "timestamp",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ColumnType, D::Error> {
        let name = String::deserialize(d)?;
        Ok(match name.to_ascii_lowercase().as_str() {
            "text" | "varchar" | "string" => ColumnType::Text,
            "bigint" | "int" | "integer" | "int8" => ColumnType::Int,
            "double" | "float" | "real" | "double precision" | "float8" => ColumnType::Float,
            "boolean" | "bool" => ColumnType::Bool,
            "timestamp" | "timestamptz" => ColumnType::Timestamp,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown type `{name}` (expected text, bigint, double, boolean or timestamp)"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TableConfig, String> {
        let table: TableConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        table.check()?;
        Ok(table)
    }

    #[test]
    fn declarations_are_checked() {
        let ok = parse(
            "name = \"orders\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", type = \"TEXT\" }, { name = \"n\", type = \
             \"int\" }]",
        )
        .unwrap();
        assert_eq!(ok.columns[1].ty, ColumnType::Int);
        assert_eq!(ok.key_indices(), vec![0]);
        let error = |text: &str| parse(text).err().unwrap_or_default();
        assert!(error("name = \"Orders\"\ncolumns = [{ name = \"id\", type = \"text\" }]").contains("lower-case"));
        assert!(error("name = \"pg_class\"\ncolumns = [{ name = \"id\", type = \"text\" }]").contains("the catalog's"));
        assert!(error("name = \"o\"\ncolumns = [{ name = \"id\", type = \"uuid\" }]").contains("unknown type `uuid`"));
        assert!(
            error("name = \"o\"\nkey = [\"x\"]\ncolumns = [{ name = \"id\", type = \"text\" }]")
                .contains("key column `x` is not one of its columns")
        );
        assert!(
            error("name = \"o\"\ncolumns = [{ name = \"id\", type = \"text\" }, { name = \"id\", type = \"int\" }]")
                .contains("declared twice")
        );
        // The TOML written back (the durable log keeps job files) reads the same.
        let again: TableConfig = serde_json::from_value(serde_json::to_value(&ok).unwrap()).unwrap();
        assert_eq!(again, ok);
    }
}
