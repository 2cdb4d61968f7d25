//! Reusable differential-dataflow operators and the aggregate kernels they share
//! ([`percentile_cont`]; [`float`]: the `DOUBLE` order and exact sums).
//!
//! Naming: every operator that builds timely operators takes a `name` (it shows up in timely
//! logging and profiles); `_named` is used where an upstream method without a name exists.

pub mod float;

use differential_dataflow::VecCollection;
use differential_dataflow::difference::Semigroup;
use timely::dataflow::operators::Exchange;
use timely::progress::Timestamp;

/// Extension methods on differential collections.
pub trait CollectionExt {
    /// Routes every update to one worker (`worker` is a global worker index). Used to gather
    /// the (small, consolidated) changes of a view where a single consumer reads them.
    fn gather_to(self, worker: u64) -> Self;
}

impl<'scope, T, D, R> CollectionExt for VecCollection<'scope, T, D, R>
where
    T: Timestamp + timely::ExchangeData,
    D: timely::ExchangeData + Clone,
    R: timely::ExchangeData + Semigroup + Clone,
{
    fn gather_to(self, worker: u64) -> Self {
        use differential_dataflow::AsCollection;
        self.inner.exchange(move |_| worker).as_collection()
    }
}

/// The `p`-quantile of a multiset by linear interpolation between closest ranks, as
/// PostgreSQL's `percentile_cont(p) WITHIN GROUP (ORDER BY x)` and DuckDB's `quantile_cont`
/// define it: with the `n` values sorted ascending as `x[0..n]`, position `h = p·(n−1)`,
/// result `x[⌊h⌋] + (h − ⌊h⌋)·(x[⌈h⌉] − x[⌊h⌋])`.
///
/// `sorted` holds distinct values in ascending order with their multiplicities (entries with a
/// count ≤ 0 are skipped). Returns `None` for an empty multiset or `p` outside `[0, 1]`.
pub fn percentile_cont(sorted: &[(i64, i64)], p: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&p) {
        return None;
    }
    let n: i64 = sorted.iter().map(|&(_, c)| c.max(0)).sum();
    if n == 0 {
        return None;
    }
    let h = p * (n - 1) as f64;
    let lo_rank = h.floor() as i64;
    let hi_rank = h.ceil() as i64;
    let lo = nth(sorted, lo_rank)?;
    let hi = nth(sorted, hi_rank)?;
    Some(lo as f64 + (h - lo_rank as f64) * (hi - lo) as f64)
}

/// The value of 0-based rank `k` in a sorted multiset given as `(value, count)` pairs.
fn nth(sorted: &[(i64, i64)], k: i64) -> Option<i64> {
    let mut seen = 0i64;
    for &(v, c) in sorted {
        if c <= 0 {
            continue;
        }
        seen += c;
        if k < seen {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::percentile_cont;

    #[test]
    fn percentile_cont_matches_postgres_definition() {
        // values 10, 20, 30, 40: h(0.5) = 1.5 -> 20 + 0.5*10 = 25; h(0.95) = 2.85 -> 30 + 0.85*10 = 38.5
        let v = [(10, 1), (20, 1), (30, 1), (40, 1)];
        assert_eq!(percentile_cont(&v, 0.5), Some(25.0));
        assert_eq!(percentile_cont(&v, 0.95), Some(38.5));
        assert_eq!(percentile_cont(&v, 0.0), Some(10.0));
        assert_eq!(percentile_cont(&v, 1.0), Some(40.0));
        // multiplicities: {5, 5, 5, 9}: h(0.5) = 1.5 -> 5; h(0.95) = 2.85 -> 5 + 0.85*4 = 8.4
        let m = [(5, 3), (9, 1)];
        assert_eq!(percentile_cont(&m, 0.5), Some(5.0));
        assert!((percentile_cont(&m, 0.95).unwrap() - 8.4).abs() < 1e-12);
        // one value, empty, out of range
        assert_eq!(percentile_cont(&[(7, 1)], 0.95), Some(7.0));
        assert_eq!(percentile_cont(&[], 0.5), None);
        assert_eq!(percentile_cont(&[(7, 0)], 0.5), None);
        assert_eq!(percentile_cont(&v, 1.5), None);
    }
}
