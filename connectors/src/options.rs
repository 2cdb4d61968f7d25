//! Reading and validating a format's options (a TOML table converted to JSON), and field
//! paths (a plain field name or an RFC 6901 JSON pointer).

use serde_json::{Map, Value};

use crate::ConfigError;

/// A format's options: checks types, and at [`Options::finish`] rejects options the format
/// did not ask for.
pub(crate) struct Options<'a> {
    format: &'static str,
    map: Option<&'a Map<String, Value>>,
    known: Vec<&'static str>,
}

impl<'a> Options<'a> {
    /// Wraps `options` (`Null` and `{}` mean "no options").
    pub(crate) fn new(format: &'static str, options: &'a Value) -> Result<Options<'a>, ConfigError> {
        let map = match options {
            Value::Null => None,
            Value::Object(m) => Some(m),
            other => {
                return Err(bad("options", format!("must be a table, found {}", crate::short(other))));
            }
        };
        Ok(Options { format, map, known: Vec::new() })
    }

    /// The raw value of option `name` (None when absent or null).
    pub(crate) fn value(&mut self, name: &'static str) -> Option<&'a Value> {
        self.known.push(name);
        self.map.and_then(|m| m.get(name)).filter(|v| !v.is_null())
    }

    /// A string option.
    pub(crate) fn string(&mut self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.value(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(name, format!("expected a string, found {}", crate::short(other)))),
        }
    }

    /// An array-of-strings option.
    pub(crate) fn strings(&mut self, name: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.value(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => {
                        Err(bad(name, format!("expected an array of strings, found element {}", crate::short(other))))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(bad(name, format!("expected an array of strings, found {}", crate::short(other)))),
        }
    }

    /// Fails on any option that was not asked for with [`Options::value`] & co.
    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        if let Some(map) = self.map
            && let Some(unknown) = map.keys().find(|k| !self.known.contains(&k.as_str()))
        {
            return Err(ConfigError::UnknownOption {
                format: self.format.to_owned(),
                option: unknown.clone(),
                known: self.known.join(", "),
            });
        }
        Ok(())
    }
}

/// Shorthand for [`ConfigError::BadOption`].
pub(crate) fn bad(option: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadOption { option: option.to_owned(), reason: reason.into() }
}

/// Where a value is in a record: a top-level field name, or an RFC 6901 JSON pointer
/// (written with a leading `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FieldPath {
    /// A top-level field of an object.
    Key(String),
    /// A JSON pointer, e.g. `/meta/offset`.
    Pointer(String),
}

impl FieldPath {
    /// `Pointer` when `s` starts with `/`, else `Key`; an empty string is an error.
    pub(crate) fn parse(option: &str, s: &str) -> Result<FieldPath, ConfigError> {
        if s.is_empty() {
            Err(bad(option, "a field name or JSON pointer must not be empty"))
        } else if s.starts_with('/') {
            Ok(FieldPath::Pointer(s.to_owned()))
        } else {
            Ok(FieldPath::Key(s.to_owned()))
        }
    }

    /// The value at this path; `None` when missing.
    pub(crate) fn get<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        match self {
            FieldPath::Key(k) => v.as_object().and_then(|o| o.get(k)),
            FieldPath::Pointer(p) => v.pointer(p),
        }
    }

    /// The field's name: the key, or the last token of the pointer (unescaped).
    pub(crate) fn name(&self) -> String {
        match self {
            FieldPath::Key(k) => k.clone(),
            FieldPath::Pointer(p) => {
                let last = p.rsplit('/').next().unwrap_or(p);
                last.replace("~1", "/").replace("~0", "~")
            }
        }
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldPath::Key(k) | FieldPath::Pointer(k) => f.write_str(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_paths() {
        let v = json!({"a": {"b/c": 1, "d~e": 2}, "x": 3});
        let key = FieldPath::parse("o", "x").ok();
        assert_eq!(key.as_ref().and_then(|p| p.get(&v)), Some(&json!(3)));
        let p = FieldPath::parse("o", "/a/b~1c").ok();
        assert_eq!(p.as_ref().and_then(|p| p.get(&v)), Some(&json!(1)));
        assert_eq!(p.map(|p| p.name()).as_deref(), Some("b/c"));
        let p = FieldPath::parse("o", "/a/d~0e").ok();
        assert_eq!(p.as_ref().and_then(|p| p.get(&v)), Some(&json!(2)));
        assert_eq!(p.map(|p| p.name()).as_deref(), Some("d~e"));
        assert!(FieldPath::parse("o", "").is_err());
        // A key is a top-level field only; it is not split on '/'.
        let k = FieldPath::parse("o", "a").ok();
        let arr = json!([1]);
        assert_eq!(k.as_ref().and_then(|p| p.get(&arr)), None);
    }

    #[test]
    fn options_types_and_unknown() {
        let v = json!({"s": "x", "l": ["a", "b"], "n": 1});
        let mut o = Options::new("f", &v).expect("table");
        assert_eq!(o.string("s").ok().flatten().as_deref(), Some("x"));
        assert_eq!(o.strings("l").ok().flatten(), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(
            o.string("n").err().map(|e| e.to_string()).as_deref(),
            Some("option `n`: expected a string, found 1")
        );
        assert!(o.finish().is_ok());
        let mut o = Options::new("f", &v).expect("table");
        let _ = o.string("s");
        assert_eq!(
            o.finish().err().map(|e| e.to_string()).as_deref(),
            Some("unknown option `l` for format `f` (known options: s)")
        );
    }
}
