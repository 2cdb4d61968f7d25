//! `model_prices`, the price table every model call is priced by, and what a call costs.
//!
//! `model_prices` is a relation keyed by `(provider, model, valid_from)`:
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `provider` | TEXT | the spans' `provider` it prices, or `*`: every provider |
//! | `model` | TEXT | a model name, or a prefix followed by `*` (`gpt-4o*`) |
//! | `valid_from` | TIMESTAMP | the price holds for calls started at or after it (UTC) |
//! | `input_usd_per_mtok` | DOUBLE | USD per 1,000,000 input tokens that were not cached |
//! | `cached_input_usd_per_mtok` | DOUBLE | USD per 1,000,000 cached input tokens; NULL: the input price |
//! | `output_usd_per_mtok` | DOUBLE | USD per 1,000,000 output tokens that were not reasoning |
//! | `reasoning_usd_per_mtok` | DOUBLE | USD per 1,000,000 reasoning tokens; NULL: the output price |
//!
//! It starts with the prices AIMatrix ships (`dataflows/data/model_prices.csv`, each with its
//! source) and changes at run time through sources (a row upserts its key, a delete removes
//! it). Cost is a join maintained incrementally, so a changed price re-prices every span it
//! applies to, and every trace, model and day they are summed into, by retraction and
//! insertion.
//!
//! **Which price a call gets.** A span is priced when it names a model (`response_model`, the
//! model that answered and billed, else `request_model`) and at least one token count. Of the
//! rows whose provider is the span's or `*`, whose model matches (the name itself, or a
//! pattern `P*` with the name starting with `P`) and whose `valid_from` is at or before the
//! span's `start_time` (every row, for a span without one), the most specific wins: an exact
//! model over any pattern, then the longer pattern, then the span's own provider over `*` (so
//! an `openai`, `gpt-4o*` row does not take `gpt-4o-mini` calls from `*`, `gpt-4o-mini*`); of
//! equally specific rows, the latest `valid_from`. A row whose input or output price is
//! NULL, or whose price is negative or not finite, prices nothing: the spans it wins have no cost (NULL), which is
//! how a deployment marks a model it does not want priced.
//!
//! **What a call costs** (USD), with the token columns as the OpenTelemetry GenAI conventions
//! define them (input tokens include cached ones, output tokens include reasoning ones):
//! `(input − cached) · input price + cached · cached price + (output − reasoning) · output
//! price + reasoning · reasoning price`, each price per token (the table's per 1M / 10⁶). A
//! NULL count is 0 (a span with every count NULL has no cost); cached tokens beyond the input
//! tokens, and reasoning tokens beyond the output tokens, are billed at their own price and
//! take nothing from the other. Costs are computed and summed exactly, in integer pico-USD
//! (10⁻¹² USD: a price is rounded to 10⁻⁶ USD per 1M tokens), and shown as DOUBLE USD.

use serde::{Deserialize, Serialize};

use crate::event::TimestampUs;
use crate::row::{ColumnType::*, Datum, RelationDesc, Row};

/// The relation's name.
pub const MODEL_PRICES: &str = "model_prices";

/// The prices AIMatrix ships, as CSV (see the file's header for its columns and sources).
pub const DEFAULT_PRICES_CSV: &str = include_str!("../data/model_prices.csv");

/// Pico-USD per token for a price of 1 USD per 1M tokens.
const PUSD_PER_TOKEN: f64 = 1e6;

/// The largest price a row may hold (USD per 1M tokens: 1 USD per token). A larger one, a
/// negative one or one that is not finite makes the row price nothing and is reported in
/// `aimatrix_view_errors` ([`price_errors`]); below it, no cost or sum of costs can overflow
/// (at most 10¹² pico-USD per token).
pub const MAX_USD_PER_MTOK: f64 = 1e6;

/// The price columns of `model_prices`, by position.
const PRICE_COLUMNS: [(usize, &str); 4] = [
    (3, "input_usd_per_mtok"),
    (4, "cached_input_usd_per_mtok"),
    (5, "output_usd_per_mtok"),
    (6, "reasoning_usd_per_mtok"),
];

/// Pico-USD per USD.
const PUSD_PER_USD: f64 = 1e12;

/// `model_prices`' columns and key (see the module docs).
pub fn desc() -> RelationDesc {
    crate::row::desc(
        MODEL_PRICES,
        &["provider", "model", "valid_from"],
        &[
            ("provider", Text),
            ("model", Text),
            ("valid_from", Timestamp),
            ("input_usd_per_mtok", Float),
            ("cached_input_usd_per_mtok", Float),
            ("output_usd_per_mtok", Float),
            ("reasoning_usd_per_mtok", Float),
        ],
    )
}

/// The shipped prices ([`DEFAULT_PRICES_CSV`]) as rows of `model_prices`, in file order.
///
/// # Panics
/// When the shipped file does not parse (a unit test reads it).
pub fn default_rows() -> Vec<Row> {
    parse_csv(DEFAULT_PRICES_CSV).expect("the shipped model prices parse")
}

/// Parses price rows in the shipped file's CSV shape: `#` comments, a header line, then
/// `provider,model,valid_from,input,cached_input,output,reasoning` (USD per 1M tokens; an
/// empty price is NULL; `valid_from` in RFC 3339).
///
/// # Errors
/// The row (`price row N`: the N-th after the header, comments not counted) and what is wrong
/// with it.
pub fn parse_csv(text: &str) -> Result<Vec<Row>, String> {
    let mut reader =
        csv::ReaderBuilder::new().comment(Some(b'#')).trim(csv::Trim::All).flexible(true).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        let line = format!("price row {}", n + 1);
        let [provider, model, valid_from, input, cached, output, reasoning] = record.iter().collect::<Vec<_>>()[..]
        else {
            return Err(format!("{line}: {} fields, not 7", record.len()));
        };
        let price = |s: &str| -> Result<Datum, String> {
            if s.is_empty() {
                return Ok(Datum::Null);
            }
            s.parse::<f64>().map(|v| Datum::float(Some(v))).map_err(|e| format!("{line}: price `{s}`: {e}"))
        };
        let valid_from = chrono::DateTime::parse_from_rfc3339(valid_from)
            .map_err(|e| format!("{line}: `{valid_from}` is no RFC 3339 time: {e}"))?
            .timestamp_micros();
        rows.push(vec![
            Datum::Text(provider.to_owned()),
            Datum::Text(model.to_owned()),
            Datum::Timestamp(valid_from),
            price(input)?,
            price(cached)?,
            price(output)?,
            price(reasoning)?,
        ]);
    }
    Ok(rows)
}

/// A price as integer pico-USD per token, one per kind of token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rates {
    /// Per input token that was not cached.
    pub input: i128,
    /// Per cached input token.
    pub cached_input: i128,
    /// Per output token that was not reasoning.
    pub output: i128,
    /// Per reasoning token.
    pub reasoning: i128,
}

/// A price in USD per 1M tokens as pico-USD per token; `None` when NULL, negative, not
/// finite or above [`MAX_USD_PER_MTOK`].
fn per_token(usd_per_mtok: &Datum) -> Option<i128> {
    let v = match usd_per_mtok {
        Datum::Float(v) => v.0,
        Datum::Int(v) => *v as f64,
        _ => return None,
    };
    (v.is_finite() && (0.0..=MAX_USD_PER_MTOK).contains(&v)).then(|| (v * PUSD_PER_TOKEN).round() as i128)
}

/// What is wrong with a `model_prices` row's prices: one message per price that is not NULL
/// and is negative, not finite or above [`MAX_USD_PER_MTOK`] (the row then prices nothing),
/// naming the column, the value and the row's key.
pub fn price_errors(row: &Row) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, column) in PRICE_COLUMNS {
        let Some(d) = row.get(i) else { continue };
        if !matches!(d, Datum::Null) && per_token(d).is_none() {
            let value = match d {
                Datum::Float(v) => format!("{:?}", v.0),
                Datum::Int(v) => v.to_string(),
                other => format!("{other:?}"),
            };
            let key = match (row.first(), row.get(1), row.get(2)) {
                (Some(Datum::Text(p)), Some(Datum::Text(m)), Some(Datum::Timestamp(t))) => {
                    format!("('{p}', '{m}', {})", format_utc(*t))
                }
                _ => "(?)".to_owned(),
            };
            errors.push(format!(
                "price out of range in {column}: {value} (key {key}): USD per 1M tokens must be in \
                 0..={MAX_USD_PER_MTOK}; the row prices nothing"
            ));
        }
    }
    errors
}

/// µs since the epoch as `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC), as SQL shows a `TIMESTAMP`.
fn format_utc(us: TimestampUs) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) if us % 1_000_000 == 0 => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        None => format!("{us} µs"),
    }
}

/// A row of `model_prices`, read for pricing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PriceRow {
    /// `provider` (`*`: every provider).
    pub provider: String,
    /// `model`: a name, or a prefix followed by `*`.
    pub model: String,
    /// `valid_from` (µs since the epoch, UTC).
    pub valid_from: TimestampUs,
    /// The rates; `None` when the row prices nothing (see the module docs).
    pub rates: Option<Rates>,
}

impl PriceRow {
    /// Reads a row of `model_prices`; `None` when a key column is NULL (the relation's key
    /// columns never are).
    pub fn from_row(row: &Row) -> Option<PriceRow> {
        let (Some(Datum::Text(provider)), Some(Datum::Text(model)), Some(Datum::Timestamp(valid_from))) =
            (row.first(), row.get(1), row.get(2))
        else {
            return None;
        };
        let price = |i: usize| row.get(i).and_then(per_token);
        let or = |i: usize, default: i128| match row.get(i) {
            None | Some(Datum::Null) => Some(default),
            Some(d) => per_token(d),
        };
        let rates = (|| {
            let (input, output) = (price(3)?, price(5)?);
            Some(Rates { input, cached_input: or(4, input)?, output, reasoning: or(6, output)? })
        })();
        Some(PriceRow { provider: provider.clone(), model: model.clone(), valid_from: *valid_from, rates })
    }

    /// How specifically this row names a call of `model` by `provider` (larger: more
    /// specific), or `None` when it does not apply to it.
    pub fn specificity(&self, provider: Option<&str>, model: &str) -> Option<Specificity> {
        let own_provider = if self.provider == "*" {
            false
        } else if provider == Some(self.provider.as_str()) {
            true
        } else {
            return None;
        };
        let (exact, length) = match self.model.strip_suffix('*') {
            Some(prefix) if model.starts_with(prefix) => (false, prefix.len()),
            Some(_) => return None,
            None if self.model == model => (true, model.len()),
            None => return None,
        };
        Some(Specificity { exact, length, own_provider })
    }
}

/// How specifically a price row names a call: an exact model over a pattern, then the longer
/// pattern, then its own provider over `*` (fields compared in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Specificity {
    /// The row names the model itself (not a pattern).
    pub exact: bool,
    /// The length of the row's model name or pattern prefix (bytes).
    pub length: usize,
    /// The row names the call's provider (not `*`).
    pub own_provider: bool,
}

/// A price row that applies to one `(provider, model)`, with how specifically it does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Applicable {
    /// How specifically it names the call.
    pub specificity: Specificity,
    /// The row.
    pub row: PriceRow,
}

/// The row that prices a call started at `start` (`None`: unknown, every row applies), of
/// the rows that apply to its provider and model (see the module docs).
pub fn price_at(applicable: &[Applicable], start: Option<TimestampUs>) -> Option<&Applicable> {
    applicable
        .iter()
        .filter(|a| start.is_none_or(|s| a.row.valid_from <= s))
        .max_by_key(|a| (a.specificity, a.row.valid_from))
}

/// A call's token counts, as the span columns hold them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tokens {
    /// `input_tokens` (cached ones included).
    pub input: Option<i64>,
    /// `cache_read_input_tokens`.
    pub cached_input: Option<i64>,
    /// `output_tokens` (reasoning ones included).
    pub output: Option<i64>,
    /// `reasoning_output_tokens`.
    pub reasoning: Option<i64>,
}

impl Tokens {
    /// Whether any count is known.
    pub fn any(&self) -> bool {
        self.input.is_some() || self.cached_input.is_some() || self.output.is_some() || self.reasoning.is_some()
    }
}

/// What a call with `tokens` costs at `rates`, in pico-USD (see the module docs); `None`
/// when every count is NULL (or, which rates below [`MAX_USD_PER_MTOK`] never give, when the
/// cost does not fit in `i128`).
pub fn cost_pusd(rates: &Rates, tokens: &Tokens) -> Option<i128> {
    if !tokens.any() {
        return None;
    }
    let count = |v: Option<i64>| i128::from(v.unwrap_or(0).max(0));
    let (input, cached) = (count(tokens.input), count(tokens.cached_input));
    let (output, reasoning) = (count(tokens.output), count(tokens.reasoning));
    let terms = [
        ((input - cached).max(0), rates.input),
        (cached, rates.cached_input),
        ((output - reasoning).max(0), rates.output),
        (reasoning, rates.reasoning),
    ];
    terms.iter().try_fold(0i128, |sum, (n, rate)| sum.checked_add(n.checked_mul(*rate)?))
}

/// Pico-USD as USD.
pub fn usd(pusd: i128) -> f64 {
    pusd as f64 / PUSD_PER_USD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(provider: &str, model: &str, valid_from: i64, prices: [Option<f64>; 4]) -> PriceRow {
        let mut r = vec![Datum::Text(provider.into()), Datum::Text(model.into()), Datum::Timestamp(valid_from)];
        r.extend(prices.iter().map(|p| Datum::float(*p)));
        PriceRow::from_row(&r).expect("a key")
    }

    fn applicable(rows: &[PriceRow], provider: Option<&str>, model: &str) -> Vec<Applicable> {
        rows.iter()
            .filter_map(|r| Some(Applicable { specificity: r.specificity(provider, model)?, row: r.clone() }))
            .collect()
    }

    /// The shipped file parses, every row prices something, and its keys are distinct.
    #[test]
    fn the_shipped_prices_parse() {
        let rows = default_rows();
        assert!(rows.len() >= 30, "{} rows", rows.len());
        let mut keys: Vec<_> = rows.iter().map(|r| r[..3].to_vec()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), rows.len(), "duplicate keys");
        assert!(rows.iter().all(|r| PriceRow::from_row(r).and_then(|p| p.rates).is_some()));
        // o3's cut of 2025-06-10 (1749513600 s since the epoch).
        assert!(
            rows.iter().any(|r| r[1] == Datum::Text("o3*".into()) && r[2] == Datum::Timestamp(1_749_513_600_000_000))
        );
        let one = |time: &str| parse_csv(&format!("h\n*,m,{time},1,,1,\n")).map(|r| r[0][2].clone());
        assert_eq!(one("1970-01-01T00:00:00Z"), Ok(Datum::Timestamp(0)));
        assert_eq!(one("2024-02-29T12:30:15Z"), Ok(Datum::Timestamp(1_709_209_815_000_000)));
        assert!(
            one("2024-13-01T00:00:00Z")
                .unwrap_err()
                .starts_with("price row 1: `2024-13-01T00:00:00Z` is no RFC 3339 time")
        );
        let err = parse_csv("a,b,c\n# a comment\nx,y,z\n").unwrap_err();
        assert_eq!(err, "price row 1: 3 fields, not 7");
    }

    /// Rates are pico-USD per token; NULL cached and reasoning prices fall back to the input
    /// and output prices; a row without an input or output price, or with a negative one,
    /// prices nothing.
    #[test]
    fn rates_per_token() {
        let r = row("*", "m", 0, [Some(2.5), None, Some(10.0), None]).rates.expect("rates");
        assert_eq!(r, Rates { input: 2_500_000, cached_input: 2_500_000, output: 10_000_000, reasoning: 10_000_000 });
        let r = row("*", "m", 0, [Some(0.075), Some(0.0375), Some(0.3), Some(3.5)]).rates.expect("rates");
        assert_eq!(r, Rates { input: 75_000, cached_input: 37_500, output: 300_000, reasoning: 3_500_000 });
        assert_eq!(row("*", "m", 0, [None, None, Some(1.0), None]).rates, None);
        assert_eq!(row("*", "m", 0, [Some(-1.0), None, Some(1.0), None]).rates, None);
        assert_eq!(row("*", "m", 0, [Some(f64::NAN), None, Some(1.0), None]).rates, None);
        assert_eq!(row("*", "m", 0, [Some(1e300), None, Some(1.0), None]).rates, None);
        assert_eq!(row("*", "m", 0, [Some(1.0), Some(2e6), Some(1.0), None]).rates, None);
        assert!(row("*", "m", 0, [Some(1e6), None, Some(1e6), None]).rates.is_some());
    }

    /// A price out of range is reported with its column, value and key; NULL is not.
    #[test]
    fn prices_out_of_range_are_reported() {
        let mut r =
            vec![Datum::Text("openai".into()), Datum::Text("gpt-4o*".into()), Datum::Timestamp(1_730_419_200_000_500)];
        r.extend([Datum::float(Some(1e300)), Datum::Null, Datum::float(Some(-1.0)), Datum::float(Some(2.0))]);
        assert_eq!(
            price_errors(&r),
            vec![
                "price out of range in input_usd_per_mtok: 1e300 (key ('openai', 'gpt-4o*', 2024-11-01 00:00:00.000500)): USD per 1M tokens must be in 0..=1000000; the row prices nothing",
                "price out of range in output_usd_per_mtok: -1.0 (key ('openai', 'gpt-4o*', 2024-11-01 00:00:00.000500)): USD per 1M tokens must be in 0..=1000000; the row prices nothing",
            ]
        );
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59.999999");
        assert_eq!(format_utc(1_709_209_815_000_000), "2024-02-29 12:30:15");
    }

    /// The most specific row wins (exact model, longer pattern, own provider), then the latest
    /// `valid_from` at or before the call's start.
    #[test]
    fn the_most_specific_price_at_the_calls_start_wins() {
        let p = [Some(1.0), None, Some(1.0), None];
        let rows = [
            row("*", "gpt-4o*", 0, p),
            row("*", "gpt-4o-mini*", 0, p),
            row("*", "gpt-4o-2024-05-13", 0, p),
            row("openai", "gpt-4o*", 100, p),
            row("*", "gpt-4o*", 200, p),
        ];
        let pick = |provider, model, start| {
            let a = applicable(&rows, provider, model);
            price_at(&a, start).map(|a| (a.row.provider.clone(), a.row.model.clone(), a.row.valid_from))
        };
        let won = |p: &str, m: &str, v| Some((p.to_owned(), m.to_owned(), v));
        assert_eq!(pick(Some("openai"), "gpt-4o-mini-2024-07-18", Some(50)), won("*", "gpt-4o-mini*", 0));
        assert_eq!(pick(Some("azure"), "gpt-4o-2024-05-13", Some(500)), won("*", "gpt-4o-2024-05-13", 0));
        // The exact model comes first, even over the provider's own pattern.
        assert_eq!(pick(Some("openai"), "gpt-4o-2024-05-13", Some(500)), won("*", "gpt-4o-2024-05-13", 0));
        // Before the provider's own row holds, the `*` row; from then on, the provider's own
        // (more specific than the later `*` row).
        assert_eq!(pick(Some("openai"), "gpt-4o-2024-08-06", Some(99)), won("*", "gpt-4o*", 0));
        assert_eq!(pick(Some("openai"), "gpt-4o-2024-08-06", Some(100)), won("openai", "gpt-4o*", 100));
        assert_eq!(pick(Some("openai"), "gpt-4o-2024-08-06", Some(300)), won("openai", "gpt-4o*", 100));
        assert_eq!(pick(Some("azure"), "gpt-4o", Some(300)), won("*", "gpt-4o*", 200));
        assert_eq!(pick(None, "gpt-4o", None), won("*", "gpt-4o*", 200));
        assert_eq!(pick(Some("azure"), "gpt-4o", Some(-1)), None);
        assert_eq!(pick(Some("openai"), "claude-3-haiku", Some(300)), None);
    }

    /// Cost by hand: gpt-4o's 2.50 / 1.25 / 10.00 USD per 1M tokens, 1,000 input tokens of
    /// which 400 cached, 200 output of which 50 reasoning: 600 · 2.5e-6 + 400 · 1.25e-6 +
    /// 150 · 10e-6 + 50 · 10e-6 = 0.0015 + 0.0005 + 0.0015 + 0.0005 = 0.004 USD.
    #[test]
    fn cost_by_hand() {
        let r = row("*", "gpt-4o*", 0, [Some(2.5), Some(1.25), Some(10.0), None]).rates.expect("rates");
        let t = Tokens { input: Some(1000), cached_input: Some(400), output: Some(200), reasoning: Some(50) };
        assert_eq!(cost_pusd(&r, &t), Some(4_000_000_000));
        assert_eq!(usd(4_000_000_000), 0.004);
        assert_eq!(cost_pusd(&r, &Tokens::default()), None);
        // Only output known: 10 · 10e-6 = 0.0001 USD.
        assert_eq!(cost_pusd(&r, &Tokens { output: Some(10), ..Tokens::default() }), Some(100_000_000));
        // More cached than input: the cached ones at their price, nothing at the input price.
        let t = Tokens { input: Some(10), cached_input: Some(20), ..Tokens::default() };
        assert_eq!(cost_pusd(&r, &t), Some(20 * 1_250_000));
    }
}
