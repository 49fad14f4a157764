//! Multi-row statements: many rows in one round trip.
//!
//! On PostgreSQL every statement is a round trip to the server; ingest wrote six per arrival
//! and spent most of its time waiting on the network (`idle in transaction` on the server side,
//! the machine a third idle). A multi-row `VALUES` list works the same on both backends, keeps
//! `ON CONFLICT DO NOTHING` as the idempotence rule, and with `RETURNING` tells which rows were
//! new, which a `COPY` into a staging table would only tell through a second statement.
//!
//! Statements are built for 1, 2, 4, … [`MAX_ROWS`] rows only, so a template has at most eight
//! texts: each is prepared once per connection (PostgreSQL) or kept in the statement cache
//! (SQLite), and the texts live as long as the process (built once, then shared).

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use super::{
    StoreError,
    db::{Row, Sql, Tx, Value},
};

/// Rows per statement, at most. 128 rows of the widest statement (events, 7 columns) bind 896
/// parameters, far below PostgreSQL's 65,535 and SQLite's 32,766.
pub const MAX_ROWS: usize = 128;

/// A statement with a `VALUES` list of `width` placeholders per row between `head` and `tail`.
/// Placeholders are numbered `?1..` in row order, as [`for_each`] binds them.
#[derive(Debug)]
pub struct Rows {
    pub head: &'static str,
    pub width: usize,
    pub tail: &'static str,
}

impl Rows {
    /// The statement for `n` rows, `n` a power of two up to [`MAX_ROWS`].
    fn sql(&self, n: usize) -> Sql {
        type Texts = Mutex<HashMap<(&'static str, &'static str, usize), &'static str>>;
        static TEXTS: OnceLock<Texts> = OnceLock::new();
        let texts = TEXTS.get_or_init(Default::default);
        // A panic elsewhere while holding the lock leaves the map intact: keep using it.
        let mut texts = texts.lock().unwrap_or_else(|e| e.into_inner());
        let text = *texts
            .entry((self.head, self.tail, n))
            .or_insert_with(|| Box::leak(self.text(n).into_boxed_str()));
        Sql::same(text)
    }

    fn text(&self, n: usize) -> String {
        let mut s = String::with_capacity(self.head.len() + self.tail.len() + n * self.width * 6);
        s.push_str(self.head);
        let mut p = 0;
        for row in 0..n {
            s.push_str(if row == 0 { " (" } else { ", (" });
            for col in 0..self.width {
                p += 1;
                if col > 0 {
                    s.push_str(", ");
                }
                s.push('?');
                s.push_str(&p.to_string());
            }
            s.push(')');
        }
        s.push(' ');
        s.push_str(self.tail);
        s
    }
}

/// Runs `stmt` over `values` (`stmt.width` values per row, row after row) in as few statements
/// as the power-of-two sizes allow, passing every returned row to `f` (in no promised order).
pub fn for_each(
    tx: &mut Tx<'_>,
    stmt: &Rows,
    values: &[Value],
    mut f: impl FnMut(Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if stmt.width == 0 || !values.len().is_multiple_of(stmt.width) {
        return Err(StoreError::Corrupt(format!(
            "{} values do not make rows of {}",
            values.len(),
            stmt.width
        )));
    }
    let mut rest = values;
    while !rest.is_empty() {
        let rows = rest.len() / stmt.width;
        let n = if rows >= MAX_ROWS {
            MAX_ROWS
        } else {
            // The largest power of two not above `rows`.
            1 << (usize::BITS - 1 - rows.leading_zeros())
        };
        let (chunk, tail) = rest.split_at(n * stmt.width);
        tx.for_each(&stmt.sql(n), chunk, &mut f)?;
        rest = tail;
    }
    Ok(())
}

/// [`for_each`] for statements that return nothing.
pub fn execute(tx: &mut Tx<'_>, stmt: &Rows, values: &[Value]) -> Result<(), StoreError> {
    for_each(tx, stmt, values, |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::each_backend;

    static INSERT: Rows = Rows {
        head: "INSERT INTO meta (key, value) VALUES",
        width: 2,
        tail: "ON CONFLICT DO NOTHING RETURNING key",
    };

    #[test]
    fn texts_number_placeholders_row_after_row() {
        assert_eq!(
            INSERT.text(2),
            "INSERT INTO meta (key, value) VALUES (?1, ?2), (?3, ?4) \
             ON CONFLICT DO NOTHING RETURNING key"
        );
    }

    #[test]
    fn any_number_of_rows_is_written_once_and_each_new_row_returned() {
        each_backend(|db| {
            for n in [1usize, 2, 3, 127, 128, 129, 300] {
                let keys: Vec<String> = (0..n).map(|i| format!("k{n}-{i:04}")).collect();
                // Every other row twice: the second is a conflict and is not returned.
                let mut values = Vec::new();
                for (i, k) in keys.iter().enumerate() {
                    values.extend([Value::from(k), Value::from(1i64)]);
                    if i % 2 == 0 {
                        values.extend([Value::from(k), Value::from(2i64)]);
                    }
                }
                let mut tx = db.transaction().unwrap();
                let mut returned = Vec::new();
                for_each(&mut tx, &INSERT, &values, |r| {
                    returned.push(r.string(0)?);
                    Ok(())
                })
                .unwrap();
                tx.commit().unwrap();
                returned.sort();
                assert_eq!(returned, keys, "{n} rows");
            }
        });
    }

    #[test]
    fn values_that_do_not_make_whole_rows_are_refused() {
        each_backend(|db| {
            let mut tx = db.transaction().unwrap();
            let err = execute(&mut tx, &INSERT, &[Value::from("k")]).unwrap_err();
            assert!(err.to_string().contains("rows of 2"), "{err}");
        });
    }
}
