//! The controller's store: every SQL statement of the controller lives under
//! this module, behind one versioned migration list ([`migrations`]).
//!
//! [`Store`] is the one handle the rest of the controller uses: typed async
//! methods, no SQL and no connection outside this module. Today's backend is
//! SQLite — one connection behind a mutex, used from the blocking pool
//! ([`Db::call`]). Ingestion commits a whole batch of inbound messages per
//! transaction ([`events`]), so throughput is bounded by batches, not events.
//!
//! Files: `nodes` (tokens, enrolment, registry, history), `events` (inbound
//! batches and their projection), `commands` (the per-node queue), `chats`,
//! `agents`, `tickets`, `models`, `rollouts`.

pub mod agents;
pub mod chats;
pub mod commands;
pub mod events;
pub mod migrations;
pub mod models;
pub mod nodes;
pub mod rollouts;
pub mod tickets;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

pub use agents::{AccountError, AgentRow, NewAgent, Role};
pub use chats::{ChatFilter, ChatView, DayStats, Line};
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
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The SQLite connection, shared by the store's methods.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Run `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Synchronous access (start-up, tests).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// The controller's store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Open (creating it 0600) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Design: FULL — an event acknowledged to a node (which then deletes
        // it) must survive a power cut here; ingestion batches amortise fsync.
        let mut conn =
            edgedesk_support::sqlite::open(path, edgedesk_support::sqlite::Durability::Full)?;
        edgedesk_support::sqlite::migrate(&mut conn, migrations::STEPS)?;
        Ok(Store {
            db: Db {
                conn: Arc::new(Mutex::new(conn)),
            },
        })
    }

    /// The raw handle, for this module's tests and benchmarks' set-up.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

#[cfg(test)]
pub(crate) fn test_conn() -> Connection {
    let mut c = Connection::open_in_memory().expect("in-memory SQLite");
    edgedesk_support::sqlite::migrate(&mut c, migrations::STEPS).expect("migrations apply");
    c
}
