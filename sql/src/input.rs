//! Validated table inputs: a multiset per table that refuses to go negative.

use std::collections::HashMap;

use amx_dataflows::Diff;
use amx_dataflows::row::Row;

/// The current contents of a table fed into a dataflow, used to validate changes *before*
/// they enter it: a delete of a row that is not there is rejected at the input rather than
/// passed on as a negative count.
#[derive(Clone, Debug, Default)]
pub struct TableContents {
    rows: HashMap<Row, Diff>,
}

impl TableContents {
    /// Applies `diff` copies of `row` (negative: deletes).
    ///
    /// Errors, changing nothing, when the delete would remove more copies than are present.
    pub fn update(&mut self, row: Row, diff: Diff) -> Result<(), String> {
        let present = self.rows.get(&row).copied().unwrap_or(0);
        if present + diff < 0 {
            return Err(format!("delete of {} copies of a row present {} times: {row:?}", -diff, present));
        }
        if present + diff == 0 {
            self.rows.remove(&row);
        } else {
            self.rows.insert(row, present + diff);
        }
        Ok(())
    }

    /// Every row, repeated by its multiplicity.
    pub fn rows(&self) -> Vec<Row> {
        self.rows.iter().flat_map(|(r, n)| std::iter::repeat_n(r.clone(), *n as usize)).collect()
    }

    /// Distinct rows with multiplicities.
    pub fn counts(&self) -> &HashMap<Row, Diff> {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use amx_dataflows::row::Datum;

    use super::TableContents;

    #[test]
    fn deleting_an_absent_row_is_rejected() {
        let mut t = TableContents::default();
        let a = vec![Datum::Int(1)];
        t.update(a.clone(), 2).unwrap();
        assert!(t.update(a.clone(), -3).is_err());
        assert_eq!(t.counts()[&a], 2, "a rejected delete changes nothing");
        assert!(t.update(vec![Datum::Int(9)], -1).is_err());
        t.update(a.clone(), -2).unwrap();
        assert!(t.counts().is_empty());
    }
}
