//! The controller's store: every SQL statement of the controller lives under
//! this module, behind one versioned migration list ([`migrations`]).
//!
//! [`Store`] is the one handle the rest of the controller uses: typed async
//! methods, no SQL and no connection outside this module. Today's backend is
//! SQLite — one connection owned by one thread, fed closures through a
//! bounded queue ([`Db::call`]; when full, callers wait). Ingestion commits a
//! whole batch of inbound messages per transaction ([`events`]), so
//! throughput is bounded by batches, not events.
//!
//! Files: `nodes` (tokens, enrolment, registry, history), `events` (inbound
//! batches and their projection), `commands` (the per-node queue), `chats`,
//! `agents`, `tickets`, `models`, `rollouts`, `seq` (envelope sequence numbers),
//! `branches` (each branch's hours and facts as operators set them),
//! `samples` (the learning loop's turns to label), `suggestions` (groups of
//! them offered as new intents), `trainings` (its training runs).

pub mod agents;
pub mod branches;
pub mod chats;
pub mod commands;
pub mod election;
pub mod events;
pub mod migrations;
pub mod models;
pub mod nodes;
pub mod rollouts;
pub mod samples;
pub mod seq;
pub mod sql;
pub mod suggestions;
pub mod tickets;
pub mod trainings;

use std::path::Path;

use std::sync::Arc;

use sha2::{Digest, Sha256};
pub use sql::{Conn, Dialect, SqlError};

pub use agents::{AccountError, AgentRow, NewAgent, Role, SessionLimits};
pub use branches::BranchRow;
pub use chats::{ChatFilter, ChatView, ChatWrite, DayStats, Line, LiveChat};
pub use commands::CommandRow;
pub use events::{EventQuery, Inbound, InboundOutcome, StoredEvent};
pub use models::ModelRow;
pub use nodes::{EnrollError, HistoryRow, NodeRow};
pub use rollouts::RolloutRow;
pub use tickets::{Canned, Ticket, TicketError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] edgedesk_support::sqlite::DbError),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

type Job = Box<dyn FnOnce(Result<&mut Conn, StoreError>) + Send>;

/// Requests waiting for the store's threads at most.
const QUEUE: usize = 1024;

/// How a worker (re)opens its connection: SQLite's is opened once, a
/// PostgreSQL worker reconnects when its connection was closed.
type Connect = Arc<dyn Fn() -> Result<Conn, StoreError> + Send + Sync>;

/// The store's connection threads, shared by the store's methods.
// Design: threads that own their connection rather than a mutex over the
// blocking pool: the requests of many tasks queue instead of waking pool
// threads that then contend for the lock (the controller spent a third of
// its CPU in the kernel that way under live-chat load). SQLite has one
// thread (one writer); PostgreSQL `pool` threads, each its own connection.
#[derive(Clone)]
pub struct Db {
    tx: tokio::sync::mpsc::Sender<Job>,
    dialect: Dialect,
}

impl Db {
    fn start(first: Conn, threads: usize, connect: Option<Connect>) -> Result<Db, StoreError> {
        let dialect = first.dialect();
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut first = Some(first);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let connect = connect.clone();
            let mut conn = first.take();
            std::thread::Builder::new()
                .name(format!("controller-store-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next
                        // job, never while running one.
                        let job = match rx.lock() {
                            Ok(mut rx) => rx.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(job) = job else { break };
                        if let Some(connect) = &connect {
                            if conn.as_ref().is_none_or(Conn::is_closed) {
                                conn = None;
                                match connect() {
                                    Ok(c) => conn = Some(c),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "store connection failed");
                                        job(Err(e));
                                        continue;
                                    }
                                }
                            }
                        }
                        match conn.as_mut() {
                            Some(c) => job(Ok(c)),
                            None => job(Err(StoreError::Task("no store connection".into()))),
                        }
                    }
                })
                .map_err(|e| StoreError::Task(e.to_string()))?;
        }
        Ok(Db { tx, dialect })
    }

    /// Run `f` with a connection on one of the store's threads.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(conn.and_then(f));
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::Task("the store has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Task("the store dropped a request".into()))?
    }
}

/// The controller's store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Open (creating it 0600) and migrate the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Design: FULL — an event acknowledged to a node (which then deletes
        // it) must survive a power cut here; ingestion batches amortise fsync.
        let mut conn =
            edgedesk_support::sqlite::open(path, edgedesk_support::sqlite::Durability::Full)?;
        edgedesk_support::sqlite::migrate(&mut conn, migrations::STEPS)?;
        Ok(Store {
            db: Db::start(Conn::sqlite(conn), 1, None)?,
        })
    }

    /// Connect to PostgreSQL at `url` with `pool` connections, migrating
    /// the schema first (under an advisory lock, so replicas starting
    /// together migrate once).
    pub fn connect_postgres(url: &str, pool: usize) -> Result<Store, StoreError> {
        // The synchronous client runs its own runtime: never on a runtime's thread.
        let first = off_runtime(|| {
            let mut first = Conn::postgres(url)?;
            migrations::migrate_postgres(&mut first)?;
            Ok::<_, StoreError>(first)
        })?;
        let url = url.to_owned();
        let connect: Connect = Arc::new(move || Ok(Conn::postgres(&url)?));
        Ok(Store {
            db: Db::start(first, pool, Some(connect))?,
        })
    }

    /// PostgreSQL at `postgres_url` with `pool` connections, or SQLite in
    /// `data_dir` when the URL is empty (the `[store]` settings).
    pub fn open_any(data_dir: &Path, postgres_url: &str, pool: usize) -> Result<Store, StoreError> {
        if postgres_url.is_empty() {
            Store::open(&data_dir.join("controller.db"))
        } else {
            Store::connect_postgres(postgres_url, pool)
        }
    }

    /// Whether the database answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .call(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .map(drop)
    }

    /// Send each of `payloads` on PostgreSQL channel `channel` (`NOTIFY`),
    /// in order (the function scan's), in one round trip; nothing on SQLite
    /// (one process). PostgreSQL folds identical payloads of one statement.
    pub async fn notify(
        &self,
        channel: &'static str,
        payloads: Vec<String>,
    ) -> Result<(), StoreError> {
        if self.dialect() != Dialect::Postgres || payloads.is_empty() {
            return Ok(());
        }
        let list =
            serde_json::to_string(&payloads).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.db
            .call(move |c| {
                c.prepare_cached(
                    "SELECT pg_notify(?1, p) FROM json_array_elements_text(CAST(CAST(?2 AS TEXT) AS json)) AS t(p)",
                )?
                .execute(sql::params![channel, list])?;
                Ok(())
            })
            .await
    }

    /// Which database this store uses.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect
    }
}

/// Run `f` on a thread of its own (the synchronous PostgreSQL client may not
/// run on an async runtime's thread) and wait for it.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A fresh, migrated database for a unit test: in-memory SQLite, or a new
/// PostgreSQL database when `EDGEDESK_TEST_POSTGRES` names a server (how
/// the suite runs against both backends, see `scripts/test.sh`).
#[cfg(test)]
pub(crate) fn test_conn() -> Conn {
    if let Some(url) = test_postgres_url() {
        return off_runtime(|| {
            let mut c = Conn::postgres(&url).expect("test PostgreSQL database");
            migrations::migrate_postgres(&mut c).expect("PostgreSQL migrations apply");
            c
        });
    }
    let mut c = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
    edgedesk_support::sqlite::migrate(&mut c, migrations::STEPS).expect("migrations apply");
    Conn::sqlite(c)
}

/// A store for a test: SQLite at `path`, or a fresh PostgreSQL database
/// when `EDGEDESK_TEST_POSTGRES` is set.
#[cfg(test)]
pub(crate) fn test_store(path: &Path) -> Store {
    match test_postgres_url() {
        Some(url) => Store::connect_postgres(&url, 2).expect("test PostgreSQL store"),
        None => Store::open(path).expect("test SQLite store"),
    }
}

/// For tests: a new empty database on the server `EDGEDESK_TEST_POSTGRES`
/// names, as a connection URL; `None` when the variable is unset.
pub fn test_postgres_url() -> Option<String> {
    let server = std::env::var("EDGEDESK_TEST_POSTGRES").ok()?;
    let name = format!("edgedesk_t_{}", uuid::Uuid::new_v4().simple());
    off_runtime(|| {
        let mut admin = postgres::Client::connect(&server, postgres::NoTls)
            .unwrap_or_else(|e| panic!("EDGEDESK_TEST_POSTGRES={server}: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
    });
    Some(with_dbname(&server, &name))
}

/// For tests: with `EDGEDESK_TEST_POSTGRES` set, the PostgreSQL database of
/// the controller whose data directory is `dir` (created on first use, the
/// same again for a restart on that directory); else empty (SQLite).
pub fn test_postgres_for(dir: &Path) -> String {
    let marker = dir.join("test-postgres-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    match test_postgres_url() {
        Some(url) => {
            std::fs::write(&marker, &url).expect("note the test database");
            url
        }
        None => String::new(),
    }
}

/// `url` with its database name replaced by `name`.
fn with_dbname(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[scheme_end..].find('/') {
            Some(i) => &base[..scheme_end + i],
            None => base,
        };
        if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        }
    } else {
        format!("{url} dbname={name}")
    }
}
