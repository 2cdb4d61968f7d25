//! Reading only the fields a mapping names out of a JSON record, in one pass over its text.
//!
//! A `json` source's mapping names a few JSON pointers (RFC 6901). Parsing the whole record
//! into a [`Value`] first builds a map with an owned key and an owned value for every field,
//! most of which no column reads. [`FieldTree::read`] instead walks the record's text once
//! with serde_json's deserializer: a field on a mapped path is descended into, a mapped value
//! is built as a [`Value`], and every other field is read and dropped without being built
//! ([`Skip`]). The record is checked exactly as parsing it whole checks it: its syntax, string
//! escapes (a lone UTF-16 surrogate is an error), numbers in range and nesting no deeper than
//! 128 (serde_json's limit) apply to the fields no column reads too (serde's `IgnoredAny`
//! checks only the syntax). What it returns for each pointer is what [`crate::json`]'s
//! `lookup` finds in the parsed record, with the same rules:
//! - a key that appears twice in an object: the last one counts (as `serde_json` keeps it);
//! - a pointer through an array (`/choices/0/text`) or into a value that is no object: the
//!   value at that step is built whole and the rest of the pointer looked up in it;
//! - a record that is not valid JSON, or not an object, reads as nothing
//!   ([`FieldTree::read`] returns `None`), so that its caller can parse it whole and report
//!   why, as before.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The pointers a decoder reads, as a tree of object keys; slot `i` is the `i`th pointer
/// given to [`FieldTree::new`].
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldTree {
    root: Node,
    slots: usize,
}

/// One step of the tree: the object key path from the record to here.
#[derive(Clone, Debug, Default)]
struct Node {
    /// Slots whose pointer ends here: they want this value whole.
    whole: Vec<usize>,
    /// Slots whose pointer goes on below here, with the rest of their pointer's (unescaped)
    /// tokens: looked up in this value when it is built whole (an array, or a value a slot
    /// also wants whole).
    below: Vec<(usize, Vec<String>)>,
    /// The keys read below here.
    children: Vec<(String, Node)>,
}

impl FieldTree {
    /// The tree of `pointers` (each `""` or starting with `/`; `~1` and `~0` escaped as RFC
    /// 6901 says).
    pub(crate) fn new<'p>(pointers: impl IntoIterator<Item = &'p str>) -> FieldTree {
        let mut tree = FieldTree::default();
        for (slot, pointer) in pointers.into_iter().enumerate() {
            tree.slots = slot + 1;
            let tokens: Vec<String> = if pointer.is_empty() {
                Vec::new()
            } else {
                pointer
                    .strip_prefix('/')
                    .unwrap_or(pointer)
                    .split('/')
                    .map(|t| t.replace("~1", "/").replace("~0", "~"))
                    .collect()
            };
            let mut node = &mut tree.root;
            for (depth, token) in tokens.iter().enumerate() {
                node.below.push((slot, tokens[depth..].to_vec()));
                let at = match node.children.iter().position(|(k, _)| k == token) {
                    Some(at) => at,
                    None => {
                        node.children.push((token.clone(), Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].1;
            }
            node.whole.push(slot);
        }
        tree
    }

    /// The value at each pointer in the record `text` (`None` where there is none), or `None`
    /// when `text` is not valid JSON or not a JSON object.
    pub(crate) fn read(&self, text: &str) -> Option<Vec<Option<Value>>> {
        let mut out = vec![None; self.slots];
        let mut de = serde_json::Deserializer::from_str(text);
        let object = NodeSeed { node: &self.root, out: &mut out }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        object.then_some(out)
    }
}

/// The value at `tokens` below `value`, as [`crate::json`]'s `lookup` finds it.
fn lookup<'v>(value: &'v Value, tokens: &[String]) -> Option<&'v Value> {
    let mut target = value;
    for token in tokens {
        target = match target {
            Value::Object(map) => map.get(token)?,
            Value::Array(list) => list.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(target)
}

/// Reads one value at `node` into `out`; answers whether it was an object.
struct NodeSeed<'n, 'o> {
    node: &'n Node,
    out: &'o mut [Option<Value>],
}

impl NodeSeed<'_, '_> {
    /// Fills the slots at and below the node from its value, built whole.
    fn fill(self, value: Value) -> bool {
        for (slot, tokens) in &self.node.below {
            self.out[*slot] = lookup(&value, tokens).cloned();
        }
        let object = value.is_object();
        if let Some((&last, others)) = self.node.whole.split_last() {
            for &slot in others {
                self.out[slot] = Some(value.clone());
            }
            self.out[last] = Some(value);
        }
        object
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        // A key seen again replaces what its earlier value gave.
        for (slot, _) in &self.node.below {
            self.out[*slot] = None;
        }
        if !self.node.whole.is_empty() {
            let value = Value::deserialize(deserializer)?;
            return Ok(self.fill(value));
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let children = &self.node.children;
        while let Some(child) = map.next_key_seed(KeySeed(children))? {
            match child {
                Some(at) => {
                    map.next_value_seed(NodeSeed { node: &children[at].1, out: &mut *self.out })?;
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(self.fill(value))
    }

    // Scalars: nothing is below them (the slots below were cleared).
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Reads a value and drops it, building nothing, through the deserializer's `deserialize_any`:
/// so it is checked as parsing it into a [`Value`] checks it (escapes, numbers, depth).
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Reads an object's key: the position of the child it names, if any.
struct KeySeed<'n>(&'n [(String, Node)]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(k, _)| k == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What parsing the record whole and looking each pointer up gives (`Value::pointer`,
    /// RFC 6901), against which the walk is checked.
    fn whole(text: &str, pointers: &[&str]) -> Option<Vec<Option<Value>>> {
        let v: Value = serde_json::from_str(text).ok()?;
        v.is_object().then(|| pointers.iter().map(|p| v.pointer(p).cloned()).collect())
    }

    fn check(text: &str, pointers: &[&str]) {
        let tree = FieldTree::new(pointers.iter().copied());
        assert_eq!(tree.read(text), whole(text, pointers), "{text} at {pointers:?}");
    }

    #[test]
    fn reads_what_the_pointers_find() {
        let record = json!({
            "a": 1, "b": "two", "c": {"d": [10, {"e": "deep"}], "f": null, "g": {"h": true}},
            "skip": {"big": [1, 2, 3, {"x": "y"}]}, "a/b": "slash", "m~n": "tilde", "": "empty key",
            "esc\"aped": "q", "unicode\u{e9}": "é"
        })
        .to_string();
        let pointers = [
            "/a",
            "/b",
            "/c",
            "/c/d",
            "/c/d/0",
            "/c/d/1/e",
            "/c/d/2",
            "/c/f",
            "/c/f/x",
            "/c/g/h",
            "/a/b",
            "/a~1b",
            "/m~0n",
            "/",
            "/missing",
            "/b/0",
            "/c/g",
            "/esc\"aped",
            "/unicode\u{e9}",
            "/a",
        ];
        check(&record, &pointers);
        let tree = FieldTree::new(pointers.iter().copied());
        let read = tree.read(&record).unwrap_or_default();
        assert_eq!(read[5], Some(json!("deep")));
        assert_eq!(read[11], Some(json!("slash")));
        assert_eq!(read[12], Some(json!("tilde")));
        assert_eq!(read[13], Some(json!("empty key")));
        assert_eq!(read[14], None);
    }

    #[test]
    fn the_last_of_a_repeated_key_counts() {
        // serde_json keeps the last value of a repeated key: so does the walk, also below it.
        check(r#"{"a": {"x": 1, "y": 2}, "a": {"y": 3}}"#, &["/a/x", "/a/y"]);
        check(r#"{"a": {"x": 1}, "a": 7}"#, &["/a/x", "/a"]);
        check(r#"{"a": [1, 2], "a": {"0": "zero"}}"#, &["/a/0"]);
        check(r#"{"k": 1, "k": 2}"#, &["/k"]);
    }

    /// What parsing the record whole refuses, the walk refuses, also in fields no pointer
    /// reads (found by a differential test against the whole parse): a lone UTF-16
    /// surrogate, and nesting deeper than serde_json's limit of 128.
    #[test]
    fn refuses_what_parsing_refuses_in_fields_not_read() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let records = [
            r#"{"a": 1, "u": "\ud800"}"#.to_owned(),
            r#"{"a": 1, "u": "\udc00"}"#.to_owned(),
            r#"{"a": 1, "u": "\ud83d\u0041"}"#.to_owned(),
            r#"{"a": 1, "u": {"\udfff": [1]}}"#.to_owned(),
            r#"{"b": {"c": "x", "z": "\ud800"}}"#.to_owned(),
            format!(r#"{{"a": 1, "u": {}}}"#, deep(130)),
            format!(r#"{{"u": {}, "a": 1}}"#, deep(1000)),
            format!(r#"{{"b": {{"q": {}, "c": "x"}}}}"#, deep(127)),
        ];
        for text in &records {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            assert_eq!(FieldTree::new(["/a", "/b/c"]).read(text), None, "{text}");
        }
        // Within the limit, and a valid surrogate pair: read.
        let fine = format!(r#"{{"a": 1, "u": {}, "p": "\ud83d\ude00"}}"#, deep(120));
        check(&fine, &["/a", "/p"]);
        assert_eq!(FieldTree::new(["/a"]).read(&fine), Some(vec![Some(json!(1))]));
    }

    #[test]
    fn escaped_keys_and_text() {
        check(r#"{"tr\u0061ce": "\u00e9\n", "x": "a\"b"}"#, &["/trace", "/x"]);
    }

    #[test]
    fn not_an_object_or_not_json_reads_as_nothing() {
        for text in ["[1, 2]", "\"s\"", "3", "null", "true", "{\"a\": 1", "{\"a\": 1} x", "{\"a\": tru}", "", "{,}"] {
            assert_eq!(FieldTree::new(["/a"]).read(text), None, "{text}");
        }
        // Invalid JSON inside a skipped field is still invalid.
        assert_eq!(FieldTree::new(["/a"]).read(r#"{"a": 1, "b": [1, 2,]}"#), None);
        assert_eq!(FieldTree::new(["/a"]).read(r#"{"a": 1, "b": 01}"#), None);
        assert_eq!(FieldTree::new(["/a"]).read(" {\"a\": 1} \n"), Some(vec![Some(json!(1))]));
    }

    #[test]
    fn numbers_keep_their_kind() {
        check(r#"{"i": -3, "u": 18446744073709551615, "f": 1.5e3, "n": -0.0}"#, &["/i", "/u", "/f", "/n"]);
        // A number out of f64's range is refused, read or not, as parsing the record refuses it.
        assert_eq!(FieldTree::new(["/big"]).read(r#"{"big": 1e400}"#), None);
        assert_eq!(FieldTree::new(["/a"]).read(r#"{"a": 1, "big": 1e400}"#), None);
        assert_eq!(FieldTree::new(["/a"]).read(r#"{"a": 1, "big": -1e400}"#), None);
        check(r#"{"f": 0.1, "e": 2E-2, "huge": 123456789012345678901234567890}"#, &["/f", "/e", "/huge"]);
    }
}
