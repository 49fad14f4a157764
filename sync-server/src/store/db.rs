//! One database API over SQLite (rusqlite, the single-machine default) and PostgreSQL (the
//! `postgres` client, for a chain that outgrows one machine), so that every storage function is
//! written once and one test suite runs on both.
//!
//! SQL is written once where the dialects agree, with SQLite's numbered placeholders (`?1`);
//! the PostgreSQL side rewrites them to `$1` once per statement and caches the prepared
//! statement. Where the dialects differ, a statement carries both texts ([`Sql::per_backend`]).
//! Portable habits the statements follow: `ON CONFLICT ... DO NOTHING/UPDATE` rather than
//! `INSERT OR IGNORE`; `CASE` rather than the two-argument `MAX`; `CAST(SUM(x) AS BIGINT)`
//! because PostgreSQL's `SUM(bigint)` is `numeric`; integers are 64-bit everywhere (`BIGINT`).
//!
//! Values cross as [`Value`]; rows come back as [`Row`]s with typed getters that name the
//! column on a mismatch instead of panicking.

use std::collections::HashMap;

use super::StoreError;

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A statement's text for each backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sql {
    sqlite: &'static str,
    postgres: &'static str,
}

impl Sql {
    /// One text for both (placeholders `?N`; rewritten for PostgreSQL).
    pub const fn same(text: &'static str) -> Self {
        Self {
            sqlite: text,
            postgres: text,
        }
    }

    /// Different texts where the dialects disagree.
    pub const fn per_backend(sqlite: &'static str, postgres: &'static str) -> Self {
        Self { sqlite, postgres }
    }

    pub fn text(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }
}

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
/// Values above `i64::MAX` cannot be stored; callers bound their numbers before this.
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `params![a, b, c]` → `&[Value]`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::store::db::Value] };
    ($($p:expr),+ $(,)?) => { &[$($crate::store::db::Value::from($p)),+] as &[$crate::store::db::Value] };
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} missing from a row")))
    }

    pub fn i64(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(type_error(i, "an integer", other)),
        }
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(type_error(i, "an integer or NULL", other)),
        }
    }

    /// A non-negative integer (counts, sequence numbers, versions); negatives read as 0.
    pub fn u64(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.i64(i)?.max(0) as u64)
    }

    pub fn f64(&self, i: usize) -> Result<f64, StoreError> {
        match self.at(i)? {
            Value::Real(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            other => Err(type_error(i, "a number", other)),
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.i64(i)? != 0)
    }

    pub fn str(&self, i: usize) -> Result<&str, StoreError> {
        match self.at(i)? {
            Value::Text(v) => Ok(v),
            other => Err(type_error(i, "text", other)),
        }
    }

    pub fn string(&self, i: usize) -> Result<String, StoreError> {
        self.str(i).map(str::to_string)
    }

    pub fn opt_string(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(type_error(i, "text or NULL", other)),
        }
    }

    pub fn blob(&self, i: usize) -> Result<&[u8], StoreError> {
        match self.at(i)? {
            Value::Blob(v) => Ok(v),
            other => Err(type_error(i, "a blob", other)),
        }
    }
}

fn type_error(i: usize, wanted: &str, got: &Value) -> StoreError {
    StoreError::Corrupt(format!("column {i}: expected {wanted}, found {got:?}"))
}

/// A connection to either backend. One owner at a time (see [`super::Store`]).
pub struct Db {
    inner: Inner,
}

// One per process (or a few): the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(PgConn),
}

struct PgConn {
    client: postgres::Client,
    /// Prepared statements by their (SQLite-style) text; valid for the connection's life.
    statements: HashMap<&'static str, postgres::Statement>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.backend().name())
    }
}

impl Db {
    pub fn from_sqlite(conn: rusqlite::Connection) -> Self {
        // rusqlite keeps 16 by default; head office runs more distinct statements than that
        // (multi-row ones in several sizes) and re-preparing costs a parse each time.
        conn.set_prepared_statement_cache_capacity(256);
        Self {
            inner: Inner::Sqlite(conn),
        }
    }

    /// Connects to PostgreSQL. `url` is a libpq-style URL (`postgres://user@host:port/db`,
    /// `?options=-csearch_path%3Dschema` to work in a schema).
    pub fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let client = postgres::Client::connect(url, postgres::NoTls)?;
        Ok(Self {
            inner: Inner::Postgres(PgConn {
                client,
                statements: HashMap::new(),
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs a batch of statements without parameters (schema migrations, pragmas).
    pub fn batch(&mut self, text: &str) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Sqlite(c) => c.execute_batch(text)?,
            Inner::Postgres(p) => p.client.batch_execute(text)?,
        }
        Ok(())
    }

    /// Starts a transaction that may write; dropped without [`Tx::commit`] it rolls back.
    ///
    /// On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a deferred transaction that
    /// reads, then writes after another connection committed, fails with `SQLITE_BUSY` at once
    /// instead of waiting (the busy timeout cannot help a lock upgrade). Reads that never write
    /// use [`Db::read_transaction`] so they do not hold the lock.
    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        self.begin(rusqlite::TransactionBehavior::Immediate)
    }

    /// A transaction that only reads: one consistent view, no write lock (SQLite `DEFERRED`).
    pub fn read_transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        self.begin(rusqlite::TransactionBehavior::Deferred)
    }

    fn begin(&mut self, behavior: rusqlite::TransactionBehavior) -> Result<Tx<'_>, StoreError> {
        Ok(Tx {
            inner: match &mut self.inner {
                Inner::Sqlite(c) => TxInner::Sqlite(c.transaction_with_behavior(behavior)?),
                Inner::Postgres(p) => TxInner::Postgres {
                    tx: p.client.transaction()?,
                    statements: &mut p.statements,
                },
            },
        })
    }

    /// A statement outside an explicit transaction (each is its own).
    pub fn execute(&mut self, sql: &Sql, params: &[Value]) -> Result<u64, StoreError> {
        let mut tx = self.transaction()?;
        let n = tx.execute(sql, params)?;
        tx.commit()?;
        Ok(n)
    }

    /// A read-only query outside an explicit transaction.
    pub fn query(&mut self, sql: &Sql, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut tx = self.read_transaction()?;
        let rows = tx.query(sql, params)?;
        tx.commit()?;
        Ok(rows)
    }

    pub fn query_opt(&mut self, sql: &Sql, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// An open transaction on either backend.
pub struct Tx<'a> {
    inner: TxInner<'a>,
}

enum TxInner<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres {
        tx: postgres::Transaction<'a>,
        statements: &'a mut HashMap<&'static str, postgres::Statement>,
    },
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tx({})", self.backend().name())
    }
}

impl<'a> Tx<'a> {
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres { .. } => Backend::Postgres,
        }
    }

    pub fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Sqlite(t) => t.commit()?,
            TxInner::Postgres { tx, .. } => tx.commit()?,
        }
        Ok(())
    }

    /// Runs statements without parameters inside the transaction (migrations).
    pub fn batch(&mut self, text: &str) -> Result<(), StoreError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => t.execute_batch(text)?,
            TxInner::Postgres { tx, .. } => tx.batch_execute(text)?,
        }
        Ok(())
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &Sql, params: &[Value]) -> Result<u64, StoreError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => {
                let mut stmt = t.prepare_cached(sql.sqlite)?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            TxInner::Postgres { tx, statements } => {
                let stmt = pg_prepare(tx, statements, sql.postgres)?;
                let refs = pg_params(params);
                Ok(tx.execute(&stmt, &refs)?)
            }
        }
    }

    /// Runs a query and collects its rows.
    pub fn query(&mut self, sql: &Sql, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        self.for_each(sql, params, |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok(rows)
    }

    pub fn query_opt(&mut self, sql: &Sql, params: &[Value]) -> Result<Option<Row>, StoreError> {
        let mut first = None;
        self.for_each(sql, params, |r| {
            if first.is_none() {
                first = Some(r);
            }
            Ok(())
        })?;
        Ok(first)
    }

    /// The query's single row; an error if there is none.
    pub fn query_one(&mut self, sql: &Sql, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "expected a row from {}",
                sql.text(self.backend()).trim()
            ))
        })
    }

    /// Streams a query's rows into `f` without collecting them (full recomputes, snapshots).
    pub fn for_each(
        &mut self,
        sql: &Sql,
        params: &[Value],
        mut f: impl FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => {
                let mut stmt = t.prepare_cached(sql.sqlite)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(r) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(sqlite_value(r.get_ref(i)?));
                    }
                    f(Row(values))?;
                }
                Ok(())
            }
            TxInner::Postgres { tx, statements } => {
                use postgres::fallible_iterator::FallibleIterator;
                let stmt = pg_prepare(tx, statements, sql.postgres)?;
                let refs = pg_params(params);
                let mut rows = tx.query_raw(&stmt, refs)?;
                while let Some(r) = rows.next()? {
                    f(pg_row(&r)?)?;
                }
                Ok(())
            }
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// `?N` → `$N`. Our statements use `?` only as placeholders.
fn pg_text(sqlite_style: &str) -> String {
    sqlite_style.replace('?', "$")
}

fn pg_prepare(
    tx: &mut postgres::Transaction<'_>,
    statements: &mut HashMap<&'static str, postgres::Statement>,
    text: &'static str,
) -> Result<postgres::Statement, StoreError> {
    if let Some(s) = statements.get(text) {
        return Ok(s.clone());
    }
    let stmt = tx.prepare(&pg_text(text))?;
    statements.insert(text, stmt.clone());
    Ok(stmt)
}

fn pg_params(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_row(r: &postgres::Row) -> Result<Row, StoreError> {
    use postgres::types::Type;
    let mut values = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *ty == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into()))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            return Err(StoreError::Corrupt(format!(
                "column {} has PostgreSQL type {ty}, which the store does not read (CAST it)",
                col.name()
            )));
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => {
                if *ty == Type::INT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*v)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*v)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*v != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (*v as f64).to_sql(ty, out)
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    v.to_string().to_sql(ty, out)
                } else {
                    Err(format!("cannot send an integer as {ty}").into())
                }
            }
            Value::Real(v) => {
                if *ty == Type::FLOAT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::FLOAT4 {
                    (*v as f32).to_sql(ty, out)
                } else {
                    Err(format!("cannot send a real as {ty}").into())
                }
            }
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        // Checked per value in `to_sql`: one Value type stands for every column type.
        true
    }

    postgres::types::to_sql_checked!();
}
