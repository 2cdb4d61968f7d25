//! `DOUBLE` semantics shared by the views and the SQL engine: one canonical form, one order,
//! and exact sums.
//!
//! - **Canonical values** ([`canonical`]): `-0.0` is stored as `0.0` and every NaN as the one
//!   positive quiet NaN, so equal values (PostgreSQL: `-0 = 0`, `NaN = NaN`) have equal bits and
//!   group, join and deduplicate alike in the dataflows (which compare values) and in DataFusion
//!   (which hashes bits).
//! - **Order** ([`pg_cmp`]): PostgreSQL's: `-inf < … < -0.0 = 0.0 < … < +inf < NaN`. `max` over
//!   a set with a NaN is NaN; `min` is NaN only when every value is.
//! - **Exact sums** ([`ExactSum`]): a sum is the exact (infinitely precise) sum of the values,
//!   rounded once to the nearest double (ties to even). It does not depend on the order in
//!   which values are added, and adding a value with multiplicity `-n` undoes adding it `n`
//!   times exactly. A mean is the exact sum divided by the count, also rounded once.
//!
//! The exact sum is a fixed-point "superaccumulator" (cf. Neal 2015, "Fast exact summation
//! using small and large superaccumulators"): every finite double is an integer multiple of
//! 2⁻¹⁰⁷⁴ below 2¹⁰²⁴, so a sum of them is an integer in units of 2⁻¹⁰⁷⁴, kept in 64-bit
//! digits stored in `i128` limbs (carries are propagated lazily). Only the limbs the values
//! touch are allocated: values of similar magnitude use two or three.

use std::cmp::Ordering;

/// The canonical form of a double: `-0.0` → `0.0`, any NaN → [`f64::NAN`]; other values unchanged.
pub fn canonical(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// PostgreSQL's order of doubles: `-inf < … < -0.0 = 0.0 < … < +inf < NaN`, all NaNs equal.
pub fn pg_cmp(a: f64, b: f64) -> Ordering {
    canonical(a).total_cmp(&canonical(b))
}

/// Bits of a 64-bit digit.
const DIGIT: u32 = 64;
const DIGIT_MASK: u128 = (1u128 << DIGIT) - 1;
/// Additions a limb absorbs before carries must be propagated: each adds less than 2⁶⁴ to a
/// limb, and an `i128` holds 2⁶³ of them; normalizing well before that keeps every limb safe.
const ADDS_BEFORE_NORMALIZE: u64 = 1 << 60;

/// An exact sum of doubles with multiplicities; see the module doc.
///
/// Non-finite values are counted, not added: the result is NaN if any NaN was added (net of
/// removals) or both `+inf` and `-inf` were, else `±inf` if one of them was, else the exact sum
/// of the finite values rounded to a double — `±inf` only if that exceeds the double range.
#[derive(Clone, Debug, Default)]
pub struct ExactSum {
    /// Index (in digits of 64 bits above 2⁻¹⁰⁷⁴) of `limbs[0]`.
    lo: u32,
    /// The finite part: Σ limbs[i] · 2^(64·(lo + i)) in units of 2⁻¹⁰⁷⁴ (limbs may exceed a
    /// digit or be negative until carries are propagated).
    limbs: Vec<i128>,
    /// Additions since carries were last propagated.
    pending: u64,
    nan: i64,
    pos_inf: i64,
    neg_inf: i64,
}

impl ExactSum {
    /// An empty sum (0).
    pub fn new() -> ExactSum {
        ExactSum::default()
    }

    /// Adds `x` `n` times (`n < 0` removes it `-n` times).
    pub fn add(&mut self, x: f64, n: i64) {
        if n == 0 {
            return;
        }
        if x.is_nan() {
            self.nan += n;
            return;
        }
        if x.is_infinite() {
            if x > 0.0 {
                self.pos_inf += n;
            } else {
                self.neg_inf += n;
            }
            return;
        }
        let bits = x.to_bits();
        let negative = (bits >> 63 == 1) != (n < 0);
        let exponent = ((bits >> 52) & 0x7ff) as u32;
        let fraction = bits & ((1 << 52) - 1);
        // x = mantissa · 2^(shift − 1074).
        let (mantissa, shift) = if exponent == 0 { (fraction, 0) } else { (fraction | 1 << 52, exponent - 1) };
        if mantissa == 0 {
            return;
        }
        // The product is below 2^116; shifted by < 64 bits it spans three digits.
        let product = mantissa as u128 * n.unsigned_abs() as u128;
        let (digit, offset) = (shift / DIGIT, shift % DIGIT);
        let w0 = (product & DIGIT_MASK) << offset;
        let w1 = ((product >> DIGIT) << offset) + (w0 >> DIGIT);
        let pieces = [(w0 & DIGIT_MASK) as i128, (w1 & DIGIT_MASK) as i128, (w1 >> DIGIT) as i128];
        for (i, piece) in pieces.into_iter().enumerate() {
            if piece != 0 {
                let limb = self.limb(digit + i as u32);
                *limb += if negative { -piece } else { piece };
            }
        }
        self.pending += 1;
        if self.pending >= ADDS_BEFORE_NORMALIZE {
            self.normalize();
        }
    }

    /// Adds every value of `other` (with its multiplicity) to this sum.
    pub fn merge(&mut self, other: &ExactSum) {
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        for (i, v) in other.limbs.iter().enumerate() {
            if *v != 0 {
                *self.limb(other.lo + i as u32) += v;
            }
        }
        self.pending += other.pending + 1;
        if self.pending >= ADDS_BEFORE_NORMALIZE {
            self.normalize();
        }
    }

    /// The sum, rounded once to the nearest double (ties to even); `0.0` (never `-0.0`) when
    /// it is zero. See the type doc for NaN and infinities.
    pub fn sum(&self) -> f64 {
        if let Some(special) = self.special() {
            return special;
        }
        let (negative, digits) = self.magnitude();
        let value = round(&digits, self.lo, 0, false);
        if negative { -value } else { value }
    }

    /// The exact sum divided by `count`, rounded once (ties to even); NaN when `count` is 0.
    /// A mean of finite values is always finite, even when their sum is not.
    pub fn mean(&self, count: u64) -> f64 {
        if count == 0 {
            return f64::NAN;
        }
        if let Some(special) = self.special() {
            return special;
        }
        let (negative, mut digits) = self.magnitude();
        // One extra digit below 2⁻¹⁰⁷⁴ keeps the rounding bit exact; the remainder is sticky.
        digits.insert(0, 0);
        let mut remainder: u128 = 0;
        for d in digits.iter_mut().rev() {
            let current = (remainder << DIGIT) | *d as u128;
            *d = (current / count as u128) as u64;
            remainder = current % count as u128;
        }
        let value = round(&digits, self.lo, DIGIT, remainder != 0);
        if negative { -value } else { value }
    }

    /// The result when a NaN or an infinity decides it.
    fn special(&self) -> Option<f64> {
        if self.nan != 0 || (self.pos_inf != 0 && self.neg_inf != 0) {
            Some(f64::NAN)
        } else if self.pos_inf != 0 {
            Some(f64::INFINITY)
        } else if self.neg_inf != 0 {
            Some(f64::NEG_INFINITY)
        } else {
            None
        }
    }

    /// The limb holding digit `index`, allocated (as 0) if needed.
    fn limb(&mut self, index: u32) -> &mut i128 {
        if self.limbs.is_empty() {
            self.lo = index;
        }
        if index < self.lo {
            let extra = (self.lo - index) as usize;
            self.limbs.splice(0..0, std::iter::repeat_n(0, extra));
            self.lo = index;
        }
        let at = (index - self.lo) as usize;
        if at >= self.limbs.len() {
            self.limbs.resize(at + 1, 0);
        }
        &mut self.limbs[at]
    }

    /// Propagates carries so that every limb but the top one holds one digit (0 ≤ limb < 2⁶⁴);
    /// the top limb keeps the sign (and, if needed, one more limb is added above it).
    fn normalize(&mut self) {
        let mut carry = 0i128;
        let last = self.limbs.len().saturating_sub(1);
        for limb in &mut self.limbs[..last] {
            let v = *limb + carry;
            carry = v >> DIGIT;
            *limb = v - (carry << DIGIT);
        }
        if let Some(top) = self.limbs.last_mut() {
            let v = *top + carry;
            let above = v >> DIGIT;
            *top = v - (above << DIGIT);
            if above != 0 {
                self.limbs.push(above);
            }
        }
        self.pending = 0;
    }

    /// Whether nothing is left in the sum: no NaN or infinity (net of removals) and an exact
    /// finite part of zero (values added and removed again leave an empty sum).
    pub fn is_zero(&self) -> bool {
        if self.nan != 0 || self.pos_inf != 0 || self.neg_inf != 0 {
            return false;
        }
        // Carries propagated on the fly (as `magnitude` does), without allocating: the value is
        // zero when every digit is and nothing is carried out of the top.
        let mut carry = 0i128;
        for v in &self.limbs {
            let v = v + carry;
            carry = v >> DIGIT;
            if v - (carry << DIGIT) != 0 {
                return false;
            }
        }
        carry == 0
    }

    /// The sum's exact value in a canonical form, equal for equal sums however they were
    /// added up: the NaN and infinity counts, the sign, and the nonzero span of the magnitude's
    /// 64-bit digits with the index of its lowest one (an empty span for 0).
    pub fn canonical(&self) -> (i64, i64, i64, bool, u32, Vec<u64>) {
        let (negative, digits) = self.magnitude();
        let (Some(low), Some(high)) = (digits.iter().position(|d| *d != 0), digits.iter().rposition(|d| *d != 0))
        else {
            return (self.nan, self.pos_inf, self.neg_inf, false, 0, Vec::new());
        };
        (self.nan, self.pos_inf, self.neg_inf, negative, self.lo + low as u32, digits[low..=high].to_vec())
    }

    /// This sum as bytes (for DataFusion aggregate states); [`ExactSum::from_bytes`] reads them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(36 + 16 * self.limbs.len());
        for v in [self.nan, self.pos_inf, self.neg_inf] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.lo.to_le_bytes());
        out.extend_from_slice(&self.pending.to_le_bytes());
        for limb in &self.limbs {
            out.extend_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Reads what [`ExactSum::to_bytes`] wrote; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<ExactSum> {
        let (head, limbs) = bytes.split_at_checked(36)?;
        if limbs.len() % 16 != 0 {
            return None;
        }
        let i64_at = |at: usize| i64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        Some(ExactSum {
            nan: i64_at(0),
            pos_inf: i64_at(8),
            neg_inf: i64_at(16),
            lo: u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")),
            pending: u64::from_le_bytes(head[28..36].try_into().expect("8 bytes")),
            limbs: limbs.chunks_exact(16).map(|c| i128::from_le_bytes(c.try_into().expect("16 bytes"))).collect(),
        })
    }

    /// The finite part as a sign and a magnitude in 64-bit digits (least significant first).
    fn magnitude(&self) -> (bool, Vec<u64>) {
        let digits = |limbs: &mut dyn Iterator<Item = i128>| -> (Vec<u64>, i128) {
            let mut out = Vec::with_capacity(self.limbs.len() + 2);
            let mut carry = 0i128;
            for v in limbs {
                // Limbs are below 2^126 in magnitude, so `v + carry` cannot overflow.
                let v = v + carry;
                carry = v >> DIGIT;
                out.push((v - (carry << DIGIT)) as u64);
            }
            while carry > 0 {
                out.push((carry as u128 & DIGIT_MASK) as u64);
                carry >>= DIGIT;
            }
            (out, carry)
        };
        let (out, carry) = digits(&mut self.limbs.iter().copied());
        if carry >= 0 {
            return (false, out);
        }
        let (out, _) = digits(&mut self.limbs.iter().map(|v| -v));
        (true, out)
    }
}

/// Rounds the magnitude `digits` · 2^(64·lo − frac − 1074) (`sticky`: nonzero bits below
/// the digits) to the nearest double, ties to even.
fn round(digits: &[u64], lo: u32, frac: u32, sticky: bool) -> f64 {
    let Some(top_digit) = digits.iter().rposition(|d| *d != 0) else {
        // Only `sticky` bits, below 2⁻¹⁰⁷⁴ / 2: they round to 0.
        return 0.0;
    };
    // Bit positions counted from the unit 2^(−1074 − frac).
    let base = (lo * DIGIT) as i64;
    let top = base + top_digit as i64 * DIGIT as i64 + (63 - digits[top_digit].leading_zeros()) as i64;
    let bit = |p: i64| -> bool {
        let rel = p - base;
        rel >= 0 && (digits[(rel / DIGIT as i64) as usize] >> (rel % DIGIT as i64)) & 1 == 1
    };
    let any_below = |p: i64| -> bool {
        // Any set bit at a position < p.
        let rel = p - base;
        if rel <= 0 {
            return false;
        }
        let (d, b) = ((rel / DIGIT as i64) as usize, (rel % DIGIT as i64) as u32);
        digits[..d.min(digits.len())].iter().any(|x| *x != 0)
            || (d < digits.len() && b > 0 && digits[d] & ((1u64 << b) - 1) != 0)
    };
    // The result's last bit: 53 significant bits, but never below 2⁻¹⁰⁷⁴.
    let shift = (top - 52).max(frac as i64);
    let mut mantissa: u64 = 0;
    for p in (shift..=top).rev() {
        mantissa = (mantissa << 1) | bit(p) as u64;
    }
    let guard = shift > 0 && bit(shift - 1);
    let rest = sticky || any_below(shift - 1);
    if guard && (rest || mantissa & 1 == 1) {
        mantissa += 1;
    }
    // mantissa · 2^(scaled − 1074): for scaled > 0 the mantissa has 53 bits, so the bit
    // pattern is (scaled << 52) + mantissa (a carry to 2^53 bumps the exponent); for
    // scaled = 0 it is the subnormal (or smallest normal) pattern `mantissa` itself.
    let scaled = (shift - frac as i64) as u64;
    if scaled >= 2047 {
        return f64::INFINITY;
    }
    let bits = (scaled << 52) + mantissa;
    if bits >= f64::INFINITY.to_bits() { f64::INFINITY } else { f64::from_bits(bits) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(values: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        values.iter().for_each(|v| s.add(*v, 1));
        s.sum()
    }

    fn mean(values: &[f64]) -> f64 {
        let mut s = ExactSum::new();
        values.iter().for_each(|v| s.add(*v, 1));
        s.mean(values.len() as u64)
    }

    #[test]
    fn exact_sums_worked_out_by_hand() {
        // -1e31 + 1e31 cancel exactly; 3 survives (left to right in sorted order gives 0).
        assert_eq!(sum(&[-1e31, 3.0, 1e31]), 3.0);
        // 1e308 + 1e308 overflows a double, but the exact total is 1e308.
        assert_eq!(sum(&[1e308, 1e308, -1e308]), 1e308);
        // Ten copies of the double nearest 0.1 (0.1000000000000000055511151231257827…) sum
        // to 1.000000000000000055511151231257827…, whose nearest double is 1.0 (the next one
        // up is 1 + 2.2e-16); naive addition gives 0.9999999999999999.
        assert_eq!(sum(&[0.1; 10]), 1.0);
        // The smallest subnormal twice: 2 · 2⁻¹⁰⁷⁴ = 1e-323 (printed), exactly.
        assert_eq!(sum(&[5e-324, 5e-324]), f64::from_bits(2));
        // Beyond the double range: +inf; back within it after a removal.
        let mut s = ExactSum::new();
        s.add(f64::MAX, 2);
        assert_eq!(s.sum(), f64::INFINITY);
        s.add(f64::MAX, -1);
        assert_eq!(s.sum(), f64::MAX);
        // 1 + 2⁻⁵³ is a tie between 1 and 1 + 2⁻⁵²: ties go to the even mantissa, 1.
        assert_eq!(sum(&[1.0, 2f64.powi(-53)]), 1.0);
        // 1 + 2⁻⁵³ + 2⁻¹⁰⁰ is above the tie: 1 + 2⁻⁵².
        assert_eq!(sum(&[1.0, 2f64.powi(-53), 2f64.powi(-100)]), 1.0 + f64::EPSILON);
        // Negative totals: -(1.5 + 2.25) = -3.75.
        assert_eq!(sum(&[-1.5, -2.25]), -3.75);
        assert_eq!(sum(&[-1.5, 2.25, -10.0]), -9.25);
        // Zero is +0.0, never -0.0.
        assert_eq!(sum(&[-0.0]).to_bits(), 0);
        assert_eq!(sum(&[-1.0, 1.0]).to_bits(), 0);
        assert_eq!(sum(&[]).to_bits(), 0);
    }

    /// A sum whose values were all removed again is zero, however they were added (also when
    /// the pieces sit in different limbs); equal sums have one canonical form.
    #[test]
    fn zero_and_canonical_forms() {
        let of = |values: &[(f64, i64)]| {
            let mut s = ExactSum::new();
            values.iter().for_each(|(x, n)| s.add(*x, *n));
            s
        };
        assert!(ExactSum::new().is_zero());
        assert!(of(&[(1e300, 1), (1.0, 1), (1e300, -1), (1.0, -1)]).is_zero());
        assert!(of(&[(1.5, 1), (0.75, -2)]).is_zero());
        assert!(of(&[(f64::MAX, 3), (f64::MAX / 2.0, -6)]).is_zero());
        assert!(!of(&[(5e-324, 1)]).is_zero());
        assert!(!of(&[(1.0, 1), (1.0, -1), (f64::NAN, 1)]).is_zero());
        assert!(!of(&[(1e300, 1), (1e-300, 1), (1e300, -1)]).is_zero());
        let a = of(&[(1e-300, 1), (1e300, 1), (3.0, 2)]);
        let b = of(&[(3.0, 1), (1e300, 1), (2.0, 3), (1e-300, 1), (3.0, 1), (2.0, -3)]);
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), of(&[(1e-300, 1), (1e300, 1), (3.0, 1)]).canonical());
        assert_eq!(of(&[(1.0, 1), (1.0, -1)]).canonical(), ExactSum::new().canonical());
    }

    #[test]
    fn special_values() {
        assert!(sum(&[f64::NAN, 1.0]).is_nan());
        assert!(sum(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(sum(&[f64::INFINITY, -1e308, 1.0]), f64::INFINITY);
        assert_eq!(sum(&[f64::NEG_INFINITY, 1e308]), f64::NEG_INFINITY);
        // Removing the NaN again leaves the finite sum.
        let mut s = ExactSum::new();
        s.add(f64::NAN, 1);
        s.add(2.5, 2);
        s.add(f64::NAN, -1);
        assert_eq!(s.sum(), 5.0);
    }

    #[test]
    fn multiplicities_and_removals() {
        // 0.5 · 3 + 10 · 2 − 2.25 = 19.25
        let mut s = ExactSum::new();
        s.add(0.5, 3);
        s.add(10.0, 2);
        s.add(2.25, -1);
        assert_eq!(s.sum(), 19.25);
        // Adding then removing everything leaves exactly 0.
        let mut t = ExactSum::new();
        for v in [1e308, 5e-324, -1e31, 0.1, 7.0] {
            t.add(v, 5);
        }
        for v in [0.1, -1e31, 7.0, 5e-324, 1e308] {
            t.add(v, -5);
        }
        assert_eq!(t.sum().to_bits(), 0);
        // i64::MAX copies of 1.0: 9223372036854775807, whose nearest double is 2^63.
        let mut u = ExactSum::new();
        u.add(1.0, i64::MAX);
        assert_eq!(u.sum(), 9223372036854775808.0);
        // Merging two halves equals adding everything to one.
        let (mut a, mut b) = (ExactSum::new(), ExactSum::new());
        a.add(1e31, 1);
        a.add(3.0, 1);
        b.add(-1e31, 1);
        a.merge(&b);
        assert_eq!(a.sum(), 3.0);
        // A state written as bytes reads back as the same sum.
        let back = ExactSum::from_bytes(&a.to_bytes()).expect("round trip");
        assert_eq!(back.sum(), 3.0);
        assert!(ExactSum::from_bytes(&[1, 2, 3]).is_none());
        // Many additions with carries normalized in between.
        let mut c = ExactSum::new();
        for _ in 0..1000 {
            c.add(f64::MAX, i64::MAX);
            c.add(-f64::MAX, i64::MAX);
        }
        c.normalize();
        c.add(-0.5, 1);
        assert_eq!(c.sum(), -0.5);
    }

    #[test]
    fn means_worked_out_by_hand() {
        assert_eq!(mean(&[1.0, 2.0]), 1.5);
        // (-1e31 + 1e31 + 3) / 3 = 1
        assert_eq!(mean(&[-1e31, 1e31, 3.0]), 1.0);
        // The sum 2·MAX overflows, the mean MAX does not.
        assert_eq!(mean(&[f64::MAX, f64::MAX]), f64::MAX);
        // 5/3 = 1.666…; the nearest double is 1.6666666666666667407… = 0x3FFAAAAAAAAAAAAB.
        assert_eq!(mean(&[1.0, 2.0, 2.0]).to_bits(), 0x3FFA_AAAA_AAAA_AAAB);
        // -1/3: 0xBFD5555555555555 (…5555 rounds down: the next bit is 0).
        assert_eq!(mean(&[-1.0, 0.0, 0.0]).to_bits(), 0xBFD5_5555_5555_5555);
        // The smallest subnormal divided by 2 is a tie between 0 and 2⁻¹⁰⁷⁴: even, 0.
        assert_eq!(mean(&[5e-324, 0.0]).to_bits(), 0);
        // 3 · 2⁻¹⁰⁷⁴ / 2 = 1.5 · 2⁻¹⁰⁷⁴: a tie between 1 and 2 (units of 2⁻¹⁰⁷⁴): even, 2.
        assert_eq!(mean(&[f64::from_bits(3), 0.0]).to_bits(), 2);
        assert!(mean(&[f64::NAN]).is_nan());
        assert_eq!(mean(&[f64::INFINITY, 1.0]), f64::INFINITY);
    }

    #[test]
    fn canonical_form_and_order() {
        assert_eq!(canonical(-0.0).to_bits(), 0);
        assert_eq!(canonical(-f64::NAN).to_bits(), f64::NAN.to_bits());
        assert_eq!(pg_cmp(-0.0, 0.0), Ordering::Equal);
        assert_eq!(pg_cmp(-f64::NAN, f64::NAN), Ordering::Equal);
        assert_eq!(pg_cmp(f64::NAN, f64::INFINITY), Ordering::Greater);
        assert_eq!(pg_cmp(-f64::NAN, f64::INFINITY), Ordering::Greater);
        assert_eq!(pg_cmp(f64::NEG_INFINITY, -1e308), Ordering::Less);
    }

    /// Python's `math.fsum` (Shewchuk's algorithm with CPython's final half-even correction):
    /// an independent exact summation for finite values whose partial sums do not overflow.
    fn fsum(values: &[f64]) -> f64 {
        let mut partials: Vec<f64> = Vec::new();
        for &v in values {
            let mut x = v;
            let mut i = 0;
            for j in 0..partials.len() {
                let mut y = partials[j];
                if x.abs() < y.abs() {
                    std::mem::swap(&mut x, &mut y);
                }
                let hi = x + y;
                let lo = y - (hi - x);
                if lo != 0.0 {
                    partials[i] = lo;
                    i += 1;
                }
                x = hi;
            }
            partials.truncate(i);
            partials.push(x);
        }
        let mut n = partials.len();
        if n == 0 {
            return 0.0;
        }
        n -= 1;
        let mut hi = partials[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = partials[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
        hi
    }

    /// Finite doubles of any bit pattern up to 1e300 in magnitude (so `fsum` cannot overflow),
    /// mixed with values that cancel.
    fn finite() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::strategy::Strategy;
        let any = proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO;
        let special = proptest::sample::select(vec![1e300, -1e300, 1e31, -1e31, 3.0, 0.1, 5e-324, -5e-324]);
        proptest::prop_oneof![any, special].prop_filter("at most 1e300", |v| v.abs() <= 1e300)
    }

    proptest::proptest! {
        #[test]
        fn exact_sum_equals_fsum(
            values in proptest::collection::vec(finite(), 0..40),
            order in proptest::collection::vec(0usize..1000, 40),
        ) {
            let want = fsum(&values);
            let got = sum(&values);
            proptest::prop_assert_eq!(got.to_bits(), canonical(want).to_bits(), "{:?}", values);
            // The order of addition does not matter.
            let mut shuffled = values.clone();
            for (i, j) in order.iter().enumerate().take(shuffled.len()) {
                let k = j % shuffled.len();
                shuffled.swap(i, k);
            }
            proptest::prop_assert_eq!(sum(&shuffled).to_bits(), got.to_bits());
        }
    }
}
