//! Purchase imports: NDJSON lines (`POST /api/purchases`) and CSV files (`instore-sync
//! purchases import`, converted to the same records before they are sent).
//!
//! In: lines with their numbers, or CSV text. Out: purchases stored once by `purchase_id`, their
//! members marked for recomputation, and a report: imported, duplicates, purchases of members
//! head office does not know yet, and every refused line with its number and reason (the rest
//! are imported). Lines are stored in chunks, one transaction each; a chunk is whole or not at
//! all.
//!
//! CSV: a header row naming at least `purchase_id, member_id, store_id, at, amount_minor,
//! currency`, optionally `sku, category, qty, item_amount_minor`. With item columns each row is
//! one item, and consecutive rows of one `purchase_id` make one purchase (their purchase columns
//! must agree); without them each row is a purchase without items.

use std::collections::HashMap;

use instore_protocol::purchase::{PurchaseItem, PurchaseRecord, parse_line};
use serde::{Deserialize, Serialize};

use crate::{
    now_ms,
    store::{Store, StoreError, purchases},
};

/// Refused lines listed in a report, at most (the count is always complete).
pub const MAX_LISTED_ERRORS: usize = 1_000;

/// A refused line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkippedLine {
    pub line: usize,
    pub error: String,
}

/// The JSON answer to `POST /api/purchases` (and the CLI's summary).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurchaseReport {
    pub imported: u64,
    pub duplicates: u64,
    /// Stored, but of members head office does not hold (yet).
    pub unknown_members: u64,
    pub skipped_total: u64,
    /// The first [`MAX_LISTED_ERRORS`] refused lines.
    pub skipped: Vec<SkippedLine>,
}

impl PurchaseReport {
    pub fn skip(&mut self, line: usize, error: impl Into<String>) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_LISTED_ERRORS {
            self.skipped.push(SkippedLine {
                line,
                error: error.into(),
            });
        }
    }

    /// Adds a later report, its line numbers shifted by `offset`.
    pub fn merge(&mut self, other: PurchaseReport, offset: usize) {
        self.imported += other.imported;
        self.duplicates += other.duplicates;
        self.unknown_members += other.unknown_members;
        self.skipped_total += other.skipped_total;
        for s in other.skipped {
            if self.skipped.len() < MAX_LISTED_ERRORS {
                self.skipped.push(SkippedLine {
                    line: s.line + offset,
                    error: s.error,
                });
            }
        }
    }
}

/// Parses and stores numbered NDJSON lines (blank lines are skipped silently). `currency`: the
/// configured currency, if any; a purchase in another is refused.
pub async fn import_lines(
    store: &Store,
    lines: Vec<(usize, String)>,
    currency: Option<&str>,
    report: &mut PurchaseReport,
) -> Result<(), StoreError> {
    let mut valid = Vec::with_capacity(lines.len());
    for (no, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok((p, at)) => match currency {
                Some(c) if p.currency != c => report.skip(
                    no,
                    format!("currency {} is not head office's {c}", p.currency),
                ),
                _ => valid.push((p, at)),
            },
            Err(e) => report.skip(no, e.to_string()),
        }
    }
    if valid.is_empty() {
        return Ok(());
    }
    let counts = store
        .call(move |db| {
            let mut tx = db.transaction()?;
            let now = now_ms();
            let mut counts = [0u64; 3];
            for (p, at) in &valid {
                match purchases::insert(&mut tx, p, *at, now)? {
                    purchases::Stored::New => counts[0] += 1,
                    purchases::Stored::Duplicate => counts[1] += 1,
                    purchases::Stored::NewUnknownMember => {
                        counts[0] += 1;
                        counts[2] += 1;
                    }
                }
            }
            tx.commit()?;
            Ok(counts)
        })
        .await?;
    report.imported += counts[0];
    report.duplicates += counts[1];
    report.unknown_members += counts[2];
    Ok(())
}

/// The required CSV columns.
const CSV_REQUIRED: [&str; 6] = [
    "purchase_id",
    "member_id",
    "store_id",
    "at",
    "amount_minor",
    "currency",
];

/// Reads CSV purchases; yields `(first line of the purchase, record or error)` in file order.
pub struct CsvPurchases<R: std::io::Read> {
    rows: csv::StringRecordsIntoIter<R>,
    columns: HashMap<String, usize>,
    has_items: bool,
    pending: Option<(usize, PurchaseRecord)>,
    header_error: Option<String>,
    done: bool,
}

impl<R: std::io::Read> CsvPurchases<R> {
    pub fn new(reader: R) -> Self {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let (columns, header_error) = match rdr.headers() {
            Ok(h) => {
                let columns: HashMap<String, usize> = h
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (name.to_ascii_lowercase(), i))
                    .collect();
                let missing: Vec<&str> = CSV_REQUIRED
                    .iter()
                    .copied()
                    .filter(|c| !columns.contains_key(*c))
                    .collect();
                let err = (!missing.is_empty())
                    .then(|| format!("header row lacks column(s) {}", missing.join(", ")));
                (columns, err)
            }
            Err(e) => (HashMap::new(), Some(format!("unreadable header row: {e}"))),
        };
        let has_items = columns.contains_key("item_amount_minor");
        Self {
            rows: rdr.into_records(),
            columns,
            has_items,
            pending: None,
            header_error,
            done: false,
        }
    }

    fn field<'a>(&self, row: &'a csv::StringRecord, name: &str) -> Option<&'a str> {
        self.columns
            .get(name)
            .and_then(|&i| row.get(i))
            .filter(|s| !s.is_empty())
    }

    fn purchase(&self, row: &csv::StringRecord) -> Result<PurchaseRecord, String> {
        let req = |name: &str| {
            self.field(row, name)
                .map(str::to_string)
                .ok_or_else(|| format!("empty {name}"))
        };
        let amount: i64 = req("amount_minor")?
            .parse()
            .map_err(|_| "amount_minor is not an integer".to_string())?;
        Ok(PurchaseRecord {
            purchase_id: req("purchase_id")?,
            member_id: req("member_id")?,
            store_id: req("store_id")?,
            at: req("at")?,
            amount_minor: amount,
            currency: req("currency")?,
            items: Vec::new(),
        })
    }

    fn item(&self, row: &csv::StringRecord) -> Result<PurchaseItem, String> {
        let amount: i64 = self
            .field(row, "item_amount_minor")
            .ok_or("empty item_amount_minor")?
            .parse()
            .map_err(|_| "item_amount_minor is not an integer".to_string())?;
        let qty = match self.field(row, "qty") {
            Some(q) => q.parse().map_err(|_| "qty is not an integer".to_string())?,
            None => 1,
        };
        Ok(PurchaseItem {
            sku: self.field(row, "sku").map(str::to_string),
            category: self.field(row, "category").map(str::to_string),
            qty,
            amount_minor: amount,
        })
    }
}

impl<R: std::io::Read> Iterator for CsvPurchases<R> {
    type Item = (usize, Result<PurchaseRecord, String>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.header_error.take() {
            self.done = true;
            return Some((1, Err(e)));
        }
        loop {
            let Some(row) = self.rows.next() else {
                self.done = true;
                return self.pending.take().map(|(l, p)| (l, Ok(p)));
            };
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line() as usize);
                    return Some((line, Err(format!("unreadable CSV row: {e}"))));
                }
            };
            let line = row.position().map_or(0, |p| p.line() as usize);
            let purchase = match self.purchase(&row) {
                Ok(p) => p,
                Err(e) => return Some((line, Err(e))),
            };
            if !self.has_items {
                return Some((line, Ok(purchase)));
            }
            let item = match self.item(&row) {
                Ok(i) => i,
                Err(e) => return Some((line, Err(e))),
            };
            match &mut self.pending {
                Some((_, p)) if p.purchase_id == purchase.purchase_id => {
                    if (
                        &p.member_id,
                        &p.store_id,
                        &p.at,
                        p.amount_minor,
                        &p.currency,
                    ) != (
                        &purchase.member_id,
                        &purchase.store_id,
                        &purchase.at,
                        purchase.amount_minor,
                        &purchase.currency,
                    ) {
                        return Some((
                            line,
                            Err(format!(
                                "row of purchase {} disagrees with its first row",
                                purchase.purchase_id
                            )),
                        ));
                    }
                    p.items.push(item);
                }
                _ => {
                    let mut next = purchase;
                    next.items.push(item);
                    let done = self.pending.replace((line, next));
                    if let Some((l, p)) = done {
                        return Some((l, Ok(p)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_of_one_purchase_become_its_items() {
        let csv = "purchase_id,member_id,store_id,at,amount_minor,currency,sku,category,qty,item_amount_minor\n\
                   P1,M1,s1,2026-11-02T15:04:00Z,1000,EUR,S1,linen,1,900\n\
                   P1,M1,s1,2026-11-02T15:04:00Z,1000,EUR,S2,socks,2,100\n\
                   P2,M2,s1,2026-11-03T10:00:00Z,-500,EUR,S1,linen,-1,-500\n";
        let out: Vec<_> = CsvPurchases::new(csv.as_bytes()).collect();
        assert_eq!(out.len(), 2);
        let (line, p) = &out[0];
        let p = p.as_ref().unwrap();
        assert_eq!((*line, p.items.len(), p.items[1].qty), (2, 2, 2));
        let (line, p) = &out[1];
        assert_eq!((*line, p.as_ref().unwrap().amount_minor), (4, -500));
        assert!(
            out.iter()
                .all(|(_, p)| p.as_ref().unwrap().validate().is_ok())
        );
    }

    #[test]
    fn csv_without_item_columns_is_one_purchase_per_row_and_bad_rows_name_their_line() {
        let csv = "purchase_id,member_id,store_id,at,amount_minor,currency\n\
                   P1,M1,s1,2026-11-02T15:04:00Z,1000,EUR\n\
                   P2,M1,s1,2026-11-02T15:04:00Z,ten,EUR\n\
                   P3,,s1,2026-11-02T15:04:00Z,5,EUR\n";
        let out: Vec<_> = CsvPurchases::new(csv.as_bytes()).collect();
        assert_eq!(out.len(), 3);
        assert!(out[0].1.is_ok());
        assert_eq!(out[1].0, 3);
        assert!(out[1].1.as_ref().unwrap_err().contains("amount_minor"));
        assert!(out[2].1.as_ref().unwrap_err().contains("member_id"));
    }

    #[test]
    fn a_csv_header_without_the_required_columns_is_refused_once() {
        let out: Vec<_> = CsvPurchases::new("purchase_id,member\nP1,M1\n".as_bytes()).collect();
        assert_eq!(out.len(), 1);
        let err = out[0].1.as_ref().unwrap_err();
        assert!(
            err.contains("store_id") && err.contains("currency"),
            "{err}"
        );
    }
}
