//! Error messages for people: each error once, without Rust `Debug` formatting.
//!
//! A [`DataFusionError`] nests: a `Context` ("Optimizer rule … failed") wraps an Arrow error,
//! a `Diagnostic` wraps a schema error, and the `Display` of each level repeats the levels
//! below it; printing the chain (as `anyhow`'s `{:#}` does) therefore says the same thing two
//! or three times. [`message`] says it once: the innermost error's own text, where in the
//! statement it is (line and column, when DataFusion knows), and any hint DataFusion adds.
//! [`to_anyhow`] turns that into an error without a source chain, for callers that add their
//! own context ("query `q`: …"), and [`excerpt`] shortens SQL echoed in a message.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

use crate::parse::PARSER_RECURSION_LIMIT;

/// Longest SQL echoed in an error message, in characters (longer text ends with `…`).
pub const EXCERPT_CHARS: usize = 200;

/// `sql` as one line (runs of whitespace become one space), at most [`EXCERPT_CHARS`]
/// characters, ending with `…` when cut.
pub fn excerpt(sql: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for word in sql.split_whitespace() {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars == EXCERPT_CHARS {
                out.push('…');
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// The message of `e`, once: what went wrong (the innermost error's text, without
/// DataFusion's "Error during planning:" style prefixes), where (" at line L, column C" when
/// DataFusion located it), and DataFusion's hints. One line.
pub fn message(e: &DataFusionError) -> String {
    let root = e.find_root();
    let mut text = match root {
        DataFusionError::SQL(parser, _) => match parser.as_ref() {
            ParserError::ParserError(s) | ParserError::TokenizerError(s) => {
                format!("syntax error: {}", s.replace(" at Line: ", " at line ").replace(", Column: ", ", column "))
            }
            ParserError::RecursionLimitExceeded => format!(
                "syntax error: parentheses, function calls, subqueries, CASE or prefix operators \
                 (NOT, -) nested more than {PARSER_RECURSION_LIMIT} deep"
            ),
        },
        DataFusionError::SchemaError(schema, _) => schema.to_string(),
        DataFusionError::ArrowError(arrow, _) => arrow.to_string(),
        DataFusionError::NotImplemented(m) => format!("not supported: {m}"),
        DataFusionError::Internal(_) => root.to_string(),
        DataFusionError::Collection(errors) => match errors.first() {
            Some(first) => message(first),
            None => root.message().into_owned(),
        },
        other => other.message().into_owned(),
    };
    text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(diagnostic) = e.diagnostic() {
        if let Some(span) = diagnostic.span
            && span.start.line > 0
            && !text.contains(" at line ")
        {
            text = with_position(&text, &format!(" at line {}, column {}", span.start.line, span.start.column));
        }
        for help in &diagnostic.helps {
            if !text.contains(help.message.as_str()) {
                text = format!("{text} (hint: {})", help.message);
            }
        }
    }
    text
}

/// `text` with `position` after its first sentence (before the first ". " or a final ".").
fn with_position(text: &str, position: &str) -> String {
    let end = text.find(". ").or_else(|| text.strip_suffix('.').map(str::len)).unwrap_or(text.len());
    format!("{}{position}{}", &text[..end], &text[end..])
}

/// `e` as an [`anyhow::Error`] whose text is [`message`] and that has no source chain (so
/// `{:#}` prints the message once).
pub fn to_anyhow(e: DataFusionError) -> anyhow::Error {
    anyhow::Error::msg(message(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_one_line_and_cut_with_an_ellipsis() {
        assert_eq!(excerpt("SELECT a,\n       b\tFROM t"), "SELECT a, b FROM t");
        let long = format!("SELECT {}", "x".repeat(300));
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(cut, format!("SELECT {}…", "x".repeat(EXCERPT_CHARS - 7)));
    }

    #[test]
    fn the_position_goes_after_the_first_sentence() {
        assert_eq!(
            with_position("No field named x. Valid fields are a.", " at line 1, column 8"),
            "No field named x at line 1, column 8. Valid fields are a."
        );
        assert_eq!(
            with_position("table 't' not found", " at line 2, column 3"),
            "table 't' not found at line 2, column 3"
        );
        assert_eq!(with_position("one sentence.", " at line 1, column 1"), "one sentence at line 1, column 1.");
    }

    #[test]
    fn wrapped_errors_say_their_message_once() {
        let arrow = DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::DivideByZero), None);
        assert_eq!(message(&arrow), "Divide by zero error");
        let wrapped = DataFusionError::Context("Optimizer rule 'x' failed".into(), Box::new(arrow));
        assert_eq!(message(&wrapped), "Divide by zero error");
        let plan = DataFusionError::Plan("table 'x' not found".into());
        assert_eq!(message(&plan), "table 'x' not found");
        assert_eq!(format!("{:#}", to_anyhow(plan).context("query `q`")), "query `q`: table 'x' not found");
        let parser = DataFusionError::SQL(
            Box::new(ParserError::ParserError("Expected: an SQL statement, found: SELEC at Line: 1, Column: 1".into())),
            None,
        );
        assert_eq!(message(&parser), "syntax error: Expected: an SQL statement, found: SELEC at line 1, column 1");
    }
}
