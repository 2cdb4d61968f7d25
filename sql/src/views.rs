//! Materialized views defined in SQL: statements, the planning catalog, and view definitions.
//!
//! `CREATE MATERIALIZED VIEW name AS SELECT …` plans the `SELECT` with DataFusion against the
//! schemas of every relation, built-in view and earlier view, optimizes it, and lowers it to a
//! [`Plan`]; `DROP MATERIALIZED VIEW name` removes a view no other view reads.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectType, Statement};

use crate::plan::{Lowerer, Plan, dependencies};

/// A statement about views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewStatement {
    /// `CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS query`.
    Create {
        /// View name, resolved as DataFusion resolves table names (unquoted: lower case).
        name: String,
        /// The query text.
        query: String,
        /// `IF NOT EXISTS`: a relation or view of that name already there is not an error, and
        /// nothing is created.
        if_not_exists: bool,
    },
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name`.
    Drop {
        /// View name, resolved as DataFusion resolves table names (unquoted: lower case).
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// Anything else (a query to answer).
    Other,
}

/// Classifies one SQL statement.
///
/// A view's name is resolved as DataFusion resolves table names: unquoted parts are folded to
/// lower case, quoted ones (`"MyView"`, `"my view"`) kept as written. `public.v` and
/// `datafusion.public.v` name the view `v` (views live in DataFusion's default catalog and
/// schema); any other qualifier is refused.
///
/// Errors: SQL syntax errors, as DataFusion's parser reports them, statements past the
/// parser's limits ([`crate::parse::parse`]), and view names in another schema.
pub fn parse_statement(sql: &str) -> Result<ViewStatement> {
    crate::parse::plan_on_sql_stack(|| view_statement(&crate::parse::parse(sql)?))
}

/// A statement parsed once ([`classify`]): what it is about views, and for anything else the
/// parsed statement with the tables it reads (as [`crate::referenced_tables`] names them), to
/// be planned without parsing it again.
pub struct Classified {
    /// What it is.
    pub kind: ViewStatement,
    /// For [`ViewStatement::Other`]: the statement, and the tables it reads.
    pub query: Option<(DfStatement, Vec<String>)>,
}

/// [`parse_statement`], keeping the parsed statement of a query and the tables it reads: one
/// parse where classifying, resolving tables and planning took three.
///
/// Errors: as [`parse_statement`].
pub fn classify(sql: &str) -> Result<Classified> {
    crate::parse::plan_on_sql_stack(|| {
        let statement = crate::parse::parse(sql)?;
        let kind = view_statement(&statement)?;
        let query = match kind {
            ViewStatement::Other => {
                let (tables, _ctes) = datafusion::sql::resolve::resolve_table_references(&statement, true)?;
                Some((statement, tables.iter().map(|r| r.table().to_owned()).collect()))
            }
            _ => None,
        };
        Ok(Classified { kind, query })
    })
}

/// What a parsed statement is about views.
fn view_statement(statement: &DfStatement) -> Result<ViewStatement> {
    let DfStatement::Statement(statement) = statement else {
        return Ok(ViewStatement::Other);
    };
    Ok(match &**statement {
        Statement::CreateView(create) if create.materialized && create.or_replace => {
            return Err(DataFusionError::Plan(
                "CREATE OR REPLACE MATERIALIZED VIEW is not supported: DROP the view, then CREATE it".into(),
            ));
        }
        Statement::CreateView(create) if create.materialized => ViewStatement::Create {
            name: view_name(&create.name)?,
            query: create.query.to_string(),
            if_not_exists: create.if_not_exists,
        },
        Statement::Drop { object_type: ObjectType::MaterializedView, names, if_exists, .. } => {
            let [name] = names.as_slice() else {
                return Err(DataFusionError::Plan("DROP MATERIALIZED VIEW takes one view".into()));
            };
            ViewStatement::Drop { name: view_name(name)?, if_exists: *if_exists }
        }
        _ => ViewStatement::Other,
    })
}

/// The table name a view's (possibly qualified, possibly quoted) name resolves to, if the view
/// is in the one schema views live in.
fn view_name(name: &ObjectName) -> Result<String> {
    let reference = object_name_to_table_reference(name.clone(), true)?;
    // The session's defaults: `datafusion` and `public`.
    let defaults = datafusion::config::CatalogOptions::default();
    let (catalog, schema) = (defaults.default_catalog.as_str(), defaults.default_schema.as_str());
    let ok = match &reference {
        TableReference::Bare { .. } => true,
        TableReference::Partial { schema: s, .. } => s.as_ref() == schema,
        TableReference::Full { catalog: c, schema: s, .. } => c.as_ref() == catalog && s.as_ref() == schema,
    };
    if !ok {
        return Err(DataFusionError::Plan(format!(
            "materialized view `{name}`: views live in the schema {catalog}.{schema}; name it `{t}`, `{schema}.{t}` or \
             `{catalog}.{schema}.{t}`",
            t = reference.table()
        )));
    }
    Ok(reference.table().to_owned())
}

/// A planned view.
#[derive(Clone, Debug)]
pub struct ViewDef {
    /// Name.
    pub name: String,
    /// The `SELECT` as written.
    pub sql: String,
    /// The lowered plan.
    pub plan: Plan,
    /// Output columns and their Arrow types.
    pub schema: SchemaRef,
    /// Relations and views it reads.
    pub reads: Vec<String>,
}

/// Plans views against a catalog of relation schemas.
pub struct ViewPlanner {
    ctx: SessionContext,
    runtime: tokio::runtime::Runtime,
    views: Vec<ViewDef>,
}

impl ViewPlanner {
    /// A planner over relations `(name, schema)` (base relations and built-in views).
    pub fn new(relations: &[(String, SchemaRef)]) -> Result<ViewPlanner> {
        let ctx = crate::session(datafusion::prelude::SessionConfig::new())
            .map_err(|e| DataFusionError::External(e.into()))?;
        // now() is the engine's clock in views (temporal filters), not the planning time.
        ctx.register_udf(crate::temporal::EngineNow::udf());
        for (name, schema) in relations {
            ctx.register_table(
                TableReference::bare(name.as_str()),
                Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?),
            )?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(ViewPlanner { ctx, runtime, views: Vec::new() })
    }

    /// The views defined so far, in definition order (each reads only earlier ones).
    pub fn views(&self) -> &[ViewDef] {
        &self.views
    }

    /// Plans `CREATE MATERIALIZED VIEW name AS sql` and adds it to the catalog; `name` is
    /// folded to lower case, as an unquoted SQL name is (the names of a job file's `[views]`).
    ///
    /// Errors: the name is taken; SQL errors; a construct the dataflow IR cannot maintain
    /// (named, with its line and column where it can be located).
    pub fn create(&mut self, name: &str, sql: &str) -> Result<&ViewDef> {
        self.create_in(&name.to_ascii_lowercase(), sql, sql)
    }

    /// As [`ViewPlanner::create`], for a view whose `name` is already resolved (as
    /// [`parse_statement`] resolves it: case kept), locating refused constructs in `source`
    /// (the whole statement as the user wrote it) rather than in `sql`.
    pub fn create_in(&mut self, name: &str, sql: &str, source: &str) -> Result<&ViewDef> {
        if self.ctx.table_exist(TableReference::bare(name))? {
            return Err(DataFusionError::Plan(format!("a relation or view named `{name}` already exists")));
        }
        let (ctx, runtime) = (&self.ctx, &self.runtime);
        // DataFusion and the lowering recurse over the expressions: on a large stack.
        let (plan, schema) = crate::parse::plan_on_sql_stack(|| {
            let state = ctx.state();
            let statement = crate::parse::parse(sql)?;
            let unoptimized = runtime.block_on(state.statement_to_plan(statement))?;
            if !matches!(
                unoptimized,
                LogicalPlan::Projection(_)
                    | LogicalPlan::Filter(_)
                    | LogicalPlan::Aggregate(_)
                    | LogicalPlan::Sort(_)
                    | LogicalPlan::Limit(_)
                    | LogicalPlan::Distinct(_)
                    | LogicalPlan::Union(_)
                    | LogicalPlan::Join(_)
                    | LogicalPlan::SubqueryAlias(_)
                    | LogicalPlan::Window(_)
                    | LogicalPlan::Values(_)
                    | LogicalPlan::TableScan(_)
                    | LogicalPlan::EmptyRelation(_)
            ) {
                return Err(DataFusionError::Plan(format!(
                    "a materialized view must be a query (SELECT …), not `{}`",
                    crate::error::excerpt(sql)
                )));
            }
            let optimized = state.optimize(&unoptimized)?;
            let plan = Lowerer::new(source).lower(&optimized)?;
            let schema: SchemaRef = Arc::new(optimized.schema().as_arrow().clone());
            Ok((plan, schema))
        })?;
        let mut reads = Vec::new();
        dependencies(&plan, &mut reads);
        self.ctx
            .register_table(TableReference::bare(name), Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?))?;
        self.views.push(ViewDef { name: name.to_owned(), sql: sql.to_owned(), plan, schema, reads });
        Ok(self.views.last().expect("just pushed"))
    }

    /// Drops a view, by its resolved name (as [`parse_statement`] resolves it).
    ///
    /// Errors: unknown view (unless `if_exists`), or another view reads it.
    pub fn drop(&mut self, name: &str, if_exists: bool) -> Result<()> {
        let name = name.to_owned();
        let Some(i) = self.views.iter().position(|v| v.name == name) else {
            return if if_exists {
                Ok(())
            } else {
                Err(DataFusionError::Plan(format!("no materialized view named `{name}`")))
            };
        };
        if let Some(reader) = self.views.iter().find(|v| v.reads.contains(&name)) {
            return Err(DataFusionError::Plan(format!("view `{}` reads `{name}`; drop it first", reader.name)));
        }
        self.views.remove(i);
        self.ctx.deregister_table(TableReference::bare(name))?;
        Ok(())
    }
}
