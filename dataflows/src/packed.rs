//! Packed rows: a [`Row`]'s datums as one run of bytes, for the keys and values that
//! arrangements hold.
//!
//! A [`Row`] is a `Vec` of 32-byte [`Datum`]s with a heap `String` per text: an arrangement's
//! merge clones it with one allocation per row and one more per text, compares it datum by
//! datum and frees it again. A [`PackedRow`] is the same datums as a tag byte and a payload
//! each, held inline up to [`PackedRow::INLINE`] bytes (a 32-character trace id, or a handful of
//! integers, fit) and on the heap beyond: cloning one is a copy of its bytes, comparing two a
//! `memcmp`. This is Materialize's row representation (`src/repr/src/row.rs`: tag bytes,
//! integers in as few bytes as their value needs, 23 bytes inline) made small.
//!
//! The encoding is canonical, so two packed rows are equal exactly when their rows are
//! ([`Datum`]'s equality): a float is packed canonical ([`amx_operators::float::canonical`]:
//! `-0.0` as `0.0`, one NaN), and an integer in the fewest bytes that hold it. Packed rows are
//! ordered by their bytes, which is *not* [`Row`]'s order: use them where nothing reads the
//! order (arrangements keyed by a hash, values of order-insensitive aggregates), or reads only
//! what byte order keeps: a datum's bytes say where it ends (the encodings are prefix-free),
//! so the rows that begin with the same datums share the bytes of those datums packed alone,
//! sort together, and after that prefix itself (the catalog's arrangements seek so).
//!
//! | datum | tag | payload |
//! |---|---|---|
//! | `Null` | 0 | none |
//! | `Bool` | 1 (false), 2 (true) | none |
//! | `Int(v)` | 3 + n, n in 0..=8 | the n low bytes of the zigzag form of `v` (0 → n = 0), little-endian |
//! | `Float(f)` | 12 | the 8 bytes of the canonical `f`, little-endian |
//! | `Text(s)` | 13 | `s.len()` as one byte (< 255), then the UTF-8 bytes |
//! | `Text(s)` | 14 | `s.len()` as 4 bytes little-endian (≥ 255), then the UTF-8 bytes |
//! | `Timestamp(us)` | 15 + n, n in 0..=8 | as `Int` |

use ordered_float::OrderedFloat;
use smallvec::SmallVec;

use crate::row::{Datum, Row};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 12;
const SHORT_TEXT: u8 = 13;
const LONG_TEXT: u8 = 14;
const TIMESTAMP: u8 = 15;

/// A row packed into bytes (see the [module](self) for the encoding): equal exactly when the
/// rows are, ordered by bytes, hashed by bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackedRow(SmallVec<[u8; PackedRow::INLINE]>);

impl PackedRow {
    /// Bytes held inline, without a heap allocation: a tag, a length and a 32-character text
    /// (an OpenTelemetry trace id in hex) fit, and so do six tagged 40-bit integers.
    pub const INLINE: usize = 40;

    /// Packs `datums`, in order.
    pub fn pack<'a>(datums: impl IntoIterator<Item = &'a Datum>) -> PackedRow {
        let mut bytes = SmallVec::new();
        for datum in datums {
            push(&mut bytes, datum);
        }
        PackedRow(bytes)
    }

    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The datums, in order, each decoded as it is reached.
    pub fn iter(&self) -> Datums<'_> {
        Datums { bytes: &self.0 }
    }

    /// The row again (floats canonical).
    pub fn unpack(&self) -> Row {
        self.iter().collect()
    }

    /// Whether a datum is `Null` (read from the tags; nothing is decoded).
    pub fn contains_null(&self) -> bool {
        let mut bytes = &self.0[..];
        while let Some((&tag, rest)) = bytes.split_first() {
            if tag == NULL {
                return true;
            }
            // Packed by `pack` or checked by `check`: well-formed.
            let len = payload_len(tag, rest).expect("a well-formed packed row");
            bytes = &rest[len..];
        }
        false
    }

    /// Appends the datums to `row`.
    pub fn unpack_into(&self, row: &mut Row) {
        row.extend(self.iter());
    }

    /// Bytes this row takes in memory: the `PackedRow` itself (its inline bytes and length)
    /// and, for a row longer than [`PackedRow::INLINE`] bytes, its heap allocation.
    pub fn size_in_memory(&self) -> usize {
        std::mem::size_of::<PackedRow>() + if self.0.spilled() { self.0.capacity() } else { 0 }
    }
}

impl std::fmt::Debug for PackedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The zigzag form of `v` (0, -1, 1, -2, … → 0, 1, 2, 3, …), whose magnitude tracks `|v|`.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Pushes `tag + n` and the `n` low bytes of `u`, `n` the fewest that hold it.
fn push_int(bytes: &mut SmallVec<[u8; PackedRow::INLINE]>, tag: u8, v: i64) {
    let u = zigzag(v);
    let n = (8 - u.leading_zeros() / 8) as usize;
    bytes.push(tag + n as u8);
    bytes.extend_from_slice(&u.to_le_bytes()[..n]);
}

fn push(bytes: &mut SmallVec<[u8; PackedRow::INLINE]>, datum: &Datum) {
    match datum {
        Datum::Null => bytes.push(NULL),
        Datum::Bool(false) => bytes.push(FALSE),
        Datum::Bool(true) => bytes.push(TRUE),
        Datum::Int(v) => push_int(bytes, INT, *v),
        Datum::Float(f) => {
            bytes.push(FLOAT);
            bytes.extend_from_slice(&amx_operators::float::canonical(f.0).to_bits().to_le_bytes());
        }
        Datum::Text(s) => {
            if s.len() < 255 {
                bytes.push(SHORT_TEXT);
                bytes.push(s.len() as u8);
            } else {
                bytes.push(LONG_TEXT);
                bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
            }
            bytes.extend_from_slice(s.as_bytes());
        }
        Datum::Timestamp(us) => push_int(bytes, TIMESTAMP, *us),
    }
}

/// The datums of a [`PackedRow`] ([`PackedRow::iter`]).
pub struct Datums<'a> {
    bytes: &'a [u8],
}

impl Datums<'_> {
    /// Reads `n` little-endian bytes as the low bytes of a `u64`.
    fn take_uint(&mut self, n: usize) -> u64 {
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        u64::from_le_bytes(le)
    }

    fn take_text(&mut self, len: usize) -> String {
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        // Packed from a `String`: valid UTF-8.
        String::from_utf8(text.to_vec()).expect("packed text is UTF-8")
    }
}

impl Iterator for Datums<'_> {
    type Item = Datum;

    fn next(&mut self) -> Option<Datum> {
        let (&tag, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(match tag {
            NULL => Datum::Null,
            FALSE => Datum::Bool(false),
            TRUE => Datum::Bool(true),
            FLOAT => Datum::Float(OrderedFloat(f64::from_bits(self.take_uint(8)))),
            SHORT_TEXT => {
                let len = self.take_uint(1) as usize;
                Datum::Text(self.take_text(len))
            }
            LONG_TEXT => {
                let len = self.take_uint(4) as usize;
                Datum::Text(self.take_text(len))
            }
            t if (INT..=INT + 8).contains(&t) => Datum::Int(unzigzag(self.take_uint((t - INT) as usize))),
            t if (TIMESTAMP..=TIMESTAMP + 8).contains(&t) => {
                Datum::Timestamp(unzigzag(self.take_uint((t - TIMESTAMP) as usize)))
            }
            t => unreachable!("packed row tag {t}"),
        })
    }
}

/// Packed rows travel between processes as their bytes.
impl serde::Serialize for PackedRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for PackedRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PackedRow, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = PackedRow;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the bytes of a packed row")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PackedRow, E> {
                check(v).map_err(E::custom)?;
                Ok(PackedRow(SmallVec::from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<PackedRow, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<PackedRow, A::Error> {
                let mut bytes = SmallVec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                check(&bytes).map_err(serde::de::Error::custom)?;
                Ok(PackedRow(bytes))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// The bytes after tag `tag` that belong to its datum (`rest`: the bytes after the tag), or
/// `None` for an unknown tag or a text without its length.
fn payload_len(tag: u8, rest: &[u8]) -> Option<usize> {
    Some(match tag {
        NULL | FALSE | TRUE => 0,
        FLOAT => 8,
        t if (INT..=INT + 8).contains(&t) => (t - INT) as usize,
        t if (TIMESTAMP..=TIMESTAMP + 8).contains(&t) => (t - TIMESTAMP) as usize,
        SHORT_TEXT => 1 + *rest.first()? as usize,
        LONG_TEXT => 4 + u32::from_le_bytes(rest.get(..4)?.try_into().expect("4 bytes")) as usize,
        _ => return None,
    })
}

/// Whether `bytes` are a well-formed packed row (tags known, lengths within the bytes, texts
/// UTF-8): what a deserialized row is checked for, so decoding it never panics.
fn check(mut bytes: &[u8]) -> Result<(), String> {
    let bad = |why: &str| Err(format!("not a packed row: {why}"));
    while let Some((&tag, rest)) = bytes.split_first() {
        let Some(len) = payload_len(tag, rest) else {
            return bad(&format!("tag {tag} unknown, or a text without its length"));
        };
        let Some(payload) = rest.get(..len) else { return bad("datum past the end") };
        let text = match tag {
            SHORT_TEXT => &payload[1..],
            LONG_TEXT => &payload[4..],
            _ => &[],
        };
        if std::str::from_utf8(text).is_err() {
            return bad("text is not UTF-8");
        }
        bytes = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datum() -> impl Strategy<Value = Datum> {
        prop_oneof![
            Just(Datum::Null),
            any::<bool>().prop_map(Datum::Bool),
            any::<i64>().prop_map(Datum::Int),
            prop_oneof![Just(0), Just(-1), Just(1), Just(i64::MIN), Just(i64::MAX)].prop_map(Datum::Int),
            any::<f64>().prop_map(|f| Datum::float(Some(f))),
            ".{0,40}".prop_map(Datum::Text),
            proptest::collection::vec(any::<char>(), 250..300).prop_map(|c| Datum::Text(c.into_iter().collect())),
            any::<i64>().prop_map(Datum::Timestamp),
        ]
    }

    #[test]
    fn the_encoding_is_the_documented_one() {
        let row = vec![
            Datum::Null,
            Datum::Bool(true),
            Datum::Int(0),
            Datum::Int(-1),
            Datum::Int(300),
            Datum::Text("ab".into()),
            Datum::Timestamp(1),
        ];
        // 300 zigzags to 600 = 0x0258: two bytes, little-endian.
        let expected: &[u8] = &[0, 2, 3, 4, 1, 5, 0x58, 0x02, 13, 2, b'a', b'b', 16, 2];
        assert_eq!(PackedRow::pack(&row).as_bytes(), expected);
        // -0.0 packs as 0.0: the rows are equal, so the packed rows are.
        assert_eq!(PackedRow::pack(&[Datum::Float(OrderedFloat(-0.0))]), PackedRow::pack(&[Datum::float(Some(0.0))]));
        // Bytes that are no packed row are refused when they arrive, with why.
        let parse = |bytes: &[u8]| serde_json::from_slice::<PackedRow>(&serde_json::to_vec(bytes).unwrap());
        for (bytes, why) in [
            (&[200u8][..], "tag 200 unknown"),
            (&[13, 5, b'a'][..], "datum past the end"),
            (&[13, 1, 0xff][..], "text is not UTF-8"),
            (&[14, 1][..], "without its length"),
            (&[5, 0x58][..], "datum past the end"),
        ] {
            let error = parse(bytes).unwrap_err().to_string();
            assert!(error.contains(why), "{bytes:?}: {error}");
        }
        assert_eq!(parse(expected).unwrap().unpack(), row);
        // A trace id and its tag and length stay inline.
        let trace = PackedRow::pack(&[Datum::Text("0af7651916cd43dd8448eb211c80319c".into())]);
        assert!(!trace.0.spilled());
    }

    proptest! {
        #[test]
        fn a_packed_row_unpacks_to_its_row(row in proptest::collection::vec(datum(), 0..12)) {
            let packed = PackedRow::pack(&row);
            prop_assert_eq!(packed.unpack(), row);
            // What travels between processes reads back as the same row.
            let bytes = serde_json::to_vec(&packed).unwrap();
            prop_assert_eq!(serde_json::from_slice::<PackedRow>(&bytes).unwrap(), packed);
        }

        #[test]
        fn packed_rows_are_equal_exactly_when_their_rows_are(
            a in proptest::collection::vec(datum(), 0..4),
            b in proptest::collection::vec(datum(), 0..4),
        ) {
            prop_assert_eq!(PackedRow::pack(&a) == PackedRow::pack(&b), a == b);
            prop_assert!(PackedRow::pack(&a) == PackedRow::pack(&a.clone()));
        }

        #[test]
        fn bytes_that_are_not_a_packed_row_are_refused_not_decoded(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let parsed: Result<PackedRow, _> = serde_json::from_slice(&serde_json::to_vec(&bytes).unwrap());
            if let Ok(row) = parsed {
                // Accepted: it decodes without a panic, to as many datums as it holds.
                let _ = row.unpack();
            }
        }
    }
}
