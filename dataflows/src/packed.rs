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

use std::rc::Rc;

use differential_dataflow::batcher::merge::MergeBatcher;
use differential_dataflow::batcher::merge::vec::VecMerger;
use differential_dataflow::trace::implementations::ord_neu::{OrdKeyBatch, OrdKeyBuilder};
use differential_dataflow::trace::implementations::spine_fueled::Spine;
use differential_dataflow::trace::implementations::{BatchContainer, ContainerChunker, OffsetList};
use ordered_float::OrderedFloat;
use smallvec::SmallVec;
use timely::container::PushInto;

use crate::row::{Datum, Row};
use crate::{Diff, Time};

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

    /// This row, borrowed ([`PackedRef`]).
    pub fn as_packed_ref(&self) -> PackedRef<'_> {
        PackedRef(&self.0)
    }

    /// The datums, in order, each decoded as it is reached.
    pub fn iter(&self) -> Datums<'_> {
        self.as_packed_ref().iter()
    }

    /// The row again (floats canonical).
    pub fn unpack(&self) -> Row {
        self.as_packed_ref().unpack()
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
        self.as_packed_ref().unpack_into(row);
    }
}

/// A packed row borrowed from where it is kept (a [`PackedRows`] container, or a
/// [`PackedRow`]): its bytes, ordered as [`PackedRow`]s are (by bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackedRef<'a>(&'a [u8]);

impl<'a> PackedRef<'a> {
    /// The packed bytes.
    pub fn as_bytes(self) -> &'a [u8] {
        self.0
    }

    /// The datums, in order, each decoded as it is reached.
    pub fn iter(self) -> Datums<'a> {
        Datums { bytes: self.0 }
    }

    /// The row (floats canonical).
    pub fn unpack(self) -> Row {
        self.iter().collect()
    }

    /// Appends the datums to `row`.
    pub fn unpack_into(self, row: &mut Row) {
        row.extend(self.iter());
    }

    /// An owned copy.
    pub fn to_packed_row(self) -> PackedRow {
        PackedRow(SmallVec::from_slice(self.0))
    }
}

impl<'b> PartialEq<&'b PackedRow> for PackedRef<'_> {
    fn eq(&self, other: &&'b PackedRow) -> bool {
        self.0 == other.as_bytes()
    }
}

impl std::fmt::Debug for PackedRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Packed rows kept end to end in one buffer, with the offset where each ends: the key
/// container of the catalog's arrangements ([`PackedKeySpine`]). A merge of two batches
/// copies each row's bytes into the merged buffer (no allocation per row), and a row costs
/// its bytes and an offset (4 bytes while the buffer is under 4 GiB, 8 beyond:
/// differential's [`OffsetList`]), where a `Vec` of [`PackedRow`]s holds
/// `size_of::<PackedRow>()` (48) bytes per row and a heap allocation per row longer than
/// [`PackedRow::INLINE`] bytes. This is Materialize's `DatumContainer` over its
/// `BytesContainer` (`src/compute/src/row_spine.rs`), made small.
pub struct PackedRows {
    /// `offsets[i]..offsets[i + 1]` are row `i`'s bytes; starts with 0.
    offsets: OffsetList,
    bytes: Vec<u8>,
}

impl PackedRows {
    /// Bytes this container holds allocated: its buffer's and its offsets' capacity.
    pub fn allocated_bytes(&self) -> usize {
        self.bytes.capacity() + self.offsets.smol.capacity() * 4 + self.offsets.chonk.capacity() * 8
    }
}

impl PushInto<PackedRow> for PackedRows {
    fn push_into(&mut self, row: PackedRow) {
        self.push_own(&row);
    }
}

impl BatchContainer for PackedRows {
    type Owned = PackedRow;
    type ReadItem<'a> = PackedRef<'a>;

    fn into_owned<'a>(item: PackedRef<'a>) -> PackedRow {
        item.to_packed_row()
    }

    fn clone_onto<'a>(item: PackedRef<'a>, other: &mut PackedRow) {
        other.0.clear();
        other.0.extend_from_slice(item.0);
    }

    fn push_ref(&mut self, item: PackedRef<'_>) {
        self.bytes.extend_from_slice(item.0);
        self.offsets.push(self.bytes.len());
    }

    fn push_own(&mut self, item: &PackedRow) {
        self.push_ref(item.as_packed_ref());
    }

    fn clear(&mut self) {
        // Keeps both allocations for reuse.
        self.offsets.clear();
        self.offsets.push(0);
        self.bytes.clear();
    }

    fn with_capacity(size: usize) -> Self {
        let mut offsets = OffsetList::with_capacity(size + 1);
        offsets.push(0);
        PackedRows { offsets, bytes: Vec::new() }
    }

    fn merge_capacity(cont1: &Self, cont2: &Self) -> Self {
        let mut offsets = OffsetList::with_capacity(cont1.len() + cont2.len() + 1);
        offsets.push(0);
        PackedRows { offsets, bytes: Vec::with_capacity(cont1.bytes.len() + cont2.bytes.len()) }
    }

    fn reborrow<'b, 'a: 'b>(item: PackedRef<'a>) -> PackedRef<'b> {
        item
    }

    fn index(&self, index: usize) -> PackedRef<'_> {
        PackedRef(&self.bytes[self.offsets.index(index)..self.offsets.index(index + 1)])
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// The layout of the catalog's arrangements: packed rows as keys in a [`PackedRows`], no
/// values, `Time` and `Diff` in vectors.
pub type PackedKeyLayout = (PackedRows, Vec<()>, Vec<Time>, Vec<Diff>, OffsetList);
/// A trace of packed rows (the keys; no values) kept in [`PackedRows`].
pub type PackedKeySpine = Spine<Rc<OrdKeyBatch<PackedKeyLayout>>>;
/// The batcher that sorts `((row, ()), time, diff)` updates into [`PackedKeySpine`] batches.
pub type PackedKeyBatcher = MergeBatcher<
    ContainerChunker<Vec<((PackedRow, ()), Time, Diff)>>,
    VecMerger<(PackedRow, ()), Time, Diff>,
    OrdKeyBuilder<PackedKeyLayout, Vec<((PackedRow, ()), Time, Diff)>>,
>;

impl std::fmt::Debug for PackedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_packed_ref().fmt(f)
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
        /// A container of packed rows gives back each row it was given, in order, equal to
        /// the row and ordered as the rows are; a merged container holds both inputs' rows.
        #[test]
        fn packed_rows_give_back_what_they_hold(
            a in proptest::collection::vec(proptest::collection::vec(datum(), 0..5), 0..20),
            b in proptest::collection::vec(proptest::collection::vec(datum(), 0..5), 0..20),
        ) {
            let packed = |rows: &[Row]| rows.iter().map(PackedRow::pack).collect::<Vec<_>>();
            let (a, b) = (packed(&a), packed(&b));
            let mut first = PackedRows::with_capacity(a.len());
            for row in &a {
                first.push_into(row.clone());
            }
            let mut second = PackedRows::with_capacity(0);
            for row in &b {
                second.push_own(row);
            }
            prop_assert_eq!(first.len(), a.len());
            for (i, row) in a.iter().enumerate() {
                prop_assert!(first.index(i) == row);
                prop_assert_eq!(PackedRows::into_owned(first.index(i)), row.clone());
                prop_assert_eq!(first.index(i).unpack(), row.unpack());
            }
            for i in 1..a.len() {
                prop_assert_eq!(first.index(i - 1).cmp(&first.index(i)), a[i - 1].cmp(&a[i]));
            }
            let mut merged = PackedRows::merge_capacity(&first, &second);
            for i in 0..first.len() {
                merged.push_ref(first.index(i));
            }
            for i in 0..second.len() {
                merged.push_ref(second.index(i));
            }
            let all: Vec<PackedRow> = (0..merged.len()).map(|i| PackedRows::into_owned(merged.index(i))).collect();
            prop_assert_eq!(all, a.iter().chain(&b).cloned().collect::<Vec<_>>());
            let mut onto = PackedRow::default();
            if let Some(last) = merged.last() {
                PackedRows::clone_onto(last, &mut onto);
                prop_assert!(last == &onto);
            }
            merged.clear();
            prop_assert_eq!(merged.len(), 0);
            prop_assert!(merged.is_empty());
            // Cleared, it is reused from its start.
            for row in b.iter().rev() {
                merged.push_own(row);
            }
            let again: Vec<PackedRow> = (0..merged.len()).map(|i| PackedRows::into_owned(merged.index(i))).collect();
            prop_assert_eq!(again, b.iter().rev().cloned().collect::<Vec<_>>());
        }

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
