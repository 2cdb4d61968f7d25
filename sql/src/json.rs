//! JSON output of floating-point values that JSON numbers cannot hold.
//!
//! JSON has no NaN or infinity, and Arrow's JSON writer prints them as `null`, which reads
//! back as SQL NULL. AIMatrix prints them as the JSON strings `"NaN"`, `"Infinity"` and
//! `"-Infinity"`, as PostgreSQL's `to_json` and Materialize do; every finite value is printed
//! as Arrow prints it, and NULL stays `null`.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, AsArray, PrimitiveArray};
use arrow::datatypes::{DataType, FieldRef, Float16Type, Float32Type, Float64Type};
use arrow::error::ArrowError;
use arrow::json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder, make_encoder};

/// The JSON text of a non-finite float, or None for a finite one.
pub fn non_finite(v: f64) -> Option<&'static [u8]> {
    if v.is_nan() {
        Some(b"\"NaN\"")
    } else if v == f64::INFINITY {
        Some(b"\"Infinity\"")
    } else if v == f64::NEG_INFINITY {
        Some(b"\"-Infinity\"")
    } else {
        None
    }
}

/// Encodes float columns (also inside lists and structs) with [`non_finite`]'s strings.
#[derive(Debug)]
pub struct NonFiniteAsStrings;

impl NonFiniteAsStrings {
    /// The factory, to pass to `WriterBuilder::with_encoder_factory`.
    pub fn factory() -> Arc<dyn EncoderFactory> {
        Arc::new(NonFiniteAsStrings)
    }
}

/// Options without a factory: Arrow's own encoders, for the finite values.
static PLAIN: LazyLock<EncoderOptions> = LazyLock::new(EncoderOptions::default);

enum Floats<'a> {
    F16(&'a PrimitiveArray<Float16Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
}

struct FloatEncoder<'a> {
    values: Floats<'a>,
    plain: NullableEncoder<'a>,
}

impl Encoder for FloatEncoder<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let v = match &self.values {
            Floats::F16(a) => a.value(idx).to_f64(),
            Floats::F32(a) => f64::from(a.value(idx)),
            Floats::F64(a) => a.value(idx),
        };
        match non_finite(v) {
            Some(text) => out.extend_from_slice(text),
            None => self.plain.encode(idx, out),
        }
    }
}

impl EncoderFactory for NonFiniteAsStrings {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        let values = match array.data_type() {
            DataType::Float16 => Floats::F16(array.as_primitive()),
            DataType::Float32 => Floats::F32(array.as_primitive()),
            DataType::Float64 => Floats::F64(array.as_primitive()),
            _ => return Ok(None),
        };
        let plain = make_encoder(field, array, &PLAIN)?;
        Ok(Some(NullableEncoder::new(Box::new(FloatEncoder { values, plain }), array.nulls().cloned())))
    }
}
