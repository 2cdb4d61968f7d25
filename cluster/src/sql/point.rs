//! Point queries answered without DataFusion: `SELECT * | column, … FROM collection WHERE
//! column = literal [AND column = literal …]` is one peek of the collection's rows that pass
//! the equalities (evaluated on the workers; a seek when the first is on the collection's
//! first column), projected to the columns, and turned into one Arrow batch. No planner,
//! optimizer or executor stands between the arrangements and the answer — Materialize answers
//! the same shape by a "fast path" peek (`FastPathPlan::PeekExisting` in
//! `src/adapter/src/coord/peek.rs`).
//!
//! The answer is DataFusion's to the row and to the schema: the statement is recognised only
//! when every part of it means exactly what the peek does — bare column names that resolve
//! (after DataFusion's normalisation: unquoted names lowercased) to distinct columns of one
//! collection, literals of the column's own type compared as the peek compares (`BIGINT`
//! integers, `TEXT` strings, `BOOLEAN`s; not `DOUBLE`, whose `NaN` and `-0.0` SQL compares its
//! own way), and nothing else: no alias, qualifier, `DISTINCT`, `ORDER BY`, `LIMIT`,
//! parentheses or other clause. Anything else is planned by DataFusion as always.

use amx_dataflows::row::Datum;
use amx_sql::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Ident, ObjectNamePart, SelectItem, SetExpr, Statement, TableFactor, Value,
};

/// A point query: what to peek, and the answer's columns.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PointQuery {
    /// The collection read.
    pub(crate) collection: String,
    /// The answer's columns, as positions in the collection's rows (all of them, in order, for
    /// `*`).
    pub(crate) projection: Vec<usize>,
    /// `(column position, value)`: the rows whose column equals the value, for every pair.
    pub(crate) filter: Vec<(usize, Datum)>,
    /// The answer's schema: the collection's, projected.
    pub(crate) schema: SchemaRef,
}

/// `statement` as a point query, when it is one (see the [module docs](self)); `schema_of`
/// gives a collection's schema by name (`None`: no such collection, or not one the workers
/// hold). `params` are the values of `$1`, `$2`, … (a prepared statement's): a parameter is
/// a literal of its value's type, and every one must be compared with a column.
pub(crate) fn point_query(
    statement: &DfStatement,
    schema_of: impl Fn(&str) -> Option<SchemaRef>,
    params: &[ScalarValue],
) -> Option<PointQuery> {
    let DfStatement::Statement(statement) = statement else { return None };
    let Statement::Query(query) = statement.as_ref() else { return None };
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    let [from] = select.from.as_slice() else { return None };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, alias: None, args: None, with_hints, version: None, partitions, .. } =
        &from.relation
    else {
        return None;
    };
    if !with_hints.is_empty() || !partitions.is_empty() {
        return None;
    }
    let [ObjectNamePart::Identifier(table)] = name.0.as_slice() else { return None };
    let collection = normalize(table);
    let schema = schema_of(&collection)?;
    let column = |ident: &Ident| schema.index_of(&normalize(ident)).ok();

    let projection: Vec<usize> = match select.projection.as_slice() {
        [SelectItem::Wildcard(options)] if *options == Default::default() => (0..schema.fields().len()).collect(),
        items => items
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(Expr::Identifier(ident)) => column(ident),
                _ => None,
            })
            .collect::<Option<_>>()?,
    };
    // DataFusion refuses two answer columns of one name; that error is its to give.
    if (1..projection.len()).any(|i| projection[..i].contains(&projection[i])) {
        return None;
    }

    let mut filter = Vec::new();
    let mut used = Vec::new();
    equalities(select.selection.as_ref()?, &mut |ident, value| {
        let index = column(ident)?;
        let ty = schema.field(index).data_type();
        let datum = match value {
            Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                used.push(n);
                parameter(ty, params.get(n.checked_sub(1)?)?)?
            }
            value => literal(ty, value)?,
        };
        filter.push((index, datum));
        Some(())
    })?;
    // Every parameter given is used (DataFusion's to complain about otherwise).
    used.sort_unstable();
    used.dedup();
    if used != (1..=params.len()).collect::<Vec<_>>() {
        return None;
    }

    // Every clause the statement may have beyond these shows in its text: a statement whose
    // text is not exactly the one these parts make has another clause, and is not a point
    // query.
    let items: Vec<String> = select.projection.iter().map(ToString::to_string).collect();
    let expected = format!("SELECT {} FROM {} WHERE {}", items.join(", "), name, select.selection.as_ref()?);
    if statement.to_string() != expected {
        return None;
    }
    let schema = std::sync::Arc::new(schema.project(&projection).ok()?);
    Some(PointQuery { collection, projection, filter, schema })
}

/// Calls `each` with every `column = literal` (or `literal = column`) of a conjunction of them;
/// `None` when `expr` is anything else or `each` refuses one.
fn equalities(expr: &Expr, each: &mut impl FnMut(&Ident, &Value) -> Option<()>) -> Option<()> {
    let Expr::BinaryOp { left, op, right } = expr else { return None };
    match (left.as_ref(), op, right.as_ref()) {
        (left, BinaryOperator::And, right) => {
            equalities(left, each)?;
            equalities(right, each)
        }
        (Expr::Identifier(column), BinaryOperator::Eq, Expr::Value(value))
        | (Expr::Value(value), BinaryOperator::Eq, Expr::Identifier(column)) => each(column, &value.value),
        _ => None,
    }
}

/// A literal compared with a column of type `ty`, when it is of that type and compares in
/// the peek as in SQL (see the [module docs](self)).
fn literal(ty: &DataType, value: &Value) -> Option<Datum> {
    Some(match (ty, value) {
        (DataType::Int64, Value::Number(n, false)) => Datum::Int(n.parse().ok()?),
        (DataType::Utf8, Value::SingleQuotedString(s)) => Datum::Text(s.clone()),
        (DataType::Boolean, Value::Boolean(b)) => Datum::Bool(*b),
        _ => return None,
    })
}

/// A parameter's value compared with a column of type `ty`, as [`literal`]; not NULL (which
/// equals nothing: DataFusion's to answer).
fn parameter(ty: &DataType, value: &ScalarValue) -> Option<Datum> {
    Some(match (ty, value) {
        (DataType::Int64, ScalarValue::Int64(Some(v))) => Datum::Int(*v),
        (
            DataType::Utf8,
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
        ) => Datum::Text(s.clone()),
        (DataType::Boolean, ScalarValue::Boolean(Some(b))) => Datum::Bool(*b),
        _ => return None,
    })
}

/// A name as DataFusion resolves it (`enable_ident_normalization`, on by default): unquoted
/// names in lowercase, quoted ones as written.
fn normalize(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use amx_sql::arrow::datatypes::{Field, Schema};

    use super::*;

    fn schemas(name: &str) -> Option<SchemaRef> {
        (name == "docs").then(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("n", DataType::Int64, true),
                Field::new("ok", DataType::Boolean, true),
                Field::new("score", DataType::Float64, true),
                Field::new("Mixed", DataType::Utf8, true),
            ]))
        })
    }

    /// (collection, projection, filter, the answer's column names).
    type Recognised = (String, Vec<usize>, Vec<(usize, Datum)>, Vec<String>);

    fn point(sql: &str) -> Option<Recognised> {
        point_with(sql, &[])
    }

    fn point_with(sql: &str, params: &[ScalarValue]) -> Option<Recognised> {
        let statement = amx_sql::parse::parse(sql).expect("parses");
        point_query(&statement, schemas, params).map(|p| {
            let names = p.schema.fields().iter().map(|f| f.name().clone()).collect();
            (p.collection, p.projection, p.filter, names)
        })
    }

    #[test]
    fn point_queries_are_recognised_with_their_columns_and_values() {
        let text = |s: &str| Datum::Text(s.to_owned());
        assert_eq!(
            point("SELECT * FROM docs WHERE id = 'a'"),
            Some((
                "docs".into(),
                vec![0, 1, 2, 3, 4],
                vec![(0, text("a"))],
                vec!["id".into(), "n".into(), "ok".into(), "score".into(), "Mixed".into()]
            ))
        );
        assert_eq!(
            point("select N, id from DOCS where 7 = n and ok = true and id = 'it''s'"),
            Some((
                "docs".into(),
                vec![1, 0],
                vec![(1, Datum::Int(7)), (2, Datum::Bool(true)), (0, text("it's"))],
                vec!["n".into(), "id".into()]
            ))
        );
        assert_eq!(point(r#"SELECT "Mixed" FROM docs WHERE n = -0"#), None, "a negative literal is an expression");
        assert_eq!(
            point(r#"SELECT "Mixed" FROM docs WHERE "Mixed" = 'x'"#).map(|p| (p.1, p.2)),
            Some((vec![4], vec![(4, text("x"))]))
        );
    }

    #[test]
    fn parameters_are_values_of_their_columns_type() {
        let text = |s: &str| ScalarValue::Utf8(Some(s.to_owned()));
        assert_eq!(
            point_with("SELECT n FROM docs WHERE id = $2 AND n = $1", &[ScalarValue::Int64(Some(3)), text("a")])
                .map(|p| p.2),
            Some(vec![(0, Datum::Text("a".into())), (1, Datum::Int(3))])
        );
        assert_eq!(
            point_with("SELECT n FROM docs WHERE id = $1 AND id = $1", &[text("a")]).map(|p| p.2.len()),
            Some(2)
        );
        for (sql, params) in [
            // Of another type, NULL, missing, or given and not used.
            ("SELECT n FROM docs WHERE n = $1", vec![text("3")]),
            ("SELECT n FROM docs WHERE n = $1", vec![ScalarValue::Int32(Some(3))]),
            ("SELECT n FROM docs WHERE id = $1", vec![ScalarValue::Utf8(None)]),
            ("SELECT n FROM docs WHERE id = $2", vec![text("a"), text("b")]),
            ("SELECT n FROM docs WHERE id = $1", vec![]),
            ("SELECT n FROM docs WHERE id = 'a'", vec![text("a")]),
            ("SELECT n FROM docs WHERE id = $0", vec![text("a")]),
        ] {
            assert_eq!(point_with(sql, &params), None, "{sql} with {params:?}");
        }
    }

    #[test]
    fn anything_else_is_left_to_datafusion() {
        for sql in [
            "SELECT * FROM docs",
            "SELECT * FROM other WHERE id = 'a'",
            "SELECT * FROM docs WHERE nope = 'a'",
            "SELECT mixed FROM docs WHERE id = 'a'",
            "SELECT * FROM docs WHERE id = 1",
            "SELECT * FROM docs WHERE n = '1'",
            "SELECT * FROM docs WHERE n = 1.0",
            "SELECT * FROM docs WHERE n = 99999999999999999999",
            "SELECT * FROM docs WHERE score = 1",
            "SELECT * FROM docs WHERE id = NULL",
            "SELECT * FROM docs WHERE id = 'a' OR id = 'b'",
            "SELECT * FROM docs WHERE (id = 'a')",
            "SELECT * FROM docs WHERE id <> 'a'",
            "SELECT id, id FROM docs WHERE id = 'a'",
            "SELECT *, id FROM docs WHERE id = 'a'",
            "SELECT id AS x FROM docs WHERE id = 'a'",
            "SELECT docs.id FROM docs WHERE id = 'a'",
            "SELECT * EXCLUDE (n) FROM docs WHERE id = 'a'",
            "SELECT DISTINCT * FROM docs WHERE id = 'a'",
            "SELECT * FROM docs WHERE id = 'a' LIMIT 1",
            "SELECT * FROM docs WHERE id = 'a' ORDER BY n",
            "SELECT * FROM docs AS d WHERE id = 'a'",
            "SELECT * FROM public.docs WHERE id = 'a'",
            "SELECT * FROM docs, docs2 WHERE id = 'a'",
            "SELECT * FROM docs JOIN docs2 ON true WHERE id = 'a'",
            "SELECT id FROM docs WHERE id = 'a' GROUP BY id",
            "WITH d AS (SELECT * FROM docs) SELECT * FROM docs WHERE id = 'a'",
            "SELECT * FROM docs WHERE id = 'a' UNION ALL SELECT * FROM docs WHERE id = 'b'",
            "EXPLAIN SELECT * FROM docs WHERE id = 'a'",
        ] {
            assert_eq!(point(sql), None, "{sql}");
        }
    }
}
