//! What a statement sent over pgwire is: a query or view statement for the engine's SQL, or
//! one the front end answers itself (`SUBSCRIBE`, cursors, `SHOW`, `SET`, transactions).
//!
//! Statements are split and classified by a small lexer that knows PostgreSQL's quoting
//! (`'…'` with `''`, `E'…'`, `"…"`, `$tag$…$tag$`, `--` and `/* */` comments), so a `;` or a
//! keyword inside a string never splits or misleads.

use std::time::Duration;

/// A `SUBSCRIBE` (Materialize's syntax): `SUBSCRIBE [TO] name [WITH (SNAPSHOT [= bool],
/// PROGRESS [= bool])]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeSpec {
    /// The relation or view.
    pub view: String,
    /// Start with the contents (default true); false: only changes after now.
    pub snapshot: bool,
    /// Also emit a progress row (`aimatrix_progressed = true`) each time the view's
    /// frontier advances (default false).
    pub progress: bool,
}

/// What a cursor reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CursorBody {
    /// A subscription: `FETCH` waits for changes.
    Subscribe(SubscribeSpec),
    /// A query's answer, read once at `DECLARE`.
    Query(String),
}

/// A `SHOW`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Show {
    /// `SHOW VIEWS`: built-in and materialized views.
    Views,
    /// `SHOW MATERIALIZED VIEWS`: the views created by jobs and `CREATE MATERIALIZED VIEW`.
    MaterializedViews,
    /// `SHOW TABLES`: the canonical relations.
    Tables,
    /// `SHOW SOURCES`: every running job's sources.
    Sources,
    /// `SHOW JOBS`.
    Jobs,
    /// `SHOW COLUMNS FROM name`.
    Columns(String),
    /// `SHOW name`: a session setting.
    Setting(String),
    /// `SHOW ALL`: every setting.
    All,
}

/// What a transaction-control statement does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Txn {
    /// Not one.
    None,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END` / `ROLLBACK` / `ABORT`.
    End,
}

/// One classified statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// A query (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`, `TABLE`) or
    /// `CREATE`/`DROP MATERIALIZED VIEW`: the engine's SQL.
    Sql(String),
    /// `SUBSCRIBE …` (bare: rows streamed as a never-ending result) or
    /// `COPY (SUBSCRIBE …) TO STDOUT` (`copy`: lines, flushed as they come).
    Subscribe {
        /// What to subscribe to.
        spec: SubscribeSpec,
        /// Through `COPY … TO STDOUT`.
        copy: bool,
    },
    /// `COPY (query) TO STDOUT`.
    CopyQuery(String),
    /// `DECLARE name CURSOR FOR …`.
    Declare {
        /// Cursor name.
        cursor: String,
        /// What it reads.
        body: CursorBody,
    },
    /// `FETCH [count | ALL | NEXT] [FROM] name [WITH (timeout = '1s')]`.
    Fetch {
        /// Cursor name.
        cursor: String,
        /// At most this many rows (`None`: `ALL`).
        count: Option<usize>,
        /// Wait at most this long for a first row (`None`: until one comes).
        timeout: Option<Duration>,
    },
    /// `CLOSE name` (`None`: `CLOSE ALL`).
    Close(Option<String>),
    /// `SHOW …`.
    Show(Show),
    /// `SET name = value` / `SET name TO value` / `SET SESSION …` (`RESET name`: value `None`).
    Set {
        /// Setting name, lower case.
        name: String,
        /// Its new value (`None`: back to its default).
        value: Option<String>,
    },
    /// Statements acknowledged with their tag and nothing else (`DISCARD ALL`, `DEALLOCATE`,
    /// `LISTEN`, `UNLISTEN`, transaction control), with what they do to the transaction.
    Tag {
        /// The command tag.
        tag: String,
        /// Transaction effect.
        txn: Txn,
    },
}

/// A token with its byte range in the statement.
#[derive(Clone, Debug, PartialEq)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// An unquoted word (keyword or name), as written.
    Word(String),
    /// A quoted identifier's contents.
    Quoted(String),
    /// A string literal's contents.
    Str(String),
    /// A number.
    Number(String),
    /// Punctuation: `(`, `)`, `,`, `=`, `;`, `.` or any other single character.
    Punct(char),
}

/// Splits `sql` into tokens; comments and whitespace are dropped.
fn lex(sql: &str) -> Result<Vec<Token>, String> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            loop {
                if i + 1 >= bytes.len() {
                    return Err("unterminated /* comment".into());
                }
                if bytes[i] == b'/' && bytes[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' || ((c == b'E' || c == b'e') && bytes.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            let mut text = Vec::new();
            loop {
                match bytes.get(i) {
                    None => return Err(format!("unterminated string starting at offset {start}")),
                    Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                        text.push(b'\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if escapes && i + 1 < bytes.len() => {
                        text.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(b) => {
                        text.push(*b);
                        i += 1;
                    }
                }
            }
            tokens.push(Token { kind: Kind::Str(String::from_utf8_lossy(&text).into_owned()), start, end: i });
        } else if c == b'"' {
            i += 1;
            let mut text = Vec::new();
            loop {
                match bytes.get(i) {
                    None => return Err(format!("unterminated quoted identifier starting at offset {start}")),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        text.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b) => {
                        text.push(*b);
                        i += 1;
                    }
                }
            }
            tokens.push(Token { kind: Kind::Quoted(String::from_utf8_lossy(&text).into_owned()), start, end: i });
        } else if c == b'$' && dollar_tag(&bytes[i..]).is_some() {
            let tag = dollar_tag(&bytes[i..]).unwrap_or_default();
            let body = i + tag.len();
            let close = sql[body..].find(std::str::from_utf8(tag).unwrap_or("$$"));
            let Some(close) = close else {
                return Err(format!("unterminated dollar-quoted string starting at offset {start}"));
            };
            i = body + close + tag.len();
            tokens.push(Token { kind: Kind::Str(sql[body..body + close].to_owned()), start, end: i });
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$' || bytes[i] >= 0x80)
            {
                i += 1;
            }
            tokens.push(Token { kind: Kind::Word(sql[start..i].to_owned()), start, end: i });
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            tokens.push(Token { kind: Kind::Number(sql[start..i].to_owned()), start, end: i });
        } else {
            // One character (a multi-byte one whole).
            let ch = sql[i..].chars().next().unwrap_or('?');
            i += ch.len_utf8();
            tokens.push(Token { kind: Kind::Punct(ch), start, end: i });
        }
    }
    Ok(tokens)
}

/// `$tag$` at the start of `bytes` (tag: letters, digits, `_`, not starting with a digit).
fn dollar_tag(bytes: &[u8]) -> Option<&[u8]> {
    let mut j = 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
        j += 1;
    }
    (j < bytes.len() && bytes[j] == b'$' && !bytes.get(1).is_some_and(u8::is_ascii_digit)).then(|| &bytes[..=j])
}

/// Splits a simple-query string into its statements (at `;` outside quotes and comments),
/// each trimmed; empty statements are dropped.
///
/// # Errors
/// An unterminated string, quoted identifier or comment.
pub fn split(sql: &str) -> Result<Vec<String>, String> {
    let tokens = lex(sql)?;
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    for t in &tokens {
        if t.kind == Kind::Punct(';') {
            if let Some(s) = start.take() {
                out.push(sql[s..end].to_owned());
            }
        } else {
            start.get_or_insert(t.start);
            end = t.end;
        }
    }
    if let Some(s) = start {
        out.push(sql[s..end].to_owned());
    }
    Ok(out)
}

struct Cursor<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl Cursor<'_> {
    fn peek_word(&self) -> Option<String> {
        match &self.tokens.get(self.at)?.kind {
            Kind::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        }
    }
    fn keyword(&mut self, word: &str) -> bool {
        if self.peek_word().as_deref() == Some(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn punct(&mut self, c: char) -> bool {
        if self.tokens.get(self.at).map(|t| &t.kind) == Some(&Kind::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn done(&self) -> bool {
        self.at >= self.tokens.len()
    }
    /// A name: an unquoted word folded to lower case, or a quoted identifier as written; a
    /// qualified `schema.name` gives `name`.
    fn name(&mut self) -> Option<String> {
        let mut name = None;
        loop {
            let part = match &self.tokens.get(self.at)?.kind {
                Kind::Word(w) => w.to_lowercase(),
                Kind::Quoted(q) => q.clone(),
                _ => return name,
            };
            self.at += 1;
            name = Some(part);
            if !self.punct('.') {
                return name;
            }
        }
    }
    /// The text from the current token to the end.
    fn rest(&self) -> &str {
        self.tokens.get(self.at).map_or("", |t| self.sql[t.start..].trim())
    }
    /// A value: a word, string or number, as text.
    fn value(&mut self) -> Option<String> {
        let v = match &self.tokens.get(self.at)?.kind {
            Kind::Word(w) => w.clone(),
            Kind::Quoted(q) | Kind::Str(q) | Kind::Number(q) => q.clone(),
            Kind::Punct('-') => {
                self.at += 1;
                return self.value().map(|v| format!("-{v}"));
            }
            Kind::Punct(_) => return None,
        };
        self.at += 1;
        Some(v)
    }
    /// `WITH (name [= value], …)` if there: the options, names lower case.
    fn options(&mut self) -> Result<Vec<(String, Option<String>)>, String> {
        let mut out = Vec::new();
        if !self.keyword("WITH") {
            return Ok(out);
        }
        if !self.punct('(') {
            return Err("expected ( after WITH".into());
        }
        loop {
            let name = self.name().ok_or("expected an option name in WITH (…)")?;
            let value = if self.punct('=') { Some(self.value().ok_or("expected a value after =")?) } else { None };
            out.push((name, value));
            if self.punct(')') {
                return Ok(out);
            }
            if !self.punct(',') {
                return Err("expected , or ) in WITH (…)".into());
            }
        }
    }
}

fn boolean(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true" | "on" | "1" | "yes") => Ok(true),
        Some("false" | "off" | "0" | "no") => Ok(false),
        Some(v) => Err(format!("option {name} must be a boolean, not {v:?}")),
    }
}

/// Parses what follows `SUBSCRIBE`.
fn subscribe(c: &mut Cursor<'_>) -> Result<SubscribeSpec, String> {
    c.keyword("TO");
    if c.punct('(') {
        return Err("SUBSCRIBE reads a relation or view by name (SUBSCRIBE TO name); create a materialized \
                    view for a query and subscribe to it"
            .into());
    }
    let view = c.name().ok_or("SUBSCRIBE needs a relation or view name")?;
    let mut spec = SubscribeSpec { view, snapshot: true, progress: false };
    for (name, value) in c.options()? {
        match name.as_str() {
            "snapshot" => spec.snapshot = boolean("SNAPSHOT", value.as_deref())?,
            "progress" => spec.progress = boolean("PROGRESS", value.as_deref())?,
            other => return Err(format!("unknown SUBSCRIBE option {other:?} (SNAPSHOT and PROGRESS are known)")),
        }
    }
    if !c.done() {
        return Err(format!("unexpected {:?} after SUBSCRIBE {}", c.rest(), spec.view));
    }
    Ok(spec)
}

/// A timeout as Materialize's `FETCH … WITH (timeout = …)` takes it: `'1s'`, `'500ms'`,
/// `'2 minutes'`, `'1d'`, `'0'`, or a number of seconds (the units of `statement_timeout` too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "us" | "microsecond" | "microseconds" => n / 1e6,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86_400.0,
        u => return Err(format!("invalid duration {text:?}: unknown unit {u:?}")),
    };
    if !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Classifies one statement (no `;` inside).
///
/// # Errors
/// A statement this front end does not take, or a malformed one of its own statements, with
/// the reason.
pub fn classify(sql: &str) -> Result<Statement, String> {
    let tokens = lex(sql)?;
    let mut c = Cursor { sql, tokens, at: 0 };
    let first = c.peek_word();
    let Some(first) = first else {
        if c.tokens.first().map(|t| &t.kind) == Some(&Kind::Punct('(')) {
            return Ok(Statement::Sql(sql.to_owned()));
        }
        return Err(format!("syntax error at or near {:?}", c.rest().chars().take(20).collect::<String>()));
    };
    c.at += 1;
    let tag = |tag: &str, txn: Txn| Ok(Statement::Tag { tag: tag.to_owned(), txn });
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" | "EXPLAIN" | "TABLE" | "CREATE" | "DROP" => Ok(Statement::Sql(sql.to_owned())),
        "SUBSCRIBE" => Ok(Statement::Subscribe { spec: subscribe(&mut c)?, copy: false }),
        "COPY" => {
            if !c.punct('(') {
                return Err("only COPY (SUBSCRIBE …) TO STDOUT and COPY (query) TO STDOUT are supported".into());
            }
            let open = c.at;
            let mut depth = 1;
            while depth > 0 {
                match c.tokens.get(c.at).map(|t| &t.kind) {
                    None => return Err("unbalanced ( in COPY".into()),
                    Some(Kind::Punct('(')) => depth += 1,
                    Some(Kind::Punct(')')) => depth -= 1,
                    _ => {}
                }
                c.at += 1;
            }
            let close = c.at - 1;
            if close == open {
                return Err("COPY () needs a statement".into());
            }
            let inner = &sql[c.tokens[open].start..c.tokens[close].start];
            if !(c.keyword("TO") && c.keyword("STDOUT")) {
                return Err("COPY (…) writes only TO STDOUT".into());
            }
            for (name, value) in c.options()? {
                match (name.as_str(), value.as_deref().map(str::to_ascii_lowercase).as_deref()) {
                    ("format", Some("text")) => {}
                    ("format", v) => return Err(format!("COPY … TO STDOUT writes FORMAT text, not {v:?}")),
                    (other, _) => return Err(format!("unknown COPY option {other:?}")),
                }
            }
            if !c.done() {
                return Err(format!("unexpected {:?} after COPY … TO STDOUT", c.rest()));
            }
            match classify(inner)? {
                Statement::Subscribe { spec, .. } => Ok(Statement::Subscribe { spec, copy: true }),
                Statement::Sql(q) => Ok(Statement::CopyQuery(q)),
                _ => Err("COPY (…) TO STDOUT takes a SUBSCRIBE or a query".into()),
            }
        }
        "DECLARE" => {
            let cursor = c.name().ok_or("DECLARE needs a cursor name")?;
            while !c.keyword("CURSOR") {
                match c.peek_word().as_deref() {
                    Some("BINARY") => return Err("binary cursors are not supported".into()),
                    Some("INSENSITIVE" | "ASENSITIVE" | "NO" | "SCROLL") => c.at += 1,
                    _ => return Err("expected DECLARE name CURSOR FOR …".into()),
                }
            }
            if c.keyword("WITH") || c.keyword("WITHOUT") {
                c.keyword("HOLD");
            }
            if !c.keyword("FOR") {
                return Err("expected FOR after DECLARE … CURSOR".into());
            }
            let rest = c.rest().to_owned();
            let body = match classify(&rest)? {
                Statement::Subscribe { spec, copy: false } => CursorBody::Subscribe(spec),
                Statement::Sql(q) => CursorBody::Query(q),
                _ => return Err("a cursor reads a SUBSCRIBE or a query".into()),
            };
            Ok(Statement::Declare { cursor, body })
        }
        "FETCH" => {
            let forward_only = "a cursor moves forward only: FETCH takes a count of rows, ALL or NEXT";
            let positioned = ["BACKWARD", "PRIOR", "ABSOLUTE", "RELATIVE", "FIRST", "LAST"];
            if positioned.iter().any(|k| c.keyword(k)) || c.rest().trim_start().starts_with('-') {
                return Err(forward_only.into());
            }
            // `FORWARD n` is `n`; `FORWARD -n` goes back.
            if c.keyword("FORWARD") && c.rest().trim_start().starts_with('-') {
                return Err(forward_only.into());
            }
            let count = if c.keyword("ALL") {
                None
            } else if c.keyword("NEXT") {
                Some(1)
            } else if let Some(Kind::Number(n)) = c.tokens.get(c.at).map(|t| t.kind.clone()) {
                c.at += 1;
                Some(n.parse::<usize>().map_err(|_| format!("FETCH count {n:?} is not a row count"))?)
            } else {
                Some(1)
            };
            if !(c.keyword("FROM") || c.keyword("IN")) {
                // FETCH 5 c: allowed without FROM.
            }
            let cursor = c.name().ok_or("FETCH needs a cursor name")?;
            let mut timeout = None;
            for (name, value) in c.options()? {
                match name.as_str() {
                    "timeout" => {
                        timeout = Some(parse_duration(&value.ok_or("timeout needs a value, e.g. '1s'")?)?);
                    }
                    other => return Err(format!("unknown FETCH option {other:?} (timeout is known)")),
                }
            }
            if !c.done() {
                return Err(format!("unexpected {:?} after FETCH … {cursor}", c.rest()));
            }
            Ok(Statement::Fetch { cursor, count, timeout })
        }
        "CLOSE" => {
            if c.keyword("ALL") {
                return Ok(Statement::Close(None));
            }
            Ok(Statement::Close(Some(c.name().ok_or("CLOSE needs a cursor name")?)))
        }
        "SHOW" => {
            let what = c.peek_word().unwrap_or_default();
            let show = match what.as_str() {
                "VIEWS" => Show::Views,
                "MATERIALIZED" => Show::MaterializedViews,
                "TABLES" => Show::Tables,
                "SOURCES" => Show::Sources,
                "JOBS" => Show::Jobs,
                "ALL" => Show::All,
                "COLUMNS" => {
                    c.at += 1;
                    if !(c.keyword("FROM") || c.keyword("IN")) {
                        return Err("expected SHOW COLUMNS FROM name".into());
                    }
                    return Ok(Statement::Show(Show::Columns(c.name().ok_or("SHOW COLUMNS FROM needs a name")?)));
                }
                _ => {
                    let name = c.rest().trim_end_matches(';').trim().to_ascii_lowercase();
                    if name.is_empty() {
                        return Err("SHOW needs a name".into());
                    }
                    let name = name.trim_matches('"').to_owned();
                    return Ok(Statement::Show(Show::Setting(name)));
                }
            };
            Ok(Statement::Show(show))
        }
        "SET" => {
            if c.keyword("SESSION") {
                c.keyword("CHARACTERISTICS");
            }
            c.keyword("LOCAL");
            if c.keyword("TIME") && c.keyword("ZONE") {
                return Ok(Statement::Set { name: "timezone".into(), value: c.value() });
            }
            if c.peek_word().as_deref() == Some("TRANSACTION") || c.peek_word().as_deref() == Some("AS") {
                return tag("SET", Txn::None);
            }
            let name = c.name().ok_or("SET needs a setting name")?;
            if !(c.punct('=') || c.keyword("TO")) {
                return Err(format!("expected = or TO after SET {name}"));
            }
            let mut values = Vec::new();
            while let Some(v) = c.value() {
                values.push(v);
                if !c.punct(',') {
                    break;
                }
            }
            let value = if values.len() == 1 && values[0].eq_ignore_ascii_case("default") {
                None
            } else {
                Some(values.join(", "))
            };
            Ok(Statement::Set { name, value })
        }
        "RESET" => {
            let name = c.name().ok_or("RESET needs a setting name")?;
            Ok(Statement::Set { name, value: None })
        }
        "BEGIN" | "START" => tag("BEGIN", Txn::Begin),
        "COMMIT" | "END" => tag("COMMIT", Txn::End),
        "ROLLBACK" | "ABORT" => tag("ROLLBACK", Txn::End),
        "DISCARD" => tag("DISCARD ALL", Txn::None),
        "DEALLOCATE" => tag("DEALLOCATE", Txn::None),
        "LISTEN" => tag("LISTEN", Txn::None),
        "UNLISTEN" => tag("UNLISTEN", Txn::None),
        other => Err(format!(
            "{other} is not supported: AIMatrix answers queries (SELECT, WITH, VALUES, EXPLAIN), \
             CREATE/DROP MATERIALIZED VIEW, SUBSCRIBE, COPY (…) TO STDOUT, DECLARE/FETCH/CLOSE, SHOW, SET"
        )),
    }
}

/// At most this many bytes of a statement go into a span's `db.query.text`.
const MAX_QUERY_TEXT: usize = 2048;

/// `sql` as a span's `db.query.text` carries it: every literal's value (numbers and strings
/// of any quoting) replaced by `?`, comments dropped and runs of whitespace made one space, at
/// most [`MAX_QUERY_TEXT`] bytes (cut at a character, then `…`) — the OpenTelemetry database
/// conventions' *sanitization* (`docs/database/database-spans.md`: values a user would not put
/// in a trace stay out of it); a setting's value (`SET x = …`) is `?` whatever it is. A
/// statement that does not tokenize gives its first word only, and one that does not start as
/// a statement does (a password typed at the prompt) gives `?`.
pub fn sanitized(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let op = operation(sql);
    if op == "?" {
        return op;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return op;
    };
    // A setting's value, literal or not (`SET x = secret`), is a value.
    let mut setting_value = false;
    let mut out = String::new();
    for token in tokens {
        if setting_value {
            // One `?` for the whole value, whatever its tokens.
            match token {
                Token::Whitespace(_) if out.ends_with('?') || out.ends_with(' ') => {}
                Token::Whitespace(_) => out.push(' '),
                _ if out.ends_with('?') => {}
                _ => out.push('?'),
            }
            continue;
        }
        if (op == "SET" || op == "RESET")
            && (matches!(token, Token::Eq) || matches!(&token, Token::Word(w) if w.value.eq_ignore_ascii_case("to")))
        {
            setting_value = true;
        }
        match token {
            Token::Whitespace(_) => {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => out.push('?'),
            other => out.push_str(&other.to_string()),
        }
        if out.len() > MAX_QUERY_TEXT {
            let mut cut = MAX_QUERY_TEXT;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            return out;
        }
    }
    out.trim_end().to_owned()
}

/// The words a statement starts with that [`operation`] names it by.
const OPERATIONS: [&str; 30] = [
    "ABORT",
    "BEGIN",
    "CLOSE",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "INSERT",
    "MOVE",
    "PREPARE",
    "RESET",
    "ROLLBACK",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "SUBSCRIBE",
    "TABLE",
    "UPDATE",
    "VALUES",
    "WITH",
    "LISTEN",
];

/// The statement's first word, upper-cased (`SELECT`, `SUBSCRIBE`, …), as `db.operation.name`,
/// when it is a statement's (anything else — a password typed at the prompt — is not named:
/// `?`).
pub fn operation(sql: &str) -> String {
    let word: String = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(32)
        .collect::<String>()
        .to_ascii_uppercase();
    if OPERATIONS.contains(&word.as_str()) { word } else { "?".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let parts = split("SELECT ';' AS a; -- c;\nSELECT \"x;y\" FROM t /* ; */; ;").unwrap();
        assert_eq!(parts, vec!["SELECT ';' AS a", "SELECT \"x;y\" FROM t"]);
        assert_eq!(split("SELECT $$a;b$$").unwrap(), vec!["SELECT $$a;b$$"]);
        assert!(split("SELECT 'open").is_err());
    }

    #[test]
    fn classifies_subscribe_forms() {
        let spec = |view: &str, snapshot, progress| SubscribeSpec { view: view.into(), snapshot, progress };
        assert_eq!(
            classify("SUBSCRIBE TO tool_usage").unwrap(),
            Statement::Subscribe { spec: spec("tool_usage", true, false), copy: false }
        );
        assert_eq!(
            classify("copy (subscribe \"Tools\" with (snapshot = false, progress)) to stdout").unwrap(),
            Statement::Subscribe { spec: spec("Tools", false, true), copy: true }
        );
        assert_eq!(
            classify("DECLARE c CURSOR FOR SUBSCRIBE v").unwrap(),
            Statement::Declare { cursor: "c".into(), body: CursorBody::Subscribe(spec("v", true, false)) }
        );
        assert_eq!(
            classify("FETCH 10 c WITH (timeout = '1s')").unwrap(),
            Statement::Fetch { cursor: "c".into(), count: Some(10), timeout: Some(Duration::from_secs(1)) }
        );
        assert_eq!(
            classify("FETCH ALL FROM c").unwrap(),
            Statement::Fetch { cursor: "c".into(), count: None, timeout: None }
        );
        assert!(classify("SUBSCRIBE v WITH (bogus)").is_err());
        assert!(classify("SUBSCRIBE (SELECT 1)").is_err());
        // A day is 86,400 s, as statement_timeout reads it; cursors move forward only.
        assert_eq!(
            classify("FETCH FORWARD 3 c").unwrap(),
            Statement::Fetch { cursor: "c".into(), count: Some(3), timeout: None }
        );
        assert_eq!(
            classify("FETCH 1 c WITH (timeout = '1d')").unwrap(),
            Statement::Fetch { cursor: "c".into(), count: Some(1), timeout: Some(Duration::from_secs(86_400)) }
        );
        for backward in [
            "FETCH -1 c",
            "FETCH BACKWARD 2 FROM c",
            "FETCH PRIOR c",
            "FETCH FORWARD -1 c",
            "FETCH ABSOLUTE 1 c",
            "FETCH RELATIVE 2 FROM c",
            "FETCH FIRST c",
            "FETCH LAST IN c",
        ] {
            let error = classify(backward).expect_err(backward);
            assert!(error.contains("forward only"), "{backward}: {error}");
        }
    }

    #[test]
    fn classifies_show_set_and_sql() {
        assert_eq!(
            classify("SHOW COLUMNS FROM public.agent_traces").unwrap(),
            Statement::Show(Show::Columns("agent_traces".into()))
        );
        assert_eq!(
            classify("show transaction_isolation").unwrap(),
            Statement::Show(Show::Setting("transaction_isolation".into()))
        );
        assert_eq!(
            classify("SET extra_float_digits = 3").unwrap(),
            Statement::Set { name: "extra_float_digits".into(), value: Some("3".into()) }
        );
        assert_eq!(
            classify("SET application_name TO 'psql'").unwrap(),
            Statement::Set { name: "application_name".into(), value: Some("psql".into()) }
        );
        assert!(matches!(classify("  select 1").unwrap(), Statement::Sql(_)));
        assert!(
            matches!(classify("COPY (SELECT 1) TO STDOUT").unwrap(), Statement::CopyQuery(q) if q.trim() == "SELECT 1")
        );
        assert!(classify("INSERT INTO t VALUES (1)").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2 minutes").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn query_text_in_spans_carries_no_values() {
        let sql = "SELECT name, cost -- for 'acme'\n FROM  spans WHERE api_key = 'sk-secret' AND n > 42.5 \
                   AND t = E'x\\'y' AND d = $$dollar$$ /* x = 'y' */ AND \"Quoted\" = $1";
        assert_eq!(
            sanitized(sql),
            "SELECT name, cost FROM spans WHERE api_key = ? AND n > ? AND t = ? AND d = ? AND \"Quoted\" = $1"
        );
        assert_eq!(sanitized("SELECT 'open"), "SELECT", "what does not tokenize: its first word only");
        let long = format!("SELECT {} FROM t", "aé, ".repeat(1000));
        let cut = sanitized(&long);
        assert!(cut.len() <= MAX_QUERY_TEXT + '…'.len_utf8() && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(operation("  (select 1)"), "SELECT");
        assert_eq!(operation("subscribe to v"), "SUBSCRIBE");
        assert_eq!(operation("42"), "?");
        assert_eq!(operation("hunter2password is my secret"), "?");
        assert_eq!(sanitized("hunter2password is my secret"), "?", "not a statement: nothing of it");
        assert_eq!(sanitized("SET statement_timeout = SECRET_IDENT"), "SET statement_timeout = ?");
        assert_eq!(sanitized("SET application_name TO 'x', y"), "SET application_name TO ?");
    }
}
