//! SQL over the maintained state: AIMatrix's DataFusion sessions ([`session`],
//! [`SessionTemplate`]), the SQL → dataflow planner ([`plan`], [`render`], [`views`]) and the
//! answers' formats ([`format_batches`]). The server answers queries over the workers'
//! arrangements (`amx_cluster::sql`); [`testing::SqlEngine`] answers them over rows held in
//! memory, as the batch recomputation tests compare views with.
//!
//! Column types map to Arrow as `BIGINT` → `Int64`, `DOUBLE` → `Float64`, `TEXT` → `Utf8`,
//! `BOOLEAN` → `Boolean`, `TIMESTAMP` → `Timestamp(Microsecond, "UTC")`.

use std::sync::Arc;

use amx_dataflows::row::{ColumnType, RelationDesc};
use anyhow::Result;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;

pub mod aggregates;
pub mod bounded;
pub mod convert;
pub mod error;
pub mod input;
pub mod json;
pub mod parse;
pub mod plan;
pub mod render;
pub mod row_expr;
pub mod temporal;
pub mod testing;
pub mod views;

pub use arrow;
pub use parse::{MAX_EXPR_DEPTH, on_sql_stack, plan_on_sql_stack, try_on_sql_stack};

/// The Arrow type of a column type.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Text => DataType::Utf8,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The Arrow schema of a relation (every column nullable).
pub fn arrow_schema(desc: &RelationDesc) -> SchemaRef {
    Arc::new(Schema::new(desc.columns.iter().map(|c| Field::new(c.name, arrow_type(c.ty), true)).collect::<Vec<_>>()))
}

/// A DataFusion session with AIMatrix's function set: DataFusion's own plus the JSON
/// functions of `datafusion-functions-json` (`json_get_str(attributes, 'key')`,
/// `json_get_int`, `json_get_float`, `json_get_bool`, `json_contains`, `json_length`, …), for
/// the `attributes` column and other JSON text; `min`, `max`, `sum` and `avg` are
/// [`aggregates`]' versions, which compute what a view computes.
pub fn session(config: datafusion::prelude::SessionConfig) -> Result<SessionContext> {
    session_in(config, Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default()))
}

/// [`session`] over `runtime` (its memory pool bounds what the session's queries reserve).
///
/// Errors: as [`session`].
pub fn session_in(
    mut config: datafusion::prelude::SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> Result<SessionContext> {
    // Where names are in the SQL, so that "no such column / table" errors say where.
    config.options_mut().sql_parser.collect_spans = true;
    // The same nesting limit as our own parse (SQL runs on large stacks, see `parse`).
    config.options_mut().sql_parser.recursion_limit =
        datafusion::common::config::ConfigNonZeroUsize::try_new(parse::PARSER_RECURSION_LIMIT)?;
    let mut ctx = SessionContext::new_with_config_rt(config, runtime);
    datafusion_functions_json::register_all(&mut ctx)?;
    // min/max/sum/avg with the views' semantics (NaN order, exact sums, no wrapping).
    aggregates::register(&ctx);
    Ok(ctx)
}

/// A session ([`session_in`]'s) built once, from which [`SessionTemplate::session`] makes one
/// per query with a catalog of its own: a clone of its state (the ~400 functions as `Arc`s)
/// where building a session registers every function again — about a fifth of a point query's
/// time (`perf` of `amx-load-bench`).
pub struct SessionTemplate(datafusion::execution::SessionState);

impl SessionTemplate {
    /// The template of sessions configured by `config`, then by `setup` (functions registered
    /// on it are in every session made from it). Its runtime is DataFusion's default: a query
    /// executes with a [`datafusion::execution::TaskContext`] over a runtime of its own.
    ///
    /// Errors: as [`session`].
    pub fn new(config: datafusion::prelude::SessionConfig, setup: impl FnOnce(&SessionContext)) -> Result<Self> {
        let ctx = session_in(config, Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default()))?;
        setup(&ctx);
        let state = ctx.state_ref().read().clone();
        Ok(Self(state))
    }

    /// A new session with the template's configuration and functions, and an empty catalog of
    /// its own (the default catalog and schema, as a new session has): tables registered in it
    /// are its alone.
    pub fn session(&self) -> SessionContext {
        use datafusion::catalog::{
            CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
            MemorySchemaProvider,
        };
        let mut state = self.0.clone();
        let names = &state.config().options().catalog;
        let (catalog_name, schema_name) = (names.default_catalog.clone(), names.default_schema.clone());
        let catalog = MemoryCatalogProvider::new();
        // A new provider has no schemas: nothing to replace, nothing to fail.
        let _ = catalog.register_schema(&schema_name, Arc::new(MemorySchemaProvider::new()));
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog(catalog_name, Arc::new(catalog));
        state.register_catalog_list(Arc::new(catalogs));
        SessionContext::new_with_state(state)
    }
}

/// The names of the tables a SQL statement reads, resolved as DataFusion resolves them
/// (unquoted names folded to lower case, quoted names as written; CTEs left out).
///
/// Errors: SQL syntax errors and statements past the parser's limits ([`parse::parse`]).
pub fn referenced_tables(sql: &str) -> Result<Vec<String>> {
    crate::parse::plan_on_sql_stack(|| {
        let statement = parse::parse(sql)?;
        let (tables, _ctes) = datafusion::sql::resolve::resolve_table_references(&statement, true)?;
        Ok(tables.iter().map(|r| r.table().to_owned()).collect())
    })
    .map_err(error::to_anyhow)
}

/// Whether a parsed statement is a query (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`): what can be
/// answered over the maintained state.
pub fn is_query(statement: &datafusion::sql::parser::Statement) -> bool {
    match statement {
        datafusion::sql::parser::Statement::Statement(s) => matches!(
            s.as_ref(),
            datafusion::sql::sqlparser::ast::Statement::Query(_)
                | datafusion::sql::sqlparser::ast::Statement::Explain { .. }
        ),
        datafusion::sql::parser::Statement::Explain(_) => true,
        _ => false,
    }
}

/// How query answers are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// One JSON array of row objects (NULLs as `null`, timestamps as RFC 3339 strings, NaN
    /// and ±infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`: see [`json`]).
    Json,
    /// CSV with a header line.
    Csv,
}

/// Renders query answers in `format` (no trailing newline for tables, one for JSON and CSV).
pub fn format_batches(batches: &[RecordBatch], format: OutputFormat) -> Result<String> {
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        OutputFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut writer = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .with_encoder_factory(json::NonFiniteAsStrings::factory())
                    .build::<_, arrow::json::writer::JsonArray>(&mut buf);
                for b in batches {
                    writer.write(b)?;
                }
                writer.finish()?;
            }
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            buf.push(b'\n');
            Ok(String::from_utf8(buf)?)
        }
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
                for b in batches {
                    writer.write(b)?;
                }
            }
            Ok(String::from_utf8(buf)?)
        }
    }
}

#[cfg(test)]
mod session_template_tests {
    use super::*;

    /// Sessions made from one template share its functions but nothing else: a table one
    /// registers, or a setting it changes, is not another's.
    #[tokio::test]
    async fn sessions_from_a_template_are_apart() {
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
        let template = SessionTemplate::new(config, |_| {}).expect("a template");
        let one = template.session();
        let batch = RecordBatch::try_from_iter([("x", Arc::new(arrow::array::Int64Array::from(vec![40, 2])) as _)])
            .expect("a batch");
        one.register_batch("t", batch).expect("registered");
        one.state_ref().write().config_mut().options_mut().catalog.information_schema = true;
        let sum = one.sql("SELECT sum(x) AS s FROM t").await.expect("planned").collect().await.expect("run");
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&sum).expect("shown").to_string().lines().nth(3),
            Some("| 42 |")
        );
        let other = template.session();
        assert!(other.sql("SELECT * FROM t").await.is_err(), "the other session has no table t");
        assert!(!other.state().config().options().catalog.information_schema);
        // The template's functions are in every session: json_get_str (datafusion-functions-json).
        let json = other.sql(r#"SELECT json_get_str('{"a": "b"}', 'a') AS v"#).await.expect("planned");
        let json = json.collect().await.expect("run");
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&json).expect("shown").to_string().lines().nth(3),
            Some("| b |")
        );
    }
}
