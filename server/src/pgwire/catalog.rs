//! Enough of PostgreSQL's system catalog for psql and drivers: `pg_catalog` tables built from
//! the engine's catalog (every relation and view, with its columns and types) and the catalog
//! functions their describe queries call.
//!
//! Relations are `pg_class` rows of kind `r` (tables: the canonical relations), views
//! (built-in and `CREATE MATERIALIZED VIEW`) of kind `m`, all in schema `public`
//! (OID 2200). A relation's OID is stable for its name (16384 + a hash), so the queries psql
//! sends one after another for `\d name` agree. The tables follow the column names and types
//! of PostgreSQL 15's catalog (<https://www.postgresql.org/docs/15/catalogs.html>); columns of
//! type `oid` are `int8` here, `"char"` columns `text`.
//!
//! A few of psql's describe queries use what DataFusion does not plan (`ARRAY(subquery)`,
//! correlated scalar subqueries, `::regtype` casts): [`answer_known`] recognises those and
//! answers them from the same catalog.

use std::sync::Arc;

use amx_cluster::controller::{CatalogEntry, CollectionKind};
use amx_sql::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int16Array, Int32Array, Int64Array, StringArray};
use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use amx_sql::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

use super::types::{pg_type, pg_type_name};

/// OID of namespace `pg_catalog`.
pub const PG_CATALOG_OID: i64 = 11;
/// OID of namespace `public`, where every relation and view is.
pub const PUBLIC_OID: i64 = 2200;
/// OID of namespace `information_schema`.
pub const INFORMATION_SCHEMA_OID: i64 = 13_000;
/// OID of the one role (`pg_roles`), the owner of everything.
pub const OWNER_OID: i64 = 10;
/// The name the database is known by (`current_database()`, `pg_database`).
pub const DATABASE: &str = "aimatrix";

/// The OID of relation or view `name`: 16384 (PostgreSQL's first user OID) plus a 31-bit
/// FNV-1a hash of the name, the same in every query and every session.
pub fn relation_oid(name: &str) -> i64 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    16_384 + i64::from(hash & 0x3fff_ffff)
}

/// `pg_class.relkind` of a collection: `r` for a relation, `m` for a (materialized) view, `v`
/// for an introspection relation (computed when read, as a view is).
pub fn relkind(kind: CollectionKind) -> &'static str {
    match kind {
        CollectionKind::Relation => "r",
        CollectionKind::BuiltinView | CollectionKind::View => "m",
        CollectionKind::Introspection => "v",
    }
}

/// The built-in types, as `pg_type` rows: OID, name, length in bytes (-1: variable),
/// category (PostgreSQL's `typcategory`), and PostgreSQL's display name (`format_type`).
const TYPES: &[(i64, &str, i16, &str, &str)] = &[
    (16, "bool", 1, "B", "boolean"),
    (17, "bytea", -1, "U", "bytea"),
    (18, "char", 1, "Z", "\"char\""),
    (19, "name", 64, "S", "name"),
    (20, "int8", 8, "N", "bigint"),
    (21, "int2", 2, "N", "smallint"),
    (23, "int4", 4, "N", "integer"),
    (25, "text", -1, "S", "text"),
    (26, "oid", 4, "N", "oid"),
    (700, "float4", 4, "N", "real"),
    (701, "float8", 8, "N", "double precision"),
    (1043, "varchar", -1, "S", "character varying"),
    (1082, "date", 4, "D", "date"),
    (1114, "timestamp", 8, "D", "timestamp without time zone"),
    (1184, "timestamptz", 8, "D", "timestamp with time zone"),
    (1700, "numeric", -1, "N", "numeric"),
];

/// PostgreSQL's display name of the type with OID `oid` (`format_type(oid, typmod)`).
pub fn format_type(oid: i64) -> Option<&'static str> {
    TYPES.iter().find(|t| t.0 == oid).map(|t| t.4)
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> DfResult<RecordBatch> {
    Ok(RecordBatch::try_from_iter_with_nullable(columns.into_iter().map(|(n, a)| (n, a, true)))?)
}

fn empty(columns: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(columns.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect::<Vec<_>>()))
}

/// `pg_class`: one row per relation and view.
pub fn pg_class(entries: &[CatalogEntry]) -> DfResult<RecordBatch> {
    let n = entries.len();
    let i64s = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v; n])) };
    let bools = |v: bool| -> ArrayRef { Arc::new(BooleanArray::from(vec![v; n])) };
    let texts = |v: &str| strings(std::iter::repeat_n(v, n));
    let nulls = || -> ArrayRef { Arc::new(StringArray::from(vec![None::<&str>; n])) };
    batch(vec![
        ("oid", Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| relation_oid(&e.name))))),
        ("relname", strings(entries.iter().map(|e| e.name.as_str()))),
        ("relnamespace", i64s(PUBLIC_OID)),
        ("reltype", i64s(0)),
        ("reloftype", i64s(0)),
        ("relowner", i64s(OWNER_OID)),
        ("relam", i64s(0)),
        ("relfilenode", i64s(0)),
        ("reltablespace", i64s(0)),
        ("relpages", Arc::new(Int32Array::from(vec![0; n]))),
        ("reltuples", Arc::new(Float64Array::from(vec![-1.0; n]))),
        ("reltoastrelid", i64s(0)),
        ("relhasindex", bools(false)),
        ("relisshared", bools(false)),
        ("relpersistence", texts("p")),
        ("relkind", strings(entries.iter().map(|e| relkind(e.kind)))),
        ("relnatts", Arc::new(Int16Array::from_iter_values(entries.iter().map(|e| e.schema.fields().len() as i16)))),
        ("relchecks", Arc::new(Int16Array::from(vec![0; n]))),
        ("relhasrules", bools(false)),
        ("relhastriggers", bools(false)),
        ("relhassubclass", bools(false)),
        ("relrowsecurity", bools(false)),
        ("relforcerowsecurity", bools(false)),
        ("relispopulated", bools(true)),
        ("relreplident", texts("d")),
        ("relispartition", bools(false)),
        ("relacl", nulls()),
        ("reloptions", nulls()),
        ("relpartbound", nulls()),
    ])
}

/// `pg_attribute`: one row per column of every relation and view (`attnum` from 1).
pub fn pg_attribute(entries: &[CatalogEntry]) -> DfResult<RecordBatch> {
    let columns: Vec<(&CatalogEntry, usize, &Field)> = entries
        .iter()
        .flat_map(|e| e.schema.fields().iter().enumerate().map(move |(i, f)| (e, i, f.as_ref())))
        .collect();
    let n = columns.len();
    let bools = |v: bool| -> ArrayRef { Arc::new(BooleanArray::from(vec![v; n])) };
    let texts = |v: &str| strings(std::iter::repeat_n(v, n));
    batch(vec![
        ("attrelid", Arc::new(Int64Array::from_iter_values(columns.iter().map(|(e, _, _)| relation_oid(&e.name))))),
        ("attname", strings(columns.iter().map(|(_, _, f)| f.name().as_str()))),
        (
            "atttypid",
            Arc::new(Int64Array::from_iter_values(
                columns.iter().map(|(_, _, f)| i64::from(pg_type(f.data_type()).oid())),
            )),
        ),
        ("attlen", Arc::new(Int16Array::from_iter_values(columns.iter().map(|(_, _, f)| type_len(f.data_type()))))),
        ("attnum", Arc::new(Int16Array::from_iter_values(columns.iter().map(|(_, i, _)| *i as i16 + 1)))),
        ("atttypmod", Arc::new(Int32Array::from(vec![-1; n]))),
        ("attndims", Arc::new(Int16Array::from(vec![0; n]))),
        ("attnotnull", Arc::new(BooleanArray::from_iter(columns.iter().map(|(_, _, f)| Some(!f.is_nullable()))))),
        ("atthasdef", bools(false)),
        ("attidentity", texts("")),
        ("attgenerated", texts("")),
        ("attisdropped", bools(false)),
        ("attislocal", bools(true)),
        ("attcollation", Arc::new(Int64Array::from(vec![0; n]))),
    ])
}

fn type_len(data_type: &DataType) -> i16 {
    let oid = i64::from(pg_type(data_type).oid());
    TYPES.iter().find(|t| t.0 == oid).map_or(-1, |t| t.2)
}

fn pg_type_table() -> DfResult<RecordBatch> {
    let n = TYPES.len();
    let i64s = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v; n])) };
    batch(vec![
        ("oid", Arc::new(Int64Array::from_iter_values(TYPES.iter().map(|t| t.0)))),
        ("typname", strings(TYPES.iter().map(|t| t.1))),
        ("typnamespace", i64s(PG_CATALOG_OID)),
        ("typowner", i64s(OWNER_OID)),
        ("typlen", Arc::new(Int16Array::from_iter_values(TYPES.iter().map(|t| t.2)))),
        ("typbyval", Arc::new(BooleanArray::from_iter(TYPES.iter().map(|t| Some(t.2 > 0 && t.2 <= 8))))),
        ("typtype", strings(std::iter::repeat_n("b", n))),
        ("typcategory", strings(TYPES.iter().map(|t| t.3))),
        ("typisdefined", Arc::new(BooleanArray::from(vec![true; n]))),
        ("typdelim", strings(std::iter::repeat_n(",", n))),
        ("typrelid", i64s(0)),
        ("typelem", i64s(0)),
        ("typarray", i64s(0)),
        ("typbasetype", i64s(0)),
        ("typtypmod", Arc::new(Int32Array::from(vec![-1; n]))),
        ("typnotnull", Arc::new(BooleanArray::from(vec![false; n]))),
        ("typcollation", i64s(0)),
    ])
}

/// Catalog tables that exist and are empty here (no indexes, constraints, triggers, …),
/// with the columns drivers and psql read.
const EMPTY_TABLES: &[(&str, &[(&str, DataType)])] = &[
    (
        "pg_attrdef",
        &[
            ("oid", DataType::Int64),
            ("adrelid", DataType::Int64),
            ("adnum", DataType::Int16),
            ("adbin", DataType::Utf8),
        ],
    ),
    (
        "pg_index",
        &[
            ("indexrelid", DataType::Int64),
            ("indrelid", DataType::Int64),
            ("indisprimary", DataType::Boolean),
            ("indisunique", DataType::Boolean),
            ("indkey", DataType::Utf8),
        ],
    ),
    (
        "pg_inherits",
        &[
            ("inhrelid", DataType::Int64),
            ("inhparent", DataType::Int64),
            ("inhseqno", DataType::Int32),
            ("inhdetachpending", DataType::Boolean),
        ],
    ),
    (
        "pg_constraint",
        &[
            ("oid", DataType::Int64),
            ("conname", DataType::Utf8),
            ("connamespace", DataType::Int64),
            ("contype", DataType::Utf8),
            ("conrelid", DataType::Int64),
            ("confrelid", DataType::Int64),
            ("conkey", DataType::Utf8),
        ],
    ),
    (
        "pg_description",
        &[
            ("objoid", DataType::Int64),
            ("classoid", DataType::Int64),
            ("objsubid", DataType::Int32),
            ("description", DataType::Utf8),
        ],
    ),
    ("pg_trigger", &[("oid", DataType::Int64), ("tgrelid", DataType::Int64), ("tgname", DataType::Utf8)]),
    ("pg_rewrite", &[("oid", DataType::Int64), ("ev_class", DataType::Int64), ("rulename", DataType::Utf8)]),
    ("pg_policy", &[("oid", DataType::Int64), ("polrelid", DataType::Int64), ("polname", DataType::Utf8)]),
    ("pg_collation", &[("oid", DataType::Int64), ("collname", DataType::Utf8), ("collnamespace", DataType::Int64)]),
    ("pg_range", &[("rngtypid", DataType::Int64), ("rngsubtype", DataType::Int64)]),
    (
        "pg_enum",
        &[
            ("oid", DataType::Int64),
            ("enumtypid", DataType::Int64),
            ("enumlabel", DataType::Utf8),
            ("enumsortorder", DataType::Float64),
        ],
    ),
    ("pg_proc", &[("oid", DataType::Int64), ("proname", DataType::Utf8), ("pronamespace", DataType::Int64)]),
    ("pg_extension", &[("oid", DataType::Int64), ("extname", DataType::Utf8), ("extversion", DataType::Utf8)]),
    ("pg_statistic_ext", &[("oid", DataType::Int64), ("stxrelid", DataType::Int64), ("stxname", DataType::Utf8)]),
    ("pg_publication", &[("oid", DataType::Int64), ("pubname", DataType::Utf8), ("puballtables", DataType::Boolean)]),
    (
        "pg_publication_namespace",
        &[("oid", DataType::Int64), ("pnpubid", DataType::Int64), ("pnnspid", DataType::Int64)],
    ),
    ("pg_publication_rel", &[("oid", DataType::Int64), ("prpubid", DataType::Int64), ("prrelid", DataType::Int64)]),
    ("pg_foreign_table", &[("ftrelid", DataType::Int64), ("ftserver", DataType::Int64)]),
    ("pg_partitioned_table", &[("partrelid", DataType::Int64)]),
];

/// Registers schema `pg_catalog` (and the same tables unqualified, where no relation of the
/// engine has that name) and the catalog functions in `ctx`.
///
/// # Errors
/// A DataFusion error registering them (none expected).
pub fn register(ctx: &SessionContext, entries: &[CatalogEntry]) -> DfResult<()> {
    let catalog =
        ctx.catalog("datafusion").ok_or_else(|| datafusion::error::DataFusionError::Plan("no catalog".into()))?;
    catalog.register_schema("pg_catalog", Arc::new(MemorySchemaProvider::new()))?;
    let namespaces = batch(vec![
        ("oid", Arc::new(Int64Array::from(vec![PG_CATALOG_OID, PUBLIC_OID, INFORMATION_SCHEMA_OID]))),
        ("nspname", strings(["pg_catalog", "public", "information_schema"])),
        ("nspowner", Arc::new(Int64Array::from(vec![OWNER_OID; 3]))),
        ("nspacl", Arc::new(StringArray::from(vec![None::<&str>; 3]))),
    ])?;
    let database = batch(vec![
        ("oid", Arc::new(Int64Array::from(vec![16_383]))),
        ("datname", strings([DATABASE])),
        ("datdba", Arc::new(Int64Array::from(vec![OWNER_OID]))),
        ("encoding", Arc::new(Int32Array::from(vec![6]))),
        ("datcollate", strings(["C"])),
        ("datctype", strings(["C"])),
        ("datistemplate", Arc::new(BooleanArray::from(vec![false]))),
        ("datallowconn", Arc::new(BooleanArray::from(vec![true]))),
        ("datacl", Arc::new(StringArray::from(vec![None::<&str>]))),
        ("datlocprovider", strings(["c"])),
        ("daticulocale", Arc::new(StringArray::from(vec![None::<&str>]))),
        ("daticurules", Arc::new(StringArray::from(vec![None::<&str>]))),
        ("datcollversion", Arc::new(StringArray::from(vec![None::<&str>]))),
        ("dattablespace", Arc::new(Int64Array::from(vec![0]))),
    ])?;
    let roles = batch(vec![
        ("oid", Arc::new(Int64Array::from(vec![OWNER_OID]))),
        ("rolname", strings([DATABASE])),
        ("rolsuper", Arc::new(BooleanArray::from(vec![true]))),
        ("rolinherit", Arc::new(BooleanArray::from(vec![true]))),
        ("rolcreaterole", Arc::new(BooleanArray::from(vec![false]))),
        ("rolcreatedb", Arc::new(BooleanArray::from(vec![false]))),
        ("rolcanlogin", Arc::new(BooleanArray::from(vec![true]))),
        ("rolreplication", Arc::new(BooleanArray::from(vec![false]))),
        ("rolconnlimit", Arc::new(Int32Array::from(vec![-1]))),
        ("rolbypassrls", Arc::new(BooleanArray::from(vec![false]))),
    ])?;
    let am = batch(vec![
        ("oid", Arc::new(Int64Array::from(vec![2]))),
        ("amname", strings(["heap"])),
        ("amtype", strings(["t"])),
    ])?;
    let mut tables: Vec<(&str, RecordBatch)> = vec![
        ("pg_namespace", namespaces),
        ("pg_class", pg_class(entries)?),
        ("pg_attribute", pg_attribute(entries)?),
        ("pg_type", pg_type_table()?),
        ("pg_database", database),
        ("pg_roles", roles.clone()),
        ("pg_user", roles),
        ("pg_am", am),
    ];
    for (name, columns) in EMPTY_TABLES {
        tables.push((name, RecordBatch::new_empty(empty(columns))));
    }
    for (name, batch) in tables {
        let table = Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?);
        ctx.register_table(format!("pg_catalog.{name}").as_str(), table.clone())?;
        if !entries.iter().any(|e| e.name == name) {
            ctx.register_table(name, table)?;
        }
    }
    register_functions(ctx);
    Ok(())
}

/// Registers only the catalog functions (`pg_typeof`, `version()`, `current_schema()`, …) in
/// `ctx`: what a query that reads none of the catalog's tables may still call.
pub fn register_functions(ctx: &SessionContext) {
    for function in functions() {
        ctx.register_udf(function);
    }
}

/// What a catalog function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// `pg_typeof(any)`: the PostgreSQL name of its argument's type.
    TypeOf,
    /// `format_type(type_oid, typmod)`: the type's display name.
    FormatType,
    /// A constant text.
    Text(&'static str),
    /// A constant boolean.
    Bool(bool),
    /// Always NULL (`pg_get_expr`, `obj_description`, …: nothing to describe).
    NullText,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CatalogFunction {
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
    kind: Kind,
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::Bool(_) => DataType::Boolean,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let text = |s: Option<&str>| ColumnarValue::Scalar(ScalarValue::Utf8(s.map(str::to_owned)));
        Ok(match self.kind {
            Kind::TypeOf => text(Some(pg_type_name(args.arg_fields[0].data_type()))),
            Kind::FormatType => match &args.args[0] {
                ColumnarValue::Scalar(v) => text(scalar_oid(v).and_then(format_type)),
                ColumnarValue::Array(a) => {
                    let values: StringArray = (0..a.len())
                        .map(|i| {
                            ScalarValue::try_from_array(a, i).ok().as_ref().and_then(scalar_oid).and_then(format_type)
                        })
                        .collect();
                    ColumnarValue::Array(Arc::new(values))
                }
            },
            Kind::Text(s) => text(Some(s)),
            Kind::Bool(b) => ColumnarValue::Scalar(ScalarValue::Boolean(Some(b))),
            Kind::NullText => text(None),
        })
    }
}

fn scalar_oid(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(v) => v,
        _ => None,
    }
}

/// The catalog functions, each also under its `pg_catalog.` name.
fn functions() -> Vec<ScalarUDF> {
    let any = |n: usize| Signature::any(n, Volatility::Stable);
    let variadic = Signature::variadic_any(Volatility::Stable);
    let nullary = Signature::nullary(Volatility::Stable);
    let version: &'static str =
        concat!("PostgreSQL 15.0 on AIMatrix ", env!("CARGO_PKG_VERSION"), " (DataFusion over timely dataflow)");
    let list: Vec<(&'static str, Signature, Kind)> = vec![
        ("pg_typeof", any(1), Kind::TypeOf),
        ("format_type", any(2), Kind::FormatType),
        ("pg_table_is_visible", any(1), Kind::Bool(true)),
        ("pg_type_is_visible", any(1), Kind::Bool(true)),
        (
            "has_table_privilege",
            Signature::one_of(vec![TypeSignature::Any(2), TypeSignature::Any(3)], Volatility::Stable),
            Kind::Bool(true),
        ),
        (
            "has_schema_privilege",
            Signature::one_of(vec![TypeSignature::Any(2), TypeSignature::Any(3)], Volatility::Stable),
            Kind::Bool(true),
        ),
        ("pg_get_userbyid", any(1), Kind::Text(DATABASE)),
        ("pg_encoding_to_char", any(1), Kind::Text("UTF8")),
        ("pg_get_expr", variadic.clone(), Kind::NullText),
        ("pg_get_constraintdef", variadic.clone(), Kind::NullText),
        ("pg_get_indexdef", variadic.clone(), Kind::NullText),
        ("pg_get_viewdef", variadic.clone(), Kind::NullText),
        ("pg_size_pretty", variadic.clone(), Kind::NullText),
        ("pg_table_size", variadic.clone(), Kind::NullText),
        ("pg_relation_size", variadic.clone(), Kind::NullText),
        ("pg_total_relation_size", variadic.clone(), Kind::NullText),
        ("obj_description", variadic.clone(), Kind::NullText),
        ("col_description", variadic.clone(), Kind::NullText),
        ("shobj_description", variadic, Kind::NullText),
        ("current_database", nullary.clone(), Kind::Text(DATABASE)),
        ("current_schema", nullary.clone(), Kind::Text("public")),
        ("current_user", nullary.clone(), Kind::Text(DATABASE)),
        ("session_user", nullary.clone(), Kind::Text(DATABASE)),
        ("version", nullary, Kind::Text(version)),
    ];
    list.into_iter()
        .map(|(name, signature, kind)| {
            ScalarUDF::new_from_impl(CatalogFunction {
                name,
                aliases: vec![format!("pg_catalog.{name}")],
                signature,
                kind,
            })
        })
        .collect()
}

/// Rewrites the PostgreSQL-only spellings psql's describe queries use into what DataFusion
/// parses: `OPERATOR(pg_catalog.~)` → `~` (and the other operators so spelled), and drops
/// `COLLATE pg_catalog.default` and casts to `pg_catalog.regclass`/`regtype`.
pub fn rewrite(sql: &str) -> String {
    if !sql.contains("pg_catalog") {
        return sql.to_owned();
    }
    let mut out = sql.to_owned();
    for op in ["!~~*", "!~~", "~~*", "~~", "!~*", "!~", "~*", "~", "=", "<>"] {
        out = out.replace(&format!("OPERATOR(pg_catalog.{op})"), op);
    }
    for drop in [
        " COLLATE pg_catalog.default",
        "::pg_catalog.regclass",
        "::pg_catalog.regtype",
        "::regclass",
        "::regtype",
        "::pg_catalog.oid",
    ] {
        out = out.replace(drop, "");
    }
    // DataFusion's own functions, which psql names by schema.
    for function in ["generate_series", "array_upper", "string_agg", "lower", "upper"] {
        out = out.replace(&format!("pg_catalog.{function}("), &format!("{function}("));
    }
    out.replace("::pg_catalog.text", "::text")
}

/// Answers one of psql's describe queries that DataFusion cannot plan, from the catalog;
/// `None` for every other statement.
pub fn answer_known(sql: &str, entries: &[CatalogEntry]) -> Option<DfResult<RecordBatch>> {
    let compact: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    // `\d name`, PostgreSQL 10+: the relation's properties.
    if compact.starts_with("SELECT c.relchecks, c.relkind, c.relhasindex") {
        let oid = quoted_oid_after(&compact, "WHERE c.oid = ")?;
        return Some(table_info(entries, oid));
    }
    // `\d name`: its columns.
    if compact.starts_with("SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)") {
        let oid = quoted_oid_after(&compact, "WHERE a.attrelid = ")?;
        return Some(columns_info(entries, oid, &compact));
    }
    None
}

/// The answer of a query that DataFusion could not plan but whose rows are known to be none:
/// it reads first from a catalog table that is always empty here ([`EMPTY_TABLES`]: policies,
/// statistics objects, publications, inheritance, …), joined only by inner, left, semi or cross
/// joins, without aggregates. psql's `\d` asks such tables with columns and functions the
/// catalog does not model (`pol.polroles`, `pg_get_expr`), and reads nothing but the row
/// count. Columns are named as PostgreSQL names them (alias, else column name) and typed
/// `text`; `None` for anything else (a `*`, an aggregate, a non-empty table).
pub fn answer_empty(sql: &str) -> Option<RecordBatch> {
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let Some(Statement::Query(query)) = statements.pop() else { return None };
    if !statements.is_empty() || query.with.is_some() {
        return None;
    }
    let names = empty_set_expr(&query.body)?;
    let schema = Schema::new(names.into_iter().map(|n| Field::new(n, DataType::Utf8, true)).collect::<Vec<_>>());
    Some(RecordBatch::new_empty(Arc::new(schema)))
}

/// `text` (lower case SQL) without its parenthesised subqueries (`(select …)`).
fn without_subqueries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("(select") {
        out.push_str(&rest[..start]);
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The output column names of `body` if its rows are certainly none.
fn empty_set_expr(body: &datafusion::sql::sqlparser::ast::SetExpr) -> Option<Vec<String>> {
    use datafusion::sql::sqlparser::ast::{
        Expr, GroupByExpr, JoinOperator, SelectItem, SetExpr, SetOperator, TableFactor,
    };
    match body {
        SetExpr::Query(q) => empty_set_expr(&q.body),
        SetExpr::SetOperation { left, op, right, .. } => {
            let names = empty_set_expr(left)?;
            // EXCEPT of nothing is nothing; UNION and INTERSECT need both sides empty.
            if *op != SetOperator::Except {
                empty_set_expr(right)?;
            }
            Some(names)
        }
        SetExpr::Select(select) => {
            let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
            if select.from.is_empty() || grouped || select.having.is_some() {
                return None;
            }
            for from in &select.from {
                let TableFactor::Table { name, .. } = &from.relation else { return None };
                let table = name.0.last()?.to_string().to_ascii_lowercase();
                if !EMPTY_TABLES.iter().any(|(t, _)| *t == table) {
                    return None;
                }
                let keeps_empty = from.joins.iter().all(|j| {
                    matches!(
                        j.join_operator,
                        JoinOperator::Join(_)
                            | JoinOperator::Inner(_)
                            | JoinOperator::Left(_)
                            | JoinOperator::LeftOuter(_)
                            | JoinOperator::LeftSemi(_)
                            | JoinOperator::LeftAnti(_)
                            | JoinOperator::Semi(_)
                            | JoinOperator::Anti(_)
                            | JoinOperator::CrossJoin(_)
                    )
                });
                if !keeps_empty {
                    return None;
                }
            }
            let mut names = Vec::with_capacity(select.projection.len());
            for item in &select.projection {
                let (expr, name) = match item {
                    SelectItem::ExprWithAlias { expr, alias } => (expr, alias.value.clone()),
                    SelectItem::UnnamedExpr(expr) => (
                        expr,
                        match expr {
                            Expr::Identifier(id) => id.value.clone(),
                            Expr::CompoundIdentifier(ids) => ids.last()?.value.clone(),
                            _ => "?column?".to_owned(),
                        },
                    ),
                    _ => return None,
                };
                // An aggregate in a subquery (psql's `(SELECT string_agg(…) …)`) is the
                // subquery's, not this select's.
                let text = without_subqueries(&expr.to_string().to_ascii_lowercase());
                let aggregate =
                    ["count(", "sum(", "min(", "max(", "avg(", "bool_and(", "bool_or(", "array_agg(", "string_agg("]
                        .iter()
                        .any(|f| text.contains(f));
                if aggregate {
                    return None;
                }
                names.push(name);
            }
            Some(names)
        }
        _ => None,
    }
}

fn quoted_oid_after(sql: &str, prefix: &str) -> Option<i64> {
    let rest = &sql[sql.find(prefix)? + prefix.len()..];
    rest.trim_start_matches('\'').split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// psql's table-info row for relation `oid` (the columns of PostgreSQL 15's query).
fn table_info(entries: &[CatalogEntry], oid: i64) -> DfResult<RecordBatch> {
    let found: Vec<&CatalogEntry> = entries.iter().filter(|e| relation_oid(&e.name) == oid).collect();
    let n = found.len();
    let bools = |v: bool| -> ArrayRef { Arc::new(BooleanArray::from(vec![v; n])) };
    let texts = |v: &str| strings(std::iter::repeat_n(v, n));
    batch(vec![
        ("relchecks", Arc::new(Int16Array::from(vec![0; n]))),
        ("relkind", strings(found.iter().map(|e| relkind(e.kind)))),
        ("relhasindex", bools(false)),
        ("relhasrules", bools(false)),
        ("relhastriggers", bools(false)),
        ("relrowsecurity", bools(false)),
        ("relforcerowsecurity", bools(false)),
        ("relhasoids", bools(false)),
        ("relispartition", bools(false)),
        ("reloptions", texts("")),
        ("reltablespace", Arc::new(Int64Array::from(vec![0; n]))),
        ("reloftype", texts("")),
        ("relpersistence", texts("p")),
        ("relreplident", texts("d")),
        ("amname", Arc::new(StringArray::from(vec![None::<&str>; n]))),
    ])
}

/// psql's column rows for relation `oid`: name, type, default, not null, collation, identity,
/// generated (and, with `\d+`, storage, compression, stats target and description).
fn columns_info(entries: &[CatalogEntry], oid: i64, sql: &str) -> DfResult<RecordBatch> {
    let fields: Vec<&Field> = entries
        .iter()
        .filter(|e| relation_oid(&e.name) == oid)
        .flat_map(|e| e.schema.fields().iter().map(|f| f.as_ref()))
        .collect();
    let n = fields.len();
    let nulls = || -> ArrayRef { Arc::new(StringArray::from(vec![None::<&str>; n])) };
    let texts = |v: &str| strings(std::iter::repeat_n(v, n));
    let mut columns = vec![
        ("attname", strings(fields.iter().map(|f| f.name().as_str()))),
        ("format_type", strings(fields.iter().map(|f| pg_type_name(f.data_type())))),
        ("pg_get_expr", nulls()),
        ("attnotnull", Arc::new(BooleanArray::from_iter(fields.iter().map(|f| Some(!f.is_nullable())))) as ArrayRef),
        ("attcollation", nulls()),
        ("attidentity", texts("")),
        ("attgenerated", texts("")),
    ];
    if sql.contains("a.attstorage") {
        columns.push(("attstorage", texts("p")));
        if sql.contains("attcompression") {
            columns.push(("attcompression", texts("")));
        }
        if sql.contains("attstattarget") {
            columns.push(("attstattarget", nulls()));
        }
        columns.push(("description", nulls()));
    }
    batch(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_are_stable_and_user_range() {
        assert_eq!(relation_oid("agent_traces"), relation_oid("agent_traces"));
        assert_ne!(relation_oid("agent_traces"), relation_oid("tool_usage"));
        assert!(relation_oid("x") >= 16_384);
    }

    #[test]
    fn psql_operator_spelling_is_rewritten() {
        let sql = "WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default";
        assert_eq!(rewrite(sql), "WHERE c.relname ~ '^(t)$'");
    }

    /// psql 15's `\d` policy query: no rows, its six columns named as PostgreSQL names them.
    #[test]
    fn psql_policy_query_answers_no_rows() {
        let sql = "SELECT pol.polname, pol.polpermissive,
  CASE WHEN pol.polroles = '{0}' THEN NULL ELSE pg_catalog.array_to_string(array(select rolname from pg_catalog.pg_roles where oid = any (pol.polroles) order by 1),',') END,
  pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
  pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),
  CASE pol.polcmd
    WHEN 'r' THEN 'SELECT'
    WHEN 'a' THEN 'INSERT'
    WHEN 'w' THEN 'UPDATE'
    WHEN 'd' THEN 'DELETE'
    END AS cmd
FROM pg_catalog.pg_policy pol
WHERE pol.polrelid = '1063321142' ORDER BY 1;";
        let batch = answer_empty(sql).expect("an empty answer");
        assert_eq!(batch.num_rows(), 0);
        let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["polname", "polpermissive", "?column?", "?column?", "?column?", "cmd"]);
        assert!(answer_empty("SELECT count(*) FROM pg_policy").is_none(), "an aggregate answers one row");
        assert!(answer_empty("SELECT * FROM pg_policy").is_none());
        assert!(answer_empty("SELECT c.relname FROM pg_class c").is_none(), "pg_class is not empty");
        assert!(answer_empty("SELECT x FROM pg_policy p RIGHT JOIN pg_class c ON true").is_none());
    }
}
