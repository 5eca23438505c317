//! One small SQL API over the store's two backends, SQLite and PostgreSQL,
//! so each statement is written once.
//!
//! [`Conn`] mirrors the part of rusqlite the store uses (`prepare_cached`,
//! `query_row`, `query_map`, `execute`, `transaction`, `optional`), with
//! values as [`Value`] on both sides. Statements are written in the dialect
//! both databases share: numbered parameters `?1`, `?2` (rewritten to `$1`,
//! `$2` for PostgreSQL), `ON CONFLICT … DO NOTHING/UPDATE`, `RETURNING`,
//! `CAST(… AS BIGINT)` for sums. The few statements that cannot be shared
//! (JSON functions, full-text search) ask [`Conn::dialect`].
//!
//! A [`Conn`] belongs to one thread at a time (the store's workers); its
//! PostgreSQL client sits in a `RefCell` so that `&Conn` can run statements
//! as `&rusqlite::Connection` can.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// The advisory lock every PostgreSQL transaction takes ("EDGEWRIT").
pub const WRITE_LOCK: i64 = 0x4544_4745_5752_4954;

/// Which database a [`Conn`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The statement fragments the two dialects spell differently.
impl Dialect {
    /// A FROM item giving the elements of the JSON array `array` (a TEXT
    /// column) as rows of `alias.value`: text for strings, JSON for objects.
    pub fn json_items(self, array: &str, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_each({array}) AS {alias}"),
            Dialect::Postgres => {
                format!("json_array_elements_text({array}::json) AS {alias}(value)")
            }
        }
    }

    /// The text of field `key` of the JSON object `json`.
    pub fn json_field(self, json: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({json}, '$.{key}')"),
            Dialect::Postgres => format!("(({json})::json ->> '{key}')"),
        }
    }

    /// The length of the JSON array `array`.
    pub fn json_length(self, array: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_array_length({array})"),
            Dialect::Postgres => format!("json_array_length({array}::json)"),
        }
    }

    /// Whether `haystack` contains `needle` as a substring (no wildcards).
    pub fn contains(self, haystack: &str, needle: &str) -> String {
        match self {
            Dialect::Sqlite => format!("instr({haystack}, {needle}) > 0"),
            Dialect::Postgres => format!("strpos({haystack}, {needle}) > 0"),
        }
    }
}

/// An error of the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("query returned no rows")]
    NoRows,
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", error_chain(.0))]
    Postgres(#[from] postgres::Error),
    #[error("column {column}: {detail}")]
    Column { column: String, detail: String },
}

impl SqlError {
    /// A stored value that does not parse as what the column holds.
    pub fn conversion(column: impl ToString, detail: impl ToString) -> SqlError {
        SqlError::Column {
            column: column.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// An error and its causes, `outer: inner: …` (the PostgreSQL client's
/// errors say "db error" and keep the server's message in their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// One SQL value, the same on both backends.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// A Rust value that binds as a statement parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i8, i16, i32, i64, u8, u16, u32, isize);

impl ToValue for u64 {
    fn to_value(&self) -> Value {
        // Design: values past i64::MAX are clamped: no column holds one.
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for f32 {
    fn to_value(&self) -> Value {
        Value::Real(f64::from(*self))
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// A statement's parameters: `params![…]`, an array or `[]`.
pub trait Params {
    fn values(self) -> Vec<Value>;
}
impl Params for &[&dyn ToValue] {
    fn values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl Params for [&dyn ToValue; 0] {
    fn values(self) -> Vec<Value> {
        Vec::new()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(self) -> Vec<Value> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);
impl Params for Vec<Value> {
    fn values(self) -> Vec<Value> {
        self
    }
}

/// `params![a, b]`: parameters of mixed types, as rusqlite's macro.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::sql::ToValue] };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue]
    };
}
pub(crate) use params;

/// A Rust value read from a column.
pub trait FromValue: Sized {
    fn from_value(v: Value) -> Result<Self, String>;
}

fn mismatch<T>(want: &str, got: &Value) -> Result<T, String> {
    Err(format!("expected {want}, found {}", got.kind()))
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|e| e.to_string()),
                    other => mismatch("an integer", &other),
                }
            }
        }
    )*};
}
int_from_value!(i32, i64, u8, u16, u32, u64, usize);

impl FromValue for bool {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i != 0),
            other => mismatch("a boolean", &other),
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Real(r) => Ok(r),
            Value::Int(i) => Ok(i as f64),
            other => mismatch("a number", &other),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => mismatch("text", &other),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            other => mismatch("a blob", &other),
        }
    }
}
impl FromValue for Value {
    fn from_value(v: Value) -> Result<Self, String> {
        Ok(v)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// How a column is named in [`Row::get`]: its index or its name.
pub trait RowIndex {
    fn index(&self, names: &[String]) -> Result<usize, SqlError>;
}
impl RowIndex for usize {
    fn index(&self, names: &[String]) -> Result<usize, SqlError> {
        if *self < names.len() {
            Ok(*self)
        } else {
            Err(SqlError::conversion(self, "no such column"))
        }
    }
}
impl RowIndex for &str {
    fn index(&self, names: &[String]) -> Result<usize, SqlError> {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(self))
            .ok_or_else(|| SqlError::conversion(self, "no such column"))
    }
}

/// One result row, read whole.
#[derive(Debug, Clone)]
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> Result<T, SqlError> {
        let i = idx.index(&self.names)?;
        T::from_value(self.values[i].clone())
            .map_err(|detail| SqlError::conversion(&self.names[i], detail))
    }
}

/// `.optional()` on a single-row result, as rusqlite's extension.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, SqlError>;
}
impl<T> OptionalExtension<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A PostgreSQL client with its statements prepared once.
struct Pg {
    client: postgres::Client,
    prepared: HashMap<String, postgres::Statement>,
}

impl Pg {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, SqlError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&to_postgres(sql))?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<Pg>>),
}

/// A connection to either backend.
pub struct Conn {
    inner: Inner,
}

impl Conn {
    pub fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn {
            inner: Inner::Sqlite(conn),
        }
    }

    /// Connect to PostgreSQL at `url` (a libpq-style URL or key=value
    /// string). Plain TCP or a Unix socket: TLS to the database is the
    /// deployment's (a sidecar or a private network), see OPERATIONS.md.
    pub fn postgres(url: &str) -> Result<Conn, SqlError> {
        Conn::postgres_with(url, "", false)
    }

    /// A connection named `name` (its `application_name`, shown in
    /// `pg_stat_activity`) that notices a dead peer within seconds on both ends
    /// (for the leader lock, which must go with it): TCP keepalives after 5
    /// s idle and unacknowledged data failing the connection after 15 s on
    /// this side; the server's keepalives for this session likewise.
    pub fn postgres_watchful(url: &str, name: &str) -> Result<Conn, SqlError> {
        let conn = Conn::postgres_with(url, name, true)?;
        conn.execute_batch(
            "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3",
        )?;
        Ok(conn)
    }

    fn postgres_with(url: &str, name: &str, watchful: bool) -> Result<Conn, SqlError> {
        let mut config: postgres::Config = url.parse()?;
        if !name.is_empty() {
            config.application_name(name);
        }
        if watchful {
            config
                .keepalives_idle(std::time::Duration::from_secs(5))
                .keepalives_interval(std::time::Duration::from_secs(5))
                .tcp_user_timeout(std::time::Duration::from_secs(15));
        }
        // A database host that does not answer fails a request in seconds,
        // not after the kernel's TCP timeout; dead peers are noticed.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        config.keepalives(true);
        let client = config.connect(postgres::NoTls)?;
        Ok(Conn {
            inner: Inner::Postgres(Box::new(RefCell::new(Pg {
                client,
                prepared: HashMap::new(),
            }))),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether a PostgreSQL connection has been closed (by a server restart,
    /// say); SQLite's never is.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => false,
            Inner::Postgres(pg) => pg.borrow().client.is_closed(),
        }
    }

    /// PostgreSQL notifications on this connection (it ran `LISTEN`):
    /// waits up to `wait` for the first, then takes whatever else arrived.
    /// SQLite has none.
    pub fn notifications(&self, wait: std::time::Duration) -> Result<Vec<String>, SqlError> {
        use postgres::fallible_iterator::FallibleIterator;
        let Inner::Postgres(pg) = &self.inner else {
            return Ok(Vec::new());
        };
        let mut pg = pg.borrow_mut();
        let mut notes = pg.client.notifications();
        let mut out = Vec::new();
        let first = notes.timeout_iter(wait).next()?;
        if let Some(n) = first {
            out.push(n.payload().to_owned());
            let mut more = notes.iter();
            while let Some(n) = more.next()? {
                out.push(n.payload().to_owned());
            }
        }
        Ok(out)
    }

    /// Run statements without parameters or results (DDL, scripts).
    pub fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(pg) => Ok(pg.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// A statement to run (prepared and cached on first use).
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>, SqlError> {
        Ok(Stmt {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    /// The same as [`Conn::prepare_cached`]: every statement is cached.
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>, SqlError> {
        self.prepare_cached(sql)
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize, SqlError> {
        self.run_execute(sql, params.values())
    }

    pub fn query_row<P, T, F>(&self, sql: &str, params: P, f: F) -> Result<T, SqlError>
    where
        P: Params,
        F: FnOnce(&Row) -> Result<T, SqlError>,
    {
        let rows = self.run_query(sql, params.values())?;
        rows.first().ok_or(SqlError::NoRows).and_then(f)
    }

    /// Begin a transaction; dropped without [`Tx::commit`], it rolls back.
    ///
    /// On PostgreSQL every transaction first takes one transaction-level
    /// advisory lock ([`WRITE_LOCK`]), so transactions run one at a time as
    /// on SQLite (one writer), across the pool's connections and across
    /// replicas: the store's read-then-write transactions (a token used
    /// once, a sample labelled once) were written for that and stay correct
    /// under PostgreSQL's default isolation. Single statements and reads
    /// outside transactions still run side by side.
    pub fn transaction(&mut self) -> Result<Tx<'_>, SqlError> {
        match self.dialect() {
            Dialect::Sqlite => self.execute_batch("BEGIN")?,
            Dialect::Postgres => self.execute_batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            ))?,
        }
        Ok(Tx {
            conn: self,
            done: false,
        })
    }

    fn run_execute(&self, sql: &str, values: Vec<Value>) -> Result<usize, SqlError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?)
            }
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let stmt = pg.statement(sql)?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                Ok(pg.client.execute(&stmt, &refs)? as usize)
            }
        }
    }

    fn run_query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<Row>, SqlError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let names: Arc<[String]> = stmt.column_names().map(str::to_string).collect();
                let width = names.len();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut vals = Vec::with_capacity(width);
                    for i in 0..width {
                        vals.push(from_sqlite(r.get_ref(i)?));
                    }
                    out.push(Row {
                        names: names.clone(),
                        values: vals,
                    });
                }
                Ok(out)
            }
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let stmt = pg.statement(sql)?;
                let names: Arc<[String]> = stmt
                    .columns()
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect();
                let refs: Vec<&(dyn ToSql + Sync)> =
                    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let rows = pg.client.query(&stmt, &refs)?;
                rows.iter()
                    .map(|r| {
                        let mut vals = Vec::with_capacity(names.len());
                        for i in 0..names.len() {
                            vals.push(r.try_get::<_, Value>(i)?);
                        }
                        Ok(Row {
                            names: names.clone(),
                            values: vals,
                        })
                    })
                    .collect()
            }
        }
    }
}

/// A statement of a [`Conn`].
pub struct Stmt<'c> {
    conn: &'c Conn,
    sql: String,
}

impl Stmt<'_> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize, SqlError> {
        self.conn.run_execute(&self.sql, params.values())
    }

    pub fn query_row<P, T, F>(&mut self, params: P, f: F) -> Result<T, SqlError>
    where
        P: Params,
        F: FnOnce(&Row) -> Result<T, SqlError>,
    {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Every row, mapped by `f` (read whole first: no cursor is held).
    pub fn query_map<P, T, F>(&mut self, params: P, f: F) -> Result<MappedRows<F>, SqlError>
    where
        P: Params,
        F: FnMut(&Row) -> Result<T, SqlError>,
    {
        let rows = self.conn.run_query(&self.sql, params.values())?;
        Ok(MappedRows {
            rows: rows.into_iter(),
            f,
        })
    }
}

/// The rows of [`Stmt::query_map`], each mapped as it is taken.
pub struct MappedRows<F> {
    rows: std::vec::IntoIter<Row>,
    f: F,
}

impl<T, F: FnMut(&Row) -> Result<T, SqlError>> Iterator for MappedRows<F> {
    type Item = Result<T, SqlError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rows.next().map(|r| (self.f)(&r))
    }
}

/// An open transaction; derefs to its [`Conn`].
pub struct Tx<'c> {
    conn: &'c mut Conn,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<(), SqlError> {
        self.done = true;
        self.conn.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back a transaction failed");
            }
        }
    }
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Real(r), &Type::FLOAT8) => r.to_sql(ty, out),
            (Value::Real(r), &Type::FLOAT4) => (*r as f32).to_sql(ty, out),
            (Value::Text(t), _) if <&str as ToSql>::accepts(ty) => t.as_str().to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (v, ty) => Err(format!("cannot store {} in a {ty} parameter", v.kind()).into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(match *ty {
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::JSON => Value::Text(std::str::from_utf8(raw)?.to_owned()),
            _ if <String as FromSql>::accepts(ty) => Value::Text(String::from_sql(ty, raw)?),
            _ => return Err(format!("unsupported column type {ty} (cast it in the query)").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A statement in the shared dialect as PostgreSQL reads it: `?N` becomes
/// `$N` (and a bare `?` the next number), outside quotes.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 1u32;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                }
                next = digits.parse::<u32>().unwrap_or(next) + 1;
                out.push('$');
                out.push_str(&digits);
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?2"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $2"
        );
        assert_eq!(to_postgres("VALUES (?, ?)"), "VALUES ($1, $2)");
        assert_eq!(
            to_postgres("x = ?10 OR \"?\" = ?"),
            "x = $10 OR \"?\" = $11"
        );
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let c = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)")
            .unwrap();
        let none: Option<String> = None;
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
            params![7u64, 0.5, "你好", vec![1u8, 2], none],
        )
        .unwrap();
        let (i, r, s, b, n): (u64, f64, String, Vec<u8>, Option<String>) = c
            .query_row("SELECT i, r, s, b, n FROM t", [], |r| {
                Ok((r.get(0)?, r.get("r")?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        assert_eq!((i, r, s.as_str(), b, n), (7, 0.5, "你好", vec![1, 2], None));
        let err = c
            .query_row("SELECT s FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(err.to_string().contains("expected an integer"), "{err}");
        assert!(matches!(
            c.query_row("SELECT s FROM t WHERE i = 0", [], |r| r.get::<_, String>(0)),
            Err(SqlError::NoRows)
        ));
    }

    #[test]
    fn a_dropped_transaction_rolls_back() {
        let mut c = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (i INTEGER)").unwrap();
        {
            let tx = c.transaction().unwrap();
            tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        let tx = c.transaction().unwrap();
        tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        let n: i64 = c
            .query_row("SELECT CAST(SUM(i) AS BIGINT) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
